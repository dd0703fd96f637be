"""The pure train step: updates, determinism, one G forward, n_critic, EMA, non-finite skips."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgan import losses, models, state as state_lib, steps
from jaxgan.data import SyntheticCatalog
from jaxgan.models import dcgan
from tests.conftest import tiny_config


def _setup(config):
  g, d = models.build_models(config)
  g_tx, d_tx = state_lib.make_optimizers(config)
  init = functools.partial(state_lib.init_state, config, g, d, g_tx, d_tx, config.seed)
  step_fn = steps.make_train_step(config, g, d, losses.build_loss(config), g_tx, d_tx)
  return init, step_fn


def _batches(config, n):
  source = SyntheticCatalog(config.data.image_size, config.data.num_classes, config.seed)
  it = source.batches(config.train.batch_size * config.train.n_critic, 0)
  return [next(it) for _ in range(n)]


def _leaves_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _adam_count(opt_state):
  adam = lambda x: isinstance(x, optax.ScaleByAdamState)
  return int(next(x.count for x in jax.tree_util.tree_leaves(opt_state, is_leaf=adam) if adam(x)))


@functools.lru_cache(maxsize=None)
def _default_step():
  """(config, init, jitted step) of the default tiny config: compiled once for the module."""
  config = tiny_config()
  init, step_fn = _setup(config)
  return config, init, jax.jit(steps.with_state_rng(step_fn))


def test_step_updates_everything_it_should():
  config, init, train_step = _default_step()
  state = init()
  new, metrics = train_step(state, _batches(config, 1)[0])
  assert int(new.step) == 1 and int(new.images_seen) == 8
  for name in ("g_params", "d_params", "ema_params", "g_batch_stats", "d_batch_stats"):
    assert not _leaves_equal(getattr(new, name), getattr(state, name)), name
  assert set(metrics) >= {"d_loss", "g_loss", "d_real", "d_fake", "ema_beta", "nonfinite"}
  assert all(np.isfinite(float(v)) for v in metrics.values()) and int(metrics["nonfinite"]) == 0


def test_a_finite_step_resets_the_nonfinite_streak_but_not_the_total():
  config, init, train_step = _default_step()
  state = init().replace(nonfinite_streak=jnp.asarray(5, jnp.int32),
                         nonfinite_total=jnp.asarray(7, jnp.int32))
  new, metrics = train_step(state, _batches(config, 1)[0])
  assert int(metrics["nonfinite"]) == 0
  assert int(new.nonfinite_streak) == 0 == int(metrics["nonfinite_streak"])
  assert int(new.nonfinite_total) == 7 == int(metrics["nonfinite_total"])


def test_ema_is_the_beta_weighted_average_of_the_updated_generator():
  """ema' = beta * ema + (1 - beta) * G', with G' the params after this step's G update."""
  config, init, train_step = _default_step()
  batches = _batches(config, 2)
  # Ramp-up: no G images seen at step 0, so beta = 0 and the EMA is a copy of the new G.
  first, metrics = train_step(init(), batches[0])
  assert float(metrics["ema_beta"]) == 0.0
  for e, g in zip(jax.tree_util.tree_leaves(first.ema_params),
                  jax.tree_util.tree_leaves(first.g_params)):
    np.testing.assert_array_equal(e, g)
  # At step 1000 the ramp-up (0.05 * 8000 images) is past the half-life of 64 images: beta =
  # 0.5 ** (8 / 64). An EMA apart from G tells beta's and (1 - beta)'s terms apart.
  ema = jax.tree_util.tree_map(lambda x: x + 0.5, first.g_params)
  state = first.replace(step=jnp.asarray(1000, jnp.int32), ema_params=ema)
  new, metrics = train_step(state, batches[1])
  beta = float(metrics["ema_beta"])
  assert beta == pytest.approx(0.5 ** (8 / 64), rel=1e-6)
  assert not _leaves_equal(new.g_params, first.g_params)
  leaves = jax.tree_util.tree_leaves
  for e, old, g in zip(leaves(new.ema_params), leaves(ema), leaves(new.g_params)):
    np.testing.assert_allclose(e, beta * np.asarray(old) + (1 - beta) * np.asarray(g),
                               rtol=1e-6, atol=1e-7)


def test_random_flip_mirrors_the_width_of_about_half_the_batch():
  images = jax.random.randint(jax.random.PRNGKey(0), (64, 3, 5, 2), 0, 256).astype(jnp.uint8)
  out = np.asarray(steps.random_flip(images, jax.random.PRNGKey(1)))
  images = np.asarray(images)
  mirrored = np.flip(images, axis=2)  # NHWC: axis 2 is the width
  flipped = np.all(out == mirrored, axis=(1, 2, 3))
  kept = np.all(out == images, axis=(1, 2, 3))
  assert np.all(flipped != kept)  # every image is either mirrored or untouched, never both
  assert 20 <= flipped.sum() <= 44  # Bernoulli(1/2) over 64 images
  np.testing.assert_array_equal(out, steps.random_flip(images, jax.random.PRNGKey(1)))


def test_the_step_mirrors_its_reals_across_the_width_when_asked():
  """data.random_flip in the step: images symmetric left-right train to the same state with
  flips as without (a flip of the height would not), and images that are not symmetric train to
  another one (flips that were never applied would not). Same up to rounding: the two programs
  fuse differently (1e-9 measured; a flip moves the parameters by 4e-4)."""
  config, init, plain_step = _default_step()
  flipping = tiny_config(**{"data.random_flip": True})
  _, step_fn = _setup(flipping)
  flip_step = jax.jit(steps.with_state_rng(step_fn))
  batch = _batches(config, 1)[0]
  half = batch["image"][:, :, : config.data.image_size // 2]
  symmetric = {**batch, "image": np.concatenate([half, half[:, :, ::-1]], axis=2)}

  def largest_change(images):
    a, b = plain_step(init(), images)[0], flip_step(init(), images)[0]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(
        jax.tree_util.tree_leaves((a.g_params, a.d_params)),
        jax.tree_util.tree_leaves((b.g_params, b.d_params))))

  assert largest_change(symmetric) < 1e-7
  assert largest_change(batch) > 1e-5


def test_same_seed_gives_bit_identical_parameters(make_config):
  config = make_config()
  init, step_fn = _setup(config)
  train_step = jax.jit(steps.with_state_rng(step_fn), donate_argnums=0)
  batches = _batches(config, 3)
  results = []
  for _ in range(2):
    state = jax.jit(init)()
    for batch in batches:
      state, _ = train_step(state, batch)
    results.append(jax.device_get(state))
  assert _leaves_equal(results[0], results[1])
  # ... and a different seed gives different parameters.
  other = make_config(seed=1)
  init1, _ = _setup(other)
  assert not _leaves_equal(jax.device_get(init1().g_params), jax.device_get(init().g_params))


@pytest.mark.parametrize("n_critic", [1, 3])
@pytest.mark.patches_traced_code
def test_generator_runs_forward_once_per_d_update(make_config, monkeypatch, n_critic):
  calls = []
  original = dcgan.Generator.__call__

  def counting(self, *args, **kwargs):
    calls.append(1)
    return original(self, *args, **kwargs)

  monkeypatch.setattr(dcgan.Generator, "__call__", counting)
  config = make_config(**{"train.n_critic": n_critic})
  init, step_fn = _setup(config)
  state = jax.eval_shape(init)
  calls.clear()
  batch = _batches(config, 1)[0]
  jax.make_jaxpr(steps.with_state_rng(step_fn))(state, batch)
  # One forward per D update; the last one is reused for the G update through jax.vjp.
  assert len(calls) == n_critic


def test_wgan_gp_with_several_critic_steps(make_config):
  config = make_config(**{"loss.name": "wgan_gp", "model.d_norm": "layer", "train.n_critic": 2})
  init, step_fn = _setup(config)
  batch = _batches(config, 1)[0]
  assert batch["image"].shape[0] == 16  # n_critic real batches of 8
  new, metrics = jax.jit(steps.with_state_rng(step_fn))(init(), batch)
  # Two critic updates (one per real slice), then one G update.
  assert _adam_count(new.d_opt_state) == 2 and _adam_count(new.g_opt_state) == 1
  assert float(metrics["gradient_penalty"]) > 0 and np.isfinite(float(metrics["d_loss"]))


@pytest.mark.patches_traced_code
def test_wgan_gp_is_taken_through_the_augmentation(make_config, monkeypatch):
  """D judges augmented images only, so its gradient penalty is on what it judges: through an
  augmentation that discards its input, D's output does not depend on the interpolate and every
  per-sample gradient norm is 0, giving a penalty of exactly (0 - 1)^2 = 1. The augmentation
  multiplies by 0 rather than returning constant zeros: the zero input gradient is then still a
  function of D's parameters, as a flat critic's is, and sqrt's infinite slope at 0 would make
  D's gradient NaN (and the step be skipped) without the norm's epsilon."""
  from jaxgan import augment as augment_lib
  monkeypatch.setattr(augment_lib, "diffaugment", lambda x, key, policy: 0.0 * x)
  config = make_config(**{"loss.name": "wgan_gp", "model.d_norm": "layer",
                          "augment.name": "diffaugment"})
  init, step_fn = _setup(config)
  _, metrics = jax.jit(steps.with_state_rng(step_fn))(init(), _batches(config, 1)[0])
  assert float(metrics["gradient_penalty"]) == pytest.approx(1.0, abs=1e-5)
  assert int(metrics["nonfinite"]) == 0


def test_the_generator_steps_on_its_loss_through_the_updated_and_augmenting_discriminator(
    make_config):
  """With SGD for G, G moves by exactly -lr * grad of g_loss(D'(augment(G(z)))), D' being D after
  this step's n_critic updates (its params and running statistics), the fakes augmented as D
  sees them, z and the labels those of the last critic slice. G through the old D, or scoring
  un-augmented fakes, or the first slice's labels, fails."""
  from jaxgan import augment as augment_lib

  lr = 0.01
  config = make_config(**{"train.n_critic": 2, "augment.name": "diffaugment"})
  gen, disc = models.build_models(config)
  _, d_tx = state_lib.make_optimizers(config)
  g_tx = optax.sgd(lr)
  loss = losses.build_loss(config)
  state = state_lib.init_state(config, gen, disc, g_tx, d_tx, config.seed)
  step_fn = steps.make_train_step(config, gen, disc, loss, g_tx, d_tx)
  batch = _batches(config, 1)[0]
  new, _ = jax.jit(steps.with_state_rng(step_fn))(state, batch)

  n, b = 2, config.train.batch_size
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 3 * n + 2)
  z = jax.random.normal(keys[3 * (n - 1)], (b, config.model.z_dim))
  labels = jnp.asarray(batch["label"]).reshape(b, n)[:, n - 1]  # interleaved: the last slice
  augment = augment_lib.AUGMENTS.get("diffaugment").make(config.augment)

  def g_objective(params):
    fake, _ = steps._apply(gen, params, state.g_batch_stats, z, labels)
    seen = augment(fake, keys[3 * n + 1], state.augment.p)
    return loss.g_loss(steps._apply(disc, new.d_params, new.d_batch_stats, seen, labels)[0])

  grads = jax.jit(jax.grad(g_objective))(state.g_params)
  for got, old, g in zip(*(jax.tree_util.tree_leaves(t) for t in (new.g_params, state.g_params,
                                                                  grads))):
    np.testing.assert_allclose(got, old - lr * np.asarray(g), rtol=1e-4, atol=1e-7)
  assert max(float(np.max(np.abs(g))) for g in jax.tree_util.tree_leaves(grads)) > 1e-4


