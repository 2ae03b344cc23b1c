"""Data augmentation on the device: pure, jit-compiled, explicit-PRNG.

Every transform is a pure ``jnp`` function of an explicit key and a batch, so it
runs inside the compiled training step (no host round trip) and the augmented
batch is a deterministic function of the key: a resumed run sees exactly the
batches an uninterrupted run would (the step key is ``fold_in(state.key, step)``).
Randomness is per example (vectorized draws of shape ``[B]``), and every op
draws from its own ``fold_in(key, op_index)``, so switching one op on or off does
not change the draws of the others.

Images are ``[batch, height, width, channels]`` (NHWC). Flips, shifts, rotations
and crops need such inputs; noise and mixup work on any ``[B, ...]`` input.

Augmentation is applied to training batches only, never to evaluation. It acts
on inputs *after* normalisation (the splits live on the device normalised), so
``augment.noise_std`` is in standard-deviation units of the normalised data and
a zero fill is the train-split mean where the inputs are centred
(``normalize='featurewise'``, ``'featurewise_center'``, ``'global'``: grey, not
black, on MNIST), the raw value 0 with ``normalize='none'``. Centering and std
normalisation of each input feature (each pixel; Keras' ``featurewise_*`` use one
value per channel) with train-split statistics are ``config.normalize='featurewise'``;
centering alone is ``'featurewise_center'`` (:mod:`jdl.data.pipeline`). With these
per-pixel statistics, flipping, shifting, rotating or cropping a normalised image
differs from normalising the transformed raw image: each pixel keeps the mean and
std of the place it came from (on the digits a flip shifts values by 0.5 std on
average). ``normalize='global'`` (one mean and std for every pixel) commutes with
these transforms; prefer it with geometric augmentation.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> x = jnp.ones((4, 8, 8, 1))
  >>> flags = jnp.array([True, False, True, False])
  >>> bool((flip(flip(x, flags, axis=2), flags, axis=2) == x).all())
  True
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from jdl.errors import JdlError

Key = jax.Array
Batch = dict[str, Any]
AugmentFn = Callable[[Key, jax.Array], jax.Array]

FILLS = ("zero", "edge")
# A fixed stream per op: fold_in(key, index). Never renumber (runs would change).
_OP_INDEX = {"hflip": 0, "vflip": 1, "crop": 2, "shift": 3, "rotation": 4, "noise": 5,
             "mixup": 6}
IMAGE_KEYS = ("hflip", "vflip", "width_shift", "height_shift", "rotation", "crop_padding")


# ---------------------------------------------------------------- deterministic
def flip(x: jax.Array, flags: jax.Array, axis: int) -> jax.Array:
  """Flips the examples whose flag is set.

  Args:
    x: ``[B, H, W, C]``.
    flags: ``[B]`` booleans.
    axis: 2 for a horizontal flip (left-right), 1 for a vertical one.

  Returns:
    ``[B, H, W, C]``.
  """
  return jnp.where(flags[:, None, None, None], jnp.flip(x, axis=axis), x)


def translate(x: jax.Array, dy: jax.Array, dx: jax.Array, fill: str = "zero") -> jax.Array:
  """Shifts each example by whole pixels: ``out[b, i, j] = x[b, i - dy[b], j - dx[b]]``.

  Positive ``dx`` moves the content right, positive ``dy`` down (as ``np.roll``,
  but the pixels shifted in are filled instead of wrapped).

  Args:
    x: ``[B, H, W, C]``.
    dy, dx: ``[B]`` integer shifts.
    fill: ``'zero'`` (zeros shift in) or ``'edge'`` (the edge pixels repeat).

  Returns:
    ``[B, H, W, C]``.
  """
  b, h, w, _ = x.shape
  rows = jnp.arange(h)[None, :] - dy[:, None]  # [B, H] source rows.
  cols = jnp.arange(w)[None, :] - dx[:, None]  # [B, W] source columns.
  out = x[jnp.arange(b)[:, None, None], jnp.clip(rows, 0, h - 1)[:, :, None],
          jnp.clip(cols, 0, w - 1)[:, None, :]]
  if fill == "edge":
    return out
  valid = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
  return jnp.where(valid[..., None], out, jnp.zeros((), x.dtype))


def crop(x: jax.Array, oy: jax.Array, ox: jax.Array, padding: int,
         fill: str = "zero") -> jax.Array:
  """Pads each example by ``padding`` pixels, then crops ``H x W`` at ``(oy, ox)``.

  Args:
    x: ``[B, H, W, C]``.
    oy, ox: ``[B]`` integer offsets in ``[0, 2 * padding]``; ``padding`` gives
      the input back.
    padding: pixels added on each side.
    fill: ``'zero'`` or ``'edge'`` padding.

  Returns:
    ``[B, H, W, C]``.
  """
  _, h, w, c = x.shape
  p = int(padding)
  padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)),
                   mode="constant" if fill == "zero" else "edge")
  zero = jnp.zeros((), oy.dtype)
  take = lambda img, i, j: jax.lax.dynamic_slice(img, (i, j, zero), (h, w, c))  # noqa: E731
  return jax.vmap(take)(padded, oy, ox)


def rotate(x: jax.Array, angles: jax.Array, fill: str = "zero") -> jax.Array:
  """Rotates each example about its centre, counter-clockwise, bilinearly.

  Counter-clockwise as displayed with row 0 at the top, so an angle of
  ``pi / 2`` on a square image is ``np.rot90(x, k=1, axes=(1, 2))``.

  Args:
    x: ``[B, H, W, C]``.
    angles: ``[B]`` angles in radians.
    fill: ``'zero'`` (zeros outside the input: a sample point within a pixel of the
      border interpolates between the edge pixel and 0, as scipy's ``grid-constant``
      mode) or ``'edge'`` (nearest edge pixel).

  Returns:
    ``[B, H, W, C]``.
  """
  _, h, w, _ = x.shape
  ci, cj = (h - 1) / 2.0, (w - 1) / 2.0
  ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) - ci,
                        jnp.arange(w, dtype=jnp.float32) - cj, indexing="ij")
  cos = jnp.cos(angles.astype(jnp.float32))[:, None, None]
  sin = jnp.sin(angles.astype(jnp.float32))[:, None, None]
  # Output pixel (i, j) samples the input at the inverse rotation of (i, j).
  rows = cos * ii + sin * jj + ci  # [B, H, W]
  cols = cos * jj - sin * ii + cj
  mode = "constant" if fill == "zero" else "nearest"

  def one_channel(img, r, c):
    return ndimage.map_coordinates(img, [r, c], order=1, mode=mode, cval=0.0)

  per_channel = jax.vmap(one_channel, in_axes=(2, None, None), out_axes=2)
  return jax.vmap(per_channel)(x, rows, cols).astype(x.dtype)


# ---------------------------------------------------------------------- random
def random_flip(key: Key, x: jax.Array, axis: int, p: float = 0.5) -> jax.Array:
  """Flips each example with probability ``p`` (axis 2: horizontal, 1: vertical)."""
  return flip(x, jax.random.bernoulli(key, p, (x.shape[0],)), axis)


def random_shift(key: Key, x: jax.Array, *, height_shift: float = 0.0,
                 width_shift: float = 0.0, fill: str = "zero") -> jax.Array:
  """Shifts each example by whole pixels drawn uniformly per example.

  The shift is an integer in ``[-m, m]`` with ``m = round(fraction * size)``.

  Args:
    key: PRNG key.
    x: ``[B, H, W, C]``.
    height_shift, width_shift: fractions of the height and width in ``[0, 1)``.
    fill: ``'zero'`` or ``'edge'``.

  Returns:
    ``[B, H, W, C]``.
  """
  b, h, w, _ = x.shape
  my, mx = round(height_shift * h), round(width_shift * w)
  ky, kx = jax.random.split(key)
  dy = jax.random.randint(ky, (b,), -my, my + 1)
  dx = jax.random.randint(kx, (b,), -mx, mx + 1)
  return translate(x, dy, dx, fill)


def random_rotation(key: Key, x: jax.Array, degrees: float, fill: str = "zero") -> jax.Array:
  """Rotates each example by an angle drawn uniformly in ``[-degrees, degrees]``."""
  angles = jax.random.uniform(key, (x.shape[0],), jnp.float32, -degrees, degrees)
  return rotate(x, jnp.deg2rad(angles), fill)


def random_crop(key: Key, x: jax.Array, padding: int, fill: str = "zero") -> jax.Array:
  """Pads by ``padding`` and crops back to ``H x W`` at a random offset per example."""
  ky, kx = jax.random.split(key)
  b = x.shape[0]
  oy = jax.random.randint(ky, (b,), 0, 2 * padding + 1)
  ox = jax.random.randint(kx, (b,), 0, 2 * padding + 1)
  return crop(x, oy, ox, padding, fill)


def gaussian_noise(key: Key, x: jax.Array, std: float) -> jax.Array:
  """Adds ``N(0, std**2)`` noise to every value of ``x: [B, ...]``."""
  return x + (std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


# ----------------------------------------------------------------------- mixup
class MixupTargets(NamedTuple):
  """The targets of a mixed batch: example ``i`` is ``lam x[i] + (1 - lam) x[perm[i]]``.

  Attributes:
    y_a: the original targets ``[B, ...]``.
    y_b: the partners' targets ``y[perm]``.
    lam: the mixing weight, ``[]`` (one per batch) or ``[B]`` (one per example).
  """
  y_a: jax.Array
  y_b: jax.Array
  lam: jax.Array

  def mixed(self) -> jax.Array:
    """The mixed targets ``lam y_a + (1 - lam) y_b`` (float targets: values, images,
    one-hot or soft labels), in ``y_a``'s dtype."""
    lam = self.lam.reshape((-1,) + (1,) * (self.y_a.ndim - 1)) if self.lam.ndim else self.lam
    return (lam * self.y_a + (1.0 - lam) * self.y_b).astype(self.y_a.dtype)


