"""sampling: the EMA generator's standing BatchNorm statistics."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models, sampling
from tests.conftest import REPO, tiny_config, xla_flags


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

def test_to_uint8_rounds_to_the_nearest_level_and_clips():
  """[-1, 1] -> [0, 255] to the nearest level (a floor would darken every pixel by half a level,
  which FID sees), and out-of-range values clipped, not wrapped."""
  levels = np.array([10.4, 10.6, 0.0, 255.0, -3.0, 300.0])
  out = np.asarray(sampling.to_uint8(jnp.asarray(levels / 127.5 - 1.0, jnp.float32)))
  assert out.dtype == np.uint8 and out.tolist() == [10, 11, 0, 255, 0, 255]


def test_the_grid_legend_names_each_row():
  """A row per class of the first attribute, the others fixed at class 0 (grid_inputs)."""
  from jaxgan import sample_inputs

  assert sample_inputs.grid_legend([]) == ""
  assert sample_inputs.grid_legend([("articleType", ["Shirts", "Watches"]),
                                    ("baseColour", ["Black", "Blue"])]) == (
      "sample grids (step_*.png) and reals.png: a row per articleType class, top to bottom; the "
      "samples' other attributes at class 0 (baseColour=Black)\nrow 0: Shirts\nrow 1: Watches\n")
  # A folder's one attribute is named 'class': 'a row per class class' before.
  assert sample_inputs.grid_legend([("class", ["bags", "shoes"])]) == (
      "sample grids (step_*.png) and reals.png: a row per class, top to bottom\nrow 0: bags\n"
      "row 1: shoes\n")
  _, labels, _ = sample_inputs.grid_inputs(0, [2, 2], 3, 4)
  assert np.asarray(labels).tolist() == [[0, 0]] * 3 + [[1, 0]] * 3


def test_make_grid_fills_rows_first_with_gutters():
  """Image i at row i // cols, column i % cols (sample grids are read as one class per row), the
  gutters and the unfilled cell in the pad colour."""
  images = np.stack([np.full((3, 2, 3), 10 * (i + 1), np.uint8) for i in range(3)])  # 3x2 each
  grid = sampling.make_grid(images, cols=2, pad=1, pad_value=7)
  assert grid.shape == (2 * (3 + 1) + 1, 2 * (2 + 1) + 1, 3)
  cell = lambda r, c: grid[1 + r * 4:1 + r * 4 + 3, 1 + c * 3:1 + c * 3 + 2]
  assert [int(cell(r, c).mean()) for r, c in [(0, 0), (0, 1), (1, 0), (1, 1)]] == [10, 20, 30, 7]
  assert (grid[0] == 7).all() and (grid[:, 0] == 7).all() and (grid[4] == 7).all()



def test_reals_grid_puts_class_c_in_row_c_as_the_sample_grids_do():
  """reals.png: row c holds the batch's first images of class c (the first attribute's), grey
  where the batch has fewer; from plain and stacked [k, rows] batches; unconditional: the first
  rows * cols images."""
  images = np.arange(1, 7, dtype=np.uint8)[:, None, None, None] * np.ones((6, 2, 2, 3), np.uint8)
  cell = lambda grid, r, c: int(grid[2 + 4 * r, 2 + 4 * c, 0])
  cells = lambda grid, rows, cols: [[cell(grid, r, c) for c in range(cols)] for r in range(rows)]
  grid = sampling.reals_grid({"image": images, "label": np.array([2, 0, 2, 0, 2, 0])}, 3, 2,
                             by_class=True)
  assert grid.shape == (3 * 4 + 2, 2 * 4 + 2, 3)  # 2x2 images, 2 px gutters
  # Class 0 (images 2, 4, 6): its first two; class 1: none (grey); class 2: images 1, 3.
  assert cells(grid, 3, 2) == [[2, 4], [sampling.GUTTER] * 2, [1, 3]]
  # Stacked (steps_per_call=2: [2, 3, ...]), two attributes: rows by the first one.
  two = np.array([[[1, 1], [0, 1], [0, 0]], [[1, 0], [9, 9], [1, 1]]])
  grid = sampling.reals_grid({"image": images.reshape(2, 3, 2, 2, 3), "label": two}, 2, 3,
                             by_class=True)
  assert cells(grid, 2, 3) == [[2, 3, sampling.GUTTER], [1, 4, 6]]
  # Unconditional (a source may still yield labels): the first rows * cols images in order.
  plain = sampling.reals_grid({"image": images, "label": np.array([2, 0, 2, 0, 2, 0])}, 2, 2)
  assert cells(plain, 2, 2) == [[1, 2], [3, 4]]
  # Fewer images than cells (a process's rows of a small batch): the grid's size all the same.
  plain = sampling.reals_grid({"image": images}, 2, 4)
  assert plain.shape == (2 * 4 + 2, 4 * 4 + 2, 3)
  assert cells(plain, 2, 4) == [[1, 2, 3, 4], [5, 6] + [sampling.GUTTER] * 2]


@pytest.mark.parametrize("family", ["dcgan", "resnet"])
def test_standing_statistics_average_the_generators_own_batch_statistics(family):
  config = tiny_config(**{"model.name": family, "train.batch_size": 4})
  if family == "resnet":
    config.model.update(g_width=8, d_width=8, max_width=8, shared_dim=4, attention_resolution=0)
  g, params, stats = _generator_and_variables(config)
  label_rows = np.array([0, 2, 2, 1, 2])  # the data's labels: class 2 is the common one
  standing = sampling.make_standing_stats(g, config.model.z_dim, (3,), num_batches=2,
                                          batch_size=4, seed=5,
                                          label_counts=sampling.label_counts(label_rows))(params,
                                                                                          stats)
  rng = np.random.default_rng([5, 0x5751])  # the same fixed latents and labels it draws
  z = rng.standard_normal((2, 4, config.model.z_dim)).astype(np.float32)
  labels = np.sort(label_rows)[rng.integers(0, 5, (2, 4))].astype(np.int32)  # rows in sorted order
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


def test_equal_generators_share_their_traced_programs_each_with_its_own_latents():
  """A run built again in one process (a resume, the tests' runs) samples and gathers standing
  statistics with the programs traced before: its generator, an equal new object, traces
  nothing again. The seeds' latents are arguments, not part of the kept program: two seeds
  still give their own statistics."""
  import flax.linen as nn

  traces = []

  class Norm(nn.Module):
    width: int

    @nn.compact
    def __call__(self, z, labels=None, train=True):
      traces.append(self.width)  # runs when traced, not when a compiled program runs
      x = nn.Dense(self.width)(z)
      return jnp.tanh(nn.BatchNorm(use_running_average=not train)(x))[:, None, None, :3]

  z = jnp.ones((2, 4))
  variables = Norm(3).init(jax.random.PRNGKey(0), z, train=False)
  stats, passes = [], 0
  for seed in (0, 1, 0):
    stats.append(sampling.make_standing_stats(Norm(3), 4, (), 2, 8, seed=seed)(
        variables["params"], variables["batch_stats"]))
    passes = passes or len(traces)  # G's passes in one trace: the first make's
    assert len(traces) == passes >= 3  # the later makes traced nothing
  np.testing.assert_array_equal(stats[0]["BatchNorm_0"]["mean"], stats[2]["BatchNorm_0"]["mean"])
  assert not np.allclose(stats[0]["BatchNorm_0"]["mean"], stats[1]["BatchNorm_0"]["mean"])
  sampling.make_standing_stats(Norm(4), 4, (), 2, 8)(*Norm(4).init(
      jax.random.PRNGKey(0), z, train=False).values())
  assert traces[passes:] == [4] * passes  # another generator: its own program
  del traces[:]
  samples = [sampling.make_sampler(Norm(3))(variables["params"], variables["batch_stats"], z, None)
             for _ in range(2)]
  assert traces == [3] and samples[0].dtype == np.uint8
  # Another output sharding is another program (its outputs are placed otherwise).
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  sampling.make_sampler(Norm(3), replicated)(variables["params"], variables["batch_stats"], z, None)
  assert traces == [3, 3]


def test_standing_statistics_of_truncated_samples_come_from_truncated_latents():
  """BigGAN's standing statistics per truncation: a BatchNorm of the latents themselves reads
  the truncated normal's variance (0.0806 at t = 0.5), not the normal's 1."""
  import flax.linen as nn

  class NormOfLatents(nn.Module):
    @nn.compact
    def __call__(self, z, labels=None, train=True):
      return nn.BatchNorm(use_running_average=not train, momentum=0.9)(z)

  g = NormOfLatents()
  variables = g.init(jax.random.PRNGKey(0), jnp.zeros((2, 64)))
  # The normal truncated to [-a, a] has variance 1 - 2 a pdf(a) / (2 cdf(a) - 1); BatchNorm's
  # batch variance is the biased one (255/256 of it for 256 rows).
  a = 0.5
  truncated = 1 - 2 * a * math.exp(-a * a / 2) / math.sqrt(2 * math.pi) / math.erf(a / math.sqrt(2))
  for t, variance in ((0.0, 1.0), (a, truncated)):
    standing = sampling.make_standing_stats(g, 64, (), 4, 256, truncation=t)(
        variables["params"], variables["batch_stats"])
    np.testing.assert_allclose(standing["BatchNorm_0"]["var"].mean(), variance * 255 / 256,
                               rtol=0.01)


def test_label_counts_matching_chosen_attributes():
  two = {"rows": [[0, 1], [1, 0], [2, 1]], "counts": [5, 2, 3]}
  assert sampling.label_counts_matching(two, {1: 1}) == {"rows": [[0, 1], [2, 1]],
                                                         "counts": [5, 3]}
  assert sampling.label_counts_matching(two, {}) == two
  assert sampling.label_counts_matching(two, {0: 1, 1: 1}) is None  # never together
  one = {"rows": [0, 2], "counts": [4, 1]}
  assert sampling.label_counts_matching(one, {0: 2}) == {"rows": [2], "counts": [1]}


def test_standing_statistics_depend_on_the_label_counts_only():
  """So `generate`, which has only the checkpoint's label_counts, matches training and evaluation,
  which have the data's rows in the data's order."""
  config = tiny_config(**{"train.batch_size": 4})
  g, params, stats = _generator_and_variables(config)
  rows = np.array([2, 0, 2, 1, 2, 0])
  counts = sampling.label_counts(rows)
  assert counts == {"rows": [0, 1, 2], "counts": [2, 1, 3]}
  two = sampling.label_counts(np.array([[1, 0], [0, 1], [1, 0]]))  # attribute combinations
  assert two == {"rows": [[0, 1], [1, 0]], "counts": [1, 2]}

  assert sampling.label_counts(None) is None and sampling.label_counts(np.zeros(0)) is None

  def standing(counts):
    return sampling.make_standing_stats(g, config.model.z_dim, (3,), 2, 4, seed=3,
                                        label_counts=counts)(params, stats)

  want = standing(counts)
  # The data in another order, and the counts after a checkpoint's JSON round trip.
  for other in (sampling.label_counts(rows[::-1]), json.loads(json.dumps(counts))):
    jax.tree_util.tree_map(np.testing.assert_array_equal, standing(other), want)
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(standing(sampling.label_counts(np.array([0, 1, 2])))),
      jax.tree_util.tree_leaves(want)))


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


def test_the_ema_statistics_are_reused_for_the_same_weights_only():
  """The trainer's grid and evaluation of one step pass the same objects: one computation."""
  config = tiny_config(**{"eval.standing_stats_batches": 1})
  g, params, stats = _generator_and_variables(config)
  statistics = sampling.make_ema_statistics(config, g)
  first = statistics(params, stats)
  assert statistics(params, stats) is first
  moved = jax.tree_util.tree_map(lambda x: x * 1.5, params)  # the next step's weights
  second = statistics(moved, stats)
  assert second is not first and not all(
      np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(first),
                                           jax.tree_util.tree_leaves(second)))
  assert statistics(params, stats) is not first  # only the last call is kept


