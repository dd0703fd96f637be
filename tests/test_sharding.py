"""Sharded steps on fake CPU devices, multi-process training, checkpoints across device counts."""

import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import run as run_lib, sharding, saved_run
from tests.conftest import (JOIN_TWO_PROCESSES, REPO, run_module, run_two_processes, tiny_config,
                            xla_flags)


def _python(code, devices, *args, timeout=300):
  env = dict(os.environ, XLA_FLAGS=xla_flags(devices))
  return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


EQUIVALENCE = """
import json, sys
import jax, numpy as np
from jaxgan import run as run_lib, sharding
from jaxgan.data import SyntheticCatalog
from tests.conftest import tiny_config

def run(mesh_data, fsdp):
  c = tiny_config(**{'train.batch_size': 16, 'model.g_width': 16, 'model.d_width': 16,
                     'mesh.data': mesh_data, 'mesh.fsdp': fsdp})
  r = run_lib.build_run(c)
  state = r.make_state()
  specs = [s.spec for s in jax.tree_util.tree_leaves(r.state_shardings)]
  specs = {'replicated': sum(s == jax.sharding.PartitionSpec() for s in specs),
           'fsdp_split': sum('fsdp' in tuple(s) for s in specs)}
  stream = SyntheticCatalog(16, 3, 0).batches(16, 0)
  for _ in range(3):
    state, _ = r.train_step(state, sharding.put_batch(next(stream), r.batch_sharding, 16))
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(state))], specs, r.mesh

one, _, _ = run(1, 1)
out = {}
for name, (d, f) in {'data8': (8, 1), 'fsdp': (2, 4)}.items():
  leaves, specs, mesh = run(d, f)
  out[name] = {'max_abs_diff': max(float(np.max(np.abs(a.astype(np.float64) - b)))
                                   for a, b in zip(one, leaves)),
               'mesh': dict(mesh.shape), 'specs': specs}
print(json.dumps(out))
"""


def test_sharded_step_matches_single_device():
  proc = _python(EQUIVALENCE, 8)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["data8"]["mesh"] == {"data": 8, "fsdp": 1}
  assert out["fsdp"]["mesh"] == {"data": 2, "fsdp": 4}
  # fsdp really splits some leaves; pure data parallelism replicates everything.
  assert out["data8"]["specs"]["fsdp_split"] == 0
  assert out["fsdp"]["specs"]["fsdp_split"] >= 6  # G and D kernels, their EMA and Adam moments
  assert out["data8"]["max_abs_diff"] < 1e-5, out
  assert out["fsdp"]["max_abs_diff"] < 1e-5, out


def test_leaf_spec_rule():
  assert sharding.leaf_spec((4, 4, 64, 128), 4) == jax.sharding.PartitionSpec(None, None, None, "fsdp")
  assert sharding.leaf_spec((128,), 4) == jax.sharding.PartitionSpec()  # small: replicated
  assert sharding.leaf_spec((3, 3, 63, 129), 4) == jax.sharding.PartitionSpec()  # indivisible
  assert sharding.leaf_spec((4, 4, 63, 129), 4) == jax.sharding.PartitionSpec("fsdp", None, None, None)
  assert sharding.leaf_spec((4, 4, 64, 128), 1) == jax.sharding.PartitionSpec()


