"""Tests for jdl.optim against textbook update equations written in numpy."""

from __future__ import annotations

import fractions
import functools
import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdl import config as config_lib
from jdl import optim
from jdl.errors import JdlError

RTOL, ATOL = 1e-5, 1e-6  # float32 optax vs float64 numpy.

# A tiny quadratic: loss(w) = 0.5 * ||A w - b||^2, grad = A^T (A w - b).
A = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 1.5], [0.0, 1.0, -2.0], [2.0, 0.0, 1.0]])
B = np.array([1.0, -2.0, 0.5, 3.0])
W0 = np.array([0.3, -0.7, 1.1])


def quad_grad(w):
  return A.T @ (A @ w - B)


def make_config(optimizer=None, schedule=None, plateau=None):
  config = optim.default_config()
  config.optimizer.update(optimizer or {})
  config.schedule.update(schedule or {})
  config.reduce_on_plateau.update(plateau or {})
  return config


# ----------------------------------------------------------- numpy references
# Each reference takes (grad_fn, w0, lr, hyper-parameters, steps) and returns the
# parameters after each step. t is the 1-based step number.


def ref_sgd(g, w, c, steps):
  out = []
  for _ in range(steps):
    w = w - c.learning_rate * g(w)
    out.append(w)
  return out


def ref_momentum(g, w, c, steps, nesterov=False):
  # optax.trace: m_t = g_t + mu * m_{t-1};
  # u_t = -lr * m_t, or -lr * (g_t + mu * m_t) with Nesterov.
  m = np.zeros_like(w)
  out = []
  for _ in range(steps):
    gt = g(w)
    m = gt + c.momentum * m
    w = w - c.learning_rate * ((gt + c.momentum * m) if nesterov else m)
    out.append(w)
  return out


def ref_adagrad(g, w, c, steps):
  # Duchi et al. 2011: G_t = G_0 + sum g^2; u = -lr * g / sqrt(G_t + eps).
  acc = np.full_like(w, c.initial_accumulator_value)
  out = []
  for _ in range(steps):
    gt = g(w)
    acc = acc + gt**2
    w = w - c.learning_rate * gt / np.sqrt(acc + c.eps)
    out.append(w)
  return out


def ref_adadelta(g, w, c, steps):
  # Zeiler 2012, alg. 1, times the learning rate.
  eg, ex = np.zeros_like(w), np.zeros_like(w)
  out = []
  for _ in range(steps):
    gt = g(w)
    eg = c.rho * eg + (1 - c.rho) * gt**2
    dx = np.sqrt(ex + c.eps) / np.sqrt(eg + c.eps) * gt
    ex = c.rho * ex + (1 - c.rho) * dx**2
    w = w - c.learning_rate * dx
    out.append(w)
  return out


def ref_rmsprop(g, w, c, steps):
  # Tieleman & Hinton 2012; optax puts eps inside the square root.
  v = np.zeros_like(w)
  out = []
  for _ in range(steps):
    gt = g(w)
    v = c.rho * v + (1 - c.rho) * gt**2
    w = w - c.learning_rate * gt / np.sqrt(v + c.eps)
    out.append(w)
  return out


def ref_adam(g, w, c, steps, nadam=False, weight_decay=0.0):
  # Kingma & Ba 2015, alg. 1; Nadam as optax (Dozat 2016, without the extra
  # b2); decoupled weight decay as Loshchilov & Hutter 2019, alg. 2.
  m, v = np.zeros_like(w), np.zeros_like(w)
  out = []
  for t in range(1, steps + 1):
    gt = g(w)
    m = c.b1 * m + (1 - c.b1) * gt
    v = c.b2 * v + (1 - c.b2) * gt**2
    if nadam:
      m_hat = c.b1 * m / (1 - c.b1**(t + 1)) + (1 - c.b1) * gt / (1 - c.b1**t)
    else:
      m_hat = m / (1 - c.b1**t)
    v_hat = v / (1 - c.b2**t)
    w = w - c.learning_rate * (m_hat / (np.sqrt(v_hat) + c.eps) + weight_decay * w)
    out.append(w)
  return out


def ref_adamax(g, w, c, steps):
  # Kingma & Ba 2015, alg. 2; optax adds eps to |g| inside the max.
  m, u = np.zeros_like(w), np.zeros_like(w)
  out = []
  for t in range(1, steps + 1):
    gt = g(w)
    m = c.b1 * m + (1 - c.b1) * gt
    u = np.maximum(c.b2 * u, np.abs(gt) + c.eps)
    w = w - c.learning_rate * m / (1 - c.b1**t) / u
    out.append(w)
  return out


OPTIMIZER_TABLE = [
    # (name, config overrides, reference)
    ("sgd", {"learning_rate": 0.05}, ref_sgd),
    ("momentum", {"learning_rate": 0.05, "momentum": 0.8}, ref_momentum),
    ("nesterov", {"learning_rate": 0.05, "momentum": 0.8},
     functools.partial(ref_momentum, nesterov=True)),
    # Values far from optax's defaults (eps 1e-8 moves nothing): each must reach it.
    ("adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.5, "eps": 0.1},
     ref_adagrad),
    ("adadelta", {"learning_rate": 1.0, "rho": 0.9, "eps": 1e-6}, ref_adadelta),
    ("rmsprop", {"learning_rate": 0.01, "rho": 0.8, "eps": 0.5}, ref_rmsprop),
    ("adam", {"learning_rate": 0.01, "b1": 0.8, "b2": 0.95, "eps": 0.1}, ref_adam),
    ("adamw", {"learning_rate": 0.01, "weight_decay": 0.1, "b1": 0.8, "b2": 0.95, "eps": 0.1},
     functools.partial(ref_adam, weight_decay=0.1)),
    ("adamax", {"learning_rate": 0.01, "b1": 0.8, "b2": 0.95, "eps": 0.1}, ref_adamax),
    ("nadam", {"learning_rate": 0.01, "b1": 0.8, "b2": 0.95, "eps": 0.1},
     functools.partial(ref_adam, nadam=True)),
]


