"""The folders a training run writes into its workdir and prunes (checkpoint steps rotated out,
a resume's dropped events), found from any path: what another tool or run put in one of them
would go with them, so `--workdir`, `generate --out` and `prepare --out` there are refused
(`managed_refusal`). No JAX: `prepare` checks its flags before it loads anything."""

from __future__ import annotations

import os
from typing import Optional

from jaxgan import config as config_lib

RUN_FOLDERS = ("checkpoints", "checkpoints_best", "samples", "tensorboard")
# Where checkpoints are moved aside (checkpoint.Checkpointer.move_aside's suffixes).
_ASIDE = (".corrupt", ".replaced", ".superseded")


def step_folders(directory: str, item: str = "") -> list[int]:
  """The step folders in `directory` now (without orbax's listing, which a manager keeps),
  holding `item` where one is named; [] where the folder cannot be listed."""
  try:  # isdecimal, not isdigit: int() refuses '²'
    return sorted(int(name) for name in os.listdir(directory) if name.isdecimal()
                  and (not item or os.path.isdir(os.path.join(directory, name, item))))
  except OSError:
    return []


def managing_run(path: str) -> Optional[tuple[str, str]]:
  """(folder, workdir) where `path` is, or is inside, a folder that the jaxgan run in `workdir`
  above it writes and prunes (WORKDIR/checkpoints/3, say: that run's next save deletes step 3
  with all that was put in it), as given or through symbolic links on its path; else None. (A
  run's folder that is itself a link, WORKDIR/checkpoints -> /store/c, is not followed back: a
  path under /store/c is not found.)"""
  for resolved in dict.fromkeys((os.path.abspath(path), os.path.realpath(path))):
    below = resolved
    while os.path.dirname(below) != below:
      above, name = os.path.dirname(below), os.path.basename(below)
      managed = name in RUN_FOLDERS or any(
          name == folder + suffix for folder in RUN_FOLDERS[:2] for suffix in _ASIDE)
      if managed and is_run(above):
        return below, above
      below = above
  return None


def managed_refusal(flag: str, path: str) -> str:
  """The one-line refusal of `flag` `path` inside a folder another run manages
  (`managing_run`), '' where it is not; training's adds how to resume that run."""
  managed = managing_run(path)
  if managed is None:
    return ""
  folder, run = managed
  return (f"{flag} {path} is inside {folder}, a folder of the run in {run}, which writes and "
          f"prunes it; pass a {flag} outside it"
          + (f" (to resume that run: --workdir {run})" if flag == "--workdir" else ""))


# What a run writes beside its config.json from its start (log.txt, metrics.jsonl) or later:
# another tool's config.json comes without them, even one this jaxgan reads ({"seed": 0}).
_RUN_EVIDENCE = ("log.txt", "metrics.jsonl") + RUN_FOLDERS


def is_run(folder: str) -> bool:
  """Whether `folder` is a jaxgan run's workdir: it has checkpoint steps (numbered folders with a
  train state: not runs numbered 1, 2, ... in a folder named 'checkpoints'), or a config.json
  this jaxgan reads as a run's together with a file or folder a run writes beside it. Asked of
  every folder an image scan walks: a dataset's own config.json must not hide its photos."""
  if step_folders(os.path.join(folder, "checkpoints"), item="state"):
    return True
  path = os.path.join(folder, "config.json")
  # A regular file only: open() of a pipe waits for a writer forever.
  if not os.path.isfile(path) or not any(os.path.exists(os.path.join(folder, name))
                                         for name in _RUN_EVIDENCE):
    return False
  try:
    with open(path, encoding="utf-8") as f:
      config_lib.from_json(f.read())
    return True
  except (OSError, ValueError):
    return False
