"""Residual networks (He et al., 2016), post-activation ("v1") with batch norm.

Shortcuts are identities where the shape is kept and ``1x1 conv (stride) ->
BatchNorm`` projections where it changes (option B of the paper). Convolutions have
no bias: the batch-norm shift that follows replaces it. Strided blocks downsample in
their 3x3 conv (also in the bottleneck block, as in torchvision's "ResNet v1.5").
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.activations import Activation, get_activation
from jdl.models.cnn import spatial_ndim
from jdl.models.conv import Conv
from jdl.models.initializers import get_head_initializer
from jdl.models.initializers import get_initializer
from jdl.models.mlp import Dtype, check_common_fields, check_positive, check_widths

BLOCKS = ("basic", "bottleneck")
STEMS = ("cifar", "imagenet")


def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


class ResidualBlock(nn.Module):
  """A basic (two 3x3 convs) or bottleneck (1x1, 3x3, 1x1 with 4x width) block.

  Attributes:
    filters: width of the block's 3x3 conv; the output has ``filters`` channels
      (basic) or ``4 * filters`` (bottleneck).
    strides: stride of the block (1 keeps the spatial shape, 2 halves it).
    bottleneck: bottleneck instead of basic block.
    activation: name for :func:`jdl.models.get_activation`.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.

  Activations are sown as ``intermediates/act_{i}``, numbered in order; the last
  one is the block's output (``act_1`` basic, ``act_2`` bottleneck).
  """

  filters: int
  strides: int = 1
  bottleneck: bool = False
  activation: str | Activation = "relu"
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_positive("filters", self.filters)
    check_positive("strides", self.strides)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the block.

    Args:
      x: ``[batch, *spatial, channels]``.
      train: batch statistics used (and updated) when true.

    Returns:
      ``[batch, *spatial / strides, out_channels]``.
    """
    ndim = x.ndim - 2
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)

    def conv(y, width, size, strides, name):
      return Conv(width, (size,) * ndim, strides=strides, padding="SAME",
                     use_bias=False, kernel_init=init, dtype=self.dtype, impl=self.conv_impl,
                     name=name)(y)

    acts = 0

    def sown_act(y):
      nonlocal acts
      y = act(y)
      self.sow("intermediates", f"act_{acts}", y)
      acts += 1
      return y

    if self.bottleneck:
      out_channels = 4 * self.filters
      y = sown_act(_batch_norm(train, self.dtype, "bn1")(
          conv(x, self.filters, 1, 1, "conv1")))
      y = sown_act(_batch_norm(train, self.dtype, "bn2")(
          conv(y, self.filters, 3, self.strides, "conv2")))
      y = _batch_norm(train, self.dtype, "bn3")(conv(y, out_channels, 1, 1, "conv3"))
    else:
      out_channels = self.filters
      y = sown_act(_batch_norm(train, self.dtype, "bn1")(
          conv(x, self.filters, 3, self.strides, "conv1")))
      y = _batch_norm(train, self.dtype, "bn2")(conv(y, self.filters, 3, 1, "conv2"))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != out_channels:
      shortcut = _batch_norm(train, self.dtype, "proj_bn")(
          conv(x, out_channels, 1, self.strides, "proj"))
    return sown_act(y + shortcut)


class ResNet(nn.Module):
  """Residual network: stem, stages of residual blocks, global average pool, dense head.

  Stage ``i`` has ``stage_sizes[i]`` blocks of width ``num_filters * 2**i``; every
  stage but the first starts with a stride-2 block. The stem's activation is sown
  as ``intermediates/stem_act``, each block's as
  ``intermediates/stage{i}_block{j}/act_{k}``. Batch norm always comes before the
  activation here (the post-activation design of the paper).

  Attributes:
    num_outputs: width of the output.
    stage_sizes: number of blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
    num_filters: width of the first stage (and of the stem).
    block: ``'basic'`` or ``'bottleneck'``.
    stem: ``'cifar'`` (3x3 conv, stride 1; for small images) or ``'imagenet'``
      (7x7 conv, stride 2, then 3x3 stride-2 max pool).
    activation: name for :func:`jdl.models.get_activation`.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.

  References:
    He et al., "Deep residual learning for image recognition", CVPR 2016.
  """

  num_outputs: int
  stage_sizes: Sequence[int]
  num_filters: int = 64
  block: str = "basic"
  stem: str = "cifar"
  activation: str | Activation = "relu"
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_widths("stage_sizes", self.stage_sizes, nonempty=True)
    check_positive("num_filters", self.num_filters)
    errors.lookup("block", self.block, {b: b for b in BLOCKS})
    errors.lookup("stem", self.stem, {s: s for s in STEMS})

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, height, width, channels]`` (or ``[batch, length, channels]``).
      train: batch statistics used (and updated) when true.

    Returns:
      ``[batch, num_outputs]``.
    """
    ndim = spatial_ndim(x)
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)
    x = jnp.asarray(x, self.dtype)
    if self.stem == "cifar":
      x = Conv(self.num_filters, (3,) * ndim, padding="SAME", use_bias=False,
                  kernel_init=init, dtype=self.dtype, impl=self.conv_impl, name="stem")(x)
      x = act(_batch_norm(train, self.dtype, "stem_bn")(x))
      self.sow("intermediates", "stem_act", x)
    else:
      x = Conv(self.num_filters, (7,) * ndim, strides=2,
                  padding=((3, 3),) * ndim, use_bias=False, kernel_init=init,
                  dtype=self.dtype, impl=self.conv_impl, name="stem")(x)
      x = act(_batch_norm(train, self.dtype, "stem_bn")(x))
      self.sow("intermediates", "stem_act", x)
      x = nn.max_pool(x, (3,) * ndim, strides=(2,) * ndim,
                      padding=((1, 1),) * ndim)
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        x = ResidualBlock(
            self.num_filters * 2**i, strides=2 if i > 0 and j == 0 else 1,
            bottleneck=self.block == "bottleneck", activation=self.activation,
            kernel_init=self.kernel_init, init_scale=self.init_scale,
            dtype=self.dtype, conv_impl=self.conv_impl, name=f"stage{i + 1}_block{j + 1}",
        )(x, train=train)
    x = jnp.mean(x, axis=tuple(range(1, 1 + ndim)))
    head_init = get_head_initializer(self.kernel_init, self.init_scale)
    return nn.Dense(self.num_outputs, kernel_init=head_init, dtype=self.dtype,
                    name="head")(x)


class ResNet20(ResNet):
  """CIFAR ResNet-20: 3 stages of 3 basic blocks, 16/32/64 filters, 3x3 stem.

  With projection shortcuts it has 272,474 parameters for 10 classes on 3 input
  channels (the paper's zero-padding shortcuts give 0.27 M).
  """

  stage_sizes: Sequence[int] = (3, 3, 3)
  num_filters: int = 16


class ResNet18(ResNet):
  """ResNet-18: 4 stages of 2 basic blocks, 64/128/256/512 filters.

  The stem defaults to ``'cifar'`` (3x3, stride 1) for small images; pass
  ``stem='imagenet'`` for the 7x7 stride-2 stem and max pool of the paper.
  """

  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  num_filters: int = 64