def test_nonfinite_step_leaves_state_unchanged():
  config, init, train_step = _default_step()
  state = init()
  bias = state.g_params["to_rgb"]["bias"]
  state = state.replace(g_params={**state.g_params,
                                  "to_rgb": {**state.g_params["to_rgb"], "bias": bias + jnp.nan}})
  new, metrics = train_step(state, _batches(config, 1)[0])
  assert int(metrics["nonfinite"]) == 1
  assert int(new.step) == 1 and int(new.nonfinite_streak) == 1 == int(new.nonfinite_total)
  for name in ("g_params", "g_batch_stats", "d_params", "d_batch_stats", "g_opt_state",
               "d_opt_state", "ema_params", "augment", "lecam"):
    for x, y in zip(*(jax.tree_util.tree_leaves(getattr(s, name)) for s in (new, state))):
      np.testing.assert_array_equal(x, y, err_msg=name)  # NaN counts as equal to NaN
  again, _ = train_step(new, _batches(config, 2)[1])
  assert int(again.nonfinite_streak) == 2 == int(again.nonfinite_total)


def test_a_step_whose_optimizer_state_overflows_is_skipped():
  """A finite gradient past ~1.8e19 overflows Adam's second moment to inf, after which every
  update of that parameter is 0: the step is skipped as non-finite instead of freezing it."""
  config, init, train_step = _default_step()
  state = init()
  leaves, tree = jax.tree_util.tree_flatten(state.g_opt_state)
  i = next(i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim)
  leaves[i] = jnp.full_like(leaves[i], jnp.inf)  # as the overflowed moment would be
  state = state.replace(g_opt_state=jax.tree_util.tree_unflatten(tree, leaves))
  new, metrics = train_step(state, _batches(config, 1)[0])
  assert int(metrics["nonfinite"]) == 1 and np.isfinite(float(metrics["g_loss"]))
  for x, y in zip(*(jax.tree_util.tree_leaves(s.g_params) for s in (new, state))):
    np.testing.assert_array_equal(x, y)


