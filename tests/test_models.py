"""Tests of jdl.models and jdl.summary: shapes, parameter counts, layers, errors."""

from __future__ import annotations

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jdl import models
from jdl.errors import JdlError
from jdl.models import attention
from jdl.models import create_model, get_activation, get_initializer
from jdl.summary import count_params, param_table



def _key(seed: int) -> jax.Array:
  # The "rbg" generator compiles about 3x faster than threefry on CPU, which keeps
  # this file fast; the models do not depend on the generator.
  return jax.random.key(seed, impl="rbg")


KEY = _key(0)


@pytest.fixture(autouse=True)
def _strict_promotion():
  with jax.numpy_dtype_promotion("strict"):
    yield


def _init(model, shape):
  # Jitted: one compilation is cheaper than running each op eagerly on CPU.
  return jax.jit(model.init)(KEY, jnp.zeros(shape, jnp.float32))


def _abstract_init(model, shape):
  # Shapes only: parameter counts need no compilation or random numbers.
  return jax.eval_shape(lambda: _init(model, shape))


def test_public_api():
  for name in models.__all__:
    assert hasattr(models, name), name
  assert set(models.MODELS) == {
      "mlp", "cnn", "lenet5", "vgg", "inception", "resnet20", "resnet18", "resnet",
      "text_rnn", "text_conv1d", "seq_rnn", "seq2seq"}


# name, config fields, input shape, has batch norm.
SHAPE_CASES = [
    ("mlp", {"hidden": [16, 8]}, (2, 4, 4, 1), False),
    ("mlp", {"hidden": [8], "batch_norm": True, "dropout_rate": 0.5}, (2, 5), True),
    ("cnn", {"features": [4, 8], "dense": [16]}, (2, 8, 8, 3), False),
    ("cnn", {"features": [4, 4], "dense": [], "padding": "valid", "pool": "avg",
             "batch_norm": True, "dropout_rate": 0.2}, (2, 10, 10, 1), True),
    ("cnn", {"features": [4], "padding": 1, "strides": 2, "pool": "none",
             "global_pool": True, "dense": [8]}, (2, 9, 9, 2), False),
    ("cnn", {"features": [4, 8], "kernel_size": 5, "dense": [8]}, (2, 16, 2), False),
    ("lenet5", {}, (2, 28, 28, 1), False),
    ("lenet5", {"activation": "relu", "pool": "max"}, (2, 32, 32, 3), False),
    ("vgg", {"stages": [[4], [8, 8]], "dense": [16], "batch_norm": True,
             "dropout_rate": 0.5}, (2, 8, 8, 3), True),
    ("inception", {"stem_features": 8, "stages": [[[4, 4, 4, 2, 2, 2]],
                                                  [[4, 4, 8, 2, 4, 4]]],
                   "batch_norm": True, "dropout_rate": 0.1}, (2, 8, 8, 3), True),
    ("inception", {"stem_features": 4, "stages": [[[2, 2, 2, 2, 2, 2]]]},
     (2, 12, 1), False),
    ("resnet20", {}, (2, 8, 8, 3), True),
    ("resnet18", {}, (2, 8, 8, 3), True),
    ("resnet", {"stage_sizes": [1, 1], "num_filters": 4, "block": "bottleneck",
                "stem": "imagenet"}, (2, 16, 16, 3), True),
]


@pytest.mark.parametrize(
    "name,fields,shape,has_bn", SHAPE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(SHAPE_CASES)])
def test_output_shapes(name, fields, shape, has_bn):
  # Traced, not run: shape errors surface in tracing, and running every model
  # eagerly on CPU would take minutes. test_forward_runs executes a few.
  model = create_model({"name": name, **fields}, num_outputs=3)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  assert ("batch_stats" in variables) == has_bn
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))

  y = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
  chex.assert_shape(y, (shape[0], 3))

  y, updates = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True, rngs={"dropout": KEY},
                               mutable=["batch_stats"]), variables, x)
  chex.assert_shape(y, (shape[0], 3))
  assert y.dtype == jnp.float32
  if has_bn:
    chex.assert_trees_all_equal_shapes_and_dtypes(updates["batch_stats"],
                                                  variables["batch_stats"])


@pytest.mark.parametrize("index", [1, 3, 5, 6, 10])
def test_forward_runs(index):
  name, fields, shape, has_bn = SHAPE_CASES[index]
  model = create_model({"name": name, **fields}, num_outputs=3)
  x = jax.random.normal(KEY, shape)
  variables = jax.jit(model.init)(KEY, x)

  @jax.jit
  def forward(variables, x, key):
    y_eval = model.apply(variables, x, train=False)
    y_train, updates = model.apply(variables, x, train=True,
                                   rngs={"dropout": key}, mutable=["batch_stats"])
    return y_eval, y_train, updates

  y_eval, y_train, updates = forward(variables, x, _key(1))
  chex.assert_shape([y_eval, y_train], (shape[0], 3))
  chex.assert_tree_all_finite((y_eval, y_train, updates))
  if has_bn:  # Training moved the running averages off their initial values.
    assert not np.allclose(updates["batch_stats"]["bn_0"]["mean"], 0)


def test_create_model_from_config_dict():
  config = ml_collections.ConfigDict(
      {"name": "vgg", "stages": [[4], [8, 8]], "dense": [16]})
  model = create_model(config, num_outputs=7)
  assert isinstance(model, models.VGG)
  assert model.stages == ((4,), (8, 8)) and model.dense == (16,)
  assert model.num_outputs == 7


def test_compute_dtype():
  model = models.MLP(3, hidden=(8,), dtype=jnp.bfloat16)
  variables = _abstract_init(model, (2, 4))
  assert variables["params"]["hidden_0"]["kernel"].dtype == jnp.float32
  y = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 4),
                                                                  jnp.float32))
  assert y.dtype == jnp.bfloat16


# Parameter counts against hand-written formulas.


def dense_count(fan_in, fan_out):
  return fan_in * fan_out + fan_out


def conv_count(k, c_in, c_out, bias=True):
  return k * k * c_in * c_out + (c_out if bias else 0)


