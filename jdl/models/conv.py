"""Convolution with a choice of lowering: XLA's convolution, or patches and a matmul.

XLA:CPU compiles the gradient of a convolution to a slow generic loop nest when the
convolution sits inside a loop (a ``lax.scan`` over training steps: about 20x
slower, cf. jax-ml/jax#12868), and even outside loops its backward convolutions
reach only a fraction of the machine's matmul rate. Written as "gather the
``kh * kw`` shifted views of the input, concatenate them on the channel axis, one
matmul with the flattened kernel" (im2col), the same convolution is a dense
matmul forward and backward, which XLA:CPU runs at full speed anywhere. On GPU and
TPU, XLA's own convolution (cuDNN) is the better choice, so ``impl='auto'`` picks
the patches only on the CPU backend.

The parameters are exactly those of ``flax.linen.Conv`` (``kernel: [*window,
in_features, features]``, ``bias: [features]``), so checkpoints do not depend on
the lowering.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors

IMPLS = ("auto", "xla", "patches")
PaddingLike = str | int | Sequence[tuple[int, int]]


def resolve_impl(impl: str) -> str:
  """``'auto'`` is ``'patches'`` on the CPU backend and ``'xla'`` elsewhere."""
  errors.lookup("conv_impl", impl, {k: k for k in IMPLS})
  if impl == "auto":
    return "patches" if jax.default_backend() == "cpu" else "xla"
  return impl


def _pads(padding: PaddingLike, sizes: Sequence[int], window: Sequence[int],
          strides: Sequence[int]) -> list[tuple[int, int]]:
  """Explicit (low, high) padding per spatial axis, as flax.linen.Conv pads."""
  if isinstance(padding, str):
    mode = padding.upper()
    if mode == "VALID":
      return [(0, 0)] * len(sizes)
    if mode != "SAME":
      raise errors.JdlError(f"padding must be 'SAME', 'VALID' or an int, got {padding!r}")
    pads = []
    for n, k, s in zip(sizes, window, strides):
      out = -(-n // s)
      total = max((out - 1) * s + k - n, 0)
      pads.append((total // 2, total - total // 2))
    return pads
  if isinstance(padding, int):
    return [(padding, padding)] * len(sizes)
  return [tuple(p) for p in padding]


def conv_patches(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
                 padding: PaddingLike) -> jax.Array:
  """N-d convolution (cross-correlation, as XLA's) as patches @ kernel.

  Args:
    x: ``[batch, *spatial, in_features]``.
    kernel: ``[*window, in_features, features]``.
    strides: one per spatial axis.
    padding: ``'SAME'``, ``'VALID'``, an int, or (low, high) pairs.

  Returns:
    ``[batch, *out_spatial, features]``.
  """
  window = kernel.shape[:-2]
  pads = _pads(padding, x.shape[1:-1], window, strides)
  x = jnp.pad(x, [(0, 0), *pads, (0, 0)])
  out = [(n - k) // s + 1 for n, k, s in zip(x.shape[1:-1], window, strides)]
  if any(o <= 0 for o in out):
    raise errors.JdlError(f"convolution window {tuple(window)} does not fit the input "
                          f"{tuple(x.shape[1:-1])} (after padding)")
  views = []
  for offset in itertools.product(*(range(k) for k in window)):
    index = tuple(slice(o, o + (m - 1) * s + 1, s) for o, m, s in zip(offset, out, strides))
    views.append(x[(slice(None), *index, slice(None))])
  patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
  k = kernel.reshape(-1, kernel.shape[-1])  # Row order (*window, in_features) matches.
  y = patches.reshape(-1, k.shape[0]) @ k
  return y.reshape(x.shape[0], *out, kernel.shape[-1])


class Conv(nn.Module):
  """A drop-in for ``flax.linen.Conv`` (same parameters) with a choice of lowering.

  Attributes:
    features: output channels.
    kernel_size: the window, one size per spatial axis.
    strides: an int or one per spatial axis.
    padding: ``'SAME'``, ``'VALID'``, an int, or (low, high) pairs.
    use_bias: add a bias.
    kernel_init, bias_init: initializers.
    dtype: computation dtype (parameters stay float32).
    impl: ``'auto'`` (patches on CPU, XLA's convolution elsewhere), ``'xla'`` or
      ``'patches'``.
  """
  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    window = tuple(self.kernel_size)
    strides = ((self.strides,) * len(window) if isinstance(self.strides, int)
               else tuple(self.strides))
    kernel = self.param("kernel", self.kernel_init, (*window, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    if resolve_impl(self.impl) == "patches":
      y = conv_patches(x, kernel, strides, self.padding)
    else:
      pads = _pads(self.padding, x.shape[1:-1], window, strides)
      y = jax.lax.conv_general_dilated(
          x, kernel, strides, pads,
          dimension_numbers=_dimension_numbers(len(window)))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
  """Channel-last specs, e.g. ('NHWC', 'HWIO', 'NHWC') for 2-D."""
  spatial = "DHW"[-ndim:] if ndim <= 3 else None
  if spatial is None:
    raise errors.JdlError(f"convolutions over {ndim} spatial axes are not supported")
  return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
