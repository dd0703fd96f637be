"""`python -m jaxgan.train --config configs/X.py --workdir DIR [--config.key=value ...]`.

Every config key, its default and what it does: docs/config.md (made from jaxgan/config/schema.py).
"""

from __future__ import annotations

import contextlib
import json
import logging as std_logging
import signal
import sys
from typing import Sequence

from jaxgan import stopping

# The program's stop request, opened first thing (it loads no JAX): absl, ml_collections and the
# config file load before main() runs (~0.5 s, or as long as the config file takes), and a stop
# signal then was the OS's default action (status 143, which the SLURM script does not requeue).
# Handlers, not a blocked signal mask: a process the config file starts must not inherit stop
# signals it can never receive, and a blocked Ctrl-C could not end a hung config file (a SIGTERM
# then is only recorded: Ctrl-C twice, Ctrl-\ or SIGKILL end one that never returns). Module
# state, as signal handlers are the process's; only as the program: a spawned decode worker
# imports this module as __mp_main__, and keeps the defaults.
_PROGRAM_STOP = stopping.StopRequest().__enter__() if __name__ == "__main__" else None

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxgan import cli, config as config_lib, data, flag_parsing, path_flags  # noqa: E402
# pylint: enable=g-import-not-at-top,wrong-import-position

# The trainer (JAX, Flax, orbax) is imported in main(), not here: image-decoding workers are
# spawned processes, and a spawned process imports the parent's __main__ module (this one) first;
# at the top here, every worker would load JAX for nothing (~2 s and ~200 MB each).

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The tool's flags, defined when it runs (not at import: absl's flags are one registry per
  process, and the tools share names, so importing two of them failed with DuplicateFlagError)."""
  config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).",
                                  lock_config=True)
  path_flags.define_path("workdir", None, "Directory for checkpoints, samples and metrics.")
  flags.DEFINE_bool("allow_config_change", False,
                    "Resume even though the config differs from the checkpoint's.")
  flags.DEFINE_bool("compile_only", False,
                    "Lower and compile the train step for the configured mesh, print per-device "
                    "memory, FLOPs, parameter counts and collective bytes as JSON, and exit "
                    "without training.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv: Sequence[str]) -> None:
  cli.refuse_positional(argv)
  # The stop request is open before JAX and the trainer load (seconds): a stop signal meanwhile
  # (a preemption notice as the job starts, Ctrl-C), or one since the program started, stops the
  # run before it trains with status 75, which the SLURM script requeues, where the OS's default
  # action ended it (status 143, or a KeyboardInterrupt traceback).
  with contextlib.ExitStack() as scope:
    stop = _PROGRAM_STOP or stopping.StopRequest().__enter__()  # run() called by a program
    scope.push(stop)  # its __exit__ (the handlers before it) when main ends
    if FLAGS.compile_only:  # which a signal ends at once, as the OS's default action does
      scope.close()
      if stop.signal is not None:
        signal.raise_signal(stop.signal)
      stop = None
    _main(stop)


def _main(stop) -> None:
  """main's work, with `stop` (a stopping.StopRequest, None for --compile_only) open."""
  import jax  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from jaxgan import checkpoint, multihost, sharding, trainer, workdir
  from jaxgan import run as run_lib  # pylint: disable=g-import-not-at-top
  from jaxgan.config import validation as config_validation  # pylint: disable=g-import-not-at-top

  # Our own progress at INFO; libraries (orbax, absl) only when something is wrong.
  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("jaxgan").setLevel(std_logging.INFO)
  try:
    if FLAGS.compile_only:
      report = run_lib.compile_report(FLAGS.config)
      try:  # the step compiles alike without a schedule; a run would refuse it at its start
        config_validation.validate_schedule(FLAGS.config)
      except config_lib.ConfigError as e:
        std_logging.getLogger("jaxgan.train").warning("training refuses this config: %s", e)
      if jax.process_index() == 0:  # one report, not one per process on a job's shared stdout
        print(json.dumps(report))
    else:
      state = trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                         allow_config_change=FLAGS.allow_config_change,
                                         stop=stop)
      if sharding.to_host(state.step) < FLAGS.config.train.num_steps:  # stopped by a signal
        sys.exit(stopping.EXIT_STOPPED)
  except stopping.Stopped as e:  # a stop while starting, or in the last step before its end
    std_logging.getLogger("jaxgan.train").warning("%s", e)
    sys.exit(stopping.EXIT_STOPPED)
  except (config_lib.ConfigError, trainer.TrainingError, workdir.WorkdirError,
          checkpoint.CheckpointError, data.DataError, multihost.PeerError) as e:
    cli.fail(str(e))
  except ImportError as e:  # e.g. TensorFlow missing on a host that reads real catalogs
    cli.fail(f"{e}; install it (pip install -e .) or use --config.data.source=synthetic")
  except jax.errors.JaxRuntimeError as e:
    cli.fail(cli.out_of_memory_line(
        e, "training", "lower train.batch_size or the model's widths, or shard it over more "
        "devices (mesh.fsdp); --compile_only prints the step's estimated peak per device"))


def run() -> None:
  define_flags()
  app.run(main, flags_parser=flag_parsing.parse_flags)


if __name__ == "__main__":
  run()
