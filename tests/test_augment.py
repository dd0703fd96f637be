"""Augmentations: shapes, determinism, gradients, exact geometry, ADA's 'bgc' ops, p heuristic."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import augment
from jaxgan import augment_ada as ada
from jaxgan.config import base_config

SHAPE = (4, 16, 16, 3)
X = jax.random.uniform(jax.random.PRNGKey(0), SHAPE, jnp.float32, -1.0, 1.0)
W = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
K1, K2 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)

AUGS = {  # (images, key, p) -> images, as the registry's Augment.make builds them
    "color": lambda x, key, p: augment.diffaugment(x, key, policy="color"),
    "translation": lambda x, key, p: augment.diffaugment(x, key, policy="translation"),
    "cutout": lambda x, key, p: augment.diffaugment(x, key, policy="cutout"),
    "color,translation": lambda x, key, p: augment.diffaugment(x, key, policy="color,translation"),
    "diffaugment": lambda x, key, p: augment.diffaugment(x, key),
    "ada": augment.ada_augment,
}


@functools.partial(jax.jit, static_argnums=0)
def _out_and_grad(name, x, key, p):
  """The augmented images and the gradient of sum(out * W) w.r.t. x: ONE compile per name (the
  tests run on 2 CPU cores), and p is traced, so p = 0 and p = 1 share the program."""
  out, vjp = jax.vjp(lambda x: AUGS[name](x, key, p), x)
  return out, vjp(W)[0]


@pytest.mark.parametrize("name", list(AUGS))
def test_shape_dtype_determinism_and_gradient(name):
  aug = lambda key: _out_and_grad(name, X, key, 1.0)
  out, grad = aug(K1)
  assert out.shape == X.shape and out.dtype == X.dtype
  np.testing.assert_array_equal(out, aug(K1)[0])  # same key, same images
  assert not np.array_equal(out, aug(K2)[0])  # another key, other images
  assert not np.array_equal(out, X)
  assert grad.shape == X.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_none_and_ada_at_p0_are_the_identity():
  none = augment.AUGMENTS.get("none").make(base_config().augment)
  np.testing.assert_array_equal(none(X, K1, 1.0), X)
  x = X.at[0, 0, 0].set(jnp.array([-0.0, 1.0, -1.0]))  # bit-exact: the sign of zero survives
  for key in (K1, K2):
    out, grad = _out_and_grad("ada", x, key, 0.0)
    np.testing.assert_array_equal(np.asarray(out).view(np.uint32), np.asarray(x).view(np.uint32))
    np.testing.assert_array_equal(grad, W)  # the identity's gradient
  out = np.asarray(_out_and_grad("ada", x, K1, 1.0)[0])  # the same program, p traced
  assert all(not np.array_equal(out[b], x[b]) for b in range(SHAPE[0]))  # p = 1: every image


def test_ada_gates_each_image_on_its_own():
  """Small p: the images that drew no op come back bit-exact (no identity resampling or colour
  matrix applied to them), the others changed."""
  sample = jax.jit(lambda key: ada.sample(key, SHAPE[0], 16, 16, 0.05))
  for seed in range(100):  # a key that draws both kinds of image in the batch
    blit, geom, color = sample(jax.random.PRNGKey(seed))
    touched = (np.asarray(blit.flip) | (np.asarray(blit.k) != 0) | (np.asarray(blit.ty) != 0)
               | (np.asarray(blit.tx) != 0) | np.asarray(geom.applied) | np.asarray(color.applied))
    if 0 < touched.sum() < SHAPE[0]:
      break
  else:
    pytest.fail("no key drew a mixed batch")
  x = np.asarray(X.at[:, 0, 0, 0].set(-0.0))  # a -0.0 per image: identity maths would make it +0.0
  out = np.asarray(_out_and_grad("ada", jnp.asarray(x), jax.random.PRNGKey(seed), 0.05)[0])
  for b in range(SHAPE[0]):
    assert np.array_equal(out[b].view(np.uint32), x[b].view(np.uint32)) != touched[b], b


def test_registry():
  assert augment.AUGMENTS.names() == ["ada", "ada_fixed", "diffaugment", "none"]
  assert augment.AUGMENTS.get("ada").adaptive
  assert not augment.AUGMENTS.get("diffaugment").adaptive
  assert not augment.AUGMENTS.get("none").adaptive
  config = base_config().augment
  assert augment.AUGMENTS.get("ada").make(config) is augment.ada_augment
  fixed = augment.AUGMENTS.get("ada_fixed")  # StyleGAN2-ADA's --aug=fixed
  assert fixed.make(config) is augment.ada_augment and fixed.uses_p and not fixed.adaptive
  # DiffAugment's entry applies the configured policy (the schema's default is the paper's).
  assert config.policy == augment.DEFAULT_POLICY
  config.policy = "translation"
  apply = augment.AUGMENTS.get("diffaugment").make(config)
  both = jax.jit(lambda x, key: (apply(x, key, 0.3), AUGS["translation"](x, key, 0.3)))
  np.testing.assert_array_equal(*both(X, K1))
  with pytest.raises(KeyError, match="unknown augment"):
    augment.AUGMENTS.get("mixup")


def test_policy_parsing():
  assert augment.parse_policy("color, translation") is augment.parse_policy("color, translation")
  assert len(augment.parse_policy("color")) == 3
  assert len(augment.parse_policy(augment.DEFAULT_POLICY)) == 5
  np.testing.assert_array_equal(augment.diffaugment(X, K1, policy=""), X)
  with pytest.raises(ValueError, match="unknown DiffAugment"):
    augment.parse_policy("color,rotation")


def test_color_ops_keep_their_reference_statistics():
  @jax.jit
  def ops(x, key):
    return (augment.rand_brightness(x, key), augment.rand_saturation(x, key),
            augment.rand_contrast(x, key))

  bright, sat, con = ops(X, K1)
  delta = np.asarray(bright - X)
  assert np.allclose(delta, delta[:, :1, :1, :1], atol=1e-6)  # one offset per image
  assert np.all(np.abs(delta) <= 0.5)
  np.testing.assert_allclose(sat.mean(-1), X.mean(-1), atol=1e-5)  # per-pixel grey kept
  np.testing.assert_allclose(con.mean((1, 2, 3)), X.mean((1, 2, 3)), atol=1e-5)  # image mean kept


def test_saturation_and_contrast_factors_span_the_reference_ranges():
  """DiffAugment's reference: saturation scales each pixel's deviation from its grey level by
  U(0, 2), contrast each image's deviation from its mean over pixels AND channels by U(0.5, 1.5).
  The flat colour's channels differ from the image mean: per-channel means would leave it be."""
  b = 256
  x = np.broadcast_to(np.array([0.6, -0.2, -0.1], np.float32), (b, 2, 2, 3))
  sat, con = jax.jit(lambda x, key: (augment.rand_saturation(x, key),
                                     augment.rand_contrast(x, key)))(jnp.asarray(x), K1)

  def factors(out, mean):  # out = mean + f * (x - mean), one f per image
    dev = x - mean
    f = np.sum((np.asarray(out) - mean) * dev, axis=(1, 2, 3)) / np.sum(dev ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(out, mean + f[:, None, None, None] * dev, atol=1e-6)
    return f

  s = factors(sat, x.mean(-1, keepdims=True))
  c = factors(con, x.mean((1, 2, 3), keepdims=True))
  assert s.min() >= -1e-6 and s.max() <= 2 + 1e-6 and s.min() < 0.05 and s.max() > 1.95
  assert c.min() >= 0.5 - 1e-6 and c.max() <= 1.5 + 1e-6 and c.min() < 0.55 and c.max() > 1.45


def test_translate_known_shift():
  x = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
  one, minus_one = jnp.array([1]), jnp.array([-1])
  out = np.asarray(augment.translate(x, one, minus_one))[0, :, :, 0]
  expected = np.zeros((4, 4))
  expected[1:, :3] = np.asarray(x)[0, :3, 1:, 0]  # out[i, j] = x[i - 1, j + 1]
  np.testing.assert_array_equal(out, expected)
  mirrored = np.asarray(augment.translate(x, one, jnp.array([0]), pad="reflect"))[0, :, :, 0]
  np.testing.assert_array_equal(mirrored[0], np.asarray(x)[0, 1, :, 0])  # row -1 mirrors row 1
  np.testing.assert_array_equal(mirrored[1:], np.asarray(x)[0, :3, :, 0])


def _shifted(x, dy, dx):
  """NumPy reference: x moved by (dy, dx) with zeros shifted in."""
  out = np.zeros_like(x)
  h, w = x.shape[:2]
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
      x[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
  return out


def test_random_translation_is_an_integer_shift_with_zero_border():
  x = np.asarray(jnp.arange(1.0, 1.0 + np.prod(SHAPE)).reshape(SHAPE))  # all nonzero, distinct
  out = np.asarray(jax.jit(augment.rand_translation)(jnp.asarray(x), K1))
  shifts = []
  for b in range(SHAPE[0]):
    found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)  # 16 / 8 = 2 pixels at most
             if np.array_equal(out[b], _shifted(x[b], dy, dx))]
    assert len(found) == 1, f"image {b} is not a shifted copy"
    shifts += found
  assert len(set(shifts)) > 1  # per-image shifts


