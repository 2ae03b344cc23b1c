"""Multi-layer perceptron."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdl import errors
from jdl.models import conv
from jdl.models.activations import Activation, get_activation
from jdl.models.initializers import get_head_initializer
from jdl.models.initializers import get_initializer

Dtype = Any
# Where batch normalisation sits in a hidden layer: 'before' the activation
# (Dense/Conv -> BN -> act, Ioffe & Szegedy) or 'after' it (Dense/Conv -> act -> BN).
BN_POSITIONS = ("before", "after")


def norm_act(x: jax.Array, *, act: Activation, batch_norm: bool, bn_position: str,
             train: bool, dtype: Dtype, bn_name: str) -> tuple[jax.Array, jax.Array]:
  """Applies ``BN -> act`` or ``act -> BN`` (``act`` alone without batch norm).

  Called from a compact ``__call__``, so the ``BatchNorm`` named ``bn_name``
  belongs to the caller.

  Returns:
    ``(out, a)``: the layer's output and the activation's output (the value jdl
    models sow as ``intermediates``; with ``bn_position='after'`` it is the input
    of the batch norm).
  """
  def bn(y):
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, name=bn_name)(y)

  if not batch_norm:
    a = act(x)
    return a, a
  if bn_position == "before":
    a = act(bn(x))
    return a, a
  a = act(x)
  return bn(a), a


def layer_bias(batch_norm: bool, bn_position: str) -> bool:
  """Whether the Dense/Conv before :func:`norm_act` needs a bias.

  A batch norm right after the layer makes its bias redundant (the BN shift
  replaces it); one after the activation does not.
  """
  return not batch_norm or bn_position == "after"


def check_tbptt(tbptt: Any) -> None:
  """Raises ``JdlError`` unless ``tbptt`` (recurrent models) is a non-negative integer."""
  errors.require(
      isinstance(tbptt, int) and not isinstance(tbptt, bool) and tbptt >= 0,
      f"tbptt must be a non-negative integer (0 = full BPTT, k = cut the gradient "
      f"every k steps), got {tbptt!r}")


def check_common_fields(module: nn.Module) -> None:
  """Validates the fields the jdl models share, so a bad config fails at construction.

  Raises:
    JdlError: a bad ``num_outputs``, ``activation``, ``kernel_init``,
      ``init_scale``, ``tbptt`` or ``dropout_rate`` (each checked where the module
      has it), or a field annotated ``bool`` that is not one.
  """
  if hasattr(module, "conv_impl"):
    errors.lookup("conv_impl", module.conv_impl, {k: k for k in conv.IMPLS})
  if hasattr(module, "num_outputs"):
    num_outputs = module.num_outputs
    errors.require(
        isinstance(num_outputs, int) and not isinstance(num_outputs, bool)
        and num_outputs >= 1,
        f"num_outputs must be a positive integer, got {num_outputs!r}",
    )
  if hasattr(module, "activation"):
    own = getattr(type(module), "ACTIVATIONS", None)  # A recurrent cell's shorter list.
    if own is None:
      get_activation(module.activation)
    else:
      errors.lookup("activation", module.activation, own)
  if hasattr(module, "kernel_init"):
    get_initializer(module.kernel_init, getattr(module, "init_scale", None))
  if hasattr(module, "tbptt"):
    check_tbptt(module.tbptt)
  for field in ("dropout_rate", "conv_dropout_rate"):
    if hasattr(module, field):
      rate = getattr(module, field)
      errors.require(
          isinstance(rate, (int, float)) and not isinstance(rate, bool)
          and 0.0 <= rate < 1.0,
          f"{field} must be in [0, 1), got {rate!r}",
      )
  if hasattr(module, "bn_position"):
    errors.lookup("bn_position", module.bn_position, {p: p for p in BN_POSITIONS})
  if getattr(module, "dtype", None) is not None:  # 'foo' or 'int32': numpy's error, later.
    try:
      kind = jnp.dtype(module.dtype)
    except TypeError:
      kind = None
    errors.require(kind is not None and jnp.issubdtype(kind, jnp.floating),
                   f"dtype must be a floating-point type (float32, bfloat16, float16, "
                   f"float64), got {module.dtype!r}")
  for field in dataclasses.fields(module):  # batch_norm='no' built batch norm.
    value = getattr(module, field.name, None)
    if field.type in ("bool", bool):
      errors.require(isinstance(value, (bool, np.bool_)),
                     f"{field.name} must be true or false, got {value!r}")
    elif field.type in ("float", float):  # forget_bias='nan' reached JAX as a string.
      errors.require(isinstance(value, numbers.Real) and not isinstance(value, bool)
                     and math.isfinite(value),
                     f"{field.name} must be a finite number, got {value!r}")


_LARGEST_SIZE = 2**31 - 1  # XLA's dimensions are int32 on most paths.


def check_positive(field: str, value: int) -> None:
  """Raises ``JdlError`` unless ``value`` is a positive integer (and an array size)."""
  errors.require(
      isinstance(value, int) and not isinstance(value, bool) and value >= 1,
      f"{field} must be a positive integer, got {value!r}",
  )
  errors.require(value <= _LARGEST_SIZE,
                 f"{field} must be at most 2**31 - 1 (an array size), got {value!r}")


def check_token_id(field: str, value: int, vocab_size: int, vocab_field: str) -> None:
  """Raises ``JdlError`` unless ``value`` is a token id of a ``vocab_size`` vocabulary."""
  errors.require(
      isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size,
      f"{field} must be a token id in [0, {vocab_field}={vocab_size}), got {value!r}",
  )


def check_widths(field: str, widths: Sequence[int], *, nonempty: bool = False) -> None:
  """Raises ``JdlError`` unless ``widths`` is a sequence of positive integers (at
  least one with ``nonempty``)."""
  errors.require(
      isinstance(widths, Sequence) and not isinstance(widths, str)
      and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
              for w in widths) and (len(widths) >= 1 or not nonempty),
      f"{field} must be a sequence of {'one or more ' if nonempty else ''}positive "
      f"integers, got {widths!r}",
  )
  errors.require(all(w <= _LARGEST_SIZE for w in widths),
                 f"{field} must be at most 2**31 - 1 each (array sizes), got {widths!r}")


class MLP(nn.Module):
  """Fully connected network; flattens its input.

  Each hidden layer is ``Dense -> [BatchNorm] -> activation -> [Dropout]``
  (``bn_position='before'``) or ``Dense -> activation -> [BatchNorm] -> [Dropout]``
  (``'after'``); the head is a ``Dense(num_outputs)`` without activation. With
  batch norm before the activation the hidden ``Dense`` layers have no bias (the
  batch-norm shift replaces it). Each activation's output is sown as
  ``intermediates/act_{i}`` (kept only when the caller makes ``"intermediates"``
  mutable).

  Attributes:
    num_outputs: width of the output, e.g. the number of classes.
    hidden: widths of the hidden layers; ``()`` gives a linear model.
    activation: name for :func:`jdl.models.get_activation`.
    dropout_rate: drop probability after each hidden activation (0 disables).
    batch_norm: batch normalisation in each hidden layer.
    bn_position: ``'before'`` or ``'after'`` the activation.
    kernel_init: name for :func:`jdl.models.get_initializer`; the head uses
      :func:`jdl.models.get_head_initializer` of it (LeCun for the He family).
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.

  Submodules are named ``hidden_{i}``, ``bn_{i}`` and ``head``.
  """

  num_outputs: int
  hidden: Sequence[int] = (512, 512)
  activation: str | Activation = "relu"
  dropout_rate: float = 0.0
  batch_norm: bool = False
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  bn_position: str = "before"

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_widths("hidden", self.hidden)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, ...]``; everything after the batch axis is flattened.
      train: dropout on and batch statistics used (and updated) when true.

    Returns:
      ``[batch, num_outputs]``.
    """
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)
    x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(
          width, use_bias=layer_bias(self.batch_norm, self.bn_position),
          kernel_init=init, dtype=self.dtype, name=f"hidden_{i}",
      )(x)
      x, a = norm_act(x, act=act, batch_norm=self.batch_norm,
                      bn_position=self.bn_position, train=train, dtype=self.dtype,
                      bn_name=f"bn_{i}")
      self.sow("intermediates", f"act_{i}", a)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    head_init = get_head_initializer(self.kernel_init, self.init_scale)
    return nn.Dense(
        self.num_outputs, kernel_init=head_init, dtype=self.dtype, name="head"
    )(x)
