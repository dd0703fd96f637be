"""The command-line tools' shared behaviour (cli.py, path_flags.py): flag spelling, path flags,
--help, one-line usage errors, and how Ctrl-C and stop signals end a tool."""

import os
import re

import pytest

from jaxgan import cli, path_flags
from tests.conftest import run_module


def test_flag_spelling_rewrites_names_only():
  args = ["--compile-only", "--standing-stats-batches=-1", "--label", "a-b_c", "--config.x_y=1-2",
          "-5", "--", "--not-a-flag"]
  assert cli.flag_spelling(args, "_") == ["--compile_only", "--standing_stats_batches=-1",
                                          "--label", "a-b_c", "--config.x_y=1-2", "-5", "--",
                                          "--not-a-flag"]
  assert cli.flag_spelling(["--image_size=3", "--min-class-count"], "-") == [
      "--image-size=3", "--min-class-count"]


def test_path_flags_expand_a_leading_tilde(tmp_path, monkeypatch):
  """The shell leaves `--out=~/grid.png` alone: generate made a folder named '~' in the working
  directory. Every tool's path flags expand it (config paths already did)."""
  from absl import flags

  from jaxgan import evaluate, prepare

  monkeypatch.setenv("HOME", str(tmp_path))
  assert path_flags.user_path("~/g.png") == str(tmp_path / "g.png")
  assert path_flags.user_path("") == "" and path_flags.user_path("a/~b") == "a/~b"
  values = flags.FlagValues()
  path_flags.define_path("out", "samples.png", "a path", values)
  values(["generate", "--out=~/grids/"])
  assert values.out == str(tmp_path / "grids") + "/"  # the trailing '/' (single PNGs) kept
  parsed = evaluate._parser().parse_args(["--workdir", "~/run", "--real", "~/r", "--fake", "f"])
  assert (parsed.workdir, parsed.real, parsed.fake) == (str(tmp_path / "run"),
                                                        str(tmp_path / "r"), "f")
  parsed = prepare.parse_args(["--images", "~/photos", "--out", "~/set"])
  assert (parsed.images, parsed.out) == (str(tmp_path / "photos"), str(tmp_path / "set"))


def test_path_flags_and_config_paths_read_dot_dot_as_the_os_does(tmp_path, monkeypatch):
  """After a symlink, 'link/..' is the parent of the link's target to the OS, while abspath drops
  both: `train --workdir link/../wd` wrote config.json to one folder and its checkpoints to
  another; generate's --out and prepare's --out failed after their work."""
  from absl import flags

  from jaxgan import config as config_lib

  (tmp_path / "deep" / "sub").mkdir(parents=True)
  (tmp_path / "link").symlink_to(tmp_path / "deep" / "sub")
  monkeypatch.chdir(tmp_path)
  deep = os.path.realpath(tmp_path / "deep")
  assert path_flags.user_path("link/../wd") == os.path.join(deep, "wd")
  assert path_flags.user_path("link/../out/") == os.path.join(deep, "out") + "/"
  assert path_flags.user_path("link/x") == "link/x"  # no '..': as given
  values = flags.FlagValues()
  path_flags.define_path("workdir", None, "a path", values)
  values(["train", "--workdir=link/../wd"])
  assert values.workdir == os.path.join(deep, "wd")
  assert config_lib.paths.absolute_path("link/../data") == os.path.join(deep, "data")
  assert config_lib.paths.absolute_path("plain/../data") == str(tmp_path / "data")
  # Resolved up to the last '..' only: a symlink after it is kept, as without '..' (one folder
  # was recorded in two forms, and its decode cache built twice).
  assert path_flags.user_path("deep/../link") == "link"
  # Only the link a '..' steps out of is resolved: 'L/x/../data' is L/data, as written without.
  (tmp_path / "deep" / "sub" / "x").mkdir()
  assert path_flags.user_path("link/x/../data") == "link/data"
  assert config_lib.paths.absolute_path("link/x/../data") == str(tmp_path / "link" / "data")
  # A URI as given, for its refusal ('gs://b/runs/../r' trained into a local folder 'gs:').
  assert path_flags.user_path("gs://b/runs/../r") == "gs://b/runs/../r"


