"""`python -m jaxgan.evaluate`'s two modes, its arguments checked (evaluate.py, the CLI):
a run's checkpoint against its training data (`evaluate_workdir`: EMA samples and the run's
reals through `evaluator.Evaluator`, as training's evaluations), and two image sets
(`evaluate_sets`). Messages for the user go to stderr as the CLI's do; errors are raised."""

from __future__ import annotations

import os
import re
import sys
import time
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import ml_collections
import numpy as np
from tqdm import tqdm

from jaxgan import stopping, writers

if TYPE_CHECKING:  # JAX and the data sources: loaded where the CLI's checks passed
  from jaxgan.data.protocol import DataSource
  from jaxgan.metrics.features import FeatureExtractor

SETS_BATCH = 32  # Inception images per device per call in two-set mode, by default
# Workdir mode's results, a row each, kept beside the run's metrics.jsonl (which training cuts back
# on a resume): StyleGAN2-ADA's metric-*.jsonl.
EVALUATIONS_FILE = "evaluations.jsonl"

# Native sizes: Inception compiles once per distinct image shape, each takes memory at full size.
MANY_SHAPES = 8


def features_of_set(extractor: FeatureExtractor, path: str, desc: str, image_size: int = 0,
                    fewest: int = 2, paths: Optional[Sequence[str]] = None
                    ) -> tuple[np.ndarray, int]:
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
  with stopping.signals_held():  # JAX loads: see stopping.signals_held
    # pylint: disable=g-import-not-at-top
    from jaxgan.data import image_sets
    from jaxgan.metrics import suite
    from jaxgan.metrics.features import FeatureExtractor
    # pylint: enable=g-import-not-at-top

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
  started = time.monotonic()
  extractor = FeatureExtractor(args.weights, suite.cache_dir(args.cache_dir),
                               args.batch_size or SETS_BATCH)
  real, real_skipped = features_of_set(extractor, args.real, "inception (reals)", args.image_size,
                                       fewest, listed.get(args.real))
  fake, fake_skipped = features_of_set(extractor, args.fake, "inception (fakes)", args.image_size,
                                       fewest, listed.get(args.fake))
  results = suite.compute(real, fake, names)
  results.update(num_samples=len(fake), num_real=len(real), skipped_real=real_skipped,
                 skipped_fake=fake_skipped, inception_images_per_sec=extractor.last_images_per_sec,
                 # Which sets (the printed line is often all that is kept of a comparison).
                 real=os.path.abspath(args.real), fake=os.path.abspath(args.fake),
                 image_size=args.image_size or None, seconds=round(time.monotonic() - started, 1))
  return results


