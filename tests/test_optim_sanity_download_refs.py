"""Reduce-on-plateau, freeze masks, `jdl check`'s thresholds and the IDX downloader
against independent references: a plain-Python simulation of optax's (and Keras's)
reduce-on-plateau, explicit expected masks and paths, the documented thresholds
tested on both sides of each boundary, and downloads from local servers only.

Found by a mutation audit: each test catches at least one change to jdl/optim/plateau.py,
jdl/optim/masks.py, jdl/sanity.py or jdl/data/download.py that the rest of the suite
let pass.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import http.server
import math
import socket
import threading
import time
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jdl
from jdl import optim
from jdl import sanity
from jdl.data import download
from jdl.data import pipeline
from jdl.errors import JdlError
from conftest import fake_trainer, make_config

# ------------------------------------------------------------ reduce on plateau


def _plateau_config(**plateau):
  """An sgd config at lr 1 whose reduce_on_plateau section is built from a dict (as a
  user's config file may build it: no field keeps the default's type)."""
  config = optim.default_config()
  config.optimizer.update({"name": "sgd", "learning_rate": 1.0})
  section = {**config.reduce_on_plateau.to_dict(), "enabled": True, **plateau}
  config.reduce_on_plateau = ml_collections.ConfigDict(section)
  return config


def reference_scales(values, *, mode="min", factor=0.5, patience=3, cooldown=0, rtol=0.0,
                     atol=1e-4, min_scale=1e-3):
  """The plateau scale after each epoch, by optax.contrib.reduce_on_plateau's documented
  rules in plain Python: an improvement is ``v < (1 - rtol) * best - atol`` (on ``-v``
  for mode 'max'); ``patience`` epochs in a row without one multiply the scale by
  ``factor`` (never below ``min_scale``) and start ``cooldown`` epochs in which
  nothing counts as a bad epoch (the best value is still tracked)."""
  best, bad, cool, scale, out = math.inf, 0, 0, 1.0, []
  for v in values:
    v = -v if mode == "max" else v
    threshold = (1 - rtol) * best - atol
    # Away from the boundary, so that float32 (optax) and float64 (here) agree.
    assert abs(v - threshold) > 1e-4 or math.isinf(threshold), (v, threshold)
    improved = v < threshold
    if improved:
      best = v
    bad = 0 if improved else bad + 1
    if cool > 0:
      cool, bad = cool - 1, 0
    elif bad == patience:
      scale, bad, cool = max(scale * factor, min_scale), 0, cooldown
    out.append(scale)
  return out


# Improving stretches, plateaus and relapses, on a 1/16 grid (exact in float32).
_SEQUENCES = (
    [1.0] * 14,
    [1.0, 0.875, 0.875, 0.875, 0.75, 0.75, 0.75, 0.75, 0.5, 0.625, 0.6875, 0.5, 0.5, 0.5],
    [2.0, 1.75, 1.75, 1.8125, 1.5, 1.5, 1.5, 1.5, 1.5, 1.375, 1.4375, 1.4375, 1.4375,
     1.0, 1.0, 1.0],
)


@pytest.mark.parametrize("plateau", [
    dict(patience=1, factor=0.5, cooldown=0, atol=1e-3, rtol=0.0, min_scale=1e-3),
    dict(patience=2, factor=0.3, cooldown=2, atol=0.03, rtol=0.0, min_scale=0.05),
    dict(patience=3, factor=0.1, cooldown=1, atol=0.0, rtol=0.03, min_scale=0.0),
    dict(patience=2, factor=0.5, cooldown=0, atol=0.07, rtol=0.0, min_scale=0.2, mode="max"),
], ids=["p1", "p2-cooldown2-atol", "p3-cooldown1-rtol", "max-mode"])
def test_plateau_scale_matches_a_plain_python_simulation_of_optax(plateau):
  """The learning-rate scale after each epoch's update_plateau is the reference's."""
  config = _plateau_config(**plateau)
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=1, num_epochs=1)
  advance = jax.jit(functools.partial(optim.update_plateau, config))
  for values in _SEQUENCES:
    values = [(-v if plateau.get("mode") == "max" else v) for v in values]
    state, got = tx.init({"w": jnp.zeros(2)}), []
    for v in values:
      state = advance(state, v)
      got.append(float(optim.current_learning_rate(state, lr_fn)))
    np.testing.assert_allclose(got, reference_scales(values, **plateau), rtol=1e-6,
                               err_msg=str(values))


@pytest.mark.parametrize("key, value", [
    ("factor", 0.999), ("patience", 1), ("cooldown", 0),
    ("rtol", 1.0), ("atol", 0.0), ("min_scale", 0.0), ("min_scale", 1.0),
])
def test_plateau_values_at_the_edge_of_their_documented_range_are_accepted(key, value):
  """factor in (0, 1), patience >= 1, cooldown >= 0, rtol in [0, 1], atol >= 0 (one of
  rtol, atol > 0), min_scale in [0, 1]: the closed ends are valid settings."""
  extra = {"rtol": 0.1} if key == "atol" else {}
  config = _plateau_config(**{key: value, **extra})
  tx = optim.create_optimizer(config, steps_per_epoch=1, num_epochs=1)
  assert isinstance(tx.init({"w": jnp.zeros(2)}), optim.PlateauState)


@pytest.mark.parametrize("plateau, message", [
    # optax compares its count with patience: 2.5 would never cut the rate.
    ({"patience": 2.5}, "reduce_on_plateau.patience must be an integer >= 1, got 2.5"),
    ({"cooldown": -1}, "reduce_on_plateau.cooldown must be an integer >= 0, got -1"),
    ({"cooldown": 1.5}, "reduce_on_plateau.cooldown must be an integer >= 0, got 1.5"),
    ({"rtol": 1.01}, r"reduce_on_plateau.rtol must be in \[0, 1\], got 1.01"),
    ({"atol": -1e-6}, "reduce_on_plateau.atol must be >= 0, got -1e-06"),
    ({"rtol": 0.0, "atol": 0.0}, "reduce_on_plateau: one of rtol, atol must be > 0"),
    ({"min_scale": 1.5}, r"reduce_on_plateau.min_scale must be in \[0, 1\], got 1.5"),
    ({"min_scale": -0.1}, r"reduce_on_plateau.min_scale must be in \[0, 1\], got -0.1"),
    ({"factor": 0.0}, r"reduce_on_plateau.factor must be in \(0, 1\), got 0.0"),
])
def test_plateau_values_just_outside_their_range_are_one_named_error(plateau, message):
  """Each out-of-range value is a JdlError naming the key, the range and the value."""
  with pytest.raises(JdlError, match=message):
    optim.create_optimizer(_plateau_config(**plateau), steps_per_epoch=1, num_epochs=1)


def test_last_update_rate_is_the_rate_of_the_update_before_the_count():
  """last_update=True is learning_rate_fn(count - 1) times the plateau scale."""
  config = _plateau_config(patience=1, factor=0.5)
  config.schedule.update({"name": "step", "decay_every_epochs": 1.0, "factor": 0.1})
  tx = optim.create_optimizer(config, steps_per_epoch=2, num_epochs=3)
  lr_fn = optim.create_learning_rate_fn(config, steps_per_epoch=2, num_epochs=3)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  for _ in range(2):  # Updates 0 and 1 at lr 1.0; the next (2) is at 0.1.
    _, state = tx.update({"w": jnp.ones(2)}, state, params)
  assert float(optim.current_learning_rate(state, lr_fn)) == pytest.approx(0.1)
  assert float(optim.current_learning_rate(state, lr_fn, last_update=True)) == pytest.approx(1.0)
  for value in (1.0, 1.0):  # Reduced once: scale 0.5.
    state = optim.update_plateau(config, state, value)
  assert float(optim.current_learning_rate(state, lr_fn, last_update=True)) == pytest.approx(0.5)


# ---------------------------------------------------------------- paths, masks

_Point = collections.namedtuple("_Point", ["x", "y"])


def test_param_path_joins_keys_indices_and_attribute_names_plainly():
  """Dict keys, list indices and attribute names give 'a/0/b', with no brackets or dots."""
  tree = {"blocks": [{"kernel": 1.0}, {"bias": 2.0}], "head": _Point(3.0, 4.0)}
  paths = [optim.param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
  assert paths == ["blocks/0/kernel", "blocks/1/bias", "head/x", "head/y"]
  labels = optim.freeze_labels(tree, ("blocks/1", "head/y"))
  assert labels == {"blocks": [{"kernel": "trainable"}, {"bias": "frozen"}],
                    "head": _Point("trainable", "frozen")}


_PARAMS = {
    "Conv_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
    "Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
}


def _freeze_config(freeze):
  return ml_collections.ConfigDict({"optimizer": {"freeze": freeze}})


@pytest.mark.parametrize("freeze, expected", [
    ((), []),
    (("Conv_0",), ["Conv_0/bias", "Conv_0/kernel"]),
    ((".*/kernel",), ["Conv_0/kernel", "Dense_0/kernel"]),
    (("Dense_0/bias", "Conv_0/k.*"), ["Conv_0/kernel", "Dense_0/bias"]),
])
def test_frozen_paths_lists_exactly_the_frozen_parameters(freeze, expected):
  """frozen_paths is the explicit list of the leaves the patterns freeze."""
  assert optim.frozen_paths(_freeze_config(freeze), _PARAMS) == expected


def test_keep_frozen_state_without_patterns_keeps_the_new_state():
  """No freeze: every running statistic moves on."""
  new = {"batch_stats": {"bn_0": {"mean": jnp.ones(2)}}}
  old = {"batch_stats": {"bn_0": {"mean": jnp.zeros(2)}}}
  kept = optim.keep_frozen_state(new, old, ())
  np.testing.assert_array_equal(kept["batch_stats"]["bn_0"]["mean"], 1.0)


@pytest.mark.parametrize("freeze, message", [
    ("Conv_0", "optimizer.freeze must be a tuple of regexes, got 'Conv_0'"),
    ((5,), "optimizer.freeze: invalid regex 5"),
    (("Conv_(",), r"optimizer.freeze: invalid regex 'Conv_\('"),
])
def test_a_freeze_value_that_is_not_a_tuple_of_regexes_is_one_jdl_error(freeze, message):
  """A bare string or a non-string pattern is a JdlError, not a TypeError or a per-char
  regex list."""
  with pytest.raises(JdlError, match=message):
    optim.check_freeze_patterns(_freeze_config(freeze), _PARAMS)


# ----------------------------------------------------------------- jdl check


class _Constant(nn.Module):
  """Outputs ``value`` for every example (no parameters)."""
  value: float

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    return jnp.zeros((x.shape[0], 1), jnp.float32) + self.value


def _trainer(model, loss, *, task="classification", loss_name="sparse_categorical_crossentropy",
             num_classes=10, params=None, n=8, label_smoothing=0.0, x=None, y=None):
  x = np.ones((n, 3), np.float32) if x is None else x
  y = np.zeros(n, np.int32) if y is None else y
  trainer = fake_trainer(x, y, task=task, num_classes=num_classes, loss=loss_name,
                         label_smoothing=label_smoothing)
  trainer.model, trainer.loss = model, loss
  trainer.state = types.SimpleNamespace(params=params or {}, model_state={})
  return trainer


def _loss_is_output(outputs, y):
  del y
  return outputs[:, 0]


@pytest.mark.parametrize("loss_name, c", [("sparse_categorical_crossentropy", 10),
                                          ("binary_crossentropy", 2)])
@pytest.mark.parametrize("offset, passes", [(0.98, True), (1.02, False),
                                            (-0.98, True), (-1.02, False)])
def test_initial_loss_passes_within_half_of_ln_c_on_either_side(loss_name, c, offset, passes):
  """Documented: PASS when |loss - ln C| < 0.5 ln C (C = 2 for binary cross-entropy)."""
  ref = math.log(c)
  value = ref + offset * 0.5 * ref
  result = sanity.check_initial_loss(_trainer(_Constant(value), _loss_is_output,
                                              loss_name=loss_name, num_classes=10))
  assert result.values["expected"] == pytest.approx(ref, rel=1e-12)
  assert result.values["loss"] == pytest.approx(value, rel=1e-6)
  assert result.status == (sanity.PASS if passes else sanity.FAIL), result.line()


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _scale_grad(w, s):
  return w


_scale_grad.defvjp(lambda w, s: (w, None), lambda s, _, g: (s * g,))


class _Linear(nn.Module):
  """x @ w + b, whose ``w`` gets its gradient times ``grad_scale``, and a ReLU unit that
  is dead on every input (``dead``: gradient exactly 0, and rightly so)."""
  grad_scale: float = 1.0

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    w = self.param("w", nn.initializers.normal(1.0), (x.shape[-1], 2))
    b = self.param("b", nn.initializers.normal(1.0), (2,))
    dead = self.param("dead", nn.initializers.normal(0.1), (x.shape[-1], 2))
    out = x @ _scale_grad(w, self.grad_scale) + b
    return out + nn.relu(x @ dead - 100.0)


def _gradcheck(grad_scale):
  model = _Linear(grad_scale)
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  y = np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
  params = model.init(jax.random.key(0), jnp.asarray(x))["params"]
  trainer = _trainer(model, lambda out, y: jnp.sum((out - y) ** 2, -1), task="regression",
                     loss_name="mse", params=params, x=x, y=y)
  return sanity.check_gradients(trainer, jnp.asarray(x), jnp.asarray(y))


@pytest.mark.parametrize("delta, passes", [(5e-5, True), (2e-4, False)])
def test_gradcheck_fails_a_leaf_whose_relative_error_reaches_1e_4(delta, passes):
  """A gradient off by a factor 1 + delta has rel = delta / (1 + delta): documented to
  pass below 1e-4. The dead ReLU's leaf (0 against 0) passes."""
  result = _gradcheck(1.0 + delta)
  errors = result.values["errors"]
  assert errors["w"] == pytest.approx(delta / (1 + delta), rel=1e-3)
  assert errors["b"] < 1e-7 and errors["dead"] == 0.0
  assert result.status == (sanity.PASS if passes else sanity.FAIL), result.line()
  assert result.leaves == (() if passes else ("w",))


