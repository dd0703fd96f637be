"""`train.init_from`: a new run that starts from another run's weights (transfer learning, as
StyleGAN2-ADA's --resume with a trained network: a small catalog fine-tuned from a model of a
larger one).

G, D, G's EMA and their BatchNorm statistics are copied array by array where the path and the
shape match; the others keep their initial values and are listed (a class embedding of another
class count, a layer of another width). The optimizer states, the step, the RNG key, ADA's p and
LeCam's anchors are the new run's own, as StyleGAN2-ADA's resume keeps them. Only a run's first
start reads it: a resumed run continues from its own checkpoints. It names a run (its latest step
is read) or one of its step folders; the run records the step folder read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Optional

import flax
import jax
import orbax.checkpoint as ocp

from jaxgan import checkpoint as ckpt_lib
from jaxgan import multihost
from jaxgan import state_digest
from jaxgan.config import ConfigError

log = logging.getLogger(__name__)

COPIED = ("g_params", "g_batch_stats", "d_params", "d_batch_stats", "ema_params")


def locate(path: str) -> tuple[str, Optional[int]]:
  """(the checkpoints folder, the step or None for its latest) that `path` names: a run's
  workdir, its checkpoints folder, or one step folder in it (`.../checkpoints/5000`)."""
  for directory in (os.path.join(path, "checkpoints"), path):
    if ckpt_lib.step_folders(directory, item="state"):
      return os.path.abspath(directory), None
  parent, name = os.path.split(os.path.normpath(path))
  if name.isdecimal() and int(name) in ckpt_lib.step_folders(parent, item="state"):
    return os.path.abspath(parent), int(name)
  raise ConfigError(f"config key train.init_from: no checkpoint in {path!r}; give the workdir of "
                    "a jaxgan run that has written one, or one of its step folders "
                    "(WORKDIR/checkpoints/STEP), or '' to start from random weights")


def plan(saved: dict[str, tuple], state: dict) -> tuple[dict, list[str], int]:
  """(the restore target: the copied collections' leaves whose path and shape match the saved
  ones, as ShapeDtypeStructs with this run's dtype and sharding; the leaves left at their initial
  values, with why; the number of leaves considered)."""
  target, kept, total = {}, [], 0
  for collection in COPIED:
    for path, leaf in jax.tree_util.tree_flatten_with_path(state[collection])[0]:
      total += 1
      name = f"{collection}/{state_digest.path_name(path)}"
      shape = saved.get(name, (None,))[0]
      if name not in saved:
        kept.append(f"{name} (not in that run)")
        continue
      if shape != tuple(leaf.shape):
        kept.append(f"{name} (shape {shape} there, {tuple(leaf.shape)} here)")
        continue
      node = target.setdefault(collection, {})
      keys = [getattr(k, "key", k) for k in path]
      for key in keys[:-1]:
        node = node.setdefault(key, {})
      node[keys[-1]] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding)
  return target, kept, total


@dataclasses.dataclass(frozen=True)
class Donor:
  """What a new run copies: the arrays read (in this run's shardings), and what was not."""
  directory: str
  step: int
  arrays: dict  # {collection: nested dict of arrays} of the copied leaves
  kept: list  # the leaves left at their initial values, with why
  total: int  # the leaves considered
  class_names: list  # the donor's (first attribute's) class names, [] where unknown

  @property
  def folder(self) -> str:
    """The step folder read: what the new run records as its `train.init_from`."""
    return os.path.join(self.directory, str(self.step))


def _unreadable(directory: str, step: int, error: BaseException) -> ConfigError:
  first = str(error).splitlines()[0][:300] if str(error) else ""
  return ConfigError(f"config key train.init_from: {directory} step {step} cannot be read "
                     f"({type(error).__name__}: {first}); give another of its steps "
                     f"({directory}/STEP) or another run")


def read_donor(path: str, abstract_state: Any, model_name: str, image_size: int) -> Donor:
  """The arrays of the checkpoint `path` names (a run's latest, or the step folder given) that
  `abstract_state` (this run's state as ShapeDtypeStructs with shardings) can take. Collective:
  every process reads the same step (process 0's list and choice), and a read that fails
  anywhere fails everywhere. Raises ConfigError for another model family or image size (layers
  are named by position, so arrays of equal shape would be copied into layers that do other
  things), a damaged or unreadable step, or no array alike."""
  directory, step = multihost.agreed(lambda: locate(path), "finding train.init_from's run")
  # Process 0's: a process whose view lags may have found its own latest or none of the folder.
  step = multihost.from_process_0(-1 if step is None else step)
  reader = ckpt_lib.Checkpointer(directory, read_only=True)
  try:
    steps = ckpt_lib.agreed_steps(reader.steps())
    if not steps:
      raise ConfigError(f"config key train.init_from: no checkpoint in {directory}")
    step = steps[-1] if step < 0 else step
    meta, error, _ = reader.read_agreed(step, lambda: reader.restore_meta(step))
    if error is not None:
      raise _unreadable(directory, step, error)
    config = meta.get("config") or {}
    theirs = (config.get("model", {}).get("name"), config.get("data", {}).get("image_size"))
    if None not in theirs and theirs != (model_name, image_size):
      raise ConfigError(f"config key train.init_from: {directory} step {step} is a {theirs[0]!r} "
                        f"model of {theirs[1]}x{theirs[1]} images, this run's a {model_name!r} "
                        f"of {image_size}x{image_size}: their layers do not correspond")
    saved, error, _ = reader.read_agreed(step, lambda: reader.saved_layouts(step))
    if error is not None:
      raise _unreadable(directory, step, error)
    target, kept, total = plan(saved, flax.serialization.to_state_dict(abstract_state))
    if not target:
      raise ConfigError(f"config key train.init_from: none of the {total} arrays of G, D and "
                        f"the EMA matches {directory} step {step}")
    arrays, error, _ = reader.read_agreed(
        step, lambda: _restore(directory, step, target, saved, meta))
    if error is not None:
      raise _unreadable(directory, step, error)
  finally:
    reader.close()
  return Donor(directory, step, arrays, kept, total,
               [str(n) for n in meta.get("class_names") or []])


def _restore(directory: str, step: int, target: dict, saved: dict, meta: dict) -> dict:
  """The `target` leaves of checkpoint `step`, checked against the digests its meta holds."""
  restore_args = jax.tree_util.tree_map(
      lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype), target)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        os.path.join(directory, str(step), "state"),
        args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))
  # Bit-identical to what that run wrote: damage the compressed files miss would otherwise
  # start this run from corrupt weights without a word. (Arrays read into another dtype than
  # they were saved in have other digests: not compared.)
  expected = meta.get(ckpt_lib.DIGEST_KEY) or {}
  read = state_digest.tree_digest(restored)
  same_dtype = {state_digest.path_name(path) for path, leaf in
                jax.tree_util.tree_flatten_with_path(restored)[0]
                if saved[state_digest.path_name(path)][1] == str(leaf.dtype)}
  damaged = [p for p in sorted(read)
             if p in expected and p in same_dtype and int(expected[p]) != read[p]]
  if damaged:
    raise ckpt_lib.CheckpointError(f"{len(damaged)} arrays read back other values than were "
                                   f"written (e.g. {damaged[0]}): damaged")
  return restored


