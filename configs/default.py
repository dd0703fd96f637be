"""Default job: class-conditional DCGAN on the built-in synthetic catalog, 32x32, CPU-friendly.

Runs offline in 3-10 minutes on 2 CPU cores (README: measured) and draws recognisable
products per class.
"""

from jaxgan.config import base_config


def get_config():
  config = base_config()
  config.data.source = "synthetic"
  config.data.image_size = 32
  config.data.num_classes = 8
  config.model.name = "dcgan"
  config.model.g_width = 32
  config.model.d_width = 32
  config.train.batch_size = 64
  config.train.num_steps = 2000
  config.train.ema_half_life_images = 5_000
  config.train.log_every = 50
  config.train.sample_every = 500
  config.train.checkpoint_every = 500
  return config
