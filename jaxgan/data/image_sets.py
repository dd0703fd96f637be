"""Image sets for evaluation: a folder of image files (any nesting, native sizes) or a
prepared data set, as uint8 RGB arrays.

Folder images go through the one loader (`images.load_image`: RGB, transparency onto white,
padded to a square) at their native size, so that resizing to the metric's input size is the
metric's job (`metrics.features`) and every image is resized exactly once, by the pinned filter;
or, with `image_size`, at that size as training loads them (a folder of large photos to compare
with a model's samples: one compiled shape, small batches).
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import os
from typing import Iterator, Optional, Sequence

import numpy as np

from jaxgan.data import prepared
from jaxgan.data.arrays import DataError
from jaxgan.data.image_files import find_images
from jaxgan.data.decode import num_workers
from jaxgan.data.images import Loaded, LoadOptions, load_image


# Threads loading an evaluated folder: each holds an image ahead of the metric's batches, at its
# native size (a 24-megapixel photo, padded square, is 108 MB as uint8).
MAX_LOAD_THREADS = 8

# Present while `jaxgan.generate` writes a folder of PNGs, removed once every file is written: a
# run cut short over an earlier set leaves a mix of the two, which must not be measured as one.
INCOMPLETE_MARKER = ".generate-incomplete"


def check_complete(path: str) -> None:
  """Raises DataError when `generate` did not finish writing the folder `path`."""
  marker = os.path.join(path, INCOMPLETE_MARKER)
  if os.path.exists(marker):
    raise DataError(f"{path}: `jaxgan.generate` did not finish writing this folder ({marker} is "
                    "there), so it may mix two sets; generate it again")


def _load_ahead(paths: Sequence[str], options: LoadOptions, threads: int
                ) -> Iterator[tuple[str, Loaded]]:
  """(path, `load_image` of it) for each path, in order, `threads` files loading at once: Pillow
  decodes and resizes without the GIL, and one core's decoding, not an accelerator's Inception,
  set the pace of a folder's evaluation. No more than `threads` images are loaded ahead."""
  if threads <= 1:
    yield from ((p, load_image(p, options)) for p in paths)
    return
  pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="jaxgan-load")
  try:
    queued = iter(paths)
    pending = collections.deque((p, pool.submit(load_image, p, options))
                                for p in itertools.islice(queued, threads))
    while pending:
      path, loading = pending.popleft()
      for p in itertools.islice(queued, 1):
        pending.append((p, pool.submit(load_image, p, options)))
      yield path, loading.result()
  finally:  # a consumer that stops (an error, Ctrl-C) waits for no queued file
    pool.shutdown(wait=False, cancel_futures=True)


def list_images(root: str) -> list[str]:
  """Every image file under `root` but in hidden folders, sorted (a stable order: the same set
  gives the same array)."""
  return sorted(find_images(root))


def list_set(path: str) -> Optional[list[str]]:
  """The image files of the folder set at `path` (`list_images`), or None for a prepared set:
  for a caller that reads one set several times to list it once (a large folder on network
  storage takes seconds to list, and each listing warns again of a folder linked twice)."""
  if os.path.isfile(os.path.join(path, prepared.INFO_FILE)):
    return None
  if prepared.holds_shards_or_temporaries(path):  # a set without its info: read_info says why
    prepared.read_info(path)  # (being prepared now, or its preparation did not finish)
  check_complete(path)
  return list_images(path)


def count_images(path: str, paths: Optional[Sequence[str]] = None) -> int:
  """How many images a folder or prepared set at `path` holds (files, before any is read);
  `paths`: the folder's `list_set`, when the caller has it."""
  if os.path.isfile(os.path.join(path, prepared.INFO_FILE)):
    return int(prepared.read_info(path)["num_examples"])
  return len(list_set(path) if paths is None else paths)


