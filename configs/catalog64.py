"""Class-conditional DCGAN on a prepared product catalog at 64x64.

Prepare the catalog first (README, "Train on your catalog"), then:
  python -m jaxgan.train --config configs/catalog64.py --workdir runs/catalog64 \
      --config.data.path=data/catalog64

An accelerator job: bfloat16 compute with float32 weights (1.3-1.8x float32's images/s on an
H200, docs/benchmarks.md). On a CPU, which has no native bfloat16 convolutions, add
--config.train.dtype=float32.
"""

from jaxgan.config import base_config


def get_config():
  config = base_config()
  config.data.source = "prepared"
  config.data.path = ""  # the folder written by `python -m jaxgan.prepare`
  config.data.image_size = 64
  config.data.num_classes = -1  # the prepared set's classes (all its attributes); 0: unconditional
  config.data.random_flip = True
  config.model.name = "dcgan"
  config.model.g_width = 64
  config.model.d_width = 64
  config.train.batch_size = 128
  config.train.dtype = "bfloat16"
  config.train.num_steps = 100_000
  config.train.ema_half_life_images = 10_000
  config.train.log_every = 100
  config.train.sample_every = 2_000
  config.train.checkpoint_every = 5_000
  return config
