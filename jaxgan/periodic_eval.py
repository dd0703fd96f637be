"""Evaluation during training: FID/KID every `train.eval_every` steps (`Evaluator`), logged as
eval/*, and the best-FID checkpoint kept in WORKDIR/checkpoints_best."""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import jax
import ml_collections

from jaxgan import checkpoint as ckpt_lib
from jaxgan import multihost
from jaxgan import writers
from jaxgan.evaluator import Evaluator, reals_for
from jaxgan.metrics.features import PREPROCESSING_ID

log = logging.getLogger(__name__)

# Inception's rate on a CPU: 3.7 images/s on the 2-core VM (2026-12-05, a training run's
# evaluation of catalog_resnet64); more than a first look's samples then take most of an hour.
CPU_SAMPLES_HINT = 500


def cpu_hint(config: ml_collections.ConfigDict, backend: str) -> str:
  """What each of a run's evaluations costs where Inception runs on a CPU, said before the first
  step (a README config shortened to a few steps still evaluated 10,000 samples at its last), or
  ''. Not on accelerators, or for a first look's samples."""
  n = config.train.eval_num_samples
  reals = reals_for(config, n)  # as many as asked for: the data's count is not known yet
  if backend != "cpu" or not config.train.eval_every or max(n, reals) <= CPU_SAMPLES_HINT:
    return ""
  minutes = lambda images: f"~{max(1, round(images / 3.7 / 60))} min"
  smaller = (f"train.eval_num_samples={CPU_SAMPLES_HINT}" if n > CPU_SAMPLES_HINT else "")
  if config.eval.num_real > CPU_SAMPLES_HINT:
    smaller += (" and " if smaller else "") + f"eval.num_real={CPU_SAMPLES_HINT}"
  return (f"train.eval_every={config.train.eval_every} evaluates {n:,} samples every "
          f"{config.train.eval_every} steps and at the last one, the first also {reals:,} real "
          f"images (their features cached); Inception runs at a few images/s on a CPU "
          f"({minutes(n)} per evaluation, {minutes(reals)} more for the reals, on 2 cores): for "
          f"a short CPU run set {smaller} or train.eval_every=0")


