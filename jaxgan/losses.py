"""GAN losses, picked by `loss.name` from the LOSSES registry.

Each loss maps float32 logits to scalar means: `d_loss(real, fake)` for the discriminator and
`g_loss(fake)` for the generator. WGAN-GP additionally asks the step for a gradient penalty on
random interpolates (`gradient_penalty`), which needs a per-sample critic (no BatchNorm in D).
The regularisers the step adds beside any loss are here too: R1 (`r1_penalty`), LeCam
(`lecam_anchors`, `lecam_penalty`) and BigGAN's orthogonal one on G's weights
(`orthogonal_penalty`, any model's).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections

from jaxgan.registry import Registry

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Loss:
  d_loss: Callable[[Array, Array], Array]
  g_loss: Callable[[Array], Array]
  uses_gradient_penalty: bool = False
  # The D output between "real" and "fake", for ADA's overfitting heuristic E[sign(D(real) -
  # boundary)] (StyleGAN2-ADA's logits: 0); None where there is none: a WGAN critic's loss
  # ignores a constant shift of its outputs, so their sign drifts with it.
  ada_boundary: Optional[float] = 0.0
  reads: frozenset = frozenset()  # the FAMILY_KEYS it reads

  @property
  def needs_per_sample_critic(self) -> bool:
    return self.uses_gradient_penalty


LOSSES: Registry[Loss] = Registry("loss")
# Loss keys that only some losses read (config validation refuses the others set).
FAMILY_KEYS = ("gp_weight",)

# Non-saturating (Goodfellow et al. 2014): D minimises BCE, G maximises log D(G(z)).
# softplus(-x) = -log(sigmoid(x)), computed stably.
LOSSES.register("non_saturating")(Loss(
    d_loss=lambda real, fake: jnp.mean(jax.nn.softplus(-real)) + jnp.mean(jax.nn.softplus(fake)),
    g_loss=lambda fake: jnp.mean(jax.nn.softplus(-fake)),
))

# Hinge (Lim & Ye 2017; SAGAN, BigGAN).
LOSSES.register("hinge")(Loss(
    d_loss=lambda real, fake: jnp.mean(jax.nn.relu(1.0 - real)) + jnp.mean(jax.nn.relu(1.0 + fake)),
    g_loss=lambda fake: -jnp.mean(fake),
))

# WGAN-GP (Gulrajani et al. 2017): the penalty term is added by the train step.
LOSSES.register("wgan_gp")(Loss(
    d_loss=lambda real, fake: jnp.mean(fake) - jnp.mean(real),
    g_loss=lambda fake: -jnp.mean(fake),
    uses_gradient_penalty=True,
    ada_boundary=None,
    reads=frozenset({"gp_weight"}),
))

# Least squares (Mao et al. 2017), targets a=0 (fake), b=1 (real), c=1 (what G wants).
LOSSES.register("least_squares")(Loss(
    d_loss=lambda real, fake: 0.5 * jnp.mean((real - 1.0) ** 2) + 0.5 * jnp.mean(fake**2),
    g_loss=lambda fake: 0.5 * jnp.mean((fake - 1.0) ** 2),
    ada_boundary=0.5,  # halfway between the targets: an undecided D outputs 0.5, not 0
))


def gradient_penalty(critic: Callable[[Array], Array], real: Array, fake: Array,
                     key: jax.Array) -> Array:
  """mean((||grad_x critic(x_hat)||_2 - 1)^2) at x_hat = eps * real + (1 - eps) * fake.

  `critic` maps a batch of images to per-sample logits; since each logit depends only on its own
  sample, the gradient of their sum gives every per-sample gradient in one backward pass.
  """
  eps = jax.random.uniform(key, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  x_hat = eps * real + (1.0 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x_hat)
  norms = jnp.sqrt(jnp.sum(grads.astype(jnp.float32) ** 2, axis=tuple(range(1, grads.ndim))) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def build_loss(config: ml_collections.ConfigDict) -> Loss:
  return LOSSES.get(config.loss.name, "loss.name")


def r1_penalty(critic: Callable[[Array], Array], real: Array) -> tuple[Array, Array]:
  """(E ||d critic(x) / dx||^2 over the real batch (Mescheder et al. 2018), the critic's logits
  on it): the step weighs the penalty by gamma / 2 and feeds the logits to ADA's statistic.
  Summing the logits gives every sample's own input gradient in one backward pass."""
  def summed(x):
    logits = critic(x)
    return jnp.sum(logits), logits

  grads, logits = jax.grad(summed, has_aux=True)(real)
  return jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3))), logits