def test_generate_refuses_what_it_would_ignore(tmp_path):
  """--num with a plain --interpolate (a row per class: 100 asked, 32 written before), and a
  --standing_stats_batches below -1 (taken for -1): refused before the checkpoint is read."""
  from jaxgan import generate

  proc = run_module("jaxgan.generate", "--workdir", str(tmp_path), "--num", "100",
                    "--interpolate", "4", "--out", str(tmp_path / "grid.png"))
  assert proc.returncode == 2 and proc.stderr.strip() == (
      "error: --num is not read by --interpolate N alone (a row per class, N columns each); "
      "drop it, or use --between FROM:TO for ceil(--num / N) rows")
  for bad in (-7, 10**8):
    with pytest.raises(ValueError, match=rf"--standing_stats_batches must be -1 .*up to 10000, "
                                         rf"got {bad}$"):
      generate.generate(str(tmp_path), 4, str(tmp_path / "grid.png"), standing_stats_batches=bad)


@pytest.mark.parametrize("tool, paths", [("train", ["workdir"]), ("generate", ["workdir", "out"]),
                                         ("benchmark", ["images", "prepared", "trace_dir"])])
def test_asked_for_help_exits_0_with_h_as_with_help(tool, paths):
  """absl's --help exits 1, which scripts and CI take for a failure, and it knew no -h. It lists
  the tool's path flags too (defined through path_flags.define_path, they were filed under its
  module, which --help leaves out)."""
  for flag in ("--help", "-h"):
    proc = run_module(f"jaxgan.{tool}", flag)
    assert proc.returncode == 0 and f"python -m jaxgan.{tool}" in proc.stdout, proc.stderr[-2000:]
    assert "Try --helpfull to get a list of all flags." in proc.stdout
    listed = re.findall(r"^  --(?:\[no\])?(\w+):", proc.stdout, re.M)
    assert set(paths) <= set(listed), listed


@pytest.mark.parametrize("tool, args, message", [
    ("evaluate", ["--wrokdir", "w"], "unrecognized arguments: --wrokdir w; did you mean "
     "--workdir? (see --help)"),
    ("evaluate", ["--workdir", "w", "--num-samples", "abc"],
     "argument --num-samples: invalid int value: 'abc' (see --help)"),
    ("prepare", ["--images", "x"], "the following arguments are required: --out (see --help)"),
    ("prepare", ["--images", "x", "--out", "y", "--image-size", "0"],
     "--image-size must be a positive integer, got 0 (see --help)"),
    # A typo'd size (6400 for 64): a numpy traceback, or the OS's kill, after the scan before.
    ("prepare", ["--images", "x", "--out", "y", "--image-size", "100000"],
     "--image-size must be at most 8192, got 100000 (see --help)"),
    ("prepare", ["--images", "x", "--out", "y", "--min-class-count", "-2"],
     "--min-class-count must be a positive integer, got -2 (see --help)"),
    ("prepare", ["--images", "x", "--out", "y", "--max-pixels", "0"],
     "--max-pixels must be a positive integer, got 0 (see --help)"),
    # Ignored before: manifest flags without a manifest, "every core" for a negative count.
    ("prepare", ["--images", "x", "--out", "y", "--image-pattern", "{sku}.png"],
     "--image-pattern is read with --manifest only (a folder's files are found under --images) "
     "(see --help)"),
    ("prepare", ["--images", "x", "--out", "y", "--workers", "-3"],
     "--workers must be >= 0 (0 = every core), got -3 (see --help)"),
    # Ignored before: a pattern beside the column that names the files, an empty column name
    # (an empty shell variable: an unlabelled set written).
    ("prepare", ["--images", "x", "--out", "y", "--manifest", "m.csv", "--image-column", "file",
                 "--image-pattern", "{id}.png"],
     "--image-pattern names files without --image-column only (the column gives each row's "
     "file) (see --help)"),
    ("prepare", ["--images", "x", "--out", "y", "--manifest", "m.csv", "--label-column", ""],
     "--label-column needs a column name, got '' (see --help)"),
])
def test_argparse_tools_give_usage_errors_as_one_line(tool, args, message, capsys):
  """prepare and evaluate (argparse) printed their whole usage before the error."""
  import importlib

  with pytest.raises(SystemExit) as exit_:
    importlib.import_module(f"jaxgan.{tool}").main(args)
  assert exit_.value.code == 2
  assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_evaluate_refuses_a_cache_dir_that_is_a_file(tmp_path, capsys):
  """Warned of only after the reals' Inception, naming the config key eval.cache_dir."""
  from jaxgan import evaluate

  (tmp_path / "cache").write_text("")
  assert evaluate.main(["--real", "r", "--fake", "f", "--cache-dir",
                        str(tmp_path / "cache")]) == 2
  assert capsys.readouterr().err.strip() == (
      f"error: --cache-dir {tmp_path / 'cache'}: is a file, not a folder; pass a folder (or "
      "none)")
  assert evaluate.main(["--real", "r", "--fake", "f", "--cache-dir",
                        str(tmp_path / "cache" / "sub" / "x")]) == 2
  assert capsys.readouterr().err.strip() == (
      f"error: --cache-dir {tmp_path / 'cache' / 'sub' / 'x'} ({tmp_path / 'cache'}): is a file, "
      "not a folder; pass a folder (or none)")


