"""Seeded latents and the inputs of sample and interpolation grids."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import sample_inputs


def test_interpolated_latents_stay_within_the_truncation():
  """slerp between two truncated latents leaves [-t, t] mid-row (its weights add up to more than
  1); the rows stay in the box and keep their ends."""
  t = 0.5
  z, _, cols = sample_inputs.interpolation_inputs(0, 0, 9, 128, truncation=t)
  z = np.asarray(z).reshape(8, cols, 128)
  t_cols = jnp.linspace(0, 1, cols)[None, :, None]
  free = np.asarray(sample_inputs.slerp(z[:, :1], z[:, -1:], t_cols))
  assert np.abs(free).max() > 1.2 * t  # what the clip is for (measured: 1.39 t)
  assert np.abs(z).max() <= t
  np.testing.assert_allclose(z[:, [0, -1]], free[:, [0, -1]], atol=1e-6)


class _CountingGenerator:
  """A numpy generator that counts the draws asked of it."""

  def __init__(self, seed):
    self.rng, self.calls = np.random.default_rng(seed), 0

  def __getattr__(self, name):
    self.calls += 1
    return getattr(self.rng, name)


@pytest.mark.parametrize("t", [1e-7, 0.5, 1.0, 3.0])
def test_host_truncated_normal_is_the_truncated_normal_at_a_bounded_cost(t):
  """Any t: within [-t, t], with the truncated normal's variance, in a few rounds (the normal
  proposal alone would need ~1/t: 10^7 rounds at t = 1e-7, a frozen `generate --truncation`)."""
  rng = _CountingGenerator(0)
  z = sample_inputs.host_truncated_normal(rng, (200, 500), t)
  assert z.shape == (200, 500) and np.abs(z).max() <= t
  assert rng.calls < 60
  # 1 - 2 t pdf(t) / (2 cdf(t) - 1), by series below 1e-3 where the difference cancels.
  pdf, mass = math.exp(-t * t / 2) / math.sqrt(2 * math.pi), math.erf(t / math.sqrt(2))
  variance = 1 - 2 * t * pdf / mass if t > 1e-3 else t * t / 3
  np.testing.assert_allclose(z.var(), variance, rtol=0.01)
  assert abs(z.mean()) < 0.01 * t


def test_host_truncated_normal_from_t_1_up_redraws_only_the_rejected():
  """From t = 1 the draws are the plain rejection's (the standing statistics of runs sampled
  with such truncations are as before)."""
  shape, t = (64, 32), 1.5
  z = sample_inputs.host_truncated_normal(np.random.default_rng(3), shape, t)
  rng = np.random.default_rng(3)
  plain = rng.standard_normal(shape)
  outside = np.abs(plain) > t
  while outside.any():
    plain[outside] = rng.standard_normal(int(outside.sum()))
    outside = np.abs(plain) > t
  np.testing.assert_array_equal(z, plain)
