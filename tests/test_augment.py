"""On-device augmentation: transforms against numpy references, keys, mixup, training."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import losses
from jdl.config import base_config
from jdl.data import augment
from jdl.errors import JdlError
from jdl.train import steps as steps_lib

from conftest import Crash as _Crash
from conftest import make_config

KEY = jax.random.key(0)


def _images(b=6, h=8, w=8, c=2, seed=0):
  return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


def _augment_cfg(**kw):
  cfg = base_config().augment
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def _shift_reference(x, dy, dx, fill):
  """np.roll with the wrapped pixels replaced by zeros or the edge pixels."""
  h, w = x.shape[1:3]
  pad = max(h, w)
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)),
                  mode="constant" if fill == "zero" else "edge")
  return np.stack([padded[b, pad - dy[b]: pad - dy[b] + h, pad - dx[b]: pad - dx[b] + w]
                   for b in range(len(x))])


# --------------------------------------------------------------- deterministic
@pytest.mark.parametrize("axis", [1, 2])
def test_flip_twice_is_identity_and_flips_the_flagged(axis):
  x = _images()
  flags = np.array([1, 0, 1, 1, 0, 0], bool)
  once = np.asarray(augment.flip(jnp.asarray(x), jnp.asarray(flags), axis))
  np.testing.assert_array_equal(once[flags], np.flip(x[flags], axis=axis))
  np.testing.assert_array_equal(once[~flags], x[~flags])
  twice = augment.flip(jnp.asarray(once), jnp.asarray(flags), axis)
  np.testing.assert_array_equal(np.asarray(twice), x)


@pytest.mark.parametrize("fill", ["zero", "edge"])
@pytest.mark.parametrize("dy,dx", [((0,) * 6, (0,) * 6), ((1, -2, 0, 3, -1, 7), (2, 0, -3, 1, -1, -7))])
def test_translate_matches_reference(dy, dx, fill):
  x = _images()
  out = augment.translate(jnp.asarray(x), jnp.asarray(dy), jnp.asarray(dx), fill)
  np.testing.assert_array_equal(np.asarray(out), _shift_reference(x, dy, dx, fill))


def test_translate_by_known_integer_is_np_roll_with_zero_fill():
  x = _images(b=1)
  out = np.asarray(augment.translate(jnp.asarray(x), jnp.array([2]), jnp.array([-3])))
  expected = np.roll(x, (2, -3), axis=(1, 2))
  expected[:, :2] = 0  # Rows shifted in from the top.
  expected[:, :, -3:] = 0  # Columns shifted in from the right.
  np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shape", [(3, 8, 8, 1), (2, 5, 7, 3)])
def test_zero_rotation_is_identity(shape):
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  out = augment.rotate(jnp.asarray(x), jnp.zeros(shape[0]))
  np.testing.assert_allclose(np.asarray(out), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, -1, 2])
@pytest.mark.parametrize("fill", ["zero", "edge"])
def test_rotation_by_quarter_turns_matches_np_rot90(k, fill):
  x = _images(b=3, h=7, w=7, c=1)
  out = augment.rotate(jnp.asarray(x), jnp.full((3,), k * np.pi / 2), fill)
  # Every pixel of a square image maps onto a pixel; float32 cos(pi/2) ~ 4e-8.
  np.testing.assert_allclose(np.asarray(out), np.rot90(x, k=k, axes=(1, 2)), atol=1e-5, rtol=0)


def test_rotation_zero_fill_is_zero_outside_and_interpolates_inside():
  x = np.ones((1, 9, 9, 1), np.float32)
  out = np.asarray(augment.rotate(jnp.asarray(x), jnp.array([np.pi / 4])))[0, ..., 0]
  assert out[0, 0] == 0 and out[-1, -1] == 0  # Corners come from outside the input.
  np.testing.assert_allclose(out[2:7, 2:7], 1.0, atol=1e-6)  # Interior stays inside.
  edge = np.asarray(augment.rotate(jnp.asarray(x), jnp.array([np.pi / 4]), "edge"))
  np.testing.assert_allclose(edge, 1.0, atol=1e-6)


@pytest.mark.parametrize("fill", ["zero", "edge"])
def test_crop_matches_pad_and_slice_and_offset_padding_is_identity(fill):
  x, p = _images(), 2
  oy, ox = np.array([0, 4, 2, 1, 3, 2]), np.array([4, 0, 2, 3, 1, 0])
  out = np.asarray(augment.crop(jnp.asarray(x), jnp.asarray(oy), jnp.asarray(ox), p, fill))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)),
                  mode="constant" if fill == "zero" else "edge")
  expected = np.stack([padded[b, oy[b]:oy[b] + 8, ox[b]:ox[b] + 8] for b in range(6)])
  np.testing.assert_array_equal(out, expected)
  same = augment.crop(jnp.asarray(x), jnp.full((6,), p), jnp.full((6,), p), p, fill)
  np.testing.assert_array_equal(np.asarray(same), x)


# ---------------------------------------------------------------------- random
ALL_ON = dict(hflip=True, vflip=True, width_shift=0.25, height_shift=0.25, rotation=20.0,
              crop_padding=2, noise_std=0.1)


@pytest.mark.parametrize("ops", [dict(hflip=True), dict(width_shift=0.25), dict(rotation=30.0),
                                 dict(crop_padding=2), dict(noise_std=0.5), ALL_ON])
def test_same_key_same_batch_other_key_other_batch_per_example(ops):
  fn = jax.jit(augment.make_augment_fn(_augment_cfg(**ops), (8, 8, 1)))
  x = jnp.asarray(np.repeat(_images(b=1, c=1), 32, axis=0))  # 32 copies of one image.
  a, b = np.asarray(fn(KEY, x)), np.asarray(fn(KEY, x))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, np.asarray(fn(jax.random.key(1), x)))
  # Per-example randomness: the copies are transformed differently.
  distinct = {a[i].tobytes() for i in range(len(a))}
  assert len(distinct) > 1


@pytest.mark.parametrize("op", ["hflip", "vflip"])
def test_flip_probability_is_one_half_per_example(op):
  fn = augment.make_augment_fn(_augment_cfg(**{op: True}), (4, 4, 1))
  x = jnp.asarray(_images(b=2000, h=4, w=4, c=1))
  flipped = np.any(np.asarray(fn(KEY, x)) != np.asarray(x), axis=(1, 2, 3))
  # Binomial(2000, 0.5): std 22.4 examples; 5 sigma.
  assert abs(flipped.sum() - 1000) < 112


def test_a_shift_as_large_as_the_image_is_refused():
  # 0.99 of 28 pixels rounds to 28: 3.5% of the shifted images held no pixel.
  cfg = base_config().augment
  cfg.width_shift = 0.99
  with pytest.raises(JdlError, match=r"augment.width_shift=0.99 of 28 pixels rounds to a "
                     r"shift of 28 pixels: a shifted image could then hold no pixel"):
    augment.validate(cfg, (28, 28, 1))
  cfg.width_shift = 0.98  # 27 pixels: one column stays.
  augment.validate(cfg, (28, 28, 1))


def test_crop_draws_every_offset_of_the_padding():
  # An off-by-one (randint(0, 2p), never the last offset) passed every test.
  p, n = 2, 400
  x = np.random.default_rng(0).normal(size=(n, 8, 8, 1)).astype(np.float32)
  out = np.asarray(augment.random_crop(KEY, jnp.asarray(x), p))
  padded = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  hits = np.stack([np.all(out == padded[:, i:i + 8, j:j + 8], axis=(1, 2, 3))
                   for i in range(2 * p + 1) for j in range(2 * p + 1)])
  assert hits.any(0).all()  # Each output is one window of the padded image...
  assert hits.any(1).all()  # ...and each of the (2p + 1)^2 windows is drawn.


def test_rotation_angles_stay_within_the_range_in_degrees():
  # Degrees read as radians (20 -> 20 rad) passed every test.
  n, degrees = 256, 10.0
  x = np.zeros((n, 21, 21, 1), np.float32)
  x[:, 10, 18] = 1.0  # A bright pixel 8 px right of the centre.
  out = np.asarray(augment.random_rotation(KEY, jnp.asarray(x), degrees))[..., 0]
  rows, cols = np.meshgrid(np.arange(21) - 10.0, np.arange(21) - 10.0, indexing="ij")
  mass = out.sum((1, 2))
  angle = np.degrees(np.arctan2(-(out * rows).sum((1, 2)) / mass,
                                (out * cols).sum((1, 2)) / mass))
  assert 0.8 * degrees < np.abs(angle).max() <= degrees + 0.5, np.abs(angle).max()


def test_shift_draws_integers_within_the_range():
  xs = _images(b=300, h=8, w=8, c=1)
  out = np.asarray(augment.random_shift(KEY, jnp.asarray(xs), height_shift=0.25,
                                        width_shift=0.25))
  shifts = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)]
  n = len(xs)
  # matches[s, b]: example b is the reference shift s of its input.
  matches = np.stack([np.all(out == _shift_reference(xs, [dy] * n, [dx] * n, "zero"),
                             axis=(1, 2, 3)) for dy, dx in shifts])
  assert matches.any(axis=0).all()  # Every example is a whole-pixel shift within +-2.
  assert matches.any(axis=1).all()  # Every shift in [-2, 2]^2 occurs.


@pytest.mark.parametrize("std", [0.1, 1.0, 3.0])
def test_noise_has_the_requested_std(std):
  x = jnp.asarray(_images(b=64, c=1))
  diff = np.asarray(augment.gaussian_noise(KEY, x, std)) - np.asarray(x)
  n = diff.size  # 4,096 values: the sample std is within ~1.1% (1 sigma).
  assert abs(diff.std() / std - 1) < 0.05
  assert abs(diff.mean()) < 5 * std / np.sqrt(n)


def test_everything_off_is_untouched_and_traces_nothing():
  cfg = base_config().augment
  fn = augment.make_augment_fn(cfg, (8, 8, 1))
  x = jnp.ones((2, 8, 8, 1))
  assert fn(KEY, x) is x
  assert not jax.make_jaxpr(fn)(KEY, x).eqns
  assert augment.make_train_augment(cfg, (8, 8, 1)) is None
  assert augment.make_train_augment(cfg, (64,)) is None


def test_no_retracing_across_keys():
  fn = augment.make_augment_fn(_augment_cfg(**ALL_ON), (8, 8, 1))
  traced = jax.jit(chex.assert_max_traces(fn, n=1))
  x = jnp.asarray(_images(b=4, c=1))
  for seed in range(3):
    traced(jax.random.key(seed), x + seed)


# ----------------------------------------------------------------------- mixup
def _log_softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("per_example,alpha", [(False, 0.2), (True, 1.0)])
def test_mixup_mixes_with_a_permutation_and_loss_matches_numpy(per_example, alpha):
  b = 16
  x = _images(b=b, c=1)
  y = np.arange(b)  # So y_b is the permutation itself.
  mix = jax.jit(functools.partial(augment.mixup, alpha=alpha, per_example=per_example))
  mixed, t = mix(KEY, jnp.asarray(x), jnp.asarray(y))
  perm, lam = np.asarray(t.y_b), np.asarray(t.lam)
  assert sorted(perm.tolist()) == list(range(b))
  assert lam.shape == ((b,) if per_example else ())
  assert np.all((lam >= 0) & (lam <= 1))
  lam_x = lam.reshape(-1, 1, 1, 1) if per_example else lam
  np.testing.assert_allclose(np.asarray(mixed), lam_x * x + (1 - lam_x) * x[perm],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(t.y_a), y)

  logits = np.random.default_rng(2).normal(size=(b, b)).astype(np.float32)
  loss = augment.mixup_loss(losses.get_loss("sparse_categorical_crossentropy"))
  got = np.asarray(loss(jnp.asarray(logits), t))
  logp = _log_softmax(logits.astype(np.float64))
  rows = np.arange(b)
  expected = -(lam * logp[rows, y] + (1 - lam) * logp[rows, perm])
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  # Plain targets pass through unchanged.
  np.testing.assert_allclose(np.asarray(loss(jnp.asarray(logits), jnp.asarray(y))),
                             -logp[rows, y], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_example", [False, True])
def test_mixup_loss_of_float_targets_is_the_loss_of_the_mixed_target(per_example):
  # Regression: the paper's target lam * y_a + (1 - lam) * y_b. Mixing the losses
  # instead would put the absolute error's minimum at y_a or y_b, not between them.
  b = 8
  rng = np.random.default_rng(3)
  y = rng.normal(size=(b, 2)).astype(np.float32)
  mix = jax.jit(functools.partial(augment.mixup, alpha=0.4, per_example=per_example))
  _, t = mix(KEY, jnp.zeros((b, 3)), jnp.asarray(y))
  lam = np.asarray(t.lam).reshape(-1, 1) if per_example else np.asarray(t.lam)
  target = lam * y + (1 - lam) * np.asarray(t.y_b)
  out = rng.normal(size=(b, 2)).astype(np.float32)
  mae = augment.mixup_loss(losses.get_loss("mae"))
  np.testing.assert_allclose(np.asarray(mae(jnp.asarray(out), t)),
                             np.abs(out - target).mean(axis=-1), rtol=1e-5, atol=1e-6)
  # At the mixed target the loss is zero (mixing MAE losses would leave it positive).
  np.testing.assert_allclose(np.asarray(mae(jnp.asarray(target), t)), 0.0, atol=1e-6)


def test_mixup_lambda_is_beta_distributed():
  mix = jax.jit(functools.partial(augment.mixup, alpha=0.4, per_example=True))
  _, t = mix(KEY, jnp.zeros((4000, 1)), jnp.zeros(4000))
  lam = np.asarray(t.lam)
  # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.1389.
  assert abs(lam.mean() - 0.5) < 0.03
  assert abs(lam.var() - 1 / (4 * 1.8)) < 0.02


def test_train_augment_mixes_x_and_y_on_any_input():
  fn = augment.make_train_augment(_augment_cfg(mixup_alpha=0.4, noise_std=0.0), (4,))
  batch = {"x": jnp.asarray(_images(b=8, h=1, w=1, c=4).reshape(8, 4)), "y": jnp.arange(8),
           "mask": jnp.ones(8)}
  out = fn(KEY, batch)
  assert isinstance(out["y"], augment.MixupTargets)
  assert out["x"].shape == (8, 4) and out["mask"] is batch["mask"]
  # y is arange(8), so y_b is the permutation: x mixed as lam x + (1 - lam) x[perm].
  x, perm, lam = np.asarray(batch["x"]), np.asarray(out["y"].y_b), float(out["y"].lam)
  assert sorted(perm.tolist()) == list(range(8)) and 0 < lam < 1
  np.testing.assert_allclose(np.asarray(out["x"]), lam * x + (1 - lam) * x[perm], rtol=1e-6)
  assert not np.allclose(np.asarray(out["x"]), x)


# ---------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides,shape,match", [
    (dict(noise_std=-0.1), (8, 8, 1), "augment.noise_std"),
    (dict(rotation=-5.0), (8, 8, 1), "augment.rotation"),
    (dict(rotation=270.0), (8, 8, 1), "augment.rotation"),
    (dict(crop_padding=-1), (8, 8, 1), "augment.crop_padding"),
    (dict(mixup_alpha=-1.0), (8, 8, 1), "augment.mixup_alpha"),
    (dict(width_shift=1.0), (8, 8, 1), r"augment.width_shift .*\[0, 1\)"),
    (dict(height_shift=1.5), (8, 8, 1), "augment.height_shift"),
    (dict(width_shift=0.05), (8, 8, 1), "rounds to a shift of 0 pixels"),
    (dict(fill="wrap"), (8, 8, 1), "augment.fill .*'wrap'"),
    (dict(hflip=True), (64,), r"augment.hflip needs image inputs .*\(64,\)"),
    (dict(rotation=10.0), (8, 8), r"augment.rotation needs image inputs .*\(8, 8\)"),
    (dict(crop_padding=2), (4,), "augment.crop_padding needs image"),
    # A crop of only padding (and an int overflow in the jitted crop, a traceback):
    (dict(crop_padding=8), (8, 12, 1), r"crop_padding=8 pixels on images of 8x12.*less than 8"),
    (dict(crop_padding=3_000_000_000), (28, 28, 1), "crop could then hold no pixel"),
])
def test_bad_augment_configs_raise(overrides, shape, match):
  with pytest.raises(JdlError, match=match):
    augment.make_augment_fn(_augment_cfg(**overrides), shape)


def test_image_op_on_tabular_dataset_fails_at_trainer_construction():
  config = make_config(dataset="iris", augment__vflip=True, validation_split=0.0)
  with pytest.raises(JdlError, match=r"augment.vflip needs image inputs .*\(4,\)"):
    jdl.Trainer(config, quiet=True)


# -------------------------------------------------------------------- training
_ON = dict(augment__hflip=True, augment__width_shift=0.25, augment__rotation=15.0,
           augment__crop_padding=1, augment__noise_std=0.1, augment__mixup_alpha=0.4)


def test_training_with_augmentation_off_is_unchanged_and_on_differs():
  off = jdl.fit(make_config(num_epochs=1), quiet=True)
  # Off: the step traces exactly as a step built without augmentation.
  plain = steps_lib.make_train_step(off.trainer.task)
  batch = off.trainer._example_batch()
  assert str(jax.make_jaxpr(off.trainer.train_step)(off.state, batch)) == \
      str(jax.make_jaxpr(plain)(off.state, batch))

  on = jdl.fit(make_config(num_epochs=1, **_ON), quiet=True)
  assert np.isfinite(on.history["loss"]).all()
  assert on.history["loss"] != off.history["loss"]
  # Evaluation sees clean inputs: the clean trainer scores the same params alike.
  np.testing.assert_allclose(off.trainer.evaluate_split(off.trainer.data.val, on.state)["loss"],
                             on.history["val_loss"][-1], rtol=1e-6)


def test_resume_with_augmentation_equals_uninterrupted(tmp_path):
  # 20 steps an epoch; the augmentation keys derive from the state key and the step.
  config = make_config(num_epochs=1, checkpoint_every_steps=8, epoch_mode="scan", scan_chunk=4,
                       augment__hflip=True, augment__width_shift=0.25, augment__noise_std=0.1,
                       augment__mixup_alpha=0.4)
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[_Crash(at_step=9)])
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  assert int(resumed.state.step) == 20
  chex.assert_trees_all_equal(jax.device_get(full.state.params),
                              jax.device_get(resumed.state.params))
  assert resumed.history["loss"] == full.history["loss"]


def test_featurewise_center_subtracts_the_train_mean_only():
  from jdl.data import pipeline
  x = np.random.default_rng(3).normal(2.0, 3.0, size=(50, 4, 4, 1)).astype(np.float32)
  norm = pipeline.Normalizer.fit_center(x)
  np.testing.assert_allclose(norm(x), x - x.mean(axis=0), rtol=0, atol=1e-5)
  np.testing.assert_array_equal(norm.std, np.ones((4, 4, 1), np.float32))