class _Scalar(nn.Module):
  """One parameter ``w`` (from ``w0``); outputs ``w`` in column ``col`` of ``width``
  columns (the rest ``base``): with a loss that reads it, the loss is ``w`` itself and
  its gradient 1, so Adam moves ``w`` by exactly ``-lr`` each step."""
  w0: float = 1.0
  width: int = 3
  col: int = 1
  base: float = 10.0

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    w = self.param("w", lambda *_: jnp.asarray(self.w0, jnp.float32))
    out = jnp.full((x.shape[0], self.width), self.base, jnp.float32)
    return out.at[:, self.col].set(w)


def _overfit(model, loss, *, steps=30, lr=0.0875, **kw):
  trainer = _trainer(model, loss, params=model.init(jax.random.key(0), jnp.ones((4, 3)))["params"],
                     n=4, **kw)
  return sanity.check_overfit(trainer, trainer.data.train.x, trainer.data.train.y,
                              steps=steps, learning_rate=lr, key=jax.random.key(0))


def _col(i, add=0.0):
  return lambda out, y: out[:, i] + add


def _smoothed_entropy(alpha, c):
  p = np.array([1 - alpha + alpha / c] + [alpha / c] * (c - 1))
  return float(-(p * np.log(p)).sum())


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_overfit_of_a_classifier_stops_at_a_tenth_of_the_way_to_the_floor(alpha):
  """Losses 1 - 0.0875 i above the floor (label smoothing's target entropy, 0 without):
  the first <= 0.1 of the start is i = 11 (0.0375); i = 10 (0.125) is not."""
  floor = _smoothed_entropy(alpha, 3) if alpha else 0.0
  # Column 0 is the argmax (10 > w): every example (label 0) right from the start.
  result = _overfit(_Scalar(), _col(1, floor), label_smoothing=alpha, num_classes=3)
  assert result.status == sanity.PASS and result.values["steps"] == 11, result.line()
  assert result.values["accuracy"] == 1.0
  if alpha:
    assert f"label smoothing's floor ({floor:.3g})" in result.message


