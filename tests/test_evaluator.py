"""evaluator and evaluate's argument checks: the real-feature cache, the best-FID bookkeeping and
bad arguments, with a stand-in Inception (the real network's tests are test_features.py and
test_evaluate.py, which need its weights)."""

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import JOIN_TWO_PROCESSES, tiny_config
from jaxgan import evaluator, periodic_eval


class Extractor:
  """Per-image features that depend on the image only, as Inception's do."""
  global_batch, weights_id, last_images_per_sec = 4, "stub", None

  def __init__(self):
    self.calls, self.largest = 0, 0  # streams; most images handed over at once

  def __call__(self, images, desc=""):
    return images.reshape(len(images), -1)[:, :8].astype(np.float32)

  def stream(self, chunks, total=None, desc=""):
    self.calls += 1
    chunks = list(chunks)
    self.largest = max([self.largest] + [len(c) for c in chunks])
    return np.concatenate([self(c) for c in chunks])


class Source:
  num_examples = 6

  def batches(self, batch_size, start_step):
    rng = np.random.default_rng(0)
    while True:
      yield {"image": rng.integers(0, 255, (batch_size, 4, 4, 3), np.uint8),
             "label": np.zeros(batch_size, np.int32)}


@pytest.mark.parametrize("failure", ["unwritable", "memory"])
def test_a_failed_cache_write_costs_the_cache_not_the_evaluation(tmp_path, caplog, monkeypatch,
                                                                   failure):
  """Any error: with several processes, one raised on process 0 alone would pair its next
  collective with the others' barrier after the write."""
  cache = tmp_path / "cache"
  if failure == "unwritable":
    cache.write_text("a file where the cache folder should be")  # unwritable, even for root
  else:
    def out_of_memory(*args):
      raise MemoryError()

    monkeypatch.setattr(evaluator.suite, "save_reference", out_of_memory)
  config = tiny_config(**{"eval.cache_dir": str(cache)})
  ev = evaluator.Evaluator(config, None, Source(), sampler=None, extractor=Extractor())
  with caplog.at_level(logging.WARNING):
    features, labels = ev.reference(6)
  assert features.shape == (6, 8) and labels.shape == (6,)
  assert "could not cache the real features" in caplog.text


def test_a_failed_or_killed_cache_write_leaves_no_temporary(tmp_path, monkeypatch):
  """A full disk mid-write removes its temporary; one a killed process left (its pid gone) is
  removed by the next write: each is the size of the feature set (400 MB at 50k)."""
  import errno
  import socket
  import subprocess

  from jaxgan.metrics import suite

  path = suite.reference_path(str(tmp_path), {"a": 1})
  gone = subprocess.Popen(["true"])
  gone.wait()
  os.makedirs(os.path.dirname(path))
  stale = f"{path}.{socket.gethostname()}.{gone.pid}.0123abcd.tmp.npz"
  open(stale, "wb").close()
  real_savez = np.savez

  def full_disk(file, **arrays):
    real_savez(file, **arrays)
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(suite.np, "savez", full_disk)
  with pytest.raises(OSError, match="No space left"):
    suite.save_reference(path, np.zeros((2, 3)), np.zeros(2), {"a": 1})
  assert os.listdir(os.path.dirname(path)) == []
  monkeypatch.undo()
  suite.save_reference(path, np.ones((2, 3)), np.zeros(2), {"a": 1})
  assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)]
  np.testing.assert_array_equal(suite.load_reference(path)[0], np.ones((2, 3)))


def test_the_real_features_are_cached_and_reused(tmp_path):
  config = tiny_config(**{"eval.cache_dir": str(tmp_path)})
  first, second = Extractor(), Extractor()
  evaluators = [evaluator.Evaluator(config, None, Source(), sampler=None, extractor=e)
                for e in (first, second)]
  assert evaluators[0].reals_digest(6) is None  # not read yet
  a, _ = evaluators[0].reference(6)
  b, _ = evaluators[1].reference(6)
  assert first.calls == 1 and second.calls == 0  # the second evaluator read the cache file
  np.testing.assert_array_equal(a, b)
  # What the best FID is judged by: known from a cache hit too.
  rows = []
  list(evaluator.row_digests(
      evaluator.real_chunks(Source(), 6, mirror=False, chunk=first.global_batch), rows))
  assert [e.reals_digest(6) for e in evaluators] == [evaluator.unordered_digest(rows)] * 2


def test_the_reals_digest_is_of_their_rows_in_any_order():
  """The same reals in another order (a data order that changed with TensorFlow's version) are
  the same reals to an FID: a best FID must not be forgotten for it, while the feature cache,
  whose rows are in order, keys them apart. Another pixel or label is other reals."""
  images = np.random.default_rng(5).integers(0, 255, (6, 4, 4, 3), np.uint8)
  labels = np.arange(6, dtype=np.int32) % 3

  def digests(images, labels, chunk=2):
    rows = []
    identity, _ = evaluator.reference_identity(evaluator.row_digests(
        ((images[i:i + chunk], labels[i:i + chunk]) for i in range(0, 6, chunk)), rows), "w")
    return evaluator.unordered_digest(rows), identity["content_sha256"]

  reals, key = digests(images, labels)
  order = np.array([3, 0, 5, 1, 4, 2])
  assert digests(images[order], labels[order], chunk=3)[0] == reals
  assert digests(images[order], labels[order])[1] != key  # the cache's key: in order
  changed = images.copy()
  changed[4, 0, 0, 0] ^= 1
  relabelled = labels.copy()
  relabelled[4] = (relabelled[4] + 1) % 3
  assert digests(changed, labels)[0] != reals and digests(images, relabelled)[0] != reals


def test_the_reals_reach_inception_in_chunks_not_as_one_set(tmp_path):
  """Read twice on a cache miss (hashed, then extracted), a chunk at a time: no pass holds the
  set (50k at 256x256: 9.8 GB)."""
  class Large:
    num_examples = 600
    images = np.random.default_rng(3).integers(0, 255, (600, 4, 4, 3), np.uint8)
    passes = 0

    def batches(self, batch_size, start_step):
      self.passes += 1
      for start in range(0, 600, batch_size):
        yield {"image": self.images[start:start + batch_size],
               "label": np.arange(start, min(start + batch_size, 600)) % 3}

  source, extractor = Large(), Extractor()
  ev = evaluator.Evaluator(tiny_config(**{"eval.cache_dir": str(tmp_path)}), None, source,
                           sampler=None, extractor=extractor)
  features, labels = ev.reference(600)
  assert extractor.largest == extractor.global_batch and source.passes == 2  # chunks of a batch
  np.testing.assert_array_equal(features, Extractor()(Large.images))
  np.testing.assert_array_equal(labels, np.arange(600) % 3)


def test_the_reference_key_hashes_the_images_then_the_labels_in_any_chunking():
  """The reals are hashed chunk by chunk; the key is that of the whole set's bytes, so the
  caches written when the set was hashed whole are still hit."""
  import hashlib

  images = np.random.default_rng(2).integers(0, 255, (10, 4, 4, 3), np.uint8)
  labels = np.arange(10, dtype=np.int32) % 3
  whole = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
  for size in (1, 3, 10):
    identity, got = evaluator.reference_identity(
        ((images[i:i + size], labels[i:i + size]) for i in range(0, 10, size)), "w")
    assert identity["content_sha256"] == whole and identity["num_images"] == 10
    assert identity["shape"] == [4, 4, 3] and identity["weights"] == "w"
    np.testing.assert_array_equal(got, labels)


