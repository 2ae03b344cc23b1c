"""jdl.generative objectives and metrics against numpy formulas and closed forms."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jdl.errors import JdlError
from jdl.generative import evaluation
from jdl.generative import objectives as obj

RNG = np.random.default_rng(0)


def _log_sigmoid(x):
  return -np.logaddexp(0.0, -np.asarray(x, np.float64))


# ----------------------------------------------------------------------------- VAE terms


def test_gaussian_kl_matches_numpy_formula():
  mean = RNG.normal(size=(8, 5)).astype(np.float32)
  logvar = RNG.normal(scale=0.7, size=(8, 5)).astype(np.float32)
  m, lv = mean.astype(np.float64), logvar.astype(np.float64)
  expected = 0.5 * np.sum(np.exp(lv) + m**2 - 1.0 - lv, axis=1)
  got = jax.jit(obj.gaussian_kl)(mean, logvar)
  chex.assert_shape(got, (8,))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(obj.gaussian_kl(np.zeros((3, 4)), np.zeros((3, 4))), 0.0, atol=0)


@pytest.mark.parametrize("mean,logvar", [
    ([0.5, -1.0, 0.2], [0.3, -0.5, 0.0]),
    ([1.5, 0.0, -0.3], [-1.2, 0.8, 0.4]),
])
def test_gaussian_kl_matches_monte_carlo(mean, logvar):
  """E_q[log q(z) - log p(z)] over 200k reparameterised samples, within 2%."""
  n = 200_000
  m = jnp.tile(jnp.asarray(mean, jnp.float32), (n, 1))
  lv = jnp.tile(jnp.asarray(logvar, jnp.float32), (n, 1))
  z = np.asarray(obj.reparameterize(m, lv, key=jax.random.key(1)), np.float64)
  mu, var = np.asarray(mean), np.exp(np.asarray(logvar))
  log_q = -0.5 * np.sum(np.log(2 * np.pi * var) + (z - mu) ** 2 / var, axis=1)
  log_p = -0.5 * np.sum(np.log(2 * np.pi) + z**2, axis=1)
  mc = np.mean(log_q - log_p)
  stderr = np.std(log_q - log_p) / np.sqrt(n)
  closed = float(obj.gaussian_kl(m[:1], lv[:1])[0])
  assert stderr < 0.004 * closed  # So that the 2% tolerance is > 5 standard errors.
  np.testing.assert_allclose(mc, closed, rtol=0.02)


def test_reparameterize_keys_shapes_and_gradients():
  mean = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
  logvar = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
  key = jax.random.key(7)
  z1 = obj.reparameterize(mean, logvar, key=key)
  chex.assert_trees_all_equal(z1, obj.reparameterize(mean, logvar, key=key))
  assert not np.allclose(z1, obj.reparameterize(mean, logvar, key=jax.random.key(8)))
  # dz/dmean = 1 and dz/dlogvar = (z - mean) / 2 elementwise.
  g_mean, g_logvar = jax.grad(lambda m, lv: jnp.sum(obj.reparameterize(m, lv, key=key)),
                              argnums=(0, 1))(mean, logvar)
  np.testing.assert_allclose(g_mean, 1.0)
  np.testing.assert_allclose(g_logvar, 0.5 * (z1 - mean), rtol=1e-5, atol=1e-6)
  with pytest.raises(JdlError, match="mean and logvar"):
    obj.reparameterize(mean, logvar[:, :2], key=key)


def test_bernoulli_nll_matches_numpy():
  logits = RNG.uniform(-5, 5, size=(4, 3, 5, 1)).astype(np.float32)
  x = RNG.uniform(0, 1, size=logits.shape).astype(np.float32)
  x[0] = np.round(x[0])  # Binary targets as well as grey levels.
  s = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  expected = -np.sum(x * np.log(s) + (1 - x) * np.log(1 - s), axis=(1, 2, 3))
  got = jax.jit(obj.bernoulli_nll)(logits, x)
  chex.assert_shape(got, (4,))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  with pytest.raises(JdlError, match="logits and x"):
    obj.bernoulli_nll(logits, x[..., 0])


# ----------------------------------------------------------------------------- GAN losses

_REAL = np.array([-50.0, -3.0, -0.5, 0.0, 0.7, 4.0, 50.0], np.float32)
_FAKE = np.array([2.0, 50.0, -1.5, 0.0, -50.0, 0.3, -4.0], np.float32)
GAN_CASES = [
    ("discriminator", lambda: obj.gan_discriminator_loss(_REAL, _FAKE),
     -_log_sigmoid(_REAL) - _log_sigmoid(-_FAKE)),
    ("discriminator_b1", lambda: obj.gan_discriminator_loss(_REAL[:, None], _FAKE[:, None]),
     -_log_sigmoid(_REAL) - _log_sigmoid(-_FAKE)),
    ("generator", lambda: obj.gan_generator_loss(_FAKE), -_log_sigmoid(_FAKE)),
    ("generator_b1", lambda: obj.gan_generator_loss(_FAKE[:, None]), -_log_sigmoid(_FAKE)),
    ("wgan_critic", lambda: obj.wgan_critic_loss(_REAL, _FAKE),
     _FAKE.astype(np.float64) - _REAL),
    ("wgan_critic_b1", lambda: obj.wgan_critic_loss(_REAL[:, None], _FAKE[:, None]),
     _FAKE.astype(np.float64) - _REAL),
    ("wgan_generator", lambda: obj.wgan_generator_loss(_FAKE), -_FAKE.astype(np.float64)),
]


@pytest.mark.parametrize("name,compute,expected", GAN_CASES, ids=[c[0] for c in GAN_CASES])
def test_gan_losses_match_log_sigmoid_formulas(name, compute, expected):
  del name
  got = compute()
  chex.assert_shape(got, (len(_REAL),))
  assert np.all(np.isfinite(got))  # Stable at |logit| = 50.
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_gan_losses_jit_and_reject_mismatched_shapes():
  np.testing.assert_allclose(jax.jit(obj.gan_discriminator_loss)(_REAL, _FAKE),
                             obj.gan_discriminator_loss(_REAL, _FAKE), rtol=1e-6)
  with pytest.raises(JdlError, match="real_logits and fake_logits"):
    obj.gan_discriminator_loss(_REAL, _FAKE[:3])
  with pytest.raises(JdlError, match="real_scores and fake_scores"):
    obj.wgan_critic_loss(_REAL, _FAKE[:, None])


# ----------------------------------------------------------------------------- gradient penalty

SHAPE = (6, 4, 4, 1)


def _linear_critic(w):
  return lambda x: x.reshape(x.shape[0], -1) @ w


def _direction(norm, seed=0):
  v = np.random.default_rng(seed).normal(size=int(np.prod(SHAPE[1:])))
  return jnp.asarray(norm * v / np.linalg.norm(v), jnp.float32)


@pytest.mark.parametrize("norm,expected,atol", [(1.0, 0.0, 1e-6), (3.0, 4.0, 1e-5),
                                                 (0.5, 0.25, 1e-6)])
def test_gradient_penalty_of_linear_critic(norm, expected, atol):
  """grad_x <w, x> = w everywhere, so the penalty is (||w|| - 1)^2 for every example."""
  real = jnp.asarray(RNG.uniform(size=SHAPE), jnp.float32)
  fake = jnp.asarray(RNG.uniform(size=SHAPE), jnp.float32)
  gp = jax.jit(lambda r, f: obj.gradient_penalty(_linear_critic(_direction(norm)), r, f,
                                                 key=jax.random.key(0)))(real, fake)
  chex.assert_shape(gp, (SHAPE[0],))
  np.testing.assert_allclose(gp, expected, atol=atol, rtol=0)


@pytest.mark.parametrize("norm", [2.5, 0.4])
def test_gradient_penalty_double_backward_matches_analytic(norm):
  """d/dw mean_i (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||."""
  real = jnp.asarray(RNG.uniform(size=SHAPE), jnp.float32)
  fake = jnp.asarray(RNG.uniform(size=SHAPE), jnp.float32)
  w = _direction(norm, seed=3)
  loss = lambda w: jnp.mean(obj.gradient_penalty(_linear_critic(w), real, fake,
                                                 key=jax.random.key(1)))
  g = jax.jit(jax.grad(loss))(w)
  w64 = np.asarray(w, np.float64)
  n = np.linalg.norm(w64)
  assert np.all(np.isfinite(g))
  np.testing.assert_allclose(g, 2 * (n - 1) * w64 / n, rtol=1e-4, atol=1e-6)


def test_gradient_penalty_gradient_is_finite_at_zero_input_gradient():
  real = jnp.ones(SHAPE)
  w = jnp.zeros(int(np.prod(SHAPE[1:])))  # grad_x f = 0: the norm's kink.
  loss = lambda w: jnp.mean(obj.gradient_penalty(_linear_critic(w), real, real,
                                                 key=jax.random.key(0)))
  np.testing.assert_allclose(loss(w), 1.0)
  assert np.all(np.isfinite(jax.jit(jax.grad(loss))(w)))


def test_interpolates_one_weight_per_example_and_reproducible():
  real = jnp.asarray(RNG.normal(size=SHAPE), jnp.float32)
  fake = jnp.asarray(RNG.normal(size=SHAPE), jnp.float32)
  key = jax.random.key(5)
  x_hat = obj._interpolate(real, fake, key=key)
  chex.assert_trees_all_equal(x_hat, obj._interpolate(real, fake, key=key))
  assert not np.allclose(x_hat, obj._interpolate(real, fake, key=jax.random.key(6)))
  # x_hat - fake = eps_i (real - fake) with one eps_i in [0, 1] per example.
  d = np.asarray(real - fake, np.float64).reshape(SHAPE[0], -1)
  moved = np.asarray(x_hat - fake, np.float64).reshape(SHAPE[0], -1)
  eps = np.sum(moved * d, axis=1) / np.sum(d * d, axis=1)  # Least squares, per example.
  np.testing.assert_allclose(moved, eps[:, None] * d, atol=1e-5)
  assert np.all((eps >= 0) & (eps <= 1)) and np.ptp(eps) > 0.1


def test_gradient_penalty_weights_are_uniform_per_example():
  """Quadratic critic f(x) = ||x||^2 / 2: grad = x_hat, so the penalty reveals eps.

  With real = a unit-norm constant image and fake = 0, ||x_hat_i|| = eps_i and
  eps_i = 1 - sqrt(penalty_i). One weight per example gives U[0, 1] statistics
  (mean 1/2, std 0.289); per-pixel weights would give ||x_hat|| ~ 0.577 always.
  """
  b = 4096
  real = jnp.full((b, 4, 4, 1), 0.25)  # Each image has norm 1.
  gp = obj.gradient_penalty(lambda x: 0.5 * jnp.sum(x**2, axis=(1, 2, 3)), real,
                            jnp.zeros_like(real), key=jax.random.key(2))
  eps = 1.0 - np.sqrt(np.asarray(gp, np.float64))
  assert np.all((eps >= -1e-6) & (eps <= 1 + 1e-6))
  np.testing.assert_allclose(eps.mean(), 0.5, atol=0.03)  # stderr 0.0045
  np.testing.assert_allclose(eps.std(), np.sqrt(1 / 12), atol=0.02)


def test_gradient_penalty_rejects_mismatched_shapes():
  with pytest.raises(JdlError, match="real and fake"):
    obj.gradient_penalty(lambda x: x.sum(axis=1), jnp.ones((2, 3)), jnp.ones((2, 4)),
                         key=jax.random.key(0))


# ----------------------------------------------------------------------------- Inception Score


def _reference_is(probs, splits):
  """IS via the identity E_x KL(p(y|x) || p(y)) = H(p(y)) - E_x H(p(y|x))."""
  def entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
  scores = [np.exp(entropy(c.mean(axis=0)) - entropy(c).mean())
            for c in np.split(probs, splits)]
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("name,probs,splits,expected", [
    ("one_hot_uniform", np.eye(10)[np.arange(100) % 10], 10, 10.0),
    ("one_hot_uniform_1split", np.eye(7)[np.arange(70) % 7], 1, 7.0),
    ("identical_rows", np.tile(np.array([[0.7, 0.2, 0.1]]), (30, 1)), 3, 1.0),
    ("uniform_rows", np.full((40, 5), 0.2), 4, 1.0),
    ("one_class_only", np.eye(4)[np.zeros(20, int)], 2, 1.0),
])
def test_inception_score_closed_forms(name, probs, splits, expected):
  del name
  mean, std = evaluation.inception_score(probs, splits=splits)
  np.testing.assert_allclose(mean, expected, rtol=1e-12)
  np.testing.assert_allclose(std, 0.0, atol=1e-12)


@pytest.mark.parametrize("alpha,splits", [(0.1, 10), (1.0, 5), (5.0, 1)])
def test_inception_score_matches_reference_on_dirichlet(alpha, splits):
  probs = np.random.default_rng(1).dirichlet(np.full(10, alpha), size=200)
  got = evaluation.inception_score(probs.astype(np.float32), splits=splits)
  expected = _reference_is(probs, splits)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # float32 input
  assert 1.0 <= got[0] <= 10.0


@pytest.mark.parametrize("probs,splits,match", [
    (np.full(10, 0.1), 1, "shape"),
    (np.full((4, 2, 2), 0.25), 1, "shape"),
    (np.array([[1.2, -0.2], [0.5, 0.5]]), 1, "negative"),
    (np.array([[0.6, 0.6], [0.5, 0.5]]), 1, "sum to 1"),
    (np.array([[np.nan, 1.0], [0.5, 0.5]]), 1, "non-finite"),
    (np.full((5, 2), 0.5), 10, "splits=10"),
    (np.full((5, 2), 0.5), 0, "splits"),
])
def test_inception_score_rejects_bad_input(probs, splits, match):
  with pytest.raises(JdlError, match=match):
    evaluation.inception_score(probs, splits=splits)


# ----------------------------------------------------------------------------- Frechet distance


def _features(n, d, seed, shift=0.0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  return rng.normal(size=(n, d)) @ mix + shift


def test_frechet_distance_of_a_set_with_itself_is_zero():
  f = _features(500, 8, 0)
  fd = evaluation.frechet_distance(f, f)
  assert 0.0 <= fd < 1e-6 * np.trace(np.cov(f, rowvar=False))


def test_frechet_distance_diagonal_closed_form():
  mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
  s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
  got = evaluation.frechet_distance_from_stats(mu1, np.diag(s1), mu2, np.diag(s2))
  np.testing.assert_allclose(got, expected, rtol=1e-10)
  # From 200k samples of each Gaussian: the estimate is within 2% (sampling error ~0.3%).
  rng = np.random.default_rng(2)
  a = mu1 + np.sqrt(s1) * rng.normal(size=(200_000, 4))
  b = mu2 + np.sqrt(s2) * rng.normal(size=(200_000, 4))
  np.testing.assert_allclose(evaluation.frechet_distance(a, b), expected, rtol=0.02)


def _psd_sqrt(s):
  vals, vecs = np.linalg.eigh(s)
  return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def _symmetric_frechet(a, b):
  """The distance with Tr((S1 S2)^(1/2)) = Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), by eigh:
  defined for singular (positive semi-definite) covariances too."""
  mu1, mu2 = a.mean(0), b.mean(0)
  s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  r1 = _psd_sqrt(s1)
  return (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
          - 2 * np.trace(_psd_sqrt(r1 @ s2 @ r1)))


def test_frechet_distance_general_covariances_match_symmetric_form():
  a, b = _features(300, 6, 3), _features(400, 6, 4, shift=0.5)
  expected = _symmetric_frechet(a, b)
  np.testing.assert_allclose(evaluation.frechet_distance(a, b), expected, rtol=1e-8)
  np.testing.assert_allclose(evaluation.frechet_distance(b, a), expected, rtol=1e-8)


@pytest.mark.parametrize("a, b", [
    (_features(5, 10, 5), _features(6, 10, 6)),  # Fewer samples than dims: rank < D.
    (_features(4, 10, 1), _features(3, 10, 2, shift=1.0)),
    (_features(5, 10, 5), _features(5, 10, 6)),
], ids=["ranks_4_5", "ranks_3_2_shifted", "ranks_4_4"])
def test_frechet_distance_singular_covariances_match_symmetric_form(a, b):
  expected = _symmetric_frechet(a, b)
  assert expected > 1.0  # Far from 0, where the clamp at 0 would hide an error.
  np.testing.assert_allclose(evaluation.frechet_distance(a, b), expected, rtol=1e-6)
  np.testing.assert_allclose(evaluation.frechet_distance(b, a), expected, rtol=1e-6)


def test_frechet_distance_with_constant_features():
  rng = np.random.default_rng(7)
  zero = np.zeros((50, 3))
  zero[:, 0] = rng.normal(size=50)  # Two constant features: a rank-1 covariance.
  assert 0.0 <= evaluation.frechet_distance(zero, zero) < 1e-6
  other = np.zeros((40, 3))
  other[:, 1] = 2.0 * rng.normal(size=40) + 0.5  # Rank 1 too, along another axis.
  expected = _symmetric_frechet(zero, other)
  assert expected > 1.0
  np.testing.assert_allclose(evaluation.frechet_distance(zero, other), expected, rtol=1e-6)


def test_frechet_distance_retries_with_regularised_covariances(monkeypatch):
  real_sqrtm = scipy.linalg.sqrtm
  calls = []

  def flaky_sqrtm(a):
    calls.append(a.copy())
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
  s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
  got = evaluation.frechet_distance_from_stats(np.zeros(2), s1, np.ones(2), s2)
  assert len(calls) == 2
  eps = 1e-6
  np.testing.assert_allclose(calls[1], (s1 + eps * np.eye(2)) @ (s2 + eps * np.eye(2)))
  np.testing.assert_allclose(got, 2 + (1 - 3) ** 2 + (2 - 1) ** 2, rtol=1e-5)
  monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: np.full_like(a, np.nan))
  with pytest.raises(JdlError, match="square root"):
    evaluation.frechet_distance_from_stats(np.zeros(2), s1, np.ones(2), s2)


@pytest.mark.parametrize("a,b,match", [
    (np.zeros((10, 3)), np.zeros((10, 4)), "feature size"),
    (np.zeros(10), np.zeros((10, 1)), "features_a must have shape"),
    (np.zeros((1, 3)), np.zeros((10, 3)), "at least 2 samples"),
    (np.full((4, 2), np.inf), np.zeros((4, 2)), "non-finite"),
])
def test_frechet_distance_rejects_bad_input(a, b, match):
  with pytest.raises(JdlError, match=match):
    evaluation.frechet_distance(a, b)


def test_frechet_distance_from_stats_rejects_bad_shapes():
  with pytest.raises(JdlError, match="sigma1 and sigma2"):
    evaluation.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
  with pytest.raises(JdlError, match="mu1 and mu2"):
    evaluation.frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(3))
