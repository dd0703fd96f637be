"""Throughput measurements behind `python -m jaxgan.benchmark`: the real train step, and input.

Timings are medians of individually timed repetitions after a warm-up; nothing here is a unit
test of speed.
"""

from __future__ import annotations

import re
import statistics
import tempfile
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jaxgan import config as config_lib
from jaxgan import flops as flops_lib
from jaxgan import models as models_lib
from jaxgan import profiling
from jaxgan import resources
from jaxgan import run as run_lib
from jaxgan import sharding
from jaxgan import stopping
from jaxgan.models import layers
from jaxgan.models.batchnorm import resolve_norm_impl

# Dense peak FLOP/s per chip by (device kind name, compute dtype): vendor data sheets (NVIDIA:
# tensor cores, no sparsity; float32 runs as TF32 on NVIDIA's matrix units). A name matches as
# whole words of the device kind ("A100" is not "RTX A1000"), and the longest match wins: "H100
# PCIe" before "H100" (the SXM part, "NVIDIA H100 80GB HBM3"). None: known, but no figure here.
PEAK_FLOPS = {
    ("H200", "bfloat16"): 989e12, ("H200", "float32"): 494e12,
    ("GH200", "bfloat16"): 989e12, ("GH200", "float32"): 494e12,  # Grace Hopper's H100/H200
    ("H200 NVL", "bfloat16"): 835e12, ("H200 NVL", "float32"): 418e12,
    ("H100", "bfloat16"): 989e12, ("H100", "float32"): 494e12,
    ("H100 PCIe", "bfloat16"): 756e12, ("H100 PCIe", "float32"): 378e12,
    ("H100 NVL", "bfloat16"): 835e12, ("H100 NVL", "float32"): 418e12,
    ("A100", "bfloat16"): 312e12, ("A100", "float32"): 156e12,
    ("TPU v4", "bfloat16"): 275e12, ("TPU v4 lite", "bfloat16"): None,
    ("TPU v5 lite", "bfloat16"): 197e12, ("TPU v5e", "bfloat16"): 197e12,
    ("TPU v5p", "bfloat16"): 459e12, ("TPU v5", "bfloat16"): 459e12,
}


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """The chip's dense peak for `dtype`, or None when unknown."""
  matches = [(len(kind), value) for (kind, kind_dtype), value in PEAK_FLOPS.items()
             if kind_dtype == dtype and re.search(rf"(?<![\w-]){re.escape(kind)}(?![\w])",
                                                  device_kind)]
  return max(matches, key=lambda m: m[0])[1] if matches else None


def step_flops_per_image(config: ml_collections.ConfigDict) -> float:
  """Analytic train-step FLOPs per image from the layer shapes of the configured G and D.

  These are the model's FLOPs, the same for every lowering: counted on G's 'dilated' lowering
  without the taps on the zeros it inserts between input pixels (those on the border's padding
  count, as a convolution's usually do), and D's 'strided' one. (A lowering that multiplies
  zeros, like the 3x3 'subpixel', does more arithmetic but not more useful work, so MFU must not
  credit it. D's 's2d' does exactly the multiply-adds of 'strided'; fixing D's lowering too keeps
  the count from depending on how a future lowering is written.) Per image: the count at batch 2
  less that at batch 1, so that work done once per call whatever the batch (spectral norm's
  power iteration on the weights) is not multiplied by the batch size.
  """
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.model.upsample_impl = "dilated"
    config.model.downsample_impl = "strided"
  g, d = models_lib.build_models(config)
  size, nc = config.data.image_size, config.data.num_classes

  def inputs(n: int) -> tuple:
    labels = jnp.zeros(config_lib.label_shape(config, n), jnp.int32) if nc else None
    return jnp.zeros((n, config.model.z_dim)), labels, jnp.zeros((n, size, size, 3))

  # The variables' shapes do not depend on the batch: traced once (a ResNet's init traces for
  # seconds at large sizes).
  z, labels, x = inputs(1)
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, labels, train=False))
  d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, labels, train=False))

  def forward_flops(n: int) -> tuple[float, float]:
    z, labels, x = inputs(n)
    return (flops_lib.forward_flops(lambda v: g.apply(v, z, labels, train=False), g_vars),
            flops_lib.forward_flops(lambda v: d.apply(v, x, labels, train=False), d_vars))

  (g1, d1), (g2, d2) = forward_flops(1), forward_flops(2)
  return flops_lib.train_step_flops_per_image(g2 - g1, d2 - d1, config.train.n_critic)