def test_gradient_bytes_formula():
  # 1M parameters (4 MB) on 8 data-parallel devices: 2 * 7/8 * 4 MB per all-reduce.
  dp = sharding.gradient_bytes_per_step(1_000_000, 500_000, 2, data=8, fsdp=1)
  assert dp["g_bytes"] == pytest.approx(7e6) and dp["d_bytes"] == pytest.approx(2 * 3.5e6)
  one = sharding.gradient_bytes_per_step(1_000_000, 500_000, 1, data=1, fsdp=1)
  assert one["total_bytes"] == 0
  # fsdp 4 x data 2, 4 MB of G: two gathers and a reduce-scatter (3/4 of 4 MB each), and the
  # 1 MB gradient shard all-reduced over 2 (2 * 1/2 * 1 MB).
  fsdp = sharding.gradient_bytes_per_step(1_000_000, 0, 1, data=2, fsdp=4)
  assert fsdp["g_bytes"] == pytest.approx(3 * 0.75 * 4e6 + 1.0 * 4e6 / 4)
  # D is also gathered twice for G's update (forward and input gradient, no D gradient), and an
  # extra critic update adds D's two gathers, reduce-scatter and shard all-reduce, and G's forward.
  two = sharding.gradient_bytes_per_step(1_000_000, 1_000_000, 2, data=2, fsdp=4)
  assert two["d_bytes"] == pytest.approx(2 * (3 * 3e6 + 1e6) + 2 * 3e6)
  assert two["g_bytes"] == pytest.approx(fsdp["g_bytes"] + 3e6)
  # Leaves fsdp does not split are all-reduced over all data * fsdp devices, never gathered:
  # fsdp=3 splitting nothing (it divides no power-of-two channel count) is 3-way data parallel.
  none = sharding.gradient_bytes_per_step(1_000_000, 500_000, 2, data=1, fsdp=3, g_split=0,
                                          d_split=0)
  assert none == pytest.approx(sharding.gradient_bytes_per_step(1_000_000, 500_000, 2, data=3,
                                                                fsdp=1))
  # Half of G split over 4 (x 2 data): the split half as above, the other half all-reduced over 8.
  half = sharding.gradient_bytes_per_step(1_000_000, 0, 1, data=2, fsdp=4, g_split=500_000)
  assert half["g_bytes"] == pytest.approx(fsdp["g_bytes"] / 2 + 2 * 7 / 8 * 2e6)


def test_an_fsdp_that_splits_little_is_counted_and_warned_about(caplog):
  import types

  shapes = {"split": (4, 4, 64, 128), "odd": (3, 3, 63, 129), "small": (100,)}
  tree = {k: jax.ShapeDtypeStruct(v, jnp.float32) for k, v in shapes.items()}
  assert sharding.split_values(tree, 4) == (131072, 131072 + 73143 + 100)
  assert sharding.split_values(tree, 3) == (73143, 131072 + 73143 + 100)  # 63 = 3 x 21
  state = types.SimpleNamespace(g_params=tree, d_params={"k": tree["split"]})
  with caplog.at_level(logging.WARNING, logger="jaxgan.sharding"):
    sharding.warn_if_fsdp_splits_little(state, 4)  # 262144 of 335359: 78 %
    assert caplog.messages == ["mesh.fsdp=4 splits only 78% of the parameters; the rest is "
                               "replicated on every device: <1% in leaves under 4096 values, too "
                               "small to split, 22% in leaves with no dimension 4 divides"]
    caplog.clear()
    sharding.warn_if_fsdp_splits_little(state, 3)  # only the odd leaf: 3 divides 63
    assert caplog.messages == ["mesh.fsdp=3 splits only 22% of the parameters; the rest is "
                               "replicated on every device: <1% in leaves under 4096 values, too "
                               "small to split, 78% in leaves with no dimension 3 divides (a "
                               "power of two divides channel counts)"]
    caplog.clear()
    tiny = {"small": tree["small"], "split": jax.ShapeDtypeStruct((8, 8), jnp.float32)}
    sharding.warn_if_fsdp_splits_little(types.SimpleNamespace(g_params=tiny, d_params={}), 2)
    assert caplog.messages == ["mesh.fsdp=2 splits only 0% of the parameters; the rest is "
                               "replicated on every device: 100% in leaves under 4096 values, too "
                               "small to split"]
    caplog.clear()
    mostly = {"split": tree["split"], "small": tree["small"]}  # 100 of 131172 values stay
    sharding.warn_if_fsdp_splits_little(types.SimpleNamespace(g_params={}, d_params=mostly), 2)
    sharding.warn_if_fsdp_splits_little(state, 1)  # no fsdp
  assert caplog.text == ""


TRAIN = """
import logging, sys
from jaxgan import trainer
logging.basicConfig(level=logging.INFO, force=True)
from tests.conftest import tiny_config
trainer.train_and_evaluate(tiny_config(**{'train.batch_size': 16, 'train.num_steps': int(sys.argv[2]),
                                          'mesh.fsdp': int(sys.argv[3]),
                                          'train.tensorboard': False}), sys.argv[1])
"""