def test_a_flipping_runs_reals_are_half_mirrored_with_their_own_cache(tmp_path):
  """A run with data.random_flip trains on mirrored reals half the time: its reference mirrors a
  seeded half of them too (StyleGAN2-ADA's --mirror), cached apart from the plain reals, and its
  best-FID settings say so (a best measured against unmirrored reals is not compared with)."""
  class Many:
    num_examples = 64
    images = np.random.default_rng(1).integers(0, 255, (64, 4, 4, 3), np.uint8)

    def batches(self, batch_size, start_step):
      for start in range(0, 64, batch_size):
        yield {"image": self.images[start:start + batch_size],
               "label": np.zeros(len(self.images[start:start + batch_size]), np.int32)}

  plain = np.concatenate([i for i, _ in evaluator.real_chunks(Many(), 64)])
  mirrored = np.concatenate([i for i, _ in evaluator.real_chunks(Many(), 64, mirror=True)])
  flipped = [i for i in range(64) if not np.array_equal(mirrored[i], plain[i])]
  assert 16 < len(flipped) < 48  # about half
  for i in range(64):
    np.testing.assert_array_equal(mirrored[i], plain[i, :, ::-1] if i in flipped else plain[i])
  # The same ones in every pass, whatever the chunking.
  again = np.concatenate([i for i, _ in evaluator.real_chunks(Many(), 64, mirror=True, chunk=5)])
  np.testing.assert_array_equal(again, mirrored)

  plain_config = tiny_config(**{"eval.cache_dir": str(tmp_path)})
  flip_config = tiny_config(**{"eval.cache_dir": str(tmp_path), "data.random_flip": True})
  plain_features, _ = evaluator.Evaluator(plain_config, None, Many(), sampler=None,
                                          extractor=Extractor()).reference(64)
  flip_features, _ = evaluator.Evaluator(flip_config, None, Many(), sampler=None,
                                         extractor=Extractor()).reference(64)
  np.testing.assert_array_equal(plain_features, Extractor()(plain))
  np.testing.assert_array_equal(flip_features, Extractor()(mirrored))
  assert len(os.listdir(tmp_path / "reference")) == 2

  settings = lambda config, where: periodic_eval.PeriodicEval(
      config, str(tmp_path / where), FixedFid([]), Writer(), lambda s: {}, 0).settings
  assert "mirrored_reals" not in settings(plain_config, "a")  # their old bests still compare
  assert settings(flip_config, "b")["mirrored_reals"] is True


def test_the_fakes_use_the_statistics_the_evaluator_is_given():
  """The trainer hands its own EMA statistics function over, to share its grids' computation."""
  given, seen = [], []

  def statistics(ema_params, g_batch_stats):
    given.append((ema_params, g_batch_stats))
    return {"standing": 1}

  def sampler(params, stats, z, labels):
    seen.append(stats)
    return jnp.zeros((len(z), 2, 2, 3), jnp.uint8)

  ev = evaluator.Evaluator(tiny_config(), None, Source(), sampler=sampler, extractor=Extractor(),
                           statistics=statistics)
  ev.fake_features("ema", {"raw": 0}, 6, np.zeros(6, np.int32), seed=0)
  assert given == [("ema", {"raw": 0})] and seen and all(s == {"standing": 1} for s in seen)


def test_the_fakes_are_extracted_chunk_by_chunk_as_they_are_sampled():
  """Host memory holds a chunk of fakes at a time, not the set (50k at 256x256: 9.8 GB): the
  extractor takes each chunk as it is sampled, and the next is sampled only then (not ahead,
  where Inception's batches would wait behind it on the device)."""
  events, sampled = [], []

  def sampler(params, stats, z, labels):
    events.append(("sample", len(z)))
    sampled.append(np.random.default_rng(len(sampled)).integers(0, 255, (len(z), 4, 4, 3)))
    return jnp.asarray(sampled[-1], jnp.uint8)

  class Lazy(Extractor):
    def stream(self, chunks, total=None, desc=""):
      features = []
      for chunk in chunks:
        events.append(("extract", len(chunk)))
        features.append(self(chunk))
      return np.concatenate(features)

  config = tiny_config(**{"eval.batch_size": 4})
  ev = evaluator.Evaluator(config, None, Source(), sampler=sampler, extractor=Lazy(),
                           statistics=lambda params, stats: stats)
  features = ev.fake_features(None, None, 10, np.zeros(6, np.int32), seed=0)
  assert events == [("sample", 4), ("extract", 4), ("sample", 4), ("extract", 4), ("sample", 4),
                    ("extract", 2)]
  np.testing.assert_array_equal(
      features, Extractor()(np.concatenate(sampled).astype(np.uint8)[:10]))


def test_a_failing_metric_costs_itself_in_training_and_raises_elsewhere(monkeypatch, caplog):
  """KID out of accelerator memory: training's evaluation keeps FID and marks kid_failed;
  `evaluate` (keep_going off) raises it."""
  def out_of_memory(*args, **kwargs):
    raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 800 MB")

  monkeypatch.setattr(evaluator.suite.kid, "kernel_inception_distance", out_of_memory)

  def sampler(params, stats, z, labels):
    return jnp.asarray(np.random.default_rng(len(z)).integers(0, 255, (len(z), 4, 4, 3)),
                       jnp.uint8)

  config = tiny_config(**{"eval.metrics": "fid,kid", "eval.standing_stats_batches": 0})
  ev = evaluator.Evaluator(config, None, Source(), sampler=sampler, extractor=Extractor(),
                           statistics=lambda params, stats: stats)
  with caplog.at_level(logging.ERROR):
    results = ev.evaluate(None, None, 6, keep_going=True)
  assert np.isfinite(results["fid"]) and results["kid_failed"] == 1 and "kid_mean" not in results
  assert "metric kid failed (MemoryError: RESOURCE_EXHAUSTED" in caplog.text
  with caplog.at_level(logging.ERROR):
    ev.evaluate(None, None, 6, keep_going=True)  # failing again: a line, no second traceback
  told = [r for r in caplog.records if "metric kid failed" in r.getMessage()]
  assert len(told) == 2 and told[0].exc_info[0] is MemoryError and told[1].exc_info is None
  with pytest.raises(MemoryError):
    ev.evaluate(None, None, 6)


def test_per_class_fid_reports_every_class_of_the_model_in_order(tmp_path):
  """A class the evaluation's reals lack (so its fakes, drawn from the reals' labels, too) was a
  missing key: a result's keys then varied from class to class and from run to run."""
  def sampler(params, stats, z, labels):
    return jnp.asarray(np.random.default_rng(len(z)).integers(0, 255, (len(z), 4, 4, 3)),
                       jnp.uint8)

  config = tiny_config(**{"eval.metrics": "per_class_fid", "eval.standing_stats_batches": 0,
                          "eval.cache_dir": str(tmp_path)})  # 3 classes; Source's labels are 0
  ev = evaluator.Evaluator(config, None, Source(), sampler=sampler, extractor=Extractor(),
                           statistics=lambda params, stats: stats)
  results = ev.evaluate(None, None, 8, num_real=6)
  per_class = [(k, v) for k, v in results.items() if k.startswith("fid_class_")]
  assert [k for k, _ in per_class] == [f"fid_class_{c}{n}" for c in range(3) for n in ("", "_n")]
  assert np.isfinite(results["fid_class_0"]) and results["fid_class_0_n"] == 6
  assert [v for k, v in per_class[2:]] == [None, 0, None, 0]


