"""Each loss against values computed by hand."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import losses

REAL = jnp.array([2.0, -1.0])
FAKE = jnp.array([0.5, -3.0])


def _softplus(x):
  return math.log1p(math.exp(x))


def test_non_saturating():
  loss = losses.LOSSES.get("non_saturating")
  d = (_softplus(-2.0) + _softplus(1.0)) / 2 + (_softplus(0.5) + _softplus(-3.0)) / 2
  g = (_softplus(-0.5) + _softplus(3.0)) / 2
  np.testing.assert_allclose(loss.d_loss(REAL, FAKE), d, rtol=1e-6)
  np.testing.assert_allclose(loss.g_loss(FAKE), g, rtol=1e-6)


def test_non_saturating_is_stable_for_large_logits():
  loss = losses.LOSSES.get("non_saturating")
  value = loss.d_loss(jnp.array([200.0]), jnp.array([-200.0]))
  assert np.isfinite(value) and value < 1e-30
  np.testing.assert_allclose(loss.g_loss(jnp.array([-200.0])), 200.0, rtol=1e-6)


def test_hinge():
  loss = losses.LOSSES.get("hinge")
  # relu(1 - [2, -1]) = [0, 2]; relu(1 + [0.5, -3]) = [1.5, 0]
  np.testing.assert_allclose(loss.d_loss(REAL, FAKE), 1.0 + 0.75, rtol=1e-6)
  np.testing.assert_allclose(loss.g_loss(FAKE), 1.25, rtol=1e-6)


def test_wgan():
  loss = losses.LOSSES.get("wgan_gp")
  np.testing.assert_allclose(loss.d_loss(REAL, FAKE), -1.25 - 0.5, rtol=1e-6)
  np.testing.assert_allclose(loss.g_loss(FAKE), 1.25, rtol=1e-6)
  assert loss.uses_gradient_penalty and loss.needs_per_sample_critic


def test_least_squares():
  loss = losses.LOSSES.get("least_squares")
  d = 0.5 * ((1.0 + 4.0) / 2) + 0.5 * ((0.25 + 9.0) / 2)
  np.testing.assert_allclose(loss.d_loss(REAL, FAKE), d, rtol=1e-6)
  np.testing.assert_allclose(loss.g_loss(FAKE), 0.5 * ((0.25 + 16.0) / 2), rtol=1e-6)


def test_gradient_penalty_of_linear_critic():
  # critic(x) = sum(w * x): the gradient is w everywhere, so the penalty is (||w|| - 1)^2.
  w = jnp.arange(12.0).reshape(1, 2, 2, 3) / 10
  critic = lambda x: jnp.sum(x * w, axis=(1, 2, 3))
  real = jax.random.normal(jax.random.PRNGKey(0), (4, 2, 2, 3))
  fake = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 2, 3))
  gp = losses.gradient_penalty(critic, real, fake, jax.random.PRNGKey(2))
  np.testing.assert_allclose(gp, (float(jnp.linalg.norm(w)) - 1.0) ** 2, rtol=1e-5)


def test_gradient_penalty_of_quadratic_critic_matches_direct():
  # critic(x) = 0.5 * ||x||^2: grad at x_hat is x_hat itself.
  critic = lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2, 3))
  real = jax.random.normal(jax.random.PRNGKey(0), (5, 3, 3, 3))
  fake = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 3, 3))
  key = jax.random.PRNGKey(3)
  eps = jax.random.uniform(key, (5, 1, 1, 1))
  x_hat = eps * real + (1 - eps) * fake
  expected = np.mean((np.linalg.norm(np.asarray(x_hat).reshape(5, -1), axis=1) - 1.0) ** 2)
  np.testing.assert_allclose(losses.gradient_penalty(critic, real, fake, key), expected, rtol=1e-5)


def test_gradient_penalty_has_a_finite_gradient_where_the_critic_is_flat():
  """A critic with zero input gradient (here w = 0) sits where sqrt's slope is infinite: without
  the norm's epsilon the penalty's gradient w.r.t. the critic's weights is NaN (0 * inf), and the
  train step would skip every such step as non-finite."""
  real = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 1))
  fake = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2, 1))

  def penalty(w):
    return losses.gradient_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), real, fake,
                                   jax.random.PRNGKey(2))

  w = jnp.zeros((1, 2, 2, 1))
  np.testing.assert_allclose(penalty(w), 1.0, atol=1e-5)  # (0 - 1)^2
  grad = np.asarray(jax.grad(penalty)(w))
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)  # the flat critic is a stationary point


def test_unknown_loss_names_choices():
  with pytest.raises(KeyError, match="hinge"):
    losses.LOSSES.get("wasserstein", "loss.name")


def test_orthogonal_penalty():
  q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
  conv = nn.initializers.orthogonal()(jax.random.PRNGKey(0), (3, 3, 4, 8))
  params = {"a": {"kernel": jnp.asarray(q, jnp.float32)},
            "b": {"kernel": conv, "bias": jnp.ones(8)},
            "emb": {"embedding": jnp.ones((3, 3))}}  # embeddings are not penalised
  assert float(losses.orthogonal_penalty(params)) < 1e-8
  # Scaling an orthogonal matrix keeps the off-diagonal zero: only correlations count.
  assert float(losses.orthogonal_penalty({"k": {"kernel": 3 * jnp.asarray(q)}})) < 1e-8
  w = jnp.array([[1.0, 1.0], [0.0, 1.0]])  # W^T W = [[1, 1], [1, 2]] -> 2 off-diagonal ones
  np.testing.assert_allclose(float(losses.orthogonal_penalty({"kernel": w})), 2.0, rtol=1e-6)
  assert float(losses.orthogonal_penalty({"x": {"kernel": jnp.ones((3, 3, 4, 8))}})) > 0


@pytest.mark.parametrize("shape", [(5, 40), (40, 5), (2, 3, 3, 30)])
def test_orthogonal_penalty_matches_the_direct_form(shape):
  """Wide kernels (fewer rows than columns) take the small-Gram path: same value and gradient as
  sum_{i != j} (w_i . w_j)^2 written out."""
  w = jax.random.normal(jax.random.PRNGKey(1), shape)

  def direct(w):
    m = jnp.reshape(w, (-1, w.shape[-1]))
    g = m.T @ m
    return jnp.sum((g * (1 - jnp.eye(g.shape[0]))) ** 2)

  penalty = lambda w: losses.orthogonal_penalty({"kernel": w})
  np.testing.assert_allclose(float(penalty(w)), float(direct(w)), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(penalty)(w), jax.grad(direct)(w), rtol=1e-4, atol=1e-4)
