"""How the per-step metrics of `steps.make_train_step` become one logged row per interval.

Logging one step in `log_every` shows noise, and hides whatever happens on the other steps (lazy
R1 runs on every `r1_interval`-th step only, so with log_every 100 and r1_interval 16 a logged
step never had an R1 phase). As in the Flax examples, every step's metrics are kept on the device
and reduced once per interval: means for losses and D outputs, sums for event counts, the last
value for counters and schedules. A metric that is NaN on a step was not computed on that step
(R1 off its interval) and is left out of its mean; a metric with no value in the whole interval is
left out of the row.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping

import numpy as np

# Reduction per metric name; anything not listed is averaged over the steps that computed it.
SUM = ("nonfinite",)  # events: steps skipped in the interval
LAST = ("nonfinite_streak", "nonfinite_total", "augment_p", "ema_beta")  # state, not samples


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
      computed = values[~np.isnan(values)]
      if computed.size:
        with warnings.catch_warnings():  # an inf loss stays inf in the mean: that is the signal
          warnings.simplefilter("ignore", RuntimeWarning)
          out[key] = float(np.mean(computed))
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
