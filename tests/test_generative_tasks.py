"""The generative tasks' wiring against formulas: which player sees which batch, the
signs of the GAN and WGAN-GP objectives, the update order, the noise distributions
and the VAE's keys and padding. test_generative_math.py checks the objectives alone;
these check how the tasks call them (each test kills a bug found by mutation that
the resume, range and finiteness checks let through)."""

from __future__ import annotations

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import models
from jdl.generative import gan as gan_lib
from jdl.generative import objectives
from jdl.generative import tasks as gen_tasks


class _Linear(nn.Module):
  """A linear critic f(x) = <w, x>: its gradient, and so its penalty, is known."""

  @nn.compact
  def __call__(self, x, train=False):
    w = self.param("w", lambda k, s: jax.random.normal(k, s) * 0.2, (x[0].size,))
    return x.reshape(x.shape[0], -1) @ w


class _Constant(nn.Module):
  """G(z) = c for every z (c a parameter): the fakes are known whatever the noise."""

  @nn.compact
  def __call__(self, z, train=False):
    c = self.param("c", lambda k, s: jax.random.uniform(k, s), (4, 4, 1))
    return jnp.broadcast_to(c, (z.shape[0], 4, 4, 1)) + 0.0 * z[:, :1, None, None]


def _f(params, x):
  return np.asarray(x, np.float64).reshape(len(x), -1) @ np.asarray(params["w"], np.float64)


def _softplus(x):
  return np.logaddexp(0.0, x)