def test_the_reals_statistics_are_computed_once_across_evaluations(tmp_path, monkeypatch):
  """FID's mean and covariance of the reals (seconds at 50k x 2048) are the same at every
  periodic evaluation: computed once, and the FID is what the uncached computation gives."""
  from jaxgan.metrics import distances

  computed = []
  feature_statistics = distances.feature_statistics
  monkeypatch.setattr(distances, "feature_statistics",
                      lambda x: (computed.append(len(x)), feature_statistics(x))[1])

  def sampler(params, stats, z, labels):
    return jnp.asarray(np.random.default_rng(len(z)).integers(0, 255, (len(z), 4, 4, 3)),
                       jnp.uint8)

  class Recording(Extractor):
    def __init__(self):
      super().__init__()
      self.outputs = []

    def __call__(self, images, desc=""):
      self.outputs.append(super().__call__(images, desc))
      return self.outputs[-1]

  extractor = Recording()
  config = tiny_config(**{"eval.metrics": "fid", "eval.standing_stats_batches": 0,
                          "eval.cache_dir": str(tmp_path)})
  ev = evaluator.Evaluator(config, None, Source(), sampler=sampler, extractor=extractor,
                           statistics=lambda params, stats: stats)
  # 8 fakes of 8-d features: FID takes the covariance path (not the small-N one).
  first, second = (ev.evaluate(None, None, 8, num_real=6)["fid"] for _ in range(2))
  assert computed == [6, 8, 8]  # the reals once, the fakes at each evaluation
  computed.clear()
  assert first == second == distances.fid(ev.reference(6)[0], extractor.outputs[-1])
  assert computed == [6, 8]


class Writer:
  def __init__(self):
    self.rows = []

  def write_scalars(self, step, scalars):
    self.rows.append((step, scalars))


class FixedFid:
  """An Evaluator whose evaluate() returns the next FID of a list."""

  def __init__(self, fids, source=None, reals="reals-a"):
    self.fids, self.extractor, self.source = list(fids), Extractor(), source
    self.reals, self.evaluated = reals, False

  def evaluate(self, *args, **kwargs):
    self.evaluated = True
    return {"fid": self.fids.pop(0)}

  def reals_digest(self, num):
    return self.reals if self.evaluated else None  # known once an evaluation read the reals

  def should_stop(self):
    return False


def test_a_stop_request_cuts_an_evaluation_short_between_chunks(tmp_path):
  """SIGTERM during an evaluation (minutes of Inception): the fakes stop before their next chunk
  is sampled and the reals before their next chunk is read, and PeriodicEval writes no row, so
  that the rerun (resuming at the checkpoint written before the evaluation) evaluates the step."""
  asked = []

  def sampler(params, stats, z, labels):
    return jnp.zeros((len(z), 4, 4, 3), jnp.uint8)

  config = tiny_config(**{"eval.batch_size": 4, "eval.cache_dir": str(tmp_path / "cache"),
                          "train.eval_every": 2, "train.eval_num_samples": 12})
  extractor = Extractor()

  class Lazy(Extractor):
    def stream(self, chunks, total=None, desc=""):
      return np.concatenate([extractor(chunk) for chunk in chunks])

  stop_after = [99]

  def should_stop():
    asked.append(1)
    return len(asked) > stop_after[0]

  ev = evaluator.Evaluator(config, None, Source(), sampler=sampler, extractor=Lazy(),
                           statistics=lambda params, stats: stats, should_stop=should_stop)
  stop_after[0] = 2  # two checks pass: before the first chunk and after it
  with pytest.raises(evaluator.EvaluationStopped):
    ev.fake_features(None, None, 12, np.zeros(6, np.int32), seed=0)
  assert len(asked) == 3  # stopped before the second of three chunks
  asked.clear()
  stop_after[0] = 0
  with pytest.raises(evaluator.EvaluationStopped):
    ev.reference(6)

  writer = Writer()
  periodic = periodic_eval.PeriodicEval(config, str(tmp_path / "w"), ev, writer, lambda s: {}, 0)
  assert periodic(2, _state(1.0)) == {} and writer.rows == []  # no eval/failed row
  stop_after[0] = 10**9  # no stop: a failure is a row (here: no sampler for the fakes)
  ev.sampler = None
  assert periodic(2, _state(1.0)) == {} and writer.rows == [(2, {"eval/failed": 1})]


def _state(value):
  return type("State", (), {"ema_params": None, "g_batch_stats": None,
                            "w": jnp.full(2, value)})()