def evaluate_workdir(args) -> dict:
  with stopping.signals_held():  # JAX loads: see stopping.signals_held
    # pylint: disable=g-import-not-at-top
    import jax
    from jaxgan import config as config_lib
    from jaxgan import evaluator as evaluator_lib
    from jaxgan import models as models_lib
    from jaxgan import sharding
    from jaxgan import saved_run
    from jaxgan.metrics import suite
    # pylint: enable=g-import-not-at-top

  labelled = suite.needs_labels(suite.parse_names(args.metrics))
  if labelled and saved_run.load_config(args.workdir).data.num_classes <= 0:
    # Before the checkpoint is read or any network built.
    raise ValueError(f"--metrics {labelled[0]} needs class labels: {args.workdir} is an "
                     "unconditional run (data.num_classes = 0); drop it")
  config, step, state, meta = saved_run.load_checkpoint(
      args.workdir, args.checkpoint, parts=saved_run.SAMPLER_PARTS)
  stopping.raise_if_interrupted()  # reading it took seconds: a stop Python dropped meanwhile
  # Eval settings not given here as they were when this checkpoint was written (config.json is
  # the last resume's, which may have changed them), so the FID logged for it is reproduced.
  trained = meta.get("config") or {}
  metrics, num_samples = args.metrics, args.num_samples  # (args as given: not rewritten here)
  if "metrics" in args.defaulted:
    metrics = trained.get("eval", {}).get("metrics", metrics)
  if "num_samples" in args.defaulted:
    num_samples = trained.get("train", {}).get("eval_num_samples", num_samples)
  fewest = suite.min_samples(suite.parse_names(metrics))
  if num_samples < fewest:  # the checkpoint's settings, checked before any Inception work
    raise ValueError(f"--num-samples must be >= {fewest} for --metrics {metrics} (this "
                     f"checkpoint's eval settings), got {num_samples}")
  _check_features_fit(num_samples, 0, config.model.z_dim)  # the reals' count: with the data
  with config.unlocked():
    for key in ("num_real", "standing_stats_batches"):
      config.eval[key] = trained.get("eval", {}).get(key, config.eval[key])
    config.data.path = args.data_path or config.data.path
    config.eval.metrics = metrics
    config.eval.batch_size = args.batch_size or config.eval.batch_size
    config.eval.weights = args.weights or config.eval.weights
    config.eval.cache_dir = args.cache_dir or config.eval.cache_dir
    if args.standing_stats_batches >= 0:
      config.eval.standing_stats_batches = args.standing_stats_batches
  # The run's own (--cache-dir's was checked with the flags): else found after the reals'
  # Inception, as a warning that the features could not be cached.
  problem = "" if args.cache_dir else config_lib.not_a_folder(config.eval.cache_dir)
  if problem:
    raise ValueError(f"the run's eval.cache_dir {problem}; pass --cache-dir FOLDER")
  generator, _ = models_lib.build_models(config)
  # Every local device samples its share of the fakes, from its own copy of the EMA weights.
  mesh = sharding.local_mesh()
  ema_params, g_batch_stats = jax.device_put((state.ema_params, state.g_batch_stats),
                                             sharding.replicated(mesh))
  del state  # its single-device copy of the EMA weights
  source = run_data(config, meta, args.data_path)
  few = suite.too_few_reals(suite.parse_names(metrics), getattr(source, "num_examples", None))
  if few:  # before Inception's minutes (it failed after them, naming no flag)
    raise ValueError(f"--metrics {few} ({config.data.path or config.data.source}); pass "
                     "--data-path with more, or other --metrics")
  reals = evaluator_lib.reals_for(config, num_samples, args.num_real, source)
  _check_features_fit(num_samples, reals, config.model.z_dim)  # before the reals' Inception
  evaluator = evaluator_lib.Evaluator(config, generator, source,
                                      batch_sharding=sharding.batch_sharding(mesh))
  # What it is about to do, and for how long, before minutes (an hour on a CPU) of Inception.
  asked = evaluator_lib.reals_for(config, num_samples, args.num_real)  # the data unknown
  print(opening_line(metrics, step, num_samples, reals, jax.default_backend(), asked),
        file=sys.stderr)
  results = evaluator.evaluate(ema_params, g_batch_stats, num_samples,
                               num_real=args.num_real, seed=args.seed)
  results.update(step=step, checkpoint=args.checkpoint, workdir=os.path.abspath(args.workdir),
                 num_devices=int(mesh.size),  # the fakes' sampling and Inception's
                 seed=args.seed, standing_stats_batches=config.eval.standing_stats_batches,
                 # The reals': a row against --data-path's set is told from one against the run's.
                 data_source=config.data.source,
                 data_path=os.path.abspath(config.data.path) if config.data.path else None)
  return results


# Host memory per image an evaluation holds through its metrics: its Inception features (2048
# float32s).
FEATURE_BYTES = 2048 * 4


def _check_features_fit(num_samples: int, reals: int, z_dim: int) -> None:
  """Refuses an evaluation whose features (and the samples' latents, made at once) alone exceed
  the host's memory: said before the checkpoint's sampling and Inception's hours, not as numpy's
  MemoryError or XLA's abort after them."""
  from jaxgan import resources  # pylint: disable=g-import-not-at-top

  beyond = resources.beyond_host_memory((num_samples + reals) * FEATURE_BYTES
                                        + num_samples * z_dim * 4)
  if beyond:
    raise ValueError(f"{num_samples} samples" + (f" and {reals} real images" if reals else "")
                     + f": their Inception features (2048 float32s an image) and the samples' "
                     f"latents take {beyond}; evaluate fewer (--num-samples, --num-real)")


