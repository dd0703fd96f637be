"""multihost: the decisions every process takes alike, on two real CPU processes."""

import json
import os
import signal
import time

import pytest

from jaxgan import multihost
from tests.conftest import JOIN_TWO_PROCESSES, run_two_processes

TWO_PROCESSES = r"""
import json, os, sys
import jax, numpy as np
from jaxgan import config, multihost, sharding
# A SLURM allocation around an explicit host:port launch: JAX's cluster auto-detection must stay
# off then, or it would pin each process to the GPU of SLURM_LOCALID (one GPU per process).
os.environ.update(SLURM_JOB_ID="1", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                  SLURM_PROCID=sys.argv[2], SLURM_LOCALID=sys.argv[2])
c = config.base_config()
c.distributed.coordinator_address, c.distributed.num_processes = sys.argv[1], 2
c.distributed.process_id = int(sys.argv[2])
sharding.initialize_distributed(c)
me = jax.process_index()
from jaxgan import data
def data_check(labels, seed=0):
  try:
    data.check_same_on_every_process(data.ArraySource(images, labels, ["a", "b"], seed=seed))
    return "same"
  except data.DataError as e:
    return str(e)
images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
same = data_check(np.array([0, 1, 0, 1]))
differ = data_check(np.array([0, 1, 0, 1 - me]))  # process 1 labels one image otherwise
reordered = data_check(np.array([0, 1, 0, 1]), seed=me)  # the same data, in another order
def ctrl_c_on_1():
  if me == 1:
    raise KeyboardInterrupt
try:
  multihost.agreed(ctrl_c_on_1, "decoding")
  interrupted = "went on"
except (multihost.PeerError, KeyboardInterrupt) as e:
  interrupted = type(e).__name__
# Rows 0, 2, 3 on process 0 and row 1 on process 1, in float64 (not rounded to float32).
mine = np.array([[0, 2, 3], [1]][me])
gathered = multihost.gather_rows(mine, mine[:, None] / 10 + np.array([[0.0, 1 / 3]]), 4)
try:  # a bad call on process 1 alone: both raise, neither waits in an all-gather
  multihost.gather_rows(mine, np.zeros((len(mine) + me, 2)), 4)
  mismatch = "gathered"
except ValueError as e:
  mismatch = str(e)[:55]
print(json.dumps({
    "interrupted": interrupted,
    "gathered": gathered.tolist(), "mismatch": mismatch,
    "data": [same, differ[:39], reordered[:57]],
    "cuda_visible_devices": jax.config.values["jax_cuda_visible_devices"],
    "all": [multihost.all_processes(me == 0), multihost.all_processes(True)],
    "any": [multihost.any_process(me == 1), multihost.any_process(False)],
    "signal": [multihost.first_signal(15 if me == 1 else None), multihost.first_signal(None)],
    "from_0": [multihost.from_process_0(me == 0), multihost.from_process_0(1.5 + me),
               # 64-bit values whole (not rounded to float32 or wrapped to int32): a best FID
               multihost.from_process_0(0.1 + me), multihost.from_process_0(2**40 + 3 + me),
               multihost.from_process_0(np.arange(3.0) / 3 + me).tolist()],
}))
"""


def test_one_process_takes_its_own_decisions():
  assert multihost.all_processes(True) and not multihost.any_process(False)
  assert multihost.first_signal(None) is None and multihost.first_signal(2) == 2
  assert multihost.from_process_0(2.5) == 2.5


def test_errors_raised_after_agreeing_are_told_from_others():
  """The trainer looks for a stop signal (a collective) after a start-up error only when every
  process raised one through `agreed`, of whatever type."""
  def fails():
    raise OSError("unwritable workdir")

  with pytest.raises(OSError) as raised:
    multihost.agreed(fails, "starting")
  assert multihost.raised_after_agreeing(raised.value)
  assert multihost.raised_after_agreeing(multihost.PeerError("x"))
  assert not multihost.raised_after_agreeing(OSError("raised elsewhere"))

  import dataclasses

  @dataclasses.dataclass(frozen=True)
  class Frozen(Exception):  # refuses attributes set the usual way
    what: str

  def fails_frozen():
    raise Frozen("x")

  with pytest.raises(Frozen) as raised:
    multihost.agreed(fails_frozen, "starting")
  assert multihost.raised_after_agreeing(raised.value)


