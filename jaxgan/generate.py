"""`python -m jaxgan.generate --workdir DIR --num 64 --out grid.png [--label NAME_OR_INDEX]
[--truncation 0.7] [--interpolate 8]`.

Samples the EMA generator of the latest checkpoint. `--truncation t` draws latents from the normal
truncated to [-t, t] (BigGAN's truncation trick). `--interpolate N` writes a grid with one row
per class and N columns moving between two latents (spherical interpolation). `--out` naming a directory (trailing slash or
existing directory) writes `--num` single PNGs instead of one grid. Output is byte-identical for
the same checkpoint, seed and arguments.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints/.")
flags.DEFINE_integer("num", 64, "Number of images.")
flags.DEFINE_string("out", "samples.png", "Output PNG grid, or a directory for single PNGs.")
flags.DEFINE_string("label", None, "Class name or index (conditional models); default: all "
                    "classes in turn.")
flags.DEFINE_integer("seed", 0, "Seed of the latents.")
flags.DEFINE_float("truncation", 0.0, "Truncation trick: latents resampled into [-t, t] "
                   "(0 = off; BigGAN uses 0.5-1.0).")
flags.DEFINE_integer("interpolate", 0, "Columns of a latent-interpolation grid, one row per "
                     "class (0 = plain samples).")
flags.mark_flags_as_required(["workdir"])


def resolve_label(label: str, class_names: list[str], num_classes: int) -> int:
  """A class name or index -> index, with a one-line error listing the valid choices."""
  if num_classes == 0:
    raise ValueError("--label: this model is unconditional; drop --label")
  if label in class_names:
    return class_names.index(label)
  if label.lstrip("-").isdigit() and 0 <= int(label) < num_classes:
    return int(label)
  choices = ", ".join(class_names) if class_names else f"0..{num_classes - 1}"
  raise ValueError(f"--label {label!r} is not a class of this model; choose one of: {choices}")


def generate(workdir: str, num: int, out: str, label: Optional[str] = None, seed: int = 0,
             truncation: float = 0.0, interpolate: int = 0) -> list[str]:
  """Writes the images and returns the paths written."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from jaxgan import models, sampling, workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  if num <= 0:
    raise ValueError(f"--num must be positive, got {num}")
  if truncation < 0:
    raise ValueError(f"--truncation must be >= 0 (0 = off), got {truncation}")
  if interpolate < 0 or interpolate == 1:
    raise ValueError(f"--interpolate needs at least 2 columns (0 = off), got {interpolate}")
  config, _, state, meta = workdir_lib.load_latest(workdir)
  generator, _ = models.build_models(config)
  class_names = list(meta.get("class_names", []))
  nc = config.data.num_classes
  labels = None
  if nc > 0:
    labels = (jnp.full((num,), resolve_label(label, class_names, nc), jnp.int32)
              if label is not None else jnp.arange(num, dtype=jnp.int32) % nc)
  elif label is not None:
    resolve_label(label, class_names, nc)  # raises the one-line error
  z = sampling.latents(seed, num, config.model.z_dim, truncation)
  cols = math.ceil(math.sqrt(num))
  if interpolate:
    z, labels, cols = sampling.interpolation_inputs(seed, nc, interpolate, config.model.z_dim,
                                                    truncation)
    if label is not None and nc > 0:  # one class: one row
      index = resolve_label(label, class_names, nc)
      z, labels = z[index * interpolate:(index + 1) * interpolate], labels[:interpolate] * 0 + index
    num = len(z)
  images = sampling.sample_images(sampling.make_sampler(generator), state.ema_params,
                                  state.g_batch_stats, z, labels)
  if out.endswith(os.sep) or os.path.isdir(out):
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"{i:06d}.png") for i in range(num)]
    for image, path in zip(images, paths):
      sampling.save_png(image, path)
    return paths
  sampling.save_png(sampling.make_grid(images, cols=cols), out)
  return [out]


def main(argv):
  del argv
  from jaxgan.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  logging.set_verbosity(logging.WARNING)
  try:
    paths = generate(FLAGS.workdir, FLAGS.num, FLAGS.out, FLAGS.label, FLAGS.seed,
                     FLAGS.truncation, FLAGS.interpolate)
  except (ValueError, FileNotFoundError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {len(paths)} file(s): {paths[0]}{' ...' if len(paths) > 1 else ''}")


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
