"""stopping: SIGTERM/SIGINT become a flag, and when processes exchange it."""

import contextlib
import os
import signal
import subprocess
import sys
import time

import jax
import pytest

from jaxgan import multihost, stopping
from tests.conftest import REPO


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_is_held_and_handlers_restored(sig, capfd):
  before = signal.getsignal(sig)
  with stopping.StopRequest() as stop:
    assert stop.check(0) is None
    os.kill(os.getpid(), sig)  # handled in the main thread before kill returns
    assert stop.check(1) == sig
  assert signal.getsignal(sig) is before
  # Said at once, not when the step or start-up stage ends (minutes of decoding, maybe).
  assert capfd.readouterr().err == (f"{signal.Signals(sig).name} received: stopping after this "
                                    "step, start-up stage or evaluation batch (Ctrl-C to quit "
                                    "at once)\n")


@pytest.mark.parametrize("context", [stopping.StopRequest, stopping.Interrupts])
def test_a_handler_not_set_from_python_is_put_back_as_the_default(context, monkeypatch):
  """signal.signal returns None for a handler Python did not set: both contexts put the default
  back for it on exit (the trainer's raised TypeError, which the tools' did not)."""
  previous = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(stopping, "_install", lambda handler: {
      signal.SIGTERM: None, **{s: signal.signal(s, handler) for s in (signal.SIGHUP,)}})
  try:
    with context():
      pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_an_ignored_signal_stays_ignored():
  """nohup ignores SIGHUP so that a run outlives its terminal, and a shell's background job
  ignores SIGINT: the stop request keeps both, also once a SIGTERM has asked for the stop."""
  previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGINT)}
  try:
    with stopping.StopRequest() as stop:
      os.kill(os.getpid(), signal.SIGHUP)
      assert stop.check(1) is None
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop.check(2) == signal.SIGTERM
      assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # not armed to quit at once
    assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in previous)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def test_reinstall_takes_the_signals_back_but_leaves_ctrl_c_armed():
  """jax.distributed's join replaces SIGTERM's handler: a stop request opened before it takes
  the stop signals back, except SIGINT once a first signal armed Ctrl-C to quit at once."""
  before = {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS}
  with stopping.StopRequest() as stop:
    ours = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as a library's own handler would
    stop.reinstall()
    assert signal.getsignal(signal.SIGTERM) == ours
    os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    stop.reinstall()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGHUP) == ours and stop.check(1) == signal.SIGINT
  assert {sig: signal.getsignal(sig) for sig in stopping.STOP_SIGNALS} == before


STOP_WHILE_LOADING = r"""
import os, signal, sys
from jaxgan import run, train
join = run.join_processes

def signal_then_join(config):  # a preemption notice while the trainer loads, before the join
  os.kill(os.getpid(), signal.SIGTERM)
  join(config)

run.join_processes = signal_then_join
sys.argv = ["train", "--config", "configs/default.py", "--workdir", sys.argv[1],
            "--config.data.image_size=16", "--config.train.num_steps=2"]
train.run()
"""


