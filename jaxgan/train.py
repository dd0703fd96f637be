"""`python -m jaxgan.train --config configs/X.py --workdir DIR [--config.key=value ...]`."""

from __future__ import annotations

import json
import logging as std_logging
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxgan import checkpoint, config as config_lib, data, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and metrics.")
flags.DEFINE_bool("allow_config_change", False,
                  "Resume even though the config differs from the checkpoint's.")
flags.DEFINE_bool("compile_only", False,
                  "Lower and compile the train step for the configured mesh, print per-device "
                  "memory and FLOPs as JSON, and exit without training.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Our own progress at INFO; libraries (orbax, absl) only when something is wrong.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("jaxgan").setLevel(std_logging.INFO)
  try:
    if FLAGS.compile_only:
      print(json.dumps(trainer.compile_report(FLAGS.config)))
    else:
      trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                 allow_config_change=FLAGS.allow_config_change)
  except (config_lib.ConfigError, trainer.TrainingError, checkpoint.CheckpointError,
          data.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except ImportError as e:  # e.g. TensorFlow missing on a host that reads real catalogs
    print(f"error: {e}; install it (pip install -e .) or use --config.data.source=synthetic",
          file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
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
    print(f"error: {named[0]}: {detail} (the keys are those of jaxgan/config/schema.py)",
          file=sys.stderr)
    sys.exit(2)


def run() -> None:
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