def test_ctrl_c_ends_a_tool_with_one_line_and_status_130(capsys):
  """generate, evaluate and prepare: Ctrl-C printed a KeyboardInterrupt traceback."""
  def interrupted():
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as e:
    cli.interruptible(interrupted)()
  assert e.value.code == 130 and capsys.readouterr().err == "interrupted (Ctrl-C)\n"
  assert cli.interruptible(lambda x, y=0: x + y)(1, y=2) == 3


def test_a_tool_turns_sigterm_into_an_exception_while_it_runs_only():
  """SIGTERM raises cli.Terminated (a KeyboardInterrupt, so Ctrl-C's clean-ups run) while the
  tool's main runs; the handler before it is back afterwards, and one set to ignore SIGTERM (by
  whoever started the tool) is kept. During the clean-up a repeated SIGTERM is ignored and Ctrl-C
  is the OS's (quit at once). The whole path is test_sources' prepare under SIGTERM."""
  import signal
  import time

  from jaxgan import stopping

  def mine(signum, frame):
    del signum, frame

  previous = signal.signal(signal.SIGTERM, mine)
  try:
    installed = cli.interruptible(lambda: signal.getsignal(signal.SIGTERM))()
    assert isinstance(getattr(installed, "__self__", None), stopping.Interrupts)
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    assert cli.interruptible(lambda: signal.getsignal(signal.SIGTERM))() is signal.SIG_IGN

    signal.signal(signal.SIGTERM, mine)
    during = []

    def terminated():  # `mine` would take the signal if the handler were not installed
      try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
      except cli.Terminated:
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the clean-up runs to its end
        time.sleep(0.05)
        during.append(signal.getsignal(signal.SIGINT))
        raise

    with pytest.raises(SystemExit) as e:
      cli.interruptible(terminated)()
    assert e.value.code == 143 and during == [signal.SIG_DFL]
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGTERM, previous)


CTRL_C_AFTER_A_HANDLER_PUT_BACK = r"""
import os, signal, sys, time
from jaxgan import cli

def main():
  ours = signal.getsignal(signal.SIGINT)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
  except cli.Terminated:
    # As decode's start-up window puts back the SIGINT handler it found (ours) after the first
    # stop set the OS's: Ctrl-C during the clean-up must still quit at once.
    signal.signal(signal.SIGINT, ours)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    print("the second Ctrl-C was swallowed", flush=True)
    raise

sys.exit(cli.interruptible(main)())
"""


