"""`train.init_from`: a new run that starts from another run's weights (transfer learning, as
StyleGAN2-ADA's --resume with a trained network: a small catalog fine-tuned from a model of a
larger one).

G, D, G's EMA and their BatchNorm statistics are copied array by array where the path and the
shape match; the others keep their initial values and are listed (a layer of another width).
Class tables (embeddings, a projection D's) are matched by class name, row by row. The optimizer
states, the step, the RNG key, ADA's p and LeCam's anchors are the new run's own, as
StyleGAN2-ADA's resume keeps them. Only a run's first start reads it: a resumed run continues from
its own checkpoints. It names a run (its latest step is read) or one of its step folders; the run
records the step folder read.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxgan import checkpoint as ckpt_lib
from jaxgan import label_choices
from jaxgan import multihost
from jaxgan import run_health
from jaxgan import run_folders
from jaxgan import state_digest
from jaxgan.config import ConfigError

log = logging.getLogger(__name__)

COPIED = ("g_params", "g_batch_stats", "d_params", "d_batch_stats", "ema_params")


def locate(path: str) -> tuple[str, Optional[int]]:
  """(the checkpoints folder, the step or None for its latest) that `path` names: a run's
  workdir, its checkpoints folder, or one step folder in it (`.../checkpoints/5000`)."""
  for directory in (os.path.join(path, "checkpoints"), path):
    if run_folders.step_folders(directory, item="state"):
      return os.path.abspath(directory), None
  parent, name = os.path.split(os.path.normpath(path))
  if name.isdecimal() and int(name) in run_folders.step_folders(parent, item="state"):
    return os.path.abspath(parent), int(name)
  raise ConfigError(f"config key train.init_from: no checkpoint in {path!r}; give the workdir of "
                    "a jaxgan run that has written one, or one of its step folders "
                    "(WORKDIR/checkpoints/STEP), or '' to start from random weights")


def plan(saved: dict[str, tuple], state: dict, tables: Optional[dict] = None,
         pairs: Optional[list] = None) -> tuple[dict, list[str], int, dict]:
  """(the restore target: the copied collections' leaves whose path and shape match the saved
  ones, as ShapeDtypeStructs with this run's dtype and sharding, keyed by the saved paths; the
  leaves left at their initial values, with why; the number of leaves considered; for each leaf
  read, the saved name it is read from).

  A leaf of conditioning attribute i (a class table, `tables`: name -> (attribute, axis) from
  `state.class_axes`, or a table's spectral-norm state) is read from the donor's same leaf of
  attribute `pairs[i]`, the donor's attribute of the same column (`attribute_pairs`; i where not
  given). A table is read whole in the saved shape where only its class axis differs, replicated
  (it is small, and another class count may not split as this run's sharding does):
  `initialise_from` picks its rows by class name."""
  tables = tables or {}
  target, kept, total, sources = {}, [], 0, {}
  for collection in COPIED:
    for path, leaf in jax.tree_util.tree_flatten_with_path(state[collection])[0]:
      total += 1
      # Keys, not the name split at '/': SpectralNorm's own keys hold slashes ('kernel/u').
      keys = [collection] + [str(getattr(k, "key", k)) for k in path]
      name, shape = "/".join(keys), tuple(leaf.shape)
      table = tables.get(name)
      attribute = table[0] if table else _attribute_of(keys)
      j = attribute if attribute is None or pairs is None else pairs[attribute]
      if attribute is not None and j is None:
        kept.append(f"{name} (that run has no attribute of its column)")
        continue
      found = [c for c in ([keys] if attribute is None else _source_keys(keys, attribute, j))
               if "/".join(c) in saved]
      fits = [c for c in found if (_same_but(saved["/".join(c)][0], shape, table[1]) if table
                                   else saved["/".join(c)][0] == shape)]
      if not fits:
        kept.append(f"{name} (shape {saved['/'.join(found[0])][0]} there, {shape} here)"
                    if found else f"{name} (not in that run)")
        continue
      source = fits[0]
      sources[name] = "/".join(source)
      sharding = leaf.sharding
      if table and isinstance(sharding, jax.sharding.NamedSharding):
        sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
      node = target
      for key in source[:-1]:
        node = node.setdefault(key, {})
      node[source[-1]] = jax.ShapeDtypeStruct(saved[sources[name]][0], leaf.dtype,
                                              sharding=sharding)
  return target, kept, total, sources


# The keys of attribute i's leaves: ClassEmbed's `attr{i}` module, SpectralNorm's `attr{i}_sn`
# collection entry and its 'attr{i}/kernel/u' keys (the ResNet's projection D).
_ATTRIBUTE_KEY = re.compile(r"attr(\d+)(_sn)?(/.*)?")


def _attribute_of(keys: list[str]) -> Optional[int]:
  """The conditioning attribute a leaf belongs to, from its keys; None for the others."""
  for key in keys:
    match = _ATTRIBUTE_KEY.fullmatch(key)
    if match:
      return int(match.group(1))
  return None


def _source_keys(keys: list[str], i: int, j: int) -> list[list[str]]:
  """Where the donor keeps, for this run's leaf of attribute i at `keys`, its attribute j's: the
  `attr{i}` keys renamed; and where j is 0, a one-attribute DCGAN's plain embedding (no `attr`
  level, as before several attributes existed, for its checkpoints), in either direction."""
  if _attribute_of(keys) is None:  # this run's one-attribute DCGAN table
    return ([keys] if j == 0 else []) + [keys[:-1] + [f"attr{j}", keys[-1]]]
  renamed = [_ATTRIBUTE_KEY.sub(lambda m: f"attr{j}{m.group(2) or ''}{m.group(3) or ''}", k)
             if _ATTRIBUTE_KEY.fullmatch(k) else k for k in keys]
  plain = [k for k in keys if k != f"attr{i}"]
  return [renamed] + ([plain] if j == 0 and len(plain) < len(keys) else [])


def _same_but(a: tuple, b: tuple, axis: int) -> bool:
  """Whether shapes `a` and `b` agree except (perhaps) along `axis`."""
  return len(a) == len(b) and all(x == y for i, (x, y) in enumerate(zip(a, b)) if i != axis)


@dataclasses.dataclass(frozen=True)
class Donor:
  """What a new run copies: the arrays read (in this run's shardings), and what was not."""
  directory: str
  step: int
  arrays: dict  # {collection: nested dict of arrays} of the copied leaves
  kept: list  # the leaves left at their initial values, with why
  total: int  # the leaves considered
  classes: dict  # the donor meta's class record ('attributes', 'class_names'; {} where none)
  tables: dict  # this run's class tables: name -> (attribute, class axis)
  sources: dict  # the arrays read: this run's name -> the donor's (another attribute's, say)

  @property
  def folder(self) -> str:
    """The step folder read: what the new run records as its `train.init_from`."""
    return os.path.join(self.directory, str(self.step))


def _unreadable(directory: str, step: int, error: BaseException) -> ConfigError:
  first = str(error).splitlines()[0][:300] if str(error) else ""
  return ConfigError(f"config key train.init_from: {directory} step {step} cannot be read "
                     f"({type(error).__name__}: {first}); give another of its steps "
                     f"({directory}/STEP) or another run")


def read_donor(path: str, abstract_state: Any, model_name: str, image_size: int,
               tables: Optional[dict] = None, attributes: Optional[list] = None) -> Donor:
  """The arrays of the checkpoint `path` names (a run's latest, or the step folder given) that
  `abstract_state` (this run's state as ShapeDtypeStructs with shardings) can take. Collective:
  every process reads the same step (process 0's list and choice), and a read that fails
  anywhere fails everywhere. Raises ConfigError for another model family or image size (layers
  are named by position, so arrays of equal shape would be copied into layers that do other
  things), a damaged, unreadable or non-finite step, or no array alike. `tables`
  (`state.class_axes`) names the class tables, read whole to be matched by class name;
  `attributes` (this run's [[column, class names]]) pairs each with the donor's table of the
  same column."""
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
    classes = {k: meta[k] for k in ("attributes", "class_names") if k in meta}
    pairs = None if attributes is None else attribute_pairs(
        label_choices.trained_attributes(classes, attributes), attributes)
    target, kept, total, sources = plan(
        saved, flax.serialization.to_state_dict(abstract_state), tables, pairs)
    if not target:
      raise ConfigError(f"config key train.init_from: none of the {total} arrays of G, D and "
                        f"the EMA matches {directory} step {step}")
    arrays, error, _ = reader.read_agreed(
        step, lambda: _restore(directory, step, target, saved, meta))
    if error is not None:
      raise _unreadable(directory, step, error)
    # A donor that diverged would have every step of this run skipped, and the run stop blaming
    # its learning rates: refused here, naming the step (the same on every process).
    bad = run_health.nonfinite_leaves(arrays, state_digest.path_name)
    if bad:
      raise ConfigError(f"config key train.init_from: {directory} step {step} holds non-finite "
                        f"values ({', '.join(bad[:3])}{' and more' if len(bad) > 3 else ''}); "
                        f"give an earlier step of it ({directory}/STEP) or another run")
  finally:
    reader.close()
  return Donor(directory, step, arrays, kept, total, classes, dict(tables or {}), sources)


def _restore(directory: str, step: int, target: dict, saved: dict, meta: dict) -> dict:
  """The `target` leaves of checkpoint `step`, checked against the digests its meta holds."""
  restore_args = jax.tree_util.tree_map(
      lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype), target)
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
    restored = checkpointer.restore(
        os.path.join(directory, str(step), "state"),
        args=ocp.args.PyTreeRestore(target, restore_args=restore_args, partial_restore=True))
  # A partial restore hands back the target's placeholder for a path the checkpoint lacks.
  missing = [state_digest.path_name(path) for path, leaf in
             jax.tree_util.tree_flatten_with_path(restored)[0] if not isinstance(leaf, jax.Array)]
  if missing:
    raise ckpt_lib.CheckpointError(f"{len(missing)} arrays planned were not read (e.g. "
                                   f"{missing[0]})")
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


