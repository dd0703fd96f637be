"""R1, LeCam, the lazy-R1 phase and its optimizer correction, and the train step with ADA, DiffAugment, lazy
R1, LeCam and orthogonal regularisation switched on, and with the ResNet GAN."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from jaxgan import config as config_lib
from jaxgan import losses, run as run_lib, state as state_lib, step_metrics, steps
from jaxgan.config import validation as config_validation


def test_r1_matches_a_direct_computation():
  w = jnp.array([0.5, -2.0, 3.0])
  critic = lambda x: jnp.sum(w * x**2, axis=(1, 2, 3))  # per-sample logits; grad = 2 w x
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 3))
  want = np.mean(np.sum((2 * np.asarray(w) * np.asarray(x)) ** 2, axis=(1, 2, 3)))
  penalty, logits = losses.r1_penalty(critic, x)
  np.testing.assert_allclose(penalty, want, rtol=1e-6)
  np.testing.assert_allclose(logits, critic(x), rtol=1e-6)  # the logits ADA's statistic counts


def test_lecam_matches_the_formula():
  real, fake = jnp.array([1.0, 2.0, 3.0]), jnp.array([-1.0, 0.0])
  want = np.mean((np.array([1, 2, 3]) - (-0.5)) ** 2) + np.mean((np.array([-1, 0]) - 1.5) ** 2)
  np.testing.assert_allclose(losses.lecam_penalty(real, fake, 1.5, -0.5), want, rtol=1e-6)
  # As LeCam's code (relu): a real below the fakes' anchor, or a fake above the reals' anchor,
  # adds nothing.
  real, fake = jnp.array([-1.0, 2.0]), jnp.array([3.0, 0.0])
  want = np.mean(np.array([0.0, 2.5]) ** 2) + np.mean(np.array([0.0, 1.5]) ** 2)
  np.testing.assert_allclose(losses.lecam_penalty(real, fake, 1.5, -0.5), want, rtol=1e-6)


def test_lecam_counts_only_the_d_updates_applied():
  """A step skipped as non-finite reverts all its n_critic D updates (and LeCam's averages), so
  the debiasing count leaves it out: 5 steps, 2 skipped, 2 critics -> 6 updates."""
  from types import SimpleNamespace

  from jaxgan import steps

  state = SimpleNamespace(step=jnp.int32(5), nonfinite_total=jnp.int32(2))
  assert float(steps.applied_d_updates(state, 2)) == 6.0


def test_lecam_anchors_are_debiased_from_the_first_update():
  """As LeCam's reference (zero-debiased EMA, updated with this batch before the penalty): the
  first anchors are that batch's means, not 1 % of them."""
  zero = {"real": jnp.zeros(()), "fake": jnp.zeros(())}
  ema, anchors = losses.lecam_anchors(zero, jnp.array([1.0, 3.0]), jnp.array([-4.0]), 0.99, 1.0)
  assert float(anchors["real"]) == pytest.approx(2.0) and float(anchors["fake"]) == pytest.approx(-4.0)
  assert float(ema["real"]) == pytest.approx(0.02)  # the stored state stays the biased average
  ema, anchors = losses.lecam_anchors(ema, jnp.array([6.0]), jnp.array([0.0]), 0.99, 2.0)
  # (0.99 * 0.01 * 2 + 0.01 * 6) / (1 - 0.99^2): the two batches weighted 0.99 : 1.
  assert float(anchors["real"]) == pytest.approx((0.99 * 0.02 + 0.06) / (1 - 0.99 ** 2), rel=1e-5)


def test_lecam_penalty_holds_its_anchors_constant():
  """The anchors are moving averages of D's outputs held constant in D's loss (LeCam's code
  reads them from non-trainable variables): D's gradient must not flow through them into this
  batch's own logits, which would let D lower the penalty by moving the anchors."""
  zero = {"real": jnp.zeros(()), "fake": jnp.zeros(())}

  def penalty(real, fake, fixed_anchors=None):
    _, anchors = losses.lecam_anchors(zero, real, fake, 0.99, 1.0)
    if fixed_anchors is not None:
      anchors = fixed_anchors
    return losses.lecam_penalty(real, fake, anchors["real"], anchors["fake"])

  real, fake = jnp.array([1.0, 3.0]), jnp.array([-4.0, -2.0])  # anchors 2 and -3: relu active
  fixed = {"real": jnp.float32(2.0), "fake": jnp.float32(-3.0)}
  got = jax.grad(penalty, argnums=(0, 1))(real, fake)
  want = jax.grad(penalty, argnums=(0, 1))(real, fake, fixed)
  np.testing.assert_allclose(want[0], [4.0, 6.0], rtol=1e-5)  # 2 (r - a_F) / 2 samples
  np.testing.assert_allclose(want[1], [-6.0, -4.0], rtol=1e-5)  # -2 (a_R - f) / 2
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5)