def test_mlp_count():
  params = _abstract_init(models.MLP(10, hidden=(512, 512)), (1, 28, 28, 1))
  expected = 784 * 512 + 512 + 512 * 512 + 512 + 512 * 10 + 10
  assert count_params(params["params"]) == expected


@pytest.mark.parametrize("name, task", [("vae", "'vae'"), ("dcgan", "'gan' or 'wgan_gp'"),
                                        ("conv_autoencoder", "'autoencoder'"),
                                        ("seq2seq", "'seq2seq'")])
def test_a_generative_or_seq2seq_model_in_a_classification_config_names_its_task(name, task):
  # "unknown model 'vae'" (it is one, of another task), or seq2seq's missing vocabularies.
  import jdl
  from jdl.train import checks

  config = jdl.load_config("digits_mlp")
  config.model = ml_collections.ConfigDict({"name": name})
  message = (rf"^model '{name}' is trained by task {task}, not 'classification': set "
             r"config\.task \(--config\.task\) to that, or pick another model: cnn, .*mlp")
  with pytest.raises(JdlError, match=message):
    checks.check_model(config)  # jdl config
  with pytest.raises(JdlError, match=message):
    jdl.Trainer(config, None, quiet=True)


def test_count_params_refuses_a_module_and_counts_python_scalars_as_one():
  # count_params(model) counted the module as one scalar and returned 1.
  with pytest.raises(JdlError, match=r"^count_params counts the arrays of a PyTree; it holds "
                     r"a MLP: initialise it and count its parameters, count_params\(model\."
                     r"init\(key, x\)\['params'\]\)$"):
    count_params(models.MLP(10))
  with pytest.raises(JdlError, match=r"it holds a str$"):
    count_params({"a": np.zeros(3), "b": "3"})
  assert count_params({"a": np.zeros((2, 3)), "b": 1.5, "c": np.float32(2)}) == 8


def test_create_train_state_takes_a_key_or_an_int_seed_and_refuses_the_rest():
  import optax

  import jdl
  x = np.zeros((1, 4), np.float32)
  by_seed = jdl.create_train_state(models.MLP(3, hidden=(5,)), optax.sgd(0.1), x, key=7)
  by_key = jdl.create_train_state(models.MLP(3, hidden=(5,)), optax.sgd(0.1), x,
                                  key=jax.random.key(7))
  chex.assert_trees_all_equal(by_seed.params, by_key.params)
  # A deep TypeError from jax before; a batch of keys a ValueError, a seed past 2**64
  # an OverflowError.
  for bad in ("7", True, np.zeros(3, np.float32), jax.random.split(jax.random.key(0), 2),
              2**64, -1):
    with pytest.raises(JdlError, match=r"^create_train_state: key must be one PRNG key "
                       r"\(jax\.random\.key\(seed\)\) or an int seed in \[0, 2\*\*64\), "
                       r"got "):
      jdl.create_train_state(models.MLP(3), optax.sgd(0.1), x, key=bad)
  # An init keyword argument of a numpy array (compared with "key": a ValueError).
  state = jdl.create_train_state(_WithOffset(), optax.sgd(0.1), x, key=7,
                                 init_kwargs={"offset": np.ones(4, np.float32)})
  assert state.params["Dense_0"]["kernel"].shape == (4, 2)


class _WithOffset(nn.Module):
  @nn.compact
  def __call__(self, x, offset=0.0, train=False):
    return nn.Dense(2)(x + offset)


@pytest.mark.parametrize("size", [28, 32])
def test_lenet5_count(size):
  params = _abstract_init(models.LeNet5(), (1, size, size, 1))["params"]
  expected = (conv_count(5, 1, 6) + conv_count(5, 6, 16) + dense_count(16 * 5 * 5, 120)
              + dense_count(120, 84) + dense_count(84, 10))
  assert expected == 61_706
  assert count_params(params) == expected


def resnet_basic_counts(stage_sizes, filters, in_channels, num_outputs):
  """(trainable, batch-stats) counts of a CIFAR-stem basic-block ResNet."""
  trainable, stats = conv_count(3, in_channels, filters, bias=False), 0
  bn_channels = [filters]
  c_in = filters
  for i, blocks in enumerate(stage_sizes):
    c_out = filters * 2**i
    for _ in range(blocks):
      trainable += (conv_count(3, c_in, c_out, bias=False)
                    + conv_count(3, c_out, c_out, bias=False))
      bn_channels += [c_out, c_out]
      if c_in != c_out:  # 1x1 projection shortcut with batch norm.
        trainable += conv_count(1, c_in, c_out, False)
        bn_channels.append(c_out)
      c_in = c_out
  trainable += 2 * sum(bn_channels) + dense_count(c_in, num_outputs)
  stats = 2 * sum(bn_channels)  # Running mean and variance.
  return trainable, stats


@pytest.mark.parametrize("model,stage_sizes,filters", [
    (models.ResNet20(10), (3, 3, 3), 16),
    (models.ResNet18(10), (2, 2, 2, 2), 64),
])
def test_resnet_count(model, stage_sizes, filters):
  variables = _abstract_init(model, (1, 32, 32, 3))
  trainable, stats = resnet_basic_counts(stage_sizes, filters, 3, 10)
  assert count_params(variables["params"]) == trainable
  assert count_params(variables["batch_stats"]) == stats


def test_resnet20_is_027m():
  params = _abstract_init(models.ResNet20(10), (1, 32, 32, 3))["params"]
  assert 0.26e6 < count_params(params) < 0.28e6


def test_conv1d_path():
  model = models.CNN(2, features=(4, 6), kernel_size=5, dense=())
  variables = _abstract_init(model, (3, 20, 2))
  chex.assert_shape(variables["params"]["conv_0"]["kernel"], (5, 2, 4))
  chex.assert_shape(variables["params"]["conv_1"]["kernel"], (5, 4, 6))
  # 20 -> pool 10 -> pool 5, times 6 channels.
  chex.assert_shape(variables["params"]["mlp"]["head"]["kernel"], (5 * 6, 2))
  y = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((3, 20, 2),
                                                                   jnp.float32))
  chex.assert_shape(y, (3, 2))


