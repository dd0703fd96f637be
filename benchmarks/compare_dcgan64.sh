#!/usr/bin/env bash
# jaxgan vs the PyTorch reference for DCGAN-64, on this machine's first GPU, in one go.
#
#   bash benchmarks/compare_dcgan64.sh [BATCHES...]        (default: 128 1024 4096)
#
# Needs jaxgan with a GPU build of JAX, and torch (not a jaxgan dependency). Runs, for each batch,
# torch eager bf16 autocast + channels_last and torch eager fp32/TF32
# (benchmarks/torch_dcgan_reference.py, one process each), then in one JAX process
# (benchmarks/sweep.py) jaxgan's real train step in bf16 and fp32 with the default transposed-conv
# lowering, bf16 with the other two lowerings, and the straightforward Flax port in bf16; then
# prints a Markdown table with images/s, MFU and the ratios jaxgan / torch. Sized for < 8 minutes
# on an H100/H200 (DEADLINE_S bounds the JAX sweep; rows not started by then say so).
set -uo pipefail
cd "$(dirname "$0")/.."
batches=("$@")
[[ ${#batches[@]} -gt 0 ]] || batches=(128 1024 4096)
python="${PYTHON:-python}"
out="${OUT_JSONL:-$(mktemp -t jaxgan-compare.XXXXXX.jsonl)}"
steps="${STEPS:-30}"
csv="$(IFS=,; echo "${batches[*]}")"

for b in "${batches[@]}"; do
  for mode in bf16_channels_last fp32; do
    timeout 120 "$python" benchmarks/torch_dcgan_reference.py --mode "$mode" --batch "$b" \
      --steps "$steps" | grep '^{' | tee -a "$out"
  done
done
XLA_PYTHON_CLIENT_PREALLOCATE=false "$python" benchmarks/sweep.py --batches "$csv" --steps "$steps" \
  --deadline_s "${DEADLINE_S:-330}" \
  --variants "${VARIANTS:-bfloat16:phase_grad,float32:phase_grad,bfloat16:dilated,bfloat16:subpixel,port:bfloat16}" \
  | grep '^{' | tee -a "$out"

"$python" - "$out" <<'PY'
import datetime, json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ok = [r for r in rows if "images_per_sec" in r]
jax_rows = {(r["batch_size"], r["variant"]): r for r in ok if "variant" in r}
torch_rows = {(r["batch_size"], r["impl"]): r for r in ok if str(r.get("impl", "")).startswith("torch")}
kind = next((r["device_kind"] for r in jax_rows.values()), "?")
f = lambda r: f"{r['images_per_sec']:,.0f}" if r else "-"
ratio = lambda a, c: f"{a['images_per_sec'] / c['images_per_sec']:.2f}x" if a and c else "-"
print(f"\n{datetime.date.today()}, {kind}, median of timed steps")
print("| batch | jaxgan bf16 img/s | MFU | torch bf16+CL img/s | jaxgan/torch bf16 | jaxgan fp32 img/s "
      "| torch fp32 img/s | jaxgan/torch fp32 | jaxgan bf16 dilated | jaxgan bf16 subpixel | Flax port bf16 |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for b in sorted({k[0] for k in list(jax_rows) + list(torch_rows)}):
  jb, jf = jax_rows.get((b, "bfloat16:phase_grad")), jax_rows.get((b, "float32:phase_grad"))
  tb, tf = torch_rows.get((b, "torch_bf16_channels_last")), torch_rows.get((b, "torch_fp32"))
  mfu = f"{jb['mfu']:.1%}" if jb and jb.get("mfu") else "-"
  print(f"| {b} | {f(jb)} | {mfu} | {f(tb)} | {ratio(jb, tb)} | {f(jf)} | {f(tf)} | {ratio(jf, tf)} "
        f"| {f(jax_rows.get((b, 'bfloat16:dilated')))} | {f(jax_rows.get((b, 'bfloat16:subpixel')))} "
        f"| {f(jax_rows.get((b, 'port:bfloat16')))} |")
for r in rows:
  if "error" in r or "skipped" in r:
    print("not measured:", json.dumps(r))
PY
