"""Which config changes a resumed run may make: a checkpoint's config against the new one."""

from __future__ import annotations

import types

import ml_collections

from jaxgan.config.paths import PATH_KEYS, absolute_path
from jaxgan.config.schema import base_config, flat_items, get
from jaxgan.config.validation import READ_WHILE_ON, unread_keys

# Keys that may change when a run resumes: they change the schedule or the outputs, not the math.
# The mesh and process layout may change too: checkpoints restore onto any device count. So may
# paths (the same data mounted elsewhere, another host): what the data holds is compared by its
# fingerprint, which warns when it changed.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.sample_every",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.samples_per_class",
                  "train.max_nonfinite_steps", "train.tensorboard", "data.workers",
                  "data.max_bad_fraction", "data.tfds_download",
                  "model.upsample_impl", "model.downsample_impl", "model.norm_impl",
                  "train.steps_per_call", "train.eval_every", "train.eval_num_samples",
                  "eval.metrics", "eval.num_real", "eval.batch_size",
                  "eval.standing_stats_batches",
                  "mesh.data", "mesh.fsdp", "distributed.coordinator_address",
                  "distributed.num_processes", "distributed.process_id", *PATH_KEYS)

# Set anew by each launch (a launcher's random port; each process's own id): never a change.
LAUNCH_KEYS = frozenset({"distributed.coordinator_address", "distributed.process_id"})

Difference = tuple[str, object, object]


def config_differences(old: dict, new: ml_collections.ConfigDict
                       ) -> tuple[list[Difference], list[Difference]]:
  """(key, old, new) for every key whose value differs: (blocking, allowed) where `allowed` are
  the RESUMABLE_KEYS (schedule, logging, layout, paths) and `blocking` everything else.

  A key the checkpoint's config lacks (written before the key existed) counts as its default
  value then: the run trained with the behaviour the default keeps, so setting it to anything
  else on resume is a change like any other."""
  if not old:  # no config recorded: nothing to compare with
    return [], []
  old_flat = dict(flat_items(ml_collections.ConfigDict(old)))
  defaults = dict(flat_items(base_config()))
  # Keys the run's data source, model, loss or augmentation does not read never changed its
  # math (validation refuses them now; a run started when they were accepted resumes once they
  # are dropped). Only where the checkpoint's config picked the same one.
  picked = {"data": "data.source", "model": "model.name", "loss": "loss.name",
            "augment": "augment.name"}
  same = {section for section, key in picked.items()
          if old_flat.get(key, defaults[key]) == get(new, key)}
  unread = {k for k in unread_keys(new) if k.split(".")[0] in same}
  # Likewise a regulariser's setting while it was off and still is (loss.r1_interval without R1).
  unread |= {k for k, (switch, _) in READ_WHILE_ON.items()
             if get(new, switch) <= 0 and old_flat.get(switch, defaults[switch]) <= 0}
  blocking, allowed = [], []
  for key, value in flat_items(new):
    if (key not in old_flat and key not in defaults) or key in unread or key in LAUNCH_KEYS:
      continue
    before = old_flat.get(key, defaults.get(key))
    if key in PATH_KEYS:  # runs before they were stored absolute: relative to the same folder
      before, value = absolute_path(before), absolute_path(value)
    if _plain(before) != _plain(value):
      (allowed if key in RESUMABLE_KEYS else blocking).append((key, before, value))
  return blocking, allowed


def _plain(value: object) -> object:
  """Tuples as lists: the checkpoint's config went through JSON, which has no tuples."""
  return [_plain(v) for v in value] if isinstance(value, (tuple, list)) else value


def describe_differences(differences: list[Difference]) -> str:
  """'key: old -> new; ...' for messages."""
  return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in differences)


# What an accepted change of these keys (--allow_config_change) leaves wrong: a run's position
# is its step, so what is counted from the step is counted with the new value from here. The
# EMA ramp-up counts G's images (step x batch_size), so n_critic leaves it right; LeCam's EMA
# debiasing counts D's updates (step x n_critic, `steps.applied_d_updates`).
_DATA_POSITION = "the data position (the stream skips or repeats examples)"
_COUNTED_FROM_STEP = types.MappingProxyType({
    "train.batch_size": (_DATA_POSITION, "images_seen", "the EMA ramp-up"),
    "train.n_critic": (_DATA_POSITION, "images_seen", "LeCam's debiasing (when on)"),
})


def describe_consequences(differences: list[Difference]) -> str:
  """What the accepted `differences` leave wrong from the resumed step on, or ''."""
  keys = [k for k, _, _ in differences if k in _COUNTED_FROM_STEP]
  if not keys:
    return ""
  counted = list(dict.fromkeys(thing for k in keys for thing in _COUNTED_FROM_STEP[k]))
  things = ", ".join(counted[:-1]) + " and " + counted[-1]
  return f"{things} are counted from the step with the new {' and '.join(keys)} from here"
