"""The built-in synthetic catalog: deterministic, labelled, white background, any size."""

import numpy as np
import pytest

from jaxgan.data import CATEGORY_NAMES, SOURCES, prefetch, stack_batches
from jaxgan.data.synthetic import SyntheticCatalog


def test_at_least_eight_categories():
  assert len(CATEGORY_NAMES) >= 8
  assert {"tshirt", "trousers", "dress", "sneaker", "handbag", "watch", "cap",
          "sunglasses"} <= set(CATEGORY_NAMES)
  assert "synthetic" in SOURCES


@pytest.mark.parametrize("size", [16, 24, 32, 64, 100, 256])
def test_sizes_and_white_background(size):
  source = SyntheticCatalog(size, 8, seed=0)
  batch = next(source.batches(16, 0))
  assert batch["image"].shape == (16, size, size, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  corners = batch["image"][:, [0, 0, -1, -1], [0, -1, 0, -1]]
  assert (corners == 255).mean() > 0.9  # products sit on white
  # Every image shows a product: a good share of non-white pixels.
  non_white = (batch["image"].min(axis=-1) < 240).mean(axis=(1, 2))
  assert non_white.min() > 0.03


def test_deterministic_and_seed_dependent():
  a = next(SyntheticCatalog(32, 8, seed=1).batches(8, 5))
  b = next(SyntheticCatalog(32, 8, seed=1).batches(8, 5))
  c = next(SyntheticCatalog(32, 8, seed=2).batches(8, 5))
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(a["image"], c["image"])


def test_resume_position_and_process_split_give_the_same_data():
  source = SyntheticCatalog(16, 8, seed=0)
  stream = source.batches(8, 0)
  first_three = [next(stream) for _ in range(3)]
  resumed = next(source.batches(8, 2))  # restart at step 2
  np.testing.assert_array_equal(resumed["image"], first_three[2]["image"])
  # Two processes holding scattered rows of the global batch of 8 see those rows of it.
  rows = [np.array([0, 1, 4, 5]), np.array([2, 3, 6, 7])]
  parts = [next(source.batches(8, 2, r)) for r in rows]
  for r, part in zip(rows, parts):
    np.testing.assert_array_equal(part["image"], first_three[2]["image"][r])
    np.testing.assert_array_equal(part["label"], first_three[2]["label"][r])
  with pytest.raises(ValueError, match="below the batch size 8"):
    next(source.batches(8, 0, np.array([8])))


def test_labels_cover_the_requested_classes_only():
  labels = np.concatenate([b["label"] for _, b in zip(range(8), SyntheticCatalog(16, 3, 0).batches(32, 0))])
  assert set(labels.tolist()) == {0, 1, 2}
  unconditional = next(SyntheticCatalog(16, 0, 0).batches(32, 0))
  assert set(unconditional["label"].tolist()) == {0}
  assert SyntheticCatalog(16, 0, 0).class_names == []


def test_categories_look_different():
  # Mean image per category differs between categories (a model can tell them apart).
  source = SyntheticCatalog(32, 8, seed=0)
  means = {}
  for i in range(400):
    image, label = source.example(i)
    means.setdefault(label, []).append((image.min(axis=-1) < 200).astype(np.float32))
  masks = np.stack([np.mean(means[k], axis=0) for k in sorted(means)])
  distances = np.abs(masks[:, None] - masks[None]).mean(axis=(2, 3))
  off_diagonal = distances[~np.eye(len(masks), dtype=bool)]
  assert len(masks) == 8 and off_diagonal.min() > 0.03


def test_prefetch_keeps_order_and_reraises():
  assert list(prefetch(iter(range(10)), 2)) == list(range(10))

  def failing():
    yield 1
    raise RuntimeError("bad file")

  stream = prefetch(failing())
  assert next(stream) == 1
  with pytest.raises(RuntimeError, match="bad file"):
    next(stream)


@pytest.mark.parametrize("ending", ["done", "error"])
def test_prefetch_thread_ends_when_the_consumer_stops_with_a_full_queue(ending):
  """A consumer that stops while the queue is full and the iterator has ended (or failed) must
  not leave the producer blocked on its last put, holding the iterator, for good."""
  import threading

  ended = threading.Event()

  def short():
    try:
      yield from range(2)
      if ending == "error":
        raise RuntimeError("bad file")
    finally:
      ended.set()

  before = set(threading.enumerate())
  stream = prefetch(short(), 1)
  assert next(stream) == 0
  (producer,) = [t for t in threading.enumerate()
                 if t not in before and t.name == "jaxgan-prefetch"]
  # The producer has queued item 1 and holds the end (or the error) for the full queue.
  assert ended.wait(timeout=30)
  stream.close()
  producer.join(timeout=5)
  assert not producer.is_alive()


def test_prefetch_closes_its_source_when_the_consumer_stops_early():
  """The source's clean-up (a generator's `finally`: open files, a decode pool) runs when the
  consumer closes the stream, not whenever the garbage collector gets to the iterator."""
  import threading

  cleaned = threading.Event()

  def endless():
    try:
      while True:
        yield 1
    finally:
      cleaned.set()

  source = endless()
  stream = prefetch(source, 1)
  assert next(stream) == 1
  stream.close()
  assert cleaned.wait(timeout=5)  # `source` is still referenced here: not the collector's doing


def test_stack_batches_groups_steps_in_order():
  batches = [{"image": np.full((2, 1), i), "label": np.array([i, -i])} for i in range(5)]
  stacked = list(stack_batches(iter(batches), 2))
  assert len(stacked) == 2  # the incomplete fifth batch is dropped
  assert stacked[1]["image"].shape == (2, 2, 1)
  np.testing.assert_array_equal(stacked[1]["label"], [[2, -2], [3, -3]])
  assert list(stack_batches(iter(batches), 1)) == batches


def test_fingerprint_sees_size_labels_and_images():
  """What processes compare to make sure they read the same data (data.fingerprint)."""
  from jaxgan import data

  images = np.zeros((5, 4, 4, 3), np.uint8)
  labels = np.array([0, 1, 0, 1, 0])
  base = data.fingerprint(data.ArraySource(images, labels, ["a", "b"], seed=0))
  other_pixel = images.copy()
  other_pixel[4, 0, 0, 0] = 1  # the last image is always in the sample
  variants = [data.ArraySource(images[:4], labels[:4], ["a", "b"], seed=0),
              data.ArraySource(images, np.array([1, 1, 0, 1, 0]), ["a", "b"], seed=0),
              data.ArraySource(other_pixel, labels, ["a", "b"], seed=0),
              data.ArraySource(images, labels, ["a", "c"], seed=0)]
  assert len({base, *(data.fingerprint(v) for v in variants)}) == 5
  assert base == data.fingerprint(data.ArraySource(images.copy(), labels, ["a", "b"], seed=3))
  streams = [data.fingerprint(data.SyntheticCatalog(16, 3, seed)) for seed in (0, 0, 1)]
  assert streams[0] == streams[1] != streams[2] and 0 <= base < 2**31


def test_the_content_digest_sees_every_image_where_the_fingerprint_samples(monkeypatch):
  """The fingerprint hashes 64 evenly spaced images: six photos rotated elsewhere in a set of
  200 left it as it was, and a resume said nothing. The content digest hashes every image up to
  CONTENT_DIGEST_BYTES, then evenly spaced ones."""
  from jaxgan import data

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (200, 4, 4, 3), np.uint8)
  labels = np.arange(200) % 2
  source = lambda x: data.ArraySource(x, labels, ["a", "b"], seed=0)
  changed = images.copy()
  changed[1] = np.rot90(changed[1])  # not among the fingerprint's 64
  assert data.fingerprint(source(images)) == data.fingerprint(source(changed))
  assert data.content_digest(source(images)) != data.content_digest(source(changed))
  assert data.content_digest(source(images)) == data.content_digest(source(images.copy()))
  relabelled = data.ArraySource(images, 1 - labels, ["a", "b"], seed=0)
  assert data.content_digest(relabelled) != data.content_digest(source(images))
  # Past the budget: evenly spaced images (the first and last always among them).
  monkeypatch.setattr(data, "CONTENT_DIGEST_BYTES", 10 * 4 * 4 * 3)
  assert data.content_digest(source(images)) == data.content_digest(source(changed))
  changed[-1, 0, 0, 0] ^= 1
  assert data.content_digest(source(images)) != data.content_digest(source(changed))
  # A stream: its fingerprint.
  assert data.content_digest(data.SyntheticCatalog(16, 3, 0)) == data.fingerprint(
      data.SyntheticCatalog(16, 3, 0))
