"""Preemption safety: SIGKILL/SIGTERM, damaged checkpoints, config changes, non-finite steps,
failing checkpoint writes."""

import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxgan import config as config_lib, losses, run as run_lib, saved_run, trainer
from jaxgan import workdir as workdir_lib
from jaxgan import periodic_eval, run_folders, run_health, stopping, writers
from tests.conftest import REPO, tiny_config

TINY_FLAGS = ["--config.data.image_size=16", "--config.data.num_classes=3",
              "--config.model.z_dim=8", "--config.model.g_width=8", "--config.model.d_width=8",
              "--config.model.embed_dim=4", "--config.train.batch_size=8",
              "--config.train.ema_half_life_images=64", "--config.train.tensorboard=False"]


def _default_config_with(flags):
  """configs/default.py with `--config.k=v` flags applied, as the CLI would."""
  config = config_lib.load_config_file(os.path.join(REPO, "configs", "default.py"))
  for flag in flags:
    key, value = flag[len("--config."):].split("=", 1)
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    old = node[leaf]
    node[leaf] = (value == "True") if isinstance(old, bool) else type(old)(value)
  return config


def _train_cmd(workdir, flags):
  return [sys.executable, "-m", "jaxgan.train", "--config", "configs/default.py", "--workdir",
          str(workdir), *flags]


def _assert_same_state(a, b):
  la, lb = jax.tree_util.tree_leaves(jax.device_get(a)), jax.tree_util.tree_leaves(jax.device_get(b))
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# `python -m jaxgan.train ARGS`, except that the run waits for its kill at the log row of step
# `sys.argv[1]`: a test process starved of the CPU on a loaded machine still finds it mid-run.
TRAIN_UNTIL_KILLED = """
import sys, time
from jaxgan import train, writers
until, write = int(sys.argv.pop(1)), writers.MetricsWriter.write_scalars
def wait_at(self, step, values):
  write(self, step, values)
  while step >= until:
    time.sleep(1)
writers.MetricsWriter.write_scalars = wait_at
train.run()
"""


def _kill_after_checkpoint(workdir, flags, min_step, wait_at_step):
  """Trains in `workdir`, SIGKILLs the run as soon as a checkpoint >= min_step is complete (it
  waits at step `wait_at_step` until then)."""
  checkpoint_dir = os.path.join(workdir, "checkpoints")
  train_args = _train_cmd(workdir, flags)[3:]  # after `python -m jaxgan.train`
  cmd = [sys.executable, "-c", TRAIN_UNTIL_KILLED, str(wait_at_step), *train_args]
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [int(n) for n in os.listdir(checkpoint_dir) if n.isdigit()] if os.path.isdir(checkpoint_dir) else []
    if steps and max(steps) >= min_step:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return max(steps)
    time.sleep(0.02)
  proc.kill()
  raise AssertionError(f"run ended before a checkpoint >= {min_step}: {proc.stderr.read()[-2000:]}")


def _prepared_flags(tmp_path):
  """A small prepared catalog (two classes of coloured shapes) and the flags to train on it."""
  from PIL import Image

  from jaxgan import prepare

  for i in range(24):
    cls = "bags" if i % 2 else "shoes"
    img = Image.new("RGB", (24, 24), (255, 255, 255))
    img.paste((i * 10 % 256, 40, 200 if i % 2 else 20), (4, 4 + i % 5, 20, 20))
    (tmp_path / "raw" / cls).mkdir(parents=True, exist_ok=True)
    img.save(tmp_path / "raw" / cls / f"{i}.png")
  assert prepare.main(["--images", str(tmp_path / "raw"), "--image-size", "16", "--workers", "1",
                       "--out", str(tmp_path / "prepared")]) == 0
  return ["--config.data.source=prepared", f"--config.data.path={tmp_path / 'prepared'}",
          "--config.data.num_classes=-1", "--config.data.random_flip=True"]  # -1: its 2 classes


def test_sigkill_then_restart_is_bit_identical_to_uninterrupted(tmp_path):
  """On prepared data through tf.data (whose position must resume too; the synthetic source's
  resume is covered in-process by test_train.py)."""
  flags = TINY_FLAGS + ["--config.train.num_steps=120", "--config.train.checkpoint_every=20",
                        "--config.train.log_every=20", "--config.train.sample_every=1000"]
  flags += _prepared_flags(tmp_path)
  workdir = tmp_path / "killed"
  # Killed after step 20 (160 of 24 images, inside an epoch), at step 60 at the latest.
  killed_at = _kill_after_checkpoint(workdir, flags, 20, wait_at_step=60)
  assert 20 <= killed_at <= 60  # really mid-run
  done = subprocess.run(_train_cmd(workdir, flags), cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  # Resumed from the kill's checkpoint (a fresh start would end bit-identical too).
  resumed_from = re.search(r"resuming from checkpoint step (\d+) of", done.stderr)
  assert resumed_from and int(resumed_from.group(1)) >= killed_at, done.stderr[-2000:]
  reference = trainer.train_and_evaluate(_default_config_with(flags), str(tmp_path / "reference"))
  _, step, resumed, _ = saved_run.load_checkpoint(str(workdir))
  assert step == 120
  assert json.load(open(workdir / "config.json"))["data"]["num_classes"] == 2  # resolved
  _assert_same_state(resumed, reference)
  # The log has each step once, in order, despite the kill.
  steps = [r["step"] for r in writers.read_metrics(str(workdir))]
  assert steps == list(range(20, 121, 20))


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
  flags = TINY_FLAGS + ["--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
                        "--config.train.log_every=10", "--config.train.sample_every=100000"]
  workdir = tmp_path / "w"
  proc = subprocess.Popen(_train_cmd(workdir, flags), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  while not (workdir / "metrics.jsonl").exists() and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  # Not 0: a job runner must not take the stopped run for a finished one.
  assert proc.returncode == stopping.EXIT_STOPPED, err[-2000:]
  assert "SIGTERM received: stopped after step" in out
  stopped = int(out.split("stopped after step ")[1].split(",")[0])
  listing = sorted(os.listdir(workdir / "checkpoints")) if (workdir / "checkpoints").exists() else None
  assert listing and str(stopped) in listing, (listing, err[-3000:])
  _, step, state, _ = saved_run.load_checkpoint(str(workdir))
  assert step == stopped == int(state.step) and 0 < stopped < 100000


def test_a_stop_with_its_output_gone_still_exits_75(tmp_path):
  """Piped into tee and stopped by Ctrl-C (which ends tee too), or in a dropped ssh session: the
  run's stdout and stderr are gone. Writing the stop message or the progress bar must not turn
  the clean stop into a crash (status 1, and the writers left unclosed)."""
  flags = TINY_FLAGS + ["--config.train.num_steps=100000", "--config.train.checkpoint_every=100000",
                        "--config.train.log_every=10", "--config.train.sample_every=100000"]
  workdir = tmp_path / "w"
  proc = subprocess.Popen(_train_cmd(workdir, flags), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 240
    while not (workdir / "metrics.jsonl").exists():
      assert time.time() < deadline and proc.poll() is None, "the run never logged a row"
      time.sleep(0.05)
    proc.stdout.close()  # the reader is gone: writes now fail with a broken pipe
    proc.stderr.close()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == stopping.EXIT_STOPPED
  finally:
    if proc.poll() is None:  # never left training 100000 steps in the background
      proc.kill()
      proc.wait()
  _, step, state, _ = saved_run.load_checkpoint(str(workdir))
  assert step == int(state.step) > 0


@pytest.mark.parametrize("save_fails", [False, True])
def test_a_signal_during_the_log_row_stops_after_the_next_step_with_its_checkpoint(
    tmp_path, monkeypatch, capsys, save_fails):
  """The stop flag is read once per step: a SIGTERM landing while a log row is written (after
  the step decided it was not the last) stops the run one step later, checkpointed. It used to
  stop at once, with no checkpoint of the step it reported. When that checkpoint cannot be
  written, the stop message says so instead of claiming it was."""
  original = writers.MetricsWriter.write_scalars
  if save_fails:
    def failing_save(self, step, *args, **kwargs):
      raise OSError(28, "No space left on device")
    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)

  def write_then_signal(self, step, values):
    original(self, step, values)
    if step == 2:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(writers.MetricsWriter, "write_scalars", write_then_signal)
  config = tiny_config(**{"train.num_steps": 8, "train.checkpoint_every": 100,
                          "train.sample_every": 100, "train.tensorboard": False})
  state = trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert int(state.step) == 3
  out = capsys.readouterr().out
  if save_fails:
    assert ("SIGTERM received: stopped after step 3, but its checkpoint could not be written "
            "(error above); a rerun resumes from the start (no checkpoint)") in out
    return
  assert "SIGTERM received: stopped after step 3, checkpoint written" in out
  _, step, restored, _ = saved_run.load_checkpoint(str(tmp_path / "w"))
  assert step == 3 == int(restored.step)


def _corrupt(step_dir):
  """Truncates every data file of a checkpoint step to zero bytes."""
  count = 0
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "w"):
        count += 1
  assert count > 0


def test_corrupt_latest_checkpoint_falls_back_to_previous(tmp_path, caplog, monkeypatch):
  config = tiny_config(**{"train.tensorboard": False})
  reference = trainer.train_and_evaluate(config, str(tmp_path / "ref"))
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(config, str(workdir))
  _corrupt(workdir / "checkpoints" / "4")
  # A half-written step left by a crash must be ignored too.
  (workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()
  # Events of an earlier stretch with TensorBoard on are dropped past the resumed step also with
  # it off now (a later resume with it on would draw them as this run's).
  dropped = []
  monkeypatch.setattr(trainer.writers, "drop_events_after",
                      lambda folder, step: dropped.append(step))
  with caplog.at_level(logging.WARNING):
    resumed = trainer.train_and_evaluate(config, str(workdir))
  assert dropped == [2]
  assert any("checkpoints/4 is unreadable" in r.getMessage() for r in caplog.records)
  assert os.listdir(str(workdir / "checkpoints") + ".corrupt")  # moved aside, not deleted
  _assert_same_state(resumed, reference)  # retrained 2 -> 4 exactly as before


def test_old_checkpoints_are_pruned_and_none_readable_stops_the_run(tmp_path, monkeypatch):
  """keep_checkpoints=2 leaves the newest two steps. When every step left is unreadable the run
  stops with CheckpointError, every time: training from scratch would silently throw the run
  away, and so would moving every step aside (the next start would find none)."""
  from jaxgan import checkpoint as ckpt_lib

  config = tiny_config(**{"train.tensorboard": False, "train.checkpoint_every": 1,
                          "train.keep_checkpoints": 2})
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "4"]
  for step in ("3", "4"):
    _corrupt(workdir / "checkpoints" / step)

  class NoRetryDelay(ckpt_lib.Checkpointer):  # the retry of a failed read waits 2 s
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs, retry_delay_s=0.0)

  monkeypatch.setattr(ckpt_lib, "Checkpointer", NoRetryDelay)
  for _ in range(2):
    with pytest.raises(ckpt_lib.CheckpointError,
                       match=r"no readable checkpoint .*tried steps \[3, 4\]"):
      trainer.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "4"]  # left, and no fresh run
  assert not os.path.exists(str(workdir / "checkpoints") + ".corrupt")


