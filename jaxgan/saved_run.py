"""A training run's saved config and checkpoints, read on one device: the resolved config
(`load_config`) and a checkpoint, the latest, the best-FID one or a given step (`load_checkpoint`),
whole or only the parts sampling needs (`SAMPLER_PARTS`).

The readers serve `generate`, `evaluate --workdir` and tools that inspect runs, also while a
trainer writes the workdir; training itself restores through the trainer with the run's own mesh.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from typing import Any, Callable, Optional, Sequence

import flax.serialization
import jax
import ml_collections

from jaxgan import atomic_write
from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import run_folders
from jaxgan import state as state_lib
from jaxgan import workdir as workdir_lib
from jaxgan import writers


log = logging.getLogger(__name__)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """WORKDIR/config.json on top of the current schema."""
  if not workdir:  # a shell variable left unset: 'config.json not found: is  a ... workdir?'
    raise ValueError("--workdir is empty; pass a training run's workdir")
  if workdir_lib.uri_refusal(workdir):
    raise ValueError(workdir_lib.uri_refusal(workdir))
  if os.path.isfile(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a folder; pass a training run's "
                     "workdir (the folder holding config.json and checkpoints/)")
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a jaxgan training workdir?"
                            + _workdir_above(workdir))
  # Not a regular file: a folder failed as a traceback, and open() waited forever on a pipe.
  if not os.path.isfile(path):
    raise ValueError(f"{path} is not a file; restore the run's config.json (its checkpoints' "
                     "meta holds it) or pass another --workdir")
  try:
    with open(path, encoding="utf-8") as f:
      config = config_lib.from_json(f.read())
  # json's decode error, bytes that are not UTF-8, a key this jaxgan does not know; or a file
  # that cannot be read (permissions).
  except (OSError, ValueError) as e:
    reason = e.strerror if isinstance(e, OSError) and e.strerror else e
    raise ValueError(f"{path} is not a readable jaxgan config ({reason}); restore it from the "
                     "run's checkpoint meta or rerun training") from None
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
  subdir = "checkpoints_best" if checkpoint == "best" else "checkpoints"
  step = int(checkpoint) if checkpoint.isdecimal() else None
  try:
    return _load_from(workdir, subdir, step, check_meta=check_meta, parts=parts)
  except ckpt_lib.LayoutError as e:
    raise _edited_config(workdir, subdir, step) or e from None


def _edited_config(workdir: str, subdir: str, step: Optional[int]
                   ) -> Optional[ckpt_lib.LayoutError]:
  """The error to raise where a checkpoint's layout differs from the state config.json builds
  because config.json differs from the config the checkpoint was written with (its meta's) in
  keys that shape the state: the file was edited or replaced, and the layout error blamed a
  healthy checkpoint ('start a fresh workdir'). None where the two configs build one layout (the
  difference is elsewhere: another jaxgan; or a resume's own change, train.num_steps say), or
  the meta cannot be read."""
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, subdir), async_save=False,
                                       read_only=True)
  try:
    step = checkpointer.latest_step() if step is None else step  # the one restore_latest read
    saved = config_lib.from_json(json.dumps(checkpointer.restore_meta(step)["config"]))
    current = load_config(workdir)
    layouts = [jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), state_lib.abstract_state(c))
               for c in (current, saved)]
  except Exception:  # pylint: disable=broad-except  (the layout error stands as it is)
    return None
  finally:
    checkpointer.close()
  if layouts[0] == layouts[1]:
    return None
  now, then = dict(config_lib.flat_items(current)), dict(config_lib.flat_items(saved))
  # The model's and the data's keys first: those shape the state.
  differ = sorted((k for k in now if k in then and now[k] != then[k]),
                  key=lambda k: (not k.startswith(("model.", "data.")), k))
  if not differ:
    return None
  key, more = differ[0], len(differ) - 1
  return ckpt_lib.LayoutError(
      f"{os.path.join(workdir, 'config.json')}: {key} is {now[key]!r}, but checkpoint step "
      f"{step} was written with {then[key]!r}" + (f" ({more} other key(s) differ too)" if more
                                                  else "")
      + ": config.json was edited or replaced since the run wrote it; put back the values it "
      "trained with")


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
    with open(os.path.join(workdir, workdir_lib.RUN_LOCK), encoding="utf-8") as f:
      holder = f.read().strip()
  except OSError:
    holder = ""
  pid, host = workdir_lib.lock_holder(holder)
  # No trainer's lock (a killed one's may have died mid-write: its own message below), and the
  # log past the first checkpoint: the folder was moved or deleted ('train first' sent the
  # operator of a finished run after a run it had).
  logged = ([row["step"] for row in writers.read_metrics(workdir)
             if isinstance(row.get("step"), int)]  # a hand-edited row's text or null: not one
            if subdir == "checkpoints" and not holder else [])
  if logged and max(logged) >= first:
    folder = os.path.join(workdir, subdir)
    return (f"no checkpoint in {workdir}, though its metrics.jsonl logs steps up to "
            f"{max(logged)}: {folder} {'is empty' if os.path.isdir(folder) else 'is missing'} "
            "(moved or deleted?); put its step folders back to read this run")
  if not holder:
    then = ": train first"
  elif host == socket.gethostname() and pid.isdecimal() and not atomic_write.process_alive(
      int(pid)):  # the file a killed trainer left
    then = f"; {workdir_lib.RUN_LOCK} names a trainer ({holder}) that is no longer running: rerun train"
  else:
    then = f"; {workdir_lib.RUN_LOCK} names a trainer there ({holder}): wait for that step"
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
      if attempt == READ_ATTEMPTS - 1 or run_folders.step_folders(directory) == listed:
        raise
      log.warning("the checkpoints in %s changed while they were read (a trainer is writing "
                  "this workdir): reading the newest again", directory)
    finally:
      checkpointer.close()
  return None


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
        f"({ckpt_lib.error_cause(e)}); "
        + (f"choose another --checkpoint of {others}" if others else "no other step is there")
    ) from None
