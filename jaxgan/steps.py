"""The pure train step: `(state, batch, rng) -> (state, metrics)`.

One step = `train.n_critic` D updates (each on its own slice of the real batch, fresh z), every
`loss.r1_interval`-th step StyleGAN2's separate lazy-R1 D phase, then one G update through the
*updated* D. G's forward for the last D update is reused for the G update
through `jax.vjp`, so G runs forward once per G update, not twice.

A step whose losses, gradients, new optimizer states or new running statistics (BatchNorm's,
spectral norm's) are not finite leaves the state unchanged
(except the step count and the skip streak), so one bad batch never poisons the parameters.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxgan import augment as augment_lib
from jaxgan import losses as losses_lib
from jaxgan.config import r1_period
from jaxgan.state import TrainState

Batch = dict[str, jnp.ndarray]
Metrics = dict[str, jnp.ndarray]


def to_model_range(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [0, 255] -> float32 [-1, 1] (done on device: 4x fewer bytes cross the host link)."""
  return images.astype(jnp.float32) * (2.0 / 255.0) - 1.0


def applied_d_updates(state: TrainState, n_critic: int) -> jnp.ndarray:
  """D updates applied before this step, float32 (LeCam's debiasing raises its decay to this
  power): n_critic per step, except on steps skipped as non-finite, which revert all of them."""
  return (state.step - state.nonfinite_total).astype(jnp.float32) * n_critic


def random_flip(images: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
  """Mirrors each NHWC image left-right (the width axis) with probability 1/2: a pure function of
  `key`, so a resumed run flips exactly as an uninterrupted one."""
  flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1], images)


def _apply(module: nn.Module, params: Any, stats: Any, *args):
  """Calls a module in train mode, returning (output, updated BatchNorm stats)."""
  variables = {"params": params}
  if stats:
    variables["batch_stats"] = stats
  out, updates = module.apply(variables, *args, train=True, mutable=["batch_stats"])
  return out, updates.get("batch_stats", stats)


def _all_finite(*trees) -> jnp.ndarray:
  """True when every element of every leaf is finite: one scalar, computed once.

  The per-leaf flags are counted with an integer sum, not combined with jnp.all: XLA rewrote that
  AND-reduction over the stacked flags into a chain of scalar ANDs and fused a copy of it into
  each of the step's per-leaf selects (hundreds), and a tiny ResNet step took 30 s instead of
  5 s to compile on a CPU. XLA keeps the sum one reduction (tests/test_steps.py counts it)."""
  leaves = [x for t in trees for x in jax.tree_util.tree_leaves(t)]
  flags = jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])
  return jnp.sum(flags.astype(jnp.int32)) == len(leaves)


def with_power_iteration_state(stats: Any, source: Any) -> Any:
  """`stats` with its spectral-norm leaves (Flax SpectralNorm's '<param>/u' and '<param>/sigma'
  in 'batch_stats') taken from `source`; BatchNorm's mean and var stay as in `stats`."""
  if not stats:
    return stats
  flat, power = traverse_util.flatten_dict(stats), traverse_util.flatten_dict(source)
  is_power = lambda key: key[-1].endswith(("/u", "/sigma"))
  return traverse_util.unflatten_dict({k: power[k] if is_power(k) else v for k, v in flat.items()})


def ema_beta(config: ml_collections.ConfigDict, step: jnp.ndarray) -> jnp.ndarray:
  """Per-step EMA decay from a half-life in images, with StyleGAN2-ADA's ramp-up.

  Images are G's: `batch_size` per step (one G update), for the decay and the ramp-up alike (with
  n_critic > 1 D sees n_critic times as many reals, which must not end the ramp-up early). They
  are counted from the step in float32 (no int32 wrap-around on long runs).
  """
  half_life = jnp.asarray(float(config.train.ema_half_life_images), jnp.float32)
  batch = float(config.train.batch_size)
  if config.train.ema_rampup > 0:
    half_life = jnp.minimum(half_life, step.astype(jnp.float32) * batch * config.train.ema_rampup)
  return jnp.where(half_life > 0, 0.5 ** (batch / jnp.maximum(half_life, 1e-8)), 0.0)


