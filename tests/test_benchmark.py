"""`python -m jaxgan.benchmark`: runs on CPU for every registered model; analytic FLOPs."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxgan import flops, models, throughput
from jaxgan.models.batchnorm import resolve_norm_impl
from tests.conftest import REPO, run_module, tiny_config

KEYS = {"model", "image_size", "batch_size", "dtype", "step_ms", "images_per_sec",
        "flops_per_image", "tflops", "mfu", "peak_memory_bytes", "device_kind", "num_devices"}


@pytest.mark.parametrize("name", models.MODELS.names())
def test_step_benchmark_runs_for_every_model(name):
  size = min(models.MODELS.get(name).supported_image_sizes)  # resnet starts at 32
  config = tiny_config(**{"model.name": name, "data.image_size": size, "model.max_width": 16,
                          **({"model.shared_dim": 4} if name == "resnet" else {})})
  result = throughput.benchmark_step(config, steps=2, warmup=1)
  assert KEYS <= set(result)
  assert result["step_ms"] > 0 and result["images_per_sec"] > 0 and result["flops_per_image"] > 0
  assert result["pipelined_step_ms"] > 0
  assert result["device_kind"] == "cpu" and result["mfu"] is None  # no peak figure for a CPU
  for key in ("upsample_impl", "downsample_impl"):  # the ResNet has no such lowering to name
    assert (result[key] is not None) == (key in models.MODELS.get(name).reads), key


def test_steps_are_timed_in_turn_and_each_keeps_its_state(make_config):
  """Several configs: every call of each is timed, round by round (A B A B, not A A B B), and a
  step call carries its state forward (the step donates it: reusing the old one would fail)."""
  order = []
  calls = [lambda: order.append("a"), lambda: order.append("b")]
  times = throughput.time_alternately(calls, 3)
  assert order == ["a", "b"] * 3 and [len(t) for t in times] == [3, 3]
  # warmup 1 + 2 timed calls each: a call that reused a donated state would fail.
  # The second, a prepared set's config without its data: timed on made-up batches, it reads none.
  rows = throughput.benchmark_steps([make_config(), make_config(**{"model.norm_impl": "flax",
                                                                   "data.source": "prepared"})],
                                    steps=2, warmup=1)
  assert [r["norm_impl"] for r in rows] == [resolve_norm_impl("auto"), "flax"]
  assert rows[0]["timed_steps"] == 2 and rows[0]["peak_memory_bytes"] is None  # several resident


def test_peak_memory_is_a_steps_own_only_if_it_rose_during_it(monkeypatch):
  """The backend's peak is the process's so far: after a larger measurement in the same process
  (a sweep's) it says nothing of the next step's, which then reports none."""
  monkeypatch.setattr(throughput, "step_call", lambda config, warmup: (lambda calls=1: None, 1))
  for peaks, want in [((100, 150), 150), ((150, 150), None), ((None, None), None)]:
    readings = iter(peaks)
    monkeypatch.setattr(throughput.resources, "peak_memory_bytes", lambda: next(readings))
    row, = throughput.benchmark_steps([tiny_config()], steps=2, warmup=1)
    assert row["peak_memory_bytes"] == want


def test_a_catalog_configs_flops_are_those_of_its_sets_classes(tmp_path, monkeypatch):
  """data.num_classes=-1 (the prepared set's count): the step was timed with the set's classes
  while its FLOPs were counted for an unconditional model."""
  from jaxgan.data import prepared

  prepared.write_prepared(str(tmp_path / "set"), np.zeros((3, 16, 16, 3), np.uint8),
                          np.arange(3), ["a", "b", "c"], [])
  config = tiny_config(**{"data.source": "prepared", "data.path": str(tmp_path / "set"),
                          "data.num_classes": -1})
  monkeypatch.setattr(throughput, "step_call", lambda config, warmup: (lambda calls=1: None, 1))
  row, = throughput.benchmark_steps([config], steps=2, warmup=1)
  assert row["flops_per_image"] == throughput.step_flops_per_image(
      tiny_config(**{"data.num_classes": 3}))
  assert row["flops_per_image"] != throughput.step_flops_per_image(
      tiny_config(**{"data.num_classes": 0}))


def test_dcgan64_flops_match_the_hand_count():
  # Multiply-adds of the forward passes at batch 1 (see docs/benchmarks.md):
  # G: 100x8192 dense + three 4x4/2 transposed convs of 33.5M MACs + 3.1M to RGB.
  g = 100 * 8192 + 3 * (16 * 512 * 256 * 16) + 1024 * 64 * 3 * 16
  # D: 3.1M + three 33.5M convs + the 8192-input logit.
  d = 1024 * 3 * 64 * 16 + 3 * (256 * 64 * 128 * 16) + 8192
  config = tiny_config(**{"data.image_size": 64, "data.num_classes": 0, "model.z_dim": 100,
                          "model.g_width": 64, "model.d_width": 64})
  expected = flops.train_step_flops_per_image(2 * g, 2 * d)
  assert throughput.step_flops_per_image(config) == pytest.approx(expected, rel=1e-9)
  assert expected == pytest.approx(2.2888e9, rel=1e-4)


def test_flops_per_image_leave_out_work_done_once_per_call():
  """The ResNet's spectral norm runs a power iteration on each weight once per call, whatever
  the batch: counted at batch 1 it was multiplied by the batch size as if per image (1.6-2.3 %
  too many FLOPs). The count is the marginal one, the same between any two batch sizes."""
  config = tiny_config(**{"model.name": "resnet", "data.image_size": 32, "model.max_width": 16,
                          "model.shared_dim": 4, "data.num_classes": 0})
  g, d = models.build_models(config)
  z, x = jnp.zeros((1, config.model.z_dim)), jnp.zeros((1, 32, 32, 3))
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, None, train=False))
  d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, None, train=False))

  def forward(n):
    z, x = jnp.zeros((n, config.model.z_dim)), jnp.zeros((n, 32, 32, 3))
    return (flops.forward_flops(lambda v: g.apply(v, z, None, train=False), g_vars),
            flops.forward_flops(lambda v: d.apply(v, x, None, train=False), d_vars))

  (g1, d1), (g3, d3) = forward(1), forward(3)  # the tool's own count differences 1 and 2
  marginal = flops.train_step_flops_per_image((g3 - g1) / 2, (d3 - d1) / 2)
  assert throughput.step_flops_per_image(config) == pytest.approx(marginal, rel=1e-9)
  assert flops.train_step_flops_per_image(g1, d1) > marginal * 1.01  # batch 1: with the fixed work


def test_flops_count_inside_cond_and_scan():
  """A cond counts its costliest branch once; a scan its body times its length (both counted
  nothing, and a scan once, before)."""
  import jax
  import jax.numpy as jnp

  from jaxgan import flops

  x, w = jnp.ones((4, 8)), jnp.ones((8, 16))
  plain = flops.forward_flops(lambda x: x @ w, x)
  assert plain == 2 * 4 * 8 * 16
  branches = lambda p: jax.lax.cond(p, lambda: (x @ w) @ w.T, lambda: jnp.zeros((4, 8)))
  assert flops.forward_flops(branches, True) == 2 * plain
  scanned = lambda x: jax.lax.scan(lambda c, _: (c, c @ w), x, None, length=3)[1]
  assert flops.forward_flops(scanned, x) == 3 * plain


def test_rows_say_how_images_are_counted_and_the_compiling_call_is_never_timed():
  config = tiny_config(**{"train.n_critic": 2, "model.d_norm": "layer"})
  row = throughput.step_row(config, 1, [0.5, 0.25, 0.5], pipelined_call_s=0.4)
  assert row["images_per_sec"] == 8 / 0.5 and row["n_critic"] == 2
  assert row["train_images_per_sec"] == 2 * 8 / 0.5  # as training's metrics.jsonl counts them
  assert row["pipelined_step_ms"] == pytest.approx(400) and row["pipelined_images_per_sec"] == 20
  calls, waits = [], []
  call, _ = throughput.step_call(tiny_config(), warmup=0,
                                 step=lambda state, batch: calls.append(1) or (state, {}))
  assert len(calls) == 1  # --warmup 0 still compiles outside the timed calls
  call()
  assert len(calls) == 2
  # call(n): n steps dispatched back to back, one wait at the end.
  real_wait = throughput.jax.block_until_ready
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(throughput.jax, "block_until_ready", lambda x: waits.append(1) or real_wait(x))
    call(3)
    call(0)  # nothing to run: waits on the state alone
  assert len(calls) == 5 and waits == [1, 1]


BAD_FLAGS = r"""
import contextlib, io, json, sys
from jaxgan import benchmark, flag_parsing
benchmark.define_flags()
cases = [["step", "--config", "configs/default.py", "--steps", "0"],
         ["profile", "--config", "configs/default.py", "--trace_dir", sys.argv[1]],
         ["input", "--images", sys.argv[2]],
         ["sweep"],
         ["input", "--prepared", sys.argv[4], "--batches", "0"],
         ["input", "--prepared", sys.argv[3]],
         ["step", "--config", "configs/default.py", "--batch_size", "1024"],
         ["input", "--prepared", sys.argv[4], "--steps", "5"],
         ["input", "--prepared", sys.argv[4], "--image_size", "32"],
         ["input", "--images", sys.argv[3], "--limit", "-5"],
         ["step", "--config", "configs/default.py", "--top", "3"],
         ["profile", "--config", "configs/default.py", "--steps", "100"],
         ["profile", "--config", "configs/default.py", "--top", "-4"],
         ["input", "--prepared", sys.argv[4], "--limit", "5"],
         ["input", "--images", sys.argv[3], "--batch_size", "512", "--batches", "3"],
         ["input", "--images", sys.argv[3], "--image_size", "100000"],
         ["profile", "--config", "configs/default.py", "--trace_dir", sys.argv[5]]]
out = []
for case in cases:
  benchmark.FLAGS.unparse_flags()
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    try:
      argv = flag_parsing.parse_flags(["benchmark", *case[1:]])
      benchmark._check_flags(case[0])
      code = 0
    except SystemExit as e:
      code = e.code
  out.append([code, err.getvalue().strip()])
print(json.dumps(out))
"""


def test_bad_flags_are_one_line_before_any_compile(tmp_path):
  (tmp_path / "a_file").write_text("")
  import subprocess

  (tmp_path / "raw").mkdir()  # a folder, but no prepared set
  (tmp_path / "set").mkdir()
  (tmp_path / "set" / "dataset_info.json").write_text("{}")
  proc = subprocess.run([sys.executable, "-c", BAD_FLAGS, str(tmp_path / "a_file" / "trace"),
                         str(tmp_path / "missing"), str(tmp_path / "raw"), str(tmp_path / "set"),
                         str(tmp_path / "a_file")],
                        capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0, proc.stderr[-2000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  typo = run_module("jaxgan.benchmark", "--config", "configs/default.py",
                    "--config.train.batchsize=8")  # parsed by absl before main: the real CLI
  results.append([typo.returncode, typo.stderr.strip()])
  (tmp_path / "bare.py").write_text("import ml_collections\n\ndef get_config():\n"
                                    "  return ml_collections.ConfigDict({'seed': 1})\n")
  bare = run_module("jaxgan.benchmark", "--config", str(tmp_path / "bare.py"))
  results.append([bare.returncode, bare.stderr.strip().splitlines()[-1]])
  assert [code for code, _ in results] == [2] * 19, results
  assert all(msg.startswith("error: ") and "\n" not in msg for _, msg in results), results
  messages = [msg for _, msg in results]
  assert messages[0] == "error: --steps must be >= 1, got 0"
  assert messages[1].startswith(f"error: --trace_dir {tmp_path / 'a_file' / 'trace'}: ")
  assert messages[2] == f"error: --images {tmp_path / 'missing'}: not a folder"
  assert messages[3].startswith("error: unknown mode 'sweep'")
  assert messages[4] == "error: --batches must be >= 1, got 0"  # a traceback before
  assert messages[5] == (f"error: --prepared {tmp_path / 'raw'}: not a prepared set (no "
                         "dataset_info.json); write one with python -m jaxgan.prepare")
  assert messages[6].startswith("error: --batch_size is a flag of the input benchmark (python -m "
                                "jaxgan.benchmark input), not of the step benchmark; the batch "
                                "and image size come from the config: --config.train.batch_size")
  assert messages[7] == ("error: --steps is a flag of the step and profile benchmarks, not of "
                         "'input'")
  assert messages[8] == ("error: --image_size is the raw folder's decode size (--images); a "
                         "prepared set is read at the size it was prepared at")
  # Ignored before: a negative --limit dropped files from the end; the other benchmark's flags.
  assert messages[9] == "error: --limit must be >= 0 (0 = every image), got -5"
  assert messages[10] == ("error: --top is a flag of the profile benchmark, not of the step "
                          "benchmark")
  assert messages[11] == ("error: --steps is a flag of the step benchmark, not of the profile "
                          "benchmark")
  assert messages[12] == "error: --top must be >= 1, got -4"
  # Each input's own flags, given for the other input alone: ignored before.
  assert messages[13] == ("error: --limit caps the raw folder's images (--images); a prepared "
                          "set is served whole")
  assert messages[14] == ("error: --batch_size sets how the prepared set (--prepared) is served; "
                          "the raw folder (--images) is decoded whole, --limit images at most")
  # A typo'd size: 28 GiB an image, a numpy traceback after the folder's scan before.
  assert messages[15] == "error: --image_size must be at most 8192, got 100000"
  assert messages[16] == (f"error: --trace_dir {tmp_path / 'a_file'}: is a file, not a folder; "
                          "pass a folder")  # 'File exists' before
  assert messages[17].startswith("error: --config.train.batchsize: unknown key 'batchsize'")
  # A config file not built on base_config(): its one-line error (a traceback before).
  assert messages[18].startswith("error: config key ") and "is missing" in messages[18]


def test_the_input_benchmark_counts_the_cores_it_may_run_on(tmp_path, monkeypatch):
  """Under taskset or SLURM the prepared row's cpu_count is the cores of the affinity mask, as
  the raw row's workers are, not the machine's."""
  from jaxgan.data import prepared

  prepared.write_prepared(str(tmp_path), np.zeros((8, 8, 8, 3), np.uint8), np.zeros(8, np.int32),
                          ["all"], [])
  monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
  row, = throughput.benchmark_input(prepared_dir=str(tmp_path), batch_size=4, batches=2)
  assert row["input"] == "prepared" and row["cpu_count"] == 1
  # A batch larger than the host's memory: one line before the read (the OS's kill after it).
  from jaxgan import resources
  from jaxgan.data import DataError

  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 4 * 8 * 8 * 3)
  monkeypatch.setattr(prepared, "read_prepared", None)  # not reached
  with pytest.raises(DataError, match=r"^--batch_size 5: a batch of 8x8 images takes .* GiB, "
                     r"more than this host's .* GiB of memory; use a smaller batch$"):
    throughput.benchmark_input(prepared_dir=str(tmp_path), batch_size=5, batches=2)


def test_the_input_benchmark_without_tensorflow_is_one_line(tmp_path):
  """A prepared set is served by tf.data: without TensorFlow (an accelerator host) the input
  mode ended in a ModuleNotFoundError traceback, status 1."""
  import subprocess
  import sys

  from jaxgan import prepare

  (tmp_path / "img").mkdir()
  for i in range(2):
    Image.new("RGB", (20, 20), (100 * i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
  assert prepare.main(["--images", str(tmp_path / "img"), "--out", str(tmp_path / "p"),
                       "--image-size", "16", "--workers", "1"]) == 0
  code = ("import sys; sys.modules['tensorflow'] = None\n"
          "sys.argv = ['benchmark', 'input', '--prepared', sys.argv[1], '--batch_size', '2',"
          " '--batches', '1']\n"
          "from jaxgan import benchmark; benchmark.run()")
  proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "p")], capture_output=True,
                        text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      "error: import of tensorflow halted; None in sys.modules; install it (pip install -e .), "
      "or time the step alone (mode 'step')"]


def test_the_input_benchmark_refuses_a_folder_it_cannot_time(tmp_path, monkeypatch):
  """No image files, none that decodes, or more than memory holds: an error, not a rate of 0 or
  of failures, or a numpy traceback."""
  from jaxgan.data.arrays import DataError

  with pytest.raises(DataError, match=r"no image files found in it or below it"):
    throughput.benchmark_input(str(tmp_path), workers=1)
  for i in range(3):
    (tmp_path / f"{i}.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"none of its 3 image files could be decoded \(first: "):
    throughput.benchmark_input(str(tmp_path), workers=1)
  # Three files at 64x64 on a host of one byte less: said before decoding, in the flags' names.
  from jaxgan import resources

  monkeypatch.setattr(resources, "host_memory_bytes", lambda: 3 * 64 * 64 * 3 - 1)
  with pytest.raises(DataError, match=r"^--images .*: 3 images at 64x64 .* of memory; use a "
                     r"smaller --image_size, or --limit$"):
    throughput.benchmark_input(str(tmp_path), workers=1)


def test_peak_table():
  assert throughput.peak_flops("NVIDIA H200", "bfloat16") == 989e12
  assert throughput.peak_flops("TPU v5 lite", "bfloat16") == 197e12
  assert throughput.peak_flops("TPU v5p", "bfloat16") == 459e12
  # The most specific kind wins: the PCIe and NVL parts are slower than the SXM one.
  assert throughput.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert throughput.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
  assert throughput.peak_flops("NVIDIA H100 NVL", "float32") == 418e12
  assert throughput.peak_flops("NVIDIA H200 NVL", "bfloat16") == 835e12
  assert throughput.peak_flops("cpu", "float32") is None
  # Whole names: "A100" is not the RTX A1000 (a 312 TFLOP/s MFU base for a laptop part), and a
  # v4 lite chip is not a v4; Grace Hopper's GPU is an H100/H200 part.
  assert throughput.peak_flops("NVIDIA A100-SXM4-80GB", "float32") == 156e12
  assert throughput.peak_flops("NVIDIA RTX A1000", "bfloat16") is None
  assert throughput.peak_flops("TPU v4 lite", "bfloat16") is None
  assert throughput.peak_flops("NVIDIA GH200 480GB", "bfloat16") == 989e12


@pytest.mark.patches_traced_code
def test_mfu_and_device_count_are_the_meshs_not_the_hosts(monkeypatch):
  """A mesh of 2 of the host's 8 devices: MFU against 2 devices' peak, num_devices 2."""
  monkeypatch.setattr(throughput.jax, "device_count", lambda: 8)
  monkeypatch.setattr(throughput, "peak_flops", lambda kind, dtype: 1e12)
  row = throughput.step_row(tiny_config(**{"mesh.data": 2}), 1, [0.5])
  assert row["num_devices"] == 2
  assert row["mfu"] == pytest.approx(row["tflops"] * 1e12 / 2e12)


def test_cli_step_and_input(tmp_path):
  step = run_module("jaxgan.benchmark", "--config", "configs/default.py", "--steps", "2",
                    "--warmup", "1", "--config.data.image_size=16", "--config.model.g_width=8",
                    "--config.model.d_width=8", "--config.train.batch_size=8",
                    "--config.train.steps_per_call=2")  # two steps per timed call (lax.scan)
  assert step.returncode == 0, step.stderr[-2000:]
  row = json.loads(step.stdout.strip().splitlines()[-1])
  assert KEYS <= set(row) and row["batch_size"] == 8 and row["steps_per_call"] == 2
  assert (row["timed_calls"], row["timed_steps"]) == (2, 4)  # --steps counts calls
  profile = run_module("jaxgan.benchmark", "profile", "--config", "configs/default.py",
                       "--profile_steps", "2", "--warmup", "1", "--config.data.image_size=16",
                       "--config.model.g_width=8", "--config.model.d_width=8",
                       "--config.train.batch_size=8", "--config.train.steps_per_call=2",
                       "--trace_dir", str(tmp_path / "trace"))
  assert profile.returncode == 0, profile.stderr[-2000:]
  report = json.loads(profile.stdout.strip().splitlines()[-1])
  assert report["profiled_steps"] == 4 and report["steps_per_call"] == 2
  assert report["op_ms_per_step"] > 0 and report["by_kind"]["conv"]["share"] > 0
  layers = " ".join(report["by_layer"])
  assert "Generator/" in layers and "Discriminator/" in layers
  assert list((tmp_path / "trace").rglob("*.xplane.pb"))  # kept for TensorBoard

  from PIL import Image

  from jaxgan import prepare
  (tmp_path / "photos").mkdir()
  for i in range(6):
    Image.new("RGB", (30, 20), (i * 40, 0, 0)).save(tmp_path / "photos" / f"{i}.jpg")
  assert prepare.main(["--images", str(tmp_path / "photos"), "--image-size", "16", "--workers",
                       "1", "--out", str(tmp_path / "prep")]) == 0
  inp = run_module("jaxgan.benchmark", "input", "--images", str(tmp_path / "photos"), "--prepared",
                   str(tmp_path / "prep"), "--image_size", "16", "--batch_size", "4",
                   "--batches", "5")
  assert inp.returncode == 0, inp.stderr[-2000:]
  rows = [json.loads(line) for line in inp.stdout.splitlines() if line.startswith("{")]
  assert [r["input"] for r in rows] == ["raw_folder", "prepared"]
  assert rows[0]["images"] == 6 == rows[0]["decoded"] and all(r["images_per_sec"] > 0 for r in rows)


def test_benchmark_imports_without_tensorflow():
  code = ("import sys; sys.modules['tensorflow'] = None\n"
          "import jaxgan.benchmark, jaxgan.throughput, jaxgan.generate, jaxgan.steps\n"
          "print('ok')")
  import subprocess
  import sys
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_gpu_comparison_script_runs_its_jax_sweep(tmp_path):
  """The one-call GPU script, on the CPU: a torch run that fails at once (a mode it does not
  know: its error row, not a silent gap) and a variant that fails validation at once, so the
  sweep's JAX process starts, reports, and the table prints, without compiling. With XLA_FLAGS
  unset, as on a fresh GPU machine (a blank XLA_FLAGS once made XLA abort there)."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(root, "benchmarks", "compare_dcgan64.sh")
  assert subprocess.run(["bash", "-n", script]).returncode == 0
  # The script's own settings from this test alone, not the caller's environment.
  env = {k: v for k, v in os.environ.items()
         if k not in ("XLA_FLAGS", "DEADLINE_S", "PROFILE_BATCHES", "XLA_FLAG_SETS")}
  out = tmp_path / "rows.jsonl"
  env.update(OUT_JSONL=str(out), STEPS="1", TORCH_MODES="no_such_mode", TOTAL_S="420",
             VARIANTS="float32:no_such_impl,float32:auto:model.norm_impl=no_such_impl",
             PYTHON=sys.executable)
  proc = subprocess.run(["bash", script, "2"], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  torch_row, *rows = [json.loads(line) for line in out.read_text().splitlines()]
  # The torch process's status: 1 without torch installed (its import), 2 with it (the mode).
  assert torch_row.pop("error") in {f"exit status {s} (124, 137: its 120 s timeout; its stderr "
                                    "is above)" for s in (1, 2)}
  assert torch_row == {"impl": "torch_no_such_mode", "batch_size": 2}
  assert [r["variant"] for r in rows] == ["float32:no_such_impl",
                                          "float32:auto:model.norm_impl=no_such_impl"], rows
  assert "model.upsample_impl" in rows[0]["error"]
  assert "model.norm_impl: must be one of" in rows[1]["error"]  # KEY=VALUE reached the config
  assert "not measured:" in proc.stdout and "| variant | batch |" in proc.stdout
  # A call with no time left (TOTAL_S) starts nothing, says so per stage, and prints its table.
  out.unlink()
  env.update(TOTAL_S="0", PROFILE_BATCHES="2")
  proc = subprocess.run(["bash", script, "2"], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert [json.loads(line) for line in out.read_text().splitlines()] == [
      {"impl": "torch_no_such_mode", "batch_size": 2, "skipped": "TOTAL_S"},
      {"variant": "sweep []", "batch_size": 0, "skipped": "TOTAL_S"},
      {"profile": "jaxgan bf16", "batch_size": 2, "skipped": "TOTAL_S"}]
  assert proc.stdout.count("not measured:") == 3 and "| variant | batch |" in proc.stdout
  # A sweep that crashes before its first row (a batch that is no number: a traceback) and a
  # profile that fails (batch 0) each leave an error row too, not a silent gap.
  out.unlink()
  env.update(TOTAL_S="420", TORCH_MODES=" ", PROFILE_BATCHES="0")
  proc = subprocess.run(["bash", script, "x"], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert [json.loads(line) for line in out.read_text().splitlines()] == [
      {"variant": "sweep []", "batch_size": 0, "error": "exit status 1 (its stderr is above)"},
      {"profile": "jaxgan bf16", "batch_size": 0,
       "error": "exit status 2 (124, 137: its 140 s timeout; its stderr is above)"}], proc.stderr
  # An interpreter that cannot import jaxgan's side (a package missing on the GPU machine's
  # image) stops the call at once, before torch's minutes.
  broken = tmp_path / "python"
  broken.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # no site-packages
  broken.chmod(0o755)
  out.unlink()
  env.update(PYTHON=str(broken), TORCH_MODES="bf16_channels_last")
  proc = subprocess.run(["bash", script, "2"], capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 2 and "jaxgan does not import with" in proc.stderr, proc.stderr
  assert not out.exists()


def test_a_sweep_cut_by_its_deadline_measured_every_variant_at_its_first_batch(monkeypatch,
                                                                              capsys):
  """One variant at every batch, then the next: the planned GPU call's deadline would have cut
  the fused BatchNorm variant whole. Each row here takes 10 fake seconds, the deadline 25."""
  monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
  import sweep
  clock = [0.0]
  monkeypatch.setattr(sweep.time, "monotonic", lambda: clock[0])

  def measure(variant, batch, steps):
    clock[0] += 10
    return {"batch_size": batch, "images_per_sec": 1.0}

  monkeypatch.setattr(sweep, "measure", measure)
  monkeypatch.setattr(sys, "argv", ["sweep.py", "--batches", "1024,4096", "--variants",
                                    "a:x,b:x,c:x", "--deadline_s", "25"])
  sweep.main()
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["batch_size"], r["variant"], "skipped" in r) for r in rows] == [
      (1024, "a:x", False), (1024, "b:x", False), (1024, "c:x", False),
      (4096, "a:x", True), (4096, "b:x", True), (4096, "c:x", True)]


def test_sweep_variants_parse_and_type_their_overrides(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
  import compare_cpu
  import sweep
  assert sweep.parse_variant("bfloat16:subpixel:s2d:8:model.norm_impl=fused") == (
      ["bfloat16", "subpixel", "s2d", "8"], {"model.norm_impl": "fused"})
  assert sweep.parse_variant("port:bfloat16:reuse_g") == (["port", "bfloat16", "reuse_g"], {})
  for bad in ("bfloat16:model.norm_impl=fused", "bfloat16:subpixel:a=1:s2d",
              "port:bfloat16:model.norm_impl=fused", "port:bfloat16:twice"):
    with pytest.raises(ValueError, match="variant"):
      sweep.parse_variant(bad)
  config = compare_cpu.dcgan64(4, "float32")
  sweep.override(config, "train.tensorboard", "False")  # bool("False") would be True
  sweep.override(config, "optim.g_lr", "1e-3")
  sweep.override(config, "model.norm_impl", "flax")
  assert (config.train.tensorboard, config.optim.g_lr, config.model.norm_impl) == (
      False, 1e-3, "flax")
  with pytest.raises(KeyError, match="model.nope is not a config key"):
    sweep.override(config, "model.nope", "1")


def test_donation_script_compares_the_donated_step_with_an_undonated_copy():
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, os.path.join(root, "benchmarks", "donation.py"), "--batch", "4",
       "--steps", "2", "data.image_size=16", "model.g_width=8", "model.d_width=8"],
      capture_output=True, text=True, timeout=300, cwd=root)
  assert proc.returncode == 0, proc.stderr[-2000:]
  rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert [r["variant"] for r in rows] == ["donated", "not donated"]
  donated, kept = rows
  # Donation lets the new state reuse the old one's buffers; the copy without it cannot.
  assert donated["alias_size_in_bytes"] > 0.9 * donated["output_size_in_bytes"]
  assert kept["alias_size_in_bytes"] == 0
  assert donated["argument_size_in_bytes"] == kept["argument_size_in_bytes"]
  assert "| donated |" in proc.stdout and "| not donated |" in proc.stdout


def test_port_reusing_g_forward_is_the_same_step(monkeypatch):
  """The one-G-forward lever, isolated in the benchmark's Flax port: reusing G's forward through
  jax.vjp computes the same update as running G again."""
  monkeypatch.syspath_prepend(os.path.join(REPO, "benchmarks"))
  import flax_straightforward as port
  real = jax.random.uniform(jax.random.PRNGKey(1), (2, 64, 64, 3), minval=-1.0, maxval=1.0)
  new = {}
  for reuse in (False, True):
    state, step = port.make(2, jnp.float32, reuse_g_forward=reuse, width=8)
    new[reuse] = step(state, real, jax.random.PRNGKey(2))
  changed = 0
  for a, b, old in zip(jax.tree_util.tree_leaves(new[False]), jax.tree_util.tree_leaves(new[True]),
                       jax.tree_util.tree_leaves(state)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    # Relative to each leaf's own scale: Adam's first moments are 0.5 x the gradients and its
    # second 1e-3 x their squares, so an absolute tolerance would not compare them at all.
    assert np.max(np.abs(a - b)) <= 1e-4 * max(np.max(np.abs(a)), 1e-30)
    changed += int(not np.allclose(a, old))
  assert changed > 10  # the step really updated G and D (parameters and both moments)


def test_the_benchmark_ends_on_sigterm_with_one_line():
  """As prepare, evaluate and generate: one line and status 143, not SIGTERM's default action
  (or, for Ctrl-C, a KeyboardInterrupt traceback)."""
  import signal
  import subprocess
  import sys
  import time

  from conftest import REPO

  proc = subprocess.Popen([sys.executable, "-m", "jaxgan.benchmark", "--config",
                           "configs/default.py", "--config.train.batch_size=8", "--steps=1000"],
                          cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  def catches_sigterm() -> bool:  # its handler is installed (/proc's mask of caught signals)
    with open(f"/proc/{proc.pid}/status") as f:
      caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)

  deadline = time.monotonic() + 120
  while not catches_sigterm() and proc.poll() is None and time.monotonic() < deadline:
    time.sleep(0.1)
  time.sleep(1)  # into the run: JAX imported, the step compiling or timed
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
  assert err.splitlines()[-1] == "terminated (SIGTERM)", err[-2000:]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_a_stop_signal_python_dropped_ends_the_timing_loop():
  """A SIGTERM whose exception Python dropped (raised inside JAX's garbage-collection callback):
  the benchmark timed all its steps and exited 0 (seen: the SIGTERM test timed out). The timing
  loop raises it again after the call it arrived in, untimed."""
  import gc
  import os
  import signal
  import time

  from jaxgan import stopping

  calls = []

  def callback(phase, info):
    del info
    if phase == "start" and calls == [1]:
      calls.append("signal")
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.05)  # the handler runs here: its exception is dropped

  def call():
    calls.append(1)
    gc.callbacks.append(callback)
    try:
      gc.collect()
    finally:
      gc.callbacks.remove(callback)

  with stopping.Interrupts():
    with pytest.raises(stopping.Terminated):
      throughput.time_alternately([call], rounds=5)
  assert calls == [1, "signal"]
