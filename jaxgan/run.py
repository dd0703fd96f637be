"""What a run is made of before any state exists: the mesh, models, shardings and the jitted
train step (`build_run`), and compiling that step without data (`compile_report`, the train
CLI's --compile_only; `data.num_classes=-1` reads the prepared set's dataset_info.json). The
trainer, the benchmark and the profile all build the step here, so they time and run the same
one."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import math
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from jaxgan import checkpoint as ckpt_lib
from jaxgan import config as config_lib
from jaxgan import data as data_lib
from jaxgan import kept_programs
from jaxgan import losses as losses_lib
from jaxgan import models as models_lib
from jaxgan import multihost
from jaxgan import resources
from jaxgan import sharding
from jaxgan import state as state_lib
from jaxgan import steps
from jaxgan.config import mesh_checks
from jaxgan.config import validation as config_validation


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run is made of, before any state exists. Frozen: build_run gives a run built again
  the same object (_programs)."""

  mesh: Any
  generator: Any
  discriminator: Any
  init: Callable[[], state_lib.TrainState]
  abstract_state: Any
  state_shardings: Any
  batch_sharding: Any
  train_step: Any  # jitted (state, batch) -> (state, metrics), state donated
  steps_per_call: int  # train steps per train_step call (batch and metrics stacked when > 1)
  make_state: Callable[[], state_lib.TrainState]  # `init` jitted, the state made where it lives


# Keys that no traced program of a run (its initialisation, its train step) reads: what the
# host's loop, data reading, checkpoints and evaluation do with them happens outside. Runs whose
# configs differ only here share their programs (_programs); test_run's guard lowers both
# programs with every one of these changed and compares.
HOST_ONLY_KEYS = frozenset({
    "data.cache_dir", "data.id_column", "data.image_column", "data.image_dir",
    "data.image_pattern", "data.max_bad_fraction", "data.max_pixels", "data.min_class_count",
    "data.min_source_size", "data.path", "data.rare_classes", "data.source", "data.tfds_data_dir",
    "data.tfds_download", "data.tfds_image_key", "data.tfds_label_key", "data.tfds_name",
    "data.tfds_split", "data.workers",
    "distributed.coordinator_address", "distributed.num_processes", "distributed.process_id",
    "eval.batch_size", "eval.cache_dir", "eval.metrics", "eval.num_real",
    "eval.standing_stats_batches", "eval.weights",
    "train.checkpoint_every", "train.eval_every", "train.eval_num_samples", "train.init_from",
    "train.keep_checkpoints", "train.log_every", "train.max_nonfinite_steps", "train.num_steps",
    "train.sample_every", "train.samples_per_class", "train.tensorboard"})


@dataclasses.dataclass(frozen=True)
class _ProgramKey:
  """What a run's programs are made from: the config's keys that may enter them (as canonical
  JSON) and the mesh (equal devices and axis names compare equal)."""

  text: str
  mesh: Any
  config: Any = dataclasses.field(compare=False, hash=False)  # a copy: the programs trace later


def _programs(key: _ProgramKey) -> Run:
  """The run of `key`: build_run's, its checks aside; one object for every build of the key in
  a process (kept_programs): a run built again (a resume or a longer run in the same process: a
  notebook, a sweep, the tests' resume scenarios) calls the jitted functions it called before,
  whose traces, lowerings and executables JAX keeps, instead of tracing, lowering and loading
  them again: the tests' tiny DCGAN, run again in one process (start and 4 steps), took 0.66 s
  instead of 2.84 s (2-core CPU, 2026-12-06)."""
  return kept_programs.kept(_build_programs, key)


def _build_programs(key: _ProgramKey) -> Run:
  """Models, shardings, the jitted init and train step of `key` (traced when first called)."""
  config, mesh = key.config, key.mesh
  generator, discriminator = models_lib.build_models(config)
  loss = losses_lib.build_loss(config)
  g_tx, d_tx = state_lib.make_optimizers(config)
  init = functools.partial(state_lib.init_state, config, generator, discriminator, g_tx, d_tx,
                           config.seed)
  abstract_state = jax.eval_shape(init)
  state_sh = sharding.state_shardings(mesh, abstract_state)
  batch_sh = sharding.batch_sharding(mesh, stacked=config.train.steps_per_call > 1)
  step_fn = steps.make_train_step(config, generator, discriminator, loss, g_tx, d_tx)
  train_step = jax.jit(steps.scan_steps(steps.with_state_rng(step_fn),
                                        config.train.steps_per_call),
                       in_shardings=(state_sh, batch_sh),
                       out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)
  return Run(mesh, generator, discriminator, init, abstract_state, state_sh, batch_sh,
             train_step, config.train.steps_per_call, jax.jit(init, out_shardings=state_sh))


def program_key(config: ml_collections.ConfigDict, mesh: Any) -> _ProgramKey:
  """The key of `config`'s programs on `mesh` (HOST_ONLY_KEYS left out)."""
  entering = {k: v for k, v in config_lib.flat_items(config) if k not in HOST_ONLY_KEYS}
  return _ProgramKey(json.dumps(entering, sort_keys=True, default=repr), mesh,
                     copy.deepcopy(config))


