"""Real-catalog sources (folder, manifest, tfds, prepared), the tf.data order, and prepare."""

import errno
import glob
import hashlib
import json
import logging
import ntpath
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from jaxgan import config as config_lib
from jaxgan import prepare as prepare_cli
from jaxgan.config import validation as config_validation
from jaxgan.data import SOURCES, ArraySource, DataError, build_source
from jaxgan.data.class_labels import encode_labels
from jaxgan.data import manifest as manifest_lib
from jaxgan.data import manifest_rows
from jaxgan.data.manifest import scan_manifest_columns
from tests.conftest import REPO, tiny_config

CATALOG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                       "data", "catalog")


def _img(path, colour, size=(20, 20), fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(path, format=fmt)


@pytest.fixture
def folder(tmp_path):
  root = tmp_path / "photos"
  _img(str(root / "shirts" / "a.png"), (200, 0, 0))
  _img(str(root / "shirts" / "summer" / "b.JPG"), (190, 10, 0), fmt="JPEG")  # nested, upper case
  _img(str(root / "shoes" / "c.webp"), (0, 0, 200), fmt="WEBP")
  _img(str(root / "shoes" / "d.png"), (0, 10, 190))
  _img(str(root / "shoes" / ".hidden.png"), (0, 255, 0))  # hidden: ignored
  _img(str(root / ".cache" / "e.png"), (0, 255, 0))  # hidden folder: ignored
  (root / "shoes" / "notes.txt").write_text("not an image")  # other extension: ignored
  # Bad: skipped, counted. In the first class, so labels shifted by the drop would show.
  (root / "shirts" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
  _img(str(root / "loose.png"), (9, 9, 9))  # outside the class folders
  return root


def _mkdir(path):
  path.mkdir(parents=True)
  return path


def _config(**kw):
  """tiny_config, with one decoding process for the sources that decode files (the others
  refuse data.workers)."""
  c = tiny_config(**kw)
  if c.data.source in ("folder", "manifest") and "data.workers" not in kw:
    c.data.workers = 1
  return c


def test_folder_source(folder):
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
                      "data.max_bad_fraction": 0.5})
  config_validation.validate(config, 1)
  source = build_source(config)
  assert source.class_names == ["shirts", "shoes"]
  assert source.num_examples == 4 and source.bad_files == 1
  assert source.labels.tolist() == [0, 0, 1, 1]  # a.png, summer/b.JPG | c.webp, d.png
  reds = source.images[source.labels == 0][:, 8, 8, 0]
  blues = source.images[source.labels == 1][:, 8, 8, 2]
  assert (reds > 150).all() and (blues > 150).all()


def test_an_unconditional_folder_source_takes_the_roots_images_too(folder, tmp_path, caplog):
  """Without classes, an image in the root is as good as one in a subfolder: a flat folder of
  photos with a leftover old/ subfolder trained on old/ alone ('outside the class folders'),
  with advice to set data.num_classes=1. And a link inside one class folder into another is
  skipped, so the other keeps its own images (the walk is alphabetical: it took them)."""
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 0,
                      "data.max_bad_fraction": 0.5})
  with caplog.at_level(logging.WARNING):
    source = build_source(config)
  assert source.num_examples == 5 and source.bad_files == 1  # loose.png too
  assert "has 2 classes but data.num_classes=0" in caplog.text  # they could be used
  flat = tmp_path / "flat"
  _img(str(flat / "a.png"), (200, 0, 0))
  _img(str(flat / "b.png"), (0, 200, 0))
  _img(str(flat / "old" / "c.png"), (0, 0, 200))
  flat_config = _config(**{"data.source": "folder", "data.path": str(flat), "data.num_classes": 0})
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert build_source(flat_config).num_examples == 3
  assert "num_classes" not in caplog.text  # not "set data.num_classes=1" for old/
  # Rare classes are handled as without the root's images (they were dropped there, kept here).
  for name in ("A/1.png", "A/2.png", "A/3.png", "B/4.png", "5.png"):
    _img(str(tmp_path / "rare" / name), (100, 100, 100))
  rare = _config(**{"data.source": "folder", "data.path": str(tmp_path / "rare"),
                    "data.num_classes": 0, "data.min_class_count": 2, "data.rare_classes": "drop"})
  assert build_source(rare).num_examples == 4  # B's one image dropped, the root's kept
  # Conditional: the root's images still belong to no class.
  os.symlink(folder / "shoes", folder / "shirts" / "shoes_alias")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    source = build_source(_config(**{"data.source": "folder", "data.path": str(folder),
                                     "data.num_classes": 2, "data.max_bad_fraction": 0.5}))
  assert source.num_examples == 4 and source.labels.tolist() == [0, 0, 1, 1]
  assert (f"shoes_alias: skipped, its folder {os.path.realpath(folder / 'shoes')} is listed under "
          f"{folder / 'shoes'}") in caplog.text
  # A first-level link to the root (latest -> .) holds every folder: not taken for a class that
  # lists the others' subfolders (their images were all skipped), but skipped itself, as seen.
  os.remove(folder / "shirts" / "shoes_alias")
  os.symlink(".", folder / "latest")
  source = build_source(_config(**{"data.source": "folder", "data.path": str(folder),
                                   "data.num_classes": 2, "data.max_bad_fraction": 0.5}))
  assert source.num_examples == 4 and source.labels.tolist() == [0, 0, 1, 1]  # summer/b.JPG too
  # One above the root (up -> ..) would hold the data's neighbours as a class: skipped too.
  os.symlink("..", folder / "up")
  source = build_source(_config(**{"data.source": "folder", "data.path": str(folder),
                                   "data.num_classes": 2, "data.max_bad_fraction": 0.5}))
  assert source.num_examples == 4 and source.class_names == ["shirts", "shoes"]


@pytest.mark.parametrize("rare,classes,labels", [
    ("other", ["bags", "shirts", "other"], [0, 0, 1, 1, 2]),
    ("drop", ["bags", "shirts"], [0, 0, 1, 1])])
def test_folder_classes_rarer_than_min_class_count_as_prepare_makes_them(folder, tmp_path,
                                                                         caplog, rare, classes,
                                                                         labels):
  """data.min_class_count and data.rare_classes apply to class folders as `prepare` applies
  them: the same class list and labels from the folder as from its prepared set."""
  from jaxgan import prepare

  os.remove(folder / "shoes" / "d.png")  # shoes: 1 image, under the count of 2
  _img(str(folder / "bags" / "x.png"), (0, 200, 0))
  _img(str(folder / "bags" / "y.png"), (0, 190, 0))
  config = _config(**{"data.source": "folder", "data.path": str(folder),
                      "data.num_classes": len(classes), "data.min_class_count": 2,
                      "data.rare_classes": rare, "data.max_bad_fraction": 0.5})
  config_validation.validate(config, 1)
  with caplog.at_level(logging.INFO):
    source = build_source(config)
  assert source.class_names == classes and source.labels.tolist() == labels
  if rare == "drop":
    assert "c.webp: class 'shoes' has fewer than 2 images (dropped)" in caplog.text
  # Which names 'other' holds, said as prepare says it (no log line did).
  merged = [m for m in caplog.messages if "merged into 'other'" in m]
  assert merged == ([f"{folder}: 1 class name merged into 'other' (shoes: fewer than "
                     "data.min_class_count=2 images each)"] if rare == "other" else []), merged
  args = prepare.parse_args(["--images", str(folder), "--out", str(tmp_path / "p"),
                             "--image-size", "16", "--min-class-count", "2",
                             "--rare-classes", rare, "--max-bad-fraction", "0.5"])
  assert prepare.prepare(args)["class_names"] == classes
  with pytest.raises(config_lib.ConfigError, match="data.rare_classes: must be 'other' or "):
    config_validation.validate(_config(**{"data.source": "folder", "data.path": str(folder),
                                          "data.rare_classes": "keep"}), 1)


def test_a_class_that_bad_files_leave_under_min_class_count_is_warned_of(folder, tmp_path,
                                                                          caplog):
  """shirts lists 3 files, the minimum, but one is broken: it stays a class (the class list is
  fixed before decoding) with 2 images, which was said nowhere. 'other' (shoes, 2 files) was
  under the minimum from the start: not warned of."""
  from jaxgan import prepare

  expected = ("fewer usable images than the minimum of 3 once bad files were skipped, in class "
              "'shirts' (2 of 3); they stay classes")
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
                      "data.min_class_count": 3, "data.max_bad_fraction": 0.5})
  with caplog.at_level(logging.WARNING):
    assert build_source(config).class_names == ["shirts", "other"]
  assert f"{folder}: {expected}" in caplog.text and "'other'" not in caplog.text
  caplog.clear()
  args = prepare.parse_args(["--images", str(folder), "--out", str(tmp_path / "p"),
                             "--image-size", "16", "--min-class-count", "3",
                             "--max-bad-fraction", "0.5", "--workers", "1"])
  with caplog.at_level(logging.WARNING):
    assert prepare.prepare(args)["class_names"] == ["shirts", "other"]
  assert expected in caplog.text and "'other'" not in caplog.text


def test_folder_too_many_bad_files_stops_with_the_list(folder):
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 2})
  with pytest.raises(DataError, match=r"1 of 5 images .* data.max_bad_fraction=0.01 \(first: "
                                      r".*broken.jpg: not an image"):
    build_source(config)


def test_folder_class_count_must_match(folder):
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 3,
                      "data.max_bad_fraction": 0.5})
  with pytest.raises(config_lib.ConfigError, match=r"data.num_classes: .* has 2 classes "
                                                   r"\(shirts, shoes\), got 3"):
    build_source(config)


def test_labelled_folder_trained_unconditionally_is_warned_about(folder, caplog):
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 0,
                      "data.max_bad_fraction": 0.5})
  with caplog.at_level(logging.WARNING):
    source = build_source(config)
  assert set(source.labels) == {0}
  assert "has 2 classes but data.num_classes=0: its labels are not used" in caplog.text


def test_flat_folder_is_unconditional(tmp_path):
  for i in range(3):
    _img(str(tmp_path / "flat" / f"{i}.png"), (i * 50, 0, 0))
  config = _config(**{"data.source": "folder", "data.path": str(tmp_path / "flat"),
                      "data.num_classes": 0})
  source = build_source(config)
  assert source.class_names == [] and source.num_examples == 3 and set(source.labels) == {0}


def test_folder_says_which_files_it_passes_over(tmp_path, caplog):
  """A class of photos in a format not read (.heic from a phone) would vanish without a word:
  the files passed over are counted by extension; TIFF and JPEG's other names are read."""
  for name in ("A/x.jpg", "A/y.tif", "B/z.TIFF", "B/w.jfif"):
    _img(str(tmp_path / "f" / name), (200, 0, 0))
  for name in ("B/c.txt", "C/d.heic", "C/e.HEIC", "C/.hidden.heic"):
    (tmp_path / "f" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "f" / name).write_text("x")
  from jaxgan.data import folder

  with caplog.at_level(logging.WARNING):
    paths, folders, _ = folder.scan_folder(str(tmp_path / "f"))
  names = [os.path.relpath(p, tmp_path / "f") for p in paths]
  assert names == ["A/x.jpg", "A/y.tif", "B/w.jfif", "B/z.TIFF"]
  assert folders == ["A", "A", "B", "B"]
  assert (f"{tmp_path / 'f'}: 3 files passed over for their extension (.heic: 2, .txt: 1); "
          "images are read from .jpg") in caplog.text
  for name in ("B/c.txt", "C/d.heic", "C/e.HEIC"):
    os.remove(tmp_path / "f" / name)
  (tmp_path / "f" / "notes.md").write_text("x")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    folder.scan_folder(str(tmp_path / "f"))
  assert f"{tmp_path / 'f'}: 1 file passed over for its extension (.md: 1)" in caplog.text


def _manifest(tmp_path, rows, name="styles.csv"):
  images = tmp_path / "images"
  for row in rows:
    if row.get("exists", True):
      _img(str(images / f"{row['id']}.jpg"), row.get("colour", (100, 100, 100)), fmt="JPEG")
  path = tmp_path / name
  if name.endswith(".csv"):
    path.write_text("id,articleType\n" + "".join(f"{r['id']},{r['type']}\n" for r in rows))
  else:
    path.write_text("".join(json.dumps({"file": f"images/{r['id']}.jpg", "type": r["type"]}) + "\n"
                            for r in rows))
  return path, images


MANIFEST_ROWS = ([{"id": i, "type": "Tshirts"} for i in range(4)]
                 + [{"id": 10 + i, "type": "Watches"} for i in range(3)]
                 + [{"id": 20, "type": "Scarves"}, {"id": 30, "type": "Tshirts", "exists": False}])


def test_the_data_reads_warnings_reach_log_txt(folder, tmp_path, caplog):
  """The data is read before the run writes into its workdir (bad data leaves none behind), and
  its warnings (each file skipped and why) reached stderr only, which a cluster's log rotation
  loses: log.txt now gets them first, with their own times."""
  from jaxgan import trainer

  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
                      "data.max_bad_fraction": 0.5, "train.num_steps": 1, "train.log_every": 1,
                      "train.tensorboard": False})
  with caplog.at_level(logging.INFO, logger="jaxgan"):  # as the CLI sets it
    trainer.train_and_evaluate(config, str(tmp_path / "w"))
  lines = (tmp_path / "w" / "log.txt").read_text().splitlines()
  broken = folder / "shirts" / "broken.jpg"
  skipped = [i for i, line in enumerate(lines)
             if f"WARNING jaxgan.data.arrays: skipping {broken}: " in line]
  before = [i for i, line in enumerate(lines) if "entries of" in line or "entry of" in line]
  start = [i for i, line in enumerate(lines) if "training dcgan at step 0 of 1" in line]
  assert len(skipped) == 1 and len(before) == 1 and len(start) == 1, lines
  assert skipped[0] < start[0] and before[0] < start[0]


def test_images_in_no_manifest_row_are_told_by_prepare_and_the_manifest_source(tmp_path, caplog):
  """A manifest of part of the folder (cut short, an older export) trained on that part, with no
  word of the rest: prepare said 'wrote 3 images (0 skipped)'. Rows skipped for their labels
  name their files: those are not 'in no row'."""
  from jaxgan import prepare

  rows = ([{"id": i, "type": "Tshirts"} for i in range(3)] + [{"id": 3, "type": ""}])
  path, images = _manifest(tmp_path, rows)
  for name in ("7.jpg", "sub/8.png"):
    _img(str(images / name), (9, 9, 9))
  expected = (f"2 image files under {images} are in no row of {path}, so not used (first: "
              f"{images / '7.jpg'}); add rows for them to use them")
  args = prepare.parse_args(["--manifest", str(path), "--images", str(images), "--label-column",
                             "articleType", "--out", str(tmp_path / "p"), "--image-size", "16",
                             "--workers", "1"])
  with caplog.at_level(logging.WARNING):
    assert prepare.prepare(args)["unlisted_images"] == 2
  assert expected in caplog.text
  caplog.clear()
  config = _config(**{"data.source": "manifest", "data.path": str(path),
                      "data.image_dir": str(images), "data.label_column": "articleType",
                      "data.num_classes": 1})
  with caplog.at_level(logging.WARNING):
    assert build_source(config).num_examples == 3
  assert expected in caplog.text
  caplog.clear()
  for name in ("7.jpg", "sub/8.png"):
    os.remove(images / name)
  # Named by another path: a symlinked folder walked under its other name (find_images keeps
  # the first in sorted order, 'current'); a folder that cannot be listed (lost+found on a
  # mounted volume) is passed over: the check is advice, not a stop. A hard link to a listed
  # file is a name no row gives (a deduplicated catalog's copies).
  os.makedirs(images / "v2")
  _img(str(images / "v2" / "5.jpg"), (9, 9, 9))
  os.symlink(images / "v2", images / "current")
  os.link(images / "0.jpg", images / "copy.jpg")
  os.makedirs(images / "lost+found")
  real_scandir = os.scandir
  def scandir(path="."):
    if os.path.basename(str(path)) == "lost+found":
      raise PermissionError(13, "Permission denied", str(path))
    return real_scandir(path)
  with open(path, "a") as f:
    f.write("v2/5,Tshirts\n")
  with caplog.at_level(logging.WARNING), pytest.MonkeyPatch.context() as patch:
    patch.setattr(os, "scandir", scandir)
    assert build_source(config).num_examples == 4
  assert (f"1 image file under {images} is in no row of {path}, so not used (first: "
          f"{images / 'copy.jpg'})") in caplog.text
  # Folders whose names differ in case only are two folders on Linux: each is looked in.
  case = tmp_path / "case"
  _img(str(case / "Cats" / "1.jpg"), (9, 9, 9))
  _img(str(case / "cats" / "1.jpg"), (9, 9, 9))
  assert manifest_lib.unlisted_images(str(case), [str(case / "Cats" / "1.jpg")]) == [
      str(case / "cats" / "1.jpg")]
  # A row's '..' past a symlinked folder names the file the file system opens (elsewhere/x.jpg,
  # not images/x.jpg as the text reads).
  _img(str(tmp_path / "elsewhere" / "sub" / "y.jpg"), (9, 9, 9))
  _img(str(tmp_path / "elsewhere" / "x.jpg"), (9, 9, 9))
  os.symlink(tmp_path / "elsewhere" / "sub", images / "far")
  assert manifest_lib.unlisted_images(str(tmp_path / "elsewhere"), [
      str(images / "far" / ".." / "x.jpg"), str(images / "far" / "y.jpg")]) == []
  # A run kept in the images' folder: its sample grids are no photos a row forgot (as the folder
  # scan skips them); another tool's config.json beside photos is no run.
  run = tmp_path / "elsewhere" / "gan"
  _img(str(run / "samples" / "step_0000002.png"), (9, 9, 9))
  (run / "config.json").write_text('{"train": {"batch_size": 8}}')
  _img(str(tmp_path / "elsewhere" / "tool" / "z.jpg"), (9, 9, 9))
  (tmp_path / "elsewhere" / "tool" / "config.json").write_text('{"model_type": "bert"}')
  assert manifest_lib.unlisted_images(str(tmp_path / "elsewhere"), [
      str(images / "far" / ".." / "x.jpg"), str(images / "far" / "y.jpg")]) == [
          str(tmp_path / "elsewhere" / "tool" / "z.jpg")]
  # prepare without --images: the manifest's names are relative to its own folder.
  args = prepare.parse_args(["--manifest", str(path), "--images", "", "--label-column",
                             "articleType", "--out", str(tmp_path / "p2"), "--image-size", "16",
                             "--workers", "1", "--image-pattern", "images/{id}.jpg"])
  assert prepare.prepare(args)["unlisted_images"] is None  # not looked for


