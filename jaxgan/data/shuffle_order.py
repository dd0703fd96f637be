"""The order examples are served in: a keyed pseudo-random permutation of the data per epoch,
computed index by index (stateless: the position in the stream alone gives the example, so a
resume at any step, and any process taking any rows of a batch, sees the same order).
"""

from __future__ import annotations

from jaxgan import tf_host

# TensorFlow's index shuffle chained this many times, with 24 key bits each (epoch_permutation).
SHUFFLE_STAGES = 3
ROUNDS = 8  # cipher rounds per stage (TensorFlow's default, 4, leaves structure; 6 still some)
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: consecutive epochs far apart before mixing


def mix64_int(x: int) -> int:
  """MurmurHash3's 64-bit finaliser (a bijection that spreads every input bit over the output)
  of a Python int, taken modulo 2^64 (negative seeds included)."""
  x &= _MASK64
  x ^= x >> 33
  x = (x * 0xFF51AFD7ED558CCD) & _MASK64
  x ^= x >> 33
  x = (x * 0xC4CEB9FE1A85EC53) & _MASK64
  return x ^ (x >> 33)


def mix64(tf, x):
  """`mix64_int` of a tf.uint64 tensor (its arithmetic wraps modulo 2^64, shifts are logical)."""
  shift = lambda v: tf.bitwise.bitwise_xor(v, tf.bitwise.right_shift(v, tf.constant(33, tf.uint64)))
  x = shift(x) * tf.constant(0xFF51AFD7ED558CCD, tf.uint64)
  x = shift(x) * tf.constant(0xC4CEB9FE1A85EC53, tf.uint64)
  return shift(x)


def epoch_permutation(positions, n: int, seed: int):
  """Example indices (tf int64) of stream positions `positions` (tf int64) over a set of `n`:
  position p is example pi_e(p mod n) of epoch e = p // n, pi_e a permutation keyed by
  (`seed`, e).

  TensorFlow's index shuffle keys its cipher with only the low 8 bits of each of its 3 seed
  words (TF 2.21, measured: every higher bit is ignored). Fed (tag, seed, epoch) directly,
  epochs e and e + 256 and seeds s and s + 256 gave the same order, and at 4 rounds
  neighbouring epochs' orders were nearly the same for sets of 20k-100k examples (identical at
  65,536). So (seed, epoch) is hashed, and the shuffle chained SHUFFLE_STAGES times, each stage
  keyed by 24 bits of its own hash: 72 key bits per epoch."""
  tf = tf_host.import_tensorflow()
  epoch, index = tf.cast(positions // n, tf.uint64), positions % n
  # The raw op takes a [k, 3] seed, one per element (the public index_shuffle pads [k, 2] seeds
  # along the wrong axis): a batch may straddle two epochs.
  top = tf.fill(tf.shape(positions), tf.constant(n - 1, tf.int64))
  spread = epoch * tf.constant(_GOLDEN, tf.uint64)
  for stage in range(SHUFFLE_STAGES):
    key = mix64(tf, tf.bitwise.bitwise_xor(
        spread, tf.constant(mix64_int(seed * SHUFFLE_STAGES + stage), tf.uint64)))
    words = tf.stack([_byte(tf, key, w) for w in range(3)], -1)
    index = tf.raw_ops.RandomIndexShuffle(index=index, seed=words, max_index=top, rounds=ROUNDS)
  return index


def _byte(tf, x, w: int):
  """Byte `w` of the tf.uint64 tensor `x`, as int64."""
  shifted = tf.bitwise.right_shift(x, tf.constant(8 * w, tf.uint64))
  return tf.cast(tf.bitwise.bitwise_and(shifted, tf.constant(255, tf.uint64)), tf.int64)
