"""`python -m jaxgan.benchmark --config configs/benchmark/dcgan64.py [--config.train.batch_size=1024]`
times the real train step and prints one JSON line;
`python -m jaxgan.benchmark input --images DIR --prepared SET [--image_size 64]` measures input
throughput (raw JPEG decoding and prepared shards), one JSON line each;
`python -m jaxgan.benchmark profile --config ... [--profile_steps 5] [--trace_dir DIR]` traces the
train step and prints where its time goes (by op kind, by model layer, top ops) as one JSON line.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from jaxgan import cli, flag_parsing, path_flags, stopping

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The tool's flags, defined when it runs (not at import: see train.define_flags)."""
  config_flags.DEFINE_config_file("config", None, "Config file (step and profile benchmarks).", lock_config=True)
  flags.DEFINE_integer("steps", 30, "Timed calls of the train step, each train.steps_per_call "
                       "steps (step benchmark); the median per step is reported.")
  flags.DEFINE_integer("warmup", 5, "Untimed calls first (compilation, autotuning).")
  flags.DEFINE_integer("profile_steps", 5, "Traced calls of the train step, each "
                       "train.steps_per_call steps (profile).")
  path_flags.define_path("trace_dir", "",
                         "Keep the profiler trace here (profile; TensorBoard reads it).")
  flags.DEFINE_integer("top", 15, "Ops listed by time (profile).")
  path_flags.define_path("images", "", "Raw image folder (input benchmark).")
  path_flags.define_path("prepared", "", "Prepared data set folder (input benchmark).")
  flags.DEFINE_integer("image_size", 64, "Decode size (input benchmark, raw folder).")
  flags.DEFINE_integer("batch_size", 256, "Batch size (input benchmark, prepared).")
  flags.DEFINE_integer("batches", 200, "Timed batches (input benchmark, prepared).")
  flags.DEFINE_integer("limit", 0, "Decode at most this many raw images (0 = all).")