def test_the_best_fid_survives_a_restart_and_only_a_better_one_replaces_it(tmp_path, monkeypatch,
                                                                          caplog):
  # PeriodicEval saves the whole state; a plain dict stands in for the TrainState here.
  saved = []
  config = tiny_config(**{"train.eval_every": 2, "eval.cache_dir": str(tmp_path / "cache")})
  workdir = str(tmp_path / "w")
  periodic = periodic_eval.PeriodicEval(config, workdir, FixedFid([30.0, 40.0]), Writer(),
                                        meta=lambda step: {"step": step}, start_step=0)
  real_save = periodic.best.save
  monkeypatch.setattr(periodic.best, "save", lambda step, state, meta: saved.append(step) or
                      real_save(step, {"w": state.w}, meta))
  periodic(2, _state(2.0))
  periodic(4, _state(4.0))  # worse: not saved
  periodic.close()
  assert saved == [2]

  again = periodic_eval.PeriodicEval(config, workdir, FixedFid([35.0, 20.0]), Writer(),
                                     meta=lambda step: {"step": step}, start_step=4)
  assert again.best_fid == 30.0  # read back from checkpoints_best's meta
  real_save = again.best.save
  monkeypatch.setattr(again.best, "save", lambda step, state, meta: saved.append(step) or
                      real_save(step, {"w": state.w}, meta))
  with caplog.at_level(logging.INFO, logger="jaxgan"):
    again(6, _state(6.0))  # 35: worse than the 30 read back, not saved
    again(8, _state(8.0))  # 20: better, saved
  assert saved == [2, 8] and again.best_fid == 20.0
  # The log says which evaluation made a new best, and where it went.
  assert [m for m in caplog.messages if "new best" in m] == [
      f"step 8: new best FID 20, saved to {workdir}/checkpoints_best"]
  caplog.clear()
  again.close()
  # An earlier best that a kill left beside the newest (orbax deletes it after the save): removed
  # at the next start, not kept for good.
  from jaxgan import checkpoint as ckpt_lib
  best_dir = os.path.join(workdir, "checkpoints_best")
  leftover = ckpt_lib.Checkpointer(best_dir, keep=2, async_save=False)
  leftover.save(6, {"w": jnp.full(2, 6.0)}, {"step": 6})
  leftover.close()
  assert sorted(os.listdir(best_dir)) == ["6", "8"]
  periodic_eval.PeriodicEval(config, workdir, FixedFid([]), Writer(), lambda s: {}, 8).close()
  assert os.listdir(best_dir) == ["8"]
  # A failure while reading the best back (the trainer has nothing to close yet) closes its
  # checkpointer (orbax's threads) before it is raised.
  closed = []
  monkeypatch.setattr(ckpt_lib.Checkpointer, "close", lambda self: closed.append(self.directory))
  monkeypatch.setattr(periodic_eval.PeriodicEval, "_read_best",
                      lambda *args: (_ for _ in ()).throw(OSError("lost mount")))
  with pytest.raises(OSError, match="lost mount"):
    periodic_eval.PeriodicEval(config, workdir, FixedFid([]), Writer(), lambda s: {}, 8)
  assert closed == [best_dir]
  monkeypatch.undo()
  # Other eval settings: FIDs are not comparable, so the old best is forgotten.
  other = tiny_config(**{"train.eval_every": 2, "train.eval_num_samples": 64})
  fresh = periodic_eval.PeriodicEval(other, workdir, FixedFid([]), Writer(), lambda s: {}, 4)
  assert fresh.best_fid == float("inf")
  fresh.close()
  # So do other reals: a run resumed on changed data (its data fingerprint differs).
  fresh = periodic_eval.PeriodicEval(config, workdir, FixedFid([]), Writer(), lambda s: {}, 4,
                                     data_fingerprint=0x1234)
  assert fresh.best_fid == float("inf")
  fresh.close()
  # So do other reals of the same data: the first num_real of another order (a subset).
  subset = type("Source", (), {"num_examples": 10**6})()
  reals = evaluator.reals_for(config, config.train.eval_num_samples)
  with_order = lambda order: periodic_eval.PeriodicEval(
      config, str(tmp_path / "subset"), FixedFid([20.0], subset), Writer(),
      lambda s: {"step": s}, 4, order_fingerprint=order)
  first = with_order(0x77)
  assert first.settings["order_fingerprint"] == 0x77
  real_save = first.best.save
  monkeypatch.setattr(first.best, "save", lambda step, state, meta:
                      real_save(step, {"w": state.w}, meta))
  first(4, _state(4.0))  # the best, with its order
  first.close()
  for order, best in ((0x77, 20.0), (0x78, float("inf"))):
    later = with_order(order)
    assert later.best_fid == best, order
    later.close()
  # Fewer reals than asked for: said (the reference uses them all).
  with caplog.at_level(logging.WARNING):
    periodic_eval.PeriodicEval(config, str(tmp_path / "few"), FixedFid([], type(
        "Source", (), {"num_examples": reals - 1})()), Writer(), lambda s: {}, 0).close()
  assert f"asks for {reals} real images, but the data holds {reals - 1}" in caplog.text
  # The whole set, unmirrored: the order changes nothing, and old bests still compare.
  whole = type("Source", (), {"num_examples": reals})()
  assert "order_fingerprint" not in periodic_eval.PeriodicEval(
      config, str(tmp_path / "whole"), FixedFid([], whole), Writer(), lambda s: {}, 0,
      order_fingerprint=0x77).settings
  # So do the EMA generator's BatchNorm statistics (standing vs the raw G's: ~12 % of FID).
  shared = tiny_config(**{"train.eval_every": 2, "eval.standing_stats_batches": 0})
  fresh = periodic_eval.PeriodicEval(shared, workdir, FixedFid([]), Writer(), lambda s: {}, 4)
  assert fresh.best_fid == float("inf")
  fresh.close()


@pytest.mark.parametrize("reals, saved_again", [("reals-a", []), ("reals-b", [6]),
                                                ("unrecorded", []), ("in order", [])])
def test_a_best_measured_against_other_reals_is_forgotten_at_the_first_evaluation(
    tmp_path, reals, saved_again):
  """The data fingerprint samples the images: a data set changed where it does not look passes
  it, and its FIDs are then against other reals. Their full hash, known once an evaluation has
  read them, is saved with the best and compared at the restart's first evaluation."""
  config = tiny_config(**{"train.eval_every": 2})
  workdir, saved = str(tmp_path / "w"), []

  def periodic(fids, start, digest):
    p = periodic_eval.PeriodicEval(config, workdir, FixedFid(fids, reals=digest), Writer(),
                                   lambda s: {"step": s}, start, data_fingerprint=0x77)
    p.best.save = lambda step, state, meta, save=p.best.save: (
        saved.append(step), save(step, {"w": state.w}, meta))[1]
    return p

  first = periodic([30.0], 0, "reals-a")
  if reals == "unrecorded":  # a best saved before the reals' hash was (judged as before)
    first._check_reals = lambda: None
  if reals == "in order":  # as saved on 2026-12-04: an in-order hash, not comparable
    first._check_reals = lambda: first.settings.update(reals_sha256="0d736fcc83fa")
  first(4, _state(4.0))
  first.close()
  assert saved == [4]
  again = periodic([35.0], 4, reals if reals.startswith("reals") else "reals-a")
  assert again.best_fid == 30.0  # not known to differ before the reals are read
  again(6, _state(6.0))  # 35 is worse than 30, but against other reals: the new best
  assert saved == [4] + saved_again
  assert again.best_fid == (35.0 if saved_again else 30.0)
  again.close()


@pytest.mark.parametrize("now, kept", [(0x77, True), (0x55, False)])
def test_a_best_saved_before_its_settings_held_the_data_is_judged_by_its_meta(tmp_path, now,
                                                                             kept):
  """Best checkpoints from before the data fingerprint joined the eval settings record it in
  their meta: kept for the same data (forgetting it would delete it for a worse one), not for
  other data."""
  config = tiny_config(**{"train.eval_every": 2, "eval.cache_dir": str(tmp_path / "cache")})
  workdir = str(tmp_path / "w")
  old = periodic_eval.PeriodicEval(config, workdir, FixedFid([30.0]), Writer(),
                                   lambda s: {"data_fingerprint": 0x77}, 0)
  del old.settings["data_fingerprint"]  # as jaxgan wrote them before
  old.best.save = lambda step, state, meta, save=old.best.save: save(step, {"w": state.w}, meta)
  old(2, _state(2.0))
  old.close()
  again = periodic_eval.PeriodicEval(config, workdir, FixedFid([]), Writer(), lambda s: {}, 2,
                                     data_fingerprint=now)
  assert again.best_fid == (30.0 if kept else float("inf"))
  again.close()


def test_a_best_past_the_start_step_is_set_aside_not_compared_with(tmp_path):
  """A best from steps the run does not continue (another run in this workdir; a stretch after
  the checkpoint resumed from) must neither be the bar to beat nor what --checkpoint best gives."""
  config = tiny_config(**{"train.eval_every": 2})
  workdir = str(tmp_path / "w")
  first = periodic_eval.PeriodicEval(config, workdir, FixedFid([10.0]), Writer(), lambda s: {}, 0)
  first.best.save = lambda step, state, meta, save=first.best.save: save(step, {"w": state.w},
                                                                         meta)
  first(4, _state(4.0))
  first.close()
  kept = periodic_eval.PeriodicEval(config, workdir, FixedFid([]), Writer(), lambda s: {}, 4)
  assert kept.best_fid == 10.0  # resumed at (or after) the best's step: it is this run's
  kept.close()
  again = periodic_eval.PeriodicEval(config, workdir, FixedFid([]), Writer(), lambda s: {}, 2)
  assert again.best_fid == float("inf")
  again.close()
  assert os.listdir(os.path.join(workdir, "checkpoints_best")) == []
  assert [n.split("-")[0] for n in os.listdir(os.path.join(workdir, "checkpoints_best.superseded"))
          ] == ["4"]


