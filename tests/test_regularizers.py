"""Tests of jdl.regularizers, the models' sown activations and bn_position, and the
``regularization`` config section, against numpy formulas."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdl
from jdl import models, regularizers
from jdl.config import base_config
from jdl.errors import JdlError
from jdl.losses import get_loss
from jdl.train.steps import SupervisedTask

from conftest import make_config

RTOL = 1e-5  # float32 jax vs float64 numpy.
# The "rbg" generator compiles faster than threefry on CPU; nothing here depends on it.
KEY = jax.random.key(0, impl="rbg")


def _init(model, x):
  # Jitted: one compilation is much cheaper than running each op eagerly on CPU.
  return jax.jit(model.init)(KEY, x)


def _apply(model, variables, x, **kwargs):
  return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _rng(seed=0):
  return np.random.default_rng(seed)


def _params():
  r = _rng(0)
  f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
  return {
      "conv_0": {"kernel": f(2, 2, 1, 3), "bias": f(3)},
      "bn_0": {"scale": f(3), "bias": f(3)},
      "Embed_0": {"embedding": f(5, 2)},
      "mlp": {"hidden_0": {"kernel": f(4, 6), "bias": f(6)},
              "head": {"kernel": f(6, 2), "bias": f(2)}},
  }


def _leaf(params, path):
  for k in path.split("/"):
    params = params[k]
  return np.asarray(params, np.float64)


KERNEL_PATHS = ("conv_0/kernel", "Embed_0/embedding", "mlp/hidden_0/kernel", "mlp/head/kernel")
MLP_PATHS = ("mlp/hidden_0/kernel", "mlp/hidden_0/bias", "mlp/head/kernel", "mlp/head/bias")


def _np_penalty(params, terms):
  """terms: (path, l1, l2) per penalised leaf, listed by hand (not by regex)."""
  return sum(l1 * np.abs(_leaf(params, p)).sum() + l2 * np.square(_leaf(params, p)).sum()
             for p, l1, l2 in terms)


# ------------------------------------------------------------- weight penalty

PENALTY_CASES = {
    "none": ((), ()),
    "l1_kernels": (((regularizers.KERNELS, 0.01, 0.0),),
                   tuple((p, 0.01, 0.0) for p in KERNEL_PATHS)),
    "l2_kernels": (((regularizers.KERNELS, 0.0, 0.02),),
                   tuple((p, 0.0, 0.02) for p in KERNEL_PATHS)),
    "elastic_net": (((regularizers.KERNELS, 0.01, 0.02),),
                    tuple((p, 0.01, 0.02) for p in KERNEL_PATHS)),
    # Only the head: biases too, since the pattern says so.
    "pattern_mlp": ((("mlp/.*", 0.0, 0.5),), tuple((p, 0.0, 0.5) for p in MLP_PATHS)),
    # First match wins: the head kernel is exempt, the conv kernel gets its own l1.
    "first_match_wins": (
        (("mlp/head/kernel", 0.0, 0.0), ("conv_0/kernel", 0.3, 0.0),
         (regularizers.KERNELS, 0.0, 0.1)),
        (("conv_0/kernel", 0.3, 0.0), ("Embed_0/embedding", 0.0, 0.1),
         ("mlp/hidden_0/kernel", 0.0, 0.1))),
    # fullmatch: 'kernel' alone matches no path ('conv_0/kernel' is the path).
    "no_match": ((("kernel", 1.0, 1.0),), ()),
}


@pytest.mark.parametrize("rules, terms", PENALTY_CASES.values(), ids=PENALTY_CASES.keys())
def test_penalty_matches_numpy(rules, terms):
  params = _params()
  got = regularizers.penalty(params, rules)
  assert got.shape == () and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_penalty(params, terms), rtol=RTOL, atol=1e-7)


def test_penalty_jits_with_traced_coefficients():
  params = _params()
  f = jax.jit(lambda p, a, b: regularizers.penalty(p, ((regularizers.KERNELS, a, b),)))
  want = _np_penalty(params, tuple((p, 0.01, 0.02) for p in KERNEL_PATHS))
  np.testing.assert_allclose(f(params, 0.01, 0.02), want, rtol=RTOL)


def test_l2_penalty_gradient_is_2_l2_w_on_matched_leaves_only():
  params, l2 = _params(), 0.3
  grads = jax.grad(regularizers.penalty)(params, (("mlp/.*/kernel", 0.0, l2),))
  for path in ("mlp/hidden_0/kernel", "mlp/head/kernel"):
    np.testing.assert_allclose(_leaf(grads, path), 2 * l2 * _leaf(params, path), rtol=RTOL)
  for path in ("conv_0/kernel", "mlp/head/bias", "bn_0/scale", "Embed_0/embedding"):
    np.testing.assert_array_equal(_leaf(grads, path), 0.0)


def test_l1_gradients_are_l1_sign_w_and_0_at_exact_zeros():
  # Keras' and PyTorch's convention: sign(0) = 0. jnp.abs's gradient at 0 is 1, which
  # moved a zero weight to -lr * l1 and back every other step.
  w = jnp.array([-2.0, -0.0, 0.0, 0.5, 3.0])
  l1 = 0.1
  grads = jax.grad(regularizers.penalty)({"w": w}, (("w", l1, 0.0),))
  np.testing.assert_array_equal(np.asarray(grads["w"]), l1 * np.sign(np.asarray(w)))
  acts = {"act_0": (jnp.array([[0.0, 1.5], [-2.0, 0.0]]),)}
  g = jax.grad(lambda a: regularizers.activity_penalty(a, l1))(acts)["act_0"][0]
  np.testing.assert_allclose(np.asarray(g), l1 / 2 * np.array([[0.0, 1.0], [-1.0, 0.0]]),
                             rtol=1e-6, atol=0)  # Exact zeros where a = 0.
  assert float(regularizers.penalty({"w": w}, (("w", l1, 0.0),))) == pytest.approx(0.55)


def test_rules_from_config_order_rules_then_exclude_then_include():
  reg = base_config().regularization
  reg.l2 = 0.1
  reg.exclude = "mlp/head/.*"
  reg.rules = (("conv_0/kernel", 0.5, 0.0),)
  rules = regularizers.rules_from_config(reg)
  assert rules == (("conv_0/kernel", 0.5, 0.0), ("mlp/head/.*", 0.0, 0.0),
                   (regularizers.KERNELS, 0.0, 0.1))
  params = _params()
  want = _np_penalty(params, (("conv_0/kernel", 0.5, 0.0), ("Embed_0/embedding", 0.0, 0.1),
                              ("mlp/hidden_0/kernel", 0.0, 0.1)))
  np.testing.assert_allclose(regularizers.penalty(params, rules), want, rtol=RTOL)


def test_rules_from_config_default_is_no_penalty():
  assert regularizers.rules_from_config(base_config().regularization) == ()


# ----------------------------------------------------------- activity penalty


def test_activity_penalty_matches_numpy():
  r = _rng(1)
  a0, a1, a2 = (r.normal(size=s).astype(np.float32) for s in ((4, 3), (4, 2, 2, 5), (4, 6)))
  inter = {"conv_act_0": (a1,), "mlp": {"act_0": (a0,), "act_1": (a2,)}}
  per_example = lambda a: np.abs(a.astype(np.float64)).sum() / a.shape[0]  # noqa: E731
  cases = {".*": per_example(a0) + per_example(a1) + per_example(a2),
           "mlp/.*": per_example(a0) + per_example(a2),
           "mlp/act_1": per_example(a2),
           "act_0": 0.0}  # fullmatch: the path is 'mlp/act_0'.
  for pattern, want in cases.items():
    got = regularizers.activity_penalty(inter, 0.05, pattern)
    np.testing.assert_allclose(got, 0.05 * want, rtol=RTOL, err_msg=pattern)


def test_activity_penalty_is_batch_size_invariant():
  a = _rng(2).normal(size=(3, 5)).astype(np.float32)
  one = regularizers.activity_penalty({"act_0": (a,)}, 1.0)
  twice = regularizers.activity_penalty({"act_0": (np.concatenate([a, a]),)}, 1.0)
  np.testing.assert_allclose(one, twice, rtol=RTOL)


def test_loss_fn_adds_the_activity_penalty_in_training_only():
  model = models.MLP(3, hidden=(8, 5))
  x = jnp.asarray(_rng(3).normal(size=(6, 4)), jnp.float32)
  batch = {"x": x, "y": jnp.array([0, 1, 2, 0, 1, 2]), "mask": jnp.ones(6)}
  params = _init(model, x)["params"]
  plain = SupervisedTask(model.apply, get_loss("sparse_categorical_crossentropy"), (), 3)
  task = SupervisedTask(model.apply, plain.loss, (), 3, activity_l1=0.1,
                        activity_include="act_1")
  base, _ = jax.jit(plain.loss_fn, static_argnums=4)(params, {}, batch, KEY, True)
  loss, (_, _, state) = jax.jit(task.loss_fn, static_argnums=4)(params, {}, batch, KEY, True)
  assert "intermediates" not in state
  _, inter = _apply(model, {"params": params}, x, mutable=["intermediates"])
  a1 = np.asarray(inter["intermediates"]["act_1"][0], np.float64)
  np.testing.assert_allclose(loss - base, 0.1 * np.abs(a1).sum() / 6, rtol=1e-4)
  eval_loss, _ = jax.jit(task.loss_fn, static_argnums=4)(params, {}, batch, KEY, False)
  np.testing.assert_allclose(eval_loss, base, rtol=1e-6)


# ------------------------------------------------------------------- max norm


def _unit_norms(w):
  """L2 norm of each output unit's incoming weights: over all axes but the last."""
  w = np.asarray(w, np.float64)
  return np.sqrt((w**2).sum(axis=tuple(range(w.ndim - 1))))


