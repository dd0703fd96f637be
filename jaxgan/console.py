"""Console output that a closed pipe or a hung-up terminal cannot turn into a failure.

A run piped into `tee` that is stopped with Ctrl-C (the signal ends `tee` too), or one in an ssh
session that dropped, loses its stdout and stderr: a write then raises (BrokenPipeError, or EIO
from the terminal). The run's own record is its log file, metrics and checkpoints, so such a
write must not turn a clean stop (exit status 75) into a crash (status 1), nor skip the closing
of its checkpointer and writers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Optional, TextIO


class TolerantStream:
  """`stream` (for tqdm's `file`) whose writes and flushes drop OSError instead of raising."""

  def __init__(self, stream: TextIO):
    self._stream = stream

  def write(self, text: str) -> int:
    try:
      return self._stream.write(text)
    except OSError:
      return 0

  def flush(self) -> None:
    with contextlib.suppress(OSError):
      self._stream.flush()

  def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the stream's own
    return getattr(self._stream, name)


def say(message: str) -> None:
  """Prints `message` to stdout; if stdout is gone, points it at /dev/null instead of raising,
  so the interpreter's flush at exit fails neither (it would make the exit status 120)."""
  try:
    print(message, flush=True)
  except OSError:
    with contextlib.suppress(OSError, ValueError):
      devnull = os.open(os.devnull, os.O_WRONLY)
      os.dup2(devnull, sys.stdout.fileno())
      os.close(devnull)


def report(message: str, log: logging.Logger) -> None:
  """`message` as a warning in the log (stderr, and the run's log.txt) and on stdout, where a
  caller reads it; where stdout and stderr are the same terminal or file, once there (a person
  read it twice, once with the log's prefix), and in log.txt all the same."""
  if not _same_file(sys.stdout, sys.stderr):
    log.warning("%s", message)
  else:
    _to_handlers_below_root(log, logging.WARNING, message)
  say(message)


def _to_handlers_below_root(log: logging.Logger, level: int, message: str) -> None:
  """A record to the handlers of `log` and its parents short of the root logger: the run log's
  file (on the 'jaxgan' logger), not the root's stderr handler (absl's)."""
  if not log.isEnabledFor(level):
    return
  record = log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None)
  logger: Optional[logging.Logger] = log
  while logger is not None and logger is not logging.root:
    for handler in logger.handlers:
      if record.levelno >= handler.level:
        handler.handle(record)
    if not logger.propagate:
      break
    logger = logger.parent


def _same_file(a: TextIO, b: TextIO) -> bool:
  try:
    first, second = os.fstat(a.fileno()), os.fstat(b.fileno())
  except (OSError, ValueError, AttributeError):  # no descriptor (captured, closed): separate
    return False
  return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
