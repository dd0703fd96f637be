"""The run's own log, WORKDIR/log.txt, and the progress line of a run whose stderr is a file.

A run's stderr is often gone once it ends (a terminal closed, a scheduler's log rotated), and
StyleGAN2-ADA users look for a log.txt beside the metrics: process 0's jaxgan log lines (start,
progress rows, evaluations, resumes, warnings, the end) are appended there, across restarts, with
their date. Where stderr is not a terminal (a cluster job's log file), the progress bar's
carriage-return redraws make one unreadable line, so such a run writes a plain line per log row
instead (`RunLog.progress`); on a terminal the bar shows it, and the line goes to log.txt only.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
from typing import Any, Iterator, Mapping, Optional

import jax
import numpy as np

from jaxgan import stopping
from jaxgan.config.schema import attribute_classes

LOG_FILE = "log.txt"

log = logging.getLogger("jaxgan.trainer")


class _QuietFileHandler(logging.FileHandler):
  """Appends to the file; a failed open or write (a full disk, a log.txt another user made
  read-only) drops the line: the log is not worth the run, and logging's own report would print
  a traceback per line. (FileHandler opens the file outside its own error handling.)"""

  def emit(self, record: logging.LogRecord) -> None:
    try:
      super().emit(record)
    except OSError:
      pass

  def handleError(self, record: logging.LogRecord) -> None:
    del record

  def flush(self) -> None:
    try:
      super().flush()
    except OSError:
      pass

  def close(self) -> None:
    # A line still buffered fails again as the file closes: an OSError from the run's `finally`
    # replaced how it ended (a stop's status 75, which the SLURM script requeues, became 1).
    try:
      super().close()
    except OSError:
      pass


class RunLog:
  """Where a run's progress lines go: stderr (through the log) where it is not a terminal, and
  log.txt."""

  def __init__(self, handler: Optional[logging.Handler], to_stderr: bool):
    self._handler, self._to_stderr = handler, to_stderr

  def progress(self, message: str) -> None:
    if self._to_stderr:
      log.info("%s", message)  # to log.txt too, through the jaxgan logger's handler
    elif self._handler is not None:
      self._handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None))


# Start-up lines held back for log.txt at the most (a folder of bad files logs a line for each of
# its first files, then a count).
MAX_HELD_RECORDS = 2000


class HeldLines(logging.Handler):
  """The jaxgan loggers' lines (INFO and up) kept from `held_back`'s start to `stop_holding()`
  (not named `release`: a Handler's `release` frees its lock after every line)."""

  def __init__(self):
    super().__init__(logging.INFO)
    self.records: list[logging.LogRecord] = []
    self.dropped = 0  # past MAX_HELD_RECORDS

  def emit(self, record: logging.LogRecord) -> None:
    if len(self.records) < MAX_HELD_RECORDS:
      self.records.append(record)
    else:
      self.dropped += 1

  def stop_holding(self) -> None:
    """Stops holding (idempotent): the run writes its own log from here."""
    logging.getLogger("jaxgan").removeHandler(self)

  def take(self) -> list[logging.LogRecord]:
    """The lines held, handed over once: a record may hold an exception, its traceback and the
    frames' locals (a memory-mapped cache), which the run should not keep alive to its end."""
    records, self.records = self.records, []
    return records


@contextlib.contextmanager
def held_back() -> Iterator[HeldLines]:
  """While open (or until its `stop_holding()`), the jaxgan loggers' lines are also kept, for
  `run_log` to write into log.txt first: the run joins its processes and reads its data before
  it writes into its workdir (bad data leaves no workdir behind), and those lines (each file
  skipped and why) were then on stderr only, which a cluster's log rotation loses."""
  held = HeldLines()
  logging.getLogger("jaxgan").addHandler(held)
  try:
    yield held
  finally:
    held.stop_holding()
    held.take()


@contextlib.contextmanager
def run_log(workdir: str, enabled: bool, to_stderr: bool,
            earlier: Optional[HeldLines] = None) -> Iterator[RunLog]:
  """While open, the jaxgan loggers' lines are appended to WORKDIR/log.txt (`enabled`: process
  0), after `earlier`'s (`held_back`'s, held no longer, with their own times); `to_stderr`:
  progress lines go to stderr too (no progress bar there)."""
  handler = None
  if earlier is not None:
    earlier.stop_holding()
  if enabled:
    # backslashreplace: a file name that is not UTF-8 (a legacy archive's) in a skipped file's
    # line would fail the write, and the handler would drop the line.
    handler = _QuietFileHandler(os.path.join(workdir, LOG_FILE), encoding="utf-8", delay=True,
                                errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                           "%Y-%m-%d %H:%M:%S"))
    if earlier is not None:
      _write_held(handler, earlier)
    logging.getLogger("jaxgan").addHandler(handler)
  if earlier is not None:
    earlier.take()  # on every process, written or not
  try:
    yield RunLog(handler, to_stderr and enabled)
  except BaseException as e:  # how the run ended, where the CLI's one line is not kept
    if handler is not None:
      # A stop asked for (a signal during start-up) is not an error; the rest are.
      level = logging.WARNING if isinstance(e, (stopping.Stopped, KeyboardInterrupt)) else (
          logging.ERROR)
      handler.handle(log.makeRecord(log.name, level, __file__, 0, "ended: %s: %s",
                                    (type(e).__name__, str(e).splitlines()[0] if str(e) else ""),
                                    None))
    raise
  finally:
    if handler is not None:
      logging.getLogger("jaxgan").removeHandler(handler)
      handler.close()


