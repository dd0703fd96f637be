"""Checkpoints of the whole train state through an orbax CheckpointManager.

Each checkpoint holds the state pytree (written collectively by every process, asynchronously) and
a small JSON `meta` item (resolved config, class names, images seen). Orbax writes a step into a
temporary directory and renames it when complete, so a crash mid-write never damages the previous
checkpoint; `restore_latest` additionally falls back to an older step when the newest is corrupt.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
  """No checkpoint could be read."""


class Checkpointer:
  """Saves and restores (state, meta) pairs under `directory`, keeping the last `keep`."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict) -> None:
    """Starts writing checkpoint `step` (returns before the files are complete)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """Checkpoint `step` into the structure, dtypes and shardings of `abstract_state`."""
    target = flax.serialization.to_state_dict(abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(abstract_state, restored["state"])
    return state, dict(restored["meta"])

  def restore_meta(self, step: int) -> dict:
    restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(restored["meta"])

  def restore_latest(self, abstract_state: Any) -> Optional[tuple[int, Any, dict]]:
    """The newest readable checkpoint as (step, state, meta), or None when there is none.

    A checkpoint that fails to read is reported and skipped in favour of the previous one.
    """
    steps = self.steps()
    for step in reversed(steps):
      try:
        state, meta = self.restore(step, abstract_state)
        return step, state, meta
      except Exception as e:  # corrupt or truncated files: fall back, never loop on a crash
        log.warning("checkpoint %s/%d is unreadable (%s: %s); trying the previous one",
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
    if steps:
      raise CheckpointError(f"no readable checkpoint in {self.directory} (tried steps {steps}); "
                            "move the directory away to start fresh")
    return None

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying `shardings`, the restore target for `tree`'s structure."""
  return jax.tree_util.tree_map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
