"""Differentiable augmentation of D's inputs, picked by name from the AUGMENTS registry.

Both real and fake images (NHWC, float in [-1, 1]) go through the same random pipeline before the
discriminator, and gradients flow through it to G: D then judges reals and fakes under the same
augmented distribution, so G is not pushed to reproduce the augmentations. Use independent keys for
reals and fakes. Everything is a pure function of an explicit key: deterministic given the key,
jit-friendly, no global state.

- 'diffaugment' (Zhao et al. 2020): policy 'color,translation,cutout' applied to every image.
- 'ada' (Karras et al. 2020): StyleGAN2-ADA's recommended 'bgc' pipeline, each op applied per image
  with probability p, and p tuned by the overfitting heuristic (`AugmentState`, `accumulate`,
  `maybe_update`). Parameter draws, matrices and resampling live in `jaxgan.augment_ada`. In order:
  * blit, exact integer gathers: x-flip (i in {0, 1}); rotation by k * 90 degrees (k in {0..3};
    square images only, skipped otherwise); integer translation (round(U(-1/8, 1/8) * size)
    pixels, one gate for both axes, reflect pad).
  * geom, accumulated into one 3x3 matrix per image (pixel units about the image centre) and
    resampled ONCE, bilinearly, with reflect padding: isotropic scaling (lognormal, std 0.2 ln2);
    pre-rotation (U(-pi, pi)); anisotropic scaling (x by lognormal std 0.2 ln2, y by its inverse);
    post-rotation (U(-pi, pi)); fractional translation (N(0, 1/8 * size) pixels per axis). The two
    rotations are each gated with probability 1 - sqrt(1 - p), all other ops with p.
  * color, accumulated into one 4x4 matrix per image (homogeneous RGB, luma axis
    v = (1, 1, 1) / sqrt(3)) applied once: brightness (add N(0, 0.2)); contrast (scale about
    mid-grey 0 by lognormal std 0.5 ln2); luma flip (I - 2 v v^T i, i in {0, 1}: negates the luma
    component, keeps the chroma); hue rotation (U(-pi, pi) about v); saturation (scale the
    component orthogonal to v by lognormal std ln2). One-channel images use the matrix's grey
    response, as the official code does.
  Left out: the anti-aliasing of the official geometric resampling (2x upsampling and downsampling
  with a wavelet (sym6) low-pass filter around the bilinear sampling), so aliasing under strong
  minification is not suppressed. Out-of-range sampling mirrors again and again (periodic
  reflection), where the official code reflect-pads once by a bounded margin and reads zeros
  beyond. The blit ops are exact gathers for images without geometric ops, and part of the one
  matrix for the others (as in the official code: a single resampling, one reflection). Also
  left out, as they are not part of 'bgc': the 'filter' (image-space frequency-band filtering),
  'noise' (additive Gaussian noise) and 'cutout' groups.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxgan import augment_ada as ada
from jaxgan.config.schema import ConfigError
from jaxgan.registry import Registry

Array = jnp.ndarray
DEFAULT_POLICY = "color,translation,cutout"


def _uniform(key: jax.Array, x: Array, lo: float = 0.0, hi: float = 1.0) -> Array:
  """One U(lo, hi) value per image, shaped [B, 1, 1, 1] to broadcast over the pixels."""
  return jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype, lo, hi)


def _max_shift(n: int) -> int:
  return int(n * 0.125 + 0.5)  # 1/8 of the size, rounded as in the DiffAugment reference code


def translate(images: Array, shift_y: Array, shift_x: Array, pad: str = "zero") -> Array:
  """out[b, i, j] = images[b, i - shift_y[b], j - shift_x[b]]; integer [B] shifts, exact gathers.

  Pixels shifted in from outside are 0 (`pad='zero'`) or mirrored (`pad='reflect'`).
  """
  _, h, w, _ = images.shape
  iy = jnp.arange(h)[None, :] - shift_y[:, None]
  ix = jnp.arange(w)[None, :] - shift_x[:, None]
  fix = (lambda i, n: jnp.clip(i, 0, n - 1)) if pad == "zero" else ada.reflect_index
  out = jax.vmap(lambda img, a, b: img[a][:, b])(images, fix(iy, h), fix(ix, w))
  if pad == "zero":
    inside = ((iy >= 0) & (iy < h))[:, :, None, None] & ((ix >= 0) & (ix < w))[:, None, :, None]
    out = jnp.where(inside, out, jnp.zeros((), out.dtype))
  return out


def _random_shifts(key: jax.Array, images: Array) -> tuple[Array, Array]:
  ky, kx = jax.random.split(key)
  b, h, w, _ = images.shape
  sy = jax.random.randint(ky, (b,), -_max_shift(h), _max_shift(h) + 1)
  sx = jax.random.randint(kx, (b,), -_max_shift(w), _max_shift(w) + 1)
  return sy, sx


# --- DiffAugment ops (Zhao et al. 2020, reference parameters). -----------------------------------

def rand_brightness(images: Array, key: jax.Array) -> Array:
  return images + _uniform(key, images, -0.5, 0.5)


def rand_saturation(images: Array, key: jax.Array) -> Array:
  mean = jnp.mean(images, axis=-1, keepdims=True)  # per-pixel grey level
  return mean + (images - mean) * _uniform(key, images, 0.0, 2.0)


def rand_contrast(images: Array, key: jax.Array) -> Array:
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)  # per-image mean
  return mean + (images - mean) * _uniform(key, images, 0.5, 1.5)


def rand_translation(images: Array, key: jax.Array) -> Array:
  return translate(images, *_random_shifts(key, images), pad="zero")


def rand_cutout(images: Array, key: jax.Array) -> Array:
  """Zeroes one square of half the image size per image, as DiffAugment's reference does: its
  centre is uniform over the whole image and the border clips it. (A square kept fully inside
  would cover the image centre, where catalog products sit, 94 % of the time at 64x64; the
  reference's covers it 24 % of the time.)"""
  b, h, w, _ = images.shape
  ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
  ky, kx = jax.random.split(key)
  # The reference's centre offsets: 0..h (even sizes) or 0..h-1 (odd), the square from
  # offset - size // 2.
  top = jax.random.randint(ky, (b, 1), 0, h + (1 - ch % 2)) - ch // 2
  left = jax.random.randint(kx, (b, 1), 0, w + (1 - cw % 2)) - cw // 2
  rows = (jnp.arange(h)[None] >= top) & (jnp.arange(h)[None] < top + ch)
  cols = (jnp.arange(w)[None] >= left) & (jnp.arange(w)[None] < left + cw)
  cut = rows[:, :, None, None] & cols[:, None, :, None]
  return jnp.where(cut, jnp.zeros((), images.dtype), images)


_DIFF_OPS: dict[str, tuple[Callable[[Array, jax.Array], Array], ...]] = {
    "color": (rand_brightness, rand_saturation, rand_contrast),
    "translation": (rand_translation,),
    "cutout": (rand_cutout,),
}


@functools.lru_cache(maxsize=None)
def parse_policy(policy: str) -> tuple[Callable[[Array, jax.Array], Array], ...]:
  """'color,translation' -> the ops, in policy order; cached, so each string is parsed once."""
  names = [n.strip() for n in policy.split(",") if n.strip()]
  unknown = [n for n in names if n not in _DIFF_OPS]
  if unknown:
    raise ValueError(f"unknown DiffAugment op(s) {unknown}; choose from {sorted(_DIFF_OPS)}")
  return tuple(op for n in names for op in _DIFF_OPS[n])


def diffaugment(images: Array, key: jax.Array, policy: str = DEFAULT_POLICY) -> Array:
  """DiffAugment: every op of `policy` applied to every image, each with its own key."""
  ops = parse_policy(policy)
  for op, k in zip(ops, jax.random.split(key, max(len(ops), 1))):
    images = op(images, k)
  return images


# --- ADA pipeline (Karras et al. 2020), the 'bgc' set: see the module docstring. ----------------

def ada_augment(images: Array, key: jax.Array, p: Array | float) -> Array:
  """Each op applied to each image with probability p (a traced scalar); p = 0 is the identity.

  blit as exact gathers, then geom as one resampling, then color as one matrix. Images that draw
  no geometric (colour) op skip the resampling (colour matrix) by `where`, so unaugmented images
  come back bit-exact.
  """
  b, h, w, _ = images.shape
  return apply_ada(images, *ada.sample(key, b, h, w, p))


def apply_ada(images: Array, blit: ada.BlitParams, geom: ada.GeomParams,
              color: ada.ColorParams) -> Array:
  """The 'bgc' pipeline for drawn parameters (`ada_augment` draws them)."""
  b, h, w, _ = images.shape
  per_image = lambda m: m[:, None, None, None]
  x = jnp.where(per_image(blit.flip), images[:, :, ::-1], images)
  if h == w:  # 90-degree rotations keep the shape only for square images
    rots = jnp.stack([jnp.rot90(x, r, axes=(1, 2)) for r in range(4)])
    x = rots[blit.k, jnp.arange(b)]
  x = translate(x, blit.ty, blit.tx, pad="reflect")  # a zero shift is an exact identity gather
  # With a geometric op, one resampling of the ORIGINAL through blit and geometry together
  # (reflecting once, at the original's borders); the gathers above serve the other images.
  x = jnp.where(per_image(geom.applied),
                ada.affine_resample(images, ada.blit_matrix(blit, geom)), x)

  return jnp.where(per_image(color.applied), ada.apply_color_matrix(x, ada.color_matrix(color)), x)


# --- ADA's p heuristic. --------------------------------------------------------------------------

class AugmentState(NamedTuple):
  """ADA's p plus the sign(D(real)) accumulators; a pytree the trainer can carry and checkpoint."""
  p: Array  # float32 scalar
  signs_sum: Array  # float32 scalar: sum of sign(D(real)) since the last update
  count: Array  # int32 scalar: number of logits summed


def init_state(p: float = 0.0) -> AugmentState:
  return AugmentState(jnp.float32(p), jnp.float32(0.0), jnp.int32(0))


def ada_update(p: Array, real_logits_sign_mean: Array, images_in_interval: Array | int,
               target: float = 0.6, ada_kimg: float = 500.0) -> Array:
  """p <- clip(p + sign(r_t - target) * images / (ada_kimg * 1000), 0, 1).

  With the step scaled by the images seen, p can go from 0 to 1 in `ada_kimg` thousand images.
  """
  step = jnp.asarray(images_in_interval, jnp.float32) / (ada_kimg * 1000.0)
  direction = jnp.sign(jnp.asarray(real_logits_sign_mean, jnp.float32) - target)
  return jnp.clip(jnp.asarray(p, jnp.float32) + direction * step, 0.0, 1.0)


def accumulate(state: AugmentState, real_logits: Array, boundary: float = 0.0) -> AugmentState:
  """Adds sign(D(real) - boundary) of this step's augmented reals (global logits, not one
  device's); `boundary`: the loss's D output between real and fake (`Loss.ada_boundary`)."""
  signs = jnp.sign(real_logits.astype(jnp.float32) - boundary)
  return state._replace(signs_sum=state.signs_sum + jnp.sum(signs),
                        count=state.count + jnp.int32(real_logits.size))


def maybe_update(state: AugmentState, step: Array | int, interval: int, batch_size: int,
                 target: float = 0.6, ada_kimg: float = 500.0) -> AugmentState:
  """After accumulating 0-based step `step`: every `interval` steps, update p and reset the sums.

  The paper (and StyleGAN2-ADA) use interval 4, target 0.6, ada_kimg 500.
  """
  boundary = (jnp.asarray(step) + 1) % interval == 0
  r_t = state.signs_sum / jnp.maximum(state.count, 1).astype(jnp.float32)
  new_p = ada_update(state.p, r_t, batch_size * interval, target, ada_kimg)
  return AugmentState(
      p=jnp.where(boundary & (state.count > 0), new_p, state.p),
      signs_sum=jnp.where(boundary, jnp.float32(0.0), state.signs_sum),
      count=jnp.where(boundary, jnp.int32(0), state.count))


# --- Registry. -----------------------------------------------------------------------------------

Apply = Callable[[Array, jax.Array, Array], Array]  # (images, key, p) -> images


@dataclasses.dataclass(frozen=True)
class Augment:
  make: Callable[[Any], Apply]  # config.augment -> the pipeline it configures
  adaptive: bool = False  # True: the trainer tunes p with accumulate / maybe_update
  uses_p: bool = False  # True: p starts at augment.ada_p_init (and is logged as augment_p)
  reads: frozenset = frozenset()  # the FAMILY_KEYS it reads
  # config.augment -> None, or a ConfigError naming the key (run before anything compiles).
  validate: Callable[[Any], None] = lambda augment_config: None


def _configured_diffaugment(augment_config: Any) -> Apply:
  policy = augment_config.policy
  return lambda images, key, p: diffaugment(images, key, policy)


def _validate_diffaugment(augment_config: Any) -> None:
  try:
    ops = parse_policy(augment_config.policy)
  except ValueError as e:
    raise ConfigError(f"config key augment.policy: {e}") from None
  if not ops:
    raise ConfigError(f"config key augment.policy: {augment_config.policy!r} names no op, so "
                      "DiffAugment would never augment; name them (e.g. color,translation,"
                      "cutout), or set augment.name=none")


AUGMENTS: Registry[Augment] = Registry("augment")
# Augment keys that only some augmentations read (config validation refuses the others set).
FAMILY_KEYS = ("policy", "ada_target", "ada_kimg", "ada_interval", "ada_p_init")

AUGMENTS.register("none")(Augment(make=lambda c: lambda images, key, p: images))
AUGMENTS.register("diffaugment")(Augment(make=_configured_diffaugment,
                                         reads=frozenset({"policy"}),
                                         validate=_validate_diffaugment))
AUGMENTS.register("ada")(Augment(make=lambda c: ada_augment, adaptive=True, uses_p=True,
                                 reads=frozenset(FAMILY_KEYS) - {"policy"}))
# StyleGAN2-ADA's --aug=fixed: the same pipeline at a constant p (augment.ada_p_init).
AUGMENTS.register("ada_fixed")(Augment(make=lambda c: ada_augment, uses_p=True,
                                       reads=frozenset({"ada_p_init"})))
