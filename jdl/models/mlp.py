"""Multi-layer perceptron."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.activations import Activation, get_activation
from jdl.models.initializers import get_initializer

Dtype = Any


def check_common_fields(module: nn.Module) -> None:
  """Validates the fields the jdl models share, so a bad config fails at construction.

  Raises:
    JdlError: a bad ``num_outputs``, ``activation``, ``kernel_init``,
      ``init_scale`` or ``dropout_rate`` (each checked where the module has it).
  """
  if hasattr(module, "conv_impl"):
    errors.lookup("conv_impl", module.conv_impl, {k: k for k in ("auto", "xla", "patches")})
  if hasattr(module, "num_outputs"):
    num_outputs = module.num_outputs
    errors.require(
        isinstance(num_outputs, int) and not isinstance(num_outputs, bool)
        and num_outputs >= 1,
        f"num_outputs must be a positive integer, got {num_outputs!r}",
    )
  if hasattr(module, "activation"):
    get_activation(module.activation)
  if hasattr(module, "kernel_init"):
    get_initializer(module.kernel_init, getattr(module, "init_scale", None))
  if hasattr(module, "dropout_rate"):
    rate = module.dropout_rate
    errors.require(
        isinstance(rate, (int, float)) and 0.0 <= rate < 1.0,
        f"dropout_rate must be in [0, 1), got {rate!r}",
    )


def check_widths(field: str, widths: Sequence[int]) -> None:
  """Raises ``JdlError`` unless ``widths`` is a sequence of positive integers."""
  errors.require(
      isinstance(widths, Sequence) and not isinstance(widths, str)
      and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1
              for w in widths),
      f"{field} must be a sequence of positive integers, got {widths!r}",
  )


class MLP(nn.Module):
  """Fully connected network; flattens its input.

  Each hidden layer is ``Dense -> [BatchNorm] -> activation -> [Dropout]``; the head
  is a ``Dense(num_outputs)`` without activation. With ``batch_norm`` the hidden
  ``Dense`` layers have no bias (the batch-norm shift replaces it).

  Attributes:
    num_outputs: width of the output, e.g. the number of classes.
    hidden: widths of the hidden layers; ``()`` gives a linear model.
    activation: name for :func:`jdl.models.get_activation`.
    dropout_rate: drop probability after each hidden activation (0 disables).
    batch_norm: batch normalisation after each hidden ``Dense``.
    kernel_init: name for :func:`jdl.models.get_initializer`.
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
          width, use_bias=not self.batch_norm, kernel_init=init,
          dtype=self.dtype, name=f"hidden_{i}",
      )(x)
      if self.batch_norm:
        x = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5,
            dtype=self.dtype, name=f"bn_{i}",
        )(x)
      x = act(x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(
        self.num_outputs, kernel_init=init, dtype=self.dtype, name="head"
    )(x)
