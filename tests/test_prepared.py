"""data/prepared.py's writer: preparing again into the same folder replaces the set, and a write
that fails halfway never leaves a set that loads with mixed shards."""

import json
import os

import numpy as np
import pytest

from jaxgan.data import prepared, prepared_source
from jaxgan.data.arrays import DataError


def _images(n, value):
  return np.full((n, 4, 4, 3), value, np.uint8)


class FailingImages:
  """uint8 images whose `fail_at`-th read fails, as a full disk or a lost mount would."""

  def __init__(self, images, fail_at):
    self.images, self.fail_at, self.shape = images, fail_at, images.shape

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    if i == self.fail_at:
      raise OSError(28, "No space left on device")
    return self.images[i]


def test_preparing_again_replaces_the_set(tmp_path, monkeypatch):
  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(5, 10), np.zeros(5), ["a"], [])  # 3 shards
  prepared.write_prepared(out, _images(3, 20), np.zeros(3), ["a"], [])  # 2 shards
  assert sorted(os.listdir(out)) == [".prepare.lock", "dataset_info.json",
                                     "train-00000-of-00002.tfrecord",
                                     "train-00001-of-00002.tfrecord"]
  images, _, info = prepared.read_prepared(out)
  assert info["num_examples"] == 3 and (np.asarray(images) == 20).all()


def test_a_failed_rewrite_leaves_no_loadable_mix(tmp_path, monkeypatch):
  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(4, 10), np.zeros(4), ["a"], [])
  with pytest.raises(OSError, match="No space left"):
    # Shard 0 of the new set is written (same name as the old shard 0), shard 1 fails.
    prepared.write_prepared(out, FailingImages(_images(4, 20), fail_at=3), np.zeros(4), ["a"], [])
  # No temporary left: the old set's two shards (the first rewritten), and no info.
  assert sorted(os.listdir(out)) == [".prepare.lock", "train-00000-of-00002.tfrecord",
                                     "train-00001-of-00002.tfrecord"]
  with pytest.raises(DataError, match="dataset_info.json not found"):
    prepared.read_prepared(out)  # not the old info over a new and an old shard


def test_a_tensorflow_write_error_is_an_oserror_naming_the_shard(tmp_path, monkeypatch):
  from jaxgan import tf_host

  tf = tf_host.import_tensorflow()

  def full_disk(path):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

  monkeypatch.setattr(tf.io, "TFRecordWriter", full_disk)
  out = tmp_path / "set"
  with pytest.raises(OSError, match=r"train-00000-of-00001.tfrecord failed: No space left"):
    prepared.write_prepared(str(out), _images(2, 10), np.zeros(2), ["a"], [])
  assert os.listdir(out) == [".prepare.lock"]  # no partial shard


def test_with_a_cache_dir_the_images_are_memory_mapped_and_reused(tmp_path, monkeypatch):
  from tests.conftest import tiny_config

  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  out, cache = str(tmp_path / "set"), str(tmp_path / "cache")
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 4, 4, 3)).astype(np.uint8)
  prepared.write_prepared(out, images, np.array([0, 1, 1, 0, 1]), ["a", "b"], [])
  config = tiny_config(**{"data.source": "prepared", "data.path": out, "data.image_size": 4,
                          "data.num_classes": 2, "data.cache_dir": cache})
  in_memory = prepared_source.PreparedSource.from_config(
      tiny_config(**{"data.source": "prepared", "data.path": out, "data.image_size": 4,
                     "data.num_classes": 2}))
  first = prepared_source.PreparedSource.from_config(config)
  assert isinstance(first.images, np.memmap) and not isinstance(in_memory.images, np.memmap)
  np.testing.assert_array_equal(np.asarray(first.images), in_memory.images)
  np.testing.assert_array_equal(first.labels, in_memory.labels)
  # Images and labels beside the lock that let one process build them; no temporaries.
  assert sorted(n.split(".", 1)[1] for n in os.listdir(cache)) == ["labels.npy", "npy", "npy.lock"]
  # A second run maps the cache without reading the shards.
  monkeypatch.setattr(prepared, "_fill", lambda *a: pytest.fail("shards read again"))
  again = prepared_source.PreparedSource.from_config(config)
  np.testing.assert_array_equal(np.asarray(again.images), in_memory.images)
  np.testing.assert_array_equal(again.labels, in_memory.labels)
  # Preparing again (other images) names another cache file: never served stale.
  monkeypatch.undo()
  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  prepared.write_prepared(out, images[::-1].copy(), np.array([1, 0, 1, 1, 0]), ["a", "b"], [])
  fresh = prepared_source.PreparedSource.from_config(config)
  np.testing.assert_array_equal(np.asarray(fresh.images), images[::-1])
  np.testing.assert_array_equal(fresh.labels, [1, 0, 1, 1, 0])