class PeriodicEval:
  """FID/KID every `train.eval_every` steps, logged as eval/*, and the best-FID checkpoint kept in
  WORKDIR/checkpoints_best (one step, its meta holding the FID); the best so far survives
  restarts because it is read back from that checkpoint's meta.

  `start_step`: the step the run starts from. A best checkpoint past it belongs to a stretch the
  run does not continue (another run in this workdir, or steps after the checkpoint resumed
  from, which the run trains and evaluates again): it is moved to `checkpoints_best.superseded/`
  and not compared with, so `generate --checkpoint best` never returns another run's model."""

  def __init__(self, config, workdir: str, evaluator: Evaluator, writer, meta: Callable,
               start_step: int, data_fingerprint: Optional[int] = None,
               order_fingerprint: Optional[int] = None):
    self.config, self.writer, self.meta = config, writer, meta
    self.evaluator = evaluator
    hint = cpu_hint(config, jax.default_backend())
    if hint and jax.process_index() == 0:
      log.warning("%s", hint)
    # FIDs compare only against the same reals (the data, `data.fingerprint`), at the same
    # sample counts, weights and preprocessing: a best FID measured under other eval settings is
    # forgotten (the next evaluation becomes the best).
    reals = reals_for(config, config.train.eval_num_samples)
    self.settings = {"data_fingerprint": data_fingerprint,
                     "num_samples": config.train.eval_num_samples,
                     "num_real": reals,
                     "weights": self.evaluator.extractor.weights_id,
                     "preprocessing": PREPROCESSING_ID,
                     "standing_stats_batches": config.eval.standing_stats_batches,
                     # Only when on: runs without flips keep the best FIDs recorded before the
                     # reals were mirrored for flipping runs (2026-12-03); those forget theirs.
                     **({"mirrored_reals": True} if config.data.random_flip else {})}
    # The reals are the first num_real of the training order, and the mirrored ones are drawn
    # by position: where that picks a subset, or mirrors, another order is other reals.
    total = getattr(getattr(evaluator, "source", None), "num_examples", None)
    if total and reals > total:  # the FID is then against fewer reals than configured
      log.warning("eval.num_real (or train.eval_num_samples) asks for %d real images, but the "
                  "data holds %d: the reference statistics use all %d", reals, total, total)
    if order_fingerprint is not None and (config.data.random_flip or (total and reals < total)):
      self.settings["order_fingerprint"] = order_fingerprint
    self.best_fid = float("inf")
    self._traced = False  # whether a failed evaluation's traceback was logged
    self._recorded_reals: Optional[str] = None
    self.best = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints_best"), keep=1)
    try:  # its orbax threads closed on a failure here too (the trainer closes it after)
      self._read_best(start_step, data_fingerprint)
    except BaseException:
      self.best.close()
      raise

  def _read_best(self, start_step: int, data_fingerprint: Optional[int]) -> None:
    """The best FID so far, from checkpoints_best's step and meta where its settings are this
    run's; a best past `start_step` is moved aside."""
    # Process 0's view of the best step and FID, on every process: the saves they decide are
    # collective, so a process with a lagging directory view or a failed read must not differ.
    latest = self.best.latest_step()
    best_step = multihost.from_process_0(-1 if latest is None else int(latest))
    if best_step > start_step:
      log.warning("best-FID checkpoint step %d is past this run's start (step %d): moving it to "
                  "%s.superseded/; the run evaluates its own steps", best_step, start_step,
                  self.best.directory)
      self.best.move_aside(best_step, ".superseded")
      best_step = -1
    if best_step >= 0:
      self.best.prune(best_step)  # an earlier best a kill left beside it
      # Read as restoring does (agreed, visibility first): orbax's read ends in a barrier that a
      # process failing before it would leave the others waiting in.
      meta, error, _ = self.best.read_agreed(best_step, lambda: self.best.restore_meta(best_step))
      if error is not None:
        log.warning("best-FID checkpoint meta unreadable (%s); starting a new best", error)
        meta = {}
      recorded = dict(meta.get("eval_settings") or {})
      # Known after the first evaluation has hashed the reals: compared then (_check_reals).
      self._recorded_reals = recorded.pop("reals_digest", None)
      # An in-order hash saved for a day (2026-12-04, not comparable with the digest): such a
      # best is judged by the rest of its settings, as those saved before it.
      recorded.pop("reals_sha256", None)
      # A best saved before the fingerprint joined the eval settings: its checkpoint meta has
      # the data's (forgetting a best of the same data would delete it for a worse one, keep=1).
      recorded.setdefault("data_fingerprint", meta.get("data_fingerprint", data_fingerprint))
      if meta.get("eval_settings") and recorded == self.settings:
        self.best_fid = float(meta.get("fid", float("inf")))
      elif meta:
        log.info("eval settings changed since the best-FID checkpoint (step %d): new best", best_step)
      self.best_fid = multihost.from_process_0(float(self.best_fid))

  def __call__(self, step: int, state) -> dict:
    error = None
    try:
      results = self.evaluator.evaluate(state.ema_params, state.g_batch_stats,
                                        self.config.train.eval_num_samples, keep_going=True)
    except Exception as e:  # pylint: disable=broad-except
      results, error = {}, e
    # The best-FID save below is collective: if any process failed, none saves.
    if multihost.any_process(error is not None):
      # Cut short by a stop request (on any process; the others then see a PeerError): no row,
      # so that the rerun, which resumes at this step's checkpoint, evaluates it.
      if multihost.any_process(self.evaluator.should_stop()):
        log.warning("step %d: evaluation cut short by a stop request; the rerun evaluates this "
                    "step", step)
      else:
        # An evaluation (Inception out of memory, a damaged reference file) is not worth the
        # run: logged, marked in the metrics, retried at the next eval_every.
        if error is not None:  # its traceback the first time (a bug's, as much as an OOM's)
          log.error("step %d: evaluation failed (%s: %s); training goes on", step,
                    type(error).__name__, str(error).splitlines()[0][:300] if str(error) else "",
                    exc_info=None if self._traced else error)
          self._traced = True
        self.writer.write_scalars(step, {"eval/failed": 1})
      return {}
    self._check_reals()
    fid = results.get("fid")
    # Saving is collective: every process must take the same decision, so all use process 0's
    # FID (the gathered features are the same everywhere; this guards the reduction too), and
    # none uses one that some process could not compute.
    if multihost.all_processes(fid is not None):
      fid = results["fid"] = multihost.from_process_0(float(fid))
    elif fid is not None:  # another process could not compute it
      del results["fid"]
      fid, results["fid_failed"] = None, 1
    log.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in results.items()
                                              if isinstance(v, float)))
    if fid is not None and fid < self.best_fid:
      started = self.best.save(step, state, {**self.meta(step), "fid": fid, "eval": results,
                                             "eval_settings": self.settings})
      # Complete before the eval row is written: a run resuming at this step re-evaluates it
      # only without its row, so a kill during the write must not leave the row without the
      # best. The best FID moves only with the save done, so memory never claims a better
      # model than checkpoints_best holds.
      done = started and self.best.wait()
      if multihost.all_processes(done):  # agreed: the next save decision must be alike
        self.best_fid = fid
        log.info("step %d: new best FID %.4g, saved to %s", step, fid, self.best.directory)
    self.writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()
                                     if isinstance(v, (int, float))})
    return results

  def _check_reals(self) -> None:
    """Forgets a best FID measured against other reals. The data fingerprint in the settings
    hashes a sample of the images (it is computed at every start, before anything compiles), so
    a data set changed elsewhere, re-prepared or replaced at a new data.path, can pass it; the
    reals' digest over all of their pixels and labels is known once an evaluation has read them,
    and is saved with each best from then on (bests saved before it was are judged by the
    fingerprint alone). Their order is not in it: where it matters (a subset of the data, or
    mirrored reals) the settings hold the order's fingerprint."""
    digest = self.evaluator.reals_digest(self.settings["num_real"])
    recorded = self._recorded_reals
    if digest is not None:  # compared once: from now on the bests are measured against these
      self._recorded_reals, self.settings["reals_digest"] = None, digest
    # Agreed, the whole decision on process 0's view: the saves it decides are collective.
    if multihost.from_process_0(recorded is not None and digest is not None
                                and recorded != digest):
      if self.best_fid != float("inf"):
        log.info("the real images differ from those the best-FID checkpoint was measured "
                 "against: new best")
      self.best_fid = float("inf")

  def close(self) -> None:
    self.best.close()


def has_eval_row(workdir: str, step: int) -> bool:
  """Whether metrics.jsonl holds a successful eval row of `step`; an unreadable file counts as
  no (the step is evaluated again) rather than raising on process 0 alone, which would leave the
  others waiting in the broadcast of the answer."""
  try:
    return writers.has_row(workdir, step, "eval/num_samples")
  except OSError as e:
    log.warning("could not read %s/metrics.jsonl (%s): evaluating step %d again", workdir, e,
                step)
    return False
