"""The class a user names on the command line (`generate --label`, `--between`), resolved to
class indices of a model: by name or index, per attribute, with a one-line error that lists the
choices (and a "did you mean" for a near miss); and the classes a checkpoint's meta says its
model was trained on, which resume, evaluate and init_from compare with the data's."""

from __future__ import annotations

import difflib
import unicodedata
from typing import Optional, Sequence

Attributes = list[tuple[str, list[str]]]


def resolve_label(label: str, class_names: list[str], num_classes: int,
                  attribute: Optional[str] = None, flag: str = "--label") -> int:
  """A class name or index -> index, with a one-line error (naming `flag`) listing the choices."""
  if num_classes == 0:
    raise ValueError(f"{flag}: this model is unconditional; drop {flag}")
  if label in class_names:  # the last of a name given twice, as labels were encoded (an older
    # prepared set's 'other' twice: every 'other' row took the second; the first trained none)
    return len(class_names) - 1 - class_names[::-1].index(label)
  if label.strip() != label:  # ' Watches ' (a shell's quoting): labels are stripped when read
    return resolve_label(label.strip(), class_names, num_classes, attribute, flag)
  # One Unicode form: a class folder made on macOS names 'Täschen' decomposed (a + U+0308), a
  # terminal types it composed; they print alike ("did you mean 'Täschen'?" for 'Täschen').
  composed = [unicodedata.normalize("NFC", name) for name in class_names]
  if composed.count(unicodedata.normalize("NFC", label)) == 1:
    return composed.index(unicodedata.normalize("NFC", label))
  # isdecimal, not isdigit: '²' is a digit that int() refuses.
  number = lambda text: text.removeprefix("-").isdecimal()  # one sign: int() refuses '--5'
  # Names that are numbers themselves (category ids as folder names) take numbers as names only:
  # a mistyped id would otherwise pick whichever class sits at that index.
  by_index = not any(number(name) for name in class_names)
  if by_index and number(label) and 0 <= int(label) < num_classes:
    return int(label)
  choices = (", ".join(class_names) + (f" (or an index 0..{num_classes - 1})" if by_index else "")
             if class_names else f"0..{num_classes - 1}")
  # Names differ from what users type mostly in case ('footwear' for 'Footwear') or a letter.
  folded = {name.casefold(): name for name in class_names}
  same_but_case = label.casefold() in folded
  close = ([folded[label.casefold()]] if same_but_case
           else difflib.get_close_matches(label, class_names, n=1))
  hint = f"did you mean {close[0]!r}? " if close else ""
  # prepare's --rare-classes other, training's likewise; not for an index out of range, nor
  # beside a name that differs in case only. A near spelling may be another class altogether
  # (the real catalog's 'Sandals', merged into 'other', is near 'Handbags'): both are said.
  if not same_but_case and "other" in class_names and not (by_index and number(label)):
    # "may": the model knows only its classes, not which names were merged ('Watches' asked of
    # a masterCategory model was told it was part of 'other').
    hint += ("or " if close else "") + (f"if {label!r} was a class of the data with fewer images "
                                        "than its min_class_count, it is part of 'other'; ")
  if attribute is not None:
    raise ValueError(f"{flag} {attribute}={label!r}: not a class of {attribute}; {hint}choose one "
                     f"of: {choices}")
  raise ValueError(f"{flag} {label!r} is not a class of this model; {hint}choose one of: "
                   f"{choices}")


def model_attributes(meta: dict, classes: Sequence[int]) -> Attributes:
  """(name, class names) per attribute from the checkpoint meta; runs written before
  multi-attribute support name their one attribute 'class'."""
  stored = [(str(n), list(c)) for n, c in meta.get("attributes", [])]
  if len(stored) == len(classes):
    return stored
  names = list(meta.get("class_names", []))
  return [("class" if i == 0 else f"attribute{i}", names if i == 0 else [])
          for i in range(len(classes))]


def trained_attributes(meta: dict, attributes: list) -> Optional[list]:
  """[[attribute, [class names]], ...] a checkpoint was trained on, from its meta; None where the
  meta has no class names. Checkpoints older than the attributes key hold the first attribute's
  class names only: it takes its name from the data's `attributes` (of the same form)."""
  if "attributes" in meta:
    return [[str(name), [str(n) for n in names]] for name, names in meta["attributes"]]
  if "class_names" in meta:
    name = attributes[0][0] if attributes else "class"
    return [[name, [str(n) for n in meta["class_names"]]]] if meta["class_names"] else []
  return None


