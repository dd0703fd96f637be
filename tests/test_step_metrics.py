"""step_metrics: one logged row per interval from every step's metrics."""

import numpy as np
import pytest

from jaxgan import step_metrics


def _rows():
  off = -1.0  # R1 not computed on that step
  return [
      {"d_loss": 1.0, "r1_penalty": 0.5, "nonfinite": 0, "nonfinite_streak": 0, "augment_p": 0.1},
      {"d_loss": 2.0, "r1_penalty": off, "nonfinite": 1, "nonfinite_streak": 1, "augment_p": 0.2},
      {"d_loss": 6.0, "r1_penalty": 1.5, "nonfinite": 1, "nonfinite_streak": 2, "augment_p": 0.3},
      {"d_loss": 3.0, "r1_penalty": off, "nonfinite": 0, "nonfinite_streak": 0, "augment_p": 0.4},
  ]


def test_losses_are_interval_means_and_r1_is_averaged_over_its_due_steps():
  row = step_metrics.summarise(_rows())
  assert row["d_loss"] == pytest.approx(3.0)
  # R1 ran on steps 0 and 2 only (-1 elsewhere): its mean is over those, not diluted by the rest.
  assert row["r1_penalty"] == pytest.approx(1.0)
  # A diverged R1 (NaN on a due step) shows in the row, as a NaN loss does.
  assert np.isnan(step_metrics.summarise(_rows()[:3] + [{"r1_penalty": float("nan")}])[
      "r1_penalty"])
  assert row["nonfinite"] == 2  # events are counted over the interval
  assert row["nonfinite_streak"] == 0 and row["augment_p"] == pytest.approx(0.4)  # state: last


def test_an_occasional_metric_computed_on_no_step_of_the_interval_is_left_out():
  rows = [{"d_loss": 1.0, "r1_penalty": -1.0}, {"d_loss": 2.0, "r1_penalty": -1.0}]
  assert step_metrics.summarise(rows) == {"d_loss": 1.5}
  assert step_metrics.summarise([]) == {}


def test_a_non_finite_loss_stays_visible():
  assert step_metrics.summarise([{"g_loss": 1.0}, {"g_loss": float("inf")}])["g_loss"] == np.inf
  assert np.isnan(step_metrics.summarise([{"d_loss": 1.0}, {"d_loss": float("nan")}])["d_loss"])


def test_interval_fetches_once_and_restarts():
  fetched = []

  def to_host(tree):
    fetched.append(len(tree))
    return tree

  interval = step_metrics.Interval(to_host)
  for row in _rows():
    interval.add(row)
  assert len(interval) == 4
  assert interval.summary()["d_loss"] == pytest.approx(3.0)
  assert fetched == [4] and len(interval) == 0
  interval.add({"d_loss": 7.0})
  assert interval.summary() == {"d_loss": 7.0}
