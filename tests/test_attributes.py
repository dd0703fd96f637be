"""Multi-attribute conditioning end to end: prepare with two label columns, train, generate."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from jaxgan import config as config_lib
from jaxgan import prepare as prepare_cli
from jaxgan.config import validation as config_validation
from jaxgan.data import build_source, prepared
from jaxgan.data.synthetic import draw_product
from tests.conftest import tiny_config

TYPES = ["Tshirts", "Watches", "Shoes"]
COLOURS = ["Navy Blue", "Black"]
# 12 rows covering every (type, colour) pair, plus one row of a colour seen once.
ROWS = [(i, TYPES[i % 3], COLOURS[i // 3 % 2]) for i in range(12)] + [(12, "Tshirts", "Purple")]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
  """A manifest CSV (id, articleType, baseColour) and one drawn product PNG per row."""
  root = tmp_path_factory.mktemp("catalog")
  os.makedirs(root / "images")
  for i, kind, _ in ROWS:
    image = draw_product(TYPES.index(kind), 20, np.random.default_rng(i))
    Image.fromarray(image).save(root / "images" / f"{i}.png")
  lines = ["id,articleType,baseColour"] + [f"{i},{kind},{colour}" for i, kind, colour in ROWS]
  (root / "styles.csv").write_text("\n".join(lines) + "\n")
  return root


def _prepare(catalog, out, *columns):
  argv = ["--images", str(catalog / "images"), "--manifest", str(catalog / "styles.csv"),
          "--image-pattern", "{id}.png", "--image-size", "16", "--min-class-count", "2",
          "--rare-classes", "drop", "--workers", "1", "--out", str(out)]
  for column in columns:
    argv += ["--label-column", column]
  return prepare_cli.prepare(prepare_cli.parse_args(argv))


@pytest.fixture(scope="module")
def two_columns(catalog):
  out = catalog / "prepared2"
  _prepare(catalog, out, "articleType", "baseColour")
  return out


def _hashes(path):
  return {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in sorted(os.listdir(path))}


def test_prepare_two_columns(catalog, two_columns):
  info = json.loads((two_columns / "dataset_info.json").read_text())
  assert info["num_examples"] == 12  # the one 'Purple' row is dropped by baseColour's rule
  assert [s["reason"] for s in info["skipped"]] == ["baseColour 'Purple' has fewer than 2 images "
                                                    "(dropped)"]
  attributes = [(a["column"], a["class_names"]) for a in info["attributes"]]
  assert attributes == [("articleType", ["Shoes", "Tshirts", "Watches"]),
                        ("baseColour", ["Black", "Navy Blue"])]
  assert info["class_names"] == ["Shoes", "Tshirts", "Watches"]  # the first attribute
  assert info["class_counts"] == {"Shoes": 4, "Tshirts": 4, "Watches": 4}
  assert info["attributes"][1]["class_counts"] == {"Black": 6, "Navy Blue": 6}
  images, labels, _ = prepared.read_prepared(str(two_columns))
  assert images.shape == (12, 16, 16, 3) and labels.shape == (12, 2) and labels.dtype == np.int32
  want = [[attributes[0][1].index(k), attributes[1][1].index(c)] for _, k, c in ROWS[:12]]
  np.testing.assert_array_equal(labels, want)
  again = catalog / "prepared2-again"
  _prepare(catalog, again, "articleType", "baseColour")
  assert _hashes(two_columns) == _hashes(again)  # deterministic
  # Also across processes: each record in canonical form (its feature map in key order), where
  # the map's order was a per-process hash table's (the same in one process, as above).
  import tensorflow as tf
  for shard in info["shards"]:
    for record in tf.data.TFRecordDataset(str(two_columns / shard)).as_numpy_iterator():
      assert record == tf.train.Example.FromString(record).SerializeToString(deterministic=True)
  one = _prepare(catalog, catalog / "prepared1", "articleType")
  assert "attributes" not in one and one["num_examples"] == 13  # one column: today's format
  assert prepared.read_prepared(str(catalog / "prepared1"))[1].shape == (13,)


def test_the_input_benchmark_reads_a_set_of_two_attributes(two_columns):
  from jaxgan import throughput  # was refused: labels of 2 attributes for 1 name list

  row, = throughput.benchmark_input(prepared_dir=str(two_columns), batch_size=4, batches=2)
  assert row["input"] == "prepared" and row["images"] == 12 and row["images_per_sec"] > 0


def test_config_errors_name_the_flags(two_columns):
  base = {"data.source": "prepared", "data.path": str(two_columns), "data.num_classes": 3}
  for value, message in [("x", r"data.extra_num_classes: 'x' in 'x' is not a positive integer"),
                         ("2,0", r"data.extra_num_classes: '0' in '2,0' is not a positive")]:
    with pytest.raises(config_lib.ConfigError, match=message):
      config_validation.validate(tiny_config(**{**base, "data.extra_num_classes": value}), 1)
  with pytest.raises(config_lib.ConfigError, match="data.extra_num_classes: '2' needs "
                                                   "data.num_classes > 0"):
    config_validation.validate(tiny_config(**{**base, "data.num_classes": 0,
                                              "data.extra_num_classes": "2"}), 1)
  with pytest.raises(config_lib.ConfigError, match="the 'synthetic' source serves one attribute"):
    config_validation.validate(tiny_config(**{"data.extra_num_classes": "2"}), 1)
  fix = "set --config.data.num_classes=3 --config.data.extra_num_classes=2 "
  for extra in ("", "5", "2,2"):
    with pytest.raises(config_lib.ConfigError) as info:
      config_validation.validate(tiny_config(**{**base, "data.extra_num_classes": extra}), 1)
    message = str(info.value)
    assert message.startswith("config key data.extra_num_classes: ") and fix in message
    assert "(articleType: 3 classes, baseColour: 2 classes)" in message and "\n" not in message
  with pytest.raises(config_lib.ConfigError,
                     match="data.num_classes: .*set --config.data.num_classes=3 "
                           "--config.data.extra_num_classes=2"):
    config_validation.validate(tiny_config(**{**base, "data.num_classes": 4,
                                              "data.extra_num_classes": "2"}), 1)
  config_validation.validate(tiny_config(**{**base, "data.extra_num_classes": "2"}), 1)
  # Unconditional is fine:
  config_validation.validate(tiny_config(**{**base, "data.num_classes": 0}), 1)


def test_manifest_source_with_label_columns(catalog):
  config = tiny_config(**{"data.source": "manifest", "data.path": str(catalog / "styles.csv"),
                          "data.image_dir": str(catalog / "images"),
                          "data.image_pattern": "{id}.png",
                          "data.label_column": "articleType",
                          "data.label_columns": "baseColour", "data.num_classes": 3,
                          "data.extra_num_classes": "3", "data.workers": 1})
  config_validation.validate(config, 1)
  source = build_source(config)
  assert source.labels.shape == (13, 2) and source.class_names == ["Shoes", "Tshirts", "Watches"]
  assert source.attribute_names[1] == ("baseColour", ["Black", "Navy Blue", "Purple"])
  assert next(source.batches(4, 0))["label"].shape == (4, 2)
  with config.unlocked():
    config.data.extra_num_classes = "3,2"
  with pytest.raises(config_lib.ConfigError, match="data.label_columns names 1"):
    config_validation.validate(config, 1)


def test_train_and_generate_a_combination(two_columns, tmp_path):
  from jaxgan import generate, trainer
  from jaxgan import saved_run

  workdir = str(tmp_path / "w")
  config = tiny_config(**{"data.source": "prepared", "data.path": str(two_columns),
                          "data.num_classes": 3, "data.extra_num_classes": "2",
                          "train.num_steps": 2, "train.n_critic": 2, "train.tensorboard": False})
  state = trainer.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  _, _, _, meta = saved_run.load_checkpoint(workdir)
  assert meta["attributes"] == [["articleType", ["Shoes", "Tshirts", "Watches"]],
                                ["baseColour", ["Black", "Navy Blue"]]]
  # The data's label mix, for generate's standing statistics: the counts of its (type, colour)
  # rows, the Purple row dropped with its rare colour.
  from jaxgan import sampling
  assert meta["label_counts"] == sampling.label_counts(build_source(config).labels)
  assert sum(meta["label_counts"]["counts"]) == 12 and len(meta["label_counts"]["rows"]) == 6
  drawn = []
  real_make = sampling.make_ema_statistics

  def recording(config, generator, label_counts=None, **kw):
    drawn.append(label_counts)
    return real_make(config, generator, label_counts, **kw)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sampling, "make_ema_statistics", recording)
    generate.generate(workdir, 2, str(tmp_path / "mix.png"))
  assert drawn == [meta["label_counts"]]
  grid = Image.open(os.path.join(workdir, "samples", "step_0000002.png"))
  assert grid.size == (2 * 18 + 2, 3 * 18 + 2)  # one row per articleType
  out = generate.generate(workdir, 4, str(tmp_path / "navy.png"),
                          label=["articleType=Tshirts", "baseColour=Navy Blue"])
  assert Image.open(out[0]).size == (2 * 18 + 2, 2 * 18 + 2)
  again = generate.generate(workdir, 4, str(tmp_path / "again.png"),
                            label=["articleType=Tshirts", "baseColour=Navy Blue"])
  assert open(out[0], "rb").read() == open(again[0], "rb").read()
  black = generate.generate(workdir, 4, str(tmp_path / "black.png"),
                            label=["Tshirts", "baseColour=Black"])
  assert open(out[0], "rb").read() != open(black[0], "rb").read()
  generate.generate(workdir, 3, str(tmp_path / "random_colour.png"))  # colours drawn from the seed
  # Single PNGs (an FID set): the data's combinations that match --label, drawn by their counts.
  # In this mix Watches (2) never come in Black (0): the draws never pair them, and asking for
  # that combination is refused.
  mix = {"rows": [[0, 0], [1, 0], [2, 1], [1, 1]], "counts": [3, 1, 4, 2]}
  captured, real_sample, real_load = [], sampling.sample_in_chunks, saved_run.load_checkpoint

  def capturing(sampler, params, statistics, z, labels, *args):
    captured.append(np.asarray(labels))
    return real_sample(sampler, params, statistics, z, labels, *args)

  def with_mix(*args, **kwargs):
    config, step, state, meta = real_load(*args, **kwargs)
    return config, step, state, {**meta, "label_counts": mix}

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(sampling, "sample_in_chunks", capturing)
    patch.setattr(saved_run, "load_checkpoint", with_mix)
    generate.generate(workdir, 24, str(tmp_path / "black") + "/", label="baseColour=Black")
    with pytest.raises(ValueError, match="no training image has this combination"):
      generate.generate(workdir, 2, str(tmp_path / "none") + "/",
                        label=["Watches", "baseColour=Black"])
  assert captured[0].shape == (24, 2)
  assert {tuple(r) for r in captured[0]} == {(0, 0), (1, 0)}  # both Black rows, nothing else
  rows = generate.generate(workdir, 1, str(tmp_path / "i.png"), interpolate=3,
                           label="baseColour=Black")
  assert Image.open(rows[0]).size == (3 * 18 + 2, 3 * 18 + 2)
  with pytest.raises(ValueError,
                     match=r"not a class of baseColour; choose one of: Black, Navy Blue "
                                       r"\(or an index 0..1\)$"):
    generate.generate(workdir, 1, str(tmp_path / "x.png"), label="baseColour=Purple")
  with pytest.raises(ValueError, match=r"no attribute 'colour'; choose one of: articleType, "
                                       r"baseColour$"):
    generate.generate(workdir, 1, str(tmp_path / "x.png"), label=["colour=Black"])
  with pytest.raises(ValueError, match=r"'Boots' is not a class of this model; choose one of: "
                                       r"Shoes, Tshirts, Watches"):
    generate.generate(workdir, 1, str(tmp_path / "x.png"), label="Boots")


def test_evaluator_draws_fake_label_rows_from_the_reals():
  import jax.numpy as jnp

  from jaxgan import evaluator

  seen = []

  def sampler(params, stats, z, labels):
    seen.append(np.asarray(labels))
    return jnp.zeros((len(z), 2, 2, 3), jnp.uint8)

  class Extractor:
    global_batch, weights_id = 4, "stub"

  config = tiny_config(**{"data.extra_num_classes": "5"})
  ev = evaluator.Evaluator(config, None, None, sampler=sampler, extractor=Extractor())
  real = np.array([[0, 4], [2, 1], [1, 3]], np.int32)
  chunks = list(ev.fake_chunks(None, None, 6, real, seed=0))
  indices = np.concatenate([rows for rows, _ in chunks])
  images = np.concatenate([images for _, images in chunks])
  assert images.shape == (6, 2, 2, 3) and indices.tolist() == list(range(6))
  rows = np.concatenate(seen)[:6]
  assert rows.shape == (6, 2) and {tuple(r) for r in rows} <= {tuple(r) for r in real}


def test_init_from_reads_each_class_table_from_the_donors_attribute_of_its_column(
    catalog, two_columns, tmp_path):
  """A run on the donor's columns in the other order, or on one of them alone, takes each table
  from the donor's table of the same column: it took the one at the same position (the other
  column's, its classes' rows past that table's end NaN: the run's losses NaN from step 1, and
  "copied 35 of 35 arrays" in the log), or kept one-attribute and two-attribute tables apart."""
  import flax

  from jaxgan import checkpoint as ckpt_lib
  from jaxgan import data as data_lib
  from jaxgan import init_from, run as run_lib, state as state_lib, trainer

  donor_dir = str(tmp_path / "donor")
  trainer.train_and_evaluate(tiny_config(**{
      "data.source": "prepared", "data.path": str(two_columns), "data.num_classes": 3,
      "data.extra_num_classes": "2", "train.num_steps": 1, "train.tensorboard": False}), donor_dir)
  donor_config = tiny_config(**{"data.source": "prepared", "data.path": str(two_columns),
                                "data.num_classes": 3, "data.extra_num_classes": "2"})
  donor_run = run_lib.build_run(donor_config)
  reader = ckpt_lib.Checkpointer(os.path.join(donor_dir, "checkpoints"), read_only=True)
  trained, _ = reader.restore(1, ckpt_lib.abstract_like(donor_run.abstract_state,
                                                        donor_run.state_shardings))
  reader.close()
  trained = flax.serialization.to_state_dict(trained)
  for columns, extra, expected in ((("baseColour", "articleType"), "3", {0: 1, 1: 0}),
                                   (("baseColour",), "", {None: 1})):
    out = tmp_path / "_".join(columns)
    _prepare(catalog, out, *columns)
    config = tiny_config(**{"data.source": "prepared", "data.path": str(out), "seed": 7,
                            "data.num_classes": 2, "data.extra_num_classes": extra})
    run = run_lib.build_run(config)
    attributes = [[c, list(n)] for c, n in data_lib.attribute_names(build_source(config))]
    fresh = run.make_state()
    donor = init_from.read_donor(
        donor_dir, ckpt_lib.abstract_like(run.abstract_state, run.state_shardings), "dcgan", 16,
        state_lib.class_axes(config), attributes)
    got = flax.serialization.to_state_dict(init_from.initialise_from(fresh, donor, attributes))
    for collection, module in (("g_params", "class_embed"), ("ema_params", "class_embed"),
                               ("d_params", "class_projection")):
      for mine, theirs in expected.items():
        table = got[collection][module] if mine is None else got[collection][module][f"attr{mine}"]
        np.testing.assert_array_equal(
            np.asarray(table["embedding"]),
            np.asarray(trained[collection][module][f"attr{theirs}"]["embedding"]),
            err_msg=f"{columns} {collection} {mine}")


def test_unconditional_training_of_a_multi_attribute_set_says_every_key_to_set(caplog):
  """The hint named data.num_classes alone, which such a set then refuses without
  data.extra_num_classes."""
  import logging

  from jaxgan.data.arrays import require_attributes

  config = tiny_config(**{"data.num_classes": 0})
  with caplog.at_level(logging.WARNING):
    require_attributes(config, [("articleType", ["a", "b", "c"]), ("baseColour", ["x", "y"])],
                       "the set")
  assert ("the set has 3 x 2 classes but data.num_classes=0: its labels are not used (set "
          "--config.data.num_classes=3 --config.data.extra_num_classes=2 to condition on them)"
          ) in caplog.text
  conditional = tiny_config(**{"data.num_classes": 3, "data.extra_num_classes": "2"})
  require_attributes(conditional, [("articleType", ["a", "b", "c"]), ("baseColour", ["x", "y"])],
                     "the set")  # what the hint says is accepted