def test_a_step_whose_running_batchnorm_statistics_overflow_is_skipped():
  """An overflowed batch variance leaves the normalised output (x / sqrt(inf) = 0) and the
  losses finite, but the running average keeps the inf for good: the step is skipped."""
  config, init, train_step = _default_step()
  state = init()
  leaves, tree = jax.tree_util.tree_flatten(state.g_batch_stats)
  leaves[0] = jnp.full_like(leaves[0], jnp.inf)  # as a running average of an inf would be
  state = state.replace(g_batch_stats=jax.tree_util.tree_unflatten(tree, leaves))
  new, metrics = train_step(state, _batches(config, 1)[0])
  assert int(metrics["nonfinite"]) == 1 and np.isfinite(float(metrics["g_loss"]))
  for x, y in zip(*(jax.tree_util.tree_leaves(s.g_params) for s in (new, state))):
    np.testing.assert_array_equal(x, y)


def test_a_lecam_average_that_overflows_skips_the_step_only_where_lecam_is_on(monkeypatch):
  """A real logit of +inf can give a finite loss (a zero hinge or softplus) but an inf average
  of D's outputs, kept for good and refused on resume (run_health.check_restored_state). With
  LeCam on, such a step is skipped; off (the default), the average is unread: the step trains and
  the average keeps its last finite value (it is kept warm for a run that turns LeCam on)."""
  real_anchors = losses.lecam_anchors

  def overflowing(ema, real_logits, *args):  # as one +inf real logit makes it
    ema, anchors = real_anchors(ema, real_logits, *args)
    return {**ema, "real": ema["real"] + jnp.inf}, anchors

  for weight in (0.0, 0.1):
    config = tiny_config(**{"loss.lecam_weight": weight})
    batch = _batches(config, 1)[0]
    init, step_fn = _setup(config)
    warm, metrics = jax.jit(steps.with_state_rng(step_fn))(init(), batch)
    assert int(metrics["nonfinite"]) == 0 and float(warm.lecam["real"]) != 0  # kept either way
    with monkeypatch.context() as patch:
      patch.setattr(losses, "lecam_anchors", overflowing)
      if weight:  # the penalty kept finite: a stand-in for the losses such a logit leaves finite
        patch.setattr(losses, "lecam_penalty", lambda *args: jnp.float32(0.0))
      init, step_fn = _setup(config)
      new, metrics = jax.jit(steps.with_state_rng(step_fn))(warm, batch)
    assert np.isfinite(float(metrics["d_loss"]))
    if weight:
      assert int(metrics["nonfinite"]) == 1 and _leaves_equal(new.d_params, warm.d_params)
    else:
      assert int(metrics["nonfinite"]) == 0 and not _leaves_equal(new.d_params, warm.d_params)
      assert float(new.lecam["real"]) == float(warm.lecam["real"])
      assert float(new.lecam["fake"]) != float(warm.lecam["fake"])  # the finite one moves on


