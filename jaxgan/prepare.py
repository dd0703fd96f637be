"""`python -m jaxgan.prepare --images DIR [--manifest FILE --id-column id --label-column
articleType [--label-column baseColour ...]] --image-size 64 --out OUT [--min-class-count 20]`.

Validates and converts every image with the one loader (all cores, progress bar), then writes
pre-resized TFRecord shards and OUT/dataset_info.json for `data.source = 'prepared'`. Preparing
the same input again gives byte-identical files.

Several --label-column flags make a multi-attribute set: each column is encoded on its own (the
same --min-class-count / --rare-classes rule per column; a row dropped by any column is dropped),
labels are stored as one int64 per column, and dataset_info.json lists them under `attributes`.
One column gives exactly the single-attribute format.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import os
import re
import sys
from typing import Optional, Sequence

import numpy as np

from jaxgan import atomic_write, cli, path_flags, stopping


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
  """Each flag's default in its help, except where there is none to state (a required flag's
  None, an empty string or list)."""

  def _get_help_string(self, action: argparse.Action) -> str:
    if action.required or action.default in (None, "", []):
      return action.help or ""
    return super()._get_help_string(action)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top
  from jaxgan.data.images import MAX_IMAGE_SIZE, LoadOptions  # pylint: disable=g-import-not-at-top

  p = cli.ArgumentParser(prog="python -m jaxgan.prepare", description=__doc__.split("\n\n")[1],
                              formatter_class=_HelpWithDefaults)
  p.add_argument("--images", type=path_flags.user_path, required=True,
                 help="image folder (class subfolders, or flat)")
  p.add_argument("--out", type=path_flags.user_path, required=True, help="output folder")
  p.add_argument("--image-size", type=int, default=64, help="side of the square images written")
  p.add_argument("--manifest", type=path_flags.user_path, default="",
                 help="CSV, JSONL or JSON file of SKU metadata")
  p.add_argument("--id-column", default="id", help="manifest column of the SKU id")
  p.add_argument("--image-column", default="", help="manifest column holding image paths")
  p.add_argument("--image-pattern", default="{id}.jpg",
                 help="image file name from the id, under --images (without --image-column)")
  p.add_argument("--label-column", action="append", default=[],
                 help="manifest column of the class; repeat for several attributes "
                      "(e.g. --label-column articleType --label-column baseColour)")
  p.add_argument("--min-class-count", type=int, default=1,
                 help="classes with fewer images are rare (see --rare-classes)")
  p.add_argument("--rare-classes", choices=("other", "drop"), default="other",
                 help="merge rare classes into one 'other' class, or drop their images")
  p.add_argument("--min-source-size", type=int, default=LoadOptions.min_source_size,
                 help="images with a shorter side are skipped")
  p.add_argument("--max-pixels", type=int, default=LoadOptions.max_pixels,
                 help="images with more pixels are skipped (read from the header)")
  p.add_argument("--max-bad-fraction", type=float,
                 default=config_lib.base_config().data.max_bad_fraction,
                 help="fail, writing nothing, when more than this fraction of the images "
                      "decoded are unusable (unreadable, truncated, too small; training's "
                      "data.max_bad_fraction)")
  p.add_argument("--workers", type=int, default=0, help="decoding processes (0 = every core)")
  # --image_size as well as --image-size, as the absl tools (train, generate) accept both.
  args = p.parse_args(cli.flag_spelling(sys.argv[1:] if argv is None else argv, "-"))
  for flag in ("image_size", "min_class_count", "min_source_size", "max_pixels"):
    if getattr(args, flag) < 1:
      p.error(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
  if args.image_size > MAX_IMAGE_SIZE:
    p.error(f"--image-size must be at most {MAX_IMAGE_SIZE}, got {args.image_size}")
  if any(not str(c).strip() for c in args.label_column or []):  # an empty shell variable
    p.error("--label-column needs a column name, got ''")
  if args.image_column and args.image_pattern != p.get_default("image_pattern"):
    p.error("--image-pattern names files without --image-column only (the column gives each "
            "row's file)")
  if label_columns(args) and not args.manifest:
    p.error("--label-column needs --manifest (a folder's label is its first-level subfolder)")
  for flag in ("id_column", "image_column", "image_pattern"):
    if getattr(args, flag) != p.get_default(flag) and not args.manifest:
      p.error(f"--{flag.replace('_', '-')} is read with --manifest only (a folder's files are "
              "found under --images)")
  if not 0 <= args.max_bad_fraction <= 1:  # also NaN
    p.error(f"--max-bad-fraction must be a fraction in [0, 1], got {args.max_bad_fraction}")
  if args.workers < 0:
    p.error(f"--workers must be >= 0 (0 = every core), got {args.workers}")
  return args


def bad_path(args: argparse.Namespace) -> str:
  """What is wrong with the paths given, or '': checked first, in the flags' own names (not
  after minutes of decoding, nor as the data.* config keys the loaders name)."""
  from jaxgan import config as config_lib  # pylint: disable=g-import-not-at-top

  if (args.images or not args.manifest) and not os.path.isdir(args.images):
    return f"--images {args.images}: not a folder"  # '' with a manifest: paths relative to it
  if args.manifest and not os.path.isfile(args.manifest):
    return f"--manifest {args.manifest}: not a file"
  if config_lib.is_uri(args.out):  # TensorFlow wrote the shards there, the rest a local 'gs:'
    return f"--out {args.out}: {config_lib.NOT_LOCAL}"
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    return f"--out {args.out}: a file is there; pass a folder"
  from jaxgan import run_folders  # pylint: disable=g-import-not-at-top

  # Every image of it skipped (sample grids), unsaid why; a manifest names its own files.
  if args.images and not args.manifest and run_folders.is_run(args.images):
    return (f"--images {args.images} is a training run's workdir, whose images are its sample "
            "grids: pass the folder of photos it trained on")
  if args.images:
    from jaxgan.data.image_files import is_within  # pylint: disable=g-import-not-at-top

    images, out = os.path.realpath(args.images), os.path.realpath(args.out)
    if is_within(out, images):
      # The set's files among the photos: `evaluate --real` of the folder would read the set
      # instead of them, and a later scan of the folder would meet the set's files.
      return (f"--out {args.out} is {'--images itself' if out == images else 'inside --images'}"
              f" ({args.images}): pass a folder outside the images, e.g. "
              f"{os.path.join(os.path.dirname(images), os.path.basename(images) + '_prepared')}")
  # A set in a run's checkpoints/ or samples/ would go with a rotated step, or a resume's grids.
  managed = run_folders.managed_refusal("--out", args.out)
  if managed:
    return managed
  from jaxgan.data.prepared import foreign_files  # pylint: disable=g-import-not-at-top

  others = foreign_files(args.out)
  if others:
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    return (f"--out {args.out} holds {len(others)} file(s) that are not a prepared set's "
            f"({shown}), which tools given the folder would not read (they read the set): pass "
            "a new or empty folder, or one holding only an earlier set (it is replaced)")
  return ""


def warn_untrainable_size(image_size: int) -> None:
  """A warning when no registered model builds `image_size`: the set can serve `evaluate --real`
  (at its native size, say 299) but could never be trained on (data.image_size must match it)."""
  with stopping.signals_held():  # JAX loads (only for this check): see stopping.signals_held
    from jaxgan import models  # pylint: disable=g-import-not-at-top

  sizes = {name: list(models.MODELS.get(name).supported_image_sizes) for name in models.MODELS}
  if not any(image_size in s for s in sizes.values()):
    logging.getLogger(__name__).warning(
        "--image-size %d: no model builds that size (%s): the set can be evaluated against "
        "(evaluate --real/--fake) but not trained on", image_size,
        "; ".join(f"{n}: {s}" for n, s in sizes.items()))


def one_class_left(values: Sequence[Sequence[str]], class_names: Sequence[Sequence[str]],
                   columns: Sequence[str], min_count: int) -> str:
  """What is wrong when --min-class-count leaves a labelled column a single class (every row
  'other', say) although it has several: a conditional model would learn nothing from it."""
  for a, (column, names) in enumerate(zip(columns or ["subfolder"], class_names)):
    counts = collections.Counter(str(v) for v in values[a])
    if not names:  # --rare-classes drop, every class under the count
      largest = ", ".join(f"{v!r} {n}" for v, n in counts.most_common(3))
      return (f"--min-class-count {min_count} drops every {column} class (largest: {largest}); "
              "pass a lower --min-class-count")
    if len(names) < 2 and len(counts) > 1:
      largest = ", ".join(f"{v!r} {n}" for v, n in counts.most_common(3))
      return (f"--min-class-count {min_count} leaves a single {column} class, "
              f"{str(names[0])!r}, of {len(counts)} (largest: {largest}): a conditional model "
              "learns nothing from one class; pass a lower --min-class-count")
  return ""


def label_columns(args: argparse.Namespace) -> list[str]:
  """The --label-column values (a plain string is accepted for callers that build args)."""
  columns = args.label_column or []
  return [c for c in ([columns] if isinstance(columns, str) else columns) if c]


def prepare(args: argparse.Namespace) -> dict:
  """Runs the whole preparation; returns the dataset_info written."""
  # pylint: disable-next=g-import-not-at-top
  from jaxgan.data import arrays, class_labels, decode, folder, manifest, prepared
  from jaxgan.data.images import LOADER_VERSION, LoadOptions  # pylint: disable=g-import-not-at-top

  columns = label_columns(args)
  if args.manifest:
    paths, values, skipped = manifest.scan_manifest_columns(
        args.manifest, args.image_column, args.id_column, args.images, args.image_pattern, columns)
    # '': names relative to the manifest, no folder given to look in.
    unlisted = (manifest.warn_of_unlisted(args.images, args.manifest, paths, skipped)
                if args.images else None)
  else:
    paths, names, skipped = folder.scan_folder(args.images)
    values = [names] if any(names) else []
    unlisted = None  # a folder's images are all its own
  attributes, merged = None, {}
  if values and not len(values[0]):  # every row skipped before decoding (no label, no file)
    first = f" (first: {skipped[0]['path']}: {skipped[0]['reason']})" if skipped else ""
    raise arrays.DataError(f"no images in {args.manifest or args.images}: each of its "
                           f"{len(skipped)} rows was skipped{first}")
  if values:
    labels, class_names, paths, dropped = class_labels.encode_kept(
        paths, values, columns, args.min_class_count, args.rare_classes)
    merged = class_labels.merged_into_other(values, class_names, columns, args.rare_classes)
    problem = one_class_left(values, class_names, columns, args.min_class_count)
    if problem:  # before any image is decoded
      raise arrays.DataError(problem)
    skipped += dropped
    if len(values) > 1:
      attributes = list(zip(columns, class_names))
    class_names = class_names[0]
  else:
    # Refused, not ignored without a word (the set would be written unlabelled all the same).
    rare = [f for f, default in (("min_class_count", 1), ("rare_classes", "other"))
            if getattr(args, f) != default]
    if rare:
      raise arrays.DataError(
          f"--{rare[0].replace('_', '-')} acts on class labels, and "
          f"{args.manifest or args.images} has none (" + (
              "pass --label-column" if args.manifest else "a folder's classes are its first-level "
              "subfolders") + "), or leave it out")
    labels, class_names = np.zeros(len(paths), np.int32), []
  arrays.log_skipped_rows(skipped, args.manifest or args.images, "--max-bad-fraction")
  options = LoadOptions(args.image_size, min_source_size=args.min_source_size,
                        max_pixels=args.max_pixels)
  too_large = decode.memory_problem(len(paths), args.image_size)  # held whole to be written
  if too_large:
    raise arrays.DataError(f"{too_large}; use a smaller --image-size, or train on the images "
                           "with the folder or manifest source and data.cache_dir (decoded into a "
                           "memory-mapped file)")
  images, indices, bad, upscaled = decode.decode_all(paths, options, args.workers,
                                                     desc="prepare")
  for b in bad:  # the loader names the config keys a training run sets; here they are flags
    b["reason"] = re.sub(r"(?:data\.)?(max_pixels|min_source_size)\b",
                         lambda m: "--" + m.group(1).replace("_", "-"), b["reason"])
  decode.log_upscaled(upscaled, len(indices), args.manifest or args.images, args.image_size,
                      "--image-size")
  lost = [b for b in bad if b.get("transient")]
  if lost:
    logging.getLogger(__name__).warning(
        "%d file(s) could not be read because of storage errors, also when retried (first: %s: "
        "%s): the set lacks them; prepare again once the storage is healthy", len(lost),
        lost[0]["path"], lost[0]["reason"])
  if len(indices) == 0:
    first = (bad + skipped)[:1]  # a decoded file's failure says more than a listed row's
    raise arrays.DataError(f"no usable images in {args.manifest or args.images}" + (
        f" (first: {first[0]['path']}: {first[0]['reason']})" if first else ""))
  # Files that failed to decode (not rows dropped before: unlabelled, missing, rare classes),
  # against the files decoded, as a training source counts them; nothing is written past it.
  # Raising the fraction for files the storage lost would write a set without good files.
  advice = (f"{len(lost)} of them could not be read because of storage errors: prepare again "
            "once the storage is healthy" if lost else "")
  written = not paths or len(bad) / len(paths) <= args.max_bad_fraction  # else refused below
  arrays.check_bad_fraction(bad, len(paths), args.max_bad_fraction, args.images or args.manifest,
                            key="--max-bad-fraction", advice=advice,
                            full_list=f"listed in {args.out}/dataset_info.json once written"
                            if written else "")
  if class_names:
    arrays.require_every_class(labels[indices], attributes or [("class", class_names)],
                               args.manifest or args.images, args.min_class_count, labels)
  return prepared.write_prepared(
      args.out, images, labels[indices], class_names, skipped + bad,
      extra={"source": os.path.abspath(args.manifest or args.images),
             "label_column": columns[0] if columns else "",
             "min_class_count": args.min_class_count, "rare_classes": args.rare_classes,
             "loader_version": LOADER_VERSION, "bad_files": len(bad), "upscaled": upscaled,
             "max_bad_fraction": args.max_bad_fraction, "merged_into_other": merged,
             "unlisted_images": None if unlisted is None else len(unlisted)},
      attributes=attributes)


def main(argv: Optional[Sequence[str]] = None) -> int:
  cli.log_to_stderr()
  args = parse_args(argv)
  problem = bad_path(args)
  if problem:
    print(f"error: {problem}", file=sys.stderr)
    return 2
  warn_untrainable_size(args.image_size)
  # Created now, not found unwritable after minutes of decoding; removed again if it stays empty
  # (however prepare ends: an error, Ctrl-C, SIGTERM, also while the folder is being probed).
  created = atomic_write.missing_folders(args.out)  # --out and the folders above it it makes
  probe = os.path.join(args.out, f".write_probe.{os.getpid()}")
  try:
    try:
      os.makedirs(args.out, exist_ok=True)
      with open(probe, "w", encoding="utf-8"):  # an existing folder may be read-only
        pass
    except OSError as e:
      print(f"error: --out {args.out}: cannot write there ({e.strerror or e}); pass a folder "
            "you can write to", file=sys.stderr)
      return 2
    finally:
      with contextlib.suppress(OSError):
        os.remove(probe)
    return _prepare_and_report(args)
  finally:
    _remove_if_empty(args.out, created)


def _remove_if_empty(out: str, created: list[str]) -> None:
  """Removes `out` and the folders above it that this run `created` (`missing_folders`) when it
  wrote nothing there but the lock (a write that failed, an interruption): they go as they
  came."""
  from jaxgan.data.prepared import LOCK_FILE  # pylint: disable=g-import-not-at-top

  with contextlib.suppress(OSError):
    if created and set(os.listdir(out)) <= {LOCK_FILE}:
      if os.listdir(out):
        os.remove(os.path.join(out, LOCK_FILE))
      atomic_write.remove_empty(created)


def _prepare_and_report(args: argparse.Namespace) -> int:
  from jaxgan.data.arrays import DataError  # pylint: disable=g-import-not-at-top
  from jaxgan.data.decode import DecodeError  # pylint: disable=g-import-not-at-top

  try:
    info = prepare(args)
  except DecodeError as e:
    print(f"error: {e}; if memory ran out, pass a lower --workers", file=sys.stderr)
    return 2
  except (DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  attributes = info.get("attributes")
  classes = (" x ".join(f"{len(a['class_names'])} {a['column']}" for a in attributes) if attributes
             else str(len(info["class_names"])))
  plural = "" if classes == "1" else "es"
  labelled = f" of {classes} class{plural}" if info["class_names"] else " (no class labels)"
  n = info["num_examples"]
  from jaxgan.data import class_labels  # pylint: disable=g-import-not-at-top  (as prepare's)
  merged_text = class_labels.describe_merged(info.get("merged_into_other") or {})
  merged_text = f"; {merged_text}" if merged_text else ""
  print(f"wrote {n} image{'' if n == 1 else 's'}{labelled} to "
        f"{args.out} ({len(info['skipped'])} skipped{merged_text}, listed in dataset_info.json)")
  if len(info["class_names"]) == 1 and not attributes:  # one_class_left: the data's own
    from jaxgan.data.folder import OUTSIDE_CLASS_FOLDERS  # pylint: disable=g-import-not-at-top

    outside = sum(s.get("reason") == OUTSIDE_CLASS_FOLDERS for s in info["skipped"])
    print(f"warning: every image is of one class ({str(info['class_names'][0])!r}): train it "
          "unconditionally (--config.data.num_classes=0); data.num_classes=-1 would condition "
          "the model on a label that never changes" + (
              f" (the {outside} image(s) outside its folder were skipped: move them into it to "
              "train on them too)" if outside else ""), file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(cli.interruptible(main, process_exit=True)())