def test_steps_a_kill_left_beyond_keep_are_removed_when_the_run_resumes(tmp_path):
  """Orbax deletes an old step only once the next save has completed: a kill in between leaves
  it, and a kill during the deletion half of it, still listed. A rerun that saves nothing (it
  resumes at train.num_steps) kept them for good: they are removed when the run resumes, up to
  the step it resumed from (a newer step it could not read is left for its save to move)."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory, keep=4, async_save=False)
  for step in (1, 2, 3, 4):
    writer.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
  writer.close()
  os.remove(os.path.join(directory, "1", "_CHECKPOINT_METADATA"))  # half deleted
  pruned = ckpt_lib.Checkpointer(directory, keep=2)
  assert pruned.steps() == [1, 2, 3, 4]
  pruned.prune(3)  # resumed from 3 (4 unreadable, say): 2 and 3 kept, 4 left
  assert sorted(os.listdir(directory)) == ["2", "3", "4"] and pruned.steps() == [2, 3, 4]
  pruned.prune(4)
  assert sorted(os.listdir(directory)) == ["3", "4"]
  pruned.close()

  # End to end: a finished run's rerun (nothing left to train) leaves the newest
  # train.keep_checkpoints steps, here fewer than the run kept.
  config = tiny_config(**{"train.tensorboard": False, "train.checkpoint_every": 1,
                          "train.keep_checkpoints": 3})
  workdir = tmp_path / "w"
  trainer.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3", "4"]
  config.train.keep_checkpoints = 1
  trainer.train_and_evaluate(config, str(workdir))
  assert os.listdir(workdir / "checkpoints") == ["4"]


def test_an_accepted_change_of_the_augmentation_starts_p_afresh(tmp_path, caplog):
  """ADA's p is train state: restored, it overrode an accepted change of augment.ada_p_init
  (an ada_fixed run went on at the old p) or of the augmentation (none -> ada_fixed stayed at
  p = 0, never augmenting). A change of neither keeps the restored p."""
  config = tiny_config(**{"train.tensorboard": False, "train.num_steps": 2,
                          "train.checkpoint_every": 2, "augment.name": "ada_fixed",
                          "augment.ada_p_init": 0.2})
  workdir = str(tmp_path / "w")
  assert float(trainer.train_and_evaluate(config, workdir).augment.p) == np.float32(0.2)
  config.train.num_steps, config.augment.ada_p_init = 4, 0.9
  with caplog.at_level(logging.WARNING, logger="jaxgan"):
    state = trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  assert float(state.augment.p) == np.float32(0.9)
  assert ("augment.ada_p_init changed since checkpoint step 2: ADA's p starts again at 0.9 (it "
          "was 0.2)") in caplog.messages
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [(r["step"], round(r["augment_p"], 4)) for r in rows] == [(2, 0.2), (4, 0.9)]
  # none -> ada_fixed: at its ada_p_init, not at none's 0.
  config = tiny_config(**{"train.tensorboard": False, "train.num_steps": 2,
                          "train.checkpoint_every": 2})
  workdir = str(tmp_path / "none")
  trainer.train_and_evaluate(config, workdir)
  config.train.num_steps = 4
  config.augment.name, config.augment.ada_p_init = "ada_fixed", 0.5
  state = trainer.train_and_evaluate(config, workdir, allow_config_change=True)
  assert float(state.augment.p) == np.float32(0.5)
  # Only another step count: the restored p goes on.
  config.train.num_steps = 6
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jaxgan"):
    assert float(trainer.train_and_evaluate(config, workdir).augment.p) == np.float32(0.5)
  assert not [m for m in caplog.messages if "ADA's p" in m]
  # ada_fixed -> none: p 0, said; none -> diffaugment: p is 0 before and after, not said.
  for name, said in (("none", True), ("diffaugment", False)):
    config.train.num_steps += 2
    config.augment.name = name
    config.augment.ada_p_init = 0.0  # the default: read by ada_fixed only
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgan"):
      state = trainer.train_and_evaluate(config, workdir, allow_config_change=True)
    assert float(state.augment.p) == 0.0
    assert bool([m for m in caplog.messages if "ADA's p" in m]) == said


def test_a_failure_of_every_step_moves_none_aside(tmp_path):
  """A restore that fails for a reason common to every step (device memory after a mesh
  change, say) is not damage: the steps stay where they are for the rerun that fixes it."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)

  def out_of_memory(step, *args):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

  reader.restore = out_of_memory
  for _ in range(2):
    with pytest.raises(ckpt_lib.CheckpointError, match=r"tried steps \[1, 2\]"):
      reader.restore_latest(target, lambda step, meta: True)  # the run's own config
  reader.close()
  assert sorted(os.listdir(directory)) == ["1", "2"] and not os.path.exists(directory + ".corrupt")
  fixed = ckpt_lib.Checkpointer(directory)  # the cause mended: the run resumes where it was
  step, state, _ = fixed.restore_latest(target)
  fixed.close()
  assert step == 2 and float(state["w"][0]) == 2.0


def _two_step_checkpoints(directory):
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  for step in (1, 2):
    writer.save(step, {"w": jnp.full(3, float(step))}, {"step": step})
  writer.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
  return ckpt_lib.abstract_like(abstract, jax.tree_util.tree_map(lambda _: device, abstract))