def test_overfit_of_a_classifier_needs_every_example_right_too():
  """The loss reaches a tenth of its start, but argmax is wrong on every example: FAIL."""
  # Column 0 (w < 10) is never the argmax, and every label is 0.
  result = _overfit(_Scalar(col=0), _col(0), steps=15, num_classes=3)
  assert result.status == sanity.FAIL and result.values["steps"] is None, result.line()
  assert "0/4 correct" in result.message


def test_overfit_with_another_loss_stops_below_1_percent_of_its_start():
  """Losses 1 - 0.0985 i: 0.015 at i = 10 is not below 0.01 of the start, i = 11 is."""
  result = _overfit(_Scalar(width=1, col=0), _col(0), lr=0.0985, task="regression",
                    loss_name="my_loss", y=np.zeros((4, 1), np.float32))
  assert result.status == sanity.PASS and result.values["steps"] == 11, result.line()


def test_overfit_on_soft_targets_stops_within_1_percent_of_their_entropy():
  """binary_crossentropy on targets 0.25 / 0.75: the least loss is H(0.25) = 0.5623 nats;
  losses H + 1 - 0.0985 i come within 1% of the way to it at i = 11."""
  entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
  y = np.array([[0.25], [0.75], [0.25], [0.75]], np.float32)
  result = _overfit(_Scalar(width=1, col=0), _col(0, entropy), lr=0.0985, task="regression",
                    loss_name="binary_crossentropy", y=y)
  assert result.status == sanity.PASS and result.values["steps"] == 11, result.line()
  assert f"entropy ({entropy:.3g})" in result.message


