"""Layers shared by the model families."""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
import jax.numpy as jnp
import numpy as np

# For output phase p (0: even, 1: odd output row/column) of a 4-tap, stride-2, 'SAME' transposed
# convolution, which of the 3 input taps (offsets -1, 0, +1) meets which kernel tap. Derived from
# lax.conv_transpose's SAME padding (2 on each side of the dilated input): output 2m + p reads
# dilated input 2m + p + k - 2, which is a real input pixel only when k = p (mod 2).
_PHASE_TAPS = {0: ((0, 0), (1, 2)), 1: ((1, 1), (2, 3))}  # phase -> ((tap, k), (tap, k))


def add_bias(y: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
  """`y + bias` in float32, returned in `y`'s dtype. In bfloat16, the bias's gradient (a sum of
  the output's gradient over batch x height x width) would be accumulated in bfloat16 too: off by
  21-38 % for DCGAN-64's first D and last G layers at batch 64 on XLA:CPU (a kernel's, 1.3 %).
  The casts fuse into the add; in float32 this is `y + bias` exactly."""
  return (y.astype(jnp.float32) + bias).astype(y.dtype)


def promote_keeping_bias(inputs: Any, kernel: Any, bias: Any, *, dtype: Any = None,
                         inexact: bool = True) -> list[Any]:
  """nn.Conv's and nn.Dense's `promote_dtype`, except that the bias stays float32 (see
  `add_bias`): the layer's output is then float32, to be cast back to the compute dtype."""
  inputs, kernel = flax_dtypes.promote_dtype(inputs, kernel, dtype=dtype, inexact=inexact)
  return [inputs, kernel, bias]


def _phase_selection() -> np.ndarray:
  """0/1 tensor S[ty, tx, py, px, ky, kx]: 3x3 sub-pixel kernel <- 4x4 transposed kernel."""
  s = np.zeros((3, 3, 2, 2, 4, 4), np.float32)
  for py, rows in _PHASE_TAPS.items():
    for px, cols in _PHASE_TAPS.items():
      for ty, ky in rows:
        for tx, kx in cols:
          s[ty, tx, py, px, ky, kx] = 1.0
  return s


def _conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  return jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _kernel_grad_by_phase(x: jnp.ndarray, g: jnp.ndarray) -> jnp.ndarray:
  """d loss / d kernel of `_conv_transpose`, as 16 (in x out) matmuls over shifted views.

  Output pixel (2m + py, 2n + px) sees input (m + ty - 1, n + tx - 1) through kernel tap
  (ky, kx) for the pairs in _PHASE_TAPS, so each tap's gradient is one contraction over batch and
  space. No zero-dilated tensors, no convolution-shaped kernel gradient (slow on XLA:CPU).
  """
  b, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  gp = g.reshape(b, h, 2, w, 2, g.shape[-1])
  taps = {}
  for py, rows in _PHASE_TAPS.items():
    for px, cols in _PHASE_TAPS.items():
      for ty, ky in rows:
        for tx, kx in cols:
          taps[ky, kx] = jnp.einsum("bhwi,bhwo->io", xp[:, ty:ty + h, tx:tx + w],
                                    gp[:, :, py, :, px], preferred_element_type=jnp.float32)
  return jnp.stack([jnp.stack([taps[ky, kx] for kx in range(4)]) for ky in range(4)])


@jax.custom_vjp
def conv_transpose_phase_grad(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """`_conv_transpose` with the kernel gradient computed by `_kernel_grad_by_phase`."""
  return _conv_transpose(x, kernel)


def _ctpg_fwd(x, kernel):
  return _conv_transpose(x, kernel), (x, kernel)


def _ctpg_bwd(res, g):
  x, kernel = res
  _, x_vjp = jax.vjp(lambda x_: _conv_transpose(x_, kernel), x)
  (dx,) = x_vjp(g)
  return dx, _kernel_grad_by_phase(x, g).astype(kernel.dtype)


conv_transpose_phase_grad.defvjp(_ctpg_fwd, _ctpg_bwd)


UPSAMPLE_IMPLS = ("auto", "dilated", "phase_grad", "subpixel", "phase_conv")


def resolve_upsample_impl(impl: str, backend: str | None = None) -> str:
  """'auto' -> the lowering measured fastest on this backend (docs/benchmarks.md): 'phase_grad'
  on XLA:CPU, 'subpixel' on GPUs and TPUs (cuDNN's 3x3 convolutions beat its transposed ones and
  the 2x2 'phase_conv' on an H200). Parameters are the same for every lowering, so a checkpoint
  trained with one loads with any other."""
  if impl != "auto":
    return impl
  return "phase_grad" if (backend or jax.default_backend()) == "cpu" else "subpixel"


def _conv_transpose_by_phase_conv(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """`_conv_transpose` as one stride-1 2x2 conv to 4x the channels, then an interleave.

  Output row 2m + p reads input rows (m - 1 + p, m + p) through kernel rows (p, 2 + p)
  (_PHASE_TAPS), i.e. a 2x2 window starting at padded row m + p with kernel row 2j + p for window
  row j. So the four phase kernels are the 4x4 kernel split by parity, and all four phases are one
  2x2 convolution over the input padded by 1; phase (p, q) reads its output at offset (p, q). Only
  real taps are multiplied (no inserted zeros, unlike 'dilated' or the 3x3 'subpixel').
  """
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  k2 = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 4, 1, 3, 5)  # jy jx i py px o
  k2 = k2.reshape(2, 2, cin, 4 * cout)
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = jax.lax.conv_general_dilated(xp, k2, (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  y = y.reshape(b, h + 1, w + 1, 2, 2, cout)
  rows = [jnp.stack([y[:, p:p + h, q:q + w, p, q] for q in (0, 1)], axis=3) for p in (0, 1)]
  return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)  # b, h, p, w, q, c


class _Conv4x4Stride2(nn.Module):
  """What UpConv and DownConv share: their fields, and the parameters of a Flax 4x4 convolution
  ('kernel' [4, 4, in, out] and 'bias' [out], float32 whatever the compute dtype)."""

  features: int
  use_bias: bool = True
  impl: str = "auto"
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  dtype: Any = jnp.float32

  def _kernel(self, cin: int) -> jnp.ndarray:
    return self.param("kernel", self.kernel_init, (4, 4, cin, self.features), jnp.float32)

  def _add_bias(self, y: jnp.ndarray) -> jnp.ndarray:
    if not self.use_bias:
      return y
    return add_bias(y, self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32))


class UpConv(_Conv4x4Stride2):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding='SAME')`, same parameters
  ('kernel' [4, 4, in, out], 'bias'), same function, four lowerings:

  - 'dilated': XLA's transposed convolution (a 4x4 conv over the zero-dilated input);
  - 'phase_grad': the same forward and input gradient, but the kernel gradient as 16 matmuls
    over shifted views (`_kernel_grad_by_phase`) instead of a convolution over dilated zeros;
  - 'subpixel': one stride-1 3x3 conv to 4x the channels (one group per output phase) and a
    depth-to-space. No multiplications by the inserted zeros, and its gradients are plain
    convolutions; on the CPU the G backward pass is several times faster (docs/benchmarks.md);
  - 'phase_conv': the four output phases as one stride-1 2x2 conv to 4x the channels (the
    kernel split by parity) and an interleave: no zeros multiplied at all, 16 taps per input
    pixel like the transposed convolution itself, versus 36 for 'subpixel'.
  """

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    cin = x.shape[-1]
    kernel = self._kernel(cin)
    impl = resolve_upsample_impl(self.impl)
    if impl == "dilated":
      y = _conv_transpose(x.astype(self.dtype), kernel.astype(self.dtype))
    elif impl == "phase_grad":
      y = conv_transpose_phase_grad(x.astype(self.dtype), kernel.astype(self.dtype))
    elif impl == "subpixel":
      select = jnp.asarray(_phase_selection())
      # A 0/1 selection, exact only at HIGHEST: the default rounds the kernel (and its gradient
      # on the way back) to TF32 on GPUs, bf16 on TPUs. Kernel-sized: its cost is nothing.
      k3 = jnp.einsum("abpqkl,klio->abipqo", select, kernel,
                      precision=jax.lax.Precision.HIGHEST)
      k3 = k3.reshape(3, 3, cin, 4 * self.features).astype(self.dtype)
      y = jax.lax.conv_general_dilated(x.astype(self.dtype), k3, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
      b, h, w, _ = y.shape
      y = y.reshape(b, h, w, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
      y = y.reshape(b, 2 * h, 2 * w, self.features)
    elif impl == "phase_conv":
      y = _conv_transpose_by_phase_conv(x.astype(self.dtype), kernel.astype(self.dtype))
    else:
      raise ValueError(f"unknown UpConv impl {self.impl!r}; use one of {UPSAMPLE_IMPLS}")
    return self._add_bias(y)


DOWNSAMPLE_IMPLS = ("auto", "strided", "s2d")


def resolve_downsample_impl(impl: str, backend: str | None = None) -> str:
  """'auto' -> 'strided' on every backend: 's2d' timed even to 17 % slower for the whole DCGAN-64
  step on XLA:CPU (docs/benchmarks.md) and is unmeasured on GPUs, so 'auto' changes only after a
  GPU measurement says it should. Parameters are the same for every lowering, so a checkpoint
  trained with one loads with any other."""
  del backend  # kept for symmetry with resolve_upsample_impl; 'auto' will depend on it
  return "strided" if impl == "auto" else impl


def _conv_strided(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  # (1, 1) padding is what nn.Conv's 'SAME' pads for a 4x4/2 conv of an even-sized input.
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_by_space_to_depth(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
  """`_conv_strided` as a space-to-depth by 2 and one stride-1 2x2 conv over 4x the channels.

  Output row m reads padded rows 2m .. 2m + 3 through kernel rows 0 .. 3, i.e. space-to-depth
  rows (m, m + 1) at parity p through kernel row 2j + p for window row j: the 4x4 kernel split by
  parity, the same regrouping as `_conv_transpose_by_phase_conv`. The conv and both its gradients
  are stride-1 (no zero-dilated input gradient), and a 3-channel input becomes 12 channels.
  """
  b, h, w, cin = x.shape
  cout = kernel.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  hp, wp = (h + 2) // 2, (w + 2) // 2
  xs = xp.reshape(b, hp, 2, wp, 2, cin).transpose(0, 1, 3, 2, 4, 5)  # b r s py px c
  xs = xs.reshape(b, hp, wp, 4 * cin)
  k2 = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 1, 3, 4, 5)  # jy jx py px i o
  k2 = k2.reshape(2, 2, 4 * cin, cout)
  return jax.lax.conv_general_dilated(xs, k2, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class DownConv(_Conv4x4Stride2):
  """`nn.Conv(features, (4, 4), strides=(2, 2), padding='SAME')` on even-sized inputs, same
  parameters ('kernel' [4, 4, in, out], 'bias'), same function, two lowerings:

  - 'strided': XLA's stride-2 convolution. On GPUs its input gradient is a convolution over the
    zero-dilated output gradient (the cost 'subpixel' removed from G's transposed convs);
  - 's2d': a space-to-depth by 2 and a stride-1 2x2 conv over 4x the input channels
    (`_conv_by_space_to_depth`): every gradient stride-1, and D's 3-channel first layer gets 12
    channels for the matrix units. Slower than 'strided' on XLA:CPU in most layers.

  Odd heights or widths are rejected by both (nn.Conv would pad them asymmetrically, and the
  space-to-depth needs even sizes), so every lowering computes the same function.
  """

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    _, h, w, cin = x.shape
    kernel = self._kernel(cin)
    impl = resolve_downsample_impl(self.impl)
    if impl not in DOWNSAMPLE_IMPLS:
      raise ValueError(f"unknown DownConv impl {self.impl!r}; use one of {DOWNSAMPLE_IMPLS}")
    if h % 2 or w % 2:
      raise ValueError(f"DownConv needs an even height and width, got {h}x{w}")
    conv = _conv_strided if impl == "strided" else _conv_by_space_to_depth
    y = conv(x.astype(self.dtype), kernel.astype(self.dtype))
    return self._add_bias(y)


def num_doublings(image_size: int) -> int:
  """Resolution doublings between the 4x4 base and `image_size`."""
  n = int(round(math.log2(image_size / 4)))
  if 4 * 2**n != image_size or n < 1:
    raise ValueError(f"image size {image_size} is not 4 * 2^k with k >= 1")
  return n