def flip_a_bit(directory, step):
  """Flips one bit mid-file in the largest array file of checkpoint `step` under `directory`
  (orbax's compressed files carry no checksum: it decodes to other values without an error)."""
  data = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(directory, str(step)))
          for name in names if f"{os.sep}d{os.sep}" in os.path.join(root, name)]
  largest = max(data, key=os.path.getsize)
  content = bytearray(open(largest, "rb").read())
  content[len(content) // 2] ^= 0x10
  with open(largest, "wb") as f:
    f.write(content)


def test_a_flipped_bit_in_a_checkpoints_data_is_damage_not_a_silent_resume(tmp_path, caplog):
  """Orbax's compressed array files carry no checksum: one flipped bit (a failing disk, a bad
  copy) decodes to other values without an error. The digests in the meta find it, so the
  resume falls back to the step before and moves the damaged one aside."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  # Random values: zstd stores them nearly as they are, so a flip mid-file hits array bytes.
  values = {step: np.random.default_rng(step).standard_normal(4096).astype(np.float32)
            for step in (1, 2)}
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  for step in (1, 2):
    writer.save(step, {"w": jnp.asarray(values[step]), "b": jnp.zeros(2)}, {"step": step})
  writer.close()
  flip_a_bit(directory, 2)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"w": jax.ShapeDtypeStruct((4096,), jnp.float32, sharding=device),
            "b": jax.ShapeDtypeStruct((2,), jnp.float32, sharding=device)}
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  with caplog.at_level(logging.WARNING):
    step, state, _ = reader.restore_latest(target, lambda step, meta: True)
  reader.close()
  assert step == 1 and np.array_equal(np.asarray(state["w"]), values[1])
  assert ("checkpoints/2 is unreadable (CheckpointError: checkpoint step 2 in "
          f"{directory} is damaged: 1 of 2 arrays read back other values than were written "
          "(e.g. w))") in caplog.text
  assert os.listdir(directory + ".corrupt")  # moved aside, not deleted


def test_a_partial_read_returns_its_parts_and_checks_only_their_digests_and_layouts(tmp_path):
  """generate and evaluate read G's EMA weights, not D's or the optimizers': the parts asked for
  come back bit-identical (an empty one as it is), damage to them is found, and D's damage or
  another D layout does not stop a sampler."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib, checkpoint_checks

  directory = str(tmp_path / "checkpoints")
  values = {name: np.random.default_rng(i).standard_normal(64).astype(np.float32)
            for i, name in enumerate("gd")}
  state = {"g": {"w": jnp.asarray(values["g"])}, "d": {"w": jnp.asarray(values["d"])},
           "stats": {}}
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  writer.save(1, state, {"step": 1})
  writer.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = lambda d_size: {
      "g": {"w": jax.ShapeDtypeStruct((64,), jnp.float32, sharding=device)},
      "d": {"w": jax.ShapeDtypeStruct((d_size,), jnp.float32, sharding=device)}, "stats": {}}

  def read(parts, d_size=64):
    reader = ckpt_lib.Checkpointer(directory, read_only=True, retry_delay_s=0.0)
    try:
      return reader.restore(1, abstract(d_size), parts)
    finally:
      reader.close()

  restored, meta = read(("g", "stats"), d_size=32)  # D of another layout: not read, no matter
  assert set(restored) == {"g", "stats"} and restored["stats"] == {}
  assert np.array_equal(np.asarray(restored["g"]["w"]), values["g"]) and meta["step"] == 1
  with pytest.raises(ckpt_lib.LayoutError, match=r"1 shapes differ, e.g. d/w \(64,\) saved"):
    read(("d",), d_size=32)
  meta_file = os.path.join(directory, "1", "meta", "metadata")
  saved = json.load(open(meta_file))
  for damaged, fails in (("d/w", False), ("g/w", True)):
    digests = dict(saved[ckpt_lib.DIGEST_KEY])
    digests[damaged] += 1
    edited = {**saved, ckpt_lib.DIGEST_KEY: digests}
    # The meta's own digest made again: the arrays' digests are what this checks.
    edited[ckpt_lib.META_DIGEST_KEY] = checkpoint_checks.meta_digest(edited)
    with open(meta_file, "w") as f:
      json.dump(edited, f)
    if fails:
      with pytest.raises(ckpt_lib.CheckpointError, match=r"damaged: 1 of 1 arrays .*\(e.g. g/w\)"):
        read(("g",))
    else:
      assert np.array_equal(np.asarray(read(("g",))[0]["g"]["w"]), values["g"])


def test_a_step_written_before_the_digests_restores_unchecked(tmp_path):
  """Checkpoints of runs started before the meta held digests resume as they did."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  meta_file = os.path.join(directory, "2", "meta", "metadata")
  meta = json.load(open(meta_file))
  assert set(meta.pop(ckpt_lib.DIGEST_KEY)) == {"w"}
  assert len(meta.pop(ckpt_lib.META_DIGEST_KEY)) == 16
  with open(meta_file, "w") as f:
    json.dump(meta, f)
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  step, state, restored_meta = reader.restore_latest(target)
  reader.close()
  assert step == 2 and float(state["w"][0]) == 2.0 and restored_meta == {"step": 2}


def test_an_unreadable_step_is_reported_with_the_storage_error(tmp_path, caplog):
  """Orbax wraps tensorstore's error ('OUT_OF_RANGE: ... not valid for value of size', for a
  truncated file) in its own ('Encountered error while reading array index: ...'), whose words
  tell damage from a permission problem no more than the tracebacks now dropped did: the lines
  name the innermost error."""
  import logging

  from jaxgan import checkpoint as ckpt_lib

  import jax.numpy as jnp

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  for step in (1, 2):  # random values: a file large enough not to be held inline
    writer.save(step, {"w": jax.random.normal(jax.random.PRNGKey(step), (20000,))}, {})
  writer.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = ckpt_lib.abstract_like({"w": jax.ShapeDtypeStruct((20000,), jnp.float32)},
                                  {"w": device})
  data = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(directory, "2"))
          for name in names if f"{os.sep}d{os.sep}" in os.path.join(root, name)]
  largest = max(data, key=os.path.getsize)
  os.truncate(largest, os.path.getsize(largest) // 2)
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  with caplog.at_level(logging.WARNING, logger="jaxgan"):
    step, _, _ = reader.restore_latest(target)
  reader.close()
  assert step == 1
  said = [m for m in caplog.messages if "unreadable (" in m or "failed (" in m]
  assert len(said) == 2 and all(re.search(r"\((ValueError: )?[A-Z_]{5,}: ", m) for m in said), said


def test_a_damaged_meta_that_still_parses_falls_back_to_the_step_before(tmp_path):
  """One flipped digit in the newest step's meta (valid JSON still: a random bit flip leaves
  one in ~16 %) read as a config change, which refused the resume ('pass
  --allow_config_change') though the step before was sound. Its own digest tells it apart."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  meta_file = os.path.join(directory, "2", "meta", "metadata")
  text = open(meta_file).read()
  assert '"step": 2' in text
  with open(meta_file, "w") as f:
    f.write(text.replace('"step": 2', '"step": 3'))
  reader = ckpt_lib.Checkpointer(directory, read_only=True, retry_delay_s=0.0)
  # Read with its state alone (evaluate --checkpoint STEP reads no meta first): the same.
  with pytest.raises(ckpt_lib.CheckpointError, match="damaged: its meta reads back other values"):
    reader.restore(2, target)
  reader.close()
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  step, state, _ = reader.restore_latest(target)
  reader.close()
  assert step == 1 and float(state["w"][0]) == 1.0
  assert [n.split("-")[0] for n in os.listdir(tmp_path / "checkpoints.corrupt")] == ["2"]


@pytest.mark.parametrize("which", ["restore", "restore_meta"])
def test_a_transient_read_failure_is_retried_not_taken_for_damage(tmp_path, caplog, which):
  """A storage hiccup on the newest step's first read of its state or of its meta (network file
  systems have them) must not move that step aside and resume from an older one."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  original, failures = getattr(reader, which), []

  def flaky(step, *args):
    if not failures:
      failures.append(step)
      raise OSError(5, "Input/output error")
    return original(step, *args)

  setattr(reader, which, flaky)
  with caplog.at_level(logging.WARNING):
    step, state, _ = reader.restore_latest(target)
  reader.close()
  assert failures == [2] and step == 2 and float(state["w"][0]) == 2.0
  assert "trying again" in caplog.text and not os.path.exists(directory + ".corrupt")


def test_a_step_without_tree_metadata_is_damage_not_another_layout(tmp_path):
  """A lost state/_METADATA file reads as no keys at all: that is damage (fall back to the
  previous step), not a train state of another version (which stops the resume)."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  os.remove(os.path.join(directory, "2", "state", "_METADATA"))
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  step, state, _ = reader.restore_latest(target)
  reader.close()
  assert step == 1 and float(state["w"][0]) == 1.0


def test_a_step_gone_from_view_is_skipped_not_taken_for_damage(tmp_path, caplog):
  """A listed step whose directory is not there when read (another process's, or the file
  system's, lagging view) is skipped without being read or moved aside."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  os.rename(os.path.join(directory, "2"), str(tmp_path / "elsewhere"))
  reader.steps = lambda: [1, 2]  # the manager's listing, taken before the directory went away
  with caplog.at_level(logging.WARNING):
    step, state, _ = reader.restore_latest(target)
  reader.close()
  assert step == 1 and float(state["w"][0]) == 1.0
  # One process: it is gone (with several, some may not see it yet).
  assert "checkpoints/2 is gone since it was listed" in caplog.text
  assert not os.path.exists(directory + ".corrupt")


def test_allowed_and_forced_config_changes(tmp_path, caplog, capsys):
  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(tiny_config(**{"train.tensorboard": False, "train.num_steps": 2}), workdir)
  with caplog.at_level(logging.INFO):
    state = trainer.train_and_evaluate(
        tiny_config(**{"train.tensorboard": False, "train.log_every": 1}), workdir)
  assert int(state.step) == 4
  assert any("(allowed): train.log_every: 2 -> 1; train.num_steps: 2 -> 4" in r.getMessage()
             for r in caplog.records)
  with pytest.raises(trainer.TrainingError, match=r"train.batch_size: 8 -> 16\); pass "
                     r"--allow_config_change to continue anyway$"):
    trainer.train_and_evaluate(tiny_config(**{"train.batch_size": 16, "train.num_steps": 6}), workdir)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(
        tiny_config(**{"train.tensorboard": False, "optim.d_lr": 1e-4, "train.num_steps": 6}),
        workdir, allow_config_change=True)
  assert int(state.step) == 6
  assert ("config changes since checkpoint step 4, accepted by --allow_config_change: "
          "optim.d_lr: 0.0002 -> 0.0001") in caplog.text
  # Run again (or with a smaller num_steps): said, not a silent no-op (and no progress bar).
  caplog.clear()
  capsys.readouterr()
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(
        tiny_config(**{"train.tensorboard": False, "optim.d_lr": 1e-4, "train.num_steps": 4}),
        workdir)
  assert int(state.step) == 6
  assert (f"checkpoint step 6 of {workdir} is past train.num_steps=4: nothing to train "
          "(raise --config.train.num_steps to train on)") in caplog.text
  err = capsys.readouterr().err
  assert "train:" not in err and "train (compiling)" not in err, err


@pytest.mark.patches_traced_code
def test_consecutive_nonfinite_steps_stop_the_run(tmp_path, monkeypatch):
  # A loss that is always NaN, registered for this test only (the registry is process-wide).
  nan = lambda *logits: logits[0].mean() * np.nan
  monkeypatch.setitem(losses.LOSSES._entries, "always_nan_for_tests",
                      losses.Loss(d_loss=nan, g_loss=nan))
  config = tiny_config(**{"loss.name": "always_nan_for_tests", "train.max_nonfinite_steps": 3,
                          "train.num_steps": 50, "train.log_every": 10, "train.tensorboard": False})
  # Checked at log rows and before checkpoints (every 2 steps), not every call: the streak of
  # 4 at step 4 stops the run before its checkpoint is written.
  with pytest.raises(trainer.TrainingError,
                     match=r"4 consecutive non-finite steps by step 4 .*a rerun resumes from "
                           r"step 2"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  _, _, state, _ = saved_run.load_checkpoint(str(tmp_path / "w"))
  fresh = jax.jit(run_lib.build_run(config).init)()
  _assert_same_state(state.g_params, fresh.g_params)  # no update ever applied


def test_the_loop_waits_for_the_device_only_at_rows_checkpoints_and_grids(tmp_path, monkeypatch):
  """Reading a value back each call would keep the host at most one call ahead of the device."""
  from jaxgan import sharding

  reads, original = [], sharding.to_host
  monkeypatch.setattr(sharding, "to_host", lambda tree: reads.append(1) or original(tree))
  config = tiny_config(**{"train.num_steps": 8, "train.log_every": 4, "train.checkpoint_every": 4,
                          "train.sample_every": 8, "train.tensorboard": False})
  waits, block = [], jax.block_until_ready
  monkeypatch.setattr(jax, "block_until_ready", lambda tree: waits.append(1) or block(tree))
  trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert len(reads) == 2 * 2 + 1  # per row: its metrics and the skip streak; one grid
  # Bounded lookahead instead: a wait once the first call is done (timing starts), then one
  # for each call beyond MAX_STEPS_AHEAD (one step per call; the queued batches sit on the
  # device), and one at each of the 2 log rows (which fetch the step's metrics anyway).
  assert len(waits) == 1 + 8 - trainer.MAX_STEPS_AHEAD + 2


def test_failed_checkpoint_write_keeps_previous_valid(tmp_path, monkeypatch, caplog):
  original, failing = ocp.CheckpointManager.save, {4, 6}

  def failing_save(self, step, *args, **kwargs):
    if step in failing:
      raise OSError(28, "No space left on device")
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  workdir = str(tmp_path / "w")
  config = tiny_config(**{"train.tensorboard": False, "train.num_steps": 6})
  # A failed write costs its checkpoint, not the run; but a run whose last checkpoint could not
  # be written does not end as if it were complete (a rerun resumes and writes it).
  with caplog.at_level(logging.ERROR), pytest.raises(
      trainer.TrainingError, match=r"trained to step 6, but its checkpoint could not be written "
                                   r".*a rerun resumes from step 2"):
    trainer.train_and_evaluate(config, workdir)
  assert any("writing step 4" in r.getMessage() and "No space left" in r.getMessage()
             and "previous checkpoint (step 2) is still valid" in r.getMessage()
             for r in caplog.records)
  _, step, restored, _ = saved_run.load_checkpoint(workdir)
  assert step == 2 and int(restored.step) == 2
  failing.clear()  # space freed: the rerun trains 2 -> 6 and writes the checkpoints
  assert int(trainer.train_and_evaluate(config, workdir).step) == 6
  assert saved_run.load_checkpoint(workdir)[1] == 6


def test_a_failed_background_write_does_not_cost_the_next_checkpoint(tmp_path, monkeypatch,
                                                                    caplog):
  """orbax raises a background write's error once, when its thread is joined (inside the next
  save): that save must still write its step. The failure is injected where orbax writes array
  data (a private orbax function: if it moves, point the patch at its new home)."""
  import threading

  import jax.numpy as jnp
  from orbax.checkpoint._src.serialization import jax_array_handlers as handlers

  from jaxgan import checkpoint as ckpt_lib

  original, failing_now, failed = handlers._async_serialize_replica_slices, [False], threading.Event()

  async def maybe_fail(*args, **kwargs):
    if failing_now[0]:
      failed.set()
      raise OSError(28, "No space left on device")
    return await original(*args, **kwargs)

  monkeypatch.setattr(handlers, "_async_serialize_replica_slices", maybe_fail)
  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory, keep=5)  # asynchronous, as in training
  state = {"w": jnp.arange(4.0)}
  assert writer.save(1, state, {"step": 1}) and writer.wait()
  failing_now[0] = True
  writer.save(2, state, {"step": 2})  # fails in the background
  assert failed.wait(60)
  failing_now[0] = False
  with caplog.at_level(logging.ERROR):
    assert writer.save(3, state, {"step": 3})
    assert writer.wait()
  # The failed background write is counted once its outcome is known; 3 completed.
  assert (writer.completed, writer.failures_in_a_row) == (2, 0)
  writer.close()
  assert "No space left" in caplog.text
  assert ckpt_lib.Checkpointer(directory, read_only=True).steps() == [1, 3]
  # Orbax's own error records say it in a line each, without their tracebacks (hundreds of lines
  # a checkpoint on a full disk); one filter however many writers.
  orbax_errors = [r for r in caplog.records if f"{os.sep}orbax{os.sep}" in r.pathname]
  assert len(orbax_errors) >= 2 and "Traceback" not in caplog.text
  from jaxgan import orbax_output

  assert sum(isinstance(f, orbax_output._OrbaxErrorsInOneLine)
             for f in logging.getLogger("absl").filters) == 1


def test_after_a_failed_background_write_the_kept_steps_are_those_on_disk(tmp_path, monkeypatch):
  """Orbax drops the oldest kept step from its list as a save starts: after the save failed,
  the writer said 'no checkpoint' with one valid on disk (keep=1), and never pruned it."""
  import glob

  import jax.numpy as jnp
  from orbax.checkpoint._src.serialization import jax_array_handlers as handlers

  from jaxgan import checkpoint as ckpt_lib

  original, failing = handlers._async_serialize_replica_slices, {3}
  writing = [0]

  async def maybe_fail(*args, **kwargs):
    if writing[0] in failing:
      raise OSError(28, "No space left on device")
    return await original(*args, **kwargs)

  monkeypatch.setattr(handlers, "_async_serialize_replica_slices", maybe_fail)
  directory = str(tmp_path / "checkpoints")
  for keep in (1, 2):
    shutil.rmtree(directory, ignore_errors=True)
    writer = ckpt_lib.Checkpointer(directory, keep=keep)
    for step in (1, 2, 3):
      writing[0] = step
      writer.save(step, {"w": jnp.arange(4.0) + step}, {"step": step})
      assert writer.wait() == (step != 3)
    kept = [1, 2][-keep:]
    assert writer.steps() == kept and writer.latest_step() == 2
    assert glob.glob(os.path.join(directory, "*tmp*")) == []  # the failed write's space freed
    for step in (4, 5):  # written again: the list is pruned as usual
      writing[0] = step
      assert writer.save(step, {"w": jnp.arange(4.0)}, {"step": step}) and writer.wait()
    writer.close()
    assert sorted(os.listdir(directory)) == [str(s) for s in [4, 5][-keep:]]


def test_a_failed_write_is_reported_when_reading_the_list_again_fails_too(tmp_path, monkeypatch,
                                                                         caplog):
  """The storage that failed the write may fail the re-listing as well: the write's failure is
  still what is logged and counted, and nothing raises out of save() or wait()."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  writer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
  assert writer.save(1, {"w": jnp.zeros(2)}, {"step": 1}) and writer.wait()

  def fails(*args, **kwargs):
    raise OSError(5, "Input/output error")

  monkeypatch.setattr(ocp.CheckpointManager, "save", fails)
  monkeypatch.setattr(writer._manager, "reload", fails)
  with caplog.at_level(logging.WARNING):
    assert not writer.save(2, {"w": jnp.zeros(2)}, {"step": 2})
  assert writer.failures_in_a_row == 1 and writer.latest_step() == 1
  assert "writing step 2" in caplog.text and "re-reading the checkpoints" in caplog.text
  monkeypatch.undo()
  writer.close()


