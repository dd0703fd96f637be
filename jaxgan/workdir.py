"""A training workdir, made ready for a run: created and proved writable (`prepare_workdir`),
locked against a second trainer (`run_lock`), removed again where a run that failed to start
left it empty. Reading a run's config and checkpoints is `saved_run`'s."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Iterator, Optional

import jax

from jaxgan import atomic_write
from jaxgan import config as config_lib
from jaxgan import run_folders


log = logging.getLogger(__name__)

# Held by the training run that writes the workdir (its process 0): a second trainer started on
# it would log into the same metrics and move the first one's checkpoints aside as leftovers.
RUN_LOCK = ".run.lock"
# The files a run writes at the top of its workdir: a folder in one's place failed the start with
# a traceback (metrics.jsonl), or silently kept the run from logging (log.txt, whose writes are
# dropped on error). (evaluate's evaluations.jsonl: evaluate says so itself, and prints its
# results.)
RUN_FILES = ("config.json", "metrics.jsonl", "log.txt", RUN_LOCK)


class WorkdirError(RuntimeError):
  """A workdir a run cannot write to; the message says what to do."""


def uri_refusal(workdir: str) -> Optional[str]:
  """The one-line refusal of a URI workdir (gs://, s3://), else None: it was made a local folder
  'gs:' that orbax then refused at every checkpoint write, after the run had trained up to it."""
  if not config_lib.is_uri(workdir):
    return None
  return (f"--workdir {workdir}: {config_lib.NOT_LOCAL} (a bucket mounted with gcsfuse "
          "--rename-dir-limit works)")


def prepare_workdir(workdir: str) -> list[str]:
  """Creates the workdir and proves it writable before any compute is spent; returns the folders
  it created, the workdir last ([] where it was there: atomic_write.missing_folders), so that a
  run that fails to start can leave none behind (on a shared file system several processes may
  each find them missing and say so)."""
  if not workdir:
    raise WorkdirError("--workdir is empty; pass the folder to write the run to")
  if uri_refusal(workdir):
    raise WorkdirError(uri_refusal(workdir))
  link = workdir.rstrip(os.sep) or workdir  # 'file/' and 'link/' do not exist as such
  if os.path.exists(link) and not os.path.isdir(link):
    raise WorkdirError(f"workdir {workdir} is a file, not a folder; pass a --workdir folder")
  if os.path.islink(link) and not os.path.exists(link):  # else "not writable (File exists)"
    raise WorkdirError(f"workdir {workdir} is a symbolic link to {os.readlink(link)}, which "
                       "does not exist; make that folder, or pass another --workdir")
  created = atomic_write.missing_folders(workdir)
  try:
    _probe_workdir(workdir)
  except BaseException:
    atomic_write.remove_empty(created)  # a refused workdir leaves no folders behind either
    raise
  return created


def _probe_workdir(workdir: str) -> None:
  """prepare_workdir's work: makes `workdir` and proves it and the run's folders in it usable."""
  # One probe per process: on a shared filesystem processes must not remove each other's.
  probe = os.path.join(workdir, f".write_probe.{jax.process_index()}.{os.getpid()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
    os.mkdir(probe)
  except OSError as e:
    with contextlib.suppress(OSError):  # a probe made, then not written (a full disk)
      os.remove(probe)
    raise WorkdirError(f"workdir {workdir} is not writable ({e.strerror}); "
                        "pass a --workdir you can write to") from e
  # Checkpoints are written to a temporary folder renamed into place: a filesystem that cannot
  # rename folders (a bucket mounted flat) must fail here, not at every checkpoint.
  try:
    os.rename(probe, probe + ".renamed")
  except OSError as e:
    os.rmdir(probe)
    raise WorkdirError(f"workdir {workdir} cannot rename folders ({e.strerror}), which "
                        "checkpoints need; use a filesystem that can (a gcsfuse mount needs "
                        "--rename-dir-limit)") from e
  with contextlib.suppress(OSError):  # a leftover probe folder is no reason to stop
    os.rmdir(probe + ".renamed")
  for name in RUN_FILES:
    if os.path.isdir(os.path.join(workdir, name)):
      raise WorkdirError(f"workdir {workdir}: its {name} is a folder, where the run writes a "
                         "file; move it away")
  # The run's folders: one that exists already (a resume's) is probed with the workdir: a
  # read-only checkpoints/ (a mount) otherwise showed at the first checkpoint, hours in.
  for name in run_folders.RUN_FOLDERS:
    folder = os.path.join(workdir, name)
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise WorkdirError(f"workdir {workdir}: its {name} is a file, where the run writes a "
                         "folder; move it away")
    if os.path.isdir(folder):
      inner = os.path.join(folder, os.path.basename(probe))
      try:
        with open(inner, "w") as f:
          f.write("ok")
        os.remove(inner)
      except OSError as e:
        with contextlib.suppress(OSError):  # made, then not written (a full disk)
          os.remove(inner)
        raise WorkdirError(f"workdir {workdir}: its {name}/ is not writable ({e.strerror}); make "
                           "it writable (or free space there), or pass another --workdir") from e


@contextlib.contextmanager
def run_lock(workdir: str) -> Iterator[None]:
  """Holds WORKDIR/.run.lock while the block runs, or raises WorkdirError at once when another
  process holds it (a trainer already running there; the kernel releases a killed one's lock).
  The file names its holder and is removed on release (a waiter's lock on a removed file is
  taken again on the new one). Where the file system has no locks (ENOLCK), warns and runs
  unlocked. Some file systems lock per host only (gcsfuse, NFS with local locks): there a
  trainer on another host is not refused, and a file another host's run left is warned about."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top  (POSIX only)
  except ImportError:
    yield
    return
  path = os.path.join(workdir, RUN_LOCK)
  while True:
    try:
      handle = open(path, "a+", encoding="utf-8")
    except OSError as e:  # e.g. another user's file left by a killed run
      raise WorkdirError(f"workdir {workdir}: cannot open {path} ({e.strerror}); if no trainer "
                         "is running there, remove it") from None
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      holder = handle.read().strip() or "another process"
      handle.close()
      raise WorkdirError(f"another trainer is running in {workdir} ({holder} holds {path}); "
                         "wait for it to end or stop it, or pass another --workdir (if that "
                         "process is gone with its host, remove the file)") from None
    except OSError as e:  # e.g. ENOLCK: a file system without locks
      handle.close()
      log.warning("workdir %s cannot be locked (%s): make sure no other trainer writes to it",
                  workdir, e.strerror)
      handle = None
      break
    try:
      if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
        break
    except FileNotFoundError:
      pass
    handle.close()  # locked a file its holder removed on release: take the one at `path`
  if handle is None:  # unlocked, outside the except: the run's errors are not chained to it
    with contextlib.suppress(OSError):
      os.remove(path)
    yield
    return
  try:
    handle.seek(0)
    _warn_of_another_host(workdir, handle.read().strip())
    handle.truncate(0)
    handle.write(f"{_HOLDER_PREFIX}{os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
  except OSError as e:
    handle.close()
    raise WorkdirError(f"workdir {workdir}: cannot write {path} ({e.strerror}); free space or "
                       "fix the storage") from None
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):  # still ours, not a new one
        os.remove(path)
    handle.close()


# The lock file's text: 'pid PID on HOST' (`lock_holder` reads it back).
_HOLDER_PREFIX = "pid "


def lock_holder(text: str) -> tuple[str, str]:
  """(pid, host) of a lock file's 'pid PID on HOST' (as written: either may be damaged)."""
  pid, _, host = text.removeprefix(_HOLDER_PREFIX).rpartition(" on ")
  return pid, host


def _warn_of_another_host(workdir: str, previous: str) -> None:
  """A lock file left by a run on another host: one killed there, or one still running where the
  file system does not share locks between hosts (each would then write the workdir)."""
  if previous and lock_holder(previous)[1] != socket.gethostname():
    log.warning("workdir %s: %s left %s: a run killed there, or, where this file system does not "
                "share locks between hosts (gcsfuse, NFS with local locks), one still running; "
                "stop one if so", workdir, previous, RUN_LOCK)


def remove_if_empty(workdir: str) -> None:
  """Removes `workdir` if nothing is in it (a run that failed to start, in a folder it made);
  never anything that holds a file, which may be another process's."""
  with contextlib.suppress(OSError):
    os.rmdir(workdir)


def has_step_folders(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a step folder (readable or not)."""
  return bool(run_folders.step_folders(os.path.join(workdir, "checkpoints")))
