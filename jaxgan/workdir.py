"""A training workdir: preparing it for a run (`prepare_workdir`), and reading its resolved
config and a checkpoint (the latest, the best-FID one or a given step) on one device.

The readers serve `generate`, `evaluate --workdir` and tools that inspect runs; training itself
restores through the trainer with the run's own mesh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.serialization
import jax
import ml_collections

from jaxgan import atomic_write
from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import state as state_lib


log = logging.getLogger(__name__)

# Held by the training run that writes the workdir (its process 0): a second trainer started on
# it would log into the same metrics and move the first one's checkpoints aside as leftovers.
RUN_LOCK = ".run.lock"


# The folders a run writes into; one that exists already (a resume's) is probed with the workdir:
# a read-only checkpoints/ (a mount) otherwise showed at the first checkpoint, hours in.
RUN_FOLDERS = ("checkpoints", "checkpoints_best", "samples", "tensorboard")
# The files it writes at the top: a folder in one's place failed the start with a traceback
# (metrics.jsonl), or silently kept the run from logging (log.txt, whose writes are dropped on
# error). (evaluate's evaluations.jsonl: evaluate says so itself, and prints its results.)
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
  for name in RUN_FOLDERS:
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


# The lock file's text: 'pid PID on HOST' (`_holder` reads it back).
_HOLDER_PREFIX = "pid "


def _holder(text: str) -> tuple[str, str]:
  """(pid, host) of a lock file's 'pid PID on HOST' (as written: either may be damaged)."""
  pid, _, host = text.removeprefix(_HOLDER_PREFIX).rpartition(" on ")
  return pid, host


def _warn_of_another_host(workdir: str, previous: str) -> None:
  """A lock file left by a run on another host: one killed there, or one still running where the
  file system does not share locks between hosts (each would then write the workdir)."""
  if previous and _holder(previous)[1] != socket.gethostname():
    log.warning("workdir %s: %s left %s: a run killed there, or, where this file system does not "
                "share locks between hosts (gcsfuse, NFS with local locks), one still running; "
                "stop one if so", workdir, previous, RUN_LOCK)