def test_a_failed_background_write_is_counted(tmp_path, monkeypatch):
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  writer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  state = {"w": jnp.arange(4.0)}
  assert writer.save(1, state, {"step": 1}) and writer.wait()
  assert (writer.completed, writer.failures_in_a_row) == (1, 0)

  def fails(self):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(ocp.CheckpointManager, "check_for_errors", fails)
  assert writer.save(2, state, {"step": 2})  # started; its failure is known when waited for
  assert not writer.wait() and (writer.completed, writer.failures_in_a_row) == (1, 1)
  assert not writer.wait() and writer.failures_in_a_row == 1  # counted once
  assert writer.save(3, state, {"step": 3}) and not writer.wait()
  assert (writer.completed, writer.failures_in_a_row) == (1, 2)  # in a row: they add up
  monkeypatch.undo()
  assert writer.save(4, state, {"step": 4}) and writer.wait()
  assert (writer.completed, writer.failures_in_a_row) == (2, 0)
  writer.move_aside(9)  # a step gone already: nothing to move, no error
  assert not os.path.exists(str(tmp_path / "checkpoints.corrupt" / "9"))
  writer.close()


FAILED_FOLDER = r"""
import sys
import jax.numpy as jnp
from orbax.checkpoint._src.path import atomicity
from jaxgan import checkpoint

writer = checkpoint.Checkpointer(sys.argv[1])
assert writer.save(1, {"w": jnp.ones(3)}, {"step": 1}) and writer.wait()

async def fails(self, *args, **kwargs):
  raise OSError(30, "Read-only file system")

atomicity.AtomicRenameTemporaryPath.create = fails
print(writer.save(2, {"w": jnp.ones(3)}, {"step": 2}), writer.failures_in_a_row, flush=True)
"""


def test_a_step_folder_that_cannot_be_made_fails_the_save_and_the_process_exits(tmp_path):
  """A read-only or full checkpoints/: made in orbax's background, the step's folder failed
  there, and the process then waited 300 s at its exit for orbax's threads (a stopped run's
  status 75 came after a scheduler's grace period). Made in save(): its failure is save's, and
  the process ends at once."""
  proc = subprocess.run([sys.executable, "-c", FAILED_FOLDER, str(tmp_path / "checkpoints")],
                        capture_output=True, text=True, timeout=120, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split() == ["False", "1"]
  assert "writing step 2 to" in proc.stderr and "Read-only file system" in proc.stderr


@pytest.mark.parametrize("read_only, accept", [(False, None), (False, False), (True, True)])
def test_damage_is_moved_aside_only_by_a_writer_whose_config_matches(tmp_path, read_only, accept):
  """A step whose state fails to read is skipped; it is moved aside only where that can only be
  damage: a reader that is not read-only, with accept_meta saying the config is the run's.
  Without accept_meta, with another config, or read-only, it stays where it is."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  values = {step: np.random.default_rng(step).standard_normal(4096).astype(np.float32)
            for step in (1, 2)}
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  for step in (1, 2):
    writer.save(step, {"w": jnp.asarray(values[step])}, {"step": step})
  writer.close()
  flip_a_bit(directory, 2)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"w": jax.ShapeDtypeStruct((4096,), jnp.float32, sharding=device)}
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0, read_only=read_only)
  step, state, _ = reader.restore_latest(
      target, None if accept is None else lambda step, meta: accept)
  reader.close()
  assert step == 1 and np.array_equal(np.asarray(state["w"]), values[1])
  assert sorted(os.listdir(directory)) == ["1", "2"] and not os.path.exists(directory + ".corrupt")


@pytest.mark.parametrize("damaged", ['{"config": 5}', '[1, 2]', '{"step": "7"}',
                                     '{"state_digest": true}'])
def test_a_meta_that_parses_but_is_not_the_trainers_is_damage(tmp_path, damaged):
  """A damaged meta that still parses as JSON but is not an object of the trainer's keys (here
  without the meta's own digest, as a step written before it was kept) gave a traceback from
  the config check ('int' object has no attribute 'items'). Its shape is checked as it is read:
  the step is skipped for the one before, and moved aside."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib, checkpoint_checks

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  for step in (1, 2):
    writer.save(step, {"w": jnp.full(3, float(step))}, {"step": step, "config": {"seed": 0}})
  writer.close()
  with open(os.path.join(directory, "2", "meta", "metadata"), "w") as f:
    f.write(damaged)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32, sharding=device)}
  reader = ckpt_lib.Checkpointer(directory, retry_delay_s=0.0)
  step, state, meta = reader.restore_latest(target, lambda step, meta: bool(meta["config"].items()))
  reader.close()
  assert step == 1 and np.asarray(state["w"]).tolist() == [1.0] * 3 and meta["step"] == 1
  aside, = os.listdir(directory + ".corrupt")
  assert aside.startswith("2-")
  with pytest.raises(ckpt_lib.CheckpointError, match=r"^checkpoint step 2 in d is damaged: its "
                     r"meta('s '\w+' is (an?|null) \w*| is an array, not an object)$"):
    checkpoint_checks.check_meta(2, "d", json.loads(damaged))


def test_a_step_folder_orbax_does_not_list_is_moved_aside_before_the_step_is_written(tmp_path):
  """A folder named like the step that orbax does not take for a checkpoint (an empty one left
  by a copy, say) would make orbax refuse the write: it is moved to .replaced/ first."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  os.makedirs(os.path.join(directory, "2", "junk"))
  assert 2 not in writer.steps()
  assert writer.save(2, {"w": jnp.full(3, 2.0)}, {"step": 2})
  writer.close()
  assert writer.steps() == [2] and writer.failures_in_a_row == 0
  aside, = os.listdir(directory + ".replaced")
  assert os.listdir(os.path.join(directory + ".replaced", aside)) == ["junk"]


def test_step_folders_are_decimal_names_holding_the_item(tmp_path):

  for name in ("3", "12", "²", "4.orbax-checkpoint-tmp-1", "x"):
    os.makedirs(tmp_path / name)
  os.makedirs(tmp_path / "12" / "state")
  assert run_folders.step_folders(str(tmp_path)) == [3, 12]  # '²' is a digit int() refuses
  assert run_folders.step_folders(str(tmp_path), item="state") == [12]
  assert run_folders.step_folders(str(tmp_path / "missing")) == []


def test_layout_differences_name_each_kind_and_skip_what_metadata_does_not_say():
  from jaxgan import checkpoint_checks

  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)
  target = {"g": {"w": f32(2, 3), "b": f32(3)}, "d": {"w": f32(4)}}
  assert checkpoint_checks.layout_difference(target, target) is None
  saved = {"g": {"w": f32(2, 4), "b": f32(3), "old": f32(1)}, "d": {"w": "no shape or dtype"}}
  assert checkpoint_checks.layout_difference(saved, target) == (
      "1 keys not in this version, e.g. g/old; 1 shapes differ, e.g. g/w (2, 4) saved, (2, 3) now")
  assert checkpoint_checks.layout_difference({"g": {"w": f32(2, 3)}}, target) == (
      "2 keys missing, e.g. d/w")


@pytest.mark.parametrize("first_ok,background", [(True, False), (False, False), (False, True)])
def test_checkpoints_that_keep_failing_stop_the_run(tmp_path, monkeypatch, first_ok, background):
  """A run does not train on for days with nothing to resume from: it stops at its first
  checkpoint if that one fails, else after MAX_FAILED_CHECKPOINTS failures in a row. A write
  that fails in the background (storage that refuses the path: a gs:// workdir made a local
  folder did) is known at the next save, whose step orbax lists while it is written: the run
  then stops one checkpoint later, and still says that a rerun starts over."""
  from orbax.checkpoint._src.serialization import jax_array_handlers as handlers

  original = ocp.CheckpointManager.save

  def failing_save(self, step, *args, **kwargs):
    if step == 2 and first_ok:
      return original(self, step, *args, **kwargs)
    raise OSError(28, "No space left on device")

  async def failing_write(*args, **kwargs):  # orbax's array writes (a private function)
    raise OSError(28, "No space left on device")

  if background:
    monkeypatch.setattr(handlers, "_async_serialize_replica_slices", failing_write)
  else:
    monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)
  workdir = str(tmp_path / "w")
  config = tiny_config(**{"train.tensorboard": False, "train.num_steps": 40,
                          "train.sample_every": 100})
  resume = "step 2" if first_ok else r"the start \(no checkpoint\)"
  with pytest.raises(trainer.TrainingError, match=f"checkpoint writes to .* keep failing .* "
                                                  f"resumes from {resume}"):
    trainer.train_and_evaluate(config, workdir)
  stopped_at = 2 + 2 * run_health.MAX_FAILED_CHECKPOINTS if first_ok else 2 + 2 * background
  assert writers.read_metrics(workdir)[-1]["step"] == stopped_at


def test_a_first_write_that_failed_in_the_background_is_forgiven_once_the_next_completes(
    tmp_path, monkeypatch):
  """The background failure of the first write is known at the second save; the run waits for
  that write before it stops: written, the storage works, and the run goes on."""
  from orbax.checkpoint._src.serialization import jax_array_handlers as handlers

  original_save, original_write = ocp.CheckpointManager.save, \
      handlers._async_serialize_replica_slices
  failing = [False]

  def save(self, step, *args, **kwargs):  # after the previous write was waited for
    failing[0] = step == 2
    return original_save(self, step, *args, **kwargs)

  async def write(*args, **kwargs):  # orbax's array writes (a private function)
    if failing[0]:
      raise OSError(28, "No space left on device")
    return await original_write(*args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  monkeypatch.setattr(handlers, "_async_serialize_replica_slices", write)
  workdir = str(tmp_path / "w")
  config = tiny_config(**{"train.tensorboard": False, "train.num_steps": 6,
                          "train.sample_every": 100})
  assert int(trainer.train_and_evaluate(config, workdir).step) == 6
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]


def test_a_step_left_by_an_earlier_attempt_is_moved_aside_and_written(tmp_path, monkeypatch):
  """A resume from before a step that exists (skipped as unreadable, or a best FID evaluated
  again) writes that step anew; orbax alone refuses a step it lists. Moved twice within a
  second, the second copy is kept beside the first, not moved into it."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory)
  monkeypatch.setattr(ckpt_lib.time, "time", lambda: 1_700_000_000.5)  # one second throughout
  for value in (0.0, 1.0, 2.0):
    assert writer.save(4, {"w": jnp.full(3, value)}, {"step": 4}) and writer.wait()
  writer.close()
  reader = ckpt_lib.Checkpointer(directory, read_only=True)
  restored, _ = reader.restore(4, {"w": jnp.zeros(3)})
  np.testing.assert_array_equal(restored["w"], np.full(3, 2.0))
  replaced = directory + ".replaced"
  assert sorted(os.listdir(replaced)) == ["4-1700000000", "4-1700000000.1"]
  for name, value in zip(sorted(os.listdir(replaced)), (0.0, 1.0)):  # each a whole step
    os.rename(os.path.join(replaced, name), os.path.join(replaced, "7"))
    aside = ckpt_lib.Checkpointer(replaced, read_only=True)
    np.testing.assert_array_equal(aside.restore(7, {"w": jnp.zeros(3)})[0]["w"], np.full(3, value))
    os.rename(os.path.join(replaced, "7"), os.path.join(replaced, name))


