"""Prepared data sets: what `python -m jaxgan.prepare` writes and `data.source = 'prepared'`
(`prepared_source.py`), `evaluate` and the benchmark read.

Layout of OUT/:
  dataset_info.json          num_examples, image_size, class_names, class_counts, skipped,
                             bad_files (of skipped, those that failed to decode), upscaled
                             (of the images, those enlarged to image_size), shards;
                             with several label columns also attributes: [{column, class_names,
                             class_counts}, ...] (class_names/class_counts describe the first)
  train-00000-of-0000N.tfrecord ...   tf.train.Examples: 'image' (raw uint8 bytes, S*S*3),
                                      'label' (int64; A int64 values with A > 1 attributes)
  .prepare.lock              held while a preparation writes (one at a time into a folder)
Images are stored pre-resized and undecoded (raw bytes), so reading is a memcpy, and the files
are byte-identical when the same input is prepared again.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from jaxgan import stopping
from jaxgan import tf_host
from jaxgan.atomic_write import (check_free_space, exclusive, private_name, publish, remove_stale,
                                 reserve)
from jaxgan.data.arrays import Attributes, DataError
from jaxgan.data.image_files import is_image_path

log = logging.getLogger(__name__)

INFO_FILE = "dataset_info.json"
LOCK_FILE = ".prepare.lock"
EXAMPLES_PER_SHARD = 4096


def _counts(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, int]:
  counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))
  return {c: int(k) for c, k in zip(class_names, counts)}


def write_prepared(out_dir: str, images: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str], skipped: list[dict], extra: dict | None = None,
                   attributes: Optional[Attributes] = None) -> dict:
  """Writes the shards, then dataset_info.json, each through a temp file and a rename; the set
  is readable only once dataset_info.json is (an earlier set in `out_dir` is replaced).

  `labels` are int [N] for one attribute, or [N, A] with `attributes` [(column, class names)]
  for A > 1 (`class_names` then describes the first attribute).
  """
  tf = tf_host.import_tensorflow()
  labels = np.asarray(labels)
  multi = labels.ndim == 2
  if multi and len(attributes or ()) != labels.shape[1]:
    raise ValueError(f"labels of shape {labels.shape} need {labels.shape[1]} attributes, got "
                     f"{len(attributes or ())}")
  os.makedirs(out_dir, exist_ok=True)
  # One preparation at a time into a folder (a scheduler's retry while the first still runs
  # would publish a mix of both's shards); what a killed one left is removed first.
  with exclusive(os.path.join(out_dir, LOCK_FILE), f"preparing {out_dir}"):
    _remove_temporaries(out_dir)
    return _write_set(tf, out_dir, images, labels, multi, class_names, skipped, extra,
                      attributes)


_SHARD = re.compile(r"train-\d{5}-of-\d{5}\.tfrecord")  # a shard's name, any set size
# Temporaries of shards and of the info file: private_name's (host, pid, 8 hex digits), or the
# '.tmp' of older versions; nothing else (a user's dataset_info.json.bak is theirs).
_TEMPORARY = re.compile(rf"({_SHARD.pattern}|dataset_info\.json)\.(tmp|.+\.\d+\.[0-9a-f]{{8}})")


def _remove_temporaries(out_dir: str) -> None:
  """Removes the temporaries in `out_dir`: with the lock held, none is another preparation's, so
  each was left by one that was killed (SIGKILL, out of memory), and a shard's is large."""
  for name in sorted(os.listdir(out_dir)):
    if _TEMPORARY.fullmatch(name):
      with contextlib.suppress(OSError):
        os.remove(os.path.join(out_dir, name))
        log.warning("removed %s from %s, left by a preparation that did not finish", name,
                    out_dir)


