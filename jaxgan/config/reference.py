"""docs/config.md, the reference of every config key, made from the schema's own comments.

`base_config()` in schema.py is where keys, defaults and their explanations are written; this
module turns it into Markdown, so the reference cannot drift from the code (a test compares
docs/config.md with `render()`). A comment on a key's line describes that key; a block of
comment lines describes the keys right below it that have no comment of their own, and the keys
up to the next blank line or comment block are listed under it.

    python -m jaxgan.config.reference > docs/config.md
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import sys
import tokenize
from typing import Any, Optional

from jaxgan.config import schema

_ASSIGN = re.compile(r"^\s*c\.([\w.]+)\s*=\s*(.+?)\s*$")


@dataclasses.dataclass
class Group:
  """Keys under one comment block (`intro`, may be empty), each with its own line's comment.
  The block describes the keys right below it that have no comment of their own."""
  intro: str
  keys: list[tuple[str, str]]  # (dotted key, its line's comment)

  def described(self) -> int:
    """How many keys, from the first, the intro describes."""
    if not self.intro:
      return 0
    return next((i for i, (_, comment) in enumerate(self.keys) if comment), len(self.keys))


@dataclasses.dataclass
class Section:
  name: str  # '' for the root keys (seed)
  intro: str
  groups: list[Group]


def _lines_and_comments(source: str) -> list[tuple[str, str]]:
  """(code, comment) per line of `source`: the comment split off by the tokenizer, so a '#'
  inside a string default stays code."""
  lines = source.splitlines()
  comments: dict[int, tuple[int, str]] = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      comments[token.start[0]] = (token.start[1], token.string[1:].strip())
  out = []
  for number, line in enumerate(lines, start=1):
    col, text = comments.get(number, (len(line), ""))
    out.append((line[:col].rstrip(), text))
  return out


def sections() -> list[Section]:
  """The schema's keys in the order written, grouped by section and comment block."""
  known = dict(schema.flat_items(schema.base_config()))
  found: list[Section] = [Section("", "", [])]
  block: list[str] = []  # the comment lines read since the last key or blank line
  group: Group | None = None
  for code, comment in _lines_and_comments(inspect.getsource(schema.base_config)):
    if not code:
      if comment:
        if group is not None and not block:
          group = None  # a comment block after keys starts a new group
        block.append(comment)
      else:
        block, group = [], None
      continue
    match = _ASSIGN.match(code)
    if not match:
      continue  # the def line, the docstring, `return c`
    key, value = match.groups()
    if value == "ml_collections.ConfigDict()":
      found.append(Section(key, " ".join(block), []))
      block, group = [], None
    elif key in known:
      if group is None:
        group = Group(" ".join(block), [])
        found[-1].groups.append(group)
        block = []
      group.keys.append((key, comment))
    else:
      raise ValueError(f"schema.py: line {code.strip()!r} assigns {key}, which base_config() "
                       "does not have (an assignment the reference cannot read)")
  listed = [k for s in found for g in s.groups for k, _ in g.keys]
  if sorted(listed) != sorted(known):
    missing = sorted(set(known) - set(listed))
    raise ValueError(f"schema.py: keys set other than by one `c.KEY = value` line: {missing}")
  return found


def _default(value: Any) -> str:
  """As a --config flag or config file would write it: strings in double quotes."""
  return f'`"{value}"`' if isinstance(value, str) else f"`{value!r}`"


def undocumented(found: Optional[list[Section]] = None) -> list[str]:
  """Keys with neither a comment of their own nor a comment block right above them that is
  theirs: a block above several keys without comments must name each one (a block describing
  one key, with others below it, reads as theirs too)."""
  return [key for s in (sections() if found is None else found) for g in s.groups
          for i, (key, comment) in enumerate(g.keys)
          if not comment and (i >= g.described() or g.described() > 1
                              and not re.search(rf"\b{key.rpartition('.')[2]}\b", g.intro))]


def render() -> str:
  """The Markdown of docs/config.md."""
  defaults = dict(schema.flat_items(schema.base_config()))
  out = ["# Config reference", "",
         "Every key of a jaxgan run, with its default, generated from `base_config()` in",
         "`jaxgan/config/schema.py` by `python -m jaxgan.config.reference > docs/config.md`",
         "(tests/test_config_reference.py fails when it is out of date). Config files start from",
         "`base_config()` and change values; any key can be overridden on the command line as",
         "`--config.SECTION.KEY=VALUE`. Keys not listed here are refused. Checks on the values",
         "(run before anything compiles) are in `jaxgan/config/validation.py`.", ""]
  for section in sections():
    out += [f"## {section.name or 'top level'}", ""]
    if section.intro:
      out += [section.intro, ""]
    after_paragraph = False
    for group in section.groups:
      keys = group.keys
      if group.described() == 1:  # a block above one key describes that key alone
        keys = [(keys[0][0], group.intro)] + keys[1:]
      # A paragraph, then its keys' list; keys after that list start one of their own, so as
      # not to read as the paragraph's. One list runs on otherwise.
      if group.intro and group.described() != 1:
        out += ["", group.intro, ""] if out[-1] else [group.intro, ""]
      elif after_paragraph:
        out.append("")
      after_paragraph = bool(group.intro) and group.described() != 1
      for key, comment in keys:
        out.append(f"- `{key}` = {_default(defaults[key])}" + (f": {comment}" if comment else ""))
    out.append("")
  return "\n".join(out).rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
  """Prints the reference; --help says what it is (it printed the reference too), and any other
  argument is refused (there are none: the reference is of this jaxgan's schema)."""
  if any(a in ("-h", "--help") for a in argv):
    print("usage: python -m jaxgan.config.reference > docs/config.md\n\nPrints the Markdown "
          "reference of every config key (defaults and explanations, from "
          "jaxgan/config/schema.py).")
    return 0
  if argv:
    print(f"error: unexpected argument {argv[0]!r}; the command takes none (see --help)",
          file=sys.stderr)
    return 2
  print(render(), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
