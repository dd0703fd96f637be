"""BatchNorm followed by ReLU / LeakyReLU, with a hand-written gradient ('fused').

`BatchNormAct` has exactly nn.BatchNorm's variables ('params': scale, bias; 'batch_stats': mean,
var) and computes act(nn.BatchNorm(x)), so checkpoints move freely between `model.norm_impl`
'flax' (nn.BatchNorm, then the activation, differentiated by JAX) and 'fused' (this module).
`AffineBatchNormAct` is the same with a given per-sample scale and bias (conditional BatchNorm).

Why: differentiating BatchNorm + activation leaves XLA separate reductions for the scale, bias,
mean and variance gradients and an activation mask or output kept from the forward pass. The
closed-form gradient needs two passes over the activation: one multi-output reduction
(sum dz, sum dz * x_hat) and one elementwise pass for dx, recomputing x_hat and the activation's
mask from the saved input x instead of storing them. On XLA:CPU that made forward + backward
1.2-1.8x faster per layer (docs/benchmarks.md); on accelerators the same layers are memory-bound,
so the expectation (not yet measured there) is that the saved memory traffic pays there too.

Numerics: statistics and normalisation in float32 whatever the input dtype (as Flax does), one
rounding to the compute dtype at the output; the batch variance is the biased one (as Flax's).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

NORM_IMPLS = ("auto", "flax", "fused")


def resolve_norm_impl(impl: str, backend: str | None = None) -> str:
  """'auto' -> 'fused' on XLA:CPU (measured faster there: docs/benchmarks.md), 'flax' on GPUs and
  TPUs until a measurement there says otherwise. Both have one parameter tree."""
  if impl != "auto":
    return impl
  return "fused" if (backend or jax.default_backend()) == "cpu" else "flax"


def activation(z: jnp.ndarray, slope: float) -> jnp.ndarray:
  """ReLU (slope 0, as jax.nn.relu) or LeakyReLU(slope) (as jax.nn.leaky_relu)."""
  return jax.nn.relu(z) if slope == 0.0 else jax.nn.leaky_relu(z, slope)


def _passes(z: jnp.ndarray, slope: float) -> jnp.ndarray:
  """Where the activation's derivative is 1, matching jax.nn's: relu'(0) = 0, leaky_relu'(0) = 1."""
  return z > 0 if slope == 0.0 else z >= 0


def _activate(z: jnp.ndarray, slope: float, passes: jnp.ndarray) -> jnp.ndarray:
  """z where `passes`, else slope * z; for ReLU exactly 0 there (never -0.0, or NaN from 0 * inf)."""
  return jnp.where(passes, z, 0.0 if slope == 0.0 else slope * z)


def _moments(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-channel mean and biased variance in float32, E[x^2] - E[x]^2 as Flax's fast variance (one
  pass: both sums come from one reduction over the batch and space)."""
  xf = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(xf, axes)
  var = jnp.maximum(jnp.mean(xf * xf, axes) - mean * mean, 0.0)
  return mean, var


