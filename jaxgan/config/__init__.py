"""The run config's schema (`schema.py`): its keys, defaults, loading and JSON round trip.

`schema.py`'s keys, defaults and readers, and `paths.py`'s path keys, are re-exported here
(`from jaxgan import config as config_lib`); the checks' helpers (`check_types`, `require`) are
imported from `schema` by name. The checks that ask the registries about a config sit a layer
above them and are imported by name: `validation.py` (every value that could fail later, before
anything compiles; `mesh_checks.py` its checks of the mesh, processes and host memory) and
`resume.py` (the changes a resumed run may make). Models and data sources import this package,
so it must not import them back (docs/architecture.md).
"""

from jaxgan.config.paths import NOT_LOCAL, PATH_KEYS, is_uri, not_a_folder, with_absolute_paths
from jaxgan.config.schema import (DTYPES, ConfigError, attribute_classes, base_config,
                                  check_complete, check_known_keys, flat_items, from_json, get,
                                  label_shape, load_config_file, parse_class_counts, r1_period,
                                  split_columns, to_json)

__all__ = [
    "DTYPES", "NOT_LOCAL", "PATH_KEYS", "is_uri", "not_a_folder", "ConfigError",
    "attribute_classes", "base_config", "check_complete", "check_known_keys", "flat_items",
    "from_json", "get", "label_shape", "load_config_file", "parse_class_counts", "r1_period",
    "split_columns", "to_json", "with_absolute_paths",
]
