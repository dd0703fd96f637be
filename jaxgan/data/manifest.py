"""`data.source = 'manifest'`: a CSV, JSONL or JSON file of SKU metadata naming the images and
their labels."""

from __future__ import annotations

import difflib
import logging
import os
import stat
import string
import unicodedata
from typing import Any, Sequence

import ml_collections
import numpy as np

from jaxgan.config.schema import ConfigError, attribute_classes, split_columns
from jaxgan.data.arrays import LISTED_KEYS, ArraySource, DataError
from jaxgan.data.class_labels import (check_rare_class_keys, encode_kept, label_text, log_merged,
                                       merged_into_other)
from jaxgan.data import manifest_rows
from jaxgan.data.listed import decoded_source

log = logging.getLogger(__name__)

# Label values that mean "not recorded" in exported catalogs: pandas' default na_values, which
# read_csv reads as missing (the Kaggle fashion catalog's styles.csv writes NA, pandas' to_csv of
# an object column None). Such a row has no label; it is not a class. Case as pandas has them.
MISSING_VALUES = frozenset({"#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan",
                            "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a",
                            "nan", "null"})


def _cell_value(value: Any) -> Any:
  """A cell with its text stripped, and a JSON number 7.0 read as 7: pandas' to_json writes an
  integer column with a gap as floats, which made one class or id two ('7' and '7.0'), and the
  file 7.0.jpg. (A CSV's text stays as written: its '007' may be a file name.)"""
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value.strip() if isinstance(value, str) else value


def _pattern_fields(image_pattern: str) -> set[str]:
  """The columns an image pattern names ('{brand}/{id:05d}.jpg': brand, id); none when it does
  not parse (filling it then says what is wrong)."""
  try:
    return {field for _, field, _, _ in string.Formatter().parse(image_pattern) if field}
  except ValueError:
    return set()


def _names_no_column(image_pattern: str) -> bool:
  """Whether a pattern parses and names no field ('0.jpg', '{{x}}.jpg'): one file for all rows."""
  try:
    return not any(field is not None for _, field, _, _ in string.Formatter().parse(image_pattern))
  except ValueError:  # unparsable: filling it says what is wrong
    return False


