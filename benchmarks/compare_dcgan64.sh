#!/usr/bin/env bash
# jaxgan vs the PyTorch reference for DCGAN-64, on this machine's first GPU, in one go.
#
#   bash benchmarks/compare_dcgan64.sh [BATCHES...]        (default: 128 1024 4096)
#
# Needs jaxgan with a GPU build of JAX, and torch (not a jaxgan dependency). Runs, for each batch,
# torch eager bf16 autocast + channels_last and torch eager fp32/TF32
# (benchmarks/torch_dcgan_reference.py, one process each), then in one JAX process
# (benchmarks/sweep.py) jaxgan's real train step in bf16 and fp32 with the GPUs' default
# transposed-conv lowering (subpixel), bf16 with D's space-to-depth conv lowering (`:s2d`), bf16
# with two other transposed-conv lowerings (phase_grad, dilated; phase_conv only in VARIANTS), and the straightforward Flax port in bf16 (a torch run that fails
# or times out gets an error row: "not measured" under the table); then
# prints a Markdown table with images/s, MFU and the ratios jaxgan / torch. Bounded to about 7
# minutes on any machine (TOTAL_S, default 420 s, plus 10 s for a stage that ignores its
# timeout's SIGTERM; DEADLINE_S bounds the JAX sweep alone; rows not started in time say so).
set -uo pipefail
cd "$(dirname "$0")/.."
# benchmarks/sweep.py imports jaxgan, and a script's own folder, not the working directory, is
# first on its path: without this, a machine where jaxgan is not installed (a GPU machine the
# repository is copied to) lost every JAX row.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
batches=("$@")
[[ ${#batches[@]} -gt 0 ]] || batches=(128 1024 4096)
python="${PYTHON:-python}"
out="${OUT_JSONL:-$(mktemp -t jaxgan-compare.XXXXXX.jsonl)}"
steps="${STEPS:-30}"
csv="$(IFS=,; echo "${batches[*]}")"
# TOTAL_S: the whole call's seconds (a time-boxed machine): a stage that cannot finish in what is
# left is not started, and says so as a row ("not measured" under the table). Torch gets what the
# JAX sweep (130 s at least: 30 s of measuring and its 100 s margin) and the profiles (150 s
# each) leave, as they are what the call is for; each XLA_FLAG_SETS entry its share of the rest,
# less 100 s: a JAX measurement under way at the sweep's deadline may still finish in 90 of those
# (a compile and the timed steps, <~1 minute), and is killed at their end. Every stage's timeout
# sends SIGKILL 10 s after its SIGTERM (a process in an XLA compile or a trace's write acts on
# SIGTERM only once back in Python).
budget="${TOTAL_S:-420}"
deadline_cap="${DEADLINE_S:-330}"
for value in "$budget" "$deadline_cap"; do
  [[ "$value" =~ ^[0-9]+$ ]] || { echo "TOTAL_S and DEADLINE_S are whole seconds, got $value" >&2
                                  exit 2; }
done
read -r -a profiles <<< "${PROFILE_BATCHES:-}"
for_profiles=$(( 150 * ${#profiles[@]} ))
left() { echo $(( budget - SECONDS )); }
# A row for a stage not run, or that failed (json.dumps: a flag set may hold quotes).
note() {
  "$python" -c 'import json, sys; key, name, batch, field, why = sys.argv[1:]
print(json.dumps({key: name, "batch_size": int(batch), field: why}))' "$@" | tee -a "$out"
}

# The JAX side's imports, checked before torch's minutes: a package missing there (ml_collections
# on an image that lacks it) is said at once, and the call's torch rows are not spent for nothing.
if ! "$python" -c "import jaxgan.throughput, ml_collections" 2>&1; then
  echo "jaxgan does not import with $python (above); install what is missing (docs/benchmarks.md:" \
       "the ml_collections wheel), or set PYTHON" >&2
  exit 2
fi
for b in "${batches[@]}"; do
  for mode in ${TORCH_MODES:-bf16_channels_last fp32}; do
    limit=$(( $(left) - 130 - for_profiles ))
    (( limit > 120 )) && limit=120
    if (( limit < 30 )); then note impl "torch_$mode" "$b" skipped TOTAL_S; continue; fi
    # The torch process's own status (PIPESTATUS), not grep's: 124 is its timeout (137: killed
    # 10 s after it).
    row="$(timeout -k 10 "$limit" "$python" benchmarks/torch_dcgan_reference.py --mode "$mode" \
      --batch "$b" --steps "$steps" | grep '^{'; exit "${PIPESTATUS[0]}")"
    status=$?
    if [[ $status == 0 && -n "$row" ]]; then
      echo "$row" | tee -a "$out"
    else  # a row of its own: the table says "not measured", not a bare "-" for the ratio
      why="exit status $status (124, 137: its ${limit} s timeout; its stderr is above)"
      note impl "torch_$mode" "$b" error "$why"
    fi
  done
done
# XLA_FLAG_SETS: ';'-separated extra XLA_FLAGS, one JAX process (and one deadline) per set, its rows
# tagged with the set (the XLA-flags lever); unset = one process with the environment's XLA_FLAGS.
IFS=';' read -r -a flag_sets <<< "${XLA_FLAG_SETS:-}"
[[ ${#flag_sets[@]} -gt 0 ]] || flag_sets=("")
sets_left=${#flag_sets[@]}
for flag_set in "${flag_sets[@]}"; do
  # Unquoted on purpose: word splitting drops stray blanks; XLA reads a blank XLA_FLAGS as a
  # file name and aborts, so an empty combination must leave XLA_FLAGS unset.
  set -f  # no globbing of the flags while they are split
  flags="$(echo ${XLA_FLAGS:-} $flag_set)"
  set +f
  if [[ -n "$flags" ]]; then xla_env=(XLA_FLAGS="$flags"); else xla_env=(-u XLA_FLAGS); fi
  # This set's share of what the profiles leave, less the 90 s its kill waits past the deadline
  # and the 10 s its SIGKILL may come after that.
  deadline=$(( ($(left) - for_profiles) / sets_left - 100 ))
  (( deadline > deadline_cap )) && deadline=$deadline_cap
  sets_left=$(( sets_left - 1 ))
  if (( deadline < 10 )); then
    why=TOTAL_S
    (( deadline_cap < 10 )) && why=DEADLINE_S
    note variant "sweep [$flag_set]" 0 skipped "$why"
    continue
  fi
  env "${xla_env[@]}" XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -k 10 $(( deadline + 90 )) \
    "$python" benchmarks/sweep.py --batches "$csv" --steps "$steps" --tag="$flag_set" \
    --deadline_s "$deadline" \
    --variants "${VARIANTS:-bfloat16:subpixel,bfloat16:subpixel:s2d,float32:subpixel,bfloat16:phase_grad,bfloat16:dilated,port:bfloat16}" \
    | grep '^{' | tee -a "$out"
  status=${PIPESTATUS[0]}
  if [[ $status == 124 || $status == 137 ]]; then
    note variant "sweep [$flag_set]" 0 error "killed $(( deadline + 90 )) s after it started"
  elif [[ $status != 0 ]]; then  # a crash (its traceback is above): the rows it did not write
    note variant "sweep [$flag_set]" 0 error "exit status $status (its stderr is above)"
  fi
done

# PROFILE_BATCHES (e.g. "1024 4096"): after the sweep, where jaxgan's bf16 step spends its time
# (`python -m jaxgan.benchmark profile`: device time by op kind and model layer, top ops), one JSON
# line per batch, also appended to OUT_JSONL. Off by default (a start-up and a compile per batch).
# XLA's command buffers (CUDA graphs) are off for it: they credit their kernels to one op.
for b in "${profiles[@]}"; do
  if (( $(left) < 150 )); then note profile "jaxgan bf16" "$b" skipped TOTAL_S; continue; fi
  XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_command_buffer=" XLA_PYTHON_CLIENT_PREALLOCATE=false \
    timeout -k 10 140 "$python" -m jaxgan.benchmark profile \
    --config configs/benchmark/dcgan64.py --config.train.batch_size="$b" --profile_steps 5 \
    | grep '^{' | tee -a "$out"
  status=${PIPESTATUS[0]}
  if [[ $status != 0 ]]; then
    note profile "jaxgan bf16" "$b" error \
      "exit status $status (124, 137: its 140 s timeout; its stderr is above)"
  fi
done

"$python" - "$out" <<'PY'
import datetime, json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ok = [r for r in rows if "images_per_sec" in r]
profiles = [r for r in rows if "by_kind" in r]
torch_rows = {(r["batch_size"], r["impl"]): r for r in ok if str(r.get("impl", "")).startswith("torch")}
for r in ok:
  if r.get("xla_flags"):  # rows of an XLA_FLAG_SETS entry: a variant of their own
    r["variant"] = f"{r['variant']} [{r['xla_flags']}]"
jax_rows = {(r["batch_size"], r["variant"]): r for r in ok if "variant" in r}
variants = list(dict.fromkeys(r["variant"] for r in ok if "variant" in r))
kind = next((r["device_kind"] for r in ok if "variant" in r), "?")
print(f"\n{datetime.date.today()}, {kind}, median of timed steps; ratio = images/s over torch's "
      "in the same dtype (bf16: autocast + channels_last; fp32: TF32)")
print("| variant | batch | images/s | step ms | MFU | vs torch |")
print("|---|---|---|---|---|---|")
for b in sorted({k[0] for k in list(jax_rows) + list(torch_rows)}):
  for name in ("torch_bf16_channels_last", "torch_fp32"):
    r = torch_rows.get((b, name))
    if r:
      print(f"| {name} | {b} | {r['images_per_sec']:,.0f} | {r['step_ms']:.2f} | - | 1.00x |")
  for v in variants:
    r = jax_rows.get((b, v))
    if not r:
      continue
    t = torch_rows.get((b, "torch_fp32" if r["dtype"] == "float32" else "torch_bf16_channels_last"))
    mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
    ratio = f"{r['images_per_sec'] / t['images_per_sec']:.2f}x" if t else "-"
    name = v if v.startswith("port") else f"jaxgan {v}"
    print(f"| {name} | {b} | {r['images_per_sec']:,.0f} | {r['step_ms']:.2f} | {mfu} | {ratio} |")
for r in rows:
  if "error" in r or "skipped" in r:
    print("not measured:", json.dumps(r))
for r in profiles:
  kinds = ", ".join(f"{k} {v['share']:.0%}" for k, v in r["by_kind"].items())
  layers = ", ".join(f"{k} {v['ms']:.2f} ms" for k, v in list(r["by_layer"].items())[:6])
  print(f"profile batch {r['batch_size']} ({r['timing_source']} time, {r['op_ms_per_step']:.2f} ms "
        f"of ops per step): {kinds}; top layers: {layers}")
PY
