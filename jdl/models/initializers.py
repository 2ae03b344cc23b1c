"""Weight initializers by name.

Models take ``kernel_init: str`` (and an optional ``init_scale``) so that configs stay
plain data; :func:`get_initializer` turns the name into a ``jax.nn.initializers``
function ``init(key, shape, dtype) -> Array``.
"""

from __future__ import annotations

from collections.abc import Callable
import math

import jax
import jax.numpy as jnp

from jdl import errors

Initializer = Callable[..., jax.Array]

# (variance scale, fan mode, distribution) of the variance-scaling family.
_VARIANCE_SCALING = {
    "he_normal": (2.0, "fan_in", "truncated_normal"),
    "he_uniform": (2.0, "fan_in", "uniform"),
    "glorot_normal": (1.0, "fan_avg", "truncated_normal"),
    "glorot_uniform": (1.0, "fan_avg", "uniform"),
    "lecun_normal": (1.0, "fan_in", "truncated_normal"),
    "lecun_uniform": (1.0, "fan_in", "uniform"),
}
_DEFAULT_SCALE = 0.01  # Of `normal` (stddev) and `uniform` (half-width).

INITIALIZERS = (*_VARIANCE_SCALING, "normal", "uniform", "zeros", "orthogonal")


def _symmetric_uniform(half_width: float) -> Initializer:
  # jax.nn.initializers.uniform samples [0, scale): all-positive weights are a poor
  # default, so `uniform` here is centred on zero.
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -half_width, half_width)

  return init


def get_initializer(
    name: str | Initializer, scale: float | None = None
) -> Initializer:
  """Returns the initializer called ``name``.

  Args:
    name: one of ``he_normal``, ``he_uniform``, ``glorot_normal``,
      ``glorot_uniform``, ``lecun_normal``, ``lecun_uniform`` (variance scaling,
      normal variants truncated at two standard deviations and rescaled so that the
      standard deviation is exact), ``normal``, ``uniform``, ``zeros``,
      ``orthogonal``; or an initializer function, returned unchanged.
    scale: for ``normal`` the standard deviation, for ``uniform`` the half-width of
      ``[-scale, scale)`` (both default to 0.01); for the variance-scaling family and
      ``orthogonal`` a gain multiplying the standard deviation (default 1). ``zeros``
      takes none.

  Returns:
    ``init(key, shape, dtype=float32) -> Array``. For a dense kernel
    ``[fan_in, fan_out]``; for a convolution ``[*window, in_channels, out_channels]``.

  Raises:
    JdlError: unknown name, or a ``scale`` that is not a positive number.

  Examples:
    >>> import jax
    >>> init = get_initializer("he_normal")
    >>> init(jax.random.key(0), (784, 512)).shape
    (784, 512)
  """
  if callable(name):
    errors.require(scale is None, "init_scale applies only to a named initializer")
    return name
  if scale is not None:
    errors.require(
        isinstance(scale, (int, float)) and not isinstance(scale, bool)
        and math.isfinite(scale) and scale > 0,
        f"init_scale must be a positive number, got {scale!r}",
    )
  table = {n: n for n in INITIALIZERS}
  name = errors.lookup("initializer", name, table)
  if name in _VARIANCE_SCALING:
    variance, mode, distribution = _VARIANCE_SCALING[name]
    gain = 1.0 if scale is None else float(scale)
    return jax.nn.initializers.variance_scaling(
        variance * gain**2, mode, distribution
    )
  if name == "normal":
    return jax.nn.initializers.normal(_DEFAULT_SCALE if scale is None else scale)
  if name == "uniform":
    return _symmetric_uniform(_DEFAULT_SCALE if scale is None else scale)
  if name == "orthogonal":
    return jax.nn.initializers.orthogonal(1.0 if scale is None else scale)
  errors.require(scale is None, f"initializer 'zeros' takes no scale, got {scale!r}")
  return jax.nn.initializers.zeros


# The output layer starts small so the first predictions are close to uniform
# (initial cross-entropy near ln C, which `jdl check` verifies). He scaling makes up
# for a ReLU that no output layer has, and features grow through max pooling: with
# the hidden layers' own init, a CNN on the digits started at a loss of 5.2 (ln 10 is
# 2.3). big_vision zero-initialises its heads for the same reason; a zero head would
# leave the hidden layers without a gradient at the first step, so jdl scales instead.
_HEAD_COUNTERPART = {"he_normal": "lecun_normal", "he_uniform": "lecun_uniform"}
HEAD_GAIN = 0.25
_SCALED_FAMILY = ("lecun_normal", "lecun_uniform", "glorot_normal", "glorot_uniform")


def get_head_initializer(
    name: str | Initializer, scale: float | None = None
) -> Initializer:
  """The initializer of a model's output layer, given the hidden layers' ``name``.

  For the variance-scaling family the head gets the LeCun counterpart of the He
  variants and a gain of :data:`HEAD_GAIN` (times ``scale``); any other choice
  (``normal``, ``uniform``, ``zeros``, ``orthogonal``, a function) applies unchanged.

  Args:
    name: as for :func:`get_initializer`.
    scale: as for :func:`get_initializer`.

  Examples:
    >>> import jax, numpy as np
    >>> w = get_head_initializer("he_normal")(jax.random.key(0), (4096, 10))
    >>> round(float(np.std(w) * np.sqrt(4096)), 2)
    0.25
  """
  if isinstance(name, str):
    name = _HEAD_COUNTERPART.get(name, name)
    if name in _SCALED_FAMILY:
      return get_initializer(name, HEAD_GAIN * (1.0 if scale is None else scale))
  return get_initializer(name, scale)
