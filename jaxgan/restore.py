"""Resuming a run: the newest readable checkpoint whose config may continue, checked before the
loop takes it (steps_per_call alignment, non-finite values), and warnings for data that changed."""

from __future__ import annotations

import logging
from typing import Any, Optional

import ml_collections

from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import run_health
from jaxgan.run_health import TrainingError

log = logging.getLogger(__name__)


def restore_run(checkpointer: ckpt_lib.Checkpointer, run: Any, config: ml_collections.ConfigDict,
                workdir: str, allow_config_change: bool) -> Optional[tuple[int, Any, dict]]:
  """(step, state, meta) of the newest readable checkpoint of `run` (a run.Run), or None for a
  new run. Raises TrainingError for a config change that alters the math (unless allowed), a
  step the run's steps_per_call does not divide, or a state that is already non-finite."""

  def accept(step: int, meta: dict) -> bool:
    """Refuses a checkpoint whose config changes the math (before its state is read)."""
    blocking, allowed = config_lib.config_differences(meta.get("config", {}), config)
    listing = config_lib.describe_differences
    if blocking and not allow_config_change:
      raise TrainingError(f"config differs from checkpoint step {step} in {workdir} "
                          f"({listing(blocking)}); pass --allow_config_change to continue anyway "
                          "(a change of the parameters' shapes, such as a model width, "
                          "data.image_size or data.num_classes, cannot continue: use a new "
                          "workdir)")
    if allowed:
      log.info("config changes since checkpoint step %d (allowed): %s", step, listing(allowed))
    if blocking:
      consequences = config_lib.describe_consequences(blocking)
      log.warning("config changes since checkpoint step %d, accepted by --allow_config_change: "
                  "%s%s", step, listing(blocking), f" ({consequences})" if consequences else "")
    return not blocking

  k = run.steps_per_call
  restored = checkpointer.restore_latest(
      ckpt_lib.abstract_like(run.abstract_state, run.state_shardings), accept)
  if restored is None:
    return None
  if restored[0] % k:
    raise TrainingError(f"checkpoint step {restored[0]} in {workdir} is not a multiple of "
                        f"train.steps_per_call={k}; resume with a steps_per_call that divides "
                        "it (1 always does), then change it at a later checkpoint")
  run_health.check_restored_state(restored[1], restored[0], checkpointer.directory)
  return restored


def warn_about_changes(meta: dict, step: int, workdir: str, config: ml_collections.ConfigDict,
                       data_fingerprint: int, order: int) -> None:
  """Logs what a resumed run does differently from an uninterrupted one: nothing left to train,
  new data, or the same data in another order."""
  log.info("resuming from checkpoint step %d of %s", step, workdir)
  if step >= config.train.num_steps:
    log.warning("checkpoint step %d of %s is at or past train.num_steps=%d: nothing to train "
                "(raise --config.train.num_steps to train on)", step, workdir,
                config.train.num_steps)
  if meta.get("data_fingerprint", data_fingerprint) != data_fingerprint:
    # Allowed (data sets grow), but the stream is a function of the data: from here the run
    # sees other batches than an uninterrupted one would have.
    log.warning("the data changed since checkpoint step %d (fingerprint %08x, now %08x): "
                "training continues on the new data, in a new order", step,
                meta["data_fingerprint"], data_fingerprint)
  elif meta.get("order_fingerprint", order) != order:
    # The same data, ordered otherwise: a TensorFlow whose index shuffle draws differently.
    log.warning("the data order changed since checkpoint step %d (order %08x, now %08x; "
                "another TensorFlow version?): training continues, but not on the batches an "
                "uninterrupted run would have seen", step, meta["order_fingerprint"], order)
