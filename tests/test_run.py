"""run.build_run: the programs it keeps for a run built again, and what they are keyed by."""

import jax
import numpy as np

from conftest import tiny_config
from jaxgan import checkpoint as ckpt_lib, config as config_lib, kept_programs
from jaxgan import run as run_lib, sharding


def _changed(value):
  """Another value of a config key's type."""
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value * 3 + 7
  return f"{value}x" if value else "other"


def _lowered_texts(config) -> list[str]:
  """The HLO text of `config`'s init and train step, built afresh (no kept programs)."""
  mesh = sharding.make_mesh(config)
  kept_programs.forget_programs()
  p = run_lib._programs(run_lib.program_key(config, mesh))
  state = ckpt_lib.abstract_like(p.abstract_state, p.state_shardings)
  batch = run_lib.abstract_batch(config, p.batch_sharding)
  return [p.make_state.lower().as_text(), p.train_step.lower(state, batch).as_text()]


def test_host_only_keys_enter_no_program():
  """The guard of HOST_ONLY_KEYS: with every one of them changed at once, both programs lower
  to the same HLO. A key that comes to enter a program (a schedule reading train.num_steps)
  fails here, instead of a kept program silently serving a run it does not match."""
  config = tiny_config(**{"augment.name": "ada", "loss.r1_gamma": 1.0,
                          "loss.lecam_weight": 0.1})
  other = tiny_config(**{"augment.name": "ada", "loss.r1_gamma": 1.0,
                         "loss.lecam_weight": 0.1})
  known = dict(config_lib.flat_items(config))
  assert run_lib.HOST_ONLY_KEYS <= set(known)  # no stale names
  for key in run_lib.HOST_ONLY_KEYS:
    parent, _, leaf = key.rpartition(".")
    config_lib.get(other, parent)[leaf] = _changed(known[key])
  assert _lowered_texts(config) == _lowered_texts(other)
  # And the comparison can fail: a key outside the set (G's learning rate) changes the step.
  other = tiny_config(**{"augment.name": "ada", "loss.r1_gamma": 1.0, "loss.lecam_weight": 0.1,
                         "optim.g_lr": 1e-3})
  assert _lowered_texts(config)[1] != _lowered_texts(other)[1]


def test_a_run_built_again_reuses_its_programs():
  config = tiny_config(**{"train.num_steps": 2})
  first = run_lib.build_run(config)
  config.train.num_steps, config.train.log_every = 6, 3  # host-only: the same programs
  again = run_lib.build_run(config)
  assert again.train_step is first.train_step and again.make_state is first.make_state
  # The kept programs were built from a copy: a config changed later does not reach their traces.
  config.optim.g_lr = 1e-3
  changed = run_lib.build_run(config)
  assert changed.train_step is not first.train_step
  assert run_lib.build_run(tiny_config(**{"seed": 5})).make_state is not first.make_state
  state = first.make_state()
  np.testing.assert_array_equal(jax.device_get(state.step), 0)
  kept_programs.forget_programs()
  assert run_lib.build_run(tiny_config(**{"train.num_steps": 2})).train_step is not first.train_step