def test_a_stop_signal_while_the_trainer_loads_exits_75_before_anything_is_written(tmp_path):
  """The CLI's stop request opens before JAX and the trainer load (seconds): a SIGTERM then
  ended the process with status 143, which the SLURM script does not requeue."""
  proc = subprocess.run([sys.executable, "-c", STOP_WHILE_LOADING, str(tmp_path / "w")],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == stopping.EXIT_STOPPED, proc.stderr[-2000:]
  assert ("SIGTERM received while starting (while loading the trainer): stopped before "
          "training") in proc.stderr
  assert not (tmp_path / "w").exists()


def _signal_mask(pid: int, field: str) -> set:
  """The signals of process `pid`'s /proc status mask `field` (SigBlk, SigIgn, SigCgt)."""
  with open(f"/proc/{pid}/status") as f:
    mask = int(next(line for line in f if line.startswith(field + ":")).split()[1], 16)
  return {sig for sig in signal.Signals if mask >> (sig - 1) & 1}


SLOW_CONFIG = """
import os, subprocess, sys, time
from jaxgan.config import base_config

def get_config():  # starts a helper process, then waits for the test
  helper = subprocess.Popen(["sleep", "120"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  with open({started!r} + ".tmp", "w") as f:
    f.write(str(helper.pid))
  os.rename({started!r} + ".tmp", {started!r})
  while not os.path.exists({go!r}):
    time.sleep(0.01)
  c = base_config()
  c.data.image_size, c.train.num_steps = 16, 2
  return c
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
@pytest.mark.parametrize("compile_only", [False, True])
def test_a_stop_signal_while_the_config_file_loads_stops_the_run_with_75(tmp_path, compile_only):
  """absl, ml_collections and the config file load before main() runs (~0.5 s, or as long as
  the config file takes): a SIGTERM then was the OS's default action, status 143. The CLI opens
  its stop request first thing, with handlers (not a blocked mask, which a process the config
  file starts would inherit, never to receive a stop signal). --compile_only, which a signal
  ends at once, then ends as the OS's default action would (-15)."""
  started, go = str(tmp_path / "started"), str(tmp_path / "go")
  (tmp_path / "slow.py").write_text(SLOW_CONFIG.format(started=started, go=go))
  proc = subprocess.Popen([sys.executable, "-m", "jaxgan.train", "--config",
                           str(tmp_path / "slow.py"), "--workdir", str(tmp_path / "w"),
                           *(["--compile_only"] if compile_only else [])],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  helper = None
  try:
    deadline = time.monotonic() + 120
    while not os.path.exists(started) and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.01)
    assert os.path.exists(started), "the config file did not start"
    with open(started) as f:
      helper = int(f.read())
    proc.send_signal(signal.SIGTERM)  # while get_config() runs
    # Nothing blocked, nor ignored but what this test's own process ignores (nohup: SIGHUP).
    stops = set(stopping.STOP_SIGNALS) - _signal_mask(os.getpid(), "SigIgn")
    assert not stops & (_signal_mask(helper, "SigBlk") | _signal_mask(helper, "SigIgn"))
    os.kill(helper, signal.SIGTERM)  # which it receives (ends it)
    open(go, "w").close()
    _, err = proc.communicate(timeout=120)
  finally:
    proc.kill()
    if helper:
      with contextlib.suppress(ProcessLookupError):  # ended by the SIGTERM above
        os.kill(helper, signal.SIGKILL)
  if compile_only:
    assert proc.returncode == -signal.SIGTERM, err[-2000:]
  else:
    assert proc.returncode == stopping.EXIT_STOPPED, err[-2000:]
    assert "SIGTERM received while starting (while loading the trainer)" in err
  assert not (tmp_path / "w").exists()


SECOND_CTRL_C = r"""
import os, signal, sys, threading
from jaxgan import stopping
first = getattr(signal, sys.argv[1])
with stopping.StopRequest() as stop:
  os.kill(os.getpid(), first)
  os.kill(os.getpid(), signal.SIGTERM)  # preemption notices repeat: no effect
  print(stop.check(1) == first, flush=True)
  # Ctrl-C again while the main thread waits. It must end the process as the OS's default
  # action does: a Python exception (caught below) would only be raised once the main thread is
  # back in Python, which a wait inside the runtime (a hung collective) never lets it be.
  threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
  try:
    threading.Event().wait(60)
  except KeyboardInterrupt:
    print("a Python exception", flush=True)
    sys.exit(0)
print("not interrupted", flush=True)
"""


@pytest.mark.parametrize("first", ["SIGTERM", "SIGINT"])
def test_a_ctrl_c_after_a_stop_request_quits_at_once(first):
  proc = subprocess.run([sys.executable, "-c", SECOND_CTRL_C, first], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.stdout.split() == ["True"] and proc.returncode == -signal.SIGINT, proc.stderr


@pytest.mark.patches_traced_code
def test_several_processes_exchange_every_few_calls_or_when_asked(monkeypatch):
  exchanged = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost, "first_signal", lambda local: exchanged.append(local) or 15)
  stop = stopping.StopRequest(exchange_every_calls=4)
  stop.signal = 15
  answers = [stop.check(call) for call in range(1, 9)]
  # Only calls 4 and 8 exchange (the flag waits for them); a log row's call exchanges at once.
  assert answers == [None, None, None, 15, None, None, None, 15]
  assert stop.check(5, exchange=True) == 15 and exchanged == [15, 15, 15]  # this process's flag


def test_the_loop_exchanges_at_log_rows_and_due_evaluations_and_a_stop_skips_the_eval(
    tmp_path, monkeypatch):
  """The trainer asks for the exchange where the host waits anyway (log rows) and before a due
  evaluation (a stop seen late there would cost minutes of Inception); a stop that lands on a
  due evaluation's step checkpoints and skips the evaluation."""
  from jaxgan import evaluator as evaluator_lib
  from jaxgan import periodic_eval, trainer
  from jaxgan.metrics import inception_weights
  from tests.conftest import tiny_config

  evaluated, exchanged, signal_at_eval, stop_at = [], [], [], {6}

  class Periodic:  # the evaluation's place in the loop, without Inception
    def __init__(self, *args, **kwargs):
      pass

    def __call__(self, step, state):
      evaluated.append(step)
      if signal_at_eval:
        os.kill(os.getpid(), signal_at_eval.pop())
      return {}

    def close(self):
      pass

  monkeypatch.setattr(periodic_eval, "PeriodicEval", Periodic)
  monkeypatch.setattr(evaluator_lib, "Evaluator", lambda *args, **kwargs: None)
  monkeypatch.setattr(inception_weights, "find_weights", lambda weights: "stand-in")
  real_check = stopping.StopRequest.check

  def check(self, call, exchange=False):
    if exchange:
      exchanged.append(call)
    if call in stop_at:  # a preemption notice during step 6, which has an evaluation due
      self.signal = signal.SIGTERM
    return real_check(self, call, exchange)

  monkeypatch.setattr(stopping.StopRequest, "check", check)
  config = tiny_config(**{
      "train.num_steps": 12, "train.log_every": 4, "train.eval_every": 3,
      "train.checkpoint_every": 100, "train.sample_every": 100, "train.tensorboard": False})
  state = trainer.train_and_evaluate(config, str(tmp_path))
  assert int(state.step) == 6
  # 0: the start-up stages (data, restore, all); 3 twice: before the evaluation and after it
  # (a stop that came during it is taken there).
  assert exchanged == [0, 0, 0, 3, 3, 4, 6]
  assert evaluated == [3]
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]  # 3: before its evaluation
  # The rerun first evaluates step 6 (skipped by the stop); a notice during that evaluation
  # stops the run there, before it trains (on, it would checkpoint a later step and step 6
  # would never be evaluated): the next rerun evaluates it again.
  signal_at_eval.append(signal.SIGTERM)
  with pytest.raises(stopping.Stopped, match=r"^SIGTERM received while starting \(evaluating "
                     r"the resumed step 6\): stopped before training"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6] and sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  config.train.num_steps = 7
  state = trainer.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6, 6, 7] and int(state.step) == 7
  # A notice during the last step, which has its evaluation due: checkpointed, and not taken
  # for the end (train exits 75, so the job runs again); the rerun evaluates it and ends.
  config.train.num_steps, stop_at = 9, {9}
  with pytest.raises(stopping.Stopped, match=r"^SIGTERM received: stopped after step 9, "
                     r"checkpoint written; rerun to resume \(its evaluation was skipped"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6, 6, 7] and "9" in os.listdir(tmp_path / "checkpoints")
  state = trainer.train_and_evaluate(config, str(tmp_path))
  assert evaluated == [3, 6, 6, 7, 9] and int(state.step) == 9
  assert "7" in os.listdir(tmp_path / "checkpoints")


