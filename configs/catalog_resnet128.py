"""BigGAN-style ResNet GAN with spectral norm and DiffAugment on a prepared catalog, 128x128.

As configs/catalog_resnet64.py, one resolution up: self-attention at 64x64, batch 256 (an
accelerator job: one step is ~4x the 64x64 work per image).
  python -m jaxgan.prepare ... --image-size 128 --out data/catalog128
  python -m jaxgan.train --config configs/catalog_resnet128.py --workdir runs/resnet128 \
      --config.data.path=data/catalog128
"""

import os

from jaxgan.config import load_config_file

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog_resnet64.py")


def get_config():
  config = load_config_file(_BASE)
  config.data.image_size = 128
  config.model.attention_resolution = 64
  config.model.max_width = 1024
  config.train.batch_size = 256
  return config