def resolve_labels(labels: Sequence[str], attributes: Attributes, classes: Sequence[int]
                   ) -> dict[int, int]:
  """--label values -> {attribute index: class index}. A value is a first-attribute class when it
  names one or has no '='; otherwise ATTRIBUTE=VALUE."""
  chosen: dict[int, int] = {}
  for text in labels:
    first_names = attributes[0][1] if attributes else []
    if "=" not in text or text in first_names or not classes:
      i, value, named = 0, text, None
    else:
      name, value = (t.strip() for t in text.split("=", 1))
      names = [a for a, _ in attributes]
      if name not in names:
        raise ValueError(f"--label {text!r}: this model has no attribute {name!r}; choose one "
                         f"of: {', '.join(names)}")
      i, named = names.index(name), name
    if i in chosen:
      raise ValueError(f"--label {text!r}: attribute {attributes[i][0]!r} is given twice; "
                       "give each attribute once")
    n = classes[i] if classes else 0
    try:
      chosen[i] = resolve_label(value, attributes[i][1] if classes else [], n, named)
    except ValueError:
      others = [name for name, names in attributes[1:] if value in names] if named is None else []
      if others:  # 'Navy Blue', a baseColour, given as if an articleType
        raise ValueError(f"--label {text!r} is a class of {others[0]}, not of the first "
                         f"attribute {attributes[0][0]}: write --label '{others[0]}={value}'"
                         ) from None
      raise
  return chosen


def resolve_between(text: str, attributes: Attributes, classes: Sequence[int]
                    ) -> tuple[int, int, int]:
  """--between [ATTRIBUTE=]FROM:TO -> (attribute index, FROM class, TO class). Without a known
  ATTRIBUTE= prefix the classes are the first attribute's; names may hold spaces (and ':', so every
  split is tried and the first whose two sides are both classes wins)."""
  if not classes:
    raise ValueError("--between: this model is unconditional; drop --between")
  names = [a for a, _ in attributes]
  prefix, sep, rest = text.partition("=")
  i, value, named = ((names.index(prefix.strip()), rest, prefix.strip())
                     if sep and prefix.strip() in names else (0, text, None))
  splits = [(value[:k].strip(), value[k + 1:].strip()) for k, ch in enumerate(value) if ch == ":"]
  if not splits:
    raise ValueError(f"--between {text!r}: expected FROM:TO or ATTRIBUTE=FROM:TO (class names or "
                     "indices)")
  resolve = lambda v: resolve_label(v, attributes[i][1], classes[i], named, "--between")
  same = None  # a split naming one class twice ('Dress:Dress', or '2:Dress' where 2 is Dress)
  for a, b in splits:
    try:
      start, stop = resolve(a), resolve(b)
    except ValueError:
      continue
    if start != stop:
      return i, start, stop
    same = same if same is not None else start
  if same is not None:  # the grid's columns were all one image
    shown = attributes[i][1][same] if same < len(attributes[i][1]) else same
    raise ValueError(f"--between {text!r}: FROM and TO are the same class ({shown}), so the "
                     "columns would not move; name two different classes")
  if sep and named is None:  # 'colour=Black:White' with no attribute 'colour': name the choices
    raise ValueError(f"--between {text!r}: this model has no attribute {prefix.strip()!r}; choose "
                     f"one of: {', '.join(names)}")
  for name, class_names in attributes[1:] if named is None else []:
    for a, b in splits:  # 'Black:Red', two baseColours, given as if articleTypes
      if a in class_names and b in class_names:
        raise ValueError(f"--between {text!r}: {a!r} and {b!r} are classes of {name}, not of the "
                         f"first attribute {names[0]}: write --between '{name}={a}:{b}'")
  a, b = splits[0]
  return i, resolve(a), resolve(b)  # raises the error that names the unknown class


def resolve_choices(meta: dict, given: Sequence[str], between: Optional[str],
                    classes: Sequence[int]) -> tuple[dict[int, int], tuple[int, int, int]]:
  """({attribute: class} from --label, (attribute, FROM, TO) from --between or (0, 0, 0)); raises
  the one-line error for a class or attribute the model lacks (or any label of an unconditional
  model)."""
  attributes = model_attributes(meta, classes)
  chosen = resolve_labels(given, attributes, classes)
  if between is None:
    return chosen, (0, 0, 0)
  attribute, start, stop = resolve_between(between, attributes, classes)
  if attribute in chosen:
    raise ValueError(f"--between {between!r} and --label both set attribute "
                     f"{attributes[attribute][0]!r}; drop that --label")
  return chosen, (attribute, start, stop)