def scan_manifest_columns(path: str, image_column: str = "", id_column: str = "id",
                          image_dir: str = "", image_pattern: str = "{id}.jpg",
                          label_columns: Sequence[str] = ()
                          ) -> tuple[list[str], list[list[str]], list[dict]]:
  """(existing image paths, values of each label column [[per row] per column], skipped rows as
  {'path', 'reason'}). A row missing any label value (empty, or one of MISSING_VALUES) is
  skipped."""
  if not image_column and _names_no_column(image_pattern):
    # Every row would be the same file ('listed again' for all but the first): one image.
    raise DataError(f"data.image_pattern {image_pattern!r} names no column, so every row would "
                    "be the same file; put the id in it, e.g. '{id}.jpg'")
  repeated = sorted({c for c in label_columns if list(label_columns).count(c) > 1})
  if repeated:  # two attributes of one column: the same labels twice
    raise DataError(f"label column {repeated[0]!r} is named twice; name each column once")
  numbered = manifest_rows.read_numbered_rows(path)
  if not numbered:
    raise DataError(f"{path} has no rows: a manifest lists its images one per row (under a CSV's "
                    "header line, or a JSON object each)")
  is_csv = not path.lower().endswith((".jsonl", ".json"))
  base = image_dir or os.path.dirname(os.path.abspath(path))
  needed = [c for c in (image_column or id_column, *label_columns) if c]
  # A CSV's columns are its header's; JSON rows may each leave out keys (exporters drop nulls).
  present = dict.fromkeys(c for _, row in (numbered[:1] if is_csv else numbered)
                          if isinstance(row, dict) for c in row)  # in order
  # Every column read: the image or id column, the labels, and the fields the pattern names.
  read = set(needed) | (set() if image_column else _pattern_fields(image_pattern))
  twice = sorted(manifest_rows.duplicated_header(path) & read) if is_csv else []
  if twice:  # an exported sheet's repeated header: one of the two would be read, unsaid
    raise DataError(f"{path}: its header names column {twice[0]!r} more than once; rename the "
                    "copies so that the one to read is unique")
  for column in needed:
    if column not in present:
      names = [c for c in present if isinstance(c, str)]
      # Only where the column asked for is one of its parts (spaced, quoted, in any case), or it
      # has three or more: a one-column CSV whose name holds a ';' is a column like any other.
      parts = lambda sep: [p.strip().strip('"').casefold() for p in names[0].split(sep)]
      other = next((sep for sep in ";\t|" if is_csv and len(names) == 1 and (
          column.casefold() in parts(sep) or len(parts(sep)) >= 3)), None)
      if other:  # a spreadsheet's export with another separator: one column of it all
        raise DataError(f"{path}: its header is one column, {names[0]!r}, split by {other!r}; a "
                        "manifest is comma-separated (CSV) or JSON lines: export it as CSV")
      close = ([c for c in names if c.lower() == column.lower()]
               or difflib.get_close_matches(column, names, n=1))
      raise DataError(f"{path} has no column {column!r}"
                      + (f" (did you mean {close[0]!r}?)" if close else "")
                      + f" (columns: {', '.join(names)}); set data.image_column / data.id_column"
                      " / data.label_column(s) (prepare: --image-column / --id-column / "
                      "--label-column)")
  paths, values, skipped = [], [[] for _ in label_columns], []
  first: dict[Any, tuple[str, list[str]]] = {}  # a file's key -> (where first listed, its labels)
  key = image_column or id_column
  for at, row in numbered:
    problem = manifest_rows.field_count_problem(row) if is_csv else None
    if problem:  # a comma in an unquoted value shifts every column after it: wrong labels
      skipped.append({"path": f"{path} ({at})", "reason": f"{problem} ({at})"})
      continue
    # Text cells are stripped, as labels are: ' 4 ' in a hand-edited file is image 4. A JSON
    # number stays one ('{id:05d}.jpg' formats it).
    cells = {k: _cell_value(v)
             for k, v in (row.items() if isinstance(row, dict) else ()) if isinstance(k, str)}
    name = cells.get(key)
    if name is None or name == "":
      skipped.append({"path": f"{path} ({at})", "reason": f"no {key} ({at})"})
      continue
    if image_column:
      image = os.path.join(base, str(name))
    else:
      fields = {k: v for k, v in cells.items() if k != "id"}
      try:
        image = os.path.join(base, image_pattern.format(id=name, **fields))
      # AttributeError: '{id.real}' of a text id.
      except (AttributeError, KeyError, IndexError, ValueError) as e:
        text = isinstance(name, str) and "format code" in str(e)  # '{id:05d}' of a CSV's id
        raise DataError(f"data.image_pattern (prepare: --image-pattern) {image_pattern!r} "
                        f"cannot be filled from {path} {at} ({type(e).__name__}: {e}); use "
                        "{id} or column names" + (
                            "; a CSV's cells are text, which a number format cannot fill: write "
                            "the ids as the files are named (00042), or use a JSON Lines "
                            "manifest, whose numbers stay numbers" if text else "")) from e
    nested = [c for c in sorted(read) if isinstance(cells.get(c), (list, dict))]
    if nested:  # its text would be a class of its own per distinct list, or a file name
      raise DataError(f"{path} ({at}): {nested[0]} is a JSON {type(cells[nested[0]]).__name__}; "
                      "the columns read hold text or numbers")
    labels = [label_text(str(cells[c])) if cells.get(c) is not None else ""
              for c in label_columns]
    empty = [c for c, v in zip(label_columns, labels) if not v or v in MISSING_VALUES]
    if empty:
      skipped.append({"path": image, "reason": f"no {empty[0]} ({at})"})
      continue
    _check_label_text(path, at, label_columns, labels)
    try:  # one stat, as isfile's: the file's identity too
      found = os.stat(image)
    except (OSError, ValueError):
      found = None
    # One file under two names ('./x.jpg', a link, a hard link) by its identity, with its size
    # and time (some file systems fold inode numbers: 32-bit NFS); the spelling only where there
    # is no inode number (normpath's 'sub/../x.jpg' is not x.jpg where sub is a link).
    keys = ([(found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns)]
            if found is not None and found.st_ino else [os.path.normpath(image)])
    file_key = next((k for k in keys if k in first), None)
    if found is None or not stat.S_ISREG(found.st_mode):
      # A Windows export's 'Women\\1.jpg': a name with a backslash in it on Linux.
      windows = "\\" in image and os.path.isfile(image.replace("\\", "/"))
      skipped.append({"path": image, "reason": f"missing file ({at})" + (
          f"; {WINDOWS_PATH}" if windows else "")})
    elif file_key is not None:  # one photo trained twice, maybe under two labels: the first wins
      where, kept = first[file_key]
      other = f", with other labels ({', '.join(labels)})" if labels != kept else ""
      skipped.append({"path": image, "reason": f"listed again ({at}; first on {where}){other}"})
    else:
      first.update((k, (at, labels)) for k in keys)
      paths.append(image)
      for column, value in zip(values, labels):
        column.append(value)
  # Every listed file missing: the images are elsewhere, not each one lost. Rows skipped for an
  # empty label name a file too, unchecked then (the real catalog has 3 without a baseColour,
  # which hid this and left a class-count error that named no class).
  listed = [s for s in skipped if not s["path"].startswith(f"{path} (")]  # not 'no id' rows
  if (not paths and any(s["reason"].startswith("missing file") for s in listed)
      and not any(os.path.isfile(s["path"]) for s in listed  # the missing ones checked above
                  if not s["reason"].startswith("missing file"))):
    named = (f"the {image_column} column's values" if image_column else
             f"data.image_pattern (prepare: --image-pattern) {image_pattern!r} filled from each "
             "row")
    first = next(s for s in listed if s["reason"].startswith("missing file"))
    if WINDOWS_PATH in first["reason"]:  # a Windows export: the folder is right, the names not
      raise DataError(f"{path}: none of its {len(listed)} listed image files exists (first: "
                      f"{first['path']}); {WINDOWS_PATH}")
    raise DataError(f"{path}: none of its {len(listed)} listed image files exists (first: "
                    f"{first['path']}); file names are {named}, relative ones under "
                    f"data.image_dir (prepare: --images), here {base}: point data.image_dir at "
                    "the folder that holds the images, or fix the names")
  return paths, values, skipped


