"""DCGAN generator and discriminator (Radford et al. 2015), class-conditional when asked.

G: z (+ learned class embedding) -> dense 4x4 -> [ConvTranspose 4x4/2, BatchNorm, ReLU]* -> tanh
   (the transposed convolutions are `layers.UpConv`: same parameters and function, faster lowering).
D: [Conv 4x4/2, norm, LeakyReLU 0.2]* down to 4x4 -> linear logit, plus the projection term
   <embed(y), sum-pooled features> of Miyato & Koyama (2018) when conditional (the strided convs
   are `layers.DownConv`: same parameters and function as nn.Conv, a choice of lowering).
BatchNorm and the activation after it are Flax's (`norm_impl='flax'`) or one module with a
hand-written gradient (`'fused'`, `batchnorm.BatchNormAct`): the same parameters and function.
Labels are int [b] (one attribute) or [b, A] (several, e.g. articleType and baseColour); with
several, embed(y) is `conditioning.ClassEmbed`'s sum of one embedding per attribute. G also takes
soft labels: float class weights [b, sum(classes)] (`conditioning.embed_labels`).
Channel widths double per halving of resolution (capped at `max_width`), as in the paper's 64x64
net (ngf*8 at 4x4). Parameters are float32; `dtype` sets the compute dtype (bfloat16 on
accelerators), BatchNorm statistics are reduced in float32 by Flax, logits are returned in float32.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxgan.models.batchnorm import norm_act
from jaxgan.models.conditioning import ClassEmbed, class_tuple, embed_labels
from jaxgan.models.layers import DownConv, UpConv, num_doublings

# DCGAN's initialisation: N(0, 0.02) for every weight.
_init = nn.initializers.normal(0.02)


def _class_embedding(num_classes: int | Sequence[int], features: int, name: str,
                     labels: jnp.ndarray) -> jnp.ndarray:
  """The label embedding [b, features] of int or soft labels (`conditioning.embed_labels`): a
  plain nn.Embed for one attribute, so the parameter tree (and every checkpoint of a one-attribute
  run) stays as before; a ClassEmbed sum for several."""
  if labels is None:  # as the ResNet says it (jnp.asarray(None) says nothing of labels)
    raise ValueError(f"a conditional DCGAN ({name}) needs labels")
  classes = class_tuple(num_classes)
  if len(classes) == 1:
    return embed_labels([nn.Embed(classes[0], features, embedding_init=_init, name=name)], labels)
  return ClassEmbed(classes, features, embedding_init=_init, name=name)(labels)


class Generator(nn.Module):
  image_size: int
  num_classes: int | tuple[int, ...] = 0  # classes per attribute; 0 or () = unconditional
  z_dim: int = 100
  width: int = 64
  max_width: int = 512
  embed_dim: int = 64
  upsample_impl: str = "auto"  # how the 4x4/2 transposed convs are lowered (layers.UpConv)
  norm_impl: str = "flax"  # BatchNorm + ReLU: 'flax' | 'fused' (batchnorm.BatchNormAct)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray, labels: Optional[jnp.ndarray] = None,
               train: bool = True) -> jnp.ndarray:
    n = num_doublings(self.image_size)
    widths = [min(self.width * 2**i, self.max_width) for i in reversed(range(n))]
    h = z.astype(self.dtype)
    if class_tuple(self.num_classes):
      emb = _class_embedding(self.num_classes, self.embed_dim, "class_embed", labels)
      h = jnp.concatenate([h, emb.astype(self.dtype)], axis=-1)
    norm_relu = lambda name: norm_act(self.norm_impl, 0.0, not train, self.dtype, name)
    h = nn.Dense(4 * 4 * widths[0], kernel_init=_init, use_bias=False, dtype=self.dtype,
                 name="project")(h)
    h = h.reshape(h.shape[0], 4, 4, widths[0])
    h = norm_relu("project_bn")(h)
    for i, w in enumerate(widths[1:]):
      h = UpConv(w, use_bias=False, impl=self.upsample_impl, kernel_init=_init,
                 dtype=self.dtype, name=f"up{i}")(h)
      h = norm_relu(f"up{i}_bn")(h)
    h = UpConv(3, impl=self.upsample_impl, kernel_init=_init, dtype=self.dtype,
               name="to_rgb")(h)
    return jnp.tanh(h.astype(jnp.float32))


D_NORMS = ("batch", "layer", "none")  # model.d_norm: D's normalisation after its first layer


class Discriminator(nn.Module):
  image_size: int
  num_classes: int | tuple[int, ...] = 0  # classes per attribute; 0 or () = unconditional
  width: int = 64
  max_width: int = 512
  norm: str = "batch"  # one of D_NORMS
  downsample_impl: str = "auto"  # how the 4x4/2 convs are lowered (layers.DownConv)
  norm_impl: str = "flax"  # BatchNorm + LeakyReLU when norm='batch': 'flax' | 'fused'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, labels: Optional[jnp.ndarray] = None,
               train: bool = True) -> jnp.ndarray:
    n = num_doublings(self.image_size)
    h = x.astype(self.dtype)
    for i in range(n):
      w = min(self.width * 2**i, self.max_width)
      # No bias before a norm. WGAN-GP's reference has one before its layer norm (where a
      # channel's bias survives the mean over every channel); adding it would change the
      # parameter tree, and earlier d_norm=layer runs could no longer be sampled (documented).
      h = DownConv(w, use_bias=(i == 0 or self.norm == "none"), impl=self.downsample_impl,
                   kernel_init=_init, dtype=self.dtype, name=f"down{i}")(h)
      if i > 0 and self.norm == "batch":  # DCGAN: no normalisation on the first layer
        h = norm_act(self.norm_impl, 0.2, not train, self.dtype, f"down{i}_bn")(h)
      else:
        if i > 0 and self.norm == "layer":
          # As WGAN-GP's reference: each sample normalised over its whole feature map (H, W and
          # C), scale and offset per channel, eps 1e-5. Over C alone, every pixel's features
          # would be rescaled on their own, erasing how strongly each location responds.
          h = nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1,
                           dtype=self.dtype, name=f"down{i}_ln")(h)
        h = nn.leaky_relu(h, 0.2)
    features = h.reshape(h.shape[0], -1)
    # The 4x4 "valid" conv of DCGAN's head is a dense layer on the flattened 4x4 map. It runs in
    # float32 whatever the compute dtype: a bfloat16 sum of 8192 products rounds a logit of 5 to
    # steps of 1/32 (and its gradient likewise), which LeCam's logit differences would see; the
    # head is a negligible share of the FLOPs. The ResNet critic's head does the same.
    logit = nn.Dense(1, kernel_init=_init, dtype=jnp.float32,
                     name="logit")(features.astype(jnp.float32))[:, 0]
    if class_tuple(self.num_classes):
      pooled = jnp.sum(h.astype(jnp.float32), axis=(1, 2))
      emb = _class_embedding(self.num_classes, pooled.shape[-1], "class_projection", labels)
      logit = logit + jnp.sum(emb.astype(jnp.float32) * pooled, axis=-1)
    return logit