def mixup(key: Key, x: jax.Array, y: jax.Array, alpha: float, *,
          per_example: bool = False) -> tuple[jax.Array, MixupTargets]:
  """Mixup: convex combinations of examples with a permutation of the batch.

  ``lam ~ Beta(alpha, alpha)``, one draw for the whole batch (as in the paper, the
  default) or one per example; ``x_mixed = lam * x + (1 - lam) * x[perm]``.
  Train on it with :func:`mixup_loss`.

  Args:
    key: PRNG key.
    x: ``[B, ...]`` inputs.
    y: ``[B, ...]`` targets (class indices or regression targets).
    alpha: the Beta distribution's parameters, > 0.
    per_example: one ``lam`` per example instead of one per batch.

  Returns:
    ``(x_mixed, MixupTargets(y, y[perm], lam))``.

  References:
    Zhang, Cisse, Dauphin, Lopez-Paz. mixup: Beyond Empirical Risk Minimization.
    ICLR 2018, arXiv:1710.09412.
  """
  k_lam, k_perm = jax.random.split(key)
  b = x.shape[0]
  lam = jax.random.beta(k_lam, alpha, alpha, (b,) if per_example else (), jnp.float32)
  perm = jax.random.permutation(k_perm, b)
  lam_x = lam.reshape((-1,) + (1,) * (x.ndim - 1)) if per_example else lam
  mixed = lam_x * x + (1.0 - lam_x) * x[perm]
  return mixed.astype(x.dtype), MixupTargets(y, y[perm], lam)


