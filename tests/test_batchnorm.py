"""The fused BatchNorm + activation (models/batchnorm.py) against nn.BatchNorm then the activation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import models
from jaxgan.models.batchnorm import (AffineBatchNormAct, BatchNormAct, activation,
                                     resolve_norm_impl)
from jaxgan.models.dcgan import Discriminator, Generator


def _pair(slope, dtype, train=True):
  kw = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
  flax_bn = nn.BatchNorm(**kw)
  fused = BatchNormAct(slope=slope, **kw)
  return (lambda v, x: _apply_flax(flax_bn, slope, v, x, train),
          lambda v, x: fused.apply(v, x, mutable=["batch_stats"] if train else False), flax_bn, fused)


def _apply_flax(module, slope, v, x, train):
  if not train:
    return activation(module.apply(v, x), slope)
  y, updates = module.apply(v, x, mutable=["batch_stats"])
  return activation(y, slope), updates


def _variables(fused, x):
  v = fused.init(jax.random.PRNGKey(0), x)
  c = x.shape[-1]
  # Non-trivial parameters and running statistics, so every term of the gradient matters.
  return {"params": {"scale": jnp.linspace(0.5, 1.5, c), "bias": jnp.linspace(-0.3, 0.3, c)},
          "batch_stats": {"mean": jnp.linspace(-1, 1, c), "var": jnp.linspace(0.5, 2, c)}}, v


@pytest.mark.parametrize("slope", [0.0, 0.2])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_matches_flax_batchnorm_then_activation(slope, dtype):
  x = (jax.random.normal(jax.random.PRNGKey(1), (4, 5, 5, 6)) * 2 + 0.7).astype(dtype)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  run_flax, run_fused, flax_bn, fused = _pair(slope, dtype)
  v, v_init = _variables(fused, x)
  # One variable tree: a checkpoint of either loads into the other.
  v_flax = flax_bn.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, v_init) == jax.tree_util.tree_map(jnp.shape, v_flax)
  assert jax.tree_util.tree_map(lambda a: a.dtype, v_init) == jax.tree_util.tree_map(
      lambda a: a.dtype, v_flax)

  def loss(run):
    def f(params, x):
      y, updates = run({"params": params, "batch_stats": v["batch_stats"]}, x)
      assert y.dtype == dtype
      return jnp.sum(y.astype(jnp.float32) * w), updates
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(v["params"], x)

  (l_a, stats_a), (gp_a, gx_a) = loss(run_flax)
  (l_b, stats_b), (gp_b, gx_b) = loss(run_fused)
  # float32: rounding only. bfloat16: Flax rounds to bfloat16 before the activation and keeps
  # bfloat16 in its gradient; the fused gradient is float32 until dx, so they differ by ~2^-8.
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
  np.testing.assert_allclose(l_a, l_b, **tol)
  for a, b in zip(jax.tree_util.tree_leaves((gp_a, gx_a, stats_a)),
                  jax.tree_util.tree_leaves((gp_b, gx_b, stats_b))):
    scale = float(jnp.max(jnp.abs(a.astype(jnp.float32))))
    np.testing.assert_allclose(np.asarray(a, np.float32) / scale, np.asarray(b, np.float32) / scale,
                               **tol)
  # The running statistics moved (momentum 0.9 towards the batch's), identically.
  assert not np.allclose(stats_b["batch_stats"]["mean"], v["batch_stats"]["mean"])


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_fused_eval_mode_uses_the_running_statistics(slope):
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 4, 5)) * 3
  run_flax, run_fused, _, fused = _pair(slope, jnp.float32, train=False)
  v, _ = _variables(fused, x)
  np.testing.assert_allclose(run_flax(v, x), run_fused(v, x), rtol=1e-6, atol=1e-6)


def test_fused_gradient_is_differentiable_again():
  """Second derivatives (of the input gradient's norm, as a gradient penalty takes them) agree
  with differentiating Flax's twice: the hand-written backward is itself differentiable."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3, 4)) + 0.3
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  run_flax, run_fused, _, fused = _pair(0.2, jnp.float32)
  v, _ = _variables(fused, x)

  def second(run):
    def grad_norm(params, x):
      out = lambda x: jnp.sum(run({"params": params, "batch_stats": v["batch_stats"]}, x)[0] * w)
      return jnp.sum(jax.grad(out)(x) ** 2)
    return jax.grad(grad_norm, argnums=(0, 1))(v["params"], x)

  (pa, xa), (pb, xb) = second(run_flax), second(run_fused)
  # dx depends on the bias only through the activation's mask: its second derivative is 0.
  for a in (pa["scale"], xa):
    assert float(jnp.max(jnp.abs(a))) > 1e-3  # a real second-order signal
  for a, b in ((pa["scale"], pb["scale"]), (pa["bias"], pb["bias"]), (xa, xb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("slope", [0.0, 0.2])
def test_activation_derivative_at_exactly_zero_matches_jax_nn(slope):
  """A constant channel with bias 0 normalises to z == 0 everywhere: relu'(0) = 0,
  leaky_relu'(0) = 1, as jax.nn defines them, and ReLU's output is +0.0."""
  x = jnp.concatenate([jnp.full((4, 2, 2, 1), 3.0),
                       jax.random.normal(jax.random.PRNGKey(1), (4, 2, 2, 1))], axis=-1)
  w = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  run_flax, run_fused, _, fused = _pair(slope, jnp.float32)
  v = fused.init(jax.random.PRNGKey(0), x)  # scale 1, bias 0
  grads = [jax.grad(lambda p: jnp.sum(run({**v, "params": p}, x)[0] * w))(v["params"])
           for run in (run_flax, run_fused)]
  assert float(grads[0]["bias"][0]) == pytest.approx(0.0 if slope == 0 else float(jnp.sum(w[..., 0])))
  for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  if slope == 0.0:
    assert not np.any(np.signbit(np.asarray(run_fused(v, x)[0][..., 0])))


def test_output_dtype_and_statistics_follow_nn_batchnorm():
  """dtype None: x's dtype promoted with the float32 parameters; an explicit bfloat16 output
  still takes its statistics from the unrounded float32 input."""
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 3, 3, 2)) * 5 + 100
  for dtype, x_in in ((None, x.astype(jnp.bfloat16)), (jnp.bfloat16, x)):
    kw = dict(use_running_average=False, momentum=0.9, dtype=dtype)
    flax_bn, fused = nn.BatchNorm(**kw), BatchNormAct(slope=0.2, **kw)
    v = flax_bn.init(jax.random.PRNGKey(0), x_in)
    y_a, s_a = flax_bn.apply(v, x_in, mutable=["batch_stats"])
    y_b, s_b = fused.apply(v, x_in, mutable=["batch_stats"])
    assert y_a.dtype == y_b.dtype
    for a, b in zip(jax.tree_util.tree_leaves(s_a), jax.tree_util.tree_leaves(s_b)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


def test_dcgan_norm_impls_agree_and_share_parameters():
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 8))
  labels = jnp.array([0, 1, 2, 1])
  g = lambda impl: Generator(image_size=16, num_classes=3, z_dim=8, width=8, embed_dim=4,
                             norm_impl=impl)
  d = lambda impl: Discriminator(image_size=16, num_classes=3, width=8, norm_impl=impl)
  gv = g("flax").init(jax.random.PRNGKey(1), z, labels)
  assert (jax.tree_util.tree_structure(gv)
          == jax.tree_util.tree_structure(g("fused").init(jax.random.PRNGKey(1), z, labels)))
  images = {}
  for impl in ("flax", "fused"):
    images[impl], _ = g(impl).apply(gv, z, labels, mutable=["batch_stats"])
  np.testing.assert_allclose(images["flax"], images["fused"], rtol=1e-5, atol=1e-5)
  dv = d("flax").init(jax.random.PRNGKey(2), images["flax"], labels)
  assert (jax.tree_util.tree_structure(dv)
          == jax.tree_util.tree_structure(d("fused").init(jax.random.PRNGKey(2), images["flax"],
                                                          labels)))

  def d_grads(impl):
    f = lambda p, x: jnp.sum(d(impl).apply({**dv, "params": p}, x, labels,
                                             mutable=["batch_stats"])[0] ** 2)
    return jax.grad(f, argnums=(0, 1))(dv["params"], images["flax"])

  for a, b in zip(jax.tree_util.tree_leaves(d_grads("flax")),
                  jax.tree_util.tree_leaves(d_grads("fused"))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  # ...and really two implementations: only 'fused' has a custom VJP.
  has_custom_vjp = lambda impl: "custom_vjp_call" in str(jax.make_jaxpr(
      lambda x: d(impl).apply(dv, x, labels, mutable=["batch_stats"]))(images["flax"]))
  assert has_custom_vjp("fused") and not has_custom_vjp("flax")


def test_norm_impl_auto_and_the_builder(make_config):
  assert resolve_norm_impl("auto", "cpu") == "fused"
  assert resolve_norm_impl("auto", "gpu") == "flax" and resolve_norm_impl("auto", "tpu") == "flax"
  assert resolve_norm_impl("flax", "cpu") == "flax"
  g, d = models.build_models(make_config())
  assert g.norm_impl == d.norm_impl == resolve_norm_impl("auto")
  g, _ = models.build_models(make_config(**{"model.name": "resnet", "model.norm_impl": "fused"}))
  assert g.norm_impl == "fused"
  g, d = models.build_models(make_config(**{"model.norm_impl": "flax"}))
  assert g.norm_impl == d.norm_impl == "flax"


def test_per_sample_affine_matches_batchnorm_then_affine_then_relu():
  """Conditional BatchNorm's form: a per-sample scale and bias [N, 1, 1, C] (from the class and
  z), gradients for x and both of them, first and second order."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 3, 5)) * 2 + 0.5
  scale = 1 + 0.3 * jax.random.normal(jax.random.PRNGKey(2), (4, 1, 1, 5))
  bias = 0.3 * jax.random.normal(jax.random.PRNGKey(3), (4, 1, 1, 5))
  w = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  kw = dict(use_running_average=False, momentum=0.9, epsilon=1e-5)
  plain = nn.BatchNorm(use_scale=False, use_bias=False, **kw)
  fused = AffineBatchNormAct(slope=0.0, **kw)
  v = plain.init(jax.random.PRNGKey(0), x)
  assert (jax.tree_util.tree_structure(v)
          == jax.tree_util.tree_structure(fused.init(jax.random.PRNGKey(0), x, scale, bias)))
  runs = {
      "flax": lambda x, s, b: jax.nn.relu(plain.apply(v, x, mutable=["batch_stats"])[0] * s + b),
      "fused": lambda x, s, b: fused.apply(v, x, s, b, mutable=["batch_stats"])[0],
  }
  first = {k: jax.grad(lambda x, s, b: jnp.sum(f(x, s, b) * w), argnums=(0, 1, 2))(x, scale, bias)
           for k, f in runs.items()}
  for a, b in zip(first["flax"], first["fused"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  second = {k: jax.grad(lambda s: jnp.sum(jax.grad(
      lambda x: jnp.sum(f(x, s, bias) * w))(x) ** 2))(scale) for k, f in runs.items()}
  assert float(jnp.max(jnp.abs(second["flax"]))) > 1e-3
  np.testing.assert_allclose(second["flax"], second["fused"], rtol=1e-4, atol=1e-5)


def test_resnet_generator_norm_impls_agree_and_share_parameters():
  """ResNet G with the fused conditional BatchNorm: one parameter tree, the same images and
  running statistics in train mode (gradients: the per-sample test above)."""
  from jaxgan.models.resnet import ResNetGenerator
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
  labels = jnp.array([0, 1, 2, 1])
  g = lambda impl: ResNetGenerator(image_size=32, num_classes=(3,), z_dim=16, width=8,
                                   max_width=16, shared_dim=8, norm_impl=impl)
  v = g("flax").init(jax.random.PRNGKey(1), z, labels, train=True)
  assert (jax.tree_util.tree_structure(v)
          == jax.tree_util.tree_structure(g("fused").init(jax.random.PRNGKey(1), z, labels,
                                                          train=True)))
  out = {impl: g(impl).apply(v, z, labels, train=True, mutable=["batch_stats"])
         for impl in ("flax", "fused")}
  for a, b in zip(jax.tree_util.tree_leaves(out["flax"]), jax.tree_util.tree_leaves(out["fused"])):
    assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-5 * max(np.max(np.abs(a)), 1.0)
  has_custom_vjp = lambda impl: "custom_vjp_call" in str(jax.make_jaxpr(
      lambda z: g(impl).apply(v, z, labels, train=True, mutable=["batch_stats"]))(z))
  assert has_custom_vjp("fused") and not has_custom_vjp("flax")
