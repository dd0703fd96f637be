"""`python -m jaxgan.generate --workdir DIR --num 64 --out grid.png [--label NAME_OR_INDEX |
--label ATTRIBUTE=NAME ...] [--truncation 0.7] [--interpolate 8 [--between [ATTRIBUTE=]FROM:TO]]`.

Samples the EMA generator of the latest checkpoint. `--truncation t` draws latents from the normal
truncated to [-t, t] (BigGAN's truncation trick). `--interpolate N` writes a grid with one row
per class and N columns moving between two latents (spherical interpolation). With `--between
FROM:TO` it is a class interpolation instead (as in BigGAN): ceil(--num / N) rows, each with one
fixed latent, and N columns moving the label embedding linearly from class FROM to class TO (soft
labels); `--between ATTRIBUTE=FROM:TO` picks the attribute (default: the first). `--out` naming a
directory (trailing slash or existing directory) writes the images as single PNGs instead of one
grid, --batch at a time (so `--num 50000 --out fakes/` for `evaluate --fake` fits any device);
their labels follow the training data's class mix, the distribution `evaluate --workdir` and
training's FID draw from (a grid shows one row per class instead). `--checkpoint best` samples
the best-FID checkpoint instead of the newest, `--checkpoint STEP` that step. Output is
byte-identical for the same checkpoint, seed and arguments.

A grid without --label has a row per class (--num rounded to a multiple of the class count, so that
every class shows). Multi-attribute models (e.g. articleType and baseColour): `--label
articleType=Tshirts --label "baseColour=Navy Blue"` picks a combination; a bare `--label Tshirts`
names a class of the first attribute. A class is named or given by its index, except where some
class names of its attribute are numbers (category ids): there a number is a name. In a grid, the
first attribute, when not given, takes all its classes in turn (one row per class with
--interpolate); every other attribute not given is drawn uniformly at random from --seed (per image;
per row with --interpolate), so the output stays deterministic. Single PNGs draw the attributes not
given from the data's combinations that match the ones given. With --between, the attributes other
than the interpolated one come from --label or are drawn per row.
"""

from __future__ import annotations

import logging as std_logging
from typing import Sequence

from absl import app, flags, logging

from jaxgan import cli, flag_parsing, path_flags, stopping
from jaxgan.generation import LABELS_FILE, generate  # noqa: F401  (callers' names)

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The tool's flags, defined when it runs (not at import: see train.define_flags)."""
  path_flags.define_path("workdir", None, "Training workdir holding config.json and checkpoints/.")
  flags.DEFINE_integer("num", 64, "Number of images (a conditional model's grid without --label "
                       "has a row per class: rounded to a multiple of the class count).")
  path_flags.define_path("out", "samples.png", "Output PNG grid, or a directory for single PNGs.")
  flags.DEFINE_multi_string("label", None, "Class name or index of the first attribute, or "
                            "ATTRIBUTE=NAME_OR_INDEX (repeatable, e.g. --label articleType=Tshirts "
                            "--label 'baseColour=Navy Blue'); default: a grid row per class of the "
                            "first attribute, other attributes drawn at random from --seed; single "
                            "PNGs (--out DIR/) drawn by the training data's label mix. Where some "
                            "class names of an attribute are numbers, numbers are names only.")
  flags.DEFINE_integer("seed", 0, "Seed of the latents (and of attributes not given by --label).")
  flags.DEFINE_float("truncation", 0.0, "Truncation trick: latents resampled into [-t, t] "
                     "(0 = off; BigGAN uses 0.5-1.0).")
  flags.DEFINE_integer("interpolate", 0, "Columns of a latent-interpolation grid, one row per "
                       "class (0 = plain samples); with --between, of a class-interpolation grid.")
  flags.DEFINE_string("checkpoint", "latest", "Which checkpoint to sample: 'latest', 'best' (the "
                      "best-FID one, kept when train.eval_every > 0) or a step number.")
  flags.DEFINE_integer("batch", 256, "Images per generator call (device memory; any --num works; "
                       "another --batch compiles another shape, whose float rounding may change a "
                       "pixel by one level).")
  flags.DEFINE_integer("standing_stats_batches", -1, "Batches of standing BatchNorm statistics "
                       "for the EMA generator (-1 = the run's eval.standing_stats_batches; 0 = the "
                       "raw G's running statistics, the fastest for a few images on a CPU).")
  flags.DEFINE_string("between", None, "FROM:TO or ATTRIBUTE=FROM:TO (class names or indices, e.g. "
                      "'baseColour=Black:Navy Blue'): rows of one latent each, --interpolate "
                      "columns moving the class embedding from FROM to TO; ceil(--num / N) rows.")
  flags.mark_flags_as_required(["workdir"])


def main(argv: Sequence[str]) -> None:
  cli.refuse_positional(argv)
  with stopping.signals_held():  # JAX loads: see stopping.signals_held
    import jax  # pylint: disable=g-import-not-at-top
    from jaxgan.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  std_logging.getLogger("jaxgan").setLevel(std_logging.INFO)  # which step is sampled
  if FLAGS["num"].present and FLAGS.interpolate and FLAGS.between is None:
    # The grid is a row per class (one with --label): --num would be ignored without a word.
    cli.fail("--num is not read by --interpolate N alone (a row per class, N columns each); "
             "drop it, or use --between FROM:TO for ceil(--num / N) rows")
  try:
    paths = generate(FLAGS.workdir, FLAGS.num, FLAGS.out, FLAGS.label, FLAGS.seed,
                     FLAGS.truncation, FLAGS.interpolate, FLAGS.between, FLAGS.checkpoint,
                     FLAGS.batch, FLAGS.standing_stats_batches)
  except (ValueError, OSError, CheckpointError) as e:  # OSError: also an unwritable --out
    cli.fail(str(e))
  except jax.errors.JaxRuntimeError as e:
    cli.fail(cli.out_of_memory_line(e, "sampling", f"lower --batch (now {FLAGS.batch})"))
  print(f"wrote {len(paths)} file(s): {paths[0]}{' ...' if len(paths) > 1 else ''}")


def run() -> None:
  define_flags()
  app.run(cli.interruptible(main, process_exit=True), flags_parser=flag_parsing.parse_flags)


if __name__ == "__main__":
  run()