def mixup_loss(loss: Callable[[jax.Array, Any], jax.Array]) -> Callable[[jax.Array, Any], jax.Array]:
  """Wraps a per-example loss to take :class:`MixupTargets` too.

  On ``MixupTargets`` with float targets (regression values, one-hot or soft labels)
  it returns ``loss(out, lam * y_a + (1 - lam) * y_b)``, the paper's mixed target.
  Class indices cannot be mixed, so with integer targets it returns ``lam *
  loss(out, y_a) + (1 - lam) * loss(out, y_b)`` per example, which equals the loss
  of the mixed one-hot target for cross-entropy (linear in its target). (For a loss
  such as the absolute error, mixing the losses would pull the output to ``y_a`` or
  ``y_b``, not to the mixed target.) On plain targets it is ``loss`` itself.
  """

  def mixed(outputs, targets):
    if not isinstance(targets, MixupTargets):
      return loss(outputs, targets)
    lam, y_a, y_b = targets.lam, targets.y_a, targets.y_b
    if jnp.issubdtype(y_a.dtype, jnp.floating):
      return loss(outputs, targets.mixed())
    return lam * loss(outputs, y_a) + (1.0 - lam) * loss(outputs, y_b)

  return mixed


# --------------------------------------------------------------------- configs
def check_values(cfg) -> None:
  """Checks a ``config.augment`` section's values alone (before the data is read).

  Raises:
    JdlError: a negative value, an unknown fill, a fractional crop padding, a
      rotation over 180 degrees or a shift fraction >= 1.
  """
  for name in ("noise_std", "width_shift", "height_shift", "rotation", "crop_padding",
               "mixup_alpha"):
    value = cfg[name]
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
      raise JdlError(f"augment.{name} must be a finite number >= 0, got {value!r}")
  if cfg.fill not in FILLS:
    raise JdlError(f"augment.fill must be one of {', '.join(FILLS)}, got {cfg.fill!r}")
  if int(cfg.crop_padding) != cfg.crop_padding:
    raise JdlError(f"augment.crop_padding must be a whole number of pixels, got "
                   f"{cfg.crop_padding!r}")
  if cfg.rotation > 180:
    raise JdlError(f"augment.rotation is the largest angle in degrees, at most 180; got "
                   f"{cfg.rotation!r}")
  for name in ("height_shift", "width_shift"):
    if cfg[name] >= 1:
      raise JdlError(f"augment.{name} is a fraction of the image size in [0, 1), got "
                     f"{cfg[name]!r}")


