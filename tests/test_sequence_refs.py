"""Proposed tests: recurrent masking/stacking, seq2seq wiring, attention, decoding.

Written to live in tests/ (it imports tests/conftest.py's helpers); each test checks
the code against an independent reference: per-row python loops over the cell,
numpy attention, a python beam search, brute-force enumeration of all outputs.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_variables, rbg_key
from jdl import sequence
from jdl.models import Seq2Seq
from jdl.models import recurrent
from jdl.models.attention import Attention
from jdl.sequence.tasks import Seq2SeqTask

RTOL = ATOL = 1e-5
B, T, F, H = 3, 6, 3, 4
LENGTHS = np.array([6, 3, 1])


def _padded_inputs():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((B, T, F)).astype(np.float32)
  mask = np.arange(T)[None, :] < LENGTHS[:, None]
  return np.where(mask[..., None], x, 7.0).astype(np.float32), mask  # Garbage padding.


def _loop(cell, params, xs):
  """The cell stepped over ``xs [n, F]`` in python: ``(outputs [n, H], final h [H])``."""
  step = jax.jit(cell.apply)
  carry, hs = cell.initialize_carry(1), []
  for x_t in xs:
    carry, h = step({"params": params}, carry, jnp.asarray(x_t)[None])
    hs.append(np.asarray(h[0]))
  return np.stack(hs), np.asarray(cell.hidden(carry)[0])


# ------------------------------------------------------------------ recurrent


@pytest.mark.parametrize("cell_type", ["gru", "lstm"])
def test_bidirectional_is_a_forward_and_a_reversed_run_of_each_true_length(cell_type):
  # Reference: per row, the cell over x[:n] with the forward weights and over
  # x[:n][::-1] with the backward ones. Outputs [fwd, bwd] aligned with the input.
  x, mask = _padded_inputs()
  layer = recurrent.Bidirectional(H, cell=cell_type)
  variables = random_variables(layer, x[:1])
  outputs, final_h = jax.jit(layer.apply)(variables, x, mask)
  chex.assert_shape(outputs, (B, T, 2 * H))
  chex.assert_shape(final_h, (B, 2 * H))
  cell = recurrent.make_cell(cell_type, H)
  p = variables["params"]
  for b, n in enumerate(LENGTHS):
    f_out, f_h = _loop(cell, p["forward"]["cell"], x[b, :n])
    b_out, b_h = _loop(cell, p["backward"]["cell"], x[b, :n][::-1])
    np.testing.assert_allclose(outputs[b, :n], np.concatenate([f_out, b_out[::-1]], -1),
                               rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.asarray(outputs)[b, n:], 0.0)
    np.testing.assert_allclose(final_h[b], np.concatenate([f_h, b_h]), rtol=RTOL, atol=ATOL)


def test_stacked_rnn_masks_every_layer_and_returns_the_last_layers_state():
  x, mask = _padded_inputs()
  stack = recurrent.StackedRNN(hidden=(H, 3), cell="lstm", bidirectional=True)
  variables = random_variables(stack, x[:1])
  apply = jax.jit(stack.apply)
  outputs, final_h = apply(variables, x, mask)
  chex.assert_shape(outputs, (B, T, 2 * 3))
  chex.assert_shape(final_h, (B, 2 * 3))
  np.testing.assert_array_equal(np.asarray(outputs)[~mask], 0.0)
  for b, n in enumerate(LENGTHS):
    out_b, h_b = stack.apply(variables, x[b:b + 1, :n])  # Alone, unpadded.
    np.testing.assert_allclose(outputs[b:b + 1, :n], out_b, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(final_h[b:b + 1], h_b, rtol=RTOL, atol=ATOL)


def test_stacked_dropout_is_between_layers_and_in_training_only():
  x, mask = _padded_inputs()
  drop = recurrent.StackedRNN(hidden=(H, H), cell="gru", dropout_rate=0.5)
  plain = recurrent.StackedRNN(hidden=(H, H), cell="gru")
  variables = random_variables(plain, x[:1])

  @jax.jit
  def run(variables, x, mask, key):
    evaluated = drop.apply(variables, x, mask, train=False)
    (trained, _), sown = drop.apply(variables, x, mask, train=True, rngs={"dropout": key},
                                    mutable=["intermediates"])
    (reference, _), ref_sown = plain.apply(variables, x, mask, mutable=["intermediates"])
    return (evaluated, trained, sown["intermediates"]["outputs_0"][0], reference,
            ref_sown["intermediates"]["outputs_0"][0], plain.apply(variables, x, mask))

  evaluated, trained, layer0, reference, ref_layer0, ref_out = run(variables, x, mask,
                                                                     rbg_key(3))
  chex.assert_trees_all_close(evaluated, ref_out, rtol=RTOL, atol=ATOL)  # Off in eval.
  chex.assert_trees_all_close(layer0, ref_layer0, rtol=RTOL, atol=ATOL)  # Not before layer 0.
  assert not np.allclose(trained, reference, atol=1e-3)  # On between layers in training.


@pytest.mark.parametrize("pad", [np.nan, np.inf])
def test_non_finite_padding_changes_no_output_and_no_gradient(pad):
  # Padding reaches nothing: the outputs, final states and parameter gradients of
  # NaN- or inf-padded features are those of zero-padded ones (a discarded step's
  # zero gradient times a NaN pad made every kernel gradient NaN).
  x, mask = _padded_inputs()
  layer = recurrent.Bidirectional(H, cell="lstm")
  variables = random_variables(layer, x[:1])

  @jax.jit
  def run(variables, x):
    loss = lambda v: jnp.sum(jnp.sin(layer.apply(v, x, mask)[1]))  # noqa: E731
    return layer.apply(variables, x, mask), jax.grad(loss)(variables)

  got = run(variables, np.where(mask[..., None], x, pad).astype(np.float32))
  want = run(variables, np.where(mask[..., None], x, 0.0).astype(np.float32))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(got))
  chex.assert_trees_all_equal(got, want)


def test_tbptt_gradients_of_post_padded_rows_are_those_of_the_unpadded_rows():
  # Lengths divisible by the window: a cut counted on the trailing padding would stop
  # the final state's whole gradient.
  k, lengths = 2, np.array([4, 2, 6])
  rng = np.random.default_rng(2)
  x = rng.standard_normal((3, T, F)).astype(np.float32)
  mask = np.arange(T)[None, :] < lengths[:, None]
  x = np.where(mask[..., None], x, 7.0).astype(np.float32)
  w_h = rng.standard_normal((3, H)).astype(np.float32)
  layer = recurrent.RNN(H, cell="gru", tbptt=k)
  variables = random_variables(layer, x[:1])

  def loss(variables, x, mask, w):
    return jnp.sum(w * layer.apply(variables, x, mask)[1])

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  g_params, g_x = grad(variables, x, mask, w_h)
  want_params = jax.tree.map(jnp.zeros_like, variables)
  for b, n in enumerate(lengths):
    gp, gx = grad(variables, x[b:b + 1, :n], np.ones((1, n), bool), w_h[b:b + 1])
    want_params = jax.tree.map(jnp.add, want_params, gp)
    np.testing.assert_allclose(g_x[b, :n], gx[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(g_x)[b, n:], 0.0)
    assert np.abs(np.asarray(gx)).sum() > 0
  chex.assert_trees_all_close(g_params, want_params, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ attention


@pytest.mark.parametrize("kind", ["bahdanau", "luong_dot", "luong_general"])
def test_attention_against_numpy(kind):
  rng = np.random.default_rng(0)
  q_dim = m_dim = 4
  query = rng.standard_normal((3, q_dim)).astype(np.float32)
  memory = rng.standard_normal((3, 5, m_dim)).astype(np.float32)
  mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]], bool)
  att = Attention(kind, 6 if kind == "bahdanau" else q_dim)
  call = lambda m, q, mem, msk: m(q, m.keys(mem), mem, msk)  # noqa: E731
  shapes = jax.eval_shape(lambda: att.init(rbg_key(0), query, memory, mask, method=call))
  variables = jax.tree.map(
      lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)
  context, weights = jax.jit(lambda v, q, m, k: att.apply(v, q, m, k, method=call))(
      variables, query, memory, mask)
  p = jax.tree.map(np.asarray, variables.get("params", {}))
  if kind == "bahdanau":
    hidden = np.tanh(memory @ p["key_proj"]["kernel"] + p["key_proj"]["bias"]
                     + (query @ p["query_proj"]["kernel"])[:, None, :])
    scores = (hidden @ p["energy"]["kernel"])[..., 0]
  elif kind == "luong_dot":
    scores = np.einsum("bq,bsq->bs", query, memory)
  else:
    scores = np.einsum("bq,bsq->bs", query, memory @ p["key_proj"]["kernel"])
  e = np.where(mask, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
  want = e / np.maximum(e.sum(-1, keepdims=True), 1e-30)  # An all-padding row: zeros.
  np.testing.assert_allclose(weights, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(weights)[2], 0.0)
  np.testing.assert_allclose(context, np.einsum("bs,bsm->bm", want, memory),
                             rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ seq2seq

SRC = np.array([[5, 6, 7, 8, 0], [0, 0, 4, 9, 1], [7, 0, 0, 0, 0]], np.int32)  # post & pre.
TGT_IN = np.array([[2, 5, 6, 7], [2, 8, 3, 0], [2, 4, 4, 9]], np.int32)
PAD, BOS, EOS = 0, 2, 3


def _seq2seq(**fields):
  model = Seq2Seq(**{"src_vocab_size": 10, "tgt_vocab_size": 11, "embed_dim": 6,
                     "hidden": 8, **fields})
  return model, random_variables(model, SRC, TGT_IN)


def test_encoder_output_is_the_bridged_final_state_and_masked_memory():
  model, variables = _seq2seq(attention="bahdanau", cell="lstm")
  enc = jax.jit(lambda v, s: model.apply(v, s, method="encode"))(variables, SRC)
  p = variables["params"]
  emb = jnp.asarray(p["src_embed"]["embedding"])[SRC]
  mask = SRC != PAD
  memory, final_h = recurrent.Bidirectional(4, cell="lstm").apply(
      {"params": p["encoder"]}, emb, mask)
  h0 = np.tanh(np.asarray(final_h) @ p["bridge"]["kernel"] + p["bridge"]["bias"])
  (c, h), feed = enc.carry
  np.testing.assert_array_equal(c, 0.0)  # c_0 = 0.
  np.testing.assert_array_equal(feed, 0.0)
  np.testing.assert_allclose(h, h0, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(enc.memory, memory, rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(enc.src_mask, mask)


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general", "none"])
def test_decoder_flows_query_and_input_feeding(attention):
  # bahdanau queries with the previous state: its weights do not depend on the token
  # being read; luong queries with the new state and feeds its output feature back.
  # In every flow the carry's feed is the output feature: logits = W_o feed + b.
  model, variables = _seq2seq(attention=attention, cell="gru", bidirectional_encoder=False)

  @jax.jit
  def run(variables):
    enc = model.apply(variables, SRC, method="encode")
    step = lambda c, tok: model.apply(variables, c, jnp.full((3,), tok), enc,  # noqa: E731
                                      method="decode_step")
    carry, logits, attn_a = step(enc.carry, 5)
    _, _, attn_b = step(enc.carry, 6)
    other_feed = (enc.carry[0], jnp.ones_like(enc.carry[1]))
    return carry, logits, attn_a, attn_b, step(carry, 4)[1], step(other_feed, 4)[1], \
        step(enc.carry, 4)[1]

  carry, logits, attn_a, attn_b, _, fed_ones, fed_zeros = run(variables)
  out = variables["params"]["output"]
  np.testing.assert_allclose(logits, np.asarray(carry[1]) @ out["kernel"] + out["bias"],
                             rtol=1e-4, atol=1e-4)
  if attention == "none":  # The feature is the cell's state.
    chex.assert_trees_all_close(carry[1], carry[0], rtol=RTOL, atol=ATOL)
  if attention == "bahdanau":
    chex.assert_trees_all_close(attn_a, attn_b, rtol=RTOL, atol=ATOL)
  elif attention == "luong_general":
    assert not np.allclose(attn_a, attn_b, atol=1e-4)
  # Only Luong's input feeding reads the feed.
  assert np.allclose(fed_ones, fed_zeros, atol=1e-6) == (attention != "luong_general")


def test_seq2seq_dropout_is_off_in_evaluation():
  model, variables = _seq2seq(attention="luong_dot", cell="lstm")
  dropped = Seq2Seq(**{**{f: getattr(model, f) for f in ("src_vocab_size", "tgt_vocab_size",
                                                         "embed_dim", "hidden", "attention",
                                                         "cell")}, "dropout_rate": 0.5})

  @jax.jit
  def run(variables, key):
    enc = dropped.apply(variables, SRC, method="encode")
    return (dropped.apply(variables, SRC, TGT_IN), model.apply(variables, SRC, TGT_IN),
            dropped.apply(variables, SRC, TGT_IN, train=True, rngs={"dropout": key}),
            dropped.apply(variables, enc.carry, jnp.full((3,), BOS), enc,
                          method="decode_step")[1],
            model.apply(variables, SRC, TGT_IN[:, :1])[:, 0])

  evaluated, reference, trained, step, step_ref = run(variables, rbg_key(1))
  chex.assert_trees_all_close(evaluated, reference, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(step, step_ref, rtol=RTOL, atol=ATOL)
  assert not np.allclose(trained, reference, atol=1e-3)


def test_seq2seq_metric_loss_and_loss_count_match_the_training_loss():
  # The reported `loss` metric (sum of per-example losses / real target tokens)
  # is the loss that is minimised (a mean over real target tokens).
  model, variables = _seq2seq(attention="bahdanau")
  y = np.array([[BOS, 5, 6, EOS, PAD, PAD], [BOS, 4, EOS, PAD, PAD, PAD],
                [BOS, 7, 8, 9, 5, EOS]], np.int32)
  task = Seq2SeqTask(apply_fn=model.apply, loss=None, metric_names=("token_accuracy",),
                     num_classes=0)
  batch = {"x": jnp.asarray(SRC), "y": jnp.asarray(y), "mask": jnp.array([1.0, 1.0, 0.0])}
  loss, (per, outputs, _) = task.loss_fn(variables["params"], {}, batch, rbg_key(0), False)
  m = task.metrics(task.metric_names, outputs, batch, per)
  assert int(m["loss"]["count"]) == 3 + 2
  assert float(task.loss_count(batch)) == 3 + 2  # Weighs devices' losses (shard_map).
  np.testing.assert_allclose(float(m["loss"]["sum"]) / 5, float(loss), rtol=1e-6)


# ------------------------------------------------------------------ decoding

# A decoder whose next-token distribution depends on the whole prefix: the carry is
# the prefix's code, the logits a random table's row of that code (one table per
# batch row); the attention is a one-hot of the code. A beam's carry, tokens or
# attention left behind when beams are reordered gives another answer.


class _PrefixEnc(NamedTuple):
  carry: jax.Array
  row: jax.Array
  src: jax.Array


def prefix_apply(variables, *args, method):
  vocab = variables["table"].shape[-1]
  if method == "encode":
    (src,) = args
    return _PrefixEnc(jnp.zeros(src.shape[0], jnp.int32), src[:, 0], src)
  carry, token, enc = args
  code = carry * vocab + token + 1
  s = enc.src.shape[1]
  return code, variables["table"][enc.row, code], jax.nn.one_hot(code % s, s)


def _max_code(vocab, steps):
  code = 0
  for _ in range(steps):
    code = code * vocab + vocab
  return code


def _prefix_table(seed, vocab, max_len, rows=2):
  rng = np.random.default_rng(seed)
  return (2.0 * rng.standard_normal((rows, _max_code(vocab, max_len) + 1, vocab))
          ).astype(np.float32)


def _log_probs(table_row, prefix, vocab):
  code = 0
  for tok in (BOS, *prefix):
    code = code * vocab + tok + 1
  logits = table_row[code].astype(np.float64)
  return logits - np.log(np.sum(np.exp(logits - logits.max()))) - logits.max(), code


def _norm(lp, n, alpha):
  return lp if alpha == 0 else lp / n ** alpha


def reference_beam(table_row, k, max_len, alpha, vocab):
  """Beam search as documented, in python: ``(tokens, log_prob, score)``."""
  emit = [v for v in range(vocab) if v not in (PAD, BOS)]
  beams = [((), 0.0, False)]
  kept = None
  for t in range(max_len):
    cands = []
    for j, (toks, lp, fin) in enumerate(beams):
      if fin:
        cands.append((_norm(lp, len(toks), alpha), j * vocab + PAD, toks, lp, True, True))
        continue
      logp, _ = _log_probs(table_row, toks, vocab)
      for v in emit:
        cands.append((_norm(lp + logp[v], t + 1, alpha), j * vocab + v, toks + (v,),
                      lp + logp[v], v == EOS, False))
    cands.sort(key=lambda c: (-c[0], c[1]))
    top = cands[:k]
    new = [c for c in top if c[4] and not c[5]]
    if new:
      best = max(new, key=lambda c: c[0])
      if kept is None or best[0] > kept[0]:
        kept = best
    beams = [(c[2], c[3], c[4]) for c in top]
  final = max(((_norm(lp, len(toks), alpha), toks, lp) for toks, lp, _ in beams),
              key=lambda c: c[0])
  if kept is not None and kept[0] > final[0]:
    return kept[2], kept[3], kept[0]
  return final[1], final[2], final[0]


def _check_hypothesis(result, b, toks, lp, score, table_row, vocab, max_len, src_len):
  n = len(toks)
  np.testing.assert_array_equal(result.tokens[b], list(toks) + [PAD] * (max_len - n))
  assert int(result.lengths[b]) == n
  np.testing.assert_allclose(result.log_probs[b], lp, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(result.scores[b], score, rtol=1e-4, atol=1e-4)
  want_attn = np.zeros((max_len, src_len))
  for t in range(n):
    _, code = _log_probs(table_row, toks[:t], vocab)
    want_attn[t, code % src_len] = 1.0
  np.testing.assert_array_equal(result.attention[b], want_attn)


@pytest.mark.parametrize("k,alpha", [(1, 0.0), (2, 1.0), (3, 0.6), (4, 0.0), (6, 2.0)])
def test_beam_search_against_a_python_beam_search(k, alpha):
  vocab, max_len, src_len = 7, 4, 3
  src = np.array([[0, 1, 1], [1, 1, 1]], np.int32)  # Row b reads table b.
  for seed in range(6):
    table = _prefix_table(seed, vocab, max_len)
    result = sequence.beam_search(prefix_apply, {"table": jnp.asarray(table)}, src,
                                  beam_size=k, max_len=max_len, bos_id=BOS, eos_id=EOS,
                                  pad_id=PAD, length_penalty=alpha)
    for b in range(2):
      toks, lp, score = reference_beam(table[b], k, max_len, alpha, vocab)
      _check_hypothesis(result, b, toks, lp, score, table[b], vocab, max_len, src_len)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_an_exhaustive_beam_finds_the_brute_force_optimum(alpha):
  # 3 emittable ids (1, <eos>, 4), max_len 3: at most 15 candidates a step, so a
  # beam of 16 keeps all of them and must return the best of all outputs.
  vocab, max_len, src_len = 5, 3, 2
  src = np.array([[0, 1], [1, 1]], np.int32)
  emit = (1, EOS, 4)
  for seed in range(4):
    table = _prefix_table(100 + seed, vocab, max_len)
    result = sequence.beam_search(prefix_apply, {"table": jnp.asarray(table)}, src,
                                  beam_size=16, max_len=max_len, bos_id=BOS, eos_id=EOS,
                                  length_penalty=alpha)
    for b in range(2):
      outputs = []
      for n in range(1, max_len + 1):
        for toks in itertools.product(emit, repeat=n):
          if EOS in toks[:-1] or (n < max_len and toks[-1] != EOS):
            continue
          lp = sum(_log_probs(table[b], toks[:t], vocab)[0][toks[t]] for t in range(n))
          outputs.append((_norm(lp, n, alpha), toks, lp))
      score, toks, lp = max(outputs)
      _check_hypothesis(result, b, toks, lp, score, table[b], vocab, max_len, src_len)


def test_greedy_against_a_python_greedy():
  vocab, max_len, src_len = 7, 4, 3
  src = np.array([[0, 1, 1], [1, 1, 1]], np.int32)
  emit = [v for v in range(vocab) if v not in (PAD, BOS)]
  for seed in range(6):
    table = _prefix_table(200 + seed, vocab, max_len)
    result = sequence.greedy_decode(prefix_apply, {"table": jnp.asarray(table)}, src,
                                    max_len=max_len, bos_id=BOS, eos_id=EOS)
    for b in range(2):
      toks = ()
      while len(toks) < max_len and (not toks or toks[-1] != EOS):
        logp, _ = _log_probs(table[b], toks, vocab)
        toks += (max(emit, key=lambda v: logp[v]),)
      n = len(toks)
      np.testing.assert_array_equal(result.tokens[b], list(toks) + [PAD] * (max_len - n))
      assert int(result.lengths[b]) == n
      want_attn = np.zeros((max_len, src_len))
      for t in range(n):
        want_attn[t, _log_probs(table[b], toks[:t], vocab)[1] % src_len] = 1.0
      np.testing.assert_array_equal(result.attention[b], want_attn)


def _prev_token_apply(variables, *args, method):
  """Next-token log-probabilities from the previous token only (a [V, V] table)."""
  if method == "encode":
    (src,) = args
    return _PrefixEnc(jnp.zeros(src.shape[0], jnp.int32), src[:, 0], src)
  carry, token, enc = args
  s = enc.src.shape[1]
  return carry, variables["table"][token], jnp.full((token.shape[0], s), 1.0 / s)


def test_a_finished_hypothesis_is_ranked_at_its_own_length():
  # alpha=1, k=2, ids: c=1, A=4, B=5. Step 0: [A] -0.80, [<eos>] -0.92. Step 1:
  # [A, B] -0.75 and [A, c] -0.77 a token push [<eos>] (-0.92) out; ranked at length 2
  # instead of 1 it would score -0.46 and push [A, c] out. Step 2: [A, c, <eos>]
  # (-0.51 a token) is the best output; [A, B, ...] fall to -1.09.
  c, a, b = 1, 4, 5
  table = np.full((6, 6), 1e-9)
  rows = {BOS: {EOS: 0.40, a: 0.45, b: 0.15}, a: {b: 0.5, c: 0.48, EOS: 0.02},
          b: {t: 1.0 for t in range(6)}, c: {EOS: 0.99, a: 0.01}}
  for prev, probs in rows.items():
    for tok, p in probs.items():
      table[prev, tok] = p
  table = np.log(table / table.sum(1, keepdims=True)).astype(np.float32)
  result = sequence.beam_search(_prev_token_apply, {"table": jnp.asarray(table)},
                                np.zeros((1, 2), np.int32), beam_size=2, max_len=3,
                                bos_id=BOS, eos_id=EOS, length_penalty=1.0)
  np.testing.assert_array_equal(result.tokens, [[a, c, EOS]])
  want = table[BOS, a] + table[a, c] + table[c, EOS]
  np.testing.assert_allclose(result.scores, [want / 3], rtol=1e-5)
