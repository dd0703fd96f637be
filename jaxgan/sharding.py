"""Device mesh and shardings: the batch is split over the 'data' axis, the state is replicated.

Everything goes through `jax.jit` with `NamedSharding`s; XLA inserts the gradient all-reduce and
the cross-device BatchNorm reductions (statistics cover the global batch).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(config) -> Mesh:
  """A 1-D mesh of `mesh.data` devices (-1: all devices of all processes)."""
  devices = jax.devices()
  n = len(devices) if config.mesh.data == -1 else config.mesh.data
  return Mesh(np.asarray(devices[:n]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
  """Sharding of every state leaf: replicated (pure data parallelism)."""
  return jax.tree_util.tree_map(lambda _: replicated(mesh), abstract_state)


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from this process's share of it."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
