"""The run config: its schema (`schema.py`), its validation (`validation.py`) and the changes a
resumed run may make (`resume.py`).

Everything a caller needs is re-exported here, so `from jaxgan import config as config_lib` and
`config_lib.validate(...)` read the same whichever file a function lives in.
"""

from jaxgan.config.resume import (RESUMABLE_KEYS, config_differences, describe_consequences,
                                  describe_differences)
from jaxgan.config.schema import (DTYPES, NOT_LOCAL, PATH_KEYS, ConfigError, attribute_classes,
                                  base_config, check_complete, check_known_keys, flat_items,
                                  from_json, get, is_uri, label_shape, load_config_file,
                                  parse_class_counts, r1_period, split_columns, to_json,
                                  with_absolute_paths)
from jaxgan.config.validation import (MAX_STANDING_STATS_BATCHES, seed_problem, validate,
                                      validate_distributed, validate_schedule)

__all__ = [
    "RESUMABLE_KEYS", "config_differences", "describe_consequences", "describe_differences",
    "DTYPES", "MAX_STANDING_STATS_BATCHES", "NOT_LOCAL", "PATH_KEYS", "is_uri", "ConfigError",
    "attribute_classes",
    "base_config", "check_complete",
    "check_known_keys", "flat_items", "from_json", "get", "label_shape", "load_config_file",
    "parse_class_counts", "r1_period", "split_columns", "to_json", "with_absolute_paths",
    "seed_problem", "validate", "validate_distributed", "validate_schedule",
]