def _write_set(tf, out_dir: str, images: np.ndarray, labels: np.ndarray, multi: bool,
               class_names: Sequence[str], skipped: list[dict], extra: Optional[dict],
               attributes: Optional[Attributes]) -> dict:
  """write_prepared's writing, under its lock."""
  # Preparing again into an existing set: its info goes first, so a write that fails halfway
  # leaves a folder that refuses to load (no dataset_info.json) rather than the old info over
  # a mix of new and old shards of the same names.
  info_path = os.path.join(out_dir, INFO_FILE)
  stopping.raise_if_interrupted()  # a stop Python dropped while decoding: the old set stays
  if os.path.exists(info_path):
    os.remove(info_path)
  n = len(images)
  num_shards = max(1, -(-n // EXAMPLES_PER_SHARD))
  shards = []
  content = hashlib.sha256()  # of every image and label: names caches of this set's content
  for s in range(num_shards):
    stopping.raise_if_interrupted()
    name = f"train-{s:05d}-of-{num_shards:05d}.tfrecord"
    tmp = private_name(os.path.join(out_dir, name))
    try:
      with tf.io.TFRecordWriter(tmp) as writer:
        for i in range(s * EXAMPLES_PER_SHARD, min(n, (s + 1) * EXAMPLES_PER_SHARD)):
          content.update(np.ascontiguousarray(images[i]).data)
          content.update(np.asarray(labels[i], np.int64).tobytes())
          feature = {
              "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                  value=[images[i].tobytes()])),
              "label": tf.train.Feature(int64_list=tf.train.Int64List(
                  value=[int(v) for v in labels[i]] if multi else [int(labels[i])])),
          }
          # deterministic: the feature map in key order. Otherwise its order is the hash
          # table's, which differs from process to process: the same input gave other bytes.
          writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                       .SerializeToString(deterministic=True))
    except BaseException as e:  # no partial shard left behind
      if os.path.exists(tmp):
        os.remove(tmp)
      if isinstance(e, tf.errors.OpError):  # disk full, permissions: not OSErrors in TensorFlow
        raise OSError(f"writing {os.path.join(out_dir, name)} failed: {e.message}") from e
      raise
    publish(tmp, os.path.join(out_dir, name))
    shards.append(name)
  first = labels[:, 0] if multi else labels
  info = {
      "num_examples": int(n),
      "image_size": int(images.shape[1]) if n else 0,
      "class_names": list(class_names),
      "class_counts": _counts(first, class_names) if class_names else {},
      "skipped": list(skipped),
      "shards": shards,
      "content_sha256": content.hexdigest(),
      "format": "tfrecord: image = raw uint8 bytes [image_size, image_size, 3], label = int64"
                + (f" [{labels.shape[1]}], one per entry of attributes" if multi else ""),
      **(extra or {}),
  }
  if multi:
    info["attributes"] = [{"column": c, "class_names": list(names),
                           "class_counts": _counts(labels[:, i], names)}
                          for i, (c, names) in enumerate(attributes)]
  tmp = private_name(info_path)
  stopping.raise_if_interrupted()  # before the set is published
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(info, f, indent=2, sort_keys=True)
    f.write("\n")
  publish(tmp, info_path)
  # Shards of an earlier, larger preparation (other -of- counts) are not this set's.
  for name in os.listdir(out_dir):
    if _SHARD.fullmatch(name) and name not in shards:
      os.remove(os.path.join(out_dir, name))
  return info


def foreign_files(out_dir: str) -> list[str]:
  """The names in `out_dir` that are not a prepared set's (its info, shards, a killed
  preparation's temporaries), sorted: a set written among other files (photos, a workdir)
  would be read in their place (`evaluate --fake DIR` reads the set, not the PNGs). Hidden
  names (.DS_Store, the lock, a killed prepare's write probe), which no reader takes for
  images, and a volume's lost+found are not counted."""
  try:
    names = os.listdir(out_dir)
  except OSError:
    return []
  return sorted(n for n in names if n not in (INFO_FILE, "lost+found") and not n.startswith(".")
                and not _SHARD.fullmatch(n) and not _TEMPORARY.fullmatch(n))


def holds_shards_or_temporaries(out_dir: str) -> bool:
  try:
    names = os.listdir(out_dir)
  except OSError:
    return False
  return any(_SHARD.fullmatch(n) or _TEMPORARY.fullmatch(n) for n in names)


def _preparation_running(out_dir: str) -> bool:
  """Whether a preparation holds `out_dir`'s lock now (tried without waiting, then let go)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
    with open(os.path.join(out_dir, LOCK_FILE), encoding="utf-8") as handle:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return True
  except (ImportError, OSError):  # no lock file, no locks: none known to be running
    return False
  return False


def _holds_images(folder: str) -> bool:
  """Whether `folder` or one of its subfolders (a class folder) holds an image file: raw
  photos given where a prepared set was expected."""
  try:
    with os.scandir(folder) as entries:
      entries = list(entries)
    for entry in entries:
      if entry.is_file() and is_image_path(entry.name):
        return True
    for entry in entries:
      if entry.is_dir() and not entry.name.startswith("."):
        with os.scandir(entry.path) as inner:
          if any(e.is_file() and is_image_path(e.name) for e in inner):
            return True
  except OSError:
    return False
  return False


def read_info(out_dir: str) -> dict:
  path = os.path.join(out_dir, INFO_FILE)
  if not os.path.isfile(path):
    if holds_shards_or_temporaries(out_dir):  # its info is written last (and removed first)
      if _preparation_running(out_dir):
        raise DataError(f"{path} not found: {out_dir} is being prepared now (`python -m "
                        "jaxgan.prepare` holds its lock); wait for it to finish")
      raise DataError(f"{path} not found, but {out_dir} holds shards: its `python -m "
                      "jaxgan.prepare` did not finish (killed, or it failed); run it again")
    if not os.path.isdir(out_dir):
      what = "is a file" if os.path.exists(out_dir) else "does not exist"
      raise DataError(f"{out_dir} {what}: data.path must be a folder written by "
                      "`python -m jaxgan.prepare`")
    if _holds_images(out_dir):
      raise DataError(f"{path} not found: {out_dir} holds image files, not a prepared set; "
                      f"prepare it (`python -m jaxgan.prepare --images {out_dir} --out SET`, "
                      "then data.path=SET) or train on the files with data.source=folder")
    raise DataError(f"{path} not found: data.path must be a folder written by "
                    "`python -m jaxgan.prepare`")
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
    kinds = {"num_examples": int, "image_size": int, "class_names": list, "shards": list}
    missing = [k for k in kinds if k not in info]
    if missing:
      raise KeyError(", ".join(missing))
    # An edited file's null or "64" failed later, as a TypeError traceback in whoever read it.
    for key, kind in kinds.items():
      if not isinstance(info[key], kind) or isinstance(info[key], bool):
        raise TypeError(f"{key} is {json.dumps(info[key])}, not "
                        f"{'an integer' if kind is int else 'a list'}")
    for a in info.get("attributes", []):
      if not isinstance(a, dict) or "column" not in a or "class_names" not in a:
        raise KeyError("attributes[].column, attributes[].class_names")
    for names in [info["class_names"]] + [a["class_names"] for a in info.get("attributes", [])]:
      _check_class_names(names)
    return info
  except OSError as e:  # unreadable (permissions, the storage): not the file's content
    raise DataError(f"{path} cannot be read: {e}") from e
  # ValueError: not JSON, or not UTF-8 (UnicodeDecodeError) either
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise DataError(f"{path} is damaged ({type(e).__name__}: {e}); prepare the data set again") from e


def _check_class_names(names: Any) -> None:
  """Raises ValueError for class names no `prepare` writes: an edited file's duplicate (two
  classes trained and sampled under one name), null (a class 'None'), empty or numeric one."""
  if not isinstance(names, list):
    raise TypeError(f"class_names is {json.dumps(names)}, not a list")
  bad = [n for n in names if not isinstance(n, str) or not n]  # a list: null is a bad name too
  if bad:
    raise ValueError(f"class_names holds {json.dumps(bad[0])}, not a name")
  # 'other' twice, the second last, is a set an older jaxgan wrote (the data's own 'other' and
  # the merged rare classes': every such row took the last, and the first was left empty), which
  # trained as it is.
  counts = collections.Counter(names)
  older = counts["other"] == 2 and names[-1] == "other"
  twice = [n for n, count in counts.items() if count > 1 and not (n == "other" and older)]
  if twice:
    raise ValueError(f"class_names names {twice[0]!r} twice")


def check_class_counts(info: dict, labels: np.ndarray, path: str) -> None:
  """Raises DataError where the info's class_counts (first attribute) are not the labels' own:
  an edited file whose class names no longer fit the shards (a name added, say, trained a
  class without images)."""
  recorded = info.get("class_counts")
  names = info["class_names"]
  if not isinstance(recorded, dict) or not names:  # unconditional, or not recorded
    return
  first = labels if labels.ndim == 1 else labels[:, 0]
  if int(first.max(initial=-1)) >= len(names):  # a label past the names: ArraySource names it
    return
  if recorded != _counts(first, names):
    raise DataError(f"{os.path.join(path, INFO_FILE)} is damaged (its class_names and "
                    "class_counts do not fit the shards' labels); prepare the data set again")


def attribute_names(info: dict) -> list[tuple[str, list[str]]]:
  """[(column, class names)] of every attribute of a prepared set ([] when unconditional)."""
  if "attributes" in info:
    return [(a["column"], list(a["class_names"])) for a in info["attributes"]]
  names = list(info["class_names"])
  return [(info.get("label_column") or "class", names)] if names else []


def read_prepared(out_dir: str, images_file: str = "") -> tuple[np.ndarray, np.ndarray, dict]:
  """(images uint8 [N, S, S, 3], labels int32 [N] (or [N, A] for A > 1 attributes), info) from
  the shards, in order. With `images_file`, the images are written there (a .npy, published
  whole by a rename, after the labels beside it: `labels_file`) and returned memory-mapped
  instead of held in memory."""
  info = read_info(out_dir)
  size, n = info["image_size"], info["num_examples"]
  a = len(info["attributes"]) if "attributes" in info else 1
  shard_files(out_dir, info)  # a missing shard is said before any space is taken
  private = private_name(images_file) + ".npy" if images_file else ""
  labels_tmp = private_name(labels_file(images_file)) + ".npy" if images_file else ""
  if private:
    folder = os.path.dirname(os.path.abspath(images_file))
    os.makedirs(folder, exist_ok=True)
    remove_stale(images_file)
    remove_stale(labels_file(images_file))
    check_free_space(folder, n * size * size * 3,
                     f"copying {n} images at {size}x{size} of {out_dir}")
    images = np.lib.format.open_memmap(private, "w+", np.uint8, (n, size, size, 3))
  else:
    images = np.empty((n, size, size, 3), np.uint8)
  labels = np.empty((n, a) if a > 1 else (n,), np.int32)
  try:
    if private:
      reserve(private, f"copying {n} images at {size}x{size} of {out_dir}")
    _fill(out_dir, images, labels)
    if private:
      images.flush()
      del images
      np.save(labels_tmp, labels)
      os.replace(labels_tmp, labels_file(images_file))
      os.replace(private, images_file)  # last: the images' presence marks a complete cache
      images = np.load(images_file, mmap_mode="r")
  finally:
    for leftover in (private, labels_tmp):
      if leftover and os.path.exists(leftover):
        os.remove(leftover)
  return images, labels, info


def _fill(out_dir: str, images: np.ndarray, labels: np.ndarray) -> None:
  """Reads the shards' examples into `images` and `labels`, in order."""
  at = 0
  for img, lab in iter_prepared(out_dir):
    images[at:at + len(img)], labels[at:at + len(img)] = img, lab
    at += len(img)