def test_the_eval_row_follows_the_completed_best_save(tmp_path):
  """A run resuming at an evaluated step re-evaluates it only if its row is missing: the row must
  not be on disk before the best checkpoint it stands for."""
  workdir = str(tmp_path / "w")
  on_disk = []

  class CheckingWriter(Writer):
    def write_scalars(self, step, scalars):
      on_disk.append(os.listdir(os.path.join(workdir, "checkpoints_best")))
      super().write_scalars(step, scalars)

  periodic = periodic_eval.PeriodicEval(tiny_config(**{"train.eval_every": 2}), workdir,
                                        FixedFid([10.0]), CheckingWriter(), lambda s: {}, 0)
  periodic.best.save = lambda step, state, meta, save=periodic.best.save: save(
      step, {"w": state.w}, meta)
  periodic(2, _state(2.0))
  periodic.close()
  assert on_disk == [["2"]]


@pytest.mark.parametrize("args, message", [
    (["--real", "{tmp}/a", "--fake", "{tmp}/b"], "--real {tmp}/a: no such folder"),
    (["--real", "{tmp}", "--fake", "{tmp}/missing"], "--fake {tmp}/missing: no such folder"),
    (["--real", "{tmp}"], "two-set mode needs both --real PATH and --fake PATH"),
    ([], "pass either --workdir DIR or both"),
    (["--workdir", "{tmp}/run"], "{tmp}/run/config.json not found"),
    (["--workdir", "{tmp}", "--batch-size", "-1"], "--batch-size must be >= 1"),
    # Padded with zeros in host memory after the data was read: a MemoryError traceback.
    (["--real", "{tmp}/three", "--fake", "{tmp}/three", "--batch-size", "100000000"],
     "--batch-size 100000000: an Inception batch of 100000000 images (its 299x299 float32 "
     "inputs alone) takes 9.991e+04 GiB, more than this host's"),
    (["--workdir", "{tmp}", "--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["--workdir", "{tmp}", "--num-real", "-5"], "--num-real must be 0 (the run's eval.num_real) "
     "or >= 2 for --metrics fid,kid, got -5"),  # the run's eval.metrics
    # precision/recall's 3rd neighbour must be another sample: 4 per set, refused up front (it
    # used to fail after every feature was extracted, losing FID and KID with it).
    (["--workdir", "{tmp}", "--num-samples", "3", "--metrics", "fid,pr"],
     "--num-samples must be >= 4 for --metrics fid,pr (or 0: the run's train.eval_num_samples), "
     "got 3"),
    (["--workdir", "{tmp}", "--num-samples", "-1"], "--num-samples must be >= 2 for --metrics "
     "fid,kid (or 0: the run's train.eval_num_samples), got -1"),
    # Not given: the run's value is at fault, and the flag is the remedy (it was told to pass 0).
    (["--workdir", "{tmp}/one_sample"], "the run's train.eval_num_samples is 1, and --metrics "
     "fid,kid needs at least 2 samples: pass --num-samples 2 or more"),
    # In the flag's name (was '{path}: no such weights file', named by no flag).
    (["--workdir", "{tmp}", "--weights", "{tmp}/none.pt"], "--weights {tmp}/none.pt: no such "
     "file; pass the FID Inception weights file, or leave the flag out (to get the weights, run"),
    (["--real", "{tmp}", "--fake", "{tmp}", "--weights", "{tmp}"], "--weights {tmp}: a folder; "
     "pass the FID Inception weights file"),
    (["--workdir", "{tmp}", "--num-real", "3", "--metrics", "pr"], "--num-real must be 0"),
    (["--real", "{tmp}/three", "--fake", "{tmp}/three", "--metrics", "fid,pr"],
     "--real {tmp}/three holds 3 image(s); --metrics fid,pr needs at least 4 per set"),
    (["--real", "{tmp}/damaged", "--fake", "{tmp}/three"],
     "{tmp}/damaged/dataset_info.json is damaged (JSONDecodeError"),
    # The fakes are checked before the reals' Inception too (it ran for minutes first).
    (["--real", "{tmp}/three", "--fake", "{tmp}/empty"],
     "--fake {tmp}/empty: no image files (.jpg, .png, .webp, ...) found in it or below it"),
    (["--real", "{tmp}/three", "--fake", "{tmp}/config.json"],
     "--fake {tmp}/config.json: not a folder; pass a folder of images or a prepared data set"),
    (["--workdir", "{tmp}", "--metrics", "fid,bogus"], "--metrics 'fid,bogus': unknown metric bogus"),
    (["--real", "{tmp}", "--fake", "{tmp}", "--metrics", "per_class_fid"],
     "--metrics per_class_fid needs class labels"),
    # A run's workdir as a set: its sample grids were read as the images.
    (["--real", "{tmp}/trained", "--fake", "{tmp}/three"], "--real {tmp}/trained is a training "
     "run's workdir, whose images are its sample grids: evaluate its generator with --workdir "
     "{tmp}/trained, or pass a set `generate` wrote"),
    (["--real", "{tmp}", "--fake", "{tmp}", "--image-size", "-1"], "--image-size must be >= 1"),
    (["--workdir", "{tmp}", "--image-size", "64"], "--image-size is for two-set mode"),
    # One image at 100000 takes 28 GiB: the OS killed evaluate, without a word.
    (["--real", "{tmp}", "--fake", "{tmp}", "--image-size", "100000"],
     "--image-size must be at most 8192 (0 = native sizes), got 100000"),
    # Two-set mode uses every image: workdir flags are refused, not ignored.
    (["--real", "{tmp}", "--fake", "{tmp}", "--num-samples", "5000"],
     "--num-samples is for workdir mode (--workdir); two-set mode (--real/--fake) uses every"),
    (["--real", "{tmp}", "--fake", "{tmp}", "--checkpoint", "best"],
     "--checkpoint is for workdir mode"),
    (["--real", "{tmp}", "--fake", "{tmp}", "--data-path", "{tmp}"], "--data-path is for workdir"),
    (["--workdir", "{tmp}", "--data_path", "/x"], "--data-path: this run trained on "
     "data.source='synthetic', which reads no data.path; drop --data-path"),  # '_' spells it too
    (["--workdir", "{tmp}/tfds_run", "--data-path", "/x"], "--data-path: this run trained on "
     "data.source='tfds', which reads no data.path; drop --data-path"),
    # A folder run given a prepared set: its shards were passed over, and 'no images in it'.
    (["--workdir", "{tmp}/folder_run", "--data-path", "{tmp}/damaged"], "--data-path "
     "{tmp}/damaged is a prepared data set, and this run trained on data.source='folder': pass "
     "the data it trained on, as that source reads it"),
    (["--workdir", "{tmp}", "--standing-stats-batches", "-5"],  # was taken as -1
     "--standing-stats-batches must be -1 (the run's), 0 (the raw G's running statistics) or "
     "up to 10000, got -5"),
    (["--workdir", "{tmp}", "--standing-stats-batches", "100000000"],  # 596 GiB of latents
     "--standing-stats-batches must be -1 (the run's), 0 (the raw G's running statistics) or "
     "up to 10000, got 100000000"),
    (["--workdir", "{tmp}", "--checkpoint", "newest"],
     "--checkpoint must be 'latest', 'best' or a step number, got 'newest'"),
    # Local paths only: the real features' cache went to a local folder 'gs:'.
    (["--real", "{tmp}", "--fake", "{tmp}", "--cache-dir", "gs://b/c"],
     "--cache-dir gs://b/c: URIs are not supported; give a local or mounted path"),
    (["--workdir", "gs://b/run"], "--workdir gs://b/run: URIs are not supported"),
    # Given but empty (a shell variable left unset): it meant the default, thousands of samples.
    (["--workdir", "{tmp}", "--metrics", ""], "--metrics '' names no metric: choose from "
     "['fid', 'kid', 'per_class_fid', 'pr'], or leave the flag out for the default (the run's "
     "eval.metrics)"),
    (["--real", "{tmp}", "--fake", "{tmp}", "--metrics", " , "], "--metrics ' , ' names no metric: "
     "choose from ['fid', 'kid', 'per_class_fid', 'pr'], or leave the flag out for the default "
     "(fid,kid)"),
])
def test_evaluate_refuses_bad_arguments_before_reading_images(tmp_path, capsys, args, message):
  from jaxgan import config as config_lib, evaluate

  # A workdir's config.json (its metrics and sample count are workdir mode's defaults).
  (tmp_path / "config.json").write_text(config_lib.to_json(tiny_config()))
  os.makedirs(tmp_path / "three")
  os.makedirs(tmp_path / "empty" / "sub")
  for i in range(3):
    (tmp_path / "three" / f"{i}.png").write_bytes(b"never read")
  os.makedirs(tmp_path / "damaged")
  (tmp_path / "damaged" / "dataset_info.json").write_text("{not json")
  os.makedirs(tmp_path / "trained" / "checkpoints")
  os.makedirs(tmp_path / "trained" / "samples")
  (tmp_path / "trained" / "config.json").write_text(config_lib.to_json(tiny_config()))
  (tmp_path / "trained" / "samples" / "step_0000002.png").write_bytes(b"never read")
  os.makedirs(tmp_path / "folder_run")
  (tmp_path / "folder_run" / "config.json").write_text(config_lib.to_json(tiny_config(
      **{"data.source": "folder", "data.path": str(tmp_path / "three")})))
  os.makedirs(tmp_path / "tfds_run")
  (tmp_path / "tfds_run" / "config.json").write_text(config_lib.to_json(tiny_config(
      **{"data.source": "tfds", "data.tfds_name": "cifar10"})))
  os.makedirs(tmp_path / "one_sample")
  (tmp_path / "one_sample" / "config.json").write_text(config_lib.to_json(tiny_config(
      **{"train.eval_num_samples": 1})))

  assert evaluate.main([a.format(tmp=tmp_path) for a in args]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: " + message.format(tmp=tmp_path)) and "\n" not in err, err


def _forbid_features(monkeypatch) -> None:
  """Fails the test if evaluate extracts a single Inception feature."""
  from jaxgan.metrics import features

  class NoInception:
    def __init__(self, *args):
      pass

    def stream(self, chunks, *args, **kwargs):
      for _ in chunks:
        pytest.fail("extracted features")

  monkeypatch.setattr(features, "FeatureExtractor", NoInception)


@pytest.mark.patches_traced_code
def test_too_few_readable_images_stop_before_any_feature(tmp_path, capsys, monkeypatch):
  """4 files pass the count, but one cannot be read: 3 images are too few for pr (k = 3), said
  before Inception runs on either set."""
  from PIL import Image

  from jaxgan import evaluate

  _forbid_features(monkeypatch)
  os.makedirs(tmp_path / "set")
  for i in range(3):
    Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / "set" / f"{i}.png")
  (tmp_path / "set" / "3.png").write_bytes(b"not a png")
  os.makedirs(tmp_path / "good")
  for i in range(4):
    Image.new("RGB", (16, 16), (0, i, 0)).save(tmp_path / "good" / f"{i}.png")
  # The reals, read in full before their features (an unreadable --fake: the test below).
  args = ["--real", str(tmp_path / "set"), "--fake", str(tmp_path / "good"), "--metrics", "fid,pr"]
  assert evaluate.main(args) == 2
  assert capsys.readouterr().err.strip().endswith(
      "set: 3 readable image(s) left, the metrics need at least 4 per set")


@pytest.mark.patches_traced_code
def test_unreadable_fakes_are_found_before_the_reals_features(tmp_path, capsys, monkeypatch):
  """Every --fake file fails to decode (the count saw files): said before Inception runs on
  the reals, which took minutes to hours first. A folder whose first files all fail is read
  on (a warning): only the whole folder decides."""
  from PIL import Image

  from jaxgan import evaluate
  from jaxgan.data import DataError, image_sets, prepared

  _forbid_features(monkeypatch)
  os.makedirs(tmp_path / "real")
  os.makedirs(tmp_path / "fake")
  for i in range(3):
    Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / "real" / f"{i}.png")
    (tmp_path / "fake" / f"{i}.png").write_bytes(b"cut short")
  args = ["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake")]
  assert evaluate.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f"error: {tmp_path / 'fake'}: 0 of its 3 image files could be read "
                        f"(first failure: {tmp_path / 'fake' / '0.png'}: ") and "\n" not in err

  # Only the first `limit` files are read up front: a warning when they all fail, and the rest
  # are left to the full read; a whole folder with too few readable images is the error.
  for i in range(3):
    Image.new("RGB", (16, 16)).save(tmp_path / "fake" / f"{i + 3}.png")
  assert image_sets.check_readable(str(tmp_path / "fake"), 2, limit=5) == ""
  warning = image_sets.check_readable(str(tmp_path / "fake"), 2, limit=3)
  assert warning.startswith(f"{tmp_path / 'fake'}: 0 of the first 3 of its 6 image files could "
                            "be read") and warning.endswith("the rest are read in full later")
  with pytest.raises(DataError, match="3 of its 6 image files could be read .* at least 4"):
    image_sets.check_readable(str(tmp_path / "fake"), 4, limit=6)
  # A prepared set has nothing to decode, but its size is checked now too.
  prepared.write_prepared(str(tmp_path / "prep"), np.zeros((4, 8, 8, 3), np.uint8),
                          np.zeros(4, np.int32), ["all"], [])
  assert image_sets.check_readable(str(tmp_path / "prep"), 2) == ""
  with pytest.raises(DataError, match="prep was prepared at 8x8, not the 16 asked for"):
    image_sets.check_readable(str(tmp_path / "prep"), 2, image_size=16)
  # A prepared --fake set without its shard: found now too, not after the reals' features.
  shard = tmp_path / "prep" / json.load(open(tmp_path / "prep" / "dataset_info.json"))["shards"][0]
  os.rename(shard, tmp_path / "shard")
  capsys.readouterr()
  assert evaluate.main(["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "prep")]) == 2
  assert capsys.readouterr().err == (f"error: {shard} listed in dataset_info.json is missing; "
                                     "prepare the data set again\n")
  # An edited dataset_info.json whose count is null: one line, not int()'s TypeError.
  os.rename(tmp_path / "shard", shard)
  info = json.load(open(tmp_path / "prep" / "dataset_info.json"))
  json.dump({**info, "num_examples": None}, open(tmp_path / "prep" / "dataset_info.json", "w"))
  assert evaluate.main(["--real", str(tmp_path / "prep"), "--fake", str(tmp_path / "real")]) == 2
  assert capsys.readouterr().err.endswith("is damaged (TypeError: num_examples is null, not an "
                                          "integer); prepare the data set again\n")


@pytest.mark.patches_traced_code
def test_a_subfolder_evaluate_cannot_list_is_a_one_line_error(tmp_path, capsys, monkeypatch):
  """find_images raises OSError for a folder it cannot list (a class would vanish otherwise);
  evaluate let it out as a traceback. Permissions are simulated: root reads any folder."""
  from PIL import Image

  from jaxgan import evaluate

  _forbid_features(monkeypatch)
  for folder in ("real", "real/locked", "fake"):
    os.makedirs(tmp_path / folder)
    for i in range(3):
      Image.new("RGB", (16, 16), (i, 0, 0)).save(tmp_path / folder / f"{i}.png")
  real_walk = os.walk

  def walk(top, onerror=None, followlinks=False):
    for dirpath, dirnames, filenames in real_walk(top, followlinks=followlinks):
      if os.path.basename(dirpath) == "locked":
        onerror(PermissionError(13, "Permission denied", dirpath))
      yield dirpath, dirnames, filenames

  monkeypatch.setattr(os, "walk", walk)
  assert evaluate.main(["--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake")]) == 2
  assert capsys.readouterr().err == (
      f"error: {tmp_path / 'real' / 'locked'}: cannot list folder (Permission denied); check "
      "that it can be read\n")


def test_evaluate_refuses_per_class_fid_of_an_unconditional_run_before_any_image(
    tmp_path, capsys, monkeypatch):
  from jaxgan import data, evaluate, saved_run

  config = tiny_config(**{"data.num_classes": 0})
  monkeypatch.setattr(saved_run, "load_config", lambda *a: config)
  monkeypatch.setattr(saved_run, "load_checkpoint", lambda *a: pytest.fail("read the checkpoint"))
  monkeypatch.setattr(data, "build_source", lambda *a: pytest.fail("read the data"))
  assert evaluate.main(["--workdir", str(tmp_path), "--metrics", "fid,per_class_fid"]) == 2
  err = capsys.readouterr().err.strip()
  assert err == (f"error: --metrics per_class_fid needs class labels: {tmp_path} is an "
                 "unconditional run (data.num_classes = 0); drop it")


def test_image_sets_load_at_native_sizes_or_at_one_size(tmp_path, capsys):
  """evaluate --real/--fake: native sizes compile Inception once per size (warned when many);
  --image-size loads every image as training does, at one size."""
  from PIL import Image

  from jaxgan import offline_eval
  from jaxgan.data import DataError, image_sets, prepared

  folder = tmp_path / "photos"
  folder.mkdir()
  for i in range(offline_eval.MANY_SHAPES + 1):  # nine sizes, one non-square
    Image.new("RGB", (20 + i, 20 + i + (i == 0) * 10), (40 * (i % 6), 0, 0)).save(
        folder / f"{i}.png")

  class Extractor:
    def stream(self, chunks, total=None, desc=""):
      self.total, self.shapes = total, [chunk.shape for chunk in chunks]
      return np.zeros((len(self.shapes), 2048), np.float32)

  extractor = Extractor()
  features, skipped = offline_eval.features_of_set(extractor, str(folder), "real")
  # Read and handed over one image at a time, at its own size.
  assert features.shape == (9, 2048) and skipped == 0 and extractor.total == 9
  assert len(set(extractor.shapes)) == 9 and all(s[0] == 1 for s in extractor.shapes)
  assert (1, 30, 30, 3) in extractor.shapes  # 20x30 padded to a square, not resized
  assert "holds images of at least 9 sizes" in capsys.readouterr().err
  offline_eval.features_of_set(extractor, str(folder), "real", image_size=16)
  assert set(extractor.shapes) == {(1, 16, 16, 3)} and "sizes" not in capsys.readouterr().err
  images = np.concatenate(list(image_sets.iter_image_set(str(folder), 16)))
  # The non-square black one: padded with white to a square, then resized (not stretched).
  assert images[0, 0, 0].min() > 240 and images[0, 8, 8].max() < 10
  prepared.write_prepared(str(tmp_path / "set"), np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2),
                          [], [])
  with pytest.raises(DataError, match="was prepared at 8x8, not the 16 asked for"):
    list(image_sets.iter_image_set(str(tmp_path / "set"), 16))
  assert [c.shape for c in image_sets.iter_image_set(str(tmp_path / "set"), 8)] == [(2, 8, 8, 3)]