def test_translate_zero_pads_every_side():
  """Every shift in -2..2 on both axes of a non-square image matches the NumPy reference: what
  comes in from any side, bottom and right included, is zero, not a copy of the edge."""
  shifts = np.array(list(itertools.product(range(-2, 3), repeat=2)))
  x = np.arange(1.0, 31.0, dtype=np.float32).reshape(1, 5, 6, 1)
  out = np.asarray(jax.jit(augment.translate)(jnp.asarray(np.repeat(x, len(shifts), 0)),
                                              jnp.asarray(shifts[:, 0]), jnp.asarray(shifts[:, 1])))
  for i, (dy, dx) in enumerate(shifts):
    np.testing.assert_array_equal(out[i], _shifted(x[0], dy, dx), err_msg=f"shift {dy, dx}")


def _centre_sources(out, h):
  """(dy, dx) per image from its centre pixel, for images whose pixel (i, j) held 1 + i * h + j."""
  src = np.rint(out[:, h // 2, h // 2, 0]).astype(int) - 1
  return h // 2 - src // h, h // 2 - src % h


_CODED = jnp.broadcast_to(jnp.arange(1.0, 257.0).reshape(1, 16, 16, 1), (500, 16, 16, 1))


def test_random_translation_draws_each_axis_independently_over_the_reference_range():
  """DiffAugment's reference draws each axis's shift from -2..2 at 16x16 (randint's exclusive
  upper bound + 1), x and y independently: all 25 pairs occur, each value about equally often."""
  dy, dx = _centre_sources(np.asarray(jax.jit(augment.rand_translation)(_CODED, K1)), 16)
  assert set(zip(dy, dx)) == set(itertools.product(range(-2, 3), repeat=2))
  for d in (dy, dx):
    np.testing.assert_allclose(np.bincount(d + 2) / len(d), 0.2, atol=0.05)


def test_each_policy_op_draws_its_own_randomness():
  """Every op of a policy gets its own draw, as the reference's: two translations in a row add
  two independent shifts, so every total in -4..4 occurs (one shared draw gives even totals)."""
  twice = jax.jit(lambda x, key: augment.diffaugment(x, key, "translation,translation"))
  dy, dx = _centre_sources(np.asarray(twice(_CODED, K2)), 16)
  assert set(dy) == set(dx) == set(range(-4, 5))


def test_cutout_zeroes_one_half_size_square_per_image_clipped_by_the_border():
  out = np.asarray(jax.jit(augment.rand_cutout)(jnp.ones((400, 16, 16, 3)), K1))
  assert np.all((out == 0) | (out == 1))
  zero = np.all(out == 0, axis=-1)
  assert np.array_equal(zero, np.any(out == 0, axis=-1))  # every channel alike
  sides = set()
  for b in range(len(out)):
    rows, cols = np.nonzero(zero[b])
    assert len(rows)  # the reference never misses the image: its centre lies inside
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert zero[b].sum() == height * width  # one rectangle
    # 8 wide, or clipped by the border it touches.
    assert height == 8 or (height < 8 and (rows.min() == 0 or rows.max() == 15))
    assert width == 8 or (width < 8 and (cols.min() == 0 or cols.max() == 15))
    sides.add((height, width))
  assert (8, 8) in sides and len(sides) > 4


def test_cutout_places_its_centre_uniformly_as_the_reference():
  """DiffAugment's rand_cutout: the centre offset is uniform over 0..16 at 16x16, the square
  from offset - 4, so a pixel at row r is cut for 8 of the 17 offsets inside, fewer at the
  border: P(centre pixel) = (8/17)^2 = 0.221, P(corner pixel) = (5/17)^2 = 0.087."""
  out = np.asarray(jax.jit(augment.rand_cutout)(jnp.ones((8000, 16, 16, 1)), K2))[..., 0]
  assert np.mean(out[:, 8, 8] == 0) == pytest.approx((8 / 17) ** 2, abs=0.02)
  assert np.mean(out[:, 0, 0] == 0) == pytest.approx((5 / 17) ** 2, abs=0.015)
  assert np.mean(out == 0) == pytest.approx(np.mean([min(o + 4, 16) - max(o - 4, 0)
                                                     for o in range(17)]) ** 2 / 256, abs=0.01)


def test_cutout_reaches_exactly_the_references_squares():
  """The reference's centre offsets are 0..n for an even cut size, 0..n-1 for an odd one, the
  square from offset - size // 2, clipped by the border: each such span occurs, and no other."""
  h, w = 16, 10  # cut 8 rows (offsets 0..16) and 5 columns (offsets 0..9)
  out = np.asarray(jax.jit(augment.rand_cutout)(jnp.ones((600, h, w, 1)), K1))[..., 0]
  spans = lambda n, size, offsets: {(max(o - size // 2, 0), min(o - size // 2 + size, n) - 1)
                                    for o in offsets}
  rows, cols = set(), set()
  for cut in out == 0:
    r, c = np.nonzero(cut.any(1))[0], np.nonzero(cut.any(0))[0]
    rows.add((r.min(), r.max()))
    cols.add((c.min(), c.max()))
  assert rows == spans(h, 8, range(h + 1))
  assert cols == spans(w, 5, range(w))


# --- ADA 'bgc': geometry. ------------------------------------------------------------------------

_resample = jax.jit(ada.affine_resample)
_geometric_matrix = jax.jit(ada.geometric_matrix)


def _mats(*rows):
  """One 3x3 matrix per image from rows of constants."""
  return jnp.broadcast_to(jnp.array(rows, jnp.float32), (SHAPE[0], 3, 3))


def test_affine_resample_identity_is_exact():
  np.testing.assert_array_equal(_resample(X, _mats([1, 0, 0], [0, 1, 0], [0, 0, 1])), X)


def test_affine_resample_quarter_turn_and_integer_shift_match_the_exact_gathers():
  # Output (x, y) samples the source at (-y, x): the counter-clockwise quarter turn of jnp.rot90.
  quarter = _resample(X, _mats([0, -1, 0], [1, 0, 0], [0, 0, 1]))
  np.testing.assert_array_equal(quarter, jnp.rot90(X, 1, axes=(1, 2)))
  # Sampling at (x - 3, y + 2): a shift by 3 right and 2 up, reflected at the borders.
  shifted = _resample(X, _mats([1, 0, -3], [0, 1, 2], [0, 0, 1]))
  np.testing.assert_array_equal(
      shifted, augment.translate(X, jnp.full(4, -2), jnp.full(4, 3), pad="reflect"))


def _np_resample(img, g_inv):
  """Independent reference: per-pixel bilinear interpolation, indices mirrored at the borders."""
  h, w, _ = img.shape

  def mirror(i, n):
    while i < 0 or i >= n:
      i = -i if i < 0 else 2 * (n - 1) - i
    return i

  out = np.zeros_like(img)
  for i in range(h):
    for j in range(w):
      sx, sy, _ = g_inv @ np.array([j - (w - 1) / 2, i - (h - 1) / 2, 1.0])
      sx, sy = sx + (w - 1) / 2, sy + (h - 1) / 2
      x0, y0 = math.floor(sx), math.floor(sy)
      fx, fy = sx - x0, sy - y0
      for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
          out[i, j] += wy * wx * img[mirror(y0 + dy, h), mirror(x0 + dx, w)]
  return out


def test_affine_resample_matches_a_numpy_bilinear_reference():
  img = np.asarray(jax.random.normal(K1, (2, 5, 7, 3)))  # non-square: catches swapped axes
  g_inv = np.array([[[0.8, -0.5, 1.3], [0.4, 1.1, -0.7], [0, 0, 1]],  # inside and out (mirrored)
                    [[1.9, 0.3, 6.2], [-0.2, 2.4, -9.1], [0, 0, 1]]], np.float64)
  out = np.asarray(_resample(jnp.asarray(img), jnp.asarray(g_inv)))
  for b in range(2):
    np.testing.assert_allclose(out[b], _np_resample(img[b], g_inv[b]), atol=2e-5)


def _np_geom(scale, rot_pre, aniso, rot_post, tx, ty):
  """Forward matrix of the documented order: scale, rotate, anisotropic scale, rotate, shift."""
  rot = lambda t: np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
  s = lambda sx, sy: np.diag([sx, sy, 1.0])
  shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1.0]])
  return shift @ rot(rot_post) @ s(aniso, 1 / aniso) @ rot(rot_pre) @ s(scale, scale)


def _geom(**kw):
  values = dict(scale=1.0, rot_pre=0.0, aniso=1.0, rot_post=0.0, tx=0.0, ty=0.0) | kw
  return ada.GeomParams(**{k: jnp.full(SHAPE[0], v, jnp.float32) for k, v in values.items()},
                        applied=jnp.ones(SHAPE[0], bool))


def test_geometric_matrix_inverts_the_ops_in_the_papers_order():
  np.testing.assert_array_equal(_geometric_matrix(_geom())[0], np.eye(3))  # off: exact
  values = dict(scale=1.3, rot_pre=0.4, aniso=0.7, rot_post=-1.1, tx=2.5, ty=-1.5)
  g_inv = np.asarray(_geometric_matrix(_geom(**values)))
  np.testing.assert_allclose(g_inv[0], np.linalg.inv(_np_geom(**values)), atol=1e-5)
  # A quarter turn as a geometric op: clockwise on screen (y points down) = jnp.rot90 k=3.
  turned = _resample(X, _geometric_matrix(_geom(rot_pre=math.pi / 2)))
  np.testing.assert_allclose(turned, jnp.rot90(X, 3, axes=(1, 2)), atol=1e-5)


def _blit(flip, k, ty, tx):
  full = lambda v, dtype: jnp.asarray(v, dtype).reshape(-1) * jnp.ones(SHAPE[0], dtype)
  return ada.BlitParams(full(flip, bool), full(k, jnp.int32), full(ty, jnp.int32),
                        full(tx, jnp.int32))


def test_blit_as_a_matrix_is_the_exact_gathers():
  """The blit ops folded into the resampling matrix give, pixel for pixel, what the gathers give
  (flip, then quarter turns, then the shift, reflected at the borders)."""
  no_color = ada.ColorParams(*(jnp.zeros(SHAPE[0]),) * 5, applied=jnp.zeros(SHAPE[0], bool))
  not_geom = _geom()._replace(applied=jnp.zeros(SHAPE[0], bool))
  for flip, k, ty, tx in [(True, 0, 0, 0), (False, 1, 0, 0), (True, 3, 2, -5), (False, 2, -7, 3)]:
    blit = _blit(flip, k, ty, tx)
    gathered = augment.apply_ada(X, blit, not_geom, no_color)
    np.testing.assert_allclose(_resample(X, ada.blit_matrix(blit)), gathered, atol=1e-6)


def test_blit_and_geometry_resample_once_reflecting_once():
  """An integer shift of 2 then a fractional shift of 2.5 is ONE shift of 4.5 of the original,
  reflected once at its borders, as in the official pipeline (resampling the already-reflected
  shift would mirror a mirror near the edge)."""
  no_color = ada.ColorParams(*(jnp.zeros(SHAPE[0]),) * 5, applied=jnp.zeros(SHAPE[0], bool))
  out = augment.apply_ada(X, _blit(False, 0, 0, 2), _geom(tx=2.5), no_color)
  np.testing.assert_allclose(out, _resample(X, _mats([1, 0, -4.5], [0, 1, 0], [0, 0, 1])),
                             atol=1e-6)


# --- ADA 'bgc': colour. --------------------------------------------------------------------------

@jax.jit
def _color_matrix_and_images(x, c):
  m = ada.color_matrix(c)
  return m, ada.apply_color_matrix(x, m)


_recolor = lambda x, c: _color_matrix_and_images(x, c)[1]


def _color(**kw):
  values = dict(brightness=0.0, contrast=1.0, lumaflip=0.0, hue=0.0, saturation=1.0) | kw
  return ada.ColorParams(
      **{k: jnp.broadcast_to(jnp.asarray(v, jnp.float32), (SHAPE[0],)) for k, v in values.items()},
      applied=jnp.ones(SHAPE[0], bool))


def _luma_chroma(x):
  x = np.asarray(x, np.float64)
  luma = x.mean(-1, keepdims=True)
  return luma, x - luma


def test_color_matrix_off_is_exactly_the_identity():
  m, out = _color_matrix_and_images(X, _color())
  np.testing.assert_array_equal(m[0], np.eye(4))
  np.testing.assert_array_equal(out, X)


def test_brightness_contrast_saturation_move_as_constructed():
  luma, chroma = _luma_chroma(X)
  np.testing.assert_allclose(_recolor(X, _color(brightness=0.3)), X + 0.3, atol=1e-6)
  np.testing.assert_allclose(_recolor(X, _color(contrast=2.0)), 2 * X, atol=1e-6)
  np.testing.assert_allclose(_recolor(X, _color(saturation=3.0)), luma + 3 * chroma, atol=1e-5)
  np.testing.assert_allclose(_recolor(X, _color(saturation=0.0)), np.broadcast_to(luma, SHAPE),
                             atol=1e-6)  # fully desaturated: grey, the luma kept
  # Brightness first, then contrast: the offset is scaled too.
  np.testing.assert_allclose(_recolor(X, _color(brightness=0.3, contrast=2.0)), 2 * (X + 0.3),
                             atol=1e-5)


def test_hue_rotation_keeps_luma_and_chroma_and_a_third_turn_permutes_channels():
  luma, chroma = _luma_chroma(X)
  out_luma, out_chroma = _luma_chroma(_recolor(X, _color(hue=jnp.array([-2.9, -0.7, 1.0, 3.1]))))
  np.testing.assert_allclose(out_luma, luma, atol=1e-5)  # luma (mean over channels) of every pixel
  np.testing.assert_allclose(np.linalg.norm(out_chroma, axis=-1), np.linalg.norm(chroma, axis=-1),
                             atol=1e-5)
  assert np.abs(out_chroma - chroma).max() > 0.5  # yet the colours moved
  # A third of a turn about (1, 1, 1) sends red to green, green to blue, blue to red.
  third = _recolor(X, _color(hue=2 * math.pi / 3))
  np.testing.assert_allclose(third, jnp.roll(X, 1, axis=-1), atol=1e-5)
  red = jnp.broadcast_to(jnp.array([1.0, -1.0, -1.0]), SHAPE)
  np.testing.assert_allclose(_recolor(red, _color(hue=2 * math.pi / 3)),
                             jnp.broadcast_to(jnp.array([-1.0, 1.0, -1.0]), SHAPE), atol=1e-5)


def test_luma_flip_negates_luma_keeps_chroma_and_twice_is_the_identity():
  luma, chroma = _luma_chroma(X)
  flipped = _recolor(X, _color(lumaflip=1.0))
  out_luma, out_chroma = _luma_chroma(flipped)
  np.testing.assert_allclose(out_luma, -luma, atol=1e-5)
  np.testing.assert_allclose(out_chroma, chroma, atol=1e-5)
  np.testing.assert_allclose(_recolor(flipped, _color(lumaflip=1.0)), X, atol=1e-5)
  m = _color_matrix_and_images(X, _color(lumaflip=1.0))[0]
  np.testing.assert_allclose(m @ m, jnp.broadcast_to(jnp.eye(4), m.shape), atol=1e-6)


def test_one_channel_images_get_the_grey_response():
  grey = X[..., :1]
  c = _color(brightness=0.25, contrast=1.5, hue=1.0, saturation=2.0)
  # Hue rotation and saturation leave grey alone; brightness then contrast as for colour.
  np.testing.assert_allclose(_recolor(grey, c), 1.5 * (grey + 0.25), atol=1e-5)
  np.testing.assert_allclose(_recolor(grey, _color(lumaflip=1.0)), -grey, atol=1e-5)


# --- ADA 'bgc': parameter distributions and per-op gates. ----------------------------------------

N = 20000


@functools.lru_cache(maxsize=None)
def _samples(p: float):
  """N draws of each group (one compile, p traced; cached per p): blit 16x16, geom 16x32 (distinct
  sizes catch swapped axes), colour, and blit 16x32 (no quarter turns)."""
  return jax.device_get(_draw_samples(p))


@jax.jit
def _draw_samples(p):
  blit, _, color = ada.sample(K1, N, 16, 16, p)
  wide_blit, geom, _ = ada.sample(K2, N, 16, 32, p)
  return blit, geom, color, wide_blit


def _on(values, neutral):
  return np.asarray(values) != neutral


def test_blit_parameters():
  full = _samples(1.0)[0]
  assert abs(np.mean(full.flip) - 0.5) < 0.02
  np.testing.assert_allclose(np.bincount(np.asarray(full.k), minlength=4) / N, 0.25, atol=0.02)
  t = np.concatenate([full.ty, full.tx])
  assert t.min() == -2 and t.max() == 2  # round(U(-1/8, 1/8) * 16)
  np.testing.assert_allclose(np.bincount(t + 2) / (2 * N), [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8],
                             atol=0.02)
  half = _samples(0.5)[0]
  assert abs(np.mean(half.flip) - 0.25) < 0.02
  assert abs(np.mean(_on(half.k, 0)) - 0.375) < 0.02
  assert abs(np.mean(_on(half.ty, 0) | _on(half.tx, 0)) - 0.5 * (1 - 1 / 16)) < 0.02
  wide = _samples(1.0)[3]
  assert np.all(wide.k == 0)  # no quarter turns if h != w
  assert np.abs(wide.tx).max() == 4 and np.abs(wide.ty).max() == 2  # 1/8 of 32 and of 16


def test_geometric_parameters():
  h, w = 16, 32
  g = _samples(1.0)[1]
  assert np.all(g.applied)
  assert abs(np.mean(np.log2(g.scale))) < 0.01
  np.testing.assert_allclose(np.std(np.log2(g.scale)), 0.2, rtol=0.05)
  np.testing.assert_allclose(np.std(np.log2(g.aniso)), 0.2, rtol=0.05)
  np.testing.assert_allclose([np.std(g.tx), np.std(g.ty)], [0.125 * w, 0.125 * h], rtol=0.05)
  for angle in (g.rot_pre, g.rot_post):  # U(-pi, pi)
    assert np.all(np.abs(angle) <= math.pi) and np.abs(angle).max() > 3.1
    np.testing.assert_allclose(np.std(angle), math.pi / math.sqrt(3), rtol=0.05)
  g = _samples(0.5)[1]
  on = {k: _on(getattr(g, k), v) for k, v in
        dict(scale=1, rot_pre=0, aniso=1, rot_post=0, tx=0).items()}
  p_rot = 1 - math.sqrt(0.5)
  for k, want in dict(scale=0.5, rot_pre=p_rot, aniso=0.5, rot_post=p_rot, tx=0.5).items():
    assert abs(np.mean(on[k]) - want) < 0.02, k
  assert abs(np.mean(on["rot_pre"] | on["rot_post"]) - 0.5) < 0.02  # some rotation: p
  assert abs(np.mean(on["rot_pre"] & on["rot_post"]) - p_rot ** 2) < 0.02  # independent gates
  np.testing.assert_array_equal(on["tx"], _on(g.ty, 0))  # one gate for both axes
  np.testing.assert_array_equal(g.applied, np.any(list(on.values()), axis=0))
  assert abs(np.mean(g.applied) - (1 - 0.5 ** 3 * (1 - p_rot) ** 2)) < 0.02


def test_color_parameters():
  c = _samples(1.0)[2]
  assert abs(np.mean(c.brightness)) < 0.01 and abs(np.mean(np.log2(c.contrast))) < 0.02
  np.testing.assert_allclose(np.std(c.brightness), 0.2, rtol=0.05)
  np.testing.assert_allclose(np.std(np.log2(c.contrast)), 0.5, rtol=0.05)
  np.testing.assert_allclose(np.std(np.log2(c.saturation)), 1.0, rtol=0.05)
  assert set(np.unique(c.lumaflip)) == {0.0, 1.0} and abs(np.mean(c.lumaflip) - 0.5) < 0.02
  assert np.all(np.abs(c.hue) <= math.pi)
  np.testing.assert_allclose(np.std(c.hue), math.pi / math.sqrt(3), rtol=0.05)
  c = _samples(0.5)[2]
  on = [_on(c.brightness, 0), _on(c.contrast, 1), _on(c.hue, 0), _on(c.saturation, 1)]
  for o in on:
    assert abs(np.mean(o) - 0.5) < 0.02
  assert abs(np.mean(c.lumaflip) - 0.25) < 0.02
  assert abs(np.mean(on[0] & on[1]) - 0.25) < 0.02  # independent gates
  assert abs(np.mean(c.applied) - (1 - 0.5 ** 5)) < 0.02
  assert not np.any(_samples(0.0)[2].applied) and not np.any(_samples(0.0)[1].applied)


def test_parameter_draws_are_independent():
  """Every op draws its own value, as in the paper's pipeline: no two parameters are tied (y
  shifted only with x, one angle for both rotations, anisotropic tied to isotropic scaling,
  saturation to contrast, ...)."""
  blit, g, c, _ = _samples(1.0)

  def assert_uncorrelated(**params):
    corr = np.corrcoef(np.stack([np.asarray(v, np.float64) for v in params.values()]))
    for (i, a), (j, b) in itertools.combinations(enumerate(params), 2):
      assert abs(corr[i, j]) < 0.05, (a, b, corr[i, j])

  assert_uncorrelated(flip=blit.flip, k=blit.k, ty=blit.ty, tx=blit.tx)
  assert_uncorrelated(scale=np.log2(g.scale), rot_pre=g.rot_pre, aniso=np.log2(g.aniso),
                      rot_post=g.rot_post, tx=g.tx, ty=g.ty)
  assert_uncorrelated(brightness=c.brightness, contrast=np.log2(c.contrast), lumaflip=c.lumaflip,
                      hue=c.hue, saturation=np.log2(c.saturation))


def test_an_exact_zero_uniform_draw_gives_finite_parameters_and_images():
  """jax.random.uniform returns exactly 0 with probability 2^-23 a draw, so long runs meet it;
  the inverse normal CDF makes it -inf (here a shift of -inf: NaN images)."""
  key, b = jax.random.PRNGKey(4626), 64
  raw = jax.random.uniform(key, (b, ada.BLIT_DRAWS + ada.GEOM_DRAWS + ada.COLOR_DRAWS))
  assert np.any(raw == 0)  # the precondition: this key's stream holds an exact 0
  x = jnp.zeros((b, 8, 8, 3))
  params, out = jax.jit(lambda key: (ada.sample(key, b, 8, 8, 1.0),
                                     augment.ada_augment(x, key, 1.0)))(key)
  for leaf in jax.tree.leaves(params):
    assert np.all(np.isfinite(leaf))
  _, geom, color = params
  assert all(np.all(np.asarray(s) > 0) for s in (geom.scale, geom.aniso, color.contrast,
                                                 color.saturation))
  assert np.all(np.isfinite(out))


def test_ada_on_one_channel_non_square_images():
  x = X[:2, :, :12, :1]
  ada_fn = jax.jit(augment.ada_augment)
  np.testing.assert_array_equal(ada_fn(x, K1, 0.0), x)
  out = ada_fn(x, K1, 1.0)
  assert out.shape == x.shape and np.all(np.isfinite(out)) and not np.array_equal(out, x)


STEP = 64 * 4 / (500 * 1000)  # batch * interval / (ada_kimg * 1000)


def test_ada_update_direction_step_and_clipping():
  update = functools.partial(augment.ada_update, images_in_interval=64 * 4, target=0.6,
                             ada_kimg=500)
  np.testing.assert_allclose(update(0.5, 0.9), 0.5 + STEP, rtol=1e-6)
  np.testing.assert_allclose(update(0.5, 0.1), 0.5 - STEP, rtol=1e-6)
  np.testing.assert_allclose(update(0.5, 0.6), 0.5, rtol=1e-6)  # on target: p holds
  assert update(1.0, 1.0) == 1.0 and update(0.0, -1.0) == 0.0
  assert update(1.0 - STEP / 2, 1.0) == 1.0 and update(STEP / 2, -1.0) == 0.0
  assert update(0.5, 0.9).dtype == jnp.float32
  # ada_kimg is the number of thousand images for p to go 0 -> 1.
  np.testing.assert_allclose(augment.ada_update(0.0, 1.0, 1000, 0.6, ada_kimg=2), 0.5)


def test_accumulate_and_maybe_update_at_interval_boundaries():
  state = augment.init_state()
  assert state.p.dtype == jnp.float32 and len(jax.tree.leaves(state)) == 3
  accumulate = jax.jit(augment.accumulate)
  maybe_update = jax.jit(augment.maybe_update)  # step, interval, batch... may all be traced
  positive, negative = jnp.ones((64, 1)), -jnp.ones((64, 1))
  for step in range(4):  # sign mean 0.5 < 0.6: p would go down, but is clipped at 0
    state = maybe_update(accumulate(state, positive.at[:16].set(-1.0)), step, 4, 64, 0.6, 500.0)
    if step < 3:
      assert state.p == 0.0 and state.count == 64 * (step + 1)
      assert state.signs_sum == 32 * (step + 1)
  assert state.p == 0.0 and state.count == 0 and state.signs_sum == 0.0  # reset at the boundary
  for step in range(4, 8):  # D overfits: sign mean 1 > 0.6, p rises by one step at step 7 only
    state = maybe_update(accumulate(state, positive), step, 4, 64, 0.6, 500.0)
    expected = STEP if step == 7 else 0.0
    np.testing.assert_allclose(state.p, expected, rtol=1e-6)
  assert state.count == 0 and state.signs_sum == 0.0
  for step in range(8, 12):
    state = maybe_update(accumulate(state, negative), step, 4, 64, 0.6, 500.0)
    if step < 11:
      assert state.signs_sum == -64.0 * (step - 7) and state.count == 64 * (step - 7)
  np.testing.assert_allclose(state.p, 0.0, atol=1e-9)  # back down by one step


def test_an_interval_without_counted_signs_leaves_p_unchanged():
  """A boundary with no D(real) signs accumulated has no r_t to compare with the target: p holds
  (not lowered as if r_t were 0) and the sums stay reset."""
  state = augment.init_state(0.5)
  for step in range(8):  # two boundaries
    state = augment.maybe_update(state, step, 4, 64, 0.6, 500.0)
  assert state.p == 0.5 and state.count == 0 and state.signs_sum == 0.0
