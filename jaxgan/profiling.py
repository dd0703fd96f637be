"""Where a compiled step's time goes: per-op times from a profiler trace, attributed to an op kind
(from the compiled HLO) and to a model layer (from each op's source metadata).

The trace is read with `jax.profiler.ProfileData` (no TensorBoard or TensorFlow needed). On GPUs
and TPUs the times are device kernel times; on the CPU they are XLA:CPU thunk times, which overlap
across threads, so their sum can exceed the wall time; several devices' times are averaged.
Control-flow ops (while, conditional, call) are left out of the breakdown, since their bodies' ops
are usually timed themselves, and reported as `unattributed_ms` with any op the HLO does not
name: on GPUs, XLA's command buffers (CUDA graphs) credit their kernels to such a call, so profile
with `--xla_gpu_enable_command_buffer=` (benchmarks/compare_dcgan64.sh does).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
from typing import Callable

KINDS = ("conv", "matmul", "reduction", "elementwise", "copy", "collective", "other")
_CONTROL = {"while", "conditional", "call"}
# Data movement. 'reverse': a transposed conv's kernel flip (with its transpose, ~18 % of
# XLA:CPU's DCGAN-64 step time, counted as elementwise before).
_COPY = {"copy", "transpose", "bitcast", "reshape", "parameter", "slice", "concatenate", "pad",
         "dynamic-slice", "dynamic-update-slice", "broadcast", "tuple", "get-tuple-element",
         "constant", "copy-start", "copy-done", "reverse"}
_COLLECTIVE = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][a-z0-9\-_]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_MODEL = re.compile(r"([A-Z]\w*)\)*$")  # a Flax module scope, e.g. 'transpose(jvp(Discriminator))'


@dataclasses.dataclass(frozen=True)
class OpInfo:
  kind: str  # one of KINDS, or 'control' (not counted)
  layer: str  # 'Discriminator/down2 bwd', or 'other' when no model layer made the op


def _custom_call_kind(target: str) -> str:
  target = target.lower()
  if "conv" in target:
    return "conv"
  if any(word in target for word in ("gemm", "matmul", "cublas", "dot")):
    return "matmul"
  return "other"


def _own_kind(opcode: str, line: str) -> str:
  if opcode == "convolution":
    return "conv"
  if opcode == "dot":
    return "matmul"
  if opcode == "custom-call":
    target = _TARGET.search(line)
    return _custom_call_kind(target.group(1) if target else "")
  if opcode.startswith(_COLLECTIVE):
    return "collective"
  if opcode in ("reduce", "reduce-window", "select-and-scatter", "scatter", "sort"):
    return "reduction"
  if opcode in _COPY:
    return "copy"
  return "elementwise"


def _fusion_kind(body_kinds: set[str]) -> str:
  for kind in ("conv", "matmul", "collective", "reduction"):  # the most expensive part names it
    if kind in body_kinds:
      return kind
  return "copy" if body_kinds <= {"copy"} else "elementwise"


def layer_of(op_name: str) -> str:
  """'jit(train_step)/transpose(jvp(Discriminator))/down2/conv' -> 'Discriminator/down2 bwd'."""
  parts = op_name.split("/")
  for i, part in enumerate(parts):
    model = _MODEL.search(part)
    if model and not part.startswith("jit("):
      sub = parts[i + 1] if i + 2 < len(parts) else ""  # the last part is the primitive
      sub = "" if sub.startswith("jit(") else sub  # e.g. jit(leaky_relu): the module's own code
      direction = "bwd" if "transpose(" in op_name else "fwd"
      return f"{model.group(1)}/{sub} {direction}" if sub else f"{model.group(1)} {direction}"
  return "other"


def index_hlo(hlo_text: str) -> dict[str, OpInfo]:
  """OpInfo for every instruction of a compiled module's HLO text (`compiled.as_text()`)."""
  computations: dict[str, list[tuple[str, str, str]]] = collections.defaultdict(list)
  current = ""
  for line in hlo_text.splitlines():
    header = _HEADER.match(line)
    if header and not line.startswith(" "):
      current = header.group(1)
      continue
    instruction = _INSTRUCTION.match(line)
    if instruction:
      computations[current].append((instruction.group(1), instruction.group(2), line))

  def body_kinds(name: str, depth: int = 0) -> set[str]:
    kinds = set()
    for _, opcode, line in computations.get(name, []):
      called = _CALLS.search(line)
      if opcode == "fusion" and called and depth < 4:
        kinds |= body_kinds(called.group(1), depth + 1)
      else:
        kinds.add(_own_kind(opcode, line))
    return kinds

  def layer(line: str, depth: int = 0) -> str:
    """The op's own source layer; for a fusion without one, its body's (root first)."""
    op_name = _OP_NAME.search(line)
    if op_name:
      return layer_of(op_name.group(1))
    called = _CALLS.search(line)
    if called and depth < 4:
      for _, _, body_line in reversed(computations.get(called.group(1), [])):
        found = layer(body_line, depth + 1)
        if found != "other":
          return found
    return "other"

  index = {}
  for instructions in computations.values():
    for name, opcode, line in instructions:
      called = _CALLS.search(line)
      if opcode in _CONTROL:
        kind = "control"
      elif opcode in ("fusion", "async-start", "async-update", "async-done") and called:
        kind = _fusion_kind(body_kinds(called.group(1)))
      else:
        kind = _own_kind(opcode, line)
      index[name] = OpInfo(kind, layer(line))
  return index