BEST_FID_TWO_PROCESSES = JOIN_TWO_PROCESSES + r"""
import collections, json, os
import numpy as np
from jax.sharding import Mesh
from jaxgan import periodic_eval, sharding
from tests.conftest import tiny_config
mesh = Mesh(np.array(jax.devices()), ("data",))
State = collections.namedtuple("State", "ema_params g_batch_stats")
state = State({"w": sharding.put_replicated(np.arange(4, dtype=np.float32), mesh)}, {})

class Stub:  # each process's own FIDs: process 1's disagree with process 0's
  def __init__(self, fids):
    self.fids = list(fids)
    self.extractor = type("Extractor", (), {"weights_id": "stub"})()
  def evaluate(self, *args, **kwargs):
    fid = self.fids.pop(0)  # None: this process's FID metric failed (its other metrics kept)
    return {"fid": fid} if fid is not None else {"fid_failed": 1}
  def reals_digest(self, num):
    return "reals"

class Writer:
  def write_scalars(self, step, scalars):
    pass

config = tiny_config(**{"train.eval_every": 2})
workdir = sys.argv[3]
fids = [[12.0, 10.0, 11.0, 1.0], [11.0, 30.0, 5.0, None]][me]
periodic = periodic_eval.PeriodicEval(config, workdir, Stub(fids), Writer(), meta=lambda s: {},
                                      start_step=0)
seen = []
for step in (2, 4, 6, 8):
  results = periodic(step, state)
  seen.append([results.get("fid"), periodic.best_fid, results.get("fid_failed")])
periodic.close()
again = periodic_eval.PeriodicEval(config, workdir, Stub([]), Writer(), meta=lambda s: {},
                                   start_step=6)
print(json.dumps({"seen": seen, "reread": again.best_fid,
                  "steps": sorted(os.listdir(os.path.join(workdir, "checkpoints_best")))}))
again.close()
"""