# Errors.


@pytest.mark.parametrize("make,match", [
    (lambda: create_model({"name": "bogus"}, num_outputs=2),
     r"unknown model 'bogus'; valid names: cnn, inception, lenet5, mlp, resnet, "),
    (lambda: create_model({"hidden": [3]}, num_outputs=2), r"needs a 'name'"),
    (lambda: create_model({"name": "mlp", "hiden": [3]}, num_outputs=2),
     r"unknown field 'hiden' for model 'mlp': did you mean 'hidden'\? valid fields: .*hidden"),
    (lambda: create_model({"name": "resnet"}, num_outputs=2),
     r"model 'resnet' needs field\(s\): stage_sizes"),
    (lambda: create_model({"name": "mlp", "num_outputs": 5}, num_outputs=2),
     r"num_outputs=5 but the data needs 2"),
    (lambda: create_model({"name": "mlp", "activation": "relux"}, num_outputs=2),
     r"unknown activation 'relux': did you mean 'relu'\? valid names: .*relu"),
    (lambda: create_model({"name": "cnn", "kernel_init": "he"}, num_outputs=2),
     r"unknown initializer 'he'; valid names: .*he_normal"),
    (lambda: create_model({"name": "cnn", "pool": "min"}, num_outputs=2),
     r"unknown pool 'min'"),
    (lambda: create_model({"name": "cnn", "padding": "FULL"}, num_outputs=2),
     r"padding must be"),
    # An MLIR TypeError when applied, before.
    (lambda: create_model({"name": "cnn", "padding": 2**31}, num_outputs=2),
     r"^model\.padding must be .* \(at most 2\*\*31 - 1\), got 2147483648$"),
    # True was taken as 1: pooling silently off, a gain of 1.0.
    (lambda: create_model({"name": "cnn", "pool_size": True}, num_outputs=2),
     r"^model\.pool_size must be a positive integer, got True$"),
    (lambda: create_model({"name": "mlp", "init_scale": True}, num_outputs=2),
     r"^model\.init_scale must be a positive number, got True$"),
    (lambda: create_model({"name": "resnet18", "block": "wide"}, num_outputs=2),
     r"unknown block 'wide'"),
    # The config key, as the CLI user typed it: "dropout_rate must be ..." before.
    (lambda: create_model({"name": "mlp", "dropout_rate": 1.0}, num_outputs=2),
     r"^model\.dropout_rate must be in \[0, 1\), got 1.0$"),
    (lambda: create_model({"name": "mlp", "activation": "nope"}, num_outputs=2),
     r"^model\.activation: unknown activation 'nope'; valid names: "),
    (lambda: create_model({"name": "vgg", "stages": [[8, 0]]}, num_outputs=2),
     r"stages\[0\] must be a sequence of positive integers"),
    (lambda: create_model({"name": "mlp"}, num_outputs=0), r"num_outputs must be"),
    # numpy's TypeError, or an integer network, before.
    (lambda: create_model({"name": "mlp", "dtype": "foo"}, num_outputs=2),
     r"^model\.dtype must be a floating-point type \(float32, bfloat16, float16, float64\), "
     r"got 'foo'$"),
    (lambda: create_model({"name": "cnn", "dtype": "int32"}, num_outputs=2),
     r"^model\.dtype must be a floating-point type .* got 'int32'$"),
    # A single number is named as one (it read "a sequence ..., got (0,)").
    (lambda: create_model({"name": "resnet20", "num_filters": 0}, num_outputs=2),
     r"^model\.num_filters must be a positive integer, got 0$"),
    (lambda: create_model({"name": "cnn", "kernel_size": -3}, num_outputs=2),
     r"^model\.kernel_size must be a positive integer, got -3$"),
    (lambda: get_activation("nope"), r"unknown activation 'nope'"),
    (lambda: get_initializer("nope"), r"unknown initializer 'nope'; valid names: "),
    (lambda: get_initializer("zeros", 0.1), r"takes no scale"),
    (lambda: get_initializer("normal", -1.0), r"init_scale must be a positive"),
    (lambda: _abstract_init(models.CNN(2), (2, 16)),
     r"needs \[batch, length, channels\]"),
    (lambda: _abstract_init(models.CNN(2, features=(4, 4, 4)), (1, 4, 4, 1)),
     r"smaller than the pooling window"),
    # An integer padding too small for the kernel: a ZeroDivisionError traceback from
    # the head's initialiser (pool='none'), or an error blaming the pool.
    (lambda: _abstract_init(models.CNN(2, features=(4, 4), kernel_size=5, padding=0,
                                       pool="none"), (1, 8, 8, 1)),
     r"^feature map \(4, 4\) before conv_1 is smaller than kernel_size=5 with padding=0;"),
    (lambda: _abstract_init(models.CNN(2, features=(4, 4), kernel_size=5, padding=1,
                                       pool="none"), (1, 4, 4, 1)),
     r"^feature map \(2, 2\) before conv_1 is smaller than kernel_size=5 with padding=1;"),
    # The building block itself: flax's lowering returned an empty map.
    (lambda: _abstract_init(models.conv.Conv(2, (5, 5), padding=((0, 0), (1, 0))), (1, 4, 4, 1)),
     r"^Conv input \(4, 4\) is smaller than kernel_size \(5, 5\) with padding "),
    (lambda: _abstract_init(models.conv.Conv(2, (3,), padding="valid"), (1, 2, 1)),
     r"^Conv input \(2,\) is smaller than kernel_size \(3,\) with padding 'valid'"),
    # VGG has no pool_size or pool field to suggest.
    (lambda: _abstract_init(models.VGG(2), (1, 3, 3, 1)),
     r"smaller than the pooling window 2; use a larger input or fewer stages\n"),
    # A string is true: batch_norm='no' built batch norm.
    (lambda: create_model({"name": "mlp", "batch_norm": "no"}, num_outputs=2),
     r"^model\.batch_norm must be true or false, got 'no'$"),
    (lambda: create_model({"name": "cnn", "global_pool": 1}, num_outputs=2),
     r"^model\.global_pool must be true or false, got 1$"),
    (lambda: models.DCGANGenerator((8, 8, 1), batch_norm="no"),
     r"^batch_norm must be true or false, got 'no'$"),
    # Public building blocks: ZeroDivisionError, IndexError or nothing before.
    (lambda: models.ResidualBlock(0), r"^filters must be a positive integer, got 0$"),
    (lambda: models.ResidualBlock(4, strides=0), r"^strides must be a positive integer"),
    (lambda: models.ConvAutoencoder((8, 8, 1), features=()),
     r"^features must be a sequence of one or more positive integers, got \(\)$"),
    (lambda: models.DCGANGenerator((8, 8, 1), features=()),
     r"^features must be a sequence of one or more positive integers"),
    (lambda: attention.Attention("bahdanau", 0),
     r"^bahdanau attention's features must be a positive integer, got 0$"),
    (lambda: models.Bidirectional(0), r"^features must be a positive integer, got 0$"),
    # A ResNet of no stages (a stem and a head), and special token ids outside the
    # vocabulary (pad_id='a' masked nothing; 12 of 10 masked nothing): accepted before.
    (lambda: create_model({"name": "resnet", "stage_sizes": ()}, num_outputs=2),
     r"^model\.stage_sizes must be a sequence of one or more positive integers, got \(\)$"),
    (lambda: create_model({"name": "text_rnn", "vocab_size": 10, "pad_id": 10}, num_outputs=2),
     r"^model\.pad_id must be a token id in \[0, vocab_size=10\), got 10$"),
    (lambda: create_model({"name": "text_conv1d", "vocab_size": 10, "pad_id": "a"},
                          num_outputs=2),
     r"^model\.pad_id must be a token id in \[0, vocab_size=10\), got 'a'$"),
    (lambda: create_model({"name": "seq2seq", "src_vocab_size": 9, "tgt_vocab_size": 3},
                          num_outputs=2),
     r"^model\.eos_id must be a token id in \[0, tgt_vocab_size=3\), got 3$"),
    (lambda: create_model({"name": "seq2seq", "src_vocab_size": 4, "tgt_vocab_size": 9,
                           "pad_id": 5}, num_outputs=2),
     r"^model\.pad_id must be a token id in \[0, src_vocab_size=4\), got 5$"),
    # Not "cannot take inputs of shape ..." and four lines of MLIR signatures:
    (lambda: create_model({"name": "mlp", "hidden": (10**20,)}, num_outputs=2),
     r"^model\.hidden must be at most 2\*\*31 - 1 each"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_errors(make, match):
  with pytest.raises(JdlError, match=match):
    make()


# Dropout.


def test_dropout_eval_is_deterministic_and_equals_no_dropout_net():
  x = jax.random.normal(KEY, (4, 10))
  with_dropout = models.MLP(3, hidden=(32, 32), dropout_rate=0.5)
  variables = _init(with_dropout, x.shape)
  outputs = [with_dropout.apply(variables, x, rngs={"dropout": _key(k)})
             for k in range(3)]
  plain = models.MLP(3, hidden=(32, 32)).apply(variables, x)
  for y in outputs:
    chex.assert_trees_all_close(y, plain, rtol=0, atol=0)


def test_dropout_train_expectation_is_identity():
  rate, samples = 0.3, 4000
  model = models.MLP(2, hidden=(64,), dropout_rate=rate)
  x = jax.random.normal(KEY, (4, 10))
  variables = _init(model, x.shape)

  def dropped(key):
    _, state = model.apply(variables, x, train=True, rngs={"dropout": key},
                           capture_intermediates=True, mutable=["intermediates"])
    return state["intermediates"]["Dropout_0"]["__call__"][0]

  keys = jax.random.split(_key(1), samples)
  drops = np.asarray(jax.jit(jax.vmap(dropped))(keys))  # [samples, 4, 64]
  _, state = model.apply(variables, x, capture_intermediates=True,
                         mutable=["intermediates"])
  h = np.asarray(jax.nn.relu(state["intermediates"]["hidden_0"]["__call__"][0]))
  active = h > 0
  # Zeroed with probability `rate`, survivors scaled by 1 / (1 - rate).
  zero_fraction = np.mean(drops[:, active] == 0)
  assert abs(zero_fraction - rate) < 0.01
  chex.assert_trees_all_close(drops[drops != 0],
                              np.broadcast_to(h / (1 - rate), drops.shape)[drops != 0],
                              rtol=1e-5)
  # Mean over keys is x; tolerance: 5 standard errors of the mean per unit.
  std_error = h * math.sqrt(rate / (1 - rate) / samples)
  assert np.all(np.abs(drops.mean(0) - h) <= 5 * std_error + 1e-6)


# Batch norm.


def _bn_apply(model, variables, x, train):
  mutable = ["intermediates"] + (["batch_stats"] if train else [])
  _, state = model.apply(variables, x, train=train, capture_intermediates=True,
                         mutable=mutable)
  inter = state["intermediates"]
  return (np.asarray(inter["hidden_0"]["__call__"][0], np.float64),
          np.asarray(inter["bn_0"]["__call__"][0], np.float64),
          state.get("batch_stats"))


def test_batch_norm_train_uses_batch_statistics_and_updates_running_averages():
  model = models.MLP(2, hidden=(16,), batch_norm=True)
  x = 3.0 + 2.0 * jax.random.normal(KEY, (256, 8))
  variables = _init(model, x.shape)
  pre, post, stats = _bn_apply(model, variables, x, train=True)

  chex.assert_trees_all_close(post.mean(0), np.zeros(16), atol=1e-5)
  chex.assert_trees_all_close(post.var(0), np.ones(16), atol=1e-3)
  # Flax: running = momentum * running + (1 - momentum) * batch (biased variance).
  expected = {"mean": 0.9 * 0.0 + 0.1 * pre.mean(0),
              "var": 0.9 * 1.0 + 0.1 * pre.var(0)}
  chex.assert_trees_all_close(dict(stats["bn_0"]), expected, rtol=1e-4, atol=1e-5)


def test_batch_norm_eval_uses_running_averages():
  model = models.MLP(2, hidden=(16,), batch_norm=True)
  x = jax.random.normal(KEY, (5, 8))
  variables = jax.tree.map(np.asarray, _init(model, x.shape))
  rng = np.random.default_rng(0)
  variables["params"]["bn_0"] = {"scale": rng.uniform(0.5, 2, 16).astype(np.float32),
                                 "bias": rng.normal(size=16).astype(np.float32)}
  variables["batch_stats"]["bn_0"] = {
      "mean": rng.normal(size=16).astype(np.float32),
      "var": rng.uniform(0.5, 3, 16).astype(np.float32)}
  pre, post, _ = _bn_apply(model, variables, x, train=False)

  p, s = variables["params"]["bn_0"], variables["batch_stats"]["bn_0"]
  reference = (pre - s["mean"]) / np.sqrt(s["var"] + 1e-5) * p["scale"] + p["bias"]
  chex.assert_trees_all_close(post, reference, rtol=1e-5, atol=1e-5)


# Activations.


def _erf(x):
  return np.vectorize(math.erf)(x)


ACTIVATION_REFERENCES = {
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "linear": lambda x: x,
    "step": lambda x: (x > 0).astype(x.dtype),
    "softplus": lambda x: np.log1p(np.exp(x)),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "silu": lambda x: x / (1 + np.exp(-x)),
}


def test_activation_table_is_complete():
  assert set(ACTIVATION_REFERENCES) == set(models.ACTIVATIONS)


@pytest.mark.parametrize("name", sorted(ACTIVATION_REFERENCES))
def test_activation_values(name):
  x = np.linspace(-4, 4, 33).astype(np.float32)
  chex.assert_trees_all_close(get_activation(name)(jnp.asarray(x)),
                              ACTIVATION_REFERENCES[name](x).astype(np.float32),
                              rtol=1e-5, atol=1e-6)


def test_step_values_and_zero_gradient():
  step = get_activation("step")
  x = jnp.array([-2.0, -1e-6, 0.0, 1e-6, 3.0])
  chex.assert_trees_all_close(step(x), jnp.array([0.0, 0.0, 0.0, 1.0, 1.0]))
  chex.assert_trees_all_close(jax.grad(lambda v: step(v).sum())(x), jnp.zeros(5))


# Initializers.

FAN_IN, FAN_OUT = 200, 100

# name, scale, expected standard deviation of a [FAN_IN, FAN_OUT] kernel.
INIT_CASES = [
    ("he_normal", None, math.sqrt(2 / FAN_IN)),
    ("he_uniform", None, math.sqrt(2 / FAN_IN)),
    ("he_normal", 2.0, 2 * math.sqrt(2 / FAN_IN)),
    ("glorot_normal", None, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("glorot_uniform", None, math.sqrt(2 / (FAN_IN + FAN_OUT))),
    ("lecun_normal", None, math.sqrt(1 / FAN_IN)),
    ("lecun_uniform", None, math.sqrt(1 / FAN_IN)),
    ("normal", None, 0.01),
    ("normal", 0.2, 0.2),
    ("uniform", None, 0.01 / math.sqrt(3)),
    ("uniform", 0.5, 0.5 / math.sqrt(3)),
    # Orthonormal columns: FAN_OUT unit columns over FAN_IN * FAN_OUT entries.
    ("orthogonal", None, math.sqrt(1 / FAN_IN)),
]


@pytest.mark.parametrize("name,scale,std", INIT_CASES)
def test_initializer_statistics(name, scale, std):
  w = np.asarray(get_initializer(name, scale)(KEY, (FAN_IN, FAN_OUT), jnp.float32))
  assert w.dtype == np.float32
  assert abs(w.std() / std - 1) < 0.1
  assert abs(w.mean()) < 0.1 * std


def test_initializer_special_cases():
  conv = np.asarray(get_initializer("he_normal")(KEY, (3, 3, 16, 32)))
  assert abs(conv.std() / math.sqrt(2 / (3 * 3 * 16)) - 1) < 0.1
  uniform = np.asarray(get_initializer("uniform", 0.5)(KEY, (100, 100)))
  assert uniform.min() >= -0.5 and uniform.max() < 0.5
  ortho = get_initializer("orthogonal")(KEY, (FAN_IN, FAN_OUT))
  chex.assert_trees_all_close(ortho.T @ ortho, jnp.eye(FAN_OUT), atol=1e-4)
  assert not np.any(get_initializer("zeros")(KEY, (3, 4)))
  assert set(models.INITIALIZERS) == {c[0] for c in INIT_CASES} | {"zeros"}


def test_kernel_init_reaches_the_layers():
  model = models.MLP(2, hidden=(4,), kernel_init="zeros")
  params = _init(model, (1, 3))["params"]
  assert not np.any(params["hidden_0"]["kernel"])


# Summary.


def test_param_table():
  model = models.CNN(10, features=(4,), dense=(8,), batch_norm=True)
  variables = _init(model, (1, 8, 8, 3))
  table = param_table(variables)
  lines = table.splitlines()
  for layer, shapes, count in [
      ("conv_0", "kernel (3, 3, 3, 4)", 3 * 3 * 3 * 4),
      ("bn_0", "scale (4,), bias (4,)", 8),
      ("mlp/hidden_0", "kernel (64, 8)", 64 * 8),
      ("mlp/bn_0", "scale (8,), bias (8,)", 16),
      ("mlp/head", "kernel (8, 10), bias (10,)", 8 * 10 + 10),
  ]:
    row = next(line for line in lines if line.split()[:2] == [layer, "params"])
    assert shapes in row and row.endswith(f"{count:,}"), row
  assert any(line.split()[:2] == ["bn_0", "batch_stats"] for line in lines)
  trainable = count_params(variables["params"])
  assert trainable == 108 + 8 + 512 + 16 + 90
  assert lines[-1] == f"Total: {trainable:,} trainable, {2 * (4 + 8)} non-trainable"
  # A bare params tree is read as trainable parameters.
  assert param_table(variables["params"]).splitlines()[-1] == (
      f"Total: {trainable:,} trainable, 0 non-trainable")


def test_param_table_lists_numbered_layers_in_their_numbers_order():
  # After jax.jit (the trainer's state) the names come sorted as text: hidden_10
  # was listed before hidden_2.
  model = models.MLP(2, hidden=(3,) * 12)
  variables = jax.jit(lambda: model.init(KEY, jnp.zeros((1, 4))))()
  layers = [line.split()[0] for line in param_table(variables).splitlines()[1:-1]]
  assert layers == ["head", *(f"hidden_{i}" for i in range(12))]
  # model.init's own (definition) order is kept.
  direct = model.init(KEY, jnp.zeros((1, 4)))
  assert [line.split()[0] for line in param_table(direct).splitlines()[1:-1]] == list(
      direct["params"])


def test_param_table_counts_frozen_parameters_apart():
  # As Keras, frozen parameters are not trainable: summary.txt counted them as such.
  variables = _abstract_init(models.LeNet5(), (1, 28, 28, 1))
  table = param_table(variables, frozen=(r"conv\d", "fc2/kernel"))
  conv = (5 * 5 * 1 * 6 + 6) + (5 * 5 * 6 * 16 + 16)  # 2,572 (LeCun et al. 1998's C1, C3).
  fc2 = 120 * 84
  assert table.splitlines()[-1] == (
      f"Total: {61_706 - conv - fc2:,} trainable, {conv + fc2:,} frozen, 0 non-trainable")
  lines = table.splitlines()
  assert "conv1  params (frozen)  kernel (5, 5, 1, 6), bias (6,)" in table
  assert any(line.split()[:3] == ["fc2", "params", "(frozen)"] and "kernel (120, 84)" in line
             and line.endswith("10,080") for line in lines), table
  assert any(line.split()[:3] == ["fc2", "params", "bias"] and line.endswith(" 84")
             for line in lines), table


def test_param_table_of_abstract_variables():
  variables = _abstract_init(models.LeNet5(), (1, 28, 28, 1))
  table = param_table(variables)
  assert "conv1  params      kernel (5, 5, 1, 6), bias (6,)" in table
  assert table.splitlines()[-1] == "Total: 61,706 trainable, 0 non-trainable"


@pytest.mark.parametrize("name,fields,shape", [
    ("cnn", {"features": (4,), "dense": (8,), "pool": "avg"}, (2, 8, 8, 1)),
    ("cnn", {"features": (4,), "dense": (8,), "pool": "max", "batch_norm": True}, (2, 8, 8, 1)),
    ("cnn", {"features": (4,), "dense": (8,), "pool": "avg"}, (2, 16, 3)),
    ("lenet5", {}, (2, 28, 28, 1)),
    ("mlp", {"hidden": (8,), "dropout_rate": 0.5}, (2, 5)),
])
def test_every_parameter_gets_a_finite_gradient(name, fields, shape):
  model = create_model({"name": name, **fields}, num_outputs=3)
  x = jax.random.normal(jax.random.key(0), shape)
  variables = model.init(jax.random.key(1), x)
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def loss(p):
    out, _ = model.apply({"params": p, **state}, x, train=True,
                         rngs={"dropout": jax.random.key(2)}, mutable=list(state))
    return jnp.sum(out ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert np.any(g != 0), f"zero gradient at {jax.tree_util.keystr(path)}"


# ----------------------------------------------------- pooling over windows


def _numpy_pool(x, kind, size):
  """Non-overlapping pooling in numpy (trailing rows/columns that fill no window dropped)."""
  x = np.asarray(x, np.float64)
  spatial = x.shape[1:-1]
  x = x[(slice(None), *[slice(0, n // size * size) for n in spatial], slice(None))]
  shape = [x.shape[0]] + [d for n in x.shape[1:-1] for d in (n // size, size)] + [x.shape[-1]]
  axes = tuple(range(2, 2 * len(spatial) + 1, 2))
  r = x.reshape(shape)
  return r.max(axis=axes) if kind == "max" else r.mean(axis=axes)


def _pooling(elementwise):
  """Non-overlapping pooling through one lowering: strided views (the CPU default) or
  the reduction over a reshape (the default elsewhere)."""
  from jdl.models.cnn import _nonoverlapping_pool
  return lambda x, kind, size: _nonoverlapping_pool(x, kind, size, elementwise=elementwise)


LOWERINGS = pytest.mark.parametrize("elementwise", [True, False], ids=["views", "reshape"])


@LOWERINGS
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("shape,size", [((2, 8, 8, 3), 2), ((3, 7, 9, 2), 3), ((2, 11, 4), 2),
                                        ((1, 6, 4, 5), 2)])
def test_window_pooling_matches_numpy_and_reduce_window_gradients(kind, shape, size,
                                                                  elementwise):
  pool = _pooling(elementwise)
  x = jax.random.normal(jax.random.key(0), shape)  # No ties (almost surely).
  np.testing.assert_allclose(pool(x, kind, size), _numpy_pool(x, kind, size), rtol=1e-6,
                             atol=1e-6)
  # Gradients against flax's reduce_window pooling, an independent lowering.
  window = (size,) * (len(shape) - 2)
  if kind == "max":
    ref = lambda x: nn.max_pool(x, window, strides=window)  # noqa: E731
  else:  # nn.avg_pool divides by an int, which strict promotion rejects.
    ref = lambda x: (nn.pool(x, np.float32(0), jax.lax.add, window, window, "VALID")  # noqa: E731
                     / np.float32(math.prod(window)))
  w = jax.random.normal(jax.random.key(1), pool(x, kind, size).shape)
  ours = jax.grad(lambda x: jnp.sum(pool(x, kind, size) * w))(x)
  theirs = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  # Forward mode too (jax.jvp, and the Hessian jax.hessian builds forward over
  # reverse): a custom VJP refused both. CPU's max pooling stays one (cnn.py says why).
  if kind == "max" and elementwise:
    return
  v = jax.random.normal(jax.random.key(2), shape)
  ours = jax.jvp(lambda x: pool(x, kind, size), (x,), (v,))[1]
  theirs = jax.jvp(ref, (x,), (v,))[1]
  np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)
  # Hessian-vector products (forward over reverse, as jax.hessian builds the Hessian)
  # along random directions: two Hessians that differ differ along almost all of them.
  square = lambda f: lambda x: jnp.sum(f(x) ** 2 * w)  # noqa: E731

  @jax.jit
  def hvp(u):
    return [jax.jvp(jax.grad(square(f)), (x,), (u,))[1]
            for f in (lambda x: pool(x, kind, size), ref)]

  for key in (3, 4):
    ours, theirs = hvp(jax.random.normal(jax.random.key(key), shape))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend, elementwise", [("cpu", True), ("gpu", False),
                                                  ("tpu", False)])
def test_pool_picks_the_lowering_of_its_backend(monkeypatch, backend, elementwise):
  # The strided views (custom JVP / VJP) on CPU, where they measured fastest; the
  # reduction over a reshape elsewhere (benchmarks/README.md, "Pooling").
  from jdl.models import cnn
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  x = jnp.ones((2, 8, 8, 3))
  for kind in ("avg", "max"):
    jaxpr = str(jax.make_jaxpr(lambda x: cnn.pool(x, kind, 2))(x))
    custom = "custom_jvp_call" if kind == "avg" else "custom_vjp_call"
    assert (custom in jaxpr) == elementwise, jaxpr
    assert ("reduce_max" in jaxpr or "reduce_sum" in jaxpr) == (not elementwise), jaxpr


@LOWERINGS
def test_max_pool_gradient_splits_ties_like_jax_max(elementwise):
  pool = _pooling(elementwise)
  # Integer-valued inputs tie often; JAX's reduce-max gradient splits g equally among
  # a window's maxima (a window of four equal values passes g/4 to each).
  x = jnp.asarray(np.random.default_rng(0).integers(0, 3, (2, 6, 6, 2)), jnp.float32)
  x = x.at[0, :2, :2, 0].set(5.0)
  w = jax.random.normal(jax.random.key(1), (2, 3, 3, 2))
  ours = jax.grad(lambda x: jnp.sum(pool(x, "max", 2) * w))(x)
  reshaped = lambda x: jnp.max(x.reshape(2, 3, 2, 3, 2, 2), axis=(2, 4))
  theirs = jax.grad(lambda x: jnp.sum(reshaped(x) * w))(x)
  np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  np.testing.assert_allclose(ours[0, :2, :2, 0], np.full((2, 2), w[0, 0, 0, 0] / 4), rtol=1e-6)


@LOWERINGS
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_window_pooling_in_bfloat16(kind, elementwise):
  pool = _pooling(elementwise)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4)).astype(jnp.bfloat16)
  y = pool(x, kind, 2)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), _numpy_pool(x, kind, 2), rtol=1e-2,
                             atol=1e-2)
  g = jax.grad(lambda x: jnp.sum(pool(x, kind, 2).astype(jnp.float32)))(x)
  assert g.dtype == jnp.bfloat16
  if kind == "avg":
    np.testing.assert_array_equal(np.asarray(g, np.float32), 0.25)


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_window_pooling_second_order_gradient(kind):
  # A gradient penalty (WGAN-GP) differentiates the gradient again: through the
  # hand-written backward rules. Reference: the reduction over a reshape, which
  # JAX differentiates itself.
  pool = _pooling(elementwise=True)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  w = jax.random.normal(jax.random.key(1), (2, 3, 3, 3))

  def reduction(x):
    r = x.reshape(2, 3, 2, 3, 2, 3)
    return jnp.max(r, axis=(2, 4)) if kind == "max" else jnp.mean(r, axis=(2, 4))

  def penalty_gradient(f):
    def penalty(x):
      g = jax.grad(lambda x: jnp.sum(jnp.tanh(f(x)) * w))(x)
      return jnp.sum(g ** 2)
    return jax.grad(penalty)(x)

  ours = penalty_gradient(lambda x: pool(x, kind, 2))
  np.testing.assert_allclose(ours, penalty_gradient(reduction), rtol=1e-5, atol=1e-6)
  assert np.any(np.asarray(ours) != 0)


def test_forward_over_reverse_hessian_vector_product_through_lenet5():
  # jax.jvp of jax.grad (the usual Hessian-vector product) through LeNet-5's average
  # pooling and the patches convolutions on CPU, against reverse over reverse.
  model = models.LeNet5(10, conv_impl="patches")
  x = jax.random.normal(jax.random.key(0), (2, 12, 12, 1))
  params = model.init(jax.random.key(1), x)["params"]
  loss = lambda p: jnp.sum(jax.nn.log_softmax(model.apply({"params": p}, x))[:, 3])  # noqa: E731
  v = jax.tree.map(lambda a: jax.random.normal(jax.random.key(2), a.shape), params)
  forward = jax.jit(lambda p, v: jax.jvp(jax.grad(loss), (p,), (v,))[1])(params, v)
  reverse = jax.jit(jax.grad(lambda p, v: sum(jnp.vdot(g, t) for g, t in zip(
      jax.tree.leaves(jax.grad(loss)(p)), jax.tree.leaves(v)))))(params, v)
  chex.assert_trees_all_close(forward, reverse, rtol=1e-4, atol=1e-5)


# ------------------------------------------- values against formulas (not only shapes)
# Each test below kills a plausible bug that the shape, count and finiteness checks
# above let through (found by mutation: a swapped tanh, a dropped residual add, ...).


def _masked_softmax_np(scores, mask):
  scores = np.where(mask, scores, -np.inf)
  e = np.where(mask, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("kind", ["bahdanau", "luong_dot", "luong_general"])
def test_attention_scores_weights_and_context_against_the_papers_formulas(kind):
  # Bahdanau et al. 2015: v^T tanh(W_k m + b + W_q q); Luong et al. 2015: q.m and
  # q^T W_a m; weights a softmax over the real positions; context sum_s w_s m_s.
  rng = np.random.default_rng(1)
  batch, steps, width, key_width = 3, 5, 6, 4
  memory = rng.normal(size=(batch, steps, width)).astype(np.float32)
  query = rng.normal(size=(batch, width)).astype(np.float32)
  mask = np.arange(steps)[None] < np.array([5, 3, 1])[:, None]
  att = attention.Attention(kind, key_width if kind == "bahdanau" else width)
  call = lambda m, q, mem, mask: m(q, m.keys(mem), mem, mask)  # noqa: E731
  variables = att.init(jax.random.key(0), query, memory, mask, method=call)
  # Random biases too (a bias initialised at 0 would hide a dropped one).
  params = jax.tree.map(lambda a: np.asarray(a) + rng.normal(size=a.shape).astype(np.float32),
                        dict(variables.get("params", {})))
  context, weights = att.apply({"params": params}, query, memory, mask, method=call)
  m64, q64 = memory.astype(np.float64), query.astype(np.float64)
  if kind == "bahdanau":
    hidden = np.tanh(m64 @ params["key_proj"]["kernel"] + params["key_proj"]["bias"]
                     + (q64 @ params["query_proj"]["kernel"])[:, None])
    scores = (hidden @ params["energy"]["kernel"])[..., 0]
  elif kind == "luong_general":
    scores = np.einsum("bk,bsk->bs", q64, m64 @ params["key_proj"]["kernel"])
  else:
    scores = np.einsum("bm,bsm->bs", q64, m64)
  expected = _masked_softmax_np(scores, mask)
  np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(context, np.einsum("bs,bsm->bm", expected, m64), rtol=1e-4,
                             atol=1e-5)
  # A row without a real position: zero weights and zero context (not uniform, not NaN).
  context, weights = att.apply({"params": params}, query, memory, np.zeros_like(mask),
                               method=call)
  np.testing.assert_array_equal(weights, 0.0)
  np.testing.assert_array_equal(context, 0.0)


def _block_variables(block, x):
  """Variables of a ResidualBlock whose residual branch outputs 0 (conv2 and bn2's bias 0)."""
  variables = jax.tree.map(lambda a: np.array(a), block.init(jax.random.key(0), x))
  variables["params"]["conv2"]["kernel"][:] = 0.0
  variables["params"]["bn2"]["bias"][:] = 0.0
  return variables


def test_residual_block_adds_its_shortcut_before_the_relu():
  # He et al. 2016: y = relu(F(x) + shortcut(x)). With F = 0, an identity shortcut gives
  # relu(x) (negative inputs included); a stride-2 projection relu(BN(W x[::2, ::2])).
  x = np.random.default_rng(2).normal(size=(2, 4, 4, 3)).astype(np.float32)
  block = models.ResidualBlock(3)
  np.testing.assert_allclose(block.apply(_block_variables(block, x), x), np.maximum(x, 0),
                             rtol=1e-6, atol=1e-6)
  block = models.ResidualBlock(5, strides=2)
  variables = _block_variables(block, x)
  p = variables["params"]
  projected = (x[:, ::2, ::2] @ p["proj"]["kernel"][0, 0]) / np.sqrt(1 + 1e-5)  # Running var 1.
  projected = projected * p["proj_bn"]["scale"] + p["proj_bn"]["bias"]
  np.testing.assert_allclose(block.apply(variables, x), np.maximum(projected, 0), rtol=1e-5,
                             atol=1e-5)


def test_residual_block_running_mean_moves_by_the_momentum():
  # flax's BatchNorm(momentum=0.9): running = 0.9 * running + 0.1 * batch mean, from 0.
  x = np.random.default_rng(3).normal(size=(4, 4, 4, 3)).astype(np.float32)
  block = models.ResidualBlock(3)
  _, state = block.apply(block.init(jax.random.key(0), x), x, train=True,
                         mutable=["batch_stats", "intermediates"], capture_intermediates=True)
  conv1 = np.asarray(state["intermediates"]["conv1"]["__call__"][0], np.float64)
  np.testing.assert_allclose(state["batch_stats"]["bn1"]["mean"], 0.1 * conv1.mean((0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_lenet5_pads_28_to_32_on_every_side_alike_and_activates_its_dense_layers():
  # LeCun et al. 1998 read 32x32 inputs: a 28x28 digit is padded by 2 on each side.
  model = models.LeNet5()
  rng = np.random.default_rng(4)
  x = rng.normal(size=(2, 28, 28, 1)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  np.testing.assert_allclose(model.apply(variables, x),
                             model.apply(variables, np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))),
                             rtol=1e-5, atol=1e-6)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  fc1 = np.asarray(state["intermediates"]["fc1"]["__call__"][0])
  np.testing.assert_allclose(state["intermediates"]["act_0"][0], np.tanh(fc1), rtol=1e-5,
                             atol=1e-6)


def test_cnn_global_pool_is_the_spatial_mean_of_the_last_feature_maps():
  model = models.CNN(3, features=(4,), pool="none", global_pool=True, dense=())
  x = np.random.default_rng(5).normal(size=(2, 6, 6, 2)).astype(np.float32)
  variables = model.init(jax.random.key(0), x)
  y, state = model.apply(variables, x, mutable=["intermediates"])
  pooled = np.asarray(state["intermediates"]["conv_act_0"][0], np.float64).mean((1, 2))
  head = variables["params"]["mlp"]["head"]
  np.testing.assert_allclose(y, pooled @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
                             rtol=1e-5, atol=1e-5)


def test_he_normal_is_truncated_at_two_sigma_and_orthogonal_keeps_its_gain():
  # He normal as Keras' he_normal: truncated at 2 sigma of the untruncated
  # N(0, 2 / fan_in) scaled up by 1 / 0.8796 (the truncated normal's std).
  std = math.sqrt(2 / 200)
  w = np.asarray(get_initializer("he_normal")(jax.random.key(0), (200, 100)))
  assert np.abs(w).max() <= 2 * std / 0.87962566 * (1 + 1e-5)
  assert np.abs(w).max() > 1.9 * std / 0.87962566  # Truncated near 2 sigma, not far below.
  o = np.asarray(get_initializer("orthogonal", 2.0)(jax.random.key(0), (20, 10)))
  np.testing.assert_allclose(o.T @ o, 4 * np.eye(10), atol=1e-4)
