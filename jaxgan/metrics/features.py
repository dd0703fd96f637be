"""Inception features of uint8 images: the pinned 299x299 resize, then FIDInception, jitted,
batched and sharded over the local devices.

The resize is pinned because FID moves with it: bilinear interpolation with half-pixel centres
(align_corners=False), no antialiasing, on float32 pixel values in [0, 255], then
(x - 128) / 128 (the TF FID graph's scaling). The resize is pytorch-fid's and StyleGAN2-ADA's
(`F.interpolate(mode='bilinear', align_corners=False)`); the original TF graph's TF1
ResizeBilinear (no half-pixel centres) samples slightly differently. Images already 299x299 pass
through unchanged.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxgan.metrics import inception

INCEPTION_SIZE = 299


def resize_for_inception(images: jnp.ndarray) -> jnp.ndarray:
  """[N, H, W, 3] pixels in [0, 255] (uint8 or float) -> [N, 299, 299, 3] float32 scaled inputs."""
  x = images.astype(jnp.float32)
  n, h, w, c = x.shape
  if (h, w) != (INCEPTION_SIZE, INCEPTION_SIZE):
    x = jax.image.resize(x, (n, INCEPTION_SIZE, INCEPTION_SIZE, c), "bilinear", antialias=False)
  return (x - 128.0) / 128.0


class FeatureExtractor:
  """`extractor(uint8 images [N, H, W, 3]) -> float32 features [N, 2048]` on every local device.

  Batches of `batch_size` per device are sharded over a 1-D mesh of this process's devices (the
  weights are replicated); the last batch is padded and the padding dropped. Every process of a
  multi-process job extracts the images it is given on its own devices.
  """

  def __init__(self, weights_path: str = "", cache_dir: str = "", batch_size: int = 32,
               params: Optional[dict] = None, weights_id: str = ""):
    devices = jax.local_devices()
    self.mesh = Mesh(np.array(devices), ("data",))
    self.global_batch = batch_size * len(devices)
    replicated = NamedSharding(self.mesh, P())
    self._batch_sharding = NamedSharding(self.mesh, P("data"))
    self.params = jax.device_put(params or inception.load_params(weights_path, cache_dir),
                                 replicated)
    # Names the weights in reference-feature caches: features of other weights never mix.
    self.weights_id = weights_id or inception.weights_digest(weights_path)
    net = inception.FIDInception()
    self._apply = jax.jit(lambda p, x: net.apply(p, resize_for_inception(x)),
                          out_shardings=replicated)
    self._compiled: dict = {}  # per input shape, compiled before timing starts
    self.last_images_per_sec: Optional[float] = None

  def _compiled_for(self, shape: tuple, dtype) -> Callable:
    key = (shape, np.dtype(dtype).name)
    if key not in self._compiled:
      spec = jax.ShapeDtypeStruct(shape, dtype, sharding=self._batch_sharding)
      self._compiled[key] = self._apply.lower(self.params, spec).compile()
    return self._compiled[key]

  def __call__(self, images: np.ndarray, desc: str = "") -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {images.shape}")
    n = len(images)
    out = np.zeros((n, 2048), np.float32)
    apply = self._compiled_for((self.global_batch,) + images.shape[1:], images.dtype)
    start = time.perf_counter()  # images/s of extraction alone, compilation excluded
    starts = range(0, n, self.global_batch)
    for i in tqdm(starts, desc=desc or "inception", unit="batch", disable=not desc,
                  leave=False):
      chunk = images[i:i + self.global_batch]
      if len(chunk) < self.global_batch:  # pad: one compiled shape for every batch
        pad = np.zeros((self.global_batch - len(chunk),) + chunk.shape[1:], chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      features = apply(self.params, jax.device_put(chunk, self._batch_sharding))
      out[i:i + self.global_batch] = np.asarray(features)[:min(self.global_batch, n - i)]
    seconds = time.perf_counter() - start
    self.last_images_per_sec = n / seconds if seconds > 0 and n else None
    return out
