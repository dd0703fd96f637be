"""The pinned Inception input resize, and batched, padded, sharded feature extraction."""

import json
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO, xla_flags
from jaxgan.metrics import inception
from jaxgan.metrics.features import INCEPTION_SIZE, FeatureExtractor, resize_for_inception

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
from make_fid_resize_golden import CASES, resize_inputs  # noqa: E402


GOLDEN = np.load(os.path.join(REPO, "tests", "data", "fid_resize_golden.npz"))


def test_resize_matches_fid_helpers_tf1_bilinear():
  """Against the reference outputs of fid-helper-pytorch's 'nv_bilinear_float' (TF1
  resize_bilinear as StyleGAN2-ADA emulates it; tests/data/make_fid_resize_golden.py, torch)."""
  small, image, positions = resize_inputs()
  for i, ((_, (size, _)), img) in enumerate(zip(CASES, small)):
    got = np.asarray(resize_for_inception(jnp.asarray(img[None]), size))[0] * 128.0 + 128.0
    np.testing.assert_allclose(got, GOLDEN[f"case{i}"], atol=2e-3)  # float32 sums
  got = np.asarray(resize_for_inception(jnp.asarray(image[None])))[0] * 128.0 + 128.0
  assert got.shape == (INCEPTION_SIZE, INCEPTION_SIZE, 3)
  np.testing.assert_allclose(got[positions[:, 0], positions[:, 1], positions[:, 2]],
                             GOLDEN["at_positions"], atol=2e-3)


def test_299_inputs_are_only_scaled():
  image = np.random.default_rng(1).integers(0, 256, (1, 299, 299, 3)).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(resize_for_inception(jnp.asarray(image))),
                                (image.astype(np.float32) - 128.0) / 128.0)


def _random_inception_params(net):
  """Random He-scaled kernels and unit BN for FIDInception: these tests need no real weights.
  Drawn with NumPy: jax.random compiles a threefry program per kernel shape, ~28 s here."""
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = path[-1].key
    if name == "weight":
      fan_in = leaf.shape[0] * leaf.shape[1] * leaf.shape[2]
      return rng.standard_normal(leaf.shape, np.float32) * np.float32((2.0 / fan_in) ** 0.5)
    return np.full(leaf.shape, 1.0 if name == "var" else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_real_network_features_of_resized_images_with_padding():
  """The default network end to end: uint8 16x16 images -> the pinned resize -> FIDInception, in
  batches of 2 with the last one padded, equal to one unbatched apply of the network."""
  net = inception.FIDInception()
  params = _random_inception_params(net)
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  extractor = FeatureExtractor(params=params, weights_id="random", batch_size=2)
  got = extractor(images)
  want = np.asarray(jax.jit(net.apply)(params, resize_for_inception(jnp.asarray(images))))
  assert got.shape == (3, 2048) and got.dtype == np.float32
  assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_a_stand_in_network_or_params_need_their_own_name():
  with pytest.raises(ValueError, match="network=...\\) needs its params"):
    FeatureExtractor(network=inception.FIDInception(), weights_id="x")
  # Unnamed, their features would be cached under the real weights' name.
  for kwargs in ({"network": inception.FIDInception(), "params": {}}, {"params": {}}):
    with pytest.raises(ValueError, match="needs a weights_id naming them"):
      FeatureExtractor(**kwargs)


def test_only_uint8_pixels_are_taken():
  """Float images ([0, 1] or [-1, 1]) would pass as nearly black pixels: a meaningless FID."""
  extractor = FeatureExtractor(params={}, weights_id="x")
  with pytest.raises(ValueError, match="expected uint8 images .N, H, W, 3., got float32"):
    extractor(np.zeros((2, 8, 8, 3), np.float32))


class _StandIn(nn.Module):
  """Compiles in a second, unlike Inception; its features still depend on every pixel of their
  own image only, so a dropped, misplaced or mixed image shows."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(8, (5, 5), strides=(4, 4))(x))
    return nn.Dense(16)(x.mean((1, 2)))


def test_a_second_extractor_of_the_network_compiles_nothing_and_uses_its_own_weights():
  """Another evaluation in one process (the trainer's next, or evaluate after training) reuses
  the network's programs (kept per network and mesh): no trace, no compile; the weights are an
  argument, so other weights of the same shapes give their own features."""
  traces = []

  class Counted(_StandIn):
    def __call__(self, x):
      traces.append(x.shape)  # runs when traced only
      return super().__call__(x)

  net = Counted()
  images = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3)).astype(np.uint8)
  features = []
  for seed in (0, 1):
    params = net.init(jax.random.PRNGKey(seed), jnp.zeros((1, 299, 299, 3)))
    traces.clear()
    extractor = FeatureExtractor(params=params, weights_id=f"stand-in {seed}", batch_size=2,
                                 network=Counted())
    features.append(extractor(images))
    want = np.asarray(jax.jit(lambda x: net.apply(params, resize_for_inception(x)))(images))
    np.testing.assert_allclose(features[-1], want, rtol=1e-5, atol=1e-6)
    assert len(traces) == (1 if seed == 0 else 0) + 1  # the network's trace, then jit's above
  assert not np.allclose(features[0], features[1])


@pytest.mark.patches_traced_code
def test_a_stream_is_batched_as_it_arrives_in_order_across_lengths_and_sizes(monkeypatch,
                                                                            capsys):
  """`stream` takes chunks of any length (empty ones too) and of two sizes, runs each size's
  batch as soon as it is full (host memory: one batch per size, not the set) and returns the
  features in arrival order, equal to each image's alone."""
  net = _StandIn()
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  extractor = FeatureExtractor(params=params, weights_id="stand-in", batch_size=3, network=net)
  compiled_for, runs = extractor._compiled_for, [0]

  def counting(shape, dtype):
    apply = compiled_for(shape, dtype)

    class Counted:
      out_info = apply.out_info

      def __call__(self, *args):
        runs[0] += 1
        return apply(*args)

    return Counted()

  monkeypatch.setattr(extractor, "_compiled_for", counting)
  rng = np.random.default_rng(0)
  small = rng.integers(0, 256, (7, 16, 16, 3)).astype(np.uint8)
  large = rng.integers(0, 256, (4, 20, 20, 3)).astype(np.uint8)
  chunks = [small[:2], large[:1], small[2:2], small[2:7], large[1:4]]
  runs_when_made = []

  def produce():
    for chunk in chunks:
      runs_when_made.append(runs[0])
      yield chunk

  got = extractor.stream(produce(), total=11)
  # Small images 3 and 6 filled a batch each before the last chunk was made.
  assert runs_when_made == [0, 0, 0, 0, 2] and runs[0] == 5
  # Each size compiled its resize; the network, fed 299x299 batches of either, compiled once.
  assert len(extractor._compiled) == 2
  assert [shape for shape, _ in extractor._programs._compiled_network] == [(3, 299, 299, 3)]
  alone = jax.jit(lambda x: net.apply(params, resize_for_inception(x)))
  want = np.concatenate([np.asarray(alone(c[i:i + 1])) for c in chunks for i in range(len(c))])
  assert got.shape == (11, 16) and np.abs(got - want).max() / np.abs(want).max() < 1e-5
  assert extractor.last_images_per_sec > 0
  # Its progress bar stays off where stderr is no terminal (here pytest's capture): nested in the
  # training bar, it wrote cursor-up codes into redirected logs. A plain line says the end there
  # (and one a minute before it).
  capsys.readouterr()
  assert extractor.stream([small[:3]], total=3, desc="fakes").shape == (3, 16)
  err = capsys.readouterr().err
  assert re.fullmatch(r"fakes: 3/3 images done, [0-9.]+ img/s, \d+ s\n", err), err
  assert extractor.stream([small[:3]], total=3).shape == (3, 16)  # no desc: quiet
  assert capsys.readouterr().err == ""
  with pytest.raises(ValueError, match="got float32"):
    extractor.stream([small[:1], small[1:2].astype(np.float32)])
  with pytest.raises(ValueError, match="no images to extract"):
    extractor.stream(iter([]))


@pytest.mark.patches_traced_code
def test_images_of_many_sizes_wait_for_their_batch_without_a_buffer_each(monkeypatch):
  """A folder of native sizes: each size's images wait as they are (one each here) and a batch is
  built only to run; a padded batch buffer per size (256 images each) would hold far more."""
  import tracemalloc

  class Network:  # features: the first 4 pixel values, of each image alone
    out_info = jax.ShapeDtypeStruct((256, 4), np.float32)

    def __call__(self, params, images):
      return np.asarray(images).reshape(len(images), -1)[:, :4].astype(np.float32)

  extractor = FeatureExtractor(params={}, weights_id="x", batch_size=256)
  monkeypatch.setattr(extractor, "_compiled_for", lambda shape, dtype: Network())
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 256, (1, size, size, 3)).astype(np.uint8) for size in range(60, 66)]
  tracemalloc.start()
  try:
    got = extractor.stream(iter(images))
    peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  np.testing.assert_array_equal(got, np.concatenate([i.reshape(1, -1)[:, :4] for i in images]))
  # The largest size's batch is 3.2 MB: one built, one copy on its way through the stand-in
  # network and the waiting images stay under 3 of them (a buffer per size held 18.4 MB).
  one_batch = 256 * 65 * 65 * 3
  assert peak < 3 * one_batch, peak


