"""`data.source = 'tfds'`: a TensorFlow Datasets data set, decoded by the one image loader."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Optional

import ml_collections
import numpy as np
from PIL import Image
from jaxgan import atomic_write
from jaxgan import progress as progress_lib
from jaxgan import tf_host
from jaxgan.config.schema import ConfigError
from jaxgan.data.arrays import (DECODE_KEYS, ArraySource, DataError, check_bad_fraction,
                                 load_options, require_num_classes)
from jaxgan.data.decode import log_upscaled
from jaxgan.data.images import Loaded, convert, load_image, size_problem

log = logging.getLogger(__name__)


def load_tfds(name: str, split: str, data_dir: str, image_key: str, label_key: str, options,
              max_bad_fraction: float = 0.0, download: bool = True
              ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
  """(images uint8 [N, S, S, 3], labels, class names, skipped examples). Downloads and prepares
  the data set on first use, as TFDS does, unless `download` is False: then a set not prepared
  under `data_dir` is an error at once (tests run it under tfds.testing.mock_data, offline).
  Encoded images (an Image feature) are decoded by the one image loader, as files are (EXIF
  orientation, colour profiles, transparency onto white), not by TensorFlow; raw arrays (a
  Tensor feature) are converted by it. Examples it cannot take are skipped and counted, up to
  `max_bad_fraction`."""
  tf_host.import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    # TFDS warns through absl of a version folder without its info ('Variant folder ... has no
    # dataset_info.json') while looking for the set: _check_prepared says what that means. Its
    # other warnings (another version prepared there) stay.
    with _without_variant_folder_warnings():
      builder = tfds.builder(name, data_dir=data_dir or None)
      features = builder.info.features
      prepared = builder.is_prepared()
    encoded = image_key in features and _bytes_are_an_image(features[image_key], tfds)
    _check_prepared(builder, prepared, name, download)
    # Processes sharing data_dir (a host's eight, or hosts on one file system) each downloaded
    # and prepared a set not prepared yet, and TFDS's rename of each one's temporary folder into
    # place failed for all but the first: one prepares it while the others wait, then find it.
    lock = os.path.join(os.path.dirname(builder.data_dir), ".jaxgan-prepare.lock")
    with (atomic_write.exclusive(lock, f"preparing {name}") if download and not prepared
          else contextlib.nullcontext()):
      ds, info = tfds.load(name, split=split, data_dir=data_dir or None, with_info=True,
                           shuffle_files=False, download=download,
                           decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None)
  except DataError:
    raise
  except Exception as e:  # unknown name, no network, bad split: one clear line
    raise DataError(f"data.tfds_name {name!r} (split {split!r}) could not be loaded: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
  features = info.features
  if image_key not in features:
    raise DataError(f"data.tfds_image_key {image_key!r} is not a feature of {name} "
                    f"(features: {', '.join(features.keys())})")
  _check_feature(features, name, "data.tfds_image_key", image_key, _holds_images,
                 "an image or an array of pixels [H, W] or [H, W, C]")
  class_names: list[str] = []
  if label_key:
    if label_key not in features:
      raise DataError(f"data.tfds_label_key {label_key!r} is not a feature of {name} "
                      f"(features: {', '.join(features.keys())})")
    _check_feature(features, name, "data.tfds_label_key", label_key, _holds_labels,
                   "a ClassLabel or one number per example")
    class_names = list(getattr(features[label_key], "names", []) or [])
  total = _split_size(info, split)
  images = _Images(total if options.image_size else None, options.image_size)
  labels, skipped, upscaled = [], [], 0
  # A bar on a terminal, a line a minute in a job's log (tqdm's redraws made one long line there).
  with progress_lib.progress(total, f"load {name}", enabled=total is None or total >= 200) as bar:
    for i, example in enumerate(tfds.as_numpy(ds)):
      loaded = _load_example(example[image_key], options)
      if loaded.image is None:
        skipped.append({"path": f"{name}/{split}[{i}]", "reason": loaded.reason})
      else:
        images.append(loaded.image)
        upscaled += loaded.upscaled
        labels.append(int(example[label_key]) if label_key else 0)
      bar.update(1)
  if not len(images) and not skipped:
    raise DataError(f"{name} split {split!r} has no examples")
  check_bad_fraction(skipped, len(images) + len(skipped), max_bad_fraction, f"tfds {name}")
  if not len(images):
    raise DataError(f"{name} split {split!r} has no usable image (first: {skipped[0]['path']}: "
                    f"{skipped[0]['reason']})")
  log_upscaled(upscaled, len(images), f"tfds {name}", options.image_size, "data.image_size")
  if label_key and not class_names:
    class_names = [str(i) for i in range(max(labels) + 1)]
  if label_key:
    _warn_of_empty_classes(labels, class_names, f"{name} split {split!r}", label_key)
  return images.array(), np.asarray(labels, np.int32), class_names, len(skipped)


def _holds_images(feature, tfds) -> bool:
  shape = getattr(feature, "shape", None)
  return isinstance(feature, tfds.features.Image) or (
      isinstance(feature, tfds.features.Tensor) and shape is not None and len(shape) in (2, 3)
      and np.issubdtype(np.dtype(feature.np_dtype), np.number))


def _holds_labels(feature, tfds) -> bool:
  """Whether an example's `feature` can be read as one class index: not text, an image, or a
  Tensor of several values or of text (a Sequence, read as before, is left to the read)."""
  if isinstance(feature, (tfds.features.Image, tfds.features.Text)):
    return False
  if not isinstance(feature, tfds.features.Tensor) or isinstance(feature,
                                                                 tfds.features.ClassLabel):
    return True
  dtype = np.dtype(feature.np_dtype)
  return ((np.issubdtype(dtype, np.number) or dtype == np.bool_)
          and all(d == 1 for d in feature.shape))


def _check_feature(features, name: str, key: str, value: str, holds, what: str) -> None:
  """Raises DataError where feature `value` (`key`'s) is not `what`, naming those that are: a
  text or image label, or a scalar as the image, failed with a traceback on the first example."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if holds(features[value], tfds):
    return
  fitting = [k for k, f in features.items() if holds(f, tfds)]
  raise DataError(f"{key} {value!r}: {name}'s feature {value!r} is a "
                  f"{type(features[value]).__name__}, not {what}; "
                  + (f"its features that are: {', '.join(fitting)}" if fitting
                     else f"{name} has none"))


def _warn_of_empty_classes(labels: list, class_names: list, where: str, label_key: str) -> None:
  """Classes the split holds no example of stay classes of the model (a ClassLabel's names, or
  0..max for integers): their rows of the class tables train on nothing, which was silent."""
  labels = np.asarray(labels, np.int64)
  # -1 is TFDS's 'no label' (STL10's unlabelled split): check_label_range names those.
  counts = np.bincount(labels[labels >= 0], minlength=len(class_names))
  empty = [class_names[i] for i in np.flatnonzero(counts == 0)]
  if empty:
    log.warning("%s holds no example of %d of the %d classes of %r (first: %r): they stay classes "
                "of the model, trained on nothing; pick a split that holds every class, or "
                "another label feature", where, len(empty), len(class_names), label_key,
                empty[0])


def _check_prepared(builder, prepared: bool, name: str, download: bool) -> None:
  """Says where a set not prepared yet comes from: a download now (which, on a host without
  network, retries for minutes before it fails), or with `download` False an error at once."""
  if prepared:
    return
  # The data dir, not the set's own folder (NAME[/CONFIG]/VERSION under it).
  where = str(getattr(builder, "_data_dir_root", "") or
              os.path.dirname(os.path.dirname(builder.data_path)))
  if not download:
    raise DataError(f"data.tfds_name {name!r} is not prepared under {where} and "
                    f"data.tfds_download is False: prepare it on a host with network "
                    f"(`tfds build {name} --data_dir {where}`) and point data.tfds_data_dir "
                    f"there, or set data.tfds_download=True")
  log.warning("tfds %s is not prepared under %s: downloading and preparing it now (without "
              "network this retries for minutes; data.tfds_download=False fails at once)",
              name, where)


def _not_a_variant_folder_warning(record: logging.LogRecord) -> bool:
  return not str(record.msg).startswith("Variant folder ")


@contextlib.contextmanager
def _without_variant_folder_warnings() -> Iterator[None]:
  """Drops TFDS's 'Variant folder %s has no %s' records from absl's logger (which TFDS logs
  through) for the block."""
  logger = logging.getLogger("absl")
  logger.addFilter(_not_a_variant_folder_warning)
  try:
    yield
  finally:
    logger.removeFilter(_not_a_variant_folder_warning)


def _bytes_are_an_image(feature, tfds) -> bool:
  """Whether `feature` stores an encoded image the loader can read from its bytes (8- or 16-bit).
  A float32 Image feature is stored as a 4-channel PNG holding the floats' bytes, which only its
  own decoder undoes: that one is decoded by TensorFlow, and the array converted."""
  return (isinstance(feature, tfds.features.Image)
          and np.dtype(getattr(feature, "np_dtype", np.uint8)) in (np.uint8, np.uint16))


def _load_example(value, options) -> Loaded:
  """The image of an example's encoded bytes or pixel array, or why it was skipped."""
  if isinstance(value, bytes):
    return load_image(value, options)
  array = np.asarray(value)
  reason = size_problem(array.shape[1], array.shape[0], options)
  if reason:
    return Loaded(None, reason)
  try:  # as the file loader does: an image PIL cannot take is skipped and counted
    img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    return Loaded(convert(img, options), upscaled=0 < max(img.size) < options.image_size)
  except MemoryError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (this example's, not the run's)
    return Loaded(None, f"unusable: {type(e).__name__}: {e}")


def _split_size(info, split: str) -> Optional[int]:
  """How many examples `split` (e.g. 'train[:10%]') holds, when the data set's info says."""
  try:
    return int(info.splits[split].num_examples)
  except Exception:  # pylint: disable=broad-except  (not generated yet, mocked, an odd split)
    return None


class _Images:
  """The kept images, written into one array of the split's size when it is known (the data set
  is held once, not also as a list of images to stack)."""

  def __init__(self, capacity: Optional[int], size: int):
    self._array = np.empty((capacity, size, size, 3), np.uint8) if capacity else None
    self._list: list[np.ndarray] = []
    self._count = 0

  def append(self, image: np.ndarray) -> None:
    if self._array is not None and self._count < len(self._array):
      self._array[self._count] = image
    else:
      self._list.append(image)
    self._count += 1

  def __len__(self) -> int:
    return self._count

  def array(self) -> np.ndarray:
    if self._array is None:
      return np.stack(self._list)
    if self._list:  # more examples than the info said
      return np.concatenate([self._array, np.stack(self._list)])
    return self._array[:self._count]


class TfdsSource(ArraySource):
  reads = frozenset({"tfds_name", "tfds_data_dir", "tfds_split", "tfds_image_key",
                     "tfds_label_key", "tfds_download"}) | DECODE_KEYS

  @staticmethod
  def validate(config: ml_collections.ConfigDict, reads_data: bool = True) -> None:

    del reads_data  # the name is the config's, needed to build the source at all
    if not config.data.tfds_name:
      raise ConfigError("config key data.tfds_name: the tfds source needs a data set name, "
                        "e.g. fashion_mnist")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> ArraySource:
    d = config.data
    # An unconditional run reads no label (its labels would be dropped): any feature will do.
    images, labels, class_names, bad = load_tfds(d.tfds_name, d.tfds_split, d.tfds_data_dir,
                                                 d.tfds_image_key,
                                                 d.tfds_label_key if d.num_classes else "",
                                                 load_options(config), d.max_bad_fraction,
                                                 download=d.tfds_download)
    require_num_classes(config, class_names, f"tfds {d.tfds_name}")
    attributes = [(d.tfds_label_key, class_names)] if class_names else []
    return ArraySource.for_config(config, images, labels, class_names, bad_files=bad,
                                  attribute_names=attributes, where=f"tfds {d.tfds_name}")
