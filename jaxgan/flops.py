"""Analytic FLOPs of a model from its layer shapes (for benchmark MFU figures).

Walks the jaxpr of a forward pass and counts multiply-adds of every convolution and matmul from
their operand shapes. A transposed convolution (an input-dilated convolution) is counted without
the multiplications by inserted zeros: what the layer needs, not what one lowering spends.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def _conv_macs(eqn) -> float:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  kernel_spatial = np.prod([rhs[d] for d in dn.rhs_spec[2:]])
  in_features = rhs[dn.rhs_spec[1]]  # per group
  dilation = np.prod(eqn.params.get("lhs_dilation") or (1,))
  return float(np.prod(out)) * kernel_spatial * in_features / dilation


def _dot_macs(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  contract = np.prod([lhs[d] for d in lhs_contract]) if lhs_contract else 1
  return float(np.prod(eqn.outvars[0].aval.shape)) * contract


def _inner(param) -> list:
  """The jaxprs a primitive's parameter holds: one (pjit, custom_vjp_call, remat, scan's body)
  or several (cond's branches)."""
  items = param if isinstance(param, (tuple, list)) else [param]
  return [j for j in (getattr(p, "jaxpr", p) for p in items) if hasattr(j, "eqns")]


def _walk(jaxpr) -> float:
  macs = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      macs += _conv_macs(eqn)
    elif name == "dot_general":
      macs += _dot_macs(eqn)
    elif name == "cond":  # one branch runs: the costliest is counted
      macs += max([_walk(b) for b in _inner(eqn.params["branches"])], default=0.0)
      continue
    # A scan runs its body `length` times; a while loop's trip count is not known from the
    # jaxpr, so its body counts once (no model has one).
    repeat = eqn.params.get("length", 1) if name == "scan" else 1
    for param in eqn.params.values():
      macs += repeat * sum(_walk(inner) for inner in _inner(param))
  return macs


def forward_flops(fn: Callable[..., Any], *args) -> float:
  """FLOPs (2 per multiply-add) of one call of `fn` on `args`."""
  return 2.0 * _walk(jax.make_jaxpr(fn)(*args).jaxpr)


def train_step_flops_per_image(g_forward: float, d_forward: float, n_critic: int = 1) -> float:
  """FLOPs per image of one train step, from per-image forward FLOPs of G and D.

  A backward pass costs about twice its forward (input and weight gradients). Per D update: D
  forward and backward on the real and the fake batch (2 x 3 D); per G update: G forward and
  backward (3 G) and D forward plus its input-gradient pass (2 D). Extra critic updates add a
  G forward each (1 G + 6 D). Regularisers are not counted (R1's and WGAN-GP's double backward
  passes, the orthogonal penalty): MFU understates configs that use them.
  """
  return 3 * g_forward + 8 * d_forward + (n_critic - 1) * (g_forward + 6 * d_forward)