def _write_held(handler: logging.Handler, earlier: HeldLines) -> None:
  """`earlier`'s lines into `handler`, in a frame of their own: the run_log generator's locals
  live to the run's end, and would keep the records (a traceback's frames) alive with them."""
  for record in earlier.take():
    handler.handle(record)
  if earlier.dropped:
    handler.handle(log.makeRecord(log.name, logging.WARNING, __file__, 0,
                                  "... and %d more start-up lines, on stderr only",
                                  (earlier.dropped,), None))


def progress_line(step: int, num_steps: int, values: Mapping[str, float],
                  images_per_step: int, seconds_per_step: float) -> str:
  """'step 300/400 (75%), 2.4 kimg: d_loss 1.234, g_loss 0.987, 282 img/s, ETA 0:00:23' (and
  ADA's p where it is on). The ETA is from the row's own rate, which times training only."""
  parts = [f"{name} {values[name]:.4g}" for name in ("d_loss", "g_loss", "augment_p")
           if name in values and (name != "augment_p" or values[name])]
  if math.isfinite(seconds_per_step) and seconds_per_step > 0:
    parts.append(f"{images_per_step / seconds_per_step:.0f} img/s")
    parts.append(f"ETA {duration((num_steps - step) * seconds_per_step)}")
  return (f"step {step}/{num_steps} ({100 * step / num_steps:.0f}%), "
          f"{step * images_per_step / 1000:.1f} kimg: {', '.join(parts)}")


def duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=round(seconds)))


def start_line(config: Any, start_step: int, state: Any, source: Any, mesh: Any,
               workdir: str) -> str:
  """What the run is, as it starts: model, parameters, data, devices and mesh, workdir."""
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))
  examples = getattr(source, "num_examples", None)
  # The classes trained on (the synthetic data's first num_classes categories, a manifest's
  # column after its rare names were merged): the count said, as prepare says it.
  classes = attribute_classes(config)
  data = (config.data.source + (f", {examples:,} examples" if examples else "")
          + (f", {' x '.join(map(str, classes))} class{'es' if math.prod(classes) > 1 else ''}"
             if classes else ", unconditional"))
  return (f"{'resuming' if start_step else 'training'} {config.model.name} at step {start_step} "
          f"of {config.train.num_steps}: G {count(state.g_params):,}, D "
          f"{count(state.d_params):,} parameters; data: {data}; {jax.device_count()} "
          f"{jax.devices()[0].device_kind} device(s), mesh {mesh.shape['data']}x"
          f"{mesh.shape['fsdp']} (data x fsdp); workdir {os.path.abspath(workdir)}")
