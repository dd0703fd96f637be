"""jaxgan: GANs for e-commerce product images in JAX/Flax.

Importing the package is cheap on purpose: it pulls in neither TensorFlow nor the models, so the
CLIs (`python -m jaxgan.train`, `jaxgan.generate`, ...) start fast and accelerator hosts without
TensorFlow can use everything except the tf.data sources.
"""

__version__ = "0.1.0"