def _adam_reference(grads, lr, b1, b2, eps=1e-8):
  """Plain Adam with bias correction, step by step (numpy)."""
  m = v = np.zeros_like(grads[0])
  steps = []
  for t, g in enumerate(grads, 1):
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    steps.append(-lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps))
  return steps


@pytest.mark.parametrize("gamma, c", [(0.0, 1.0), (1.0, 4 / 5)])
def test_lazy_r1_corrects_d_adam_as_stylegan2(gamma, c):
  # k = 4: D takes 5 Adam steps per 4 minibatches, so lr * 4/5 and betas ** (4/5); G untouched.
  config = tiny_config(**{"loss.r1_gamma": gamma, "loss.r1_interval": 4, "optim.d_lr": 1e-3,
                          "optim.g_lr": 1e-3, "optim.b1": 0.5, "optim.b2": 0.9})
  g_tx, d_tx = state_lib.make_optimizers(config)
  grads = [np.array([1.0, -1.0, 2.0]), np.array([0.5, 3.0, -1.0]), np.array([-2.0, 1.0, 1.0])]
  for tx, scale in ((d_tx, c), (g_tx, 1.0)):
    params = {"w": jnp.ones(3)}
    opt_state = tx.init(params)
    want = _adam_reference(grads, 1e-3 * scale, 0.5**scale, 0.9**scale)
    for g, w in zip(grads, want):
      update, opt_state = tx.update({"w": jnp.asarray(g)}, opt_state, params)
      np.testing.assert_allclose(update["w"], w, rtol=1e-5)


@pytest.mark.parametrize("overrides, key", [
    ({"loss.r1_gamma": 1.0}, "model.d_norm"),  # DCGAN with BatchNorm in D
    ({"augment.name": "mixup"}, "augment.name"),
    ({"augment.name": "ada", "augment.ada_kimg": 0}, "augment.ada_kimg"),
    # ADA's sign heuristic needs a real/fake boundary, which a WGAN critic does not have.
    ({"augment.name": "ada", "loss.name": "wgan_gp", "model.d_norm": "layer"},
     "augment.name: ADA tunes p from the sign of D"),
    ({"augment.name": "diffaugment", "augment.policy": "color,blur"}, "augment.policy"),
    ({"model.name": "resnet", "data.image_size": 16}, "data.image_size"),
])
def test_bad_regulariser_configs_fail_validation(overrides, key):
  with pytest.raises(config_lib.ConfigError, match=key):
    config_validation.validate(tiny_config(**overrides), 1, 1)


def _started(config):
  """(run, a fresh state) placed as the step expects it (as training does): a state without the
  step's shardings would compile the step a second time at the second call, when it has them."""
  run = run_lib.build_run(config)
  return run, run.make_state()


def _batch(rng, images, size):
  return {"image": rng.integers(0, 256, (images, size, size, 3)).astype(np.uint8),
          "label": rng.integers(0, 3, (images,)).astype(np.int32)}


def _run_steps(config, n, size):
  run, state = _started(config)
  rng = np.random.default_rng(0)
  snapshots, metrics = [jax.device_get(state)], []
  images = config.train.batch_size * config.train.n_critic
  for _ in range(n):
    state, m = run.train_step(state, _batch(rng, images, size))  # donates: keep host copies
    snapshots.append(jax.device_get(state))
    metrics.append(jax.device_get(m))
  return snapshots, metrics


# ADA with LeCam and lazy R1 (on a layer-normed D): three ADA tests share two programs of it,
# this one and ADA_STEP's (each ADA step program took ~3-5 s of the suite's CPU to compile).
ADA_R1_LECAM = {"augment.name": "ada", "augment.ada_interval": 4, "augment.ada_kimg": 1,
                "augment.ada_p_init": 0.5, "augment.ada_target": 0.6, "loss.lecam_weight": 0.3,
                "loss.r1_gamma": 1.0, "loss.r1_interval": 2, "model.d_norm": "layer"}
# An interval of 2 steps, and G's orthogonal penalty.
ADA_STEP = {**ADA_R1_LECAM, "augment.ada_interval": 2, "model.orthogonal_reg": 1e-4}


