"""Decisions every process must take alike.

Saving, restoring, sampling and evaluating are collective: if one process chose differently from
the others, they would diverge or hang in the next collective. Each helper is one small
collective (an all-gather or a broadcast of a scalar); on a single process it returns its input.
"""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

import jax
import numpy as np


T = TypeVar("T")


class PeerError(RuntimeError):
  """Work failed on another process; this one stops at the same point (see `agreed`)."""


def _gather(value: np.ndarray) -> np.ndarray:
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  return np.asarray(multihost_utils.process_allgather(value))


def all_processes(flag: bool) -> bool:
  """True only if `flag` holds on every process (a file every process could read, ...)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.all(_gather(np.int32(flag))))


def any_process(flag: bool) -> bool:
  """True if `flag` holds on some process (a failure any process saw, ...)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.any(_gather(np.int32(flag))))


def first_signal(local: Optional[int]) -> Optional[int]:
  """The signal of the first process (by index) that received one, or None."""
  if jax.process_count() == 1:
    return local
  received = [int(v) for v in _gather(np.int32(local or 0)).ravel() if v]
  return received[0] if received else None


def from_process_0(value: T) -> T:
  """Process 0's `value` (a scalar or array of the same shape everywhere) on every process."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  out = _whole(multihost_utils.broadcast_one_to_all, np.asarray(value))
  return type(value)(out) if isinstance(value, (bool, int, float)) else out


def all_gather(value: np.ndarray) -> np.ndarray:
  """Every process's `value` (one shape and dtype everywhere) stacked by process index: [P, ...]
  on every process."""
  value = np.asarray(value)
  if jax.process_count() == 1:
    return value[None]
  return _whole(_gather, value)


def _wide(array: np.ndarray) -> bool:
  """Whether JAX without jax_enable_x64 would narrow `array`'s values (64-bit, complex128)."""
  return array.dtype.itemsize > 4 and array.dtype.itemsize % 4 == 0


def _whole(collective: Callable[[np.ndarray], np.ndarray], value: np.ndarray) -> np.ndarray:
  """`collective(value)` (a broadcast: [...], or an all-gather: [P, ...]) with 64-bit values
  whole: without jax_enable_x64 JAX would carry them as 32 bits (a best FID rounded to float32,
  a large int wrapped), so their bytes travel as uint32 words."""
  if not _wide(value):
    return np.asarray(collective(value))
  words = collective(np.ascontiguousarray(value).reshape(-1).view(np.uint32))
  words = np.ascontiguousarray(words, np.uint32)
  return words.view(value.dtype).reshape(words.shape[:-1] + value.shape)


def gather_rows(rows: np.ndarray, values: np.ndarray, total: int) -> np.ndarray:
  """The [total, ...] array whose rows each process holds some of, on every process: `values[i]`
  is row `rows[i]`, and every row is held by exactly one process (processes may hold different
  numbers of rows). Per-image features cross hosts this way, not the images."""
  rows = np.asarray(rows, np.int64)
  values = np.asarray(values)
  # Checked on every process alike: a process raising alone would leave the others waiting in
  # the all-gathers below.
  if any_process(len(rows) != len(values)):
    raise ValueError(f"gather_rows: row indices and rows differ in number on some process "
                     f"(here {len(rows)} and {len(values)})")
  if jax.process_count() > 1:
    # The all-gather needs one shape everywhere: each process pads to the largest share (-1 marks
    # a padding row).
    most = int(np.max(_gather(np.int32(len(rows)))))
    pad = most - len(rows)
    rows = _whole(_gather, np.concatenate([rows, np.full(pad, -1, np.int64)])).ravel()
    padding = np.zeros((pad,) + values.shape[1:], values.dtype)
    values = _whole(_gather, np.concatenate([values, padding]))
    values = values.reshape((-1,) + values.shape[2:])
    held = rows >= 0
    rows, values = rows[held], values[held]
  if len(rows) != total or not np.array_equal(np.sort(rows), np.arange(total)):
    raise ValueError(f"the processes' rows do not cover rows 0..{total - 1} once each")
  out = np.empty((total,) + values.shape[1:], values.dtype)
  out[rows] = values
  return out


def agreed(work: Callable[[], T], what: str) -> T:
  """`work()`, then every process learns whether it failed anywhere, and if so all raise (the
  error itself where it happened, PeerError elsewhere). Put around local work that precedes a
  collective: a process that failed alone would otherwise leave the others waiting in it. Work
  that itself calls collectives must reach all of them on every process, also when it fails
  (the evaluator's fakes finish sampling before raising). A Ctrl-C on one process is such a
  failure too: it is re-raised there after the exchange, which waits for the other processes'
  work to end. `raised_after_agreeing` tells these errors from a failure of the exchange."""
  try:
    result, error = work(), None
  except (Exception, KeyboardInterrupt) as e:  # pylint: disable=broad-except  (re-raised below)
    result, error = None, e
  if any_process(error is not None):
    if error is not None:
      # object.__setattr__: also on a frozen dataclass exception, whose own refuses.
      object.__setattr__(error, "raised_after_agreeing", True)
      raise error
    raise PeerError(f"{what} failed on another process (its log says why)")
  return result


def raised_after_agreeing(error: BaseException) -> bool:
  """Whether `agreed` raised `error` after its exchange: every process then raises one (its own
  or a PeerError), so they may still meet in a collective, whatever the types. Not so for an
  error of the exchange itself (a dead peer)."""
  return isinstance(error, PeerError) or getattr(error, "raised_after_agreeing", False)