def _data_results(x, y, **kwargs):
  return {r.name: r for r in sanity.check_data(fake_trainer(x, y, **kwargs))}


_X = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)


@pytest.mark.parametrize("counts, passes", [((19, 19, 2), True), ((21, 21, 2), False)])
def test_data_balance_fails_a_class_more_than_10x_rarer_than_the_most_common(counts, passes):
  """2 of 19 (1/9.5) passes; 2 of 21 (1/10.5) fails."""
  y = np.repeat(np.arange(3), counts).astype(np.int32)
  result = _data_results(_X[:len(y)], y)["data_balance"]
  assert result.status == (sanity.PASS if passes else sanity.FAIL), result.line()


@pytest.mark.parametrize("std, peak, passes", [
    (2e-6, None, True), (5e-7, None, False),  # std > 1e-6.
    (1.0, 100.0, True), (1.0, 100.5, False), (1.0, -100.5, False),  # max |x| <= 100.
])
def test_data_inputs_pass_with_std_above_1e_6_and_no_value_beyond_100(std, peak, passes):
  """Documented: PASS when std > 1e-6 and max |x| <= 100."""
  x = (_X - _X.mean()) / _X.std() * std
  if peak is not None:
    x[3, 1] = peak
  result = _data_results(x, np.arange(64, dtype=np.int32) % 3)["data_inputs"]
  assert result.status == (sanity.PASS if passes else sanity.FAIL), result.line()


