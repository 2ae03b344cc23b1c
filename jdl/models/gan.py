"""Generators and discriminators of generative adversarial networks.

Generators map a latent ``z: [batch, latent]`` to images ``[batch, *output_shape]``
in [0, 1] (a sigmoid output, like the data). Discriminators map images to LOGITS
``[batch]`` (one per example, not ``[batch, 1]``); the training task applies the
GAN loss (sigmoid cross-entropy, or the critic value itself for a WGAN).

Batch norm keeps its statistics in the mutable ``'batch_stats'`` collection
(``use_running_average=not train``, momentum 0.9 as in the other jdl models) and
dropout draws from the ``'dropout'`` RNG stream. Hidden activations are sown as
``intermediates/act_{i}``.
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.activations import Activation, get_activation
from jdl.models.autoencoder import (
    check_divisible, check_output_shape, upsample_nearest,
)
from jdl.models.conv import Conv
from jdl.models.mlp import Dtype, check_common_fields, check_widths

NORMS = ("none", "batch", "layer")


def _batch_norm(train: bool, dtype: Dtype, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, name=name)


def _check_slope(negative_slope: float) -> None:
  errors.require(
      isinstance(negative_slope, (int, float)) and not isinstance(negative_slope, bool)
      and 0.0 <= negative_slope < 1.0,
      f"negative_slope must be in [0, 1), got {negative_slope!r}",
  )


class MLPGenerator(nn.Module):
  """A fully connected generator: ``z -> [Dense -> BatchNorm -> act] * n -> Dense -> sigmoid``.

  With batch norm the hidden ``Dense`` layers have no bias (the batch-norm shift
  replaces it).

  Attributes:
    output_shape: one image's shape, e.g. ``(28, 28, 1)``.
    hidden: widths of the hidden layers.
    activation: name for :func:`jdl.models.get_activation` (jdl's
      ``'leaky_relu'`` has slope 0.01), or a callable.
    batch_norm: batch normalisation before each hidden activation.
    dtype: compute dtype; parameters stay float32.

  Submodules are named ``hidden_{i}``, ``bn_{i}`` and ``output``.
  """

  output_shape: Sequence[int]
  hidden: Sequence[int] = (256, 512, 1024)
  activation: str | Activation = "leaky_relu"
  batch_norm: bool = True
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_output_shape(self.output_shape)
    check_widths("hidden", self.hidden)

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps ``z: [batch, latent]`` to images ``[batch, *output_shape]`` in [0, 1].

    Args:
      z: latent vectors.
      train: batch statistics used (and updated) when true.
    """
    act = get_activation(self.activation)
    x = jnp.asarray(z, self.dtype)
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, use_bias=not self.batch_norm, dtype=self.dtype,
                   name=f"hidden_{i}")(x)
      if self.batch_norm:
        x = _batch_norm(train, self.dtype, f"bn_{i}")(x)
      x = act(x)
      self.sow("intermediates", f"act_{i}", x)
    x = nn.Dense(math.prod(self.output_shape), dtype=self.dtype, name="output")(x)
    return jax.nn.sigmoid(x).reshape((x.shape[0], *self.output_shape))