SPLIT = """
import json
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxgan import models, sampling
from tests.conftest import tiny_config
from tests.test_sampling import _generator_and_variables

config = tiny_config(**{"train.batch_size": 8})
g, params, stats = _generator_and_variables(config)
mesh = Mesh(np.array(jax.devices()), ("data",))
out = {}
for name, batch_sharding in (("whole", None), ("split", NamedSharding(mesh, P("data")))):
  standing = sampling.make_standing_stats(g, config.model.z_dim, (3,), 2, 8, seed=1,
                                          batch_sharding=batch_sharding)
  out[name] = [np.asarray(x) for x in jax.tree_util.tree_leaves(standing(params, stats))]
  out[name + "_all_reduce"] = "all-reduce" in standing.lower(params, stats).compile().as_text()
print(json.dumps({"max_diff": max(float(np.max(np.abs(a - b)))
                                  for a, b in zip(out["whole"], out["split"])),
                  "whole_all_reduce": out["whole_all_reduce"],
                  "split_all_reduce": out["split_all_reduce"]}))
"""


def test_standing_statistics_split_the_batch_over_the_mesh():
  """Each batch's rows are split over the devices (its means all-reduced), not computed on every
  device, and the statistics are those of the whole batch."""
  proc = subprocess.run([sys.executable, "-c", SPLIT], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, XLA_FLAGS=xla_flags(4)), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["split_all_reduce"] and not out["whole_all_reduce"]
  assert out["max_diff"] < 1e-4


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