def test_data_finite_counts_non_finite_targets_and_held_out_splits():
  """NaN or Inf in any split's inputs or targets fails and is counted by name."""
  y = np.zeros((64, 1), np.float32)
  y_val, x_test = y[:8].copy(), _X[:8].copy()
  y_val[2] = np.nan
  x_test[0, :2] = np.inf
  y_train = y.copy()
  y_train[5] = -np.inf
  result = _data_results(_X, y_train, task="regression",
                         val=pipeline.Split(jnp.asarray(_X[:8]), jnp.asarray(y_val)),
                         test=pipeline.Split(jnp.asarray(x_test), jnp.asarray(y[:8])))
  assert result["data_finite"].failed
  assert result["data_finite"].values["nonfinite"] == {"y_train": 1, "y_val": 1, "x_test": 2}


@pytest.mark.parametrize("kwargs, message", [
    ({"overfit_examples": 0}, "overfit_examples must be >= 1, got 0"),
    ({"gradcheck_examples": 0}, "gradcheck_examples must be >= 1, got 0"),
    ({"overfit_lr": 0.0}, "overfit_lr must be > 0 and finite, got 0.0"),
    ({"overfit_lr": math.inf}, "overfit_lr must be > 0 and finite, got inf"),
])
def test_run_checks_refuses_bad_arguments_with_one_named_error(kwargs, message):
  """Checked before anything is built."""
  with pytest.raises(JdlError, match=message):
    sanity.run_checks(make_config(), **kwargs)


