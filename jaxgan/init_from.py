"""`train.init_from`: a new run that starts from another run's weights (transfer learning, as
StyleGAN2-ADA's --resume with a trained network: a small catalog fine-tuned from a model of a
larger one).

G, D, G's EMA and their BatchNorm statistics are copied array by array where the path and the
shape match; the others keep their initial values and are listed (a class embedding of another
class count, a layer of another width). The optimizer states, the step, the RNG key, ADA's p and
LeCam's anchors are the new run's own, as StyleGAN2-ADA's resume keeps them. Only a run's first
start reads it: a resumed run continues from its own checkpoints.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import flax
import jax
import orbax.checkpoint as ocp

from jaxgan import checkpoint as ckpt_lib
from jaxgan import state_digest
from jaxgan.config import ConfigError

log = logging.getLogger(__name__)

COPIED = ("g_params", "g_batch_stats", "d_params", "d_batch_stats", "ema_params")


def checkpoint_dir(path: str) -> str:
  """The checkpoints folder of the run at `path`: its workdir, or that folder itself."""
  for directory in (os.path.join(path, "checkpoints"), path):
    try:
      if any(name.isdigit() for name in os.listdir(directory)):
        return os.path.abspath(directory)
    except OSError:
      continue
  raise ConfigError(f"config key train.init_from: no checkpoint in {path!r}; give the workdir of "
                    "a jaxgan run that has written one (or '' to start from random weights)")


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


def initialise_from(state: Any, path: str, class_names: list[str], model_name: str,
                    image_size: int) -> Any:
  """`state` (a freshly initialised TrainState of a `model_name` model of `image_size` images)
  with the weights of the latest checkpoint of the run at `path` copied in. Raises ConfigError
  for another model family or image size (layers are named by position, so arrays of equal shape
  would be copied into layers that do other things), or when no array matches."""
  directory = checkpoint_dir(path)
  reader = ckpt_lib.Checkpointer(directory, read_only=True)
  try:
    step = reader.latest_step()
    if step is None:
      raise ConfigError(f"config key train.init_from: no readable checkpoint in {directory}")
    meta = reader.restore_meta(step)
    saved = reader.saved_layouts(step)
  finally:
    reader.close()
  their_config = meta.get("config") or {}
  theirs = (their_config.get("model", {}).get("name"), their_config.get("data", {}).get(
      "image_size"))
  if None not in theirs and theirs != (model_name, image_size):
    raise ConfigError(f"config key train.init_from: {directory} step {step} is a {theirs[0]!r} "
                      f"model of {theirs[1]}x{theirs[1]} images, this run's a {model_name!r} of "
                      f"{image_size}x{image_size}: their layers do not correspond")
  state_dict = flax.serialization.to_state_dict(state)
  target, kept, total = plan(saved, state_dict)
  if not target:
    raise ConfigError(f"config key train.init_from: none of the {total} arrays of G, D and the "
                      f"EMA matches {directory} step {step} (another model family or layout?)")
  restore_args = jax.tree_util.tree_map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding,
                                                                       dtype=s.dtype), target)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        os.path.join(directory, str(step), "state"),
        args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))
  # Bit-identical to what that run wrote: damage the compressed files miss would otherwise
  # start this run from corrupt weights without a word.
  # (Arrays read into another dtype than they were saved in have other digests: not compared.)
  expected = meta.get(ckpt_lib.DIGEST_KEY) or {}
  read = state_digest.tree_digest(restored)
  same_dtype = {state_digest.path_name(path) for path, leaf in
                jax.tree_util.tree_flatten_with_path(restored)[0]
                if saved[state_digest.path_name(path)][1] == str(leaf.dtype)}
  damaged = [p for p in sorted(read)
             if p in expected and p in same_dtype and int(expected[p]) != read[p]]
  if damaged:
    raise ConfigError(f"config key train.init_from: {directory} step {step} is damaged: "
                      f"{len(damaged)} arrays read back other values than were written "
                      f"(e.g. {damaged[0]})")
  for collection, tree in restored.items():
    state_dict[collection] = _merged(state_dict[collection], tree)
  copied = total - len(kept)
  log.info("train.init_from: copied %d of %d arrays of G, D and the EMA from %s step %d%s",
           copied, total, directory, step,
           f"; at their initial values: {', '.join(kept)}" if kept else "")
  if kept:
    log.warning("train.init_from: %d arrays keep their initial values (e.g. %s)", len(kept),
                kept[0])
  their_classes = [str(n) for n in meta.get("class_names") or []]
  if their_classes and len(their_classes) == len(class_names) and (
      their_classes != list(class_names)):
    log.warning("train.init_from: class embeddings copied by index from a run whose classes "
                "were %s; here they are %s", their_classes, list(class_names))
  return flax.serialization.from_state_dict(state, state_dict)


def _merged(into: Any, tree: Any) -> Any:
  """`into` (a nested dict) with the leaves of `tree` (a nested dict of some of its keys)."""
  if not isinstance(tree, dict):
    return tree
  return {k: _merged(v, tree[k]) if k in tree else v for k, v in into.items()}
