"""event_file: TensorBoard event files without TensorFlow, checked against TensorFlow's own
reader (which verifies every checksum) and TensorBoard's loader (what draws the curves)."""

import errno
import os

import numpy as np
import pytest

from jaxgan import event_file


def _tf_records(path):
  import tensorflow as tf  # the independent reader
  return [r.numpy() for r in tf.data.TFRecordDataset(path)]


def _tf_read(path):
  import tensorflow as tf
  return [tf.compat.v1.Event.FromString(r) for r in _tf_records(path)]


def test_tensorflow_and_tensorboard_read_what_is_written(tmp_path):
  from PIL import Image
  writer = event_file.EventFileWriter(str(tmp_path))
  writer.write(3, [event_file.scalar_value("d_loss", np.float32(0.25)),
                   event_file.scalar_value("g_loss", float("nan"))])
  pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  import io
  png = io.BytesIO()
  Image.fromarray(pixels).save(png, format="PNG")
  writer.write(4, [event_file.image_value("samples", png.getvalue(), 3, 2)])
  writer.close()
  (name,) = os.listdir(tmp_path)
  assert name.startswith("events.out.tfevents.") and name.endswith(".v2")

  events = _tf_read(str(tmp_path / name))
  assert events[0].file_version == "brain.Event:2"
  assert [e.step for e in events[1:]] == [3, 4]

  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
  acc.Reload()
  tags = acc.Tags()["tensors"]
  assert sorted(tags) == ["d_loss", "g_loss", "samples"]
  from tensorboard.util import tensor_util
  (d,) = acc.Tensors("d_loss")
  assert d.step == 3 and tensor_util.make_ndarray(d.tensor_proto) == np.float32(0.25)
  assert np.isnan(tensor_util.make_ndarray(acc.Tensors("g_loss")[0].tensor_proto))
  width, height, data = tensor_util.make_ndarray(acc.Tensors("samples")[0].tensor_proto)
  assert (width, height) == (b"3", b"2")
  assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
  # The plugins that draw them claim them: scalars and images dashboards.
  assert acc.PluginTagToContent("scalars").keys() == {"d_loss", "g_loss"}
  assert acc.PluginTagToContent("images").keys() == {"samples"}


def test_a_writer_that_cannot_start_its_file_leaves_none(tmp_path, monkeypatch):
  def full(self, event):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(event_file.EventFileWriter, "_write", full)
  with pytest.raises(OSError):
    event_file.EventFileWriter(str(tmp_path))
  assert os.listdir(tmp_path) == []


def test_two_writers_in_one_second_get_two_files(tmp_path):
  a, b = event_file.EventFileWriter(str(tmp_path)), event_file.EventFileWriter(str(tmp_path))
  a.write(1, [event_file.scalar_value("x", 1.0)])
  b.write(2, [event_file.scalar_value("x", 2.0)])
  a.close(), b.close()
  steps = sorted(e.step for n in os.listdir(tmp_path) for e in _tf_read(str(tmp_path / n)))
  assert len(os.listdir(tmp_path)) == 2 and steps == [0, 0, 1, 2]


def test_the_checksum_is_tfrecords_masked_crc32c():
  """google-crc32c (C) agrees with tensorboard's pure-Python masked CRC, the fallback, and the
  CRC-32C check value."""
  import google_crc32c
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  assert google_crc32c.value(b"123456789") == 0xE3069283
  rng = np.random.default_rng(0)
  for n in (0, 1, 7, 8, 1000, 70_000):
    data = rng.integers(0, 256, n, np.uint8).tobytes()
    assert event_file._masked_crc(data) == masked_crc32c(data)


@pytest.mark.parametrize("damage", ["cut", "length", "data", "large data"])
def test_a_broken_record_ends_the_records_with_a_none(tmp_path, damage, caplog):
  path = tmp_path / "events.out.tfevents.1"
  # A large second record (a sample grid's size) is checked in full too.
  records = [b"first", b"second" * (20_000 if damage == "large data" else 1), b"third"]
  raw = b"".join(event_file.frame(r) for r in records)
  at = len(event_file.frame(b"first"))  # the second record starts here
  if damage == "cut":
    raw = raw[:at + 20]
  elif damage == "length":  # a flipped bit in the second's length: its checksum disagrees
    raw = raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:]
  else:  # a flipped bit in the second's data (its last byte)
    flip = at + len(event_file.frame(records[1])) - 5
    raw = raw[:flip] + bytes([raw[flip] ^ 1]) + raw[flip + 1:]
  path.write_bytes(raw)
  assert list(event_file.iter_records(str(path))) == [b"first", None]
  with pytest.raises(Exception, match="corrupted|truncated|DataLoss"):
    _tf_records(str(path))  # TensorFlow's reader refuses it too
  assert f"byte {at}" in caplog.text
  path.write_bytes(b"".join(event_file.frame(r) for r in records))
  assert list(event_file.iter_records(str(path))) == records == _tf_records(str(path))


class _FillsUp:
  """An event file whose disk fills up part way through the next write."""

  def __init__(self, real):
    self.real, self.calls = real, 0

  def write(self, view):
    self.calls += 1
    if self.calls == 1:
      return self.real.write(view[:7])  # part of it, as write(2) does on a filling disk
    raise OSError(errno.ENOSPC, "No space left on device")

  def __getattr__(self, name):
    return getattr(self.real, name)


@pytest.mark.parametrize("then", ["write", "close"])
def test_a_write_that_fails_part_way_is_cut_back_off(tmp_path, then):
  """A full disk mid-record must not leave half a record: every reader stops there, so the
  events written after the disk was freed would be lost too, and a reader would warn of damage
  at the end of a file that a run stopped at."""
  writer = event_file.EventFileWriter(str(tmp_path))
  writer.write(1, [event_file.scalar_value("x", 1.0)])
  real = writer._file
  writer._file = _FillsUp(real)
  with pytest.raises(OSError):
    writer.write(2, [event_file.scalar_value("x", 2.0)])
  writer._file = real
  if then == "write":
    writer.write(3, [event_file.scalar_value("x", 3.0)])
  writer.close()
  (name,) = os.listdir(tmp_path)
  records = list(event_file.iter_records(str(tmp_path / name)))
  assert None not in records
  assert [e.step for e in _tf_read(str(tmp_path / name))] == ([0, 1, 3] if then == "write"
                                                              else [0, 1])
