"""The buffer-donation lever: jaxgan's train step with the state donated (as training runs it) and
without, in one process.

  python benchmarks/donation.py [--batch 16] [--steps 20] [--dtype float32] [KEY=VALUE ...]

For each: XLA's memory analysis of the compiled step (arguments, outputs, what donation lets the
outputs reuse, temporaries, and their peak estimate) and the median step time, the two steps timed
in turn (`throughput.time_alternately`). Prints one JSON line per variant, then a Markdown table.
Trailing KEY=VALUE arguments override `configs/benchmark/dcgan64.py` (as in sweep.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_cpu  # noqa: E402  (dcgan64: the shipped benchmark config)
import sweep  # noqa: E402  (override)
import jax  # noqa: E402

from jaxgan import checkpoint, sharding, throughput  # noqa: E402
from jaxgan import run as run_lib  # noqa: E402


def memory(compiled) -> dict:
  m = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes")
  out = {f: int(getattr(m, f, 0)) for f in fields}
  out["peak_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--dtype", default="float32")
  p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
  a = p.parse_args()
  config = compare_cpu.dcgan64(a.batch, a.dtype)
  for pair in a.overrides:
    sweep.override(config, *pair.split("=", 1))
  run = run_lib.build_run(config)
  # The same step function and shardings as training's, without donate_argnums.
  kept = jax.jit(run.train_step.__wrapped__, in_shardings=(run.state_shardings, run.batch_sharding),
                 out_shardings=(run.state_shardings, sharding.replicated(run.mesh)))
  args = (checkpoint.abstract_like(run.abstract_state, run.state_shardings),
          run_lib.abstract_batch(config, run.batch_sharding))
  # Each executable is compiled once: its memory analysis is reported and it is what is timed.
  compiled = {"donated": run.train_step.lower(*args).compile(),
              "not donated": kept.lower(*args).compile()}
  reports = {name: memory(c) for name, c in compiled.items()}
  calls = [throughput.step_call(config, warmup=3, step=c)[0] for c in compiled.values()]
  times = throughput.time_alternately(calls, a.steps)
  rows = []
  for (name, report), t in zip(reports.items(), times):
    row = {"variant": name, "batch_size": a.batch, "dtype": a.dtype,
           "step_ms": statistics.median(t) * 1e3, **report,
           "device_kind": jax.devices()[0].device_kind}
    print(json.dumps(row), flush=True)
    rows.append(row)
  mb = lambda b: f"{b / 2**20:,.1f}"
  print(f"\n{datetime.date.today()}, {rows[0]['device_kind']}, jax {jax.__version__}, DCGAN-64 "
        f"batch {a.batch} {a.dtype}, median of {a.steps} steps timed in turn\n")
  print("| state | step ms | arguments MiB | outputs MiB | reused by outputs MiB | temporaries MiB "
        "| peak estimate MiB |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['variant']} | {r['step_ms']:.1f} | {mb(r['argument_size_in_bytes'])} | "
          f"{mb(r['output_size_in_bytes'])} | {mb(r['alias_size_in_bytes'])} | "
          f"{mb(r['temp_size_in_bytes'])} | {mb(r['peak_estimate_bytes'])} |")


if __name__ == "__main__":
  main()