def test_chunks_are_padded_trimmed_and_dispatched_one_ahead():
  """sample_in_chunks returns exactly the rows asked for, in order, with their indices (the last
  chunk padded, then trimmed), and dispatches the next chunk before handing this one over
  (unless `ahead` is off)."""
  rows = lambda params, stats, z, labels: jnp.asarray(z)[:, :1] * 2
  z = np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
  chunks = list(sampling.sample_in_chunks(rows, None, None, z, None, chunk=3))
  np.testing.assert_array_equal(np.concatenate([i for _, i in chunks])[:, 0], np.arange(7) * 2)
  assert [r.tolist() for r, _ in chunks] == [[0, 1, 2], [3, 4, 5], [6]]
  calls = []
  chunks = sampling.sample_in_chunks(lambda *a: calls.append(1) or rows(*a), None, None, z, None,
                                     chunk=3)
  assert [len(next(chunks)[1]) for _ in range(3)] == [3, 3, 1] and not list(chunks)
  calls.clear()
  next(sampling.sample_in_chunks(lambda *a: calls.append(1) or rows(*a), None, None, z, None,
                                 chunk=3))
  assert len(calls) == 2
  # Not ahead (the evaluator's): the same chunks, each sampled only when asked for.
  calls.clear()
  lazy = sampling.sample_in_chunks(lambda *a: calls.append(1) or rows(*a), None, None, z, None,
                                   chunk=3, ahead=False)
  got = [(next(lazy), len(calls))[1] for _ in range(3)]
  assert got == [1, 2, 3] and not list(lazy)
  again = sampling.sample_in_chunks(rows, None, None, z, None, chunk=3, ahead=False)
  assert [r.tolist() for r, _ in again] == [[0, 1, 2], [3, 4, 5], [6]]


