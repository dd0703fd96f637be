"""train.init_from: a new run starts from another run's G, D and EMA where the shapes match, and
from its own initial values elsewhere (optimizer, step, ADA, the arrays of another shape)."""

import logging
import os
import re
import shutil

import flax
import jax
import numpy as np
import pytest

from jaxgan import checkpoint as ckpt_lib
from jaxgan import init_from, run as run_lib, trainer
from jaxgan.config import ConfigError
from tests.conftest import flip_a_bit, tiny_config


@pytest.fixture(scope="module")
def donor(tmp_path_factory):
  """A trained run (3 classes, 2 steps) and its final state."""
  workdir = str(tmp_path_factory.mktemp("donor"))
  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False})
  trainer.train_and_evaluate(config, workdir)
  run = run_lib.build_run(config)
  reader = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  state, _ = reader.restore(2, ckpt_lib.abstract_like(run.abstract_state, run.state_shardings))
  reader.close()
  return workdir, flax.serialization.to_state_dict(state)


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_matching_arrays_are_copied_and_the_others_keep_their_initial_values(donor, caplog):
  workdir, trained = donor
  # Another class count: the class embeddings differ in shape (and G's projection, which takes
  # z and the embedding, does not); another seed, so initial values differ from the donor's.
  config = tiny_config(**{"data.num_classes": 2, "seed": 7})
  run = run_lib.build_run(config)
  fresh = jax.jit(run.init, out_shardings=run.state_shardings)()
  with caplog.at_level(logging.INFO):
    state = init_from.initialise_from(fresh, workdir, ["a", "b"], "dcgan", 16)
  got, was, theirs = (flax.serialization.to_state_dict(state),
                      flax.serialization.to_state_dict(fresh), trained)
  copied = kept = changed = 0
  for collection in init_from.COPIED:
    mine, initial, donor_leaves = (_leaves(t[collection]) for t in (got, was, theirs))
    for name, value in mine.items():
      if name in donor_leaves and donor_leaves[name].shape == value.shape:
        np.testing.assert_array_equal(value, donor_leaves[name], err_msg=name)
        copied += 1
        changed += not np.array_equal(value, initial[name])
      else:
        np.testing.assert_array_equal(value, initial[name], err_msg=name)
        kept += 1
  assert copied > 10 and kept >= 2  # G's and D's class embeddings at least
  # Copies, not initial values that happen to agree: most differ from this seed's.
  assert changed > copied // 2, (changed, copied)
  # The run's own: optimizer states, step, RNG key, ADA.
  for key in ("g_opt_state", "d_opt_state", "step", "rng", "augment", "lecam"):
    for a, b in zip(jax.tree_util.tree_leaves(got[key]), jax.tree_util.tree_leaves(was[key])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=key)
  assert f"copied {copied} of {copied + kept} arrays" in caplog.text
  assert "keep their initial values" in caplog.text and "shape (3, 4) there, (2, 4) here" in \
      caplog.text


def test_a_run_from_another_runs_weights_trains_and_resumes_without_it(donor, tmp_path, caplog):
  workdir, _ = donor
  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False,
                          "train.init_from": workdir})
  run_dir = str(tmp_path / "new")
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(config, run_dir)
  # The same model: all of them.
  assert re.search(r"train.init_from: copied (\d+) of \1 arrays of G, D and the EMA from "
                   + re.escape(os.path.join(workdir, "checkpoints")) + " step 2$", caplog.text,
                   re.M), caplog.text[-3000:]
  # Resumed (more steps) after the donor is gone: its own checkpoint is what it reads.
  moved = str(tmp_path / "moved")
  shutil.move(workdir, moved)
  try:
    config.train.num_steps = 4
    trainer.train_and_evaluate(config, run_dir)
  finally:
    shutil.move(moved, workdir)
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "4"]


def test_a_missing_or_foreign_init_from_is_a_config_error(donor, tmp_path):
  with pytest.raises(ConfigError, match=r"^config key train.init_from: no checkpoint in "):
    trainer.train_and_evaluate(tiny_config(**{"train.init_from": str(tmp_path / "nothing")}),
                               str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()  # refused before anything was written
  # Another model family: nothing to copy.
  config = tiny_config(**{"model.name": "resnet", "data.image_size": 32})
  run = run_lib.build_run(config)
  fresh = jax.jit(run.init, out_shardings=run.state_shardings)()
  with pytest.raises(ConfigError, match=r"step 2 is a 'dcgan' model of 16x16 images, this "
                     r"run's a 'resnet' of 32x32: their layers do not correspond$"):
    init_from.initialise_from(fresh, donor[0], ["a", "b", "c"], "resnet", 32)
  # Layers are named by position: another image size is refused too.
  with pytest.raises(ConfigError, match=r"this run's a 'dcgan' of 32x32"):
    init_from.initialise_from(fresh, donor[0], ["a", "b", "c"], "dcgan", 32)


def test_nothing_alike_is_refused_and_every_leaf_is_planned():
  state = {c: {"layer": {"kernel": jax.ShapeDtypeStruct((2, 3), np.float32)}}
           for c in init_from.COPIED}
  saved = {f"{c}/layer/kernel": ((2, 4), "float32") for c in init_from.COPIED}
  target, kept, total = init_from.plan(saved, state)
  assert (target, total) == ({}, 5) and kept[0] == (
      "g_params/layer/kernel (shape (2, 4) there, (2, 3) here)")
  saved["d_params/layer/kernel"] = ((2, 3), "float32")
  target, kept, total = init_from.plan(saved, state)
  assert list(target) == ["d_params"] and len(kept) == 4


def test_a_damaged_donor_is_refused(tmp_path):
  """A flipped bit in the donor's array files (orbax's carry no checksum) would start the run from
  corrupt weights without a word: its digests find it."""
  import jax.numpy as jnp

  directory = str(tmp_path / "checkpoints")
  weights = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
  state = {c: {"w": jnp.asarray(weights) if c == "g_params" else jnp.zeros(2)}
           for c in init_from.COPIED}
  writer = ckpt_lib.Checkpointer(directory, async_save=False)
  writer.save(1, state, {"config": {"model": {"name": "dcgan"}, "data": {"image_size": 16}}})
  writer.close()
  fresh = jax.tree_util.tree_map(jnp.ones_like, state)
  copied = init_from.initialise_from(fresh, str(tmp_path), [], "dcgan", 16)
  np.testing.assert_array_equal(np.asarray(copied["g_params"]["w"]), weights)
  flip_a_bit(directory, 1)
  with pytest.raises(ConfigError, match=r"step 1 is damaged: 1 arrays read back other values "
                     r"than were written \(e.g. g_params/w\)"):
    init_from.initialise_from(fresh, str(tmp_path), [], "dcgan", 16)
