"""Checkpoints of the whole train state through an orbax CheckpointManager.

Each checkpoint holds the state pytree (written collectively by every process, asynchronously) and
a small JSON `meta` item (the trainer's: resolved config, class names and attributes, step, data
position, data and order fingerprints, label counts). Orbax writes a step into a temporary
directory and renames it when complete, so a crash mid-write never damages the previous
checkpoint; `restore_latest` additionally falls back to an older step when the newest is corrupt:
unreadable, or holding arrays that are not bit-identical to those saved (the meta keeps a digest
of each, see `state_digest` and `checkpoint_checks`). Samplers read a part of a state: G's EMA
weights are a fifth of a ResNet-128 checkpoint's bytes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Callable, Optional, Sequence

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgan import multihost, orbax_output, state_digest
from jaxgan.checkpoint_checks import (DIGEST_KEY, META_DIGEST_KEY, CheckpointError, LayoutError,
                                      check_digest, check_meta, key_paths, layout_difference,
                                      leaf_layouts, meta_digest)

log = logging.getLogger(__name__)


class Checkpointer:
  """Saves and restores (state, meta) pairs under `directory`, keeping the last `keep`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
               read_only: bool = False, retry_delay_s: float = 2.0):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    self.keep = keep
    # A failed read of a step's state is tried once more after this pause before the step is
    # taken for damage: network file systems fail transiently, and damage costs the newest
    # checkpoint (moved aside, training resumes from the one before).
    self.retry_delay_s = retry_delay_s
    # cleanup_tmp_directories: a process killed mid-write leaves a temporary step directory;
    # remove it at start-up so it can never be mistaken for, or collide with, a checkpoint.
    # Readers (generate, tools) must not touch a directory a live run may be writing.
    # One process: the step's folder is made in save(), not in the background, where a failure
    # left orbax's other threads waiting on it for 300 s at the exit (a stopped run's status 75
    # came after a scheduler's grace period). Several: in the background still, since made in
    # save() process 0 alone would fail it and skip the barrier the others then wait in.
    with orbax_output.without_read_only_notices(read_only):
      options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                             cleanup_tmp_directories=not read_only,
                                             read_only=read_only,
                                             enable_async_checkpointing=async_save,
                                             async_options=ocp.AsyncOptions(
                                                 create_directories_asynchronously=(
                                                     jax.process_count() > 1)))
      # Handlers named up front (not inferred from the first save/restore's args), so a reader
      # can ask for a step's tree metadata before it has restored anything.
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()})
    # Writes that failed since the last one that completed, and how many completed: the trainer
    # stops a run whose storage keeps failing instead of training on for days with nothing to
    # resume from. A write's outcome is known once it is waited for (at the next save at latest).
    self.failures_in_a_row = 0
    self.completed = 0
    self._pending = False  # a started write whose outcome is not counted yet
    self._parts_manager: Optional[ocp.CheckpointManager] = None  # reads parts of a state
    orbax_output.quiet_failed_io()  # readers too: a damaged step's failed read

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> bool:
    """Starts writing checkpoint `step` (returns before the files are complete).

    A failed write (disk full, permissions, a lost bucket) is reported, not raised: the run goes
    on, and the previous checkpoint stays valid because orbax only renames a step into place once
    it is complete. Returns False when the write could not be started.
    """
    # An earlier background write's failure, reported (and cleared) here, then try this one
    # anyway. wait(), not check_for_errors(): orbax keeps that error until the writer thread is
    # joined, and the join inside manager.save() would otherwise raise it as this save's failure.
    self.wait()
    try:
      path = os.path.join(self.directory, str(step))
      if multihost.any_process(step in self._manager.all_steps() or os.path.isdir(path)):
        # Left by an earlier attempt at this step (a resume from before it, which had skipped it
        # as unreadable; a best FID evaluated again). Orbax would refuse the step, and on several
        # processes only those whose listing holds it, leaving the others in its barriers.
        log.warning("checkpoint %s exists from an earlier attempt: moving it to %s.replaced/",
                    path, self.directory)
        self.move_aside(step, ".replaced")
        if multihost.any_process(step in self._manager.all_steps() or os.path.isdir(path)):
          # A host whose view of a shared file system lags still lists it: orbax would refuse
          # the step there alone, after its first barrier, and leave the others waiting in it.
          raise CheckpointError(f"{path} is still listed on some process after it was moved "
                                "aside (a lagging shared file system); not written")
      state = flax.serialization.to_state_dict(state)
      # Taken from the arrays being saved (before orbax copies them out), so that a restore
      # can tell what it read from what was written (see state_digest).
      meta = {**meta, DIGEST_KEY: state_digest.tree_digest(state)}
      meta[META_DIGEST_KEY] = meta_digest(meta)  # the meta's own damage is told from a change
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
      self._pending = True
      return True
    except Exception as e:  # pylint: disable=broad-except
      self._report_failure(step, e)
      self.failures_in_a_row += 1
      return False

  def _report_failure(self, step: Optional[int], error: BaseException,
                      settled: bool = False) -> None:
    """Logs a failed write; `settled`: no write is in flight (it was waited for)."""
    self._forget_failed_writes(settled)
    previous = self.latest_step()
    where = f"step {step}" if step is not None else "a checkpoint"
    log.error("writing %s to %s failed (%s: %s); the previous checkpoint (%s) is still valid",
              where, self.directory, type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "",
              f"step {previous}" if previous is not None else "none")

  def _forget_failed_writes(self, settled: bool) -> None:
    """Takes the steps on disk again after a failed write. Orbax drops the oldest kept step from
    its list when a save starts, and deletes it only once the save completes: after a failure
    the list missed a valid step (keep=1: 'no checkpoint', while a rerun resumes from it) and
    that step was never pruned. Once the write is `settled`, and on one process, its temporary
    folder is removed too (a disk that filled up gets its space back); a save that raised may
    have writes still running, and with several processes another may still be in the folder:
    the next start's clean-up removes those. Never raises: the storage that failed the write may
    fail this too, and the write's own failure is what to report."""
    try:
      if settled and jax.process_count() == 1 and not self.read_only:
        for name in os.listdir(self.directory) if os.path.isdir(self.directory) else []:
          if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      self._manager.reload()
    except Exception as e:  # pylint: disable=broad-except
      log.warning("re-reading the checkpoints in %s after a failed write failed too (%s: %s)",
                  self.directory, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")

  def _report_async_errors(self) -> bool:
    """Surfaces an error of an earlier asynchronous save; True when there was none."""
    try:
      self._manager.check_for_errors()
      return True
    except Exception as e:  # pylint: disable=broad-except
      self._report_failure(None, e, settled=True)
      return False

  def restore(self, step: int, abstract_state: Any, parts: Optional[Sequence[str]] = None
              ) -> tuple[Any, dict]:
    """Checkpoint `step` into the structure, dtypes and shardings of `abstract_state`.

    `parts`: only these top-level fields of the state are read, and the state comes back as a
    {field: tree} dict of them: sampling needs G's EMA weights, not D's or the optimizers' moments
    (most of a checkpoint's bytes), and reads and holds a fraction of the whole.
    """
    target = flax.serialization.to_state_dict(abstract_state)
    if parts is not None:
      target = {part: target[part] for part in parts}

    def check_layout() -> None:
      # Compared from the checkpoint's own tree metadata, before reading any array, so that a
      # layout change is told apart from damage by what is on disk, not by an error's wording.
      saved = self._manager.item_metadata(step)["state"]
      if not key_paths(saved):  # no tree metadata (a missing _METADATA file): damage
        raise CheckpointError(f"checkpoint step {step} in {self.directory} has no readable tree "
                              "metadata")
      difference = layout_difference(saved, target, parts)
      if difference:
        raise LayoutError(f"checkpoint step {step} in {self.directory} holds a train state of a "
                          f"different layout ({difference}): written by another jaxgan version "
                          "or model config; resume it with that version and config, or start a "
                          "fresh workdir")

    # Agreed before orbax's collective restore: a process whose read failed here (a lagging
    # network file system) would otherwise leave the others waiting in the restore's barrier.
    multihost.agreed(check_layout, f"reading checkpoint step {step}'s tree metadata")
    if parts is None:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    else:
      restored = self._read_parts(step, target)
    check_meta(step, self.directory, restored["meta"])  # also where its meta was not read first
    check_digest(step, self.directory, restored["state"], restored["meta"], parts)
    if parts is not None:
      return dict(restored["state"]), dict(restored["meta"])
    state = flax.serialization.from_state_dict(abstract_state, restored["state"])
    return state, dict(restored["meta"])

  def _read_parts(self, step: int, target: dict) -> dict:
    """{'state': the arrays of `target`'s leaves only, 'meta'}. Orbax's standard handler reads
    whole trees; its PyTree handler (the same files: the standard one writes through it) reads a
    part of one, so a second manager reads with it."""
    if self._parts_manager is None:
      with orbax_output.without_read_only_notices(True):
        self._parts_manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
            item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})
    return self._parts_manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True),
        meta=ocp.args.JsonRestore()))

  def saved_layouts(self, step: int) -> dict[str, tuple[Optional[tuple], Optional[str]]]:
    """{'g_params/...': (shape, dtype name)} of checkpoint `step`'s state, from its metadata."""
    return leaf_layouts(self._manager.item_metadata(step)["state"])

  def restore_meta(self, step: int) -> dict:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    check_meta(step, self.directory, restored["meta"])
    return dict(restored["meta"])

  def restore_latest(self, abstract_state: Any,
                     accept_meta: Optional[Callable[[int, dict], bool]] = None,
                     parts: Optional[Sequence[str]] = None
                     ) -> Optional[tuple[int, Any, dict]]:
    """The newest readable checkpoint as (step, state, meta), or None when there is none
    (`parts`: as `restore`'s).

    For each step, newest first, `meta` is read first and handed to `accept_meta(step, meta)`,
    which may raise (e.g. a config that changes the math) before any state is read; it returns
    True when the checkpoint was written by the same model and optimizer config. A step whose
    meta or state fails to read (twice, `retry_delay_s` apart) is reported and skipped in favour
    of the previous one. Once an older step has restored, the newer failed ones are moved aside
    to `<directory>.corrupt/` (so the run can write those steps again) where the failure can only
    be damage: every process saw its files, the config matched (for the state), and the reader
    is not read-only. When no step restores, nothing is moved: a failure common to every step
    (out of memory after a mesh change, a storage outage, another orbax) is not damage, and
    moving every step aside would let the next start begin the run again from step 0.
    """
    steps = agreed_steps(self.steps())
    damaged: list[int] = []  # newer steps that failed as only damage does
    for step in reversed(steps):
      meta, error, visible = self.read_agreed(step, lambda: self.restore_meta(step))
      if error is not None:
        self._skip(step, error)
        damaged += [step] if visible else []
        continue
      # Agreed: a process refusing the config alone (an --allow_config_change one host's command
      # line lacks) would leave the others waiting in the read's collective.
      same_config = multihost.agreed(
          lambda: accept_meta(step, meta), f"the resume's check of checkpoint step {step}'s "
          "config") if accept_meta is not None else False
      restored, error, visible = self.read_agreed(
          step, lambda: self.restore(step, abstract_state, parts))
      if error is None:
        for newer in damaged if not self.read_only else []:
          log.warning("moving unreadable checkpoint %s/%d to %s.corrupt/ (step %d restored)",
                      self.directory, newer, self.directory, step)
          self.move_aside(newer)
        state, meta = restored
        return step, state, meta
      self._skip(step, error)
      damaged += [step] if same_config and visible else []
    if steps:
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {steps}; "
                            "errors above); if the model config changed, restore it; if it is "
                            "damaged, move the directory away to start fresh")
    return None

  def read_agreed(self, step: int, read: Callable[[], Any]
                  ) -> tuple[Any, Optional[BaseException], bool]:
    """(result, None, True) when `read()` of `step` succeeds on every process, else (None, error,
    visible), after a second try `retry_delay_s` later (network file systems fail transiently).

    Every process decides alike: reading is collective (orbax ends it in a barrier), so a step
    one process cannot read is skipped by all. A step directory that some process does not see
    (its view lags) is not read at all, since orbax would fail there before its barrier and leave
    the others waiting in it; `visible` is False then, and the step is no evidence of damage.
    """
    path = os.path.join(self.directory, str(step))
    error: Optional[BaseException] = None
    for attempt in range(2):
      error, visible = None, multihost.all_processes(os.path.isdir(path))
      if not visible:
        error = CheckpointError(
            f"{path} is not visible on every process" if jax.process_count() > 1 else
            f"{path} is gone since it was listed" + (" (removed by a trainer writing this "
                                                     "workdir?)" if self.read_only else ""))
      else:
        layout: Optional[LayoutError] = None
        try:
          result = read()
        except LayoutError as e:
          layout = e
        except Exception as e:  # corrupt or truncated files: fall back, never loop on a crash
          error = e
        # Not damage: raised on every process (never moved aside; older steps share the layout).
        if multihost.any_process(layout is not None):
          raise layout or LayoutError(f"{path}: another process found a different layout")
        if _everywhere(error is None):
          return result, None, True
      if attempt == 0:
        log.warning("reading checkpoint %s failed (%s); trying again in %.0f s", path,
                    error_cause(error) if error else "on another process", self.retry_delay_s)
        time.sleep(self.retry_delay_s)
    return None, error or CheckpointError("another process could not read it"), visible

  def _skip(self, step: int, error: BaseException) -> None:
    log.warning("checkpoint %s/%d is unreadable (%s); trying the previous one",
                self.directory, step, error_cause(error))

  def move_aside(self, step: int, suffix: str = ".corrupt") -> None:
    """Moves step `step` to `<directory><suffix>/<step>-<time>` (kept, not deleted); collective:
    process 0 moves it, and a failure there is raised on every process (agreed), not left for
    the others to wait on."""
    def move() -> None:
      if jax.process_index() != 0:
        return
      source = os.path.join(self.directory, str(step))
      target_dir = self.directory + suffix
      os.makedirs(target_dir, exist_ok=True)
      target = base = os.path.join(target_dir, f"{step}-{int(time.time())}")
      for n in range(1, 1000):  # a second move of the step within the second: not into the first
        if not os.path.exists(target):
          break
        target = f"{base}.{n}"
      if os.path.exists(source):
        shutil.move(source, target)

    multihost.agreed(move, f"moving checkpoint {self.directory}/{step} aside")
    self._manager.reload()

  def prune(self, newest: int) -> None:
    """Deletes the steps before `newest` (the step a run resumed from) beyond the newest `keep`
    up to it. Orbax deletes an old step once the next save has completed, in the background: a
    run killed in between leaves it (a kill during the deletion, half of it, still listed as a
    step), and only a later save removed it, never where the rerun saves nothing (it resumed at
    train.num_steps). Steps after `newest` are left as they are (a save reaching one moves it
    aside). Collective; a failure is logged, not raised: the next save tries again."""
    steps = [step for step in agreed_steps(self.steps()) if step <= newest]
    extra = steps[:max(len(steps) - self.keep, 0)]
    if self.read_only or not extra:
      return

    def remove() -> None:
      if jax.process_index() == 0:
        for step in extra:
          shutil.rmtree(os.path.join(self.directory, str(step)))

    try:
      multihost.agreed(remove, f"removing old checkpoints of {self.directory}")
      log.info("removed checkpoint steps %s of %s: older than the newest %d (left by a run "
               "stopped before it removed them)", extra, self.directory, self.keep)
    except Exception as e:  # pylint: disable=broad-except  (raised on every process alike)
      log.warning("could not remove the old checkpoint steps %s of %s (%s); the next save tries "
                  "again", extra, self.directory, error_cause(e))
    self._manager.reload()

  def wait(self) -> bool:
    """Blocks until every started save is complete on disk; False (reported) if one failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._report_failure(None, e, settled=True)
      ok = False
    else:
      ok = self._report_async_errors()
    if self._pending:
      self._pending = False
      self.failures_in_a_row = 0 if ok else self.failures_in_a_row + 1
      self.completed += ok
    return ok

  def close(self) -> None:
    self.wait()
    self._manager.close()
    if self._parts_manager is not None:
      self._parts_manager.close()


def _everywhere(ok: bool) -> bool:
  """True when `ok` holds on every process. Restoring is collective: if one process fell back to
  an older step while the others resumed the newest, they would train from different states (or
  hang in the next collective), so a step one process cannot read is skipped by all.

  Limit: orbax's restore ends in a barrier. A read error raised inside it on some processes only
  leaves the others waiting at that barrier (orbax's timeout: 300 s) rather than here, and is not
  recovered cleanly; failures every process sees (shared storage), and failures after orbax
  returns, are."""
  return multihost.all_processes(ok)


def agreed_steps(steps: list[int]) -> list[int]:
  """Process 0's list of steps, on every process: all must try the same steps in the same order
  (each try is collective), also when one process's view of the directory lags. A step missing
  from another process's view then fails to read there, and `_everywhere` skips it."""
  if jax.process_count() == 1:
    return steps
  count = multihost.from_process_0(len(steps))
  # Every process passes an array of that shape; only process 0's values are broadcast.
  mine = np.asarray(steps if jax.process_index() == 0 else [-1] * count, np.int64)
  return [int(s) for s in multihost.from_process_0(mine)]


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings`, the restore target for `tree`'s structure."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def error_cause(error: BaseException) -> str:
  """'Type: first line' of `error`'s innermost cause: orbax wraps a storage library's error
  ('OUT_OF_RANGE: ... not valid', 'Truncated Zstd-compressed stream', 'Permission denied') in
  its own ('Encountered error while reading array index: ...'), whose words say neither."""
  for _ in range(8):  # a chain, not a cycle
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  message = str(error).splitlines()[0][:200] if str(error) else ""
  return f"{type(error).__name__}: {message}" if message else type(error).__name__
