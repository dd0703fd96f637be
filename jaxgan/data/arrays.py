"""Decoded catalogs as uint8 arrays, served in an order that is a pure function of (seed,
position), computed by tf.data.

Every real source (folder, manifest, tfds, prepared) ends as an `ArraySource`: images
uint8 [N, S, S, 3] (in memory, or a memory-mapped cache file for sets larger than RAM) and labels
int32 [N] (one attribute) or [N, A] (A attributes, e.g. articleType and baseColour). Example `p`
of the infinite stream is example `pi(p mod N)`, `pi` a permutation keyed by (seed, p div N)
(`shuffle_order.py`): a seeded permutation per epoch that needs no state, so the iterator
position is just the step and a resumed run sees exactly the data of an uninterrupted one, on any
number of processes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import logging
from typing import Iterator, Optional, Sequence

import ml_collections
import numpy as np

from jaxgan import tf_host
from jaxgan.config.schema import ConfigError, attribute_classes
from jaxgan.data import shuffle_order
from jaxgan.data.images import LoadOptions

log = logging.getLogger(__name__)


class DataError(ValueError):
  """A data set that cannot be trained on; the message names the file and what to do."""


def cache_dir_problem(cache_dir: str, error: OSError) -> str:
  """The one-line error for data.cache_dir's storage failing: full, read-only, not a folder."""
  detail = error.strerror or str(error)
  if error.filename:
    detail += f": {error.filename}"
  fix = {errno.ENOSPC: "free space there, or set data.cache_dir to another folder",
         errno.EDQUOT: "free space there, or set data.cache_dir to another folder",
         # A process's file size limit (ulimit -f) or the file system's largest file.
         errno.EFBIG: "raise the file size limit (ulimit -f), or set data.cache_dir to a file "
                      "system that holds files this large",
         errno.EROFS: "set data.cache_dir to a writable folder",
         errno.EACCES: "make it writable, or set data.cache_dir to another folder",
         }.get(error.errno, "set data.cache_dir to a folder you can write to")
  return (f"config key data.cache_dir ({cache_dir}): {detail}; {fix} ('' keeps the decoded "
          "images in memory)")


def require_every_class(labels: np.ndarray, attributes: Attributes, where: str,
                        min_count: int = 1, listed: Optional[np.ndarray] = None) -> None:
  """Raises DataError naming a class left without images (every file of it skipped): it would
  still be a class of the model, and its grid rows and samples would be generated from nothing.
  Warns of classes that had `min_count` files listed (`listed`: the labels of every listed
  file) but fewer decode: they stay classes, as the class list is fixed before decoding."""
  labels = np.asarray(labels).reshape(len(labels), -1)
  if listed is not None:
    listed = np.asarray(listed).reshape(len(listed), -1)
  for a, (column, names) in enumerate(attributes):
    counts = np.bincount(labels[:, a], minlength=len(names))
    empty = [str(names[i]) for i in np.flatnonzero(counts == 0)]
    if empty:
      raise DataError(f"{where}: {column} {empty[0]!r} has no usable image left"
                      f"{f' ({len(empty)} classes in all)' if len(empty) > 1 else ''}: its files "
                      "were all skipped (see the log); fix them or remove the class")
    if listed is None:
      continue
    before = np.bincount(listed[:, a], minlength=len(names))
    few = [f"{column} {str(names[i])!r} ({counts[i]} of {before[i]})"
           for i in np.flatnonzero((counts < min_count) & (before >= min_count))]
    if few:
      log.warning("%s: fewer usable images than the minimum of %d once bad files were skipped, "
                  "in %s%s; they stay classes (fix the files, or raise the minimum)", where,
                  min_count, ", ".join(few[:10]), f" and {len(few) - 10} more" if len(few) > 10
                  else "")


def log_skipped_rows(rows: Sequence[dict], where: str, key: str) -> None:
  """Logs the entries skipped before decoding (a row without a label, a missing file, a row
  listed twice, a rare class): the first 20, then the count of each reason, so that a manifest
  whose images are half missing (a wrong --images, a sync not done) is not a quietly halved set.
  Not images: not counted against `key` (the bad-file fraction)."""
  for item in rows[:20]:
    log.warning("skipping %s: %s", item["path"], item["reason"])
  if rows:
    kinds = collections.Counter(str(r["reason"]).split(" (")[0] for r in rows)
    shown = ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common(4))
    log.warning("%d %s of %s skipped before decoding (%s%s); listed, not images, so not "
                "counted against %s", len(rows), "entry" if len(rows) == 1 else "entries", where,
                shown,
                f" and {len(kinds) - 4} other reasons" if len(kinds) > 4 else "", key)