def test_prepare_records_which_names_other_holds(tmp_path, capsys):
  """'other' is one class of the model: which names it holds was nowhere (a user's generate
  --label Sandals got "did you mean 'Handbags'?")."""
  path, images = _manifest(tmp_path, MANIFEST_ROWS + [{"id": 40, "type": "Belts"}])
  out = tmp_path / "p"
  assert prepare_cli.main(["--images", str(images), "--manifest", str(path), "--label-column",
                           "articleType", "--min-class-count", "2", "--image-size", "16",
                           "--workers", "1", "--out", str(out)]) == 0
  info = json.load(open(out / "dataset_info.json"))
  assert info["class_names"] == ["Tshirts", "Watches", "other"]
  assert info["merged_into_other"] == {"articleType": ["Belts", "Scarves"]}
  assert capsys.readouterr().out.strip() == (
      f"wrote 9 images of 3 classes to {out} (1 skipped; 2 articleType names merged into "
      "'other', listed in dataset_info.json)")
  assert prepare_cli.main(["--images", str(images), "--manifest", str(path), "--label-column",
                           "articleType", "--min-class-count", "2", "--image-size", "16",
                           "--workers", "1", "--out", str(out), "--rare-classes", "drop"]) == 0
  assert json.load(open(out / "dataset_info.json"))["merged_into_other"] == {}


@pytest.mark.parametrize("rare,classes,count", [("other", ["Tshirts", "Watches", "other"], 8),
                                                ("drop", ["Tshirts", "Watches"], 7)])
def test_manifest_csv(tmp_path, rare, classes, count, caplog):
  path, images = _manifest(tmp_path, MANIFEST_ROWS)
  config = _config(**{"data.source": "manifest", "data.path": str(path),
                      "data.image_dir": str(images), "data.label_column": "articleType",
                      "data.min_class_count": 2, "data.rare_classes": rare,
                      "data.num_classes": len(classes)})
  config_validation.validate(config, 1)
  with caplog.at_level(logging.INFO):
    source = build_source(config)
  assert source.class_names == classes and source.num_examples == count
  merged = [m for m in caplog.messages if "merged into 'other'" in m]
  assert len(merged) == (rare == "other") and all(
      m.startswith(f"{path}: 1 articleType name merged into 'other' (") for m in merged), merged
  assert source.bad_files == 0  # the missing file is reported, not counted as a bad image


def test_rows_skipped_before_decoding_are_logged_by_prepare_as_by_the_manifest_source(
    tmp_path, caplog):
  """A manifest whose images are half missing (a wrong --images, a sync not done) made prepare
  write a halved set with only a count in its last line; the manifest source logged the rows."""
  from jaxgan import prepare

  rows = ([{"id": i, "type": "Tshirts"} for i in range(4)]
          + [{"id": 10 + i, "type": "Watches", "exists": False} for i in range(3)]
          + [{"id": 20, "type": ""}])
  path, images = _manifest(tmp_path, rows)
  expected = (f"4 entries of {path} skipped before decoding (missing file: 3, no articleType: 1); "
              "listed, not images, so not counted against ")
  args = prepare.parse_args(["--manifest", str(path), "--images", str(images), "--label-column",
                             "articleType", "--out", str(tmp_path / "p"), "--image-size", "16",
                             "--workers", "1"])
  with caplog.at_level(logging.WARNING):
    assert prepare.prepare(args)["num_examples"] == 4
  assert f"skipping {images / '10.jpg'}: missing file (line 6)" in caplog.text
  assert expected + "--max-bad-fraction" in caplog.text
  caplog.clear()
  config = _config(**{"data.source": "manifest", "data.path": str(path),
                      "data.image_dir": str(images), "data.label_column": "articleType",
                      "data.num_classes": 1})
  with caplog.at_level(logging.WARNING):
    assert build_source(config).num_examples == 4
  assert expected + "data.max_bad_fraction" in caplog.text


def test_manifest_jsonl_with_image_column(tmp_path):
  path, _ = _manifest(tmp_path, MANIFEST_ROWS[:7], name="skus.jsonl")
  config = _config(**{"data.source": "manifest", "data.path": str(path),
                      "data.image_column": "file", "data.label_column": "type",
                      "data.num_classes": 2})
  source = build_source(config)
  assert source.class_names == ["Tshirts", "Watches"] and source.num_examples == 7


def test_manifest_rows_naming_files_with_backslashes_say_so(tmp_path, caplog):
  """A Windows export ('Women\\1.jpg'): its rows were skipped as 'missing file', and the files
  they name were then warned of as in no row, with 'add rows for them'."""
  images = tmp_path / "img"
  rows = []
  for i in range(4):
    _img(str(images / "Women" / f"{i}.jpg"), (9 * i, 9, 9))
    rows.append({"file": ("Women\\" if i % 2 else "Women/") + f"{i}.jpg", "type": "Tshirts"})
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = _config(**{"data.source": "manifest", "data.path": str(tmp_path / "m.jsonl"),
                      "data.image_dir": str(images), "data.image_column": "file",
                      "data.label_column": "type", "data.num_classes": 1,
                      "data.max_bad_fraction": 0.9})
  with caplog.at_level(logging.WARNING):
    assert build_source(config).num_examples == 2
  assert (f"skipping {images}/Women\\1.jpg: missing file (line 2); it is there with / for its "
          "backslashes (a Windows path): write / in the manifest") in caplog.messages
  assert (f"2 image files under {images} are in no row of {tmp_path / 'm.jsonl'}, so not used "
          f"(first: {images / 'Women' / '1.jpg'}); add rows for them to use them (2 rows name "
          "theirs with backslashes, a Windows path: some may be these; write / in the manifest)"
          ) in caplog.messages
  # Every row so (a Windows export): not 'point data.image_dir at the folder', which is right.
  for i in range(4):
    rows[i]["file"] = f"Women\\{i}.jpg"
  (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(DataError, match=r"m.jsonl: none of its 4 listed image files exists \(first: "
                     r".*Women\\0.jpg\); it is there with / for its backslashes \(a Windows "
                     r"path\): write / in the manifest$"):
    build_source(config)


def test_manifest_na_label_is_missing_not_a_class(tmp_path):
  rows = [{"id": 1, "type": "Watches"}, {"id": 2, "type": "NA"}, {"id": 3, "type": "NaN"},
          {"id": 4, "type": "Tshirts"}]
  path, images = _manifest(tmp_path, rows)
  paths, values, skipped = scan_manifest_columns(str(path), "", "id", str(images), "{id}.jpg",
                                                 ["articleType"])
  assert values == [["Watches", "Tshirts"]] and len(paths) == 2
  assert [s["reason"] for s in skipped] == ["no articleType (line 3)", "no articleType (line 4)"]


def test_manifest_labels_read_as_pandas_would(tmp_path):
  """pandas' missing values (its na_values) are unlabelled, not classes ('None' was a class); a
  JSON 1.0 is the class and id 1 (pandas writes an integer column with a gap as floats); a
  repeated header name that is read, or a list for a label, is refused."""
  rows = [{"id": 1, "type": "Watches"}, {"id": 2, "type": "None"}, {"id": 3, "type": "-nan"},
          {"id": 4, "type": "#N/A N/A"}, {"id": 5, "type": "Watches"}]
  path, images = _manifest(tmp_path, rows)
  paths, values, skipped = scan_manifest_columns(str(path), "", "id", str(images), "{id}.jpg",
                                                 ["articleType"])
  assert values == [["Watches", "Watches"]] and len(skipped) == 3
  jsonl = tmp_path / "m.jsonl"
  jsonl.write_text('{"id": 1.0, "type": 1}\n{"id": 5, "type": 1.0}\n{"id": 2, "type": "1"}\n'
                   '{"id": 3, "type": 2.5}\n')
  for i in (2, 3):
    (images / f"{i}.jpg").write_bytes((images / "1.jpg").read_bytes())
  paths, values, skipped = scan_manifest_columns(str(jsonl), "", "id", str(images), "{id}.jpg",
                                                 ["type"])
  assert values == [["1", "1", "1", "2.5"]] and not skipped  # 1.0.jpg was a missing file
  jsonl.write_text('{"id": 1, "type": ["Watches"]}\n')
  with pytest.raises(DataError, match=r"m.jsonl \(line 1\): type is a JSON list; the columns "):
    scan_manifest_columns(str(jsonl), "", "id", str(images), "{id}.jpg", ["type"])
  path.write_text("id,articleType,articleType,x,x\n1,Shirts,Watches,a,b\n")
  with pytest.raises(DataError, match=r"header names column 'articleType' more than once"):
    scan_manifest_columns(str(path), "", "id", str(images), "{id}.jpg", ["articleType"])
  path.write_text("id,articleType,x,x\n1,Shirts,a,b\n")  # x, in the pattern, is read
  with pytest.raises(DataError, match=r"header names column 'x' more than once"):
    scan_manifest_columns(str(path), "", "id", str(images), "{x}/{id}.jpg", ["articleType"])
  path.write_text("id, articleType,x,x\n1,Shirts,a,b\n")  # a repeat not read is no matter; a
  # space after a comma (header cells are stripped, as the others are)
  assert scan_manifest_columns(str(path), "", "id", str(images), "{id}.jpg",
                               ["articleType"])[1] == [["Shirts"]]
  # Quoted after a comma and a space: the quotes are quotes ('"Shirts"' was a class of its own
  # beside 'Shirts', and a quoted comma split its row).
  path.write_text('id, "articleType", x\n1, "Shirts", a\n5, Shirts, "b, c"\n')
  assert scan_manifest_columns(str(path), "", "id", str(images), "{id}.jpg",
                               ["articleType"])[1] == [["Shirts", "Shirts"]]


def test_manifest_json_array_and_bad_json_rows(tmp_path):
  from jaxgan.data.manifest_rows import read_rows
  rows = [{"file": "a.jpg", "type": "Watches"}, {"file": "b.jpg", "type": "Tshirts"}]
  (tmp_path / "a.json").write_text(json.dumps(rows, indent=1))  # an array over several lines
  assert read_rows(str(tmp_path / "a.json")) == rows
  (tmp_path / "b.json").write_text("".join(json.dumps(r) + "\n" for r in rows))  # JSON Lines
  assert read_rows(str(tmp_path / "b.json")) == rows
  # JSON allows U+2028 unescaped inside a string: it must not split the line.
  odd = {"file": "c.jpg", "type": "Line\u2028Separator"}
  (tmp_path / "b.jsonl").write_text(json.dumps(odd, ensure_ascii=False) + "\n", encoding="utf-8")
  assert read_rows(str(tmp_path / "b.jsonl")) == [odd]
  (tmp_path / "c.jsonl").write_text(json.dumps(rows[0]) + '\n"hello"\n')
  with pytest.raises(DataError, match=r"c.jsonl:2: a str, not a JSON object"):
    read_rows(str(tmp_path / "c.jsonl"))
  (tmp_path / "d.json").write_text(json.dumps([rows[0], ["a.jpg"]]))
  with pytest.raises(DataError, match=r"d.json: item 2 of the array is a list"):
    read_rows(str(tmp_path / "d.json"))
  # The rows inside an object, indented: line 1 ('{') was named as not a JSON object.
  (tmp_path / "e.json").write_text(json.dumps({"items": rows, "version": 2}, indent=2))
  with pytest.raises(DataError, match=r"e.json: one JSON object \(keys: items, version\), not "
                     r"rows: write the rows as a JSON array of objects, or one object per line"):
    read_rows(str(tmp_path / "e.json"))


def test_prepare_refuses_a_label_column_without_a_manifest(tmp_path, capsys):
  with pytest.raises(SystemExit):
    prepare_cli.main(["--images", str(tmp_path), "--out", str(tmp_path / "o"),
                      "--label-column", "articleType"])
  assert "--label-column needs --manifest" in capsys.readouterr().err


def test_prepare_refuses_an_out_inside_a_runs_checkpoints_or_samples(folder, tmp_path, capsys):
  """A set written into a run's checkpoints/ went with the step its next saves rotated out."""
  run = tmp_path / "run"
  (run / "samples").mkdir(parents=True)
  (run / "config.json").write_text('{"train": {"batch_size": 8}}')  # read as a jaxgan run's
  for out, folder_name in ((run / "checkpoints" / "7", "checkpoints"),
                           (run / "samples" / "set", "samples")):
    assert prepare_cli.main(["--images", str(folder), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --out {out} is inside {run / folder_name}, a folder of the run in {run}, which "
        "writes and prunes it; pass a --out outside it")
    assert not out.exists()
  assert sorted(os.listdir(run)) == ["config.json", "samples"]
  # The run as the photos: its images are its grids (every one was skipped, 'no usable images').
  assert prepare_cli.main(["--images", str(run), "--out", str(tmp_path / "o")]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f"error: --images {run} is a training run's workdir, whose images are its sample grids: "
      "pass the folder of photos it trained on")


def test_prepare_refuses_rare_class_flags_on_a_set_without_labels(folder, tmp_path, capsys):
  """--min-class-count and --rare-classes on a flat folder or a manifest without
  --label-column were ignored without a word: an unlabelled set was written."""
  flat = tmp_path / "flat"
  flat.mkdir()
  _img(str(flat / "a.jpg"), (9, 9, 9))
  for flags, first in ((["--min-class-count", "5"], "--min-class-count"),
                       (["--rare-classes", "drop"], "--rare-classes")):
    assert prepare_cli.main(["--images", str(flat), "--out", str(tmp_path / "o"), *flags]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {first} acts on class labels, and {flat} has none (a folder's classes are its "
        "first-level subfolders), or leave it out")
  (tmp_path / "m.csv").write_text("id\na\n")
  assert prepare_cli.main(["--images", str(flat), "--manifest", str(tmp_path / "m.csv"),
                           "--out", str(tmp_path / "o"), "--min-class-count", "2"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
      "m.csv has none (pass --label-column), or leave it out")
  assert not (tmp_path / "o").exists()
  assert prepare_cli.main(["--images", str(folder), "--out", str(tmp_path / "o"),
                           "--rare-classes", "drop", "--workers", "1",
                           "--max-bad-fraction", "0.5"]) == 0  # class folders: labels


def test_manifest_unknown_column(tmp_path):
  path, images = _manifest(tmp_path, MANIFEST_ROWS[:2])
  config = _config(**{"data.source": "manifest", "data.path": str(path),
                      "data.image_dir": str(images), "data.label_column": "colour"})
  with pytest.raises(DataError, match=r"no column 'colour' \(columns: id, articleType\)"):
    build_source(config)
  # A spreadsheet's export split by ';' or tabs: its one column named, not the column keys.
  for sep, shown in ((";", ";"), ("\t", "\\\\t"), ("; ", "; ")):  # spaced after it too
    path.write_text(f"id{sep}articleType\n0{sep}Tshirts\n")
    config.data.label_column = "articleType"
    with pytest.raises(DataError, match=rf"styles.csv: its header is one column, "
                                        rf"'id{shown}articleType', split by '{shown.strip()}'; a "
                                        r"manifest is comma-separated \(CSV\) or JSON lines: "
                                        r"export it as CSV$"):
      build_source(config)


def test_a_manifest_whose_images_are_all_elsewhere_says_where_they_are_looked_for(tmp_path):
  """Every listed file missing (the manifest moved away from its photos): one error naming
  data.image_dir and the folder searched, not "no images" with the first missing file."""
  path, images = _manifest(tmp_path, MANIFEST_ROWS[:2])
  config = _config(**{"data.source": "manifest", "data.path": str(path),
                      "data.label_column": "articleType", "data.num_classes": 1})  # no image_dir
  with pytest.raises(DataError, match=r"styles.csv: none of its 2 listed image files exists "
                     r"\(first: .*\); file names are data.image_pattern \(prepare: "
                     r"--image-pattern\) '\{id\}.jpg' filled from each row, relative ones "
                     r"under data.image_dir \(prepare: --images\), here .*: point "
                     r"data.image_dir at the folder that holds the images, or fix the names$"):
    build_source(config)
  with config.unlocked():  # file names from a column
    config.data.image_column = "id"
  with pytest.raises(DataError, match=r"file names are the id column's values, relative ones "):
    build_source(config)
  with config.unlocked():
    config.data.image_column = ""
  # A row without a label among them (the real catalog has 3 without a baseColour): its file
  # was not checked, which hid this error behind a class-count one that named no class.
  with open(path, "a") as f:
    f.write("7,\n")
  with pytest.raises(DataError, match=r"styles.csv: none of its 3 listed image files exists "):
    build_source(config)
  with config.unlocked():
    config.data.image_dir = str(images)
  assert len(build_source(config).images) == 2


def test_prepare_of_a_manifest_whose_every_row_is_skipped_says_so(tmp_path, capsys):
  """Every labelled row's file missing while an unlabelled row's exists, or no row labelled:
  prepare said "--min-class-count 1 drops every t class (largest: )"."""
  (tmp_path / "img").mkdir()
  _img(str(tmp_path / "img" / "3.jpg"), (9, 9, 9))
  for rows, first in (("1,a\n2,b\n3,\n", "1.jpg: missing file (line 2)"),
                      ("1,\n2,\n", "1.jpg: no t (line 2)")):
    (tmp_path / "m.csv").write_text("id,t\n" + rows)
    assert prepare_cli.main(["--manifest", str(tmp_path / "m.csv"), "--images",
                             str(tmp_path / "img"), "--label-column", "t", "--out",
                             str(tmp_path / "out"), "--image-size", "16", "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: no images in {tmp_path / 'm.csv'}: each of its {rows.count(chr(10))} rows was "
        f"skipped (first: {tmp_path / 'img' / first})")
  # Every listed file fails to decode (a fraction of 1 lets them all through), names relative
  # to the manifest (--images ''): 'no usable images under ' named nothing.
  (tmp_path / "1.jpg").write_bytes(b"not a jpeg")
  (tmp_path / "m.csv").write_text("id,t\n1,a\n")
  assert prepare_cli.main(["--manifest", str(tmp_path / "m.csv"), "--images", "", "--out",
                           str(tmp_path / "out"), "--image-size", "16", "--workers", "1",
                           "--max-bad-fraction", "1"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f"error: no usable images in {tmp_path / 'm.csv'} (first: {tmp_path / '1.jpg'}: not an "
      "image)")
  # With a row skipped before decoding too, the decoded files' failure is the one named (it
  # blamed the missing file while every image was too large), in the flags' words.
  _img(str(tmp_path / "1.jpg"), (9, 9, 9))
  (tmp_path / "m.csv").write_text("id,t\n1,a\n2,b\n")
  assert prepare_cli.main(["--manifest", str(tmp_path / "m.csv"), "--images", "", "--out",
                           str(tmp_path / "out"), "--image-size", "16", "--workers", "1",
                           "--max-bad-fraction", "1", "--max-pixels", "100"]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f"error: no usable images in {tmp_path / 'm.csv'} (first: {tmp_path / '1.jpg'}: too "
      "large: 20x20 is more than 100 pixels (--max-pixels))")


def test_skipped_rows_name_the_line_they_start_on(tmp_path):
  """After blank lines and a row over two lines (a quoted field with a line break), each row's
  messages name its own first line; rows of a JSON array name their item."""

  (tmp_path / "1.jpg").write_bytes(b"x")
  path = tmp_path / "styles.csv"
  path.write_text('id,articleType,note\n1,Shirts,"two\nlines"\n\n2,Shirts,\n3,,\n')
  _, _, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                        ["articleType"])
  assert [s["reason"] for s in skipped] == ["missing file (line 5)", "no articleType (line 6)"]
  # A header name with a quoted line break moves every row down a line.
  path.write_text('id,articleType,"the\nnote"\n1,,a\n1,Shirts,b\n')
  _, _, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                        ["articleType"])
  assert [s["reason"] for s in skipped] == ["no articleType (line 3)"]
  array = tmp_path / "rows.json"
  array.write_text(json.dumps([{"id": 1, "articleType": "Shirts"}, {"articleType": "Shirts"}]))
  _, _, skipped = scan_manifest_columns(str(array), "", "id", str(tmp_path), "{id}.jpg",
                                        ["articleType"])
  assert [s["reason"] for s in skipped] == ["no id (item 2)"]


def test_manifest_rows_that_misfit_or_repeat_are_skipped_with_their_reason(tmp_path):
  """A comma in an unquoted value shifts the columns after it (Navy, Blue: 'Blue' would become a
  usage); a row short of fields, and a photo listed twice (trained twice, under two labels), are
  skipped too, each named; padded ids are ids."""

  for i in range(1, 6):
    (tmp_path / f"{i}.jpg").write_bytes(b"x")
  path = tmp_path / "styles.csv"
  path.write_text("id,baseColour,usage\n1,Black,Casual\n2,Navy, Blue,Casual\n3,Red\n"
                  "1,Black,Casual\n4,Red,Formal\n4,Green,Sports\n 5 ,White,Casual\n")
  paths, values, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                                 ["baseColour", "usage"])
  assert [os.path.basename(p) for p in paths] == ["1.jpg", "4.jpg", "5.jpg"]
  assert values == [["Black", "Red", "White"], ["Casual", "Formal", "Casual"]]
  assert [s["reason"] for s in skipped] == [
      "4 fields where the header has 3: quote values that hold commas (line 3)",
      "2 fields where the header has 3 (line 4)",
      "listed again (line 5; first on line 2)",
      "listed again (line 7; first on line 6), with other labels (Green, Sports)"]
  assert skipped[0]["path"] == f"{path} (line 3)"
  # A trailing delimiter on data lines (some exporters write one) is no extra field.
  path.write_text("id,baseColour,usage\n1,Black,Casual,\n2,Red,Formal,,\n")
  paths, values, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                                 ["baseColour", "usage"])
  assert values == [["Black", "Red"], ["Casual", "Formal"]] and not skipped
  # One on the header line alone names an empty last column, which no row misses (each was
  # skipped as a field short); a named column short is still one.
  path.write_text("id,baseColour,usage,\n1,Black,Casual\n2,Red,Formal,\n3,Red\n")
  paths, values, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                                 ["baseColour", "usage"])
  assert values == [["Black", "Red"], ["Casual", "Formal"]]
  assert [s["reason"] for s in skipped] == ["2 fields where the header has 4 (line 4)"]


def test_manifest_ids_keep_their_type_and_any_column_fills_the_pattern(tmp_path):
  """A JSON number is formatted as one ('{id:05d}'); a CSV's padded cells are stripped for any
  column the pattern names; one file listed under two spellings is one file."""

  (tmp_path / "00007.jpg").write_bytes(b"x")
  (tmp_path / "a-7.jpg").write_bytes(b"x")
  path = tmp_path / "skus.jsonl"
  path.write_text('{"id": 7, "colour": "Red"}\n')
  paths, _, _ = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id:05d}.jpg",
                                      ["colour"])
  assert [os.path.basename(p) for p in paths] == ["00007.jpg"]
  # A CSV's ids are text: a number format cannot pad them, and the error says so.
  (tmp_path / "skus.csv").write_text("id,colour\n7,Red\n")
  with pytest.raises(DataError, match=r"\(ValueError: Unknown format code 'd' .*\); use \{id\} or "
                     r"column names; a CSV's cells are text, which a number format cannot fill: "
                     r"write the ids as the files are named \(00042\), or use a JSON Lines "
                     r"manifest, whose numbers stay numbers$"):
    scan_manifest_columns(str(tmp_path / "skus.csv"), "", "id", str(tmp_path), "{id:05d}.jpg",
                          ["colour"])
  path = tmp_path / "skus.csv"
  path.write_text("sku,brand,colour\n 7 , a ,Red\n")
  paths, _, skipped = scan_manifest_columns(str(path), "", "sku", str(tmp_path),
                                            "{brand}-{sku}.jpg", ["colour"])
  assert [os.path.basename(p) for p in paths] == ["a-7.jpg"] and not skipped
  path.write_text("file,colour\na-7.jpg,Red\n./a-7.jpg,Red\n")
  paths, _, skipped = scan_manifest_columns(str(path), "file", "", str(tmp_path), "", ["colour"])
  assert len(paths) == 1 and [s["reason"] for s in skipped] == [
      "listed again (line 3; first on line 2)"]
  # Under another name: a link to it, a hard link (trained twice, under two labels, unsaid).
  os.symlink(tmp_path / "a-7.jpg", tmp_path / "alias.jpg")
  os.link(tmp_path / "a-7.jpg", tmp_path / "hard.jpg")
  path.write_text("file,colour\na-7.jpg,Red\nalias.jpg,Blue\nhard.jpg,Red\n")
  paths, _, skipped = scan_manifest_columns(str(path), "file", "", str(tmp_path), "", ["colour"])
  assert len(paths) == 1 and [s["reason"] for s in skipped] == [
      "listed again (line 3; first on line 2), with other labels (Blue)",
      "listed again (line 4; first on line 2)"]
  # Not by spelling where the file says otherwise: sub/../a-7.jpg, sub a link, is another file.
  os.makedirs(tmp_path / "deep" / "inner")
  (tmp_path / "deep" / "a-7.jpg").write_bytes(b"y")
  os.symlink(tmp_path / "deep" / "inner", tmp_path / "sub")
  path.write_text("file,colour\na-7.jpg,Red\nsub/../a-7.jpg,Blue\n")
  paths, _, skipped = scan_manifest_columns(str(path), "file", "", str(tmp_path), "", ["colour"])
  assert len(paths) == 2 and not skipped


