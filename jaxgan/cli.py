"""What the command-line tools share: absl flag parsing that turns a bad `--config.KEY=...`
override into one error line, and the one-line error exit."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from absl import app


def fail(message: str) -> NoReturn:
  """`error: message` on stderr and exit status 2 (a usage or input error, not a crash)."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, plus one line (not ml_collections' traceback) for a bad --config.KEY."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a key that is not in the config, with a
    # message of nested reprs; keep its words: the bad key and its "Did you mean ...?".
    detail = " ".join(re.sub(r"\\+n|\\+'|^['\"]+|['\"]+$", " ", str(e)).split())
    detail = re.sub(r"^(\w+)\b", r"unknown key '\1'.", detail)
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    key = re.match(r"unknown key '(\w+)'", detail)
    named = [o for o in overrides if key and key.group(1) in o.split(".")[1:]]
    if not named:  # not an override's key (say, a bug in the config file): the real traceback
      raise
    fail(f"{named[0]}: {detail} (the keys are those of jaxgan/config/schema.py)")
