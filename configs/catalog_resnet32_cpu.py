"""The ResNet + DiffAugment model of docs/quality.md: configs/catalog_resnet64.py cut to fit a
2-core CPU (200k images in about an hour), 32x32, on a catalog prepared with masterCategory labels.

Widths 16-64, no attention, n_critic 1, float32. LeCam off and G's lr 2e-4 (on 2026-11-28
BigGAN's 1e-4 with LeCam 0.3 gave FID 126 at 200k images, this 96; re-measured on 2026-12-02
with that day's evaluation, 91.5 against DCGAN's 112.7; docs/quality.md). Run 3,125 steps x 64:
  python -m jaxgan.prepare ... --label-column masterCategory --image-size 32 --out data/catalog32
  python -m jaxgan.train --config configs/catalog_resnet32_cpu.py --workdir runs/resnet32 \
      --config.data.path=data/catalog32
"""

import os

from jaxgan.config import load_config_file

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "catalog_resnet64.py")


def get_config():
  config = load_config_file(_BASE)
  config.data.image_size = 32
  config.model.attention_resolution = 0
  config.model.g_width = 16
  config.model.d_width = 16
  config.model.max_width = 64
  config.model.z_dim = 64
  config.model.shared_dim = 32
  config.loss.lecam_weight = 0.0
  config.optim.g_lr = 2e-4
  config.train.batch_size = 64
  config.train.n_critic = 1
  config.train.dtype = "float32"
  config.train.num_steps = 3125
  config.train.eval_every = 0
  # What `evaluate --workdir` uses by default: docs/quality.md's 5,000 (10,000 fakes and reals
  # through Inception would take longer than the training here).
  config.train.eval_num_samples = 5000
  config.train.ema_half_life_images = 5000
  config.train.checkpoint_every = 1000
  return config
