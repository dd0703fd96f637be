"""Run outputs: metrics.jsonl and TensorBoard event files (scalars and sample grids).

Only process 0 writes. Event files are written by `event_file`, without TensorFlow. A failed
write (disk full, a lost mount) is logged and the run goes on: outputs are not worth a multi-day
run, and the checkpoints, which are, have their own failure handling.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import time
from typing import Any, Mapping, Optional

import numpy as np

from jaxgan import event_file
from jaxgan.atomic_write import publish

log = logging.getLogger(__name__)

# Temporary copies of event files being rewritten (drop_events_after): no "tfevents" in the name,
# or TensorBoard would read a half-written one.
_REWRITE_PREFIX = ".jaxgan-rewrite-"


def _python(value: Any) -> Any:
  """numpy/jax scalars as Python numbers; anything else as it is."""
  return (np.asarray(value).item() if hasattr(value, "shape") or isinstance(value, np.generic)
          else value)


def _plain(value: Any) -> Any:
  """JSON-ready scalar: numpy/jax scalars to Python, non-finite floats as strings."""
  value = _python(value)
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def json_line(row: Mapping[str, Any]) -> str:
  """`row` as strict JSON (no bare NaN, which jq and most parsers refuse): numpy/jax scalars as
  Python numbers, non-finite floats as strings ("nan", "inf"), as metrics.jsonl has them."""
  return json.dumps({k: _plain(v) for k, v in row.items()})


class MetricsWriter:
  """Appends one JSON object per logged step to WORKDIR/metrics.jsonl and mirrors scalars and
  images to TensorBoard under WORKDIR/tensorboard/. Each row holds its wall-clock time
  ("timestamp", Unix seconds, as StyleGAN2-ADA's stats.jsonl): when a step was reached, and the
  gaps a restart or an evaluation left, read from the file alone (TensorBoard's events hold it
  already)."""

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    self._tb_folder = os.path.join(workdir, "tensorboard") if enabled and tensorboard else None

  def _events(self) -> Optional[event_file.EventFileWriter]:
    """The event file, opened at the first event: a rerun of a finished run, which writes none,
    leaves no empty file behind."""
    if self._tb is None and self._tb_folder is not None:
      try:
        self._tb = event_file.EventFileWriter(self._tb_folder)
      except Exception as e:  # pylint: disable=broad-except
        # A broken tensorboard install (a protobuf mismatch) or an unwritable event folder must
        # not stop the run, and must not raise on process 0 alone (the only writer) while the
        # others go on.
        log.warning("TensorBoard unavailable (%s: %s): no events, metrics.jsonl only",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        self._tb_folder = None  # tried once
    return self._tb

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "timestamp": round(time.time(), 3), **scalars}
    try:
      append_json_line(self._jsonl_path, row)  # after a line a failed write cut short
    except OSError as e:
      log.error("step %d: writing %s failed (%s); training goes on", step, self._jsonl_path, e)
    # The file first: where TensorBoard is broken (a protobuf mismatch), building the values fails
    # too, with an error per key, where one warning says it all.
    if self._events() is not None:
      values = []
      for k, v in scalars.items():
        v = _python(v)
        if isinstance(v, (int, float)):  # NaN and inf as they are: a divergence shows
          try:
            values.append(event_file.scalar_value(k, v))
          except Exception as e:  # pylint: disable=broad-except  (not a scalar after all)
            log.error("step %d: %s=%r is not a TensorBoard scalar (%s)", step, k, v, e)
      try:
        if values:
          self._tb.write(step, values)
      except Exception as e:  # pylint: disable=broad-except  (OSError, a protobuf error)
        log.error("step %d: TensorBoard scalars failed (%s); training goes on", step, e)

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """One uint8 HWC image (a sample grid) to TensorBoard."""
    if not self.enabled or self._events() is None:
      return
    try:
      from PIL import Image
      png = io.BytesIO()
      pixels = np.asarray(image, np.uint8)
      # Pillow takes grey as HW; 3 and 4 channels as they are.
      Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(png, format="PNG")
      self._tb.write(step, [event_file.image_value(name, png.getvalue(), image.shape[1],
                                                   image.shape[0])])
    except Exception as e:  # pylint: disable=broad-except
      log.error("step %d: TensorBoard image %r failed (%s); training goes on", step, name, e)

  def close(self) -> None:
    if self._tb is not None:
      try:
        self._tb.close()
      except Exception as e:  # pylint: disable=broad-except  (a lost mount must not end a run)
        log.error("closing TensorBoard's event file failed (%s)", e)
      self._tb = None
    self._tb_folder = None  # closed: no new file after it


def _read_rows(path: str) -> tuple[list[dict], int]:
  """(rows, number of unreadable lines). A line cut short by a kill mid-write is unreadable."""
  rows, bad = [], 0
  with open(path, encoding="utf-8", errors="replace") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        row = None
      if isinstance(row, dict):
        rows.append(row)
      else:
        bad += 1
        log.warning("%s:%d: not a metrics row (cut short by a kill?), skipped", path, n)
  return rows, bad


def read_metrics(workdir: str) -> list[dict]:
  """All rows of WORKDIR/metrics.jsonl (an empty list when there are none yet); unreadable
  lines are skipped with a warning."""
  path = os.path.join(workdir, "metrics.jsonl")
  return _read_rows(path)[0] if os.path.exists(path) else []


def _ends_a_line(path: str) -> bool:
  """Whether the file `path` is empty, absent or ends with a newline."""
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      if f.tell() == 0:
        return True
      f.seek(-1, os.SEEK_END)
      return f.read(1) == b"\n"
  except FileNotFoundError:
    return True


def append_json_line(path: str, row: Mapping[str, Any]) -> None:
  """Appends `row` (`json_line`) to the JSONL file `path`, after ending a line an earlier write
  left cut short (a full disk): appended to it, this row would be unreadable with it. Raises
  OSError."""
  start = "" if _ends_a_line(path) else "\n"
  with open(path, "a", encoding="utf-8") as f:
    f.write(start + json_line(row) + "\n")


def has_row(workdir: str, step: int, prefix: str) -> bool:
  """Whether metrics.jsonl holds a row of `step` with a key starting with `prefix` ('eval/')."""
  return any(r.get("step") == step and any(k.startswith(prefix) for k in r)
             for r in read_metrics(workdir))


def drop_rows_after(workdir: str, step: int) -> Optional[int]:
  """Removes metrics rows logged after `step` (a restarted run logs those steps again) and lines
  a kill cut short (the next row would otherwise be glued onto one); returns the last step of
  the rows removed (None where there were none)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return None
  rows, bad = _read_rows(path)
  kept = [r for r in rows if r.get("step", 0) <= step]
  dropped = [r["step"] for r in rows if r.get("step", 0) > step]
  with open(path, "rb") as f:
    f.seek(max(os.path.getsize(path) - 1, 0))
    unterminated = f.read(1) not in (b"", b"\n")  # a whole row but its newline
  if len(kept) != len(rows) or bad or unterminated:
    tmp = path + ".tmp"
    try:
      with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      publish(tmp, path)  # the run's whole history: it must not be lost to a crash
    except BaseException:
      with contextlib.suppress(OSError):  # a full disk: the rows stay as they were
        os.remove(tmp)
      raise
  return max(dropped) if dropped else None


def drop_events_after(workdir: str, step: int) -> None:
  """drop_rows_after for WORKDIR/tensorboard's event files: events of steps after `step` are
  removed, since the restarted run writes those steps again and TensorBoard would draw both
  (TF2 writers emit no SessionLog.START, its cue to purge them). A file is read once to check
  (record by record, not held in memory) and rewritten only when it has such events or a cut
  record. A failure is logged, not raised: outputs are not worth the run."""
  folder = os.path.join(workdir, "tensorboard")
  if not os.path.isdir(folder):
    return
  try:
    names = sorted(os.listdir(folder))
  except OSError as e:
    log.error("dropping TensorBoard events after step %d: %s cannot be listed (%s); its curves "
              "may show those steps twice", step, folder, e)
    return
  for name in names:
    path = os.path.join(folder, name)
    if name.startswith(_REWRITE_PREFIX):  # left by a kill during a rewrite
      try:  # not named *tfevents*: TensorBoard does not read it, so it may stay
        os.remove(path)
      except OSError as e:
        log.warning("could not remove %s, a copy left by a kill (%s)", path, e)
      continue
    if "tfevents" not in name or not os.path.isfile(path):
      continue
    # Not named *tfevents*: TensorBoard reads every such file, a half-written copy included.
    tmp = os.path.join(folder, f"{_REWRITE_PREFIX}{os.getpid()}")
    try:
      # A broken record ends this check early, as an event after `step` may: either way the
      # copy below reads to it, and warns of it there.
      if all(record is not None and event_file.parse_event(record).step <= step
             for record in event_file.iter_records(path, warn=False)):
        continue
      with open(tmp, "wb") as out:
        for record in event_file.iter_records(path):
          if record is not None and event_file.parse_event(record).step <= step:
            out.write(event_file.frame(record))
      publish(tmp, path)
    except Exception as e:  # pylint: disable=broad-except  (OSError, a protobuf DecodeError)
      log.error("dropping TensorBoard events after step %d from %s failed (%s); its curves may "
                "show those steps twice", step, path, e)