def test_two_processes_take_process_0s_fid_and_agree_on_the_best(tmp_path):
  """The best-FID save is collective: with per-process FIDs that disagree (a process's own
  reduction), both use process 0's and save alike; alone, process 1 would have saved step 6.
  A FID that one process could not compute is used by none."""
  from conftest import run_two_processes

  results, _ = run_two_processes(BEST_FID_TWO_PROCESSES, str(tmp_path))
  for r in results:
    # Step 8: process 0's better FID is not used, since process 1 could not compute its own.
    assert r["seen"] == [[12.0, 12.0, None], [10.0, 10.0, None], [11.0, 10.0, None],
                         [None, 10.0, 1]]
    assert r["reread"] == 10.0 and r["steps"] == ["4"]


FAKES_TWO_PROCESSES = JOIN_TWO_PROCESSES + r"""
import json
import numpy as np
from jaxgan import evaluator, models, sample_inputs, sampling, sharding
from tests.conftest import tiny_config
config = tiny_config(**{"eval.standing_stats_batches": 0, "eval.metrics": "fid",
                        "eval.batch_size": 1})
g, _ = models.build_models(config)
variables = g.init({"params": jax.random.PRNGKey(1)}, np.zeros((2, 8), np.float32),
                   np.zeros(2, np.int32), train=False)
# 2 processes x 2 devices, each process's devices not contiguous (as a TPU torus order can make)
d = jax.devices()
mesh = jax.sharding.Mesh(np.array([d[0], d[2], d[1], d[3]]).reshape(4, 1), sharding.BATCH_AXES)
seen = []
class Extractor:  # per-image features of the image alone, as Inception's
  global_batch, weights_id, last_images_per_sec = 2, "stub", None
  def __call__(self, images, desc=""):
    return images.reshape(len(images), -1)[:, :8].astype(np.float32)
  def stream(self, chunks, total=None, desc=""):
    chunks = list(chunks)
    seen.append([len(c) for c in chunks])
    return np.concatenate([self(c) for c in chunks])
class Source:
  num_examples = 6
  def batches(self, batch_size, start):
    while True:
      yield {"image": np.full((batch_size, 16, 16, 3), 7, np.uint8),
             "label": np.arange(batch_size, dtype=np.int32) % 3}
ev = evaluator.Evaluator(config, g, Source(), batch_sharding=sharding.batch_sharding(mesh),
                         extractor=Extractor())
ev.reference(6)
seen.clear()
captured = []
evaluator.suite.compute = lambda real, fake, *args, **kwargs: captured.append(fake) or {}
params, stats = sharding.put_replicated((variables["params"], variables["batch_stats"]), mesh)
ev.evaluate(params, stats, 7, num_real=6, seed=4)
extracted = list(seen)
rows = np.concatenate([r for r, _ in ev.fake_chunks(params, stats, 7, np.arange(6, dtype=np.int32)
                                                    % 3, seed=4)])
# Extraction failing on process 1 at its first chunk: it still runs every (collective) sampler
# call with process 0, and both raise.
class Failing(Extractor):
  def stream(self, chunks, total=None, desc=""):
    for _ in chunks:
      if jax.process_index() == 1:
        raise MemoryError("RESOURCE_EXHAUSTED on process 1")
    return np.zeros((0, 8), np.float32)
ev.extractor, sampler, calls = Failing(), ev.sampler, []
ev.sampler = lambda *args: calls.append(1) or sampler(*args)
try:
  ev.evaluate(params, stats, 13, num_real=6, seed=4)
  failure = None
except Exception as e:
  failure = type(e).__name__
# The same fakes on this process's first device alone.
real_labels = np.arange(6, dtype=np.int32) % 3
((_, alone),) = sampling.sample_in_chunks(
    sampling.make_sampler(g), variables["params"], variables["batch_stats"],
    sample_inputs.latents(4, 7, 8), ev.fake_labels(real_labels, 7, 4), 7)
print(json.dumps({"seen": extracted, "chunk": ev.chunk, "rows": rows.tolist(),
                  "failure": failure, "calls": len(calls),
                  "max_diff": float(np.abs(captured[0] - Extractor()(alone)).max())}))
"""


