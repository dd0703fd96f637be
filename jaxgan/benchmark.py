"""`python -m jaxgan.benchmark --config configs/benchmark/dcgan64.py [--config.train.batch_size=1024]`
times the real train step and prints one JSON line;
`python -m jaxgan.benchmark input --images DIR --prepared OUT [--image_size 64]` measures input
throughput (raw JPEG decoding and prepared shards), one JSON line each;
`python -m jaxgan.benchmark profile --config ... [--profile_steps 5] [--trace_dir DIR]` traces the
train step and prints where its time goes (by op kind, by model layer, top ops) as one JSON line.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (step benchmark).", lock_config=True)
flags.DEFINE_integer("steps", 30, "Timed steps (step benchmark); the median is reported.")
flags.DEFINE_integer("warmup", 5, "Untimed steps first (compilation, autotuning).")
flags.DEFINE_integer("profile_steps", 5, "Traced steps (profile).")
flags.DEFINE_string("trace_dir", "", "Keep the profiler trace here (profile; TensorBoard reads it).")
flags.DEFINE_integer("top", 15, "Ops listed by time (profile).")
flags.DEFINE_string("images", "", "Raw image folder (input benchmark).")
flags.DEFINE_string("prepared", "", "Prepared data set folder (input benchmark).")
flags.DEFINE_integer("image_size", 64, "Decode size (input benchmark, raw folder).")
flags.DEFINE_integer("batch_size", 256, "Batch size (input benchmark, prepared).")
flags.DEFINE_integer("batches", 200, "Timed batches (input benchmark, prepared).")
flags.DEFINE_integer("limit", 0, "Decode at most this many raw images (0 = all).")


def main(argv):
  logging.set_verbosity(logging.WARNING)
  mode = argv[1] if len(argv) > 1 else "step"
  from jaxgan import throughput  # pylint: disable=g-import-not-at-top

  if mode == "input":
    if not (FLAGS.images or FLAGS.prepared):
      print("error: the input benchmark needs --images DIR and/or --prepared DIR", file=sys.stderr)
      sys.exit(2)
    for row in throughput.benchmark_input(FLAGS.images, FLAGS.prepared, FLAGS.image_size,
                                          FLAGS.batch_size, FLAGS.batches, limit=FLAGS.limit):
      print(json.dumps(row))
  elif mode in ("step", "profile"):
    if FLAGS.config is None:
      print("error: --config is required, e.g. --config configs/benchmark/dcgan64.py",
            file=sys.stderr)
      sys.exit(2)
    from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top

    try:
      if mode == "profile" and FLAGS.profile_steps < 1:
        raise config_lib.ConfigError(f"--profile_steps must be >= 1, got {FLAGS.profile_steps}")
      if mode == "step":
        row = throughput.benchmark_step(FLAGS.config, FLAGS.steps, FLAGS.warmup)
      else:
        row = throughput.profile_step(FLAGS.config, FLAGS.profile_steps, FLAGS.warmup,
                                      FLAGS.trace_dir, FLAGS.top)
      print(json.dumps(row))
    except config_lib.ConfigError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
  else:
    print(f"error: unknown mode {mode!r}; use 'input', 'profile' or nothing (step benchmark)", file=sys.stderr)
    sys.exit(2)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
