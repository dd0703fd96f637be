"""The checks that stop a run rather than let it train on uselessly: checkpoints that keep
failing, steps that keep coming out non-finite, a restored state that is already non-finite.

The trainer calls them; each raises TrainingError with what happened and what to do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp

from jaxgan import multihost
from jaxgan import sharding

if TYPE_CHECKING:  # orbax: loaded by the checkpointer's owner
  from jaxgan.checkpoint import Checkpointer


class TrainingError(RuntimeError):
  """A run cannot start or continue; the message says why and what to do."""


def resume_point(checkpointer: Checkpointer) -> str:
  """Where a rerun would resume, for messages."""
  latest = checkpointer.latest_step()
  return f"step {latest}" if latest is not None else "the start (no checkpoint)"


# Checkpoint writes that may fail in a row before the run stops: one can be a passing storage
# hiccup (the previous checkpoint stays valid); several mean a preemption would cost everything
# since the last one that was written.
MAX_FAILED_CHECKPOINTS = 3


def check_checkpoint_writes(checkpointer: Checkpointer) -> None:
  """Stops the run (on every process alike) when its checkpoints keep failing, or when the first
  one it wrote failed: storage that cannot take one (a full disk, a bucket mount that cannot
  rename folders) would otherwise let it train for days with nothing to resume from."""
  def failing() -> bool:
    failed = checkpointer.failures_in_a_row
    return multihost.any_process(failed >= MAX_FAILED_CHECKPOINTS
                                 or (failed > 0 and not checkpointer.completed))

  if not failing():
    return
  # Decided again once the write just started is finished (every process is here: the decision
  # above was agreed). A write's failure in the background is known at the next save only: one
  # that then completes is a checkpoint to resume from, and the run goes on. And orbax lists a
  # step from the start of its write: one that fails is no place to resume from (a first write
  # failed that way said "resumes from step 4").
  checkpointer.wait()
  if not failing():
    return
  # The same words on every process (the counts are each process's own).
  raise TrainingError(
      f"checkpoint writes to {checkpointer.directory} keep failing (this run's first, or "
      f"{MAX_FAILED_CHECKPOINTS} in a row; errors above); the run stops rather than train on "
      f"without checkpoints: free space or fix the storage, then rerun (it resumes from "
      f"{resume_point(checkpointer)})")


# The longest skip streak so far, kept on the device from each call's streaks ([k] when stacked):
# read back only where the loop checks it.
longest_streak = jax.jit(lambda longest, streak: jnp.maximum(longest, jnp.max(streak)))


def check_nonfinite(longest: Any, step: int, limit: int, checkpointer: Checkpointer,
                    dtype: str) -> None:
  """Stops the run if the longest skip streak since the last check reached `limit` (`dtype`: the
  run's train.dtype, whose float32 is the remedy it names when it computes in less)."""
  longest = int(sharding.to_host(longest))
  if longest >= limit:
    checkpointer.wait()  # alike everywhere (longest is); a write in flight is listed already
    # A config change needs the flag only where there is a checkpoint to resume from.
    resumes = checkpointer.latest_step() is not None
    raise TrainingError(
        f"{longest} consecutive non-finite steps by step {step} (limit "
        f"train.max_nonfinite_steps={limit}); a rerun resumes from "
        f"{resume_point(checkpointer)} in {checkpointer.directory}: lower the learning rates "
        f"(optim.*){'' if dtype == 'float32' else ' or set train.dtype=float32'}, then rerun"
        + (" with --allow_config_change" if resumes else ""))


# One flag per leaf, computed where the leaves live (sharded or not) and read back at once. Each a
# scalar: a scalar cannot be split over devices, so every process reads all of them.
_finite_leaves = jax.jit(lambda leaves: [jnp.all(jnp.isfinite(x)) for x in leaves])


def _field_path(path: tuple) -> str:
  return jax.tree_util.keystr(path).lstrip(".")  # '.g_params[...]': a dataclass field's


def nonfinite_leaves(state: Any, name: Callable[[tuple], str] = _field_path) -> list[str]:
  """Paths (as `name` writes a key path) of the floating-point leaves of `state` that hold a NaN
  or an infinity."""
  named = [(name(path), x)
           for path, x in jax.tree_util.tree_flatten_with_path(state)[0]
           if jnp.issubdtype(x.dtype, jnp.floating)]
  if not named:
    return []
  finite = sharding.to_host(_finite_leaves([x for _, x in named]))
  return [name for (name, _), ok in zip(named, finite, strict=True) if not ok]


def check_restored_state(state: Any, step: int, directory: str) -> None:
  """Refuses a restored state that is already non-finite (written before the step guard checked
  the optimizer states, an Adam moment could overflow to inf): every step from it would be
  skipped, and the run would stop blaming the learning rates."""
  bad = nonfinite_leaves(state)
  if bad:
    shown = ", ".join(bad[:4]) + (f" and {len(bad) - 4} more" if len(bad) > 4 else "")
    raise TrainingError(
        f"checkpoint step {step} in {directory} holds non-finite values ({shown}): no step can "
        "train from it; move that step's folder out of the directory to resume from the one "
        "before it (earlier steps may hold them too: an overflowed Adam moment stays inf), or "
        "start over in a new workdir")
