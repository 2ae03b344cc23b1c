"""Objectives of generative models: VAE terms, GAN and WGAN-GP losses.

Every function is pure and jit-able and returns a per-example value of shape
``[batch]``, so that the caller can mask padded examples before reducing (as the
losses of :mod:`jdl.losses` do). Logits and critic scores may be ``[batch]`` or
``[batch, ...]`` (e.g. ``[batch, 1]``); their non-batch axes are averaged.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from jdl.generative import objectives
  >>> mean, logvar = jnp.zeros((4, 2)), jnp.zeros((4, 2))
  >>> objectives.gaussian_kl(mean, logvar).tolist()
  [0.0, 0.0, 0.0, 0.0]
  >>> objectives.reparameterize(mean, logvar, key=jax.random.key(0)).shape
  (4, 2)

References:
  Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
  Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014.
  Arjovsky et al., "Wasserstein GAN", ICML 2017.
  Gulrajani et al., "Improved Training of Wasserstein GANs", NeurIPS 2017.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jdl import errors


def _sum_per_example(x: jax.Array) -> jax.Array:
  """Sums ``x: [batch, ...]`` over its non-batch axes; returns ``[batch]``."""
  return jnp.sum(x, axis=tuple(range(1, x.ndim)))


def _mean_per_example(x: jax.Array) -> jax.Array:
  """``[batch]`` from ``[batch]`` or ``[batch, ...]`` (non-batch axes averaged)."""
  x = jnp.asarray(x)
  errors.require(x.ndim >= 1, f"logits or scores need a batch axis, got shape {x.shape}")
  return jnp.mean(x, axis=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def _same_shape(a: jax.Array, b: jax.Array, what: str) -> None:
  errors.require(jnp.shape(a) == jnp.shape(b),
                 f"{what} must have the same shape, got {jnp.shape(a)} and {jnp.shape(b)}")


def bernoulli_nll(logits: jax.Array, x: jax.Array) -> jax.Array:
  """``-log p(x | logits)`` of a Bernoulli decoder, summed over the non-batch axes.

  Args:
    logits: ``[batch, ...]`` decoder logits.
    x: targets shaped like ``logits``, in ``[0, 1]`` (grey levels are allowed: the
      loss is then the cross-entropy, whose minimum is not 0).

  Returns:
    ``[batch]`` negative log-likelihoods in nats.

  Raises:
    JdlError: the shapes differ.
  """
  _same_shape(logits, x, "logits and x")
  logits = jnp.asarray(logits)
  return _sum_per_example(optax.sigmoid_binary_cross_entropy(logits, jnp.asarray(x, logits.dtype)))


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` in closed form.

  ``0.5 * sum(exp(logvar) + mean**2 - 1 - logvar)`` over the latent axes (all the
  non-batch axes).

  Args:
    mean: ``[batch, latent]`` means of the approximate posterior.
    logvar: ``[batch, latent]`` log-variances.

  Returns:
    ``[batch]`` KL divergences in nats.

  Raises:
    JdlError: the shapes differ.

  References:
    Kingma & Welling 2014, appendix B.
  """
  _same_shape(mean, logvar, "mean and logvar")
  mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
  return 0.5 * _sum_per_example(jnp.exp(logvar) + mean**2 - 1.0 - logvar)


def reparameterize(mean: jax.Array, logvar: jax.Array, *, key: jax.Array) -> jax.Array:
  """Samples ``z = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)``.

  The sample is differentiable in ``mean`` and ``logvar`` (the reparameterisation
  trick, Kingma & Welling 2014, sec. 2.4).

  Args:
    mean: ``[batch, latent]`` means.
    logvar: log-variances shaped like ``mean``.
    key: a PRNG key.

  Returns:
    ``z`` shaped like ``mean``.

  Raises:
    JdlError: the shapes differ.
  """
  _same_shape(mean, logvar, "mean and logvar")
  mean, logvar = jnp.asarray(mean), jnp.asarray(logvar)
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * logvar) * eps


def gan_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """``-log D(x) - log(1 - D(G(z)))`` = ``softplus(-real) + softplus(fake)``.

  Args:
    real_logits: ``[batch]`` (or ``[batch, ...]``) discriminator logits on data.
    fake_logits: the logits on generated samples, shaped like ``real_logits``.

  Returns:
    ``[batch]`` losses.

  Raises:
    JdlError: the shapes differ.
  """
  _same_shape(real_logits, fake_logits, "real_logits and fake_logits")
  return (_mean_per_example(jax.nn.softplus(-jnp.asarray(real_logits)))
          + _mean_per_example(jax.nn.softplus(jnp.asarray(fake_logits))))


