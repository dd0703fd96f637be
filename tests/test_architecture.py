"""The layering of docs/architecture.md, read from the source: every jaxgan import (lazy ones
inside functions included) goes to the same layer or one below, and imports (lazy ones included)
have no cycles. A new module must be placed in a layer here and in the doc."""

import ast
import pathlib


PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxgan"

# Top to bottom, as in docs/architecture.md's "Who owns what"; everything else is a foundation.
LAYERS = {
    "cli": {"jaxgan.train", "jaxgan.generate", "jaxgan.evaluate", "jaxgan.prepare",
            "jaxgan.benchmark"},
    "orchestration": {"jaxgan.trainer", "jaxgan.throughput", "jaxgan.run", "jaxgan.restore",
                      "jaxgan.startup", "jaxgan.offline_eval"},
    "step": {"jaxgan.steps", "jaxgan.sampling", "jaxgan.evaluator", "jaxgan.periodic_eval",
             "jaxgan.workdir", "jaxgan.saved_run", "jaxgan.generation",
             "jaxgan.sample_grids"},
    "state": {"jaxgan.state"},
    # They ask the registries (models, losses, data sources, augmentations, metrics) about a
    # config's keys, and the registries import the config's schema (a foundation).
    "config checks": {"jaxgan.config.validation", "jaxgan.config.mesh_checks",
                      "jaxgan.config.resume"},
}
RANK = {"cli": 5, "orchestration": 4, "step": 3, "state": 2, "config checks": 1, "foundation": 0}


def module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def layer(module: str) -> str:
  return next((name for name, members in LAYERS.items() if module in members), "foundation")


def modules() -> dict[str, pathlib.Path]:
  return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def jaxgan_imports(path: pathlib.Path, known: set[str], module_level_only: bool) -> set[str]:
  """The jaxgan modules `path` imports (`from jaxgan import x` counts as jaxgan.x when x is a
  module, else as jaxgan itself)."""
  tree = ast.parse(path.read_text())
  nodes = tree.body if module_level_only else ast.walk(tree)
  found = set()
  for node in nodes:
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "jaxgan"}
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
        node.module.split(".")[0] == "jaxgan"):
      for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in known else node.module)
  return found - {"jaxgan"}


def test_every_import_goes_to_the_same_layer_or_below():
  mods = modules()
  assert len(mods) > 30 and set().union(*LAYERS.values()) <= set(mods), "stale LAYERS"
  upward = []
  for name, path in mods.items():
    for target in jaxgan_imports(path, set(mods), module_level_only=False):
      if RANK[layer(target)] > RANK[layer(name)]:
        upward.append(f"{name} ({layer(name)}) imports {target} ({layer(target)})")
  assert not upward, upward


def test_the_package_has_no_relative_imports():
  """The checkers read absolute `jaxgan` imports only: a relative one would pass unseen."""
  relative = [f"{name}:{node.lineno}" for name, path in modules().items()
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.ImportFrom) and node.level > 0]
  assert not relative, relative


def test_imports_have_no_cycle():
  """Lazy imports too: one inside a function hides a cycle from Python's import machinery, not
  from a reader (a data source that imported `jaxgan.config`, whose package imported the
  validation that imports every data source)."""
  mods = modules()
  graph = {name: jaxgan_imports(path, set(mods), module_level_only=False)
           for name, path in mods.items()}
  # A package's __init__ runs before its submodules; importing jaxgan.x.y imports jaxgan.x.
  for name in mods:
    for target in list(graph[name]):
      parent = target.rpartition(".")[0]
      if parent in graph and parent not in ("jaxgan", name) and not name.startswith(parent + "."):
        graph[name].add(parent)
  cycle = find_cycle(graph)
  assert cycle is None, "import cycle: " + " -> ".join(cycle)


def find_cycle(graph: dict[str, set[str]]):
  """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, int] = {}  # 1 visiting, 2 done

  def visit(node: str, trail: list[str]):
    if state.get(node) == 2:
      return None
    if state.get(node) == 1:
      return trail[trail.index(node):] + [node]
    state[node] = 1
    for target in sorted(graph.get(node, ())):
      found = visit(target, trail + [node])
      if found:
        return found
    state[node] = 2
    return None

  for name in sorted(graph):
    found = visit(name, [])
    if found:
      return found
  return None


def test_the_checkers_see_an_upward_import_and_a_cycle(tmp_path):
  """The two tests above can fail: a foundation importing the trainer is caught, and so is a
  cycle."""
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from jaxgan import trainer\n")
  known = set(modules())
  targets = jaxgan_imports(bad, known, module_level_only=False)
  assert targets == {"jaxgan.trainer"} and RANK[layer("jaxgan.trainer")] > RANK["foundation"]
  assert jaxgan_imports(bad, known, module_level_only=True) == set()


def test_image_decoding_workers_do_not_load_jax():
  """Decoding workers (spawned) import jaxgan.data.decode, where their function lives (and with
  it the jaxgan.data package): JAX there would cost each worker ~1.5 s and ~130 MB for nothing."""
  import subprocess
  import sys

  code = "import sys, jaxgan.data.decode; print('jax' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
  # A spawned worker also imports the parent's __main__ module: the CLIs that decode images.
  for cli in ("train", "prepare", "benchmark", "evaluate"):
    code = (f"import sys, jaxgan.{cli}; print(sorted(m for m in ('jax', 'flax', 'orbax', "
            "'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", cli


def test_the_tools_import_together():
  """absl's flags are one registry per process and the tools share names (--workdir, --config):
  defined at import, `import jaxgan.train, jaxgan.generate` failed with DuplicateFlagError (a
  script calling generation beside a training run's module). Each defines its flags as it runs."""
  import subprocess
  import sys

  code = ("import jaxgan.train, jaxgan.generate, jaxgan.benchmark, jaxgan.evaluate, "
          "jaxgan.prepare; print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
