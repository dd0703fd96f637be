"""jaxgan's DCGAN-64 step in several variants and batch sizes, in one process (one JAX start-up).

  python benchmarks/sweep.py --batches 128,1024,4096 \
      --variants bfloat16:phase_grad,float32:phase_grad,bfloat16:dilated,bfloat16:subpixel,port:bfloat16 \
      [--steps 30] [--deadline_s 420]

A variant is `DTYPE:UPSAMPLE_IMPL[:DOWNSAMPLE_IMPL[:STEPS_PER_CALL]]` (jaxgan's real train step,
`configs/benchmark/dcgan64.py` with `train.dtype`, `model.upsample_impl` and, when given,
`model.downsample_impl` and `train.steps_per_call` set; e.g. `bfloat16:subpixel:s2d`,
`bfloat16:subpixel:auto:4`), optionally followed by `:KEY=VALUE` config overrides (e.g.
`bfloat16:subpixel:model.norm_impl=fused`), or `port:DTYPE[:reuse_g]` (the straightforward
Flax port in `flax_straightforward.py`; `reuse_g`: with G's forward reused for G's update, the
one-G-forward lever in isolation). Batch sizes run in the order given, every variant at each
(a sweep cut short leaves whole comparisons); once `--deadline_s` has passed no new
measurement starts, so a time-boxed machine still returns every row finished so far. Each row
is one JSON line (median of individually synchronised steps after a warm-up); a variant that
fails prints an `error` row and the sweep goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare_cpu  # noqa: E402  (dcgan64: the shipped benchmark config)
import flax_straightforward  # noqa: E402

from jaxgan import throughput  # noqa: E402


def parse_variant(variant: str) -> tuple[list[str], dict[str, str]]:
  """(positional fields, {dotted config key: value}) of a variant; see the module docstring."""
  fields = variant.split(":")
  first_override = next((i for i, f in enumerate(fields) if "=" in f), len(fields))
  positional, overrides = fields[:first_override], fields[first_override:]
  if len(positional) < 2 or any("=" not in f for f in overrides):
    raise ValueError(f"variant {variant!r}: write DTYPE:UPSAMPLE[:DOWNSAMPLE[:STEPS_PER_CALL]] "
                     "then any :KEY=VALUE overrides, or port:DTYPE[:reuse_g]")
  pairs = dict(f.split("=", 1) for f in overrides)
  if positional[0] == "port" and (pairs or positional[2:] not in ([], ["reuse_g"])):
    raise ValueError(f"variant {variant!r}: the Flax port is port:DTYPE or port:DTYPE:reuse_g")
  return positional, pairs


def override(config, key: str, text: str) -> None:
  """Sets dotted `key` of `config` from `text`, typed like the value it replaces."""
  section, _, name = key.partition(".")
  if section not in config or name not in config[section]:
    raise KeyError(f"{key} is not a config key (e.g. model.norm_impl)")
  current = config[section][name]
  if isinstance(current, bool):  # bool("False") is True: parse the word
    if text.lower() not in ("true", "false"):
      raise ValueError(f"{key}={text}: write true or false")
    value = text.lower() == "true"
  else:
    value = type(current)(text)
  config[section][name] = value


def measure(variant: str, batch: int, steps: int) -> dict:
  (kind, arg, *rest), overrides = parse_variant(variant)
  if kind == "port":
    return flax_straightforward.benchmark(batch, arg, steps, reuse_g_forward=rest == ["reuse_g"])
  down, *per_call = rest or ["auto"]
  config = compare_cpu.dcgan64(batch, kind, arg, down, *(int(k) for k in per_call))
  for key, text in overrides.items():
    override(config, key, text)
  row = throughput.benchmark_step(config, steps, 5)
  row["impl"] = "jaxgan"
  return row


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batches", default="128,1024,4096")
  p.add_argument("--variants", default="bfloat16:phase_grad,float32:phase_grad")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--deadline_s", type=float, default=420.0)
  p.add_argument("--tag", default="", help="the extra XLA_FLAGS this process runs with (rows "
                 "carry it as `xla_flags`)")
  a = p.parse_args()
  start = time.monotonic()
  # Batches outside, variants inside: a sweep cut by its deadline leaves whole comparisons (every
  # variant at the first batches), not one variant at every batch and the rest unmeasured.
  for batch in (int(b) for b in a.batches.split(",")):
    for variant in a.variants.split(","):
      if time.monotonic() - start > a.deadline_s:
        print(json.dumps({"variant": variant, "batch_size": batch, "skipped": "deadline"}), flush=True)
        continue
      t0 = time.monotonic()
      try:
        row = measure(variant, batch, a.steps)
      except Exception as e:  # pylint: disable=broad-except  (one failing variant must not stop the rest)
        traceback.print_exc()
        row = {"variant": variant, "batch_size": batch, "error": f"{type(e).__name__}: {e}"[:300]}
      row["variant"] = variant
      if a.tag.strip():
        row["xla_flags"] = a.tag.strip()
      row["wall_s"] = round(time.monotonic() - t0, 1)
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
