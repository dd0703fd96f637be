"""train.init_from: a new run starts from another run's G, D and EMA where the shapes match, and
from its own initial values elsewhere (optimizer, step, ADA, the arrays of another shape)."""

import json
import logging
import os
import re
import shutil

import flax
import jax
import numpy as np
import pytest

from jaxgan import checkpoint as ckpt_lib, checkpoint_checks
from jaxgan import init_from, run as run_lib, state as state_lib, trainer
from jaxgan.data import CATEGORY_NAMES
from jaxgan.config import ConfigError
from tests.conftest import tiny_config


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


def _read(run, path, model="dcgan", size=16, config=None, attributes=None):
  """read_donor as a run's first start calls it (with `config`'s class tables, when given)."""
  return init_from.read_donor(
      path, ckpt_lib.abstract_like(run.abstract_state, run.state_shardings), model, size,
      None if config is None else state_lib.class_axes(config), attributes)


def _leaves(tree):
  return {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_matching_arrays_are_copied_and_the_others_keep_their_initial_values(donor, caplog):
  workdir, trained = donor
  # Another class count: the class embeddings differ in shape (and G's projection, which takes
  # z and the embedding, does not); another seed, so initial values differ from the donor's.
  # Classes the donor did not have: its class tables are read (to be matched by name) and keep
  # their initial values, listed with why.
  config = tiny_config(**{"data.num_classes": 2, "seed": 7})
  run = run_lib.build_run(config)
  fresh = run.make_state()
  with caplog.at_level(logging.INFO):
    state = init_from.initialise_from(
        fresh, _read(run, workdir, config=config, attributes=[["category", ["a", "b"]]]),
        [["category", ["a", "b"]]])
  got, was = flax.serialization.to_state_dict(state), flax.serialization.to_state_dict(fresh)
  copied = kept = changed = 0
  for collection in init_from.COPIED:
    mine, initial, theirs = (_leaves(t[collection]) for t in (got, was, trained))
    for name, value in mine.items():
      if name in theirs and theirs[name].shape == value.shape:
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)
        copied += 1
        changed += not np.array_equal(value, initial[name])
      else:
        np.testing.assert_array_equal(value, initial[name], err_msg=name)
        kept += 1
  assert copied > 10 and kept >= 2  # G's and D's class embeddings at least
  # Copies, not initial values that happen to agree: most differ from this seed's.
  assert changed > copied // 2, (changed, copied)
  # The run's own: optimizer states, step, RNG key, ADA, LeCam.
  for key in ("g_opt_state", "d_opt_state", "step", "rng", "augment", "lecam"):
    for a, b in zip(jax.tree_util.tree_leaves(got[key]), jax.tree_util.tree_leaves(was[key])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=key)
  assert f"copied {copied} of {copied + kept} arrays" in caplog.text
  assert "keep their initial values" in caplog.text and (
      "g_params/class_embed/embedding (category: no class in common)") in caplog.text


def test_an_unconditional_run_from_a_conditional_one_is_told_why_layers_differ(donor, caplog):
  """G's input took z and a class embedding there, z alone here: its projection keeps its
  initial values, and the warning says that conditioning is why, not just the shapes."""
  config = tiny_config(**{"data.num_classes": 0})
  run = run_lib.build_run(config)
  fresh = run.make_state()
  with caplog.at_level(logging.WARNING):
    init_from.initialise_from(fresh, _read(run, donor[0], config=config, attributes=[]), [])
  assert re.search(r"keep their initial values \(e.g. g_params/project/kernel \(shape \(\d+, "
                   r"\d+\) there, .*\)\): that run was conditioned on category and this one is "
                   r"unconditional, so the layers that took its class embeddings differ$",
                   caplog.text, re.M), caplog.text


def _table(tree, collection, path):
  for key in (collection, *path.split("/")):
    tree = tree[key]
  return np.asarray(tree)


