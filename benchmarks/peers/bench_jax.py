"""The JAX peers: jdl's ``fit``, a hand-written Flax step loop and ``lax.scan`` epoch.

The hand-written peers define their models directly in Flax linen (not through
jdl), with the layers of the jdl models they are compared with, and train them the
way the Flax examples do: a ``TrainState``, a jitted ``train_step`` donating the
state, softmax cross-entropy and accuracy per step.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

import bench_common as common

_HE = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


class MLP(nn.Module):
  """784-512-512-10, ReLU; flattens its input."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # No batch norm or dropout.
    x = x.reshape((x.shape[0], -1))
    for width in common.MLP_HIDDEN:
      x = nn.relu(nn.Dense(width, kernel_init=_HE)(x))
    return nn.Dense(common.NUM_CLASSES, kernel_init=_HE)(x)


class CNN(nn.Module):
  """The Flax MNIST example with average pooling: conv32-pool-conv64-pool-256-10."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    for width in common.CNN_FEATURES:
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", kernel_init=_HE)(x))
      x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(common.CNN_DENSE, kernel_init=_HE)(x))
    return nn.Dense(common.NUM_CLASSES, kernel_init=_HE)(x)


def _batch_norm(train: bool) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class BasicBlock(nn.Module):
  """Two 3x3 conv + BN; a 1x1 conv + BN projection shortcut when the shape changes."""
  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv = functools.partial(nn.Conv, padding="SAME", use_bias=False, kernel_init=_HE)
    y = conv(self.filters, (3, 3), strides=self.strides)(x)
    y = nn.relu(_batch_norm(train)(y))
    y = _batch_norm(train)(conv(self.filters, (3, 3))(y))
    shortcut = x
    if self.strides != 1 or x.shape[-1] != self.filters:
      shortcut = _batch_norm(train)(conv(self.filters, (1, 1), strides=self.strides)(x))
    return nn.relu(y + shortcut)


class ResNet20(nn.Module):
  """CIFAR ResNet-20: 3x3 stem, 3 stages x 3 basic blocks (16/32/64), pool, dense."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(common.RESNET_FILTERS, (3, 3), padding="SAME", use_bias=False,
                kernel_init=_HE)(x)
    x = nn.relu(_batch_norm(train)(x))
    for i, blocks in enumerate(common.RESNET_STAGES):
      for j in range(blocks):
        x = BasicBlock(common.RESNET_FILTERS * 2**i,
                       strides=2 if i > 0 and j == 0 else 1)(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(common.NUM_CLASSES, kernel_init=_HE)(x)


FLAX_MODELS = {"mlp": MLP, "cnn": CNN, "resnet20": ResNet20}


class TrainState(train_state.TrainState):
  batch_stats: Any


def create_train_state(model_name: str, seed: int) -> TrainState:
  """Initialises the hand-written model and Adam."""
  model = FLAX_MODELS[model_name]()
  example = jnp.zeros((1, *common.INPUT_SHAPES[model_name]), jnp.float32)
  variables = model.init(jax.random.key(seed), example, train=False)
  return TrainState.create(apply_fn=model.apply, params=variables["params"],
                           tx=optax.adam(common.LEARNING_RATE),
                           batch_stats=variables.get("batch_stats", {}))


def train_step(state: TrainState, x: jax.Array, y: jax.Array):
  """One Adam update on ``x: [batch, ...]``, ``y: [batch]``; returns (state, metrics)."""

  def loss_fn(params):
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        mutable=["batch_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  state = state.replace(batch_stats=updates.get("batch_stats", state.batch_stats))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
  return state, {"loss": loss, "accuracy": accuracy}


def _count(params) -> int:
  return int(sum(np.size(p) for p in jax.tree.leaves(params)))


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per computation.
    cost = cost[0]
  return float(cost["flops"])


def _versions() -> dict[str, str]:
  import flax  # pylint: disable=g-import-not-at-top
  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def run_flax_step(model: str, n: int, epochs: int, seed: int,
                  batch_size: int = common.BATCH_SIZE) -> dict[str, Any]:
  """The Flax-examples loop: numpy batches of a per-epoch permutation, one call a step."""
  x, y = common.make_data(model, n, seed)
  bs = batch_size
  state = create_train_state(model, seed)
  t0 = time.perf_counter()
  step = jax.jit(train_step, donate_argnums=(0,)).lower(state, x[:bs], y[:bs]).compile()
  compile_s = time.perf_counter() - t0
  rng = np.random.default_rng(seed + 1)
  steps, rates = n // bs, []
  for _ in range(epochs):
    t0 = time.perf_counter()
    perm = rng.permutation(n)
    epoch_metrics = []
    for i in range(steps):
      idx = perm[i * bs:(i + 1) * bs]
      state, metrics = step(state, x[idx], y[idx])
      epoch_metrics.append(metrics)
    epoch_metrics = jax.device_get(epoch_metrics)  # Waits for the last step.
    rates.append(steps * bs / (time.perf_counter() - t0))
  return {"samples_per_s": common.steady_rate(rates), "epoch_rates": rates,
          "compile_s": compile_s, "first_epoch_s": steps * bs / rates[0],
          "params": _count(state.params), "versions": _versions()}


def run_flax_scan(model: str, n: int, epochs: int, seed: int,
                  batch_size: int = common.BATCH_SIZE) -> dict[str, Any]:
  """A whole epoch in one compiled ``lax.scan`` over data already on the device."""
  x, y = common.make_data(model, n, seed)
  bs = batch_size
  steps = n // bs
  state = create_train_state(model, seed)

  def train_epoch(state, key, x, y):
    perm = jax.random.permutation(key, x.shape[0])[:steps * bs].reshape(steps, bs)

    def body(state, idx):
      return train_step(state, x[idx], y[idx])

    state, metrics = jax.lax.scan(body, state, perm)
    return state, jax.tree.map(jnp.mean, metrics)

  x, y = jnp.asarray(x), jnp.asarray(y)
  key = jax.random.key(seed + 1)
  t0 = time.perf_counter()
  epoch_fn = jax.jit(train_epoch, donate_argnums=(0,)).lower(state, key, x, y).compile()
  compile_s = time.perf_counter() - t0
  rates = []
  for epoch in range(epochs):
    t0 = time.perf_counter()
    state, metrics = epoch_fn(state, jax.random.fold_in(key, epoch), x, y)
    jax.block_until_ready(metrics)
    rates.append(steps * bs / (time.perf_counter() - t0))
  return {"samples_per_s": common.steady_rate(rates), "epoch_rates": rates,
          "compile_s": compile_s, "first_epoch_s": steps * bs / rates[0],
          "params": _count(state.params), "versions": _versions()}


def run_flops(model: str, seed: int, batch_size: int = common.BATCH_SIZE,
              **unused) -> dict[str, Any]:
  """Training FLOPs per example of the hand-written step, from XLA's cost analysis."""
  del unused
  x, y = common.make_data(model, batch_size, seed)
  state = create_train_state(model, seed)
  compiled = jax.jit(train_step, donate_argnums=(0,)).lower(state, x, y).compile()

  def forward(params, x):
    return state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x,
                          train=False)

  forward_flops = _flops(jax.jit(forward).lower(state.params, x).compile())
  return {"flops_per_sample": _flops(compiled) / batch_size,
          "forward_flops_per_sample": forward_flops / batch_size,
          "params": _count(state.params), "versions": _versions()}


def jdl_config(model: str, epochs: int, batch_size: int = common.BATCH_SIZE,
               overrides: dict[str, str] | None = None, **settings):
  """The config of jdl's run of ``model``: ``settings`` are more top-level config
  values (e.g. ``scan_chunk``); ``overrides`` (``{"dotted.key": "value"}``) are
  applied last, as ``--config.dotted.key=value`` is (``peers.py --jdl-set``)."""
  import jdl  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = jdl.base_config()
  config.model = ml_collections.ConfigDict(common.JDL_MODELS[model])
  config.update(dict(validation_split=0.0, normalize="none", tensorboard=False,
                     plots=False, monitor="", batch_size=batch_size,
                     num_epochs=epochs, **settings))
  if overrides:
    with config.unlocked():
      jdl.config.apply_overrides(config, overrides)
  return config


def check_jdl_config(runs: list[tuple[str, int, int]], overrides: dict[str, str],
                     **settings) -> dict[str, Any]:
  """``{"error": None}``, or the message of the jdl error (jdl.errors.JdlError) that
  ``overrides`` raise in the config of one of the ``(model, epochs, batch_size)`` runs,
  applied or checked as training checks a config before it reads any data."""
  import jdl  # pylint: disable=g-import-not-at-top
  from jdl.train import checks  # pylint: disable=g-import-not-at-top
  try:
    for model, epochs, batch_size in runs:
      checks.validate_config(jdl_config(model, epochs, batch_size, overrides, **settings))
  except jdl.errors.JdlError as e:
    return {"error": str(e)}
  return {"error": None}


def jdl_inputs(model: str, n: int, epochs: int, seed: int,
               batch_size: int = common.BATCH_SIZE,
               overrides: dict[str, str] | None = None, **settings):
  """``(config, dataset)`` of jdl's run of ``model`` on ``n`` random examples
  (:func:`jdl_config`'s config)."""
  import jdl  # pylint: disable=g-import-not-at-top
  x, y = common.make_data(model, n, seed)
  x_test, y_test = common.make_data(model, 256, seed + 2)
  config = jdl_config(model, epochs, batch_size, overrides, **settings)
  dataset = jdl.data.Dataset(
      x_train=x, y_train=y, x_test=x_test, y_test=y_test,
      num_classes=common.NUM_CLASSES, task="classification", name="bench",
      input_shape=common.INPUT_SHAPES[model])
  return config, dataset


def run_jdl(model: str, n: int, epochs: int, seed: int,
            batch_size: int = common.BATCH_SIZE, deterministic: bool = True,
            overrides: dict[str, str] | None = None) -> dict[str, Any]:
  """jdl's public ``fit`` on in-memory random data; jdl measures its own epochs.

  ``overrides``: ``{"dotted.key": "value"}`` applied to the config last, as
  ``--config.dotted.key=value`` is (``peers.py --jdl-set``).
  """
  import jdl  # pylint: disable=g-import-not-at-top
  config, dataset = jdl_inputs(model, n, epochs, seed, batch_size, overrides,
                               deterministic=deterministic)
  result = jdl.fit(config, dataset=dataset, quiet=True)
  trainer = result.trainer
  rates = list(trainer.epoch_rates)
  steps = n // batch_size
  return {"samples_per_s": common.steady_rate(rates), "epoch_rates": rates,
          "compile_s": trainer.compile_seconds,
          "first_epoch_s": steps * batch_size / rates[0],
          "params": jdl.count_params(result.state.params),
          "note": f"epoch_mode={trainer.epoch_mode}"
                  + ("" if deterministic else ", deterministic=false")
                  + "".join(f", {k}={v}" for k, v in (overrides or {}).items()),
          "versions": {**_versions(), "jdl": jdl.__version__}}


def run_matmul(size: int = 2048, repeats: int = 10, **unused) -> dict[str, Any]:
  """GFLOP/s of a jitted ``[size, size] @ [size, size]`` float32 matmul (median).

  At JAX's default matmul precision: on an NVIDIA GPU that is TF32 on the tensor
  cores, the precision the training peers run at too.
  """
  del unused
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (size, size), jnp.float32)
  b = jax.random.normal(kb, (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    matmul(a, b).block_until_ready()
    times.append(time.perf_counter() - t0)
  flop = 2.0 * size**3
  return {"gflops": flop / float(np.median(times)) / 1e9,
          "gflops_best": flop / min(times) / 1e9, "size": size,
          "device": jax.devices()[0].device_kind, "versions": _versions()}
