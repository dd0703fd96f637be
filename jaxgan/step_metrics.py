"""How the per-step metrics of `steps.make_train_step` become one logged row per interval.

Logging one step in `log_every` shows noise, and hides whatever happens on the other steps (lazy
R1 runs on every `r1_interval`-th step only, so with log_every 100 and r1_interval 16 a logged
step never had an R1 phase). As in the Flax examples, every step's metrics stay on the device
until the log row, are fetched once and reduced on the host: means for losses and D outputs, sums
for event counts, the last value for counters and schedules. The OCCASIONAL metrics are -1 on the
steps that did not compute them (R1 off its interval; a penalty is never negative) and are averaged
over the steps that did (and left out of a row whose interval computed none); any NaN, e.g. the
loss of a skipped non-finite step or a diverged R1, stays in the mean, so the row shows it.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import numpy as np

# Reduction per metric name; anything else is the mean over the interval's steps (OCCASIONAL ones:
# over the steps that computed them).
SUM = ("nonfinite",)  # events: steps skipped in the interval
LAST = ("nonfinite_streak", "nonfinite_total", "augment_p", "ema_beta")  # state, not samples
OCCASIONAL = ("r1_penalty",)  # -1 = not computed on that step (steps.py)


def summarise(rows: list[Mapping[str, Any]]) -> dict[str, float]:
  """One row of floats from the interval's per-step metric dicts (host values)."""
  if not rows:
    return {}
  out: dict[str, float] = {}
  for key in rows[-1]:
    values = np.asarray([float(r[key]) for r in rows if key in r], np.float64)
    if key in LAST:
      out[key] = float(values[-1])
    elif key in SUM:
      out[key] = float(np.sum(values))
    else:
      if key in OCCASIONAL:
        values = values[~(values < 0)]  # a NaN is not < 0: it stays
      if values.size:
        with warnings.catch_warnings():  # an inf/NaN loss stays in the mean: that is the signal
          warnings.simplefilter("ignore", RuntimeWarning)
          out[key] = float(np.mean(values))
  return out


class Interval:
  """Collects the device metrics of each call between two log rows; `summary` fetches them once
  (one host transfer per interval instead of a sync per step) and reduces them."""

  def __init__(self, to_host: Callable[[Any], Any]):
    self._to_host = to_host
    self._calls: list[tuple[Any, bool]] = []

  def add(self, metrics: Mapping[str, Any], stacked: bool = False) -> None:
    """One call's metrics: one step's, or several steps' stacked on a leading axis."""
    self._calls.append((metrics, stacked))

  def __len__(self) -> int:
    return len(self._calls)

  def summary(self) -> dict[str, float]:
    """The interval's row; starts the next interval."""
    calls, self._calls = self._calls, []
    rows = []
    for metrics, stacked in zip(self._to_host([m for m, _ in calls]), [s for _, s in calls]):
      if stacked:
        rows.extend({key: values[i] for key, values in metrics.items()}
                    for i in range(len(next(iter(metrics.values())))))
      else:
        rows.append(metrics)
    return summarise(rows)
