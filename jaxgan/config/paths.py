"""The config keys that name local files or folders: made absolute when a run records them, and
refused as URIs (jaxgan reads and writes through the local file system)."""

from __future__ import annotations

import copy
import os
from typing import Any

import ml_collections

from jaxgan.config.schema import get


# Keys naming local files or folders: stored absolute by a run, so that `evaluate --workdir` and
# `generate` find them from any folder (a relative one means the folder training started in).
PATH_KEYS = ("data.path", "data.image_dir", "data.tfds_data_dir", "data.cache_dir",
             "eval.weights", "eval.cache_dir", "train.init_from")


# jaxgan reads and writes runs, caches and data through the local file system (a bucket works
# mounted, e.g. with gcsfuse): a URI given as a path became a local folder 'gs:'.
NOT_LOCAL = "URIs are not supported; give a local or mounted path"


def is_uri(value: Any) -> bool:
  """Whether `value` is a URI (gs://, s3://) rather than a local path."""
  return isinstance(value, str) and "://" in value


def nearest_existing(path: str) -> str:
  """`path` made absolute if it exists (a link counts, broken or not), else the nearest folder
  above it that does: what stands where a folder is to be made."""
  above = os.path.abspath(path)
  while not os.path.lexists(above) and os.path.dirname(above) != above:
    above = os.path.dirname(above)
  return above


def not_a_folder(folder: str) -> str:
  """'FOLDER: is a file, not a folder' (with the file above it in brackets where that is the
  file: no folder can be made there), or '' where `folder` is, or can be, a folder (or is '')."""
  above = nearest_existing(folder) if folder else ""
  if not folder or not os.path.isfile(above):
    return ""
  where = "" if above == os.path.abspath(folder) else f" ({above})"
  return f"{folder}{where}: is a file, not a folder"


def os_path(path: str) -> str:
  """`path` with its '..' resolved as the OS resolves it: after a symlink, 'link/..' is the
  parent of the link's target, where os.path.abspath drops both without reading the disk (a
  --workdir link/../wd split its run between two folders: config.json in one, checkpoints in
  the other). A path without '..' is returned as it is; a trailing separator is kept (generate
  --out DIR/ writes single images)."""
  parts = path.replace(os.altsep or os.sep, os.sep).split(os.sep)
  if os.pardir not in parts or is_uri(path):  # a URI is refused where it is read, as given
    return path
  # Only a symlink that a '..' steps out of is resolved; other components stay as given (a link
  # elsewhere is kept, as a path without '..' keeps its own: one folder, one recorded form).
  head = os.sep if path.startswith(os.sep) else ""
  kept: list[str] = []
  for part in parts:
    if part in ("", os.curdir):
      continue
    if part != os.pardir:
      kept.append(part)
    elif not kept or kept[-1] == os.pardir:
      if not head:  # above a relative start: the working folder (a real path) resolves it
        kept.append(part)
    elif os.path.islink(head + os.sep.join(kept)):
      resolved = os.path.realpath(head + os.sep.join(kept))
      head, kept = os.sep, [p for p in resolved.split(os.sep) if p][:-1]
    else:
      kept.pop()
  joined = head + os.sep.join(kept)
  joined = joined or os.curdir
  return joined + os.sep if path.endswith(os.sep) and not joined.endswith(os.sep) else joined


def absolute_path(value: Any) -> Any:
  """A relative path made absolute from the current folder ('..' as the OS resolves it:
  `os_path`); '' (the default) and URIs (gs://) unchanged."""
  if not isinstance(value, str) or not value or is_uri(value):
    return value
  return os.path.abspath(os_path(os.path.expanduser(value)))


def with_absolute_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose PATH_KEYS are absolute."""
  config = copy.deepcopy(config)
  with config.unlocked():
    for key in PATH_KEYS:
      parent, _, leaf = key.rpartition(".")
      node = get(config, parent)
      node[leaf] = absolute_path(node[leaf])
  return config
