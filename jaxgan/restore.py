"""Resuming a run: the newest readable checkpoint whose config may continue, checked before the
loop takes it (steps_per_call alignment, non-finite values), and warnings for data that changed."""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from jaxgan import augment as augment_lib
from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import label_choices
from jaxgan import run_health
from jaxgan import state as state_lib
from jaxgan.config import resume as config_resume
from jaxgan.data.class_labels import folder_class_name
from jaxgan.run_health import TrainingError

log = logging.getLogger(__name__)


def _layout_changes(trained_config: dict, blocking: list, abstract_state: Any) -> list:
  """The `blocking` differences behind a state of other shapes than the checkpoint's (its meta's
  config): those that alone change them (the checkpoint's config with only that key changed),
  or all of them where none does alone; [] when the shapes are the same, or when that config
  cannot be read back (another jaxgan's keys: the restore then says so itself)."""
  if not blocking:  # resumable changes (a schedule, a path) keep the shapes: nothing to trace
    return []
  try:
    trained = config_lib.from_json(json.dumps(trained_config))
    before = state_lib.abstract_state(trained)
  except Exception:  # pylint: disable=broad-except
    return []
  if state_lib.same_layout(before, abstract_state):
    return []

  def changes_alone(key: str, value: Any) -> bool:
    one = copy.deepcopy(trained)
    parent, _, leaf = key.rpartition(".")
    with one.unlocked():
      config_lib.get(one, parent)[leaf] = value
    try:
      return not state_lib.same_layout(state_lib.abstract_state(one), before)
    except Exception:  # pylint: disable=broad-except  (a value that needs another key's too)
      return True

  alone = [d for d in blocking if changes_alone(d[0], d[2])]
  return alone or blocking


def _as_read_now(attributes: list) -> list:
  """[[attribute, [class names]], ...] with each name as the data sources read it now
  (`class_labels.folder_class_name`: a manifest's names, read alike, are never blank)."""
  return [[column, [folder_class_name(n) for n in names]] for column, names in attributes]


def _reordered(before: list, after: list) -> bool:
  """Whether each attribute of `after` holds `before`'s class names, in another order."""
  return before != after and [[c, sorted(n)] for c, n in before] == [[c, sorted(n)]
                                                                   for c, n in after]


def _describe_classes(before: list, after: list) -> str:
  changes = [f"{name}: {', '.join(old)} -> {', '.join(new)}"
             for (name, old), (_, new) in zip(before, after) if old != new]
  if len(before) != len(after) or any(a[0] != b[0] for a, b in zip(before, after)):
    changes = [f"attributes {[a[0] for a in before]} -> {[a[0] for a in after]}"]
  return "; ".join(changes)[:600]


def data_moved_hint(layout: list, allowed: list) -> str:
  """Where a class count changed with data.path, the data may be what to restore, which the
  shape changes do not name: its class counts (data.num_classes=-1 reads them from a prepared
  set) or its other settings (a command line without the run's data overrides)."""
  moved = [d for d in allowed if d[0] == "data.path"]
  if not moved or not any(d[0] in ("data.num_classes", "data.extra_num_classes")
                          for d in layout):
    return ""
  return (f"; data.path changed too ({config_resume.describe_differences(moved)}): pass the "
          "run's data settings again (its config.json holds them; with data.num_classes=-1 "
          "the class counts are the data's)")


