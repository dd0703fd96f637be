"""Shared fixtures: tiny configs that compile in seconds on a 2-core CPU."""

import os
import sys
import types

# Tests compile many tiny programs and time none of them, so the suite asks XLA to compile
# cheaply and run single-threaded kernels, set before JAX starts and inherited by the subprocesses
# tests launch:
# - the lowest backend (LLVM) optimisation level: threefry RNG alone took ~4 s at the default
#   level with jaxlib 0.10;
# - the older elemental fusion emitters instead of XLA:CPU's MLIR fusion emitters: the tiny
#   DCGAN's train step compiles in 0.85 s instead of 2.9 s, the tiny ResNet's in 6.4 s instead
#   of 9.8 s (jaxlib 0.10.2, 2 cores, 2026-12-03), with step times unchanged;
# - one thread per Eigen convolution or matmul: xdist already runs a worker per core, and each
#   worker's (and subprocess's) own thread pool only fought the others for the same cores;
# - LLVM code generated as one module, not split into parts compiled in parallel: the parts
#   only fought the other workers for the cores, each with its own setup. Compiling the tiny
#   DCGAN, ADA and ResNet steps and inits in a fresh process (5 runs each way, interleaved,
#   2026-12-06): median process CPU 35.3 s split (the default) vs 26.3 s not split; the ResNet
#   step's compile 5.45 vs 4.47 s, its init's 9.04 vs 6.80 s; lowering, which the flag leaves
#   alone, 3.16 vs 3.32 s. The whole suite showed no gain beyond its noise (README).
#   Code generation only: the kernels, and so every number the tests check, are the same.
# The suite's CPU time on 2 cores, in the working tree before the two-process evaluation test:
# 12:50 user + 1:22 sys with the first flag alone, 8:47 + 1:40 with the first three (wall 7:32
# and 5:38, one run each). All but the first are added only where a probe process accepts each:
# XLA aborts on a flag it does not know, and the fusion-emitter flag is younger than the oldest
# jaxlib the package allows (and the kind XLA removes once the old emitters go). A flag of the
# same name in the user's XLA_FLAGS is left as the user set it.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
OPTIONAL_FAST_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_multi_thread_eigen=false",
                       "--xla_cpu_parallel_codegen_split_count=1")


def _flag_names(flags: str) -> set:
  return {f.split("=", 1)[0] for f in flags.split()}


def _xla_accepts(flags: str) -> bool:
  """Whether a fresh process can start JAX's CPU backend with XLA_FLAGS=`flags` (~1.8 s)."""
  import subprocess

  try:
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices('cpu')"],
                           env=dict(os.environ, XLA_FLAGS=flags), capture_output=True,
                           text=True, timeout=120)
  except subprocess.TimeoutExpired:
    sys.stderr.write(f"conftest: JAX did not start within 120 s with XLA_FLAGS={flags}\n")
    return False
  if probe.returncode != 0:
    sys.stderr.write(f"conftest: not using XLA_FLAGS {flags}: {probe.stderr.strip()[-300:]}\n")
  return probe.returncode == 0


if FAST_COMPILE_FLAG.split("=")[0] not in _flag_names(os.environ.get("XLA_FLAGS", "")):
  # The first process here (pytest, or xdist's controller) probes, normally once; its workers
  # and every subprocess inherit the result through XLA_FLAGS and skip this block.
  _user = os.environ.get("XLA_FLAGS", "")
  _wanted = [f for f in OPTIONAL_FAST_FLAGS if f.split("=")[0] not in _flag_names(_user)]
  _base = f"{_user} {FAST_COMPILE_FLAG}".strip()
  if _wanted and not _xla_accepts(" ".join([_base] + _wanted)):
    _wanted = [f for f in _wanted if _xla_accepts(f"{_base} {f}")]  # each on its own
  os.environ["XLA_FLAGS"] = " ".join([_base] + _wanted)
# What a subprocess given its own XLA_FLAGS (fake devices) keeps of the above.
SUBPROCESS_FAST_FLAGS = " ".join(f for f in os.environ["XLA_FLAGS"].split()
                                 if f == FAST_COMPILE_FLAG or f in OPTIONAL_FAST_FLAGS)