MESH_SAMPLING = r"""
import json
import jax, numpy as np
from jaxgan import models, sample_inputs, sampling, sharding
from tests.conftest import tiny_config
config = tiny_config()
g, _ = models.build_models(config)
variables = g.init({"params": jax.random.PRNGKey(1)}, np.zeros((2, 8), np.float32),
                   np.zeros(2, np.int32), train=False)
z = np.asarray(sample_inputs.latents(3, 11, 8))
labels = np.arange(11, dtype=np.int32) % 3
plain = np.concatenate([images for _, images in sampling.sample_in_chunks(
    sampling.make_sampler(g), variables["params"], variables["batch_stats"], z, labels, 4)])
# Devices in the mesh in another order than jax.devices() (which device holds which rows is
# tested across two processes in test_evaluator.py): the images still come back in row order.
mesh = jax.sharding.Mesh(np.asarray(jax.devices())[[2, 0, 3, 1]].reshape(2, 2),
                         sharding.BATCH_AXES)
rows = sharding.batch_sharding(mesh)
params, stats = jax.device_put((variables["params"], variables["batch_stats"]),
                               sharding.replicated(mesh))
chunks = list(sampling.sample_in_chunks(
    sampling.make_sampler(g, rows), params, stats, z, labels, 4, rows))
split = np.concatenate([images for _, images in chunks])
flops = lambda sampler, sharded: sampler.lower(
    params, stats, jax.ShapeDtypeStruct((4, 8), np.float32, sharding=sharded),
    jax.ShapeDtypeStruct((4,), np.int32, sharding=sharded)).compile().cost_analysis()["flops"]
print(json.dumps({"max_diff": int(np.abs(plain.astype(int) - split.astype(int)).max()),
                  "shape": list(split.shape),
                  "rows": np.concatenate([r for r, _ in chunks]).tolist(),
                  "flops_ratio": flops(sampling.make_sampler(g, rows), rows) / flops(
                      sampling.make_sampler(g, sharding.replicated(mesh)),
                      sharding.replicated(mesh))}))
"""


def test_a_batch_sharding_splits_each_chunk_over_the_mesh():
  """With the run's batch sharding every device samples its quarter of a chunk (a quarter of
  the work of the replicated sampler), and the images are those sampled on one device."""
  proc = subprocess.run([sys.executable, "-c", MESH_SAMPLING], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, XLA_FLAGS=xla_flags(4)), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["shape"] == [11, 16, 16, 3] and out["rows"] == list(range(11))
  assert out["max_diff"] <= 1  # float rounding of another batch shape, at most one level
  assert out["flops_ratio"] < 0.3


def test_standing_statistics_take_their_latents_as_arguments():
  """Closed over, the fixed latents were constants in the program (megabytes of it at real
  sizes, and slower compiles); as arguments the program does not grow with them."""
  config = tiny_config()
  g, params, stats = _generator_and_variables(config)
  standing = sampling.make_standing_stats(g, config.model.z_dim, (3,), num_batches=16,
                                          batch_size=256)
  latent_bytes = 16 * 256 * config.model.z_dim * 4
  assert len(standing.lower(params, stats).as_text()) < latent_bytes