def build_run(config: ml_collections.ConfigDict, reads_data: bool = True,
              makes_state: bool = True) -> Run:
  """Validates the config and builds mesh, models, shardings and the jitted step (not compiled).
  `reads_data=False`: for a step that will not read the configured data (compiled without
  batches, or timed on made-up ones), whose source's checks of its files are then skipped.
  `makes_state=False`: for a step compiled only (--compile_only plans for devices this machine
  lacks), whose train state need not fit here."""
  join_processes(config)
  config_validation.validate(config, jax.device_count(), jax.process_count(), reads_data=reads_data)
  mesh = sharding.make_mesh(config)
  run = _programs(program_key(config, mesh))
  if makes_state:
    _check_state_fits(config, run.abstract_state, run.state_shardings, mesh)
  sharding.warn_if_fsdp_splits_little(run.abstract_state, mesh.shape[sharding.FSDP_AXIS])
  return run


def _check_state_fits(config: ml_collections.ConfigDict, abstract_state: Any, shardings: Any,
                      mesh: Any) -> None:
  """Refuses a model whose train state alone exceeds its devices' memory (on a CPU, this
  process's devices share the host's), before anything compiles: a typo'd model.z_dim of 10^8
  (800 GB of state) started, then ended in a MemoryError traceback or the OS's kill. The state
  is a part of what a step needs: a model that passes may still run out of memory."""
  per_device = sum(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, where: math.prod(where.shard_shape(x.shape)) * x.dtype.itemsize,
      abstract_state, shardings)))
  local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
  if jax.default_backend() == "cpu":
    beyond = resources.beyond_host_memory(per_device * len(local))
  else:
    stats = local[0].memory_stats() if hasattr(local[0], "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    beyond = (f"{per_device / 2**30:.4g} GiB on each device, more than its {limit / 2**30:.4g} "
              "GiB of memory" if limit and per_device > limit else "")
  if beyond:
    count = lambda tree: sum(x.size for x in jax.tree_util.tree_leaves(tree))
    raise config_lib.ConfigError(
        f"config key model: {config.model.name}'s train state (G "
        f"{count(abstract_state.g_params):,} and D {count(abstract_state.d_params):,} "
        "parameters, G's EMA and the optimizers' moments) takes "
        f"{beyond}; use a smaller model (model.z_dim, model.g_width, model.d_width) or split it "
        "over more devices with mesh.fsdp")


def abstract_batch(config: ml_collections.ConfigDict, batch_sharding: Any) -> dict:
  """Shapes of one call's global batch (stacked per step when train.steps_per_call > 1), for
  lowering without data."""
  n = config.train.batch_size * config.train.n_critic
  size = config.data.image_size
  k = config.train.steps_per_call
  lead = (k,) if k > 1 else ()
  return {"image": jax.ShapeDtypeStruct(lead + (n, size, size, 3), np.uint8,
                                        sharding=batch_sharding),
          "label": jax.ShapeDtypeStruct(lead + config_lib.label_shape(config, n), np.int32,
                                        sharding=batch_sharding)}


# Keys each process may set for itself: its own index and its decoding workers. Paths may differ
# too (hosts may mount the same data elsewhere; the data's contents are compared by its
# fingerprint), but not whether they are set: a train.init_from or eval.weights on one host only
# sends that one alone into collectives.
PER_PROCESS_KEYS = frozenset({"distributed.process_id", "data.workers"})


def _value_digest(value: Any) -> np.ndarray:
  """64 bits of a config value's digest, as two uint32 words (whole through a collective)."""
  text = json.dumps(value, sort_keys=True, default=repr).encode()
  return np.frombuffer(hashlib.sha256(text).digest()[:8], np.uint32)