def _check_flags(mode: str) -> None:
  """Flag values that would otherwise fail after compiling, or with a traceback."""
  if mode not in ("step", "profile", "input"):
    cli.fail(f"unknown mode {mode!r}; use 'step' (or nothing), 'profile' or 'input'")
  if mode == "input":
    if not (FLAGS.images or FLAGS.prepared):
      cli.fail("the input benchmark needs --images DIR and/or --prepared DIR")
    for flag in ("images", "prepared"):
      if FLAGS[flag].value and not os.path.isdir(FLAGS[flag].value):
        cli.fail(f"--{flag} {FLAGS[flag].value}: not a folder")
    if FLAGS.prepared and not os.path.isfile(os.path.join(FLAGS.prepared, "dataset_info.json")):
      cli.fail(f"--prepared {FLAGS.prepared}: not a prepared set (no dataset_info.json); write "
               "one with python -m jaxgan.prepare")
    for flag in ("image_size", "batch_size", "batches"):
      if FLAGS[flag].value < 1:
        cli.fail(f"--{flag} must be >= 1, got {FLAGS[flag].value}")
    if FLAGS.limit < 0:
      cli.fail(f"--limit must be >= 0 (0 = every image), got {FLAGS.limit}")
    from jaxgan.data.images import MAX_IMAGE_SIZE  # pylint: disable=g-import-not-at-top
    if FLAGS.image_size > MAX_IMAGE_SIZE:
      cli.fail(f"--image_size must be at most {MAX_IMAGE_SIZE}, got {FLAGS.image_size}")
    stray = [f for f in ("config", "steps", "warmup", "profile_steps", "trace_dir", "top")
             if FLAGS[f].present]
    if stray:  # ignored without a word otherwise
      cli.fail(f"--{stray[0]} is a flag of the step and profile benchmarks, not of 'input'")
    if FLAGS["image_size"].present and not FLAGS.images:
      cli.fail("--image_size is the raw folder's decode size (--images); a prepared set is read "
               "at the size it was prepared at")
    if FLAGS["limit"].present and not FLAGS.images:
      cli.fail("--limit caps the raw folder's images (--images); a prepared set is served whole")
    stray = [f for f in ("batch_size", "batches") if FLAGS[f].present]
    if stray and not FLAGS.prepared:
      cli.fail(f"--{stray[0]} sets how the prepared set (--prepared) is served; the raw folder "
               "(--images) is decoded whole, --limit images at most")
    return
  if FLAGS.config is None:
    cli.fail("--config is required, e.g. --config configs/benchmark/dcgan64.py")
  # The input benchmark's flags, given to a step benchmark, would be ignored without a word.
  stray = [f for f in ("images", "prepared", "image_size", "batch_size", "batches", "limit")
           if FLAGS[f].present]
  if stray:
    sizes = ("; the batch and image size come from the config: --config.train.batch_size=N, "
             "--config.data.image_size=N" if stray[0] in ("image_size", "batch_size") else "")
    cli.fail(f"--{stray[0]} is a flag of the input benchmark (python -m jaxgan.benchmark input), "
             f"not of the {mode} benchmark{sizes}")
  # The profile's flags given to the step benchmark, and the other way round: ignored otherwise.
  other = ("profile_steps", "trace_dir", "top") if mode == "step" else ("steps",)
  stray = [f for f in other if FLAGS[f].present]
  if stray:
    cli.fail(f"--{stray[0]} is a flag of the {'profile' if mode == 'step' else 'step'} "
             f"benchmark, not of the {mode} benchmark")
  for flag, low in (("steps", 1), ("warmup", 0), ("profile_steps", 1), ("top", 1)):
    if FLAGS[flag].value < low:
      cli.fail(f"--{flag} must be >= {low}, got {FLAGS[flag].value}")
  if mode == "profile" and FLAGS.trace_dir:
    if os.path.isfile(FLAGS.trace_dir):  # makedirs would say 'File exists'
      cli.fail(f"--trace_dir {FLAGS.trace_dir}: is a file, not a folder; pass a folder")
    try:  # now, not after the compile
      os.makedirs(FLAGS.trace_dir, exist_ok=True)
      if not os.access(FLAGS.trace_dir, os.W_OK):
        raise PermissionError("not writable")
    except OSError as e:
      cli.fail(f"--trace_dir {FLAGS.trace_dir}: {e.strerror or e}; pass a folder you can write")


def main(argv: Sequence[str]) -> None:
  logging.set_verbosity(logging.WARNING)
  cli.refuse_positional(argv, allowed=1)  # the mode
  mode = argv[1] if len(argv) > 1 else "step"
  _check_flags(mode)
  with stopping.signals_held():  # JAX loads: see stopping.signals_held
    # pylint: disable=g-import-not-at-top
    import jax
    from jaxgan import config as config_lib
    from jaxgan import throughput
    from jaxgan.data.arrays import DataError
    from jaxgan.data.decode import DecodeError
    # pylint: enable=g-import-not-at-top

  try:
    if mode == "input":
      try:
        rows = throughput.benchmark_input(FLAGS.images, FLAGS.prepared, FLAGS.image_size,
                                          FLAGS.batch_size, FLAGS.batches, limit=FLAGS.limit)
      except ImportError as e:  # TensorFlow, which serves a prepared set, missing on this host
        cli.fail(f"{e}; install it (pip install -e .), or time the step alone (mode 'step')")
    elif mode == "step":
      rows = [throughput.benchmark_step(FLAGS.config, FLAGS.steps, FLAGS.warmup)]
    else:
      rows = [throughput.profile_step(FLAGS.config, FLAGS.profile_steps, FLAGS.warmup,
                                      FLAGS.trace_dir, FLAGS.top)]
  except (config_lib.ConfigError, DataError, DecodeError) as e:
    cli.fail(str(e))
  except jax.errors.JaxRuntimeError as e:
    cli.fail(cli.out_of_memory_line(e, "the benchmark", "lower train.batch_size or the model's "
                                    "widths (--config.KEY=VALUE), or shard it (mesh.fsdp)"))
  for row in rows:
    print(json.dumps(row))


def run() -> None:
  define_flags()
  app.run(cli.interruptible(main, process_exit=True), flags_parser=flag_parsing.parse_flags)


if __name__ == "__main__":
  run()
