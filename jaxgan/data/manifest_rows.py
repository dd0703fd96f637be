"""A manifest's rows: CSV (a header line, then a row per image), JSON Lines (an object per line)
or a JSON array of objects, each row with where it starts in the file ('line N', 'item N') for
the messages that send the user to it. What the rows are checked for here is the file's own
damage (NUL bytes, bytes that are not UTF-8, an unclosed quote, a missing header); `manifest`
reads the columns out of them."""

from __future__ import annotations

import bisect
import csv
import json
import logging
import os
import re
from typing import Optional

from jaxgan.data.arrays import DataError

log = logging.getLogger(__name__)


def duplicated_header(path: str) -> set[str]:
  """The column names a CSV's header holds more than once (csv.DictReader keeps the last)."""
  with open(path, encoding="utf-8-sig", newline="") as f:
    header = [name.strip() for name in next(csv.reader(f, skipinitialspace=True), [])]
  return {name for name in header if header.count(name) > 1}


def _csv_rows(path: str, f) -> list[tuple[int, dict]]:
  """(the line each row starts on, the row) of a CSV file with a header line."""
  lines = list(f)  # split as csv splits them (newline=""), so line numbers agree with line_num
  # csv reads a NUL as any character: it became part of a label (a class 'Sho\0es' beside
  # 'Shoes') or a file name. Text has none; a damaged or binary file does.
  nul = next((n for n, line in enumerate(lines, 1) if "\0" in line), None)
  if nul is not None:
    raise DataError(f"{path}:{nul}: a NUL byte, which no text holds (a damaged or binary "
                    "file); remove it, or re-save the file as UTF-8 CSV")
  if lines and re.fullmatch(r"sep=.?", lines[0].strip()):  # Excel's separator hint
    raise DataError(f"{path}:1: {lines[0].strip()!r} is Excel's separator hint, not the header; "
                    "delete that line (the first line names the columns)")
  # csv skips empty lines; lines of spaces are passed over too (below), not rows.
  content = [n for n, line in enumerate(lines, 1) if line.strip()]
  # A row starts on the first non-empty line after the previous row's last one.
  first_after = lambda n: (content[bisect.bisect_right(content, n)] if content and content[-1] > n
                           else n + 1)
  # skipinitialspace: in `10001, "Skirts"` (a space after the comma) the quotes are quotes;
  # without it csv kept them, and '"Skirts"' trained as a class beside 'Skirts'.
  reader = csv.DictReader(iter(lines), skipinitialspace=True)
  # end: the last line of the last row read (0: none yet, so an error in the header names its
  # line, not the one after it)
  rows, spanning, end = [], None, 0
  try:
    if lines and not any(n.strip() for n in reader.fieldnames or []):
      # 'has no column 'id' (columns: )' said nothing of the blank line where the header was.
      raise DataError(f"{path}:{reader.line_num or 1}: the header line is empty; a manifest's "
                      "first line names its columns (e.g. id,articleType): remove the blank "
                      "line(s) above it")
    if reader.fieldnames:  # reads the header, which a quoted name may spread over lines
      end = reader.line_num
      # Stripped as the cells are: 'id, articleType' (a space after the comma) names articleType.
      reader.fieldnames = [n.strip() for n in reader.fieldnames]
    for row in reader:
      if not any(line.strip() for line in lines[end:reader.line_num]):
        # A line of spaces between rows: a row of one field, which was skipped as not fitting
        # the header (and counted) where an empty line beside it was passed over. (Inside a
        # quoted field such a line is the field's text, kept as written.)
        end = reader.line_num
        continue
      start = first_after(end)
      if spanning is None and any("\n" in str(v) for v in row.values() if v is not None):
        spanning = (start, reader.line_num)
      rows.append((start, row))
      end = reader.line_num
  except csv.Error as e:
    raise DataError(f"{path}:{first_after(end)}: not valid CSV ({e}); a quote opened in the row "
                    "starting on this line is probably not closed") from None
  if spanning:
    # Legal CSV (a quoted field with line breaks), but an unclosed quote reads the same way and
    # merges every row after it into one field: say where, since the row count alone hides it.
    log.warning("%s:%d: a row runs over lines %d-%d (a quoted field with line breaks, or an "
                "unclosed quote that swallows the rows after it); check the quoting there",
                path, spanning[0], *spanning)
  return rows