def make_train_step(config: ml_collections.ConfigDict, generator: nn.Module,
                    discriminator: nn.Module, loss: losses_lib.Loss,
                    g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation
                    ) -> Callable[[TrainState, Batch, jax.Array], tuple[TrainState, Metrics]]:
  """Builds the pure step. `batch` holds `n_critic * batch_size` uint8 images and int32 labels
  ([n] for one attribute, [n, A] for several)."""
  n_critic = config.train.n_critic
  z_dim = config.model.z_dim
  conditional = config.data.num_classes > 0
  gp_weight = config.loss.gp_weight
  flip_reals = config.data.random_flip
  r1_gamma, r1_interval = config.loss.r1_gamma, config.loss.r1_interval
  r1_gain = 0.5 * r1_gamma * r1_period(config)  # gamma/2, times the D steps per R1 phase
  lecam_weight, lecam_decay = config.loss.lecam_weight, config.loss.lecam_ema_decay
  ortho_weight = config.model.orthogonal_reg
  aug = augment_lib.AUGMENTS.get(config.augment.name, "augment.name")
  augment = aug.make(config.augment)
  ada_boundary = loss.ada_boundary or 0.0  # validate() refuses ADA with a loss without one

  def d_update(d_params, d_stats, d_opt_state, real, fake, labels, key, aug_p, lecam,
               d_updates):
    """One D Adam step; `d_updates` counts D updates so far, this one included (LeCam)."""
    real_key, fake_key, gp_key = jax.random.split(key, 3)

    def d_objective(params):
      # The same differentiable augmentation for reals and fakes (each its own draw), so D never
      # sees an un-augmented image and G is trained through the augmentation.
      real_logits, stats = _apply(discriminator, params, d_stats, augment(real, real_key, aug_p),
                                  labels)
      # Real and fake go through D separately (own batch statistics), as in DCGAN; BatchNorm's
      # running statistics go on through both. Spectral norm's power iteration starts from the
      # incoming state in both, so it advances once per D update and real and fake logits share
      # one sigma, as in BigGAN (which scores both in one batch); the penalty pass too.
      stats = with_power_iteration_state(stats, d_stats)
      fake_logits, fake_stats = _apply(discriminator, params, stats,
                                       augment(fake, fake_key, aug_p), labels)
      value = loss.d_loss(real_logits, fake_logits)
      aux = {"d_real": jnp.mean(real_logits), "d_fake": jnp.mean(fake_logits)}
      if loss.uses_gradient_penalty and gp_weight > 0:  # at 0, no double backward for nothing
        # As R1 below: D is made 1-Lipschitz on what it judges, the augmented interpolates, with
        # the gradient taken w.r.t. the un-augmented ones through the augmentation (own draw).
        eps_key, gp_aug_key = jax.random.split(gp_key)
        critic = lambda x: _apply(discriminator, params, stats, augment(x, gp_aug_key, aug_p),
                                  labels)[0]
        gp = losses_lib.gradient_penalty(critic, real, fake, eps_key)
        value = value + gp_weight * gp
        aux["gradient_penalty"] = gp
      # Kept while LeCam is off too: a run that turns it on (--allow_config_change) starts from
      # warm anchors (their bias correction counts every D update of the run).
      new_lecam, anchors = losses_lib.lecam_anchors(lecam, real_logits, fake_logits,
                                                    lecam_decay, d_updates)
      if lecam_weight > 0:
        reg = losses_lib.lecam_penalty(real_logits, fake_logits, anchors["real"], anchors["fake"])
        value = value + lecam_weight * reg
        aux["lecam"] = reg
      else:  # unread: an inf logit's average is not kept, nor skips the step (the check below)
        new_lecam = {k: jnp.where(jnp.isfinite(v), v, lecam[k]) for k, v in new_lecam.items()}
      return value, (fake_stats, aux, real_logits, new_lecam)

    (value, (stats, aux, real_logits, lecam)), grads = jax.value_and_grad(
        d_objective, has_aux=True)(d_params)
    updates, d_opt_state = d_tx.update(grads, d_opt_state, d_params)
    return (optax.apply_updates(d_params, updates), stats, d_opt_state, value, aux, grads,
            real_logits, lecam)

  def r1_update(d_params, d_stats, d_opt_state, real, labels, key, aug_state, step):
    """StyleGAN2's lazy regularisation phase: every r1_interval-th step, one extra D Adam step on
    k * gamma/2 * R1 alone, k = r1_interval * n_critic D steps per phase (make_optimizers
    corrects D's lr and betas for the extra step). R1 is the gradient w.r.t. the un-augmented
    reals, through the augmentation as in StyleGAN2-ADA, whose sign statistic also counts this
    pass's reals. lax.cond skips the double backward on the other steps."""

    def regularise(_):
      def objective(params):
        critic = lambda x: _apply(discriminator, params, d_stats,
                                  augment(x, key, aug_state.p),
                                  labels)[0]  # SN's power-iteration state stays the main phase's
        r1, logits = losses_lib.r1_penalty(critic, real)
        return r1_gain * r1, (r1, logits)

      (_, (r1, logits)), grads = jax.value_and_grad(objective, has_aux=True)(d_params)
      updates, opt_state = d_tx.update(grads, d_opt_state, d_params)
      counted = (augment_lib.accumulate(aug_state, logits, ada_boundary) if aug.adaptive
                 else aug_state)
      return optax.apply_updates(d_params, updates), opt_state, r1, grads, counted

    def skip(_):
      zeros = jax.tree_util.tree_map(jnp.zeros_like, d_params)
      # -1 = "not computed on this step" (a penalty is >= 0, and a NaN one must stay visible):
      # step_metrics averages R1 over the due steps only.
      return d_params, d_opt_state, jnp.full((), -1.0, jnp.float32), zeros, aug_state

    return jax.lax.cond(step % r1_interval == 0, regularise, skip, None)

  def g_update(state, d_params, d_stats, fake, g_vjp, labels, key, aug_p):
    """One G Adam step: dL/dfake through the (updated, augmenting) D, then back through G's
    forward of the D phase (`g_vjp`: the step's one G forward); BigGAN's orthogonal penalty on
    top. D's statistics from this pass are not kept: they belong to the G phase."""
    g_objective = lambda x: loss.g_loss(
        _apply(discriminator, d_params, d_stats, augment(x, key, aug_p), labels)[0])
    g_value, d_fake_grad = jax.value_and_grad(g_objective)(fake)
    (g_grads,) = g_vjp(d_fake_grad)
    if ortho_weight > 0:  # BigGAN: half the penalty's gradient, see losses.py
      half = lambda p: 0.5 * ortho_weight * losses_lib.orthogonal_penalty(p)
      ortho = jax.grad(half)(state.g_params)
      g_grads = jax.tree_util.tree_map(jnp.add, g_grads, ortho)
    g_updates, g_opt_state = g_tx.update(g_grads, state.g_opt_state, state.g_params)
    return optax.apply_updates(state.g_params, g_updates), g_opt_state, g_value, g_grads

  def step_fn(state: TrainState, batch: Batch, rng: jax.Array) -> tuple[TrainState, Metrics]:
    images = to_model_range(batch["image"])
    b = images.shape[0] // n_critic
    # Interleaved split [b * n_critic] -> [b, n_critic]: every device keeps its own rows, so a
    # batch sharded on axis 0 needs no data movement.
    images = images.reshape((b, n_critic) + images.shape[1:])
    all_labels = batch["label"].reshape((b, n_critic) + batch["label"].shape[1:])  # keeps [.., A]
    keys = jax.random.split(rng, 3 * n_critic + 2)
    aug_state, lecam, aug_p = state.augment, state.lecam, state.augment.p
    d_updates_before = applied_d_updates(state, n_critic)

    def real_slice(k):
      real = images[:, k]
      if flip_reals:
        real = random_flip(real, keys[3 * k + 2])
      return real, (all_labels[:, k] if conditional else None)

    d_params, d_stats, d_opt_state = state.d_params, state.d_batch_stats, state.d_opt_state
    d_values, d_grads_all, aux = [], [], {}
    # D phase: n_critic updates, each on its own real slice and fresh z; fake labels follow the
    # real slice's, so the fakes' class prior matches the data.
    for k in range(n_critic):
      real, labels = real_slice(k)
      z = jax.random.normal(keys[3 * k], (b, z_dim))
      if k < n_critic - 1:  # an extra critic update (WGAN-GP style): G's stats untouched
        fake, _ = _apply(generator, state.g_params, state.g_batch_stats, z, labels)
      else:  # the one G forward of this G update, kept (its vjp) for the G phase
        g_forward = lambda p: _apply(generator, p, state.g_batch_stats, z, labels)
        fake, g_vjp, g_stats = jax.vjp(g_forward, state.g_params, has_aux=True)
      d_params, d_stats, d_opt_state, value, aux, grads, real_logits, lecam = d_update(
          d_params, d_stats, d_opt_state, real, jax.lax.stop_gradient(fake), labels,
          keys[3 * k + 1], aug_p, lecam, d_updates_before + k + 1)
      if aug.adaptive:  # sign(D(real)) feeds ADA's p only
        aug_state = augment_lib.accumulate(aug_state, real_logits, ada_boundary)
      d_values.append(value)
      d_grads_all.append(grads)
    # R1's lazy phase, on the last slice's reals.
    if r1_gamma > 0:
      d_params, d_opt_state, r1, r1_grads, aug_state = r1_update(
          d_params, d_stats, d_opt_state, real, labels, keys[3 * n_critic], aug_state, state.step)
      aux["r1_penalty"] = r1
      d_grads_all.append(r1_grads)
    adjust_p = lambda a: augment_lib.maybe_update(
        a, state.step, config.augment.ada_interval, config.train.batch_size * n_critic,
        config.augment.ada_target, float(config.augment.ada_kimg))
    if aug.adaptive:  # after every D phase of the step, as StyleGAN2-ADA adjusts p
      # ADA's overfitting heuristic r_t over this step's reals, every D pass's (StyleGAN2-ADA
      # logs it as Loss/signs/real): a log row's mean says where p is heading.
      aux["ada_rt"] = ((aug_state.signs_sum - state.augment.signs_sum)
                       / jnp.maximum(aug_state.count - state.augment.count, 1))
      aug_state = adjust_p(aug_state)

    # G phase, through the updated D.
    g_params, g_opt_state, g_value, g_grads = g_update(
        state, d_params, d_stats, fake, g_vjp, labels, keys[3 * n_critic + 1], aug_p)

    # G's EMA, by half-life in images.
    beta = ema_beta(config, state.step)
    ema_params = jax.tree_util.tree_map(lambda e, p: beta * e + (1.0 - beta) * p,
                                        state.ema_params, g_params)

    # The step is skipped (`_commit`) where anything is non-finite: the losses, the gradients,
    # and the new optimizer states too: a finite gradient past ~1.8e19 overflows Adam's second
    # moment to inf, which freezes that parameter for the rest of the run (its updates become
    # 0). And the running BatchNorm statistics: activations past ~1.8e19 overflow a batch
    # variance to inf while the normalised output (x / sqrt(inf) = 0) and the losses stay
    # finite; a running average never forgets an inf.
    # LeCam's averages of D's outputs too: a real logit of +inf can leave the losses finite (a
    # zero hinge or softplus) but its average inf for good, and the checkpoint unresumable
    # (run_health.check_restored_state).
    finite = _all_finite(d_values, g_value, d_grads_all, g_grads, d_opt_state, g_opt_state,
                         g_stats, d_stats, lecam)
    updated = state.replace(
        g_params=g_params, g_batch_stats=g_stats, d_params=d_params, d_batch_stats=d_stats,
        g_opt_state=g_opt_state, d_opt_state=d_opt_state, ema_params=ema_params, lecam=lecam,
        augment=aug_state)
    # A skipped step's signs are dropped, but an interval that ends on it still moves p (from
    # its other steps) and starts afresh, as the step count goes on.
    skipped = state.replace(augment=adjust_p(state.augment)) if aug.adaptive else state
    new_state = _commit(updated, skipped, finite, b * n_critic)
    metrics = {"d_loss": jnp.mean(jnp.stack(d_values)), "g_loss": g_value, "ema_beta": beta,
               "nonfinite": 1 - finite.astype(jnp.int32),
               "nonfinite_streak": new_state.nonfinite_streak,
               "nonfinite_total": new_state.nonfinite_total, "augment_p": new_state.augment.p,
               **aux}
    return new_state, metrics

  return step_fn