def test_the_finiteness_check_is_compiled_once_not_into_every_select():
  """XLA turned jnp.all over the stacked per-leaf flags into a chain of scalar ANDs and fused a
  copy of it into every leaf's select: 419 is-finite ops for this tiny step's 78 state leaves,
  and 30 s instead of 5 s to compile a tiny ResNet step. Each leaf is checked once now."""
  config, init, train_step = _default_step()
  state = init()
  hlo = train_step.lower(state, _batches(config, 1)[0]).compile().as_text()
  floats = [x for x in jax.tree_util.tree_leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert 0 < hlo.count(" is-finite(") <= len(floats)


def test_ema_half_life_in_images(make_config):
  config = make_config(**{"train.ema_half_life_images": 800, "train.ema_rampup": 0.0})
  beta = float(steps.ema_beta(config, jnp.asarray(10_000)))  # step 10,000
  # After half-life / batch steps the old weights count for one half.
  np.testing.assert_allclose(beta ** (800 / config.train.batch_size), 0.5, rtol=1e-5)
  ramped = make_config(**{"train.ema_half_life_images": 800, "train.ema_rampup": 0.5})
  assert float(steps.ema_beta(ramped, jnp.asarray(0))) == 0.0  # EMA starts as a copy of G
  assert float(steps.ema_beta(ramped, jnp.asarray(10))) < beta  # 80 images seen: ramping up
  disabled = make_config(**{"train.ema_half_life_images": 0})
  assert float(steps.ema_beta(disabled, jnp.asarray(10_000))) == 0.0
  # Ramp-up and decay count the same images (G's, batch_size per step): extra critic steps
  # must not end the ramp-up n_critic times earlier.
  critics = make_config(**{"train.ema_half_life_images": 800, "train.ema_rampup": 0.5,
                           "train.n_critic": 5})
  for step in (10, 100, 10_000):
    assert float(steps.ema_beta(critics, jnp.asarray(step))) == float(
        steps.ema_beta(ramped, jnp.asarray(step)))


def test_bfloat16_step_runs_with_float32_state(make_config):
  config = make_config(**{"train.dtype": "bfloat16"})
  init, step_fn = _setup(config)
  new, metrics = jax.jit(steps.with_state_rng(step_fn))(init(), _batches(config, 1)[0])
  assert all(x.dtype in (jnp.float32, jnp.int32, jnp.uint32)
             for x in jax.tree_util.tree_leaves(new))
  assert np.isfinite(float(metrics["g_loss"]))


def _one_step(config, batch=None):
  """The state after one step of `config` from its initial state (on `batch`, or the first)."""
  init, step_fn = _setup(config)
  batch = _batches(config, 1)[0] if batch is None else batch
  return jax.jit(steps.with_state_rng(step_fn))(init(), batch)


@pytest.mark.parametrize("key, off, on, extra", [
    ("loss.gp_weight", 0.0, 10.0, {"loss.name": "wgan_gp", "model.d_norm": "layer"}),
    ("loss.lecam_weight", 0.0, 0.3, {}),
])
def test_a_regulariser_reaches_the_critics_loss(make_config, key, off, on, extra):
  """D's loss, the value its gradient is taken of, holds weight * penalty: a metric that reports
  the penalty cannot tell whether it was added. One critic update from the same state, so both
  runs see the same logits and penalty."""
  name = {"loss.gp_weight": "gradient_penalty", "loss.lecam_weight": "lecam"}[key]
  _, without = _one_step(make_config(**extra, **{key: off}))
  _, weighted = _one_step(make_config(**extra, **{key: on}))
  penalty = float(weighted[name])
  assert penalty > 1e-3
  assert name not in without  # off: not computed (WGAN-GP's costs a double backward pass)
  added = float(weighted["d_loss"]) - float(without["d_loss"])
  assert added == pytest.approx(on * penalty, rel=1e-4)


def test_each_critic_update_sees_its_own_real_slice(make_config):
  """n_critic = 2: the two D updates read rows 0, 2, 4, ... and 1, 3, 5, ... (interleaved, as
  steps.py lays the batch out). With slice 1 made a copy of slice 0 the step must differ, or the
  second update read slice 0."""
  config = make_config(**{"train.n_critic": 2, "data.random_flip": False})
  batch = _batches(config, 1)[0]
  copied = dict(batch, image=batch["image"].copy())
  copied["image"][1::2] = copied["image"][0::2]
  assert not np.array_equal(batch["image"][1::2], batch["image"][0::2])
  a, _ = _one_step(config, batch)
  b, _ = _one_step(config, copied)
  assert not _leaves_equal(a.d_params, b.d_params)


def test_bfloat16_compute_is_compiled_as_bfloat16(make_config):
  """A bf16 config that silently computed in float32 would pass every float32-state check."""
  for dtype, has_bf16 in (("bfloat16", True), ("float32", False)):
    config = make_config(**{"train.dtype": dtype})
    init, step_fn = _setup(config)
    text = jax.jit(steps.with_state_rng(step_fn)).lower(init(), _batches(config, 1)[0]).as_text()
    assert ("bf16" in text) == has_bf16, dtype


def test_the_lazy_r1_phase_steps_d_by_its_gain_times_the_penalty_gradient(make_config):
  """StyleGAN2's lazy R1: the extra D step is on gamma/2 * r1_interval * n_critic * R1. With SGD
  for D the phase moves D by exactly lr * gain * grad R1 from where the main phase left it (the
  same step with gamma = 0, which runs no R1 phase and draws the same keys); Adam's first steps
  would hide a wrong constant factor."""
  gamma, interval, lr = 0.5, 2, 0.01
  results = {}
  for g in (0.0, gamma):
    config = make_config(**{"model.d_norm": "layer", "loss.r1_gamma": g,
                            "loss.r1_interval": interval})
    gen, disc = models.build_models(config)
    g_tx, _ = state_lib.make_optimizers(config)
    d_tx = optax.sgd(lr)
    state = state_lib.init_state(config, gen, disc, g_tx, d_tx, config.seed)
    step_fn = steps.make_train_step(config, gen, disc, losses.build_loss(config), g_tx, d_tx)
    batch = _batches(config, 1)[0]
    results[g], _ = jax.jit(steps.with_state_rng(step_fn))(state, batch)
  after_main = results[0.0]
  real = steps.to_model_range(jnp.asarray(batch["image"]))
  labels = jnp.asarray(batch["label"])

  def r1(params):
    critic = lambda x: steps._apply(disc, params, after_main.d_batch_stats, x, labels)[0]
    return losses.r1_penalty(critic, real)[0]

  gain = 0.5 * gamma * interval * config.train.n_critic
  grads = jax.grad(r1)(after_main.d_params)
  expected = jax.tree_util.tree_map(lambda p, g: p - lr * gain * g, after_main.d_params, grads)
  for got, want in zip(jax.tree_util.tree_leaves(results[gamma].d_params),
                       jax.tree_util.tree_leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(results[gamma].d_params),
      jax.tree_util.tree_leaves(after_main.d_params)))
  assert moved > 1e-5  # the phase did move D


