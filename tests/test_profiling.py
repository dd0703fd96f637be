"""profiling: op kinds and layers from HLO text, times from a real profiler trace."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxgan import profiling

# A GPU-flavoured module: a cuDNN conv, a cuBLAS gemm, a reduction and a transpose fusion, an
# all-reduce, and a while loop whose body op is timed itself.
HLO = """HloModule jit_train_step, entry_computation_layout={()->f32[]}

%fused_reduce (p: f32[8,4]) -> f32[8] {
  %p = f32[8,4]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.1 = f32[8]{0} reduce(%p, %c), dimensions={1}, to_apply=%add, metadata={op_name="jit(train_step)/jvp(Generator)/up1_bn/reduce_sum"}
}

%fused_transpose (p: f32[4,8]) -> f32[8,4] {
  %p = f32[4,8]{1,0} parameter(0)
  %reverse.1 = f32[4,8]{1,0} reverse(%p), dimensions={0}
  ROOT %transpose.2 = f32[8,4]{1,0} transpose(%reverse.1), dimensions={1,0}
}

%fused_conv (p: f32[8,8,8,3], k: f32[4,4,3,8]) -> f32[8,4,4,8] {
  %p = f32[8,8,8,3]{3,2,1,0} parameter(0)
  %k = f32[4,4,3,8]{3,2,1,0} parameter(1)
  %convolution.5 = f32[8,4,4,8]{3,2,1,0} convolution(%p, %k), window={size=4x4 stride=2x2}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(Discriminator))/down0/conv_general_dilated"}
  ROOT %multiply.6 = f32[8,4,4,8]{3,2,1,0} multiply(%convolution.5, %convolution.5)
}

%body (t: (s32[], f32[8])) -> (s32[], f32[8]) {
  %t = (s32[], f32[8]) parameter(0)
  ROOT %add.9 = f32[8]{0} add(%t, %t), metadata={op_name="jit(train_step)/jit(_normal)/add"}
}