def validate(cfg, input_shape: tuple[int, ...]) -> None:
  """Checks a ``config.augment`` section (:func:`check_values`) against the
  per-example input shape.

  Raises:
    JdlError: as :func:`check_values`; a shift under half a pixel, a crop padding
      as large as the image, or an image op on inputs that are not ``[H, W, C]``
      images.
  """
  check_values(cfg)
  shape = tuple(int(d) for d in input_shape)
  for name in IMAGE_KEYS:
    if cfg[name] and len(shape) != 3:
      raise JdlError(
          f"augment.{name} needs image inputs [B, H, W, C]; these inputs are "
          f"[B, {', '.join(map(str, shape))}] (input shape {shape}). Turn it off "
          f"(--config.augment.{name}={'false' if isinstance(cfg[name], bool) else 0}); "
          f"noise_std and mixup_alpha work on any input")
  if cfg.crop_padding and cfg.crop_padding >= min(shape[:2]):
    raise JdlError(f"augment.crop_padding={cfg.crop_padding!r} pixels on images of "
                   f"{shape[0]}x{shape[1]}: a crop could then hold no pixel of the image; "
                   f"use less than {min(shape[:2])} (4 is usual for 32x32)")
  for name, axis in (("height_shift", 0), ("width_shift", 1)):
    fraction = cfg[name]
    if fraction and round(fraction * shape[axis]) == 0:
      raise JdlError(f"augment.{name}={fraction!r} of {shape[axis]} pixels rounds to a "
                     f"shift of 0 pixels; use at least {0.5 / shape[axis] + 1e-6:.4g}")
    if fraction and round(fraction * shape[axis]) >= shape[axis]:  # As a crop as large.
      raise JdlError(f"augment.{name}={fraction!r} of {shape[axis]} pixels rounds to a "
                     f"shift of {round(fraction * shape[axis])} pixels: a shifted image "
                     f"could then hold no pixel of the image; use less than "
                     f"{(shape[axis] - 0.5) / shape[axis]:.4g}")


def make_augment_fn(cfg, input_shape: tuple[int, ...]) -> AugmentFn:
  """``augment(key, x) -> x`` composing the enabled ops of ``config.augment``.

  The order is: flips, crop, shift, rotation, noise (mixup is separate, as it
  changes the targets: :func:`mixup`, :func:`make_train_augment`). With every op
  off it returns ``x`` itself and traces no operation.

  Args:
    cfg: the ``config.augment`` section.
    input_shape: the per-example input shape (``[H, W, C]`` for image ops).

  Returns:
    The augmentation function of ``key`` and ``x: [B, *input_shape]``.

  Raises:
    JdlError: see :func:`validate`.
  """
  validate(cfg, input_shape)
  fill = cfg.fill
  ops: list[tuple[str, AugmentFn]] = []
  if cfg.hflip:
    ops.append(("hflip", lambda k, x: random_flip(k, x, axis=2)))
  if cfg.vflip:
    ops.append(("vflip", lambda k, x: random_flip(k, x, axis=1)))
  if cfg.crop_padding:
    ops.append(("crop", lambda k, x: random_crop(k, x, int(cfg.crop_padding), fill)))
  if cfg.width_shift or cfg.height_shift:
    ops.append(("shift", lambda k, x: random_shift(
        k, x, height_shift=float(cfg.height_shift), width_shift=float(cfg.width_shift),
        fill=fill)))
  if cfg.rotation:
    ops.append(("rotation", lambda k, x: random_rotation(k, x, float(cfg.rotation), fill)))
  if cfg.noise_std:
    ops.append(("noise", lambda k, x: gaussian_noise(k, x, float(cfg.noise_std))))
  if not ops:
    return lambda key, x: x

  def augment(key: Key, x: jax.Array) -> jax.Array:
    for name, op in ops:
      x = op(jax.random.fold_in(key, _OP_INDEX[name]), x)
    return x

  return augment


def make_train_augment(cfg, input_shape: tuple[int, ...]) -> Callable[[Key, Batch], Batch] | None:
  """``augment(key, batch) -> batch`` for the training step, or ``None`` when all off.

  The batch's ``x`` goes through :func:`make_augment_fn`; with
  ``mixup_alpha > 0`` it is then mixed (one ``lam`` per batch) and its ``y``
  becomes :class:`MixupTargets`, to be read by a loss wrapped in
  :func:`mixup_loss`.

  Raises:
    JdlError: see :func:`validate`.
  """
  augment_x = make_augment_fn(cfg, input_shape)
  alpha = float(cfg.mixup_alpha)
  if not alpha and not any(cfg[k] for k in (*IMAGE_KEYS, "noise_std")):
    return None

  def augment(key: Key, batch: Batch) -> Batch:
    x = augment_x(key, batch["x"])
    if not alpha:
      return {**batch, "x": x}
    x, targets = mixup(jax.random.fold_in(key, _OP_INDEX["mixup"]), x, batch["y"], alpha)
    return {**batch, "x": x, "y": targets}

  return augment