def remove_if_empty(workdir: str) -> None:
  """Removes `workdir` if nothing is in it (a run that failed to start, in a folder it made);
  never anything that holds a file, which may be another process's."""
  with contextlib.suppress(OSError):
    os.rmdir(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json on top of the current schema."""
  if not workdir:  # a shell variable left unset: 'config.json not found: is  a ... workdir?'
    raise ValueError("--workdir is empty; pass a training run's workdir")
  if uri_refusal(workdir):
    raise ValueError(uri_refusal(workdir))
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a jaxgan training workdir?"
                            + _workdir_above(workdir))
  with open(path, encoding="utf-8") as f:
    text = f.read()
  try:
    config = config_lib.from_json(text)
  except ValueError as e:  # json's decode error, or a key this jaxgan does not know
    raise ValueError(f"{path} is not a readable jaxgan config ({e}); restore it from the run's "
                     "checkpoint meta or rerun training") from None
  # The names that pick code: one this jaxgan lacks (a newer jaxgan's model, an edit) was a
  # KeyError traceback from the registry in whatever built it.
  from jaxgan import data as data_lib, models  # pylint: disable=g-import-not-at-top

  for key, known in (("model.name", models.MODELS.names()), ("train.dtype", config_lib.DTYPES),
                     ("data.source", data_lib.SOURCES.names())):
    value = config_lib.get(config, key)
    if value not in known:
      raise ValueError(f"{path}: {key} is {value!r}, which this jaxgan does not have (it has "
                       f"{', '.join(known)}); use the jaxgan that trained the run")
  return config


def _workdir_above(path: str) -> str:
  """A hint where `path` is a checkpoint's step folder (WORKDIR/checkpoints/STEP, or
  checkpoints_best's) or a checkpoints folder of a workdir, '' otherwise."""
  path = os.path.abspath(path)
  parent, name = os.path.split(path)
  if name in ("checkpoints", "checkpoints_best") and os.path.isfile(
      os.path.join(parent, "config.json")):
    return f" It is a workdir's checkpoints folder: pass --workdir {parent}"
  above, folder = os.path.split(parent)
  if name.isdecimal() and folder in ("checkpoints", "checkpoints_best") and os.path.isfile(
      os.path.join(above, "config.json")):
    which = name if folder == "checkpoints" else "best"
    return f" It is a checkpoint's folder: pass --workdir {above} --checkpoint {which}"
  return ""


def parse_checkpoint(choice: str) -> str:
  """A --checkpoint value: 'latest', 'best' or a step number (one-line error otherwise)."""
  choice = str(choice).strip()
  if choice in ("latest", "best") or choice.isdecimal():  # not isdigit: int() refuses '²'
    return choice
  raise ValueError(f"--checkpoint must be 'latest', 'best' or a step number, got {choice!r}")


# What sampling reads of a train state (generate, evaluate): G's EMA weights and batch statistics,
# not D's or the optimizers' moments.
SAMPLER_PARTS = ("ema_params", "g_batch_stats")


def load_checkpoint(workdir: str, checkpoint: str = "latest",
                    check_meta: Optional[Callable[[dict], None]] = None,
                    parts: Optional[Sequence[str]] = None
                    ) -> tuple[ml_collections.ConfigDict, int, state_lib.TrainState, dict]:
  """(config, step, state, meta) of a --checkpoint choice: 'latest' (the newest readable one),
  'best' (the best-FID one) or a step number of WORKDIR/checkpoints. `check_meta(meta)` may raise
  before the state is read (e.g. a class name the checkpoint does not have); `parts`: as
  `_load_from`'s."""
  checkpoint = parse_checkpoint(checkpoint)
  if checkpoint == "best":
    return _load_from(workdir, "checkpoints_best", check_meta=check_meta, parts=parts)
  return _load_from(workdir, step=None if checkpoint == "latest" else int(checkpoint),
                     check_meta=check_meta, parts=parts)


def _load_from(workdir: str, subdir: str = "checkpoints", step: Optional[int] = None,
                check_meta: Optional[Callable[[dict], None]] = None,
                parts: Optional[Sequence[str]] = None
                ) -> tuple[ml_collections.ConfigDict, int, state_lib.TrainState, dict]:
  """(config, step, state, meta) of the newest readable checkpoint in WORKDIR/`subdir`
  ('checkpoints', or 'checkpoints_best' for the best-FID one), or of `step` there, on the
  default device. `check_meta(meta)` runs on each step's meta before its state is read.
  `parts` (e.g. SAMPLER_PARTS): only those fields of the state are read; the others are None."""
  config = load_config(workdir)
  abstract = state_lib.abstract_state(config)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target: Any = ckpt_lib.abstract_like(abstract, jax.tree_util.tree_map(lambda _: device, abstract))
  directory = os.path.join(workdir, subdir)
  if not os.path.isdir(directory):
    raise FileNotFoundError(_none_yet(workdir, config, subdir))
  if step is None:
    def accept(_, meta: dict) -> bool:
      check_meta(meta)
      return False  # "same config?" only decides what a writer moves aside; this one reads

    restored = _restore_newest(directory, target, None if check_meta is None else accept, parts)
    if restored is None:  # no step folder (one that cannot be read raised CheckpointError)
      raise FileNotFoundError(_none_yet(workdir, config, subdir))
    step, state, meta = restored
    return config, step, _as_state(abstract, state, parts), meta
  checkpointer = ckpt_lib.Checkpointer(directory, async_save=False, read_only=True)
  try:
    if step not in checkpointer.steps():
      raise FileNotFoundError(f"no checkpoint step {step} in {directory}; it holds steps "
                              f"{checkpointer.steps() or 'none'}")
    else:
      read_step = lambda read: _read_step(checkpointer, step, read)
      if check_meta is not None:
        check_meta(read_step(lambda: checkpointer.restore_meta(step)))
      restored = (step, *read_step(lambda: checkpointer.restore(step, target, parts)))
  finally:
    checkpointer.close()
  step, state, meta = restored
  return config, step, _as_state(abstract, state, parts), meta


def _none_yet(workdir: str, config: ml_collections.ConfigDict, subdir: str) -> str:
  """Why WORKDIR/`subdir` holds no checkpoint, and when one comes: 'train first' misled the
  operator of a run that is training but not yet at its first checkpoint or evaluation."""
  cfg = config.train
  if subdir == "checkpoints_best" and not cfg.eval_every:
    return (f"no best-FID checkpoint in {workdir}: its run evaluates nothing (set "
            "train.eval_every to keep one)")
  # As the trainer decides: a checkpoint at every checkpoint_every and evaluation step and at
  # the last; the best at the first evaluation (an eval_every step, or the last).
  if subdir == "checkpoints_best":
    what, first = "best-FID checkpoint", min(cfg.eval_every, cfg.num_steps)
  else:
    what = "checkpoint"
    first = min([cfg.checkpoint_every, cfg.num_steps] + [cfg.eval_every] * bool(cfg.eval_every))
  try:  # the trainer's lock file, while it runs (read, not locked: a reader must not block one)
    with open(os.path.join(workdir, RUN_LOCK), encoding="utf-8") as f:
      holder = f.read().strip()
  except OSError:
    holder = ""
  pid, host = _holder(holder)
  if not holder:
    then = ": train first"
  elif host == socket.gethostname() and pid.isdecimal() and not atomic_write.process_alive(
      int(pid)):  # the file a killed trainer left
    then = f"; {RUN_LOCK} names a trainer ({holder}) that is no longer running: rerun train"
  else:
    then = f"; {RUN_LOCK} names a trainer there ({holder}): wait for that step"
  return f"no {what} in {workdir} yet: its run writes the first at step {first}{then}"


def _as_state(abstract: state_lib.TrainState, state: Any, parts: Optional[Sequence[str]]
              ) -> state_lib.TrainState:
  """A partial read's {field: tree} as a TrainState, its unread fields None."""
  if parts is None:
    return state
  fields = {name: None for name in flax.serialization.to_state_dict(abstract)}
  for part in parts:
    fields[part] = flax.serialization.from_state_dict(getattr(abstract, part), state[part])
  return state_lib.TrainState(**fields)


# Reads of the newest checkpoint while a trainer writes the workdir: each listing may lose its
# steps to the trainer's rotation (train.keep_checkpoints; the best-FID one is replaced at each
# new best) before they are read.
READ_ATTEMPTS = 3


def _restore_newest(directory: str, target: Any, accept: Optional[Callable[[int, dict], bool]],
                    parts: Optional[Sequence[str]] = None) -> Optional[tuple[int, Any, dict]]:
  """Checkpointer.restore_latest of `directory`, listed again and retried when no step read and
  the steps changed meanwhile (a running trainer removed the ones listed)."""
  for attempt in range(READ_ATTEMPTS):
    checkpointer = ckpt_lib.Checkpointer(directory, async_save=False, read_only=True)
    listed = checkpointer.steps()
    try:
      return checkpointer.restore_latest(target, accept, parts)
    except ckpt_lib.CheckpointError:
      if attempt == READ_ATTEMPTS - 1 or ckpt_lib.step_folders(directory) == listed:
        raise
      log.warning("the checkpoints in %s changed while they were read (a trainer is writing "
                  "this workdir): reading the newest again", directory)
    finally:
      checkpointer.close()
  return None


def has_step_folders(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints holds a step folder (readable or not)."""
  return bool(ckpt_lib.step_folders(os.path.join(workdir, "checkpoints")))


def _read_step(checkpointer: ckpt_lib.Checkpointer, step: int, read: Callable[[], Any]) -> Any:
  """`read()` of one chosen step, its damage reported as one line naming the step."""
  try:
    return read()
  except ckpt_lib.CheckpointError:
    raise
  except Exception as e:  # damaged or truncated files: name the step, not orbax's internals
    others = [s for s in checkpointer.steps() if s != step]
    raise ckpt_lib.CheckpointError(
        f"checkpoint step {step} in {checkpointer.directory} is unreadable "
        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
        + (f"choose another --checkpoint of {others}" if others else "no other step is there")
    ) from None
