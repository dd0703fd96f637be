"""ADA's 'bgc' transforms (Karras et al. 2020): parameter distributions, matrices, resampling.

The pipeline that chains them is `jaxgan.augment.ada_augment`. Three groups, in the paper's order:

- blit (`sample_blit`): x-flip, 90-degree rotation, integer translation; exact gathers, or, for
  an image that also draws a geometric op, folded into its matrix (`blit_matrix`).
- geom (`sample_geometric`, `geometric_matrix`, `affine_resample`): isotropic scaling, pre-rotation,
  anisotropic scaling, post-rotation, fractional translation, accumulated into one 3x3 matrix per
  image, then ONE bilinear resampling with reflect padding.
- color (`sample_color`, `color_matrix`, `apply_color_matrix`): brightness, contrast, luma flip, hue
  rotation, saturation, accumulated into one 4x4 matrix per image (homogeneous RGB) applied once.

Every op is gated per image: it is applied with probability p (both rotations with probability
1 - sqrt(1 - p), so that at least one of them happens with probability p). An op that is not
applied gets its neutral parameter (scale 1, angle 0, shift 0, ...), so its matrix is exactly the
identity. `sample` draws all of a batch's randomness in one RNG call (normals by the inverse CDF),
which keeps the number of RNG kernels, and so the compile time, small.

Geometry is in pixel units about the image centre ((w - 1) / 2, (h - 1) / 2), x to the right, y
down; a geometric matrix maps an OUTPUT pixel to its SOURCE pixel.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

Array = jnp.ndarray

# The paper's / StyleGAN2-ADA's 'bgc' parameters. Lognormal stds are in log2 units: exp2(N(0, s)).
XINT_MAX = 0.125  # integer translation: round(U(-0.125, 0.125) * size) pixels
SCALE_STD = 0.2  # isotropic scaling: exp2(N(0, 0.2)), i.e. lognormal with std 0.2 ln 2
ROTATE_MAX = 1.0  # arbitrary rotation: U(-pi, pi) * ROTATE_MAX
ANISO_STD = 0.2  # anisotropic scaling: x by exp2(N(0, 0.2)), y by its inverse
XFRAC_STD = 0.125  # fractional translation: N(0, 0.125) * size pixels
BRIGHTNESS_STD = 0.2  # add N(0, 0.2) to every channel
CONTRAST_STD = 0.5  # scale about mid-grey 0 by exp2(N(0, 0.5))
HUE_MAX = 1.0  # hue rotation about the luma axis: U(-pi, pi) * HUE_MAX
SATURATION_STD = 1.0  # scale the deviation from the luma axis by exp2(N(0, 1))

LUMA_AXIS = (1 / math.sqrt(3),) * 3  # unit vector (1, 1, 1) / sqrt(3), as in the official code

_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)  # no TF32 on GPUs


def reflect_index(idx: Array, n: int) -> Array:
  """Mirrors out-of-range indices back into [0, n) without repeating the edge ('reflect' pad)."""
  period = max(2 * (n - 1), 1)
  m = jnp.mod(idx, period)
  return jnp.where(m >= n, period - m, m)


def _normal(u: Array) -> Array:
  """N(0, 1) from U(0, 1) by the inverse CDF, as jax.random.normal does it."""
  return math.sqrt(2) * jax.lax.erf_inv(2 * u - 1)


# --- Parameters. ---------------------------------------------------------------------------------

class BlitParams(NamedTuple):
  flip: Array  # [B] bool: mirror left-right
  k: Array  # [B] int32 in 0..3: counter-clockwise quarter turns (as jnp.rot90); 0 if h != w
  ty: Array  # [B] int32: rows to shift down
  tx: Array  # [B] int32: columns to shift right


class GeomParams(NamedTuple):
  scale: Array  # [B] isotropic scale factor (1 = off)
  rot_pre: Array  # [B] angle in radians (0 = off)
  aniso: Array  # [B] x scaled by aniso, y by 1 / aniso (1 = off)
  rot_post: Array  # [B] angle in radians (0 = off)
  tx: Array  # [B] shift right in pixels (0 = off)
  ty: Array  # [B] shift down in pixels (0 = off)
  applied: Array  # [B] bool: any of the above drawn for this image


class ColorParams(NamedTuple):
  brightness: Array  # [B] added to every channel (0 = off)
  contrast: Array  # [B] scale factor about 0 (1 = off)
  lumaflip: Array  # [B] 0. or 1.: 1 negates the luma component
  hue: Array  # [B] rotation angle about the luma axis (0 = off)
  saturation: Array  # [B] scale of the component orthogonal to the luma axis (1 = off)
  applied: Array  # [B] bool: any of the above drawn for this image


BLIT_DRAWS, GEOM_DRAWS, COLOR_DRAWS = 7, 11, 10  # U(0, 1) draws per image each group consumes


def sample(key: jax.Array, b: int, h: int, w: int, p: Array | float
           ) -> tuple[BlitParams, GeomParams, ColorParams]:
  """All of one batch's parameters from ONE RNG call (threefry dominates compile time); draws are
  kept off 0 so that the inverse normal CDF stays finite."""
  u = jax.random.uniform(key, (b, BLIT_DRAWS + GEOM_DRAWS + COLOR_DRAWS), minval=2.0 ** -24)
  u_blit, u_geom, u_color = jnp.split(u, [BLIT_DRAWS, BLIT_DRAWS + GEOM_DRAWS], axis=1)
  p = jnp.clip(jnp.asarray(p, jnp.float32), 0.0, 1.0)
  return sample_blit(u_blit, h, w, p), sample_geometric(u_geom, h, w, p), sample_color(u_color, p)


def sample_blit(u: Array, h: int, w: int, p: Array) -> BlitParams:
  """From [B, BLIT_DRAWS] U(0, 1) draws: x-flip (i in {0, 1}), quarter turns (k in {0..3}, square
  images only), integer shifts."""
  on = u[:, :3] < p  # per-op gates
  flip = on[:, 0] & (u[:, 3] < 0.5)
  k = jnp.minimum(jnp.floor(u[:, 4] * 4), 3).astype(jnp.int32)
  k = jnp.where(on[:, 1] & (h == w), k, 0)  # a quarter turn keeps the shape only if h == w
  t = (u[:, 5:] * 2 - 1) * XINT_MAX  # the same gate for both axes
  ty = jnp.where(on[:, 2], jnp.round(t[:, 0] * h), 0).astype(jnp.int32)
  tx = jnp.where(on[:, 2], jnp.round(t[:, 1] * w), 0).astype(jnp.int32)
  return BlitParams(flip, k, ty, tx)


def sample_geometric(u: Array, h: int, w: int, p: Array) -> GeomParams:
  """From [B, GEOM_DRAWS] U(0, 1) draws; p in [0, 1]."""
  p_rot = 1 - jnp.sqrt(1 - p)  # pre- and post-rotation: P(at least one) = p
  on = u[:, :5] < jnp.stack([p, p_rot, p, p_rot, p])
  n = _normal(u[:, 5:9])
  angle = (u[:, 9:] * 2 - 1) * (math.pi * ROTATE_MAX)
  return GeomParams(
      scale=jnp.where(on[:, 0], jnp.exp2(n[:, 0] * SCALE_STD), 1.0),
      rot_pre=jnp.where(on[:, 1], angle[:, 0], 0.0),
      aniso=jnp.where(on[:, 2], jnp.exp2(n[:, 1] * ANISO_STD), 1.0),
      rot_post=jnp.where(on[:, 3], angle[:, 1], 0.0),
      tx=jnp.where(on[:, 4], n[:, 2] * (XFRAC_STD * w), 0.0),
      ty=jnp.where(on[:, 4], n[:, 3] * (XFRAC_STD * h), 0.0),
      applied=jnp.any(on, axis=1))


def sample_color(u: Array, p: Array) -> ColorParams:
  """From [B, COLOR_DRAWS] U(0, 1) draws."""
  on = u[:, :5] < p
  n = _normal(u[:, 5:8])
  return ColorParams(
      brightness=jnp.where(on[:, 0], n[:, 0] * BRIGHTNESS_STD, 0.0),
      contrast=jnp.where(on[:, 1], jnp.exp2(n[:, 1] * CONTRAST_STD), 1.0),
      lumaflip=jnp.where(on[:, 2], jnp.floor(u[:, 8] * 2), 0.0),
      hue=jnp.where(on[:, 3], (u[:, 9] * 2 - 1) * (math.pi * HUE_MAX), 0.0),
      saturation=jnp.where(on[:, 4], jnp.exp2(n[:, 2] * SATURATION_STD), 1.0),
      applied=jnp.any(on, axis=1))


# --- Geometry: one 3x3 matrix per image, one bilinear resampling. --------------------------------

def _matrices(rows: list[list[Array | float]], b: int) -> Array:
  """Nested lists of [B] arrays or constants -> [B, n, m] float32."""
  full = lambda v: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (b,))
  return jnp.stack([jnp.stack([full(v) for v in row], -1) for row in rows], -2)


def translate2d(tx: Array, ty: Array) -> Array:
  return _matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]], tx.shape[0])


def scale2d(sx: Array, sy: Array) -> Array:
  return _matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], sx.shape[0])


def rotate2d(theta: Array) -> Array:
  c, s = jnp.cos(theta), jnp.sin(theta)
  return _matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]], theta.shape[0])


def blit_matrix(bp: BlitParams, then: Optional[GeomParams] = None) -> Array:
  """[B, 3, 3] inverse of the blit ops (x-flip, then k counter-clockwise quarter turns, then the
  integer shift), in `geometric_matrix`'s convention: flip^-1 R^-1 T^-1; with `then`, followed by
  those geometric ops: flip^-1 R^-1 T^-1 G^-1.

  Images that also draw a geometric op are resampled ONCE from the original with
  blit_matrix @ geometric_matrix, as the official pipeline does; gathering the blit first and
  resampling the result would reflect twice at the borders (a mirror of a mirror).
  """
  sx = jnp.where(bp.flip, -1.0, 1.0)
  flip = scale2d(sx, jnp.ones_like(sx))
  # Output (x, y) of one quarter turn samples (-y, x) (jnp.rot90 axes (1, 2), about the centre):
  # rotate2d(k * pi / 2), with exact cosines and sines.
  cos = jnp.take(jnp.array([1.0, 0.0, -1.0, 0.0]), bp.k)
  sin = jnp.take(jnp.array([0.0, 1.0, 0.0, -1.0]), bp.k)
  turn = _matrices([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], bp.k.shape[0])
  shift = translate2d(-bp.tx.astype(jnp.float32), -bp.ty.astype(jnp.float32))
  ops = (flip, turn, shift) + ((geometric_matrix(then),) if then is not None else ())
  return functools.reduce(_matmul, ops)


def geometric_matrix(g: GeomParams) -> Array:
  """[B, 3, 3] inverse transform: output pixel -> source pixel, both relative to the centre.

  The image is scaled, pre-rotated, anisotropically scaled, post-rotated, then translated; the
  inverse chains the inverse ops in the opposite order: S^-1 R_pre^-1 A^-1 R_post^-1 T^-1.
  """
  ops = (scale2d(1 / g.scale, 1 / g.scale), rotate2d(-g.rot_pre),
         scale2d(1 / g.aniso, g.aniso), rotate2d(-g.rot_post), translate2d(-g.tx, -g.ty))
  return functools.reduce(_matmul, ops)


def affine_resample(images: Array, g_inv: Array) -> Array:
  """out[b, y, x] = bilinear sample of images[b] at g_inv[b] @ (x, y, 1), reflect padding.

  Coordinates are pixel units about the centre. No anti-aliasing filter: see augment.py.
  """
  _, h, w, _ = images.shape
  cy, cx = (h - 1) / 2, (w - 1) / 2
  y = (jnp.arange(h, dtype=jnp.float32) - cy)[None, :, None]
  x = (jnp.arange(w, dtype=jnp.float32) - cx)[None, None, :]
  g = g_inv.astype(jnp.float32)[:, :, :, None, None]  # [B, 3, 3, 1, 1] against [1, h, w]
  src_x = g[:, 0, 0] * x + g[:, 0, 1] * y + g[:, 0, 2] + cx  # [B, h, w]
  src_y = g[:, 1, 0] * x + g[:, 1, 1] * y + g[:, 1, 2] + cy
  x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
  fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = reflect_index(x0 + 1, w), reflect_index(y0 + 1, h)
  x0, y0 = reflect_index(x0, w), reflect_index(y0, h)
  pixels = jax.vmap(lambda img, iy, ix: img[iy, ix])  # [h, w, C], [h, w] x2 -> [h, w, C]
  top = pixels(images, y0, x0) * (1 - fx) + pixels(images, y0, x1) * fx
  bottom = pixels(images, y1, x0) * (1 - fx) + pixels(images, y1, x1) * fx
  return (top * (1 - fy) + bottom * fy).astype(images.dtype)


# --- Colour: one 4x4 matrix per image (homogeneous RGB), applied once. ---------------------------

def _luma_projector(b: int) -> Array:
  """v v^T for v = (1, 1, 1, 0) / sqrt(3): projects onto the luma (grey) axis."""
  v = jnp.array(LUMA_AXIS + (0.0,), jnp.float32)
  return jnp.broadcast_to(jnp.outer(v, v), (b, 4, 4))


def translate3d(t: Array) -> Array:
  return _matrices([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], t.shape[0])


def scale3d(s: Array) -> Array:
  return _matrices([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], s.shape[0])


def luma_flip(i: Array) -> Array:
  """I - 2 v v^T i: for i = 1, negates the luma component and keeps the chroma (Householder)."""
  return jnp.eye(4) - 2 * _luma_projector(i.shape[0]) * i[:, None, None]


def hue_rotation(theta: Array) -> Array:
  """Rotation by theta about the luma axis (Rodrigues: cos I + sin [v]x + (1 - cos) v v^T)."""
  vr, vg, vb = LUMA_AXIS
  c, s = jnp.cos(theta), jnp.sin(theta)
  rows = [[c + (1 - c) * vr * vr, -s * vb + (1 - c) * vr * vg, s * vg + (1 - c) * vr * vb, 0],
          [s * vb + (1 - c) * vg * vr, c + (1 - c) * vg * vg, -s * vr + (1 - c) * vg * vb, 0],
          [-s * vg + (1 - c) * vb * vr, s * vr + (1 - c) * vb * vg, c + (1 - c) * vb * vb, 0],
          [0, 0, 0, 1]]
  return _matrices(rows, theta.shape[0])


def saturation_matrix(s: Array) -> Array:
  """v v^T + (I - v v^T) s, written as I + (I - v v^T) (s - 1) so that s = 1 is exactly I: scales
  the deviation from the luma axis by s."""
  return jnp.eye(4) + (jnp.eye(4) - _luma_projector(s.shape[0])) * (s - 1)[:, None, None]


def color_matrix(c: ColorParams) -> Array:
  """[B, 4, 4]: brightness, then contrast, luma flip, hue rotation, saturation (left-multiplied)."""
  ops = (translate3d(c.brightness), scale3d(c.contrast), luma_flip(c.lumaflip),
         hue_rotation(c.hue), saturation_matrix(c.saturation))
  return functools.reduce(lambda acc, m: _matmul(m, acc), ops)


def apply_color_matrix(images: Array, m: Array) -> Array:
  """rgb' = M[:3, :3] rgb + M[:3, 3] per image. One channel: grey as (g, g, g), mean of the result
  (as the official code does)."""
  m = m.astype(jnp.float32)
  if images.shape[-1] == 3:
    out = jnp.einsum("bij,bhwj->bhwi", m[:, :3, :3], images,
                     precision=jax.lax.Precision.HIGHEST) + m[:, None, None, :3, 3]
  elif images.shape[-1] == 1:
    gain = jnp.mean(jnp.sum(m[:, :3, :3], axis=2), axis=1)
    out = images * gain[:, None, None, None] + jnp.mean(m[:, :3, 3], axis=1)[:, None, None, None]
  else:
    raise ValueError(f"colour augmentation needs 1 or 3 channels, got {images.shape[-1]}")
  return out.astype(images.dtype)