def test_a_step_still_listed_after_its_move_is_not_written(tmp_path, caplog):
  """A host whose view of a shared file system lags still lists the step it moved aside: orbax
  would refuse it there alone, in its barriers; the write fails on every process instead."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory)
  assert writer.save(4, {"w": jnp.zeros(3)}, {"step": 4}) and writer.wait()
  writer._manager.all_steps = lambda *args: [4]  # the stale listing
  with caplog.at_level(logging.ERROR):
    assert not writer.save(4, {"w": jnp.ones(3)}, {"step": 4})
  writer.close()
  assert "is still listed on some process after it was moved aside" in caplog.text
  assert not os.path.exists(os.path.join(directory, "4"))
  assert [name.split("-")[0] for name in os.listdir(directory + ".replaced")] == ["4"]


def test_the_tree_metadata_is_read_agreed_before_the_collective_restore(tmp_path, monkeypatch):
  """A process failing to read the metadata alone must not leave the others in the restore's
  barrier: the read is agreed first."""
  from jaxgan import checkpoint as ckpt_lib
  from jaxgan import multihost

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  reader = ckpt_lib.Checkpointer(directory, read_only=True)
  events, agreed = [], multihost.agreed
  monkeypatch.setattr(multihost, "agreed", lambda work, what: (
      events.append("agreed"), agreed(work, what), events.append("agreed done"))[1])
  for name in ("item_metadata", "restore"):
    original = getattr(reader._manager, name)
    monkeypatch.setattr(reader._manager, name, lambda *a, _o=original, _n=name, **k: (
        events.append(_n), _o(*a, **k))[1])
  reader.restore(2, target)
  reader.close()
  assert events == ["agreed", "item_metadata", "agreed done", "restore"]


def test_a_workdir_that_cannot_rename_folders_is_refused_up_front(tmp_path, monkeypatch):
  real_rename = os.rename

  def no_folder_renames(src, dst):
    if os.path.isdir(src):
      raise OSError(errno.EXDEV, "Invalid cross-device link")
    return real_rename(src, dst)

  monkeypatch.setattr(os, "rename", no_folder_renames)
  with pytest.raises(workdir_lib.WorkdirError, match="cannot rename folders .* checkpoints need"):
    workdir_lib.prepare_workdir(str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # the probe removed, and the folder it made for it
  (tmp_path / "w").mkdir()  # one there before: it stays, without the probe
  with pytest.raises(workdir_lib.WorkdirError, match="cannot rename folders .* checkpoints need"):
    workdir_lib.prepare_workdir(str(tmp_path / "w"))
  assert os.listdir(tmp_path / "w") == []


def test_prepare_workdir_says_whether_it_made_the_folder_and_leaves_no_probe(tmp_path,
                                                                             monkeypatch):
  workdir = tmp_path / "w"
  assert workdir_lib.prepare_workdir(str(workdir)) == [str(workdir)]
  assert os.listdir(workdir) == []
  assert workdir_lib.prepare_workdir(str(workdir)) == []  # there already: not ours to remove
  assert os.listdir(workdir) == []
  # The folders above it that it made are named too (outermost first); and a workdir refused
  # after they were made leaves none of them behind.
  deep = tmp_path / "a" / "b" / "w"
  assert workdir_lib.prepare_workdir(str(deep)) == [
      str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(deep)]
  os.removedirs(deep)
  def no_rename(*args):
    raise OSError(errno.EXDEV, "Invalid cross-device link")

  with monkeypatch.context() as patch:
    patch.setattr(os, "rename", no_rename)
    with pytest.raises(workdir_lib.WorkdirError, match=r"cannot rename folders \(Invalid cross"):
      workdir_lib.prepare_workdir(str(deep))
  assert not (tmp_path / "a").exists()
  (tmp_path / "f").write_text("")
  with pytest.raises(workdir_lib.WorkdirError, match=r"^workdir .*f is a file, not a folder; "):
    workdir_lib.prepare_workdir(str(tmp_path / "f"))
  # A run's folders there already (a resume's) are probed too: a read-only checkpoints/ showed
  # at the first checkpoint, after checkpoint_every steps of training.
  import builtins

  os.makedirs(workdir / "checkpoints")
  real_open = builtins.open

  def read_only_checkpoints(path, *args, **kwargs):
    if os.path.dirname(str(path)) == str(workdir / "checkpoints"):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(builtins, "open", read_only_checkpoints)
  with pytest.raises(workdir_lib.WorkdirError, match=r"^workdir .*w: its checkpoints/ is not "
                     r"writable \(Read-only file system\); make it writable \(or free space "
                     r"there\), or pass another "):
    workdir_lib.prepare_workdir(str(workdir))
  monkeypatch.undo()
  assert workdir_lib.prepare_workdir(str(workdir)) == [] and os.listdir(workdir) == [
      "checkpoints"] and os.listdir(workdir / "checkpoints") == []
  (workdir / "samples").write_text("")
  with pytest.raises(workdir_lib.WorkdirError, match=r"^workdir .*w: its samples is a file, where "
                     "the run writes a folder; move it away$"):
    workdir_lib.prepare_workdir(str(workdir))
  os.remove(workdir / "samples")
  # And the other way round: metrics.jsonl as a folder failed the start with a traceback, and
  # log.txt as one kept the run from logging, silently.
  for name in ("metrics.jsonl", "log.txt"):
    os.mkdir(workdir / name)
    with pytest.raises(workdir_lib.WorkdirError, match=rf"^workdir .*w: its {name} is a folder, "
                       "where the run writes a file; move it away$"):
      workdir_lib.prepare_workdir(str(workdir))
    os.rmdir(workdir / name)
  assert workdir_lib.prepare_workdir(str(workdir)) == []


def test_a_run_lock_left_by_this_host_or_without_a_holder_is_taken_quietly(tmp_path, caplog,
                                                                            monkeypatch):
  """A file a killed run of this host left is taken without a warning (only another host's
  is warned of), and rewritten to name the new holder alone; where the file system has no
  locks the run goes on unlocked, and leaves no lock file behind."""
  import fcntl
  import socket

  lock = tmp_path / ".run.lock"
  lock.write_text(f"pid 1{os.getpid()}0 on {socket.gethostname()}\n")  # longer than ours
  with caplog.at_level(logging.WARNING, logger="jaxgan.workdir"):
    with workdir_lib.run_lock(str(tmp_path)):
      assert lock.read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
  assert caplog.text == "" and not lock.exists()
  with workdir_lib.run_lock(str(tmp_path)):
    lock.write_text("")  # a holder that has not written its name yet
    with pytest.raises(workdir_lib.WorkdirError, match=r"\(another process holds .*\.run\.lock\)"):
      with workdir_lib.run_lock(str(tmp_path)):
        pass

  def no_locks(handle, how):
    raise OSError(errno.ENOLCK, "No locks available")

  monkeypatch.setattr(fcntl, "flock", no_locks)
  with caplog.at_level(logging.WARNING, logger="jaxgan.workdir"):
    with workdir_lib.run_lock(str(tmp_path)):
      pass
  assert "cannot be locked (No locks available)" in caplog.text and os.listdir(tmp_path) == []


def test_a_reader_of_steps_that_all_fail_does_not_read_them_again(tmp_path, monkeypatch, caplog):
  """Listed again only when the steps changed meanwhile (a trainer rotating them): steps that
  stay and fail are one error, read once each (two tries), not READ_ATTEMPTS times."""
  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  target = _two_step_checkpoints(directory)
  reads = []

  def damaged(self, step, *args):
    reads.append(step)
    raise OSError(5, "Input/output error")

  monkeypatch.setattr(ckpt_lib.time, "sleep", lambda seconds: None)  # its retry pause
  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore", damaged)
  with caplog.at_level(logging.WARNING), pytest.raises(ckpt_lib.CheckpointError,
                                                       match=r"tried steps \[1, 2\]"):
    saved_run._restore_newest(directory, target, None)
  assert reads == [2, 2, 1, 1] and "changed while they were read" not in caplog.text


def test_a_second_trainer_on_a_workdir_in_use_is_refused_before_it_writes(tmp_path, caplog):
  """Two trainers on one workdir logged into one metrics.jsonl and each moved the other's
  checkpoints aside as leftovers of an earlier attempt, both ending with status 0. The second
  is refused, naming the holder; a lock left by a killed run (its file, no lock) is taken."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False})
  with workdir_lib.run_lock(str(workdir)):  # as a running trainer's process 0 holds it
    with pytest.raises(workdir_lib.WorkdirError, match=(
        rf"^another trainer is running in {re.escape(str(workdir))} \(pid {os.getpid()} on "
        rf".+ holds {re.escape(str(workdir / '.run.lock'))}\); wait for it to end or stop it, "
        r"or pass another --workdir \(if that process is gone with its host, remove the file\)$")):
      trainer.train_and_evaluate(config, str(workdir))
    assert os.listdir(workdir) == [".run.lock"]  # nothing of the refused run
  assert os.listdir(workdir) == []  # released: the file goes with the lock
  (workdir / ".run.lock").write_text("pid 1 on gone-host\n")
  with caplog.at_level(logging.WARNING, logger="jaxgan.workdir"):
    state = trainer.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 2 and not (workdir / ".run.lock").exists()
  # Another host's file: a run killed there, or one running where locks are per host.
  assert "pid 1 on gone-host left .run.lock: a run killed there, or" in caplog.text


def test_the_run_lock_releases_only_its_own_file_and_names_an_unopenable_one(tmp_path):
  """A lock file removed by hand while its run goes on, and created again by a newer run: the
  first one's release must not remove the newer file (a third run would then start beside the
  newer one). A lock file that cannot be opened is one line, not a traceback."""
  workdir = str(tmp_path)
  lock = tmp_path / ".run.lock"
  with workdir_lib.run_lock(workdir):
    lock.unlink()
    lock.write_text("pid 2 on a newer run's host\n")
    newer = os.stat(lock)
  assert lock.exists() and os.path.samestat(os.stat(lock), newer)
  lock.unlink()
  lock.mkdir()  # cannot be opened as a file (as another user's file cannot)
  with pytest.raises(workdir_lib.WorkdirError, match=rf"^workdir {re.escape(workdir)}: cannot "
                     rf"open {re.escape(str(lock))} \(Is a directory\); if no trainer is running "
                     "there, remove it$"):
    with workdir_lib.run_lock(workdir):
      pass


