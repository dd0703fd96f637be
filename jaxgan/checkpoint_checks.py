"""What a checkpoint read holds, checked against what was meant: the state tree's leaves (paths,
shapes, dtypes) from the checkpoint's metadata before any array is read, so that another
layout (another jaxgan version or model config) is told apart from damage; and after the read,
each array's digest against the one kept in the meta at save time (state_digest), which finds
the damage orbax's compressed files decode without an error."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Optional, Sequence

import jax

from jaxgan import state_digest


# The meta key holding the state's per-array digests as saved.
DIGEST_KEY = "state_digest"
# The meta key holding the digest of the meta itself: a damaged meta that still parses (one
# flipped digit of the config's learning rate) read as a config change, which refused the resume
# ("pass --allow_config_change") instead of falling back to the step before.
META_DIGEST_KEY = "meta_digest"


class CheckpointError(RuntimeError):
  """No checkpoint could be read."""


class LayoutError(CheckpointError):
  """A checkpoint's state holds other keys than the train state it is read into: written by
  another jaxgan version (or model), not damaged."""


# The JSON types of the meta's keys as the trainer writes them (absent keys are fine: older runs
# lack some): a damaged one that still parses is told by its shape here, and by its digest
# (META_DIGEST_KEY, where kept), before a reader trips over it.
META_TYPES = {"config": dict, "class_names": list, "attributes": list, "step": int,
              "data_position": int, "data_fingerprint": (int, type(None)),
              "order_fingerprint": (int, type(None)), "label_counts": dict, DIGEST_KEY: dict,
              "eval_settings": dict, "fid": (int, float), META_DIGEST_KEY: str}


def check_meta(step: int, directory: str, meta: Any) -> None:
  """Raises CheckpointError when `meta` is not the object the trainer writes (a key of another
  JSON type): damage, so the step is skipped for the one before, as a meta that does not parse
  is."""
  if not isinstance(meta, dict):
    raise CheckpointError(f"checkpoint step {step} in {directory} is damaged: its meta is "
                          f"{json_type(meta)}, not an object")
  for key, types in META_TYPES.items():
    if key in meta and (not isinstance(meta[key], types) or isinstance(meta[key], bool)):
      raise CheckpointError(f"checkpoint step {step} in {directory} is damaged: its meta's "
                            f"{key!r} is {json_type(meta[key])}")
  if META_DIGEST_KEY in meta and meta[META_DIGEST_KEY] != meta_digest(meta):
    raise CheckpointError(f"checkpoint step {step} in {directory} is damaged: its meta reads "
                          "back other values than were written (its digest differs)")


def meta_digest(meta: dict) -> str:
  """A digest of `meta` (but META_DIGEST_KEY) as JSON holds it: its text once written and read
  back (keys as strings, sorted), so the same meta gives the same digest before and after."""
  rest = {key: value for key, value in meta.items() if key != META_DIGEST_KEY}
  text = json.dumps(json.loads(json.dumps(rest)), sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def json_type(value: Any) -> str:
  """`value`'s type in JSON's words."""
  names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
           int: "a number", float: "a number", type(None): "null"}
  return names.get(type(value), type(value).__name__)


def check_digest(step: int, directory: str, state: Any, meta: dict,
                 parts: Optional[Sequence[str]] = None) -> None:
  """Raises CheckpointError when the restored arrays are not bit-identical to those written
  (damage the compressed files do not detect); `parts`: of those top-level fields only. Steps
  written before digests were kept pass."""
  expected = meta.get(DIGEST_KEY)
  if not expected:
    return
  if parts is not None:
    expected = {path: value for path, value in expected.items()
                if path.split("/", 1)[0] in parts}
  differ = state_digest.differences(expected, state_digest.tree_digest(state))
  if differ:
    raise CheckpointError(f"checkpoint step {step} in {directory} is damaged: {len(differ)} of "
                          f"{len(expected)} arrays read back other values than were written "
                          f"(e.g. {differ[0]})")


def leaf_layouts(tree: Any) -> dict[str, tuple[Optional[tuple], Optional[str]]]:
  """{'a/b/c': (shape, dtype name), None where a leaf has none} for every leaf of a nested-dict
  tree (orbax's metadata tree or a state dict of arrays or ShapeDtypeStructs)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {state_digest.path_name(path):
          (tuple(leaf.shape) if hasattr(leaf, "shape") else None,
           str(leaf.dtype) if getattr(leaf, "dtype", None) is not None else None)
          for path, leaf in leaves}


def key_paths(tree: Any) -> set[str]:
  """'a/b/c' for every leaf of a nested-dict tree."""
  return set(leaf_layouts(tree))


def layout_difference(saved: Any, target: Any, parts: Optional[Sequence[str]] = None
                      ) -> Optional[str]:
  """What differs between the leaves (paths, shapes, dtypes) of a checkpoint and of the state to
  read (`parts`: of those top-level fields), or None. Compared from the metadata: orbax would
  fail on each reshaped array in turn, with a traceback per array, and cast a retyped one, which
  its digest would then take for damage."""
  saved_layouts, target_layouts = leaf_layouts(saved), leaf_layouts(target)
  if parts is not None:
    saved_layouts = {path: layout for path, layout in saved_layouts.items()
                     if path.split("/", 1)[0] in parts}
  missing = sorted(set(target_layouts) - set(saved_layouts))
  unexpected = sorted(set(saved_layouts) - set(target_layouts))
  common = sorted(set(saved_layouts) & set(target_layouts))
  changed = {what: [f"{k} {saved_layouts[k][i]} saved, {target_layouts[k][i]} now" for k in common
                    if None not in (saved_layouts[k][i], target_layouts[k][i])
                    and saved_layouts[k][i] != target_layouts[k][i]]
             for i, what in enumerate(("shapes differ", "dtypes differ"))}
  parts = [f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in
           (("keys missing", missing), ("keys not in this version", unexpected),
            *changed.items()) if keys]
  return "; ".join(parts) or None