def _np_max_norm(w, c):
  norms = _unit_norms(w)
  return np.where(norms > c, np.asarray(w, np.float64) * c / norms, w), norms


def test_max_norm_projects_after_the_update():
  c, lr = 1.0, 0.5
  r = _rng(4)
  # Units of several norms: some end inside the ball, some outside.
  dense = (r.normal(size=(4, 6)) * [0.05, 0.1, 0.2, 0.4, 0.8, 1.5]).astype(np.float32)
  conv = (r.normal(size=(2, 2, 3, 4)) * [0.05, 0.1, 0.5, 1.0]).astype(np.float32)
  params = {"dense": {"kernel": dense, "bias": (3 * np.ones(6)).astype(np.float32)},
            "conv": {"kernel": conv}}
  grads = jax.tree.map(lambda p: (0.1 * r.normal(size=p.shape)).astype(np.float32), params)
  tx = optax.chain(optax.sgd(lr), regularizers.max_norm(c))
  plain = optax.sgd(lr)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  unconstrained = optax.apply_updates(params, plain.update(grads, plain.init(params))[0])
  for path in ("dense/kernel", "conv/kernel"):
    want, norms_before = _np_max_norm(_leaf(unconstrained, path), c)
    got = _leaf(new, path)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7, err_msg=path)
    assert np.all(_unit_norms(got) <= c * (1 + 1e-6)), path
    inside = norms_before <= c
    assert inside.any() and (~inside).any(), "the table must have units on both sides"
    # Units inside the ball keep exactly the optimizer's update.
    np.testing.assert_array_equal(got[..., inside], _leaf(unconstrained, path)[..., inside])
  # The bias (norm 3 > c) is not a kernel: untouched.
  np.testing.assert_array_equal(_leaf(new, "dense/bias"), _leaf(unconstrained, "dense/bias"))


