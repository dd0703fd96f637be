"""Reads tensors and module attributes from PyTorch files (torch.save files and TorchScript
modules) without importing torch.

torch.save since torch 1.6, and torch.jit.save always, write a zip whose `data.pkl` is a pickle
referring to tensor storages stored as raw little-endian files `data/<key>` beside it. Older
torch.save wrote the legacy format, which files from that era (e.g. pytorch-fid's 2019 weights)
are in: a stream of pickles (magic number, protocol version, system info, the object, the sorted
storage keys) followed by each storage as an int64 element count and its raw bytes.

Unpickling with a restricted Unpickler that maps the handful of torch reconstruction functions to
numpy, and every TorchScript class to a plain attribute holder, yields the object tree with numpy
arrays. Nothing from the file is executed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001


class ScriptObject:
  """A TorchScript module or object: its pickled attributes, nothing else."""

  def __init__(self, *args, **kwargs):
    self.__dict__["_class"] = "object"

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    elif isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
      self.__dict__.update(state[0])
    else:
      self.__dict__["_state"] = state

  def __repr__(self):
    return f"<{self._class}: {sorted(k for k in self.__dict__ if not k.startswith('_'))}>"


def _rebuild_tensor(storage, offset, size, stride, *unused):
  flat = storage
  if not size:
    return flat[offset].copy()
  if 0 in size:
    return np.zeros(tuple(size), flat.dtype)
  # as_strided does no bounds checking: a bad size/stride in the file must not read past storage.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or min(stride) < 0 or last >= flat.size:
    raise pickle.UnpicklingError(f"tensor of size {tuple(size)} overruns its storage")
  itemsize = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


def _storage_dtype(storage_type) -> np.dtype:
  if isinstance(storage_type, type) and storage_type in _STORAGE_DTYPES.values():
    return np.dtype(storage_type).newbyteorder("<")
  raise pickle.UnpicklingError(f"unsupported tensor storage type {storage_type!r}")


class _Unpickler(pickle.Unpickler):
  """Restricted: torch's tensor rebuilders map to numpy, storages come from `storage(pid)`."""

  def __init__(self, file, storage: Callable[[tuple], np.ndarray]):
    super().__init__(file)
    self._storage = storage

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, hooks: data
    if module == "torch" and name in _STORAGE_DTYPES:
      return _STORAGE_DTYPES[name]
    if module == "collections" and name == "OrderedDict":
      return OrderedDict
    if module == "torch.jit._pickle" and name.startswith("build_"):
      return lambda value: value  # TorchScript's typed lists (List[int] padding, ...)
    if module.startswith("__torch__") or module.startswith("torch"):
      cls = type(name, (ScriptObject,), {})
      cls._class = f"{module}.{name}"
      return cls
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

  def persistent_load(self, pid):
    kind = pid[0] if isinstance(pid, tuple) and pid else None
    if kind not in ("storage", b"storage"):  # bytes: pickled by Python 2
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    return self._storage(pid)


class _PlainUnpickler(pickle.Unpickler):
  """For the legacy format's header and key list: plain data, no classes at all."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")


def _load_zip(path: str) -> Any:
  with zipfile.ZipFile(path) as archive:
    pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise ValueError(f"{path} is not a PyTorch zip archive (no data.pkl)")
    prefix, cache = pkl[: -len("data.pkl")], {}

    def storage(pid):
      _, storage_type, key, *_ = pid
      dtype = _storage_dtype(storage_type)
      if key not in cache:
        cache[key] = np.frombuffer(archive.read(f"{prefix}data/{key}"), dtype=dtype).copy()
      return cache[key]

    with archive.open(pkl) as f:
      return _Unpickler(f, storage).load()


def _load_legacy(path: str) -> Any:
  """The pre-1.6 torch.save stream. The storages' bytes follow the object's pickle, and their
  element sizes are known only from inside it, so the object is unpickled twice: once over
  zero-filled storages to learn each storage's dtype and size, then over the real bytes."""
  with open(path, "rb") as f:
    try:
      magic = _PlainUnpickler(f).load()
      protocol, sys_info = _PlainUnpickler(f).load(), _PlainUnpickler(f).load()
    except Exception:
      magic = protocol = sys_info = None
    if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
      raise ValueError(f"{path} is not a PyTorch file (neither a zip archive nor legacy "
                       "torch.save)")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
      raise ValueError(f"{path} was saved on a big-endian machine: unsupported")
    start, found = f.tell(), {}

    def scan(pid):
      _, storage_type, key, _location, numel, *_ = pid
      found[key] = (_storage_dtype(storage_type), int(numel))
      return np.zeros(int(numel), found[key][0])

    _Unpickler(f, scan).load()
    arrays = {}
    for key in _PlainUnpickler(f).load():
      if key not in found:
        raise ValueError(f"{path}: storage {key!r} is not referenced by the saved object")
      dtype, numel = found[key]
      count = int.from_bytes(f.read(8), "little")
      raw = f.read(count * dtype.itemsize)
      if count != numel or len(raw) != numel * dtype.itemsize:
        raise ValueError(f"{path}: storage {key!r} is truncated or has the wrong size")
      arrays[key] = np.frombuffer(raw, dtype=dtype).copy()

    def storage(pid):
      _, _, key, _, _, view = pid
      if view is None:
        return arrays[key]
      _, offset, size = view  # a storage view: only from very old torch versions
      return arrays[key][offset:offset + size]

    f.seek(start)
    return _Unpickler(f, storage).load()


def load(path: str) -> Any:
  """The unpickled object tree of a torch.save or torch.jit.save file, tensors as numpy arrays."""
  with open(path, "rb") as f:
    is_zip = f.read(4) == _ZIP_MAGIC
  return _load_zip(path) if is_zip else _load_legacy(path)
