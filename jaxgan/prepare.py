"""`python -m jaxgan.prepare --images DIR [--manifest FILE --id-column id --label-column
articleType] --image-size 64 --out OUT [--min-class-count 20]`.

Validates and converts every image with the one loader (all cores, progress bar), then writes
pre-resized TFRecord shards and OUT/dataset_info.json for `data.source = 'prepared'`. Preparing
the same input again gives byte-identical files.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

import numpy as np


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m jaxgan.prepare", description=__doc__.split("\n\n")[1])
  p.add_argument("--images", required=True, help="image folder (class subfolders, or flat)")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--image-size", type=int, default=64)
  p.add_argument("--manifest", default="", help="CSV or JSONL of SKU metadata")
  p.add_argument("--id-column", default="id")
  p.add_argument("--image-column", default="", help="manifest column holding image paths")
  p.add_argument("--image-pattern", default="{id}.jpg")
  p.add_argument("--label-column", default="", help="manifest column of the class")
  p.add_argument("--min-class-count", type=int, default=1)
  p.add_argument("--rare-classes", choices=("other", "drop"), default="other")
  p.add_argument("--min-source-size", type=int, default=8)
  p.add_argument("--max-pixels", type=int, default=64_000_000)
  p.add_argument("--workers", type=int, default=0, help="decoding processes (0 = every core)")
  args = p.parse_args(argv)
  if args.image_size < 1 or args.min_class_count < 1:
    p.error("--image-size and --min-class-count must be positive")
  return args


def prepare(args: argparse.Namespace) -> dict:
  """Runs the whole preparation; returns the dataset_info written."""
  from jaxgan.data import arrays, folder, manifest, prepared  # pylint: disable=g-import-not-at-top
  from jaxgan.data.images import LoadOptions  # pylint: disable=g-import-not-at-top

  if args.manifest:
    paths, names, skipped = manifest.scan_manifest(
        args.manifest, args.image_column, args.id_column, args.images, args.image_pattern,
        args.label_column)
  else:
    paths, names, skipped = folder.scan_folder(args.images)
  conditional = bool(args.label_column) if args.manifest else any(names)
  if conditional:
    labels, class_names, kept = arrays.encode_labels(names, args.min_class_count, args.rare_classes)
    skipped += [{"path": p, "reason": f"class {n!r} has fewer than {args.min_class_count} images "
                                      "(dropped)"} for p, n, k in zip(paths, names, kept) if not k]
    paths = [p for p, k in zip(paths, kept) if k]
    labels = labels[kept]
  else:
    labels, class_names = np.zeros(len(paths), np.int32), []
  options = LoadOptions(args.image_size, min_source_size=args.min_source_size,
                        max_pixels=args.max_pixels)
  images, indices, bad = arrays.decode_all(paths, options, args.workers, desc="prepare")
  if len(indices) == 0:
    first = (skipped + bad)[:1]
    raise arrays.DataError(f"no usable images under {args.images}" + (
        f" (first: {first[0]['path']}: {first[0]['reason']})" if first else ""))
  return prepared.write_prepared(
      args.out, images, labels[indices], class_names, skipped + bad,
      extra={"source": args.manifest or args.images, "label_column": args.label_column,
             "min_class_count": args.min_class_count, "rare_classes": args.rare_classes})


def main(argv: Optional[Sequence[str]] = None) -> int:
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
  args = parse_args(argv)
  from jaxgan.data.arrays import DataError  # pylint: disable=g-import-not-at-top

  try:
    info = prepare(args)
  except (DataError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {info['num_examples']} images of {len(info['class_names'])} classes to "
        f"{args.out} ({len(info['skipped'])} skipped, listed in dataset_info.json)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
