"""The example order: a permutation per epoch, independent between epochs and data seeds."""

import numpy as np
import pytest

from jaxgan import tf_host
from jaxgan.data import shuffle_order


def _order(n, seed, first_position, count):
  tf = tf_host.import_tensorflow()
  positions = tf.range(first_position, first_position + count, dtype=tf.int64)
  return shuffle_order.epoch_permutation(positions, n, seed).numpy()


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_each_epoch_is_a_permutation_also_across_a_batch_that_straddles_two(n):
  stream = np.concatenate([_order(n, 3, 0, n + n // 2), _order(n, 3, n + n // 2, 2 * n - n // 2)])
  for epoch in range(3):
    assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
  assert (stream < n).all() and (stream >= 0).all()


def test_epochs_and_seeds_give_independent_orders():
  """TensorFlow's index shuffle reads 8 bits of each seed word: fed the epoch and seed as they
  are, epoch 256 repeated epoch 0, seed 256 seed 0, and at 65,536 examples (4 rounds) every epoch
  was the same order. Data sorted into 8 classes: how often a stream position holds the same
  class in two orders (1/8 when independent; binomial sd 0.0013 here)."""
  n = 65536
  classes = lambda order: order * 8 // n
  base = classes(_order(n, 0, 0, n))
  others = {f"epoch {e}": _order(n, 0, e * n, n) for e in (1, 2, 256)}
  others.update({f"seed {s}": _order(n, s, 0, n) for s in (1, 256, -1)})
  for name, order in others.items():
    assert abs(np.mean(classes(order) == base) - 0.125) < 0.01, name
  # Within an epoch, neighbouring positions are unrelated (|correlation| ~ 1/sqrt(n)).
  order = _order(n, 0, 0, n)
  assert abs(np.corrcoef(order[:-1], order[1:])[0, 1]) < 5 / np.sqrt(n)


def test_the_tensorflow_hash_is_the_reference_one():
  tf = tf_host.import_tensorflow()
  values = [0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15]
  got = shuffle_order.mix64(tf, tf.constant(values, tf.uint64)).numpy()
  assert [int(g) for g in got] == [shuffle_order.mix64_int(v) for v in values]
  assert shuffle_order.mix64_int(0) == 0 and shuffle_order.mix64_int(1) == 0xB456BCFC34C2CB2C
