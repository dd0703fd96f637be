"""Reads tensors and module attributes from PyTorch zip archives (torch.save files and TorchScript
modules) without importing torch.

Both formats are a zip whose `data.pkl` is a pickle referring to tensor storages stored as raw
little-endian files `data/<key>` beside it. Unpickling with a restricted Unpickler that maps the
handful of torch reconstruction functions to numpy, and every TorchScript class to a plain
attribute holder, yields the module tree with numpy arrays. Nothing from the archive is executed.
"""

from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


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


class _StorageRef:
  def __init__(self, dtype, key):
    self.dtype, self.key = dtype, key


def _rebuild_tensor(storage, offset, size, stride, *unused):
  flat = storage
  if not size:
    return flat[offset].copy()
  itemsize = flat.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.ascontiguousarray(view)


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix, self._cache = archive, prefix, {}

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
    kind, storage_type, key, *_ = pid
    if kind != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    dtype = storage_type if isinstance(storage_type, type) else _STORAGE_DTYPES[storage_type.__name__]
    if key not in self._cache:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      self._cache[key] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).copy()
    return self._cache[key]


def load(path: str) -> Any:
  """The unpickled object tree of a torch zip archive, tensors as numpy arrays."""
  with zipfile.ZipFile(path) as archive:
    pkl = next((n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise ValueError(f"{path} is not a PyTorch zip archive (no data.pkl)")
    prefix = pkl[: -len("data.pkl")]
    with archive.open(pkl) as f:
      return _Unpickler(f, archive, prefix).load()
