"""Generator/discriminator families, picked by `model.name` from the MODELS registry.

An entry is a `ModelSpec`: the image sizes it can build and a `build(config) -> (G, D)` function
returning Flax modules called as `G(z, labels, train=...)` -> images in [-1, 1] (NHWC, float32) and
`D(images, labels, train=...)` -> float32 logits of shape [batch]. Labels are int [b] for one
attribute and [b, A] for several (`config.attribute_classes` gives the classes per attribute).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from jaxgan.config import ConfigError, attribute_classes
from jaxgan.models.batchnorm import resolve_norm_impl
from jaxgan.models.dcgan import Discriminator, Generator
from jaxgan.models.layers import resolve_downsample_impl, resolve_upsample_impl
from jaxgan.models.resnet import (ResNetDiscriminator, ResNetGenerator, attention_resolutions,
                                  latent_chunks)
from jaxgan.registry import Registry


def _no_checks(config) -> None:
  del config


# Model keys that only some families read; a family's `reads` names those it does (config
# validation refuses the others set, which would change nothing).
FAMILY_KEYS = ("embed_dim", "d_norm", "upsample_impl", "downsample_impl", "shared_dim",
               "attention_resolution")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """`validate(config)` raises config.ConfigError for model keys this family cannot build (run
  by config validation, before anything is compiled); `reads`: the FAMILY_KEYS it reads (the
  ResNet D has no normalisation but spectral norm: no `model.d_norm`)."""

  build: Callable[..., tuple[nn.Module, nn.Module]]
  supported_image_sizes: tuple[int, ...]
  validate: Callable[..., None] = _no_checks
  reads: frozenset = frozenset()

  @property
  def d_norm_applies(self) -> bool:
    return "d_norm" in self.reads


MODELS: Registry[ModelSpec] = Registry("model")


def compute_dtype(config: ml_collections.ConfigDict):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[config.train.dtype]


def _build_dcgan(config) -> tuple[nn.Module, nn.Module]:
  dtype = compute_dtype(config)
  m, d = config.model, config.data
  classes = attribute_classes(config)
  g = Generator(image_size=d.image_size, num_classes=classes, z_dim=m.z_dim,
                width=m.g_width, max_width=m.max_width, embed_dim=m.embed_dim,
                upsample_impl=resolve_upsample_impl(m.upsample_impl),
                norm_impl=resolve_norm_impl(m.norm_impl), dtype=dtype)
  disc = Discriminator(image_size=d.image_size, num_classes=classes, width=m.d_width,
                       max_width=m.max_width, norm=m.d_norm,
                       downsample_impl=resolve_downsample_impl(m.downsample_impl),
                       norm_impl=resolve_norm_impl(m.norm_impl), dtype=dtype)
  return g, disc


MODELS.register("dcgan")(ModelSpec(_build_dcgan, (16, 32, 64, 128, 256), reads=frozenset(
    {"embed_dim", "d_norm", "upsample_impl", "downsample_impl"})))


def _build_resnet(config) -> tuple[nn.Module, nn.Module]:
  dtype = compute_dtype(config)
  m, d = config.model, config.data
  classes = attribute_classes(config)
  g = ResNetGenerator(image_size=d.image_size, num_classes=classes, z_dim=m.z_dim,
                      width=m.g_width, max_width=m.max_width, shared_dim=m.shared_dim,
                      attention_resolution=m.attention_resolution,
                      norm_impl=resolve_norm_impl(m.norm_impl), dtype=dtype)
  disc = ResNetDiscriminator(image_size=d.image_size, num_classes=classes, width=m.d_width,
                             max_width=m.max_width, attention_resolution=m.attention_resolution,
                             dtype=dtype)
  return g, disc


def _validate_resnet(config) -> None:
  m, size = config.model, config.data.image_size
  allowed = attention_resolutions(size)
  if m.attention_resolution != 0 and m.attention_resolution not in allowed:
    raise ConfigError(f"config key model.attention_resolution: {m.attention_resolution} is not a "
                      f"resolution both ResNet G and D have at image size {size}; choose one of "
                      f"{list(allowed)}, or 0 for no attention")
  if m.z_dim < latent_chunks(size):
    raise ConfigError(f"config key model.z_dim: {m.z_dim} is smaller than the "
                      f"{latent_chunks(size)} latent chunks ResNet G splits z into at image size "
                      f"{size}; use at least that (BigGAN: 120)")
  if attribute_classes(config) and not (isinstance(m.shared_dim, int) and m.shared_dim > 0):
    raise ConfigError(f"config key model.shared_dim: must be a positive integer (the shared class "
                      f"embedding; 0 would make G ignore its labels), got {m.shared_dim!r}")


MODELS.register("resnet")(ModelSpec(_build_resnet, (32, 64, 128, 256), _validate_resnet,
                                    reads=frozenset({"shared_dim", "attention_resolution"})))


def build_models(config: ml_collections.ConfigDict) -> tuple[nn.Module, nn.Module]:
  """(G, D) for `model.name`."""
  return MODELS.get(config.model.name, "model.name").build(config)