def read_rows(path: str) -> list[dict]:
  """Rows of a .csv (header line), .jsonl (one object per line) or .json (an array of objects,
  or JSON Lines) file."""
  return [row for _, row in read_numbered_rows(path)]


def read_numbered_rows(path: str) -> list[tuple[str, dict]]:
  """`read_rows` with where each row starts, for messages that send the user to it: 'line N' in
  the file ('item N', from 1, of a JSON array)."""
  if not os.path.isfile(path):
    raise DataError(f"data.path {path!r} is not a file; point it at your CSV, JSONL or JSON "
                    "manifest")
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      if not path.lower().endswith((".jsonl", ".json")):
        return [(f"line {n}", row) for n, row in _csv_rows(path, f)]
      text = f.read()
  except UnicodeDecodeError as e:
    raise DataError(_not_utf8(path)) from e
  if path.lower().endswith(".json") and text.lstrip().startswith("["):
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file") from e
    for n, row in enumerate(rows):
      if not isinstance(row, dict):
        raise DataError(f"{path}: item {n + 1} of the array is a {type(row).__name__}, not an "
                        "object with the image and label columns")
    return [(f"item {n}", row) for n, row in enumerate(rows, 1)]
  rows = []
  for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may be in a string
    if line.strip():
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        whole = _object_of_the_whole(text)
        if whole is not None:  # one object spread over lines (indented), not a row per line
          raise DataError(f"{path}: one JSON object (keys: {', '.join(list(whole)[:5])}), not "
                          "rows: write the rows as a JSON array of objects, or one object per "
                          "line (JSON Lines)") from None
        raise DataError(f"{path}:{n}: not a JSON object ({e.msg}); fix that line") from e
      if not isinstance(row, dict):
        raise DataError(f"{path}:{n}: a {type(row).__name__}, not a JSON object; write one "
                        "object per line")
      rows.append((f"line {n}", row))
  return rows


def _object_of_the_whole(text: str) -> Optional[dict]:
  """The file's text as one JSON object, or None (not JSON, or not an object)."""
  try:
    whole = json.loads(text)
  except json.JSONDecodeError:
    return None
  return whole if isinstance(whole, dict) else None


def _not_utf8(path: str) -> str:
  """The error for a manifest that is not UTF-8, naming the first bad byte's line and offset in
  the file (a decode error's own offset counts from the text reader's last chunk: 8 KiB of it)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    data.decode("utf-8")
  except UnicodeDecodeError as e:
    # Lines as the readers count them: a CSV's end at \r\n, \r (a Mac export) or \n, as csv
    # splits them (newline=""); JSON Lines' at \n. Counted, not listed: manifests run to GBs.
    line = data.count(b"\n", 0, e.start) + 1
    if not path.lower().endswith((".jsonl", ".json")):  # a \r not before a \n ends one too
      line += data.count(b"\r", 0, e.start) - data.count(b"\r\n", 0, e.start)
    return (f"{path}:{line}: not UTF-8 text (byte {e.start}, {data[e.start:e.start + 1]!r}); "
            "re-save it as UTF-8")
  return f"{path}: not UTF-8 text; re-save it as UTF-8"  # changed since it was read


def field_count_problem(row: dict) -> str:
  """Why a CSV row does not fit its header ('' when it does): csv.DictReader files extra fields
  under the key None and fills missing ones with None."""
  # Empty extras are a trailing delimiter (some exporters end every data line with one).
  extra = sum(bool(v.strip()) for v in row.get(None) or [])
  missing = sum(v is None for k, v in row.items() if k is not None)
  header = len(row) - (None in row)
  if extra:
    return (f"{header + len(row[None])} fields where the header has {header}: quote values that "
            "hold commas")
  # Of named columns only: a header alone ending in a delimiter names an empty last column,
  # which rows without it do not miss (every row was skipped as a field short).
  if any(v is None for k, v in row.items() if k):
    return f"{header - missing} fields where the header has {header}"
  return ""
