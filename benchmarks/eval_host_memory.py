"""Peak host memory of an evaluation's fakes: N uint8 fakes at SIZE x SIZE through the evaluator
(`Evaluator.fake_features`) with a small stand-in for Inception, so that only the images' path
is measured (Inception's own memory does not grow with N).

  python benchmarks/eval_host_memory.py [N] [SIZE]

Prints the peak resident set size after a warm-up (compilation) and after N fakes: it should
grow by the features (N x 16 float32 here), not by the images (N x SIZE² x 3 bytes).
"""

import resource
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import evaluator
from jaxgan.config import base_config
from jaxgan.metrics.features import FeatureExtractor


class StandIn(nn.Module):
  """Features of each image alone, cheap next to Inception."""

  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Conv(8, (5, 5), strides=(4, 4))(x))
    return nn.Dense(16)(x.mean((1, 2)))


def main(num: int, size: int) -> None:
  net = StandIn()
  params = net.init(jax.random.PRNGKey(0), jnp.zeros((1, 299, 299, 3)))
  extractor = FeatureExtractor(params=params, weights_id="stand-in", batch_size=64, network=net)

  def sampler(ema_params, g_batch_stats, z, labels):  # random pixels: a generator's output
    pixels = np.random.default_rng(len(z)).integers(0, 255, (len(z), size, size, 3), np.uint8)
    return jnp.asarray(pixels)

  config = base_config()
  config.data.num_classes = 0
  config.eval.batch_size = 64
  ev = evaluator.Evaluator(config, None, None, sampler=sampler, extractor=extractor,
                           statistics=lambda ema_params, g_batch_stats: g_batch_stats)
  no_labels = np.zeros(1, np.int32)
  ev.fake_features(None, None, 64, no_labels, seed=0)  # compiles
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.perf_counter()
  features = ev.fake_features(None, None, num, no_labels, seed=0)
  after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"{num} fakes at {size}x{size} ({num * size * size * 3 / 2**20:.0f} MB of pixels): "
        f"peak RSS {before:.0f} MB after warm-up, {after:.0f} MB after (+{after - before:.0f} "
        f"MB), {time.perf_counter() - start:.1f} s, features {features.shape}")


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 8000,
       int(sys.argv[2]) if len(sys.argv) > 2 else 128)
