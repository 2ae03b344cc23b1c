"""On-device augmentation against independent references: numpy shifts, crops and a
numpy bilinear rotation applied with the draws the documented key streams give
(``fold_in(key, op_index)`` per op), on non-square images, with both fills, and the
documented ranges and properties (mirror images, independent ops, both angle signs).

Found by a mutation audit of jdl/data/augment.py: each test's docstring names the
planted bugs (A..) it catches that the rest of the suite let pass.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdl.config import base_config
from jdl.data import augment
from jdl.errors import JdlError
from conftest import rbg_key
from test_augment import _augment_cfg as _cfg, _images, _shift_reference as np_shift

KEY = rbg_key(7)
# The op streams, as the module documents them: never renumbered.
HFLIP, VFLIP, CROP, SHIFT, ROTATION, NOISE, MIXUP = range(7)


# ------------------------------------------------------------ numpy references
def np_crop(x, oy, ox, p, fill):
  """The ``H x W`` window at ``(oy, ox)`` of the image padded by ``p`` on each side."""
  h, w = x.shape[1:3]
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)),
                  mode="constant" if fill == "zero" else "edge")
  return np.stack([padded[n, oy[n]:oy[n] + h, ox[n]:ox[n] + w] for n in range(len(x))])


def np_rotate(x, angles, fill):
  """Counter-clockwise on the display (row 0 at the top) about the centre, bilinear.

  In display coordinates (``u`` right, ``v`` up) a point at ``(u, v)`` of the output
  comes from the input point rotated back by ``-angle``. Zero fill: values outside
  the pixel grid are 0 and interpolated with (scipy's ``grid-constant``); edge fill:
  the nearest pixel (indices clamped).
  """
  b, h, w, _ = x.shape
  out = np.empty(x.shape, np.float64)
  i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  u, v = j - (w - 1) / 2, (h - 1) / 2 - i
  for n in range(b):
    c, s = math.cos(angles[n]), math.sin(angles[n])
    src_u, src_v = c * u + s * v, -s * u + c * v
    r, q = (h - 1) / 2 - src_v, src_u + (w - 1) / 2  # Source row, column.
    r0, q0 = np.floor(r).astype(int), np.floor(q).astype(int)
    fr, fq = r - r0, q - q0
    acc = 0.0
    for dr, wr in ((0, 1 - fr), (1, fr)):
      for dq, wq in ((0, 1 - fq), (1, fq)):
        rr, qq = r0 + dr, q0 + dq
        if fill == "zero":
          inside = (rr >= 0) & (rr < h) & (qq >= 0) & (qq < w)
          val = np.where(inside[..., None],
                         x[n][np.clip(rr, 0, h - 1), np.clip(qq, 0, w - 1)], 0.0)
        else:
          val = x[n][np.clip(rr, 0, h - 1), np.clip(qq, 0, w - 1)]
        acc = acc + (wr * wq)[..., None] * val
    out[n] = acc
  return out


def _stream(key, op):
  return jax.random.fold_in(key, op)


def _bernoulli(key, op, b):
  return np.asarray(jax.random.bernoulli(_stream(key, op), 0.5, (b,)))


def _offsets(key, op, b, low, high):
  ky, kx = jax.random.split(_stream(key, op))
  return (np.asarray(jax.random.randint(ky, (b,), low[0], high[0])),
          np.asarray(jax.random.randint(kx, (b,), low[1], high[1])))


def reference_augment(key, x, *, hflip=False, vflip=False, crop_padding=0,
                      height_shift=0.0, width_shift=0.0, rotation=0.0, noise_std=0.0,
                      fill="zero"):
  """The documented pipeline in numpy: flips, crop, shift, rotation, noise, each op
  drawing from ``fold_in(key, op_index)``; a shift of at most ``round(fraction *
  size)`` pixels (Python's rounding), a crop offset in ``[0, 2 * padding]``, an angle
  uniform in ``[-rotation, rotation]`` degrees."""
  b, h, w, _ = x.shape
  x = x.astype(np.float64)
  if hflip:
    x = np.where(_bernoulli(key, HFLIP, b)[:, None, None, None], x[:, :, ::-1], x)
  if vflip:
    x = np.where(_bernoulli(key, VFLIP, b)[:, None, None, None], x[:, ::-1], x)
  if crop_padding:
    p = crop_padding
    oy, ox = _offsets(key, CROP, b, (0, 0), (2 * p + 1, 2 * p + 1))
    x = np_crop(x, oy, ox, p, fill)
  if height_shift or width_shift:
    my, mx = round(height_shift * h), round(width_shift * w)
    dy, dx = _offsets(key, SHIFT, b, (-my, -mx), (my + 1, mx + 1))
    x = np_shift(x, dy, dx, fill)
  if rotation:
    degrees = np.asarray(jax.random.uniform(_stream(key, ROTATION), (b,), jnp.float32,
                                            -rotation, rotation))
    x = np_rotate(x, np.deg2rad(degrees.astype(np.float64)), fill)
  if noise_std:
    x = x + noise_std * np.asarray(jax.random.normal(_stream(key, NOISE), x.shape,
                                                     jnp.float32))
  return x


def _read_shifts(out, h, w):
  """The ``(dy, dx)`` each example of ``out`` was shifted by, read off the value of one
  pixel that came from the image ``1 + arange(h * w)`` (0 is the zero fill)."""
  found = []
  for img in out[..., 0]:
    i, j = np.argwhere(img > 0)[0]
    src_i, src_j = divmod(int(img[i, j]) - 1, w)
    found.append((int(i) - src_i, int(j) - src_j))
  return found


# -------------------------------------------------------------- composition
@pytest.mark.parametrize("fill", ["zero", "edge"])
@pytest.mark.parametrize("ops", [
    dict(hflip=True, vflip=True, crop_padding=2, height_shift=0.35, width_shift=0.375,
         rotation=25.0, noise_std=0.1),
    dict(crop_padding=3, height_shift=0.3),
], ids=["all", "crop-then-height-shift"])
def test_make_augment_fn_is_the_documented_pipeline_in_numpy(ops, fill):
  """The augmented batch is the numpy pipeline's on the documented key streams, in the
  documented order, on 8x12 images, both fills. Catches A16 (the shift bounds from
  the swapped sizes), A20 (dy and dx swapped), A21 (floor for the shift bound: 0.35 *
  8 = 2.8 rounds to 3), A22/A31/A48 (the fill not passed to the shift, rotation or
  crop), A24 (rotation centres swapped), A29 (angles in [0, d] only), A33 (hflip
  flipping rows), A42/A43 (renumbered or unfolded op streams), A44/A45 (ops
  reordered), A46/A47 (a height-only shift ignored, fractions swapped), A58 (noise
  subtracted)."""
  x = _images(16, 8, 12, 2)
  fn = jax.jit(augment.make_augment_fn(_cfg(fill=fill, **ops), (8, 12, 2)))
  got = np.asarray(fn(KEY, jnp.asarray(x)))
  chex.assert_shape(got, x.shape)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, reference_augment(KEY, x, fill=fill, **ops),
                             rtol=0, atol=2e-5)


def test_each_op_draws_the_same_whichever_others_are_on():
  """Switching one op on or off does not change the draws of the others: the crop of
  a crop + noise batch is the crop alone (the noise added on top), and the crop of a
  crop + shift batch is the reference's on the crop's own stream. Catches A42 (the
  crop drawing from the shift's stream), A43 (every op drawing from the step key:
  then a crop and a shift of equal range cancel), A44 (the shift before the crop)."""
  x = _images(32, 8, 8, 1)
  crop = augment.make_augment_fn(_cfg(crop_padding=2), (8, 8, 1))
  crop_noise = augment.make_augment_fn(_cfg(crop_padding=2, noise_std=0.5), (8, 8, 1))
  noise = 0.5 * np.asarray(jax.random.normal(_stream(KEY, NOISE), x.shape, jnp.float32))
  np.testing.assert_allclose(np.asarray(crop_noise(KEY, jnp.asarray(x))),
                             np.asarray(crop(KEY, jnp.asarray(x))) + noise, atol=1e-6)
  oy, ox = _offsets(KEY, CROP, 32, (0, 0), (5, 5))
  np.testing.assert_array_equal(np.asarray(crop(KEY, jnp.asarray(x))),
                                np_crop(x, oy, ox, 2, "zero"))
  both = augment.make_augment_fn(_cfg(crop_padding=2, width_shift=0.25, height_shift=0.25),
                                 (8, 8, 1))
  dy, dx = _offsets(KEY, SHIFT, 32, (-2, -2), (3, 3))
  np.testing.assert_array_equal(np.asarray(both(KEY, jnp.asarray(x))),
                                np_shift(np_crop(x, oy, ox, 2, "zero"), dy, dx, "zero"))


# --------------------------------------------------------------------- flips
def test_hflip_mirrors_left_right_and_vflip_up_down():
  """Each output of hflip is its input or its left-right mirror (both occur), each of
  vflip its input or its up-down mirror. Catches A33 (hflip flipping rows: the existing
  test only counted changed examples)."""
  x = _images(64, 5, 7, 1)
  for op, mirror in (("hflip", x[:, :, ::-1]), ("vflip", x[:, ::-1])):
    out = np.asarray(augment.make_augment_fn(_cfg(**{op: True}), (5, 7, 1))(KEY, jnp.asarray(x)))
    same = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == mirror, axis=(1, 2, 3))
    assert np.all(same | mirrored), op
    assert same.sum() > 10 and mirrored.sum() > 10, op


def test_hflip_and_vflip_are_drawn_independently():
  """With both flips on, all four combinations occur (about a quarter each). Catches
  A43 (both ops drawing from the one key: the two flips always together)."""
  x = _images(400, 4, 6, 1)
  out = np.asarray(augment.make_augment_fn(_cfg(hflip=True, vflip=True), (4, 6, 1))(
      KEY, jnp.asarray(x)))
  kinds = np.stack([np.all(out == v, axis=(1, 2, 3)) for v in
                    (x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1])])
  assert np.all(kinds.sum(0) == 1)  # Each output is exactly one of the four.
  # Binomial(400, 1/4): mean 100, std 8.7; 5 sigma.
  assert np.all(np.abs(kinds.sum(1) - 100) < 44), kinds.sum(1)


# -------------------------------------------------------------------- shifts
@pytest.mark.parametrize("height,width,max_dy,max_dx", [
    (0.35, 0.0, 3, 0),  # 0.35 * 8 = 2.8 rounds to 3.
    (0.0, 0.375, 0, 4),  # 0.375 * 12 = 4.5 rounds to 4 (halves to even).
    (0.25, 0.5, 2, 6),
])
def test_shift_bounds_are_round_fraction_times_each_axis_own_size(height, width, max_dy,
                                                                  max_dx):
  """On 8x12 images each output is a whole-pixel zero-filled shift of its input by at
  most ``round(height_shift * 8)`` rows and ``round(width_shift * 12)`` columns, and
  both extremes of each range occur. Catches A16 (sizes swapped), A20 (dy, dx
  swapped), A21 (floor), A46 (a height-only shift ignored), A47 (fractions swapped)."""
  n, h, w = 300, 8, 12
  x = np.broadcast_to((1 + np.arange(h * w, dtype=np.float32)).reshape(1, h, w, 1),
                      (n, h, w, 1))
  fn = augment.make_augment_fn(_cfg(height_shift=height, width_shift=width), (h, w, 1))
  out = np.asarray(fn(KEY, jnp.asarray(x)))
  found = _read_shifts(out, h, w)
  dy, dx = np.array(found).T
  np.testing.assert_array_equal(out, np_shift(x, dy, dx, "zero"))  # Whole shifts only.
  dys, dxs = {d[0] for d in found}, {d[1] for d in found}
  assert dys == set(range(-max_dy, max_dy + 1)), sorted(dys)
  assert dxs == set(range(-max_dx, max_dx + 1)), sorted(dxs)


# ------------------------------------------------------------------ rotation
@pytest.mark.parametrize("fill", ["zero", "edge"])
def test_rotate_matches_a_numpy_bilinear_rotation_on_non_square_images(fill):
  """``rotate`` at arbitrary angles on a 7x10 image is the numpy bilinear rotation
  about the centre. Catches A24 (the row and column centres swapped: invisible on
  square images, where the existing tests rotate)."""
  x = _images(6, 7, 10, 2, seed=3)
  angles = np.array([0.3, -1.0, 2.5, math.pi, -math.pi / 2, 0.05], np.float32)
  got = np.asarray(augment.rotate(jnp.asarray(x), jnp.asarray(angles), fill))
  np.testing.assert_allclose(got, np_rotate(x, angles.astype(np.float64), fill),
                             rtol=0, atol=2e-5)
  # A half turn maps pixels onto pixels: the image upside down and mirrored.
  np.testing.assert_allclose(got[3], x[3, ::-1, ::-1], atol=1e-5)


def test_random_rotation_turns_both_ways_over_the_whole_range():
  """The angles drawn fill ``[-degrees, degrees]``: measured on a bright pixel, some
  turn past 80% of the range each way. Catches A29 (angles in [0, d] only); the
  existing test checked the largest absolute angle only."""
  n, degrees = 256, 30.0
  x = np.zeros((n, 21, 21, 1), np.float32)
  x[:, 10, 18] = 1.0  # 8 px right of the centre.
  out = np.asarray(augment.random_rotation(KEY, jnp.asarray(x), degrees))[..., 0]
  rows, cols = np.meshgrid(np.arange(21) - 10.0, np.arange(21) - 10.0, indexing="ij")
  mass = out.sum((1, 2))
  angle = np.degrees(np.arctan2(-(out * rows).sum((1, 2)) / mass,
                                (out * cols).sum((1, 2)) / mass))
  assert angle.max() > 0.8 * degrees and angle.min() < -0.8 * degrees, (angle.min(),
                                                                        angle.max())
  assert np.abs(angle).max() <= degrees + 0.5


@pytest.mark.parametrize("ops", [dict(rotation=45.0), dict(height_shift=0.5, width_shift=0.5),
                                 dict(crop_padding=3)], ids=["rotation", "shift", "crop"])
def test_edge_fill_of_a_constant_image_is_the_constant(ops):
  """With ``fill='edge'`` nothing but the image's own value comes in. Catches A22, A31
  and A48 (the fill not reaching random_shift, random_rotation or the crop)."""
  fn = augment.make_augment_fn(_cfg(fill="edge", **ops), (6, 6, 1))
  out = np.asarray(fn(KEY, jnp.full((32, 6, 6, 1), 3.0)))
  np.testing.assert_allclose(out, 3.0, rtol=1e-6)
  zero = augment.make_augment_fn(_cfg(fill="zero", **ops), (6, 6, 1))
  assert (np.asarray(zero(KEY, jnp.full((32, 6, 6, 1), 3.0))) < 2.9).any()  # 0 comes in.


# --------------------------------------------------------------------- mixup
def test_train_augment_mixes_on_the_mixup_stream_after_the_other_ops():
  """make_train_augment's mixup uses ``fold_in(key, 6)`` (lam one Beta draw, then the
  permutation) on the noisy batch; ``mask`` and other entries pass through. Catches
  A41 (mixup drawing from the step key itself)."""
  b = 16
  x = _images(b, 3, 3, 1)
  batch = {"x": jnp.asarray(x), "y": jnp.arange(b), "mask": jnp.ones(b, bool)}
  fn = augment.make_train_augment(_cfg(mixup_alpha=0.4, noise_std=0.2), (3, 3, 1))
  out = fn(KEY, batch)
  k_lam, k_perm = jax.random.split(_stream(KEY, MIXUP))
  lam = float(jax.random.beta(k_lam, 0.4, 0.4, (), jnp.float32))
  perm = np.asarray(jax.random.permutation(k_perm, b))
  noisy = reference_augment(KEY, x, noise_std=0.2)
  assert float(out["y"].lam) == pytest.approx(lam, rel=1e-6)
  np.testing.assert_array_equal(np.asarray(out["y"].y_b), perm)
  np.testing.assert_array_equal(np.asarray(out["y"].y_a), np.arange(b))
  np.testing.assert_allclose(np.asarray(out["x"]), lam * noisy + (1 - lam) * noisy[perm],
                             atol=1e-5)
  assert out["mask"] is batch["mask"]


def test_noise_alone_makes_a_train_augment():
  """noise_std alone (no image op, no mixup) gives a train augmentation that adds the
  noise to ``x`` and leaves ``y`` alone, on tabular inputs too. Catches A49
  (make_train_augment returning None for a noise-only config: no augmentation)."""
  fn = augment.make_train_augment(_cfg(noise_std=0.3), (5,))
  assert fn is not None
  x = np.random.default_rng(1).normal(size=(8, 5)).astype(np.float32)
  out = fn(KEY, {"x": jnp.asarray(x), "y": jnp.arange(8)})
  noise = 0.3 * np.asarray(jax.random.normal(_stream(KEY, NOISE), x.shape, jnp.float32))
  np.testing.assert_allclose(np.asarray(out["x"]), x + noise, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["y"]), np.arange(8))


# -------------------------------------------------------------------- config
def test_a_rotation_of_exactly_180_degrees_is_accepted():
  """``rotation`` is at most 180 degrees: 180 itself is valid. Catches A50 (> -> >=)."""
  augment.validate(_cfg(rotation=180.0), (8, 8, 1))
  with pytest.raises(JdlError, match="at most 180"):
    augment.validate(_cfg(rotation=180.5), (8, 8, 1))


@pytest.mark.parametrize("overrides,match", [
    (dict(noise_std=math.inf), r"augment.noise_std must be a finite number >= 0, got inf"),
    (dict(noise_std=math.nan), r"augment.noise_std must be a finite number >= 0, got nan"),
    (dict(mixup_alpha=math.inf), r"augment.mixup_alpha must be a finite number"),
    (dict(crop_padding=1.5), r"augment.crop_padding must be a whole number of pixels, got 1.5"),
], ids=["noise-inf", "noise-nan", "alpha-inf", "crop-1.5"])
def test_non_finite_or_fractional_values_are_one_named_error(overrides, match):
  """A section built from a dict (as a config file may build it: no field keeps the
  default's type). Catches A51 (no finiteness check: infinite noise or alpha accepted)
  and A52 (a fractional crop padding accepted, then silently truncated)."""
  cfg = ml_collections.ConfigDict({**base_config().augment.to_dict(), **overrides})
  with pytest.raises(JdlError, match=match):
    augment.make_augment_fn(cfg, (8, 8, 1))


def test_shift_limits_are_checked_against_each_axis_own_size():
  """height_shift is a fraction of the height, width_shift of the width: on a 40x8
  image 0.05 of the height is 2 pixels (valid), 0.05 of the width 0 (an error), and
  0.9 of the height is 36 (valid), of the width 7 (valid, as 7 < 8) but 0.95 of the
  width rounds to 8 (an error). Catches A53 (the axes swapped)."""
  augment.validate(_cfg(height_shift=0.05), (40, 8, 1))
  augment.validate(_cfg(height_shift=0.9, width_shift=0.9), (40, 8, 1))
  with pytest.raises(JdlError, match=r"augment.width_shift=0.05 of 8 pixels rounds to a shift of 0"):
    augment.validate(_cfg(width_shift=0.05), (40, 8, 1))
  with pytest.raises(JdlError, match=r"augment.width_shift=0.95 of 8 pixels rounds to a shift of 8"):
    augment.validate(_cfg(width_shift=0.95), (40, 8, 1))
  with pytest.raises(JdlError, match=r"augment.height_shift=0.05 of 8 pixels"):
    augment.validate(_cfg(height_shift=0.05), (8, 40, 1))