def test_a_reader_whose_listed_checkpoint_a_running_trainer_removes_reads_the_new_one(
    tmp_path, monkeypatch, caplog):
  """generate or evaluate on a running workdir: the trainer writes step 4 and removes step 2
  (train.keep_checkpoints=1) between the reader's listing and its read. The reader lists again
  and reads step 4; it failed before, advising to move the live run's directory away."""
  from jaxgan import checkpoint as ckpt_lib

  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 4, "train.checkpoint_every": 2,
                                            "train.keep_checkpoints": 2,
                                            "train.tensorboard": False}), str(workdir))
  checkpoints = workdir / "checkpoints"
  os.rename(checkpoints / "4", tmp_path / "4")  # not written yet
  real_restore_latest, rotated = ckpt_lib.Checkpointer.restore_latest, []

  def rotate_once(self, *args, **kwargs):  # after the listing, before the read
    if not rotated:
      rotated.append(self.steps())
      os.rename(tmp_path / "4", checkpoints / "4")
      os.rename(checkpoints / "2", tmp_path / "2")
    return real_restore_latest(self, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_latest", rotate_once)
  with caplog.at_level(logging.WARNING):
    _, step, state, _ = saved_run.load_checkpoint(str(workdir))
  assert rotated == [[2]] and step == 4 == int(state.step)
  assert "checkpoints/2 is gone since it was listed" in caplog.text
  assert "changed while they were read (a trainer is writing this workdir)" in caplog.text


def test_failed_output_writes_and_a_cut_metrics_row_do_not_stop_the_run(tmp_path, monkeypatch,
                                                                        caplog):
  """A multi-day run survives a failed metrics row and sample grid (disk full): logged, and
  training and checkpoints go on. A metrics.jsonl left by a run killed before its first
  checkpoint (last row cut mid-write) is trimmed to the restart, not appended to."""
  from jaxgan import sampling

  workdir = tmp_path / "w"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4}\n{"step": 6, "d_lo')
  real_open, failed = open, []

  def open_failing_once(path, mode="r", *args, **kwargs):
    if "a" in mode and str(path).endswith("metrics.jsonl") and not failed:
      failed.append(path)
      raise OSError(28, "No space left on device")
    return real_open(path, mode, *args, **kwargs)

  def png_fails(*args, **kwargs):
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(writers, "open", open_failing_once, raising=False)
  monkeypatch.setattr(sampling, "save_png", png_fails)
  config = tiny_config(**{"train.tensorboard": False, "train.sample_every": 2})
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(config, str(workdir))
  assert int(state.step) == 4 and failed
  # The cut row 6 is no step: steps 1 to 4 had rows.
  assert ("metrics.jsonl has rows to step 4, but no checkpoint: steps 1 to 4 are trained again "
          "(4 steps lost)") in caplog.text
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert [r["step"] for r in writers.read_metrics(str(workdir))] == [4]  # row 2 was lost
  assert "writing " + str(workdir / "metrics.jsonl") + " failed" in caplog.text
  assert "step_0000002.png failed" in caplog.text


@pytest.mark.parametrize("tail", ['{"step": 4, "eval/fi', '{"step": 4, "eval/fid": 3.0}'])
def test_a_row_cut_by_a_kill_is_dropped_and_the_next_row_stays_whole(tmp_path, tail):
  """Cut mid-row, or a whole row without its newline: the next append must not be glued on."""
  (tmp_path / "metrics.jsonl").write_text('{"step": 2}\n{"step": 4}\n' + tail)
  writers.drop_rows_after(str(tmp_path), 4)
  writers.MetricsWriter(str(tmp_path), tensorboard=False).write_scalars(6, {"d_loss": 1.0})
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == (
      [2, 4, 6] if tail.endswith("fi") else [2, 4, 4, 6])


def test_a_failed_evaluation_is_logged_and_training_goes_on(tmp_path, caplog):
  from types import SimpleNamespace

  from jaxgan import periodic_eval

  class OutOfMemory:
    extractor = SimpleNamespace(weights_id="w")

    def evaluate(self, *args, **kwargs):
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while extracting features")

    def should_stop(self):
      return False

  rows = []
  writer = SimpleNamespace(write_scalars=lambda step, values: rows.append((step, dict(values))))
  periodic = periodic_eval.PeriodicEval(tiny_config(), str(tmp_path), OutOfMemory(), writer,
                                        meta=lambda step: {}, start_step=0)
  state = SimpleNamespace(ema_params={}, g_batch_stats={})
  with caplog.at_level(logging.ERROR):
    assert periodic(4, state) == {}
    assert periodic(8, state) == {}
  periodic.close()
  assert rows == [(4, {"eval/failed": 1}), (8, {"eval/failed": 1})]
  assert periodic.best_fid == float("inf")
  assert "step 4: evaluation failed (RuntimeError: RESOURCE_EXHAUSTED" in caplog.text
  # The first failure's traceback (a bug's would be needed), the next ones a line each.
  told = [r for r in caplog.records if "evaluation failed" in r.getMessage()]
  assert [r.exc_info is not None for r in told] == [True, False]
  assert not os.listdir(tmp_path / "checkpoints_best")


def test_an_unreadable_config_json_is_named(tmp_path):
  (tmp_path / "config.json").write_text("")
  with pytest.raises(ValueError, match=r"config.json is not a readable jaxgan config"):
    saved_run.load_config(str(tmp_path))


def test_a_checkpoint_folder_given_as_the_workdir_is_pointed_at_its_workdir(tmp_path):
  """`generate --workdir run/checkpoints/200`: the error says what to pass instead."""
  (tmp_path / "config.json").write_text("{}")
  for folder in ("checkpoints/200", "checkpoints_best/150"):
    os.makedirs(tmp_path / folder)
  cases = (("checkpoints/200", f"a checkpoint's folder: pass --workdir {tmp_path} --checkpoint "
                               "200"),
           ("checkpoints_best/150", f"a checkpoint's folder: pass --workdir {tmp_path} "
                                    "--checkpoint best"),
           ("checkpoints", f"a workdir's checkpoints folder: pass --workdir {tmp_path}"))
  for folder, hint in cases:
    with pytest.raises(FileNotFoundError) as raised:
      saved_run.load_config(str(tmp_path / folder))
    assert str(raised.value) == (f"{tmp_path / folder}/config.json not found: is "
                                 f"{tmp_path / folder} a jaxgan training workdir? It is {hint}")
  os.makedirs(tmp_path / "other" / "7")  # not under a workdir: no hint
  with pytest.raises(FileNotFoundError, match=r"training workdir\?$"):
    saved_run.load_config(str(tmp_path / "other" / "7"))


def test_shape_changing_config_is_refused_before_reading_state(tmp_path, monkeypatch):
  from jaxgan import checkpoint as ckpt_lib

  workdir = tmp_path / "w"
  trainer.train_and_evaluate(tiny_config(**{"train.tensorboard": False}), str(workdir))
  opened, closed = [], []
  real_init, real_close = ckpt_lib.Checkpointer.__init__, ckpt_lib.Checkpointer.close
  monkeypatch.setattr(ckpt_lib.Checkpointer, "__init__",
                      lambda self, *a, **k: (opened.append(self), real_init(self, *a, **k))[1])
  monkeypatch.setattr(ckpt_lib.Checkpointer, "close",
                      lambda self: (closed.append(self), real_close(self))[1])
  # The shapes are compared from the checkpoint's config: no --allow_config_change offered (it
  # could only lead to the layout error), and the same one error with it.
  wider = tiny_config(**{"model.g_width": 16, "train.num_steps": 6})
  for allow in (False, True):
    with pytest.raises(trainer.TrainingError, match=r"model.g_width: 8 -> 16\) in the shapes of "
                       r"the train state \(its parameters' or statistics'\): this run cannot "
                       r"continue with it; use a new workdir, "
                       r"or restore the checkpoint's values$"):
      trainer.train_and_evaluate(wider, str(workdir), allow_config_change=allow)
  # The refused restore released the checkpointer (orbax's threads), as the run would have.
  assert opened and opened == closed
  # Nothing was taken for damage: every checkpoint is still in place.
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert not os.path.exists(str(workdir / "checkpoints") + ".corrupt")
  # Only the keys that change the shapes are named as such (all three were); the others would
  # be accepted with --allow_config_change once those are restored.
  mixed = tiny_config(**{"model.g_width": 16, "optim.g_lr": 1e-4, "train.batch_size": 16,
                         "seed": 1})  # a key of the root too
  # Not told to pass the flag it passed.
  for allow, verb in ((False, "need"), (True, "are allowed by")):
    with pytest.raises(trainer.TrainingError) as error:
      trainer.train_and_evaluate(mixed, str(workdir), allow_config_change=allow)
    message = str(error.value)
    assert "(model.g_width: 8 -> 16) in the shapes of the train state" in message, message
    assert message.endswith("restore the checkpoint's values (its other changes, optim.g_lr: "
                            "0.0002 -> 0.0001; seed: 0 -> 1; train.batch_size: 8 -> 16, "
                            f"{verb} --allow_config_change)"), message


def test_a_class_count_changed_with_the_data_path_names_the_path():
  """data.num_classes=-1 takes the count from the data: resumed on another prepared set, the
  error listed 'data.num_classes: 6 -> 14', a key the user never set, and not the path. Not
  only about -1: a command line without the run's data overrides changes both too."""
  from jaxgan import restore

  layout = [("data.num_classes", 6, 14)]
  moved = [("data.path", "/sets/a", "/sets/b"), ("train.num_steps", 10, 20)]
  assert restore.data_moved_hint(layout, moved) == (
      "; data.path changed too (data.path: '/sets/a' -> '/sets/b'): pass the run's data "
      "settings again (its config.json holds them; with data.num_classes=-1 the class counts "
      "are the data's)")
  assert restore.data_moved_hint(layout, moved[1:]) == ""  # the same data: no hint
  # Not read from the data: a width, an image size (set on purpose, never resolved).
  for key in ("model.g_width", "data.image_size"):
    assert restore.data_moved_hint([(key, 64, 128)], moved) == ""


def test_state_of_another_layout_is_refused_not_moved_aside(tmp_path):
  """A checkpoint whose state pytree has another layout (another jaxgan version) is not damage:
  one clear error, and the files stay where they are."""
  import jax.numpy as jnp

  from jaxgan import checkpoint as ckpt_lib

  directory = str(tmp_path / "checkpoints")
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  writer.save(1, {"a": jnp.ones(3)}, {"config": {}})
  writer.close()
  reader = ckpt_lib.Checkpointer(directory, async_save=False)
  abstract = {"a": jax.ShapeDtypeStruct((3,), jnp.float32),
              "b": jax.ShapeDtypeStruct((2,), jnp.float32)}
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = ckpt_lib.abstract_like(abstract, jax.tree_util.tree_map(lambda _: device, abstract))
  with pytest.raises(ckpt_lib.LayoutError, match="different layout .1 keys missing, e.g. b.:"):
    reader.restore_latest(target, lambda step, meta: True)
  reader.close()
  assert os.path.isdir(os.path.join(directory, "1"))
  assert not os.path.exists(directory + ".corrupt")
  # Another dtype is another layout too, not damage (orbax would cast, and the cast values
  # would fail their digests).
  retyped = {"a": jax.ShapeDtypeStruct((3,), jnp.bfloat16, sharding=device)}
  with pytest.raises(ckpt_lib.LayoutError,
                     match=r"1 dtypes differ, e.g. a float32 saved, bfloat16 now"):
    ckpt_lib.Checkpointer(directory, retry_delay_s=0.0).restore_latest(retyped)
  assert os.path.isdir(os.path.join(directory, "1"))
  assert not os.path.exists(directory + ".corrupt")


def test_a_resume_with_other_parameter_shapes_is_one_error_not_a_read_per_array(tmp_path, caplog,
                                                                               monkeypatch):
  """A wider model whose config the check above cannot read back (a checkpoint of another
  jaxgan): the shapes are compared from the checkpoint's metadata before any array is read
  (orbax failed on each array in turn, with a traceback each, twice, and the run then claimed no
  checkpoint was readable)."""
  from jaxgan import checkpoint as ckpt_lib
  from jaxgan import restore

  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(tiny_config(**{"train.num_steps": 2, "train.tensorboard": False}),
                             workdir)
  wider = tiny_config(**{"model.g_width": 16, "train.tensorboard": False})
  monkeypatch.setattr(restore, "_layout_changes", lambda *args: [])
  with caplog.at_level(logging.WARNING), pytest.raises(
      ckpt_lib.LayoutError, match=r"checkpoint step 2 .* different layout \(\d+ shapes differ, "
                                  r"e.g. ema_params/\S+ \(.*\) saved, \(.*\) now\)"):
    trainer.train_and_evaluate(wider, workdir, allow_config_change=True)
  assert "trying again" not in caplog.text and "Traceback" not in caplog.text
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]


