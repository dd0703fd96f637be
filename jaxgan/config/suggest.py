"""Which config keys a misspelt one may mean: the schema's own checks (a config file's typo) and
the CLI's (a --config.KEY override) suggest the same ones."""

from __future__ import annotations

import difflib
from typing import Sequence


def similar_keys(key: str, keys: Sequence[str]) -> list[str]:
  """Of `keys` (the schema's, dotted, in its order), those a misspelt `key` may mean, where
  ml_collections, which compares spellings alone, finds none: the name in another section
  (data.batch_size), else near spellings in the key's section, else its keys that contain the
  name (3 letters or more: a shorter one is in too many), else keys in any section with the name
  as a word of theirs (train.lr: optim.g_lr, optim.d_lr)."""
  section, _, name = key.rpartition(".")
  names = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
  close = ([k for k in keys if k.rpartition(".")[2] == name]
           or [f"{section}.{n}" if section else n for n in (
               difflib.get_close_matches(name, names, n=3)
               or [n for n in names if len(name) >= 3 and name in n][:3])]
           or [k for k in keys if name in k.rpartition(".")[2].split("_")][:3])
  return close


def did_you_mean(key: str, keys: Sequence[str]) -> str:
  """' Did you mean train.num_steps?' (`similar_keys`), or ''."""
  close = similar_keys(key, keys)
  if not close:
    return ""
  return f" Did you mean {', '.join(close[:-1]) + ' or ' if close[1:] else ''}{close[-1]}?"