def implementations(config: ml_collections.ConfigDict) -> dict:
  """Which lowering of G's up-convs and D's down-convs and which BatchNorm the step runs ('auto'
  resolved for this backend), for result rows."""
  m = config.model
  reads = models_lib.MODELS.get(m.name, "model.name").reads  # a lowering it lacks: None
  return {"upsample_impl": (layers.resolve_upsample_impl(m.upsample_impl)
                            if "upsample_impl" in reads else None),
          "downsample_impl": (layers.resolve_downsample_impl(m.downsample_impl)
                              if "downsample_impl" in reads else None),
          "norm_impl": resolve_norm_impl(m.norm_impl)}


def _ready_step(config, warmup: int, step: Optional[Callable] = None):
  """The train step that training uses (run_lib.build_run; or `step`, a variant of it taking and
  returning the same things), a fresh state and one device-resident random batch (stacked per
  step with train.steps_per_call > 1), after `warmup` calls (compilation, autotuning)."""
  config = run_lib.with_data_counts(config)  # a catalog config's -1: its set's class counts
  run = run_lib.build_run(config, reads_data=False)  # made-up batches: no data needed
  step = step or run.train_step
  state = run.make_state()
  n = config.train.batch_size * config.train.n_critic
  size = config.data.image_size
  key = jax.random.PRNGKey(0)
  classes = config_lib.attribute_classes(config)
  high = jnp.asarray(classes) if len(classes) > 1 else max(config.data.num_classes, 1)
  lead = (run.steps_per_call,) if run.steps_per_call > 1 else ()
  make_batch = jax.jit(lambda k: {
      "image": jax.random.randint(k, lead + (n, size, size, 3), 0, 256).astype(jnp.uint8),
      "label": jax.random.randint(k, lead + config_lib.label_shape(config, n), 0, high),
  }, out_shardings=run.batch_sharding)
  batch = make_batch(key)
  for _ in range(warmup):
    state, metrics = step(state, batch)
    stopping.raise_if_interrupted()
  jax.block_until_ready(state)
  stopping.raise_if_interrupted()
  return run, state, batch


def time_alternately(calls: Sequence[Callable[[], object]], rounds: int) -> list[list[float]]:
  """Seconds per call of each of `calls` (each runs one thing to completion), timed in turn in
  every round: A B C A B C ... so that a drift in the machine's speed (other tenants, clocks)
  hits all of them alike and their ratios hold, which timing A's rounds, then B's, does not.
  A stop signal whose exception Python dropped (raised in JAX's garbage-collection callback) is
  raised again after each call, untimed: the benchmark went on to its last step."""
  times: list[list[float]] = [[] for _ in calls]
  for _ in range(rounds):
    for i, call in enumerate(calls):
      start = time.perf_counter()
      call()
      times[i].append(time.perf_counter() - start)
      stopping.raise_if_interrupted()
  return times


def step_call(config: ml_collections.ConfigDict, warmup: int = 5, step: Optional[Callable] = None
              ) -> tuple[Callable[..., None], int]:
  """(call, steps per call): `call()` runs the train step that training uses (run_lib.build_run;
  or `step`, a variant of it) once on device-resident data and waits for it, carrying its own
  state; `call(n)` runs it n times back to back and waits once, as training dispatches ahead.
  Compiled and warmed up (`warmup` calls, at least one) before it is returned."""
  # At least one untimed call: the first one compiles, and must never be timed as a step.
  run, state, batch = _ready_step(config, max(warmup, 1), step)
  step = step or run.train_step
  holder = [state]

  def call(calls: int = 1) -> None:
    metrics = None
    for _ in range(calls):
      holder[0], metrics = step(holder[0], batch)
    jax.block_until_ready((holder[0], metrics))

  return call, run.steps_per_call


