"""UpConv / DownConv: every lowering computes nn.ConvTranspose / nn.Conv (4x4, stride 2, SAME)
and its gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.models.layers import (DOWNSAMPLE_IMPLS, UPSAMPLE_IMPLS, DownConv, UpConv,
                                  resolve_downsample_impl, resolve_upsample_impl)
from tests.conftest import jaxpr_equations


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


def _strided_conv(features):
  return nn.Conv(features, (4, 4), strides=(2, 2), padding="SAME")


@pytest.mark.parametrize("impl", DOWNSAMPLE_IMPLS)
@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 16, 12, 5)])
def test_downconv_matches_strided_conv(impl, shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  reference = _strided_conv(4)
  variables = reference.init(jax.random.PRNGKey(1), x)
  variables = jax.tree_util.tree_map(lambda v: v + 0.1, variables)  # non-zero bias too
  layer = DownConv(4, impl=impl)
  np.testing.assert_allclose(layer.apply(variables, x), reference.apply(variables, x),
                             rtol=1e-5, atol=1e-5)
  b, h, w, _ = shape
  weights = jax.random.normal(jax.random.PRNGKey(2), (b, h // 2, w // 2, 4))
  loss = lambda module: lambda v, x: jnp.sum(module.apply(v, x) * weights)
  got = jax.grad(loss(layer), (0, 1))(variables, x)
  want = jax.grad(loss(reference), (0, 1))(variables, x)
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("impl", DOWNSAMPLE_IMPLS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_downconv_has_the_parameters_of_nn_conv(impl, use_bias):
  """Parameter trees, shapes and dtypes as nn.Conv's: checkpoints load whichever lowering."""
  x = jnp.zeros((1, 8, 8, 3))
  ours = jax.eval_shape(lambda: DownConv(6, use_bias=use_bias, impl=impl).init(
      jax.random.PRNGKey(0), x))
  theirs = jax.eval_shape(lambda: nn.Conv(6, (4, 4), strides=(2, 2), padding="SAME",
                                          use_bias=use_bias).init(jax.random.PRNGKey(0), x))
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
  shapes = lambda t: [(l.shape, l.dtype) for l in jax.tree_util.tree_leaves(t)]
  assert shapes(ours) == shapes(theirs)


@pytest.mark.parametrize("impl", DOWNSAMPLE_IMPLS)
def test_downconv_bfloat16_compute(impl):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
  variables = _strided_conv(4).init(jax.random.PRNGKey(1), x)
  y = DownConv(4, impl=impl, dtype=jnp.bfloat16).apply(variables, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(y.astype(jnp.float32), _strided_conv(4).apply(variables, x),
                             rtol=0.05, atol=0.05)


def test_downconv_rejects_unknown_impl_and_odd_sizes():
  with pytest.raises(ValueError, match="s2d"):
    DownConv(2, impl="fft").init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 1)))
  for impl in DOWNSAMPLE_IMPLS:
    with pytest.raises(ValueError, match="even"):
      DownConv(2, impl=impl).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 4, 1)))


def test_downsample_auto_stays_strided_until_measured_on_a_gpu():
  assert resolve_downsample_impl("auto", "cpu") == "strided"
  assert resolve_downsample_impl("auto", "gpu") == "strided"
  assert resolve_downsample_impl("auto") == "strided"
  assert resolve_downsample_impl("s2d", "cpu") == "s2d"


def test_subpixel_kernel_selection_runs_at_highest_precision():
  """The 0/1 selection that builds the sub-pixel kernel is exact only at HIGHEST: the default
  would round the kernel and its gradient to TF32 on GPUs (CPU computes float32 either way, so
  the program is what is checked)."""
  layer = UpConv(4, impl="subpixel", dtype=jnp.bfloat16)
  x = jnp.ones((1, 3, 3, 2))
  variables = layer.init(jax.random.PRNGKey(0), x)
  jaxpr = jax.make_jaxpr(jax.grad(lambda v: layer.apply(v, x).astype(jnp.float32).sum()))(
      variables)
  dots = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 2  # the selection forward, and its transpose for the kernel's gradient
  for eqn in dots:
    assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2, eqn


class _ResNetLayer(nn.Module):
  """The ResNet's spectrally normalised conv or dense layer, in bfloat16."""
  dense: bool

  @nn.compact
  def __call__(self, x):
    from jaxgan.models import resnet
    if self.dense:
      return resnet._sn_dense(x, 2, train=False, dtype=jnp.bfloat16, name="layer")
    return resnet._sn_conv(x, 2, 3, train=False, dtype=jnp.bfloat16, name="layer")


@pytest.mark.parametrize("layer,shape", [
    (UpConv(2, dtype=jnp.bfloat16), (8, 8, 8, 3)),
    (DownConv(2, dtype=jnp.bfloat16), (8, 32, 32, 3)),
    (_ResNetLayer(dense=False), (8, 16, 16, 3)), (_ResNetLayer(dense=True), (2048, 3))])
def test_bfloat16_bias_gradients_are_summed_in_float32(layer, shape):
  """A bias's gradient is the sum of the output's over batch x height x width: here 2048 ones
  per channel, which bfloat16 (8 significant bits) cannot count past 256 (DCGAN-64's first D
  layer's was 38 % off at batch 64). The outputs stay bfloat16; the parameter trees are Flax's."""
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  variables = layer.init(jax.random.PRNGKey(1), x)
  assert layer.apply(variables, x).dtype == jnp.bfloat16
  params = variables["params"]
  grads = jax.grad(lambda p: jnp.sum(layer.apply({**variables, "params": p}, x)
                                     .astype(jnp.float32)))(params)
  bias = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if path[-1].key == "bias"]
  assert len(bias) == 1 and bias[0].dtype == jnp.float32
  np.testing.assert_array_equal(bias[0], np.full(2, 2048.0, np.float32))
  # Whatever a backend's reduction order (XLA:CPU happens to sum the dense layer's 2048 exactly
  # in bfloat16): no sum of the gradient is taken in bfloat16.
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(
      layer.apply({**variables, "params": p}, x).astype(jnp.float32))))(params)
  sums = [str(eqn.invars[0].aval) for eqn in jaxpr_equations(jaxpr.jaxpr)
          if eqn.primitive.name == "reduce_sum"]
  assert sums and not [s for s in sums if s.startswith("bfloat16")], sums
