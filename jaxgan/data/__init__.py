"""Data sources, picked by `data.source` from the SOURCES registry.

A source (typed as `protocol.DataSource`) is a class with:
  - `validate(config, reads_data=True)` (static): raises ConfigError for values it cannot
    serve; with reads_data=False (--compile_only, the benchmark: a step on made-up batches) it
    skips the checks of where the data is (data.path given, its files read);
  - `reads`: the data keys (SOURCE_KEYS) it reads, and `unread_hint`: what to do instead when
    another one is set (config validation refuses those, naming the key);
  - `from_config(config)` (class method): builds it;
  - `class_names`: list of label names ([] when unconditional), of the first attribute;
  - `attribute_names` (optional; see `attribute_names` below): [(column, class names)] of every
    attribute, for sources that serve several (`multi_attribute = True`, data.extra_num_classes);
  - `folder_key` (optional): the data key (e.g. "path") naming a folder the source reads whole,
    which a run's workdir must not be in (`workdir_problem`);
  - `batches(batch_size, start_step, rows=None)`: an iterator of the `rows` (indices; all when
    None) of each global batch of `batch_size`, as numpy {'image': uint8 NHWC, 'label': int32
    [N] (one attribute) or [N, A] (several)}, from `start_step` on. Row r of step s is stream
    position s * batch_size + r, so a resumed run sees exactly the data of an uninterrupted one
    and a process that loads the rows its devices hold (`sharding.process_rows`) builds the
    same global batch under any process layout.
Images stay uint8 on the host; `to_model_range` maps them to [-1, 1] on the device, which moves
4x fewer bytes host-to-device than float32.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from typing import Iterator, TypeVar

import ml_collections
import numpy as np


from jaxgan.data.arrays import SOURCE_KEYS, ArraySource, DataError
from jaxgan.data.class_counts import FROM_DATA, with_class_counts
from jaxgan.data.folder import FolderSource
from jaxgan.data.image_files import is_within
from jaxgan.data.manifest import ManifestSource
from jaxgan.data.prepared_source import PreparedSizeError, PreparedSource
from jaxgan.data.protocol import DataSource
from jaxgan.data.synthetic import CATEGORY_NAMES, SyntheticCatalog
from jaxgan.data.tfds_source import TfdsSource
from jaxgan.registry import Registry

# TensorFlow is imported by the real sources only when they load data (jaxgan.tf_host).
SOURCES: Registry = Registry("data source")
SOURCES.register("synthetic")(SyntheticCatalog)
SOURCES.register("folder")(FolderSource)
SOURCES.register("manifest")(ManifestSource)
SOURCES.register("tfds")(TfdsSource)
SOURCES.register("prepared")(PreparedSource)

T = TypeVar("T")

__all__ = ["SOURCES", "SOURCE_KEYS", "CATEGORY_NAMES", "FROM_DATA", "ArraySource", "DataError",
           "DataSource", "PreparedSizeError", "SyntheticCatalog", "attribute_names", "build_source",
           "check_same_on_every_process", "content_digest", "fingerprint", "prefetch",
           "with_class_counts", "workdir_problem"]


def attribute_names(source: DataSource) -> list[tuple[str, list[str]]]:
  """[(column, class names)] of every attribute of `source` ([] when unconditional); a source
  without `attribute_names` has one attribute, 'class'."""
  names = getattr(source, "attribute_names", None)
  if names is None:
    names = [("class", list(source.class_names))] if source.class_names else []
  return [(str(c), list(n)) for c, n in names]


def workdir_problem(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Why a run cannot write to `workdir`, or '': it is the folder that the data source reads
  whole (`folder_key`), or inside it, where the run's sample grids would be read as photos on
  its next start (a folder source) and its files would sit among a prepared set's."""
  key = getattr(SOURCES.get(config.data.source, "data.source"), "folder_key", None)
  folder = config.data[key] if key else ""
  if not folder or not workdir:
    return ""
  inside, data = os.path.realpath(workdir), os.path.realpath(folder)
  # The folders the scan reads (find_images): data.path and the targets of the links in it, at
  # any depth (a class folder is often a link into shared storage), hidden ones skipped with all
  # they hold (.runs/a is not read). A workdir read by the scan is one inside a read folder with
  # no hidden folder on the way down.
  within = next((f for f in [data] + _linked_folders(data) if is_within(inside, f) and not any(
      part.startswith(".") for part in os.path.relpath(inside, f).split(os.sep) if part != ".")),
                None)
  if within is None:
    return ""
  where = (f"data.{key} itself" if inside == data else f"inside data.{key}" if within == data
           else f"inside {within}, linked into data.{key}")
  return (f"--workdir {workdir} is {where} ({folder}), which the {config.data.source} source "
          "reads whole: the run's sample grids and checkpoints would sit among its data; pass a "
          "--workdir outside it (a run already there: move its folder out, and resume it there)")


