"""A name -> factory registry, so models, losses and data sources are picked from the config."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to factories. Each concern (models, losses, data) owns one instance."""

  def __init__(self, kind: str):
    self._kind = kind
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@MODELS.register('dcgan')`."""

    def decorator(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self._kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return decorator

  def get(self, name: str, key: str = "") -> T:
    """Returns the entry; an unknown name raises a one-line error listing the known ones."""
    if name not in self._entries:
      where = f"{key}=" if key else ""
      raise KeyError(f"unknown {self._kind} {where}{name!r}; choose one of {sorted(self._entries)}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._entries))
