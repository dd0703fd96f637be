"""UpConv: every lowering computes nn.ConvTranspose(4x4, stride 2, SAME) and its gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.models.layers import UPSAMPLE_IMPLS, UpConv, resolve_upsample_impl


@pytest.mark.parametrize("impl", UPSAMPLE_IMPLS)
def test_upconv_matches_conv_transpose(impl):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 6, 3))
  reference = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding="SAME")
  variables = reference.init(jax.random.PRNGKey(1), x)
  variables = jax.tree_util.tree_map(lambda v: v + 0.1, variables)  # non-zero bias too
  layer = UpConv(4, impl=impl)
  np.testing.assert_allclose(layer.apply(variables, x), reference.apply(variables, x), atol=1e-5)
  weights = jax.random.normal(jax.random.PRNGKey(2), (2, 10, 12, 4))
  loss = lambda module: lambda v, x: jnp.sum(module.apply(v, x) * weights)
  got = jax.grad(loss(layer), (0, 1))(variables, x)
  want = jax.grad(loss(reference), (0, 1))(variables, x)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_unknown_impl_is_rejected():
  with pytest.raises(ValueError, match="phase_grad"):
    UpConv(2, impl="fft").init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 1)))


def test_auto_picks_the_lowering_measured_fastest_per_backend():
  assert resolve_upsample_impl("auto", "cpu") == "phase_grad"
  assert resolve_upsample_impl("auto", "gpu") == "subpixel"
  assert resolve_upsample_impl("dilated", "gpu") == "dilated"
