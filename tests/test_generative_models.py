"""Generative models: parameter counts from closed forms, shapes, methods, state, errors."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl.errors import JdlError
from jdl.models import (
    VAE, ConvAutoencoder, DCGANDiscriminator, DCGANGenerator, DenseAutoencoder,
    MLPDiscriminator, MLPGenerator,
)

MNIST = (28, 28, 1)
KEY = jax.random.key(0)


def dense(n_in, n_out, bias=True):
  return n_in * n_out + (n_out if bias else 0)


def conv(k, c_in, c_out, bias=True):
  return k * k * c_in * c_out + (c_out if bias else 0)


def n_params(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def images(shape, batch=3, seed=1):
  return jax.random.uniform(jax.random.key(seed), (batch, *shape))


def init(model, x, **kwargs):
  """Variables of the right shapes, filled from numpy instead of the model's initializers.

  The shapes come from ``jax.eval_shape(model.init)`` (nothing compiled); kernels
  are N(0, 1 / fan_in), biases N(0, 0.1^2), batch-norm scales and variances ones,
  means zeros. XLA:CPU takes seconds to compile the truncated-normal initializers,
  which would dominate these tests; :func:`test_real_init` covers them once.
  """
  shapes = jax.eval_shape(lambda x, k: model.init({"params": KEY}, x, **k), x, kwargs)
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = getattr(path[-1], "key", "")
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name == "mean":
      return jnp.zeros(leaf.shape, leaf.dtype)
    std = 0.1 if name == "bias" else 1 / math.sqrt(math.prod(leaf.shape[:-1]))
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def apply(model, variables, *args, static=None, **arrays):
  """``model.apply`` under one jit (one compilation instead of one per small op).

  ``static`` holds ``method``, ``train`` and ``mutable``; ``arrays`` the keys.
  """
  static = static or {}
  return jax.jit(lambda v, a, k: model.apply(v, *a, **k, **static))(variables, args, arrays)


# (name, model, input shape, expected params, expected batch_stats), counts by hand.
PARAM_COUNTS = [
    ("dense_ae_784_256_64", DenseAutoencoder(MNIST), MNIST,
     dense(784, 256) + dense(256, 64) + dense(64, 256) + dense(256, 784), 0),
    ("dense_ae_two_hidden", DenseAutoencoder((4, 4, 1), hidden=(8, 6), latent=2), (4, 4, 1),
     dense(16, 8) + dense(8, 6) + dense(6, 2) + dense(2, 6) + dense(6, 8) + dense(8, 16), 0),
    ("vae_784_500_20", VAE(MNIST), MNIST,
     dense(784, 500) + 2 * dense(500, 20) + dense(20, 500) + dense(500, 784), 0),
    ("conv_ae_8x8", ConvAutoencoder((8, 8, 1), features=(2, 3), latent=4), (8, 8, 1),
     conv(3, 1, 2) + conv(3, 2, 3) + dense(2 * 2 * 3, 4) + dense(4, 2 * 2 * 3)
     + conv(3, 3, 3) + conv(3, 3, 2) + conv(3, 2, 1), 0),
    # Generators take z: [batch, 3]; with batch norm the hidden layers have no bias.
    ("mlp_gen_bn", MLPGenerator((4, 4, 1), hidden=(8, 16)), (3,),
     dense(3, 8, False) + 2 * 8 + dense(8, 16, False) + 2 * 16 + dense(16, 16), 2 * (8 + 16)),
    ("mlp_gen_no_bn", MLPGenerator((4, 4, 1), hidden=(8, 16), batch_norm=False), (3,),
     dense(3, 8) + dense(8, 16) + dense(16, 16), 0),
    ("mlp_disc", MLPDiscriminator(hidden=(8, 4)), (4, 4, 1),
     dense(16, 8) + dense(8, 4) + dense(4, 1), 0),
    ("dcgan_gen_8x8", DCGANGenerator((8, 8, 1), features=(4, 2)), (3,),
     dense(3, 2 * 2 * 4, False) + 2 * 16 + conv(5, 4, 2, False) + 2 * 2 + conv(5, 2, 1),
     2 * 16 + 2 * 2),
    ("dcgan_disc_none", DCGANDiscriminator(features=(2, 3)), (8, 8, 1),
     conv(5, 1, 2) + conv(5, 2, 3) + dense(2 * 2 * 3, 1), 0),
    ("dcgan_gen_3x3", DCGANGenerator((8, 8, 1), features=(4, 2), kernel_size=3), (3,),
     dense(3, 2 * 2 * 4, False) + 2 * 16 + conv(3, 4, 2, False) + 2 * 2 + conv(3, 2, 1),
     2 * 16 + 2 * 2),
    ("dcgan_disc_3x3", DCGANDiscriminator(features=(2, 3), kernel_size=3), (8, 8, 1),
     conv(3, 1, 2) + conv(3, 2, 3) + dense(2 * 2 * 3, 1), 0),
    ("dcgan_disc_batch", DCGANDiscriminator(features=(2, 3), norm="batch"), (8, 8, 1),
     conv(5, 1, 2) + conv(5, 2, 3, False) + 2 * 3 + dense(2 * 2 * 3, 1), 2 * 3),
    ("dcgan_disc_layer", DCGANDiscriminator(features=(2, 3), norm="layer"), (8, 8, 1),
     conv(5, 1, 2) + conv(5, 2, 3, False) + 2 * 3 + dense(2 * 2 * 3, 1), 0),
]


@pytest.mark.parametrize("name,model,shape,params,stats", PARAM_COUNTS,
                         ids=[c[0] for c in PARAM_COUNTS])
def test_parameter_counts(name, model, shape, params, stats):
  del name
  kwargs = {"key": jax.random.key(1)} if isinstance(model, VAE) else {}
  variables = init(model, images(shape), **kwargs)
  assert n_params(variables["params"]) == params
  assert n_params(variables.get("batch_stats", {})) == stats
  assert ("batch_stats" in variables) == (stats > 0)


def _small(shape):
  """Small models for an image shape: (name, model, kind)."""
  models = [
      ("conv_ae", ConvAutoencoder(shape, features=(4, 8), latent=4), "ae"),
      ("dcgan_gen", DCGANGenerator(shape, features=(8, 4)), "gen"),
  ]
  if shape[0] == shape[1]:  # Non-square images matter to the decoders' reshapes.
    models += [
        ("dcgan_disc", DCGANDiscriminator(features=(4, 8)), "disc"),
        ("dense_ae", DenseAutoencoder(shape, hidden=(16,), latent=4), "ae"),
        ("mlp_gen", MLPGenerator(shape, hidden=(8, 16)), "gen"),
        ("mlp_disc", MLPDiscriminator(hidden=(8,)), "disc"),
    ]
  return models


SHAPE_CASES = [(f"{name}_{'x'.join(map(str, s))}", s, model, kind)
               for s in (MNIST, (8, 8, 1), (8, 12, 2)) for name, model, kind in _small(s)]


@pytest.mark.parametrize("name,shape,model,kind", SHAPE_CASES,
                         ids=[c[0] for c in SHAPE_CASES])
def test_output_shapes(name, shape, model, kind):
  del name
  batch = 3
  x = jax.random.normal(KEY, (batch, 5)) if kind == "gen" else images(shape, batch)
  variables = init(model, x)
  y = apply(model, variables, x)
  expected = {"ae": (batch, *shape), "gen": (batch, *shape), "disc": (batch,)}[kind]
  chex.assert_shape(y, expected)
  chex.assert_tree_all_finite(y)
  if kind == "gen":
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_vae_output_shapes():
  for shape in (MNIST, (8, 8, 1)):
    model = VAE(shape, hidden=(16,), latent=3)
    x = images(shape)
    variables = init(model, x, key=jax.random.key(2))
    logits, mean, logvar = apply(model, variables, x, key=jax.random.key(3))
    chex.assert_shape(logits, (3, *shape))
    chex.assert_shape([mean, logvar], (3, 3))
    probs = apply(model, variables, jnp.zeros((5, 3)), static={"method": model.generate})
    chex.assert_shape(probs, (5, *shape))
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0


@pytest.mark.parametrize("model", [
    DenseAutoencoder((8, 8, 1), hidden=(16, 8), latent=4),
    ConvAutoencoder((8, 8, 1), features=(4, 8), latent=4),
], ids=["dense", "conv"])
@pytest.mark.full_opt
def test_autoencoder_methods_compose_and_sow_the_code(model):
  x = images((8, 8, 1))
  variables = init(model, x)
  y, state = apply(model, variables, x, static={"mutable": ["intermediates"]})
  code = apply(model, variables, x, static={"method": model.encode})
  chex.assert_shape(code, (3, 4))
  chex.assert_trees_all_close(apply(model, variables, code, static={"method": model.decode}), y,
                              rtol=1e-6, atol=1e-6)
  # Only the code is sown, so a default-pattern activity penalty sees just it.
  assert list(state["intermediates"]) == ["code"]
  (sown,) = state["intermediates"]["code"]
  chex.assert_trees_all_close(sown, code, rtol=0, atol=0)


def test_dense_autoencoder_code_activation():
  x = images((4, 4, 1))
  sigmoid = DenseAutoencoder((4, 4, 1), hidden=(8,), latent=5)
  variables = init(sigmoid, x)
  code = apply(sigmoid, variables, x, static={"method": sigmoid.encode})
  linear = DenseAutoencoder((4, 4, 1), hidden=(8,), latent=5, code_activation="linear")
  # The same parameters without the sigmoid.
  pre = apply(linear, variables, x, static={"method": linear.encode})
  chex.assert_trees_all_close(code, 1 / (1 + np.exp(-np.asarray(pre))), rtol=1e-5, atol=1e-6)


@pytest.mark.full_opt
def test_vae_reparameterization_by_hand():
  model = VAE((4, 4, 1), hidden=(8,), latent=3)
  x = images((4, 4, 1))
  variables = init(model, x, key=jax.random.key(5))
  key = jax.random.key(7)
  logits, mean, logvar = apply(model, variables, x, key=key)
  mean_e, logvar_e = apply(model, variables, x, static={"method": model.encode})
  chex.assert_trees_all_close((mean, logvar), (mean_e, logvar_e), rtol=0, atol=0)
  eps = np.asarray(jax.random.normal(key, mean.shape))
  z = np.asarray(mean) + np.exp(0.5 * np.asarray(logvar)) * eps
  expected = apply(model, variables, jnp.asarray(z), static={"method": model.decode})
  chex.assert_trees_all_close(logits, expected, rtol=1e-5, atol=1e-5)
  again, _, _ = apply(model, variables, x, key=key)
  chex.assert_trees_all_close(again, logits, rtol=0, atol=0)
  other, _, _ = apply(model, variables, x, key=jax.random.key(8))
  assert float(jnp.max(jnp.abs(other - logits))) > 1e-3
  probs = apply(model, variables, jnp.asarray(z), static={"method": model.generate})
  chex.assert_trees_all_close(probs, 1 / (1 + np.exp(-np.asarray(expected))),
                              rtol=1e-5, atol=1e-6)


def test_mlp_generator_batch_stats_update_in_training():
  model = MLPGenerator((4, 4, 1), hidden=(8,))
  z = jax.random.normal(KEY, (16, 3))
  variables = init(model, z)
  y_train, updates = apply(model, variables, z, static={"train": True, "mutable": ["batch_stats"]})
  chex.assert_trees_all_equal_shapes_and_dtypes(updates["batch_stats"],
                                                variables["batch_stats"])
  old = np.asarray(variables["batch_stats"]["bn_0"]["mean"])
  new = np.asarray(updates["batch_stats"]["bn_0"]["mean"])
  assert np.max(np.abs(new - old)) > 1e-4
  y_eval = apply(model, variables, z)  # Running averages: no mutable collection needed.
  chex.assert_shape([y_train, y_eval], (16, 4, 4, 1))


def test_discriminator_dropout_uses_the_dropout_stream():
  model = MLPDiscriminator(hidden=(32,), dropout_rate=0.5)
  x = images((4, 4, 1), batch=4)
  variables = init(model, x)
  y_eval = apply(model, variables, x)
  y_a = apply(model, variables, x, static={"train": True}, rngs={"dropout": jax.random.key(1)})
  y_b = apply(model, variables, x, static={"train": True}, rngs={"dropout": jax.random.key(2)})
  chex.assert_shape([y_eval, y_a, y_b], (4,))
  assert float(jnp.max(jnp.abs(y_a - y_b))) > 1e-4
  chex.assert_trees_all_close(apply(model, variables, x), y_eval, rtol=0, atol=0)


def test_mixed_precision_keeps_float32_parameters():
  model = DenseAutoencoder((4, 4, 1), hidden=(8,), latent=2, dtype=jnp.bfloat16)
  x = images((4, 4, 1))
  variables = init(model, x)
  assert apply(model, variables, x).dtype == jnp.bfloat16
  assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}


BAD_FIELDS = [
    (lambda: ConvAutoencoder((30, 30, 1)), "30x30"),
    (lambda: ConvAutoencoder((28, 28)), "(28, 28)"),
    (lambda: DCGANGenerator((30, 28, 1)), "30x28"),
    (lambda: DCGANGenerator(MNIST, features=(8, 4, 2)), "2**len(features) = 8"),
    (lambda: DCGANDiscriminator(norm="group"), "'group'"),
    (lambda: DCGANDiscriminator(negative_slope=-0.1), "-0.1"),
    (lambda: MLPDiscriminator(dropout_rate=1.5), "1.5"),
    (lambda: DenseAutoencoder(MNIST, code_activation="sigmod"), "'sigmod'"),
    (lambda: DenseAutoencoder(MNIST, hidden=(0,)), "(0,)"),
    (lambda: VAE(MNIST, latent=0), "latent must be a positive integer, got 0"),
    (lambda: MLPGenerator(MNIST, activation="nope"), "'nope'"),
    (lambda: MLPGenerator((28, -1, 1)), "(28, -1, 1)"),
]


@pytest.mark.parametrize("build,message", BAD_FIELDS, ids=[m for _, m in BAD_FIELDS])
def test_bad_fields_raise_jdl_error(build, message):
  with pytest.raises(JdlError) as info:
    build()
  assert message in str(info.value)


def test_discriminator_rejects_flat_input():
  model = DCGANDiscriminator(features=(2,))
  with pytest.raises(JdlError, match="channel axis"):
    model.init(KEY, jnp.zeros((2, 64)))


def test_critic_double_backward_for_gradient_penalty():
  """WGAN-GP needs d/dparams of ||d critic / d x||; it must run and be finite."""
  model = DCGANDiscriminator(features=(4, 8), norm="none")
  x = images((8, 8, 1), batch=4)
  params = init(model, x)["params"]

  @jax.jit
  def input_grad(p, x):
    return jax.grad(lambda x: jnp.sum(model.apply({"params": p}, x)))(x)

  @jax.jit
  def penalty_grad(p):
    def penalty(p):
      g = input_grad(p, x).reshape(x.shape[0], -1)
      return jnp.mean((jnp.sqrt(jnp.sum(g**2, axis=1) + 1e-12) - 1.0) ** 2)
    return jax.grad(penalty)(p)

  g = input_grad(params, x)
  chex.assert_shape(g, x.shape)
  chex.assert_tree_all_finite(g)
  # Per-example independence (no batch norm): example 0's gradient ignores the others.
  g0 = input_grad(params, x.at[1:].set(0.0))
  chex.assert_trees_all_close(g0[0], g[0], rtol=1e-5, atol=1e-6)
  # The input gradient against a central difference along a random direction.
  v = jax.random.normal(jax.random.key(9), x.shape)
  f = jax.jit(lambda x: jnp.sum(model.apply({"params": params}, x)))
  # Small enough to cross few leaky-ReLU kinks, large enough for float32 rounding.
  eps = 1e-4
  numeric = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(g, v)), float(numeric), rtol=2e-2, atol=2e-3)
  grads = penalty_grad(params)
  chex.assert_tree_all_finite(grads)
  assert math.fsum(float(jnp.sum(jnp.abs(a))) for a in jax.tree_util.tree_leaves(grads)) > 0


def test_real_init():
  """The model's own initializers, called as the training task calls them."""
  model = VAE((4, 4, 1), hidden=(8,), latent=3)
  x = images((4, 4, 1))
  variables = model.init({"params": jax.random.key(0)}, x, key=jax.random.key(1))
  chex.assert_trees_all_equal_shapes_and_dtypes(variables, init(model, x, key=KEY))
  logits, _, _ = model.apply(variables, x, key=jax.random.key(2))
  chex.assert_tree_all_finite(logits)


@pytest.mark.parametrize("task,model,message", [
    ("gan", {"name": "mlp_gan", "generator": {"hidden": [0]}},
     r"^model\.generator\.hidden must be a sequence of positive integers, got \(0,\)$"),
    ("wgan_gp", {"name": "dcgan", "discriminator": {"norm": "group"}},
     r"^model\.discriminator\.norm: unknown norm 'group'"),
    ("vae", {"name": "vae", "latent": 0}, r"^model\.latent must be a positive integer, got 0$"),
])
def test_bad_config_fields_name_their_config_key(task, model, message):
  # Built from a config, an error names the key the user set (it read
  # "model 'mlp_gan.generator': hidden must be ..." before).
  import ml_collections

  from jdl.generative.tasks import create_models
  config = ml_collections.ConfigDict({"task": task, "model": model, "mixed_precision": False})
  with pytest.raises(JdlError, match=message):
    create_models(config, MNIST)
