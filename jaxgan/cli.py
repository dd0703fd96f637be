"""What the command-line tools share: flag names written with '-' or '_' (`flag_spelling`),
refusing stray positional arguments (`refuse_positional`), and the one-line error and Ctrl-C
exits. absl parsing with --config: flag_parsing.py; path flags: path_flags.py."""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import re
import signal
import sys
from typing import Any, Callable, NoReturn, Sequence


from jaxgan import resources, stopping


def fail(message: str) -> NoReturn:
  """`error: message` on stderr and exit status 2 (a usage or input error, not a crash)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def out_of_memory_line(error: BaseException, doing: str, remedy: str) -> str:
  """'DOING ran out of memory (XLA's first line); REMEDY' where `error` is XLA's out-of-memory
  error (resources.out_of_memory): a size the user chose (a batch, widths), said in one line
  where JAX's traceback said it at the end of forty. Any other error is raised again: a crash
  keeps its traceback."""
  memory = resources.out_of_memory(error)
  if not memory:
    raise error
  return f"{doing} ran out of memory ({memory[:300]}); {remedy}"


# SIGTERM's exception, raised as Ctrl-C raises KeyboardInterrupt (stopping.Interrupts).
Terminated = stopping.Terminated


def log_to_stderr() -> None:
  """The argparse tools' (prepare's, evaluate's) log lines on stderr as 'WARNING message'. Called
  first thing: absl's first log call (orbax makes one as it loads) otherwise gives the root
  logger Python's default handler, whose 'WARNING:jaxgan.data.image_files:...' was evaluate's."""
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")


def _say(line: str) -> None:
  """`line` on stderr, where there still is one (a closed terminal's is gone after SIGHUP)."""
  try:
    print(line, file=sys.stderr, flush=True)
  except (OSError, ValueError):
    pass


def interruptible(main: Callable[..., Any], process_exit: bool = False) -> Callable[..., Any]:
  """`main`, ended by Ctrl-C with one line and status 130 (as a shell reports it), not a
  traceback, by SIGTERM with one line and 143, and by SIGHUP (a closed terminal) with 129: its
  own clean-up (a partial output's marker, temporaries, a folder it created) has run by then;
  the default actions of SIGTERM and SIGHUP would have ended the process at once, without it. A
  second Ctrl-C quits at once (`stopping.Interrupts`). (The trainer handles them itself: it stops
  at a step.)

  `process_exit` (a tool's `__main__`, not a caller in the same process): a stopped tool ends
  the process there and then (`_exit_process`), without the interpreter's shutdown, in which
  XLA crashes (SIGSEGV, status 139) after an exception cut one of its compilations short."""
  leave = _exit_process if process_exit else sys.exit

  @functools.wraps(main)
  def wrapped(*args, **kwargs):
    interrupts = stopping.Interrupts()
    try:
      # Only the main thread may set handlers (Interrupts leaves them otherwise).
      with stopping.signals_held():
        interrupts.__enter__()
      try:
        result = main(*args, **kwargs)
      except (Exception, SystemExit):  # pylint: disable=broad-except
        if interrupts.error() is None:
          raise
        result = None
      # A stop signal that arrived is what ended the tool, whatever main made of it: an error it
      # caused (decoding workers the same signal ended), or one Python dropped.
      stop = interrupts.error()
      if stop is not None:
        raise stop
      return result
    except Terminated:
      _say("terminated (SIGTERM)")
      leave(128 + signal.SIGTERM)
    except stopping.HungUp:
      _say("hung up (SIGHUP)")
      leave(128 + signal.SIGHUP)
    except KeyboardInterrupt:
      _say("interrupted (Ctrl-C)")
      leave(130)
    finally:
      with stopping.signals_held():  # one that comes now goes to the handler restored
        interrupts.__exit__()

  return wrapped


def _exit_process(status: int) -> NoReturn:
  """Ends the process with `status` once stdout, stderr and the log handlers are flushed, without
  the interpreter's shutdown (atexit hooks, module teardown): a stop signal's exception that cut
  an XLA compilation short leaves its compiler in a state that crashes that shutdown (JAX 0.10,
  CPU; also a bare `jax.jit(f).lower(x).compile()`), and a scheduler reads 139 as a crash.
  Called after the tool's own clean-up, which the exception ran on its way out."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe or terminal
      pass
  logging.shutdown()
  os._exit(status)  # pylint: disable=protected-access


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the tools that use it (prepare, evaluate), with a usage error as one `error:`
  line and status 2, as the absl tools give it (argparse printed its whole usage first), and a
  "did you mean" for a misspelt flag."""

  def error(self, message: str) -> NoReturn:
    unknown = re.match(r"unrecognized arguments: (--[\w-]+)", message)
    if unknown:
      known = [s for action in self._actions for s in action.option_strings]
      close = difflib.get_close_matches(unknown.group(1).split("=")[0], known, n=1)
      if close:
        message += f"; did you mean {close[0]}?"
    fail(f"{message} (see --help)")


def refuse_positional(argv: Sequence[str], allowed: int = 0) -> None:
  """Fails on positional arguments past the first `allowed` (absl passes them on, and the tool
  would ignore them: `train configs/x.py` without --config, a mode word given twice)."""
  extra = list(argv[1 + allowed:])
  if extra:
    fail(f"unexpected argument {extra[0]!r}: flags take the form --name=value (see --help)")


def flag_spelling(args: Sequence[str], joiner: str) -> list[str]:
  """`--image-size` and `--image_size` alike: each `--name[=value]` with the name's '-' and '_'
  written as `joiner` (absl's tools use '_', argparse's '-'), and a `--config.KEY`'s '-' as '_'
  (the schema's keys have no '-'); values unchanged."""
  other = "-" if joiner == "_" else "_"
  spelled, options = [], True
  for arg in args:
    options = options and arg != "--"  # after '--', every token is an argument
    if options and arg.startswith("--"):
      name, eq, value = arg[2:].partition("=")
      name = (name.replace("-", "_") if name.startswith("config.") else
              name.replace(other, joiner))
      arg = "--" + name + eq + value
    spelled.append(arg)
  return spelled