@pytest.mark.parametrize(
    "name, overrides, reference", OPTIMIZER_TABLE, ids=[r[0] for r in OPTIMIZER_TABLE]
)
def test_optimizer_matches_numpy_reference(name, overrides, reference):
  config = make_config({"name": name, **overrides})
  tx = optim.create_optimizer(config, steps_per_epoch=10, num_epochs=1)
  params = {"Dense_0": {"kernel": jnp.asarray(W0, jnp.float32)}}
  state = tx.init(params)
  expected = reference(quad_grad, W0, config.optimizer, 3)
  for step in range(3):
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    grads = {"Dense_0": {"kernel": jnp.asarray(quad_grad(w), jnp.float32)}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(
        params["Dense_0"]["kernel"], expected[step], rtol=RTOL, atol=ATOL,
        err_msg=f"{name} step {step + 1}",
    )


# ------------------------------------------------------------------ schedules

LR, SPE, EPOCHS = 0.1, 10, 10  # 100 optimizer updates in the run.


def _cos(k, total, alpha):
  k = min(k, total)
  return alpha + (1 - alpha) * 0.5 * (1 + math.cos(math.pi * k / total))


def _linear(k, tau, alpha_final):
  if k > tau:
    return alpha_final
  return (1 - k / tau) + (k / tau) * alpha_final


def _warmup_cos(k, warmup, total, alpha):
  if k < warmup:
    return k / warmup
  return _cos(k - warmup, total - warmup, alpha)


SCHEDULE_TABLE = [
    # (id, schedule overrides, accumulate_steps, lr(k) / LR)
    ("constant", {"name": "constant"}, 1, lambda k: 1.0),
    ("step", {"name": "step", "decay_every_epochs": 3.0, "factor": 0.1}, 1,
     lambda k: 0.1 ** (k // 30)),
    ("step_accumulate2", {"name": "step", "decay_every_epochs": 3.0,
                          "factor": 0.1}, 2,
     lambda k: 0.1 ** (k // 15)),  # 5 updates per epoch.
    # 10 train steps an epoch, 3 to an update: optax.MultiSteps counts across epoch
    # ends, so an epoch holds 10/3 updates on average and the run floor(100/3) = 33.
    ("step_accumulate3", {"name": "step", "decay_every_epochs": 3.0,
                          "factor": 0.1}, 3,
     lambda k: 0.1 ** (k // 10)),  # round(3 * 10/3) = 10 updates.
    # A period of 10/3 updates: decays at updates 4, 7, 10, 14, ... (the first at or
    # past each epoch's end), never drifting from the epochs (a rounded 3 would).
    ("step_accumulate3_every_epoch", {"name": "step", "decay_every_epochs": 1.0,
                                      "factor": 0.5}, 3,
     lambda k: 0.5 ** ((3 * k) // 10)),
    ("exponential", {"name": "exponential", "decay_rate": 0.9}, 1,
     lambda k: 0.9 ** (k / SPE)),
    ("exponential_accumulate3", {"name": "exponential", "decay_rate": 0.9}, 3,
     lambda k: 0.9 ** (k / (SPE / 3))),
    ("cosine_accumulate3", {"name": "cosine", "alpha": 0.1}, 3,
     lambda k: _cos(k, 33, 0.1)),
    ("linear", {"name": "linear", "tau_epochs": 5.0, "alpha_final": 0.01}, 1,
     lambda k: _linear(k, 50, 0.01)),
    ("cosine", {"name": "cosine", "alpha": 0.1}, 1,
     lambda k: _cos(k, 100, 0.1)),
    ("warmup_cosine", {"name": "warmup_cosine", "warmup_epochs": 2.0,
                       "alpha": 0.0}, 1,
     lambda k: _warmup_cos(k, 20, 100, 0.0)),
    ("warmup_cosine_alpha", {"name": "warmup_cosine", "warmup_epochs": 2.0,
                             "alpha": 0.1}, 1,
     lambda k: _warmup_cos(k, 20, 100, 0.1)),
]
STEPS = [0, 1, 5, 10, 14, 15, 19, 20, 29, 30, 31, 49, 50, 51, 75, 99, 100, 150]


@pytest.mark.parametrize(
    "overrides, accumulate, formula",
    [r[1:] for r in SCHEDULE_TABLE], ids=[r[0] for r in SCHEDULE_TABLE],
)
def test_schedule_matches_formula(overrides, accumulate, formula):
  config = make_config({"learning_rate": LR, "accumulate_steps": accumulate},
                       overrides)
  schedule = optim.create_learning_rate_fn(
      config, steps_per_epoch=SPE, num_epochs=EPOCHS
  )
  got = np.array([schedule(k) for k in STEPS])
  want = np.array([LR * formula(k) for k in STEPS])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_sgd_follows_schedule_per_update():
  config = make_config({"name": "sgd", "learning_rate": 1.0},
                       {"name": "step", "decay_every_epochs": 1.0, "factor": 0.5})
  tx = optim.create_optimizer(config, steps_per_epoch=2, num_epochs=3)
  params = {"kernel": jnp.zeros(2)}
  state = tx.init(params)
  grads = {"kernel": jnp.ones(2)}
  got = []
  for _ in range(5):
    updates, state = tx.update(grads, state, params)
    got.append(float(updates["kernel"][0]))
  np.testing.assert_allclose(got, [-1.0, -1.0, -0.5, -0.5, -0.25])


# ------------------------------------------------------------------- clipping


def test_clip_by_value():
  config = make_config({"name": "sgd", "learning_rate": 1.0, "clip_value": 1.0})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  g = np.array([3.0, -0.2, -5.0, 0.9])
  params = {"kernel": jnp.zeros(4)}
  updates, _ = tx.update({"kernel": jnp.asarray(g)}, tx.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -np.clip(g, -1.0, 1.0), rtol=RTOL)


@pytest.mark.parametrize("max_norm", [2.0, 100.0])
def test_clip_by_global_norm(max_norm):
  config = make_config({"name": "sgd", "learning_rate": 1.0, "clip_norm": max_norm})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  g = {"a": np.array([3.0, -4.0]), "b": np.array([[1.0, 2.0], [-2.0, 0.5]])}
  norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
  params = jax.tree.map(jnp.zeros_like, g)
  updates, _ = tx.update(jax.tree.map(jnp.asarray, g), tx.init(params), params)
  scale = min(1.0, max_norm / norm)
  for key in g:
    np.testing.assert_allclose(updates[key], -scale * g[key], rtol=RTOL)


# ---------------------------------------------------- decoupled weight decay

WD_PARAMS = {
    "Dense_0": {"kernel": jnp.array([[1.0, -2.0], [0.5, 3.0]]),
                "bias": jnp.array([1.0, -1.0])},
    "BatchNorm_0": {"scale": jnp.array([2.0, 0.5]), "bias": jnp.array([0.3, 0.2])},
    "Embed_0": {"embedding": jnp.array([[0.4, -0.4]])},
}


@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_decoupled_weight_decay_masked_to_kernels(name):
  # With zero gradients every optimizer's own step is exactly zero, so only the
  # decoupled decay moves parameters: w_{t+1} = (1 - lr_t * wd) w_t on kernels,
  # with lr_t the scheduled rate (halved every update here).
  lr, wd = 0.5, 0.1
  config = make_config({"name": name, "learning_rate": lr, "weight_decay": wd},
                       {"name": "step", "decay_every_epochs": 1.0, "factor": 0.5})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=3)
  params = WD_PARAMS
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  want = {k: dict(v) for k, v in WD_PARAMS.items()}
  for t in range(3):
    updates, state = tx.update(zeros, state, params)
    params = optax.apply_updates(params, updates)
    shrink = 1 - lr * 0.5**t * wd
    want["Dense_0"]["kernel"] = want["Dense_0"]["kernel"] * shrink
    want["Embed_0"]["embedding"] = want["Embed_0"]["embedding"] * shrink
    chex.assert_trees_all_close(params, want, rtol=RTOL, atol=ATOL)
  assert int(optim.update_count(state)) == 3


def test_weight_decay_is_decoupled_from_adaptive_scaling():
  # adam + decay: w -= lr * (adam direction + wd * w), not adam(g + wd * w).
  config = make_config({"name": "adam", "learning_rate": 0.01, "weight_decay": 0.1})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  params = {"Dense_0": {"kernel": jnp.asarray(W0, jnp.float32)}}
  state = tx.init(params)
  expected = ref_adam(quad_grad, W0, config.optimizer, 3, weight_decay=0.1)
  for step in range(3):
    w = np.asarray(params["Dense_0"]["kernel"], np.float64)
    grads = {"Dense_0": {"kernel": jnp.asarray(quad_grad(w), jnp.float32)}}
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(params["Dense_0"]["kernel"], expected[step],
                               rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------- masks


def test_kernel_mask():
  assert optim.kernel_mask(WD_PARAMS) == {
      "Dense_0": {"kernel": True, "bias": False},
      "BatchNorm_0": {"scale": False, "bias": False},
      "Embed_0": {"embedding": True},
  }


# The loss penalties are tested in tests/test_regularizers.py.


# ------------------------------------------------------------------- freezing

FREEZE_PARAMS = {
    "Conv_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
    "Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
}


@pytest.mark.parametrize(
    "patterns, frozen",
    [(("Conv_.*",), {"Conv_0/kernel", "Conv_0/bias"}),
     (("Dense_0",), {"Dense_0/kernel", "Dense_0/bias"}),
     ((".*/bias",), {"Conv_0/bias", "Dense_0/bias"}),
     (("Conv_0/kernel", "Dense_0/b.*"), {"Conv_0/kernel", "Dense_0/bias"})],
)
@pytest.mark.parametrize("chain", [
    {"name": "adam", "weight_decay": 0.1},
    {"name": "adamw", "weight_decay": 0.1},  # optax.adamw's own decay and mask.
    {"name": "sgd", "max_norm": 0.5},  # The kernels' columns (norm sqrt 2) are projected.
])
def test_freeze(patterns, frozen, chain):
  chain = dict(chain)
  max_norm = chain.pop("max_norm", 0.0)
  config = make_config({"learning_rate": 0.1, "freeze": patterns, **chain})
  config.regularization = config_lib.base_config().regularization
  config.regularization.max_norm = max_norm
  optim.check_freeze_patterns(config, FREEZE_PARAMS)
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  params = FREEZE_PARAMS
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  for _ in range(3):
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  for module, leaves in params.items():
    for leaf, value in leaves.items():
      path = f"{module}/{leaf}"
      unchanged = bool(jnp.all(value == FREEZE_PARAMS[module][leaf]))
      assert unchanged == (path in frozen), path


def test_frozen_params_are_left_out_of_the_clipping_norm():
  config = make_config({"name": "sgd", "learning_rate": 1.0, "clip_norm": 1.0,
                        "freeze": ("Conv_0",)})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  grads = {"Conv_0": {"kernel": jnp.full((2, 2), 100.0), "bias": jnp.zeros(2)},
           "Dense_0": {"kernel": jnp.zeros((2, 2)), "bias": jnp.array([0.3, 0.4])}}
  updates, _ = tx.update(grads, tx.init(FREEZE_PARAMS), FREEZE_PARAMS)
  np.testing.assert_allclose(updates["Dense_0"]["bias"], [-0.3, -0.4], rtol=RTOL)
  np.testing.assert_array_equal(updates["Conv_0"]["kernel"], 0.0)


def test_freeze_pattern_matching_nothing_is_an_error():
  config = make_config({"freeze": ("Conv_.*", "params/Dense_0/.*")})
  with pytest.raises(JdlError, match=r"'params/Dense_0/\.\*'.*match no parameter"):
    optim.check_freeze_patterns(config, FREEZE_PARAMS)
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  with pytest.raises(JdlError, match="match no parameter"):
    tx.init(FREEZE_PARAMS)


def test_freeze_invalid_regex_is_an_error():
  config = make_config({"freeze": ("Conv_(",)})
  with pytest.raises(JdlError, match=r"invalid regex 'Conv_\('"):
    optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)


# --------------------------------------------------------------- accumulation


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_multisteps_equals_one_step_on_mean_gradient(name):
  overrides = {"name": name, "learning_rate": 0.1, "weight_decay": 0.01,
               "clip_norm": 1.0}
  tx2 = optim.create_optimizer(
      make_config({**overrides, "accumulate_steps": 2}),
      steps_per_epoch=2, num_epochs=1)
  tx1 = optim.create_optimizer(make_config(overrides), steps_per_epoch=1,
                               num_epochs=1)
  params = {"Dense_0": {"kernel": jnp.asarray(W0, jnp.float32)}}
  g1 = {"Dense_0": {"kernel": jnp.array([0.5, -1.0, 2.0])}}
  g2 = {"Dense_0": {"kernel": jnp.array([1.5, 0.2, -0.4])}}
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)

  state2 = tx2.init(params)
  u_first, state2 = tx2.update(g1, state2, params)
  chex.assert_trees_all_equal(u_first, jax.tree.map(jnp.zeros_like, params))
  u_acc, state2 = tx2.update(g2, state2, params)
  u_one, _ = tx1.update(mean, tx1.init(params), params)
  chex.assert_trees_all_close(u_acc, u_one, rtol=RTOL, atol=ATOL)
  assert int(optim.update_count(state2)) == 1


def test_training_with_accumulation_equals_the_k_times_batch():
  # Through the whole loop: batches of 32 accumulated 2 at a time are the run of
  # batches of 64 (the same epoch order: two consecutive 32-rows blocks are one 64-rows
  # batch), with an L2 penalty, clipping and decoupled weight decay; no dropout.
  import jdl
  from conftest import make_config as run_config
  common = dict(model__dropout_rate=0.0, regularization__l2=1e-3, optimizer__name="adamw",
                optimizer__weight_decay=1e-2, optimizer__clip_norm=1.0, num_epochs=2)
  big = jdl.fit(run_config(batch_size=64, **common), quiet=True)
  acc = jdl.fit(run_config(batch_size=32, optimizer__accumulate_steps=2, **common),
                quiet=True)
  assert int(optim.update_count(acc.state.opt_state)) == int(big.state.step) == 40
  chex.assert_trees_all_close(jax.device_get(acc.state.params),
                              jax.device_get(big.state.params), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(acc.history["loss"], big.history["loss"], rtol=1e-5)


# ---------------------------------------------------------- reduce on plateau


def plateau_config(**plateau):
  return make_config({"name": "sgd", "learning_rate": 0.1},
                     plateau={"enabled": True, "patience": 2, "factor": 0.5,
                              **plateau})


def _lr_after_each_epoch(config, values):
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=1, num_epochs=1)
  state = tx.init({"kernel": jnp.zeros(2)})
  advance = jax.jit(functools.partial(optim.update_plateau, config))
  lrs = []
  for value in values:
    state = advance(state, value)
    lrs.append(float(optim.current_learning_rate(state, lr_fn)))
  return lrs


@pytest.mark.parametrize(
    "mode, values, scales",
    [
        # Flat: improvement at epoch 1 only; two epochs without improvement
        # (patience 2) reduce the lr at epochs 3 and 5.
        ("min", [1.0] * 6, [1, 1, 0.5, 0.5, 0.25, 0.25]),
        ("min", [1.0, 0.9, 0.8, 0.7, 0.6, 0.5], [1] * 6),
        ("min", [1.0, 1.0, 0.9, 0.9, 0.9, 0.9], [1, 1, 1, 1, 0.5, 0.5]),
        ("max", [0.5, 0.6, 0.7, 0.8, 0.9, 0.95], [1] * 6),
        ("max", [0.5] * 6, [1, 1, 0.5, 0.5, 0.25, 0.25]),
        ("max", [0.5, 0.4, 0.3, 0.2, 0.1, 0.0], [1, 1, 0.5, 0.5, 0.25, 0.25]),
    ],
)
def test_plateau_scales_lr_by_validation_metric(mode, values, scales):
  lrs = _lr_after_each_epoch(plateau_config(mode=mode), values)
  np.testing.assert_allclose(lrs, 0.1 * np.array(scales), rtol=1e-6)


def test_plateau_cooldown_and_min_scale():
  config = plateau_config(cooldown=1, min_scale=0.3)
  lrs = _lr_after_each_epoch(config, [1.0] * 8)
  # Reduce at epoch 3; epoch 4 is cooldown; count again at 5, 6 -> reduce at 6,
  # clamped to min_scale.
  np.testing.assert_allclose(lrs, 0.1 * np.array([1, 1, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]),
                             rtol=1e-6)


@pytest.mark.parametrize("tolerance, values, scales", [
    # An improvement must be below 0.9 * best: 0.95 and 0.92 are not (a cut at epoch
    # 3), 0.85 < 0.9 is; then 0.80 and 0.78 are not below 0.765.
    ({"rtol": 0.1, "atol": 0.0}, [1.0, 0.95, 0.92, 0.85, 0.80, 0.78],
     [1, 1, 0.5, 0.5, 0.5, 0.25]),
    # ... or below best - 0.05: 0.94 < 0.95 is, then 0.90 and 0.895 are not (> 0.89).
    ({"rtol": 0.0, "atol": 0.05}, [1.0, 0.96, 0.94, 0.90, 0.895, 0.80],
     [1, 1, 1, 1, 0.5, 0.5]),
])
def test_plateau_tolerances_decide_what_counts_as_an_improvement(tolerance, values, scales):
  lrs = _lr_after_each_epoch(plateau_config(**tolerance), values)
  np.testing.assert_allclose(lrs, 0.1 * np.array(scales), rtol=1e-6)


def test_a_relative_plateau_tolerance_refuses_a_metric_below_zero():
  # optax's test `value < (1 - rtol) * best - atol` takes a worsening -1.0, -0.995,
  # ... for improvements: the rate would never be cut.
  from jdl.train import callbacks
  config = plateau_config(rtol=0.01, atol=0.0)
  callback = callbacks.ReduceLROnPlateau(config)
  with pytest.raises(JdlError, match=r"reduce_on_plateau.rtol=0.01 needs a metric >= 0, "
                                     r"but val_loss is -1 at epoch 1; use"):
    callback.on_epoch_end(None, 0, {"val_loss": -1.0})


def test_plateau_scales_updates_and_steps_do_not_advance_it():
  config = plateau_config()
  tx = optim.create_optimizer(config, steps_per_epoch=4, num_epochs=3)
  params = {"kernel": jnp.zeros(2)}
  grads = {"kernel": jnp.ones(2)}
  state = tx.init(params)
  assert isinstance(state, optim.PlateauState)
  initial_plateau = state.plateau_state
  step = jax.jit(chex.assert_max_traces(tx.update, n=1))
  for _ in range(10):
    updates, state = step(grads, state, params)
  chex.assert_trees_all_equal(state.plateau_state, initial_plateau)
  np.testing.assert_allclose(updates["kernel"], -0.1)

  for value in [1.0, 1.0, 1.0]:
    state = optim.update_plateau(config, state, value)
  updates, state = step(grads, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.05)


def test_update_plateau_is_a_noop_when_disabled():
  config = make_config({"name": "adam"})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  state = tx.init({"kernel": jnp.zeros(2)})
  assert not isinstance(state, optim.PlateauState)
  assert optim.update_plateau(config, state, 1.0) is state


def test_plateau_functions_refuse_a_state_create_optimizer_did_not_make():
  config = make_config({"name": "adam"}, plateau={"enabled": True})
  plain = optax.adam(0.1).init({"kernel": jnp.zeros(2)})
  with pytest.raises(JdlError, match="needs the state of create_optimizer with "
                     "reduce_on_plateau enabled, got tuple"):
    optim.update_plateau(config, plain, 1.0)
  with pytest.raises(JdlError, match="not made by jdl.optim.create_optimizer"):
    optim.update_count(plain)


def test_current_learning_rate_with_accumulation():
  config = make_config({"name": "adam", "learning_rate": 1.0, "accumulate_steps": 2},
                       {"name": "step", "decay_every_epochs": 1.0, "factor": 0.5})
  tx = optim.create_optimizer(config, steps_per_epoch=4, num_epochs=3)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=4, num_epochs=3)
  params = {"kernel": jnp.zeros(2)}
  state = tx.init(params)
  lrs = []
  for _ in range(6):  # 6 micro-steps = 3 updates; 2 updates per epoch.
    _, state = tx.update({"kernel": jnp.ones(2)}, state, params)
    lrs.append(float(optim.current_learning_rate(state, lr_fn)))
  np.testing.assert_allclose(lrs, [1.0, 1.0, 1.0, 0.5, 0.5, 0.5])


# --------------------------------------------------------------------- errors


def test_unknown_optimizer_lists_valid_names():
  with pytest.raises(JdlError) as e:
    optim.create_optimizer(make_config({"name": "adamm"}), steps_per_epoch=1,
                           num_epochs=1)
  assert str(e.value) == (
      "unknown optimizer 'adamm': did you mean 'adam'? valid names: adadelta, adagrad, adam, adamax,"
      " adamw, momentum, nadam, nesterov, rmsprop, sgd")


def test_unknown_schedule_lists_valid_names():
  with pytest.raises(JdlError) as e:
    optim.create_learning_rate_fn(make_config(schedule={"name": "cosin"}),
                                  steps_per_epoch=1)
  assert str(e.value) == (
      "unknown schedule 'cosin': did you mean 'cosine'? valid names: constant, cosine, exponential,"
      " linear, step, warmup_cosine")


@pytest.mark.parametrize(
    "optimizer, schedule, plateau, message",
    [
        ({"learning_rate": 0.0}, {}, {}, "optimizer.learning_rate must be > 0 and finite, got 0.0"),
        ({"learning_rate": -1e-3}, {}, {}, "optimizer.learning_rate must be > 0"),
        ({"learning_rate": math.inf}, {}, {}, "optimizer.learning_rate must be > 0 and finite"),
        ({"clip_norm": math.nan}, {}, {}, "optimizer.clip_norm must be >= 0 and finite"),
        ({"accumulate_steps": 0}, {}, {}, "optimizer.accumulate_steps must be an integer >= 1, got 0"),
        ({"accumulate_steps": 8}, {}, {}, r"an epoch of 4 steps \(train examples // batch_size\) must hold at least optimizer.accumulate_steps \(8\)"),
        ({"weight_decay": -0.1}, {}, {}, "optimizer.weight_decay must be >= 0 and finite, got -0.1"),
        ({"clip_norm": -1.0}, {}, {}, "optimizer.clip_norm must be >= 0"),
        ({"momentum": 1.0}, {}, {}, r"optimizer.momentum must be in \[0, 1\), got 1.0"),
        ({"eps": 0.0}, {}, {}, r"optimizer.eps must be > 0 for adam \(its update divides"),
        ({"name": "rmsprop", "eps": 0.0}, {}, {}, "optimizer.eps must be > 0 for rmsprop"),
        ({}, {"name": "exponential", "decay_rate": -0.5}, {}, "schedule.decay_rate must be in"),
        ({}, {"name": "step", "factor": 1.5}, {}, "schedule.factor must be in"),
        ({}, {"name": "step", "decay_every_epochs": -1.0}, {}, "schedule.decay_every_epochs must be > 0, got -1.0"),
        ({}, {"name": "linear", "tau_epochs": 0.0}, {}, "schedule.tau_epochs must be > 0, got 0.0"),
        ({}, {"name": "linear", "tau_epochs": 1e-6}, {},
         "schedule.tau_epochs must be at least one optimizer update long"),
        ({}, {"name": "warmup_cosine", "warmup_epochs": 5.0}, {}, r"schedule.warmup_epochs=5.0 is 20 optimizer updates, which leaves none of the run's 20"),
        ({}, {"name": "warmup_cosine", "warmup_epochs": 4.99}, {}, "at least one update shorter"),
        ({}, {}, {"enabled": True, "mode": "maximum"}, "reduce_on_plateau.mode must be 'min' or 'max'"),
        ({}, {}, {"enabled": True, "factor": 1.0}, r"reduce_on_plateau.factor must be in \(0, 1\)"),
        ({}, {}, {"enabled": True, "patience": 0}, "reduce_on_plateau.patience must be"),
        ({}, {}, {"enabled": True, "mode": "max", "rtol": 1e-3}, "rtol must be 0 with mode='max'"),
    ],
)
def test_invalid_values_name_key_and_value(optimizer, schedule, plateau, message):
  config = make_config(optimizer, schedule, plateau)
  with pytest.raises(JdlError, match=message):
    optim.create_optimizer(config, steps_per_epoch=4, num_epochs=5)


def test_eps_may_be_0_where_nothing_divides_by_it():
  for name in ("adagrad",):  # optax's adagrad guards its own division.
    config = make_config({"name": name, "eps": 0.0})
    tx = optim.create_optimizer(config, steps_per_epoch=4, num_epochs=5)
    grads = {"w": jnp.array([0.0, 1.0])}
    updates, _ = tx.update(grads, tx.init(grads), grads)
    assert np.isfinite(np.asarray(updates["w"])).all(), name


def test_adadelta_at_the_shared_learning_rate_is_advised_zeilers():
  assert optim.advice(make_config({"name": "adam"}).optimizer) == []
  assert optim.advice(make_config({"name": "adadelta", "learning_rate": 1.0}).optimizer) == []
  (line,) = optim.advice(make_config({"name": "adadelta", "learning_rate": 1e-3}).optimizer)
  assert "1000x smaller" in line and "--config.optimizer.learning_rate=1.0" in line


def test_settings_that_do_nothing_are_advised():
  # AdamW without weight decay is Adam, bit for bit.
  (line,) = optim.advice(make_config({"name": "adamw"}).optimizer)
  assert "weight_decay=0 is Adam" in line
  assert optim.advice(make_config({"name": "adamw", "weight_decay": 1e-4}).optimizer) == []
  # A step schedule whose first decay falls after the run (the default every 30 epochs).
  config = make_config(schedule={"name": "step"})
  (line,) = optim.advice(config.optimizer, config.schedule, 10)
  assert "decays every 30 epochs but the run has 10" in line
  assert optim.advice(config.optimizer, config.schedule, 31) == []
  assert optim.advice(config.optimizer, make_config().schedule, 10) == []


def test_frozen_parameters_stay_under_gradient_accumulation():
  config = make_config({"name": "adam", "accumulate_steps": 2, "freeze": ("Conv_0",)})
  tx = optim.create_optimizer(config, steps_per_epoch=4, num_epochs=5)
  state = tx.init(FREEZE_PARAMS)
  params, grads = FREEZE_PARAMS, jax.tree.map(lambda p: jnp.full_like(p, 0.5), FREEZE_PARAMS)
  for _ in range(4):  # Two updates: the frozen leaves are untouched, the others move.
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal(params["Conv_0"], FREEZE_PARAMS["Conv_0"])
  assert not np.allclose(params["Dense_0"]["kernel"], FREEZE_PARAMS["Dense_0"]["kernel"])


@pytest.mark.parametrize("every, spe, accumulate, counts", [
    (0.5, 469, 1, [233, 234, 235, 468, 469, 470]),  # Periods of 234.5: decays at 235, 469.
    (1.0, 40, 3, [3, 13, 14, 26, 27, 40, 41]),  # Periods of 40/3: decays at 14, 27, 40.
    # Large counts: integers do not overflow (lr jumped back to 1.0 at 1.8M updates).
    (1.0, 40, 3, [187_431, 2_000_000, 2**31 - 1]),
    (0.1234, 468, 1, [1_700_000, 1_800_000, 2_000_000]),
])
def test_the_step_schedule_decays_at_exact_periods(every, spe, accumulate, counts):
  config = make_config({"learning_rate": 1.0, "accumulate_steps": accumulate},
                       {"name": "step", "decay_every_epochs": every, "factor": 0.5})
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=spe, num_epochs=1)
  period = fractions.Fraction(every).limit_denominator(10**4) * fractions.Fraction(spe, accumulate)
  for k in counts:
    assert float(lr(k)) == 0.5 ** math.floor(k / period), k


def test_a_step_period_without_a_small_exact_form_is_rounded():
  config = make_config({"learning_rate": 1.0},
                       {"name": "step", "decay_every_epochs": 1e-5, "factor": 0.5})
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=200_000, num_epochs=1)
  assert [float(lr(k)) for k in (0, 1, 2, 4)] == [1.0, 1.0, 0.5, 0.25]  # Every 2 updates.


def test_a_warmup_shorter_than_one_update_still_warms_up():
  config = make_config(schedule={"name": "warmup_cosine", "warmup_epochs": 0.01})
  lr = optim.create_learning_rate_fn(config, steps_per_epoch=4, num_epochs=5)
  assert float(lr(0)) == 0.0 and float(lr(1)) == pytest.approx(1e-3)  # One warmup update.


def test_cosine_needs_num_epochs():
  with pytest.raises(JdlError, match="num_epochs"):
    optim.create_learning_rate_fn(make_config(schedule={"name": "cosine"}),
                                  steps_per_epoch=4)


def test_a_frozen_batch_norm_layer_keeps_its_running_statistics():
  import jdl
  config = jdl.load_config("digits_mlp")
  config.unlock()
  config.update(dict(num_epochs=1, plots=False, tensorboard=False))
  config.model.batch_norm = True
  config.optimizer.freeze = ("hidden_0", "bn_0")
  config.lock()
  trainer = jdl.Trainer(config, quiet=True)
  before = jax.device_get((trainer.state.params, trainer.state.model_state))
  result = trainer.fit()
  params, stats = jax.device_get((result.state.params, result.state.model_state))
  chex.assert_trees_all_equal(stats["batch_stats"]["bn_0"], before[1]["batch_stats"]["bn_0"])
  chex.assert_trees_all_equal(params["bn_0"], before[0]["bn_0"])
  chex.assert_trees_all_equal(params["hidden_0"], before[0]["hidden_0"])
  # The trainable layer's statistics move.
  assert not np.allclose(stats["batch_stats"]["bn_1"]["mean"],
                         before[1]["batch_stats"]["bn_1"]["mean"])


def test_shortest_run_is_the_fewest_epochs_a_warmup_cosine_schedule_accepts():
  # What a num_epochs=0 run builds its unused schedule over: with fractional updates an
  # epoch (accumulate_steps not dividing the steps), 1 + ceil(warmup_epochs) was not
  # always enough (steps 5, k 4, warm-up 6 epochs: 8 updates, all of a 7-epoch run).
  for steps, k, warmup in itertools.product(range(1, 25), range(1, 6),
                                           (0.0, 0.5, 1.0, 2.3, 6.0)):
    if steps < k:
      continue
    config = make_config({"accumulate_steps": k},
                         {"name": "warmup_cosine", "warmup_epochs": warmup})
    n = optim.shortest_run(config, steps_per_epoch=steps)
    optim.create_learning_rate_fn(config, steps_per_epoch=steps, num_epochs=n)
    if n > 1:
      with pytest.raises(JdlError, match="leaves none of the run"):
        optim.create_learning_rate_fn(config, steps_per_epoch=steps, num_epochs=n - 1)
  assert optim.shortest_run(make_config(), steps_per_epoch=3) == 1  # No warm-up to fit.
  with pytest.raises(JdlError, match="schedule.warmup_epochs must be >= 0 and finite, got nan"):
    optim.shortest_run(make_config(schedule={"name": "warmup_cosine",
                                             "warmup_epochs": float("nan")}),
                       steps_per_epoch=3)


def test_frozen_parameters_keep_their_bits_negative_zeros_included():
  # optax.apply_updates adds the frozen leaves' zero update, and -0.0 + 0.0 is +0.0:
  # a pruned (w * 0) frozen kernel changed its bits at the first step.
  from jdl.train.state import TrainState
  params = jax.tree.map(lambda x: x.at[0].set(-0.0), FREEZE_PARAMS)
  config = make_config({"name": "adam", "learning_rate": 0.1, "weight_decay": 0.1,
                        "freeze": ("Conv_0",)})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state={},
                     opt_state=tx.init(params), key=jax.random.key(0), apply_fn=None, tx=tx)
  for _ in range(2):
    state = state.apply_gradients(grads=jax.tree.map(jnp.ones_like, params), model_state={})
  bits = lambda x: np.asarray(x).view(np.uint32)  # noqa: E731
  chex.assert_trees_all_equal(jax.tree.map(bits, state.params["Conv_0"]),
                              jax.tree.map(bits, params["Conv_0"]))
  assert not np.any(np.asarray(state.params["Dense_0"]["kernel"]) == params["Dense_0"]["kernel"])
  # A live parameter's zero update keeps its bits too; others add as optax's do.
  new = optim.apply_updates({"w": jnp.array([-0.0, 1.0, -1.0])},
                            {"w": jnp.array([0.0, 0.5, 1.0])})
  np.testing.assert_array_equal(bits(new["w"]), bits(jnp.array([-0.0, 1.5, 0.0])))


# Found by a mutation audit: bugs these tests catch passed every earlier one.
# ------------------------------------------------------------ optimizer chain

@pytest.mark.parametrize("clip", [{"clip_norm": 1.0}, {"clip_value": 1.0}])
@pytest.mark.parametrize("name", ["sgd", "momentum"])
def test_clipping_acts_on_the_gradients_before_the_optimizer(name, clip):
  # Clipping moved after the optimizer passed the other clip tests: they use sgd
  # with lr=1, where clipping -g and clipping g are the same thing.
  lr = 0.1
  config = make_config({"name": name, "learning_rate": lr, "momentum": 0.9, **clip})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  clipper = (optax.clip_by_global_norm(1.0) if "clip_norm" in clip else optax.clip(1.0))
  inner = optax.sgd(lr, momentum=0.9 if name == "momentum" else None)
  ref = optax.chain(clipper, inner)
  params = {"Dense_0": {"kernel": jnp.zeros(3), "bias": jnp.zeros(2)}}
  state, ref_state = tx.init(params), ref.init(params)
  rng = np.random.default_rng(0)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 20, jnp.float32),
                         params)
    got, state = tx.update(grads, state, params)
    want, ref_state = ref.update(grads, ref_state, params)
    chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-7)


