"""`data.source = 'prepared'`: the training source of a set `python -m jaxgan.prepare` wrote
(`prepared.py` holds its layout, writer and readers), in memory or, with `data.cache_dir`, in a
memory-mapped file there that the processes of a host share."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Optional

import ml_collections
import numpy as np

from jaxgan.atomic_write import exclusive
from jaxgan.config.schema import ConfigError
from jaxgan.data.arrays import ArraySource, DataError, cache_dir_problem, require_attributes
from jaxgan.data.decode import log_upscaled
from jaxgan.data.images import LOADER_VERSION
from jaxgan.data.prepared import (INFO_FILE, attribute_names, check_class_counts, labels_file,
                                  read_info, read_prepared)

log = logging.getLogger(__name__)


def read_cached(images_file: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
  """(memory-mapped images, labels) of a complete cache file pair, or None (absent or damaged:
  the shards are read again)."""
  if not os.path.exists(images_file):
    return None
  try:
    images = np.load(images_file, mmap_mode="r")
    labels = np.load(labels_file(images_file))
  except (OSError, ValueError):
    return None
  return (images, labels) if len(images) == len(labels) else None


def images_cache_file(out_dir: str, cache_dir: str) -> str:
  """Where `data.cache_dir` keeps a prepared set's images as one memory-mapped .npy: named by the
  set's info (which holds a digest of its content) and each shard's size and mtime, so a
  re-prepared set is never served stale."""
  digest = hashlib.sha256()
  with open(os.path.join(out_dir, INFO_FILE), "rb") as f:
    digest.update(f.read())
  for shard in read_info(out_dir)["shards"]:
    try:
      st = os.stat(os.path.join(out_dir, shard))
      digest.update(f"{shard}:{st.st_size}:{st.st_mtime_ns}".encode())
    except OSError:  # missing: reading the shards says so
      digest.update(f"{shard}:missing".encode())
  return os.path.join(cache_dir, f"prepared-{digest.hexdigest()[:16]}.npy")


class PreparedSizeError(ConfigError):
  """A prepared set's image size is not the config's: the config checks, which know the model,
  say 'prepare again' alone where the model cannot build the set's size (setting it failed next)."""

  def __init__(self, message: str, prepared_size: int):
    super().__init__(message)
    self.prepared_size = prepared_size


class PreparedSource(ArraySource):
  multi_attribute = True  # prepare --label-column A --label-column B
  reads = frozenset({"path", "cache_dir"})
  folder_key = "path"
  # Its images and labels were made by `prepare`, whose flags these keys' settings would be.
  unread_hint = ("whose images and labels `python -m jaxgan.prepare` made (its flags "
                 "--min-class-count, --rare-classes, --label-column, --min-source-size, "
                 "--max-pixels, --max-bad-fraction, ...); prepare again with them, or drop "
                 "data.{key}")

  @staticmethod
  def validate(config: ml_collections.ConfigDict, reads_data: bool = True) -> None:

    if not reads_data:  # every check here is of the set's files
      return
    if not config.data.path:
      raise ConfigError("config key data.path: the prepared source needs the folder written by "
                        "`python -m jaxgan.prepare`")
    info = read_info(config.data.path)
    if info["image_size"] != config.data.image_size:
      raise PreparedSizeError(
          f"config key data.image_size: {config.data.path} was prepared at "
          f"{info['image_size']}, got {config.data.image_size}; set "
          f"--config.data.image_size={info['image_size']} or prepare again", info["image_size"])
    require_attributes(config, attribute_names(info), config.data.path)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ArraySource:
    """The shards read into memory, or with `data.cache_dir` into a memory-mapped file there
    (sets larger than RAM; processes of one host then share one copy in the page cache)."""
    d = config.data
    images_file = images_cache_file(d.path, d.cache_dir) if d.cache_dir else ""
    # One process of those sharing data.cache_dir reads the shards into it; the others wait for
    # the file and map it.
    try:
      with (exclusive(images_file + ".lock", f"caching {d.path}'s images") if images_file
            else contextlib.nullcontext()):
        cached = read_cached(images_file) if images_file else None
        if cached is not None:
          (images, labels), info = cached, read_info(d.path)
        else:
          images, labels, info = read_prepared(d.path, images_file)
    except OSError as e:  # the shards' errors are DataErrors: this is data.cache_dir's
      if not images_file:
        raise
      raise DataError(cache_dir_problem(d.cache_dir, e)) from None
    check_class_counts(info, labels, d.path)
    recorded = info.get("loader_version")
    if recorded != LOADER_VERSION:  # None: prepared before versions were recorded
      log.warning("%s was prepared with image loader version %s, this jaxgan's is %d: files the "
                  "loader has been fixed for since (jaxgan/data/images.py) keep their old pixels "
                  "there; prepare it again to pick the fixes up", d.path,
                  "(not recorded)" if recorded is None else recorded, LOADER_VERSION)
    # Warned of at each run, not only by `prepare` (None: a set prepared before it was counted).
    log_upscaled(info.get("upscaled"), len(images), d.path, d.image_size,
                 "image size (prepare --image-size)")
    # The files that failed to decode when the set was prepared, as the folder and manifest
    # sources count theirs (data_bad_files; not recorded by sets prepared before 2026-12-03).
    return ArraySource.for_config(config, images, labels, info["class_names"],
                                  bad_files=int(info.get("bad_files", 0)),
                                  attribute_names=attribute_names(info), where=d.path)