def _check_label_text(path: str, at: str, columns: Sequence[str], labels: list[str]) -> None:
  """Refuses a class name over lines: what an unclosed quote reads, the rows after it swallowed
  into one label (a set of 1 image of class 'b\n3,c\n...' was written), and no class name is
  (its line breaks would split labels.csv's and rows.txt's lines too); or holding a NUL, which a
  JSON manifest can carry ('\\u0000') and numpy's text arrays drop at a name's end, so that its
  rows missed their class and were dropped as rare."""
  for column, value in zip(columns, labels):
    shown = f"{value[:40]!r}" + ("..." if len(value) > 40 else "")
    if "\n" in value or "\r" in value:
      raise DataError(f"{path} ({at}): its {column} value runs over lines ({shown}), which no "
                      "class name does: a quote opened there is probably not closed; fix the "
                      "quoting")
    if "\0" in value:
      raise DataError(f"{path} ({at}): its {column} value {shown} holds a NUL character, which "
                      "no text does (a damaged export); remove it")


def unlisted_images(image_dir: str, listed: Sequence[str]) -> list[str]:
  """The image files under `image_dir` that no manifest row names (`listed`: every row's file),
  sorted: a manifest that covers part of a catalog trains on that part only, which a user who
  expected the whole folder is told (the rows' count alone does not say). Advice only: folders
  that cannot be listed are passed over. Names are compared through their folders' real paths
  (a row may name a file through a symlinked folder, or '..' past one), in one Unicode form
  (macOS stores decomposed names), with no stat per file (catalogs on network storage hold
  millions); a hard or symbolic link to a listed file is a name no row gives, and so is another
  case of a name (distinct files on Linux). A jaxgan run's workdir is passed over, as
  `find_images` does: its images are sample grids, which no manifest was meant to list."""
  from jaxgan import run_folders  # pylint: disable=g-import-not-at-top
  from jaxgan.data.image_files import is_image_path  # pylint: disable=g-import-not-at-top

  folders: dict[str, str] = {}  # a folder's path -> its real path (a realpath per folder)

  def real_folder(folder: str) -> str:
    real = folders.get(folder)
    if real is None:  # realpath, not abspath first: 'link/..' is where the link's target is
      real = folders[folder] = os.path.realpath(folder or ".")
    return real

  def key(folder: str, name: str) -> str:
    return unicodedata.normalize("NFC", os.path.join(real_folder(folder), name))

  named = {key(*os.path.split(p)) for p in listed}
  found, seen = [], set()
  for dirpath, dirnames, filenames in os.walk(image_dir, followlinks=True):  # errors: passed over
    if real_folder(dirpath) in seen:  # a second name of a folder walked (find_images warns)
      dirnames[:] = []
      continue
    seen.add(real_folder(dirpath))
    if ("config.json" in filenames or "checkpoints" in dirnames) and run_folders.is_run(dirpath):
      dirnames[:] = []
      continue
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    found += [os.path.join(dirpath, n) for n in sorted(filenames)
              if is_image_path(n) and key(dirpath, n) not in named]
  return found


