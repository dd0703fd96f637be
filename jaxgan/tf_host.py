"""Lazy TensorFlow import for host-side work (tf.data, TensorBoard event files).

TensorFlow is never imported at module level anywhere in jaxgan: accelerator hosts often lack it,
and importing it costs seconds. When it is imported, it is denied every GPU so it never takes
accelerator memory from JAX.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def import_tensorflow():
  """Returns the `tensorflow` module, restricted to the CPU. Raises ImportError if absent."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # already initialised by someone else: nothing more we can do
    pass
  return tf
