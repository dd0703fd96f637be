"""What orbax and tensorstore print, cut to what a user of jaxgan needs.

The Checkpointer reports each failed write itself, in one line that says which checkpoint is
still valid; left alone, the libraries' own reports of the same failure bury it (1,036 lines for
two checkpoints on a full disk, 2026-12-03, where 12-14 are left), and readers get three notices
per checkpoint that they asked for read-only access.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Any, Callable, Iterator, Optional


class _DropReadOnlyNotices(logging.Filter):
  """Orbax warns three times for every read-only manager ('Given directory is read only',
  'read_only=True, setting ...'): noise for readers (`generate`, `evaluate`) that ask for it."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (message.startswith("Given directory is read only")
                or message.startswith("CheckpointManagerOptions.read_only=True"))


@contextlib.contextmanager
def without_read_only_notices(active: bool) -> Iterator[None]:
  """Orbax's read-only notices dropped while open, where `active`."""
  absl_logger, notices = logging.getLogger("absl"), _DropReadOnlyNotices()
  if active:
    absl_logger.addFilter(notices)
  try:
    yield
  finally:
    absl_logger.removeFilter(notices)


# What storage failures say (tensorstore raises them as ValueErrors worded as absl status codes):
# failures of the disk or bucket, not of the code, so a traceback adds nothing to their message.
_STORAGE_FAILURES = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE",
                     "DEADLINE_EXCEEDED", "No space left on device")


def _storage_failure(error: Optional[BaseException]) -> bool:
  """Whether `error`, or an error it was raised from, is a storage failure."""
  for _ in range(8):  # a chain, not a cycle
    if error is None:
      return False
    if isinstance(error, OSError) or any(words in str(error) for words in _STORAGE_FAILURES):
      return True
    error = error.__cause__ or error.__context__
  return False


class _OrbaxErrorsInOneLine(logging.Filter):
  """Orbax logs a failed write from each of its threads with a full traceback: about 350 lines a
  checkpoint on a full disk, burying the Checkpointer's own one-line report of it (what failed,
  and which checkpoint is still valid). Orbax's records of storage failures keep their message,
  not the traceback; any other error (a bug) keeps its traceback."""

  def filter(self, record: logging.LogRecord) -> bool:
    if (record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname
        and _storage_failure(record.exc_info[1])):
      record.exc_info, record.exc_text = None, None
    return True


class _UnretrievedStorageErrors(logging.Filter):
  """asyncio logs each future or task whose exception nobody retrieved ("Future exception was
  never retrieved", with a traceback): orbax's read of a damaged step gives up at the first missing
  array and leaves the others' failures unretrieved, 60 such records for one array's folder
  missing. Drops those whose error is tensorstore's (worded as an absl status: "NOT_FOUND: ...");
  the Checkpointer reports the failed read itself. Any other error keeps its record."""

  def filter(self, record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    # _GatheringFuture's too (several of a step's arrays failed at once).
    return not (re.match(r"\w*(Future|Task) exception was never retrieved", record.getMessage())
                and error is not None and (re.match(r"[A-Z][A-Z_]+: ", str(error)) is not None
                                           or _failed_array_read(error)
                                           or isinstance(error, OSError)))


def _failed_array_read(error: BaseException) -> bool:
  """Whether `error` is orbax's report of an array it could not read (a damaged data file):
  "Encountered error while reading array index: ...", with tensorstore's whole spec (60 lines)."""
  return str(error).startswith("Encountered error while reading array index")


class _LateCallbacks:
  """A sys.unraisablehook that drops the "Event loop is closed" errors of tensorstore's
  callbacks that complete after orbax closed the event loop of a failed write or read (hundreds
  a checkpoint on a full disk, 6 lines each; 240 for a step with one array's folder missing,
  before `generate` fell back to the previous step), and orbax's reads of a damaged step's other
  arrays, left unawaited once the first failed (36 coroutines of 62 lines each for one truncated
  data file), all saying nothing the Checkpointer's own report does not, and hands every other
  unraisable error to the hook it replaced."""

  def __init__(self, previous: Callable[[Any], None]):
    self.previous = previous

  def __call__(self, unraisable: Any) -> None:
    error, last = unraisable.exc_value, unraisable.exc_traceback
    while last is not None and last.tb_next is not None:
      last = last.tb_next
    late = (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
            and last is not None and last.tb_frame.f_code.co_name == "_check_closed")
    unread = (error is not None and _failed_array_read(error) and last is not None
              and f"{os.sep}orbax{os.sep}" in last.tb_frame.f_code.co_filename)
    if not (late or unread):
      self.previous(unraisable)


def quiet_failed_io() -> None:
  """Orbax's reports of a failed write in a line each, tensorstore's late callbacks and
  unretrieved errors of a failed write or read dropped (see above); once per process, as their
  threads report at any time, also after a Checkpointer closed."""
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _OrbaxErrorsInOneLine) for f in absl_logger.filters):
    absl_logger.addFilter(_OrbaxErrorsInOneLine())
  asyncio_logger = logging.getLogger("asyncio")
  if not any(isinstance(f, _UnretrievedStorageErrors) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_UnretrievedStorageErrors())
  if not isinstance(sys.unraisablehook, _LateCallbacks):
    sys.unraisablehook = _LateCallbacks(sys.unraisablehook)
