"""Path flags of the command-line tools, with a leading '~' expanded: the shell leaves it alone
after '=' (`--out=~/grid.png` made a folder named '~' in the working directory). `user_path` is
argparse's `type=` (evaluate, prepare), `define_path` absl's flag (train, generate, benchmark)."""

from __future__ import annotations

import os
import sys
from typing import Optional

from absl import flags

from jaxgan.config.paths import os_path


def user_path(path: str) -> str:
  """A path flag's value with a leading '~' expanded: the shell leaves `--out=~/grid.png`
  alone (a folder named '~' was made in the working directory); and its '..' resolved as the OS
  does (config.paths.os_path): 'link/..' was read two ways, the OS's and abspath's."""
  return os_path(os.path.expanduser(path)) if path else path


class _PathParser(flags.ArgumentParser):
  """absl's string flag, its value through `user_path`."""

  def parse(self, argument: str) -> str:
    return user_path(argument)

  def flag_type(self) -> str:
    return "string"


def define_path(name: str, default: Optional[str], help_text: str,
                flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """An absl string flag holding a path (`user_path`), filed under the module that calls this:
  absl's --help lists the main module's flags, and would leave these out as jaxgan.cli's."""
  caller = sys._getframe(1).f_globals.get("__name__", "")  # pylint: disable=protected-access
  flags.DEFINE(_PathParser(), name, default, help_text, flag_values,
               serializer=flags.ArgumentSerializer(),
               module_name=sys.argv[0] if caller == "__main__" else caller)