def benchmark_steps(configs: Sequence, steps: int = 30, warmup: int = 5) -> list[dict]:
  """Times the train step of each config (`step_call`): all are compiled and warmed up, then
  timed alternately (`time_alternately`, `steps` rounds). With train.steps_per_call = k each call
  runs k steps and `step_ms` is its time / k."""
  # A catalog config's data.num_classes=-1 read from its set first: the rows count the FLOPs of
  # the conditional model timed, not of an unconditional one.
  configs = [run_lib.with_data_counts(config) for config in configs]
  before = resources.peak_memory_bytes()  # the process's peak so far (JAX cannot reset it)
  ready = [step_call(config, warmup) for config in configs]
  times = time_alternately([call for call, _ in ready], steps)
  # Then `steps` calls back to back with one wait, each config in turn: the host dispatching
  # ahead as training does (up to MAX_STEPS_AHEAD there), so per-call sync and dispatch latency,
  # which the median above includes, overlap the device's work.
  pipelined = [t[0] / steps for t in time_alternately([lambda c=call: c(steps)
                                                       for call, _ in ready], 1)]
  # The device's peak is one figure for everything resident: a step's own only when alone, and
  # only if it rose meanwhile (else an earlier, larger measurement in this process, a sweep's
  # batch 4096 before its batch 128, would be reported as this one's).
  after = resources.peak_memory_bytes()
  rose = after is not None and (before is None or after > before)
  peak = after if len(configs) == 1 and rose else None
  return [step_row(config, k, t, peak, p)
          for config, (_, k), t, p in zip(configs, ready, times, pipelined)]


def benchmark_step(config: ml_collections.ConfigDict, steps: int = 30, warmup: int = 5) -> dict:
  """`benchmark_steps` of one config."""
  return benchmark_steps([config], steps, warmup)[0]


def step_row(config: ml_collections.ConfigDict, steps_per_call: int, call_times: list[float],
             peak_memory: Optional[int] = None, pipelined_call_s: Optional[float] = None) -> dict:
  """The benchmark's JSON row for `config` from the seconds of each timed call (and the mean of
  back-to-back calls, `pipelined_call_s`, when measured)."""
  step_s = statistics.median(call_times) / steps_per_call  # per train step
  pipelined_s = pipelined_call_s / steps_per_call if pipelined_call_s else None
  device = jax.devices()[0]
  per_image = step_flops_per_image(config)
  images_per_sec = config.train.batch_size / step_s
  tflops = per_image * images_per_sec / 1e12
  peak = peak_flops(device.device_kind, config.train.dtype)
  data, fsdp = sharding.mesh_shape(config, jax.device_count())
  devices = data * fsdp  # the mesh's, which may leave some of the host's devices out
  return {
      "model": config.model.name, "image_size": config.data.image_size,
      "batch_size": config.train.batch_size, "dtype": config.train.dtype,
      **implementations(config), "step_ms": step_s * 1e3, "images_per_sec": images_per_sec,
      "flops_per_image": per_image, "tflops": tflops,
      "mfu": tflops * 1e12 / (peak * devices) if peak else None,
      "peak_memory_bytes": peak_memory,
      "device_kind": device.device_kind, "num_devices": devices,
      "timed_steps": len(call_times) * steps_per_call, "timed_calls": len(call_times),
      "steps_per_call": steps_per_call,
      # images_per_sec (and flops_per_image) count the batch once per step, as the speed goal
      # does; training's metrics.jsonl counts the reals D sees, n_critic batches per step.
      "n_critic": config.train.n_critic,
      "train_images_per_sec": images_per_sec * config.train.n_critic,
      # Back to back, one wait at the end: what training's loop gets when the host keeps ahead.
      "pipelined_step_ms": pipelined_s * 1e3 if pipelined_s else None,
      "pipelined_images_per_sec": config.train.batch_size / pipelined_s if pipelined_s else None,
  }


