"""Progress of long host work (decoding a data set, writing an FID set, Inception features): a
tqdm bar on a terminal, and off one (a cluster job's log file, a pipe) a plain line a minute and
one at the end, since the bar's carriage-return redraws make one unreadable line there (74
redraws in the log of one catalog `prepare`). The training loop has its own (run_log)."""

from __future__ import annotations

import contextlib
import datetime
import sys
import time
from typing import Iterator, Optional, Protocol

from tqdm import tqdm

from jaxgan import console


class Progress(Protocol):
  def update(self, n: int = 1) -> None: ...


class Lines:
  """Process 0's plain progress lines on stderr: at most one every `every` seconds, with the
  time left at the rate so far, and the end."""

  def __init__(self, desc: str, total: Optional[int], every: float = 60.0):
    self.desc, self.total, self.every = desc, total, every
    self.done, self.start = 0, time.monotonic()
    self.last = self.start
    self.stream = console.TolerantStream(sys.stderr)

  def update(self, n: int = 1) -> None:
    self.done += n
    if time.monotonic() - self.last >= self.every:
      self._say()

  def end(self) -> None:
    self._say(" done")

  def _say(self, suffix: str = "") -> None:
    self.last = time.monotonic()
    if not _is_main_process():
      return
    elapsed = max(self.last - self.start, 1e-9)
    of = f"/{self.total:,}" if self.total else ""
    rate = self.done / elapsed
    # What is left at the rate so far (on a CPU, an evaluation's Inception takes an hour).
    eta = (f", ETA {datetime.timedelta(seconds=round((self.total - self.done) / rate))}"
           if self.total and rate > 0 and not suffix else "")
    self.stream.write(f"{self.desc}: {self.done:,}{of} images{suffix}, "
                      f"{rate:.1f} img/s, {elapsed:.0f} s{eta}\n")
    self.stream.flush()


def _is_main_process() -> bool:
  """Process 0 of a multi-process run, or a process without JAX: not imported for this, since
  the decoding workers (which import data/decode.py and so this module) run without it."""
  jax = sys.modules.get("jax")
  if jax is None:
    return True
  try:  # asked only where a backend runs: process_index() would start one (prepare's: none)
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    if not xla_bridge.backends_are_initialized():
      return True
  except (ImportError, AttributeError):
    pass
  return jax.process_index() == 0


@contextlib.contextmanager
def progress(total: Optional[int], desc: str, enabled: bool = True, leave: bool = True
             ) -> Iterator[Progress]:
  """A bar on a terminal, `Lines` elsewhere (its last line only when the work completes: a
  stop's or an error's line ends the output instead); nothing where not `enabled` (a handful of
  images). `leave=False`: the bar is cleared at the end (one nested in another)."""
  if enabled and not sys.stderr.isatty():
    lines = Lines(desc, total)
    yield lines
    lines.end()
    return
  # Closed however the work ends: a bar left open is redrawn at exit, after the error or the
  # Ctrl-C line.
  with tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True, disable=not enabled,
            leave=leave, file=console.TolerantStream(sys.stderr)) as bar:
    yield bar
