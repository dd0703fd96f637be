"""Per-array digests that tell a restored checkpoint from the one written."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import state_digest
from tests.conftest import REPO, xla_flags


def _reference(array: np.ndarray) -> int:
  """The digest's definition in plain numpy: sum(bits(x[i]) * (2 i + 1)) mod 2^32."""
  bits = array.reshape(-1).view({1: np.uint8, 2: np.uint16, 4: np.uint32}[array.itemsize])
  index = np.arange(bits.size, dtype=np.uint64)
  return int(np.sum(bits.astype(np.uint64) * (2 * index + 1)) % 2**32)


def test_digests_follow_their_definition_for_each_dtype():
  rng = np.random.default_rng(0)
  tree = {"f32": rng.standard_normal((3, 5, 7)).astype(np.float32),
          "bf16": jnp.asarray(rng.standard_normal((4, 6)), jnp.bfloat16),
          "i32": rng.integers(-2**31, 2**31 - 1, (9,), dtype=np.int32),
          "u8": rng.integers(0, 255, (2, 3, 4, 5), dtype=np.uint8),
          "scalar": np.float32(-3.25)}
  digests = state_digest.tree_digest(tree)
  assert digests == {k: _reference(np.asarray(v)) for k, v in tree.items()}
  # bool as 0/1 words; a nested path is named by its keys
  flags = np.array([True, False, True])
  assert state_digest.tree_digest({"a": [flags]}) == {"a/0": 0 * 1 + 0 + 1 * 1 + 1 * 5}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.int8, jnp.uint32])
def test_any_one_flipped_bit_or_swap_changes_the_digest(dtype):
  values = np.asarray(jnp.asarray(np.arange(1, 25).reshape(4, 6) * 3 % 17, dtype))
  original = state_digest.tree_digest({"x": values})["x"]
  bits = values.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[values.itemsize])
  for position in (0, 7, 23):
    for bit in range(8 * values.itemsize):
      flipped = bits.copy()
      flipped.reshape(-1)[position] ^= np.array(1 << bit, bits.dtype)
      assert state_digest.tree_digest({"x": flipped.view(values.dtype)})["x"] != original
  swapped = values.copy()
  swapped.reshape(-1)[[2, 9]] = values.reshape(-1)[[9, 2]]
  assert not np.array_equal(swapped, values)
  assert state_digest.tree_digest({"x": swapped})["x"] != original
  # The row-major order is what counts: a reshape keeps the digest, a transpose does not (a
  # restore compares shapes before digests).
  assert state_digest.tree_digest({"x": values.reshape(6, 4)})["x"] == original
  assert state_digest.tree_digest({"x": values.T})["x"] != original


def test_complex_and_int4_arrays_digest_their_parts():
  """Types bitcast refuses: a complex array as its (real, imag) pairs, int4 by value."""
  z = np.array([[1 + 2j, -3.5 - 0.25j]], np.complex64)
  pairs = np.stack([z.real, z.imag], axis=-1).astype(np.float32)
  assert state_digest.tree_digest({"z": z}) == {"z": _reference(pairs)}
  small = jnp.asarray([-8, -1, 0, 7], jnp.int4)
  digest = state_digest.tree_digest({"q": small})["q"]
  assert digest == sum(int(v) % 2**32 * (2 * i + 1) for i, v in enumerate([-8, -1, 0, 7])) % 2**32
  assert state_digest.tree_digest({"q": jnp.asarray([-8, -1, 0, 6], jnp.int4)})["q"] != digest


def test_negative_zero_is_not_zero():
  assert (state_digest.tree_digest({"x": np.float32([0.0, 1.0])})
          != state_digest.tree_digest({"x": np.float32([-0.0, 1.0])}))


def test_differences_name_changed_and_missing_arrays():
  expected = {"a": 1, "b": 2, "c": 3}
  assert state_digest.differences(expected, {"a": 1, "b": 2, "c": 3}) == []
  assert state_digest.differences(expected, {"a": 1, "b": 5}) == ["b", "c"]


def test_prng_keys_digest_their_key_data():
  key = jax.random.key(3)
  assert (state_digest.tree_digest({"k": key})
          == state_digest.tree_digest({"k": jax.random.key_data(key)}))


SHARDED = """
import json
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jaxgan import state_digest
values = np.random.default_rng(1).standard_normal((16, 12)).astype(np.float32)
mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
layouts = {"rows": P("data"), "both": P("data", "fsdp"), "cols": P(None, "fsdp"), "copies": P()}
print(json.dumps({name: state_digest.tree_digest(
    {"x": jax.device_put(values, NamedSharding(mesh, spec))})["x"]
    for name, spec in layouts.items()}))
"""


def test_the_digest_does_not_depend_on_the_sharding():
  """A state written on 8 devices must digest alike when read on 1: integer sums are exact."""
  proc = subprocess.run([sys.executable, "-c", SHARDED], cwd=REPO, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, XLA_FLAGS=xla_flags(8)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  values = np.random.default_rng(1).standard_normal((16, 12)).astype(np.float32)
  one_device = _reference(values)
  assert json.loads(proc.stdout.splitlines()[-1]) == dict.fromkeys(
      ("rows", "both", "cols", "copies"), one_device)
