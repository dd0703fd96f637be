"""Lazy TensorFlow import for host-side work (tf.data, prepare's TFRecord shards).

TensorFlow is never imported at module level anywhere in jaxgan: accelerator hosts often lack it,
and importing it costs seconds. When it is imported, it is denied every GPU so it never takes
accelerator memory from JAX.
"""

from __future__ import annotations

import functools
import logging
import os
import types

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def import_tensorflow() -> types.ModuleType:
  """Returns the `tensorflow` module, restricted to the CPU. Raises ImportError if absent."""
  # Quiet unless the user says otherwise: TensorFlow's C++ start-up notes (oneDNN on, CPU
  # instructions) print before absl's logging is set up, the oneDNN one twice, 5 lines on every
  # start. Its warnings and errors still show. oneDNN's custom ops only change float rounding,
  # and TensorFlow does no float math here (tf.data moves uint8 images, prepare writes them).
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
  os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:
    # TensorFlow was initialised by other code first: its GPUs can no longer be hidden. Say so
    # when it has any, since it may then hold accelerator memory that JAX needs.
    gpus = tf.config.get_visible_devices("GPU")
    if gpus:
      log.warning("TensorFlow was initialised before jaxgan could hide %d GPU(s) from it and may "
                  "hold their memory; let nothing use TensorFlow before jaxgan's data pipeline "
                  "starts (it hides them then)", len(gpus))
  return tf