def test_a_fresh_states_ema_is_a_copy_of_the_generator():
  """The EMA generator starts as G itself (StyleGAN2-ADA deep-copies G): an EMA from zeros is
  hidden by the default ramp-up (beta = 0 on the first step) but not by a run without one."""
  _, init, _ = _default_step()
  state = init()
  leaves = jax.tree_util.tree_leaves
  assert len(leaves(state.ema_params)) == len(leaves(state.g_params))
  for e, g in zip(leaves(state.ema_params), leaves(state.g_params)):
    np.testing.assert_array_equal(e, g)
  assert any(float(np.max(np.abs(g))) > 0 for g in leaves(state.g_params))


@pytest.mark.patches_traced_code
def test_every_d_pass_of_a_step_augments_with_its_own_draw(make_config, monkeypatch):
  """Reals, fakes, R1's reals and G's fakes each get their own augmentation draw (as each call
  of StyleGAN2-ADA's augment pipe does): one draw shared by reals and fakes lets D compare them
  under the same crop and colour shift, which is not what it is trained to tell apart."""
  from jaxgan import augment as augment_lib
  seen = []

  def recording(images, key, policy):
    jax.debug.callback(lambda k: seen.append(tuple(np.asarray(k).ravel().tolist())), key)
    return images

  monkeypatch.setattr(augment_lib, "diffaugment", recording)
  config = make_config(**{"augment.name": "diffaugment", "model.d_norm": "layer",
                          "loss.r1_gamma": 1.0, "loss.r1_interval": 1})
  init, step_fn = _setup(config)
  _, metrics = jax.jit(steps.with_state_rng(step_fn))(init(), _batches(config, 1)[0])
  jax.effects_barrier()
  assert float(metrics["r1_penalty"]) >= 0  # the R1 phase ran
  assert len(seen) == 4 and len(set(seen)) == 4  # reals, fakes, R1's reals, G's fakes


