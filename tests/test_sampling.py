"""sampling: the EMA generator's standing BatchNorm statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models, sampling
from tests.conftest import tiny_config


def _generator_and_variables(config):
  g, _ = models.build_models(config)
  z = jnp.zeros((2, config.model.z_dim))
  labels = jnp.zeros((2,), jnp.int32)
  variables = g.init({"params": jax.random.PRNGKey(1)}, z, labels, train=True)
  # Running statistics that are not G's own (as the raw G's are for the EMA G's weights).
  stats = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.5 if p[-1].key in ("mean", "var") else x, variables["batch_stats"])
  return g, variables["params"], stats


def _batch_moments(g, params, stats, z, labels):
  """Each BatchNorm layer's batch mean and variance in training mode, read from its update with
  the modules' known momentum (0.9)."""
  _, updates = g.apply({"params": params, "batch_stats": stats}, z, labels, train=True,
                       mutable=["batch_stats"])
  return jax.tree_util.tree_map_with_path(
      lambda p, old, new: (new - 0.9 * old) / 0.1 if p[-1].key in ("mean", "var") else old,
      stats, updates["batch_stats"])


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
def test_standing_statistics_average_the_generators_own_batch_statistics(family):
  config = tiny_config(**{"model.name": family, "train.batch_size": 4})
  if family == "resnet":
    config.model.update(g_width=8, d_width=8, max_width=8, shared_dim=4, attention_resolution=0)
  g, params, stats = _generator_and_variables(config)
  label_rows = np.array([0, 2, 2, 1, 2])  # the data's labels: class 2 is the common one
  standing = sampling.make_standing_stats(g, config.model.z_dim, (3,), num_batches=2,
                                          batch_size=4, seed=5, label_rows=label_rows)(params, stats)
  rng = np.random.default_rng([5, 0x5751])  # the same fixed latents and labels it draws
  z = rng.standard_normal((2, 4, config.model.z_dim)).astype(np.float32)
  labels = label_rows[rng.integers(0, 5, (2, 4))].astype(np.int32)
  moments = [_batch_moments(g, params, stats, z[k], labels[k]) for k in range(2)]
  want = jax.tree_util.tree_map(lambda a, b: (a + b) / 2, *moments)
  leaves = jax.tree_util.tree_leaves_with_path(standing)
  assert any(p[-1].key == "var" for p, _ in leaves)
  for (path, got), expected, old in zip(leaves, jax.tree_util.tree_leaves(want),
                                        jax.tree_util.tree_leaves(stats)):
    if path[-1].key in ("mean", "var"):
      np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
      assert not np.allclose(got, old)
    else:  # spectral norm's vectors: kept as they were, not advanced by a power iteration
      np.testing.assert_array_equal(got, old)


def test_the_ema_statistics_follow_the_config():
  config = tiny_config()
  g, params, stats = _generator_and_variables(config)
  config.eval.standing_stats_batches = 0  # the raw G's running statistics, unchanged
  assert sampling.make_ema_statistics(config, g)(params, stats) is stats
  config.eval.standing_stats_batches = 2
  own = sampling.make_ema_statistics(config, g)(params, stats)
  again = sampling.make_ema_statistics(config, g)(params, stats)
  jax.tree_util.tree_map(np.testing.assert_array_equal, own, again)  # fixed latents: repeatable
  assert not all(np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(own),
                                                  jax.tree_util.tree_leaves(stats)))
  assert sampling.make_ema_statistics(config, g)(params, {}) == {}  # no BatchNorm: nothing to do


def test_standing_statistics_stay_exact_for_large_activations():
  """A generator whose pre-BatchNorm activations have variances near 1e8 (its weights are free
  to grow): the momentum read from the updates must not lose digits to them."""
  config = tiny_config(**{"train.batch_size": 4})
  g, params, stats = _generator_and_variables(config)
  params = jax.tree_util.tree_map(lambda x: x * 1e4 if x.ndim == 2 else x, params)  # dense z->4x4
  standing = sampling.make_standing_stats(g, config.model.z_dim, (3,), num_batches=1,
                                          batch_size=4, seed=2)(params, stats)
  rng = np.random.default_rng([2, 0x5751])
  z = rng.standard_normal((1, 4, config.model.z_dim)).astype(np.float32)
  labels = rng.integers(0, 3, (1, 4, 1))[..., 0].astype(np.int32)
  want = _batch_moments(g, params, stats, z[0], labels[0])
  largest = 0.0
  for (path, got), expected in zip(jax.tree_util.tree_leaves_with_path(standing),
                                   jax.tree_util.tree_leaves(want)):
    if path[-1].key in ("mean", "var"):
      np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
      largest = max(largest, float(np.max(np.abs(expected))))
  assert largest > 1e6  # the case this is about
