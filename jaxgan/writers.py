"""Run outputs: metrics.jsonl and TensorBoard event files (scalars and sample grids).

Only process 0 writes. TensorBoard goes through `tf.summary` on the CPU, imported lazily; on a
host without TensorFlow the run continues with a warning and JSONL only.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

import numpy as np

from jaxgan import tf_host

log = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
  """JSON-ready scalar: numpy/jax scalars to Python, non-finite floats as strings."""
  value = np.asarray(value).item() if hasattr(value, "shape") or isinstance(value, np.generic) else value
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


class MetricsWriter:
  """Appends one JSON object per logged step to WORKDIR/metrics.jsonl and mirrors scalars and
  images to TensorBoard under WORKDIR/tensorboard/."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled and tensorboard:
      try:
        tf = tf_host.import_tensorflow()
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))
      except ImportError:
        log.warning("TensorFlow is not installed: no TensorBoard events, metrics.jsonl only")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
    with open(self._jsonl_path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      tf = tf_host.import_tensorflow()
      with self._tb.as_default(step=int(step)):
        for k, v in row.items():
          if k != "step" and isinstance(v, (int, float)):
            tf.summary.scalar(k, v)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """One uint8 HWC image (a sample grid) to TensorBoard."""
    if not self.enabled or self._tb is None:
      return
    tf = tf_host.import_tensorflow()
    with self._tb.as_default(step=int(step)):
      tf.summary.image(name, image[None], max_outputs=1)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  """All rows of WORKDIR/metrics.jsonl (an empty list when there are none yet)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def drop_rows_after(workdir: str, step: int) -> None:
  """Removes metrics rows logged after `step` (a resumed run logs those steps again)."""
  path = os.path.join(workdir, "metrics.jsonl")
  rows = read_metrics(workdir)
  kept = [r for r in rows if r.get("step", 0) <= step]
  if len(kept) != len(rows):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)