def test_overfit_uses_an_adamw_configs_own_rate():
  """Documented: the config's learning rate when its optimizer is Adam-like (adamw is)."""
  config = jdl.load_config("xor")
  config.optimizer.name, config.optimizer.learning_rate = "adamw", 0.03
  results = sanity.run_checks(config, overfit_steps=1, overfit_examples=4,
                              gradcheck_examples=1)
  message = {r.name: r for r in results}["overfit"].message
  assert "(lr 0.03)" in message and "failed too" not in message, message


# ------------------------------------------------------------------- downloads


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves ``server.files`` (path -> bytes, or ``'garbage'``: a response that is not
  HTTP) and records each request's path in ``server.requests``."""

  def do_GET(self):  # noqa: N802
    self.server.requests.append(self.path)
    body = self.server.files.get(self.path)
    if body == "garbage":
      self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
      return
    if body is None:
      self.send_error(404)
      return
    self.send_response(200)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    del args


@pytest.fixture
def serve():
  """serve(files) starts a server on 127.0.0.1 and returns (base_url, server)."""
  servers = []

  def start(files):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.files, server.requests = files, []
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    servers.append(server)
    return f"http://127.0.0.1:{server.server_address[1]}", server

  yield start
  for server in servers:
    server.shutdown()
    server.server_close()


PAYLOAD = b"\x1f\x8b some idx bytes"
SUM = hashlib.sha256(PAYLOAD).hexdigest()


def _get(tmp_path, mirrors, sums=None, **kwargs):
  return download.download_files("custom", ["f.gz"], tmp_path / "out", mirrors=mirrors,
                                 sha256=sums or {"f.gz": SUM}, **kwargs)


@pytest.mark.parametrize("suffix", ["/sub", "/sub/"])
def test_a_file_url_is_the_mirror_base_slash_the_file_name(tmp_path, serve, suffix):
  """With or without the base's trailing slash, the server is asked for /sub/f.gz."""
  url, server = serve({"/sub/f.gz": PAYLOAD})
  assert _get(tmp_path, [url + suffix])[0].read_bytes() == PAYLOAD
  assert server.requests == ["/sub/f.gz"]


def test_mirrors_are_tried_in_order_and_the_first_good_one_is_used(tmp_path, serve):
  """The second mirror is never contacted when the first delivers."""
  first, first_server = serve({"/f.gz": PAYLOAD})
  second, second_server = serve({"/f.gz": PAYLOAD})
  _get(tmp_path, [first, second])
  assert first_server.requests == ["/f.gz"] and second_server.requests == []