def test_two_processes_agree():
  results, _ = run_two_processes(TWO_PROCESSES)
  # A Ctrl-C on process 1 inside agreed work: it stops there, and process 0 is told.
  assert [r.pop("interrupted") for r in results] == ["PeerError", "KeyboardInterrupt"]
  for r in results:
    assert r.pop("gathered") == [[k / 10, k / 10 + 1 / 3] for k in range(4)]
    assert r.pop("mismatch") == "gather_rows: row indices and rows differ in number on s"
  assert results[0] == results[1] == {"all": [False, True], "any": [True, False],
                                      "signal": [15, None],
                                      "from_0": [True, 1.5, 0.1, 2**40 + 3, [0, 1 / 3, 2 / 3]],
                                      "cuda_visible_devices": "all",
                                      "data": ["same", "the processes read different data (this",
                                               "the processes read the same data but order it "
                                               "differently"]}


CONFIGS_DIFFER = JOIN_TWO_PROCESSES + r"""
import copy, json
import numpy as np
from jaxgan import config, multihost, run
_c.data.path, _c.eval.cache_dir = "/data", "/cache"  # set on every host
def check(**mine):
  c = copy.deepcopy(_c)
  for key, value in (mine if me == 1 else {}).items():
    parent, _, name = key.rpartition(".")
    (c[parent] if parent else c)[name] = value
  try:
    run.join_processes(c)  # joined already: it checks the config alone
    return "same"
  except config.ConfigError as e:
    return str(e)
print(json.dumps({
    "same": check(),
    # Each host's own paths and decoding workers are its own business; whether a path is set is
    # not (init_from on one host only sent it alone into collectives).
    "own": check(**{"data.workers": 3, "data.path": "/elsewhere", "eval.cache_dir": "/x"}),
    "init_from": check(**{"train.init_from": "/runs/donor"}),
    "lr": check(**{"optim.g_lr": 0.05, "optim.d_lr": 0.05, "data.workers": 3}),
    "seed": check(seed=7),
    "gathered": multihost.all_gather(np.array([me, 2**40 + me], np.int64)).tolist(),
}))
"""


SIGTERM_AFTER_JOINING = r"""
import json, os, signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))  # a stop request's
from jaxgan import config as _config, sharding as _sharding
_c = _config.base_config()
_c.distributed.coordinator_address, _c.distributed.num_processes = sys.argv[1], 2
_c.distributed.process_id = int(sys.argv[2])
_sharding.initialize_distributed(_c)
os.kill(os.getpid(), signal.SIGTERM)  # as the config checks after joining begin
deadline = time.monotonic() + 5
while not got and time.monotonic() < deadline:
  time.sleep(0.01)
print(json.dumps({"got": got}))
"""


def test_a_sigterm_just_after_joining_reaches_the_stop_request():
  """jax.distributed's preemption notifier took SIGTERM as it joined, and the stop request took
  it back only after the agreed config checks: a SIGTERM between went to the notifier, which
  tells Python nothing (the run trained to its end and exited 0)."""
  results, _ = run_two_processes(SIGTERM_AFTER_JOINING)
  assert results == [{"got": [int(signal.SIGTERM)]}] * 2


def test_a_config_differing_between_processes_is_refused_on_every_process():
  """Each process compiles its own step from its own config: an override given to one host only
  trained replicas that parted ways silently (a platform review ran one to the end, exit 0)."""
  results, _ = run_two_processes(CONFIGS_DIFFER)
  for me, r in enumerate(results):
    assert r["same"] == r["own"] == "same"
    assert r["lr"] == (
        "config keys optim.d_lr, optim.g_lr differ between processes (process 1 against process "
        f"0; process {me} has optim.d_lr={[0.0002, 0.05][me]!r}, optim.g_lr="
        f"{[0.0002, 0.05][me]!r}); give every process the same config file and --config "
        "overrides")
    assert r["seed"].startswith(f"config key seed differs between processes (process 1 against "
                                f"process 0; process {me} has seed={[0, 7][me]})")
    assert r["gathered"] == [[0, 2**40], [1, 2**40 + 1]]
    assert r["init_from"].startswith("config key train.init_from differs between processes "
                                     "(process 1 against process 0; process "), r["init_from"]


UNEVEN_DEVICES = JOIN_TWO_PROCESSES + r"""
import json
from jaxgan import config, run
try:
  run.join_processes(_c)
  outcome = "joined"
except config.ConfigError as e:
  outcome = str(e)
print(json.dumps({"outcome": outcome}))
"""


def test_processes_with_different_device_counts_are_refused_on_every_process():
  """A node with a GPU hidden or drained: JAX's collectives between processes assume as many
  devices on each, and the start's first all-gather died with a reshape traceback."""
  results, _ = run_two_processes(UNEVEN_DEVICES, devices=(1, 2))
  assert [r["outcome"] for r in results] == [
      "the processes have different numbers of devices (process 0: 1, process 1: 2); every "
      "process of a run needs as many: check each node's visible GPUs or TPU chips "
      "(CUDA_VISIBLE_DEVICES, a drained or failed device)"] * 2


