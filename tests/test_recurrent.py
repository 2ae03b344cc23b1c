"""Tests of jdl.models.recurrent and cells: equations, scans, masks, inits, counts."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import models
from conftest import random_variables, rbg_key
from jdl.errors import JdlError
from jdl.models import recurrent
from jdl.summary import count_params

B, T, F, H = 3, 6, 4, 5
RTOL = ATOL = 1e-5


_key = rbg_key
pytestmark = pytest.mark.usefixtures("strict_promotion")


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


# numpy references of exactly the textbook equations, one step each. `p` holds the
# module's own parameters; W_g [h, x] is the stacked matrix [W_h^g; W_x^g].
def _gate(p, g, h, x, n):
  wx, wh, b = (np.asarray(p["input"]["kernel"]), np.asarray(p["recurrent"]["kernel"]),
               np.asarray(p["input"]["bias"]))
  cols = slice(g * n, (g + 1) * n)
  w = np.concatenate([wh[:, cols], wx[:, cols]], axis=0)  # [H + F, H]
  return np.concatenate([h, x], axis=-1) @ w + b[cols]


def simple_ref(p, h, x, activation):
  f = np.tanh if activation == "tanh" else (lambda z: np.maximum(z, 0.0))
  wxh, whh, b = (np.asarray(p["input"]["kernel"]), np.asarray(p["recurrent"]["kernel"]),
                 np.asarray(p["input"]["bias"]))
  h = f(h @ whh + x @ wxh + b)
  return h, h


def lstm_ref(p, carry, x):
  c_prev, h_prev = carry
  n = h_prev.shape[-1]
  i = _sigmoid(_gate(p, 0, h_prev, x, n))
  f = _sigmoid(_gate(p, 1, h_prev, x, n))
  c_tilde = np.tanh(_gate(p, 2, h_prev, x, n))
  c = f * c_prev + i * c_tilde
  o = _sigmoid(_gate(p, 3, h_prev, x, n))
  h = o * np.tanh(c)
  return (c, h), h


def gru_ref(p, h_prev, x):
  n = h_prev.shape[-1]
  wx, wh = np.asarray(p["input"]["kernel"]), np.asarray(p["recurrent"]["kernel"])
  bx, bh = np.asarray(p["input"]["bias"]), np.asarray(p["recurrent"]["bias"])
  blk = lambda a, g: a[..., g * n:(g + 1) * n]  # noqa: E731
  xp, hp = x @ wx + bx, h_prev @ wh + bh
  r = _sigmoid(blk(xp, 0) + blk(hp, 0))
  z = _sigmoid(blk(xp, 1) + blk(hp, 1))
  cand = np.tanh(blk(xp, 2) + r * blk(hp, 2))
  h = (1.0 - z) * cand + z * h_prev
  return h, h


CELL_CASES = {
    "simple_tanh": (recurrent.SimpleRNNCell(H, activation="tanh"),
                    lambda p, c, x: simple_ref(p, c, x, "tanh")),
    "simple_relu": (recurrent.SimpleRNNCell(H, activation="relu", recurrent_init="identity"),
                    lambda p, c, x: simple_ref(p, c, x, "relu")),
    "lstm": (recurrent.LSTMCell(H, forget_bias=1.0), lstm_ref),
    "gru": (recurrent.GRUCell(H), gru_ref),
}


def _random_like(tree, seed, scale=1.0):
  # numpy draws: eager jax.random calls would each compile on first use.
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda l: jnp.asarray(scale * rng.standard_normal(l.shape), jnp.float32), tree)


@pytest.mark.parametrize("cell,ref", CELL_CASES.values(), ids=CELL_CASES.keys())
def test_cell_step_matches_numpy_equations(cell, ref):
  x = _random_like(jnp.zeros((B, F)), 1)
  carry = _random_like(cell.initialize_carry(B), 2)
  params = jax.jit(cell.init)(_key(0), carry, x)["params"]
  # Random biases too, so the test sees every bias (they start at zeros / forget_bias).
  params = jax.tree.map(jnp.add, params, _random_like(params, 3, scale=0.3))
  new_carry, h = jax.jit(cell.apply)({"params": params}, carry, x)
  np_carry = jax.tree.map(np.asarray, carry)
  want_carry, want_h = ref(params, np_carry, np.asarray(x))
  chex.assert_trees_all_close(h, want_h, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(new_carry, want_carry, rtol=RTOL, atol=ATOL)


def test_lstm_forget_bias_init():
  cell = recurrent.LSTMCell(H, forget_bias=1.5)
  x = jnp.zeros((1, F))
  b = jax.jit(cell.init)(_key(0), cell.initialize_carry(1), x)["params"]["input"]["bias"]
  np.testing.assert_array_equal(b, np.r_[np.zeros(H), np.full(H, 1.5), np.zeros(2 * H)])


@pytest.mark.parametrize("cell_type", ["simple", "lstm", "gru"])
def test_rnn_matches_python_loop(cell_type):
  # unroll changes the loop's schedule, not its result.
  rnn = recurrent.RNN(H, cell=cell_type, unroll=2 if cell_type == "gru" else 1)
  x = _random_like(jnp.zeros((B, T, F)), 1)
  variables = random_variables(rnn, x)
  outputs, final_h = jax.jit(rnn.apply)(variables, x)
  chex.assert_shape(outputs, (B, T, H))
  chex.assert_shape(final_h, (B, H))

  cell = recurrent.make_cell(cell_type, H)
  cell_vars = {"params": variables["params"]["cell"]}
  step = jax.jit(cell.apply)
  carry, hs = cell.initialize_carry(B), []
  for t in range(T):
    carry, h = step(cell_vars, carry, x[:, t])
    hs.append(h)
  chex.assert_trees_all_close(outputs, jnp.stack(hs, axis=1), rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(final_h, cell.hidden(carry), rtol=RTOL, atol=ATOL)

  if cell_type != "lstm":
    return  # reverse=True checked once; the masking tests cover it for the GRU.
  # reverse=True is the forward scan of the time-reversed sequence, re-reversed.
  back = recurrent.RNN(H, cell=cell_type, reverse=True)
  out_b, h_b = jax.jit(back.apply)(variables, x)
  out_f, h_f = jax.jit(rnn.apply)(variables, x[:, ::-1])
  chex.assert_trees_all_close(out_b, out_f[:, ::-1], rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(h_b, h_f, rtol=RTOL, atol=ATOL)


LENGTHS = np.array([6, 3, 1])


def _padded_inputs():
  x = np.asarray(_random_like(jnp.zeros((B, T, F)), 1))
  mask = np.arange(T)[None, :] < LENGTHS[:, None]
  x_padded = np.where(mask[..., None], x, 7.0)  # Garbage in the padding on purpose.
  return x_padded, mask


@pytest.mark.parametrize("layer", [
    recurrent.RNN(H, cell="lstm"),
    recurrent.RNN(H, cell="gru", reverse=True),
    recurrent.Bidirectional(H, cell="lstm"),
], ids=["lstm", "gru_reverse", "bi_lstm"])
def test_padding_does_not_change_outputs(layer):
  x, mask = _padded_inputs()
  variables = random_variables(layer, x[:1])
  apply = jax.jit(layer.apply)
  outputs, final_h = apply(variables, x, mask)
  np.testing.assert_array_equal(np.asarray(outputs)[~mask], 0.0)
  # Padding before the sequence ('pre', Keras' default) works the same way.
  x_pre = np.stack([np.roll(row, T - n, axis=0) for row, n in zip(x, LENGTHS)])
  out_pre, h_pre = apply(variables, x_pre, mask[:, ::-1])
  for b, n in enumerate(LENGTHS):
    chex.assert_trees_all_close(out_pre[b, T - n:], outputs[b, :n], rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(h_pre, final_h, rtol=RTOL, atol=ATOL)
  for b, n in enumerate(LENGTHS):
    if n == T:
      continue  # Nothing to unpad.
    # Each sequence alone, unpadded: a different (shorter) shape.
    out_b, h_b = layer.apply(variables, x[b:b + 1, :n])
    chex.assert_trees_all_close(outputs[b:b + 1, :n], out_b, rtol=RTOL, atol=ATOL)
    chex.assert_trees_all_close(final_h[b:b + 1], h_b, rtol=RTOL, atol=ATOL)


def test_one_compilation_for_all_lengths_in_a_bucket():
  layer = recurrent.RNN(H, cell="gru")
  x, _ = _padded_inputs()
  variables = random_variables(layer, x)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def run(variables, x, mask):
    return layer.apply(variables, x, mask)

  for lengths in ([6, 3, 1], [2, 2, 2], [5, 6, 4]):
    run(variables, x, np.arange(T)[None, :] < np.array(lengths)[:, None])


@pytest.mark.parametrize("cell_type,count", [
    ("simple", H * F + H * H + H),
    ("lstm", 4 * (H * (H + F) + H)),
    ("gru", 3 * (H * F + H * H + 2 * H)),
])
def test_parameter_counts(cell_type, count):
  shapes = jax.eval_shape(recurrent.RNN(H, cell=cell_type).init, _key(0),
                          jnp.zeros((1, T, F)))
  assert count_params(shapes["params"]) == count
  bi = jax.eval_shape(recurrent.Bidirectional(H, cell=cell_type).init, _key(0),
                      jnp.zeros((1, T, F)))
  assert count_params(bi["params"]) == 2 * count


@pytest.mark.parametrize("cell_type,blocks", [("simple", 1), ("lstm", 4), ("gru", 3)])
@pytest.mark.parametrize("init,gain", [("identity", 1.0), ("identity", 0.5),
                                       ("orthogonal", 1.0), ("orthogonal", 2.0)])
def test_recurrent_initializers(cell_type, blocks, init, gain):
  cell = recurrent.make_cell(cell_type, H, recurrent_init=init, gain=gain)
  params = cell.init(_key(0), cell.initialize_carry(1), jnp.zeros((1, F)))["params"]
  w = np.asarray(params["recurrent"]["kernel"])
  assert w.shape == (H, blocks * H)
  for g in range(blocks):
    block = w[:, g * H:(g + 1) * H]
    if init == "identity":
      np.testing.assert_array_equal(block, gain * np.eye(H))
    else:
      np.testing.assert_allclose(block.T @ block, gain**2 * np.eye(H), atol=1e-5)


def test_gradient_reaches_early_inputs():
  # The vanishing-gradient figure needs |dL/dx_t| for every t.
  model = recurrent.SequenceRegressor(hidden=(H,), cell="simple")
  x = _random_like(jnp.zeros((2, 20, 2)), 1)
  variables = random_variables(model, x)
  grads = jax.grad(lambda x: jnp.sum(model.apply(variables, x)))(x)
  per_step = np.abs(np.asarray(grads)).sum(axis=(0, 2))
  assert np.all(np.isfinite(per_step)) and per_step[0] > 0


# ------------------------------------------------------------ truncated BPTT

K = 2  # tbptt window; with T = 6 and LENGTHS (6, 3, 1): 2, 1 and 0 cuts per row.


def truncated_bptt_ref(cell, cell_vars, x, k, reverse):
  """A plain Python loop of the cell over ``x [1, n, F]`` (no padding), the carry
  passed through ``stop_gradient`` before scan step ``s`` when ``s % k == 0``."""
  carry, hs = cell.initialize_carry(x.shape[0]), {}
  order = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
  for s, t in enumerate(order):
    if k and s > 0 and s % k == 0:
      carry = jax.lax.stop_gradient(carry)
    carry, hs[t] = cell.apply(cell_vars, carry, x[:, t])
  return jnp.stack([hs[t] for t in range(x.shape[1])], axis=1), cell.hidden(carry)


def _loss(outputs, final_h, w_out, w_h):
  return jnp.sum(w_out * outputs) + jnp.sum(w_h * jnp.tanh(final_h))


@pytest.mark.parametrize("cell_type,reverse", [
    ("simple", False), ("lstm", False), ("gru", True),
], ids=["simple", "lstm", "gru_reverse"])
def test_tbptt_matches_truncated_python_loop(cell_type, reverse):
  x, mask = _padded_inputs()
  w_out = _random_like(jnp.zeros((B, T, H)), 4)
  w_h = _random_like(jnp.zeros((B, H)), 5)
  full = recurrent.RNN(H, cell=cell_type, reverse=reverse)
  trunc = recurrent.RNN(H, cell=cell_type, reverse=reverse, tbptt=K)
  variables = random_variables(full, x)

  @jax.jit
  def run(variables, x):
    def loss(layer, variables, x):
      outputs, final_h = layer.apply(variables, x, mask)
      return _loss(outputs, final_h, w_out, w_h), (outputs, final_h)
    grad = jax.grad(loss, argnums=(1, 2), has_aux=True)
    return grad(full, variables, x), grad(trunc, variables, x)

  (g_full, fwd_full), (g_trunc, fwd_trunc) = run(variables, x)
  # 1. tbptt changes gradients only: the forward values are bitwise equal.
  chex.assert_trees_all_equal(fwd_trunc, fwd_full)

  # 2. Against the loop, one unpadded row at a time; padded steps get no gradient.
  cell = recurrent.make_cell(cell_type, H)

  @jax.jit
  def ref_grad(cell_vars, x_b, w_out_b, w_h_b):
    def loss(cell_vars, x_b):
      outputs, final_h = truncated_bptt_ref(cell, cell_vars, x_b, K, reverse)
      return _loss(outputs, final_h, w_out_b, w_h_b)
    return jax.grad(loss, argnums=(0, 1))(cell_vars, x_b)

  cell_vars = {"params": variables["params"]["cell"]}
  want_params = jax.tree.map(jnp.zeros_like, cell_vars)
  want_x = np.zeros_like(x)
  for b, n in enumerate(LENGTHS):
    gp, gx = ref_grad(cell_vars, x[b:b + 1, :n], w_out[b:b + 1, :n], w_h[b:b + 1])
    want_params = jax.tree.map(jnp.add, want_params, gp)
    want_x[b, :n] = gx[0]
  chex.assert_trees_all_close(g_trunc[0]["params"]["cell"], want_params["params"],
                              rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(g_trunc[1], want_x, rtol=1e-4, atol=1e-5)
  # The truncation is visible: row 0 (two cuts) differs from full BPTT.
  assert not np.allclose(g_trunc[1][0], g_full[1][0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_tbptt_final_state_gradient_window(reverse):
  # A loss on the final state only: inputs before the last cut get exactly zero
  # gradient; those in the last window get full BPTT's gradient.
  t_len, k = 11, 4  # Cuts before scan steps 4 and 8: the last window is 3 steps.
  x = _random_like(jnp.zeros((2, t_len, F)), 1)
  w_h = _random_like(jnp.zeros((2, H)), 5)
  layers = [recurrent.RNN(H, cell="lstm", reverse=reverse, tbptt=tb)
            for tb in (0, k)]
  variables = random_variables(layers[0], x)

  @jax.jit
  def grads(variables, x):
    return [jax.grad(lambda x, l=l: jnp.sum(w_h * l.apply(variables, x)[1]))(x)
            for l in layers]

  g_full, g_trunc = (np.asarray(g) for g in grads(variables, x))
  if reverse:  # Scan order is time reversed.
    g_full, g_trunc = g_full[:, ::-1], g_trunc[:, ::-1]
  np.testing.assert_array_equal(g_trunc[:, :8], 0.0)
  np.testing.assert_allclose(g_trunc[:, 8:], g_full[:, 8:], rtol=1e-5, atol=1e-6)
  assert np.all(np.abs(g_full[:, :8]).sum(axis=-1) > 0)  # Cut, not vanished.


def test_tbptt_zero_is_full_bptt():
  # tbptt=0 is the full gradient (the loop without cuts); a window longer than the
  # sequence cuts nothing and gives the same gradients bit for bit.
  x = _random_like(jnp.zeros((B, T, F)), 1)
  layers = [recurrent.RNN(H, cell="gru", tbptt=tb) for tb in (0, T)]
  variables = random_variables(layers[0], x)
  cell = recurrent.make_cell("gru", H)

  @jax.jit
  def grads(variables, x):
    def loss(outputs, final_h):
      return jnp.sum(jnp.sin(outputs)) + jnp.sum(final_h ** 2)
    got = [jax.grad(lambda v, x, l=l: loss(*l.apply(v, x)), argnums=(0, 1))(variables, x)
           for l in layers]
    ref = jax.grad(lambda cv, x: loss(*truncated_bptt_ref(cell, cv, x, 0, False)),
                   argnums=(0, 1))({"params": variables["params"]["cell"]}, x)
    return got, ref

  (g0, g_long), (ref_p, ref_x) = grads(variables, x)
  chex.assert_trees_all_equal(g_long, g0)
  chex.assert_trees_all_close(g0[0]["params"]["cell"], ref_p["params"], rtol=1e-4, atol=1e-5)
  chex.assert_trees_all_close(g0[1], ref_x, rtol=1e-4, atol=1e-5)


def test_tbptt_reaches_the_models():
  # Through create_model (as --config.model.tbptt=5 does) down to the scans of a
  # two-layer stack: the regressor reads the final state, so only the last window
  # of the 20 steps gets gradients.
  model = models.create_model({"name": "seq_rnn", "hidden": [H, 3], "cell": "simple",
                               "tbptt": 5}, num_outputs=1)
  assert model.tbptt == 5
  x = _random_like(jnp.zeros((2, 20, 2)), 1)
  variables = random_variables(model, x)
  grads = jax.jit(jax.grad(lambda x: jnp.sum(model.apply(variables, x))))(x)
  per_step = np.abs(np.asarray(grads)).sum(axis=(0, 2))
  np.testing.assert_array_equal(per_step[:15], 0.0)
  assert np.all(per_step[15:] > 0)
  for name, fields in [("text_rnn", {"vocab_size": 5}),
                       ("seq2seq", {"src_vocab_size": 5, "tgt_vocab_size": 5})]:
    assert models.create_model({"name": name, "tbptt": 3, **fields},
                               num_outputs=2).tbptt == 3


def test_pool_sequence():
  out = _random_like(jnp.zeros((2, 4, 3)), 1)
  mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)
  o = np.asarray(out)
  chex.assert_trees_all_close(recurrent.pool_sequence(out, mask, "mean"),
                              np.stack([o[0, :2].mean(0), np.zeros(3)]), rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(recurrent.pool_sequence(out, mask, "max"),
                              np.stack([o[0, :2].max(0), np.zeros(3)]), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("fields,count", [
    # Closed forms: embedding, recurrent layers, head.
    ({"hidden": [H, 3]}, 12 * 4 + 2 * 4 * (H * (H + 4) + H) + 2 * 4 * (3 * (3 + 2 * H) + 3)
     + (2 * 3 * 2 + 2)),
    ({"hidden": [H], "cell": "gru", "bidirectional": False, "pooling": "max"},
     12 * 4 + 3 * (H * 4 + H * H + 2 * H) + (H * 2 + 2)),
    ({"hidden": [H], "cell": "simple", "pooling": "mean"},
     12 * 4 + 2 * (H * 4 + H * H + H) + (2 * H * 2 + 2)),
], ids=["bi_lstm_last", "gru_max", "bi_simple_mean"])
def test_text_classifier_parameter_count(fields, count):
  model = models.create_model({"name": "text_rnn", "vocab_size": 12, "embed_dim": 4,
                               **fields}, num_outputs=2)
  shapes = jax.eval_shape(model.init, _key(0), jnp.zeros((2, 6), jnp.int32))
  assert count_params(shapes["params"]) == count


def test_text_classifier_padding():
  x = np.array([[5, 6, 7, 8, 0, 0], [9, 4, 0, 0, 0, 0]], np.int32)
  model = models.create_model({"name": "text_rnn", "vocab_size": 12, "embed_dim": 4,
                               "hidden": [H], "cell": "gru"}, num_outputs=2)
  variables = random_variables(model, x)
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  chex.assert_shape(logits, (2, 2))
  # The same sequences with less padding give the same logits.
  chex.assert_trees_all_close(apply(variables, x[:, :4]), logits, rtol=RTOL, atol=ATOL)


def test_conv1d_text_padding_exact():
  model = models.create_model(
      {"name": "text_conv1d", "vocab_size": 10, "embed_dim": 3, "filters": [4, 4],
       "kernel_size": 3, "pool_size": 2, "dense": [5]}, num_outputs=3)
  assert model.min_length() == 3 * 2 + 3 - 1
  lengths = np.array([16, 11])
  x = np.where(np.arange(16)[None, :] < lengths[:, None],
               np.arange(16)[None, :] % 9 + 1, 0).astype(np.int32)
  variables = random_variables(model, x)
  apply = jax.jit(model.apply)
  logits = apply(variables, x)
  # Row 1 alone and unpadded (length 11: its last pool window is incomplete).
  chex.assert_trees_all_close(apply(variables, x[1:, :11]), logits[1:],
                              rtol=RTOL, atol=ATOL)
  assert count_params(variables["params"]) == (10 * 3 + (3 * 3 * 4 + 4) + (3 * 4 * 4 + 4)
                                               + (4 * 5 + 5) + (5 * 3 + 3))
  with pytest.raises(JdlError, match="receptive field"):
    model.apply(variables, x[:, :7])
  # 'pre' padding, by any number of pads (odd counts shift the pool windows).
  for pads in range(1, 6):
    pre = np.concatenate([np.zeros((2, pads), np.int32), x[:, :11]], axis=1)
    chex.assert_trees_all_close(apply(variables, pre)[1:], logits[1:], rtol=RTOL, atol=ATOL)


def test_sequence_regressor_mixed_precision():
  model = models.create_model({"name": "seq_rnn", "hidden": [H], "cell": "lstm",
                               "dtype": "bfloat16"}, num_outputs=1)
  x = _random_like(jnp.zeros((2, T, 2)), 1)
  variables = model.init(_key(0), x)
  out = model.apply(variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 1)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))


@pytest.mark.parametrize("kwargs,match", [
    ({"cell": "rnn"}, "unknown cell"),
    ({"recurrent_init": "eye"}, "unknown recurrent_init"),
    ({"gain": 0.0}, "gain"),
    # The simple cell's own list, not every activation jdl knows (gelu was offered).
    ({"cell": "simple", "activation": "sigmoid"},
     r"^unknown activation 'sigmoid'; valid names: relu, tanh$"),
    ({"forget_bias": "nan"}, r"^forget_bias must be a finite number, got 'nan'$"),
    ({"gain": float("inf")}, r"^gain must be a finite number, got inf$"),
    ({"unroll": 0}, "unroll"),
    ({"tbptt": -1}, "tbptt must be a non-negative integer"),
    ({"tbptt": 2.5}, "tbptt must be a non-negative integer"),
    ({"tbptt": True}, "tbptt must be a non-negative integer"),
])
def test_bad_fields(kwargs, match):
  with pytest.raises(JdlError, match=match):
    recurrent.RNN(H, **kwargs)


@pytest.mark.parametrize("name,fields", [
    ("seq_rnn", {}), ("text_rnn", {"vocab_size": 5}),
    ("seq2seq", {"src_vocab_size": 5, "tgt_vocab_size": 5}),
])
def test_bad_tbptt_in_model_config(name, fields):
  # Refused when the model is built, not at its first call.
  with pytest.raises(JdlError, match=r"tbptt must be a non-negative integer.*got -3"):
    models.create_model({"name": name, "tbptt": -3, **fields}, num_outputs=2)
  with pytest.raises(JdlError, match="tbptt"):
    recurrent.Bidirectional(H, tbptt=-1)
  with pytest.raises(JdlError, match="tbptt"):
    recurrent.StackedRNN((H,), tbptt=-1)


def test_bad_model_config():
  with pytest.raises(JdlError, match="pooling"):
    models.create_model({"name": "text_rnn", "vocab_size": 5, "pooling": "sum"},
                        num_outputs=2)
  with pytest.raises(JdlError, match="vocab_size"):
    models.create_model({"name": "text_rnn"}, num_outputs=2)


@pytest.mark.parametrize("name,fields", [
    ("text_rnn", {"vocab_size": 12, "hidden": [4, 4], "pooling": "max"}),
    ("text_conv1d", {"vocab_size": 12, "filters": [4, 4], "kernel_size": 3, "pool_size": 2}),
    ("seq_rnn", {"cell": "gru"}),
])
def test_mixed_precision_traces(name, fields):
  model = models.create_model({"name": name, "dtype": "bfloat16", **fields}, num_outputs=2)
  x = jnp.ones((2, 12, 3)) if name == "seq_rnn" else jnp.ones((2, 12), jnp.int32)
  variables = jax.eval_shape(model.init, _key(0), x)
  out = jax.eval_shape(model.apply, variables, x)
  assert out.dtype == jnp.bfloat16 and out.shape == (2, 2)


@pytest.mark.parametrize("spec", [
    {"name": "text_rnn", "vocab_size": 12, "embed_dim": 4, "hidden": [H, 3],
     "bidirectional": False},
    {"name": "seq_rnn", "hidden": [H, 3]},
], ids=["text_rnn", "seq_rnn"])
def test_each_layers_outputs_are_sown(spec):
  # Sown under the submodule's own name (layer_i), they were a scope clash: any
  # apply with the intermediates collection mutable (diagnostics, activity_l1) failed.
  model = models.create_model(spec, num_outputs=2)
  x = (np.array([[5, 6, 7, 0], [9, 4, 0, 0]], np.int32) if spec["name"] == "text_rnn"
       else np.ones((2, 4, 2), np.float32))
  variables = random_variables(model, x)
  _, sown = model.apply(variables, x, mutable=["intermediates"])
  outputs = sown["intermediates"]["rnn"]
  chex.assert_shape(outputs["outputs_0"][0], (2, 4, H))  # Each layer's [batch, time, width].
  chex.assert_shape(outputs["outputs_1"][0], (2, 4, 3))