def initialise_from(state: Any, donor: Donor, class_names: list[str]) -> Any:
  """`state` (a freshly initialised TrainState) with the donor's arrays in place of its own."""
  state_dict = flax.serialization.to_state_dict(state)
  for collection, tree in donor.arrays.items():
    state_dict[collection] = _merged(state_dict[collection], tree)
  kept = donor.kept
  shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
  log.info("train.init_from: copied %d of %d arrays of G, D and the EMA from %s step %d%s",
           donor.total - len(kept), donor.total, donor.directory, donor.step,
           f"; at their initial values: {shown}" if kept else "")
  if kept:
    log.warning("train.init_from: %d arrays keep their initial values (e.g. %s)", len(kept),
                kept[0])
  if donor.class_names and len(donor.class_names) == len(class_names) and (
      donor.class_names != list(class_names)):
    log.warning("train.init_from: class embeddings copied by index from a run whose classes "
                "were %s; here they are %s", donor.class_names, list(class_names))
  return flax.serialization.from_state_dict(state, state_dict)


def _merged(into: Any, tree: Any) -> Any:
  """`into` (a nested dict) with the leaves of `tree` (a nested dict of some of its keys)."""
  if not isinstance(tree, dict):
    return tree
  return {k: _merged(v, tree[k]) if k in tree else v for k, v in into.items()}
