"""Image files a source lists (a folder's walk, a manifest's rows) decoded into an ArraySource:
cached under data.cache_dir when set (one process decodes, the others map its file), bad files
dropped and counted against data.max_bad_fraction."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Optional, Sequence

import ml_collections
import numpy as np

from jaxgan.atomic_write import exclusive
from jaxgan.data.arrays import (ArraySource, Attributes, DataError, cache_dir_problem,
                                check_bad_fraction, load_options, log_skipped_rows,
                                require_attributes, require_every_class)
from jaxgan.data.decode import (DecodeError, decode_all, decode_cache_key, log_upscaled,
                                memory_problem, read_decode_cache, write_decode_index)
from jaxgan.data.image_files import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)


def decoded_source(config: ml_collections.ConfigDict, paths: Sequence[str], labels: np.ndarray,
                   class_names: Sequence[str], where: str, missing: Sequence[dict] = (),
                   attribute_names: Optional[Attributes] = None) -> ArraySource:
  """Decodes `paths` (cached when data.cache_dir is set), drops and reports bad files, and wraps
  the rest in an ArraySource. Labels ([N] or [N, A]) are zeroed for unconditional training."""
  if not len(paths):  # before the labels: no images is the problem then, not their classes
    first = list(missing)[:1]
    extensions = " ".join(IMAGE_EXTENSIONS)
    raise DataError(f"no images in {where}" + (f" (first file skipped: {first[0]['path']}: "
                                               f"{first[0]['reason']})" if first else
                                               f": no file in it or below it ends in {extensions}"
                                               " (hidden folders and jaxgan runs' workdirs are not "
                                               "read)"))
  if attribute_names is None:
    attribute_names = [("class", class_names)] if class_names else []
  require_attributes(config, attribute_names, where)
  d = config.data
  cache_file = None
  if d.cache_dir:
    key = decode_cache_key(paths, load_options(config))
    cache_file = os.path.join(d.cache_dir, f"decoded-{d.image_size}-{key}")
  too_large = "" if cache_file else memory_problem(len(paths), d.image_size)  # held in memory
  if too_large:
    raise DataError(f"decoding {where}: {too_large}; set data.cache_dir (decoded into a "
                    "memory-mapped file)")
  # One process decodes into a shared cache while the others (of this host, or of hosts sharing
  # data.cache_dir) wait for it, then map what it wrote instead of decoding too.
  try:
    with (exclusive(cache_file + ".lock", f"decoding {where}") if cache_file
          else contextlib.nullcontext()):
      decoded = read_decode_cache(cache_file) if cache_file else None
      if decoded is not None:
        log.info("decoded images of %s from cache %s.npy", where, cache_file)
      else:
        try:
          decoded = decode_all(
              paths, load_options(config), d.workers,
              desc=f"decode {os.path.basename(where.rstrip('/'))}", cache_file=cache_file)
        except DecodeError as e:
          raise DataError(f"decoding {where}: {e}; if memory ran out, set data.workers lower"
                          ) from None
        if cache_file:
          write_decode_index(cache_file, decoded)
  except OSError as e:  # the loader never raises one for an image: this is the cache's storage
    if not cache_file:
      raise
    raise DataError(cache_dir_problem(d.cache_dir, e)) from None
  images, indices, skipped = decoded.images, decoded.indices, decoded.skipped
  log_upscaled(decoded.upscaled, len(indices), where, d.image_size, "data.image_size")
  log_skipped_rows(list(missing), where, "data.max_bad_fraction")
  check_bad_fraction(skipped, len(paths), d.max_bad_fraction, where,
                     full_list="`jaxgan.prepare` of the same images lists every one in its "
                     "dataset_info.json")
  if len(indices) == 0:
    first = (list(missing) + skipped)[:1]
    raise DataError(f"no usable images in {where}" + (f" (first: {first[0]['path']}: "
                                                      f"{first[0]['reason']})" if first else ""))
  if d.num_classes > 0:
    require_every_class(np.asarray(labels)[indices], attribute_names, where, d.min_class_count,
                        labels)
  return ArraySource.for_config(config, images, np.asarray(labels, np.int32)[indices],
                                class_names, bad_files=len(skipped),
                                attribute_names=attribute_names, where=where)