def test_accumulation_averages_the_micro_gradients_without_clipping():
  # MultiSteps summing instead of averaging: the other unit
  # test clips to norm 1, which maps the sum and the mean to the same update.
  config = make_config({"name": "sgd", "learning_rate": 0.1, "accumulate_steps": 3})
  tx = optim.create_optimizer(config, steps_per_epoch=3, num_epochs=1)
  params = {"kernel": jnp.zeros(3)}
  gs = [np.array([1.0, -2.0, 0.5]), np.array([0.5, 0.5, 0.5]), np.array([3.0, 0.0, -1.0])]
  state = tx.init(params)
  for g in gs:
    updates, state = tx.update({"kernel": jnp.asarray(g, jnp.float32)}, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * np.mean(gs, axis=0), rtol=1e-6)


# ---------------------------------------------------------------------- masks

def test_freeze_patterns_match_whole_names_not_prefixes():
  # re.match instead of fullmatch: 'Dense_1' must not freeze 'Dense_10'.
  params = {"Dense_1": {"kernel": jnp.ones(2)}, "Dense_10": {"kernel": jnp.ones(2)},
            "Dense_1x": {"bias": jnp.ones(2)}}
  labels = optim.freeze_labels(params, ("Dense_1",))
  assert labels == {"Dense_1": {"kernel": "frozen"}, "Dense_10": {"kernel": "trainable"},
                    "Dense_1x": {"bias": "trainable"}}
  new = {"batch_stats": {"bn_1": {"mean": jnp.ones(2)}, "bn_10": {"mean": jnp.ones(2)}}}
  old = jax.tree.map(jnp.zeros_like, new)
  kept = optim.keep_frozen_state(new, old, ("bn_1",))
  assert float(kept["batch_stats"]["bn_1"]["mean"][0]) == 0.0
  assert float(kept["batch_stats"]["bn_10"]["mean"][0]) == 1.0


# ---------------------------------------------------------------- plateau / lr

def test_last_update_rate_before_any_update_is_the_first_updates():
  # count - 1 not clamped at 0: documented as learning_rate_fn(0) "before
  # any"; cosine over 4 updates has lr(-1) = 0.5 * (1 + cos(pi / 4)) * lr.
  config = make_config({"name": "sgd", "learning_rate": 1.0}, {"name": "cosine"})
  tx = optim.create_optimizer(config, steps_per_epoch=4, num_epochs=1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=4, num_epochs=1)
  state = tx.init({"kernel": jnp.zeros(2)})
  got = float(optim.current_learning_rate(state, lr_fn, last_update=True))
  assert got == pytest.approx(1.0)
