"""Convolution with a choice of lowering: XLA's convolution, patches and a matmul, or both.

XLA:CPU compiles the gradient of a convolution to a slow generic loop nest when the
convolution sits inside a loop (a ``lax.scan`` over training steps: about 20x
slower, cf. jax-ml/jax#12868), and even outside loops its backward convolutions
reach only a fraction of the machine's matmul rate. Written as "gather the
``kh * kw`` shifted views of the input, concatenate them on the channel axis, one
matmul with the flattened kernel" (im2col), the same convolution is a dense
matmul forward and backward, which XLA:CPU runs at full speed anywhere. On GPU and
TPU, XLA's own convolution (cuDNN) is the better choice, so ``impl='auto'`` picks
the patches only on the CPU backend.

``'hybrid'`` (stride 1 only) keeps XLA's convolution where XLA:CPU runs it fast even
inside a loop, the forward pass and the input gradient (itself a forward convolution
of the output gradient with the flipped kernel), and computes the kernel gradient as
one matmul per window offset (``shifted input^T @ output gradient``), with no patches
built at all. Inside a scan on a 2-core Xeon it took a ResNet-20 convolution
(32x32x16 -> 16, batch 128) from 43.5 to 26.6 ms forward and backward, and
16x16x32 -> 32 from 21.7 to 16.0 ms; with 64 output channels, or one input channel,
the patches stayed faster (``benchmarks/cnn_lowerings.py``). On CPU, ``'auto'`` picks ``'hybrid'`` for
stride-1 convolutions with at least 8 input and at most 32 output channels, and
the patches otherwise.

The parameters are exactly those of ``flax.linen.Conv`` (``kernel: [*window,
in_features, features]``, ``bias: [features]``), so checkpoints do not depend on
the lowering.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors

IMPLS = ("auto", "xla", "patches", "hybrid")
PaddingLike = str | int | Sequence[tuple[int, int]]


def resolve_impl(impl: str, *, strides: Sequence[int] = (), in_features: int = 0,
                 features: int = 0) -> str:
  """The lowering ``impl`` stands for, given the convolution's shape where known.

  ``'auto'`` is ``'xla'`` off the CPU backend; on CPU it is ``'hybrid'`` for a
  stride-1 convolution with ``8 <= in_features`` and ``features <= 32`` (where it
  measured faster than the patches), else ``'patches'``. ``'hybrid'`` on a strided
  convolution falls back to ``'patches'``.
  """
  errors.lookup("conv_impl", impl, {k: k for k in IMPLS})
  stride_one = bool(strides) and all(s == 1 for s in strides)
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    return "hybrid" if stride_one and in_features >= 8 and 0 < features <= 32 else "patches"
  if impl == "hybrid" and not stride_one:
    return "patches"
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
  if _int(padding):
    return [(int(padding), int(padding))] * len(sizes)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_hybrid(x: jax.Array, kernel: jax.Array, pads: tuple[tuple[int, int], ...]) -> jax.Array:
  """Stride-1 convolution: XLA's forward and input gradient, the kernel gradient by matmuls.

  Args:
    x: ``[batch, *spatial, in_features]``.
    kernel: ``[*window, in_features, features]``.
    pads: explicit ``(low, high)`` padding per spatial axis.

  Returns:
    ``[batch, *out_spatial, features]``, equal to ``lax.conv_general_dilated``.
  """
  return _conv_xla(x, kernel, pads)


def _conv_xla(x, kernel, pads):
  return jax.lax.conv_general_dilated(x, kernel, (1,) * (x.ndim - 2), pads,
                                      dimension_numbers=_dimension_numbers(x.ndim - 2))


def _conv_hybrid_fwd(x, kernel, pads):
  return _conv_xla(x, kernel, pads), (x, kernel)


def _conv_hybrid_bwd(pads, residuals, dy):
  x, kernel = residuals
  window = kernel.shape[:-2]
  spatial = tuple(range(len(window)))
  # d/dx of a stride-1 correlation: the output gradient correlated with the flipped,
  # transposed kernel, padded by (k - 1 - low, k - 1 - high).
  # A padding wider than k - 1 makes that negative: pad by 0 there and crop instead
  # (XLA:CPU computes some convolutions with negative padding wrongly).
  flipped = jnp.swapaxes(jnp.flip(kernel, spatial), -1, -2)
  grad_pads = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(window, pads)]
  dx = _conv_xla(dy, flipped, tuple((max(lo, 0), max(hi, 0)) for lo, hi in grad_pads))
  if any(lo < 0 or hi < 0 for lo, hi in grad_pads):
    dx = dx[(slice(None), *(slice(max(-lo, 0), n - max(-hi, 0))
                            for (lo, hi), n in zip(grad_pads, dx.shape[1:-1])), slice(None))]
  # d/dkernel[offset] = sum over batch and positions of x_pad[p + offset] * dy[p].
  x_pad = jax.lax.pad(x, jnp.zeros((), x.dtype),
                      [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
  out = dy.shape[1:-1]
  dy_rows = dy.reshape(-1, dy.shape[-1])
  # Each tap sums over batch x positions: accumulate in float32 under bfloat16 compute
  # (and in float64 under float64: jdl check's gradient check).
  wide = x.dtype if x.dtype.itemsize >= 4 else jnp.float32
  taps = [jax.lax.dot(x_pad[(slice(None), *(slice(o, o + m) for o, m in zip(offset, out)),
                              slice(None))].reshape(-1, x.shape[-1]).T, dy_rows,
                      preferred_element_type=wide)
          for offset in itertools.product(*(range(k) for k in window))]
  dkernel = jnp.stack(taps).reshape(kernel.shape)
  return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


class Conv(nn.Module):
  """A drop-in for ``flax.linen.Conv`` (same parameters) with a choice of lowering.

  Attributes:
    features: output channels.
    kernel_size: the window, one size per spatial axis (an int: a 1-D window).
    strides: an int or one per spatial axis.
    padding: ``'SAME'``, ``'VALID'``, an int, or (low, high) pairs.
    use_bias: add a bias.
    kernel_init, bias_init: initializers.
    dtype: computation dtype (parameters stay float32).
    impl: ``'auto'`` (on CPU ``'hybrid'`` or ``'patches'`` by shape, see
      :func:`resolve_impl`; XLA's convolution elsewhere), ``'xla'``, ``'patches'``
      or ``'hybrid'``. ``'hybrid'`` has a custom VJP, so it takes reverse-mode
      autodiff only (``jax.grad``, not ``jax.jvp`` / ``jax.hessian``): for forward
      mode on CPU choose ``'patches'`` or ``'xla'`` (and average pooling: CPU's
      max pooling is a custom VJP too, :mod:`jdl.models.cnn`).
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = "SAME"
  use_bias: bool = True
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros_init()
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    # An int is a 1-D window, as flax.linen.Conv takes it.
    window = (self.kernel_size,) if _int(self.kernel_size) else tuple(self.kernel_size)
    strides = ((self.strides,) * len(window) if _int(self.strides)
               else tuple(self.strides))
    _check_geometry(self.features, window, strides, self.padding, x.shape)
    kernel = self.param("kernel", self.kernel_init, (*window, x.shape[-1], self.features),
                        jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = resolve_impl(self.impl, strides=strides, in_features=x.shape[-1],
                        features=self.features)
    if impl == "patches":
      y = conv_patches(x, kernel, strides, self.padding)
    elif impl == "hybrid":
      pads = _pads(self.padding, x.shape[1:-1], window, strides)
      y = conv_hybrid(x, kernel, tuple(tuple(int(v) for v in p) for p in pads))
    else:
      pads = _pads(self.padding, x.shape[1:-1], window, strides)
      y = jax.lax.conv_general_dilated(
          x, kernel, strides, pads,
          dimension_numbers=_dimension_numbers(len(window)))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


_int = errors.is_integer  # An integer as flax.linen.Conv takes it.


def _positive_ints(values: Sequence[Any]) -> bool:
  return all(_int(v) and v >= 1 for v in values)


def _check_geometry(features: Any, window: tuple, strides: tuple, padding: PaddingLike,
                    shape: tuple[int, ...]) -> None:
  """Raises ``JdlError`` for sizes no convolution has, before any lowering sees them
  (the patches would otherwise zip a longer window with fewer axes, silently)."""
  errors.require(_positive_ints([features]),
                 f"Conv features must be a positive integer, got {features!r}")
  errors.require(window and _positive_ints(window),
                 f"Conv kernel_size must be positive integers, got {window!r}")
  errors.require(len(shape) == len(window) + 2,
                 f"Conv kernel_size {window} has {len(window)} spatial axes, so it takes "
                 f"inputs [batch, {', '.join(['size'] * len(window))}, channels]; got "
                 f"shape {tuple(shape)}")
  errors.require(len(strides) == len(window) and _positive_ints(strides),
                 f"Conv strides must be a positive integer or one per spatial axis "
                 f"({len(window)}), got {strides!r}")
  if isinstance(padding, str):
    if padding.upper() != "VALID":
      return  # 'SAME' (or a name flax refuses) pads any input to a window.
    pads = [0] * len(window)
  elif _int(padding):
    errors.require(padding >= 0, f"Conv padding must be >= 0, got {padding}")
    pads = [2 * padding] * len(window)
  else:
    pairs = list(padding) if isinstance(padding, Sequence) else []
    errors.require(
        len(pairs) == len(window) and all(
            isinstance(p, Sequence) and len(p) == 2 and all(_int(v) and v >= 0 for v in p)
            for p in pairs),
        f"Conv padding must be 'SAME', 'VALID', an int or one (low, high) pair of "
        f"non-negative ints per spatial axis ({len(window)}), got {padding!r}")
    pads = [lo + hi for lo, hi in pairs]
  # An empty output (XLA's lowering returns one silently) would reach the next layer
  # as a zero-size map: a head with no inputs, or NaN from a global average.
  errors.require(all(n + p >= k for n, p, k in zip(shape[1:-1], pads, window)),
                 f"Conv input {tuple(shape[1:-1])} is smaller than kernel_size "
                 f"{window} with padding {padding!r}: the output would be empty")


def _dimension_numbers(ndim: int) -> tuple[str, str, str]:
  """Channel-last specs, e.g. ('NHWC', 'HWIO', 'NHWC') for 2-D."""
  spatial = "DHW"[-ndim:] if ndim <= 3 else None
  if spatial is None:
    raise errors.JdlError(f"convolutions over {ndim} spatial axes are not supported")
  return (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