def test_d_loss_and_lecam_over_several_critic_updates(make_config):
  """n_critic = 3 with LeCam, D held still (SGD at lr 0) so every critic update's logits are
  D's on its own slice: the logged d_loss is the mean over the 3 updates of the adversarial loss
  plus weight * LeCam, whose anchors are LeCam's zero-debiased EMA after k + 1 updates
  (a count stuck at 1 makes the second update's anchors about twice the mean logits)."""
  n, weight, decay = 3, 1.0, 0.99
  config = make_config(**{"train.n_critic": n, "loss.lecam_weight": weight,
                          "loss.lecam_ema_decay": decay, "model.d_norm": "layer"})
  gen, disc = models.build_models(config)
  g_tx, _ = state_lib.make_optimizers(config)
  d_tx = optax.sgd(0.0)
  loss = losses.build_loss(config)
  state = state_lib.init_state(config, gen, disc, g_tx, d_tx, config.seed)
  step_fn = steps.make_train_step(config, gen, disc, loss, g_tx, d_tx)
  batch = _batches(config, 1)[0]
  new, metrics = jax.jit(steps.with_state_rng(step_fn))(state, batch)
  assert int(metrics["nonfinite"]) == 0

  b = config.train.batch_size
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 3 * n + 2)
  images = steps.to_model_range(jnp.asarray(batch["image"])).reshape((b, n, 16, 16, 3))
  labels = jnp.asarray(batch["label"]).reshape(b, n)  # interleaved: slice k is column k
  d = lambda x, y: np.asarray(steps._apply(disc, state.d_params, {}, x, y)[0])
  ema, values, penalties = {"real": 0.0, "fake": 0.0}, [], []
  for k in range(n):
    z = jax.random.normal(keys[3 * k], (b, config.model.z_dim))
    fake, _ = steps._apply(gen, state.g_params, state.g_batch_stats, z, labels[:, k])
    real_logits, fake_logits = d(images[:, k], labels[:, k]), d(fake, labels[:, k])
    for side, logits in (("real", real_logits), ("fake", fake_logits)):
      ema[side] = decay * ema[side] + (1 - decay) * float(np.mean(logits))
    a_real, a_fake = (ema[s] / (1 - decay ** (k + 1)) for s in ("real", "fake"))
    penalty = (np.mean(np.maximum(real_logits - a_fake, 0) ** 2)
               + np.mean(np.maximum(a_real - fake_logits, 0) ** 2))
    penalties.append(penalty)
    values.append(float(loss.d_loss(real_logits, fake_logits)) + weight * penalty)
  assert min(penalties) > 1e-4
  assert float(metrics["d_loss"]) == pytest.approx(np.mean(values), rel=1e-5)
  assert float(metrics["lecam"]) == pytest.approx(penalties[-1], rel=1e-4)
  for side in ("real", "fake"):
    assert float(new.lecam[side]) == pytest.approx(ema[side], rel=1e-4)