def test_a_jsonl_column_may_be_left_out_of_some_rows(tmp_path):
  """Exporters drop null keys: a label column missing from the first row is still a column (that
  row is skipped as unlabelled), and one in no row at all is refused."""

  for i in range(1, 4):
    (tmp_path / f"{i}.jpg").write_bytes(b"x")
  path = tmp_path / "skus.jsonl"
  path.write_text('{"id": 1}\n{"id": 2, "colour": "Red"}\n{"id": 3, "colour": "Blue"}\n')
  paths, values, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                                 ["colour"])
  assert values == [["Red", "Blue"]] and [s["reason"] for s in skipped] == ["no colour (line 1)"]
  with pytest.raises(DataError, match=r"has no column 'usage' \(columns: id, colour\)"):
    scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg", ["usage"])
  # Another case or a near spelling of a column (styles.csv's articleType): suggested.
  for asked, meant in (("Colour", "colour"), ("color", "colour")):
    with pytest.raises(DataError, match=rf"has no column '{asked}' \(did you mean '{meant}'\?\) "
                                        r"\(columns: id, colour\)"):
      scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg", [asked])


def test_an_unclosed_quote_in_a_csv_is_named_with_its_line(tmp_path, caplog):
  from jaxgan.data import manifest

  small = tmp_path / "small.csv"
  small.write_text('id,type\n1,a\n2,"b\n3,c\n4,d\n')
  with caplog.at_level(logging.WARNING):
    rows = manifest_rows.read_rows(str(small))
  assert len(rows) == 2  # what CSV says: row 2's field runs to the end of the file
  assert f"{small}:3: a row runs over lines 3-5" in caplog.text
  # As a label: refused (a set of one image of class 'b\n3,c\n4,d' was written).
  with pytest.raises(DataError, match=r"^\S+small.csv \(line 3\): its type value runs over lines "
                     r"\('b\\n3,c\\n4,d'\), which no class name does: a quote "
                     "opened there is probably not closed; fix the quoting$"):
    manifest.scan_manifest_columns(str(small), "", "id", str(tmp_path), "{id}.jpg", ["type"])
  blank = tmp_path / "blank.csv"  # blank lines are skipped, not a row over several lines
  blank.write_text("id,type\n\n1,a\n2,b\n")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert len(manifest_rows.read_rows(str(blank))) == 2
  assert "runs over" not in caplog.text
  large = tmp_path / "large.csv"  # the merged field outgrows csv's limit; blank lines before it
  large.write_text('id,type\n1,a\n\n2,"b\n' + "".join(f"{i},{'x' * 100}\n" for i in range(3, 3000)))
  with pytest.raises(DataError, match=r"large.csv:4: not valid CSV \(field larger than field "
                                      r"limit.*a quote opened in the row starting on this line"):
    manifest_rows.read_rows(str(large))
  # In the header itself: that line, not the one after it.
  (tmp_path / "header.csv").write_text('id,"' + "x" * 200000 + '"\n')
  with pytest.raises(DataError, match=r"header.csv:1: not valid CSV \(field larger"):
    manifest_rows.read_rows(str(tmp_path / "header.csv"))
  # Below a blank line where the header belongs: that line is named first.
  (tmp_path / "late.csv").write_text('\nid,"' + "x" * 200000 + '"\n1,a\n')
  with pytest.raises(DataError, match=r"late.csv:1: the header line is empty"):
    manifest_rows.read_rows(str(tmp_path / "late.csv"))


def test_manifest_rows_without_an_id_or_content_are_named(tmp_path):
  """A CSV cell left empty is no id (not a file '.jpg'); a header without rows, and a JSON id
  that is a list, are one-line errors; a listed file missing beside rows skipped for another
  reason is not "the images are elsewhere"."""
  (tmp_path / "1.jpg").write_bytes(b"x")
  path = tmp_path / "styles.csv"
  path.write_text("id,articleType\n,Shirts\n1,Shirts\n")
  paths, _, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                            ["articleType"])
  assert len(paths) == 1 and [s["reason"] for s in skipped] == ["no id (line 2)"]
  for text in ("id,articleType\n", "", "id,articleType\n  \n"):  # lines of spaces are empty
    path.write_text(text)
    with pytest.raises(DataError, match=r"styles.csv has no rows: a manifest lists its images one "
                                        r"per row \(under a CSV's header line, or a JSON object "
                                        r"each\)$"):
      scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg", ["articleType"])
  # A blank line where the header belongs, and Excel's separator hint above it: named (both
  # were "has no column 'id' (columns: ...)").
  for text, message in (("\nid,articleType\n1,Shirts\n", r":1: the header line is empty; a "
                         r"manifest's first line names its columns \(e.g. id,articleType\): remove "
                         r"the blank line\(s\) above it$"),
                        ("sep=,\nid,articleType\n1,Shirts\n", r":1: 'sep=,' is Excel's separator "
                         r"hint, not the header; delete that line \(the first line names the "
                         r"columns\)$")):
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}{message}"):
      scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg", ["articleType"])
  path.write_text("id,articleType\n1,Shirts\n   \n")  # was a row skipped: '1 fields where ...'
  paths, _, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                            ["articleType"])
  assert len(paths) == 1 and skipped == []
  # Inside a quoted field, such a line is the field's text, as written.
  path.write_text('id,note\n1,"a\n   \nb"\n')
  assert manifest_rows.read_rows(str(path)) == [{"id": "1", "note": "a\n   \nb"}]
  path.write_text("id,articleType\n2,Shirts\n1,\n")
  paths, _, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                            ["articleType"])
  assert paths == [] and [s["reason"] for s in skipped] == ["missing file (line 2)",
                                                            "no articleType (line 3)"]
  jsonl = tmp_path / "skus.jsonl"
  jsonl.write_text('{"id": [1], "type": "Shirts"}\n')
  with pytest.raises(DataError, match=r"skus.jsonl \(line 1\): id is a JSON list"):
    scan_manifest_columns(str(jsonl), "", "id", str(tmp_path), "{id}.jpg", ["type"])


def test_manifest_extensions_are_read_in_any_case_and_blank_trailing_fields_are_no_fields(
    tmp_path):
  from jaxgan.data.manifest_rows import read_rows

  rows = [{"file": "a.jpg", "type": "Watches"}, {"file": "b.jpg", "type": "Tshirts"}]
  (tmp_path / "SKUS.JSONL").write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert read_rows(str(tmp_path / "SKUS.JSONL")) == rows
  (tmp_path / "1.jpg").write_bytes(b"x")
  path = tmp_path / "styles.csv"
  path.write_text("id,baseColour\n1,Black, \n")  # a trailing delimiter and a space after it
  _, values, skipped = scan_manifest_columns(str(path), "", "id", str(tmp_path), "{id}.jpg",
                                             ["baseColour"])
  assert values == [["Black"]] and not skipped


def test_a_csv_with_rows_over_several_lines_names_the_first_of_them(tmp_path, caplog):
  path = tmp_path / "notes.csv"
  path.write_text('id,note\n1,a\n2,"two\nlines"\n3,b\n4,"more\nlines"\n')
  with caplog.at_level(logging.WARNING):
    assert len(manifest_rows.read_rows(str(path))) == 4
  assert [r.getMessage() for r in caplog.records] == [
      f"{path}:3: a row runs over lines 3-4 (a quoted field with line breaks, or an unclosed "
      "quote that swallows the rows after it); check the quoting there"]


def test_manifest_attribute_columns_and_class_counts_must_agree(tmp_path):
  path, images = _manifest(tmp_path, MANIFEST_ROWS[:2])
  base = {"data.source": "manifest", "data.path": str(path), "data.image_dir": str(images),
          "data.num_classes": 2}
  with pytest.raises(config_lib.ConfigError, match=r"data.label_columns: 'articleType' are extra "
                                                   r"attributes after data.label_column; set"):
    config_validation.validate(_config(**base, **{"data.label_columns": "articleType",
                                                  "data.extra_num_classes": "2"}), 1)
  with pytest.raises(config_lib.ConfigError,
                     match=r"data.extra_num_classes: '2' gives 1 extra attribute\(s\) but "
                           r"data.label_columns names 0"):
    config_validation.validate(_config(**base, **{"data.label_column": "articleType",
                                                  "data.extra_num_classes": "2"}), 1)