def restore_run(checkpointer: ckpt_lib.Checkpointer, run: Any, config: ml_collections.ConfigDict,
                workdir: str, allow_config_change: bool, attributes: list
                ) -> Optional[tuple[int, Any, dict]]:
  """(step, state, meta) of the newest readable checkpoint of `run` (a run.Run), or None for a
  new run. `attributes`: the data's [(attribute, class names)] (data.attribute_names). Raises
  TrainingError for a config change that alters the math, or classes other than the
  checkpoint's (unless allowed), a step the run's steps_per_call does not divide, or a state that
  is already non-finite."""
  attributes = [[str(name), [str(n) for n in names]] for name, names in attributes]

  def accept(step: int, meta: dict) -> bool:
    """Refuses a checkpoint whose config changes the math, or whose classes are not the data's
    (a set prepared again: label k would now mean another class), before its state is read."""
    blocking, allowed = config_resume.config_differences(meta.get("config", {}), config)
    # Not a change: a resume keeps the recorded donor (keep_first_start_keys, which says so where
    # the command line names another); its first start's own names the workdir, not the step.
    allowed = [d for d in allowed if d[0] != "train.init_from"]
    listing = config_resume.describe_differences
    layout = _layout_changes(meta.get("config", {}), blocking, run.abstract_state)
    if layout:
      others = [d for d in blocking if d not in layout]
      raise TrainingError(
          f"config differs from checkpoint step {step} in {workdir} ({listing(layout)}) in the "
          "shapes of the train state (its parameters' or statistics'): this run cannot "
          "continue with it; use a new workdir, or restore the checkpoint's values"
          + data_moved_hint(layout, allowed)
          + (f" (its other changes, {listing(others)}, "
             f"{'are allowed by' if allow_config_change else 'need'} --allow_config_change)"
             if others else ""))
    if blocking and not allow_config_change:
      raise TrainingError(f"config differs from checkpoint step {step} in {workdir} "
                          f"({listing(blocking)}); pass --allow_config_change to continue anyway")
    trained = label_choices.trained_attributes(meta, attributes)
    if trained is not None and trained != attributes and _as_read_now(trained) == attributes:
      # Names an older jaxgan kept in another Unicode form (macOS's decomposed folder names),
      # or with invisible characters at their ends: the same classes, read as they are now.
      log.info("the checkpoint's class names are read as %s now (the same classes, in Unicode's "
               "composed form)", _describe_classes(trained, attributes))
    elif trained is not None and trained != attributes:
      classes = _describe_classes(trained, attributes)
      if _reordered(_as_read_now(trained), attributes):
        # Names an older jaxgan kept decomposed sort otherwise composed ('e' + U+0301 before
        # 'f', U+00E9 after it): the same classes, but label k names another one now.
        classes += "; the same classes in another order" + (
            ": their names are read in Unicode's composed form now, which sorts them otherwise"
            if _as_read_now(trained) != trained else "")
      if not allow_config_change:
        raise TrainingError(
            f"the data's classes differ from checkpoint step {step} in {workdir} ({classes}): "
            "each label index would now train another class; use a new workdir, or pass "
            "--allow_config_change where only names changed (the run then uses the new names)")
      log.warning("the data's classes differ from checkpoint step %d, accepted by "
                  "--allow_config_change: %s", step, classes)
    if allowed:
      log.info("config changes since checkpoint step %d (allowed): %s", step, listing(allowed))
    if blocking:
      consequences = config_resume.describe_consequences(blocking)
      log.warning("config changes since checkpoint step %d, accepted by --allow_config_change: "
                  "%s%s", step, listing(blocking), f" ({consequences})" if consequences else "")
    return not blocking and trained in (None, attributes)

  k = run.steps_per_call
  restored = checkpointer.restore_latest(
      ckpt_lib.abstract_like(run.abstract_state, run.state_shardings), accept)
  if restored is None:
    return None
  if restored[0] % k:
    raise TrainingError(f"checkpoint step {restored[0]} in {workdir} is not a multiple of "
                        f"train.steps_per_call={k}; resume with a steps_per_call that divides "
                        "it (1 always does), then change it at a later checkpoint")
  step, state, meta = restored
  bad = ([k for k in state.lecam if run_health.nonfinite_leaves(state.lecam[k])]  # agreed
         if not config.loss.lecam_weight else [])
  if bad:
    # Unread while LeCam is off: an inf average a step kept before 2026-12-05 (when the step
    # began keeping it finite) starts again from 0, rather than refusing the checkpoint.
    log.warning("checkpoint step %d holds a non-finite LeCam average of D's %s outputs (unread: "
                "LeCam is off); it starts again from 0 (biased towards 0 for a few hundred D "
                "updates, should LeCam be turned on soon)", step, " and ".join(bad))
    state = state.replace(lecam={k: jax.device_put(np.zeros(v.shape, v.dtype), v.sharding)
                                 if k in bad else v for k, v in state.lecam.items()})
  run_health.check_restored_state(state, step, checkpointer.directory)
  return step, _augment_after_change(state, meta, config, step), meta


def _augment_after_change(state: Any, meta: dict, config: ml_collections.ConfigDict,
                          step: int) -> Any:
  """`state` with ADA's p (and its sign sums) started afresh where the augmentation, or the
  augment.ada_p_init of one that uses p, changed since the checkpoint (--allow_config_change):
  at the new ada_p_init, or 0 for an augmentation without p. The checkpoint's p was the old
  setting's: kept, an ada_fixed run went on at the old p (at 0 after 'none': never augmenting),
  whatever its config said."""
  trained = dict(config_lib.flat_items(ml_collections.ConfigDict(meta.get("config", {}))))
  defaults = dict(config_lib.flat_items(config_lib.base_config()))
  was = lambda key: trained.get(key, defaults[key])
  augment = augment_lib.AUGMENTS.get(config.augment.name, "augment.name")
  uses_p = lambda name: name not in augment_lib.AUGMENTS.names() or augment_lib.AUGMENTS.get(
      name).uses_p
  # Between two without p (none -> diffaugment), p is 0 before and after.
  name_changed = (was("augment.name") != config.augment.name
                  and (augment.uses_p or uses_p(was("augment.name"))))
  if not (name_changed or (augment.uses_p and was("augment.ada_p_init")
                           != config.augment.ada_p_init)):
    return state
  p = float(config.augment.ada_p_init) if augment.uses_p else 0.0
  log.warning("augment.%s changed since checkpoint step %d: ADA's p starts again at %g (it was "
              "%g)", "name" if name_changed else "ada_p_init", step, p,
              float(np.asarray(state.augment.p.addressable_data(0))))  # replicated
  fresh = augment_lib.init_state(p)
  return state.replace(augment=jax.tree_util.tree_map(
      lambda new, old: jax.device_put(np.asarray(new, old.dtype), old.sharding), fresh,
      state.augment))


