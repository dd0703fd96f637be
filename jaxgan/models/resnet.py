"""ResNet GAN of the SNGAN / BigGAN family (Miyato et al. 2018; Brock et al. 2019).

G: z split into (n + 1) chunks (hierarchical latents). Chunk 0 -> SN dense -> 4x4 map; up block i
   is conditioned (conditional BatchNorm) on [z chunk i + 1, shared class embedding]. Up block:
   CBN, ReLU, 2x nearest upsample, SN conv3x3, CBN, ReLU, SN conv3x3, plus upsample + SN conv1x1.
   Output: BN, ReLU, SN conv3x3 to RGB, tanh.
D: SN residual down blocks (the first "optimized" as in SNGAN), ReLU, global sum pooling,
   SN dense logit, plus the projection term <embed(y), pooled> (Miyato & Koyama 2018), its
   embedding spectrally normalised too (BigGAN's SNEmbedding).
Both can place one SAGAN self-attention block after the block whose output has
`attention_resolution` (0: none).

Channel widths (`channel_widths`): w_k = min(width * 2^k, max_width) for k = 0..n, n = number of
doublings from 4x4. G's 4x4 base has w_n and its up blocks output w_{n-1}, ..., w_0 (the last
block at full resolution has `width`); D's down blocks output w_0, ..., w_{n-1} (mirror image).
With width=ch and max_width=16ch this is BigGAN's 128x128 net exactly (G ch*[16,16,8,4,2,1],
D ch*[1,2,4,8,16], without BigGAN's extra non-downsampling D block at 4x4); at 256 it differs
from BigGAN's G only at 16x16 (16ch rather than 8ch). SNGAN's constant-width 32x32 nets are
max_width = width (256 for G, 128 for D); a cap in between, e.g. width=64, max_width=256, gives
G 256, 256, 128, 64 from 4x4 to 32x32.

Spectral normalisation is Flax's `nn.SpectralNorm` with one power iteration per call; its `u` and
`sigma` live in the 'batch_stats' collection (beside BatchNorm's statistics, so the train step
that carries that collection updates them) and are updated only when `train=True`.
Initialisation: orthogonal for every conv, dense and embedding (BigGAN's G_init = D_init = 'ortho').
Parameters are float32; `dtype` is the compute dtype; attention softmax, the D head and all
outputs are float32.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.models.batchnorm import AffineBatchNormAct, norm_act
from jaxgan.models.conditioning import ClassEmbed, as_label_matrix, class_tuple, is_soft
from jaxgan.models.layers import num_doublings, promote_keeping_bias

_init = nn.initializers.orthogonal()


def channel_widths(width: int, max_width: int, image_size: int) -> list[int]:
  """[w_0, ..., w_n] with w_k = min(width * 2^k, max_width), n = doublings from 4 to image_size."""
  return [min(width * 2**k, max_width) for k in range(num_doublings(image_size) + 1)]


def _sn_conv(x: jnp.ndarray, features: int, kernel: int, *, train: bool, dtype: Any, name: str,
             use_bias: bool = True) -> jnp.ndarray:
  """Spectrally normalised 'SAME' conv; params at `name`, SN state at `name`_sn. Its bias is
  added (and its gradient summed) in float32 (`layers.add_bias`)."""
  conv = nn.Conv(features, (kernel, kernel), padding="SAME", use_bias=use_bias,
                 kernel_init=_init, dtype=dtype, promote_dtype=promote_keeping_bias, name=name)
  return nn.SpectralNorm(conv, name=f"{name}_sn")(x, update_stats=train).astype(dtype)


def _sn_dense(x: jnp.ndarray, features: int, *, train: bool, dtype: Any, name: str,
              use_bias: bool = True) -> jnp.ndarray:
  dense = nn.Dense(features, use_bias=use_bias, kernel_init=_init, dtype=dtype,
                   promote_dtype=promote_keeping_bias, name=name)
  return nn.SpectralNorm(dense, name=f"{name}_sn")(x, update_stats=train).astype(dtype)


def _upsample(x: jnp.ndarray) -> jnp.ndarray:
  """2x nearest-neighbour upsampling (NHWC)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _max_pool(x: jnp.ndarray) -> jnp.ndarray:
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _split_latent(z: jnp.ndarray, parts: int) -> list[jnp.ndarray]:
  """`parts` contiguous chunks of z's last axis; the first z_dim % parts get one extra entry (so
  any z_dim >= parts works, unlike BigGAN, which drops the remainder)."""
  d = z.shape[-1]
  if d < parts:
    raise ValueError(f"z_dim {d} is smaller than the {parts} latent chunks this size needs")
  sizes = [d // parts + (i < d % parts) for i in range(parts)]
  starts = [sum(sizes[:i]) for i in range(parts)]
  return [z[..., s:s + n] for s, n in zip(starts, sizes)]


class ConditionalBatchNormReLU(nn.Module):
  """ReLU(BatchNorm(x) * (1 + Dense(cond)) + Dense(cond)): BatchNorm without its own affine, then
  a per-sample gain and bias, then ReLU. `norm_impl` 'flax': nn.BatchNorm differentiated by JAX;
  'fused': `batchnorm.AffineBatchNormAct` (one parameter tree for both).

  The projections are spectrally normalised and have no bias, as BigGAN's `bn_linear` (SNLinear,
  bias=False, with a shared embedding); the BN has no affine of its own either.
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  norm_impl: str = "flax"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, cond: jnp.ndarray, train: bool) -> jnp.ndarray:
    c = x.shape[-1]
    kwargs = dict(use_running_average=not train, momentum=self.momentum, epsilon=self.epsilon,
                  dtype=self.dtype, name="bn")
    # The gain and bias are formed in float32 whatever the compute dtype: next to 1, bfloat16
    # moves in steps of 2^-7, so a class's gain offset under ~0.004 would round away (1 + 0.003
    # is 1.0). The projections are small matmuls; the product with the activations is cast once.
    cond = cond.astype(jnp.float32)
    gain = 1 + _sn_dense(cond, c, train=train, dtype=jnp.float32, name="gain", use_bias=False)
    bias = _sn_dense(cond, c, train=train, dtype=jnp.float32, name="bias", use_bias=False)
    gain, bias = gain[:, None, None, :], bias[:, None, None, :]
    if self.norm_impl == "fused":
      return AffineBatchNormAct(slope=0.0, **kwargs)(x, gain, bias)
    if self.norm_impl != "flax":
      raise ValueError(f"unknown BatchNorm impl {self.norm_impl!r}; use 'flax' or 'fused'")
    h = nn.BatchNorm(use_scale=False, use_bias=False, **kwargs)(x)
    return nn.relu(h.astype(jnp.float32) * gain + bias).astype(self.dtype)


class SelfAttention(nn.Module):
  """SAGAN self-attention (Zhang et al. 2019) as in BigGAN: x + gamma * o(softmax(theta phi^T) g),
  with phi and g max-pooled 2x2 (4x fewer keys), gamma initialised to 0 so the block starts as
  the identity."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    b, h, w, c = x.shape
    ck, cv = max(c // 8, 1), max(c // 2, 1)
    conv = lambda y, f, name: _sn_conv(y, f, 1, train=train, dtype=self.dtype, name=name,
                                       use_bias=False)
    theta = conv(x, ck, "theta").reshape(b, h * w, ck)
    phi = _max_pool(conv(x, ck, "phi")).reshape(b, -1, ck)
    g = _max_pool(conv(x, cv, "g")).reshape(b, -1, cv)
    logits = jnp.einsum("bqc,bkc->bqk", theta, phi, preferred_element_type=jnp.float32)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    o = jnp.einsum("bqk,bkc->bqc", attn, g).reshape(b, h, w, cv)
    o = conv(o, c, "out")
    gamma = self.param("gamma", nn.initializers.zeros, (), jnp.float32)
    # In float32: gamma's gradient sums o * dL/dy over the whole batch (b*h*w*c terms), which
    # bfloat16 would accumulate in bfloat16 (layers.add_bias). The casts fuse into the add.
    return (x.astype(jnp.float32) + gamma * o.astype(jnp.float32)).astype(self.dtype)


class UpBlock(nn.Module):
  """BigGAN G block: CBN, ReLU, up, conv3x3, CBN, ReLU, conv3x3; shortcut: conv1x1, up.

  The shortcut convolves before it upsamples (BigGAN upsamples first): a 1x1 conv commutes with
  nearest upsampling (the same function, to float rounding), and on the small image it costs a
  quarter."""

  features: int
  norm_impl: str = "flax"  # ConditionalBatchNormReLU's
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, cond: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv = lambda y, k, name: _sn_conv(y, self.features, k, train=train, dtype=self.dtype,
                                       name=name)
    norm_relu = lambda name: ConditionalBatchNormReLU(norm_impl=self.norm_impl, dtype=self.dtype,
                                                      name=name)
    h = norm_relu("bn1")(x, cond, train)
    h = conv(_upsample(h), 3, "conv1")
    h = norm_relu("bn2")(h, cond, train)
    h = conv(h, 3, "conv2")
    return h + _upsample(conv(x, 1, "shortcut"))


class DownBlock(nn.Module):
  """SNGAN/BigGAN D block, pre-activation: ReLU, conv3x3, ReLU, conv3x3, avgpool; shortcut:
  avgpool, conv1x1. `optimized` (the first block, on RGB input): no leading ReLU (it would drop
  information from the image).

  The shortcut pools before its conv in every block (BigGAN's pre-activation blocks convolve
  first): average pooling commutes with a 1x1 conv (the same function, to float rounding), and
  on the small image it costs a quarter."""

  features: int
  optimized: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    conv = lambda y, k, name: _sn_conv(y, self.features, k, train=train, dtype=self.dtype,
                                       name=name)
    h = x if self.optimized else nn.relu(x)
    h = conv(nn.relu(conv(h, 3, "conv1")), 3, "conv2")
    return _avg_pool(h) + conv(_avg_pool(x), 1, "shortcut")


def attention_resolutions(image_size: int) -> tuple[int, ...]:
  """Where both G and D can hold their self-attention block: a resolution that is a G block's
  output (8 .. image_size) and a D block's (4 .. image_size / 2)."""
  return tuple(8 * 2**i for i in range(num_doublings(image_size) - 1))


def latent_chunks(image_size: int) -> int:
  """z is split into one chunk for the projection and one per up block: z_dim must be >= this."""
  return num_doublings(image_size) + 1


def _check_attention(resolution: int, allowed: Sequence[int], who: str) -> None:
  if resolution and resolution not in allowed:
    raise ValueError(f"{who}: attention_resolution {resolution} is not one of its block output "
                     f"resolutions {tuple(allowed)} (0 for none)")


class ResNetGenerator(nn.Module):
  """`G(z [b, z_dim], labels [b] / [b, A] int | None, train) -> float32 [b, s, s, 3] in [-1, 1]`.

  Labels may also be soft: float class weights [b, sum(classes)] (`conditioning.embed_labels`).
  """

  image_size: int
  num_classes: tuple[int, ...] = ()  # classes per attribute; () = unconditional
  z_dim: int = 120
  width: int = 64
  max_width: int = 1024
  shared_dim: int = 128  # BigGAN's shared class embedding, fed to every block's CBN
  attention_resolution: int = 0
  norm_impl: str = "flax"  # BatchNorm + ReLU: 'flax' | 'fused' (models/batchnorm.py)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jnp.ndarray, labels: Optional[jnp.ndarray] = None,
               train: bool = True) -> jnp.ndarray:
    widths = channel_widths(self.width, self.max_width, self.image_size)
    n = len(widths) - 1
    _check_attention(self.attention_resolution, [8 * 2**i for i in range(n)], "ResNetGenerator")
    if z.shape[-1] != self.z_dim:
      raise ValueError(f"z has {z.shape[-1]} dims, expected z_dim={self.z_dim}")
    # The blocks' conditioning (latent chunk + class embedding) stays float32: it only feeds
    # ConditionalBatchNormReLU's float32 gain and bias, so a bfloat16 copy would round every
    # class's gain input by up to 2^-9 for nothing (those projections are tiny matmuls).
    chunks = _split_latent(z.astype(jnp.float32), n + 1)
    classes = class_tuple(self.num_classes)
    shared = None
    if classes:
      if labels is None:
        raise ValueError("a conditional generator needs labels")
      shared = ClassEmbed(classes, self.shared_dim, embedding_init=_init, dtype=jnp.float32,
                          name="shared")(labels)
    h = _sn_dense(chunks[0].astype(self.dtype), 4 * 4 * widths[n], train=train, dtype=self.dtype,
                  name="project")
    h = h.reshape(h.shape[0], 4, 4, widths[n])
    for i in range(n):
      cond = chunks[i + 1] if shared is None else jnp.concatenate([chunks[i + 1], shared], -1)
      h = UpBlock(widths[n - 1 - i], norm_impl=self.norm_impl, dtype=self.dtype,
                  name=f"up{i}")(h, cond, train)
      if 8 * 2**i == self.attention_resolution:
        h = SelfAttention(dtype=self.dtype, name="attention")(h, train)
    h = norm_act(self.norm_impl, 0.0, not train, self.dtype, "out_bn")(h)
    h = _sn_conv(h, 3, 3, train=train, dtype=self.dtype, name="to_rgb")
    return jnp.tanh(h.astype(jnp.float32))


class ResNetDiscriminator(nn.Module):
  """`D(images [b, s, s, 3], labels [b] or [b, A] int | None, train) -> float32 logits [b]`."""

  image_size: int
  num_classes: tuple[int, ...] = ()  # classes per attribute; () = unconditional
  width: int = 64
  max_width: int = 1024
  attention_resolution: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, labels: Optional[jnp.ndarray] = None,
               train: bool = True) -> jnp.ndarray:
    widths = channel_widths(self.width, self.max_width, self.image_size)
    n = len(widths) - 1
    _check_attention(self.attention_resolution,
                     [self.image_size // 2**(i + 1) for i in range(n)], "ResNetDiscriminator")
    h = x.astype(self.dtype)
    for i in range(n):
      h = DownBlock(widths[i], optimized=(i == 0), dtype=self.dtype, name=f"down{i}")(h, train)
      if self.image_size // 2**(i + 1) == self.attention_resolution:
        h = SelfAttention(dtype=self.dtype, name="attention")(h, train)
    # Sum (not mean) pooling, as in SNGAN/BigGAN; the head runs in float32 (it is tiny).
    pooled = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
    logit = _sn_dense(pooled, 1, train=train, dtype=jnp.float32, name="logit")[:, 0]
    classes = class_tuple(self.num_classes)
    if classes:
      if labels is None:
        raise ValueError("a conditional discriminator needs labels")
      emb = SNProjectionEmbed(classes, name="projection")(labels, pooled.shape[-1], train)
      logit = logit + jnp.sum(emb * pooled, axis=-1)
    return logit


class SNProjectionEmbed(nn.Module):
  """The projection D's class embedding, spectrally normalised as BigGAN's SNEmbedding: without
  it, <embed(y), pooled> would be the one term of D's logit with no Lipschitz bound.

  Per attribute i a table [classes_i, features] (a bias-free dense layer applied to the one-hot
  label, so Flax's SpectralNorm sees the table as its matrix), summed over attributes. Labels are
  int [b] / [b, A], or float class weights [b, sum(classes)] (`conditioning.embed_labels`).
  """

  num_classes: tuple[int, ...]

  @nn.compact
  def __call__(self, labels: jnp.ndarray, features: int, train: bool) -> jnp.ndarray:
    if is_soft(labels):
      if jnp.ndim(labels) != 2 or jnp.shape(labels)[1] != sum(self.num_classes):
        raise ValueError(f"soft labels of shape {jnp.shape(labels)}; expected [batch, "
                         f"{sum(self.num_classes)}] (class weights of the attributes with "
                         f"{list(self.num_classes)} classes, concatenated)")
      weights = jnp.split(jnp.asarray(labels, jnp.float32),
                          np.cumsum(self.num_classes)[:-1].tolist(), axis=-1)
    else:
      matrix = as_label_matrix(labels, len(self.num_classes))
      weights = [jax.nn.one_hot(matrix[:, i], n, dtype=jnp.float32)
                 for i, n in enumerate(self.num_classes)]
    out = jnp.zeros((weights[0].shape[0], features), jnp.float32)
    for i, w in enumerate(weights):
      # HIGHEST: a one-hot row must select its table row exactly (no TF32 / bf16 passes).
      table = nn.Dense(features, use_bias=False, kernel_init=_init, dtype=jnp.float32,
                       precision=jax.lax.Precision.HIGHEST, name=f"attr{i}")
      out = out + nn.SpectralNorm(table, name=f"attr{i}_sn")(w, update_stats=train)
    return out