def test_an_upper_case_checksum_is_accepted(tmp_path, serve):
  """Hex digests compare case-insensitively."""
  url, _ = serve({"/f.gz": PAYLOAD})
  assert _get(tmp_path, [url], {"f.gz": SUM.upper()})[0].read_bytes() == PAYLOAD


@pytest.mark.parametrize("bad", ["garbage", "no scheme"])
def test_a_mirror_that_is_not_http_or_not_a_url_falls_through_to_the_next(
    tmp_path, serve, bad):
  """A response that is not HTTP (http.client's BadStatusLine) or a base URL without
  a scheme (urllib's ValueError) is one failed mirror, not a crash."""
  good, _ = serve({"/f.gz": PAYLOAD})
  if bad == "garbage":
    first, _ = serve({"/f.gz": "garbage"})
  else:
    first = "mirror.invalid/mnist/"
  assert _get(tmp_path, [first, good])[0].read_bytes() == PAYLOAD
  with pytest.raises(JdlError, match=r"cannot download the custom file\(s\) f.gz \("):
    _get(tmp_path / "again", [first])


@pytest.fixture
def stalled():
  """A base URL whose server accepts connections and never answers."""
  sock = socket.create_server(("127.0.0.1", 0))
  yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
  sock.close()  # Resets the queued connections: a hung client wakes up.


@pytest.mark.parametrize("how", ["argument", "module default"])
def test_a_stalled_mirror_times_out_and_the_next_one_delivers(tmp_path, serve, stalled,
                                                              monkeypatch, how):
  """timeout (or TIMEOUT_S when not given) bounds the wait for a silent server."""
  good, _ = serve({"/f.gz": PAYLOAD})
  if how == "argument":
    kwargs = {"timeout": 0.3}
  else:
    assert 0 < download.TIMEOUT_S < math.inf  # Never the blocking default of urllib.
    monkeypatch.setattr(download, "TIMEOUT_S", 0.3)
    kwargs = {}
  result = []
  start = time.monotonic()
  thread = threading.Thread(target=lambda: result.append(_get(tmp_path, [stalled, good],
                                                              **kwargs)), daemon=True)
  thread.start()
  thread.join(5.0)
  assert not thread.is_alive(), "the download still waits on the silent mirror"
  assert result and result[0][0].read_bytes() == PAYLOAD
  assert time.monotonic() - start < 5.0


def test_a_checksum_mismatch_leaves_an_existing_folder_as_it_was(tmp_path, serve):
  """No renamed file and no .part file stay behind in a folder that existed."""
  url, _ = serve({"/f.gz": PAYLOAD + b"tampered"})
  (tmp_path / "out").mkdir()
  with pytest.raises(JdlError, match=f"SHA-256 mismatch: expected {SUM}"):
    _get(tmp_path, [url])
  assert list((tmp_path / "out").iterdir()) == []


def test_no_mirrors_is_named_in_the_error(tmp_path):
  with pytest.raises(JdlError, match="no mirrors are known for 'custom'"):
    _get(tmp_path, [])


def test_no_progress_bar_unless_asked_or_on_a_terminal(tmp_path, serve, capsys):
  """progress=None: a bar only when stderr is a terminal (not under pytest)."""
  url, _ = serve({"/f.gz": PAYLOAD})
  _get(tmp_path, [url])
  _get(tmp_path / "b", [url], progress=False)
  assert capsys.readouterr().err == ""


def test_default_data_dir_expands_the_home_directory(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("JDL_DATA_DIR", "~/datasets")
  assert download.default_data_dir("mnist") == tmp_path / "datasets" / "mnist"
  monkeypatch.delenv("JDL_DATA_DIR")
  assert download.default_data_dir("mnist") == tmp_path / ".cache" / "jdl" / "mnist"
