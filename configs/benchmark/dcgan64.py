"""The classic DCGAN-64 (Radford et al. 2015) for `python -m jaxgan.benchmark`.

nz=100, ngf=ndf=64, BatchNorm, BCE (non-saturating), Adam 2e-4 / 0.5; unconditional. One step is
a D update on real + fake, then a G update through the updated D.
"""

from jaxgan.config import base_config


def get_config():
  config = base_config()
  config.data.source = "synthetic"
  config.data.image_size = 64
  config.data.num_classes = 0
  config.model.name = "dcgan"
  config.model.z_dim = 100
  config.model.g_width = 64
  config.model.d_width = 64
  config.loss.name = "non_saturating"
  config.train.batch_size = 128
  config.train.dtype = "bfloat16"
  return config