def test_labels_alike_in_unicode_are_one_class_and_case_variants_are_warned(tmp_path, caplog):
  """'Café' with one accented letter and with e + a combining accent (as macOS names folders)
  were two classes that print alike, as were 'Shoes' and 'Shoes' + a zero-width space;
  'Tshirts' and 'tshirts' became two without a word."""
  rows = [{"id": 1, "type": "Caf\u00e9"}, {"id": 2, "type": "Cafe\u0301"},
          {"id": 3, "type": "Shoes"}, {"id": 4, "type": "Shoes\u200b"},
          {"id": 5, "type": "Tshirts"}, {"id": 6, "type": "tshirts"}]
  path, images = _manifest(tmp_path, rows)
  with caplog.at_level(logging.WARNING):
    source = build_source(_config(**{"data.source": "manifest", "data.path": str(path),
                                     "data.image_dir": str(images), "data.num_classes": 4,
                                     "data.label_column": "articleType"}))
  assert source.class_names == ["Caf\u00e9", "Shoes", "Tshirts", "tshirts"]
  assert list(source.labels) == [0, 0, 1, 1, 2, 3]
  assert ("articleType: 'Tshirts' and 'tshirts' differ only in case, and are 2 classes; if each "
          "group is one class, make its spellings agree") in caplog.text
  root = tmp_path / "photos"  # folders: the two spellings of Café, one class
  _img(str(root / "Caf\u00e9" / "a.png"), (200, 0, 0))
  _img(str(root / "Cafe\u0301" / "b.png"), (0, 0, 200))
  _img(str(root / "Shoes" / "c.png"), (0, 200, 0))
  source = build_source(_config(**{"data.source": "folder", "data.path": str(root),
                                   "data.num_classes": 2}))
  assert source.class_names == ["Caf\u00e9", "Shoes"] and list(source.labels) == [0, 0, 1]
  # Format characters inside a name are its own (England's and Scotland's flags end in tag
  # characters: they were stripped, and the two classes merged); a name of spaces alone stays a
  # class (it read as "", the root's images, and its photos were skipped as outside the classes).
  flags = tmp_path / "flags"
  england = "Shirt \U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F"
  scotland = "Shirt \U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"
  for i, name in enumerate([england, scotland, " "]):
    _img(str(flags / name / f"{i}.png"), (0, 60 * i, 0))
  source = build_source(_config(**{"data.source": "folder", "data.path": str(flags),
                                   "data.num_classes": 3}))
  assert sorted(source.class_names) == sorted([england, scotland, " "])


def test_an_alias_link_of_a_class_folder_does_not_take_its_class(tmp_path, caplog):
  """Tees -> Tshirts, listed first (alphabetically), named the class 'Tees' and skipped
  Tshirts as 'already listed under another name'; the folder's own name wins now."""
  from jaxgan.data.folder import scan_folder

  root = tmp_path / "photos"
  _img(str(root / "Tshirts" / "a.png"), (200, 0, 0))
  _img(str(root / "Tshirts" / "old" / "b.png"), (200, 0, 0))
  _img(str(root / "Watches" / "w.png"), (0, 0, 200))
  os.symlink("Tshirts", root / "Tees")
  os.symlink("old", root / "Tshirts" / "archive")  # an alias below, too
  with caplog.at_level(logging.WARNING):
    paths, folders, _ = scan_folder(str(root))
  assert [os.path.relpath(p, root) for p in paths] == ["Tshirts/a.png", "Tshirts/old/b.png",
                                                       "Watches/w.png"]
  assert folders == ["Tshirts", "Tshirts", "Watches"]
  assert (f"{root / 'Tees'}: skipped, its folder {root / 'Tshirts'} is already listed as "
          f"{root / 'Tshirts'}") in caplog.text
  assert (f"{root / 'Tshirts' / 'archive'}: skipped, its folder {root / 'Tshirts' / 'old'} is "
          f"already listed as {root / 'Tshirts' / 'old'}") in caplog.text
  # The class folder itself a link into shared storage, and the alias a link to that link.
  store, linked = tmp_path / "store", tmp_path / "linked"
  _img(str(store / "Tops" / "t.png"), (200, 0, 0))
  linked.mkdir()
  os.symlink(store / "Tops", linked / "Tops")
  os.symlink("Tops", linked / "Blouses")
  paths, folders, _ = scan_folder(str(linked))
  assert folders == ["Tops"] and [os.path.relpath(p, linked) for p in paths] == ["Tops/t.png"]
  # An absolute alias: the same answer whether the root is named through a link or not.
  spelled = tmp_path / "spelled"
  os.symlink(linked, spelled)
  os.symlink(spelled / "Tops", linked / "Shirts")
  for path in (linked, spelled):
    assert scan_folder(str(path))[1] == ["Tops"]
  # A link that cannot be followed among the class folders (a loop) is no folder: the others'
  # checks stand (it ended the listing, and a link into another class took that class).
  loop = tmp_path / "loop"
  _img(str(loop / "Watches" / "w.png"), (0, 0, 200))
  _img(str(loop / "Accessories" / "a.png"), (200, 0, 0))
  os.symlink("../Watches", loop / "Accessories" / "watches")
  os.symlink("self", loop / "self")
  paths, folders, _ = scan_folder(str(loop))
  assert folders == ["Accessories", "Watches"]
  assert [os.path.relpath(p, loop) for p in paths] == ["Accessories/a.png", "Watches/w.png"]


def test_a_file_link_into_another_class_is_skipped(tmp_path, caplog):
  """Shirts/watch.jpg -> ../Watches/w.jpg trained the watch as a shirt too (the folder links
  into another class were skipped already; file links were followed)."""
  from jaxgan.data.folder import scan_folder

  root = tmp_path / "photos"
  _img(str(root / "Shirts" / "s.png"), (200, 0, 0))
  _img(str(root / "Watches" / "w.png"), (0, 0, 200))
  _img(str(tmp_path / "elsewhere" / "e.png"), (0, 200, 0))
  os.symlink("../Watches/w.png", root / "Shirts" / "a_watch.png")  # relative
  os.symlink(root / "Watches" / "w.png", root / "Shirts" / "b_watch.png")  # absolute
  os.symlink(root / "Shirts" / "s.png", root / "Shirts" / "c_same.png")  # its own class: kept
  os.symlink(tmp_path / "elsewhere" / "e.png", root / "Shirts" / "d_out.png")  # outside: kept
  with caplog.at_level(logging.WARNING):
    paths, folders, _ = scan_folder(str(root))
  assert [os.path.relpath(p, root) for p in paths] == [
      "Shirts/c_same.png", "Shirts/d_out.png", "Shirts/s.png", "Watches/w.png"]
  assert folders == ["Shirts", "Shirts", "Shirts", "Watches"]
  for name in ("a_watch.png", "b_watch.png"):
    assert (f"{root / 'Shirts' / name}: skipped, a link to {root / 'Watches' / 'w.png'}, which "
            f"{root / 'Watches'} lists") in caplog.text


def test_a_runs_workdir_among_the_photos_is_skipped_not_read(tmp_path, caplog):
  """A class folder holding a run (or a run as a class of its own) gave its sample grids, and
  generate's PNGs kept there, to the set as photos: prepare wrote 74 images of 3 classes from a
  folder of runs."""
  from jaxgan.data.folder import scan_folder

  root = tmp_path / "photos"
  _img(str(root / "shirts" / "a.png"), (200, 0, 0))
  _img(str(root / "shoes" / "b.png"), (0, 0, 200))
  run = root / "shoes" / "gan"  # a run: a config.json this jaxgan reads as a run's
  _img(str(run / "samples" / "step_0000002.png"), (9, 9, 9))
  (run / "config.json").write_text('{"train": {"batch_size": 8}}')
  other = root / "bags"  # a run as a class: checkpoint steps with a train state
  _img(str(other / "fakes" / "000000.png"), (9, 9, 9))
  os.makedirs(other / "checkpoints" / "2" / "state")
  kept = root / "hats"  # another tool's config.json: photos like any
  _img(str(kept / "c.png"), (0, 200, 0))
  (kept / "config.json").write_text('{"model_type": "bert"}')
  # One this jaxgan reads, but without a run's files beside it: a dataset's, kept.
  _img(str(root / "shirts" / "v2" / "d.png"), (200, 0, 0))
  (root / "shirts" / "v2" / "config.json").write_text('{"seed": 0}')
  _img(str(root / "shirts" / "v3" / "e.png"), (200, 0, 0))
  os.mkfifo(root / "shirts" / "v3" / "config.json")  # not opened (it waited forever)
  os.mkdir(root / "shirts" / "v3" / "samples")
  with caplog.at_level(logging.WARNING):
    paths, folders, _ = scan_folder(str(root))
  assert folders == ["hats", "shirts", "shirts", "shirts", "shoes"]
  assert [os.path.basename(p) for p in paths] == ["c.png", "a.png", "d.png", "e.png", "b.png"]
  for skipped in (other, run):
    assert (f"{skipped}: skipped, a jaxgan run's workdir (its images are sample grids, not "
            f"photos); move it out of {root}") in caplog.text


def test_symlinked_class_folders_are_followed_once_and_unlistable_ones_named(tmp_path,
                                                                            monkeypatch, caplog):
  from jaxgan.data.folder import scan_folder

  root, elsewhere = tmp_path / "photos", tmp_path / "shared" / "shoes"
  _img(str(root / "shirts" / "a.png"), (200, 0, 0))
  _img(str(elsewhere / "b.png"), (0, 0, 200))
  os.symlink(elsewhere, root / "shoes")
  os.symlink(root, root / "shirts" / "loop")  # a link back up the tree is not walked again
  with caplog.at_level(logging.WARNING):
    paths, folders, _ = scan_folder(str(root))
  assert folders == ["shirts", "shoes"]
  assert f"loop: skipped, its folder {os.path.realpath(root)} is already listed" in caplog.text
  assert [os.path.basename(p) for p in paths] == ["a.png", "b.png"]
  # A folder that cannot be listed (permissions, a lost mount) is named, not silently missing.
  real_scandir = os.scandir

  def scandir(path="."):
    if os.path.basename(str(path)) == "shoes":
      raise PermissionError(13, "Permission denied", str(path))
    return real_scandir(path)

  monkeypatch.setattr(os, "scandir", scandir)
  with pytest.raises(DataError, match=r"shoes: cannot list folder \(Permission denied\); make it "
                                      r"readable or remove it"):
    scan_folder(str(root))


def test_encode_labels():
  labels, names, kept = encode_labels(["b", "a", "b", "c", "b", "a"], min_count=2, rare="other")
  assert names == ["a", "b", "other"] and labels.tolist() == [1, 0, 1, 2, 1, 0] and kept.all()
  # The data's own "other" class takes the rare ones: one class of that name, not two.
  labels, names, _ = encode_labels(["other", "other", "a", "a", "rare"], min_count=2, rare="other")
  assert names == ["a", "other"] and labels.tolist() == [1, 1, 0, 0, 1]


def test_joint_dropping_leaves_no_class_below_the_minimum():
  from jaxgan.data.class_labels import encode_attributes

  # 'S' and 'X' are rare types (dropped); with them go both 'Green' rows, so Green, which had 2
  # rows before, has none: it must not stay a class.
  types = ["T", "T", "W", "W", "S", "X"]
  colours = ["Blue", "Blue", "Blue", "Blue", "Green", "Green"]
  labels, names, kept_by, kept = encode_attributes([types, colours], 2, "drop")
  assert names == [["T", "W"], ["Blue"]]
  assert labels.tolist() == [[0, 0], [0, 0], [1, 0], [1, 0]] and kept.tolist() == [True] * 4 + [False] * 2
  assert kept_by[0].tolist() == [True] * 4 + [False] * 2 and kept_by[1].all()


def test_images_that_cannot_fit_in_memory_are_refused_before_decoding(folder, tmp_path, capsys,
                                                                      monkeypatch):
  """5 files at 16x16 on a host of one byte less: refused in one line before any is decoded
  (a typo'd --image-size took the OS's kill or numpy's traceback after the decode started), by
  prepare and by a folder source, which does with data.cache_dir (a memory-mapped file)."""
  from jaxgan import resources
  from jaxgan.data import decode

  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 5 * 16 * 16 * 3 - 1)
  real_decode = decode._decode_into
  monkeypatch.setattr(decode, "_decode_into", lambda *a, **k: pytest.fail("decoded"))
  out = tmp_path / "out"
  assert prepare_cli.main(["--images", str(folder), "--image-size", "16", "--out", str(out)]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: 5 images at 16x16 (3 bytes a pixel) take 3.576e-06 GiB, more than this host's "
      "3.575e-06 GiB of memory; use a smaller --image-size, or train on the images with the "
      "folder or manifest source and data.cache_dir (decoded into a memory-mapped file)"]
  assert not out.exists()
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
                      "data.max_bad_fraction": 0.5})
  with pytest.raises(DataError, match=f"^decoding {folder}: 5 images at 16x16 .* of memory; set "
                     r"data.cache_dir \(decoded into a memory-mapped file\)$"):
    build_source(config)
  monkeypatch.setattr(decode, "_decode_into", real_decode)
  config.data.cache_dir = str(tmp_path / "cache")
  assert build_source(config).num_examples == 4
  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 5 * 16 * 16 * 3)  # fits: decoded
  assert prepare_cli.main(["--images", str(folder), "--image-size", "16", "--out", str(out),
                           "--max-bad-fraction", "0.5"]) == 0


def test_prepare_refuses_more_bad_files_than_max_bad_fraction_and_writes_nothing(
    folder, tmp_path, capsys, monkeypatch):
  """Files that fail to decode count against --max-bad-fraction (training's
  data.max_bad_fraction, 1 %), over the files decoded: broken.jpg is 1 of 5 (loose.png, outside
  the class folders, and notes.txt are not decoded). Past it nothing is written, and a set
  already in --out stays as it was."""
  args = ["--images", str(folder), "--image-size", "16", "--workers", "1"]
  out = tmp_path / "out"
  # The folders above --out that it made go too (they stayed behind, empty).
  assert prepare_cli.main(args + ["--out", str(tmp_path / "deep" / "er" / "out")]) == 2
  err = capsys.readouterr().err
  assert (f"1 of 5 images in {folder} are unusable, more than --max-bad-fraction=0.01 (first: "
          f"{folder / 'shirts' / 'broken.jpg'}: not an image); fix or remove them, or raise "
          "--max-bad-fraction") in err
  assert not (tmp_path / "deep").exists()
  assert prepare_cli.main(args + ["--out", str(out), "--max-bad-fraction", "0.2"]) == 0  # not more
  info = json.load(open(out / "dataset_info.json"))
  assert info["bad_files"] == 1 and info["max_bad_fraction"] == 0.2
  before = _hash_dir(out)
  assert prepare_cli.main(args + ["--out", str(out), "--max-bad-fraction", "0.19"]) == 2
  assert _hash_dir(out) == before
  for value in ("1.5", "-0.1", "nan"):
    with pytest.raises(SystemExit) as e:
      prepare_cli.main(args + ["--out", str(out), "--max-bad-fraction", value])
    assert e.value.code == 2
    assert "--max-bad-fraction must be a fraction in [0, 1]" in capsys.readouterr().err
  # Files the storage failed to read, also when retried, are not bad files: a higher fraction
  # would write a set without them, so the error says to prepare again instead.
  from jaxgan.data import decode, images as images_lib

  real_load = images_lib.load_image
  monkeypatch.setattr(decode, "load_image", lambda source, options: (
      images_lib.Loaded(None, "unreadable: Input/output error", transient=True)
      if str(source).endswith("a.png") else real_load(source, options)))
  assert prepare_cli.main(args + ["--out", str(out), "--max-bad-fraction", "0.2"]) == 2
  last = capsys.readouterr().err.splitlines()[-1]
  assert last.startswith(f"error: 2 of 5 images in {folder} are unusable, more than "
                         "--max-bad-fraction=0.2 (first: ")
  assert last.endswith("; 1 of them could not be read because of storage errors: prepare again "
                       "once the storage is healthy")
  assert _hash_dir(out) == before


def test_a_class_whose_files_all_fail_is_refused(tmp_path, capsys):
  root = tmp_path / "photos"
  _img(str(root / "shirts" / "a.png"), (200, 0, 0))
  _img(str(root / "shirts" / "b.png"), (190, 0, 0))
  (root / "shoes").mkdir()
  (root / "shoes" / "c.png").write_bytes(b"not a png")
  config = _config(**{"data.source": "folder", "data.path": str(root), "data.num_classes": 2,
                      "data.max_bad_fraction": 0.5})
  with pytest.raises(DataError, match=r"class 'shoes' has no usable image left: its files were "
                                      r"all skipped"):
    build_source(config)
  assert prepare_cli.main(["--images", str(root), "--out", str(tmp_path / "p"),
                           "--image-size", "16", "--workers", "1",
                           "--max-bad-fraction", "0.5"]) == 2
  assert "class 'shoes' has no usable image left" in capsys.readouterr().err
  # Unconditional training does not need the classes.
  assert build_source(_config(**{"data.source": "folder", "data.path": str(root),
                                 "data.num_classes": 0, "data.max_bad_fraction": 0.5})
                      ).num_examples == 2


def test_tfds_source_with_mock_data(caplog):
  import tensorflow_datasets as tfds

  config = _config(**{"data.source": "tfds", "data.tfds_name": "fashion_mnist",
                      "data.num_classes": 10})
  with tfds.testing.mock_data(num_examples=12):
    source = build_source(config)
  assert source.num_examples == 12 and source.images.shape == (12, 16, 16, 3)
  assert "upscaled" not in caplog.text  # 28x28 at 16: shrunk
  with tfds.testing.mock_data(num_examples=12), caplog.at_level(logging.WARNING):
    build_source(_config(**{"data.source": "tfds", "data.tfds_name": "fashion_mnist",
                            "data.num_classes": 10, "data.image_size": 32}))
  assert "12 of the 12 images of tfds fashion_mnist are smaller than 32 pixels" in caplog.text
  assert source.class_names[0] == "T-shirt/top" and len(source.class_names) == 10
  assert source.labels.min() >= 0 and source.labels.max() < 10
  # Examples the loader cannot take are skipped and counted as files are, not fatal: here all
  # of them (28x28 is below data.min_source_size=30), which is too many.
  config.data.min_source_size = 30
  with tfds.testing.mock_data(num_examples=12):
    with pytest.raises(DataError, match=r"12 of 12 images in tfds fashion_mnist are unusable, "
                       r"more than data.max_bad_fraction=.*fashion_mnist/train\[0\]: too small"):
      build_source(config)


