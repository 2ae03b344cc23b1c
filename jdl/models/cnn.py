"""Convolutional networks: a configurable stack, LeNet-5 and VGG; pooling helpers.

Images are ``[batch, height, width, channels]`` (NHWC); 1-D signals are
``[batch, length, channels]``. :class:`CNN` and :class:`VGG` infer the
convolution rank from the input rank.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import itertools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdl import errors
from jdl.models.activations import Activation, get_activation
from jdl.models.conv import Conv
from jdl.models.initializers import get_head_initializer
from jdl.models.initializers import get_initializer
from jdl.models.mlp import (
    MLP, Dtype, check_common_fields, check_positive, check_widths, layer_bias, norm_act,
)

POOLS = ("max", "avg", "none")


def spatial_ndim(x: jax.Array) -> int:
  """The number of spatial axes: 1 for ``[batch, length, channels]``, 2 for NHWC.

  Raises:
    JdlError: any other rank.
  """
  errors.require(
      x.ndim in (3, 4),
      f"a convolutional model needs [batch, length, channels] or "
      f"[batch, height, width, channels] input, got shape {tuple(x.shape)}; "
      f"add a trailing channel axis to single-channel data",
  )
  return x.ndim - 2


def pool(x: jax.Array, kind: str, size: int, strides: int | None = None,
         padding: str = "VALID", *,
         remedy: str = "use a larger input, fewer layers, a smaller pool_size or pool='none'"
         ) -> jax.Array:
  """Max or average pooling over the spatial axes of ``x``; ``kind='none'`` is a no-op.

  Average pooling with ``'SAME'`` padding divides every window by its full size, the
  zero padding counted (PyTorch's ``count_include_pad=True``; Keras' ``'same'`` counts
  only the input). ``remedy``: what the error below suggests (in the calling model's
  fields).

  Raises:
    JdlError: a spatial axis shorter than the window (with ``VALID`` padding).
  """
  if kind == "none":
    return x
  padding = padding.upper() if isinstance(padding, str) else padding
  spatial = x.shape[1:-1]
  errors.require(
      padding != "VALID" or min(spatial) >= size,
      f"feature map {tuple(spatial)} is smaller than the pooling window {size}; "
      f"{remedy}",
  )
  window = (size,) * len(spatial)
  stride = (strides or size,) * len(spatial)
  if stride == window and padding == "VALID":
    return _nonoverlapping_pool(x, kind, size, elementwise=jax.default_backend() == "cpu")
  if kind == "max":
    return nn.max_pool(x, window, strides=stride, padding=padding)
  # nn.avg_pool divides by an int, which strict dtype promotion rejects.
  # A concrete (numpy) zero lets JAX recognise the differentiable window sum.
  total = nn.pool(x, np.zeros((), x.dtype), jax.lax.add, window, stride, padding)
  return total / jnp.asarray(math.prod(window), x.dtype)


def _nonoverlapping_pool(x: jax.Array, kind: str, size: int, *,
                         elementwise: bool) -> jax.Array:
  """Pooling over non-overlapping ``size``-wide windows (trailing remainders dropped).

  Both lowerings avoid ``reduce_window``: its gradient (select-and-scatter for max) is
  a slow generic loop on XLA:CPU, and on an H200 the MNIST CNN trained 10-15% slower
  with it than with the reshape below (benchmarks/README.md, "Pooling"):

  - ``elementwise`` (the CPU default): element-wise work over strided views
    (``_windows``) with hand-written gradients. On XLA:CPU a reduction over a reshape
    becomes a YNNPACK reduction that writes out its broadcast operands every step.
  - otherwise a reduction over a reshape into windows, differentiated by JAX. XLA:GPU
    fuses it with its neighbours: the MNIST CNN trained 13% faster with it than with
    the strided views at batch 128 on an H200 (1% at batch 512).
  """
  x = x[(slice(None), *(slice(0, n // size * size) for n in x.shape[1:-1]), slice(None))]
  if elementwise:
    return (_window_max if kind == "max" else _window_mean)(x, size)
  r = _blocked(x, size)
  axes = tuple(range(2, r.ndim - 1, 2))  # The within-window axes.
  # jnp.mean sums 16-bit floats in float32 and returns the input's dtype.
  return r.max(axis=axes) if kind == "max" else r.mean(axis=axes)


def _blocked(x: jax.Array, size: int) -> jax.Array:
  """``x`` ``[batch, *spatial, channels]`` as ``[batch, n0 // size, size, n1 // size,
  size, ..., channels]`` (every spatial axis a multiple of ``size``)."""
  return x.reshape(x.shape[0], *[d for n in x.shape[1:-1] for d in (n // size, size)],
                   x.shape[-1])


def _windows(x: jax.Array, size: int) -> list[jax.Array]:
  """The ``size ** d`` strided views of ``x``'s non-overlapping windows, one per offset.

  ``x`` is ``[batch, *spatial, channels]`` with every spatial axis a multiple of
  ``size``; each view is ``[batch, *(n // size for n in spatial), channels]``.
  """
  r = _blocked(x, size)
  views = []
  for offsets in itertools.product(range(size), repeat=x.ndim - 2):
    index = [slice(None)]
    for o in offsets:
      index += [slice(None), o]
    views.append(r[(*index, slice(None))])
  return views


def _spread(y: jax.Array, size: int) -> jax.Array:
  """Each element of ``y`` repeated over its ``size``-wide window (the inverse layout)."""
  spatial = y.shape[1:-1]
  expanded = y.reshape(y.shape[0], *[d for n in spatial for d in (n, 1)], y.shape[-1])
  tiled = jnp.broadcast_to(
      expanded, (y.shape[0], *[d for n in spatial for d in (n, size)], y.shape[-1]))
  return tiled.reshape(y.shape[0], *[n * size for n in spatial], y.shape[-1])


def _accumulate(x: jax.Array) -> jax.Array:
  """``x`` in the dtype its window sums are taken in: float32 for 16-bit floats."""
  return x.astype(jnp.float32) if x.dtype in (jnp.bfloat16, jnp.float16) else x


def _window_sum(t: jax.Array, size: int) -> jax.Array:
  """Sums of ``t``'s non-overlapping windows, as a reduction over a reshape.

  The pools' tangents go through it: it is linear, and JAX transposes it to a
  broadcast (``_spread``), the gradient the backward pass should have, which fuses
  into the next operation. (JAX's transpose of the strided views would pad and add
  ``size**d`` full-size arrays.)
  """
  r = _blocked(t, size)
  return r.sum(axis=tuple(range(2, r.ndim - 1, 2)))


# custom_jvp rather than custom_vjp: the same backward pass, and forward-mode
# autodiff (jax.jvp, jax.hessian, jax.linearize) works too. (Max pooling below
# stays a custom VJP.)
@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _window_mean(x: jax.Array, size: int) -> jax.Array:
  """Average pooling over non-overlapping ``size``-wide windows, as element-wise work.

  The windows' views are added one by one, so XLA fuses the sum (and the activation
  before it) into one loop; a reduction over a reshape becomes a YNNPACK reduction
  on XLA:CPU, whose broadcast operands (the ReLU's zero, the 1/4) are written out in
  full every step. The gradient spreads ``g / size**d`` over each window, the
  derivative of a mean, written as a broadcast that fuses into the next operation.
  """
  views = _windows(x, size)
  total = functools.reduce(jnp.add, map(_accumulate, views))
  return (total / np.asarray(len(views), total.dtype)).astype(x.dtype)


@_window_mean.defjvp
def _window_mean_jvp(size, primals, tangents):
  (x,), (t,) = primals, tangents
  count = np.asarray(size ** (x.ndim - 2), t.dtype)
  return _window_mean(x, size), _window_sum(t / count, size)


# A custom VJP: reverse mode only. Written as a custom JVP (its tangent through
# _window_sum) it trained VGG to NaN gradients when the suite compiled at -O0: the
# backward fusions found windows with no element equal to the max they had kept
# (0 ties), even with the input behind an optimization barrier. Here the backward
# pass compares the saved x and y, which are one array each.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _window_max(x: jax.Array, size: int) -> jax.Array:
  """Max pooling over non-overlapping ``size``-wide windows, as element-wise work.

  The gradient is JAX's for a max reduction: split equally between the elements
  that tie for a window's maximum.
  """
  return functools.reduce(jnp.maximum, _windows(x, size))


def _window_max_fwd(x, size):
  y = _window_max(x, size)
  return y, (x, y)


def _window_max_bwd(size, res, g):
  x, y = res
  hits = (x == _spread(y, size)).astype(g.dtype)
  ties = functools.reduce(jnp.add, _windows(hits, size))
  return (hits * _spread(g / ties, size),)


_window_max.defvjp(_window_max_fwd, _window_max_bwd)


def _check_pool(kind: str, size: int) -> None:
  errors.lookup("pool", kind, {k: k for k in POOLS})
  errors.require(isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= 2**31 - 1,
                 f"pool_size must be a positive integer, got {size!r}")


def _check_padding(padding: str | int) -> None:
  ok = (padding.upper() in ("SAME", "VALID") if isinstance(padding, str)
        else isinstance(padding, int) and not isinstance(padding, bool)
        and 0 <= padding <= 2**31 - 1)  # XLA's sizes are int32.
  errors.require(ok, f"padding must be 'SAME', 'VALID' or a non-negative integer "
                     f"(at most 2**31 - 1), got {padding!r}")


def _dense_head(model: nn.Module, x: jax.Array, *, train: bool) -> jax.Array:
  """Flattens ``x``, drops it out and applies an :class:`MLP` head named ``mlp``.

  Called from the compact ``__call__`` of :class:`CNN` and :class:`VGG`, so the
  dropout and the ``mlp`` submodule belong to ``model`` (parameters
  ``mlp/hidden_0``, ...).

  Args:
    model: the calling module; reads its ``num_outputs``, ``dense``,
      ``dropout_rate``, ``batch_norm``, ``bn_position``, ``activation``,
      ``kernel_init``, ``init_scale`` and ``dtype``.
    x: ``[batch, ...]`` features.
    train: dropout on and batch statistics used (and updated) when true.

  Returns:
    ``[batch, num_outputs]``.
  """
  x = x.reshape((x.shape[0], -1))
  if model.dropout_rate > 0:
    x = nn.Dropout(model.dropout_rate, deterministic=not train)(x)
  return MLP(
      model.num_outputs, hidden=tuple(model.dense), activation=model.activation,
      dropout_rate=model.dropout_rate, batch_norm=model.batch_norm,
      bn_position=model.bn_position, kernel_init=model.kernel_init, init_scale=model.init_scale,
      dtype=model.dtype, name="mlp",
  )(x, train=train)


class CNN(nn.Module):
  """A configurable convolution stack followed by a dense head.

  Each conv layer is ``Conv -> [BatchNorm] -> activation -> [pool] -> [Dropout]``
  (batch norm ``'after'`` the activation with ``bn_position='after'``); then the
  feature map is flattened (or averaged over space with ``global_pool``), dropped
  out, and fed to an :class:`MLP` head (submodule ``mlp``) with hidden widths
  ``dense``. Activations are sown as ``intermediates/conv_act_{i}`` and, by the
  head, ``intermediates/mlp/act_{i}``.

  Attributes:
    num_outputs: width of the output.
    features: output channels of each conv layer.
    kernel_size: window length per spatial axis.
    strides: conv stride per spatial axis.
    padding: ``'SAME'``, ``'VALID'`` (any case) or a number of zeros per side.
    pool: ``'max'``, ``'avg'`` or ``'none'``, after every conv layer.
    pool_size: pooling window and stride.
    global_pool: average over the spatial axes instead of flattening.
    dense: hidden widths of the head.
    dropout_rate: drop probability on the conv features and after each hidden
      dense layer.
    conv_dropout_rate: drop probability after each conv layer (after its pool).
    batch_norm: batch normalisation in each conv and hidden dense layer (those
      layers then have no bias when it comes before the activation).
    bn_position: ``'before'`` or ``'after'`` the activation.
    activation: name for :func:`jdl.models.get_activation`.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.
  """

  num_outputs: int
  features: Sequence[int] = (32, 64)
  kernel_size: int = 3
  strides: int = 1
  padding: str | int = "SAME"
  pool: str = "max"
  pool_size: int = 2
  global_pool: bool = False
  dense: Sequence[int] = (256,)
  dropout_rate: float = 0.0
  batch_norm: bool = False
  activation: str | Activation = "relu"
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.
  bn_position: str = "before"
  conv_dropout_rate: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_widths("features", self.features)
    check_widths("dense", self.dense)
    check_positive("kernel_size", self.kernel_size)
    check_positive("strides", self.strides)
    _check_padding(self.padding)
    _check_pool(self.pool, self.pool_size)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, length, channels]`` or ``[batch, height, width, channels]``.
      train: dropout on and batch statistics used (and updated) when true.

    Returns:
      ``[batch, num_outputs]``.
    """
    ndim = spatial_ndim(x)
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)
    padding = (self.padding.upper() if isinstance(self.padding, str)
               else self.padding)
    x = jnp.asarray(x, self.dtype)
    for i, width in enumerate(self.features):
      pad = 0 if padding in ("VALID", "SAME") else 2 * padding  # Both sides of an axis.
      errors.require(
          padding == "SAME" or min(x.shape[1:-1]) + pad >= self.kernel_size,
          f"feature map {tuple(x.shape[1:-1])} before conv_{i} is smaller than "
          f"kernel_size={self.kernel_size} with padding={self.padding!r}; use a larger "
          f"input, fewer layers or padding='SAME'",
      )
      x = Conv(
          width, (self.kernel_size,) * ndim, strides=self.strides,
          padding=padding, use_bias=layer_bias(self.batch_norm, self.bn_position),
          kernel_init=init, dtype=self.dtype, impl=self.conv_impl, name=f"conv_{i}",
      )(x)
      x, a = norm_act(x, act=act, batch_norm=self.batch_norm,
                      bn_position=self.bn_position, train=train, dtype=self.dtype,
                      bn_name=f"bn_{i}")
      self.sow("intermediates", f"conv_act_{i}", a)
      x = pool(x, self.pool, self.pool_size)
      if self.conv_dropout_rate > 0:
        x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
    if self.global_pool:
      x = jnp.mean(x, axis=tuple(range(1, 1 + ndim)))
    return _dense_head(self, x, train=train)


class LeNet5(nn.Module):
  """LeNet-5: conv 6@5x5, pool, conv 16@5x5, pool, dense 120, 84, ``num_outputs``.

  Inputs smaller than 32x32 (e.g. MNIST's 28x28) are zero-padded to 32x32, as in
  the original paper, so conv2 ends on a 5x5x16 map for any input up to 32x32
  (a larger one is not cropped: more parameters in the first dense layer): on one input channel and
  10 outputs the network has 156 + 2,416 + 48,120 + 10,164 + 850 = 61,706
  parameters. Activations are sown as ``intermediates/conv_act_{0,1}`` and
  ``intermediates/act_{0,1}`` (fc1, fc2).

  Attributes:
    num_outputs: width of the output.
    activation: ``'tanh'`` (classic) or any name for :func:`get_activation`.
    pool: ``'avg'`` (classic) or ``'max'``; 2x2, stride 2.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    dtype: compute dtype; parameters stay float32.

  References:
    LeCun et al., "Gradient-based learning applied to document recognition", 1998.
  """

  num_outputs: int = 10
  activation: str | Activation = "tanh"
  pool: str = "avg"
  kernel_init: str = "lecun_normal"
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    errors.lookup("pool", self.pool, {"avg": "avg", "max": "max"})

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, height, width, channels]``.
      train: unused (no dropout or batch norm); kept for the common signature.

    Returns:
      ``[batch, num_outputs]``.
    """
    del train  # LeNet-5 behaves the same in training and evaluation.
    errors.require(spatial_ndim(x) == 2,
                   f"LeNet5 needs [batch, height, width, channels], got "
                   f"{tuple(x.shape)}")
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init)
    x = jnp.asarray(x, self.dtype)
    pads = [(0, 0)] + [((32 - n) // 2, 32 - n - (32 - n) // 2) if n < 32
                       else (0, 0) for n in x.shape[1:3]] + [(0, 0)]
    x = jnp.pad(x, pads)
    for i, (name, width) in enumerate((("conv1", 6), ("conv2", 16))):
      x = act(Conv(width, (5, 5), padding="VALID", kernel_init=init,
                   dtype=self.dtype, impl=self.conv_impl, name=name)(x))
      self.sow("intermediates", f"conv_act_{i}", x)
      x = pool(x, self.pool, 2, remedy="use a larger input")
    x = x.reshape((x.shape[0], -1))
    for i, (name, width) in enumerate((("fc1", 120), ("fc2", 84))):
      x = act(nn.Dense(width, kernel_init=init, dtype=self.dtype, name=name)(x))
      self.sow("intermediates", f"act_{i}", x)
    return nn.Dense(self.num_outputs, kernel_init=get_head_initializer(self.kernel_init),
                    dtype=self.dtype, name="head")(x)


class VGG(nn.Module):
  """VGG-style network: stages of 3x3 'SAME' convs, each stage ending in 2x2 max pool.

  Conv activations are sown as ``intermediates/conv_act_{s}_{c}`` (stage and conv
  numbered from 1, as the layers ``conv{s}_{c}``); the head's as
  ``intermediates/mlp/act_{i}``.

  Attributes:
    num_outputs: width of the output.
    stages: output channels of the convs of each stage; ``((64, 64), (128, 128))``
      are the first two of the five stages of VGG-13/16/19 (VGG-11's have one conv).
    dense: hidden widths of the :class:`MLP` head.
    batch_norm: batch normalisation in every conv and hidden dense layer.
    bn_position: ``'before'`` or ``'after'`` the activation.
    dropout_rate: drop probability on the conv features and after each hidden
      dense layer.
    conv_dropout_rate: drop probability after each stage (after its pool).
    activation: name for :func:`jdl.models.get_activation`.
    kernel_init: name for :func:`jdl.models.get_initializer`.
    init_scale: its ``scale`` argument.
    dtype: compute dtype; parameters stay float32.

  References:
    Simonyan & Zisserman, "Very deep convolutional networks for large-scale image
    recognition", 2014.
  """

  num_outputs: int
  stages: Sequence[Sequence[int]] = ((64, 64), (128, 128))
  dense: Sequence[int] = (256,)
  batch_norm: bool = False
  dropout_rate: float = 0.0
  activation: str | Activation = "relu"
  kernel_init: str = "he_normal"
  init_scale: float | None = None
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"  # 'auto', 'xla', 'patches' or 'hybrid'; see jdl.models.conv.
  bn_position: str = "before"
  conv_dropout_rate: float = 0.0

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    errors.require(isinstance(self.stages, Sequence) and len(self.stages) > 0,
                   f"stages must be a non-empty sequence, got {self.stages!r}")
    for i, stage in enumerate(self.stages):
      check_widths(f"stages[{i}]", stage)
    check_widths("dense", self.dense)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Applies the network.

    Args:
      x: ``[batch, height, width, channels]`` (or ``[batch, length, channels]``).
      train: dropout on and batch statistics used (and updated) when true.

    Returns:
      ``[batch, num_outputs]``.
    """
    ndim = spatial_ndim(x)
    act = get_activation(self.activation)
    init = get_initializer(self.kernel_init, self.init_scale)
    x = jnp.asarray(x, self.dtype)
    for s, stage in enumerate(self.stages, start=1):
      for c, width in enumerate(stage, start=1):
        x = Conv(width, (3,) * ndim, padding="SAME",
                 use_bias=layer_bias(self.batch_norm, self.bn_position),
                 kernel_init=init, dtype=self.dtype, impl=self.conv_impl,
                 name=f"conv{s}_{c}")(x)
        x, a = norm_act(x, act=act, batch_norm=self.batch_norm,
                        bn_position=self.bn_position, train=train, dtype=self.dtype,
                        bn_name=f"bn{s}_{c}")
        self.sow("intermediates", f"conv_act_{s}_{c}", a)
      x = pool(x, "max", 2, remedy="use a larger input or fewer stages")
      if self.conv_dropout_rate > 0:
        x = nn.Dropout(self.conv_dropout_rate, deterministic=not train)(x)
    return _dense_head(self, x, train=train)