def test_checkpoint_moves_between_device_counts(tmp_path):
  workdir = str(tmp_path / "w")
  for devices, steps, fsdp in ((8, 2, 4), (2, 4, 1)):
    proc = _python(TRAIN, devices, workdir, str(steps), str(fsdp))
    assert proc.returncode == 0, proc.stderr[-3000:]
  # The 2-device run continued the 8-device one's step 2 (a fresh start ends alike) ...
  assert "resuming from checkpoint step 2 of" in proc.stderr, proc.stderr[-3000:]
  # ... and says that it runs on other devices, so is no longer bit-identical to either run.
  assert ("checkpoint step 2 was computed on 8 x cpu, mesh 2x4, this run on 2 x cpu, mesh 2x1: "
          "from here on it matches a run that stays on either to float rounding, not bit for "
          "bit") in proc.stderr, proc.stderr[-3000:]
  # ... its step 4 reads on this process's single device ...
  assert saved_run.load_checkpoint(workdir)[1] == 4
  # ... and training resumes from it there (not from an older step after a failed read).
  from jaxgan import restore, trainer
  restored, real_restore = [], restore.restore_run
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(restore, "restore_run",
                  lambda *a: restored.append(real_restore(*a)) or restored[-1])
    trainer.train_and_evaluate(tiny_config(**{"train.batch_size": 16, "train.num_steps": 6,
                                              "train.tensorboard": False}), workdir)
  assert [r[0] for r in restored] == [4]
  _, step, state, _ = saved_run.load_checkpoint(workdir)
  assert step == 6 and int(state.step) == 6 and int(state.images_seen) == 6 * 16
  assert not os.path.exists(workdir + "/checkpoints.corrupt")  # nothing was moved aside
  # The same values as 6 steps on one device without a move: each restore put every value
  # where it was (the batch mean is summed in another order over 8, 2 and 1 devices: 1e-5).
  reference = trainer.train_and_evaluate(
      tiny_config(**{"train.batch_size": 16, "train.num_steps": 6, "train.tensorboard": False}),
      str(tmp_path / "reference"))
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(reference)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


SMALL = ["--config.train.tensorboard=False", "--config.data.image_size=16", "--config.data.num_classes=3", "--config.model.z_dim=8",
         "--config.model.g_width=8", "--config.model.d_width=8", "--config.model.embed_dim=4",
         "--config.train.batch_size=8", "--config.train.num_steps=5", "--config.train.log_every=5",
         "--config.train.sample_every=5", "--config.train.checkpoint_every=5"]


