"""The pinned Inception input resize, and batched, padded, sharded feature extraction."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, xla_flags
from jaxgan.metrics.features import INCEPTION_SIZE, resize_for_inception


def _bilinear_half_pixel(image: np.ndarray, out: int) -> np.ndarray:
  """Direct bilinear resize, align_corners=False, no antialiasing, edges clamped (what
  F.interpolate(mode='bilinear', align_corners=False) and TF's resize_bilinear compute)."""

  def axis_weights(n_in):
    src = (np.arange(out) + 0.5) * n_in / out - 0.5
    src = np.clip(src, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    w = np.zeros((out, n_in))
    w[np.arange(out), lo] += 1 - frac
    w[np.arange(out), hi] += frac
    return w

  h, w, _ = image.shape
  return np.einsum("oh,pw,hwc->opc", axis_weights(h), axis_weights(w), image.astype(np.float64),
                   optimize=True)


@pytest.mark.parametrize("size", [(5, 7), (32, 32), (400, 350)])  # up, up, down
def test_resize_is_bilinear_half_pixel_without_antialiasing(size):
  image = np.random.default_rng(0).integers(0, 256, size + (3,)).astype(np.uint8)
  got = np.asarray(resize_for_inception(jnp.asarray(image[None])))[0]
  want = (_bilinear_half_pixel(image, INCEPTION_SIZE) - 128.0) / 128.0
  assert got.shape == (INCEPTION_SIZE, INCEPTION_SIZE, 3)
  np.testing.assert_allclose(got, want, atol=1e-4)  # float32 sums: < 0.013 of a pixel level


def test_299_inputs_are_only_scaled():
  image = np.random.default_rng(1).integers(0, 256, (1, 299, 299, 3)).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(resize_for_inception(jnp.asarray(image))),
                                (image.astype(np.float32) - 128.0) / 128.0)


SHARDED = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from jaxgan.metrics import inception
from jaxgan.metrics.features import FeatureExtractor, resize_for_inception

net = inception.FIDInception()
shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))

def fill(path, leaf, key):  # random He-scaled kernels, unit BN: the layout test needs no real weights
  name = path[-1].key
  if name == "weight":
    return jax.random.normal(key, leaf.shape) * (2.0 / (leaf.shape[0] * leaf.shape[1] * leaf.shape[2])) ** 0.5
  return jnp.ones(leaf.shape) if name == "var" else jnp.zeros(leaf.shape)

params = jax.tree_util.tree_unflatten(tree, [fill(p, l, k) for (p, l), k in zip(leaves, keys)])
images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
extractor = FeatureExtractor(params=params, weights_id="random", batch_size=1)
got = extractor(images)
want = np.concatenate([np.asarray(jax.jit(net.apply)(params, resize_for_inception(images[i:i + 1])))
                       for i in range(5)])
print(json.dumps({"devices": len(jax.local_devices()), "global_batch": extractor.global_batch,
                  "max_rel": float(np.abs(got - want).max() / np.abs(want).max()),
                  "images_per_sec": extractor.last_images_per_sec}))
"""


def test_extraction_is_sharded_padded_and_matches_one_device():
  env = {"XLA_FLAGS": xla_flags(4), "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**__import__("os").environ, **env})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4 and out["global_batch"] == 4  # 5 images: one full batch + padding
  assert out["max_rel"] < 1e-5
  assert out["images_per_sec"] > 0
