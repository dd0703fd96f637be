"""TensorBoard event files, written and read without TensorFlow.

An event file is a TFRecord file of `Event` protos. Each record is, little-endian: the data's
length (uint64), the masked CRC-32C of those 8 bytes (uint32), the data, and the masked CRC-32C
of the data (uint32). The protos are the `tensorboard` package's and the CRC google-crc32c's
(both dependencies), so TensorBoard works on accelerator hosts without TensorFlow, and a run on
the synthetic data does not pay TensorFlow's import (3-4 s) for its curves. The summaries are
built as protos here, not with tensorboard's helpers, whose numpy use broke with numpy 2 in
some of the versions pyproject allows.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import struct
import time
from typing import BinaryIO, Iterator

import numpy as np

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def _masked_crc(data: bytes) -> int:
  """TFRecord's masked CRC-32C: rotated right by 15 bits, plus a constant (a CRC of data that
  holds CRCs is then not itself trivially related to them)."""
  try:
    import google_crc32c
  except ImportError:  # an install older than the dependency: tensorboard's, in pure Python
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    return masked_crc32c(data)
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """One record: `data` with its length and both checksums."""
  length = _LENGTH.pack(len(data))
  return length + _CRC.pack(_masked_crc(length)) + data + _CRC.pack(_masked_crc(data))


def iter_records(path: str, warn: bool = True) -> Iterator[bytes | None]:
  """The records' data of the event file `path`, in order, read one at a time. A record that a
  kill cut short, or that damage broke, ends them as a None (with a warning unless `warn` is
  False): nothing after it is read, as TensorFlow's reader does."""
  with open(path, "rb") as f:
    offset = 0
    while True:
      data = _next_record(f)
      if data is None:
        if warn:
          log.warning("%s: a damaged or cut-short record at byte %d; the records from it on "
                      "are dropped", path, offset)
        yield None
        return
      if data is _END:
        return
      yield data
      offset = f.tell()


_END = object()  # _next_record at the end of the file


def _next_record(f: BinaryIO) -> bytes | object | None:
  """The next record's data from the open file `f`; _END at its end; None for a broken record."""
  head = f.read(_LENGTH.size + _CRC.size)
  if not head:
    return _END
  if len(head) < _LENGTH.size + _CRC.size:
    return None
  length_bytes = head[:_LENGTH.size]
  (length,) = _LENGTH.unpack(length_bytes)
  if _CRC.unpack(head[_LENGTH.size:])[0] != _masked_crc(length_bytes):
    return None  # the length itself is not to be trusted: nothing after it is framed
  body = f.read(length + _CRC.size)
  if len(body) < length + _CRC.size:
    return None
  data = body[:length]
  if _CRC.unpack(body[length:])[0] != _masked_crc(data):
    return None
  return data


def parse_event(data: bytes):
  """The `Event` proto of one record's data."""
  from tensorboard.compat.proto import event_pb2
  return event_pb2.Event.FromString(data)


def scalar_value(tag: str, value: float):
  """A `Summary.Value` that TensorBoard's scalars dashboard shows: a float32 scalar tensor, as
  `tf.summary.scalar` writes it (NaN and inf kept)."""
  from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
  from tensorboard.plugins.scalar import metadata
  try:
    with np.errstate(over="ignore"):  # beyond float32: inf, as TensorFlow's cast gives
      value = float(np.float32(value))
  except OverflowError:  # an int beyond even float64
    value = math.inf if value > 0 else -math.inf
  return summary_pb2.Summary.Value(
      tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
      tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[value],
                                    tensor_shape=tensor_shape_pb2.TensorShapeProto()))


def image_value(tag: str, png: bytes, width: int, height: int):
  """A `Summary.Value` for TensorBoard's images dashboard: the string tensor [width, height, png]
  that `tf.summary.image` writes."""
  from tensorboard.compat.proto import summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
  from tensorboard.plugins.image import metadata
  shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=3)])
  return summary_pb2.Summary.Value(
      tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
      tensor=tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape,
                                    string_val=[str(width).encode(), str(height).encode(), png]))


class EventFileWriter:
  """Appends events to a new event file in `folder`, flushed after each write: a kill loses at
  most the record being written (a cut record, which readers stop at). A write that fails part
  way (a full disk) is cut back off, so that the events after it stay readable."""

  def __init__(self, folder: str):
    from tensorboard.compat.proto import event_pb2  # before the file: a failed import leaves none
    self._event = event_pb2.Event
    os.makedirs(folder, exist_ok=True)
    stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    n = 0
    while True:  # a second writer in this process within the same second gets the next number
      path = os.path.join(folder, f"{stem}.{n}.v2")
      try:
        # Unbuffered: a failed write leaves nothing in a buffer to be flushed later.
        self._file = open(path, "xb", buffering=0)
        break
      except FileExistsError:
        n += 1
    try:
      self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))
    except BaseException:
      self._file.close()
      os.remove(path)  # an event file without its version record
      raise

  def write(self, step: int, values: list) -> None:
    """One event at `step` holding the `Summary.Value`s `values`."""
    from tensorboard.compat.proto import summary_pb2
    self._write(self._event(wall_time=time.time(), step=int(step),
                            summary=summary_pb2.Summary(value=values)))

  def _write(self, event) -> None:
    record = frame(event.SerializeToString())
    start = self._file.tell()
    try:
      view = memoryview(record)
      while view:  # a raw write may take only part (a disk filling up)
        view = view[self._file.write(view):]
    except OSError:
      try:  # a partial record would end every reader there, and hide the events after it
        self._file.truncate(start)
        self._file.seek(start)
      except OSError:
        pass
      raise

  def close(self) -> None:
    self._file.close()
