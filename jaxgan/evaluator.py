"""FID/KID/precision-recall of a generator against its training data (training and evaluate).

Reals: the first N images of the data source's seeded order (capped at the data set's size), their
Inception features cached by `metrics.suite` per (data set, image size, N, weights). Fakes: EMA
samples from latents of a fixed seed; conditional models draw the fakes' label rows (one value per
attribute) from the reals' label rows, so both sets have the same mix of classes and combinations.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan import sampling
from jaxgan import sharding
from jaxgan.metrics import suite
from jaxgan.metrics.features import FeatureExtractor

log = logging.getLogger(__name__)

# Data keys that change how examples are produced, not which: left out of the cache identity.
_DATA_KEYS_NOT_IN_IDENTITY = ("workers", "cache_dir", "random_flip")


def collect_images(source, num: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
  """The first `num` images (uint8) and labels of `source` in its training order."""
  total = getattr(source, "num_examples", None)
  num = min(num, total) if total else num
  images, labels, have = [], [], 0
  for batch in source.batches(min(chunk, num), 0):
    images.append(batch["image"])
    labels.append(batch["label"])
    have += len(batch["image"])
    if have >= num:
      break
  return np.concatenate(images)[:num], np.concatenate(labels)[:num].astype(np.int32)


def reference_identity(config, num: int, weights_id: str) -> dict:
  data = {k: v for k, v in config.data.to_dict().items() if k not in _DATA_KEYS_NOT_IN_IDENTITY}
  return {"data": data, "num_images": num, "weights": weights_id, "resize": "bilinear-299-v1"}


class Evaluator:
  """Computes `eval.metrics` for EMA generator weights against cached real features."""

  def __init__(self, config, generator, source, sampler: Optional[Callable] = None,
               place: Callable[[Any], Any] = lambda x: x,
               extractor: Optional[FeatureExtractor] = None):
    self.config = config
    self.names = suite.parse_names(config.eval.metrics)
    self.source = source
    self.sampler = sampler or sampling.make_sampler(generator)
    self.place = place  # puts latents/labels where the sampler wants them (the run's mesh)
    self.cache = suite.cache_dir(config.eval.cache_dir)
    self.extractor = extractor or FeatureExtractor(config.eval.weights, self.cache,
                                                   config.eval.batch_size)
    self._reference: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def reference(self, num: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the first `num` real images, from the cache when present."""
    if num not in self._reference:
      identity = reference_identity(self.config, num, self.extractor.weights_id)
      path = suite.reference_path(self.cache, identity)
      cached = suite.load_reference(path)
      if cached is None:
        images, labels = collect_images(self.source, num)
        features = self.extractor(images, desc="inception (reals)")
        log.info("real features: %d images at %.1f img/s, cached in %s", len(images),
                 self.extractor.last_images_per_sec or 0.0, path)
        if jax.process_index() == 0:
          suite.save_reference(path, features, labels, identity)
        cached = (features, labels)
      self._reference[num] = cached
    return self._reference[num]

  def fake_labels(self, real_labels: np.ndarray, num: int, seed: int) -> Optional[np.ndarray]:
    """Label rows for `num` fakes, drawn from the reals' rows (None when unconditional)."""
    if self.config.data.num_classes <= 0:
      return None
    return np.random.default_rng(seed).choice(real_labels, num).astype(np.int32)

  def fake_images(self, ema_params, g_batch_stats, num: int, real_labels: np.ndarray,
                  seed: int) -> np.ndarray:
    """`num` uint8 samples of the EMA generator in fixed-size batches (one compilation)."""
    z_dim, conditional = self.config.model.z_dim, self.config.data.num_classes > 0
    batch = self.extractor.global_batch
    z_all = np.asarray(sampling.latents(seed, num, z_dim))
    labels_all = self.fake_labels(real_labels, num, seed)
    out = []
    for start in range(0, num, batch):
      z = np.zeros((batch, z_dim), np.float32)
      part = z_all[start:start + batch]
      z[:len(part)] = part
      labels = None
      if conditional:
        labels = np.zeros((batch,) + labels_all.shape[1:], np.int32)
        labels[:len(part)] = labels_all[start:start + batch]
      z_dev, labels_dev = self.place((jnp.asarray(z), None if labels is None else jnp.asarray(labels)))
      images = np.asarray(sharding.to_host(self.sampler(ema_params, g_batch_stats, z_dev, labels_dev)))
      out.append(images[:len(part)])
    return np.concatenate(out)

  def evaluate(self, ema_params, g_batch_stats, num_samples: int, num_real: int = 0,
               seed: int = 0, names: Optional[list[str]] = None) -> dict:
    """{metric: value, ..., num_samples, num_real, inception_images_per_sec, seconds}."""
    start = time.perf_counter()
    real, real_labels = self.reference(num_real or self.config.eval.num_real or num_samples)
    fakes = self.fake_images(ema_params, g_batch_stats, num_samples, real_labels, seed)
    fake = self.extractor(fakes, desc="inception (fakes)")
    conditional = self.config.data.num_classes > 0
    results = suite.compute(real, fake, names or self.names,
                            real_labels if conditional else None,
                            self.fake_labels(real_labels, num_samples, seed))
    results.update(num_samples=int(num_samples), num_real=int(len(real)),
                   inception_images_per_sec=self.extractor.last_images_per_sec,
                   seconds=time.perf_counter() - start)
    return results