def _pre_activation(x, mean, inv, scale, bias):
  # One expression for the forward pass and the backward's recomputation, so that both round
  # alike and agree on the activation's mask even where z is within an ulp of 0.
  return (x.astype(jnp.float32) - mean) * (inv * scale) + bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_act(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, epsilon: float,
                   slope: float, dtype: Any) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(act(x_hat * scale + bias) in `dtype`, batch mean, batch variance), x_hat being x normalised
  over all but the last axis; `scale` and `bias` are per channel [C] or per sample [N, 1, 1, C]
  (conditional BatchNorm).

  Reverse-mode only (as every custom_vjp), to any order: the backward pass is plain JAX.
  The mean and variance are returned for the running statistics only: their cotangents are
  ignored, so callers must not differentiate through them (BatchNormAct stops their gradient).
  """
  return _forward(x, scale, bias, epsilon, slope, dtype)[0]


def _forward(x, scale, bias, epsilon, slope, dtype):
  mean, var = _moments(x)
  inv = jax.lax.rsqrt(var + epsilon)
  z = _pre_activation(x, mean, inv, scale, bias)
  y = _activate(z, slope, _passes(z, slope)).astype(dtype)
  return (y, mean, var), (x, mean, inv, scale, bias)


def _sum_to(t: jnp.ndarray, shape: tuple[int, ...]) -> jnp.ndarray:
  """`t` summed over the axes that `shape` broadcasts ([C]: all but the last; [N, 1, 1, C]: space)."""
  full = (1,) * (t.ndim - len(shape)) + tuple(shape)
  axes = tuple(i for i, (n, m) in enumerate(zip(t.shape, full)) if m == 1 and n != 1)
  return jnp.sum(t, axes, keepdims=True).reshape(shape)


def _backward(epsilon, slope, dtype, residuals, cotangents):
  del epsilon, dtype  # inv already holds epsilon; dx takes x's dtype
  x, mean, inv, scale, bias = residuals
  dy = cotangents[0].astype(jnp.float32)  # cotangents of mean and var: see the docstring
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  x_hat = (x.astype(jnp.float32) - mean) * inv
  dz = _activate(dy, slope, _passes(_pre_activation(x, mean, inv, scale, bias), slope))
  dbias = _sum_to(dz, bias.shape)
  dscale = _sum_to(dz * x_hat, scale.shape)
  # d/dx of (x - mean) * inv with mean and inv functions of the batch: the textbook BN gradient,
  # dx = inv / M * (M dx_hat - sum(dx_hat) - x_hat sum(dx_hat x_hat)) with dx_hat = dz * scale.
  if scale.ndim == 1:  # per channel: the two sums are scale * dbias and scale * dscale
    dx = (scale * inv / count) * (count * dz - dbias - x_hat * dscale)
  else:  # per sample (conditional BatchNorm)
    dx_hat = dz * scale
    dx = (inv / count) * (count * dx_hat - jnp.sum(dx_hat, axes)
                          - x_hat * jnp.sum(dx_hat * x_hat, axes))
  return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


batch_norm_act.defvjp(_forward, _backward)


def _normalize_act(module: nn.Module, x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                   dtype: Any) -> jnp.ndarray:
  """act(BatchNorm(x) * scale + bias) for `module` (BatchNormAct or AffineBatchNormAct): declares
  its 'batch_stats' mean and var as nn.BatchNorm does and updates them by its running-average
  rule (not while initialising)."""
  features = (x.shape[-1],)
  ra_mean = module.variable("batch_stats", "mean", lambda: jnp.zeros(features, jnp.float32))
  ra_var = module.variable("batch_stats", "var", lambda: jnp.ones(features, jnp.float32))
  if module.use_running_average:
    inv = jax.lax.rsqrt(ra_var.value + module.epsilon)
    z = _pre_activation(x, ra_mean.value, inv, scale, bias)
    return _activate(z, module.slope, _passes(z, module.slope)).astype(dtype)
  y, mean, var = batch_norm_act(x, scale, bias, module.epsilon, module.slope, dtype)
  if not module.is_initializing():
    m = module.momentum
    ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
    ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(var)
  return y


class BatchNormAct(nn.Module):
  """act(nn.BatchNorm(x)) with nn.BatchNorm's variables and running-average rule; `slope` 0 is
  ReLU, otherwise LeakyReLU(slope). Normalises over all axes but the last."""
  slope: float = 0.0
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None  # output dtype; None: x's promoted with param_dtype (as nn.BatchNorm)
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones, features, self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
    # As nn.BatchNorm: statistics from x as given, the output in `dtype`, or in x's dtype promoted
    # with the parameters' when `dtype` is None.
    return _normalize_act(self, x, scale, bias,
                          self.dtype or jnp.result_type(x.dtype, self.param_dtype))


class AffineBatchNormAct(nn.Module):
  """act(BatchNorm(x) * scale + bias) with the scale and bias given, per channel [C] or per sample
  [N, 1, 1, C]: conditional BatchNorm's normalisation, affine and activation in one op. Its
  variables are those of nn.BatchNorm(use_scale=False, use_bias=False): running statistics only."""
  slope: float = 0.0
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None  # output dtype; None: x's promoted with the scale's and bias's

  @nn.compact
  def __call__(self, x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    return _normalize_act(self, x, scale, bias,
                          self.dtype or jnp.result_type(x.dtype, scale.dtype, bias.dtype))


def norm_act(impl: str, slope: float, use_running_average: bool, dtype: Any, name: str,
             momentum: float = 0.9, epsilon: float = 1e-5) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """BatchNorm (by default DCGAN's and BigGAN's momentum and epsilon), then ReLU (slope 0) or
  LeakyReLU(slope): Flax's nn.BatchNorm differentiated by JAX ('flax') or BatchNormAct
  ('fused'); one parameter tree for both, under `name`."""
  kwargs = dict(use_running_average=use_running_average, momentum=momentum, epsilon=epsilon,
                dtype=dtype, name=name)
  if impl == "fused":
    return BatchNormAct(slope=slope, **kwargs)
  if impl != "flax":
    raise ValueError(f"unknown BatchNorm impl {impl!r}; use 'flax' or 'fused'")
  norm = nn.BatchNorm(**kwargs)
  return lambda h: activation(norm(h), slope)