# Inception's feature width: an FID from fewer images a side has a covariance of lower rank.
FEATURE_WIDTH = 2048


def opening_line(metrics: str, step: int, num_samples: int, reals: int, backend: str,
                 asked: int = 0) -> str:
  """What an evaluation of a checkpoint is about to do (`asked`: the real images wanted, more
  than `reals` where the data holds fewer), on a CPU, where more than a first look's samples
  take an hour of Inception, how to make it shorter, and for an FID of few images, that it is
  comparable only with FIDs of the same counts."""
  cpu = (" Inception runs at a few images/s on a CPU: --num-samples 500 for a first look"
         if backend == "cpu" and num_samples > 500 else "")
  # Said, not refused: a first look's FID is worth having. Its bias grows as the counts shrink
  # (FID is biased upwards at any finite count), so one of 500 samples next to one of 50k reads
  # as a worse model.
  from jaxgan.metrics import suite  # pylint: disable=g-import-not-at-top

  # Per-class FIDs have fewer images still (each class's N is in the results).
  fids = {"fid", "per_class_fid"} & set(suite.split_names(metrics))
  few = (f" An FID of fewer than {FEATURE_WIDTH:,} images a side reads high: compare it only "
         "with FIDs of the same counts." if fids and min(num_samples, reals) < FEATURE_WIDTH
         else "")
  # Said, not refused: the reference is then the whole set (as training's evaluations warn).
  fewer = f", all the data holds ({asked:,} were asked for)" if asked > reals else ""
  return (f"evaluating {metrics} of checkpoint step {step}: {num_samples:,} samples against "
          f"{reals:,} real images{fewer} (their features are cached once computed).{cpu}{few}")


def record(workdir: str, results: dict) -> str:
  """Appends `results` with its time ("timestamp", Unix seconds) to WORKDIR/EVALUATIONS_FILE, so
  that an evaluation run after training is kept with the run; returns what went wrong (a
  read-only workdir: the results are printed all the same), or ''."""
  path = os.path.join(workdir, EVALUATIONS_FILE)
  try:
    writers.append_json_line(path, {"timestamp": round(time.time(), 3), **results})
  except OSError as e:
    return f"could not append the results to {path} ({e.strerror or e}); they are printed only"
  return ""


def run_data(config: ml_collections.ConfigDict, meta: dict, data_path: str) -> DataSource:
  """The run's data source (at --data-path when given), refused with one line before any
  Inception work when it is not the data the run was trained on (another image size or class
  counts: an FID against it would mean nothing, or the conditional samples fail), and warned of
  when only its class names differ from the checkpoint's (renamed classes, as a resume with
  --allow_config_change accepts) or its content does (the FID is then against other reals)."""
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgan import data as data_lib  # pylint: disable=g-import-not-at-top
  from jaxgan import label_choices  # pylint: disable=g-import-not-at-top
  from jaxgan import restore  # pylint: disable=g-import-not-at-top

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
  # Every image's digest where the checkpoint records one; the fingerprint (64 of them) else.
  content, sampled = meta.get(restore.DATA_CONTENT_KEY), meta.get("data_fingerprint")
  changed = ("another content digest" if content is not None
             and data_lib.content_digest(source) != content else
             "another fingerprint" if content is None and sampled is not None
             and data_lib.fingerprint(source) != sampled else "")
  if changed:
    print(f"warning: {where} holds other images or labels than this checkpoint was trained on "
          f"({changed}): the metrics compare its samples with these", file=sys.stderr)
  return source


def _describe(attributes: list) -> str:
  """'articleType: 3 classes (Shoes, Tshirts, Watches); baseColour: ...' ('none' when empty; a
  set prepared from one unnamed attribute calls it 'class', left out here)."""
  return "; ".join(("" if column == "class" else f"{column}: ") + f"{len(names)} classes ("
                   f"{', '.join(map(str, names[:4]))}{', ...' if len(names) > 4 else ''})"
                   for column, names in attributes) or "none"
