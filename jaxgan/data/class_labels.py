"""Class labels from label values: class names sorted, rare classes merged into 'other' or
dropped, per attribute (folder, manifest and prepare encode alike)."""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Sequence

import ml_collections
import numpy as np

from jaxgan.config.schema import ConfigError

log = logging.getLogger(__name__)


# Characters that show nothing and mean nothing at a name's end: zero-width space, non-joiner and
# joiner, direction marks, word joiner, byte-order mark, soft hyphen. (Not every format
# character: a flag emoji's tag characters end it, and tell England's flag from Scotland's.)
_INVISIBLE = "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad"
_ENDS = re.compile(rf"^[\s{_INVISIBLE}]+|[\s{_INVISIBLE}]+$")  # \s: Unicode's spaces too


def label_text(value: str) -> str:
  """A label value as a class name: in Unicode's composed form (NFC), without spaces or invisible
  characters at its ends. 'Café' typed with one accented letter and with e plus a combining
  accent (macOS writes folder names so) made two classes that print alike, 'Shoes' and 'Shoes' +
  U+200B too; `generate --label` matched one of them."""
  return _ENDS.sub("", unicodedata.normalize("NFC", value))


def folder_class_name(name: str) -> str:
  """A class folder's name as its class's: `label_text`, but a name of spaces or invisible
  characters alone is kept as it is ("" is the root's own images, which belong to no class)."""
  return label_text(name) or name


def warn_of_case_variants(values: Sequence[Sequence[str]], columns: Sequence[str]) -> None:
  """Warns of class names that differ only in case ('Tshirts', 'tshirts'): two classes, as
  they are kept (a name's case may matter), which the class-count error then asked to train."""
  for column, column_values in zip(columns or ["class"], values):
    spellings: dict[str, set[str]] = {}
    for value in set(map(str, column_values)):
      spellings.setdefault(value.casefold(), set()).add(value)
    alike = [sorted(s) for s in spellings.values() if len(s) > 1]
    if alike:
      shown = "; ".join(" and ".join(repr(v) for v in group) for group in sorted(alike)[:4])
      log.warning("%s: %s differ only in case, and are %d classes; if each group is one class, "
                  "make its spellings agree", column or "class", shown,
                  sum(len(group) for group in alike))


def encode_labels(names: Sequence[str], min_count: int = 1, rare: str = "other"
                  ) -> tuple[np.ndarray, list[str], np.ndarray]:
  """Sorted class names and integer labels; classes with fewer than `min_count` examples are
  merged into one 'other' class (last, or the data's own 'other') or dropped. Returns (labels,
  class_names, kept mask)."""
  values, counts = np.unique(np.asarray(names, dtype=object).astype(str), return_counts=True)
  common = [v for v, c in zip(values, counts) if c >= min_count]
  rare_set = {v for v, c in zip(values, counts) if c < min_count}
  # A common class already called "other" absorbs the rare ones (two classes of one name would
  # leave the first empty and make the class count one too high).
  merged = rare == "other" and rare_set and "other" not in common
  class_names = sorted(common) + (["other"] if merged else [])
  index = {name: i for i, name in enumerate(class_names)}
  labels = np.full(len(names), -1, np.int32)
  for i, name in enumerate(names):
    name = str(name)
    if name in index and name not in rare_set:
      labels[i] = index[name]
    elif name in rare_set and rare == "other":
      labels[i] = index["other"]
  return labels, class_names, labels >= 0


def encode_attributes(columns: Sequence[Sequence[str]], min_count: int = 1, rare: str = "other"
                      ) -> tuple[np.ndarray, list[list[str]], list[np.ndarray], np.ndarray]:
  """`encode_labels` for each attribute column (values per row). Returns the labels of the kept
  rows (int32 [n] for one column, [n, A] for several), the class names per attribute, the kept
  mask per attribute (over all rows: False where that column dropped the row) and the rows kept
  by every attribute.

  With rare='drop' a row dropped by one column leaves the others' counts, so the columns are
  encoded again on the rows left until none drops more: otherwise a class could pass
  `min_count` on rows that are then dropped, and be trained with no example at all."""
  n = len(columns[0])
  values = [np.asarray(v, dtype=object) for v in columns]
  kept = np.ones(n, bool)
  kept_by = [np.ones(n, bool) for _ in columns]
  while True:
    rows = np.flatnonzero(kept)
    encoded = [encode_labels(v[rows], min_count, rare) for v in values]
    for by, e in zip(kept_by, encoded):
      by[rows[~e[2]]] = False
    still = np.logical_and.reduce([e[2] for e in encoded])
    if still.all():
      break
    kept[rows[~still]] = False
  labels = np.stack([e[0] for e in encoded], axis=1)
  return labels if len(columns) > 1 else labels[:, 0], [e[1] for e in encoded], kept_by, kept


def encode_kept(paths: Sequence[str], values: Sequence[Sequence[str]], columns: Sequence[str],
                min_count: int, rare: str
                ) -> tuple[np.ndarray, list[list[str]], list[str], list[dict]]:
  """`encode_attributes` of the rows of `paths` (their label `values` per column): (labels,
  class names per attribute, the paths kept, a skipped entry for each row a class rarer than
  `min_count` dropped, naming the first column that dropped it)."""
  warn_of_case_variants(values, columns)
  labels, class_names, kept_by, kept = encode_attributes(values, min_count, rare)
  dropped = []
  for i in np.flatnonzero(~kept):
    a = next(a for a, k in enumerate(kept_by) if not k[i])
    what = (f"class {values[a][i]!r}" if len(values) == 1 or not columns
            else f"{columns[a]} {values[a][i]!r}")
    dropped.append({"path": paths[i], "reason": f"{what} has fewer than {min_count} images "
                                                "(dropped)"})
  return labels, class_names, [p for p, k in zip(paths, kept) if k], dropped


def merged_into_other(values: Sequence[Sequence[str]], class_names: Sequence[Sequence[str]],
                      columns: Sequence[str], rare: str) -> dict[str, list[str]]:
  """{attribute: the names its 'other' class holds}, for the attributes where rare classes were
  merged (`encode_kept`'s `values` and class names): no class of the model says which."""
  if rare != "other":
    return {}
  merged = {column or "class": sorted(set(map(str, v)) - set(names))
            for column, v, names in zip(columns or [""], values, class_names)}
  return {column: names for column, names in merged.items() if names}


def describe_merged(merged: dict[str, list[str]]) -> str:
  """'2 articleType names merged into 'other'' (attributes joined with '; '), or ''."""
  return "; ".join(f"{len(names)} {column} name{'' if len(names) == 1 else 's'} merged into "
                   "'other'" for column, names in merged.items())


def log_merged(merged: dict[str, list[str]], where: str, min_count: int) -> None:
  """Says which names a training source merged into 'other' (as `prepare` reports it), which no
  log line said: 4,000 of the catalog's images went into 'other' silently."""
  for column, names in merged.items():
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    log.info("%s: %s (%s: fewer than data.min_class_count=%d images each)", where,
             describe_merged({column: names}), shown, min_count)


def check_rare_class_keys(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for data.rare_classes or data.min_class_count out of range."""

  d = config.data
  if d.rare_classes not in ("other", "drop"):
    raise ConfigError(f"config key data.rare_classes: must be 'other' or 'drop', got "
                      f"{d.rare_classes!r}")
  if d.min_class_count < 1:
    raise ConfigError(f"config key data.min_class_count: must be >= 1, got {d.min_class_count}")