def initialise_from(state: Any, donor: Donor, attributes: list) -> Any:
  """`state` (a freshly initialised TrainState) with the donor's arrays in place of its own. A
  class table takes the donor's row of each class of the same name (`class_rows`; a class that
  run did not have keeps its initial row), so a run on a subset of classes, or on them in another
  order, or with new ones, starts each known class from what the donor learnt for it.
  `attributes`: this run's [[attribute, class names]]."""
  state_dict = flax.serialization.to_state_dict(state)
  theirs = label_choices.trained_attributes(donor.classes, attributes)
  rows = class_rows(theirs, attributes)
  read = {state_digest.path_name(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(donor.arrays)[0]}
  kept = list(donor.kept)
  # (network, attribute) of the tables left whole at their initial values: their spectral-norm
  # state (the D projection's u and sigma, in D's batch_stats) stays initial too. SpectralNorm
  # recomputes sigma from u at every training call, but u, the power iteration's vector, would
  # be another table's: one iteration from it underestimates this table's norm at first.
  initial_tables = set()
  for collection in COPIED:  # each network's params before its batch_stats

    def place(path, mine, collection=collection):
      name = f"{collection}/{state_digest.path_name(path)}"
      if name not in donor.sources:  # not read (listed by `plan`)
        return mine
      network = collection.split("_")[0]
      if name not in donor.tables:  # an array of G, D or the EMA: the donor's
        attribute = _attribute_of([str(getattr(k, "key", k)) for k in path])
        if (network, attribute) in initial_tables:
          kept.append(f"{name} ({attributes[attribute][0]}: its table keeps its initial values)")
          return mine
        return read[donor.sources[name]]
      attribute, axis = donor.tables[name]
      picked, why = _pick_rows(mine, read[donor.sources[name]], rows[attribute], axis)
      if picked is None:
        kept.append(f"{name} ({attributes[attribute][0]}: {why})")
        initial_tables.add((network, attribute))
        return mine
      return picked

    state_dict[collection] = jax.tree_util.tree_map_with_path(place, state_dict[collection])
  shown = ", ".join(kept[:8]) + (f" and {len(kept) - 8} more" if len(kept) > 8 else "")
  log.info("train.init_from: copied %d of %d arrays of G, D and the EMA from %s step %d%s",
           donor.total - len(kept), donor.total, donor.directory, donor.step,
           f"; at their initial values: {shown}" if kept else "")
  if kept:
    log.warning("train.init_from: %d arrays keep their initial values (e.g. %s)%s", len(kept),
                kept[0], _conditioning_differs(theirs, attributes))
  used = {donor.tables[name][0] for name in donor.sources if name in donor.tables}
  for i, ((column, names), picked) in enumerate(zip(attributes, rows)):
    if i not in used or picked is None or [column, list(names)] in theirs:
      continue
    new = [n for n, r in zip(names, picked) if r < 0]
    log.log(logging.WARNING if len(new) == len(names) else logging.INFO,
            "train.init_from: %s's class embeddings matched by name: %d of %d classes from that "
            "run%s", column, len(names) - len(new), len(names),
            f"; at their initial values: {', '.join(new)}" if new else "")
  return flax.serialization.from_state_dict(state, state_dict)


def _conditioning_differs(theirs: Optional[list], mine: list) -> str:
  """Why layers that take class embeddings (G's input, say) differ in shape, where one run is
  class-conditional and the other not; "" otherwise (or where the donor recorded nothing)."""
  if theirs is None or bool(theirs) == bool(mine):
    return ""
  if theirs:
    return (f": that run was conditioned on {', '.join(str(c) for c, _ in theirs)} and this one is "
            "unconditional, so the layers that took its class embeddings differ")
  return (f": that run was unconditional and this one is conditioned on "
          f"{', '.join(str(c) for c, _ in mine)}, so the layers that take class embeddings differ")


def attribute_pairs(theirs: Optional[list], mine: list) -> Optional[list[Optional[int]]]:
  """Per attribute of this run ([[attribute, class names]], as `theirs`, the donor's), the
  donor's attribute of the same name, else the one at its position whose name this run does not
  have (a folder's 'class' and a catalog's 'category' name the same thing), else None. None
  where the donor recorded no class names (its tables are then taken at the same positions)."""
  if theirs is None:
    return None
  columns, mine_columns = [c for c, _ in theirs], {c for c, _ in mine}
  return [columns.index(column) if column in columns else (
      i if i < len(theirs) and theirs[i][0] not in mine_columns else None)
          for i, (column, _) in enumerate(mine)]


def class_rows(theirs: Optional[list], mine: list) -> list[Optional[np.ndarray]]:
  """Per attribute of this run, the index of each of its classes among the classes of the
  donor's attribute paired with it (`attribute_pairs`), -1 for a class the donor did not have (or
  an attribute it did not have); classes match by name. None per attribute where the donor
  recorded no class names."""
  pairs = attribute_pairs(theirs, mine)
  if pairs is None:
    return [None] * len(mine)
  rows = []
  for (_, names), j in zip(mine, pairs):
    known = {n: k for k, n in reversed(list(enumerate(theirs[j][1] if j is not None else [])))}
    rows.append(np.array([known.get(n, -1) for n in names], np.int64))
  return rows


def _pick_rows(mine: jax.Array, theirs: jax.Array, rows: Optional[np.ndarray], axis: int
               ) -> tuple[Optional[jax.Array], str]:
  """(this run's class table `mine` with `theirs`'s entry `rows[k]` along `axis` as its entry k
  where rows[k] >= 0, in `mine`'s sharding; or None and why none is taken). `theirs` was read
  replicated: even a table taken whole goes back to `mine`'s sharding (split by mesh.fsdp), which
  the jitted step requires of its state."""
  if rows is None:  # no class names recorded there: by index, where the counts agree
    if theirs.shape == mine.shape:
      return _resharded(theirs, mine.sharding), ""
    return None, f"shape {tuple(theirs.shape)} there, {tuple(mine.shape)} here"
  if not (rows >= 0).any():
    return None, "no class in common"
  if rows.max() >= theirs.shape[axis]:  # names recorded for another table: never a guess
    return None, f"that run's class names do not fit its table of {theirs.shape[axis]}"
  if theirs.shape == mine.shape and np.array_equal(rows, np.arange(len(rows))):
    return _resharded(theirs, mine.sharding), ""
  shape = [len(rows) if a == axis else 1 for a in range(mine.ndim)]
  known = np.reshape(rows >= 0, shape)
  picked = jax.jit(lambda m, t: jnp.where(
      known, jnp.take(t, np.maximum(rows, 0), axis=axis, mode="clip"), m),
      out_shardings=mine.sharding)
  return picked(mine, theirs), ""


def _resharded(array: jax.Array, sharding: Any) -> jax.Array:
  """`array` in `sharding` (a jitted copy: collective, so it works across hosts alike)."""
  return jax.jit(lambda a: a, out_shardings=sharding)(array)