def test_ada_lecam_and_orthogonal_regularisation_in_the_step():
  config = tiny_config(**ADA_STEP)
  (s0, s1, s2), metrics = _run_steps(config, 2, 16)
  assert metrics[0]["nonfinite"] == 0 and metrics[1]["nonfinite"] == 0
  # LeCam's state: EMAs (decay 0.99, from 0) of D's mean outputs, which the step logs (the
  # anchors divide them by 1 - 0.99^updates: test_lecam_anchors_are_debiased...).
  assert metrics[0]["lecam"] > 0
  for before, after, m in ((s0, s1, metrics[0]), (s1, s2, metrics[1])):
    for side in ("real", "fake"):
      want = 0.99 * float(before.lecam[side]) + 0.01 * float(m["d_" + side])
      assert float(after.lecam[side]) == pytest.approx(want, rel=1e-5), side
  # The orthogonal penalty is on G alone: the same first step without it moves D alike, to
  # rounding (the two are different programs, which XLA may round differently), and G by about
  # a step. In units of the learning rate (Adam's first step moves each element by about lr):
  # measured 1e-5 for D, 1.16 for G; a penalty leaking into D would flip some of its signs too.
  # (ADA_R1_LECAM: the interval differs too, which the first step does not reach.)
  (_, plain), _ = _run_steps(tiny_config(**ADA_R1_LECAM), 1, 16)
  assert plain.augment.p == s1.augment.p and int(plain.augment.count) == 16
  lr = config.optim.g_lr
  assert config.optim.d_lr == lr

  def largest_difference(a, b):
    return max(float(np.max(np.abs(x - y)))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

  assert largest_difference(s1.d_params, plain.d_params) < 1e-3 * lr
  assert largest_difference(s1.g_params, plain.g_params) > 0.1 * lr
  # ADA's sign statistic counts the reals of every D pass, as StyleGAN2-ADA: after step 0, the
  # main pass's 8 and the lazy-R1 pass's 8 (R1 is due on even steps); step 1 adds its main 8.
  assert int(s1.augment.count) == 16 and float(s1.augment.p) == 0.5
  # 16 signs of +-1 sum to an even number in [-16, 16] (a sign of 0 needs a logit exactly on
  # the boundary).
  assert abs(float(s1.augment.signs_sum)) <= 16 and float(s1.augment.signs_sum) % 2 == 0
  # At the end of the interval (2 steps, 16 images shown with ada_kimg=1) p moves by exactly
  # 16 / 1000, up when sign(D(real)) averages above the target, down otherwise; the sums reset.
  assert abs(abs(float(s2.augment.p) - 0.5) - 16 / 1000) < 1e-6
  assert int(s2.augment.count) == 0 and float(s2.augment.signs_sum) == 0.0
  assert float(metrics[1]["augment_p"]) == pytest.approx(float(s2.augment.p))


def test_ada_logs_its_sign_statistic():
  """ada_rt, the step's mean sign(D(real)) (StyleGAN2-ADA's Loss/signs/real), is what ADA adds
  up, over every D pass's reals (here the lazy-R1 pass's too, on even steps): a log row's mean
  tells where p is heading; no such metric without ADA."""
  config = tiny_config(**ADA_R1_LECAM)  # an interval of 4 steps: no update in these 2
  (_, s1, s2), metrics = _run_steps(config, 2, 16)
  assert [int(s1.augment.count), int(s2.augment.count)] == [16, 24]  # 8 + 8 R1, then 8
  assert float(metrics[0]["ada_rt"]) == float(s1.augment.signs_sum) / 16
  assert float(metrics[1]["ada_rt"]) == float(s2.augment.signs_sum - s1.augment.signs_sum) / 8
  assert -1 <= float(metrics[0]["ada_rt"]) <= 1
  _, plain = _run_steps(tiny_config(), 1, 16)
  assert "ada_rt" not in plain[0]


def test_ada_counts_least_squares_reals_against_its_boundary():
  """Least squares trains D(real) towards 1 and D(fake) towards 0, so an undecided D outputs
  0.5: its reals count as 'real' above 0.5 (they counted above 0, all but always: p rose to 1
  whether D overfitted or not)."""
  config = tiny_config(**{"loss.name": "least_squares", "augment.name": "ada",
                          "augment.ada_p_init": 0.0, "augment.ada_interval": 100,
                          "data.random_flip": False})
  run, state = _started(config)
  before = jax.device_get(state)
  batch = _batch(np.random.default_rng(0), 8, 16)
  after, _ = jax.device_get(run.train_step(state, batch))
  # At p = 0 ADA leaves the reals as they are: D's train-mode logits on the batch itself.
  logits = run.discriminator.apply(
      {"params": before.d_params, "batch_stats": before.d_batch_stats},
      steps.to_model_range(jnp.asarray(batch["image"])), jnp.asarray(batch["label"]), train=True,
      mutable=["batch_stats"])[0]
  assert int(after.augment.count) == 8
  assert float(after.augment.signs_sum) == float(np.sum(np.sign(np.asarray(logits) - 0.5)))
  assert float(after.augment.signs_sum) != float(np.sum(np.sign(np.asarray(logits))))


def test_ada_fixed_keeps_p_and_augments_with_any_loss():
  """StyleGAN2-ADA's --aug=fixed: ADA's pipeline at p = augment.ada_p_init throughout (also
  with WGAN-GP, which adaptive ADA refuses); nothing is counted towards an update."""
  config = tiny_config(**{"augment.name": "ada_fixed", "augment.ada_p_init": 0.3,
                          "loss.name": "wgan_gp", "model.d_norm": "layer"})
  config_validation.validate(config, 1, 1)
  # Past augment.ada_interval (4; ada_fixed reads none of ADA's tuning keys, and validation
  # refuses them set), where an adaptive update would have moved p.
  steps = config.augment.ada_interval + 1
  snapshots, metrics = _run_steps(config, steps, 16)
  assert [m["nonfinite"] for m in metrics] == [0] * steps
  assert [float(s.augment.p) for s in snapshots] == [pytest.approx(0.3)] * (steps + 1)
  assert [int(s.augment.count) for s in snapshots[1:]] == [0] * steps
  assert float(metrics[-1]["augment_p"]) == pytest.approx(0.3)


def test_a_skipped_step_that_ends_an_ada_interval_still_moves_p():
  """A non-finite step drops its own signs (they may be NaN), but when it ends an interval p
  moves from the interval's other steps and the sums restart; the skip used to carry them over,
  so the next update averaged two intervals and moved p once."""
  config = tiny_config(**ADA_STEP)
  run, state = _started(config)
  rng = np.random.default_rng(0)
  state, _ = run.train_step(state, _batch(rng, 8, 16))
  first = jax.device_get(state.augment)
  assert int(first.count) == 16 and float(first.p) == 0.5  # 8 reals, and 8 in the R1 pass
  bias = state.g_params["to_rgb"]["bias"]
  poisoned = state.replace(g_params={**state.g_params, "to_rgb": {
      **state.g_params["to_rgb"], "bias": bias + jnp.nan}})
  state, metrics = jax.device_get(run.train_step(poisoned, _batch(rng, 8, 16)))
  assert int(metrics["nonfinite"]) == 1
  # Step 1 ends the interval: p moves by the 8 * 2 reals shown / 1000, in the direction of step
  # 0's signs alone.
  direction = np.sign(float(first.signs_sum) / 16 - config.augment.ada_target)
  assert float(state.augment.p) == pytest.approx(0.5 + direction * 16 / 1000)
  assert int(state.augment.count) == 0 and float(state.augment.signs_sum) == 0.0


def test_ada_counts_and_scales_by_every_critic_updates_reals():
  """ADA with n_critic = 2: StyleGAN2-ADA's statistic counts the reals of every D update, and
  its p moves by the reals D was shown, batch_size * n_critic per step (n_critic times slower
  otherwise). images_seen counts those reals too."""
  config = tiny_config(**{"augment.name": "ada", "augment.ada_interval": 2,
                          "augment.ada_kimg": 1, "augment.ada_p_init": 0.5, "train.n_critic": 2})
  (s0, s1, s2), metrics = _run_steps(config, 2, 16)
  assert [m["nonfinite"] for m in metrics] == [0, 0]
  assert int(s1.augment.count) == 16 and float(s1.augment.p) == 0.5  # 2 slices of 8
  assert abs(float(s1.augment.signs_sum)) <= 16 and float(s1.augment.signs_sum) % 2 == 0
  assert int(s1.images_seen) == 16 and int(s2.images_seen) == 32
  # End of the interval: 2 steps of 2 x 8 reals, with ada_kimg = 1 p moves by 32 / 1000.
  assert abs(abs(float(s2.augment.p) - 0.5) - 32 / 1000) < 1e-6
  assert int(s2.augment.count) == 0


def _adam_count(opt_state):
  adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return int(next(x.count for x in jax.tree_util.tree_leaves(opt_state, is_leaf=adam) if adam(x)))


def test_resnet_train_step_updates_spectral_norm_state():
  # The same config as test_benchmark's resnet case: one compiled program (persistent cache).
  config = tiny_config(**{"model.name": "resnet", "data.image_size": 32, "model.max_width": 16,
                          "model.shared_dim": 4})
  (s0, s1), metrics = _run_steps(config, 1, 32)
  assert metrics[0]["nonfinite"] == 0
  # Spectral-norm power iterations live in batch_stats and move with every D update.
  sn = lambda s: [x for p, x in jax.tree_util.tree_leaves_with_path(s.d_batch_stats)
                  if "/u" in jax.tree_util.keystr(p)]
  assert sn(s0) and not np.allclose(sn(s0)[0], sn(s1)[0])


def test_spectral_norm_iterates_once_per_d_update():
  """BigGAN scores reals and fakes in one batch: one power iteration per D update, one sigma for
  both. The fake pass used to continue from the real pass's state: two iterations, two sigmas in
  one loss. D's weights are random here: an orthogonal matrix (the init) leaves u unchanged
  after the first iteration, which would hide the difference."""
  config = tiny_config(**{"model.name": "resnet", "data.image_size": 32, "model.max_width": 16,
                          "model.shared_dim": 4})
  run, state = _started(config)
  leaves, tree = jax.tree_util.tree_flatten(state.d_params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  random = [0.2 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  state = state.replace(d_params=jax.device_put(jax.tree_util.tree_unflatten(tree, random),
                                                run.state_shardings.d_params))
  before = jax.device_get(state)
  after, metrics = jax.device_get(run.train_step(state, _batch(np.random.default_rng(0), 8, 32)))
  assert metrics["nonfinite"] == 0

  # The iteration reads only the weights (D's before its update), not the images.
  stats, iterated = before.d_batch_stats, []
  for _ in range(2):
    _, updates = run.discriminator.apply(
        {"params": before.d_params, "batch_stats": stats}, jnp.zeros((2, 32, 32, 3)),
        jnp.zeros((2,), jnp.int32), train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    iterated.append(jax.tree_util.tree_leaves(stats))
  new = jax.tree_util.tree_leaves(after.d_batch_stats)
  for mine, once in zip(new, iterated[0]):
    np.testing.assert_allclose(mine, once, rtol=1e-5, atol=1e-6)
  assert not all(np.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(new, iterated[1]))


def test_lazy_r1_is_a_separate_d_phase_with_diffaugment_and_n_critic():
  config = tiny_config(**{"model.d_norm": "layer", "loss.r1_gamma": 1.0, "loss.r1_interval": 2,
                          "augment.name": "diffaugment", "train.n_critic": 2,
                          "train.batch_size": 4})
  snapshots, metrics = _run_steps(config, 3, 16)
  assert [m["nonfinite"] for m in metrics] == [0, 0, 0]
  # StyleGAN2's Dreg: on due steps (0 and 2 of every 2) D takes its n_critic ordinary Adam steps
  # and then one more on R1 alone; G's Adam one step per step either way.
  r1 = [float(m["r1_penalty"]) for m in metrics]
  assert r1[0] > 0 and r1[1] == -1 and r1[2] > 0  # -1: no R1 phase on that step
  # The logged row averages R1 over the due steps (it used to show the logged step's 0).
  logged = step_metrics.summarise([{k: float(v) for k, v in m.items()} for m in metrics])
  assert logged["r1_penalty"] == pytest.approx((r1[0] + r1[2]) / 2)
  assert [_adam_count(s.d_opt_state) for s in snapshots] == [0, 3, 5, 8]
  assert [_adam_count(s.g_opt_state) for s in snapshots] == [0, 1, 2, 3]


def test_lazy_r1_corrections_count_d_steps_not_train_steps():
  """StyleGAN2's corrections are per D step: with r1_interval 2 and n_critic 2 one R1 phase
  covers k = 4 ordinary D steps, so D's lr and betas take c = k/(k+1) = 4/5 (and R1's gain,
  gamma/2 * r1_period, is 4 * gamma/2)."""
  config = tiny_config(**{"loss.r1_gamma": 1.0, "loss.r1_interval": 2, "train.n_critic": 2,
                          "optim.d_lr": 1e-3, "optim.b1": 0.5, "optim.b2": 0.99})
  assert config_lib.r1_period(config) == 4
  _, d_tx = state_lib.make_optimizers(config)
  c = 4 / 5
  lr, b1, b2 = 1e-3 * c, 0.5 ** c, 0.99 ** c
  # Two Adam steps with gradients 1 then -3: the second update depends on lr, b1 and b2.
  params, opt_state = {"w": jnp.zeros(())}, d_tx.init({"w": jnp.zeros(())})
  m = v = 0.0
  for t, g in enumerate((1.0, -3.0), 1):
    updates, opt_state = d_tx.update({"w": jnp.asarray(g)}, opt_state, params)
    m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
    want = -lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + 1e-8)
    np.testing.assert_allclose(float(updates["w"]), want, rtol=1e-5)
