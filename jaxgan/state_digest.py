"""Per-array integer digests of a pytree, to tell a restored checkpoint from the one written.

Orbax stores arrays zstd-compressed without a checksum: a bit flipped on disk or in transit
decodes to other values, without an error, and a run would resume from them silently. The
checkpoint's meta therefore carries each array's digest, taken from the state as it was saved,
and a restore compares it with the digest of what it read.

A digest is sum(bits(x[i]) * (2 i + 1)) mod 2^32 over the elements' bit patterns (as unsigned
integers) and their flat indices i, computed on the devices that hold the array:
- integer sums are exact and associative, so it does not depend on the sharding, the number of
  devices or the reduction order: a state written on 8 devices and read on 1 digests alike;
- the weights are odd, hence invertible mod 2^32: any change to any one element (one flipped bit
  or a whole word) always changes the digest; several changes cancel with odds of about 2^-32;
- the weights differ per position, so swapped or shifted elements change it as well;
- bits, not values: -0.0 and 0.0, or two NaN payloads, are told apart; a bit-identical restore
  is what is checked.
Limit: without jax_enable_x64, JAX narrows 64-bit numpy leaves to 32 bits before they are
digested (alike at save and restore, so no false alarm), and damage to their other 32 bits goes
unseen; jaxgan's train state holds none.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}
_SUB_BYTE_INTEGERS = ("int2", "uint2", "int4", "uint4")


def _words(x: jax.Array) -> jax.Array:
  """`x`'s elements' bits as uint32 (8-byte elements as two words along a new last axis)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):  # no bitcast of complex: its two parts
    x = jnp.stack([x.real, x.imag], axis=-1)
  if x.dtype == jnp.bool_ or x.dtype.name in _SUB_BYTE_INTEGERS:
    # bitcast refuses both; a cast to uint32 keeps every value apart (negatives wrap)
    return x.astype(jnp.uint32)
  unsigned = _UNSIGNED.get(x.dtype.itemsize)
  if unsigned is None:  # 8 bytes (with x64): bitcast splits each element into two words
    return lax.bitcast_convert_type(x, jnp.uint32)
  return lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _digest(x: jax.Array) -> jax.Array:
  words = _words(x)
  # The flat (row-major) index from one iota per axis: XLA fuses it into the reduction, so no
  # index array the size of `x` is ever materialised. uint32 arithmetic wraps mod 2^32 as meant.
  index, stride = jnp.zeros((), jnp.uint32), 1
  for axis in reversed(range(words.ndim)):
    index = index + lax.broadcasted_iota(jnp.uint32, words.shape, axis) * jnp.uint32(stride)
    stride = stride * words.shape[axis] % 2**32
  return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


@jax.jit
def _digests(leaves: list) -> list:
  return [_digest(x) for x in leaves]


def path_name(path: tuple) -> str:
  """A tree path (jax.tree_util key entries) as 'a/b/0', the name an array has in a digest."""
  def name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  return "/".join(name(k) for k in path)


def tree_digest(tree: Any) -> dict[str, int]:
  """{'a/b/c': digest} for every array leaf of `tree` (sharded or not, on any devices).

  Collective on several processes, like any computation on global arrays: every process calls
  it with the same tree, and every process gets the same digests.
  """
  paths, leaves = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, (jax.Array, np.ndarray, np.generic)):
      paths.append(path_name(path))
      leaves.append(leaf)
  # The digests are replicated scalars: every process reads its own copies, in one device_get
  # (one transfer for all, not a sync per array).
  values = jax.device_get([v.addressable_data(0) for v in _digests(leaves)])
  return {p: int(v) for p, v in zip(paths, values)}


def differences(expected: dict[str, int], actual: dict[str, int]) -> list[str]:
  """The arrays of `actual` whose digest is not the `expected` one (also arrays it lacks)."""
  return sorted(p for p, value in expected.items() if actual.get(p) != int(value))
