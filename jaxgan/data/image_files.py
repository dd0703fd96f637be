"""Finding image files: which names are images (`IMAGE_EXTENSIONS`), and the folder walk every
folder read shares (`find_images`: the folder source, `prepare --images`, `evaluate`'s sets), in a
stable order, with links followed as a class folder in shared storage needs, and what must not
be read as photos skipped and said (hidden folders, a folder linked twice or into another class,
a jaxgan run's workdir). No JAX: the decoding workers import the data package."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from typing import Iterator, Optional

log = logging.getLogger(__name__)

# What Pillow reads among the formats catalog photos come in (.jfif/.jpe: JPEG's other names).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif",
                    ".tiff")


def is_image_path(path: str) -> bool:
  """Image extension (any case) and not hidden."""
  name = os.path.basename(path)
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def is_within(path: str, folder: str, paths=os.path) -> bool:
  """`path` is `folder` or inside it (both absolute). `paths`: the platform's path module; on
  Windows, paths on two drives have no common path (commonpath raises): not inside."""
  try:
    return paths.commonpath([folder, path]) == folder
  except ValueError:
    return False


def find_images(root: str, others: Optional[collections.Counter] = None) -> Iterator[str]:
  """Image files under `root`, recursively, in a stable (sorted, depth-first) order; hidden files
  and hidden folders (.ipynb_checkpoints, .thumbnails, ...) are skipped. Symlinked folders are
  followed (a class folder is often a link into shared storage), each real folder once; a folder
  that cannot be listed raises OSError, rather than a class silently missing, and links that
  lead nowhere are named in a warning. `others` counts the files passed over for their
  extension, by extension (lower case, '' for none). A jaxgan run's workdir below `root` is
  skipped: its images are its sample grids (and `generate`'s output kept there), not photos."""
  from jaxgan import run_folders  # pylint: disable=g-import-not-at-top  (decoding workers: light)

  seen: dict[str, str] = {}  # real folder -> the path it was listed under
  broken: list[str] = []  # links leading nowhere (no image extension: maybe folders)

  def fail(error: OSError) -> None:
    raise OSError(error.errno, f"cannot list folder ({error.strerror})", error.filename)

  # The first-level folders (a folder source's classes), by real path: a folder below one of
  # them that is really inside another's tree is skipped, so that the other lists its own
  # images (the walk is alphabetical: Accessories/watches -> ../Watches took every watch into
  # Accessories). Two first-level names of one folder: the first listed wins, as any folder
  # seen twice, the folder's own name before a link's to it (`_aliases_last`). A link to the
  # root (latest -> .) is skipped as seen, and one above it (up -> ..) as holding it: their
  # classes would hold every other one, and their neighbours.
  tops: dict[str, str] = {}
  real_root = os.path.realpath(root)
  with contextlib.suppress(OSError):  # unlistable: os.walk's own error says so below
    with os.scandir(root) as entries:  # the entries' types: no call per file of a flat folder
      folders = {e.name: e.is_symlink() for e in entries
                 if not e.name.startswith(".") and _is_folder(e)}
    links = {d for d, link in folders.items() if link}
    for d in _aliases_last(root, list(folders), links, real_root):
      top = os.path.realpath(os.path.join(root, d)) if d in links else os.path.join(real_root, d)
      if not is_within(real_root, top):
        tops.setdefault(top, d)
  for dirpath, dirnames, filenames in os.walk(root, onerror=fail, followlinks=True):
    real = os.path.realpath(dirpath)
    rel = os.path.relpath(dirpath, root).split(os.sep)
    # Below a first-level folder: the nearest first-level folder it is really inside.
    into = _first_level(real, tops) if len(rel) > 1 else None
    if into is not None and into != rel[0]:
      log.warning("%s: skipped, its folder %s is listed under %s", dirpath, real,
                  os.path.join(root, into))
      dirnames[:] = []
      continue
    if rel != ["."] and real != real_root and is_within(real_root, real):
      log.warning("%s: skipped, its folder %s holds %s itself", dirpath, real, root)
      dirnames[:] = []
      continue
    if real in seen:  # a link back up the tree, or a second link to one folder
      log.warning("%s: skipped, its folder %s is already listed as %s", dirpath, real,
                  seen[real])
      dirnames[:] = []
      continue
    seen[real] = dirpath
    # Asked where a run's own names are (a run has a config.json or checkpoints/): a call per
    # folder of a large tree otherwise.
    if ("config.json" in filenames or "checkpoints" in dirnames) and run_folders.is_run(dirpath):
      log.warning("%s: skipped, a jaxgan run's workdir (its images are sample grids, not "
                  "photos)%s", dirpath, "" if rel == ["."] else f"; move it out of {root}")
      dirnames[:] = []
      continue
    links = _links(dirpath) if dirnames or filenames else set()
    dirnames[:] = _aliases_last(dirpath, [d for d in dirnames if not d.startswith(".")], links,
                                real)
    for name in sorted(filenames):
      path = os.path.join(dirpath, name)
      if name in links and is_image_path(path):
        # A file link into another first-level folder: that folder lists the file itself, and
        # the photo was trained under both classes (links to folders were refused so already).
        target = os.path.realpath(path)
        owner = _first_level(os.path.dirname(target), tops)
        if owner is not None and owner != (rel[0] if rel != ["."] else None):
          log.warning("%s: skipped, a link to %s, which %s lists", path, target,
                      os.path.join(root, owner))
          continue
      if is_image_path(path):
        yield path
      elif name in links and not name.startswith(".") and not os.path.exists(path):
        # A link os.walk could not follow, so listed as a file: a class folder linked into a
        # store not mounted (or a loop) vanished, counted among the files passed over.
        broken.append(path)
      elif others is not None and not name.startswith("."):
        others[os.path.splitext(name)[1].lower()] += 1
  if broken:
    _warn_of_broken_links(root, broken)


def _warn_of_broken_links(root: str, paths: list[str]) -> None:
  """Names the links under `root` that lead nowhere (their targets missing, or a loop): each may
  be a class folder whose images are not there to read."""
  def shown(path: str) -> str:
    try:
      return f"{os.path.relpath(path, root)} -> {os.readlink(path)}"
    except OSError:  # removed since
      return os.path.relpath(path, root)

  count = len(paths)
  log.warning("%s: %d %s nowhere (%s missing, e.g. on a store not mounted, or a loop), so "
              "nothing is read through %s: %s", root, count,
              "link leads" if count == 1 else "links lead",
              "its target" if count == 1 else "their targets", "it" if count == 1 else "them",
              ", ".join(shown(p) for p in paths[:8]) + (", ..." if count > 8 else ""))


def _is_folder(entry: os.DirEntry) -> bool:
  """Whether `entry` is a folder, following a link; False for a link that cannot be followed (a
  loop, no permission), as os.path.isdir says: one such entry must not end the listing."""
  try:
    return entry.is_dir()
  except OSError:
    return False


def _aliases_last(parent: str, names: list[str], links: set[str], real_parent: str
                  ) -> list[str]:
  """`names` (folders in `parent`, whose real path is `real_parent`; `links`: those of its
  entries that are symbolic links) sorted, but a link to a sibling folder (an alias, Tees ->
  Tshirts, also where Tshirts is itself a link into shared storage) after that folder, which then
  lists its images under its own name: listed first, the alias took them, and the folder's class
  vanished ('already listed'). Other links keep their place (a class folder linked into shared
  storage: the order the data was read in)."""
  names = sorted(names)
  plain = {os.path.join(real_parent, d) for d in names if d not in links}

  def alias(d: str) -> bool:
    path = os.path.join(parent, d)
    if os.path.realpath(path) in plain:
      return True
    try:  # one step of the link: a sibling's own name (resolved from the real parent, as the
      # system resolves it: the same answer however the root was spelled)
      target = os.path.join(real_parent, os.readlink(path))
    except OSError:
      return False
    return (os.path.realpath(os.path.dirname(target)) == real_parent
            and os.path.basename(target) in names and os.path.basename(target) != d)

  aliases = {d for d in names if d in links and alias(d)}
  return sorted(names, key=lambda d: d in aliases)


def _links(folder: str) -> set[str]:
  """The names of `folder`'s entries that are symbolic links, from one listing of it (the
  entries' types: no call per file of a catalog of 100k photos on a network file system), where
  os.walk gives names only."""
  try:
    with os.scandir(folder) as entries:
      return {e.name for e in entries if e.is_symlink()}
  except OSError:  # listed a moment ago; gone now: its files fail to read, and say so
    return set()


def _first_level(real: str, tops: dict[str, str]) -> Optional[str]:
  """The name of the first-level folder (of `tops`: real path -> name) that `real` lies in, the
  nearest, by its parents (the folder depth, not the class count: 4,000 classes took 13x longer
  by those)."""
  up = real
  while up != os.path.dirname(up):
    if up in tops:
      return tops[up]
    up = os.path.dirname(up)
  return None
