"""Activation functions by name."""

from __future__ import annotations

from collections.abc import Callable
import functools

import jax
import jax.numpy as jnp

from jdl import errors

Activation = Callable[[jax.Array], jax.Array]


def step(x: jax.Array) -> jax.Array:
  """Heaviside step: 1 where ``x > 0``, else 0, in the dtype of ``x``.

  Its gradient is zero everywhere (a comparison is not differentiable), so a network
  built only from ``step`` units cannot be trained by gradient descent; it is here
  for perceptron-style experiments and teaching.
  """
  return (x > 0).astype(x.dtype)


def linear(x: jax.Array) -> jax.Array:
  """The identity."""
  return x


ACTIVATIONS: dict[str, Activation] = {
    "relu": jax.nn.relu,
    "leaky_relu": functools.partial(jax.nn.leaky_relu, negative_slope=0.01),
    "elu": jax.nn.elu,
    # The exact (erf) form, as in PyTorch and Keras; jax's default is the tanh
    # approximation.
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "linear": linear,
    "step": step,
    "softplus": jax.nn.softplus,
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
}


def get_activation(name: str | Activation) -> Activation:
  """Returns the element-wise activation called ``name`` (a callable is returned as is).

  Args:
    name: one of ``relu``, ``leaky_relu`` (slope 0.01), ``elu``, ``gelu``,
      ``sigmoid``, ``tanh``, ``linear`` (identity), ``step`` (Heaviside, zero
      gradient), ``softplus``, ``swish`` / ``silu``.

  Raises:
    JdlError: unknown name.
  """
  if callable(name):
    return name
  return errors.lookup("activation", name, ACTIVATIONS)