def _linked_folders(root: str) -> list[str]:
  """The real paths of the folders linked (symlinks) under `root`, at any depth, as the scan
  follows them: hidden folders skipped, each real folder walked once (links may loop)."""
  linked, seen = [], {root}
  for parent, dirs, _ in os.walk(root, followlinks=True):  # an unreadable root: nothing
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in list(dirs):
      path = os.path.join(parent, name)
      real = os.path.realpath(path)
      if real in seen:
        dirs.remove(name)
        continue
      seen.add(real)
      if os.path.islink(path):
        linked.append(real)
  return linked


def build_source(config: ml_collections.ConfigDict) -> DataSource:
  """The data source named by `data.source`."""
  return SOURCES.get(config.data.source, "data.source").from_config(config)


def fingerprint(source: DataSource) -> int:
  """A 31-bit digest of what `source` serves: its size, attributes and labels, and an evenly
  spaced sample of up to 64 of its images (a stream's first 4), cheap even for a large set."""
  digest = _described(source)
  images = getattr(source, "images", None)
  if images is not None:
    picks = _evenly_spaced(len(images), 64)
    digest.update(np.ascontiguousarray(images[picks]).tobytes())
    digest.update(np.ascontiguousarray(source.labels).tobytes())
  else:
    batch = next(iter(source.batches(4, 0)))
    digest.update(np.ascontiguousarray(batch["image"]).tobytes())
    digest.update(np.ascontiguousarray(batch["label"]).tobytes())
  return _digest31(digest)


# What `content_digest` hashes at most: ~0.7 s of SHA-256 (1.5 GB/s); a larger set is hashed
# at evenly spaced images up to it.
CONTENT_DIGEST_BYTES = 1 << 30