def test_max_norm_axis_and_include():
  w = jnp.asarray(_rng(5).normal(size=(3, 4)) * 3, jnp.float32)
  # Units inside the ball stay as they are, those outside are scaled onto it (scaling
  # every unit onto the sphere passed before): axis=0 (Keras' default for Dense, the
  # default) bounds the columns, axis=1 the rows.
  v = np.asarray(_rng(6).normal(size=(3, 4)) * [[0.1], [0.3], [4.0]], np.float32)
  for axis, units in ((0, v), (1, v.T)):
    n = np.linalg.norm(units, axis=0)
    assert (n < 1).any() and (n > 1).any()
    expected = np.where(n > 1, units / n, units)
    got = np.asarray(regularizers.project_max_norm(jnp.asarray(v), 1.0, axis=axis))
    np.testing.assert_allclose(got if axis == 0 else got.T, expected, rtol=1e-6)
  np.testing.assert_allclose(regularizers.project_max_norm(w, 1.0, axis=0),
                             regularizers.project_max_norm(w, 1.0), rtol=1e-6)
  tx = regularizers.max_norm(1.0, include="a/kernel")
  params = {"a": {"kernel": w}, "b": {"kernel": w}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert np.all(_unit_norms(w + updates["a"]["kernel"]) <= 1 + 1e-6)
  np.testing.assert_array_equal(updates["b"]["kernel"], 0.0)


def test_create_optimizer_puts_max_norm_last():
  config = base_config()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 1.0
  config.optimizer.weight_decay = 0.1  # Decoupled decay, then the projection.
  config.regularization.max_norm = 0.5
  tx = optim_create(config)
  params = {"hidden_0": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.full((2,), 2.0)}}
  grads = jax.tree.map(jnp.ones_like, params)
  new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
  np.testing.assert_allclose(_unit_norms(new["hidden_0"]["kernel"]), 0.5, rtol=1e-6)
  np.testing.assert_allclose(new["hidden_0"]["bias"], 1.0, rtol=1e-6)  # 2 - 1 * 1.