def test_a_set_prepared_by_an_older_loader_is_warned(tmp_path, caplog):
  import json
  import logging

  from jaxgan.data.images import LOADER_VERSION
  from tests.conftest import tiny_config

  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(2, 5), np.zeros(2), [], [],
                          extra={"loader_version": LOADER_VERSION})
  config = tiny_config(**{"data.source": "prepared", "data.path": out, "data.image_size": 4,
                          "data.num_classes": 0})
  with caplog.at_level(logging.WARNING):
    prepared_source.PreparedSource.from_config(config)
  assert "image loader version" not in caplog.text
  info_path = os.path.join(out, prepared.INFO_FILE)
  info = json.load(open(info_path))
  info["loader_version"] = LOADER_VERSION - 1
  json.dump(info, open(info_path, "w"))
  with caplog.at_level(logging.WARNING):
    prepared_source.PreparedSource.from_config(config)
  assert f"prepared with image loader version {LOADER_VERSION - 1}, this jaxgan's is" in caplog.text
  del info["loader_version"]  # a set prepared before versions were recorded
  json.dump(info, open(info_path, "w"))
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    prepared_source.PreparedSource.from_config(config)
  assert "prepared with image loader version (not recorded), this jaxgan's is" in caplog.text


def test_a_set_an_older_jaxgan_wrote_with_other_twice_is_read(tmp_path):
  """Rare classes merged into the data's own 'other' once made a second 'other' (the first left
  empty): such sets trained, and are not damaged."""
  from tests.conftest import tiny_config

  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(3, 7), np.array([0, 2, 2]), ["Shirts", "other", "other"],
                          [])
  config = tiny_config(**{"data.source": "prepared", "data.path": out, "data.image_size": 4,
                          "data.num_classes": -1})
  assert prepared_source.PreparedSource.from_config(config).num_examples == 3
  from jaxgan import label_choices

  # The class its 'other' rows trained: the second (the first trained none).
  assert label_choices.resolve_label("other", ["Shirts", "other", "other"], 3) == 2
  info_path = os.path.join(out, prepared.INFO_FILE)  # any other shape: two classes of one name
  info = json.load(open(info_path))
  info["class_names"] = ["other", "other", "Shirts"]
  json.dump(info, open(info_path, "w"))
  with pytest.raises(DataError, match=r"class_names names 'other' twice"):
    prepared_source.PreparedSource.from_config(config)


@pytest.mark.parametrize("names, message", [
    # Trained and sampled two classes under one name (rows.txt said 'Shirts' twice).
    (["Shirts", "Shirts", "Watches"], r"class_names names 'Shirts' twice"),
    (["Shirts", None, "Watches"], r"class_names holds null, not a name"),  # was a class 'None'
    (["Shirts", "", "Watches"], r'class_names holds "", not a name'),
    (["Shirts", 3, "Watches"], r"class_names holds 3, not a name"),
    # A class without an image: the counts no longer fit the labels.
    (["Shirts", "Tees", "Watches", "Extra"], r"its class_names and class_counts do not fit"),
    (["Watches", "Shirts", "Tees"], r"its class_names and class_counts do not fit"),  # reordered
])
def test_an_info_file_whose_class_names_were_edited_is_damaged(tmp_path, names, message):
  from tests.conftest import tiny_config

  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(4, 7), np.array([0, 1, 2, 2]), ["Shirts", "Tees", "Watches"],
                          [])
  config = tiny_config(**{"data.source": "prepared", "data.path": out, "data.image_size": 4,
                          "data.num_classes": -1})
  prepared_source.PreparedSource.from_config(config)  # as written: read
  info_path = os.path.join(out, prepared.INFO_FILE)
  info = json.load(open(info_path))
  info["class_names"] = names
  json.dump(info, open(info_path, "w"))
  with pytest.raises(DataError, match=rf"dataset_info.json is damaged \(.*{message}.*; prepare the "
                                      "data set again$"):
    prepared_source.PreparedSource.from_config(config)


