"""jdl's Conv: the patches and hybrid lowerings equal XLA's convolution, values and gradients."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import models
from jdl.errors import JdlError
from jdl.models.conv import Conv

from conftest import make_config

CASES = [  # input shape, window, strides, padding
    ((2, 9, 9, 3), (3, 3), 1, "SAME"),
    ((2, 9, 9, 3), (3, 3), 2, "SAME"),
    ((2, 10, 10, 3), (5, 5), 1, "VALID"),
    ((2, 8, 8, 3), (1, 1), 2, "SAME"),
    ((2, 12, 12, 3), (7, 7), 2, "SAME"),
    ((2, 11, 4), (3,), 1, "SAME"),
    ((2, 11, 4), (3,), 2, 2),
    ((2, 11, 4), 3, 1, "SAME"),  # An int kernel_size: a 1-D window, as flax takes it.
    ((2, 6, 6, 1), (3, 3), 1, [(2, 0), (1, 1)]),
]


@pytest.mark.parametrize("shape,window,strides,padding", CASES)
@pytest.mark.parametrize("impl", ["xla", "patches", "hybrid"])
def test_conv_matches_flax_conv_and_its_gradients(shape, window, strides, padding, impl):
  x = jax.random.normal(jax.random.key(0), shape)
  reference = nn.Conv(5, window, strides=strides, padding=padding)
  variables = reference.init(jax.random.key(1), x)
  conv = Conv(5, window, strides=strides, padding=padding, impl=impl)
  np.testing.assert_allclose(conv.apply(variables, x), reference.apply(variables, x),
                             rtol=1e-5, atol=1e-5)

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))

  g_ref = jax.grad(loss(reference), argnums=(0, 1))(variables, x)
  g_new = jax.grad(loss(conv), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_new)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pads", [(4, 0), (0, 5), (4, 4)])
@pytest.mark.parametrize("impl", ["patches", "hybrid"])
def test_padding_wider_than_the_window_against_numpy(impl, pads):
  # Padding beyond k - 1 makes the input gradient's convolution pad negatively, which
  # XLA:CPU computes wrongly for some shapes (flax.linen.Conv's gradient here too), so
  # the reference is numpy's: y[p] = sum_j x_pad[p + j] W[j], dx = the adjoint, cropped.
  k, n, (lo, hi) = 3, 7, pads
  rng = np.random.default_rng(0)
  x, w = rng.normal(size=(2, n, 3)), rng.normal(size=(k, 3, 4))
  xp = np.pad(x, [(0, 0), (lo, hi), (0, 0)])
  m = n + lo + hi - k + 1
  y = np.stack([np.einsum("bjc,jco->bo", xp[:, p:p + k], w) for p in range(m)], 1)
  g = rng.normal(size=y.shape)
  dxp = np.zeros_like(xp)
  for p in range(m):
    dxp[:, p:p + k] += np.einsum("bo,jco->bjc", g[:, p], w)
  conv = Conv(4, (k,), padding=[pads], impl=impl, use_bias=False)
  v = {"params": {"kernel": jnp.asarray(w, jnp.float32)}}
  xj = jnp.asarray(x, jnp.float32)
  np.testing.assert_allclose(conv.apply(v, xj), y, rtol=1e-5, atol=1e-5)
  dx = jax.grad(lambda a: jnp.sum(conv.apply(v, a) * jnp.asarray(g, jnp.float32)))(xj)
  np.testing.assert_allclose(dx, dxp[:, lo:lo + n], rtol=1e-5, atol=1e-5)


def test_conv_has_flax_conv_parameters():
  x = jnp.ones((1, 8, 8, 3))
  ours = jax.eval_shape(Conv(4, (3, 3)).init, jax.random.key(0), x)
  flax = jax.eval_shape(nn.Conv(4, (3, 3)).init, jax.random.key(0), x)
  assert jax.tree.map(lambda s: s.shape, ours) == jax.tree.map(lambda s: s.shape, flax)


def test_unknown_conv_impl_is_an_error():
  with pytest.raises(JdlError, match="conv_impl"):
    models.CNN(num_outputs=2, conv_impl="cudnn")


def test_patches_hybrid_and_xla_train_the_same():
  import jdl
  common = dict(model__name="cnn", model__features=(8, 16), model__dense=(32,), model__pool="max",
                num_epochs=2, epoch_mode="step")
  xla = jdl.fit(make_config(model__conv_impl="xla", **common), quiet=True)
  for impl in ("patches", "hybrid"):
    run = jdl.fit(make_config(model__conv_impl=impl, **common), quiet=True)
    np.testing.assert_allclose(xla.history["loss"], run.history["loss"], rtol=1e-4)
    np.testing.assert_allclose(xla.history["val_loss"], run.history["val_loss"], rtol=1e-3)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU choice")
def test_auto_picks_hybrid_for_stride_one_narrow_convolutions_on_cpu():
  from jdl.models.conv import resolve_impl
  # Measured faster than the patches: ResNet-20's 16- and 32-channel 3x3 convolutions.
  assert resolve_impl("auto", strides=(1, 1), in_features=16, features=16) == "hybrid"
  assert resolve_impl("auto", strides=(1, 1), in_features=32, features=32) == "hybrid"
  # Measured slower: 64 output channels, one input channel; strided: not supported.
  assert resolve_impl("auto", strides=(1, 1), in_features=32, features=64) == "patches"
  assert resolve_impl("auto", strides=(1, 1), in_features=1, features=32) == "patches"
  assert resolve_impl("auto", strides=(2, 2), in_features=16, features=32) == "patches"
  assert resolve_impl("hybrid", strides=(2, 2), in_features=16, features=16) == "patches"
  assert resolve_impl("auto") == "patches"


def test_auto_epoch_mode_scans_unless_xla_convolutions_are_in_the_step():
  from jdl.train import loop
  common = dict(model__name="cnn", model__features=(4,), model__dense=(8,), num_epochs=1)
  assert loop.Trainer(make_config(**common), quiet=True).epoch_mode == "scan"
  hybrid = dict(common, model__features=(8, 16), model__conv_impl="hybrid")
  assert loop.Trainer(make_config(**hybrid), quiet=True).epoch_mode == "scan"
  xla = loop.Trainer(make_config(model__conv_impl="xla", **common), quiet=True).epoch_mode
  assert xla == ("step" if jax.default_backend() == "cpu" else "scan")
  assert loop.Trainer(make_config(num_epochs=1), quiet=True).epoch_mode == "scan"


def test_hybrid_under_bfloat16_compute_matches_float32_gradients():
  # The hybrid's custom backward pass under bfloat16 compute: the parameter gradient
  # comes back float32 and agrees with the float32 run at bfloat16's resolution.
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 8))
  conv32 = Conv(16, (3, 3), impl="hybrid")
  conv16 = Conv(16, (3, 3), impl="hybrid", dtype=jnp.bfloat16)
  variables = conv32.init(jax.random.key(1), x)

  def grads(conv):
    return jax.grad(lambda v: jnp.sum(conv.apply(v, x).astype(jnp.float32) ** 2))(variables)

  g32, g16 = grads(conv32), grads(conv16)
  assert g16["params"]["kernel"].dtype == jnp.float32
  np.testing.assert_allclose(g16["params"]["kernel"], g32["params"]["kernel"], rtol=0.05,
                             atol=0.05 * float(jnp.max(jnp.abs(g32["params"]["kernel"]))))


@pytest.mark.parametrize("impl", ["xla", "patches", "hybrid"])
@pytest.mark.parametrize("fields, shape, match", [
    # A 2-D kernel over [batch, length, channels]: the patches summed the kernel's
    # second axis away and returned a 1-D convolution, silently.
    ({"kernel_size": (3, 3)}, (2, 5, 3), r"2 spatial axes.*got shape \(2, 5, 3\)"),
    ({"kernel_size": (3,)}, (2, 5, 5, 3), r"1 spatial axes.*got shape \(2, 5, 5, 3\)"),
    ({"features": 0}, (2, 5, 5, 3), "features must be a positive integer, got 0"),
    ({"kernel_size": (3, 0)}, (2, 5, 5, 3), "kernel_size must be positive integers"),
    ({"strides": 0}, (2, 5, 5, 3), "strides must be a positive integer"),
    ({"strides": (1, 1, 1)}, (2, 5, 5, 3), "strides must be a positive integer"),
    ({"padding": -1}, (2, 5, 5, 3), "padding must be >= 0"),
    ({"padding": [(1, 1)]}, (2, 5, 5, 3), r"one \(low, high\) pair"),
])
def test_bad_conv_geometry_is_one_error(impl, fields, shape, match):
  conv = Conv(**{"features": 2, "kernel_size": (3, 3), **fields}, impl=impl)
  with pytest.raises(JdlError, match=match):
    conv.init(jax.random.key(0), jnp.ones(shape))


def test_hybrid_kernel_gradient_keeps_float64():
  # jdl check's gradient check runs in float64: the kernel gradient's taps were
  # accumulated in float32 (relative error 5e-8 against XLA's, 2e-15 for the patches).
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8), jnp.float64)
    v = Conv(8, (3, 3), impl="xla").init(jax.random.key(1), x)
    v = jax.tree.map(lambda a: a.astype(jnp.float64), v)

    def kernel_grad(impl):
      conv = Conv(8, (3, 3), impl=impl, dtype=jnp.float64)
      return jax.grad(lambda v: jnp.sum(jnp.sin(conv.apply(v, x))))(v)["params"]["kernel"]

    want, got = kernel_grad("xla"), kernel_grad("hybrid")
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["xla", "patches", "hybrid"])
def test_numpy_integers_are_taken_as_flax_takes_them(impl):
  # A drop-in for flax.linen.Conv: sizes from numpy arrays work there.
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  kwargs = dict(features=np.int64(4), kernel_size=tuple(np.array([3, 3])),
                strides=(np.int64(1), 1), padding=((np.int64(1), 1), (1, 1)))
  reference = nn.Conv(**kwargs)
  variables = reference.init(jax.random.key(1), x)
  np.testing.assert_allclose(Conv(**kwargs, impl=impl).apply(variables, x),
                             reference.apply(variables, x), rtol=1e-5, atol=1e-5)