def check_bad_fraction(skipped: list[dict], total: int, max_bad_fraction: float, where: str,
                       key: str = "data.max_bad_fraction", advice: str = "",
                       full_list: str = "") -> None:
  """Logs the skipped files (the first 20, then their count, with `full_list`: where every one
  is listed; thousands would bury the log); raises DataError when too many of them are bad
  (`key`: the setting's name in the caller's words, a config key or prepare's flag; `advice`:
  what to do, where not to fix the files or raise the setting)."""
  for item in skipped[:20]:
    log.warning("skipping %s: %s", item["path"], item["reason"])
  if len(skipped) > 20:
    log.warning("... and %d more skipped files%s", len(skipped) - 20,
                f" ({full_list})" if full_list else "")
  if total and len(skipped) / total > max_bad_fraction:
    first = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:3])
    raise DataError(f"{len(skipped)} of {total} images in {where} are unusable, more than "
                    f"{key}={max_bad_fraction} (first: {first}); "
                    f"{advice or f'fix or remove them, or raise {key}'}")


Attributes = Sequence[tuple[str, Sequence[str]]]  # [(column name, class names), ...]


class ArraySource:
  """Labelled uint8 images, streamed in a seeded, stateless order through tf.data.

  `class_names` are the first attribute's; `attribute_names` lists (column, class names) of every
  attribute ([] when unconditional).
  """

  multi_attribute = False  # whether this source can serve data.extra_num_classes (validation)
  reads: frozenset = frozenset()  # its SOURCE_KEYS (config validation refuses the others when set)
  # The data.* key naming a folder this source reads whole, or None: a run's workdir inside it
  # would be read as data (its sample grids as photos; a prepared set's foreign files).
  folder_key: Optional[str] = None
  # How config validation ends its message for a SOURCE_KEYS key set that this source ignores.
  unread_hint = "which does not read it; drop data.{key}"

  def __init__(self, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
               seed: int, bad_files: int = 0, attribute_names: Optional[Attributes] = None,
               where: str = "the data set"):
    if len(images) == 0:
      raise DataError(f"{where} has no usable images")
    if len(labels) != len(images):  # a misaligned list would train every image on a wrong label
      raise DataError(f"{where}: {len(images)} images but {len(labels)} labels: need one label "
                      "per image")
    self.images = images
    self.labels = np.asarray(labels, np.int32)
    self.class_names = list(class_names)
    if attribute_names is None:
      attribute_names = [("class", self.class_names)] if self.class_names else []
    self.attribute_names = [(str(c), list(n)) for c, n in attribute_names]
    check_label_range(self.labels, self.attribute_names, where)
    self.seed = seed
    self.bad_files = bad_files  # reported in the metrics

  @classmethod
  def for_config(cls, config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                 class_names: Sequence[str], bad_files: int = 0,
                 attribute_names: Optional[Attributes] = None,
                 where: str = "the data set") -> "ArraySource":
    """The source a run trains on: labels kept for conditional training (data.num_classes > 0),
    [N] for one attribute and [N, A] for several; all zero [N], no class names, unconditional."""
    labels = np.asarray(labels, np.int32)
    if config.data.num_classes <= 0:
      return ArraySource(images, np.zeros(len(labels), np.int32), [], config.seed,
                         bad_files=bad_files, attribute_names=[], where=where)
    if labels.ndim == 2 and labels.shape[1] == 1:
      labels = labels[:, 0]
    return ArraySource(images, labels, class_names, config.seed, bad_files=bad_files,
                       attribute_names=attribute_names, where=where)

  @property
  def num_examples(self) -> int:
    return len(self.images)

  def indices(self, positions):
    """Dataset indices of stream positions (a tf int64 tensor): a permutation per epoch, keyed
    by (data seed, epoch)."""
    return shuffle_order.epoch_permutation(positions, self.num_examples, self.seed)

  def index_dataset(self, batch_size: int, start_step: int, rows: Optional[np.ndarray] = None):
    """tf.data.Dataset of the example indices of `rows` (all by default) of each global batch of
    `batch_size`, from `start_step` on: row r of step s is stream position s * batch_size + r."""
    tf = tf_host.import_tensorflow()
    offsets = tf.constant(check_rows(rows, batch_size), tf.int64)
    ds = tf.data.Dataset.range(start_step, 2**62)
    ds = ds.map(lambda step: self.indices(step * batch_size + offsets),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(8)

  def batches(self, batch_size: int, start_step: int, rows: Optional[np.ndarray] = None
              ) -> Iterator[dict[str, np.ndarray]]:
    """{'image', 'label'} of `rows` of each global batch (see `index_dataset`).

    tf.data computes only the indices; numpy gathers the rows (300k-600k 64x64 images/s on one
    core, measured). So an in-memory set is not copied into a TensorFlow constant (twice the
    memory), and a memory-mapped one needs no Python callback inside tf.data: a numpy_function
    stage there left the interpreter hanging at exit (measured: batch 1024 of 64x64)."""
    pool = None
    if isinstance(self.images, np.memmap):
      # Rows of a mapped file not in the page cache are read by page faults, one at a time per
      # thread: several threads keep several reads in flight (numpy copies without the GIL).
      # Measured with the page cache dropped before each batch (docs/benchmarks.md,
      # benchmarks/memmap_gather.py): 8 threads faster in 17 of 20 pairs, by 0-50 %, on a VM
      # whose host caches the disk too. In memory, one thread is as fast.
      pool = concurrent.futures.ThreadPoolExecutor(GATHER_THREADS, "jaxgan-gather")
    try:
      for idx in self.index_dataset(batch_size, start_step, rows).as_numpy_iterator():
        yield {"image": _gather(self.images, idx, pool),
               "label": np.take(self.labels, idx, axis=0)}
    finally:
      if pool is not None:
        pool.shutdown(wait=False)


# Threads that gather the rows of a memory-mapped set (see ArraySource.batches).
GATHER_THREADS = 8


def _gather(images: np.ndarray, idx: np.ndarray,
            pool: Optional[concurrent.futures.ThreadPoolExecutor]) -> np.ndarray:
  """images[idx], split over `pool`'s threads when given."""
  if pool is None or len(idx) < 2 * GATHER_THREADS:
    return np.take(images, idx, axis=0)
  out = np.empty((len(idx),) + images.shape[1:], images.dtype)
  bounds = np.linspace(0, len(idx), GATHER_THREADS + 1).astype(int)

  def fill(part: int) -> None:  # straight into its slice of `out`: one copy
    lo, hi = bounds[part], bounds[part + 1]
    # mode="clip": with the default "raise", numpy gathers into a temporary buffer and copies it
    # into `out` again (3x slower in memory, measured); the indices are in range by construction.
    np.take(images, idx[lo:hi], axis=0, out=out[lo:hi], mode="clip")

  list(pool.map(fill, range(GATHER_THREADS)))  # re-raises a thread's error
  return out


def check_label_range(labels: np.ndarray, attributes: Attributes, where: str) -> None:
  """Raises DataError unless every label is a class index of its attribute: a label file out of
  step with its class names would reach the embedding, where -1 wraps to the last class and one
  past the end gives NaN, instead of failing."""
  if not attributes:
    return
  labels = labels.reshape(len(labels), -1)
  if labels.shape[1] != len(attributes):
    raise DataError(f"{where}: labels of {labels.shape[1]} attribute(s) for "
                    f"{len(attributes)} attribute name list(s); prepare the set again")
  for a, (column, names) in enumerate(attributes):
    bad = np.flatnonzero((labels[:, a] < 0) | (labels[:, a] >= len(names)))
    if len(bad):
      raise DataError(f"{where}: {column} label {int(labels[bad[0], a])} of example "
                      f"{int(bad[0])} is not one of its {len(names)} classes ({len(bad)} such "
                      "labels): the labels do not match the class names; prepare the set again")


def check_rows(rows: Optional[np.ndarray], batch_size: int) -> np.ndarray:
  """The rows of a global batch a process serves, as int64; all of them when None."""
  if rows is None:
    return np.arange(batch_size, dtype=np.int64)
  rows = np.asarray(rows, np.int64)
  if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= batch_size:
    raise ValueError(f"rows must be a non-empty list of indices below the batch size "
                     f"{batch_size}, got {rows!r}")
  return rows


def load_options(config: ml_collections.ConfigDict) -> LoadOptions:
  d = config.data
  return LoadOptions(image_size=d.image_size, min_source_size=d.min_source_size,
                     max_pixels=d.max_pixels)


def _warn_unconditional(where: str, classes: Sequence[int]) -> None:
  # Not an error (any data may be trained unconditionally), but a conditional config that forgot
  # data.num_classes would otherwise train for days without labels, silently.
  how = f"--config.data.num_classes={classes[0]}" + (
      f" --config.data.extra_num_classes={','.join(map(str, classes[1:]))}"
      if len(classes) > 1 else "")
  log.warning("%s has %s classes but data.num_classes=0: its labels are not used (set %s to "
              "condition on them)", where, " x ".join(map(str, classes)), how)


# Where each source's classes come from, for data without any.
_LABELS_FROM = {"folder": " (a folder's classes are its first-level subfolders)",
                "manifest": ", or set data.label_column to the manifest's class column (e.g. "
                            "articleType)",
                "prepared": " (a prepared set's classes are its folder's first-level subfolders or "
                            "its manifest's --label-column: prepare it again with them)"}


# Where the data says its own class counts (a prepared set's dataset_info.json), the fix names
# data.num_classes=-1 too (class_counts.FROM_DATA; that module imports this one).
_READS_OWN_COUNTS = ("prepared",)


def require_num_classes(config: ml_collections.ConfigDict, class_names: Sequence[str],
                        where: str) -> None:
  """data.num_classes must match what the data holds (0 for unconditional training)."""

  want = config.data.num_classes
  if want == 0 and len(class_names) > 1:  # one class is nothing to condition on
    _warn_unconditional(where, [len(class_names)])
  if want and not class_names:
    raise ConfigError(f"config key data.num_classes: {where} has no class labels, got {want}; "
                      "set --config.data.num_classes=0 to train unconditionally"
                      + _LABELS_FROM.get(config.data.source, ""),
                      f"{where} has no class labels, the run {want} classes")
  if want not in (0, len(class_names)):
    shown = ", ".join(class_names[:8]) + (" ..." if len(class_names) > 8 else "")
    raise ConfigError(f"config key data.num_classes: {where} has {len(class_names)} classes "
                      f"({shown}), got {want}; set --config.data.num_classes={len(class_names)} "
                      + ("(or -1 for the set's own count, or 0 to train unconditionally)"
                         if config.data.source in _READS_OWN_COUNTS
                         else "(or 0 to train unconditionally)"),
                      f"{where} has {len(class_names)} classes ({shown}), the run {want}")


def require_attributes(config: ml_collections.ConfigDict, attributes: Attributes,
                       where: str) -> None:
  """data.num_classes and data.extra_num_classes must match the attributes the data holds
  (any data may be trained unconditionally, with data.num_classes = 0)."""

  want = attribute_classes(config)
  have = tuple(len(names) for _, names in attributes)
  if len(want) <= 1 and len(have) <= 1:
    require_num_classes(config, attributes[0][1] if attributes else [], where)
    return
  if not want and have and 0 not in have and max(have) > 1:
    _warn_unconditional(where, have)
  if not want or want == have or 0 in have:  # 0: no rows at all, reported by the caller
    return
  key = "data.num_classes" if not have or want[0] != have[0] else "data.extra_num_classes"
  held = ", ".join(f"{c}: {len(n)} classes" for c, n in attributes) or "no labels"
  extra = ",".join(str(n) for n in have[1:]) or "''"
  own = ("--config.data.num_classes=-1 --config.data.extra_num_classes='' for the set's own "
         "counts, or " if config.data.source in _READS_OWN_COUNTS else "")
  fix = (f"--config.data.num_classes={have[0]} --config.data.extra_num_classes={extra} (or "
         f"{own}--config.data.num_classes=0 to train unconditionally)" if have
         else "--config.data.num_classes=0 --config.data.extra_num_classes=''")
  raise ConfigError(f"config key {key}: {where} has {len(have)} attribute(s) ({held}), the config "
                    f"asks for classes {list(want)}; set {fix}",
                    f"{where} has {len(have)} attribute(s) ({held}), the run classes {list(want)}")


# The data keys read by some sources only, what they read and how (cache_dir, workers,
# max_bad_fraction): set for a source that does not read it, a key would be ignored without a
# word (data.max_bad_fraction=0 on a prepared set, whose bad files prepare already dropped), which
# config validation refuses, from each source's `reads`.
SOURCE_KEYS = ("path", "image_column", "id_column", "image_dir", "image_pattern", "label_column",
               "label_columns", "min_class_count", "rare_classes", "tfds_name", "tfds_data_dir",
               "tfds_split", "tfds_image_key", "tfds_label_key", "tfds_download", "min_source_size",
               "max_pixels", "cache_dir", "workers", "max_bad_fraction")
# What the image loader reads, for the sources that decode images.
DECODE_KEYS = frozenset({"min_source_size", "max_pixels", "max_bad_fraction"})
# What decoding a list of files reads (data/listed.py: folder and manifest sources).
LISTED_KEYS = DECODE_KEYS | {"cache_dir", "workers"}
