"""`data.source = 'tfds'`: a TensorFlow Datasets data set, converted by the one image loader."""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxgan import tf_host
from jaxgan.data.arrays import (ArraySource, DataError, check_bad_fraction, load_options,
                                 require_num_classes)
from jaxgan.data.images import convert, size_problem

log = logging.getLogger(__name__)


def load_tfds(name: str, split: str, data_dir: str, image_key: str, label_key: str, options,
              max_bad_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, list[str], int]:
  """(images uint8 [N, S, S, 3], labels, class names, skipped examples). Downloads and prepares
  the data set on first use, as TFDS does (tests run it under tfds.testing.mock_data, offline).
  Examples the image loader cannot take are skipped and counted, up to `max_bad_fraction`."""
  tf_host.import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    ds, info = tfds.load(name, split=split, data_dir=data_dir or None, with_info=True,
                         shuffle_files=False)
  except Exception as e:  # unknown name, no network, bad split: one clear line
    raise DataError(f"data.tfds_name {name!r} (split {split!r}) could not be loaded: "
                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
  features = info.features
  if image_key not in features:
    raise DataError(f"data.tfds_image_key {image_key!r} is not a feature of {name} "
                    f"(features: {', '.join(features.keys())})")
  class_names: list[str] = []
  if label_key:
    if label_key not in features:
      raise DataError(f"data.tfds_label_key {label_key!r} is not a feature of {name} "
                      f"(features: {', '.join(features.keys())})")
    class_names = list(getattr(features[label_key], "names", []) or [])
  images, labels, skipped = [], [], []
  for i, example in enumerate(tqdm(tfds.as_numpy(ds), desc=f"load {name}", unit="img",
                                   dynamic_ncols=True)):
    array = example[image_key]
    reason = size_problem(array.shape[1], array.shape[0], options)
    if not reason:
      try:  # as the file loader does: an image PIL cannot take is skipped and counted
        img = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
        images.append(convert(img, options))
      except (TypeError, ValueError, OSError) as e:
        reason = f"unusable: {type(e).__name__}: {e}"
    if reason:
      skipped.append({"path": f"{name}/{split}[{i}]", "reason": reason})
    else:
      labels.append(int(example[label_key]) if label_key else 0)
  if not images and not skipped:
    raise DataError(f"{name} split {split!r} has no examples")
  check_bad_fraction(skipped, len(images) + len(skipped), max_bad_fraction, f"tfds {name}")
  if not images:
    raise DataError(f"{name} split {split!r} has no usable image (first: {skipped[0]['path']}: "
                    f"{skipped[0]['reason']})")
  if label_key and not class_names:
    class_names = [str(i) for i in range(max(labels) + 1)]
  return np.stack(images), np.asarray(labels, np.int32), class_names, len(skipped)


class TfdsSource(ArraySource):
  @staticmethod
  def validate(config) -> None:
    from jaxgan.config import ConfigError

    if not config.data.tfds_name:
      raise ConfigError("config key data.tfds_name: the tfds source needs a data set name, "
                        "e.g. fashion_mnist")

  @classmethod
  def from_config(cls, config) -> ArraySource:
    d = config.data
    images, labels, class_names, bad = load_tfds(d.tfds_name, d.tfds_split, d.tfds_data_dir,
                                                 d.tfds_image_key, d.tfds_label_key,
                                                 load_options(config), d.max_bad_fraction)
    require_num_classes(config, class_names, f"tfds {d.tfds_name}")
    attributes = [(d.tfds_label_key, class_names)] if class_names else []
    return ArraySource.for_config(config, images, labels, class_names, bad_files=bad,
                                  attribute_names=attributes, where=f"tfds {d.tfds_name}")