def optim_create(config):
  return jdl.optim.create_optimizer(config, steps_per_epoch=10, num_epochs=1)


# --------------------------------------------------- sown activations, models

SOW_CASES = {
    "mlp": (models.MLP(3, hidden=(8, 5)), (2, 4),
            {"act_0": (2, 8), "act_1": (2, 5)}),
    "cnn": (models.CNN(3, features=(2, 4), dense=(6,), kernel_size=3), (2, 8, 8, 1),
            {"conv_act_0": (2, 8, 8, 2), "conv_act_1": (2, 4, 4, 4), "mlp/act_0": (2, 6)}),
    "lenet5": (models.LeNet5(3), (2, 28, 28, 1),
               {"conv_act_0": (2, 28, 28, 6), "conv_act_1": (2, 10, 10, 16),
                "act_0": (2, 120), "act_1": (2, 84)}),
    "vgg": (models.VGG(3, stages=((2,), (3, 3)), dense=()), (2, 8, 8, 1),
            {"conv_act_1_1": (2, 8, 8, 2), "conv_act_2_1": (2, 4, 4, 3),
             "conv_act_2_2": (2, 4, 4, 3)}),
    "resnet": (models.ResNet(3, stage_sizes=(1, 1), num_filters=2), (2, 8, 8, 1),
               {"stem_act": (2, 8, 8, 2), "stage1_block1/act_0": (2, 8, 8, 2),
                "stage1_block1/act_1": (2, 8, 8, 2), "stage2_block1/act_0": (2, 4, 4, 4),
                "stage2_block1/act_1": (2, 4, 4, 4)}),
    "inception": (models.InceptionNet(3, stem_features=2, stages=(((1, 1, 1, 1, 1, 1),),)),
                  (2, 6, 6, 1),
                  {"stem_act": (2, 6, 6, 2),
                   **{f"stage0_block0/{n}_act": (2, 6, 6, 1)
                      for n in ("b1", "b3_reduce", "b3", "b5_reduce", "b5", "pool_proj")}}),
}


@pytest.mark.parametrize("model, shape, want", SOW_CASES.values(), ids=SOW_CASES.keys())
def test_models_sow_activations(model, shape, want):
  x = jax.random.normal(KEY, shape)
  variables = _init(model, x)
  assert "intermediates" not in variables  # init does not keep them.
  plain = _apply(model, variables, x)
  out, state = _apply(model, variables, x, mutable=["intermediates"])
  got = {regularizers.tree_path(p): tuple(a.shape)
         for p, a in jax.tree_util.tree_leaves_with_path(state["intermediates"])}
  assert got == want
  # Two compilations may fuse differently: equal up to float32 rounding.
  np.testing.assert_allclose(out, plain, rtol=1e-5, atol=1e-6)