def test_ctrl_c_after_a_stop_quits_at_once_even_where_our_handler_was_put_back():
  import signal
  import subprocess
  import sys

  from conftest import REPO

  proc = subprocess.run([sys.executable, "-c", CTRL_C_AFTER_A_HANDLER_PUT_BACK], cwd=REPO,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == -signal.SIGINT and not proc.stdout, (proc.stdout, proc.stderr[-2000:])


STOPPED_MID_COMPILE = r"""
import os, signal, sys, threading
import jax, jax.numpy as jnp
from jaxgan import cli

def main():
  def deep(x):  # seconds to compile on a CPU
    for i in range(600):
      x = jnp.tanh(x @ x.T + i)
    return x
  lowered = jax.jit(deep).lower(jnp.ones((8, 8)))
  threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
  lowered.compile()
  print("compiled before the signal", flush=True)

sys.exit(cli.interruptible(main, process_exit=True)())
"""


def test_a_tool_stopped_mid_compile_exits_143_not_with_xlas_crash_at_shutdown():
  """evaluate and benchmark, stopped while XLA compiled, printed their line and then crashed in
  the interpreter's shutdown (SIGSEGV, status 139, in most runs): the tools' `__main__` now end
  the process with their status once flushed."""
  import subprocess
  import sys

  from conftest import REPO

  proc = subprocess.run([sys.executable, "-c", STOPPED_MID_COMPILE], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  assert "compiled before" not in proc.stdout  # else the signal came too late to test this
  assert (proc.returncode, proc.stderr) == (143, "terminated (SIGTERM)\n"), proc.stderr[-2000:]
  for tool in ("evaluate", "prepare", "generate", "benchmark"):  # each tool's entry point
    source = open(os.path.join(REPO, "jaxgan", f"{tool}.py")).read()
    assert "cli.interruptible(main, process_exit=True)" in source, tool


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
@pytest.mark.parametrize("signum, status, then", [
    ("SIGTERM", 143, "check"), ("SIGINT", 130, "check"), ("SIGHUP", 129, "check"),
    ("SIGTERM", 143, "raise"),
    ("SIGTERM", 143, "return")])
def test_a_stop_that_python_drops_is_raised_again_at_the_next_unit_of_work(signum, status, then):
  """Python drops an exception raised in a garbage-collection callback (JAX registers one):
  prepare, stopped during one, wrote and published the whole set and exited 0. The stop is also
  what ends a tool whose main then fails or returns an error status (the decoding workers that
  the same SIGTERM ended: "a decoding worker process died", status 2)."""
  import gc
  import signal
  import time

  from jaxgan import stopping

  reached = []

  def callback(phase, info):
    del info
    if phase == "start" and not reached:
      reached.append("signal")
      os.kill(os.getpid(), getattr(signal, signum))
      time.sleep(0.05)  # the handler runs here, in the callback: its exception is dropped

  def main():
    gc.callbacks.append(callback)
    try:
      gc.collect()
    finally:
      gc.callbacks.remove(callback)
    reached.append("went on")
    if then == "raise":
      raise RuntimeError("a decoding worker process died")
    if then == "return":
      return 2
    stopping.raise_if_interrupted()
    reached.append("published")

  with pytest.raises(SystemExit) as e:
    cli.interruptible(main)()
  assert e.value.code == status and reached == ["signal", "went on"]
  stopping.raise_if_interrupted()  # nothing pending once the tool is done


def test_stop_signals_held_are_delivered_when_the_hold_ends():
  """The tools load JAX with the stop signals held: a SIGTERM raised into the middle of jaxlib's
  import left it half-initialised, and the process crashed (SIGSEGV, 90 lines) instead of
  ending with its one line. Held, the signal arrives once the import is done."""
  import signal

  from jaxgan import stopping

  interrupts = stopping.Interrupts()
  interrupts.__enter__()
  try:
    with pytest.raises(stopping.Terminated):
      with stopping.signals_held():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler would run between these bytecodes, were it not held
          sum(range(1000))
        assert interrupts.signal is None
  finally:
    interrupts.__exit__()
  assert interrupts.signal == signal.SIGTERM


JAX_LOADED_HELD = r"""
import builtins, json, signal, sys
seen = []
real_import = builtins.__import__
def watching(name, *args, **kwargs):
  if name.split(".")[0] in ("jax", "jaxlib") and not seen:
    seen.append(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))
  return real_import(name, *args, **kwargs)
builtins.__import__ = watching
from jaxgan import cli
tool = __import__(f"jaxgan.{sys.argv[1]}", fromlist=["main"])
try:
  cli.interruptible(tool.main)(sys.argv[2:])
except SystemExit:
  pass
print(json.dumps(seen))
"""


@pytest.mark.parametrize("tool, args", [
    ("evaluate", ["--real", "{tmp}", "--fake", "{tmp}"]),
    ("evaluate", ["--workdir", "{tmp}"]),
    ("prepare", ["--images", "{tmp}/photos", "--out", "{tmp}/set", "--workers", "1"])])
def test_the_tools_load_jax_with_the_stop_signals_held(tmp_path, tool, args):
  """A stop signal raised into the middle of jaxlib's import can leave it half-initialised (a
  SIGSEGV instead of the tool's one line): the tools that raise on a stop load JAX held.
  evaluate loaded it unheld, through its metric registry, before the holds meant for it."""
  import json
  import signal
  import subprocess
  import sys

  from PIL import Image

  from tests.conftest import REPO

  (tmp_path / "photos").mkdir()
  Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "photos" / "a.png")
  proc = subprocess.run([sys.executable, "-c", JAX_LOADED_HELD, tool,
                         *[a.format(tmp=tmp_path) for a in args]],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  masks = json.loads(proc.stdout.strip().splitlines()[-1])
  assert masks and set(masks[0]) >= {int(signal.SIGINT), int(signal.SIGTERM),
                                     int(signal.SIGHUP)}, (masks, proc.stderr[-2000:])


OUT_OF_MEMORY = """
import os
import jax
from jaxgan import train, trainer

def step_too_large(*args, **kwargs):
  raise jax.errors.JaxRuntimeError(os.environ["STEP_ERROR"])

trainer.train_and_evaluate = step_too_large
train.run()
"""


def test_the_tools_turn_xlas_out_of_memory_into_one_line_and_keep_other_crashes(tmp_path):
  """A batch or widths too large for the device ended the run with JAX's traceback."""
  import subprocess
  import sys

  from tests.conftest import REPO

  def train(error):
    return subprocess.run(
        [sys.executable, "-c", OUT_OF_MEMORY, "--config", "configs/default.py", "--workdir",
         str(tmp_path / "w")], cwd=REPO, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, STEP_ERROR=error))

  oom = train("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 80.00GiB.\nmore")
  assert oom.returncode == 2 and oom.stderr.splitlines()[-1] == (
      "error: training ran out of memory (RESOURCE_EXHAUSTED: Out of memory while trying "
      "to allocate 80.00GiB.); lower train.batch_size or the model's widths, or shard it over "
      "more devices (mesh.fsdp); --compile_only prints the step's estimated peak per device")
  assert "Traceback" not in oom.stderr
  # Not every RESOURCE_EXHAUSTED is memory: a collective's message over gRPC's limit.
  grpc = train("RESOURCE_EXHAUSTED: Received message larger than max (5000000 vs. 4194304)")
  assert grpc.returncode == 1 and "Traceback" in grpc.stderr
  crash = train("INTERNAL: a CUDA kernel failed")
  assert crash.returncode == 1 and "Traceback" in crash.stderr
  assert crash.stderr.splitlines()[-1].endswith("INTERNAL: a CUDA kernel failed")
  # generate's --batch likewise.
  script = (OUT_OF_MEMORY.replace("import train, trainer", "import generate")
            .replace("trainer.train_and_evaluate =", "generate.generate =")
            .replace("train.run()", "generate.run()"))
  sample = subprocess.run(
      [sys.executable, "-c", script, "--workdir", str(tmp_path / "w"), "--batch", "4096"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, STEP_ERROR="RESOURCE_EXHAUSTED: Error allocating device buffer: 8.00G"))
  assert sample.returncode == 2 and sample.stderr.splitlines()[-1] == (
      "error: sampling ran out of memory (RESOURCE_EXHAUSTED: Error allocating device buffer: "
      "8.00G); lower --batch (now 4096)")
  # And evaluate's --batch-size (Inception's batch).
  from PIL import Image

  (tmp_path / "a").mkdir()
  for i in range(2):
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / f"{i}.png")
  script = (OUT_OF_MEMORY.replace("import train, trainer", "import evaluate")
            .replace("trainer.train_and_evaluate =", "evaluate.evaluate_sets =")
            .replace("train.run()", "raise SystemExit(evaluate.main())"))
  inception = subprocess.run(
      [sys.executable, "-c", script, "--real", str(tmp_path / "a"), "--fake", str(tmp_path / "a")],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, STEP_ERROR="RESOURCE_EXHAUSTED: Error allocating device buffer: 8.00G"))
  assert inception.returncode == 2 and inception.stderr.splitlines()[-1] == (
      "error: evaluating ran out of memory (RESOURCE_EXHAUSTED: Error allocating device buffer: "
      "8.00G); lower --batch-size (Inception images per device)"), inception.stderr
  # And the benchmark's step.
  script = (OUT_OF_MEMORY.replace("import train, trainer", "import benchmark, throughput")
            .replace("trainer.train_and_evaluate =", "throughput.benchmark_step =")
            .replace("train.run()", "benchmark.run()"))
  bench = subprocess.run(
      [sys.executable, "-c", script, "--config", "configs/default.py"], cwd=REPO,
      capture_output=True, text=True, timeout=120,
      env=dict(os.environ, STEP_ERROR="RESOURCE_EXHAUSTED: Out of memory allocating 67898969600 "
               "bytes."))
  assert bench.returncode == 2 and bench.stderr.splitlines()[-1] == (
      "error: the benchmark ran out of memory (RESOURCE_EXHAUSTED: Out of memory allocating "
      "67898969600 bytes.); lower train.batch_size or the model's widths (--config.KEY=VALUE), "
      "or shard it (mesh.fsdp)"), bench.stderr[-2000:]
