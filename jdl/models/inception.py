"""A small Inception (GoogLeNet-style) network and its block.

Inputs are ``[batch, height, width, channels]`` (NHWC) or ``[batch, length,
channels]``; the convolution rank follows the input rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.activations import Activation, get_activation
from jdl.models.cnn import pool, spatial_ndim
from jdl.models.conv import Conv
from jdl.models.initializers import get_head_initializer
from jdl.models.initializers import get_initializer
from jdl.models.mlp import (
    Dtype, check_common_fields, check_positive, check_widths, layer_bias, norm_act,
)


class InceptionBlock(nn.Module):
  """Inception module: four parallel branches concatenated on the channel axis.

  Branches: ``1x1``; ``1x1 -> 3x3``; ``1x1 -> 5x5``; ``3x3 max pool -> 1x1``. Every
  conv is ``Conv -> [BatchNorm] -> activation`` (``activation -> BatchNorm`` with
  ``bn_position='after'``) with 'SAME' padding, so the output keeps the spatial
  shape and has ``c1 + c3 + c5 + pool_proj`` channels. Each conv's activation is
  sown as ``intermediates/{conv}_act`` (``b1_act``, ``b3_reduce_act``, ...).

  Attributes:
    c1: channels of the 1x1 branch.
    c3_reduce: channels of the 1x1 reduction before the 3x3 conv.
    c3: channels of the 3x3 branch.
    c5_reduce: channels of the 1x1 reduction before the 5x5 conv.
    c5: channels of the 5x5 branch.
    pool_proj: channels of the 1x1 projection after the max pool.
    batch_norm: batch normalisation in every conv layer (the conv then has no
      bias when it comes before the activation).
    bn_position: ``'before'`` or ``'after'`` the activation.
    activation: name for :func:`jdl.models.get_activation`.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.

  References:
    Szegedy et al., "Going deeper with convolutions", 2015 (figure 2b).
  """

  c1: int
  c3_reduce: int
  c3: int
  c5_reduce: int
  c5: int
  pool_proj: int
  batch_norm: bool = False
  activation: str | Activation = "relu"
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.
  bn_position: str = "before"

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_widths("inception block widths", (self.c1, self.c3_reduce, self.c3,
                                            self.c5_reduce, self.c5, self.pool_proj))

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the block.

    Args:
      x: ``[batch, *spatial, channels]`` with one or two spatial axes.
      train: batch statistics used (and updated) when true.

    Returns:
      ``[batch, *spatial, c1 + c3 + c5 + pool_proj]``.
    """
    ndim = spatial_ndim(x)
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)

    def conv(y, width, size, name):
      y = Conv(width, (size,) * ndim, padding="SAME",
               use_bias=layer_bias(self.batch_norm, self.bn_position),
               kernel_init=init, dtype=self.dtype, impl=self.conv_impl, name=name)(y)
      y, a = norm_act(y, act=act, batch_norm=self.batch_norm,
                      bn_position=self.bn_position, train=train, dtype=self.dtype,
                      bn_name=f"{name}_bn")
      self.sow("intermediates", f"{name}_act", a)
      return y

    b1 = conv(x, self.c1, 1, "b1")
    b3 = conv(conv(x, self.c3_reduce, 1, "b3_reduce"), self.c3, 3, "b3")
    b5 = conv(conv(x, self.c5_reduce, 1, "b5_reduce"), self.c5, 5, "b5")
    bp = conv(pool(x, "max", 3, strides=1, padding="SAME"), self.pool_proj, 1,
              "pool_proj")
    return jnp.concatenate([b1, b3, b5, bp], axis=-1)


class InceptionNet(nn.Module):
  """A small GoogLeNet-style network.

  Stem ``3x3 conv -> [BatchNorm] -> activation``; then stages of
  :class:`InceptionBlock`, with a 3x3 stride-2 max pool between stages; then global
  average pooling, dropout and a ``Dense(num_outputs)`` head. The stem's
  activation is sown as ``intermediates/stem_act``, the blocks' as
  ``intermediates/stage{s}_block{b}/{conv}_act``.

  Attributes:
    num_outputs: width of the output.
    stem_features: channels of the stem conv.
    stages: per stage, the blocks' widths
      ``(c1, c3_reduce, c3, c5_reduce, c5, pool_proj)``.
    batch_norm: batch normalisation in every conv layer.
    bn_position: ``'before'`` or ``'after'`` the activation.
    dropout_rate: drop probability before the head.
    activation: name for :func:`jdl.models.get_activation`.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.
  """

  num_outputs: int
  stem_features: int = 64
  stages: Sequence[Sequence[Sequence[int]]] = (
      ((32, 32, 48, 8, 16, 16), (48, 32, 64, 8, 24, 24)),
      ((64, 48, 96, 12, 32, 32),),
  )
  batch_norm: bool = False
  dropout_rate: float = 0.0
  activation: str | Activation = "relu"
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.
  bn_position: str = "before"

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_positive("stem_features", self.stem_features)
    errors.require(isinstance(self.stages, Sequence) and len(self.stages) > 0,
                   f"stages must be a non-empty sequence, got {self.stages!r}")
    for s, stage in enumerate(self.stages):
      for b, widths in enumerate(stage):
        check_widths(f"stages[{s}][{b}]", widths)
        errors.require(
            len(widths) == 6,
            f"stages[{s}][{b}] must be (c1, c3_reduce, c3, c5_reduce, c5, "
            f"pool_proj), got {widths!r}")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, height, width, channels]`` or ``[batch, length, channels]``.
      train: dropout on and batch statistics used (and updated) when true.

    Returns:
      ``[batch, num_outputs]``.
    """
    ndim = spatial_ndim(x)
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)
    x = jnp.asarray(x, self.dtype)
    x = Conv(self.stem_features, (3,) * ndim, padding="SAME",
             use_bias=layer_bias(self.batch_norm, self.bn_position),
             kernel_init=init, dtype=self.dtype, impl=self.conv_impl, name="stem")(x)
    x, a = norm_act(x, act=act, batch_norm=self.batch_norm,
                    bn_position=self.bn_position, train=train, dtype=self.dtype,
                    bn_name="stem_bn")
    self.sow("intermediates", "stem_act", a)
    for s, stage in enumerate(self.stages):
      if s > 0:
        x = pool(x, "max", 3, strides=2, padding="SAME")
      for b, widths in enumerate(stage):
        x = InceptionBlock(
            *widths, batch_norm=self.batch_norm, bn_position=self.bn_position,
            activation=self.activation,
            kernel_init=self.kernel_init, init_scale=self.init_scale,
            dtype=self.dtype, conv_impl=self.conv_impl, name=f"stage{s}_block{b}",
        )(x, train=train)
    x = jnp.mean(x, axis=tuple(range(1, 1 + ndim)))
    if self.dropout_rate > 0:
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    head_init = get_head_initializer(self.kernel_init, self.init_scale)
    return nn.Dense(self.num_outputs, kernel_init=head_init, dtype=self.dtype,
                    name="head")(x)
