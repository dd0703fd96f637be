"""TensorBoard event files, written and read without TensorFlow.

An event file is a TFRecord file of `Event` protos. Each record is, little-endian: the data's
length (uint64), the masked CRC-32C of those 8 bytes (uint32), the data, and the masked CRC-32C
of the data (uint32). The `tensorboard` package (a dependency) has the protos and a CRC in pure
Python, so TensorBoard works on accelerator hosts without TensorFlow, and a run on the synthetic
data does not pay TensorFlow's import (3-4 s) for its curves.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from typing import BinaryIO, Iterator

import numpy as np

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
# The pure-Python CRC runs at about 8 MB/s. A sample grid (a PNG, megabytes at high resolution)
# is checked for its framing and its parse only: its bytes matter to no decision here, and a
# resume must not spend a minute re-checking a long run's images. Scalars are checked in full.
_FULL_CHECK_BYTES = 1 << 16


def _masked_crc(data: bytes) -> int:
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  return masked_crc32c(data)


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
  if length <= _FULL_CHECK_BYTES and _CRC.unpack(body[length:])[0] != _masked_crc(data):
    return None
  return data


def parse_event(data: bytes):
  """The `Event` proto of one record's data."""
  from tensorboard.compat.proto import event_pb2
  return event_pb2.Event.FromString(data)


def scalar_value(tag: str, value: float):
  """A `Summary.Value` that TensorBoard's scalars dashboard shows (a float32 tensor, as
  `tf.summary.scalar` writes it; NaN and inf kept)."""
  from tensorboard.plugins.scalar import summary_v2
  return summary_v2.scalar_pb(tag, np.float32(value)).value[0]


def image_value(tag: str, png: bytes, width: int, height: int):
  """A `Summary.Value` for TensorBoard's images dashboard: the tensor [width, height, png] of
  strings that `tf.summary.image` writes."""
  from tensorboard.compat.proto import summary_pb2
  from tensorboard.plugins.image import metadata
  from tensorboard.util import tensor_util
  return summary_pb2.Summary.Value(
      tag=tag, metadata=metadata.create_summary_metadata(display_name=None, description=None),
      tensor=tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png]))


class EventFileWriter:
  """Appends events to a new event file in `folder`, flushed after each write: a kill loses at
  most the record being written (a cut record, which readers stop at). A write that fails part
  way (a full disk) is cut back off, so that the events after it stay readable."""

  def __init__(self, folder: str):
    os.makedirs(folder, exist_ok=True)
    stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    n = 0
    while True:  # a second writer in this process within the same second gets the next number
      try:
        # Unbuffered: a failed write leaves nothing in a buffer to be flushed later.
        self._file = open(os.path.join(folder, f"{stem}.{n}.v2"), "xb", buffering=0)
        break
      except FileExistsError:
        n += 1
    from tensorboard.compat.proto import event_pb2
    self._event = event_pb2.Event
    self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

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