ENTRY %main.1 (a: f32[8,8,8,3], k: f32[4,4,3,8]) -> f32[] {
  %a = f32[8,8,8,3]{3,2,1,0} parameter(0)
  %custom-call.3 = (f32[8,4,4,8]{3,2,1,0}, u8[0]{0}) custom-call(%a, %k), custom_call_target="__cudnn$convForward", metadata={op_name="jit(train_step)/jvp(Discriminator)/down0/conv_general_dilated"}
  %custom-call.4 = (f32[8,8]{1,0}, s8[4]{0}) custom-call(%x, %y), custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/jvp(Generator)/project/dot_general"}
  %loop_fusion.7 = f32[8,4,4,8]{3,2,1,0} fusion(%a, %k), kind=kCustom, calls=%fused_conv
  %input_reduce_fusion = f32[8]{0} fusion(%x), kind=kInput, calls=%fused_reduce
  %transpose_fusion = f32[8,4]{1,0} fusion(%y), kind=kLoop, calls=%fused_transpose
  %all-reduce.8 = f32[8]{0} all-reduce(%z), replica_groups={}, to_apply=%add
  %while.10 = (s32[], f32[8]) while(%t), condition=%cond, body=%body
  ROOT %add.11 = f32[] add(%q, %q)
}
"""


def test_index_names_kind_and_layer_of_every_op():
  index = profiling.index_hlo(HLO)
  assert profiling.module_name(HLO) == "jit_train_step"
  want = {
      "custom-call.3": ("conv", "Discriminator/down0 fwd"),
      "custom-call.4": ("matmul", "Generator/project fwd"),
      "loop_fusion.7": ("conv", "Discriminator/down0 bwd"),  # layer from its body's ops
      "input_reduce_fusion": ("reduction", "Generator/up1_bn fwd"),
      "transpose_fusion": ("copy", "other"),
      "all-reduce.8": ("collective", "other"),
      "while.10": ("control", "other"),
      "add.9": ("elementwise", "other"),
      "add.11": ("elementwise", "other"),
  }
  assert {name: (index[name].kind, index[name].layer) for name in want} == want


@pytest.mark.parametrize("op_name, layer", [
    ("jit(train_step)/jvp(Discriminator)/down2/conv_general_dilated", "Discriminator/down2 fwd"),
    ("jit(train_step)/transpose(jvp(Generator))/up0_bn/mul", "Generator/up0_bn bwd"),
    ("jit(train_step)/jvp(Discriminator)/jit(leaky_relu)/ge", "Discriminator fwd"),
    ("jit(train_step)/jit(_normal)/jit(_uniform)/erf_inv", "other"),
])
def test_layer_of(op_name, layer):
  assert profiling.layer_of(op_name) == layer


def test_breakdown_leaves_control_flow_out_and_shares_add_up():
  index = profiling.index_hlo(HLO)
  ns = {"custom-call.3": 6e6, "loop_fusion.7": 2e6, "input_reduce_fusion": 1e6,
        "transpose_fusion": 1e6, "while.10": 50e6, "unknown.1": 0.0}
  report = profiling.breakdown(ns, index, steps=2, top=2)
  assert report["op_ms_per_step"] == pytest.approx(5.0)  # 10 ms over 2 steps; the while is not
  assert report["unattributed_ms"] == pytest.approx(25.0)  # it, and the op the HLO lacks
  assert report["unattributed_ops"] == ["while.10", "unknown.1"]
  assert report["by_kind"]["conv"] == {"ms": 4.0, "share": 0.8}
  assert sum(v["share"] for v in report["by_kind"].values()) == pytest.approx(1.0)
  assert list(report["by_layer"]) == ["Discriminator/down0 fwd", "Discriminator/down0 bwd", "(rest)"]
  assert report["by_layer"]["(rest)"]["ms"] == pytest.approx(1.0)  # up1_bn, transpose, unknown
  assert [op["op"] for op in report["top_ops"]] == ["custom-call.3", "loop_fusion.7"]


class Tiny(nn.Module):
  @nn.compact
  def __call__(self, x):
    return jnp.mean(nn.Conv(8, (3, 3), name="conv")(x) ** 2)


def test_a_real_trace_is_attributed_to_the_model_layer(tmp_path):
  model = Tiny()
  x = jnp.ones((4, 16, 16, 3))
  params = model.init(jax.random.PRNGKey(0), x)
  step = jax.jit(jax.grad(lambda p, x: model.apply(p, x)))
  compiled = step.lower(params, x).compile()
  jax.block_until_ready(step(params, x))

  def run_steps():
    for _ in range(3):
      grads = step(params, x)
    jax.block_until_ready(grads)

  report = profiling.trace_ops(run_steps, compiled.as_text(), 3, str(tmp_path))
  assert report["timing_source"] == "host"  # XLA:CPU: no device planes
  assert report["op_ms_per_step"] > 0
  assert report["by_kind"]["conv"]["ms"] > 0
  layers = set(report["by_layer"])
  assert {"Tiny/conv fwd", "Tiny/conv bwd"} <= layers, layers
  assert all(op["kind"] in profiling.KINDS for op in report["top_ops"])


@pytest.mark.patches_traced_code
def test_cpu_op_times_are_per_device_of_the_mesh(tmp_path, monkeypatch):
  """XLA:CPU thunks of every device of a mesh land on the one host plane: averaged over the
  devices, as device planes are, not summed (a 4-device CPU profile read 4x the time)."""
  from types import SimpleNamespace as Obj

  import jax.profiler

  def event(op, ns):
    return Obj(duration_ns=ns, stats=[("hlo_op", op), ("hlo_module", "jit_step")])

  host = Obj(name="/host:CPU", lines=[Obj(events=[event("fusion", 10.0), event("dot", 4.0)]),
                                      Obj(events=[event("fusion", 12.0), event("dot", 6.0)])])
  (tmp_path / "t.xplane.pb").write_bytes(b"")
  monkeypatch.setattr(jax.profiler.ProfileData, "from_file",
                      staticmethod(lambda path: Obj(planes=[host])))
  assert profiling.op_times_ns(str(tmp_path), "jit_step", num_devices=2) == (
      {"fusion": 11.0, "dot": 5.0}, "host")
  gpus = [Obj(name=f"/device:GPU:{i}", lines=[Obj(events=[event("fusion", 10.0 + 2 * i)])])
          for i in range(2)]
  monkeypatch.setattr(jax.profiler.ProfileData, "from_file",
                      staticmethod(lambda path: Obj(planes=gpus + [host])))
  assert profiling.op_times_ns(str(tmp_path), "jit_step", num_devices=2) == (
      {"fusion": 11.0}, "device")