def test_two_processes_sample_and_extract_their_own_share_of_the_fakes(tmp_path):
  """Over a mesh of 2 processes x 2 devices, each process's devices not contiguous in it, each
  device samples its rows of each chunk and each process extracts the features of its devices'
  images (4 and 3 of 7) chunk by chunk; every process ends with all the fakes' features, in
  order, as one device sampling all of them gives. A process whose extraction fails still
  samples every chunk with the others, and both raise."""
  from conftest import run_two_processes

  results, _ = run_two_processes(FAKES_TWO_PROCESSES, str(tmp_path), devices=2)
  assert [r["seen"] for r in results] == [[[2, 2]], [[2, 1]]]
  assert [r["failure"] for r in results] == ["PeerError", "MemoryError"]
  assert [r["calls"] for r in results] == [4, 4]  # 13 fakes, chunks of 4
  # Devices in mesh order p0, p1, p0, p1: rows 0 and 2 of each chunk of 4 are process 0's.
  assert [r["rows"] for r in results] == [[0, 2, 4, 6], [1, 3, 5]]
  for r in results:
    assert r["chunk"] == 4 and r["max_diff"] <= 1.0  # one level of rounding at most


def test_gathered_rows_must_cover_every_row_once():
  features = np.arange(6, dtype=np.float32).reshape(3, 2)
  np.testing.assert_array_equal(
      evaluator.multihost.gather_rows(np.array([2, 0, 1]), features, 3), features[[1, 2, 0]])
  with pytest.raises(ValueError, match="cover rows 0..2 once each"):
    evaluator.multihost.gather_rows(np.array([0, 0, 1]), features, 3)


def test_evaluate_defaults_come_from_the_checkpoint_and_are_checked_before_any_image(
    tmp_path, capsys, monkeypatch):
  """A resume may have changed eval.metrics and train.eval_num_samples in config.json since the
  checkpoint: its own settings are the defaults, checked before the data or Inception."""
  from jaxgan import config as config_lib, data, evaluate, saved_run

  (tmp_path / "config.json").write_text(config_lib.to_json(tiny_config()))  # fid,kid; 5000
  trained = tiny_config(**{"eval.metrics": "fid,pr", "train.eval_num_samples": 3}).to_dict()
  monkeypatch.setattr(saved_run, "load_checkpoint",
                      lambda *a, **k: (tiny_config(), 2, None, {"config": trained}))
  monkeypatch.setattr(data, "build_source", lambda *a: pytest.fail("read the data"))
  assert evaluate.main(["--workdir", str(tmp_path)]) == 2
  assert capsys.readouterr().err.strip() == (
      "error: --num-samples must be >= 4 for --metrics fid,pr (this checkpoint's eval "
      "settings), got 3")


def test_the_reals_compared_with_are_the_request_or_the_config_capped_by_the_set():
  """evaluate's opening line says how many reals it compares with: --num-real, else
  eval.num_real, else as many as the fakes; never more than the set holds (12 photos)."""
  config = tiny_config(**{"eval.num_real": 0})
  small = type("Source", (), {"num_examples": 12})()
  assert evaluator.reals_for(config, 20) == 20
  assert evaluator.reals_for(config, 20, source=small) == 12
  assert evaluator.reals_for(config, 20, 8, small) == 8
  config.eval.num_real = 30
  assert evaluator.reals_for(config, 20) == 30 and evaluator.reals_for(config, 5, 0, small) == 12
  assert evaluator.reals_for(config, 20, source=object()) == 30  # a stream: its count unknown


def test_a_long_evaluation_on_a_cpu_is_said_before_the_first_step():
  """A README config cut to a few steps on a CPU still evaluated 10,000 samples at its last step
  (45 minutes of Inception on 2 cores, after a run of seconds, and as long again for the reals
  the first time): said at the start, with what to set. Not on accelerators, without
  evaluations, or for a first look's images."""
  config = tiny_config(**{"train.eval_every": 5000, "train.eval_num_samples": 10000})
  assert periodic_eval.cpu_hint(config, "cpu") == (
      "train.eval_every=5000 evaluates 10,000 samples every 5000 steps and at the last one, the "
      "first also 10,000 real images (their features cached); Inception runs at a few images/s "
      "on a CPU (~45 min per evaluation, ~45 min more for the reals, on 2 cores): for a short "
      "CPU run set train.eval_num_samples=500 or train.eval_every=0")
  assert periodic_eval.cpu_hint(config, "gpu") == ""
  config.train.eval_num_samples = 500
  assert periodic_eval.cpu_hint(config, "cpu") == ""
  config.eval.num_real = 50000  # few fakes, many reals: hours the first time
  assert periodic_eval.cpu_hint(config, "cpu").endswith(
      "~2 min per evaluation, ~225 min more for the reals, on 2 cores): for a short CPU run set "
      "eval.num_real=500 or train.eval_every=0")
  config.train.eval_num_samples, config.train.eval_every = 10000, 0
  assert periodic_eval.cpu_hint(config, "cpu") == ""