def first_side(path: str, paths: Optional[Sequence[str]] = None, limit: int = 16
               ) -> Optional[int]:
  """The side of a set's images at their native size: a prepared set's, or the square its first
  readable file (of the first `limit`) is padded to; None where none of them reads."""
  if os.path.isfile(os.path.join(path, prepared.INFO_FILE)):
    return int(prepared.read_info(path)["image_size"])
  for p in (list_set(path) if paths is None else paths)[:limit]:
    loaded = load_image(p, LoadOptions(image_size=0))
    if loaded.image is not None:
      return int(loaded.image.shape[0])
  return None


def check_readable(path: str, fewest: int, image_size: int = 0, limit: int = 256,
                   paths: Optional[Sequence[str]] = None) -> str:
  """Reads a set's first files until `fewest` load, before the other set's features (hours for
  50k images): raises DataError when the whole folder holds fewer readable images, or a prepared
  set is not at `image_size`; returns a warning ('' if none) when fewer than `fewest` of the
  first max(`limit`, `fewest`) files load and the rest are left to the full read. `paths`: the
  folder's `list_set`, when the caller has it."""
  if os.path.isfile(os.path.join(path, prepared.INFO_FILE)):  # arrays: nothing to decode
    _check_prepared_size(path, image_size)
    prepared.shard_files(path, prepared.read_info(path))  # a missing shard, before the hours
    return ""
  paths = list_set(path) if paths is None else paths
  if not paths:
    raise DataError(_no_images(path))
  options = LoadOptions(image_size=image_size)
  readable, tried, first_failure = 0, 0, ""
  for tried, p in enumerate(paths[:max(limit, fewest)], 1):
    loaded = load_image(p, options)
    if loaded.image is not None:
      readable += 1
      if readable >= fewest:
        return ""
    elif not first_failure:
      first_failure = f"{p}: {loaded.reason}"
  failure = f" (first failure: {first_failure})" if first_failure else ""
  if tried < len(paths):
    return (f"{path}: {readable} of the first {tried} of its {len(paths)} image files could be "
            f"read{failure}; the rest are read in full later")
  raise DataError(f"{path}: {readable} of its {len(paths)} image files could be read{failure}; "
                  f"the metrics need at least {fewest} per set")


def _check_prepared_size(path: str, image_size: int) -> None:
  size = prepared.read_info(path)["image_size"]
  if image_size and size != image_size:
    raise DataError(f"{path} was prepared at {size}x{size}, not the {image_size} asked for; "
                    f"pass --image-size {size} or prepare it again")


def _no_images(path: str) -> str:
  return (f"{path}: no image files ({', '.join(sorted({'.jpg', '.png', '.webp'}))}...) found in it "
          "or below it")


def iter_image_set(path: str, image_size: int = 0, skipped: Optional[list] = None,
                   paths: Optional[Sequence[str]] = None) -> Iterator[np.ndarray]:
  """The images of a folder or prepared data set, in order, at their native size or
  `image_size`, as uint8 arrays [n, H, W, 3] (a folder's one image at a time, a prepared set's a
  batch at a time): a set of any size in bounded memory. Unreadable files are appended to
  `skipped` as {'path', 'reason'}; a set with no readable image is a DataError. `paths`: the
  folder's `list_set`, when the caller has it."""
  if not os.path.isdir(path):
    raise DataError(f"{path}: not a folder; pass a folder of images or a prepared data set")
  if os.path.isfile(os.path.join(path, prepared.INFO_FILE)):
    _check_prepared_size(path, image_size)
    for images, _ in prepared.iter_prepared(path):
      yield images
    return
  check_complete(path)  # also with an earlier listing: a generate may have started on it since
  paths = list_set(path) if paths is None else paths
  if not paths:
    raise DataError(_no_images(path))
  skipped = [] if skipped is None else skipped
  readable = 0
  threads = min(num_workers(), MAX_LOAD_THREADS)
  for p, loaded in _load_ahead(paths, LoadOptions(image_size=image_size), threads):
    if loaded.image is None:
      skipped.append({"path": p, "reason": loaded.reason})
    else:
      readable += 1
      yield loaded.image[None]
  if not readable:
    raise DataError(f"{path}: none of its {len(paths)} image files could be read "
                    f"(first: {skipped[0]['path']}: {skipped[0]['reason']})")