def test_a_stop_during_the_last_step_with_nothing_left_says_the_run_is_complete(
    tmp_path, monkeypatch, capsys):
  """No evaluation due and its checkpoint written: train exits 0, so the message must not ask
  for a rerun."""
  from jaxgan import trainer
  from tests.conftest import tiny_config

  real_check = stopping.StopRequest.check

  def check(self, call, exchange=False):
    if call == 2:  # a preemption notice during the last step
      self.signal = signal.SIGTERM
    return real_check(self, call, exchange)

  monkeypatch.setattr(stopping.StopRequest, "check", check)
  config = tiny_config(**{"train.num_steps": 2, "train.log_every": 1,
                          "train.tensorboard": False})
  assert int(trainer.train_and_evaluate(config, str(tmp_path)).step) == 2
  assert capsys.readouterr().out.strip() == (
      "SIGTERM received during the last step: the run is complete (step 2, checkpoint written)")


STOP_WHILE_READING_DATA = r"""
import os, signal, sys
from jaxgan import data, train
real = getattr(data, sys.argv[3])

def read_then_signal(config):
  read = real(config)
  os.kill(os.getpid(), signal.SIGTERM)  # a preemption notice while the run reads its data
  return read

setattr(data, sys.argv[3], read_then_signal)
sys.argv = ["train", "--config", "configs/default.py", "--workdir", sys.argv[2],
            "--config.distributed.coordinator_address=" + sys.argv[1],
            "--config.distributed.num_processes=1", "--config.distributed.process_id=0",
            "--config.data.image_size=16", "--config.model.g_width=8", "--config.model.d_width=8",
            "--config.train.batch_size=8", "--config.train.num_steps=2"]
train.run()
"""