def test_class_embeddings_are_matched_by_class_name(donor, caplog):
  """A run on other classes (some of the donor's in another order, one new) starts each known
  class from the donor's row for it, a new one from its initial row; the count may differ."""
  workdir, trained = donor
  there = CATEGORY_NAMES[:3]
  here = [there[2], "Sandals", there[0], there[1]]
  config = tiny_config(**{"data.num_classes": 4, "seed": 7})
  run = run_lib.build_run(config)
  fresh = run.make_state()
  donated = _read(run, workdir, config=config, attributes=[["category", here]])
  with caplog.at_level(logging.INFO):
    state = init_from.initialise_from(fresh, donated, [["category", here]])
  got, was = flax.serialization.to_state_dict(state), flax.serialization.to_state_dict(fresh)
  tables = [("g_params", "class_embed/embedding"), ("ema_params", "class_embed/embedding"),
            ("d_params", "class_projection/embedding")]
  names = sorted(f"{c}/{p}" for c, p in tables)
  assert sorted(n for n in donated.tables if n.split("/")[0] in init_from.COPIED) == names
  assert [donated.sources[n] for n in names] == names
  for collection, path in tables:
    mine, initial, theirs = (_table(t, collection, path) for t in (got, was, trained))
    assert (len(mine), len(theirs)) == (4, 3) and mine.shape[1:] == theirs.shape[1:]
    for k, row in enumerate([2, None, 0, 1]):
      np.testing.assert_array_equal(mine[k], initial[k] if row is None else theirs[row])
    assert not np.array_equal(mine[0], initial[0])
  assert f"copied {donated.total} of {donated.total} arrays" in caplog.text
  assert "category's class embeddings matched by name: 3 of 4 classes from that run; at their " \
      "initial values: Sandals" in caplog.text
  # No class in common: every table keeps its initial values, and the run is warned.
  caplog.clear()
  with caplog.at_level(logging.INFO):
    state = init_from.initialise_from(fresh, donated, [["category", ["a", "b", "c", "d"]]])
  got = flax.serialization.to_state_dict(state)
  for collection, path in tables:
    np.testing.assert_array_equal(_table(got, collection, path), _table(was, collection, path))
  assert "g_params/class_embed/embedding (category: no class in common)" in caplog.text
  assert [r.levelname for r in caplog.records if "matched by name: 0 of 4" in r.message] == [
      "WARNING"]


def test_an_attributes_arrays_are_read_from_the_donors_attribute_of_the_same_column():
  """Where the donor keeps attribute j's arrays for this run's of attribute i: ClassEmbed's
  attr{j}, SpectralNorm's attr{j}_sn and its 'attr{j}/kernel/u' keys (slashes inside a key), or a
  one-attribute DCGAN's plain embedding (for attribute 0 only)."""
  keys = init_from._source_keys
  assert keys(["g_params", "class_embed", "attr0", "embedding"], 0, 1) == [
      ["g_params", "class_embed", "attr1", "embedding"]]
  assert keys(["g_params", "class_embed", "attr1", "embedding"], 1, 0) == [
      ["g_params", "class_embed", "attr0", "embedding"], ["g_params", "class_embed", "embedding"]]
  assert keys(["g_params", "class_embed", "embedding"], 0, 1) == [
      ["g_params", "class_embed", "attr1", "embedding"]]
  assert keys(["g_params", "class_embed", "embedding"], 0, 0)[0] == [
      "g_params", "class_embed", "embedding"]
  assert keys(["d_batch_stats", "projection", "attr1_sn", "attr1/kernel/u"], 1, 0) == [
      ["d_batch_stats", "projection", "attr0_sn", "attr0/kernel/u"]]
  assert init_from._attribute_of(["d_batch_stats", "projection", "attr1_sn", "x"]) == 1
  assert init_from._attribute_of(["g_params", "up0", "conv", "kernel"]) is None