AGREED_FALLBACK = """
import json, sys
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
from jaxgan import checkpoint
directory, me = sys.argv[3], jax.process_index()
replicated = NamedSharding(Mesh(np.array(jax.devices()), ("d",)), PartitionSpec())
state = lambda v: {"w": jax.make_array_from_callback(
    (4,), replicated, lambda index: np.full((4,), v, np.float32)[index])}
saver = checkpoint.Checkpointer(directory, keep=3, async_save=False)
for step in (1, 2):
  saver.save(step, state(float(step)), {"step": step})
saver.close()
target = checkpoint.abstract_like(state(0.0), {"w": replicated})
lagging = checkpoint.Checkpointer(directory, keep=3)
if me == 1:  # this process's listing lags: it does not see step 2 yet
  lagging.steps = lambda: [1]
first, _, _ = lagging.restore_latest(target, lambda step, meta: True)
lagging.close()
reader = checkpoint.Checkpointer(directory, keep=3)
if me == 1:  # damage only this process sees in step 2 (e.g. a shard only it reads)
  original = reader.restore
  def restore(step, target, *parts):
    restored = original(step, target, *parts)  # orbax's restore ends in a barrier: take part in it
    if step == 2:
      raise OSError("truncated shard")
    return restored
  reader.restore = restore
step, restored, _ = reader.restore_latest(target, lambda step, meta: True)
w = float(np.asarray(restored["w"].addressable_data(0))[0])
reader.close()
print(json.dumps({"first": first, "step": step, "w": w}))
"""


def test_checkpoint_fallback_is_agreed_by_every_process(tmp_path):
  """Every process tries process 0's list of steps, and a step one process rejects after orbax
  has read it (damage only it detects) is skipped by all: no process resumes another state. (A
  read error inside orbax's collective restore on one process only is not covered: see
  checkpoint._everywhere.)"""
  from tests.conftest import run_two_processes

  directory = str(tmp_path / "checkpoints")
  results, errs = run_two_processes(AGREED_FALLBACK, directory)
  # Process 1's lagging listing does not make it resume another step than process 0.
  assert [r["first"] for r in results] == [2, 2]
  assert [(r["step"], r["w"]) for r in results] == [(1, 1.0), (1, 1.0)]
  assert "another process could not read it" in errs[0]  # process 0 says why it fell back
  assert os.listdir(directory + ".corrupt")  # step 2 moved aside (by process 0), not deleted


def test_resuming_on_changed_data_or_order_is_warned(tmp_path, caplog, monkeypatch):
  """The stream is a function of the data and of its order (TensorFlow's index shuffle): a
  resume on a grown data set, or on the same data ordered otherwise, trains on, but says that it
  no longer sees what an uninterrupted run would have."""
  from jaxgan import data as data_lib

  from PIL import Image

  root = tmp_path / "photos"
  for i, cls in enumerate(["a", "a", "b", "b"]):
    (root / cls).mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(root / cls / f"{i}.png")
  overrides = {"data.source": "folder", "data.path": str(root), "data.num_classes": 2,
               "data.workers": 1, "train.tensorboard": False, "train.num_steps": 2}
  workdir = str(tmp_path / "w")
  trainer.train_and_evaluate(tiny_config(**overrides), workdir)
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 4}), workdir)
  assert "changed" not in caplog.text  # the same data in the same order: resumed silently
  order = data_lib.order_fingerprint
  monkeypatch.setattr(data_lib, "order_fingerprint", lambda source: order(source) ^ 1)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 6}), workdir)
  assert "the data order changed since checkpoint step 4 (order" in caplog.text
  monkeypatch.undo()
  Image.new("RGB", (20, 20), (0, 200, 0)).save(root / "b" / "new.png")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 8}), workdir)
  assert int(state.step) == 8
  assert "the data changed since checkpoint step 6 (fingerprint" in caplog.text
  assert "order changed" not in caplog.text  # said once: new data, a new order
  # The same number of classes under other names (a set prepared again, a folder renamed):
  # label 0, which trained 'a', would now train 'b'. Refused before the state is read, unless
  # allowed (a class only renamed); the checkpoints then carry the new names.
  os.rename(root / "a", root / "z")
  with pytest.raises(trainer.TrainingError, match=r"^the data's classes differ from checkpoint "
                     r"step 8 in .* \(class: a, b -> b, z\): each label index would now train "
                     r"another class; use a new workdir"):
    trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 10}), workdir)
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 10}),
                                       workdir, allow_config_change=True)
  assert int(state.step) == 10
  assert ("the data's classes differ from checkpoint step 8, accepted by --allow_config_change: "
          "class: a, b -> b, z") in caplog.text
  _, step, _, meta = saved_run.load_checkpoint(workdir)
  assert step == 10 and meta["class_names"] == ["b", "z"]


def _trained_as_an_older_jaxgan_read_names(tmp_path, monkeypatch, other: str):
  """(overrides, workdir) of a run trained 2 steps on class folders 'Café' (decomposed, as macOS
  names it) and `other`, their names kept as written, as an older jaxgan read them."""
  from PIL import Image

  from jaxgan.data import folder

  root = tmp_path / "photos"
  for i, cls in enumerate(["Cafe\u0301", other]):
    (root / cls).mkdir(parents=True)
    Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(root / cls / f"{i}.png")
  overrides = {"data.source": "folder", "data.path": str(root), "data.num_classes": 2,
               "data.workers": 1, "train.tensorboard": False, "train.num_steps": 2}
  workdir = str(tmp_path / "w")
  with monkeypatch.context() as patch:
    patch.setattr(folder, "folder_class_name", lambda name: name)
    trainer.train_and_evaluate(tiny_config(**overrides), workdir)
  assert saved_run.load_checkpoint(workdir)[3]["class_names"] == ["Cafe\u0301", other]
  return overrides, workdir


def test_a_run_whose_class_names_were_read_in_another_unicode_form_resumes(tmp_path, monkeypatch,
                                                                          caplog):
  """A folder 'Café' named as macOS writes it (e + a combining accent) was a class of that
  spelling; read in composed form now, the resume was refused as 'classes differ (Café ->
  Café)'. The same classes: resumed."""
  from jaxgan.data import class_labels

  overrides, workdir = _trained_as_an_older_jaxgan_read_names(tmp_path, monkeypatch, "Shoes")
  assert class_labels.label_text("Cafe\u0301") == "Caf\u00e9"
  with caplog.at_level(logging.INFO):
    state = trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 4}), workdir)
  assert int(state.step) == 4
  assert ("the checkpoint's class names are read as class: Cafe\u0301, Shoes -> Caf\u00e9, Shoes "
          "now") in caplog.text


def test_classes_read_now_in_another_order_are_refused_and_told_why(tmp_path, monkeypatch):
  """Composed, 'Café' sorts after 'Caff'; decomposed (as an older jaxgan kept it) before: the
  same classes, but label 0 would train the other one. Refused, and the cause was not said (the
  names looked alike, only reordered)."""
  overrides, workdir = _trained_as_an_older_jaxgan_read_names(tmp_path, monkeypatch, "Caff")
  with pytest.raises(trainer.TrainingError, match=(
      "^the data's classes differ from checkpoint step 2 in .* \\(class: Cafe\u0301, Caff -> "
      "Caff, Caf\u00e9; the same classes in another order: their names are read in Unicode's "
      "composed form now, which sorts them otherwise\\): each label index would now train")):
    trainer.train_and_evaluate(tiny_config(**{**overrides, "train.num_steps": 4}), workdir)


def test_class_changes_are_described_per_attribute_or_as_other_attributes():
  from jaxgan import restore

  before = [["type", ["Shirts", "Shoes"]], ["colour", ["Red"]]]
  assert restore._describe_classes(before, before) == ""
  assert restore._describe_classes(before, [["type", ["Shirts", "Boots"]], ["colour", ["Red"]]]
                                   ) == "type: Shirts, Shoes -> Shirts, Boots"
  assert restore._describe_classes(before, before[:1]) == (
      "attributes ['type', 'colour'] -> ['type']")
  assert restore._describe_classes(before, [["kind", ["Shirts", "Shoes"]], ["colour", ["Red"]]]
                                   ) == "attributes ['type', 'colour'] -> ['kind', 'colour']"
  assert restore._reordered(before, [["type", ["Shoes", "Shirts"]], ["colour", ["Red"]]])
  assert not restore._reordered(before, before)
  assert not restore._reordered(before, [["type", ["Shoes", "Boots"]], ["colour", ["Red"]]])
  assert not restore._reordered(before, [["kind", ["Shoes", "Shirts"]], ["colour", ["Red"]]])


def test_a_resume_warns_of_nothing_to_train_and_of_changed_data_or_order(caplog):
  from jaxgan import restore

  config = tiny_config(**{"train.num_steps": 4})
  with caplog.at_level(logging.INFO, logger="jaxgan.restore"):
    restore.warn_about_changes({}, 3, "w", config, 7, 9)  # an old meta: nothing recorded
  assert [r.levelname for r in caplog.records] == ["INFO"]
  # At num_steps (the rerun a stop in the last step asks for, to draw or evaluate it): said, not
  # warned of; past it: warned of.
  for step, level, text in ((4, "INFO", "is train.num_steps: nothing to train; what a stop left "
                                        "undone at that step"),
                            (5, "WARNING", "is past train.num_steps=4: nothing to train")):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxgan.restore"):
      restore.warn_about_changes({}, step, "w", config, 7, 9)
    assert f"checkpoint step {step} of w {text}" in caplog.text
    assert [r.levelname for r in caplog.records] == ["INFO", level]
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jaxgan.restore"):
    restore.warn_about_changes({"data_fingerprint": 8, "order_fingerprint": 1}, 3, "w", config,
                               7, 9)
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 1 and messages[0].startswith(
      "the data changed since checkpoint step 3 (fingerprint 00000008, now 00000007)")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="jaxgan.restore"):
    restore.warn_about_changes({"data_fingerprint": 7, "order_fingerprint": 1}, 3, "w", config,
                               7, 9)
  assert "the data order changed since checkpoint step 3 (order 00000001, now 00000009" in (
      caplog.text)
  # The content digest (every image) where the meta records one: pixels changed outside the
  # fingerprint's sample are told; the order kept (the same count) is not said to be new.
  for recorded, warned in ((5, True), (6, False)):
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgan.restore"):
      restore.warn_about_changes({"data_fingerprint": 7, "order_fingerprint": 9,
                                  "data_content": recorded}, 3, "w", config, 7, 9, content=6)
    assert [r.getMessage() for r in caplog.records] == [
        "the data changed since checkpoint step 3 (fingerprint 00000005, now 00000006): training "
        "continues on the new data"] * warned
  # Other devices: said (allowed, and the state is read exactly), not warned of; the same
  # devices, or a meta from before the record, say nothing.
  for written_on, said in (("8 x cpu, mesh 8x1", True), ("1 x cpu, mesh 1x1", False),
                           (None, False)):
    caplog.clear()
    meta = {"data_fingerprint": 7, "order_fingerprint": 9, "devices": written_on}
    with caplog.at_level(logging.INFO, logger="jaxgan.restore"):
      restore.warn_about_changes(meta, 3, "w", config, 7, 9, "1 x cpu, mesh 1x1")
    assert [r.levelname for r in caplog.records] == ["INFO"] * (1 + said)
    assert ("checkpoint step 3 was computed on 8 x cpu, mesh 8x1, this run on 1 x cpu, mesh 1x1"
            in caplog.text) == said


