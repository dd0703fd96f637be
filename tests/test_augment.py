"""Augmentations: shapes, determinism, gradients, exact geometry, and ADA's p heuristic."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import augment

SHAPE = (4, 16, 16, 3)
X = jax.random.uniform(jax.random.PRNGKey(0), SHAPE, jnp.float32, -1.0, 1.0)
W = jax.random.normal(jax.random.PRNGKey(1), SHAPE)
K1, K2 = jax.random.PRNGKey(2), jax.random.PRNGKey(3)

# p is an argument, so p = 0 and p = 1 share one compiled program.
_ada = jax.jit(augment.ada_augment)

AUGS = {
    "color": functools.partial(augment.diffaugment, policy="color"),
    "translation": functools.partial(augment.diffaugment, policy="translation"),
    "cutout": functools.partial(augment.diffaugment, policy="cutout"),
    "color,translation": functools.partial(augment.diffaugment, policy="color,translation"),
    "diffaugment": augment.diffaugment,
    "ada_p1": lambda x, key: _ada(x, key, 1.0),
}


@pytest.mark.parametrize("name", list(AUGS))
def test_shape_dtype_determinism_and_gradient(name):
  aug = jax.jit(AUGS[name])
  out = aug(X, K1)
  assert out.shape == X.shape and out.dtype == X.dtype
  np.testing.assert_array_equal(out, aug(X, K1))  # same key, same images
  assert not np.array_equal(out, aug(X, K2))  # another key, other images
  assert not np.array_equal(out, X)
  grad = jax.jit(jax.grad(lambda x: jnp.sum(AUGS[name](x, K1) * W)))(X)
  assert grad.shape == X.shape and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_none_and_ada_at_p0_are_the_identity():
  np.testing.assert_array_equal(augment.AUGMENTS.get("none").apply(X, K1, 1.0), X)
  np.testing.assert_array_equal(_ada(X, K1, 0.0), X)
  np.testing.assert_array_equal(_ada(X, K2, 0.0), X)
  assert not np.array_equal(_ada(X, K1, 1.0), X)  # the same program, p traced


def test_registry():
  assert augment.AUGMENTS.names() == ["ada", "diffaugment", "none"]
  assert augment.AUGMENTS.get("ada").adaptive
  assert not augment.AUGMENTS.get("diffaugment").adaptive
  assert not augment.AUGMENTS.get("none").adaptive
  apply = jax.jit(augment.AUGMENTS.get("diffaugment").apply)
  np.testing.assert_array_equal(apply(X, K1, 0.3), jax.jit(augment.diffaugment)(X, K1))
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


def test_cutout_zeroes_one_half_size_square_per_image():
  out = np.asarray(jax.jit(augment.rand_cutout)(jnp.ones(SHAPE), K1))
  positions = set()
  for b in range(SHAPE[0]):
    zero = np.all(out[b] == 0, axis=-1)
    assert np.all((out[b] == 0) | (out[b] == 1))
    assert zero.sum() == 8 * 8 and np.sum(out[b] == 0) == 8 * 8 * 3
    rows, cols = np.nonzero(zero)
    assert rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7  # a square, inside
    positions.add((rows.min(), cols.min()))
  assert len(positions) > 1


def test_ada_scale_by_one_is_the_identity():
  np.testing.assert_allclose(augment._scale(X, jnp.ones(SHAPE[0])), X, atol=1e-6)


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
