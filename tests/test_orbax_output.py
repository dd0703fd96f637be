"""orbax_output: the libraries' reports of a failed write cut to what a user needs (the
Checkpointer's own report and orbax's one-line errors: tests/test_resume.py)."""

import asyncio
import logging
import sys

from jaxgan import orbax_output


def test_tensorstore_callbacks_after_a_failed_write_are_dropped_other_errors_are_not(
    monkeypatch, capsys):
  """After a failed write orbax closes its event loop, and each of tensorstore's write callbacks
  still running reports "Event loop is closed" as an unraisable error (hundreds a checkpoint on
  a full disk). Those alone are dropped."""
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  orbax_output.quiet_failed_io()
  orbax_output.quiet_failed_io()  # once per process
  assert isinstance(sys.unraisablehook, orbax_output._LateCallbacks)
  assert sys.unraisablehook.previous is sys.__unraisablehook__

  class RaisesWhenCollected:  # an unraisable error: raised in __del__, as in a C callback
    def __init__(self, call):
      self.call = call

    def __del__(self):
      self.call()

  loop = asyncio.new_event_loop()
  loop.close()
  RaisesWhenCollected(lambda: loop.call_soon_threadsafe(print))
  assert capsys.readouterr().err == ""

  def other():
    raise RuntimeError("Event loop is closed")  # the same words, raised elsewhere

  RaisesWhenCollected(other)
  RaisesWhenCollected(lambda: 1 / 0)
  err = capsys.readouterr().err
  assert "RuntimeError: Event loop is closed" in err and "ZeroDivisionError" in err
  # Orbax's reads of a damaged step's other arrays, unawaited once the first failed: dropped
  # where orbax raised them (36 of 62 lines each for one truncated file), kept elsewhere.
  unread = "Encountered error while reading array index: (). See full TensorStore details"
  for path in ("/site-packages/orbax/checkpoint/_src/serialization/serialization.py",
               "/site-packages/other/lib.py"):
    scope = {}
    exec(compile(f"def read():\n  raise Exception({unread!r})\n", path, "exec"), scope)
    RaisesWhenCollected(scope["read"])
  err = capsys.readouterr().err
  assert err.count("Encountered error while reading") == 1 and "other/lib.py" in err, err


def _record(path, error):
  try:
    raise error
  except Exception:  # pylint: disable=broad-except
    return logging.LogRecord("absl", logging.ERROR, path, 1, "failed", None, sys.exc_info())


def test_orbax_storage_failures_lose_their_traceback_other_errors_keep_it():
  one_line = orbax_output._OrbaxErrorsInOneLine()
  orbax_file = "/site-packages/orbax/checkpoint/_src/futures/future.py"
  wrapped = ValueError("Save failed")
  wrapped.__cause__ = ValueError('RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database')
  for error in (OSError(28, "No space left on device"), wrapped):
    record = _record(orbax_file, error)
    assert one_line.filter(record) and record.exc_info is None
  for path, error in ((orbax_file, KeyError("a bug")),
                      ("/site-packages/other/lib.py", OSError(28, "No space left on device"))):
    record = _record(path, error)
    assert one_line.filter(record) and record.exc_info is not None


def test_unretrieved_storage_errors_are_dropped_other_unretrieved_errors_are_not():
  """asyncio's "never retrieved" records of tensorstore's errors (a damaged step's other arrays,
  once orbax gave up at the first) are dropped; a bug's keeps its record."""
  unretrieved = orbax_output._UnretrievedStorageErrors()
  not_found = ValueError('NOT_FOUND: Error opening "zarr" driver: Error reading "g/.zarray"')

  def record(message, error):
    return logging.LogRecord("asyncio", logging.ERROR, "base_events.py", 1, message, None,
                             (type(error), error, None))

  unread = Exception("Encountered error while reading array index: (slice(0, 8, 1),). See full")
  for kind in ("Future", "Task", "_GatheringFuture"):
    assert not unretrieved.filter(record(f"{kind} exception was never retrieved", not_found))
    assert not unretrieved.filter(record(f"{kind} exception was never retrieved", unread))
    assert not unretrieved.filter(record(f"{kind} exception was never retrieved",
                                         OSError(28, "No space left on device")))
    assert unretrieved.filter(record(f"{kind} exception was never retrieved", KeyError("bug")))
  assert unretrieved.filter(record("Unclosed client session", not_found))


def test_the_log_filters_are_installed_once_on_their_loggers(monkeypatch):
  """Each filter on the logger its library reports through, once however many Checkpointers a
  process opens (readers too: a damaged step's read printed 76 tracebacks without it)."""
  for name in ("asyncio", "absl"):
    monkeypatch.setattr(logging.getLogger(name), "filters", [])
  monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)
  orbax_output.quiet_failed_io()
  orbax_output.quiet_failed_io()
  kinds = lambda name: [type(f) for f in logging.getLogger(name).filters]
  assert kinds("asyncio") == [orbax_output._UnretrievedStorageErrors]
  assert kinds("absl") == [orbax_output._OrbaxErrorsInOneLine]
