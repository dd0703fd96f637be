"""`data.source = 'manifest'`: a CSV or JSONL of SKU metadata naming the images and their labels."""

from __future__ import annotations

import csv
import json
import os

from jaxgan.data.arrays import ArraySource, DataError, decoded_source, encode_labels


def read_rows(path: str) -> list[dict]:
  """Rows of a .csv (header line) or .jsonl (one object per line) file."""
  if not os.path.isfile(path):
    raise DataError(f"data.path {path!r} is not a file; point it at your CSV or JSONL manifest")
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      if path.lower().endswith((".jsonl", ".json")):
        rows = []
        for n, line in enumerate(f, 1):
          if line.strip():
            try:
              rows.append(json.loads(line))
            except json.JSONDecodeError as e:
              raise DataError(f"{path}:{n}: not a JSON object ({e.msg}); fix that line") from e
        return rows
      return list(csv.DictReader(f))
  except UnicodeDecodeError as e:
    raise DataError(f"{path} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from e


def scan_manifest(path: str, image_column: str = "", id_column: str = "id", image_dir: str = "",
                  image_pattern: str = "{id}.jpg", label_column: str = ""
                  ) -> tuple[list[str], list[str], list[dict]]:
  """(existing image paths, their label values, skipped rows as {'path', 'reason'})."""
  rows = read_rows(path)
  if not rows:
    raise DataError(f"{path} has no rows")
  base = image_dir or os.path.dirname(os.path.abspath(path))
  needed = [c for c in (image_column or id_column, label_column) if c]
  for column in needed:
    if column not in rows[0]:
      raise DataError(f"{path} has no column {column!r} (columns: {', '.join(rows[0])}); "
                      "set data.image_column / data.id_column / data.label_column")
  paths, labels, skipped = [], [], []
  for n, row in enumerate(rows, 2 if path.lower().endswith(".csv") else 1):
    key = image_column or id_column
    if not isinstance(row, dict) or row.get(key) in (None, ""):
      skipped.append({"path": f"{path}:{n}", "reason": f"no {key} (line {n})"})
      continue
    if image_column:
      image = os.path.join(base, str(row[image_column]))
    else:
      fields = {k: v for k, v in row.items() if k != "id" and isinstance(k, str)}
      try:
        image = os.path.join(base, image_pattern.format(id=row[id_column], **fields))
      except (KeyError, IndexError, ValueError) as e:
        raise DataError(f"data.image_pattern {image_pattern!r} cannot be filled from {path} "
                        f"line {n} ({type(e).__name__}: {e}); use {{id}} or column names") from e
    label = str(row[label_column]).strip() if label_column and row.get(label_column) is not None else ""
    if label_column and not label:
      skipped.append({"path": image, "reason": f"no {label_column} (line {n})"})
    elif not os.path.isfile(image):
      skipped.append({"path": image, "reason": f"missing file (line {n})"})
    else:
      paths.append(image)
      labels.append(label)
  return paths, labels, skipped


class ManifestSource(ArraySource):
  @staticmethod
  def validate(config) -> None:
    from jaxgan.config import ConfigError

    d = config.data
    if not d.path:
      raise ConfigError("config key data.path: the manifest source needs a .csv or .jsonl file")
    if d.rare_classes not in ("other", "drop"):
      raise ConfigError(f"config key data.rare_classes: must be 'other' or 'drop', got {d.rare_classes!r}")
    if d.min_class_count < 1:
      raise ConfigError(f"config key data.min_class_count: must be >= 1, got {d.min_class_count}")

  @classmethod
  def from_config(cls, config) -> ArraySource:
    d = config.data
    paths, names, missing = scan_manifest(d.path, d.image_column, d.id_column, d.image_dir,
                                          d.image_pattern, d.label_column)
    if d.label_column:
      labels, class_names, kept = encode_labels(names, d.min_class_count, d.rare_classes)
      paths = [p for p, k in zip(paths, kept) if k]
      labels = labels[kept]
    else:
      labels, class_names = [0] * len(paths), []
    return decoded_source(config, paths, labels, class_names, d.path, missing=missing)
