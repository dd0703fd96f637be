#!/usr/bin/env bash
# jaxgan vs the PyTorch reference for DCGAN-64, on this machine's first GPU, in one go.
#
#   bash benchmarks/compare_dcgan64.sh [BATCHES...]        (default: 128 1024 4096)
#
# Needs jaxgan with a GPU build of JAX, and torch (not a jaxgan dependency). Runs, for each batch:
# jaxgan bf16 and fp32 (python -m jaxgan.benchmark, the real train step), torch eager bf16 +
# channels_last and torch eager fp32 (benchmarks/torch_dcgan_reference.py); then prints a
# Markdown table with images/s, MFU and the ratios jaxgan / torch. About 5 minutes on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
batches=("$@")
[[ ${#batches[@]} -gt 0 ]] || batches=(128 1024 4096)
python="${PYTHON:-python}"
out="$(mktemp -t jaxgan-compare.XXXXXX.jsonl)"
steps="${STEPS:-30}"

for b in "${batches[@]}"; do
  for dtype in bfloat16 float32; do
    "$python" -m jaxgan.benchmark --config configs/benchmark/dcgan64.py \
      --config.train.batch_size="$b" --config.train.dtype="$dtype" --steps "$steps" \
      2>/dev/null | grep '^{' | tee -a "$out"
  done
  for mode in bf16_channels_last fp32; do
    "$python" benchmarks/torch_dcgan_reference.py --mode "$mode" --batch "$b" --steps "$steps" \
      2>/dev/null | grep '^{' | tee -a "$out"
  done
done

"$python" - "$out" <<'PY'
import datetime, json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
jax_rows = {(r["batch_size"], r["dtype"]): r for r in rows if "model" in r}
torch_rows = {(r["batch_size"], r["impl"]): r for r in rows if "impl" in r}
kind = next(iter(jax_rows.values()))["device_kind"] if jax_rows else "?"
print(f"\n{datetime.date.today()}, {kind}")
print("| batch | jaxgan bf16 img/s | MFU | torch bf16+CL img/s | ratio | jaxgan fp32 img/s | torch fp32 img/s | ratio |")
print("|---|---|---|---|---|---|---|---|")
for b in sorted({k[0] for k in jax_rows}):
  jb, jf = jax_rows.get((b, "bfloat16")), jax_rows.get((b, "float32"))
  tb, tf = torch_rows.get((b, "torch_bf16_channels_last")), torch_rows.get((b, "torch_fp32"))
  f = lambda r: f"{r['images_per_sec']:,.0f}" if r else "-"
  ratio = lambda a, c: f"{a['images_per_sec'] / c['images_per_sec']:.2f}x" if a and c else "-"
  mfu = f"{jb['mfu']:.1%}" if jb and jb.get("mfu") else "-"
  print(f"| {b} | {f(jb)} | {mfu} | {f(tb)} | {ratio(jb, tb)} | {f(jf)} | {f(tf)} | {ratio(jf, tf)} |")
PY