WINDOWS_PATH = "it is there with / for its backslashes (a Windows path): write / in the manifest"


def warn_of_unlisted(image_dir: str, manifest: str, paths: Sequence[str],
                     skipped: Sequence[dict]) -> list[str]:
  """`unlisted_images` of a scan's rows (`paths` kept, `skipped` rows), warned of: prepare's
  and the manifest source's check, before any image is decoded."""
  unlisted = unlisted_images(image_dir, list(paths) + [s["path"] for s in skipped])
  if unlisted:
    n = len(unlisted)
    windows = sum(WINDOWS_PATH in s["reason"] for s in skipped)
    log.warning("%d image file%s under %s %s in no row of %s, so not used (first: %s); %s", n,
                "" if n == 1 else "s", image_dir, "is" if n == 1 else "are", manifest,
                unlisted[0], "add rows for them to use them" + (
                    f" ({windows} {'row names its file' if windows == 1 else 'rows name theirs'}"
                    " with backslashes, a Windows path: some may be these; write / in the "
                    "manifest)" if windows else ""))
  return unlisted


def label_columns(config: ml_collections.ConfigDict) -> list[str]:
  """data.label_column followed by data.label_columns' extra attribute columns."""

  d = config.data
  return ([d.label_column] if d.label_column else []) + split_columns(d.label_columns)


class ManifestSource(ArraySource):
  multi_attribute = True  # data.label_columns
  reads = frozenset({"path", "image_column", "id_column", "image_dir", "image_pattern",
                     "label_column", "label_columns", "min_class_count", "rare_classes"}
                    ) | LISTED_KEYS

  @staticmethod
  def validate(config: ml_collections.ConfigDict, reads_data: bool = True) -> None:

    d = config.data
    if reads_data and not d.path:
      raise ConfigError("config key data.path: the manifest source needs a .csv, .jsonl or "
                        ".json file")
    check_rare_class_keys(config)

    extra = split_columns(d.label_columns)
    if extra and not d.label_column:
      raise ConfigError(f"config key data.label_columns: {d.label_columns!r} are extra attributes "
                        "after data.label_column; set data.label_column (the first attribute)")
    classes = attribute_classes(config)
    if len(classes) > 1 and len(classes) - 1 != len(extra):
      raise ConfigError(f"config key data.extra_num_classes: {d.extra_num_classes!r} gives "
                        f"{len(classes) - 1} extra attribute(s) but data.label_columns names "
                        f"{len(extra)} ({d.label_columns!r}); give one class count per column")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ArraySource:
    d = config.data
    columns = label_columns(config)
    paths, values, missing = scan_manifest_columns(d.path, d.image_column, d.id_column,
                                                   d.image_dir, d.image_pattern, columns)
    if d.image_dir:  # the folder given for the images (not the manifest's own folder)
      warn_of_unlisted(d.image_dir, d.path, paths, missing)
    if columns:
      labels, names, paths, dropped = encode_kept(paths, values, columns, d.min_class_count,
                                                  d.rare_classes)
      log_merged(merged_into_other(values, names, columns, d.rare_classes), d.path,
                 d.min_class_count)
      missing = list(missing) + dropped
      attributes = list(zip(columns, names))
    else:
      labels, attributes = np.zeros(len(paths), np.int32), []
    return decoded_source(config, paths, labels, attributes[0][1] if attributes else [], d.path,
                          missing=missing, attribute_names=attributes)
