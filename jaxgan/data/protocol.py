"""What a data source is, as a type: the protocol jaxgan.data's docstring describes (optional
attributes, read with getattr where they are used, are left out: a Protocol's members are all
required). For type hints; sources need not inherit from it."""

from __future__ import annotations

from typing import Iterator, Optional, Protocol, Sequence

import ml_collections
import numpy as np


class DataSource(Protocol):
  """A source of global batches: `batches(batch_size, start_step, rows)` yields, for each step
  from `start_step` on, the `rows` of its global batch as {'image': uint8 [n, h, w, 3], 'label':
  int32 [n] or [n, A]}."""

  reads: frozenset
  unread_hint: str
  class_names: Sequence[str]

  @staticmethod
  def validate(config: ml_collections.ConfigDict, reads_data: bool = True) -> None:
    ...

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> DataSource:
    ...

  def batches(self, batch_size: int, start_step: int, rows: Optional[np.ndarray] = None
              ) -> Iterator[dict[str, np.ndarray]]:
    ...