# Batching, padding and sharding over 4 fake devices need no Inception (two Inception compiles
# cost ~30 s here): a stand-in small enough to compile in a second, whose features still depend
# on every pixel of its own image only, so a dropped, misplaced or mixed image would show.
SHARDED = r"""
import json
import flax.linen as nn
import jax, jax.numpy as jnp, numpy as np
from jaxgan.metrics.features import FeatureExtractor, resize_for_inception

class StandIn(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(8, (5, 5), strides=(4, 4))(x))
    return nn.Dense(16)(x.mean((1, 2)))

net = StandIn()
params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3)).astype(np.uint8)
extractor = FeatureExtractor(params=params, weights_id="stand-in", batch_size=1, network=net)
none = extractor(images[:0])  # a process's share of a tiny set
got = extractor(images)
want = np.concatenate([np.asarray(jax.jit(net.apply)(params, resize_for_inception(images[i:i + 1])))
                       for i in range(5)])
print(json.dumps({"devices": len(jax.local_devices()), "global_batch": extractor.global_batch,
                  "shape": got.shape, "dtype": str(got.dtype),
                  "none": none.shape,
                  "max_rel": float(np.abs(got - want).max() / np.abs(want).max()),
                  "images_per_sec": extractor.last_images_per_sec}))
"""


def test_extraction_is_sharded_padded_and_matches_one_device():
  env = {"XLA_FLAGS": xla_flags(4), "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env={**os.environ, **env})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 4 and out["global_batch"] == 4  # 5 images: one full batch + padding
  assert out["shape"] == [5, 16] and out["dtype"] == "float32"  # the network's width, not 2048
  assert out["none"] == [0, 16]
  assert out["max_rel"] < 1e-5
  assert out["images_per_sec"] > 0