def test_skipped_files_past_twenty_are_counted_and_where_to_list_them_said(tmp_path, caplog):
  """Only the first 20 are named (thousands would bury the log): the rest were named nowhere,
  and the line did not say where a full list comes from."""
  from jaxgan.data.arrays import check_bad_fraction

  skipped = [{"path": f"{i}.png", "reason": "empty file"} for i in range(25)]
  with caplog.at_level(logging.WARNING):
    check_bad_fraction(skipped, 100, 0.5, "photos", full_list="x.json lists every one")
    check_bad_fraction(skipped, 100, 0.5, "tfds x")  # a list nowhere: nothing said of one
  assert caplog.messages[:20] == [f"skipping {i}.png: empty file" for i in range(20)]
  assert caplog.messages[20] == "... and 5 more skipped files (x.json lists every one)"
  assert caplog.messages[41:] == ["... and 5 more skipped files"]
  # The folder and manifest sources name prepare's list.
  root = tmp_path / "photos"
  for i in range(22):
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "a" / f"{i}.png").write_bytes(b"")
  _img(str(root / "a" / "ok.png"), (9, 9, 9))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    build_source(_config(**{"data.source": "folder", "data.path": str(root),
                            "data.num_classes": 0, "data.max_bad_fraction": 0.99}))
  assert ("... and 2 more skipped files (`jaxgan.prepare` of the same images lists every one in "
          "its dataset_info.json)") in caplog.messages


def test_tfds_features_of_the_wrong_kind_are_one_line_and_empty_classes_warned_of(caplog):
  """A text or image feature as the label, or a label as the image, failed on the first example
  with a traceback (int(b'x'), an IndexError); classes a split holds no example of trained on
  nothing in silence (integer labels 7 and 8 made classes 0..8)."""
  import tensorflow_datasets as tfds

  from jaxgan.data import tfds_source

  base = {"data.source": "tfds", "data.tfds_name": "fashion_mnist", "data.num_classes": 10}
  for key, value, message in (
      ("data.tfds_label_key", "image", r"^data.tfds_label_key 'image': fashion_mnist's feature "
       r"'image' is a Image, not a ClassLabel or one number per example; its features that "
       r"are: label$"),
      ("data.tfds_image_key", "label", r"^data.tfds_image_key 'label': fashion_mnist's feature "
       r"'label' is a ClassLabel, not an image or an array of pixels \[H, W\] or \[H, W, C\]; "
       r"its features that are: image$")):
    with tfds.testing.mock_data(num_examples=4), pytest.raises(DataError, match=message):
      build_source(_config(**{**base, key: value}))
  features = tfds.features.FeaturesDict({
      "tag": tfds.features.Text(), "num": tfds.features.Tensor(shape=(), dtype=np.int64),
      "pixels": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
      "vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
      "flag": tfds.features.Tensor(shape=(), dtype=np.bool_),  # int() read these: still taken
      "one": tfds.features.Tensor(shape=(1,), dtype=np.float32)})
  # An unconditional run reads no label: whatever the key names.
  with tfds.testing.mock_data(num_examples=4):
    assert build_source(_config(**{**base, "data.num_classes": 0,
                                   "data.tfds_label_key": "image"})).num_examples == 4
  with pytest.raises(DataError, match=r"feature 'tag' is a Text, not a ClassLabel .* that are: "
                     r"num, flag, one$"):
    tfds_source._check_feature(features, "tiny", "data.tfds_label_key", "tag",
                               tfds_source._holds_labels, "a ClassLabel or one number per example")
  for key in ("num", "vector"):
    with pytest.raises(DataError, match=r"not an image; its features that are: pixels$"):
      tfds_source._check_feature(features, "tiny", "data.tfds_image_key", key,
                                 tfds_source._holds_images, "an image")
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    tfds_source._warn_of_empty_classes([7, 8, 8], [str(i) for i in range(9)], "tiny split "
                                       "'train'", "num")
    tfds_source._warn_of_empty_classes([0, 1], ["a", "b"], "tiny split 'train'", "label")
    tfds_source._warn_of_empty_classes([-1, 0, 1], ["a", "b"], "tiny", "label")  # -1: no label
  assert caplog.messages == [
      "tiny split 'train' holds no example of 7 of the 9 classes of 'num' (first: '0'): they "
      "stay classes of the model, trained on nothing; pick a split that holds every class, or "
      "another label feature"]


def test_tfds_loading_writes_lines_not_bar_redraws_off_a_terminal(capsys):
  """A cluster job's log got tqdm's carriage-return redraws as one long line (progress.py)."""
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=250):  # the mock's splits have no size
    build_source(_config(**{"data.source": "tfds", "data.tfds_name": "fashion_mnist",
                            "data.num_classes": 10}))
  err = capsys.readouterr().err
  assert "load fashion_mnist: 250 images done, " in err and "\r" not in err


def test_a_registered_tfds_dataset_finds_what_it_downloads_with(tmp_path):
  """What tfds.load does for fashion_mnist before its download (no network here), which mock_data
  skips: it imports importlib_resources, which tensorflow-datasets 4.9 does not declare (a fresh
  install failed with ModuleNotFoundError; pyproject.toml lists it)."""
  import tensorflow_datasets as tfds

  builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path))
  assert any(url.endswith("train-images-idx3-ubyte.gz") for url in builder.url_infos)


def test_a_prepared_tfds_set_loads_offline_and_one_not_prepared_fails_at_once(tmp_path, caplog):
  """A set TFDS prepared under data.tfds_data_dir (here its DummyMnist, generated without network)
  is read for real, not mocked. With data.tfds_download=False a set not prepared there is an
  error at once: a download on a host without network retries for minutes before it fails."""
  import tensorflow_datasets as tfds

  tfds.testing.DummyMnist(data_dir=str(tmp_path / "tfds")).download_and_prepare()
  config = _config(**{"data.source": "tfds", "data.tfds_name": "dummy_mnist",
                      "data.tfds_data_dir": str(tmp_path / "tfds"), "data.num_classes": 10,
                      "data.tfds_download": False})
  config_validation.validate(config, 1)
  source = build_source(config)
  assert source.num_examples == 20 and source.images.shape == (20, 16, 16, 3)
  assert source.class_names == [str(i) for i in range(10)]
  # fashion_mnist is registered (dummy_mnist is found from its prepared files only).
  config.data.tfds_name, config.data.tfds_data_dir = "fashion_mnist", str(tmp_path / "empty")
  caplog.clear()
  with caplog.at_level(logging.INFO), pytest.raises(
      DataError, match=r"data.tfds_name 'fashion_mnist' is not prepared under "
      + re.escape(str(tmp_path / "empty")) + r" and data.tfds_download is False: "
      r"prepare it on a host with network \(`tfds build fashion_mnist"):
    build_source(config)
  # That line alone: not TFDS's own warning before it ('Variant folder ... has no
  # dataset_info.json', of a folder that does not exist). Its other warnings stay (the one
  # naming another version prepared elsewhere explains a set not found).
  assert "dataset_info.json" not in caplog.text, caplog.text
  from jaxgan.data import tfds_source
  caplog.clear()
  with caplog.at_level(logging.WARNING), tfds_source._without_variant_folder_warnings():
    logging.getLogger("absl").warning("Variant folder %s has no %s", "x/3.0.1", "info")
    logging.getLogger("absl").warning("Found a different version of the requested dataset")
  assert caplog.messages == ["Found a different version of the requested dataset"]
  # Downloading (the default) says so first, with how to fail at once instead.
  config.data.tfds_download = True
  with caplog.at_level(logging.WARNING), pytest.raises(DataError, match="could not be loaded"):
    with mock.patch.object(tfds, "load", side_effect=OSError("no network")):
      build_source(config)
  assert "fashion_mnist is not prepared under" in caplog.text
  assert "data.tfds_download=False fails at once" in caplog.text


TFDS_PREPARED_AT_ONCE = r"""
import os, sys, time
import numpy as np
import tensorflow_datasets as tfds
from jaxgan.data import tfds_source
from jaxgan.data.images import LoadOptions

class SlowTiny(tfds.core.GeneratorBasedBuilder):  # registered as slow_tiny; prepared offline
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(16, 16, 3)),
        "label": tfds.features.ClassLabel(names=["a", "b"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(8):
      time.sleep(0.2)  # both processes are preparing it at once without the lock
      yield i, {"image": np.full((16, 16, 3), 30 * i, np.uint8), "label": i % 2}

data_dir, me, other = sys.argv[1:]
open(me, "w").close()
while not os.path.exists(other):  # both start preparing together
  time.sleep(0.01)
images, labels, names, skipped = tfds_source.load_tfds(
    "slow_tiny", "train", data_dir, "image", "label", LoadOptions(image_size=16))
print(len(images), sorted(labels.tolist()), names, skipped)
"""