def test_two_processes_match_one(tmp_path):
  """launch/local_multiprocess.sh 2: jax.distributed over CPU collectives, same result as one."""
  multi, single = tmp_path / "multi", tmp_path / "single"
  proc = subprocess.run(["bash", "launch/local_multiprocess.sh", "2", "--config",
                         "configs/default.py", "--workdir", str(multi), *SMALL],
                        cwd=REPO, capture_output=True, text=True, timeout=400,
                        env=dict(os.environ, PYTHON=sys.executable))
  assert proc.returncode == 0, proc.stderr[-3000:]
  one = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir", str(single),
                   *SMALL)
  assert one.returncode == 0, one.stderr[-3000:]
  _, step_m, state_m, _ = saved_run.load_checkpoint(str(multi))
  _, step_s, state_s, _ = saved_run.load_checkpoint(str(single))
  assert step_m == step_s == 5
  for a, b in zip(jax.tree_util.tree_leaves(state_m), jax.tree_util.tree_leaves(state_s)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
  # Only process 0 wrote the logs; log.txt from the start: its joining the job held back until
  # the workdir was known good, process 1's lines not at all.
  rows = [json.loads(line) for line in open(multi / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [5]
  log_lines = (multi / "log.txt").read_text().splitlines()
  assert "INFO jaxgan.sharding: joining jax.distributed (coordinator localhost:" in (
      log_lines[0]), log_lines[:3]
  assert "INFO jaxgan.sharding: jax.distributed: process 0 of 2" in log_lines[1], log_lines[:3]
  assert not [line for line in log_lines if "process 1 of 2" in line]


SCATTERED_ROWS = JOIN_TWO_PROCESSES + r"""
import json
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxgan import sharding
from jaxgan.data import SyntheticCatalog
d = jax.devices()  # two per process: [p0 d0, p0 d1, p1 d0, p1 d1]
# A mesh in which each process's devices are not contiguous (as a TPU torus order can make).
mesh = Mesh(np.array([d[0], d[2], d[1], d[3]]).reshape(4, 1), sharding.BATCH_AXES)
batch_sharding = sharding.batch_sharding(mesh)
rows = sharding.process_rows(batch_sharding, 8)
source = SyntheticCatalog(8, 3, seed=0)
batch = sharding.put_batch(next(source.batches(8, 1, rows)), batch_sharding, 8)
try:  # a process that loaded half its rows: inferred, the global batch was a valid one of 4 rows
  short = str(sharding.put_batch(next(source.batches(8, 1, rows[:2])), batch_sharding, 8))
except ValueError as e:
  short = f"ValueError: {e}"
image = multihost_utils.process_allgather(batch["image"], tiled=True)
label = multihost_utils.process_allgather(batch["label"], tiled=True)
want = next(source.batches(8, 1))
print(json.dumps({"rows": rows.tolist(), "short": short,
                  "same_batch": bool(np.array_equal(image, want["image"])
                                     and np.array_equal(label, want["label"]))}))
"""


def test_scattered_devices_assemble_the_global_batch_in_order():
  """Each process loads the rows its devices hold, so the global batch does not depend on the
  process layout; loading its contiguous share instead would permute the batch here."""
  results, _ = run_two_processes(SCATTERED_ROWS, devices=2)
  assert [r["rows"] for r in results] == [[0, 1, 4, 5], [2, 3, 6, 7]]
  assert all(r["same_batch"] for r in results)
  assert all(r["short"].startswith("ValueError") for r in results)


def test_compile_only_prints_memory_and_flops(tmp_path):
  proc = run_module("jaxgan.train", "--config", "configs/default.py", "--workdir",
                    str(tmp_path / "w"), "--compile_only", "--config.train.steps_per_call=2",
                    "--config.train.log_every=25")
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The report, and what training would refuse: the step compiles without the schedule.
  assert ("training refuses this config: config key train.log_every: 25 is not a multiple of "
          "train.steps_per_call=2") in proc.stderr
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["steps_per_call"] == 2
  assert report["per_device_flops"] > 1e8
  assert report["per_device_peak_estimate_bytes"] > 0
  assert report["g_parameters"] == 502_211 and report["d_parameters"] == 168_865
  assert report["per_device_collective_bytes_per_step"] == 0  # one device
  assert report["mesh"] == {"data": 1, "fsdp": 1}
  assert not (tmp_path / "w").exists()  # nothing trained, nothing written


def test_compile_report_flops_are_per_step_also_when_a_call_runs_several(make_config):
  """With train.steps_per_call = 3 a call is three unrolled steps; XLA counts all three and the
  report divides by them (a rolled loop would have been counted once: nothing to divide)."""
  one = run_lib.compile_report(make_config())["per_device_flops"]
  # A prepared set's config without its data (not read: --compile_only on another machine).
  three = run_lib.compile_report(make_config(**{"train.steps_per_call": 3,
                                                "data.source": "prepared"}))["per_device_flops"]
  assert three == pytest.approx(one, rel=0.05)


def test_launch_scripts_parse():
  for name in os.listdir(os.path.join(REPO, "launch")):
    proc = subprocess.run(["bash", "-n", os.path.join(REPO, "launch", name)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, (name, proc.stderr)


SPLIT_EXTRACTION = """
import json, sys
import jax, numpy as np
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from jaxgan.evaluator import extract_across_processes
seen = []
def features(x):  # a stand-in for Inception: per-image features that depend on the image only
  seen.append(len(x))
  return x.reshape(len(x), 12)[:, :4].astype(np.float32) + 0.5  # also of no images
def extract(chunks, count):
  x = np.concatenate(list(chunks))
  assert len(x) == count, (len(x), count)
  return features(x)
images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
# Chunks of 2: process 1's first image (3) is the second of a chunk.
five = extract_across_processes(extract, (images[i:i + 2] for i in range(0, 5, 2)), 5)
one = extract_across_processes(extract, [images[:1]], 1)  # process 1 extracts no image
def fails_on_1(chunks, count):  # e.g. out of memory on one host only
  if jax.process_index() == 1:
    raise MemoryError("RESOURCE_EXHAUSTED on process 1")
  return extract(chunks, count)
try:
  extract_across_processes(fails_on_1, [images], 5)
  failure = None
except Exception as e:  # both processes must get here, neither left waiting in the all-gather
  failure = f"{type(e).__name__}: {e}"
# The real-feature cache: process 0 writes it; a process whose (host-local) cache dir lacks the
# file writes its own copy, so every host hits at the next start.
import os
from jaxgan import evaluator
from tests.conftest import tiny_config
class Extractor:
  global_batch, weights_id, last_images_per_sec = 2, "stub", None
  def stream(self, chunks, total=None, desc=""):
    return extract(chunks, total)
class Source:
  num_examples = 5
  def batches(self, batch_size, start):
    while True:
      yield {"image": images[:batch_size], "label": np.zeros(batch_size, np.int32)}
cache = os.path.join(sys.argv[3], f"host{jax.process_index()}")
ev = evaluator.Evaluator(tiny_config(**{"eval.cache_dir": cache}), None, Source(),
                         sampler=None, extractor=Extractor())
ev.reference(5)
cached = sorted(os.listdir(os.path.join(cache, "reference")))
print(json.dumps({"seen": seen, "five": five.tolist(), "one": one.tolist(), "failure": failure,
                  "cached": cached}))
"""


def test_evaluation_splits_inception_across_processes(tmp_path):
  results, _ = run_two_processes(SPLIT_EXTRACTION, str(tmp_path))
  images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
  want = images.reshape(5, -1)[:, :4].astype(np.float32) + 0.5
  # Process 0 extracts images 0-2, process 1 images 3-4 (of a single image: none); both end
  # with all the features, in order.
  assert results[0]["seen"] == [3, 1, 3, 3] and results[1]["seen"] == [2, 0, 2]
  # Each process's own cache dir (a host-local ~/.cache) holds the reference features.
  assert results[0]["cached"] == results[1]["cached"] and len(results[0]["cached"]) == 1
  # A failure on one process reaches the other before the all-gather (no hang): both raise.
  assert results[1]["failure"] == "MemoryError: RESOURCE_EXHAUSTED on process 1"
  assert results[0]["failure"] == ("PeerError: feature extraction failed on another process "
                                   "(its log says why)")
  for r in results:
    np.testing.assert_array_equal(r["five"], want)
    np.testing.assert_array_equal(r["one"], want[:1])


class SliceDevice:
  """What the mesh layout reads of a device of a multislice TPU job (a CPU stand-in for JAX's
  own layout functions)."""
  platform = device_kind = "cpu"

  def __init__(self, i, slice_index):
    self.id, self.slice_index, self.process_index = i, slice_index, i // 2


def test_several_slices_keep_fsdp_inside_each_slice(caplog):
  """'data' is split across the slices and every fsdp group lies in one slice, also when the
  device list interleaves the slices (a plain reshape would pair devices of two slices)."""
  import logging

  devices = [SliceDevice(i, i % 2) for i in range(8)]
  grid = sharding.device_grid(tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2}), devices)
  assert grid.shape == (4, 2)
  assert [sorted({d.slice_index for d in row}) for row in grid] == [[0], [0], [1], [1]]
  assert sorted(d.id for d in grid.flat) == list(range(8))
  with caplog.at_level(logging.WARNING):  # fsdp over all 8: it must cross the slices
    wide = sharding.device_grid(tiny_config(**{"mesh.data": 1, "mesh.fsdp": 8}), devices)
  assert wide.shape == (1, 8)
  assert "fsdp's collectives cross the network between slices" in caplog.text
  uneven = [SliceDevice(i, int(i >= 6)) for i in range(8)]  # 6 + 2: JAX cannot lay them out
  with caplog.at_level(logging.WARNING):
    grid = sharding.device_grid(tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2}), uneven)
  assert [d.id for d in grid.flat] == list(range(8))  # device order, with a warning
  assert "no topology-aware device order" in caplog.text


def test_a_sub_mesh_says_how_many_devices_it_leaves_idle(caplog):
  """mesh.data * mesh.fsdp below the device count is allowed in one process (a scaling study),
  and was silent: a mistyped mesh.data left devices idle for a whole run unnoticed."""
  import logging

  devices = [SliceDevice(i, 0) for i in range(4)]
  with caplog.at_level(logging.WARNING, logger="jaxgan.sharding"):
    grid = sharding.device_grid(tiny_config(**{"mesh.data": 2}), devices)
    assert [d.id for d in grid.flat] == [0, 1]
    assert caplog.messages == ["mesh 2x1 uses 2 of the 4 devices; the other 2 stay idle "
                               "(mesh.data=-1 takes them all)"]
    caplog.clear()
    sharding.device_grid(tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2}), devices)
  assert caplog.messages == []