def check_same_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on every process when some process's config differs from the others'
  (PER_PROCESS_KEYS aside; of a path, whether it is set), naming the keys: each process compiles
  its own step from its own config, so a learning rate or loss given to one host only (an
  override left out of one worker's command, an edited config file on one host) would train
  replicas that silently part ways, not fail."""
  if jax.process_count() == 1:
    return
  items = [(k, bool(v) if k in config_lib.PATH_KEYS else v)
           for k, v in config_lib.flat_items(config) if k not in PER_PROCESS_KEYS]
  names = multihost.all_gather(_value_digest([k for k, _ in items]))
  if not (names == names[0]).all():
    raise config_lib.ConfigError(
        "the processes' configs have different keys (another jaxgan version on some host?); "
        "install the same jaxgan on every host")
  table = multihost.all_gather(np.stack([_value_digest(v) for _, v in items]))  # [P, K, 2]
  differs = (table != table[:1]).any(axis=(0, 2))
  if differs.any():
    keys = [k for (k, _), d in zip(items, differs) if d]
    processes = [int(p) for p in np.flatnonzero((table != table[:1]).any(axis=(1, 2)))]
    here = ", ".join(f"{k}={config_lib.get(config, k)!r}" for k in keys[:4])
    raise config_lib.ConfigError(
        f"config key{'s' if keys[1:] else ''} {', '.join(keys)} differ{'' if keys[1:] else 's'} "
        f"between processes (process{'es' if processes[1:] else ''} "
        f"{', '.join(map(str, processes))} against process 0; process {jax.process_index()} has "
        f"{here}); give every process the same config file and --config overrides")


def join_processes(config: ml_collections.ConfigDict) -> None:
  """Checks the config's keys (a config file not built on base_config() gets its one-line error,
  not a KeyError from the first key it lacks) and its distributed settings, then joins
  jax.distributed where configured, and checks that every process has the same config; once
  joined, later calls only check."""
  config_lib.check_known_keys(config)
  config_lib.check_complete(config)
  mesh_checks.validate_distributed(config)
  try:
    sharding.initialize_distributed(config)
  except sharding.PortInUse as e:
    raise config_lib.ConfigError(f"config key distributed.coordinator_address "
                                 f"({config.distributed.coordinator_address!r}): {e}") from None
  except (ValueError, RuntimeError) as e:  # JAX's: no cluster detected, an address in use, ...
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    address = config.distributed.coordinator_address
    advice = ("'auto' needs a cluster JAX detects (Cloud TPU, SLURM, Open MPI); else pass "
              "process 0's host:port" if address == "auto" else "check it, "
              "distributed.num_processes and process_id, and that every process was started")
    raise config_lib.ConfigError(
        f"config key distributed.coordinator_address ({address!r}): jax.distributed could not "
        f"start ({first}); {advice}") from None
  uneven = sharding.uneven_devices(jax.devices())  # before the first collective, which it breaks
  if uneven:
    raise config_lib.ConfigError(uneven)
  check_same_config(config)


def resolve_class_counts(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with data.num_classes=-1 resolved from its prepared set (data.with_class_counts),
  read by the joined processes and agreed: a host without the set's dataset_info.json stops
  them all instead of leaving the others in the first collective."""
  return multihost.agreed(lambda: data_lib.with_class_counts(config),
                          "reading the data set's class counts")


def with_data_counts(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """join_processes, then resolve_class_counts: for callers without a stop request of their own
  to open in between (--compile_only, the benchmark)."""
  join_processes(config)
  return resolve_class_counts(config)


def compile_report(config: ml_collections.ConfigDict) -> dict:
  """Lowers and compiles the train step for the configured mesh without creating a state or
  reading data (a prepared set's dataset_info.json only, for data.num_classes=-1); returns
  per-device memory and FLOPs as XLA reports them."""
  config = with_data_counts(config)
  # Neither the data nor the train state need be on (or fit) this machine.
  run = build_run(config, reads_data=False, makes_state=False)
  state = ckpt_lib.abstract_like(run.abstract_state, run.state_shardings)
  compiled = run.train_step.lower(state, abstract_batch(config, run.batch_sharding)).compile()
  report: dict = {"mesh": dict(run.mesh.shape), "num_devices": int(run.mesh.size),
                  "device_kind": jax.devices()[0].device_kind,
                  "global_batch": config.train.batch_size,
                  # Memory is the whole call's; FLOPs and bytes accessed are per train step: a
                  # call is steps_per_call unrolled steps (steps.scan_steps), which XLA's cost
                  # analysis counts in full, so they are divided by it.
                  "steps_per_call": run.steps_per_call}
  memory = compiled.memory_analysis()
  if memory is not None:
    for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "alias_size_in_bytes", "generated_code_size_in_bytes"):
      if hasattr(memory, field):
        report[f"per_device_{field}"] = int(getattr(memory, field))
    report["per_device_peak_estimate_bytes"] = int(
        getattr(memory, "argument_size_in_bytes", 0) + getattr(memory, "output_size_in_bytes", 0)
        + getattr(memory, "temp_size_in_bytes", 0) - getattr(memory, "alias_size_in_bytes", 0))
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per partition
    cost = cost[0] if cost else None
  if cost:
    k = run.steps_per_call
    report["per_device_flops"] = float(cost.get("flops", float("nan"))) / k
    report["per_device_bytes_accessed"] = float(cost.get("bytes accessed", float("nan"))) / k
  fsdp = run.mesh.shape[sharding.FSDP_AXIS]
  g_split, g_params = sharding.split_values(run.abstract_state.g_params, fsdp)
  d_split, d_params = sharding.split_values(run.abstract_state.d_params, fsdp)
  report.update(g_parameters=g_params, d_parameters=d_params)
  if fsdp > 1:
    report["fsdp_split_fraction"] = (g_split + d_split) / max(g_params + d_params, 1)
  # Leaves fsdp does not split are all-reduced, not gathered: counted as what they are.
  comm = sharding.gradient_bytes_per_step(g_params, d_params, config.train.n_critic,
                                          run.mesh.shape[sharding.DATA_AXIS], fsdp,
                                          g_split=g_split, d_split=d_split)
  report["per_device_collective_bytes_per_step"] = round(comm["total_bytes"])  # a mean: bytes
  return report