def test_processes_sharing_a_tfds_data_dir_prepare_a_set_once(tmp_path):
  """Every process of a multi-process run loads the TFDS set; one not prepared yet was prepared
  by each at once, and TFDS's rename of each one's temporary folder into place failed for all
  but the first ('Destination ... already exists'): 7 of a SLURM node's 8 processes. One
  prepares it now, the others wait and read it."""
  ready = [tmp_path / "ready0", tmp_path / "ready1"]
  procs = [subprocess.Popen([sys.executable, "-c", TFDS_PREPARED_AT_ONCE, str(tmp_path / "tfds"),
                             str(ready[i]), str(ready[1 - i])], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "8 [0, 0, 0, 0, 1, 1, 1, 1] ['a', 'b'] 0", out
  assert not glob.glob(str(tmp_path / "tfds" / "slow_tiny" / "incomplete*"))


def test_tfds_examples_skipped_leave_every_other_image_with_its_own_label():
  """Examples 2 and 5 are too small and skipped: each kept image keeps its own label (image i
  is grey 20 i, label i % 10), none shifted onto its neighbour's."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  def examples():
    for i in range(12):
      side = 4 if i in (2, 5) else 28
      yield {"image": np.full((side, side, 1), 20 * i, np.uint8), "label": i % 10}

  def as_dataset(self, *args, **kwargs):
    return tf.data.Dataset.from_generator(
        examples, output_signature={"image": tf.TensorSpec((None, None, 1), tf.uint8),
                                    "label": tf.TensorSpec((), tf.int64)})

  config = _config(**{"data.source": "tfds", "data.tfds_name": "fashion_mnist",
                      "data.num_classes": 10, "data.max_bad_fraction": 0.2})
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    source = build_source(config)
  assert source.num_examples == 10 and source.bad_files == 2
  grey = source.images[:, 8, 8, 0].astype(int)
  assert list(grey // 20) == [0, 1, 3, 4, 6, 7, 8, 9, 10, 11]
  np.testing.assert_array_equal(source.labels, (grey // 20) % 10)


def test_tfds_encoded_images_are_decoded_by_the_one_loader():
  """An Image feature's encoded bytes go through the image loader as files do: transparency is
  composited onto white (TensorFlow's decoder would drop alpha: black under it)."""
  import io

  import tensorflow as tf
  import tensorflow_datasets as tfds

  def png(i):
    img = Image.new("RGBA", (28, 28), (0, 0, 0, 0))  # transparent black
    img.paste((200, 0, 0, 255), (14, 0, 28, 28))  # the right half opaque red
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()

  def as_dataset(self, *args, decoders=None, **kwargs):
    assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
    return tf.data.Dataset.from_generator(
        lambda: ({"image": png(i), "label": i % 10} for i in range(3)),
        output_signature={"image": tf.TensorSpec((), tf.string),
                          "label": tf.TensorSpec((), tf.int64)})

  config = _config(**{"data.source": "tfds", "data.tfds_name": "fashion_mnist",
                      "data.num_classes": 10, "data.max_bad_fraction": 0.0})
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    source = build_source(config)
  assert source.num_examples == 3 and source.images.shape == (3, 16, 16, 3)
  np.testing.assert_array_equal(source.images[:, 8, 2], [[255, 255, 255]] * 3)
  assert (source.images[:, 8, 13, 0] > 180).all() and (source.images[:, 8, 13, 1:] < 30).all()


def test_tfds_float_images_are_left_to_tfds_decoder():
  """A float32 Image feature is a PNG of the floats' bytes: read as an image it gives other
  pixels without an error (0.5 read as 192, not 128), so tfds decodes it and the array is
  converted; 8- and 16-bit ones are real PNGs, read by the loader."""
  import tensorflow_datasets as tfds

  from jaxgan.data.tfds_source import _bytes_are_an_image, _load_example
  from jaxgan.data.images import LoadOptions

  image = tfds.features.Image(shape=(16, 16, 1), dtype=np.float32)
  assert not _bytes_are_an_image(image, tfds)
  assert _bytes_are_an_image(tfds.features.Image(), tfds)
  assert _bytes_are_an_image(tfds.features.Image(shape=(8, 8, 1), dtype=np.uint16), tfds)
  assert not _bytes_are_an_image(tfds.features.Tensor(shape=(4,), dtype=np.uint8), tfds)
  decoded = np.full((16, 16, 1), 0.5, np.float32)  # what tfds's decoder gives
  loaded = _load_example(decoded, LoadOptions(16))
  assert not loaded.reason and (loaded.image == 128).all() and not loaded.upscaled


def test_tfds_images_fill_one_array_of_the_splits_size():
  """The split's size known: kept images are written into one array (not a list then stacked,
  twice the data set's memory), trimmed to those kept, extended if the info said too few."""
  from jaxgan.data.tfds_source import _Images

  def image(v):
    return np.full((4, 4, 3), v, np.uint8)

  for capacity, kept in [(3, 2), (3, 3), (2, 4), (None, 2)]:
    images = _Images(capacity, 4)
    for v in range(kept):
      images.append(image(v))
    out = images.array()
    assert len(images) == kept and out.shape == (kept, 4, 4, 3)
    np.testing.assert_array_equal(out[:, 0, 0, 0], np.arange(kept))


def _array_source(n=10, seed=0):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
  return ArraySource(images, np.arange(n) % 3, ["a", "b", "c"], seed)


def test_array_source_needs_one_label_per_image():
  with pytest.raises(DataError, match="3 images but 2 labels"):
    ArraySource(np.zeros((3, 4, 4, 3), np.uint8), np.zeros(2), ["a"], 0)


@pytest.mark.parametrize("labels, attributes, message", [
    ([0, 2], None, "class label 2 of example 1 is not one of its 2 classes"),
    ([0, -1], None, "class label -1 of example 1 is not one of its 2 classes"),
    ([[0, 0], [1, 3]], [("type", ["a", "b"]), ("colour", ["x", "y", "z"])],
     "colour label 3 of example 1 is not one of its 3 classes"),
    ([[0, 0], [1, 1]], [("type", ["a", "b"])], "labels of 2 attribute"),
])
def test_array_source_refuses_labels_that_are_not_class_indices(labels, attributes, message):
  # -1 would wrap to the last class in the embedding, and one past the end gives NaN.
  with pytest.raises(DataError, match=f"set X: {message}"):
    ArraySource(np.zeros((2, 4, 4, 3), np.uint8), np.asarray(labels), ["a", "b"], 0,
                attribute_names=attributes, where="set X")


def test_order_is_a_seeded_permutation_per_epoch_and_resumable():
  source = _array_source()
  stream = source.batches(5, 0)
  batches = [next(stream) for _ in range(4)]  # 2 epochs of 10
  first = [b["image"][:, 0, 0, 0] for b in batches]
  for b in batches:  # each image with its own label (image i has label i % 3)
    np.testing.assert_array_equal(b["label"], b["image"][:, 0, 0, 0] % 3)
  assert sorted(np.concatenate(first[:2])) == list(range(10))
  assert sorted(np.concatenate(first[2:])) == list(range(10))
  assert not np.array_equal(np.concatenate(first[:2]), np.concatenate(first[2:]))
  resumed = next(source.batches(5, 3))["image"][:, 0, 0, 0]
  np.testing.assert_array_equal(resumed, first[3])
  # Scattered rows of the global batch of 10 at step 1 (a process whose devices are not
  # contiguous in the mesh).
  step_1 = np.concatenate([first[2], first[3]])
  for rows in ([0, 1, 5, 6], [2, 3, 4, 7, 8, 9]):
    part = next(source.batches(10, 1, np.array(rows)))
    np.testing.assert_array_equal(part["image"][:, 0, 0, 0], step_1[rows])
    np.testing.assert_array_equal(part["label"], step_1[rows] % 3)
  other_seed = next(_array_source(seed=1).batches(10, 0))["image"][:, 0, 0, 0]
  assert not np.array_equal(other_seed, np.concatenate(first[:2]))


def _hash_dir(path):
  return {name: hashlib.sha256(open(os.path.join(path, name), "rb").read()).hexdigest()
          for name in sorted(os.listdir(path))}


def test_prepare_is_reproducible_and_readable(folder, tmp_path):
  args = ["--images", str(folder), "--image-size", "16", "--workers", "2",
          "--max-bad-fraction", "0.5"]
  assert prepare_cli.main(args + ["--out", str(tmp_path / "a")]) == 0
  assert prepare_cli.main(args + ["--out", str(tmp_path / "b")]) == 0
  assert _hash_dir(tmp_path / "a") == _hash_dir(tmp_path / "b")
  info = json.load(open(tmp_path / "a" / "dataset_info.json"))
  assert info["num_examples"] == 4 and info["image_size"] == 16
  assert info["class_names"] == ["shirts", "shoes"]
  assert sum(info["class_counts"].values()) == info["num_examples"]
  reasons = {os.path.basename(s["path"]): s["reason"] for s in info["skipped"]}
  assert reasons == {"broken.jpg": "not an image", "loose.png": "outside the class folders"}
  config = _config(**{"data.source": "prepared", "data.path": str(tmp_path / "a"),
                      "data.num_classes": 2})
  config_validation.validate(config, 1)
  prepared = build_source(config)
  direct = build_source(_config(**{"data.source": "folder", "data.path": str(folder),
                                   "data.num_classes": 2, "data.max_bad_fraction": 0.5}))
  np.testing.assert_array_equal(prepared.images, direct.images)
  np.testing.assert_array_equal(prepared.labels, direct.labels)
  assert prepared.bad_files == direct.bad_files == 1  # broken.jpg; loose.png is not an image
  with pytest.raises(config_lib.ConfigError, match="data.image_size: .* was prepared at 16, got 32"):
    config_validation.validate(_config(**{"data.source": "prepared",
                                          "data.path": str(tmp_path / "a"),
                                          "data.num_classes": 2, "data.image_size": 32}), 1)
  # A set prepared at a size the model cannot build (prepare allows 30): "set image_size=30"
  # led straight to the model's refusal of 30; it says "prepare again" alone.
  json.dump({**info, "image_size": 30}, open(tmp_path / "a" / "dataset_info.json", "w"))
  with pytest.raises(config_lib.ConfigError, match=r"^config key data.image_size: .*a was "
                     r"prepared at 30, which model 'dcgan' does not build \(sizes \[16, 32, 64, "
                     r"128, 256\]\); prepare it again at one of them \(--image-size\)$"):
    config_validation.validate(_config(**{"data.source": "prepared",
                                          "data.path": str(tmp_path / "a"),
                                          "data.num_classes": 2, "data.image_size": 32}), 1)
  # An edited dataset_info.json that lost a class: its labels no longer fit, named with the set.
  info["class_names"], info["class_counts"] = ["shirts"], {"shirts": 2}
  json.dump(info, open(tmp_path / "a" / "dataset_info.json", "w"))
  edited = _config(**{"data.source": "prepared", "data.path": str(tmp_path / "a"),
                      "data.num_classes": 1})
  config_validation.validate(edited, 1)
  with pytest.raises(DataError, match=f"{tmp_path / 'a'}: class label 1 of example"):
    build_source(edited)


def test_file_cache_gives_the_same_data(folder, tmp_path):
  base = {"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
          "data.max_bad_fraction": 0.5}
  memory = build_source(_config(**base))
  cached = build_source(_config(**base, **{"data.cache_dir": str(tmp_path / "cache")}))
  again = build_source(_config(**base, **{"data.cache_dir": str(tmp_path / "cache")}))
  assert isinstance(again.images, np.memmap)
  for source in (cached, again):
    np.testing.assert_array_equal(np.asarray(source.images), memory.images)
  np.testing.assert_array_equal(next(again.batches(4, 3))["image"], next(memory.batches(4, 3))["image"])
  # An image replaced in place (new content, new size/mtime) is decoded again, not served stale.
  _img(str(folder / "shirts" / "a.png"), (0, 250, 0), size=(50, 40))
  fresh = build_source(_config(**base, **{"data.cache_dir": str(tmp_path / "cache")}))
  assert tuple(np.asarray(fresh.images)[0, 8, 8]) == (0, 250, 0)  # a.png sorts first
  assert tuple(np.asarray(again.images)[0, 8, 8]) == (200, 0, 0)


@pytest.mark.patches_traced_code
def test_a_decode_with_nothing_skipped_writes_the_set_once(folder, tmp_path, monkeypatch):
  """Where no image was skipped, the decoded file is the cache (renamed): not copied into a
  second file of the same size (a 50 GB set would be written twice)."""
  os.remove(folder / "shirts" / "broken.jpg")
  memory = build_source(_config(**{"data.source": "folder", "data.path": str(folder),
                                   "data.num_classes": 2}))
  made = []
  open_memmap = np.lib.format.open_memmap
  monkeypatch.setattr(np.lib.format, "open_memmap",
                      lambda f, mode="r+", *a, **k: made.append(mode) or open_memmap(f, mode, *a,
                                                                                       **k))
  cached = build_source(_config(**{"data.source": "folder", "data.path": str(folder),
                                   "data.num_classes": 2, "data.cache_dir": str(tmp_path / "c")}))
  assert made.count("w+") == 1
  np.testing.assert_array_equal(np.asarray(cached.images), memory.images)
  np.testing.assert_array_equal(cached.labels, memory.labels)
  assert [n for n in os.listdir(tmp_path / "c") if "all" in n or "private" in n] == []


def test_images_smaller_than_the_image_size_are_counted_and_warned_of(folder, tmp_path, caplog):
  """Thumbnails (a catalog's 60x80 previews) trained at a larger size are interpolated pixels:
  the run says how many, also when it maps a cache, and `prepare` records the count."""
  from jaxgan import prepare as prepare_cli

  _img(str(folder / "shoes" / "d.png"), (0, 10, 190), size=(40, 30))  # 40: not below 32
  base = {"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
          "data.max_bad_fraction": 0.5, "data.cache_dir": str(tmp_path / "cache")}
  warning = (f"3 of the 4 images of {folder} are smaller than 32 pixels on their long side and "
             "were upscaled to 32x32: the model learns their interpolated pixels, not more "
             "detail; a smaller data.image_size keeps them sharp")
  for _ in range(2):  # decoded, then read from the cache
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      build_source(_config(**base, **{"data.image_size": 32}))
    assert [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()] == [warning]
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    build_source(_config(**base))  # 16x16: none is smaller
  assert "upscaled" not in caplog.text
  out = tmp_path / "set"
  assert prepare_cli.main(["--images", str(folder), "--out", str(out), "--image-size", "32",
                           "--workers", "1", "--max-bad-fraction", "0.5"]) == 0
  assert json.load(open(out / "dataset_info.json"))["upscaled"] == 3
  caplog.clear()  # and at each run on the prepared set
  with caplog.at_level(logging.WARNING):
    build_source(_config(**{"data.source": "prepared", "data.path": str(out),
                            "data.num_classes": 2, "data.image_size": 32}))
  assert [r.getMessage() for r in caplog.records if "upscaled" in r.getMessage()] == [
      warning.replace(str(folder), str(out)).replace("a smaller data.image_size",
                                                     "a smaller image size (prepare --image-size)")]


def test_decode_cache_publishes_whole_files_and_refuses_a_mismatched_index(folder, tmp_path,
                                                                           caplog, monkeypatch):
  from jaxgan.data import decode, images as images_lib

  cache = tmp_path / "cache"
  base = {"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
          "data.max_bad_fraction": 0.5, "data.cache_dir": str(cache)}
  first = build_source(_config(**base))
  # Only the published pair is left: no temporaries (private names carry host, pid and a
  # random part, so writers on hosts with equal pids never share one).
  names = sorted(os.listdir(cache))  # beside the lock that let one process build it
  assert len(names) == 3 and [n.rsplit(".", 1)[1] for n in names] == ["json", "lock", "npy"]
  # An index that does not fit the array (another writer's, or damaged) is a miss, not labels
  # shifted against the images.
  index = cache / names[0]
  meta = json.loads(index.read_text())
  index.write_text(json.dumps({"indices": meta["indices"][:-1], "skipped": meta["skipped"]}))
  with caplog.at_level(logging.WARNING):
    again = build_source(_config(**base))
  assert "its index lists 3 images, its array holds 4; decoding again" in caplog.text
  np.testing.assert_array_equal(np.asarray(again.images), np.asarray(first.images))
  np.testing.assert_array_equal(again.labels, first.labels)
  # A storage error (EIO) that has passed by the end of the decode: the retry reads the file.
  shutil.rmtree(cache)
  real_load = images_lib.load_image
  failures = {"d.png": 1}

  def flaky(source, options):
    name = os.path.basename(str(source))
    if failures.get(name, 0) > 0:
      failures[name] -= 1
      return images_lib.Loaded(None, "unreadable: Input/output error", transient=True)
    return real_load(source, options)

  monkeypatch.setattr(decode, "load_image", flaky)
  assert build_source(_config(**{**base, "data.workers": 1})).num_examples == 4
  assert len([n for n in os.listdir(cache) if n.endswith((".json", ".npy"))]) == 2
  # One that persists past the retry: skipped this run, and nothing is published (neither the
  # index nor the array, which would replace another process's complete one), so the next run
  # reads the file again instead of dropping it for good.
  shutil.rmtree(cache)
  failures["d.png"] = 2
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    partial = build_source(_config(**{**base, "data.workers": 1}))
  assert partial.num_examples == 3 and "not marked complete" in caplog.text
  assert [n for n in os.listdir(cache) if n.endswith((".json", ".npy"))] == []
  np.testing.assert_array_equal(np.asarray(partial.images)[:3], np.asarray(first.images)[:3])
  assert build_source(_config(**{**base, "data.workers": 1})).num_examples == 4
  # A file's own failure (permission denied) is no reason to decode everything at every start.
  shutil.rmtree(cache)
  monkeypatch.setattr(decode, "load_image", lambda source, options: (
      images_lib.Loaded(None, "unreadable: Permission denied") if str(source).endswith("d.png")
      else real_load(source, options)))
  assert build_source(_config(**{**base, "data.workers": 1})).num_examples == 3
  assert len([n for n in os.listdir(cache) if n.endswith((".json", ".npy"))]) == 2


def test_a_cache_dir_without_room_or_not_a_folder_is_a_one_line_error(folder, tmp_path,
                                                                      monkeypatch):
  """A full disk must fail in words before the memory-mapped write, which would die of SIGBUS
  (no message, full-size temporaries left behind); so must a cache dir that is not a folder."""
  import types

  from jaxgan import atomic_write

  cache = tmp_path / "cache"
  base = {"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
          "data.max_bad_fraction": 0.5}
  monkeypatch.setattr(atomic_write.os, "statvfs",
                      lambda path: types.SimpleNamespace(f_bavail=0, f_frsize=4096))
  with pytest.raises(DataError) as e:
    build_source(_config(**base, **{"data.cache_dir": str(cache)}))
  assert str(e.value) == (
      f"config key data.cache_dir ({cache}): decoding 5 images at 16x16 needs 7,680 bytes in "
      f"{cache}, which has 0 bytes free; free space there, or set data.cache_dir to another "
      "folder ('' keeps the decoded images in memory)")
  assert [n for n in os.listdir(cache) if n.endswith(".npy")] == []
  monkeypatch.undo()
  # Space taken between the check and the write (two builders that both passed the check): the
  # map's blocks are allocated first, so it fails in words, not of SIGBUS at a page.
  def disk_filled(fd, offset, length):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(atomic_write.os, "posix_fallocate", disk_filled)
  with pytest.raises(DataError, match=rf"^config key data.cache_dir \({cache}\): decoding 5 "
                     rf"images at 16x16 needs 3,968 bytes in {cache}, which has [\d,.]+ \w+ "
                     r"free; free space there"):
    build_source(_config(**base, **{"data.cache_dir": str(cache)}))
  assert [n for n in os.listdir(cache) if n.endswith(".npy")] == []
  monkeypatch.undo()
  (tmp_path / "a_file").write_text("")
  with pytest.raises(DataError, match=r"^config key data.cache_dir \(.*a_file/cache\): Not a "
                     r"directory: .*a_file.*; set data.cache_dir to a folder you can write to "
                     r"\(''"):  # not "free space there": the fix is another folder
    build_source(_config(**base, **{"data.cache_dir": str(tmp_path / "a_file" / "cache")}))


def test_workers_that_cannot_start_are_not_blamed_on_the_cache_dir(folder, tmp_path,
                                                                   monkeypatch):
  """No process left (EAGAIN), too many open files: the decode's own OSError names the workers
  and data.workers, not data.cache_dir's storage, which is fine."""
  import concurrent.futures
  import errno

  def cannot_fork(*args, **kwargs):
    raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", cannot_fork)
  config = _config(**{"data.source": "folder", "data.path": str(folder), "data.num_classes": 2,
                      "data.max_bad_fraction": 0.5, "data.workers": 2,
                      "data.cache_dir": str(tmp_path / "cache")})
  with pytest.raises(DataError, match=r"^decoding .*: starting 2 decoding worker processes "
                                      r"failed \(\[Errno 11\] Resource temporarily unavailable\); "
                                      r"if memory ran out, set data.workers lower$"):
    build_source(config)
  assert [n for n in os.listdir(tmp_path / "cache") if n.endswith(".npy")] == []


def test_a_decode_removes_the_temporaries_of_its_hosts_dead_processes(folder, tmp_path):
  """A SIGKILL (the OOM killer) skips the cleanup of a decode's full-size temporaries: the next
  decode of that cache removes them, but not a live process's nor another host's."""
  import socket
  import subprocess

  from jaxgan.data import decode
  from jaxgan.data.images import LoadOptions

  gone = subprocess.Popen(["true"])
  gone.wait()
  cache = tmp_path / "cache"
  cache.mkdir()
  target = cache / "decoded"
  host = socket.gethostname()
  stale = [f"decoded.{host}.{gone.pid}.0123abcd.all.npy", f"decoded.{host}.{gone.pid}.0123abcd.npy"]
  kept = [f"decoded.{host}.{os.getpid()}.4567cdef.all.npy", f"decoded.other-{host}.{gone.pid}.89ab"
          "cdef.all.npy", f"decoded.{host}-2.{gone.pid}.0123abcd.npy"]
  for name in stale + kept:
    (cache / name).write_bytes(b"x" * 100)
  paths = [str(folder / "shirts" / "a.png"), str(folder / "shoes" / "d.png")]
  images = decode.decode_all(paths, LoadOptions(16), workers=1, cache_file=str(target)).images
  assert images.shape == (2, 16, 16, 3)
  assert sorted(os.listdir(cache)) == sorted(kept + ["decoded.npy"])


@pytest.mark.parametrize("kept", [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 5, 6, 7, 9], [9], [0, 3]])
def test_skipped_files_are_compacted_in_place_not_copied(kept):
  """Without a cache, a decode that skipped files returns its kept rows as a view of the decode
  array (a copy doubled the peak memory of a large set for one bad file); chunks of 3 rows make
  later chunks read rows past those earlier ones wrote."""
  from jaxgan.data import decode

  out = np.random.default_rng(0).integers(0, 255, (10, 2, 2, 3), np.uint8)
  want = out[kept].copy()
  got = decode._compact(out, np.asarray(kept), chunk_bytes=3 * out[0].nbytes)
  np.testing.assert_array_equal(got, want)
  assert np.shares_memory(got, out)


def test_compaction_takes_a_chunk_of_memory_not_a_copy_of_the_set():
  import tracemalloc

  from jaxgan.data import decode

  out = np.zeros((200, 32, 32, 3), np.uint8)  # 3 KB rows; the first file was skipped
  indices = np.arange(1, 200)
  tracemalloc.start()
  decode._compact(out, indices, chunk_bytes=4 * out[0].nbytes)
  peak = tracemalloc.get_traced_memory()[1]
  tracemalloc.stop()
  assert peak < 10 * out[0].nbytes  # a copy of the kept rows would be 199 of them
  # The cached path's chunks too: rows per ~64 MB, not a fixed 4096 (12 GB at 1024x1024).
  assert decode._chunk_rows(np.zeros((2, 1024, 1024, 3), np.uint8)) == 21
  assert decode._chunk_rows(out, chunk_bytes=1) == 1


def test_storage_errors_are_retried_once_unless_there_are_too_many(monkeypatch):
  from jaxgan.data import decode, images as images_lib

  calls = []
  monkeypatch.setattr(decode, "load_image", lambda path, options: calls.append(path) or
                      images_lib.Loaded(np.zeros((2, 2, 3), np.uint8)))
  out, keep = np.ones((70, 2, 2, 3), np.uint8), np.zeros(70, bool)
  item = lambda i, transient: {"path": f"{i}.png", "reason": "unreadable: x", "index": i,
                               **({"transient": True} if transient else {})}
  # A few: read again (and kept when they read now); a file's own failure is not retried.
  marks = (keep, np.zeros(70, bool))
  left = decode._retry_transient([item(0, True), item(1, False)], None, out, marks)
  assert calls == ["0.png"] and keep[0] and not out[0].any() and left == [item(1, False)]
  # An outage (more than MAX_RETRIES): no retry, one timeout per file would only add up.
  many = [item(i, True) for i in range(decode.MAX_RETRIES + 1)]
  calls.clear()
  assert decode._retry_transient(many, None, out, marks) == many and calls == []


def test_storage_errors_up_to_max_retries_are_retried_and_keep_their_latest_reason(monkeypatch):
  """MAX_RETRIES files are still a hiccup (retried); a file that fails again reports the reason
  of its retry, not the first read's."""
  from jaxgan.data import decode, images as images_lib

  calls = []
  monkeypatch.setattr(decode, "load_image", lambda path, options: calls.append(path) or
                      images_lib.Loaded(None, "unreadable: Stale file handle", transient=True))
  n = decode.MAX_RETRIES
  out, marks = np.zeros((n, 2, 2, 3), np.uint8), (np.zeros(n, bool), np.zeros(n, bool))
  items = [{"path": f"{i}.png", "reason": "unreadable: x", "index": i, "transient": True}
           for i in range(n)]
  left = decode._retry_transient(items, None, out, marks)
  assert calls == [f"{i}.png" for i in range(n)] and not marks[0].any()
  assert [s["reason"] for s in left] == ["unreadable: Stale file handle"] * n
  assert all(s["transient"] for s in left)


def test_a_decode_lists_its_skipped_files_by_path_and_reason(folder, tmp_path):
  """The skipped list (written to a cache's index and a prepared set's info) holds each file's
  path and reason, not the decode's internal row index; the free-space check asks for room for
  the full array and its compacted copy."""
  from jaxgan.data import decode
  from jaxgan.data.images import LoadOptions

  paths = [str(folder / "shirts" / "a.png"), str(folder / "shirts" / "broken.jpg"),
           str(folder / "shoes" / "d.png")]
  got = decode.decode_all(paths, LoadOptions(8), workers=1)
  assert got.indices.tolist() == [0, 2] and got.images.shape == (2, 8, 8, 3)
  assert got.skipped == [{"path": paths[1], "reason": "not an image"}]
  # Room for the whole array but not for its compacted copy beside it: refused before writing.
  import types

  from jaxgan import atomic_write

  room = 3 * 8 * 8 * 3 * 3 // 2
  with mock.patch.object(atomic_write.os, "statvfs",
                         lambda path: types.SimpleNamespace(f_bavail=room, f_frsize=1)):
    with pytest.raises(OSError, match="decoding 3 images at 8x8 needs"):
      decode.decode_all(paths, LoadOptions(8), workers=1, cache_file=str(tmp_path / "c" / "d"))
  cached = decode.decode_all(paths, LoadOptions(8), workers=1, cache_file=str(tmp_path / "c" / "d"))
  assert cached.skipped == got.skipped


def test_decode_cache_key_names_the_files_contents_and_the_options(tmp_path):
  """A file rewritten in place at the same size (a new mtime), or other load options, name
  another decode; a file gone since the scan still has a key (the decode reports it)."""
  from jaxgan.data import decode
  from jaxgan.data.images import LoadOptions

  path = tmp_path / "a.png"
  _img(str(path), (200, 0, 0))
  key = decode.decode_cache_key([str(path)], LoadOptions(16))
  assert decode.decode_cache_key([str(path)], LoadOptions(16)) == key
  assert decode.decode_cache_key([str(path)], LoadOptions(32)) != key
  assert decode.decode_cache_key([str(path)], LoadOptions(16, background=(0, 0, 0))) != key
  stat = os.stat(path)
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  assert decode.decode_cache_key([str(path)], LoadOptions(16)) != key
  # Edited in place at the same size with its mtime put back (exiftool -P, touch -r): the
  # stale decode was served. The change time, which no program can set, tells it.
  key, stat = decode.decode_cache_key([str(path)], LoadOptions(16)), os.stat(path)
  time.sleep(0.05)  # past the kernel clock tick that timestamps files
  with open(path, "r+b") as f:
    f.seek(stat.st_size - 1)
    last = f.read(1)
    f.seek(stat.st_size - 1)
    f.write(last)  # the same byte written again: the file's ctime moves
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert os.stat(path).st_mtime_ns == stat.st_mtime_ns and os.stat(path).st_size == stat.st_size
  assert decode.decode_cache_key([str(path)], LoadOptions(16)) != key
  gone = decode.decode_cache_key([str(tmp_path / "gone.png")], LoadOptions(16))
  assert len(gone) == 16


def test_decode_cache_round_trips_its_index_and_misses_on_a_bad_one(tmp_path, caplog):
  """The index keeps the upscaled count (None for an index written before it was counted); one
  that lists more images than the array holds, or is not JSON, is a miss, not an error."""
  from jaxgan.data import decode

  cache = str(tmp_path / "decoded")
  np.save(cache + ".npy", np.zeros((2, 4, 4, 3), np.uint8))
  skipped = [{"path": "x.png", "reason": "not an image"}]
  decode.write_decode_index(cache, decode.Decoded(None, np.asarray([0, 2]), skipped, 1))
  got = decode.read_decode_cache(cache)
  assert got.indices.tolist() == [0, 2] and got.skipped == skipped and got.upscaled == 1
  with open(cache + ".json", "w") as f:
    json.dump({"indices": [0, 2], "skipped": []}, f)
  assert decode.read_decode_cache(cache).upscaled is None
  with open(cache + ".json", "w") as f:
    json.dump({"indices": [0, 1, 2], "skipped": []}, f)
  with caplog.at_level(logging.WARNING):
    assert decode.read_decode_cache(cache) is None
  assert "its index lists 3 images, its array holds 2" in caplog.text
  with open(cache + ".json", "w") as f:
    f.write('{"indices": [0, 2')  # cut short
  with caplog.at_level(logging.WARNING):
    assert decode.read_decode_cache(cache) is None
  assert "unreadable" in caplog.text


EXIT_AFTER_A_MAPPED_STREAM = r"""
import sys
import numpy as np
from jaxgan.data.arrays import ArraySource
images = np.lib.format.open_memmap(sys.argv[1], "w+", np.uint8, (500, 16, 16, 3))
images.flush()
stream = ArraySource(np.load(sys.argv[1], mmap_mode="r"), np.zeros(500, np.int32), ["a"],
                     seed=0).batches(256, 0)
for _ in range(5):
  next(stream)
print("done", flush=True)
"""


def test_a_process_reading_a_memory_mapped_set_exits():
  """The stream left open at exit (as a run's is): with a numpy callback inside tf.data for the
  mapped file, this process hung in the interpreter's shutdown, every time at these sizes."""
  import subprocess
  import sys
  import tempfile

  with tempfile.TemporaryDirectory() as tmp:
    proc = subprocess.run([sys.executable, "-c", EXIT_AFTER_A_MAPPED_STREAM,
                           os.path.join(tmp, "images.npy")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]


def test_a_memory_mapped_set_is_gathered_by_several_threads_into_the_same_batches(tmp_path):
  import threading

  from jaxgan.data import arrays

  # Image i holds i in its first two bytes, with label i % 3: both streams could be wrong alike,
  # so each batch is checked against that too.
  rng = np.random.default_rng(0)
  images = rng.integers(0, 255, (300, 4, 4, 3), np.uint8)
  images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(300) % 256, np.arange(300) // 256
  np.save(tmp_path / "images.npy", images)
  labels = (np.arange(300) % 3).astype(np.int32)
  mapped = ArraySource(np.load(tmp_path / "images.npy", mmap_mode="r"), labels, ["a", "b", "c"],
                       seed=1)
  in_memory = ArraySource(images, labels, ["a", "b", "c"], seed=1)
  threads, take = set(), np.take

  def recording_take(a, idx, axis=None, out=None, mode="raise"):
    threads.add(threading.current_thread().name)
    return take(a, idx, axis=axis, out=out, mode=mode)

  stream = mapped.batches(64, 3, rows=np.arange(8, 64))
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(arrays.np, "take", recording_take)
    got = [next(stream) for _ in range(3)]
  stream.close()
  want = in_memory.batches(64, 3, rows=np.arange(8, 64))
  for a in got:
    b = next(want)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    index = a["image"][:, 0, 0, 0] + 256 * a["image"][:, 0, 0, 1].astype(int)
    np.testing.assert_array_equal(a["label"], index % 3)
  assert len({t for t in threads if t.startswith("jaxgan-gather")}) > 1


def test_every_source_is_registered():
  assert set(SOURCES.names()) == {"synthetic", "folder", "manifest", "tfds", "prepared"}
  # Every key config validation refuses for the sources that do not read it is read by one.
  from jaxgan.data import SOURCE_KEYS
  read = set().union(*(SOURCES.get(name).reads for name in SOURCES.names()))
  assert read == set(SOURCE_KEYS)


@pytest.mark.skipif(not os.path.isdir(CATALOG), reason="../shared/data/catalog is not present")
def test_catalog_slice_prepares_and_trains(tmp_path):
  """300 real product photos with articleType labels: prepare, then train a few steps."""
  from jaxgan import trainer

  rows = open(os.path.join(CATALOG, "styles.csv")).read().splitlines()[:301]
  (tmp_path / "styles.csv").write_text("\n".join(rows) + "\n")
  out = tmp_path / "prepared"
  assert prepare_cli.main(["--images", os.path.join(CATALOG, "images"), "--manifest",
                           str(tmp_path / "styles.csv"), "--label-column", "articleType",
                           "--image-size", "16", "--min-class-count", "10", "--out", str(out)]) == 0
  info = json.load(open(out / "dataset_info.json"))
  assert info["num_examples"] + len(info["skipped"]) == 300
  assert sum(info["class_counts"].values()) == info["num_examples"]
  config = tiny_config(**{"data.source": "prepared", "data.path": str(out),
                          "data.num_classes": len(info["class_names"]), "train.num_steps": 3,
                          "train.log_every": 3, "train.tensorboard": False})
  state = trainer.train_and_evaluate(config, str(tmp_path / "w"))
  assert int(state.step) == 3


def test_bad_manifests_and_prepared_dirs_give_one_line_errors(tmp_path):
  latin = tmp_path / "latin.csv"
  # Past the text reader's first 8 KiB chunk, whose decode error counts from the chunk's start.
  rows = "".join(f"{i},Shoes\n" for i in range(2, 1502))
  latin.write_bytes(f"id,articleType\n{rows}1502,Caf\xe9\n".encode("latin-1"))
  offset = latin.read_bytes().index(b"\xe9")
  assert offset > 8192
  with pytest.raises(DataError, match=f"^{re.escape(str(latin))}:1502: not UTF-8 text \\(byte "
                                      f"{offset}, b'\\\\xe9'\\); re-save it as UTF-8$"):
    build_source(_config(**{"data.source": "manifest", "data.path": str(latin),
                            "data.label_column": "articleType"}))
  mac = tmp_path / "mac.csv"  # lines ended by \r alone (Excel for Mac), in Mac Roman
  mac.write_bytes(b"id,articleType\r1,Shoes\r2,Caf\x8e\r")
  with pytest.raises(DataError, match=f"^{re.escape(str(mac))}:3: not UTF-8 text \\(byte 28,"):
    build_source(_config(**{"data.source": "manifest", "data.path": str(mac),
                            "data.label_column": "articleType"}))
  nul = tmp_path / "nul.csv"
  nul.write_text("id,articleType\n1,Shoes\n2,Sho\0es\n")
  with pytest.raises(DataError, match=f"^{re.escape(str(nul))}:3: a NUL byte, which no text "
                                      "holds"):
    build_source(_config(**{"data.source": "manifest", "data.path": str(nul),
                            "data.label_column": "articleType"}))
  # In JSON, as \u0000 at a name's end: numpy's text arrays dropped it, and the rows then
  # missed their class and were dropped as rare (60 of 120 images trained, without a word).
  jsonl = tmp_path / "nul.jsonl"
  jsonl.write_text('{"id": 1, "articleType": "Shoes"}\n{"id": 2, "articleType": "Shoes\\u0000"}\n')
  with pytest.raises(DataError, match=rf"^{re.escape(str(jsonl))} \(line 2\): its articleType "
                     r"value 'Shoes\\x00' holds a NUL character, which no text does"):
    build_source(_config(**{"data.source": "manifest", "data.path": str(jsonl),
                            "data.label_column": "articleType"}))
  path, images = _manifest(tmp_path, MANIFEST_ROWS[:2])
  # '{id.real}': an AttributeError traceback of str.format.
  for pattern in ("{sku}.jpg", "{id.real}.jpg"):
    with pytest.raises(DataError, match=rf"data.image_pattern \(prepare: --image-pattern\) "
                                        rf"'{re.escape(pattern)}' cannot be filled"):
      build_source(_config(**{"data.source": "manifest", "data.path": str(path),
                              "data.image_dir": str(images), "data.image_pattern": pattern}))
  # A pattern naming no column: every row the same file (it trained on one image).
  for pattern in ("0.jpg", "{{id}}.jpg"):  # '{{' is a literal brace
    with pytest.raises(DataError, match=rf"^data.image_pattern '{re.escape(pattern)}' names no "
                                        r"column, so every row would be the same file"):
      build_source(_config(**{"data.source": "manifest", "data.path": str(path),
                              "data.image_dir": str(images), "data.image_pattern": pattern}))
  with pytest.raises(DataError, match="^label column 'articleType' is named twice"):
    scan_manifest_columns(str(path), image_dir=str(images),
                          label_columns=["articleType", "articleType"])
  damaged = tmp_path / "prepared"
  damaged.mkdir()
  (damaged / "dataset_info.json").write_text("{not json")
  with pytest.raises(DataError, match="is damaged"):
    build_source(_config(**{"data.source": "prepared", "data.path": str(damaged)}))
  assert prepare_cli.main(["--images", str(tmp_path / "nothing-here"), "--out",
                           str(tmp_path / "o")]) == 2
  # Flag names with '_' as with '-', as train and generate take them.
  args = prepare_cli.parse_args(["--images", "a", "--out", "b", "--image_size", "32",
                                 "--min-class-count=3"])
  assert (args.image_size, args.min_class_count) == (32, 3)


def test_a_folder_without_images_or_without_classes_says_so(tmp_path, caplog):
  from jaxgan.config import ConfigError
  from jaxgan.data.folder import scan_folder

  # Class folders without an image are named (they vanished from the classes without a word);
  # one whose name is read in another Unicode form is a class like any.
  classes = tmp_path / "classes"
  Image.new("RGB", (20, 20)).save(_mkdir(classes / "Shirts") / "a.png")
  Image.new("RGB", (20, 20)).save(_mkdir(classes / "Cafe\u0301") / "b.png")
  _mkdir(classes / "Empty")
  (_mkdir(classes / "Docs") / "notes.txt").write_text("not an image")
  os.symlink(_mkdir(tmp_path / "unmounted"), classes / "Linked")  # a link to an empty store
  os.symlink("Shirts", classes / "Tees")  # an alias: said as one, not as empty
  with caplog.at_level(logging.WARNING):
    scan_folder(str(classes))
  assert (f"{classes}: 3 folders have no image in them or below them, so no class: Docs, Empty, "
          "Linked") in caplog.text
  # A class folder linked into a store not mounted, and a link looping on itself: named as links
  # leading nowhere (they were counted among the files passed over for their extension).
  caplog.clear()
  os.symlink(str(tmp_path / "not-mounted" / "Shoes"), classes / "Shoes")
  os.symlink("Loop", classes / "Loop")
  with caplog.at_level(logging.WARNING):
    assert sorted(set(scan_folder(str(classes))[1])) == ["Caf\u00e9", "Shirts"]
  assert (f"{classes}: 2 links lead nowhere (their targets missing, e.g. on a store not mounted, "
          f"or a loop), so nothing is read through them: Loop -> Loop, Shoes -> "
          f"{tmp_path / 'not-mounted' / 'Shoes'}") in caplog.text
  assert "passed over for their extension" not in caplog.text  # Docs/notes.txt's alone

  junk = tmp_path / "junk"
  junk.mkdir()
  (junk / "notes.txt").write_text("not an image")
  with pytest.raises(DataError, match=r"^no images in .*junk: no file in it or below it ends in "
                                      r"\.jpg \.jpeg.* \(hidden folders and jaxgan runs' "
                                      r"workdirs are not read\)$"):  # not a class-count complaint
    build_source(_config(**{"data.source": "folder", "data.path": str(junk)}))
  flat = tmp_path / "flat"
  flat.mkdir()
  Image.new("RGB", (20, 20)).save(flat / "a.png")
  with pytest.raises(ConfigError, match=r"has no class labels, got 3; set "
                                        r"--config.data.num_classes=0 to train unconditionally "
                                        r"\(a folder's classes are its first-level subfolders\)$"):
    build_source(_config(**{"data.source": "folder", "data.path": str(flat)}))
  # A class folder named in a legacy encoding (Latin-1 from an old archive): refused before any
  # decoding, not a traceback from the grids' legend after it.
  latin = tmp_path / "latin"
  _img(str(latin / "A" / "a.png"), (200, 0, 0))
  os.makedirs(os.path.join(os.fsencode(latin), b"Acc\xe8s"))
  _img(os.path.join(os.fsencode(latin), b"Acc\xe8s", b"b.png").decode("utf-8", "surrogateescape"),
       (0, 200, 0))
  with pytest.raises(DataError, match=r"latin/Acc\\xe8s: a folder name that is not UTF-8 \(an "
                                      r"archive's legacy encoding\); rename it in UTF-8"):
    build_source(_config(**{"data.source": "folder", "data.path": str(latin),
                            "data.num_classes": 2}))
  # Unconditional: no class is named after it, and such runs trained before: they still do.
  assert build_source(_config(**{"data.source": "folder", "data.path": str(latin),
                                 "data.num_classes": 0})).num_examples == 2
  # A prepared set's from either, as prepare was told.
  assert prepare_cli.main(["--images", str(flat), "--out", str(tmp_path / "pflat"),
                           "--image-size", "16"]) == 0
  with pytest.raises(ConfigError, match=r"to train unconditionally \(a prepared set's classes are "
                                        r"its folder's first-level subfolders or its manifest's "
                                        r"--label-column: prepare it again with them\)$"):
    config_validation.validate(_config(**{"data.source": "prepared",
                                          "data.path": str(tmp_path / "pflat")}), 1)
  # A manifest's come from a column: the folder's hint misled there.
  (flat / "list.csv").write_text("id,path\n1,a.png\n")
  with pytest.raises(ConfigError, match=r"to train unconditionally, or set data.label_column to "
                                        r"the manifest's class column \(e.g. articleType\)$"):
    build_source(_config(**{"data.source": "manifest", "data.path": str(flat / "list.csv"),
                            "data.image_column": "path"}))


def test_prepare_checks_its_paths_first_in_its_flags_names(tmp_path, capsys, caplog):
  """Before any image is decoded, in the flags' own names (the loaders say data.path)."""
  (tmp_path / "photos").mkdir()
  Image.new("RGB", (20, 20)).save(tmp_path / "photos" / "a.png")
  (tmp_path / "afile").write_text("")
  photos, out = str(tmp_path / "photos"), str(tmp_path / "out")
  for args, message in (
      (["--images", str(tmp_path / "nope"), "--out", out],
       f"--images {tmp_path / 'nope'}: not a folder"),
      (["--images", photos, "--manifest", str(tmp_path / "m.csv"), "--label-column", "c", "--out",
        out], f"--manifest {tmp_path / 'm.csv'}: not a file"),
      (["--images", photos, "--out", str(tmp_path / "afile")],
       f"--out {tmp_path / 'afile'}: a file is there; pass a folder"),
      (["--images", photos, "--out", "gs://b/p"],  # the shards went there, the rest to 'gs:/b/p'
       "--out gs://b/p: URIs are not supported; give a local or mounted path"),
      (["--images", photos, "--out", str(tmp_path / "afile" / "sub")],  # /proc/x, a read-only mount
       f"--out {tmp_path / 'afile' / 'sub'}: cannot write there (Not a directory); pass a "
       "folder you can write to"),
      # The set among the photos: `evaluate --real photos` read the set instead of them.
      (["--images", photos, "--out", photos],
       f"--out {photos} is --images itself ({photos}): pass a folder outside the images, e.g. "
       f"{photos}_prepared"),
      (["--images", photos + "/", "--out", os.path.join(photos, "sub", "..", "set")],
       # (its '..' resolved as the OS does, where the flag is read)
       f"--out {os.path.join(os.path.realpath(photos), 'set')} is inside --images ({photos}/): "
       f"pass a folder outside the images, e.g. {photos}_prepared"),
      # Among other files (generated PNGs, a workdir, the photos' parent): `evaluate --fake`
      # of the folder read the set instead of its PNGs (an FID of the reals against themselves).
      (["--images", photos, "--out", str(tmp_path)],
       f"--out {tmp_path} holds 2 file(s) that are not a prepared set's (afile, photos), which "
       "tools given the folder would not read (they read the set): pass a new or empty folder, "
       "or one holding only an earlier set (it is replaced)")):
    assert prepare_cli.main(args) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
  assert not os.path.exists(out) and os.listdir(photos) == ["a.png"]
  # On Windows, paths on two drives have no common path: commonpath raises, and --out is not
  # inside --images (ntpath runs anywhere).
  from jaxgan.data.image_files import is_within

  assert not is_within("D:\\set", "C:\\photos", paths=ntpath)
  assert is_within("C:\\photos\\set", "C:\\photos", paths=ntpath)
  assert not is_within("C:\\photos_prepared", "C:\\photos", paths=ntpath)
  # A size no model builds: a set to evaluate against (at 299, say), not to train on.
  with caplog.at_level(logging.WARNING):
    assert prepare_cli.main(["--images", photos, "--out", out, "--image-size", "48",
                             "--workers", "1"]) == 0
  assert ("--image-size 48: no model builds that size (dcgan: [16, 32, 64, 128, 256]"
          in caplog.text and "can be evaluated against" in caplog.text)
  # An earlier set in --out is not another's files: prepared again, it is replaced; hidden files
  # (a desktop's .DS_Store, a killed preparation's write probe) are no reason to refuse.
  for hidden in (".DS_Store", ".write_probe.99999"):
    (tmp_path / "out" / hidden).write_text("")
  assert prepare_cli.main(["--images", photos, "--out", out, "--image-size", "32",
                           "--workers", "1"]) == 0
  assert json.load(open(os.path.join(out, "dataset_info.json")))["image_size"] == 32


def test_prepare_refuses_a_min_class_count_that_leaves_one_class(tmp_path, capsys):
  """Every class under --min-class-count, merged into 'other': one class, which a conditional
  model learns nothing from, found before any image is decoded."""
  for name, n in (("shirts", 3), ("shoes", 2)):
    (tmp_path / "photos" / name).mkdir(parents=True)
    for i in range(n):
      (tmp_path / "photos" / name / f"{i}.png").write_bytes(b"never decoded")
  args = ["--images", str(tmp_path / "photos"), "--out", str(tmp_path / "out"), "--workers", "1"]
  assert prepare_cli.main(args + ["--min-class-count", "4"]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: --min-class-count 4 leaves a single subfolder class, 'other', of 2 (largest: "
      "'shirts' 3, 'shoes' 2): a conditional model learns nothing from one class; pass a lower "
      "--min-class-count"]
  assert prepare_cli.main(args + ["--min-class-count", "3", "--rare-classes", "drop"]) == 2
  assert "leaves a single subfolder class, 'shirts', of 2" in capsys.readouterr().err
  assert prepare_cli.main(args + ["--min-class-count", "5", "--rare-classes", "drop"]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: --min-class-count 5 drops every subfolder class (largest: 'shirts' 3, 'shoes' 2); "
      "pass a lower --min-class-count"]
  assert not os.path.exists(tmp_path / "out")


def test_a_prepared_sets_class_count_mismatch_offers_its_own_counts_too():
  """A prepared set says its own class counts: the fix names data.num_classes=-1 beside the
  counts (one following the error alone never learnt of it); a source whose counts come from
  reading all its files does not."""
  from jaxgan.config import ConfigError
  from jaxgan.data import arrays

  one = [("articleType", ["Shirts", "Shoes", "Watches"])]
  two = one + [("baseColour", ["Black", "Blue"])]
  for source, offered in (("prepared", True), ("manifest", False)):
    config = _config(**{"data.source": source, "data.num_classes": 8})
    with pytest.raises(ConfigError) as single:
      arrays.require_attributes(config, one, "the set")
    assert str(single.value).endswith(
        "set --config.data.num_classes=3 (or -1 for the set's own count, or 0 to train "
        "unconditionally)" if offered else
        "set --config.data.num_classes=3 (or 0 to train unconditionally)")
    with config.unlocked():
      config.data.extra_num_classes = "5"
    with pytest.raises(ConfigError) as several:
      arrays.require_attributes(config, two, "the set")
    own = ("--config.data.num_classes=-1 --config.data.extra_num_classes='' for the set's own "
           "counts, or " if offered else "")
    assert str(several.value).endswith(
        "set --config.data.num_classes=3 --config.data.extra_num_classes=2 (or "
        f"{own}--config.data.num_classes=0 to train unconditionally)")


def test_class_counts_from_a_prepared_sets_info(tmp_path):
  """data.num_classes=-1: every attribute's count from dataset_info.json, before validation (a
  forgotten count used to train unconditionally for the whole run)."""
  from jaxgan.config import ConfigError
  from jaxgan.data import FROM_DATA, prepared, with_class_counts

  images = np.zeros((4, 16, 16, 3), np.uint8)
  labels = np.array([[0, 1], [1, 2], [2, 0], [0, 0]], np.int32)
  prepared.write_prepared(str(tmp_path / "set"), images, labels, ["a", "b", "c"], [],
                          attributes=[("type", ["a", "b", "c"]), ("colour", ["x", "y", "z"])])
  config = _config(**{"data.source": "prepared", "data.path": str(tmp_path / "set"),
                      "data.num_classes": FROM_DATA, "data.image_size": 16})
  with pytest.raises(ConfigError, match="data.num_classes: -1 .* was not read from data.path"):
    config_validation.validate(config, 1)
  resolved = with_class_counts(config)
  assert (resolved.data.num_classes, resolved.data.extra_num_classes) == (3, "3")
  from jaxgan import run as run_lib  # --compile_only's and the benchmark's way, processes agreed
  assert run_lib.with_data_counts(config).to_dict() == resolved.to_dict()
  assert config.data.num_classes == FROM_DATA  # the caller's config is left as it was
  config_validation.validate(resolved, 1)
  with config.unlocked():
    config.data.extra_num_classes = "3"
  with pytest.raises(ConfigError, match="data.extra_num_classes: '3' with data.num_classes=-1"):
    with_class_counts(config)
  missing = _config(**{"data.source": "prepared", "data.path": str(tmp_path / "none"),
                       "data.num_classes": FROM_DATA})
  with pytest.raises(ConfigError, match=r"^config key data.path: .*/none does not exist: data.path "
                                        r"must be a folder written by `python -m jaxgan.prepare` "
                                        r"\(data.num_classes=-1 reads the class counts of a "
                                        r"prepared set there; "):
    with_class_counts(missing)
  # A folder of images: the error names the folder source with num_classes given, not -1.
  (tmp_path / "photos").mkdir()
  Image.new("RGB", (16, 16), "red").save(tmp_path / "photos" / "a.jpg")
  photos = _config(**{"data.source": "prepared", "data.path": str(tmp_path / "photos"),
                      "data.num_classes": FROM_DATA})
  with pytest.raises(ConfigError, match=r"holds image files, not a prepared set; .* or train on "
                                        r"the files with data.source=folder \(.* with "
                                        r"data.source=folder, .* give --config.data.num_classes=N"
                                        r"\)$"):
    with_class_counts(photos)
  with missing.unlocked():  # a catalog config run without --config.data.path
    missing.data.path = ""
  with pytest.raises(ConfigError, match=r"^config key data.path: the prepared source needs the "
                                        r"folder written by `python -m jaxgan.prepare` .*; where "
                                        r"only its class counts are read .*, "
                                        r"--config.data.num_classes=N does without it$"):
    with_class_counts(missing)
  with missing.unlocked():  # as that says: the count given, no data on this machine
    missing.data.num_classes = 3
  config_validation.validate(missing, 1, reads_data=False)  # --compile_only, the benchmark
  # What is not about the data's files is still checked: the synthetic catalog's 8 categories.
  with pytest.raises(ConfigError, match="data.num_classes: the synthetic catalog has 8"):
    config_validation.validate(_config(**{"data.num_classes": 50}), 1, reads_data=False)
  with pytest.raises(ConfigError, match=r"^config key data.path: the prepared source needs"):
    config_validation.validate(missing, 1)  # training reads the data
  other = _config(**{"data.source": "folder", "data.path": str(tmp_path), "data.num_classes": -1})
  assert with_class_counts(other) is other
  with pytest.raises(ConfigError, match="or -1 with data.source=prepared"):
    config_validation.validate(other, 1)


DECODE_UNDER_A_SIGNAL = r"""
import concurrent.futures, multiprocessing, os, signal, struct, sys
import numpy as np
from PIL import Image
from jaxgan.data import decode
from jaxgan.data.images import LoadOptions

folder, mode = sys.argv[1], sys.argv[2]
paths = []
for i in range(1500):  # enough that chunks are still queued when the signal goes out
  paths.append(os.path.join(folder, f"{i}.png"))
  Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(paths[-1])
received = []
signal.signal(signal.SIGINT, lambda *a: received.append(1))  # the trainer's stop request
collect = decode._collect
pools = []

class KeptPool(concurrent.futures.ProcessPoolExecutor):
  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    # A writing end of the results pipe as a worker holds one (closed as it dies, below).
    pools.append((self, os.dup(self._result_queue._writer.fileno())
                  if mode == "killed-writing-a-result" else None))

concurrent.futures.ProcessPoolExecutor = KeptPool

def collect_after_a_signal(results, *args):
  def first_then_signal():
    for i, loaded in enumerate(results):
      if i == 0 and mode == "ctrl-c":
        os.killpg(0, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
      if i == 0 and mode == "worker-killed":
        os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)  # the OOM killer
      if i == 0 and mode == "killed-writing-a-result":
        # As a worker killed while it writes a result larger than the pipe's buffer leaves the
        # results pipe: its write lock held, a length and part of the bytes it announced, and
        # its writing end closed.
        pool, writing_end = pools[0]
        pool._result_queue._wlock.acquire()
        os.write(writing_end, struct.pack("!i", 1 << 20) + bytes(100))
        os.close(writing_end)
        os.kill(next(iter(pool._processes)), signal.SIGKILL)
      if i == 0 and mode == "parent-killed":  # a second Ctrl-C (SIG_DFL), or SIGKILL
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
      yield loaded
  collect(first_then_signal(), *args)

decode._collect = collect_after_a_signal
try:
  images, _, skipped, _ = decode.decode_all(paths, LoadOptions(8), workers=2)
  print(len(images), len(skipped), received)
except decode.DecodeError as e:
  print("DecodeError:", e)
"""


def _running(pid: int) -> bool:
  """Whether `pid` runs (a zombie nobody reaps, as under a container's PID 1, has ended)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except (FileNotFoundError, ProcessLookupError):
    return False


def _assert_workers_end(stdout: str) -> None:
  """The two decoding workers whose pids `stdout` lists end within 30 s (none left behind)."""
  import time

  workers = [int(pid) for pid in stdout.split()]
  assert len(workers) == 2
  deadline = time.monotonic() + 30
  while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not any(_running(pid) for pid in workers)


@pytest.mark.parametrize("mode", ["ctrl-c", "worker-killed", "killed-writing-a-result",
                                  "parent-killed"])
def test_decoding_workers_under_signals(tmp_path, mode):
  """A Ctrl-C reaches the decoding workers too: they leave it to the parent (whose stop request
  ends the run after the stage), instead of dying with their tasks, which left the decode
  waiting forever. A worker that dies anyway fails the decode with one line, also one killed
  while it writes a result (the executor read the rest of it forever: a group SIGTERM hung a
  run's start 1 time in 40). Workers whose parent died (a second Ctrl-C, SIGKILL) end too,
  instead of waiting for work forever."""
  import subprocess
  import sys

  proc = subprocess.run([sys.executable, "-c", DECODE_UNDER_A_SIGNAL, str(tmp_path), mode],
                        cwd=REPO, capture_output=True, text=True, timeout=120,
                        start_new_session=True)  # its own process group: pytest is not signalled
  if mode == "parent-killed":
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    _assert_workers_end(proc.stdout)
    return
  assert proc.returncode == 0, proc.stderr[-2000:]
  if mode == "ctrl-c":
    assert proc.stdout.split() == ["1500", "0", "[1]"]
  else:
    assert proc.stdout.startswith("DecodeError: a decoding worker process died")


PREPARE_UNDER_SIGTERM = r"""
import multiprocessing, os, signal, sys
import numpy as np
from PIL import Image
from jaxgan import cli, prepare
from jaxgan.data import decode

folder, out = sys.argv[1], sys.argv[2]
os.makedirs(folder)
for i in range(600):  # enough that chunks are still queued when the signal comes
  Image.fromarray(np.full((8, 8, 3), i % 256, np.uint8)).save(os.path.join(folder, f"{i}.png"))
collect = decode._collect

def collect_until_terminated(results, *args):
  def first_then_sigterm():
    for i, loaded in enumerate(results):
      if i == 0:  # kill PID, as a scheduler's preemption sends it: to this process alone
        print(*[p.pid for p in multiprocessing.active_children()], flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
      yield loaded
  collect(first_then_sigterm(), *args)

decode._collect = collect_until_terminated
sys.exit(cli.interruptible(prepare.main)(["--images", folder, "--out", out, "--image-size", "8",
                                          "--workers", "2"]))
"""


SECOND_SIGNAL_IN_CLEAN_UP = r"""
import concurrent.futures, os, signal
shutdown = concurrent.futures.ProcessPoolExecutor.shutdown

def shutdown_after_ctrl_c(self, *args, **kwargs):  # Ctrl-C while the first stop cleans up
  os.kill(os.getpid(), signal.SIGINT)
  return shutdown(self, *args, **kwargs)

concurrent.futures.ProcessPoolExecutor.shutdown = shutdown_after_ctrl_c
"""


def test_prepare_quits_at_once_on_ctrl_c_during_a_stops_clean_up(tmp_path):
  """A Ctrl-C after SIGTERM (or a second Ctrl-C), landing while the decode's workers were being
  shut down, raised KeyboardInterrupt there: the workers never heard of the shutdown, and the
  exit waited on them until a third Ctrl-C. Now it is the OS's: the process ends at once, and
  so do its workers."""
  import subprocess
  import sys

  script = PREPARE_UNDER_SIGTERM.replace("collect = decode._collect",
                                         SECOND_SIGNAL_IN_CLEAN_UP + "collect = decode._collect")
  proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "photos"),
                         str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                        timeout=90)
  assert proc.returncode == -signal.SIGINT, proc.stderr[-2000:]
  _assert_workers_end(proc.stdout)


def test_prepare_ended_by_sigterm_cleans_up_like_ctrl_c(tmp_path):
  """SIGTERM's default action ended prepare at once: the --out folder it had created stayed
  behind, empty. Now it ends like Ctrl-C (the decode's workers stopped, the folder removed),
  with one line and status 143."""
  import subprocess
  import sys

  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-c", PREPARE_UNDER_SIGTERM, str(tmp_path / "photos"),
                         str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
  assert proc.stderr.splitlines()[-1] == "terminated (SIGTERM)", proc.stderr[-2000:]
  assert not out.exists()
  _assert_workers_end(proc.stdout)
