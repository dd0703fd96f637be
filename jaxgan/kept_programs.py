"""Jitted functions kept for a process's later calls with equal arguments.

JAX keeps a jitted function's traces, lowerings and executables, but only for that function
object: a new one traces and lowers again, and reads its executable back from the persistent
compilation cache at best. The trainer, each evaluation and each tool made their own samplers,
standing statistics and Inception programs, so a run built again in one process (a resume, a
sweep, a notebook, the tests' runs) traced them all anew. `kept(make, *args)` returns the
function `make(*args)` made before for equal arguments (flax modules, meshes and shardings
compare and hash by value): the runs' init and train step (`run`), samplers, standing
statistics and Inception programs. A few only: each keeps its executables alive.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

# How many functions are kept: each keeps its executables alive.
KEPT = 16


def _made(make: Callable, *args: Any) -> Any:
  return make(*args)


def _new_cache() -> Callable:
  return functools.lru_cache(maxsize=KEPT)(_made)


_kept = _new_cache()


def kept(make: Callable, *args: Any) -> Any:
  """`make(*args)`, or the one made before for equal arguments where they hash. `make` must
  build a fresh object from its arguments alone (no other state it could read differently)."""
  try:
    hash(args)
  except TypeError:  # an argument that cannot be hashed (a module holding a list): made afresh
    return make(*args)
  return _kept(make, *args)


def forget_programs() -> None:
  """Drops every kept function (tests that patch what they trace)."""
  _kept.cache_clear()


@contextlib.contextmanager
def kept_apart() -> Iterator[None]:
  """Inside: functions are kept apart from those kept before, and dropped at its end; the ones
  kept before are kept again after. For code that patches what the functions trace (tests):
  nothing traced under the patches serves code outside, nor the reverse."""
  global _kept  # pylint: disable=global-statement
  outer, _kept = _kept, _new_cache()
  try:
    yield
  finally:
    _kept = outer