def test_orthogonal_regularisation_adds_biggans_gradient_to_g(make_config):
  """BigGAN adds beta * 2 (W^T W * (1 - I)) W by hand to each weight's gradient (W^T W the Gram
  of its output filters; here W is [-1, out], so the term reads 2 W (W^T W * (1 - I))). With SGD
  for G, turning the regulariser on moves G by exactly -lr times that more; Adam's normalisation
  would hide a wrong factor."""
  beta, lr = 1.0, 0.01
  results = {}
  for weight in (0.0, beta):
    config = make_config(**{"model.orthogonal_reg": weight})
    gen, disc = models.build_models(config)
    _, d_tx = state_lib.make_optimizers(config)
    g_tx = optax.sgd(lr)
    state = state_lib.init_state(config, gen, disc, g_tx, d_tx, config.seed)
    step_fn = steps.make_train_step(config, gen, disc, losses.build_loss(config), g_tx, d_tx)
    results[weight], _ = jax.jit(steps.with_state_rng(step_fn))(state, _batches(config, 1)[0])
  moved = []
  for path, before in jax.tree_util.tree_leaves_with_path(state.g_params):
    with_reg, without = (np.asarray(_at(results[w].g_params, path)) for w in (beta, 0.0))
    want = np.zeros_like(with_reg)
    if jax.tree_util.keystr(path).endswith("['kernel']") and before.ndim >= 2:
      w = np.asarray(before, np.float64).reshape(-1, before.shape[-1])
      gram = w.T @ w
      want = (-lr * beta * 2 * w @ (gram * (1 - np.eye(len(gram))))).reshape(before.shape)
      moved.append(float(np.max(np.abs(want))))
    np.testing.assert_allclose(with_reg - without, want, rtol=1e-3, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
  assert moved and max(moved) > 1e-5


def _at(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree
