"""FID/KID/precision-recall of a generator against its training data (training and evaluate).

Reals: the first N images of the data source's seeded order (capped at the data set's size), their
Inception features cached by `metrics.suite` per (content hash of those images and labels,
weights). Fakes: EMA
samples from latents of a fixed seed; conditional models draw the fakes' label rows (one value per
attribute) from the reals' label rows, so both sets have the same mix of classes and combinations.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from jaxgan import multihost
from jaxgan import sample_inputs, sampling
from jaxgan.metrics import distances, suite
from jaxgan.metrics.features import PREPROCESSING_ID, FeatureExtractor

if TYPE_CHECKING:  # the data package loads its five sources: not needed to run this module
  from jaxgan.data.protocol import DataSource

log = logging.getLogger(__name__)


class EvaluationStopped(Exception):
  """An evaluation cut short between chunks by a stop request (SIGTERM, a preemption notice):
  minutes of Inception are not worth a grace period, and the rerun evaluates the step."""


def real_chunks(source: DataSource, num: int, mirror: bool = False, chunk: int = 256
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(images uint8, labels int32) of the first `num` images of `source` in its training order, a
  chunk at a time (the set is never held whole). With `mirror`, a seeded half of them is
  mirrored left-right, the same ones every pass: the reals a run with data.random_flip trains
  on, as StyleGAN2-ADA's --mirror reference holds the mirrored copies too (without it such a
  run's FID counts the flips against it)."""
  total = getattr(source, "num_examples", None)
  num = min(num, total) if total else num
  flips = np.random.default_rng(0)  # drawn image by image: any chunking flips the same ones
  have = 0
  for batch in source.batches(min(chunk, num), 0):
    images, labels = batch["image"][:num - have], batch["label"][:num - have]
    if mirror:
      flip = flips.random(len(images)) < 0.5
      images = images.copy()
      images[flip] = images[flip, :, ::-1]
    yield images, np.asarray(labels).astype(np.int32)
    have += len(images)
    if have >= num:
      return


def reference_identity(chunks: Iterable[tuple[np.ndarray, np.ndarray]], weights_id: str
                       ) -> tuple[dict, np.ndarray]:
  """(identity, labels) of the reals `chunks` yields. The identity is what determines their
  features: the images and labels themselves (a content hash: a re-prepared data set, another
  project's same-named path or another seed's subset can never hit a stale entry), the Inception
  weights and the resize convention. The hash is of the images' bytes in order, then the
  labels': the same for any chunking."""
  digest = hashlib.sha256()
  labels, count, shape = [], 0, None
  for images, chunk_labels in chunks:
    digest.update(np.ascontiguousarray(images).data)
    labels.append(chunk_labels)
    count, shape = count + len(images), list(images.shape[1:])
  if not count:
    raise ValueError("the data source yielded no images for the reference")
  all_labels = np.concatenate(labels)
  digest.update(np.ascontiguousarray(all_labels).tobytes())
  return {"content_sha256": digest.hexdigest(), "num_images": count, "shape": shape,
          "weights": weights_id, "preprocessing": PREPROCESSING_ID}, all_labels


def row_digests(chunks: Iterable[tuple[np.ndarray, np.ndarray]], into: list[bytes]
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """`chunks` as they are, with a digest of each (image, label row) appended to `into`."""
  for images, labels in chunks:
    for image, label in zip(images, labels):
      row = hashlib.blake2b(np.ascontiguousarray(label).tobytes(), digest_size=16)
      row.update(np.ascontiguousarray(image).data)
      into.append(row.digest())
    yield images, labels


def unordered_digest(rows: list[bytes]) -> str:
  """A digest of a multiset of row digests: the same reals in another order (a data order that
  changed with TensorFlow's version, say) are the same reals to an FID, whose features the
  cache key (`reference_identity`, in order) keeps apart."""
  return hashlib.sha256(b"".join(sorted(rows))).hexdigest()


def extract_across_processes(extract: Callable[[Iterator[np.ndarray], int], np.ndarray],
                             chunks: Iterable[np.ndarray], total: int) -> np.ndarray:
  """Features of the `total` images `chunks` yields (the same ones, in the same order, on every
  process) with the Inception work split: process i extracts the i-th contiguous 1/P of them
  on its own devices (`extract(its chunks, its count)`), and the features are all-gathered back
  in order, so every process holds all of them. A pod's evaluation then takes 1/P of the time
  instead of every host extracting everything."""
  per = -(-total // jax.process_count())
  lo, hi = min(jax.process_index() * per, total), min((jax.process_index() + 1) * per, total)

  def mine() -> Iterator[np.ndarray]:
    at = 0
    for images in chunks:
      part = images[max(lo - at, 0):max(hi - at, 0)]
      at += len(images)
      if len(part) or lo == hi:  # a process without rows passes one empty part: its shape
        yield part
      if at >= hi or lo == hi:
        return

  features = multihost.agreed(lambda: extract(mine(), hi - lo), "feature extraction")
  return multihost.gather_rows(np.arange(lo, hi), features, total)


def reals_for(config: ml_collections.ConfigDict, num_samples: int, num_real: int = 0,
              source: Any = None) -> int:
  """The real images an evaluation of `num_samples` fakes compares with: `num_real`, else the
  config's eval.num_real, else as many as the fakes; at most the `source`'s images where it
  knows their count (`real_chunks` reads no more)."""
  wanted = num_real or config.eval.num_real or num_samples
  total = getattr(source, "num_examples", None)
  return min(wanted, total) if total else wanted


class Evaluator:
  """Computes `eval.metrics` for EMA generator weights against cached real features."""

  def __init__(self, config, generator, source, sampler: Optional[Callable] = None,
               batch_sharding: Optional[NamedSharding] = None,
               extractor: Optional[FeatureExtractor] = None,
               statistics: Optional[Callable[[Any, Any], Any]] = None,
               should_stop: Callable[[], bool] = lambda: False):
    """`batch_sharding` splits the fakes' rows over a mesh (the run's in training, the local
    devices' for `evaluate`), which also holds the EMA weights given to `evaluate`: each device
    samples its share and each process extracts the features of its devices' images. Without
    it the fakes are sampled on one device. `statistics`: the EMA generator's BatchNorm
    statistics (`sampling.make_ema_statistics`), given by the trainer to share its grids'
    computation; built from `config` without it. `should_stop` (this process's stop request,
    from the trainer) is asked before each chunk of images: True raises EvaluationStopped."""
    self.config = config
    self.should_stop = should_stop
    self.names = suite.parse_names(config.eval.metrics)
    self.source = source
    self._traced: set[str] = set()  # the metrics whose failure's traceback was logged
    self.batch_sharding = batch_sharding
    self.sampler = sampler or sampling.make_sampler(generator, batch_sharding)
    self.statistics = statistics or sampling.make_ema_statistics(
        config, generator, sampling.label_counts(getattr(source, "labels", None)),
        batch_sharding=batch_sharding)
    self.cache = suite.cache_dir(config.eval.cache_dir)
    self.extractor = extractor or FeatureExtractor(config.eval.weights, self.cache,
                                                   config.eval.batch_size)
    # Rows per sampler call: an Inception batch per device of the mesh (a process's share is
    # then one extractor batch). From the config and the mesh, not from this process's devices:
    # the sampler is collective, so every process must compile the same chunk.
    self.chunk = config.eval.batch_size * (1 if batch_sharding is None
                                           else batch_sharding.num_devices)
    self._reference: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    self._reals_digest: dict[int, str] = {}
    self._real_statistics: dict[int, tuple[np.ndarray, np.ndarray]] = {}

  def reference(self, num: int) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the first `num` real images, from the cache when present. The reals
    are read a chunk at a time: once to hash them (the cache key), and on a miss once more for
    their features, so that no pass holds the set (9.8 GB for 50k at 256x256)."""
    if num not in self._reference:
      # Reading (decoding) and hashing the reals is cheap; Inception is not.
      labels, identity, path, cached, self._reals_digest[num] = multihost.agreed(
          lambda: self._local_reference(num), "reading the real images")
      # Extraction is collective: all processes use the cache, or all recompute.
      if not multihost.all_processes(cached is not None):
        cached = None
      if cached is None:
        features = extract_across_processes(
            lambda chunks, count: self.extractor.stream(chunks, count, "inception (reals)"),
            (images for images, _ in self._real_chunks(num)), len(labels))
        log.info("real features: %d images at %.1f img/s, cached in %s", len(labels),
                 self.extractor.last_images_per_sec or 0.0, path)
        self._save_reference(path, features, labels, identity)
        cached = (features, labels)
      self._reference[num] = cached
    return self._reference[num]

  def reals_digest(self, num: int) -> Optional[str]:
    """The digest of the first `num` reals (`unordered_digest` of their images and labels), once
    `reference(num)` has read them: what an FID is measured against."""
    return self._reals_digest.get(num)

  def real_statistics(self, num: int) -> tuple[np.ndarray, np.ndarray]:
    """FID's mean and covariance of `reference(num)`'s features, computed once per evaluator
    (StyleGAN2-ADA caches them too): every periodic evaluation of a run compares with the same
    reals, and at 50k x 2048 they cost seconds of host time."""
    if num not in self._real_statistics:
      self._real_statistics[num] = distances.feature_statistics(self.reference(num)[0])
    return self._real_statistics[num]

  @staticmethod
  def _save_reference(path: str, features: np.ndarray, labels: np.ndarray,
                      identity: dict) -> None:
    """Process 0 writes the cache file; then every other process writes its own copy if it does
    not see one (a cache dir local to each host), so that every host hits at the next start
    while a shared cache dir is written once. Every process holds all the features."""
    def save():
      try:
        suite.save_reference(path, features, labels, identity)
      # A cache, not a result: the evaluation goes on without it. Any error (a MemoryError while
      # writing, too): raised on process 0 alone, it would pair that process's next collective
      # with the others' barrier below, and the processes would run on out of step.
      except Exception as e:  # pylint: disable=broad-except
        log.warning("could not cache the real features in %s (%s); set eval.cache_dir to a "
                    "writable folder to reuse them", path, e)

    if jax.process_index() == 0:
      save()
    if jax.process_count() > 1:
      multihost.all_processes(True)  # process 0's write is complete (a barrier)
      if jax.process_index() != 0 and not os.path.exists(path):
        save()

  def _real_chunks(self, num: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    # Flipping runs' reals hash their mirrored pixels: their own cache entry. Chunks of an
    # Inception batch: a stop request waits for one batch at most.
    for chunk in real_chunks(self.source, num, mirror=self.config.data.random_flip,
                             chunk=self.extractor.global_batch):
      self._stop_if_asked()
      yield chunk

  def _stop_if_asked(self) -> None:
    if self.should_stop():
      raise EvaluationStopped("the evaluation was cut short by a stop request")

  def _local_reference(self, num: int) -> tuple:
    """This process's reals' labels, their cache identity and path, the cached features or
    None, and the reals' digest (`unordered_digest`)."""
    rows: list[bytes] = []
    identity, labels = reference_identity(row_digests(self._real_chunks(num), rows),
                                          self.extractor.weights_id)
    path = suite.reference_path(self.cache, identity)
    cached = suite.load_reference(path)
    if cached is not None and len(cached[0]) != len(labels):
      cached = None  # a damaged or foreign file: recompute
    return labels, identity, path, cached, unordered_digest(rows)

  def fake_labels(self, real_labels: np.ndarray, num: int, seed: int) -> Optional[np.ndarray]:
    """Label rows for `num` fakes, drawn from the reals' rows (None when unconditional)."""
    if self.config.data.num_classes <= 0:
      return None
    return np.random.default_rng(seed).choice(real_labels, num).astype(np.int32)

  def fake_chunks(self, ema_params: Any, g_batch_stats: Any, num: int, real_labels: np.ndarray,
                  seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, images) per sampler call: this process's share of each chunk of `num` uint8
    samples of the EMA generator (all of it on one process) and their indices, in fixed-size
    chunks (one compilation). A collective iterator: every process must consume all of it."""
    z = sample_inputs.latents(seed, num, self.config.model.z_dim)
    labels = self.fake_labels(real_labels, num, seed)
    statistics = self.statistics(ema_params, g_batch_stats)
    # Not sampled ahead: each chunk's Inception batches would wait behind the next chunk's
    # sampling on the device (timed as Inception's) and share its memory with it.
    return sampling.sample_in_chunks(self.sampler, ema_params, statistics, z, labels,
                                     self.chunk, self.batch_sharding, ahead=False)

  def fake_features(self, ema_params: Any, g_batch_stats: Any, num: int, real_labels: np.ndarray,
                    seed: int) -> np.ndarray:
    """Features of `num` fakes, on every process: each process extracts its share of each chunk
    as it is sampled (host memory holds a chunk of images, not the set), then they are
    gathered."""
    chunks = self.fake_chunks(ema_params, g_batch_stats, num, real_labels, seed)
    rows: list[np.ndarray] = []

    def images() -> Iterator[np.ndarray]:
      self._stop_if_asked()
      for chunk_rows, chunk_images in chunks:
        rows.append(chunk_rows)
        yield chunk_images
        self._stop_if_asked()  # before the next chunk is sampled

    def extract() -> np.ndarray:
      try:
        return self.extractor.stream(images(), num if jax.process_count() == 1 else None,
                                     "inception (fakes)")
      except BaseException:
        # The sampler is collective: a process whose extraction failed (or was interrupted)
        # samples the remaining chunks with the others before the failure is agreed. A failure
        # of the sampler itself on one process only is not covered (nor was it before).
        if jax.process_count() > 1:
          for _ in chunks:
            pass
        raise

    features = multihost.agreed(extract, "feature extraction")
    return multihost.gather_rows(np.concatenate(rows), features, num)

  def evaluate(self, ema_params: Any, g_batch_stats: Any, num_samples: int, num_real: int = 0,
               seed: int = 0, keep_going: bool = False) -> dict:
    """{metric: value, ..., num_samples, num_real, inception_images_per_sec, seconds}.
    `keep_going` (training): a metric that fails is logged and marked `<name>_failed`, and the
    others are kept; otherwise its error is raised."""
    start = time.perf_counter()
    num_real = reals_for(self.config, num_samples, num_real)
    real, real_labels = self.reference(num_real)
    fake = self.fake_features(ema_params, g_batch_stats, num_samples, real_labels, seed)
    conditional = self.config.data.num_classes > 0
    failed: list[str] = []

    def metric_failed(name: str, error: Exception) -> None:
      # Its traceback once (a bug in a metric would otherwise fail every evaluation of a long
      # run with one line to go on); a line each time after.
      log.error("metric %s failed (%s: %s); the other metrics are kept", name,
                type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "",
                exc_info=error if name not in self._traced else None)
      self._traced.add(name)
      failed.append(name)

    results = suite.compute(real, fake, self.names,
                            real_labels if conditional else None,
                            self.fake_labels(real_labels, num_samples, seed),
                            on_error=metric_failed if keep_going else None,
                            real_statistics=lambda: self.real_statistics(num_real))
    results.update({f"{name}_failed": 1 for name in failed})
    if "per_class_fid" in self.names and "per_class_fid" not in failed:
      # Every class of the model, in order: one the evaluation's reals (and so its fakes) lack
      # is null with count 0, not a missing key.
      per_class = {k: v for k, v in results.items() if k.startswith("fid_class_")}
      results = {k: v for k, v in results.items() if k not in per_class}
      for c in range(self.config.data.num_classes):
        results[f"fid_class_{c}"] = per_class.pop(f"fid_class_{c}", None)
        results[f"fid_class_{c}_n"] = per_class.pop(f"fid_class_{c}_n", 0)
      results.update(per_class)  # none expected: labels are < num_classes
    if "per_class_fid" in self.names and getattr(self.source, "class_names", None):
      results["class_names"] = list(self.source.class_names)  # fid_class_<k>: class_names[k]
    results.update(num_samples=int(num_samples), num_real=int(len(real)),
                   inception_images_per_sec=self.extractor.last_images_per_sec,
                   seconds=time.perf_counter() - start)
    return results