# The checkpoint meta's record of the `train.init_from` a run's first start was given (a workdir,
# say), which its config records as the step folder read.
DONOR_NAMED_KEY = "init_from_named"


def keep_first_start_keys(meta: dict, config: ml_collections.ConfigDict) -> None:
  """Puts the checkpoint's `train.init_from` back into `config` (which config.json records):
  read at a run's first start only, it says where the run's weights came from, which a resume
  does not change, whatever its command line says now (the flag dropped, another donor, the same
  one mounted elsewhere; warned of unless it names what the first start was given). Alike on
  every process: all read the same checkpoint."""
  recorded = (meta.get("config") or {}).get("train", {}).get("init_from", "")
  if isinstance(recorded, str) and recorded != config.train.init_from:
    named = os.path.normpath(config.train.init_from) if config.train.init_from else ""
    given = meta.get(DONOR_NAMED_KEY)
    # The first start's own command line; a checkpoint from before the record: any name of the
    # recorded step's run (its workdir or checkpoints folder).
    same = ([os.path.normpath(given)] if isinstance(given, str) and given else
            [os.path.dirname(os.path.normpath(recorded)),
             os.path.dirname(os.path.dirname(os.path.normpath(recorded)))])
    if named and named not in same:
      log.warning("train.init_from is read at a run's first start only: this run started from "
                  "%s, which its config.json keeps (not %s)", recorded or "random weights",
                  config.train.init_from)
    config.train.init_from = recorded


# The checkpoint meta's record of the devices that computed its step (`devices_record`).
DEVICES_KEY = "devices"


def devices_record(mesh: jax.sharding.Mesh) -> str:
  """'8 x cpu, mesh 8x1': the devices a run computes on, as each checkpoint's meta records them.
  Another count, kind or mesh sums in another order: a resume on them is not bit-identical."""
  return (f"{mesh.size} x {jax.devices()[0].device_kind}, mesh {mesh.shape['data']}x"
          f"{mesh.shape['fsdp']}")


# The checkpoint meta's record of the data's data_lib.content_digest (every image; the
# data_fingerprint samples 64 of them).
DATA_CONTENT_KEY = "data_content"


def warn_about_changes(meta: dict, step: int, workdir: str, config: ml_collections.ConfigDict,
                       data_fingerprint: int, order: int, devices: str = "",
                       content: Optional[int] = None) -> None:
  """Logs what a resumed run does differently from an uninterrupted one: nothing left to train,
  new data (`content`: its content_digest, compared where the meta records one; else the
  sampled `data_fingerprint`), the same data in another order, or other devices
  (`devices_record`)."""
  log.info("resuming from checkpoint step %d of %s", step, workdir)
  written_on = meta.get(DEVICES_KEY)
  if devices and isinstance(written_on, str) and written_on != devices:
    # Allowed (a job rescheduled onto another slice), and the state is read exactly; only the
    # sums from here on are reduced in another order.
    log.info("checkpoint step %d was computed on %s, this run on %s: from here on it matches a "
             "run that stays on either to float rounding, not bit for bit", step, written_on,
             devices)
  if step > config.train.num_steps:
    log.warning("checkpoint step %d of %s is past train.num_steps=%d: nothing to train "
                "(raise --config.train.num_steps to train on)", step, workdir,
                config.train.num_steps)
  elif step == config.train.num_steps:  # the rerun a stop in the last step asked for, or a rerun
    log.info("checkpoint step %d of %s is train.num_steps: nothing to train; what a stop left "
             "undone at that step (its sample grid, its evaluation) is done now (raise "
             "--config.train.num_steps to train on)", step, workdir)
  recorded = meta.get(DATA_CONTENT_KEY) if content is not None else None
  before, now = ((recorded, content) if isinstance(recorded, int) else
                 (meta.get("data_fingerprint", data_fingerprint), data_fingerprint))
  if before != now:
    # Allowed (data sets grow), but the stream is a function of the data: from here the run
    # sees other batches than an uninterrupted one would have. The order is one of positions
    # (the count and the seed's): where it holds, the same positions hold other images.
    reordered = meta.get("order_fingerprint", order) != order
    log.warning("the data changed since checkpoint step %d (fingerprint %08x, now %08x): "
                "training continues on the new data%s", step, before, now,
                ", in a new order" if reordered else "")
  elif meta.get("order_fingerprint", order) != order:
    # The same data, ordered otherwise: a TensorFlow whose index shuffle draws differently, or
    # a jaxgan from before 2026-12-04, whose order repeated (data/shuffle_order.py).
    log.warning("the data order changed since checkpoint step %d (order %08x, now %08x; "
                "another TensorFlow or jaxgan version?): training continues, but not on the "
                "batches an uninterrupted run would have seen", step, meta["order_fingerprint"], order)
