"""data/prepared.py's writer: preparing again into the same folder replaces the set, and a write
that fails halfway never leaves a set that loads with mixed shards."""

import os

import numpy as np
import pytest

from jaxgan.data import prepared
from jaxgan.data.arrays import DataError


def _images(n, value):
  return np.full((n, 4, 4, 3), value, np.uint8)


class FailingImages:
  """uint8 images whose `fail_at`-th read fails, as a full disk or a lost mount would."""

  def __init__(self, images, fail_at):
    self.images, self.fail_at, self.shape = images, fail_at, images.shape

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    if i == self.fail_at:
      raise OSError(28, "No space left on device")
    return self.images[i]


def test_preparing_again_replaces_the_set(tmp_path, monkeypatch):
  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(5, 10), np.zeros(5), ["a"], [])  # 3 shards
  prepared.write_prepared(out, _images(3, 20), np.zeros(3), ["a"], [])  # 2 shards
  assert sorted(os.listdir(out)) == ["dataset_info.json", "train-00000-of-00002.tfrecord",
                                     "train-00001-of-00002.tfrecord"]
  images, _, info = prepared.read_prepared(out)
  assert info["num_examples"] == 3 and (np.asarray(images) == 20).all()


def test_a_failed_rewrite_leaves_no_loadable_mix(tmp_path, monkeypatch):
  monkeypatch.setattr(prepared, "EXAMPLES_PER_SHARD", 2)
  out = str(tmp_path / "set")
  prepared.write_prepared(out, _images(4, 10), np.zeros(4), ["a"], [])
  with pytest.raises(OSError, match="No space left"):
    # Shard 0 of the new set is written (same name as the old shard 0), shard 1 fails.
    prepared.write_prepared(out, FailingImages(_images(4, 20), fail_at=3), np.zeros(4), ["a"], [])
  assert not [n for n in os.listdir(out) if n.endswith(".tmp")]
  with pytest.raises(DataError, match="dataset_info.json not found"):
    prepared.read_prepared(out)  # not the old info over a new and an old shard


def test_a_tensorflow_write_error_is_an_oserror_naming_the_shard(tmp_path, monkeypatch):
  from jaxgan import tf_host

  tf = tf_host.import_tensorflow()

  def full_disk(path):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

  monkeypatch.setattr(tf.io, "TFRecordWriter", full_disk)
  out = tmp_path / "set"
  with pytest.raises(OSError, match=r"train-00000-of-00001.tfrecord failed: No space left"):
    prepared.write_prepared(str(out), _images(2, 10), np.zeros(2), ["a"], [])
  assert os.listdir(out) == []
