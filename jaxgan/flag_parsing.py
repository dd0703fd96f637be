"""absl flag parsing for the absl tools (train, generate, benchmark): every usage error, a bad
`--config.KEY=...` override or config file included (train's and benchmark's --config), as one
`error:` line and exit status 2 (absl exits 1, a crash's status; ml_collections raises
tracebacks)."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback
from typing import NoReturn, Optional, Sequence

from absl import flags

from jaxgan.cli import fail, flag_spelling


def _flag_values(argv: list[str], name: str) -> list[str]:
  """The values of every `--name VALUE` and `--name=VALUE` in argv, in order."""
  values = []
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      values.append(arg.split("=", 1)[1])
    elif arg == f"--{name}" and i + 1 < len(argv):
      values.append(argv[i + 1])
  return values


def _flag_value(argv: list[str], name: str) -> Optional[str]:
  """The value of the last `--name VALUE` or `--name=VALUE` in argv (absl's pick), or None."""
  values = _flag_values(argv, name)
  return values[-1] if values else None


# A --config.KEY override's key: dotted names (ml_collections raises a traceback for others).
_OVERRIDE_KEY = re.compile(r"--config(\.[A-Za-z_]\w*)+")


def _schema_keys() -> list[str]:
  from jaxgan.config import schema  # pylint: disable=g-import-not-at-top  (train's CLI alone)

  return [k for k, _ in schema.flat_items(schema.base_config())]


def _config_key_flag(message: str, args: Sequence[str]) -> str:
  """absl's unknown-flag `message`, where the flag is a config key's name (--num_steps=10) of a
  tool with --config, as how to set that key (absl's own guess, --log_dir for --log_every,
  dropped); else `message` as it is."""
  unknown = re.match(r"Unknown command line flag '(\w+)'", message)  # absl may add a guess
  if not unknown or "config" not in flags.FLAGS:
    return message
  name = unknown.group(1)
  keys = [k for k in _schema_keys() if k.rpartition(".")[2] == name]
  if not keys:
    return message
  value = next((a.partition("=")[2] for a in args if a.partition("=")[0] == f"--{name}"
                and "=" in a), "VALUE")
  shown = " or ".join(f"--config.{k}={value}" for k in keys)
  return f"{unknown.group(0)}. Config keys are set as {shown}"


def _similar_keys(override: str) -> str:
  """' Did you mean train.num_steps?' for --config.train.steps (config.suggest)."""
  from jaxgan.config import suggest  # pylint: disable=g-import-not-at-top  (train's CLI alone)

  return suggest.did_you_mean(override.removeprefix("--config."), _schema_keys())


def _value_used_as_section(overrides: list[str]) -> Optional[str]:
  """What is wrong with an override that treats a value as a section (--config.model.name.x)."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  from jaxgan.config import base_config  # pylint: disable=g-import-not-at-top

  schema = base_config()
  for override in overrides:
    node, parts = schema, override[len("--config."):].split(".")
    for i, part in enumerate(parts[:-1]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        break
      node = node[part]
      if not isinstance(node, ml_collections.ConfigDict):
        return f"{override}: {'.'.join(parts[:i + 1])} is a value, not a section of keys"
  return None


def _config_file_error(message: str, config_file: Optional[str]) -> str:
  """One line for ml_collections' 'Error whilst parsing config file' and its traceback text: the
  exception, and where in the config file it was raised."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  frames = [(i, m) for i, m in enumerate(re.match(r'File "(.+)", line (\d+)', line)
                                         for line in lines)
            if m and "ml_collections" not in m.group(1)]
  where = f" ({frames[-1][1].group(1)}:{frames[-1][1].group(2)})" if frames else ""
  source = lines[frames[-1][0] + 1] if frames and frames[-1][0] + 2 < len(lines) else ""
  return f"--config {config_file}: {_plainer(lines[-1], source)}{where}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with every usage error as one `error:` line and exit status 2 (absl exits
  with 1, a crash's status, and ml_collections raises tracebacks for a bad --config.KEY). Flag
  names may be written with '-' or '_'."""
  spelled = [argv[0], *flag_spelling(argv[1:], "_")]
  if argv is sys.argv:  # ml_collections reads the --config.KEY overrides from sys.argv itself
    sys.argv[:] = spelled
  argv = spelled
  # -h as argparse's tools take it; asked-for help exits 0 (absl's exits 1, a failure to scripts).
  argv = [a if a != "-h" else "--help" for a in argv]
  help_asked = any(a in ("--help", "--helpshort", "--helpfull") for a in argv[1:])
  # Checked before absl, where ml_collections would raise a traceback or an "unknown flag";
  # only for tools with a --config flag, and not where absl must act first (help, flag files).
  args = argv[1:]
  config_file = _flag_value(args, "config")
  if "config" in flags.FLAGS and not any(a.startswith(("--help", "--flagfile")) for a in args):
    if config_file is None and any(a.startswith("--config.") for a in args):
      # Said as absl says a missing --config: the launchers add overrides of their own
      # (--config.distributed.*), so "your overrides need it" misled whoever gave none.
      fail("--config is required (see --help): the config file, e.g. configs/default.py, that "
           "the --config.KEY overrides apply to")
    given = _flag_values(args, "config")
    if len(given) > 1:  # with overrides, absl said the first override was 'defined twice'
      fail(f"--config given {len(given)} times ({', '.join(given)}); pass one config file, and "
           "change its keys with --config.KEY=VALUE")
    for arg in args:
      if arg.startswith("--config.") and not _OVERRIDE_KEY.fullmatch(arg.split("=")[0]):
        fail(f"{arg.split('=')[0]}: not a config key; overrides name a schema key, e.g. "
             "--config.train.batch_size=32 (the keys: docs/config.md or jaxgan/config/schema.py)")
    # ml_collections accepts FILE:ARGUMENT; the file is the part before a colon it lacks.
    path = config_file if config_file is None or os.path.exists(config_file) else (
        config_file.split(":")[0])
    if path is not None and not os.path.isfile(path):
      what = "a folder" if os.path.isdir(path) else "no such file"
      fail(f"--config {config_file}: {what}; pass a config file, e.g. configs/default.py")
    if path is not None and path.lower().endswith(".json"):  # a run's config.json: 'false'
      fail(f"--config {config_file}: a JSON file; --config takes a Python file defining "
           "get_config(), e.g. configs/default.py (a run's config.json records what it resolved; "
           "to resume a run, rerun the command that started it)")
  try:
    remaining = flags.FLAGS(argv)
  except SystemExit as e:  # absl's help (a bad flag before --help is a flags.Error, below)
    sys.exit(0 if help_asked and e.code == 1 else e.code)
  except flags.Error as e:  # a missing required flag, a value of the wrong type, an unknown flag
    if "Error whilst parsing config file" in str(e):  # its traceback as text, in the message
      fail(_config_file_error(str(e), config_file))
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    # absl's words for --flag=maybe: "('Non-boolean argument to boolean flag', 'maybe')".
    message = re.sub(r": \('Non-boolean argument to boolean flag', ('.*')\)$",
                     r": must be true or false, got \1", message)
    # Python's words for int('1e2') and float('abc'), as the key's expectation.
    message = re.sub(r": invalid literal for int\(\) with base 10: ('.*')$",
                     r": must be an integer, got \1", message)
    message = re.sub(r": could not convert string to float: ('.*')$", r": must be a number, got \1",
                     message)
    required = re.match(r"flag --([\w.]+)=None: Flag --\1 must have a value other than None",
                        message)
    if required and required.group(1) == "config" and config_file is not None:
      fail(f"--config {config_file}: get_config() returned None; it must return the "
           "ConfigDict, as configs/default.py does")
    fail(f"--{required.group(1)} is required (see --help)" if required else
         _config_key_flag(message.removeprefix("flag "), args) + " (see --help)")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for an override of a key that is not in the config, with a
    # message of nested reprs; keep its words: the bad key and its "Did you mean ...?".
    detail = " ".join(re.sub(r"\\+n|\\+'|^['\"]+|['\"]+$", " ", str(e)).split())
    detail = re.sub(r"^(\w+)\b", r"unknown key '\1'.", detail)
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    key = re.match(r"unknown key '(\w+)'", detail)
    # The override that is not a key: another one may hold the same name (--config.train.
    # batch_size=64 --config.data.batch_size=3). Else a schema key the config file lacks.
    holding = [o for o in overrides if key and key.group(1) in o.split(".")[1:]]
    known = set(_schema_keys())
    named = [o for o in holding if o.removeprefix("--config.") not in known]
    if isinstance(e, AttributeError) and "get_config" in str(e):
      fail(f"--config {config_file}: defines no get_config(); a config file returns its "
           "ConfigDict from get_config(), as configs/default.py does")
    # What get_config() returned cannot take the overrides or be locked: not a ConfigDict.
    if "FrozenConfigDict is immutable" in str(e) or "Attribute <class 'NoneType'>" in str(e):
      returned = "None" if "NoneType" in str(e) else "a FrozenConfigDict"
      fail(f"--config {config_file}: get_config() returned {returned}; it must return the "
           "ConfigDict, as configs/default.py does")
    none = re.search(r'field "([\w.]+)" is None', str(e))
    if none:  # ml_collections' words for an override into a section the file set to None
      into = [o for o in overrides if o.startswith(f"--config.{none.group(1)}.")]
      fail(f"{(into or overrides)[0]}: section {none.group(1)} is "
           f"None in {config_file}; a config file sets the keys in it instead "
           f"(config.{none.group(1)}.KEY = ...)")
    if holding and not named:
      lacked = _lacked_by_file(holding, config_file)[0]
      fail(f"{lacked}: {config_file} has no key {lacked.removeprefix('--config.')}, "
           "which the schema has: build config files on jaxgan.config.base_config(), as "
           "configs/default.py does")
    through = _value_used_as_section(overrides)
    if not named and through:
      fail(through)
    if not named:  # not an override's key: a bug in the config file, or a real traceback
      fail(_raised_in_config_file(e, config_file) or _traceback(e))
    if "Did you mean" not in detail:
      detail += _similar_keys(named[0])
    fail(f"{named[0]}: {detail} (the keys: docs/config.md or jaxgan/config/schema.py)")
  except Exception as e:  # pylint: disable=broad-except  (the config file's own error, if it is)
    fail(_raised_in_config_file(e, config_file) or _traceback(e))
  if config_file is not None and "config" in flags.FLAGS:
    _check_file_keys(config_file)
  return remaining


def _check_file_keys(config_file: str) -> None:
  """Fails on a key the config file set that the schema lacks (a typo: c.train.batchsize = 32),
  naming the file and the line that sets it, as its other errors are named: the check at the
  run's start named the key alone, which a user of several config files had to search for.
  (An override cannot add one: ml_collections refuses it while parsing.)"""
  from jaxgan.config import schema  # pylint: disable=g-import-not-at-top

  try:
    schema.check_known_keys(flags.FLAGS.config)
  except schema.ConfigError as e:
    key = re.match(r"unknown config key ([\w.]+)", str(e))
    fail(f"--config {config_file}: {e}" + (_setting_line(config_file, key.group(1)) if key else ""))


def _setting_line(config_file: str, key: str) -> str:
  """' (FILE:LINE)' of the config file's line that sets `key`: the first that assigns it with its
  section (c.model.batch_size = ..., c.model['batch_size'] = ...), else the one line that
  assigns its last part (c.train.update(batchsize=...)); '' where none or several do (set in a
  file it loads, or a name other sections share: a wrong line would mislead)."""
  path = config_file if os.path.exists(config_file) else config_file.split(":")[0]
  section, _, leaf = key.rpartition(".")
  part = lambda name: rf"""(\.{re.escape(name)}\b|\[['"]{re.escape(name)}['"]\])"""
  qualified = re.compile(part(section.rsplit(".", 1)[-1]) + part(leaf) + r"\s*=(?!=)")
  bare = re.compile(rf"""(\.{re.escape(leaf)}|\[['"]{re.escape(leaf)}['"]\]|\b{re.escape(leaf)})"""
                    r"\s*=(?!=)")
  try:
    with open(path, encoding="utf-8") as f:
      lines = [line.split("#")[0] for line in f]
  except (OSError, UnicodeDecodeError):
    return ""
  with_section = [n for n, line in enumerate(lines, 1) if section and qualified.search(line)]
  if with_section:
    return f" ({path}:{with_section[0]})"
  by_name = [n for n, line in enumerate(lines, 1) if bare.search(line)]
  return f" ({path}:{by_name[0]})" if len(by_name) == 1 else ""


def _lacked_by_file(overrides: list[str], config_file: Optional[str]) -> list[str]:
  """Of schema keys' overrides, those whose key the config file's ConfigDict lacks, found by
  loading the file again (ml_collections' error names the last part alone: with
  --config.eval.batch_size and --config.train.batch_size, which 'batch_size' it lacked); all of
  them when that fails."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  try:
    path, _, arg = ((config_file, "", "") if os.path.exists(config_file)
                    else config_file.partition(":"))
    spec = importlib.util.spec_from_file_location("_jaxgan_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except  (an error path: the first guess will do)
    return overrides
  lacked = []
  for override in overrides:
    node = config
    for part in override.removeprefix("--config.").split("."):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        lacked.append(override)
        break
      node = node[part]
  return lacked or overrides


def _traceback(error: BaseException) -> NoReturn:
  """An error that is neither a flag's nor the config file's: raised again, traceback and all."""
  raise error


def _raised_in_config_file(error: BaseException, config_file: Optional[str]) -> str:
  """One line for an exception that the config file itself raised while it was loaded (a
  SyntaxError, an import it lacks, a bug in get_config): its type, message and line; else ''."""
  if not config_file:
    return ""
  path = os.path.abspath(config_file if os.path.exists(config_file)
                         else config_file.split(":")[0])
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith("<frozen")]  # an import's own machinery
  lines = [f.lineno for f in frames if os.path.abspath(f.filename) == path]
  if isinstance(error, SyntaxError) and error.filename and os.path.abspath(error.filename) == path:
    lines.append(error.lineno)
  if not lines:
    return ""
  message = str(error.msg if isinstance(error, SyntaxError) else error).splitlines()
  where = f"{config_file}:{lines[-1]}"
  if not isinstance(error, SyntaxError) and os.path.abspath(frames[-1].filename) != path:
    # Raised further in, by code the file calls (a library, jaxgan itself): named too, as the
    # place to look when the file's line is right.
    where += f", raised in {frames[-1].filename}:{frames[-1].lineno}"
  first = message[0] if message else ""
  return f"--config {config_file}: {_plainer(f'{type(error).__name__}: {first}')} ({where})"


# ml_collections' TypeError for a value of another type assigned to a typed key.
_RETYPED = re.compile(r"TypeError: Could not override field '(\w+)' \(reference\)\. (.*) is of "
                      r"original type <class '(\w+)'> and cannot be casted to type <class '(\w+)'>")


def _plainer(error_line: str, source: str = "") -> str:
  """'TypeError: ...' in plainer words where a library's are misleading: ml_collections calls a
  value's type the "original" one ('5 is of original type str and cannot be casted to int'),
  and names the key's last part alone (its section is read from the `source` line that set it)."""
  retyped = _RETYPED.fullmatch(error_line)
  if not retyped:
    return error_line
  name, value, given, field = retyped.groups()
  # Only an assignment's target (not a comparison), and only where the line names one section.
  sections = set(re.findall(rf"\.(\w+)\.{name}\s*=(?!=)", source))
  name = f"{sections.pop()}.{name}" if len(sections) == 1 else name
  value = repr(value) if given == "str" else value  # '5', not 5
  article = lambda kind: "an" if kind[0] in "aeiou" else "a"
  return f"config key {name} holds {article(field)} {field}, got {value} ({article(given)} {given})"