def iter_prepared(out_dir: str, batch_size: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images uint8 [n, S, S, 3], labels) batches of the shards' examples, in order: a set of
  any size in bounded memory. A missing, damaged, truncated or overlong shard is a DataError."""
  tf = tf_host.import_tensorflow()
  info = read_info(out_dir)
  size, n = info["image_size"], info["num_examples"]
  a = len(info["attributes"]) if "attributes" in info else 1
  files = shard_files(out_dir, info)
  spec = {"image": tf.io.FixedLenFeature([], tf.string),
          "label": tf.io.FixedLenFeature([a] if a > 1 else [], tf.int64)}

  def parse(records):
    ex = tf.io.parse_example(records, spec)
    return tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), (-1, size, size, 3)), ex["label"]

  at = 0
  for path in files:  # one at a time, so that a damaged one is named
    ds = tf.data.TFRecordDataset(path).batch(batch_size).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE)
    try:
      for img, lab in ds.prefetch(2).as_numpy_iterator():
        if at + len(img) > n:
          raise DataError(f"{out_dir} holds more examples than its {INFO_FILE} says; prepare "
                          "again")
        at += len(img)
        yield img, lab
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
      raise DataError(f"shard {os.path.basename(path)} of {out_dir} is damaged "
                      f"({type(e).__name__}); prepare the data set again") from e
  if at != n:
    raise DataError(f"{out_dir} holds {at} examples, {INFO_FILE} says {n}: a shard is truncated; "
                    "prepare the data set again")


def shard_files(out_dir: str, info: dict) -> list[str]:
  """The paths of a prepared set's shards; DataError naming the first one missing, or shorter
  than its examples' image bytes alone (a copy cut short: found by its size, before a read)."""
  files = [os.path.join(out_dir, s) for s in info["shards"]]
  n, size = info["num_examples"], info["image_size"]
  split = len(files) == max(1, -(-n // EXAMPLES_PER_SHARD))  # split as _write_set splits
  for s, f in enumerate(files):
    if not os.path.isfile(f):
      raise DataError(f"{f} listed in {INFO_FILE} is missing; prepare the data set again")
    examples = min(EXAMPLES_PER_SHARD, n - s * EXAMPLES_PER_SHARD)
    need = examples * size * size * 3  # each record holds its raw image, and more
    if split and os.path.getsize(f) < need:
      raise DataError(f"shard {os.path.basename(f)} of {out_dir} is truncated "
                      f"({os.path.getsize(f)} bytes; its {examples} images alone take {need}); "
                      "prepare the data set again")
  return files


def labels_file(images_file: str) -> str:
  return images_file[:-len(".npy")] + ".labels.npy"