def test_class_rows_match_attributes_by_name_then_position():
  theirs = [["gender", ["Men", "Women"]], ["articleType", ["Shirts", "Watches", "Bags"]]]
  rows = init_from.class_rows(theirs, [["articleType", ["Bags", "Shirts", "Heels"]],
                                       ["season", ["Summer"]]])
  assert [r.tolist() for r in rows] == [[2, 0, -1], [-1]]
  # A column of another name at the same position (a folder's 'class', a catalog's 'category').
  rows = init_from.class_rows([["category", ["x", "y"]]], [["class", ["y", "z"]]])
  assert [r.tolist() for r in rows] == [[1, -1]]
  assert init_from.class_rows(None, [["class", ["y"]]]) == [None]  # no names recorded there


def test_a_class_table_taken_whole_is_put_back_in_the_runs_sharding():
  """The tables are read replicated (another class count may not split as this run's do); one
  taken whole (the same classes, or no names recorded) stayed so, and with mesh.fsdp > 1 the
  jitted step refused the state ("Sharding passed to jit does not match")."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

  mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  split, replicated = NamedSharding(mesh, P(None, "fsdp")), NamedSharding(mesh, P())
  mine = jax.device_put(np.zeros((3, 4), np.float32), split)
  theirs = jax.device_put(np.arange(12, dtype=np.float32).reshape(3, 4), replicated)
  for rows in (np.arange(3), None, np.array([2, -1, 0])):
    picked, _ = init_from._pick_rows(mine, theirs, rows, 0)
    assert picked.sharding == split, rows
  np.testing.assert_array_equal(np.asarray(picked)[[0, 2]], np.asarray(theirs)[[2, 0]])


def test_the_class_tables_are_found_for_every_attribute_and_model():
  def axes(**overrides):
    found = state_lib.class_axes(tiny_config(**overrides))
    return {name: where for name, where in found.items()
            if name.split("/")[0] in init_from.COPIED}

  assert axes(**{"data.extra_num_classes": "2"}) == {
      f"{c}/{p}/attr{i}/embedding": (i, 0) for i in (0, 1)
      for c, p in [("g_params", "class_embed"), ("ema_params", "class_embed"),
                   ("d_params", "class_projection")]}
  assert axes(**{"model.name": "resnet", "model.embed_dim": 0}) == {
      "g_params/shared/attr0/embedding": (0, 0), "ema_params/shared/attr0/embedding": (0, 0),
      "d_params/projection/attr0/kernel": (0, 0)}
  assert axes(**{"data.num_classes": 0}) == {}


def test_a_run_from_another_runs_weights_trains_and_resumes_without_it(donor, tmp_path, caplog):
  workdir, trained = donor
  # Learning rates too small to move a float32 weight: the new run's step-2 weights are the ones
  # it started from, which must be the donor's (its own seed's are the donor's initial ones).
  config = tiny_config(**{"train.num_steps": 2, "train.tensorboard": False,
                          "train.init_from": workdir, "optim.g_lr": 1e-30, "optim.d_lr": 1e-30})
  run_dir = str(tmp_path / "new")
  with caplog.at_level(logging.INFO):
    trainer.train_and_evaluate(config, run_dir)
  # The same model: all of them.
  assert re.search(r"train.init_from: copied (\d+) of \1 arrays of G, D and the EMA from "
                   + re.escape(os.path.join(workdir, "checkpoints")) + " step 2$", caplog.text,
                   re.M), caplog.text[-3000:]
  run = run_lib.build_run(config)
  reader = ckpt_lib.Checkpointer(os.path.join(run_dir, "checkpoints"), read_only=True)
  state, _ = reader.restore(2, ckpt_lib.abstract_like(run.abstract_state, run.state_shardings))
  reader.close()
  for collection in ("g_params", "d_params"):
    for name, value in _leaves(getattr(state, collection)).items():
      np.testing.assert_array_equal(value, _leaves(trained[collection])[name], err_msg=name)
  # Resumed (more steps) after the donor is gone: its own checkpoint is what it reads, and a
  # command line naming another donor (or none) changes nothing, config.json included.
  moved = str(tmp_path / "moved")
  shutil.move(workdir, moved)
  try:
    # The first start's command line again (which named the workdir; the step folder is
    # recorded): nothing to warn about.
    config.train.num_steps = 3
    caplog.clear()
    with caplog.at_level(logging.INFO):
      trainer.train_and_evaluate(config, run_dir)
    assert "first start only" not in caplog.text
    changes = [r.getMessage() for r in caplog.records if "config changes" in r.getMessage()]
    assert changes and not any("init_from" in m for m in changes), changes  # num_steps only
    config.train.num_steps = 4
    config.train.init_from = str(tmp_path / "another")
    with caplog.at_level(logging.WARNING):
      trainer.train_and_evaluate(config, run_dir)
  finally:
    shutil.move(moved, workdir)
  assert sorted(os.listdir(os.path.join(run_dir, "checkpoints"))) == ["2", "3", "4"]
  assert (f"train.init_from is read at a run's first start only: this run started from "
          f"{workdir}/checkpoints/2, which its config.json keeps (not {tmp_path / 'another'})"
          ) in caplog.text
  # The step folder read, not the workdir named (whose latest step moves on while it trains).
  with open(os.path.join(run_dir, "config.json")) as f:
    assert json.load(f)["train"]["init_from"] == os.path.join(workdir, "checkpoints", "2")


def test_a_resnet_starts_from_a_resnet_spectral_norm_state_included(tmp_path):
  """SpectralNorm keeps its state under keys with slashes ('project/kernel/u'): split at them,
  the restore target named paths the checkpoint lacks, orbax handed back its placeholders, and
  the run failed at its first step (ShapeDtypeStruct is not a valid JAX type)."""
  config = tiny_config(**{"model.name": "resnet", "data.image_size": 32, "model.max_width": 16,
                          "model.shared_dim": 4})
  run = run_lib.build_run(config)
  # A state of the init's layout with made-up values (compiling a ResNet's init took ~7 s of the
  # suite's CPU), and the donor: a checkpoint of it with every float changed (no ResNet step
  # compiled for it either), written as a run writes its checkpoints.
  rng = np.random.default_rng(0)
  fresh = jax.tree_util.tree_map(
      lambda a: jax.numpy.asarray(rng.standard_normal(a.shape).astype(a.dtype)
                                  if jax.numpy.issubdtype(a.dtype, jax.numpy.floating)
                                  else np.zeros(a.shape, a.dtype)), run.abstract_state)
  trained = jax.tree_util.tree_map(
      lambda x: x + 1 if jax.numpy.issubdtype(x.dtype, jax.numpy.floating) else x, fresh)
  attributes = [["category", CATEGORY_NAMES[:3]]]
  donor_dir = str(tmp_path / "donor")
  writer = ckpt_lib.Checkpointer(os.path.join(donor_dir, "checkpoints"))
  assert writer.save(1, trained, {"config": config.to_dict(), "attributes": attributes,
                                  "class_names": CATEGORY_NAMES[:3]})
  writer.close()
  got = init_from.initialise_from(fresh, _read(run, donor_dir, "resnet", 32, config, attributes),
                                  attributes)
  for collection in ("d_batch_stats", "g_batch_stats", "d_params"):
    mine, theirs = _leaves(getattr(got, collection)), _leaves(getattr(trained, collection))
    assert mine.keys() == theirs.keys()
    for name, value in mine.items():
      np.testing.assert_array_equal(value, theirs[name], err_msg=f"{collection}/{name}")
  assert any(name.endswith("kernel/u") for name in _leaves(got.d_batch_stats))
  # Arrays, not placeholders, everywhere: what the jitted step takes (a second run's training,
  # left out for the suite's time, failed on exactly these).
  assert all(isinstance(leaf, jax.Array) for leaf in jax.tree_util.tree_leaves(got))
  # No class in common: D's projection table keeps its initial rows, and its spectral-norm state
  # (u, sigma) stays with it rather than the donor's estimate for another table.
  other = [["category", ["x", "y", "z"]]]
  got = init_from.initialise_from(fresh, _read(run, donor_dir, "resnet", 32, config, other), other)
  mine, initial, theirs = (_leaves(s.d_batch_stats) for s in (got, fresh, trained))
  projection = [name for name in mine if name.startswith("projection/attr0_sn/")]
  assert len(projection) == 2 and len(mine) > 10
  for name, value in mine.items():
    np.testing.assert_array_equal(value, (initial if name in projection else theirs)[name], name)


def test_a_step_folder_names_the_step_read(donor, tmp_path):
  """A workdir (or its checkpoints folder) gives its latest step; one of its step folders, that
  step (an earlier snapshot, as StyleGAN2-ADA's --resume takes any network pickle)."""
  path = str(tmp_path / "two steps")
  shutil.copytree(donor[0], path)
  folders = os.path.join(path, "checkpoints")
  shutil.copytree(os.path.join(folders, "2"), os.path.join(folders, "4"))
  run = run_lib.build_run(tiny_config())
  assert _read(run, path).step == _read(run, folders).step == 4
  got = _read(run, os.path.join(folders, "2") + os.sep)
  assert (got.step, got.folder) == (2, os.path.join(folders, "2"))
  with pytest.raises(ConfigError, match=r"no checkpoint in '.*/checkpoints/3'; give the workdir"):
    _read(run, os.path.join(folders, "3"))
  os.makedirs(os.path.join(folders, "6", "state"))  # a step cut short: refused, not skipped
  with pytest.raises(ConfigError, match=r"checkpoints step 6 cannot be read \(KeyError: .*meta"):
    _read(run, os.path.join(folders, "6"))


def test_a_resume_naming_the_donors_workdir_after_a_start_from_its_step_folder_is_warned(
    donor, tmp_path, caplog):
  """The first start named step 2 of a run whose latest step is 4: a resume naming that run's
  workdir (its step 4, were it read) keeps step 2, and says so; it was taken for the first
  start's own command line and passed in silence."""
  path = str(tmp_path / "donor")
  shutil.copytree(donor[0], path)
  folders = os.path.join(path, "checkpoints")
  shutil.copytree(os.path.join(folders, "2"), os.path.join(folders, "4"))
  config = tiny_config(**{"train.num_steps": 1, "train.tensorboard": False,
                          "train.init_from": os.path.join(folders, "2")})
  run_dir = str(tmp_path / "new")
  trainer.train_and_evaluate(config, run_dir)
  config.train.num_steps, config.train.init_from = 2, path
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(config, run_dir)
  assert (f"train.init_from is read at a run's first start only: this run started from "
          f"{folders}/2, which its config.json keeps (not {path})") in caplog.text


def test_a_first_start_stopped_before_its_first_checkpoint_reads_the_same_donor_step_again(
    donor, tmp_path, caplog):
  """A start stopped before its first checkpoint is started over: it read the donor's latest
  step again, by then a later one (the donor trains on), and config.json's record of the step
  read changed in silence; an uninterrupted run would have read the first."""
  path = str(tmp_path / "donor")
  shutil.copytree(donor[0], path)
  folders = os.path.join(path, "checkpoints")
  config = tiny_config(**{"train.num_steps": 1, "train.tensorboard": False,
                          "train.init_from": path})
  run_dir = str(tmp_path / "new")

  def recorded():
    with open(os.path.join(run_dir, "config.json")) as f:
      return json.load(f)["train"]["init_from"]

  trainer.train_and_evaluate(config, run_dir)
  assert recorded() == os.path.join(folders, "2")
  shutil.rmtree(os.path.join(run_dir, "checkpoints"))  # as a stop before the first one leaves it
  shutil.copytree(os.path.join(folders, "2"), os.path.join(folders, "4"))  # the donor trained on
  os.symlink(path, tmp_path / "link")
  # Its workdir, its checkpoints folder, or its workdir through a link: the same run.
  for named in (path, folders, str(tmp_path / "link")):
    config.train.init_from = named
    caplog.clear()
    with caplog.at_level(logging.INFO):
      trainer.train_and_evaluate(config, run_dir)
    assert recorded() == os.path.join(folders, "2")
    assert (f"train.init_from: {folders}/2 again, the step folder this run's first start read"
            in caplog.text)
    assert re.search(r"train.init_from: copied .* from " + re.escape(folders) + " step 2$",
                     caplog.text, re.M)
    shutil.rmtree(os.path.join(run_dir, "checkpoints"))
  # A step folder named is read as named; the recorded step since removed: the latest, said.
  config.train.init_from = os.path.join(folders, "4")
  trainer.train_and_evaluate(config, run_dir)
  assert recorded() == os.path.join(folders, "4")
  shutil.rmtree(os.path.join(run_dir, "checkpoints"))
  shutil.copytree(os.path.join(folders, "4"), os.path.join(folders, "6"))
  shutil.rmtree(os.path.join(folders, "4"))
  config.train.init_from = path
  with caplog.at_level(logging.WARNING):
    trainer.train_and_evaluate(config, run_dir)
  assert recorded() == os.path.join(folders, "6")
  assert (f"train.init_from: step folder {folders}/4, which this run's first start read (its "
          f"config.json records it), is gone: reading {path}'s latest step instead"
          ) in caplog.text


def test_only_the_recorded_steps_own_run_is_read_at_its_recorded_step(donor, tmp_path):
  """The recorded step's folder of steps is what must be named again: a workdir above a copied
  folder of another run's steps is its own run (its checkpoints/), not the recorded one's."""
  from jaxgan import startup

  top = tmp_path / "b"
  shutil.copytree(os.path.join(donor[0], "checkpoints"), top / "exported")  # run A's steps
  shutil.copytree(os.path.join(donor[0], "checkpoints"), top / "checkpoints")  # run B's
  (tmp_path / "w").mkdir()
  config = tiny_config(**{"train.init_from": str(top / "exported" / "2")})
  (tmp_path / "w" / "config.json").write_text(config.to_json())
  assert startup._donor_path(str(top), str(tmp_path / "w")) == str(top)
  assert startup._donor_path(str(top / "exported"), str(tmp_path / "w")) == str(
      top / "exported" / "2")
  assert startup._donor_path(str(tmp_path / "none"), str(tmp_path / "w")) == str(tmp_path / "none")


@pytest.mark.parametrize("refusal", ["missing", "uri", "another model", "another size",
                                     "damaged"])
def test_a_refused_donor_is_one_line_and_leaves_no_workdir(donor, tmp_path, refusal):
  """Refused as the run starts, before its workdir holds anything. Damage to the donor's array
  files (orbax's carry no checksum) would otherwise start the run from corrupt weights without a
  word: its digests find it. (The damage is made in the digest, not the files: ocdbt packs every
  array into shared files, so a flipped byte may land in one init_from does not read.)"""
  overrides, path = {}, donor[0]
  if refusal == "missing":
    path, match = str(tmp_path / "nothing"), r"no checkpoint in '.*nothing'; give the workdir of"
  elif refusal == "uri":
    path, match = "gs://bucket/run", r"'gs://bucket/run': URIs are not supported"
  elif refusal == "another model":
    overrides = {"model.name": "resnet", "data.image_size": 32}
    match = (r"step 2 is a 'dcgan' model of 16x16 images, this run's a 'resnet' of 32x32: their "
             r"layers do not correspond$")
  elif refusal == "another size":  # layers are named by position
    overrides, match = {"data.image_size": 32}, r"this run's a 'dcgan' of 32x32"
  else:
    path = str(tmp_path / "damaged")
    shutil.copytree(donor[0], path)
    meta_file = os.path.join(path, "checkpoints", "2", "meta", "metadata")
    with open(meta_file) as f:
      meta = json.load(f)
    meta[ckpt_lib.DIGEST_KEY]["g_params/project/kernel"] += 1
    # The meta's own digest made again: the arrays' digest is what this case checks.
    meta[ckpt_lib.META_DIGEST_KEY] = checkpoint_checks.meta_digest(meta)
    with open(meta_file, "w") as f:
      json.dump(meta, f)
    match = (r"step 2 cannot be read \(CheckpointError: 1 arrays read back other values than "
             r"were written \(e.g. g_params/project/kernel\)")
  config = tiny_config(**{"train.init_from": path, **overrides})
  with pytest.raises(ConfigError, match=r"^config key train.init_from: .*" + match):
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_nothing_alike_is_refused_and_every_leaf_is_planned():
  state = {c: {"layer": {"kernel": jax.ShapeDtypeStruct((2, 3), np.float32)}}
           for c in init_from.COPIED}
  saved = {f"{c}/layer/kernel": ((2, 4), "float32") for c in init_from.COPIED}
  target, kept, total, _ = init_from.plan(saved, state)
  assert (target, total) == ({}, 5) and kept[0] == (
      "g_params/layer/kernel (shape (2, 4) there, (2, 3) here)")
  saved["d_params/layer/kernel"] = ((2, 3), "float32")
  target, kept, total, _ = init_from.plan(saved, state)
  assert list(target) == ["d_params"] and len(kept) == 4


TWO_PROCESSES = r"""
import json
from jaxgan import checkpoint as ckpt_lib, init_from, run as run_lib
from jaxgan.config import ConfigError
from tests.conftest import tiny_config
run = run_lib.build_run(tiny_config())
abstract = ckpt_lib.abstract_like(run.abstract_state, run.state_shardings)
try:  # each process is given its own view of the donor's folder
  donor = init_from.read_donor(sys.argv[3 + me], abstract, "dcgan", 16)
  print(json.dumps({"step": donor.step}))
except ConfigError as e:
  print(json.dumps({"error": str(e)}))
"""


def test_every_process_reads_the_same_donor_step(donor, tmp_path):
  """A host whose view of the donor's folder lags (a run still writing it, a slow network file
  system) must not read another step than the others, which would leave the replicas of one
  array disagreeing; nor hang the others when its read fails."""
  from tests.conftest import JOIN_TWO_PROCESSES, run_two_processes

  newer, lagging = str(tmp_path / "newer"), str(tmp_path / "lagging")
  shutil.copytree(donor[0], newer)
  shutil.copytree(donor[0], lagging)
  shutil.copytree(os.path.join(newer, "checkpoints", "2"), os.path.join(newer, "checkpoints", "4"))
  outs, _ = run_two_processes(JOIN_TWO_PROCESSES + TWO_PROCESSES, newer, lagging, timeout=180)
  errors = [out["error"].replace(path, "DONOR") for out, path in zip(outs, (newer, lagging))]
  assert errors[0] == errors[1] == (
      "config key train.init_from: DONOR/checkpoints step 4 cannot be read (CheckpointError: "
      "DONOR/checkpoints/4 is not visible on every process); give another of its steps "
      "(DONOR/checkpoints/STEP) or another run"), outs
  outs, _ = run_two_processes(JOIN_TWO_PROCESSES + TWO_PROCESSES, lagging, lagging, timeout=180)
  assert outs == [{"step": 2}, {"step": 2}]


def test_a_donor_that_diverged_is_refused_naming_its_step(donor, monkeypatch):
  """Non-finite donor weights would have every step of the new run skipped, and the run stop
  blaming its learning rates: the start says what is wrong with the donor instead."""
  restore = init_from._restore

  def diverged(*args, **kwargs):
    arrays = restore(*args, **kwargs)
    kernel = arrays["g_params"]["project"]["kernel"]
    arrays["g_params"]["project"]["kernel"] = kernel.at[0, 0].set(np.nan)
    return arrays

  monkeypatch.setattr(init_from, "_restore", diverged)
  config = tiny_config()
  with pytest.raises(ConfigError, match=r"^config key train.init_from: .* step 2 holds "
                     r"non-finite values \(g_params/project/kernel\); give an "
                     r"earlier step of it"):
    _read(run_lib.build_run(config), donor[0], config=config)