def content_digest(source: DataSource) -> int:
  """A 31-bit digest of every image and label `source` serves (its images evenly spaced up to
  CONTENT_DIGEST_BYTES where they hold more), where `fingerprint` samples 64 images: a resume
  is told of pixels changed anywhere (a batch of rotated photos went unnoticed), and processes
  reading different pixels are refused. A source without an images array (a stream): its
  `fingerprint`."""
  images = getattr(source, "images", None)
  if images is None:
    return fingerprint(source)
  digest = _described(source)
  digest.update(np.ascontiguousarray(source.labels).tobytes())
  per_image = max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize)
  picks = _evenly_spaced(len(images), CONTENT_DIGEST_BYTES // per_image)
  # 64 MiB at a time, hashed in place where the rows are contiguous (a slice of a memory-mapped
  # set is read, not copied); only a sample's gathered rows are copied, a block at a time.
  rows = max(1, (64 << 20) // per_image)
  for start in range(0, len(picks), rows):
    chunk = picks[start:start + rows]
    block = (images[chunk[0]:chunk[-1] + 1] if chunk[-1] - chunk[0] + 1 == len(chunk)
             else images[chunk])
    digest.update(np.ascontiguousarray(block))
  return _digest31(digest)


def _described(source: DataSource):
  """A SHA-256 begun with what `source` says of itself: its size and attributes."""
  return hashlib.sha256(json.dumps([getattr(source, "num_examples", None),
                                    attribute_names(source)]).encode())


def _evenly_spaced(n: int, k: int) -> np.ndarray:
  """Up to `k` indices of `n`, evenly spaced, the first and last among them (all where k >= n)."""
  return np.unique(np.linspace(0, n - 1, min(n, k)).astype(np.int64))


def _digest31(digest) -> int:
  # 31 bits: it travels through a collective as int32 (JAX without x64).
  return int.from_bytes(digest.digest()[:4], "big") & 0x7FFFFFFF


def order_fingerprint(source: DataSource) -> int:
  """A 31-bit digest of the order `source` serves its examples in: the example indices of up to
  64 stream positions in each of its first two epochs (0 for a source without an index order).
  Not part of `fingerprint`: that one is the data's alone. Checkpoints record both."""
  indices, n = getattr(source, "indices", None), getattr(source, "num_examples", 0)
  if indices is None or not n:
    return 0
  from jaxgan import tf_host  # pylint: disable=g-import-not-at-top  (TensorFlow, lazily)

  tf = tf_host.import_tensorflow()
  first = np.arange(min(n, 64), dtype=np.int64)
  order = np.asarray(indices(tf.constant(np.concatenate([first, n + first]))))
  return _digest31(hashlib.sha256(order.astype(np.int64).tobytes()))


def check_same_on_every_process(source: DataSource, mine: int | None = None,
                                order: int | None = None) -> None:
  """Raises DataError on every process when some process built other data than process 0 did,
  or orders it otherwise (`mine` and `order`: this process's `content_digest` and
  `order_fingerprint`, computed when None).

  Each process reads the data itself and takes its share of each batch by position, so a file
  that failed to read on one host only, or a data.path that differs between hosts, would shift
  every index there: examples silently duplicated or never seen, for the whole run. So would an
  order computed otherwise (another data seed, a TensorFlow whose index shuffle differs)."""
  # Here, not at the top: image-decoding workers import this package and must not load JAX.
  from jaxgan import multihost  # pylint: disable=g-import-not-at-top

  mine = content_digest(source) if mine is None else mine
  order = order_fingerprint(source) if order is None else order
  if not multihost.all_processes(mine == multihost.from_process_0(mine)):
    # A source that counts no examples (the synthetic catalog, drawn from the seed) says none.
    counted = "".join(f"{getattr(source, name)} {what}, " for name, what in (
        ("num_examples", "examples"), ("bad_files", "unreadable files")) if hasattr(source, name))
    raise DataError(
        f"the processes read different data (this one: {counted}fingerprint {mine:08x}); give "
        "every host the same complete data.path (a shared file system, or identical copies), and "
        "check the logs for skipped files")
  if not multihost.all_processes(order == multihost.from_process_0(order)):
    raise DataError(
        f"the processes read the same data but order it differently (this one: order "
        f"{order:08x}); give every host the same seed and the same TensorFlow version (its "
        "index shuffle draws the order)")


def stack_batches(iterator: Iterator[dict], k: int) -> Iterator[dict]:
  """Groups every `k` batches into one with a leading axis of `k` (train.steps_per_call); an
  incomplete group at the end is dropped. k = 1 passes batches through."""
  if k == 1:
    yield from iterator
    return
  group = []
  for batch in iterator:
    group.append(batch)
    if len(group) == k:
      yield {key: np.stack([b[key] for b in group]) for key in group[0]}
      group = []


def prefetch(iterator: Iterator[T], size: int = 2) -> Iterator[T]:
  """Runs `iterator` in a background thread, `size` items ahead, so host-side decoding or
  drawing overlaps the device step. Exceptions are re-raised in the consumer."""
  items: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()
  done = object()

  def put(item) -> bool:
    """Queues `item` unless the consumer has stopped (then False): a plain blocking put would
    keep this thread, and the iterator it holds, alive for good once nobody reads the queue."""
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in iterator:
        if not put(item):
          return
      put(done)
    except BaseException as e:  # handed to the consumer, which raises it
      put(e)
    finally:
      # A consumer that stopped early: the source's own clean-up (open files, tf.data's threads,
      # a decode pool) runs here, on this thread within a poll of the stop, not whenever the
      # garbage collector gets to the iterator.
      close = getattr(iterator, "close", None)
      if close is not None:
        close()

  thread = threading.Thread(target=produce, daemon=True, name="jaxgan-prefetch")
  thread.start()
  try:
    while True:
      item = items.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