@pytest.mark.parametrize("kind", ["gan", "wgan_gp"])
def test_each_players_loss_against_goodfellow_and_gulrajani(kind):
  # GAN (Goodfellow et al. 2014, non-saturating G): D minimises softplus(-f(x)) +
  # softplus(f(x~)), G softplus(-f(G(z))). WGAN-GP (Gulrajani et al. 2017): the critic
  # minimises f(x~) - f(x) + lambda (||grad f|| - 1)^2, G -f(G(z)).
  critic = _Linear()
  real = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
  fake = jax.random.uniform(jax.random.key(2), (5, 4, 4, 1))
  params = critic.init(jax.random.key(0), real)["params"]
  task = gen_tasks.GANTask(kind=kind, latent_dim=2, gp_weight=10.0)
  state = types.SimpleNamespace(discriminator=critic, generator=_Constant())
  per, (parts, _) = task._d_loss(state, params, {}, real, fake, jax.random.key(3))
  f_real, f_fake = _f(params, real), _f(params, fake)
  if kind == "gan":
    np.testing.assert_allclose(per, _softplus(-f_real) + _softplus(f_fake), rtol=1e-5)
    np.testing.assert_allclose(parts["d_real"], 1 / (1 + np.exp(-f_real)), rtol=1e-5)
    np.testing.assert_allclose(parts["d_fake"], 1 / (1 + np.exp(-f_fake)), rtol=1e-5)
  else:
    penalty = (np.linalg.norm(np.asarray(params["w"], np.float64)) - 1) ** 2
    np.testing.assert_allclose(per, f_fake - f_real + 10.0 * penalty, rtol=1e-5)
    np.testing.assert_allclose(parts["wasserstein"], f_real - f_fake, rtol=1e-5)
  generator = _Constant()
  z = jnp.zeros((5, 2))
  g_params = generator.init(jax.random.key(4), z)["params"]
  _, (g_per, _) = task._g_loss(state, g_params, {}, params, {}, z, jax.random.key(5),
                               jnp.ones(5))
  f_gen = _f(params, np.broadcast_to(np.asarray(g_params["c"]), (5, 4, 4, 1)))
  np.testing.assert_allclose(g_per, _softplus(-f_gen) if kind == "gan" else -f_gen, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gan", "wgan_gp"])
def test_evaluation_scores_and_the_generator_step_faces_the_updated_discriminator(kind):
  x = jax.random.uniform(jax.random.key(5), (6, 4, 4, 1))
  state = gan_lib.create_gan_state(_Constant(), _Linear(), optax.sgd(0.5), optax.sgd(0.5), x,
                                   2, key=jax.random.key(0))
  task = gen_tasks.GANTask(kind=kind, latent_dim=2, metric_names=gen_tasks.METRICS[kind])
  fakes = np.broadcast_to(np.asarray(state.params["generator"]["c"]), x.shape)
  _, metrics = task.eval_step(state, {"x": x, "mask": jnp.ones(6)})
  d = state.params["discriminator"]
  f_real, f_fake = _f(d, x), _f(d, fakes)
  mean = lambda group: float(group["sum"]) / float(group["count"])  # noqa: E731
  expected = (np.mean(_softplus(-f_real) + _softplus(f_fake)) if kind == "gan"
              else np.mean(f_fake - f_real))
  np.testing.assert_allclose(mean(metrics["loss"]), expected, rtol=1e-5)
  # Goodfellow et al.'s Algorithm 1: the generator's step follows the discriminator's.
  new, metrics = task.train_step(state, {"x": x, "mask": jnp.ones(6)})
  f_gen = _f(new.params["discriminator"], fakes)
  np.testing.assert_allclose(mean(metrics["g_loss"]),
                             np.mean(_softplus(-f_gen) if kind == "gan" else -f_gen), rtol=1e-5)


def test_gan_noise_is_standard_normal():
  z = np.asarray(gen_tasks.GANTask(kind="gan", latent_dim=4).noise(jax.random.key(0), 20000))
  assert z.shape == (20000, 4)
  assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
  assert abs(np.mean(np.abs(z)) - np.sqrt(2 / np.pi)) < 0.02  # E|z| of N(0, 1), not uniform.


def _vae(binarize="dynamic"):
  model = models.VAE((4, 4, 1), hidden=(8,), latent=3)
  x = jax.random.uniform(jax.random.key(1), (6, 4, 4, 1))
  variables = model.init({"params": jax.random.key(0)}, x, key=jax.random.key(2))
  task = gen_tasks.VAETask(apply_fn=model.apply, loss=objectives.bernoulli_nll,
                           metric_names=(), num_classes=0, binarize=binarize)
  return model, task, variables, x


def test_vae_training_loss_uses_the_keys_its_docstring_names():
  # Pixels ~ Bernoulli(x) with fold_in(key, 3), the reparameterised sample with
  # fold_in(key, 2): one key for both would correlate the data noise with the latent's.
  model, task, variables, x = _vae()
  key = jax.random.key(9)
  loss, _ = task.loss_fn(variables["params"], {}, {"x": x, "mask": jnp.ones(6)}, key, True)
  binary = jax.random.bernoulli(jax.random.fold_in(key, 3), x).astype(jnp.float32)
  logits, mean, logvar = model.apply(variables, binary, key=jax.random.fold_in(key, 2))
  expected = np.mean(objectives.bernoulli_nll(logits, binary)
                     + objectives.gaussian_kl(mean, logvar))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_vae_loss_is_the_mean_over_the_real_rows_only():
  _, task, variables, x = _vae("threshold")
  mask = jnp.array([1, 1, 1, 1, 0, 0.0])
  loss, (per_example, _, _) = task.loss_fn(variables["params"], {}, {"x": x, "mask": mask},
                                           jax.random.key(9), True)
  np.testing.assert_allclose(loss, np.mean(np.asarray(per_example)[:4]), rtol=1e-6)


class _IdentityVAE(nn.Module):
  """generate(z) = z: the samples are the prior's draws."""
  latent: int = 4

  @nn.compact
  def __call__(self, x, *, key, train=False):
    return x, x, x

  def generate(self, z):
    return z


def test_vae_samples_decode_draws_of_a_standard_normal_prior():
  model = _IdentityVAE()
  state = types.SimpleNamespace(apply_fn=model.apply, variables={})
  task = gen_tasks.VAETask(apply_fn=model.apply, loss=None, metric_names=(), num_classes=0)
  z = np.asarray(gen_tasks.sample_images(state, task, model, 20000, key=jax.random.key(0)))
  assert z.shape == (20000, 4)
  assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.03
  assert abs(np.mean(np.abs(z)) - np.sqrt(2 / np.pi)) < 0.02
