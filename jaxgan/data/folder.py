"""`data.source = 'folder'`: a directory of product photos; label = first-level subfolder."""

from __future__ import annotations

import collections
import logging
import os

import ml_collections
import numpy as np

from jaxgan.config.schema import ConfigError
from jaxgan.data.arrays import LISTED_KEYS, ArraySource, DataError
from jaxgan.data.class_labels import (check_rare_class_keys, encode_kept, folder_class_name,
                                       log_merged, merged_into_other)
from jaxgan.data.image_files import IMAGE_EXTENSIONS, find_images
from jaxgan.data.listed import decoded_source

log = logging.getLogger(__name__)


# The skip reason of a file beside the class subfolders (prepare counts them by it).
OUTSIDE_CLASS_FOLDERS = "outside the class folders"

def scan_folder(root: str, keep_outside: bool = False
                ) -> tuple[list[str], list[str], list[dict]]:
  """(image paths, their first-level folder names or "" when flat, skipped), sorted, recursive.

  Hidden files and folders are ignored; extensions match case-insensitively. When the root has
  class folders, images lying directly in it belong to no class and are skipped, unless
  `keep_outside` (folder name "")."""
  if not os.path.isdir(root):
    raise DataError(f"data.path {root!r} is not a directory; point it at your image folder")
  paths, folders, others = [], [], collections.Counter()
  try:
    for path in find_images(root, others):
      rel = os.path.relpath(os.path.dirname(path), root)
      paths.append(path)
      folders.append("" if rel == "." else folder_class_name(rel.split(os.sep)[0]))
  except OSError as e:
    raise DataError(f"{e.filename}: {e.strerror}; make it readable or remove it from "
                    f"{root}") from None
  if others:  # captions and sidecars, or photos in a format not read (.heic): a class may vanish
    listed = ", ".join(f"{ext or '(none)'}: {n}" for ext, n in others.most_common(8))
    count = sum(others.values())
    log.warning("%s: %d %s passed over for %s extension (%s); images are read from %s", root,
                count, "file" if count == 1 else "files", "its" if count == 1 else "their",
                listed, " ".join(IMAGE_EXTENSIONS))
  for name in sorted(set(folders)) if not keep_outside else []:  # unconditional: no names used
    try:  # a class's name goes into JSON, logs and grids' legends, all UTF-8
      name.encode("utf-8")
    except UnicodeEncodeError:
      shown = os.fsencode(os.path.join(root, name)).decode("utf-8", "backslashreplace")
      raise DataError(f"{shown}: a folder name that is not UTF-8 (an archive's legacy encoding); "
                      "rename it in UTF-8, as its class is named after it") from None
  _warn_of_empty_classes(root, set(folders))
  skipped = []
  if any(folders) and not keep_outside:
    kept = [(p, f) for p, f in zip(paths, folders) if f]
    skipped = [{"path": p, "reason": OUTSIDE_CLASS_FOLDERS} for p, f in zip(paths, folders)
               if not f]
    paths, folders = [p for p, _ in kept], [f for _, f in kept]
  return paths, folders, skipped


def _warn_of_empty_classes(root: str, classes: set[str]) -> None:
  """Names the first-level folders that gave no image, so no class (Empty/, Docs/ holding only
  notes, a link to an unmounted store): they vanished from the classes without a word. Aliases
  of a class folder and runs' workdirs, skipped with their own warning, are not named again."""
  from jaxgan import run_folders  # pylint: disable=g-import-not-at-top

  if not any(classes):  # a flat folder: no classes to miss
    return
  try:
    names = sorted(d for d in os.listdir(root) if not d.startswith("."))
  except OSError:
    return
  real = {d: os.path.realpath(os.path.join(root, d)) for d in names}
  listed = {real[d] for d in names if folder_class_name(d) in classes}
  empty = [d for d in names if folder_class_name(d) not in classes
           and os.path.isdir(os.path.join(root, d)) and real[d] not in listed
           and not run_folders.is_run(os.path.join(root, d))]
  if empty:
    log.warning("%s: %s %s, so no class: %s", root, len(empty),
                "folder has no image in it or below it" if len(empty) == 1 else
                "folders have no image in them or below them",
                ", ".join(empty[:8]) + (", ..." if len(empty) > 8 else ""))


class FolderSource(ArraySource):
  reads = frozenset({"path", "min_class_count", "rare_classes"}) | LISTED_KEYS
  folder_key = "path"

  @staticmethod
  def validate(config: ml_collections.ConfigDict, reads_data: bool = True) -> None:

    if reads_data and not config.data.path:
      raise ConfigError("config key data.path: the folder source needs the image directory")
    check_rare_class_keys(config)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ArraySource:
    d = config.data
    # Unconditional: the images in the root are training images too (a leftover subfolder, say
    # old/, made them "outside the class folders", and the run trained on old/ alone).
    paths, folders, outside = scan_folder(d.path, keep_outside=d.num_classes == 0)
    if any(folders):  # rare classes merged or dropped as `prepare` does: the same class list
      # The root's own images (unconditional runs: keep_outside) come first, as os.walk lists
      # a folder's files before its subfolders'.
      loose = [p for p, f in zip(paths, folders) if not f]
      classes = [f for f in folders if f]
      labels, (class_names,), kept, dropped = encode_kept(
          [p for p, f in zip(paths, folders) if f], [classes], [], d.min_class_count,
          d.rare_classes)
      log_merged(merged_into_other([classes], [class_names], [], d.rare_classes), d.path,
                 d.min_class_count)
      outside += dropped
      paths = loose + kept
      labels = np.concatenate([np.zeros(len(loose), np.int32), labels])
    else:
      labels, class_names = np.zeros(len(paths), np.int32), []
    return decoded_source(config, paths, labels, class_names, d.path, missing=outside)