def benchmark_input(images_dir: str = "", prepared_dir: str = "", image_size: int = 64,
                    batch_size: int = 256, batches: int = 200, workers: int = 0,
                    limit: int = 0) -> list[dict]:
  """Images/s of (a) decoding a raw JPEG folder with every core (what the folder and manifest
  sources do) and (b) serving prepared shards through the tf.data pipeline."""
  from jaxgan.data import arrays, decode, folder, prepared  # pylint: disable=g-import-not-at-top
  from jaxgan.data.images import LoadOptions  # pylint: disable=g-import-not-at-top

  results = []
  if images_dir:
    paths, _, _ = folder.scan_folder(images_dir)
    paths = paths[:limit] if limit else paths
    if not paths:
      raise arrays.DataError(f"--images {images_dir}: no image files found in it or below it")
    too_large = decode.memory_problem(len(paths), image_size)
    if too_large:
      raise arrays.DataError(f"--images {images_dir}: {too_large}; use a smaller --image_size, "
                             "or --limit")
    start = time.perf_counter()
    images, _, skipped, _ = decode.decode_all(paths, LoadOptions(image_size), workers,
                                              desc="decode")
    seconds = time.perf_counter() - start
    if not len(images):  # a rate of failures is no decode rate
      raise arrays.DataError(f"--images {images_dir}: none of its {len(paths)} image files could "
                             f"be decoded (first: {skipped[0]['path']}: {skipped[0]['reason']})")
    results.append({"input": "raw_folder", "path": images_dir, "images": len(paths),
                    "decoded": len(images), "skipped": len(skipped), "image_size": image_size,
                    "seconds": seconds,
                    # Decoded images only; a skipped file's failed read takes time too.
                    "images_per_sec": len(images) / seconds,
                    "workers": decode.num_workers(workers)})
  if prepared_dir:
    size = prepared.read_info(prepared_dir)["image_size"]
    # Checked before the read: tf.data's batches of a typo'd size end in the OS's kill.
    beyond = resources.beyond_host_memory(batch_size * size * size * 3)
    if beyond:
      raise arrays.DataError(f"--batch_size {batch_size}: a batch of {size}x{size} images takes "
                             f"{beyond}; use a smaller batch")
    start = time.perf_counter()
    data, labels, info = prepared.read_prepared(prepared_dir)
    load_seconds = time.perf_counter() - start
    source = arrays.ArraySource(data, labels, info["class_names"], seed=0, where=prepared_dir,
                                attribute_names=prepared.attribute_names(info))  # every column
    stream = source.batches(batch_size, 0)
    for _ in range(10):  # warm-up: tf.data graph building and autotuning
      next(stream)
    stopping.raise_if_interrupted()
    start = time.perf_counter()
    for _ in range(batches):
      batch = next(stream)
    seconds = time.perf_counter() - start
    stopping.raise_if_interrupted()
    assert batch["image"].shape == (batch_size, info["image_size"], info["image_size"], 3)
    results.append({"input": "prepared", "path": prepared_dir, "images": len(data),
                    "image_size": info["image_size"], "load_seconds": load_seconds,
                    "batch_size": batch_size, "batches": batches,
                    "images_per_sec": batch_size * batches / seconds,
                    # The cores this process may run on (taskset, SLURM), as the raw row's
                    # workers count them, not the machine's.
                    "cpu_count": decode.num_workers()})
  return results


def profile_step(config: ml_collections.ConfigDict, steps: int = 5, warmup: int = 3,
                 trace_dir: str = "", top: int = 15) -> dict:
  """Where the train step's time goes (`profiling.breakdown`): `steps` calls traced after the
  warm-up (at least one call; each `train.steps_per_call` steps; times are per train step), op
  times by kind (conv, matmul, reduction, elementwise, copy, ...), by model layer and
  the top ops. The trace stays in `trace_dir` when given (TensorBoard's profile plugin reads it)."""
  if steps < 1:
    raise ValueError(f"profile needs at least one traced call, got {steps}")
  run, state, batch = _ready_step(config, 0)
  # One executable for the warm-up, the traced calls and the HLO that names their ops (a second
  # compile could autotune to other fusions).
  compiled = run.train_step.lower(state, batch).compile()
  for _ in range(max(warmup, 1)):  # at least one, as the step mode: a first run's costs (loads,
    state, _ = compiled(state, batch)  # allocations) are not the step's
    jax.block_until_ready(state)
    stopping.raise_if_interrupted()
  holder = {"state": state}

  def run_steps():
    start = time.perf_counter()
    for _ in range(steps):
      holder["state"], metrics = compiled(holder["state"], batch)
    jax.block_until_ready((holder["state"], metrics))
    holder["wall_s"] = time.perf_counter() - start

  with tempfile.TemporaryDirectory() as scratch:
    report = profiling.trace_ops(run_steps, compiled.as_text(), steps * run.steps_per_call,
                                 trace_dir or scratch, top,
                                 # The trace is this process's: its devices' thunks only.
                                 num_devices=len(run.mesh.local_devices))
  device = jax.devices()[0]
  return {"model": config.model.name, "image_size": config.data.image_size,
          "batch_size": config.train.batch_size, "dtype": config.train.dtype,
          **implementations(config), "device_kind": device.device_kind,
          "num_devices": run.mesh.size,
          "profiled_steps": steps * run.steps_per_call, "steps_per_call": run.steps_per_call,
          # Back-to-back steps under the profiler: dispatch overlaps, tracing adds a little.
          "traced_wall_ms_per_step": round(holder["wall_s"] / (steps * run.steps_per_call) * 1e3,
                                           3),
          **report}