@pytest.mark.parametrize("reading", ["build_source", "with_class_counts"])
def test_a_stop_signal_while_starting_a_distributed_run_stops_it_before_training(
    tmp_path, reading):
  """jax.distributed installs its own SIGTERM handler (a preemption notifier that keeps the
  process alive and tells Python nothing): a notice during start-up was lost and the run
  trained on. It now stops at the end of the start-up stage, exit status 75, nothing written;
  also one during the class counts' read, the first thing after the processes join."""
  from tests.conftest import _free_port

  proc = subprocess.run(
      [sys.executable, "-c", STOP_WHILE_READING_DATA, f"localhost:{_free_port()}",
       str(tmp_path / "w"), reading], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == stopping.EXIT_STOPPED, proc.stderr[-2000:]
  assert ("SIGTERM received while starting (after reading the data): stopped before training"
          in proc.stderr)
  # log.txt says so, after the lines of the start so far (the processes joined).
  log_txt = (tmp_path / "w" / "log.txt").read_text()
  assert "jaxgan.sharding: jax.distributed: process 0 of 1" in log_txt
  assert ("WARNING jaxgan.trainer: ended: Stopped: SIGTERM received while starting (after "
          "reading the data)") in log_txt
  assert not (tmp_path / "w" / "config.json").exists()
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_a_stop_signal_during_the_restore_stops_before_anything_is_written(tmp_path, monkeypatch):
  from jaxgan import checkpoint, trainer
  from tests.conftest import tiny_config

  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False})
  trainer.train_and_evaluate(config, str(tmp_path))
  before = (tmp_path / "metrics.jsonl").read_text()
  real_restore = checkpoint.Checkpointer.restore_latest

  def restore_then_signal(self, *args):
    restored = real_restore(self, *args)
    os.kill(os.getpid(), signal.SIGINT)
    return restored

  monkeypatch.setattr(checkpoint.Checkpointer, "restore_latest", restore_then_signal)
  handler = signal.getsignal(signal.SIGINT)
  config.train.num_steps = 4
  with pytest.raises(stopping.Stopped, match=r"SIGINT received while starting \(after "
                     r"restoring the checkpoint\)"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert signal.getsignal(signal.SIGINT) is handler
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  assert (tmp_path / "metrics.jsonl").read_text() == before


def test_a_stop_signal_while_loading_the_evaluator_stops_before_the_first_step(tmp_path,
                                                                                monkeypatch):
  """The last start-up stage (init or restore, Inception's weights): checked before the first
  step, so neither a start-of-run evaluation nor a first call runs."""
  from jaxgan import evaluator as evaluator_lib
  from jaxgan import periodic_eval, trainer
  from jaxgan.metrics import inception_weights
  from tests.conftest import tiny_config

  def load_then_signal(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(evaluator_lib, "Evaluator", load_then_signal)
  class Periodic:
    def __init__(self, *args):
      pass

    def __call__(self, step, state):
      pytest.fail("evaluated")

    def close(self):
      pass

  monkeypatch.setattr(periodic_eval, "PeriodicEval", Periodic)
  monkeypatch.setattr(inception_weights, "find_weights", lambda weights: "stand-in")
  config = tiny_config(**{"train.eval_every": 2, "train.tensorboard": False})
  with pytest.raises(stopping.Stopped, match=r"SIGTERM received while starting \(before the "
                     r"first step\): stopped before training"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


STOP_THE_GROUP_WHILE_DECODING = r"""
import os, signal, sys
import numpy as np
from PIL import Image
from jaxgan import train
from jaxgan.data import decode

folder = sys.argv[1] + "/images"
os.makedirs(folder)
for i in range(1500):  # enough that chunks are still queued when the signal goes out
  Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(f"{folder}/{i}.png")
collect = decode._collect

def collect_under_a_stop(results, *args):
  def first_then_signal():
    for i, loaded in enumerate(results):
      if i == 0:
        os.killpg(0, signal.SIGTERM)  # scancel: every process of the job, the workers too
      yield loaded
  collect(first_then_signal(), *args)

decode._collect = collect_under_a_stop
sys.argv = ["train", "--config", "configs/default.py", "--workdir", sys.argv[1] + "/w",
            "--config.data.source=folder", "--config.data.path=" + folder,
            "--config.data.num_classes=0", "--config.data.image_size=16",
            "--config.data.workers=2"]
train.run()
"""


def test_a_stop_signal_that_also_ends_the_decoding_workers_is_a_stop(tmp_path):
  """SIGTERM to the whole process group while the data decodes ends the workers (SIGTERM keeps
  its default there), which fails the decode: the run reports the stop (75), not the error."""
  proc = subprocess.run([sys.executable, "-c", STOP_THE_GROUP_WHILE_DECODING, str(tmp_path)],
                        cwd=REPO, capture_output=True, text=True, timeout=120,
                        start_new_session=True)  # its own process group: pytest is not signalled
  assert proc.returncode == stopping.EXIT_STOPPED, proc.stderr[-2000:]
  assert "SIGTERM received while starting (while starting the run)" in proc.stderr
  assert "starting the run failed after a stop signal (DataError: decoding" in proc.stderr
