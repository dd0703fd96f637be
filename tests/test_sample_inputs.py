"""Seeded latents and the inputs of sample and interpolation grids."""

import jax.numpy as jnp
import numpy as np

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
