"""What a training run says about its progress as it goes: the terminal's bar, and a row per
`train.log_every` steps (metrics.jsonl, TensorBoard, and log.txt's line where stderr is a file),
whose images/s and the bar's rate time training only.

Training only: the clock starts once the first call has returned (its compilation is not a
step's time), and stops for the checkpoints, grids and evaluations between rows.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgan import console
from jaxgan import resources
from jaxgan import run_log
from jaxgan import sharding
from jaxgan import step_metrics
from jaxgan import writers


def progress_bar(num_steps: int, start_step: int, interactive: bool) -> tqdm:
  """The training progress bar on a terminal (process 0's; none where nothing is left to train).
  Redirected to a file (not `interactive`), its redraws would make one line of carriage returns:
  there the run writes a line per log row instead (run_log)."""
  # Until the first call returns, the bar says it compiles (silence at 0 % for a minute, for a
  # ResNet on a CPU, looked like a hang).
  return tqdm(total=num_steps, initial=start_step, unit="step",
              disable=(jax.process_index() != 0 or start_step >= num_steps  # said otherwise
                       or not interactive),
              dynamic_ncols=True, mininterval=0.1, desc="train (compiling)", maxinterval=10.0,
              file=console.TolerantStream(sys.stderr))


class TrainingProgress:
  """The bar, the rows and their clock, for one run from `start_step`. `source`: the data (its
  count of skipped files goes in each row); `progress_log`: run_log's writer of log.txt lines."""

  def __init__(self, train: ml_collections.ConfigDict, start_step: int, source: Any,
               writer: writers.MetricsWriter, progress_log: run_log.RunLog, interactive: bool):
    self.num_steps = train.num_steps
    self.images_per_step = train.batch_size * train.n_critic
    self.source, self.writer, self.progress_log = source, writer, progress_log
    self.bar = progress_bar(train.num_steps, start_step, interactive)
    # Every step's metrics, fetched stacked and reduced per row.
    self.interval = step_metrics.Interval(sharding.to_host_list)
    self._started: Optional[float] = None  # the row interval's start; None before the 1st call
    self._steps = 0  # the steps timed since then
    self._paused: Optional[float] = None

  def called(self, step: int, steps: int, metrics: Any, stacked: bool) -> None:
    """A train-step call of `steps` steps, which brought the run to `step`, was dispatched."""
    self.interval.add(metrics, stacked=stacked)
    if self._started is None:  # time from the first finished call: excludes compilation
      jax.block_until_ready(metrics)
      self._started, self._steps = time.perf_counter(), 0
      # The bar's rate and elapsed time too: counted from here, the compile does not show as
      # the first steps' time (tqdm's rate would start at seconds per step).
      self.bar.set_description("train", refresh=False)
      self.bar.n = self.bar.last_print_n = self.bar.initial = step  # no rate from it
      self.bar.unpause()
      self.bar.refresh()
    else:
      self._steps += steps
      self.bar.update(steps)

  def write_row(self, step: int) -> None:
    """The interval's metrics row: metrics.jsonl, TensorBoard, log.txt and the bar. The caller
    waits for the step first: the row's time ends with its step, not with the fetch."""
    elapsed, steps = time.perf_counter() - self._started, self._steps
    values = self.interval.summary()  # compiles its stack for a new number of calls
    ips = steps * self.images_per_step / elapsed if steps else float("nan")
    values.update(images_per_sec=ips,
                  # From the step in Python ints: exact past 2^31 (state.images_seen wraps);
                  # assumes the batch size was not changed with --allow_config_change.
                  images_seen=step * self.images_per_step,
                  data_bad_files=getattr(self.source, "bad_files", 0),
                  **resources.memory_row(jax.local_devices()))
    self.writer.write_scalars(step, values)
    self.progress_log.progress(run_log.progress_line(
        step, self.num_steps, values, self.images_per_step, elapsed / steps if steps else np.nan))
    self.bar.set_postfix(d_loss=f"{values.get('d_loss', np.nan):.3f}",
                         g_loss=f"{values.get('g_loss', np.nan):.3f}", img_s=f"{ips:.0f}")

  def pause(self) -> None:
    """Stops the clock inside a row's interval (for a checkpoint, grid or evaluation); the
    caller waits for the step first, whose own work is counted."""
    self._paused = time.perf_counter()

  def resume(self) -> None:
    """Starts the clock again after the work `pause` and the bar's redraw left out."""
    if self._paused is not None:
      self._started += time.perf_counter() - self._paused
      self._paused = None
    # unpause restarts the bar's clock from its last redraw: the pause goes, with at most a
    # redraw interval (0.1 s) of training.
    self.bar.unpause()

  def next_row(self) -> None:
    """After a row: the next row's images/s times training only, not this row's checkpoint,
    samples and evaluation (which made the row after an evaluation read 15x slow)."""
    self._started, self._steps = time.perf_counter(), 0

  def close(self) -> None:
    """Ends the bar's line (before the run's closing lines, which a terminal joined to it)."""
    self.bar.close()
