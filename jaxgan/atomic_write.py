"""Files published by an atomic rename: temporary names for them (write, then `os.replace`;
`publish` when the file must also survive a host crash), and a lock so that one process builds a
cache while the others wait for it.

Caches (decoded images, reference features, converted Inception weights) may be written by
several processes at once, on several hosts sharing one folder: each must write under its own
name, so none truncates a file another is writing, and readers only ever see whole files.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import uuid
from typing import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)


def private_name(path: str) -> str:
  """A temporary name beside `path` that no other process uses, also on another host sharing
  the folder: the pid alone is not enough, since containers often give every host's process the
  same one."""
  return f"{path}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def remove_stale(path: str) -> int:
  """Removes the temporaries `private_name(path)...` that processes of this host left behind
  and returns their number: a SIGKILL or the OOM killer skips the `finally` that removes them,
  and a decode cache's is the size of the data set, once per failed attempt. A live process's
  (as `os.kill(pid, 0)` sees it) and other hosts' (whose processes this one cannot see) are
  kept. No lock is needed: a gone process writes nothing more, and one that reuses its pid
  writes a temporary of its own (the name's random part differs)."""
  prefix = f"{os.path.basename(path)}.{socket.gethostname()}."
  folder = os.path.dirname(os.path.abspath(path))
  try:
    names = [n for n in os.listdir(folder) if n.startswith(prefix)]
  except OSError:
    return 0
  removed = 0
  for name in names:
    pid = name[len(prefix):].split(".", 1)[0]
    if not pid.isdecimal() or process_alive(int(pid)):  # isdecimal: int() refuses '²'
      continue
    with contextlib.suppress(OSError):
      os.remove(os.path.join(folder, name))
      removed += 1
      log.warning("removed %s, left by process %s of this host, which is gone", name, pid)
  return removed


def save_npz(path: str, **arrays: np.ndarray) -> None:
  """`np.savez(path, **arrays)` by a rename: readers see the old file or the whole new one; a
  failed write (a full disk) leaves no temporary behind, and a killed writer's is removed by the
  next (`remove_stale`: a feature cache of 50k images is 400 MB)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  remove_stale(path)
  tmp = private_name(path) + ".tmp.npz"  # np.savez appends .npz to a name without it
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def missing_folders(path: str) -> list[str]:
  """The folders `os.makedirs(path)` would create, outermost first ([] when `path` exists): what
  a tool that then fails removes again, and nothing that was there before it."""
  if os.path.lexists(path):  # as the OS resolves it (through symlinks): there already
    return []
  # realpath, not abspath: abspath drops 'link/..' without reading the disk, and listed as
  # missing a folder that the OS, following the link, finds there (removing another's folder).
  missing, folder = [], os.path.realpath(path)
  while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
    missing.insert(0, folder)
    folder = os.path.dirname(folder)
  return missing


def remove_empty(folders: Sequence[str]) -> None:
  """Removes `folders` (as `missing_folders` listed them) innermost first, while each is empty:
  one that holds anything (another process's files) is left, and so are those above it."""
  for folder in reversed(folders):
    try:
      os.rmdir(folder)
    except OSError:
      break


def process_alive(pid: int) -> bool:
  """Whether process `pid` of this host exists (another user's counts)."""
  if pid <= 0:  # 0 and -1 name process groups (kill's), no process: a damaged name's number
    return False
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, OverflowError):  # (past any pid: a damaged lock file's number)
    return False
  except OSError:  # EPERM: another user's process
    return True
  return True


def check_free_space(folder: str, needed: int, what: str) -> None:
  """Raises OSError(ENOSPC) naming `folder` when its file system has fewer than `needed` bytes
  free. For files written through a memory map: a sparse file's pages get their blocks only when
  written, so on a full disk the process dies of SIGBUS at the first page that cannot be backed,
  with no message and no cleanup. Checked, not reserved: another writer can still take the space
  meanwhile, but a folder that was never big enough fails here, in words."""
  try:
    stat = os.statvfs(folder)
  except (AttributeError, OSError):  # not POSIX, or a folder whose problem shows when written
    return
  free = stat.f_bavail * stat.f_frsize
  if free < needed:
    raise _no_room(what, needed, folder, free)


def _no_room(what: str, needed: int, folder: str, free: int) -> OSError:
  return OSError(errno.ENOSPC, f"{what} needs {_size(needed)} in {folder}, which has "
                 f"{_size(free)} free")


def _size(n: int) -> str:
  # Smaller units below a GiB: '0.01 GiB needed, 0.01 GiB free' read as a contradiction.
  if n >= 2**30:
    return f"{n / 2**30:.2f} GiB"
  return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def reserve(path: str, what: str) -> None:
  """Allocates the disk blocks of `path` (a file just made at its full size for a memory map)
  now: check_free_space checks and does not reserve, so two builders that both passed it on a
  nearly full disk died of SIGBUS while writing their maps (no message, temporaries left).
  Raises OSError(ENOSPC) naming `what` instead. Where the file system cannot allocate ahead
  (EOPNOTSUPP), the check stands alone."""
  fd = os.open(path, os.O_RDWR)
  try:
    size = os.fstat(fd).st_size
    try:
      os.posix_fallocate(fd, 0, size)
    except AttributeError:  # not POSIX
      return
    except OSError as e:
      if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
        return  # a file system that cannot allocate ahead: the check stands alone
      folder = os.path.dirname(os.path.abspath(path))
      if e.errno == errno.ENOSPC:
        free = os.statvfs(folder)
        raise _no_room(what, size, folder, free.f_bavail * free.f_frsize) from None
      # A user's quota (EDQUOT, which statvfs does not show), a storage error (EIO): the map's
      # writes would fail too, of SIGBUS.
      raise OSError(e.errno, f"{what} needs {_size(size)} in {folder}: {e.strerror}") from None
  finally:
    os.close(fd)


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
def exclusive(path: str, guards: str = "") -> Iterator[None]:
  """Holds an exclusive lock on the file `path` (created if needed) while the block runs: the
  processes of a host, or of hosts sharing the folder, build a cache one at a time, and those
  that waited find it built. A process that finds the lock held says once that it waits, and
  for what (`guards`: what the holder builds), rather than seeming to hang for the minutes a
  download or decode takes. Where the file system has no locks, the block runs unlocked (each
  process may then build its own copy; the renames keep that safe). The lock file may be
  removed by its holder (prepare removes a folder it made and left empty): a waiter that then
  holds a lock on the removed file takes it again on the file now at `path`."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  except ImportError:
    yield
    return
  said = False
  while True:
    try:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      handle = open(path, "a", encoding="utf-8")
    except OSError:
      yield
      return
    try:
      try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:  # held by another process: say so once, then wait for it
        if not said:
          # A warning: the tools that log only warnings (prepare, evaluate) must say it too.
          log.warning("waiting for another process to finish %s (it holds %s)",
                      guards or "what it builds", path)
          said = True
        fcntl.flock(handle, fcntl.LOCK_EX)
    except OSError:  # e.g. ENOLCK on a file system without locks
      break
    try:  # the file held is still the one at `path`: no holder removed it while this waited
      if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
        break
    except OSError:
      pass
    handle.close()
  with handle:
    yield