def test_a_damaged_info_file_and_a_cache_dir_without_room_are_one_line_errors(tmp_path,
                                                                              monkeypatch):
  import types

  from jaxgan import atomic_write
  from tests.conftest import tiny_config

  out, cache = str(tmp_path / "set"), str(tmp_path / "cache")
  prepared.write_prepared(out, _images(3, 7), np.zeros(3), [], [])
  info_path = os.path.join(out, prepared.INFO_FILE)
  good = open(info_path, "rb").read()
  with open(info_path, "wb") as f:
    f.write(b"\xff\xfe{}")  # not UTF-8
  with pytest.raises(DataError, match=r"dataset_info.json is damaged \(UnicodeDecodeError: .*\); "
                     "prepare the data set again$"):
    prepared.read_info(out)
  with open(info_path, "wb") as f:
    f.write(good)
  # No room for the memory-mapped copy: said before the write, which would die of SIGBUS.
  monkeypatch.setattr(atomic_write.os, "statvfs",
                      lambda path: types.SimpleNamespace(f_bavail=0, f_frsize=4096))
  config = tiny_config(**{"data.source": "prepared", "data.path": out, "data.image_size": 4,
                          "data.num_classes": 0, "data.cache_dir": cache})
  with pytest.raises(DataError) as e:
    prepared_source.PreparedSource.from_config(config)
  assert str(e.value) == (
      f"config key data.cache_dir ({cache}): copying 3 images at 4x4 of {out} needs 144 bytes in "
      f"{cache}, which has 0 bytes free; free space there, or set data.cache_dir to another "
      "folder ('' keeps the decoded images in memory)")
  assert [n for n in os.listdir(cache) if n.endswith(".npy")] == []


