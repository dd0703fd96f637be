"""jaxgan's DCGAN-64 train step vs the straightforward Flax port, in one process, on this machine.

  python benchmarks/compare_cpu.py --batch 32 --steps 20 [--dtypes float32,bfloat16]

Each configuration is measured by the same method (warm-up, then the median of individually timed
steps, the configurations timed in turn each round so that the machine's drift hits all alike);
rows are printed as a Markdown table with the ratio jaxgan / straightforward.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flax_straightforward  # noqa: E402
import jax  # noqa: E402

from jaxgan import throughput  # noqa: E402


def dcgan64(batch: int, dtype: str, upsample_impl: str = "auto", downsample_impl: str = "auto",
            steps_per_call: int = 1, norm_impl: str = "auto"):
  """`configs/benchmark/dcgan64.py` at this batch size, compute dtype, G/D conv lowerings,
  train steps per compiled call and BatchNorm implementation."""
  spec = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "benchmark", "dcgan64.py")
  namespace: dict = {}
  exec(compile(open(spec).read(), spec, "exec"), namespace)  # the shipped benchmark config
  config = namespace["get_config"]()
  config.train.batch_size, config.train.dtype = batch, dtype
  config.model.upsample_impl = upsample_impl
  config.model.downsample_impl = downsample_impl
  config.train.steps_per_call = steps_per_call
  config.model.norm_impl = norm_impl
  return config


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--dtypes", default="float32")
  a = p.parse_args()
  rows = []
  for dtype in a.dtypes.split(","):
    # Port, port reusing G's forward, jaxgan, jaxgan with XLA's transposed conv, with D's
    # space-to-depth, with Flax's BatchNorm: all compiled first, then timed in turn each round
    # (throughput.time_alternately).
    configs = [dcgan64(a.batch, dtype), dcgan64(a.batch, dtype, "dilated"),
               dcgan64(a.batch, dtype, "auto", "s2d"), dcgan64(a.batch, dtype, norm_impl="flax")]
    ready = [throughput.step_call(config, 3) for config in configs]
    ports = [flax_straightforward.ready(a.batch, dtype, reuse_g_forward=r) for r in (False, True)]
    times = throughput.time_alternately(ports + [call for call, _ in ready], a.steps)
    ours = [throughput.step_row(config, k, t)
            for config, (_, k), t in zip(configs, ready, times[2:])]
    base, reuse = (flax_straightforward.row(a.batch, dtype, t, r)
                   for t, r in zip(times[:2], (False, True)))
    for row in [base, reuse] + ours:
      print(json.dumps(row), flush=True)
    rows.append((dtype, base, reuse, *ours))
  # The cores this process may use (taskset, a container's cpuset), not the machine's.
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  print(f"\n{datetime.date.today()}, {jax.devices()[0].device_kind} ({cores} cores, "
        f"{platform.processor() or platform.machine()}), jax {jax.__version__}, "
        f"batch {a.batch}, median of {a.steps} steps")
  print("\n| dtype | straightforward port img/s | port, one G forward img/s | jaxgan img/s "
        "| jaxgan (XLA transposed conv) img/s | jaxgan (D space-to-depth) img/s "
        "| jaxgan (Flax BatchNorm) img/s | jaxgan / port |")
  print("|---|---|---|---|---|---|---|---|")
  for dtype, base, reuse, ours, dilated, s2d, flax_bn in rows:
    print(f"| {dtype} | {base['images_per_sec']:.1f} | {reuse['images_per_sec']:.1f} | "
          f"{ours['images_per_sec']:.1f} | "
          f"{dilated['images_per_sec']:.1f} | {s2d['images_per_sec']:.1f} | "
          f"{flax_bn['images_per_sec']:.1f} | "
          f"{ours['images_per_sec'] / base['images_per_sec']:.2f}x |")


if __name__ == "__main__":
  main()