@pytest.mark.patches_traced_code
def test_a_mesh_jax_cannot_lay_out_falls_back_to_device_order(monkeypatch, caplog):
  """create_device_mesh refuses some TPU shapes (an axis that is no product of physical axes,
  several slices): the run still gets a mesh, in jax.devices() order, with a warning."""
  import logging

  from jax.experimental import mesh_utils

  def refuse(*args, **kwargs):
    raise NotImplementedError("axis 2 is not a product of physical axes")

  monkeypatch.setattr(mesh_utils, "create_device_mesh", refuse)
  with caplog.at_level(logging.WARNING):
    mesh = sharding.make_mesh(tiny_config())
  assert list(mesh.devices.flat) == jax.devices()[:1] and dict(mesh.shape) == {"data": 1, "fsdp": 1}
  assert "no topology-aware device order (axis 2 is not a product" in caplog.text


def test_to_host_list_fetches_a_rows_calls_stacked_with_the_same_values(monkeypatch):
  """A log row's calls (scalars, or [k] per call with several steps per call) come back equal,
  call by call, to per-tree fetches, through one stacked array per metric."""
  for per_call in [(), (3,)]:
    calls = [{"d_loss": jnp.full(per_call, 0.1 * i, jnp.float32), "step": jnp.full(per_call, i)}
             for i in range(5)]
    fetched_shapes, to_host = [], sharding.to_host
    monkeypatch.setattr(sharding, "to_host", lambda tree: (
        fetched_shapes.extend(x.shape for x in jax.tree_util.tree_leaves(tree)), to_host(tree))[1])
    got = sharding.to_host_list(calls)
    monkeypatch.undo()
    assert fetched_shapes == [(5,) + per_call] * 2
    for g, want in zip(got, sharding.to_host(calls)):
      for key in want:
        np.testing.assert_array_equal(g[key], want[key])
        assert g[key].dtype == want[key].dtype
  assert sharding.to_host_list([]) == []


BUSY_PORT = r"""
import socket, sys
from jaxgan import config, run
c = config.base_config()
c.distributed.coordinator_address, c.distributed.num_processes = sys.argv[1], 2
try:
  run.join_processes(c)
  print("joined")
except config.ConfigError as e:
  print(e)
"""


@pytest.mark.parametrize("host", ["127.0.0.1", ""])
def test_a_coordinator_port_in_use_is_one_line(host):
  """Process 0 of a launch whose port another program holds (launch/local_multiprocess.sh drew
  it at random): JAX's server failed to bind, and a two-process run died of a segmentation
  fault. Checked first, in its own process (a failed bind would not leave the test's)."""
  import socket

  with socket.socket() as holder:
    holder.bind((host, 0))
    holder.listen()
    port = holder.getsockname()[1]
    proc = subprocess.run([sys.executable, "-c", BUSY_PORT, f"localhost:{port}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert proc.stdout.strip() == (
      f"config key distributed.coordinator_address ('localhost:{port}'): port {port} is in use "
      "on this host, where process 0 serves the coordinator; pick a free one"), proc.stderr[-2000:]
