"""The checks that stop a run: non-finite streaks, a non-finite restored state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import checkpoint as ckpt_lib, run_health, trainer
from tests.conftest import tiny_config


def test_a_streak_that_recovered_before_the_check_still_stops_the_run(tmp_path):
  """The streak is read at rows and checkpoints only: the longest of every call's since the last
  check counts, not just the last (which is 0 again once a finite step follows)."""
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  longest = np.int32(0)
  for streak in (jnp.int32(0), jnp.array([0, 1], jnp.int32)):  # a stacked call: [k]
    longest = run_health.longest_streak(longest, streak)
  run_health.check_nonfinite(longest, 4, 3, checkpointer, "bfloat16")  # 1 < 3: goes on
  longest = np.int32(0)
  for streak in (jnp.int32(1), jnp.array([2, 3], jnp.int32), jnp.int32(0)):
    longest = run_health.longest_streak(longest, streak)
  with pytest.raises(run_health.TrainingError, match=r"3 consecutive non-finite steps by step 8 .*"
                                                  r"resumes from the start \(no checkpoint\) .*"
                                                  r"train.dtype=float32, then rerun$"):
    run_health.check_nonfinite(longest, 8, 3, checkpointer, "bfloat16")  # no flag: no config
  assert checkpointer.save(6, {"w": jnp.ones(3)}, {"step": 6}) and checkpointer.wait()
  with pytest.raises(run_health.TrainingError, match=r"resumes from step 6 .*then rerun with "
                                                  r"--allow_config_change$"):
    run_health.check_nonfinite(longest, 8, 3, checkpointer, "bfloat16")
  # A float32 run is not told to set float32.
  with pytest.raises(run_health.TrainingError, match=r": lower the learning rates \(optim.\*\), "
                                                  r"then rerun with --allow_config_change$"):
    run_health.check_nonfinite(longest, 8, 3, checkpointer, "float32")
  checkpointer.close()


def test_the_resume_point_is_not_a_write_in_flight_that_fails(tmp_path, monkeypatch):
  """Orbax lists a step from the start of its write: one that fails in the background must not
  be named as where a rerun resumes."""
  from orbax.checkpoint._src.serialization import jax_array_handlers as handlers

  async def failing_write(*args, **kwargs):  # orbax's array writes (a private function)
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(handlers, "_async_serialize_replica_slices", failing_write)
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / "checkpoints"))
  assert checkpointer.save(2, {"w": jnp.ones(3)}, {"step": 2})  # started; fails meanwhile
  with pytest.raises(run_health.TrainingError, match=r"3 consecutive non-finite steps by step 4 .*"
                                                  r"resumes from the start \(no checkpoint\)"):
    run_health.check_nonfinite(jnp.int32(3), 4, 3, checkpointer, "float32")
  checkpointer.close()


def test_nonfinite_leaves_names_the_floating_leaves_with_nan_or_inf():
  tree = {"params": {"w": jnp.ones((3, 2)), "b": jnp.array([0.0, jnp.inf])},
          "opt": (jnp.array([jnp.nan]), jnp.zeros((), jnp.int32)), "key": jax.random.key(0)}
  assert run_health.nonfinite_leaves(tree) == ["['opt'][0]", "['params']['b']"]
  assert run_health.nonfinite_leaves({"w": jnp.ones(2), "n": jnp.int32(3)}) == []


def test_a_restored_state_that_is_already_nonfinite_is_refused(tmp_path, monkeypatch):
  """A checkpoint whose Adam moment overflowed (written before the step guard checked the
  optimizer states) would have every step skipped, and the run stop blaming the learning rates:
  the resume says what is wrong with the checkpoint instead, before anything compiles."""
  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False})
  trainer.train_and_evaluate(config, str(tmp_path / "w"))
  restore_latest = ckpt_lib.Checkpointer.restore_latest

  def overflowed(self, *args, **kwargs):
    step, state, meta = restore_latest(self, *args, **kwargs)
    leaves, tree = jax.tree_util.tree_flatten(state.d_opt_state)
    leaves[-1] = leaves[-1] + jnp.where(jnp.isfinite(leaves[-1]), jnp.inf, 0)
    return step, state.replace(d_opt_state=jax.tree_util.tree_unflatten(tree, leaves)), meta

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_latest", overflowed)
  config.train.num_steps = 4
  with pytest.raises(trainer.TrainingError,
                     match=r"checkpoint step 2 in .*checkpoints holds non-finite values "
                           r"\(d_opt_state\[0\]\.nu\[.*\]\): no step "):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  monkeypatch.undo()  # the checkpoint itself is intact: the same resume trains on
  assert int(trainer.train_and_evaluate(config, str(tmp_path / "w")).step) == 4


def test_an_inf_lecam_average_is_reset_where_lecam_is_off(tmp_path, monkeypatch, caplog):
  """Before 2026-12-05 a step kept an inf average of D's outputs (a real logit of +inf left the
  losses finite) also with LeCam off, which reads it nowhere: such a checkpoint is resumed, the
  average from 0, not refused as non-finite. With LeCam on it is refused as before."""
  import logging

  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False})
  trainer.train_and_evaluate(config, str(tmp_path / "w"))
  restore_latest = ckpt_lib.Checkpointer.restore_latest

  def overflowed(self, *args, **kwargs):
    step, state, meta = restore_latest(self, *args, **kwargs)
    return step, state.replace(lecam={**state.lecam, "real": state.lecam["real"] + jnp.inf}), meta

  monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_latest", overflowed)
  config.train.num_steps = 4
  with caplog.at_level(logging.WARNING):
    state = trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert int(state.step) == 4 and np.isfinite(float(state.lecam["real"]))
  assert "holds a non-finite LeCam average of D's real outputs (unread: LeCam is off)" in (
      caplog.text)
  config.train.num_steps, config.loss.lecam_weight = 6, 0.1
  with pytest.raises(trainer.TrainingError, match=r"holds non-finite values \(lecam"):
    trainer.train_and_evaluate(config, str(tmp_path / "w"), allow_config_change=True)