def test_sown_relu_activations_are_non_negative_and_feed_the_next_layer():
  model = models.MLP(2, hidden=(5,))
  x = jax.random.normal(KEY, (3, 4))
  variables = _init(model, x)
  out, state = _apply(model, variables, x, mutable=["intermediates"])
  a = state["intermediates"]["act_0"][0]
  head = variables["params"]["head"]
  assert np.all(np.asarray(a) >= 0)
  np.testing.assert_allclose(out, a @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- bn_position


def _bn_np(h, s, b, mean, var):
  return (h - mean) / np.sqrt(var + 1e-5) * s + b


@pytest.mark.parametrize("position", ["before", "after"])
def test_bn_position_matches_numpy_forward(position):
  model = models.MLP(2, hidden=(4,), batch_norm=True, bn_position=position, activation="relu")
  x = np.asarray(_rng(6).normal(size=(5, 3)), np.float32)
  variables = jax.tree.map(np.asarray, _init(model, x))
  r = _rng(7)
  p, stats = variables["params"], variables["batch_stats"]["bn_0"]
  p["bn_0"] = {"scale": r.uniform(0.5, 2, 4).astype(np.float32),
               "bias": r.normal(size=4).astype(np.float32)}
  stats = {"mean": r.normal(size=4).astype(np.float32),
           "var": r.uniform(0.5, 2, 4).astype(np.float32)}
  variables["batch_stats"]["bn_0"] = stats
  # 'before' has no hidden bias (BN's shift replaces it); 'after' keeps it.
  assert ("bias" in p["hidden_0"]) == (position == "after")
  h = x.astype(np.float64) @ p["hidden_0"]["kernel"] + p["hidden_0"].get("bias", 0.0)
  bn_p = p["bn_0"]
  bn = lambda v: _bn_np(v, bn_p["scale"], bn_p["bias"], stats["mean"], stats["var"])  # noqa: E731
  relu = lambda v: np.maximum(v, 0)  # noqa: E731
  hidden = relu(bn(h)) if position == "before" else bn(relu(h))
  want = hidden @ p["head"]["kernel"] + p["head"]["bias"]
  np.testing.assert_allclose(_apply(model, variables, x), want, rtol=1e-5, atol=1e-5)
  # The other order gives a different function on the same variables.
  other = bn(relu(h)) if position == "before" else relu(bn(h))
  assert not np.allclose(want, other @ p["head"]["kernel"] + p["head"]["bias"], atol=1e-3)


@pytest.mark.parametrize("make", [
    lambda: models.CNN(3, features=(2,), dense=(4,), batch_norm=True, bn_position="after"),
    lambda: models.VGG(3, stages=((2,),), dense=(4,), batch_norm=True, bn_position="after"),
    lambda: models.InceptionNet(3, stem_features=2, stages=(((1,) * 6,),), batch_norm=True,
                                bn_position="after"),
], ids=["cnn", "vgg", "inception"])
def test_bn_after_activation_normalises_the_activation(make):
  # In training mode a BN after the activation sees the sown activation: its batch
  # statistics are the activation's mean and (biased) variance.
  model = make()
  x = jax.random.normal(KEY, (4, 8, 8, 1))
  variables = _init(model, x)
  _, state = _apply(model, variables, x, train=True, mutable=["batch_stats", "intermediates"])
  inter, stats = state["intermediates"], state["batch_stats"]
  name, bn = {"CNN": ("conv_act_0", "bn_0"), "VGG": ("conv_act_1_1", "bn1_1"),
              "InceptionNet": ("stem_act", "stem_bn")}[type(model).__name__]
  a = np.asarray(inter[name][0], np.float64).reshape(-1, inter[name][0].shape[-1])
  # Running averages start at (0, 1) with momentum 0.9.
  np.testing.assert_allclose(stats[bn]["mean"], 0.1 * a.mean(0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats[bn]["var"], 0.9 + 0.1 * a.var(0), rtol=1e-4, atol=1e-6)


def test_before_keeps_the_parameter_count():
  x = jnp.zeros((1, 8, 8, 1))
  count = lambda m: sum(v.size for v in jax.tree.leaves(  # noqa: E731
      jax.eval_shape(m.init, KEY, x)["params"]))
  assert count(models.CNN(3, features=(2,), dense=(4,), batch_norm=True)) == (
      2 * 9 + 2 * 2 + 32 * 4 + 2 * 4 + 4 * 3 + 3)  # conv, bn, hidden, bn, head.
  # 'after' adds the conv and hidden biases back.
  assert count(models.CNN(3, features=(2,), dense=(4,), batch_norm=True,
                          bn_position="after")) == 2 * 9 + 2 + 2 * 2 + 32 * 4 + 4 + 2 * 4 + 15


def test_cnn_conv_dropout():
  model = models.CNN(3, features=(4,), dense=(), conv_dropout_rate=0.5, pool="none")
  x = jax.random.normal(KEY, (2, 6, 6, 1))
  variables = _init(model, x)
  plain = _apply(models.CNN(3, features=(4,), dense=(), pool="none"), variables, x)
  np.testing.assert_array_equal(_apply(model, variables, x), plain)  # Eval: no dropout.
  train = jax.jit(lambda k: model.apply(variables, x, train=True, rngs={"dropout": k}))
  a, b = train(jax.random.key(1, impl="rbg")), train(jax.random.key(2, impl="rbg"))
  assert not np.allclose(a, plain) and not np.allclose(a, b)


# ------------------------------------------------------------------- errors

BAD_MODELS = {
    "bn_position": (lambda: models.MLP(2, bn_position="middle"), "bn_position"),
    "cnn_bn_position": (lambda: models.CNN(2, bn_position=""), "bn_position"),
    "conv_dropout": (lambda: models.CNN(2, conv_dropout_rate=1.0), "conv_dropout_rate"),
}


@pytest.mark.parametrize("make, match", BAD_MODELS.values(), ids=BAD_MODELS.keys())
def test_bad_model_fields(make, match):
  with pytest.raises(JdlError, match=match):
    make()


BAD_CONFIG = {
    "l1": ("l1", -0.1, r"regularization\.l1 must be a finite number >= 0, got -0\.1"),
    "l2": ("l2", -1.0, r"regularization\.l2 must be"),
    # inf was accepted: every step non-finite (l1, l2), or no constraint (max_norm).
    "l2_inf": ("l2", float("inf"), r"regularization\.l2 must be a finite number >= 0, got inf"),
    "max_norm_inf": ("max_norm", float("inf"), r"regularization\.max_norm must be a finite"),
    "activity_l1": ("activity_l1", -1.0, r"regularization\.activity_l1"),
    "max_norm": ("max_norm", -2.0, r"regularization\.max_norm"),
    "include": ("include", "(", r"regularization\.include: invalid regex"),
    "exclude": ("exclude", "[", r"regularization\.exclude: invalid regex"),
    "activity_include": ("activity_include", "*", r"regularization\.activity_include"),
    "max_norm_include": ("max_norm_include", "(", r"regularization\.max_norm_include"),
    "rule_shape": ("rules", (("a", 1.0),), r"regularization\.rules\[0\] must be a \(pattern"),
    "rule_negative": ("rules", (("a", 1.0, -1.0),), r"regularization\.rules\[0\] l2"),
    "rule_regex": ("rules", (("(", 1.0, 1.0),), r"regularization\.rules\[0\] pattern"),
}


@pytest.mark.parametrize("key, value, match", BAD_CONFIG.values(), ids=BAD_CONFIG.keys())
def test_bad_config_values(key, value, match):
  config = base_config()
  config.regularization[key] = value
  with pytest.raises(JdlError, match=match):
    regularizers.rules_from_config(config.regularization)
  with pytest.raises(JdlError, match=match):
    optim_create(config)  # The optimizer checks the section too.


def test_old_optimizer_penalty_keys_are_gone():
  assert "l1" not in base_config().optimizer and "l2" not in base_config().optimizer


def test_activity_include_matching_nothing_is_an_error():
  model, x = models.MLP(2, hidden=(3,)), jnp.zeros((1, 4))
  with pytest.raises(JdlError, match=r"activity_include='nope' matches no activation.*act_0"):
    regularizers.check_activity_include(model.apply, jax.eval_shape(model.init, KEY, x), x,
                                        "nope")
  regularizers.check_activity_include(model.apply, jax.eval_shape(model.init, KEY, x), x,
                                      "act_.*")


# ------------------------------------------------------ end to end (digits)


E2E = {"num_epochs": 2, "optimizer__learning_rate": 1e-2}


@pytest.fixture(scope="module")
def plain_run():
  return jdl.fit(make_config(**E2E), quiet=True)


def _kernel_norm(result):
  return sum(float(jnp.sum(w**2)) for p, w in jax.tree_util.tree_leaves_with_path(
      result.state.params) if regularizers.tree_path(p).endswith("kernel"))


def test_l2_training_gives_smaller_weights(plain_run):
  l2 = jdl.fit(make_config(**E2E, regularization__l2=1e-2), quiet=True)
  assert _kernel_norm(l2) < 0.9 * _kernel_norm(plain_run)


def test_activity_l1_reduces_the_mean_activation(plain_run):
  act = jdl.fit(make_config(**E2E, regularization__activity_l1=5e-2), quiet=True)
  assert "intermediates" not in act.state.model_state
  x = plain_run.trainer.data.val.x  # Normalised as in training; same split in both runs.

  def mean_act(result):
    _, state = jax.jit(functools.partial(result.state.apply_fn, mutable=["intermediates"]))(
        result.state.variables, x)
    return float(jnp.mean(state["intermediates"]["act_0"][0]))

  assert mean_act(act) < 0.8 * mean_act(plain_run)


def test_max_norm_training_keeps_every_unit_inside():
  result = jdl.fit(make_config(**E2E, regularization__max_norm=0.5), quiet=True)
  for path, w in jax.tree_util.tree_leaves_with_path(result.state.params):
    if regularizers.tree_path(path).endswith("kernel"):
      assert np.all(_unit_norms(w) <= 0.5 * (1 + 1e-5)), regularizers.tree_path(path)