def test_a_resume_keeps_the_first_starts_donor_and_warns_only_of_another(caplog):
  from jaxgan import restore

  recorded = os.path.join("runs", "a", "checkpoints", "4")
  meta = {"config": {"train": {"init_from": recorded}}}
  for named, warned in (("", False), (os.path.join("runs", "a"), False),
                        (os.path.join("runs", "a", "checkpoints") + os.sep, False),
                        (os.path.join("runs", "b"), True)):
    config = tiny_config(**{"train.init_from": named})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgan.restore"):
      restore.keep_first_start_keys(meta, config)
    assert config.train.init_from == recorded
    assert ("is read at a run's first start only" in caplog.text) == warned, named
  # The first start's own command line, where the meta records it: only that name is the same.
  config = tiny_config(**{"train.init_from": os.path.join("runs", "a")})
  with caplog.at_level(logging.WARNING, logger="jaxgan.restore"):
    restore.keep_first_start_keys({**meta, restore.DONOR_NAMED_KEY: "elsewhere/a"}, config)
  assert "this run started from runs/a/checkpoints/4, which its config.json keeps (not runs/a)" in (
      caplog.text)


def test_a_checkpoint_of_other_classes_is_refused_or_accepted_as_another_config():
  """Classes other than the data's refuse the resume, unless allowed; allowed, the checkpoint
  still counts as another config (its unreadable state is no evidence of damage). A step the
  run's steps_per_call does not divide is refused."""
  import types

  import flax

  from jaxgan import restore

  meta = {"config": {}, "attributes": [["type", ["Shirts", "Shoes"]]]}
  accepted = []

  @flax.struct.dataclass
  class State:  # what restore_run reads of a TrainState: its arrays, LeCam's averages
    w: np.ndarray
    lecam: dict

  class Reader:
    directory = "w/checkpoints"

    def restore_latest(self, target, accept):
      accepted.append(accept(6, meta))
      lecam = {"real": np.float32(0), "fake": np.float32(0)}
      return 6, State(np.zeros(2, np.float32), lecam), meta

  run = types.SimpleNamespace(abstract_state={}, state_shardings={}, steps_per_call=1)
  same, other = [("type", ["Shirts", "Shoes"])], [("type", ["Shirts", "Boots"])]
  assert restore.restore_run(Reader(), run, tiny_config(), "w", False, same)[0] == 6
  assert restore.restore_run(Reader(), run, tiny_config(), "w", True, other)[0] == 6
  assert accepted == [True, False]
  with pytest.raises(restore.TrainingError, match=r"^the data's classes differ from checkpoint "
                                                  r"step 6 in w \(type: Shirts, Shoes -> "):
    restore.restore_run(Reader(), run, tiny_config(), "w", False, other)
  run.steps_per_call = 4
  with pytest.raises(restore.TrainingError, match=r"^checkpoint step 6 in w is not a multiple of "
                                                  r"train.steps_per_call=4"):
    restore.restore_run(Reader(), run, tiny_config(), "w", False, same)


def test_the_classes_a_checkpoint_trained_on_are_read_from_old_metas_too():
  from jaxgan.label_choices import trained_attributes

  data = [["category", ["a", "b"]]]
  assert trained_attributes({"attributes": [["articleType", ["Shirts", 3]]],
                             "class_names": ["Shirts"]}, data) == [["articleType", ["Shirts", "3"]]]
  # Class names only: the attribute's name is not compared (the synthetic catalog's is
  # 'category', a folder's 'class').
  assert trained_attributes({"class_names": ["a", "b"]}, data) == data
  assert trained_attributes({"class_names": ["a"]}, []) == [["class", ["a"]]]
  assert trained_attributes({"class_names": []}, data) == []  # unconditional
  assert trained_attributes({}, data) is None  # not recorded: nothing to compare


def test_an_unreadable_metrics_file_means_the_start_step_is_evaluated_again(tmp_path, caplog,
                                                                          monkeypatch):
  """Process 0 reads whether the resumed step has its eval row and broadcasts the answer: a read
  error there must not raise on process 0 alone (the others would wait in the broadcast)."""
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 4, "eval/num_samples": 8}) + "\n")
  has_eval_row = periodic_eval.has_eval_row
  assert has_eval_row(str(tmp_path), 4) and not has_eval_row(str(tmp_path), 2)

  def unreadable(*args):
    raise OSError(errno.EIO, "Input/output error")

  monkeypatch.setattr(writers, "has_row", unreadable)
  with caplog.at_level(logging.WARNING):
    assert not has_eval_row(str(tmp_path), 4)
  assert "could not read" in caplog.text and "evaluating step 4 again" in caplog.text


def test_a_stop_during_an_evaluation_stops_there_and_the_rerun_evaluates_the_step(tmp_path,
                                                                                  monkeypatch):
  """SIGTERM while step 2 is evaluated (minutes of Inception on a real run): the evaluation is
  cut short, the run stops at step 2 (its checkpoint was written before the evaluation) without
  an eval row but with its metrics row (not a log_every step), and the rerun evaluates step 2
  before training on."""
  from jaxgan import evaluator as evaluator_lib
  from jaxgan.metrics import inception_weights

  calls = []

  class StandIn:  # the evaluator's stop contract, without Inception
    def __init__(self, config, generator, source, should_stop, **kwargs):
      self.should_stop = should_stop
      self.extractor = type("Extractor", (), {"weights_id": "stand-in"})()

    def evaluate(self, ema_params, g_batch_stats, num, **kwargs):
      if not calls:
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-evaluation
        calls.append("cut short")
        if self.should_stop():  # as the real one asks before each chunk
          raise evaluator_lib.EvaluationStopped("cut short")
      calls.append("evaluated")
      return {"fid": 1.0, "num_samples": num}

    def reals_digest(self, num):
      return "stand-in reals"

  monkeypatch.setattr(inception_weights, "find_weights", lambda path="": "stand-in")
  monkeypatch.setattr(evaluator_lib, "Evaluator", StandIn)
  config = tiny_config(**{"train.num_steps": 4, "train.eval_every": 2, "train.log_every": 3,
                          "train.checkpoint_every": 4, "train.tensorboard": False})
  workdir = str(tmp_path / "w")
  state = trainer.train_and_evaluate(config, workdir)
  assert int(state.step) == 2 and calls == ["cut short"]
  assert not any("eval/num_samples" in r or "eval/failed" in r
                 for r in writers.read_metrics(workdir))
  assert [r["step"] for r in writers.read_metrics(workdir) if "d_loss" in r] == [2]
  state = trainer.train_and_evaluate(config, workdir)
  assert int(state.step) == 4 and calls == ["cut short", "evaluated", "evaluated"]
  assert [r["step"] for r in writers.read_metrics(workdir) if "eval/num_samples" in r] == [2, 4]


def test_a_resume_from_a_checkpoint_between_rows_loses_no_steps_metrics(tmp_path):
  """A checkpoint between log rows gets a row too: a resume from it drops the rows after it and
  logs those steps again, so without that row the steps before it since the last row (held in
  memory only) would have none."""
  import json

  config = tiny_config(**{"train.num_steps": 5, "train.log_every": 4,
                          "train.checkpoint_every": 3, "train.tensorboard": False})
  workdir = tmp_path / "w"

  def row_steps():
    with open(workdir / "metrics.jsonl") as f:
      return [json.loads(line)["step"] for line in f]

  trainer.train_and_evaluate(config, str(workdir))
  assert row_steps() == [3, 4, 5]
  shutil.rmtree(workdir / "checkpoints" / "5")  # killed after step 4's row: resumed from 3
  trainer.train_and_evaluate(config, str(workdir))
  assert row_steps() == [3, 4, 5]  # each step in one row


def test_a_workdir_without_checkpoints_yet_says_when_the_first_comes(tmp_path):
  """generate/evaluate on a run still before its first checkpoint (or evaluation) said 'no
  readable checkpoint ... train first', and on one that evaluates, 'set train.eval_every'."""
  import socket

  from jaxgan import startup

  workdir = str(tmp_path / "w")
  os.makedirs(workdir)

  def first_step(message, checkpoint="latest", **overrides):
    startup.write_run_files(tiny_config(**overrides), workdir, 0)
    with pytest.raises(FileNotFoundError) as info:
      saved_run.load_checkpoint(workdir, checkpoint)
    assert re.match(message, str(info.value)), str(info.value)

  # As the trainer saves: at every checkpoint_every and evaluation step, and at the last.
  first_step(r"^no checkpoint in .*w yet: its run writes the first at step 50: train first$",
             **{"train.checkpoint_every": 50, "train.eval_every": 100, "train.num_steps": 200})
  first_step(r"^no checkpoint in .*w yet: its run writes the first at step 100: ",
             **{"train.checkpoint_every": 2000, "train.eval_every": 100, "train.num_steps": 4000})
  first_step(r"^no checkpoint in .*w yet: its run writes the first at step 4: ",
             **{"train.checkpoint_every": 5000, "train.num_steps": 4})
  first_step(r"^no best-FID checkpoint in .*w yet: its run writes the first at step 40: ", "best",
             **{"train.eval_every": 100, "train.num_steps": 40})
  first_step(r"^no best-FID checkpoint in .*w: its run evaluates nothing \(set train.eval_every "
             r"to keep one\)$", "best", **{"train.eval_every": 0})
  os.makedirs(os.path.join(workdir, "checkpoints"))  # made, nothing in it yet
  with open(os.path.join(workdir, workdir_lib.RUN_LOCK), "w") as f:
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")  # a trainer running there
  first_step(r"^no checkpoint in .*w yet: its run writes the first at step 2; .run.lock names a "
             r"trainer there \(pid \d+ on .*\): wait for that step$")
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  with open(os.path.join(workdir, workdir_lib.RUN_LOCK), "w") as f:
    f.write(f"pid {dead.pid} on {socket.gethostname()}\n")  # left by a killed trainer
  first_step(r"^no checkpoint in .*w yet: its run writes the first at step 2; .run.lock names a "
             r"trainer \(pid \d+ on .*\) that is no longer running: rerun train$")
  with open(os.path.join(workdir, workdir_lib.RUN_LOCK), "w") as f:
    f.write(f"pid {dead.pid} on another-host\n")  # cannot be told from here: maybe running
  first_step(r".*names a trainer there \(pid \d+ on another-host\): wait for that step$")
  # No trainer, and the log past the first checkpoint: the folder was emptied or removed (a
  # finished run was told to 'train first'). Before that step, the run may still write it.
  os.remove(os.path.join(workdir, workdir_lib.RUN_LOCK))
  startup.write_run_files(tiny_config(**{"train.eval_every": 2}), workdir, 0)

  def logged(message, *steps, checkpoint="latest"):  # the run's log: rows of these steps
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.writelines(f'{{"step": {step}, "d_loss": 0.5}}\n' for step in steps)
    with pytest.raises(FileNotFoundError, match=message):
      saved_run.load_checkpoint(workdir, checkpoint)

  logged(r"^no checkpoint in .*w yet: its run writes the first at step 2: train first$", 1)
  missing = (r"^no checkpoint in .*w, though its metrics.jsonl logs steps up to 4: .*w/checkpoints "
             r"is {} \(moved or deleted\?\); put its step folders back to read this run$")
  logged(missing.format("empty"), 2, 4)
  os.rmdir(os.path.join(workdir, "checkpoints"))
  logged(missing.format("missing"), 2, 4)
  # The best-FID one is kept only where an evaluation gave a value: its absence is no loss.
  logged(r"^no best-FID checkpoint in .*w yet: its run writes the first at step 2: ", 2, 4,
         checkpoint="best")