START_FAILS_ON_ONE = JOIN_TWO_PROCESSES + r"""
import json, os
from jaxgan import trainer
from tests.conftest import tiny_config
# Process 1's host lacks the data (its data.path does not exist there), or its workdir is a
# file there (an error other than bad data).
path, workdir = sys.argv[3], os.path.join(sys.argv[4], "w")
if me == 1 and sys.argv[5] == "data":
  path = os.path.join(sys.argv[3], "missing")
elif me == 1 and sys.argv[5].startswith("elsewhere"):  # its own folder, not process 0's
  workdir = os.path.join(sys.argv[4], "w1")
elif me == 1:
  workdir = os.path.join(sys.argv[4], "a_file")
  open(workdir, "w").close()
from jaxgan import startup
startup.SHARED_WORKDIR_WAIT_S = 2.0
if sys.argv[5] == "elsewhere, stopped":  # a SIGTERM ends the wait (here, or before it began)
  import signal, threading
  startup.SHARED_WORKDIR_WAIT_S = 100.0
  threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
# A folder only where the data is what fails: the synthetic catalog's checks load no TensorFlow
# (~5 s of CPU a process, where the folder's order fingerprint needs TensorFlow's shuffle).
data = ({"data.source": "folder", "data.path": path, "data.num_classes": 0, "data.workers": 1}
        if sys.argv[5] == "data" else {})
run = tiny_config(**data, **{"train.tensorboard": False})
try:
  trainer.train_and_evaluate(run, workdir)
  outcome = "trained"
except Exception as e:
  outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome}))
"""


@pytest.mark.parametrize("failure", ["data", "workdir", "elsewhere", "elsewhere, stopped"])
def test_a_start_failing_on_one_process_stops_every_process(tmp_path, failure):
  """Checks before the first collective are agreed: the process that failed names why, the
  others stop too instead of waiting for it in the data fingerprint exchange, whatever the
  error (all of them then look for a stop signal together, or none). A workdir that is not the
  one process 0 writes (a local folder on each host) trained, then hung in the first
  checkpoint's save for 10 minutes: refused on every process as the run starts."""
  from PIL import Image

  folder = tmp_path / "photos"
  folder.mkdir()
  for i in range(4):
    Image.new("RGB", (20, 20), (50 * i, 0, 0)).save(folder / f"{i}.png")
  if failure.startswith("elsewhere"):  # and a probe file that a killed process 0 left
    os.makedirs(tmp_path / "w")
    (tmp_path / "w" / ".shared-check-0123456789abcdef").write_text("")
    os.utime(tmp_path / "w" / ".shared-check-0123456789abcdef", (0, time.time() - 3600))
    # One written a minute ago may be another host's run's, live (locks may be per host): kept
    # where the wait is 100 s (older than twice the wait is stale: 4 s where it is 2 s).
    (tmp_path / "w" / ".shared-check-fedcba9876543210").write_text("")
    os.utime(tmp_path / "w" / ".shared-check-fedcba9876543210", (0, time.time() - 60))
  results, _ = run_two_processes(START_FAILS_ON_ONE, str(folder), str(tmp_path), failure,
                                 timeout=60)
  if failure.startswith("elsewhere"):
    for r, workdir in zip(results, ("w", "w1")):
      if failure == "elsewhere":
        assert r["outcome"] == (
            f"WorkdirError: --workdir {tmp_path / workdir}: process(es) 1 do not see the file "
            "process 0 wrote there within 2 s: every process must be given the same folder, one "
            "that all hosts share (a network file system, a bucket through gcsfuse); a folder "
            "local to each host would hang in the first checkpoint")
      else:
        assert r["outcome"].startswith("Stopped: SIGTERM received while starting"), r
    # The run's probe and the stale one removed; the recent one kept.
    recent = [] if failure == "elsewhere" else [".shared-check-fedcba9876543210"]
    assert os.listdir(tmp_path / "w") == recent
    assert not (tmp_path / "w1").exists()  # made by process 1, and removed
    return
  assert results[0]["outcome"].startswith("PeerError: starting the run failed on another process")
  want = (("ConfigError: config key data.path", "DataError: data.path") if failure == "data"
          else ("WorkdirError: ",))
  assert results[1]["outcome"].startswith(want), results[1]
  if failure == "data":  # whichever process made the shared workdir, none is left behind
    assert not (tmp_path / "w").exists()


WRITE_FAILS_ON_PROCESS_0 = JOIN_TWO_PROCESSES + r"""
import json, os
from jaxgan import trainer
from tests.conftest import tiny_config
workdir = os.path.join(sys.argv[3], "w")
os.makedirs(os.path.join(workdir, "config.json.tmp"), exist_ok=True)  # unwritable as a file
try:
  trainer.train_and_evaluate(tiny_config(**{"train.tensorboard": False}), workdir)
  outcome = "trained"
except Exception as e:
  outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome}))
"""


