"""writers: metrics.jsonl rows stay strict JSON (any reader parses them) whatever the values."""

import json
import logging
import os
import time

import numpy as np

from jaxgan import writers


def test_rows_are_strict_json_with_non_finite_values_as_strings(tmp_path):
  w = writers.MetricsWriter(str(tmp_path), tensorboard=False)
  before = time.time()
  w.write_scalars(np.int64(3), {"d_loss": np.float32(np.nan), "g_loss": float("inf"),
                                "lr": np.float32(0.5), "data_bad_files": np.int32(2)})
  after = time.time()
  w.close()
  line = (tmp_path / "metrics.jsonl").read_text().strip()
  # Python's json would accept bare NaN/Infinity; strict readers (jq, JavaScript) do not.
  row = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
  # Its wall-clock time, in Unix seconds (rounded to the millisecond).
  assert before - 0.001 <= row.pop("timestamp") <= after + 0.001
  assert row == {"step": 3, "d_loss": "nan", "g_loss": "inf", "lr": 0.5, "data_bad_files": 2}
  row["timestamp"] = json.loads(line)["timestamp"]
  assert writers.read_metrics(str(tmp_path)) == [row]


def test_tensorboard_gets_non_finite_values_and_a_broken_install_is_not_fatal(tmp_path,
                                                                              monkeypatch, caplog):
  """NaN and inf reach TensorBoard as values (a divergence shows, not a gap in the curve); a
  grid of any channel count is an image there; a tensorboard package that fails to load (a
  protobuf mismatch) leaves JSONL only."""
  import tensorflow as tf  # installed with jaxgan: here the independent reader
  w = writers.MetricsWriter(str(tmp_path))
  w.write_scalars(1, {"d_loss": np.float32(np.nan), "g_loss": float("inf"), "lr": 0.5,
                      "note": "text is JSONL only", "one": np.array([2.0]), "huge": -10**400,
                      "flag": True})
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
  w.write_image(2, "grey", grey)
  w.close()
  folder = tmp_path / "tensorboard"
  values = {}
  for name in os.listdir(folder):
    for record in tf.data.TFRecordDataset(str(folder / name)):
      for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value:
        values[v.tag] = tf.make_ndarray(v.tensor)
  # No "timestamp" scalar: the events hold their wall time already.
  assert values.keys() == {"d_loss", "g_loss", "lr", "one", "huge", "flag", "grey"}
  assert np.isnan(values["d_loss"]) and values["g_loss"] == np.inf and values["lr"] == 0.5
  assert (values["one"], values["huge"], values["flag"]) == (2.0, -np.inf, 1.0)
  width, height, png = values["grey"]
  assert (width, height) == (b"4", b"3")
  assert np.array_equal(tf.io.decode_png(png).numpy(), grey)

  def broken(*args, **kwargs):
    raise TypeError("Descriptors cannot be created directly")  # a protobuf mismatch

  # A writer that writes no event (a finished run started again) leaves no empty event file.
  writers.MetricsWriter(str(tmp_path / "idle")).close()
  assert not (tmp_path / "idle").exists()

  monkeypatch.setattr(writers.event_file, "EventFileWriter", broken)
  monkeypatch.setattr(writers.event_file, "scalar_value", broken)  # the protos are the same
  os.makedirs(tmp_path / "b")
  w = writers.MetricsWriter(str(tmp_path / "b"))
  with caplog.at_level(logging.WARNING):
    w.write_scalars(2, {"d_loss": 1.0})
    w.write_image(2, "samples", grey)
  w.close()
  assert [{k: v for k, v in r.items() if k != "timestamp"}
          for r in writers.read_metrics(str(tmp_path / "b"))] == [{"step": 2, "d_loss": 1.0}]
  assert caplog.text.count("TensorBoard unavailable (TypeError: Descriptors cannot") == 1
  assert "not a TensorBoard scalar" not in caplog.text  # one warning, not an error per key


def _events(folder):
  """(tag, step) of every summary value in the folder's event files, in file order."""
  import tensorflow as tf

  out = []
  for name in sorted(os.listdir(folder)):
    for record in tf.data.TFRecordDataset(os.path.join(folder, name)):
      event = tf.compat.v1.Event.FromString(record.numpy())
      out += [(v.tag, event.step) for v in event.summary.value]
  return out


def test_a_restart_drops_tensorboard_events_after_its_start_step(tmp_path, caplog):
  """Killed at step 4 after its checkpoint at 2, a run logs 3 and 4 again: TensorBoard must see
  each (tag, step) once, as metrics.jsonl does."""
  first = writers.MetricsWriter(str(tmp_path))
  for step in (1, 2, 3, 4):
    first.write_scalars(step, {"d_loss": float(step)})
  first.write_image(4, "samples", np.zeros((4, 4, 3), np.uint8))
  first.close()
  folder = tmp_path / "tensorboard"
  (name,) = os.listdir(folder)
  with open(folder / name, "ab") as f:  # the kill cut a record short
    f.write(b"\x10\x00\x00")
  writers.drop_events_after(str(tmp_path), 2)
  assert _events(folder) == [("d_loss", 1), ("d_loss", 2)]
  assert caplog.text.count("cut-short record") == 1  # read twice (check, then copy), told once
  again = writers.MetricsWriter(str(tmp_path))
  for step in (3, 4):
    again.write_scalars(step, {"d_loss": 10.0 + step})
  again.close()
  events = _events(folder)
  assert sorted(events) == [("d_loss", 1), ("d_loss", 2), ("d_loss", 3), ("d_loss", 4)]
  (folder / ".jaxgan-rewrite-123").write_bytes(b"half a copy")  # left by a kill mid-rewrite
  stamps = {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder) if "tfevents" in n}
  writers.drop_events_after(str(tmp_path), 4)  # nothing past 4: files left as they are
  assert _events(folder) == events
  assert {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder)} == stamps
  # A leftover it cannot remove (a folder here) is logged, not raised: outputs are not worth
  # the run's start.
  (folder / ".jaxgan-rewrite-7").mkdir()
  writers.drop_events_after(str(tmp_path), 4)
  assert "could not remove" in caplog.text
  (folder / ".jaxgan-rewrite-7").rmdir()
  assert _events(folder) == events


def test_a_row_after_a_write_cut_short_is_kept(tmp_path, monkeypatch):
  """A full disk mid-line (logged, training goes on) must not glue the next row onto the
  partial line, which would lose both."""
  import builtins
  import errno

  writer = writers.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write_scalars(50, {"d_loss": 0.5})

  class HalfWritten:
    def __init__(self, f):
      self.f = f

    def __enter__(self):
      return self

    def __exit__(self, *exc):
      self.f.close()

    def __getattr__(self, name):  # reads (seek, read) as the file's own
      return getattr(self.f, name)

    def write(self, text):
      self.f.write(text[:len(text) // 2])
      raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(writers, "open", lambda *a, **k: HalfWritten(builtins.open(*a, **k)),
                      raising=False)
  writer.write_scalars(100, {"d_loss": 0.4})
  monkeypatch.undo()
  assert not (tmp_path / "metrics.jsonl").read_text().endswith("\n")  # the cut-short line
  writer.write_scalars(150, {"d_loss": 0.3})
  assert [r["step"] for r in writers.read_metrics(str(tmp_path))] == [50, 150]