@pytest.mark.parametrize("damage, message", [
    ("missing", r"train-00001-of-00003.tfrecord listed in dataset_info.json is missing; prepare "
                r"the data set again"),
    # The last shard holds 1 example where 2 were written: found by its size.
    ("fewer", r"shard train-00002-of-00003.tfrecord of .* is truncated \(\d+ bytes; its 2 "
              r"images alone take 1536\); prepare the data set again"),
    ("cut", r"shard train-00001-of-00003.tfrecord of .* is truncated \(\d+ bytes; its 2 images "
            r"alone take 1536\); prepare the data set again"),
    ("more", r"holds more examples than its dataset_info.json says; prepare again"),
    ("flipped", r"shard train-00001-of-00003.tfrecord of .* is damaged \(DataLossError\); "
                r"prepare the data set again"),
])
def test_a_missing_truncated_overlong_or_damaged_shard_is_a_one_line_error(tmp_path, monkeypatch,
                                                                           damage, message):
  """Read whole (training's cache file) or batch by batch (`evaluate --real/--fake`): the same
  error, and a missing shard is said before the cache file takes any space."""
  import json

  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  out = tmp_path / "set"
  # 3 shards, of images large enough next to a record's other bytes for a cut to show in size.
  prepared.write_prepared(str(out), np.full((5, 16, 16, 3), 10, np.uint8), np.zeros(5), ["a"], [])
  info = json.loads((out / "dataset_info.json").read_text())
  shard = out / "train-00001-of-00003.tfrecord"
  if damage == "missing":
    shard.unlink()
  elif damage == "cut":  # a copy cut short: found by its size before any read
    shard.write_bytes(shard.read_bytes()[:len(shard.read_bytes()) // 2])
  elif damage == "flipped":
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
  else:
    info["num_examples"] += 1 if damage == "fewer" else -1
    (out / "dataset_info.json").write_text(json.dumps(info))
  cache = tmp_path / "cache"
  with pytest.raises(DataError, match=message):
    prepared.read_prepared(str(out), str(cache / "images.npy"))
  # No partial cache file left; for a shard missing or short, not even the folder made.
  found_early = damage in ("missing", "fewer", "cut")
  assert not cache.exists() if found_early else os.listdir(cache) == []
  with pytest.raises(DataError, match=message):
    list(prepared.iter_prepared(str(out), batch_size=2))
  if found_early:  # evaluate's early check of a --fake set, too
    from jaxgan.data import image_sets
    with pytest.raises(DataError, match=message):
      image_sets.check_readable(str(out), 2)


def test_a_preparation_waits_for_another_into_the_same_folder_and_clears_what_a_killed_one_left(
    tmp_path, monkeypatch):
  """A scheduler's retry while the first run still writes would publish a mix of both's shards:
  the second waits for the lock; temporaries a killed run left (a shard's is large) are removed."""
  import fcntl
  import threading

  from jaxgan.atomic_write import exclusive
  from jaxgan.data.prepared import write_prepared

  out = tmp_path / "set"
  out.mkdir()
  left = ["train-00000-of-00002.tfrecord.tmp", "dataset_info.json.host.123.abcdef12"]
  for name in left:
    (out / name).write_bytes(b"partial")
  # Training on what the killed one left says so (not "a folder written by jaxgan.prepare").
  with pytest.raises(DataError, match=r"dataset_info.json not found, but .*set holds shards: its "
                     r"`python -m jaxgan.prepare` did not finish \(killed, or it failed\); run"):
    prepared.read_info(str(out))
  images, labels = np.zeros((3, 4, 4, 3), np.uint8), np.array([0, 1, 0])
  done, locking = threading.Event(), threading.Event()
  worker = threading.Thread(target=lambda: (write_prepared(str(out), images, labels, ["a", "b"],
                                                           []), done.set()))
  real_flock = fcntl.flock

  def flock(handle, operation):  # tells when the worker asks for the lock (it then blocks)
    if threading.current_thread() is worker and operation == fcntl.LOCK_EX:
      locking.set()
    return real_flock(handle, operation)

  monkeypatch.setattr(fcntl, "flock", flock)
  with exclusive(str(out / ".prepare.lock")):
    with pytest.raises(DataError, match=r"dataset_info.json not found: .*set is being prepared "
                       r"now \(`python -m jaxgan.prepare` holds its lock\); wait for it"):
      prepared.read_info(str(out))
    before = sorted(os.listdir(out))
    worker.start()
    # Not a race against the worker's speed (its first write imports TensorFlow, seconds): it
    # asks for the lock before it writes anything, and then waits while another holds it.
    assert locking.wait(60), "write_prepared never took the folder's lock"
    assert not done.wait(0.5)
    assert sorted(os.listdir(out)) == before
  worker.join(60)
  assert done.is_set()
  assert sorted(os.listdir(out)) == [".prepare.lock", "dataset_info.json",
                                     "train-00000-of-00001.tfrecord"]


def test_a_failed_first_preparation_leaves_no_folder(tmp_path, monkeypatch, capsys):
  """prepare removes an --out it created when nothing was written into it (the lock alone is
  nothing); and only temporaries are cleared from a folder (a user's .bak is not touched)."""
  from PIL import Image

  from jaxgan import prepare, tf_host

  tf = tf_host.import_tensorflow()
  (tmp_path / "photos").mkdir()
  Image.new("RGB", (20, 20)).save(tmp_path / "photos" / "a.png")

  def full_disk(path):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

  monkeypatch.setattr(tf.io, "TFRecordWriter", full_disk)
  out = tmp_path / "out"
  assert prepare.main(["--images", str(tmp_path / "photos"), "--out", str(out),
                       "--image-size", "16"]) == 2
  assert "No space left on device" in capsys.readouterr().err
  assert not out.exists()
  monkeypatch.undo()
  kept = tmp_path / "kept"
  kept.mkdir()
  (kept / "dataset_info.json.bak").write_text("mine")
  prepared.write_prepared(str(kept), _images(1, 5), np.zeros(1), ["a"], [])
  assert (kept / "dataset_info.json.bak").read_text() == "mine"


def test_a_folder_that_is_not_a_prepared_set_says_what_it_is(tmp_path, monkeypatch, capsys):
  """Raw photos, a missing folder or a file given as data.path each get their own line (all
  were "dataset_info.json not found: data.path must be a folder written by prepare")."""
  from PIL import Image

  photos = tmp_path / "photos"
  (photos / "shirts").mkdir(parents=True)
  Image.new("RGB", (8, 8)).save(photos / "shirts" / "a.jpg")
  with pytest.raises(DataError, match=rf"{photos} holds image files, not a prepared set; prepare "
                     rf"it \(`python -m jaxgan.prepare --images {photos} --out SET`, then "
                     r"data.path=SET\) or train on the files with data.source=folder$"):
    prepared.read_info(str(photos))
  with pytest.raises(DataError, match=r"nowhere does not exist: data.path must be a folder"):
    prepared.read_info(str(tmp_path / "nowhere"))
  with pytest.raises(DataError, match=r"a.jpg is a file: data.path must be a folder"):
    prepared.read_info(str(photos / "shirts" / "a.jpg"))
  # Prepared from a relative path, the set records where its source is wherever it is read.
  monkeypatch.chdir(tmp_path)
  from jaxgan import prepare

  assert prepare.main(["--images", "photos", "--out", "set", "--image-size", "4",
                       "--workers", "1"]) == 0
  out, err = capsys.readouterr()
  assert out.startswith("wrote 1 image of 1 class to set (0 skipped")
  # One class subfolder: a conditional model of it learns nothing from its label.
  assert err == ("warning: every image is of one class ('shirts'): train it unconditionally "
                 "(--config.data.num_classes=0); data.num_classes=-1 would condition the model "
                 "on a label that never changes\n")
  Image.new("RGB", (8, 8)).save(photos / "b.jpg")  # outside the class folder: skipped, said so
  assert prepare.main(["--images", "photos", "--out", "set2", "--image-size", "4",
                       "--workers", "1"]) == 0
  assert capsys.readouterr().err.endswith(
      "never changes (the 1 image(s) outside its folder were skipped: move them into it to train "
      "on them too)\n")
  (photos / "b.jpg").unlink()
  assert prepared.read_info(str(tmp_path / "set"))["source"] == str(photos)
  (photos / "shirts" / "a.jpg").unlink()  # an empty folder: nothing to say but what it lacks
  with pytest.raises(DataError, match=r"dataset_info.json not found: data.path must be a folder "
                     "written by `python -m jaxgan.prepare`$"):
    prepared.read_info(str(photos))
