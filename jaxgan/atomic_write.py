"""Files published by an atomic rename: temporary names for them (write, then `os.replace`;
`publish` when the file must also survive a host crash), and a lock so that one process builds a
cache while the others wait for it.

Caches (decoded images, reference features, converted Inception weights) may be written by
several processes at once, on several hosts sharing one folder: each must write under its own
name, so none truncates a file another is writing, and readers only ever see whole files.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from typing import Iterator


def private_name(path: str) -> str:
  """A temporary name beside `path` that no other process uses, also on another host sharing
  the folder: the pid alone is not enough, since containers often give every host's process the
  same one."""
  return f"{path}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def publish(tmp: str, path: str) -> None:
  """Renames the finished file `tmp` to `path` durably: its data reaches the disk before the
  rename, and the rename before this returns. A bare rename can be committed before the data
  (ext4 or XFS with delayed allocation, NFS), so a host crash just after it leaves `path` empty:
  the run's whole metrics.jsonl, or a prepared set's index. Directory sync is best effort (not
  every file system supports it); a failed sync or rename removes `tmp` and raises."""
  try:
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):  # no temporary left behind by a failed sync
      os.remove(tmp)
    raise
  _sync_folder(os.path.dirname(os.path.abspath(path)))


def _sync_folder(folder: str) -> None:
  """Makes the renames in `folder` durable; best effort (not every file system supports syncing
  a directory)."""
  try:
    handle = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(handle)
  except OSError:
    pass
  finally:
    os.close(handle)


@contextlib.contextmanager
def exclusive(path: str) -> Iterator[None]:
  """Holds an exclusive lock on the file `path` (created if needed) while the block runs: the
  processes of a host, or of hosts sharing the folder, build a cache one at a time, and those
  that waited find it built. Where the file system has no locks, the block runs unlocked (each
  process may then build its own copy; the renames keep that safe)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    handle = open(path, "a", encoding="utf-8")
  except (ImportError, OSError):
    yield
    return
  with handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:  # e.g. ENOLCK on a file system without locks
      pass
    yield