# One persistent XLA compilation cache per test session, shared with every subprocess: the tests
# train the same tiny model in many processes, and each would otherwise compile it again.
OWN_CACHE_DIR = ""  # set where this process made the cache (the xdist controller): removed at exit
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import tempfile

  OWN_CACHE_DIR = tempfile.mkdtemp(prefix="jaxgan-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = OWN_CACHE_DIR
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# Ctrl-C deliverable, as at a terminal: a suite started as a background job of a script (`cmd &`
# without job control) inherits SIGINT ignored, and so would every process the tests start,
# whose Ctrl-C handling many tests check (a shell cannot even trap a signal ignored at its
# start). A handled signal is reset to its default at exec, so children get Python's own.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: a run without xdist (-p no:xdist)
def pytest_xdist_auto_num_workers(config):
  """`--numprocesses=auto` (pyproject's addopts): one xdist worker more than the cores this
  process may run on (capped by --maxprocesses). A worker often waits: on the subprocesses it
  starts, on signals and timeouts, on checkpoint threads; the extra one fills those gaps. The
  whole suite on 2 cores, 2026-12-06: 735-745 s with 2 workers, 666 s with 3 (one run each,
  the CPU then 195 % busy). PYTEST_XDIST_AUTO_NUM_WORKERS still decides where it is set."""
  del config
  if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
    return None  # xdist's own hook reads it
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return (cores or 1) + 1


def pytest_sessionfinish(session, exitstatus):
  """Removes the session's compilation cache (tens of MB a run, left in /tmp before); in an xdist
  worker, collects the session's garbage once and freezes the rest."""
  del session, exitstatus
  if OWN_CACHE_DIR:
    import shutil

    shutil.rmtree(OWN_CACHE_DIR, ignore_errors=True)
  if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest's unraisable-exception plugin then collects garbage 5 times at unconfigure, each a
    # pass over the whole heap (JAX's caches, TensorFlow): 4-9 s in a worker after the suite.
    # execnet sends a worker whose work has not ended 5 s after the controller's terminate a
    # SIGINT, which showed as a KeyboardInterrupt warning in JAX's gc callback after [100%].
    # Here, before the worker reports its end, one collection (its unraisable exceptions are
    # still reported), then the heap is frozen: those 5 passes see only what comes after.
    import gc

    gc.collect()
    gc.freeze()


def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess with `devices` fake CPU devices."""
  return f"{SUBPROCESS_FAST_FLAGS} --xla_force_host_platform_device_count={devices}"


# The start of a run_two_processes script: joins the job through the project's own start-up
# (sharding.initialize_distributed, as the CLIs do); `me` is this process's index.
JOIN_TWO_PROCESSES = r"""
import sys
import jax
from jaxgan import config as _config, sharding as _sharding
_c = _config.base_config()
_c.distributed.coordinator_address, _c.distributed.num_processes = sys.argv[1], 2
_c.distributed.process_id = int(sys.argv[2])
_sharding.initialize_distributed(_c)
me = jax.process_index()
"""


def _free_port() -> int:
  """A port no one listens on now (the OS picks it), for a coordinator started right after."""
  import socket

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_two_processes(script: str, *args: str, devices=1,
                      timeout: float = 120) -> tuple[list, list[str]]:
  """Runs `script` (python -c) as processes 0 and 1 of a jax.distributed job on the CPU, each
  with `devices` fake devices (or (process 0's, process 1's)) and given `localhost:PORT`, its
  index and `args`; returns (the last stdout line of each as JSON, the stderr of each).
  `timeout`: seconds for both."""
  import json
  import subprocess
  import time

  port = _free_port()
  counts = devices if isinstance(devices, tuple) else (devices, devices)
  procs = [subprocess.Popen([sys.executable, "-c", script, f"localhost:{port}", str(i), *args],
                            cwd=REPO, env=dict(os.environ, XLA_FLAGS=xla_flags(counts[i])),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  deadline = time.monotonic() + timeout  # one deadline for both
  try:
    outs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    errs = [p.communicate()[1] for p in procs]  # both processes' stderr, for the report
    raise AssertionError("two processes timed out:\n" + errs[0][-2000:] + errs[1][-2000:])
  finally:
    for p in procs:
      p.kill()
  assert [p.returncode for p in procs] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs], [err for _, err in outs]


def tiny_config(**overrides):
  """A class-conditional DCGAN at 16x16 with a handful of channels."""
  from jaxgan.config import base_config

  c = base_config()
  c.data.image_size = 16
  c.data.num_classes = 3
  c.model.z_dim = 8
  c.model.g_width = 8
  c.model.d_width = 8
  c.train.batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.sample_every = 2
  c.train.checkpoint_every = 2
  c.train.samples_per_class = 2
  c.train.ema_half_life_images = 64
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  if c.model.name == "dcgan" and "model.embed_dim" not in overrides:
    c.model.embed_dim = 4  # DCGAN's class embedding (the ResNet reads none: validation refuses it)
  return c


# Where code that kept programs trace lives (their init and train step, samplers, standing
# statistics, Inception): a monkeypatch of an attribute of these modules' objects may change what
# a program traces, so a test that makes one must keep its programs apart (PATCHES_TRACED_CODE).
TRACED_MODULES = ("jax", "jaxlib", "flax", "optax", "numpy", "jaxgan.models", "jaxgan.losses",
                  "jaxgan.augment", "jaxgan.augment_ada", "jaxgan.steps", "jaxgan.state",
                  "jaxgan.sampling", "jaxgan.sharding", "jaxgan.run", "jaxgan.kept_programs",
                  "jaxgan.metrics.features", "jaxgan.metrics.inception", "jaxgan.config",
                  "jaxgan.registry")
# Host functions of those modules, which no program traces: writing a PNG, moving a batch to the
# devices or values back, waiting for the devices.
HOST_FUNCTIONS = ("jaxgan.sampling.save_png", "jaxgan.sharding.put_batch",
                  "jaxgan.sharding.to_host", "jax.block_until_ready")
PATCHES_TRACED_CODE = "patches_traced_code"


def pytest_configure(config):
  config.addinivalue_line(
      "markers", f"{PATCHES_TRACED_CODE}: the test monkeypatches code that jitted programs trace "
      "(conftest.TRACED_MODULES); its programs are kept apart from other tests'")


def _traced_patches(monkeypatch) -> list:
  """The patches of `monkeypatch` that may reach traced code: attributes of objects of
  TRACED_MODULES, and items set in dicts (a registry's entries)."""
  found = []
  for target, name, _ in getattr(monkeypatch, "_setattr", []):
    where = (target.__name__ if isinstance(target, types.ModuleType)
             else getattr(target, "__module__", None) if isinstance(target, type)
             else type(target).__module__)
    if (any(where == m or str(where).startswith(m + ".") for m in TRACED_MODULES)
        and f"{where}.{name}" not in HOST_FUNCTIONS):
      found.append(f"{where}.{name}")
  # os.environ and sys.modules (a package made absent) reach no program.
  found += [f"[{key!r}]" for target, key, _ in getattr(monkeypatch, "_setitem", [])
            if target is not os.environ and target is not sys.modules]
  return found


@pytest.fixture(autouse=True)
def _programs_kept_apart_where_traced_code_is_patched(request, monkeypatch):
  """kept_programs keeps the programs of the last runs, samplers and Inception networks a
  process built, for one built again; a worker's tests share them, as a process's runs do (many
  tests train the same tiny config), also those that monkeypatch host code (checkpoints, writers,
  the loop's timing). A test marked PATCHES_TRACED_CODE keeps its own apart, dropped after it, so
  that no program traced under its patches serves another test, nor one traced without them its
  own. An unmarked test found (after it) to have patched traced code fails, and every kept
  program is dropped. (Every test that monkeypatched kept its programs apart before: the default
  config's were built 39 times in a suite run, on 3 workers.) mock.patch and
  pytest.MonkeyPatch.context() are not seen here: the tests' patches through them patch host
  code, or record calls on their way to the real functions. Requests monkeypatch, so that its
  patches are still listed when this ends. jaxgan.kept_programs is not imported for this."""
  marked = request.node.get_closest_marker(PATCHES_TRACED_CODE) is not None
  module = sys.modules.get("jaxgan.kept_programs")
  if marked and module is not None:
    with module.kept_apart():
      yield
    return
  yield
  module = sys.modules.get("jaxgan.kept_programs")
  traced = _traced_patches(monkeypatch)
  if module is not None and (marked or traced):
    module.forget_programs()  # what it kept (nothing was kept before it), or what it may have
  if traced and not marked:
    pytest.fail(f"{request.node.nodeid} monkeypatches code that programs trace ({', '.join(traced)}"
                f"): mark it @pytest.mark.{PATCHES_TRACED_CODE}", pytrace=False)


@pytest.fixture
def make_config():
  return tiny_config


def jaxpr_equations(jaxpr):
  """A jaxpr's equations, those of the jaxprs nested in them (jit, custom_vjp) included."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", None)
      if inner is not None:
        yield from jaxpr_equations(getattr(inner, "jaxpr", inner))


def run_module(module, *args, env=None, timeout=300):
  """Runs `python -m module args...` from the repo root; returns the CompletedProcess."""
  import subprocess

  full_env = dict(os.environ)
  full_env.update(env or {})
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout)