def test_a_workdir_write_failing_on_process_0_stops_every_process(tmp_path):
  """Process 0 alone writes config.json: its failure is agreed, not left for the others to
  wait on in the first collective."""
  results, _ = run_two_processes(WRITE_FAILS_ON_PROCESS_0, str(tmp_path))
  assert results[0]["outcome"].startswith(
      f"WorkdirError: --workdir {tmp_path / 'w'}: writing config.json failed (Is a "
      "directory)"), results[0]
  assert results[1]["outcome"] == ("PeerError: writing the workdir's config.json and "
                                   "metrics.jsonl failed on another process (its log says why)")


RESUME_ALLOWED_ON_ONE = JOIN_TWO_PROCESSES + r"""
import json, os
from jaxgan import trainer
from tests.conftest import tiny_config
workdir = os.path.join(sys.argv[3], "w")
trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.tensorboard": False}),
                           workdir)
changed = tiny_config(**{"optim.g_lr": 0.001, "train.tensorboard": False})
try:  # --allow_config_change given to process 0's command line only
  trainer.train_and_evaluate(changed, workdir, allow_config_change=me == 0)
  outcome = "trained"
except Exception as e:
  outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome}))
"""


def test_a_resume_refused_on_one_process_stops_every_process(tmp_path):
  """The check of a checkpoint's config runs on each process before the collective read: one
  that refused it alone (--allow_config_change on another host's command line only) left the
  others waiting in that read, and both aborted 5 minutes later (JAX's barrier timeout)."""
  results, _ = run_two_processes(RESUME_ALLOWED_ON_ONE, str(tmp_path), timeout=100)
  assert results[1]["outcome"].startswith("TrainingError: config differs from checkpoint step 2"), (
      results[1])
  assert results[0]["outcome"] == ("PeerError: the resume's check of checkpoint step 2's config "
                                   "failed on another process (its log says why)"), results[0]


COMPILE_ONLY = r"""
import contextlib, io, json, sys
address, me = sys.argv[1:3]
sys.argv = ["train", "--config", "configs/default.py", "--workdir", "unused", "--compile_only",
            "--config.train.batch_size=8", f"--config.distributed.coordinator_address={address}",
            "--config.distributed.num_processes=2", f"--config.distributed.process_id={me}"]
from jaxgan import train
out = io.StringIO()
with contextlib.redirect_stdout(out):
  try:
    train.run()
  except SystemExit as e:
    status = e.code or 0
print(json.dumps({"status": status, "lines": out.getvalue().splitlines()}))
"""


def test_compile_only_reports_once_across_processes():
  """Every process printed the report: a job's shared stdout held it twice, which `json.loads`
  or jq could not read."""
  results, _ = run_two_processes(COMPILE_ONLY, timeout=100)
  assert [r["status"] for r in results] == [0, 0], results
  assert len(results[0]["lines"]) == 1 and json.loads(results[0]["lines"][0])["mesh"] == {
      "data": 2, "fsdp": 1}, results
  assert results[1]["lines"] == []


def test_the_data_error_says_only_what_the_source_counts(monkeypatch):
  """A process whose data differ from process 0's (here a stand-in for process 0's answer): the
  synthetic catalog, drawn from the seed, counts no examples (said '? examples')."""
  import numpy as np

  from jaxgan import config, data

  monkeypatch.setattr(multihost, "from_process_0", lambda value: value ^ 1)
  synthetic = data.build_source(config.base_config())
  with pytest.raises(data.DataError, match=r"^the processes read different data \(this one: "
                     r"fingerprint [0-9a-f]{8}\); give every host"):
    data.check_same_on_every_process(synthetic)
  arrays = data.ArraySource(np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 1, 0, 1]), ["a", "b"],
                            seed=0)
  with pytest.raises(data.DataError, match=r"\(this one: 4 examples, 0 unreadable files, "
                     r"fingerprint"):
    data.check_same_on_every_process(arrays)


@pytest.mark.patches_traced_code
def test_joining_says_so_before_jax_waits_for_every_process(monkeypatch, caplog):
  """JAX waits 5 minutes for every process to join, silently, and a process that never does
  ends the others with a C++ abort: the log says what it is waiting for, first."""
  import logging

  import jax

  from jaxgan import config, sharding

  joined = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: joined.append(kw))
  c = config.base_config()
  c.distributed.coordinator_address, c.distributed.num_processes = "localhost:1", 4
  c.distributed.process_id = 2
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    sharding.initialize_distributed(c)
  assert joined and caplog.messages[0] == (
      "joining jax.distributed (coordinator localhost:1, process 2 of 4): waiting for every "
      "process to start")