class MLPDiscriminator(nn.Module):
  """A fully connected discriminator: ``[Dense -> leaky ReLU -> Dropout] * n -> Dense(1)``.

  Attributes:
    hidden: widths of the hidden layers.
    negative_slope: slope of the leaky ReLU for negative inputs.
    dropout_rate: drop probability after each hidden activation (0 disables).
    dtype: compute dtype; parameters stay float32.

  Submodules are named ``hidden_{i}`` and ``output``.
  """

  hidden: Sequence[int] = (512, 256)
  negative_slope: float = 0.2
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_widths("hidden", self.hidden)
    _check_slope(self.negative_slope)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps ``x: [batch, ...]`` (flattened) to logits ``[batch]``.

    Args:
      x: images or any examples.
      train: dropout on when true (needs a ``'dropout'`` RNG when the rate is positive).
    """
    x = jnp.asarray(x, self.dtype).reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, dtype=self.dtype, name=f"hidden_{i}")(x)
      x = jax.nn.leaky_relu(x, self.negative_slope)
      self.sow("intermediates", f"act_{i}", x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(1, dtype=self.dtype, name="output")(x)[:, 0]


class DCGANGenerator(nn.Module):
  """A convolutional generator in the manner of DCGAN, with upsampling instead of
  transposed convolutions.

  ``z -> Dense(h * w * features[0]) -> [BN] -> ReLU``, reshaped to ``(h, w,
  features[0])`` with ``h = H / 2**len(features)``; then per level an x2
  nearest-neighbour upsampling and a ``kernel_size`` convolution, to ``features[i + 1]``
  channels with ``[BN] -> ReLU``, or at the last level to the output channels with
  a sigmoid. Defaults on MNIST: 7x7x128 -> 14x14x64 -> 28x28x1.

  Attributes:
    output_shape: ``(height, width, channels)``; height and width divisible by
      ``2**len(features)``.
    features: channels of the first feature map and of each hidden level.
    kernel_size: the square convolution window (5 in the DCGAN paper; 3 costs a
      third on CPU, where a convolution is a matmul over ``kernel_size**2`` views).
    batch_norm: batch normalisation before each ReLU (those layers then have no
      bias); the output layer never has it.
    dtype: compute dtype; parameters stay float32.

  Submodules are named ``project``, ``conv_{i}``, ``bn_{i}`` (``bn_0`` after
  ``project``, ``bn_{i + 1}`` after ``conv_{i}``).

  References:
    Radford, Metz & Chintala, `Unsupervised Representation Learning with Deep
    Convolutional Generative Adversarial Networks <https://arxiv.org/abs/1511.06434>`_,
    ICLR 2016.
  """

  output_shape: Sequence[int]
  features: Sequence[int] = (128, 64)
  kernel_size: int = 5
  batch_norm: bool = True
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_output_shape(self.output_shape, image=True)
    check_widths("features", self.features, nonempty=True)
    errors.require(isinstance(self.kernel_size, int) and self.kernel_size >= 1,
                   f"kernel_size must be a positive int, got {self.kernel_size!r}")
    check_divisible(self.output_shape, len(self.features), "features")

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps ``z: [batch, latent]`` to images ``[batch, H, W, C]`` in [0, 1].

    Args:
      z: latent vectors.
      train: batch statistics used (and updated) when true.
    """
    h, w = check_divisible(self.output_shape, len(self.features), "features")

    def norm_relu(x, i):
      if self.batch_norm:
        x = _batch_norm(train, self.dtype, f"bn_{i}")(x)
      x = jax.nn.relu(x)
      self.sow("intermediates", f"act_{i}", x)
      return x

    x = nn.Dense(h * w * self.features[0], use_bias=not self.batch_norm,
                 dtype=self.dtype, name="project")(jnp.asarray(z, self.dtype))
    x = norm_relu(x, 0).reshape((x.shape[0], h, w, self.features[0]))
    levels = len(self.features)
    for i in range(levels):
      last = i == levels - 1
      out = self.output_shape[-1] if last else self.features[i + 1]
      x = Conv(out, (self.kernel_size,) * 2, use_bias=last or not self.batch_norm, dtype=self.dtype,
               name=f"conv_{i}")(upsample_nearest(x))
      x = jax.nn.sigmoid(x) if last else norm_relu(x, i + 1)
    return x


class DCGANDiscriminator(nn.Module):
  """A convolutional discriminator (or WGAN critic) in the manner of DCGAN.

  Per width in ``features``: a ``kernel_size`` stride-2 convolution, a normalisation (not
  after the first convolution, as in DCGAN), a leaky ReLU and dropout; then
  flatten and ``Dense(1)``. 28x28 -> 14x14 -> 7x7 by default.

  A WGAN-GP critic must use ``norm='none'`` or ``'layer'``, never ``'batch'``: the
  gradient penalty constrains the gradient of each example's output with respect
  to that example's input, and batch norm makes each output depend on the whole
  batch (Gulrajani et al., 2017, section 4 recommend layer normalisation).

  Attributes:
    features: channels of the convolutions.
    kernel_size: the square convolution window (default 5, as DCGAN).
    norm: ``'none'``, ``'batch'`` (statistics in ``'batch_stats'``) or
      ``'layer'`` (over height, width and channels of each example).
    negative_slope: slope of the leaky ReLU for negative inputs.
    dropout_rate: drop probability after each activation (0 disables).
    dtype: compute dtype; parameters stay float32.

  Submodules are named ``conv_{i}``, ``norm_{i}`` and ``output``.

  References:
    Radford et al., ICLR 2016 (DCGAN); Gulrajani et al., `Improved Training of
    Wasserstein GANs <https://arxiv.org/abs/1704.00028>`_, NeurIPS 2017.
  """

  features: Sequence[int] = (64, 128)
  kernel_size: int = 5
  norm: str = "none"
  negative_slope: float = 0.2
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_widths("features", self.features)
    errors.require(isinstance(self.kernel_size, int) and self.kernel_size >= 1,
                   f"kernel_size must be a positive int, got {self.kernel_size!r}")
    errors.lookup("norm", self.norm, {n: n for n in NORMS})
    _check_slope(self.negative_slope)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps images ``[batch, H, W, C]`` to logits ``[batch]``.

    Args:
      x: images.
      train: batch statistics and dropout on when true.
    """
    errors.require(
        x.ndim == 4,
        f"DCGANDiscriminator needs [batch, height, width, channels] input, got shape "
        f"{tuple(x.shape)}; add a trailing channel axis to grey images",
    )
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(self.features):
      normed = i > 0 and self.norm != "none"
      x = Conv(width, (self.kernel_size,) * 2, strides=2, use_bias=not normed, dtype=self.dtype,
               name=f"conv_{i}")(x)
      if normed and self.norm == "batch":
        x = _batch_norm(train, self.dtype, f"norm_{i}")(x)
      elif normed:
        x = nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3), feature_axes=-1,
                         dtype=self.dtype, name=f"norm_{i}")(x)
      x = jax.nn.leaky_relu(x, self.negative_slope)
      self.sow("intermediates", f"act_{i}", x)
      if self.dropout_rate > 0:
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(1, dtype=self.dtype, name="output")(x)[:, 0]