def lecam_anchors(ema: dict, real_logits: Array, fake_logits: Array, decay: float,
                  updates: Array) -> tuple[dict, dict]:
  """(new EMA state, anchors) from this batch's mean D outputs, as LeCam's reference code does
  (TF's assign_moving_average with zero_debias=True, updated before the penalty is taken).

  `ema` {'real', 'fake'} holds the biased averages (from 0); the anchors divide them by
  1 - decay^updates, `updates` counting this one, so they are unbiased from the first step (a
  plain EMA from 0 would pull every logit towards 0 for the first few hundred steps)."""
  means = {"real": jnp.mean(real_logits), "fake": jnp.mean(fake_logits)}
  ema = {k: decay * ema[k] + (1.0 - decay) * jax.lax.stop_gradient(means[k]) for k in means}
  correction = 1.0 - jnp.asarray(decay, jnp.float32) ** updates
  return ema, {k: v / correction for k, v in ema.items()}


def lecam_penalty(real_logits: Array, fake_logits: Array, anchor_real: Array,
                  anchor_fake: Array) -> Array:
  """LeCam regulariser (Tseng et al. 2021) as its reference code computes it:
  E relu(D(x) - a_F)^2 + E relu(a_R - D(G(z)))^2, with the anchors a_R, a_F moving averages of
  D's outputs on reals and fakes (held constant here). The ReLU (not in the paper's eq. 3) leaves
  a real scored below the fakes' anchor, or a fake above the reals', to the adversarial loss."""
  anchor_real, anchor_fake = jax.lax.stop_gradient(anchor_real), jax.lax.stop_gradient(anchor_fake)
  return (jnp.mean(jnp.square(jax.nn.relu(real_logits - anchor_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(anchor_real - fake_logits))))


def orthogonal_penalty(params: Any) -> jnp.ndarray:
  """BigGAN's off-diagonal orthogonal regulariser: sum over every conv/dense kernel (leaves named
  'kernel' with ndim >= 2, reshaped to W [-1, out]) of ||W^T W * (1 - I)||_F^2.

  Only correlations *between* output filters are penalised, not their norms (which SN sets).
  Embeddings are excluded (BigGAN excludes its shared embedding). BigGAN adds beta = 1e-4 times
  the gradient 2 (W^T W * (1 - I)) W by hand, which is the gradient of *half* this penalty: add
  `0.5 * beta * orthogonal_penalty(g_params)` to the G loss to reproduce it.
  """
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    last = path[-1] if path else None
    name = getattr(last, "key", getattr(last, "name", None))
    if name != "kernel" or jnp.ndim(leaf) < 2:
      continue
    total = total + _off_diagonal_gram_sq(
        jnp.reshape(leaf, (-1, leaf.shape[-1])).astype(jnp.float32))
  return total


def _off_diagonal_gram_sq(w: jnp.ndarray) -> jnp.ndarray:
  """sum_{i != j} (w_i . w_j)^2 over the columns w_i of w [rows, cols].

  With fewer rows than columns (G's projection layer: z chunk -> 4*4*C, a 16k x 16k Gram at 128)
  the same value comes from the small Gram: ||W^T W||_F^2 = ||W W^T||_F^2, minus the diagonal
  sum_i ||w_i||^4. The subtraction cannot cancel badly there: W^T W has rank <= rows < cols, so
  its off-diagonal part is at least ~1/rows of the diagonal part.
  """
  rows, cols = w.shape
  if rows < cols:
    small = w @ w.T
    return jnp.sum(small * small) - jnp.sum(jnp.sum(w * w, axis=0) ** 2)
  gram = w.T @ w
  off = gram * (1.0 - jnp.eye(cols, dtype=jnp.float32))
  return jnp.sum(off * off)
