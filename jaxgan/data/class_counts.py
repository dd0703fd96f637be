"""data.num_classes = FROM_DATA (-1): a run's class counts read from its prepared set's
dataset_info.json as it starts (`with_class_counts`), stored resolved in its config.json."""

from __future__ import annotations

import copy
import logging
import os

import ml_collections

from jaxgan.config.schema import ConfigError
from jaxgan.data.arrays import DataError
from jaxgan.data.prepared import INFO_FILE, attribute_names, read_info

log = logging.getLogger(__name__)

# data.num_classes = FROM_DATA: the prepared set's own class counts, read from its
# dataset_info.json when the run starts (a forgotten count trained unconditionally for the run).
FROM_DATA = -1


def with_class_counts(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with data.num_classes = FROM_DATA replaced by the prepared set's class count (and
  data.extra_num_classes by its other attributes'); other configs unchanged."""

  d = config.data
  if d.num_classes != FROM_DATA or d.source != "prepared":
    return config  # validation names a FROM_DATA that another source cannot resolve
  if d.extra_num_classes:
    raise ConfigError(f"config key data.extra_num_classes: {d.extra_num_classes!r} with "
                      f"data.num_classes={FROM_DATA}, which reads every attribute's count from "
                      "the data; drop one of them")
  if not d.path:  # before reading it: the source's own check, said first
    raise ConfigError("config key data.path: the prepared source needs the folder written by "
                      "`python -m jaxgan.prepare` (--config.data.path=FOLDER); where only its "
                      f"class counts are read (data.num_classes={FROM_DATA}: the benchmark, "
                      "--compile_only), --config.data.num_classes=N does without it")
  try:
    attributes = attribute_names(read_info(d.path))
  except DataError as e:
    # The other ways on, each with num_classes given: -1 is a prepared set's alone.
    raise ConfigError(f"config key data.path: {e} (data.num_classes={FROM_DATA} reads the class "
                      "counts of a prepared set there; with data.source=folder, or for "
                      "--compile_only and the benchmark without the data, give "
                      "--config.data.num_classes=N)") from None
  config = copy.deepcopy(config)
  with config.unlocked():
    config.data.num_classes = len(attributes[0][1]) if attributes else 0
    config.data.extra_num_classes = ",".join(str(len(names)) for _, names in attributes[1:])
  log.info("data.num_classes=%d%s, from %s", config.data.num_classes,
           f", data.extra_num_classes={config.data.extra_num_classes}"
           if config.data.extra_num_classes else "", os.path.join(d.path, INFO_FILE))
  return config