def module_name(hlo_text: str) -> str:
  """'jit_train_step' from the 'HloModule jit_train_step, ...' first line."""
  match = re.match(r"\s*HloModule\s+([\w.\-]+)", hlo_text)
  return match.group(1) if match else ""


def op_times_ns(trace_dir: str, module: str, num_devices: int = 1
                ) -> tuple[dict[str, float], str]:
  """(time per HLO op of `module` per device, 'device' | 'host') from the newest trace under
  `trace_dir`: device planes when the trace has such events (GPU/TPU kernels; the sum over the
  devices that ran the module, divided by their number), else the host's (XLA:CPU thunks; on an
  accelerator that would be launch time, hence the label), divided by `num_devices`: the CPU
  devices of a mesh all run the module, and their thunks land on the one host plane."""
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top

  files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True),
                 key=os.path.getmtime)
  if not files:
    raise FileNotFoundError(f"no profiler trace (*.xplane.pb) under {trace_dir}")
  data = ProfileData.from_file(files[-1])
  device_ns: dict[str, float] = collections.Counter()
  host_ns: dict[str, float] = collections.Counter()
  devices = 0
  for plane in data.planes:
    on_device = plane.name.startswith("/device:")
    found = False
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if stats.get("hlo_op") and str(stats.get("hlo_module", "")).startswith(module):
          (device_ns if on_device else host_ns)[str(stats["hlo_op"])] += event.duration_ns
          found = True
    devices += int(on_device and found)
  if device_ns:
    return {op: ns / devices for op, ns in device_ns.items()}, "device"
  return {op: ns / num_devices for op, ns in host_ns.items()}, "host"


def breakdown(op_ns: dict[str, float], index: dict[str, OpInfo], steps: int,
              top: int = 15) -> dict:
  """Milliseconds per step by kind, by layer, and the `top` ops, with their shares."""
  counted = {op: ns for op, ns in op_ns.items() if op in index and index[op].kind != "control"}
  unattributed = sorted(((ns, op) for op, ns in op_ns.items() if op not in counted), reverse=True)
  total = sum(counted.values()) or 1.0
  by_kind: dict[str, float] = collections.Counter()
  by_layer: dict[str, float] = collections.Counter()
  for op, ns in counted.items():
    info = index.get(op, OpInfo("other", "other"))
    by_kind[info.kind] += ns
    by_layer[info.layer] += ns
  ms = lambda ns: round(ns / steps / 1e6, 4)
  share = lambda ns: round(ns / total, 4)
  ranked = lambda counter: sorted(counter.items(), key=lambda kv: -kv[1])
  layers = ranked(by_layer)
  if len(layers) > top:  # the long tail in one entry
    layers = layers[:top] + [("(rest)", sum(v for _, v in layers[top:]))]
  return {
      "op_ms_per_step": ms(total),
      # Control flow (whose bodies are timed on their own) and ops the HLO does not name.
      "unattributed_ms": ms(sum(ns for ns, _ in unattributed)),
      "unattributed_ops": [op for _, op in unattributed[:3]],
      "by_kind": {k: {"ms": ms(v), "share": share(v)} for k, v in ranked(by_kind)},
      "by_layer": {k: {"ms": ms(v), "share": share(v)} for k, v in layers},
      "top_ops": [{"op": op, "kind": index.get(op, OpInfo("other", "other")).kind,
                   "layer": index.get(op, OpInfo("other", "other")).layer, "ms": ms(ns),
                   "share": share(ns)} for op, ns in ranked(counted)[:top]],
  }


def trace_ops(run_steps: Callable[[], None], hlo_text: str, steps: int, trace_dir: str,
              top: int = 15, num_devices: int = 1) -> dict:
  """Traces `run_steps()` (which runs `steps` steps and blocks) into `trace_dir` and returns the
  `breakdown` of the compiled module whose HLO text is `hlo_text`, per device of the
  `num_devices` that run it."""
  import jax  # pylint: disable=g-import-not-at-top

  with jax.profiler.trace(trace_dir):
    run_steps()
  module = module_name(hlo_text)
  op_ns, source = op_times_ns(trace_dir, module, num_devices)
  if not op_ns:
    raise RuntimeError(f"the profiler trace in {trace_dir} has no op of {module!r}: this backend "
                       "does not annotate ops with hlo_op/hlo_module, or the traced calls ran "
                       "another executable")
  return {"timing_source": source, **breakdown(op_ns, index_hlo(hlo_text), steps, top)}

