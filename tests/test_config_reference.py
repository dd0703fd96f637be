"""docs/config.md: generated from the schema's comments, complete and up to date."""

import os

from jaxgan import config as config_lib
from jaxgan.config import reference
from tests.conftest import REPO


def test_docs_config_md_is_the_generated_reference():
  with open(os.path.join(REPO, "docs", "config.md"), encoding="utf-8") as f:
    written = f.read()
  assert written == reference.render(), (
      "docs/config.md is out of date: python -m jaxgan.config.reference > docs/config.md")


def test_every_key_is_listed_once_with_its_default_and_a_description():
  assert reference.undocumented() == []
  text = reference.render()
  for key, value in config_lib.flat_items(config_lib.base_config()):
    lines = [line for line in text.splitlines() if line.startswith(f"- `{key}` = ")]
    assert len(lines) == 1, key
    assert lines[0].startswith(f"- `{key}` = `{value!r}`" if not isinstance(value, str)
                               else f'- `{key}` = `"{value}"`'), lines[0]


def test_a_comment_block_describes_the_uncommented_keys_right_below_it():
  lines = reference.render().splitlines()
  line = {ln.split("`")[1]: ln for ln in lines if ln.startswith("- `")}
  # One key under a block: the block is that key's description.
  assert "Train steps per compiled call" in line["train.steps_per_call"]
  # Keys after it with their own comments keep theirs.
  assert line["train.dtype"].endswith(": compute dtype; parameters stay float32")
  # Several uncommented keys under a block: the block is a paragraph above their list.
  first = lines.index("- `train.eval_every` = `0`")
  assert lines[first - 2].startswith("Metrics during training"), lines[first - 2]
  assert lines[first + 1] == "- `train.eval_num_samples` = `5000`"


def test_a_block_above_several_uncommented_keys_must_name_each():
  """A block that describes the first key only (tfds_download's did) read as the description of
  the uncommented keys below it too."""
  group = lambda intro: [reference.Section("s", "", [reference.Group(intro, [
      ("s.first", ""), ("s.second_key", ""), ("s.third", "its own")])])]
  assert reference.undocumented(group("first and second_key: ...")) == []
  assert reference.undocumented(group("first: ...")) == ["s.second_key"]
  assert reference.undocumented(group("")) == ["s.first", "s.second_key"]


def test_a_hash_inside_a_string_is_code_not_a_comment():
  source = 'c.a = "#ff0000"  # colour\nc.b = 1\n'
  assert reference._lines_and_comments(source) == [('c.a = "#ff0000"', "colour"), ("c.b = 1", "")]


def test_the_command_says_what_it_is_on_help_and_refuses_arguments(capsys):
  """--help printed the whole reference, and exited 0 as if that were what was asked."""
  assert reference.main(["--help"]) == 0
  assert capsys.readouterr().out.startswith("usage: python -m jaxgan.config.reference")
  assert reference.main(["docs/config.md"]) == 2
  assert capsys.readouterr().err == ("error: unexpected argument 'docs/config.md'; the command "
                                     "takes none (see --help)\n")
  assert reference.main([]) == 0
  assert capsys.readouterr().out == reference.render()