def _commit(updated: TrainState, skipped: TrainState, finite: jnp.ndarray, images: int
            ) -> TrainState:
  """`updated` where the step is finite, else `skipped` (the state before it, ADA's interval
  still closed on time): a non-finite step changes no weights, statistics or moments. The step
  and image counters move either way; the non-finite ones count it."""
  new = jax.tree_util.tree_map(lambda u, s: jnp.where(finite, u, s), updated, skipped)
  return new.replace(
      step=skipped.step + 1,
      images_seen=skipped.images_seen + images,
      nonfinite_streak=jnp.where(finite, 0, skipped.nonfinite_streak + 1),
      nonfinite_total=skipped.nonfinite_total + 1 - finite.astype(jnp.int32))


def scan_steps(train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
               steps_per_call: int) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
  """`steps_per_call` train steps in one call: `batch` leaves have a leading axis of that length
  (one batch per step) and every metric comes back with it. The same steps with the same keys
  (they are drawn from state.step), one dispatch.

  The scan is fully unrolled: XLA:CPU does not give convolutions inside a loop body its fast
  kernels (DCGAN-64 ran 6x slower per step as a rolled loop of 2, docs/benchmarks.md), and an
  unrolled call leaves the backend no loop to run at all. The cost is compile time, which grows
  with `steps_per_call`."""
  if steps_per_call == 1:
    return train_step

  @functools.wraps(train_step)  # keeps the name: traces and HLO say jit_train_step
  def several(state: TrainState, batches: Batch) -> tuple[TrainState, Metrics]:
    return jax.lax.scan(train_step, state, batches, unroll=True)

  return several


def with_state_rng(step_fn: Callable[[TrainState, Batch, jax.Array], Any]
                   ) -> Callable[[TrainState, Batch], Any]:
  """`(state, batch) -> ...` drawing the step key as fold_in(state.rng, state.step): randomness
  depends only on the run's key and the step, so resumed and uninterrupted runs match."""

  def train_step(state: TrainState, batch: Batch):
    return step_fn(state, batch, jax.random.fold_in(state.rng, state.step))

  return train_step
