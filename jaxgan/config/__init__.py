"""The run config: its schema (`schema.py`) and its validation (`validation.py`).

Everything a caller needs is re-exported here, so `from jaxgan import config as config_lib` and
`config_lib.validate(...)` read the same whichever file a function lives in.
"""

from jaxgan.config.schema import (DTYPES, ConfigError, attribute_classes, base_config,
                                  check_known_keys, flat_items, from_json, get, label_shape,
                                  load_config_file, parse_class_counts, split_columns, to_json)
from jaxgan.config.validation import validate, validate_distributed, validate_schedule

__all__ = [
    "DTYPES", "ConfigError", "attribute_classes", "base_config", "check_known_keys", "flat_items",
    "from_json", "get", "label_shape", "load_config_file", "parse_class_counts", "split_columns",
    "to_json", "validate", "validate_distributed", "validate_schedule",
]