def gan_generator_loss(fake_logits: jax.Array) -> jax.Array:
  """The non-saturating generator loss ``-log D(G(z))`` = ``softplus(-fake)``.

  Goodfellow et al. 2014 (sec. 3) train G to maximise ``log D(G(z))`` rather than
  to minimise ``log(1 - D(G(z)))``: same fixed point, strong gradients early on.

  Args:
    fake_logits: ``[batch]`` (or ``[batch, ...]``) logits on generated samples.

  Returns:
    ``[batch]`` losses.
  """
  return _mean_per_example(jax.nn.softplus(-jnp.asarray(fake_logits)))


def wgan_critic_loss(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """The critic's loss ``f(G(z)) - f(x)`` (it maximises the score gap).

  Args:
    real_scores: ``[batch]`` (or ``[batch, ...]``) critic scores on data.
    fake_scores: the scores on generated samples, shaped like ``real_scores``.

  Returns:
    ``[batch]`` losses; minus their mean estimates the Wasserstein-1 distance when
    the critic is 1-Lipschitz.

  Raises:
    JdlError: the shapes differ.
  """
  _same_shape(real_scores, fake_scores, "real_scores and fake_scores")
  return _mean_per_example(fake_scores) - _mean_per_example(real_scores)


def wgan_generator_loss(fake_scores: jax.Array) -> jax.Array:
  """The generator's loss ``-f(G(z))``; returns ``[batch]``."""
  return -_mean_per_example(fake_scores)


def _safe_norm(g: jax.Array) -> jax.Array:
  """Per-example L2 norm of ``g: [batch, ...]`` whose gradient is 0, not NaN, at 0.

  ``sqrt`` has an infinite derivative at 0, so a zero input gradient (e.g. a critic
  with all its ReLUs dead at ``x_hat``) would turn the double-backward of the
  penalty into NaN. The double ``where`` keeps the value exact (no epsilon bias)
  and makes the gradient at 0 equal to 0.
  """
  sq = _sum_per_example(g * g)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _interpolate(real: jax.Array, fake: jax.Array, *, key: jax.Array) -> jax.Array:
  """``eps * real + (1 - eps) * fake``, one ``eps ~ U[0, 1]`` per example."""
  _same_shape(real, fake, "real and fake")
  real, fake = jnp.asarray(real), jnp.asarray(fake)
  errors.require(real.ndim >= 1, f"real and fake need a batch axis, got shape {real.shape}")
  eps_shape = (real.shape[0],) + (1,) * (real.ndim - 1)
  eps = jax.random.uniform(key, eps_shape, real.dtype)
  return eps * real + (1.0 - eps) * fake


def gradient_penalty(critic_fn: Callable[[jax.Array], jax.Array], real: jax.Array,
                     fake: jax.Array, *, key: jax.Array) -> jax.Array:
  """The WGAN-GP penalty ``(||grad_x f(x_hat)||_2 - 1)**2`` per example.

  ``x_hat = eps * real + (1 - eps) * fake`` with one ``eps ~ U[0, 1]`` per example.
  The input gradients of all examples come from one ``jax.grad`` of
  ``sum(critic_fn(x_hat))``: valid because the critic treats examples
  independently (no batch norm in a WGAN-GP critic), so example ``i``'s gradient
  depends on its own score only. The result is differentiable in the critic's
  parameters closed over by ``critic_fn`` (double backward); the norm's gradient at
  a zero input gradient is defined as 0 (see :func:`_safe_norm`).

  Args:
    critic_fn: ``[batch, ...] -> [batch]`` (or ``[batch, 1]``) critic scores.
    real: ``[batch, ...]`` data.
    fake: generated samples shaped like ``real``.
    key: the PRNG key of the interpolation weights; the same key gives the same
      ``x_hat``.

  Returns:
    ``[batch]`` penalties (multiply their mean by lambda, 10 in the paper).

  Raises:
    JdlError: the shapes differ.

  References:
    Gulrajani et al. 2017, Algorithm 1.
  """
  x_hat = _interpolate(real, fake, key=key)
  grads = jax.grad(lambda x: jnp.sum(critic_fn(x)))(x_hat)
  return (_safe_norm(grads) - 1.0) ** 2
