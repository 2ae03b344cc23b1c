"""Tests of jdl.models.seq2seq and jdl.sequence.decoding."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdl import models
from jdl import sequence
from conftest import rbg_key
from jdl.errors import JdlError
from jdl.models import Seq2Seq
from jdl.summary import count_params

PAD, BOS, EOS = 0, 2, 3
SRC = np.array([[5, 6, 7, 8, 0], [4, 9, 0, 0, 0], [7, 0, 0, 0, 0]], np.int32)
TGT_IN = np.array([[BOS, 5, 6, 7], [BOS, 8, 3, 0], [BOS, 4, 4, 9]], np.int32)
RTOL = ATOL = 1e-5


_key = rbg_key
pytestmark = pytest.mark.usefixtures("strict_promotion")


def _model(**fields):
  fields = {"src_vocab_size": 10, "tgt_vocab_size": 11, "embed_dim": 6, "hidden": 8,
            **fields}
  return Seq2Seq(**fields)


def _init(model, seed=0):
  # Random parameters of the model's shapes: these tests need generic weights, not
  # the initializers, and skipping `init` skips its compilation (2 s a model).
  shapes = jax.eval_shape(model.init, _key(0), SRC, TGT_IN)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


VARIANTS = {
    "bahdanau_lstm": {"attention": "bahdanau"},
    "luong_dot_gru": {"attention": "luong_dot", "cell": "gru"},
    "luong_general_uni": {"attention": "luong_general", "bidirectional_encoder": False},
    "none": {"attention": "none"},
}
_VARIABLES = {}


def _variant(name):
  """The model of a variant and its variables, initialised once per session."""
  model = _model(**VARIANTS[name])
  if name not in _VARIABLES:
    _VARIABLES[name] = _init(model)
  return model, _VARIABLES[name]


@pytest.mark.parametrize("name", VARIANTS)
def test_teacher_forcing_equals_decode_steps_and_attention_is_masked(name):
  model, variables = _variant(name)

  @jax.jit  # One compilation for all three computations.
  def run(variables, src, tgt_in):
    logits, state = model.apply(variables, src, tgt_in, mutable="intermediates")
    enc = model.apply(variables, src, method="encode")
    carry, out, attn = enc.carry, [], []
    for t in range(tgt_in.shape[1]):
      carry, lg, a = model.apply(variables, carry, tgt_in[:, t], enc, method="decode_step")
      out.append(lg)
      attn.append(a)
    wider = jnp.pad(src, ((0, 0), (0, 3)))  # More source padding.
    return (logits, state["intermediates"]["attention"][0], jnp.stack(out, 1),
            jnp.stack(attn, 1), model.apply(variables, wider, tgt_in))

  logits, sown, step_logits, attn, wider_logits = run(variables, SRC, TGT_IN)
  chex.assert_shape(logits, (3, 4, 11))
  chex.assert_trees_all_close(step_logits, logits, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(sown, attn, rtol=RTOL, atol=ATOL)
  chex.assert_trees_all_close(wider_logits, logits, rtol=RTOL, atol=ATOL)
  chex.assert_shape(attn, (3, 4, SRC.shape[1]))
  real = np.broadcast_to((SRC != PAD)[:, None, :], attn.shape)
  attn = np.asarray(attn)
  np.testing.assert_array_equal(attn[~real], 0.0)
  if VARIANTS[name]["attention"] != "none":
    np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)


def test_parameter_count_closed_form():
  e, h, sv, tv = 6, 8, 10, 11
  shapes = jax.eval_shape(_model().init, _key(0), SRC, TGT_IN)
  lstm = lambda f, n: 4 * (n * (n + f) + n)  # noqa: E731
  want = (sv * e + tv * e                          # embeddings
          + 2 * lstm(e, h // 2)                    # bidirectional encoder
          + (h * h + h)                            # bridge
          + lstm(e + h, h)                         # decoder cell on [emb; context]
          + (h * h + h) + h * h + h                # attention W_k (+b), W_q, v
          + (2 * h * h + h)                        # combine [s; c]
          + (h * tv + tv))                         # output
  assert count_params(shapes["params"]) == want


def test_create_model_and_dropout():
  model = models.create_model({"name": "seq2seq", "src_vocab_size": 10,
                               "tgt_vocab_size": 11, "embed_dim": 6, "hidden": 8,
                               "dropout_rate": 0.5}, num_outputs=11)
  assert isinstance(model, Seq2Seq)
  _, variables = _variant("bahdanau_lstm")  # Dropout adds no parameters.
  out = jax.jit(lambda v, k: model.apply(v, SRC, TGT_IN, train=True, rngs={"dropout": k})
                )(variables, _key(1))
  assert np.all(np.isfinite(out))
  with pytest.raises(JdlError, match="even hidden"):
    _model(hidden=7)
  with pytest.raises(JdlError, match="unknown attention"):
    _model(attention="dot")


def test_beam_of_one_is_greedy_and_scores_are_log_probs():
  model, variables = _variant("luong_general_uni")
  kw = dict(max_len=6, bos_id=BOS, eos_id=EOS)

  @jax.jit
  def run(variables, src):
    greedy = sequence.greedy_decode(model.apply, variables, src, **kw)
    beam1 = sequence.beam_search(model.apply, variables, src, beam_size=1, **kw)
    beam = sequence.beam_search(model.apply, variables, src, beam_size=3,
                                length_penalty=0.0, **kw)
    # The model's log-probability of the beam's tokens, by teacher forcing.
    tgt_in = jnp.concatenate([jnp.full((3, 1), BOS), beam.tokens[:, :-1]], 1)
    logp = jax.nn.log_softmax(model.apply(variables, src, tgt_in), -1)
    return greedy, beam1, beam, jnp.take_along_axis(logp, beam.tokens[..., None], -1)[..., 0]

  greedy, beam1, beam, per_token = run(variables, SRC)
  np.testing.assert_array_equal(beam1.tokens, greedy.tokens)
  np.testing.assert_array_equal(beam1.lengths, greedy.lengths)
  chex.assert_trees_all_close(beam1.attention, greedy.attention, rtol=RTOL, atol=ATOL)
  # A wider beam: its score is the model's log-probability of the returned tokens
  # (which checks that carries follow their hypotheses when beams are reordered).
  in_seq = np.arange(6)[None, :] < np.asarray(beam.lengths)[:, None]
  np.testing.assert_allclose(beam.log_probs, (np.asarray(per_token) * in_seq).sum(1),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(beam.scores, beam.log_probs)
  assert np.all(np.asarray(beam.log_probs) >= np.asarray(beam1.log_probs) - 1e-5)


# A hand-built decoder: the next token's log-probabilities depend on the previous
# token only, through a table `variables['table'] [V, V]`.
A, B_ = 4, 5


class _ToyEnc(NamedTuple):
  carry: jax.Array
  src: jax.Array


def toy_apply(variables, *args, method):
  if method == "encode":
    (src,) = args
    return _ToyEnc(jnp.zeros(src.shape[0], jnp.int32), src)
  carry, token, enc = args
  weights = jnp.ones(enc.src.shape, jnp.float32) / enc.src.shape[1]
  return carry + 1, variables["table"][token], weights


def _table(rows):
  table = np.full((6, 6), 1e-9)
  for prev, probs in rows.items():
    for tok, p in probs.items():
      table[prev, tok] = p
  return jnp.asarray(np.log(table / table.sum(1, keepdims=True)), jnp.float32)


def test_beam_beats_myopic_greedy():
  # Greedy takes A (0.6) but then ends with 0.35: 0.21. B (0.4) then <eos> (0.9): 0.36.
  table = _table({BOS: {A: 0.6, B_: 0.4}, A: {EOS: 0.35, A: 0.33, B_: 0.32},
                  B_: {EOS: 0.9, A: 0.05, B_: 0.05}})
  src = jnp.zeros((1, 3), jnp.int32)
  kw = dict(max_len=4, bos_id=BOS, eos_id=EOS)
  greedy = sequence.greedy_decode(toy_apply, {"table": table}, src, **kw)
  beam = sequence.beam_search(toy_apply, {"table": table}, src, beam_size=2,
                              length_penalty=0.0, **kw)
  np.testing.assert_array_equal(greedy.tokens, [[A, EOS, PAD, PAD]])
  np.testing.assert_array_equal(beam.tokens, [[B_, EOS, PAD, PAD]])
  np.testing.assert_array_equal(beam.lengths, [2])
  np.testing.assert_allclose(beam.log_probs, [np.log(0.36)], rtol=1e-5)
  np.testing.assert_array_equal(beam.attention[0, 2:], 0.0)  # After <eos>.


def test_length_normalization_and_eos():
  # [<eos>] has log-prob log 0.5 = -0.69; [A, <eos>] has log 0.405 = -0.90, but
  # -0.45 a token. Raw scores pick the short one, normalized scores the long one.
  table = _table({BOS: {EOS: 0.5, A: 0.45, B_: 0.05}, A: {EOS: 0.9, A: 0.1},
                  B_: {EOS: 0.5, A: 0.25, B_: 0.25}})
  src = jnp.zeros((2, 3), jnp.int32)
  kw = dict(max_len=4, bos_id=BOS, eos_id=EOS, beam_size=3)
  raw = sequence.beam_search(toy_apply, {"table": table}, src, length_penalty=0.0, **kw)
  norm = sequence.beam_search(toy_apply, {"table": table}, src, length_penalty=1.0, **kw)
  np.testing.assert_array_equal(raw.tokens, [[EOS, PAD, PAD, PAD]] * 2)
  np.testing.assert_array_equal(raw.lengths, [1, 1])
  np.testing.assert_allclose(raw.scores, [np.log(0.5)] * 2, rtol=1e-5)
  np.testing.assert_array_equal(norm.tokens, [[A, EOS, PAD, PAD]] * 2)
  np.testing.assert_array_equal(norm.lengths, [2, 2])
  np.testing.assert_allclose(norm.log_probs, [np.log(0.405)] * 2, rtol=1e-5)
  np.testing.assert_allclose(norm.scores, [np.log(0.405) / 2] * 2, rtol=1e-5)
  greedy = sequence.greedy_decode(toy_apply, {"table": table}, src, max_len=4,
                                  bos_id=BOS, eos_id=EOS)
  np.testing.assert_array_equal(greedy.tokens, raw.tokens)
  np.testing.assert_array_equal(greedy.lengths, [1, 1])


def test_pad_and_bos_are_never_emitted_before_eos():
  # The model's most likely next token is pad, then bos; <eos> only at the third step.
  table = _table({BOS: {PAD: 0.5, BOS: 0.3, A: 0.2}, A: {PAD: 0.5, BOS: 0.3, B_: 0.2},
                  B_: {PAD: 0.5, BOS: 0.3, EOS: 0.2}})
  src = jnp.zeros((1, 2), jnp.int32)
  kw = dict(max_len=4, bos_id=BOS, eos_id=EOS)
  greedy = sequence.greedy_decode(toy_apply, {"table": table}, src, **kw)
  np.testing.assert_array_equal(greedy.tokens, [[A, B_, EOS, PAD]])
  np.testing.assert_array_equal(greedy.lengths, [3])
  for k in (1, 3):
    beam = sequence.beam_search(toy_apply, {"table": table}, src, beam_size=k,
                                length_penalty=0.0, **kw)
    np.testing.assert_array_equal(beam.tokens, [[A, B_, EOS, PAD]])
    # The model's own log-probabilities, not renormalised without pad and bos.
    np.testing.assert_allclose(beam.log_probs, [3 * np.log(0.2)], rtol=1e-5)


def test_beam_keeps_a_finished_hypothesis_pushed_out_of_the_beam():
  # alpha=1. Step 0: [<eos>] (0.45: -0.80) and [A] (0.42) fill the beam. Step 1:
  # [A, B] and [A, C] (-0.78 a token) push [<eos>] out. Then B and C lead to a uniform
  # distribution: everything after falls to -1.12 a token or lower.
  c = 1
  uniform = {tok: 1.0 for tok in range(6)}
  table = _table({BOS: {EOS: 0.45, A: 0.42, B_: 0.13}, A: {B_: 0.5, c: 0.5},
                  B_: uniform, c: uniform})
  src = jnp.zeros((1, 2), jnp.int32)
  beam = sequence.beam_search(toy_apply, {"table": table}, src, beam_size=2, max_len=4,
                              bos_id=BOS, eos_id=EOS, length_penalty=1.0)
  np.testing.assert_array_equal(beam.tokens, [[EOS, PAD, PAD, PAD]])
  np.testing.assert_array_equal(beam.lengths, [1])
  np.testing.assert_allclose(beam.scores, [np.log(0.45)], rtol=1e-5)


def test_decoding_compiles_once_per_batch_and_max_len():
  traces = {"greedy": 0, "beam": 0}

  def counting(name):
    def apply(variables, *args, method):
      if method == "encode":
        traces[name] += 1  # Runs once per trace of the decoder that calls it.
      return toy_apply(variables, *args, method=method)
    return apply

  greedy_apply, beam_apply = counting("greedy"), counting("beam")
  table = _table({BOS: {A: 0.6, B_: 0.4}, A: {EOS: 1.0}, B_: {EOS: 1.0}})
  kw = dict(max_len=5, bos_id=BOS, eos_id=EOS)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def decode(table, src):
    g = sequence.greedy_decode(greedy_apply, {"table": table}, src, **kw)
    b = sequence.beam_search(beam_apply, {"table": table}, src, beam_size=2, **kw)
    return g.tokens, b.tokens

  for seed in range(3):
    decode(table + seed, jnp.full((2, 3), seed, jnp.int32))
  assert traces == {"greedy": 1, "beam": 1}
  # The public functions cache their own compilations: one per batch shape.
  for seed in range(3):
    for batch in (2, 4):
      sequence.beam_search(beam_apply, {"table": table + seed},
                           jnp.full((batch, 3), seed, jnp.int32), beam_size=2, **kw)
  # Batch 2 was traced inside `decode` already; batch 4 is new.
  assert traces == {"greedy": 1, "beam": 2}


def test_public_api():
  for name in sequence.__all__:
    assert hasattr(sequence, name), name
  from jdl.models import recurrent
  for name in recurrent.__all__:
    assert hasattr(recurrent, name), name


@pytest.mark.parametrize("attention", ["bahdanau", "luong_dot", "luong_general", "none"])
def test_mixed_precision_traces(attention):
  # Tracing (jax.eval_shape, no compilation) under strict promotion finds any
  # float32/bfloat16 mix-up.
  model = _model(attention=attention, dtype="bfloat16")
  variables = jax.eval_shape(model.init, _key(0), SRC, TGT_IN)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
  logits = jax.eval_shape(model.apply, variables, SRC, TGT_IN)
  assert logits.dtype == jnp.float32 and logits.shape == (3, 4, 11)
  beam = jax.eval_shape(
      lambda v, s: sequence.beam_search(model.apply, v, s, beam_size=2, max_len=5,
                                        bos_id=BOS, eos_id=EOS), variables, SRC)
  assert beam.tokens.shape == (3, 5) and beam.attention.shape == (3, 5, 5)


def test_beam_search_refuses_a_beam_of_zero():
  table = _table({BOS: {A: 0.6, B_: 0.4}, A: {EOS: 1.0}, B_: {EOS: 1.0}})
  for size in (0, -1, 1.5, True):
    with pytest.raises(JdlError, match=r"beam_size must be an integer >= 1"):
      sequence.beam_search(toy_apply, {"table": table}, jnp.zeros((1, 3), jnp.int32),
                           beam_size=size, max_len=3, bos_id=BOS, eos_id=EOS)
  # numpy integers are integers, as they are for max_len.
  two = sequence.beam_search(toy_apply, {"table": table}, jnp.zeros((1, 3), jnp.int32),
                             beam_size=np.int64(2), max_len=np.int64(3), bos_id=BOS, eos_id=EOS)
  chex.assert_trees_all_equal(two, sequence.beam_search(
      toy_apply, {"table": table}, jnp.zeros((1, 3), jnp.int32), beam_size=2, max_len=3,
      bos_id=BOS, eos_id=EOS))


@pytest.mark.parametrize("kwargs, message", [
    ({"max_len": 0}, r"max_len must be an integer >= 1, got 0"),
    ({"max_len": 2.5}, r"max_len must be an integer >= 1, got 2.5"),
    # An <eos> beyond the 6 ids never ended a sequence; a <bos> beyond them gave NaN.
    ({"eos_id": 99}, r"eos_id must be a token id in \[0, 6\) \(the decoder's vocabulary\), "
                     r"got 99"),
    ({"bos_id": 6}, r"bos_id must be a token id in \[0, 6\)"),
    ({"pad_id": -1}, r"pad_id must be a token id in \[0, 6\)"),
])
def test_decoders_refuse_a_bad_length_or_special_id(kwargs, message):
  table = _table({BOS: {A: 0.6, B_: 0.4}, A: {EOS: 1.0}, B_: {EOS: 1.0}})
  args = {"max_len": 3, "bos_id": BOS, "eos_id": EOS, **kwargs}
  src = jnp.zeros((1, 3), jnp.int32)
  with pytest.raises(JdlError, match=message):
    sequence.greedy_decode(toy_apply, {"table": table}, src, **args)
  with pytest.raises(JdlError, match=message):
    sequence.beam_search(toy_apply, {"table": table}, src, beam_size=2, **args)


def test_beam_search_refuses_a_length_penalty_that_is_not_a_number():
  table = _table({BOS: {A: 0.6, B_: 0.4}, A: {EOS: 1.0}, B_: {EOS: 1.0}})
  with pytest.raises(JdlError, match=r"length_penalty must be a finite number, got nan"):
    sequence.beam_search(toy_apply, {"table": table}, jnp.zeros((1, 3), jnp.int32),
                         beam_size=2, max_len=3, bos_id=BOS, eos_id=EOS,
                         length_penalty=float("nan"))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_float64_model_carries_float64(name):
  # The cells carry float64 for a float64 model (jdl check's gradient check); the
  # encoder's bridge and the decoder's feed must too, or the scans do not trace.
  with jax.enable_x64(True):
    model = _model(**VARIANTS[name], dtype=jnp.float64)
    variables = model.init(_key(0), SRC, TGT_IN)
    assert model.apply(variables, SRC, TGT_IN).dtype == jnp.float32  # Logits.
    enc = model.apply(variables, jnp.asarray(SRC), method="encode")
    assert all(c.dtype == jnp.float64 for c in jax.tree.leaves(enc.carry))


def test_float_target_ids_are_refused_like_float_source_ids():
  # tgt_in [[2.9, 4.9]] gave the logits of [[2, 4]].
  model, variables = _variant("none")
  src = jnp.asarray(SRC)
  for call in (lambda: model.apply(variables, src.astype(jnp.float32), TGT_IN),
               lambda: model.apply(variables, src, jnp.asarray(TGT_IN, jnp.float32) + 0.9)):
    with pytest.raises(JdlError, match="Seq2Seq takes integer token ids, got float32"):
      call()
  enc = model.apply(variables, src, method="encode")
  with pytest.raises(JdlError, match="Seq2Seq.decode_step takes integer token ids"):
    model.apply(variables, enc.carry, jnp.full((src.shape[0],), 2.0), enc,
                method="decode_step")


def test_source_and_target_of_different_batch_sizes_are_refused():
  # Only the ranks were checked: the decoder's scan failed on a concatenate.
  model, variables = _variant("none")
  with pytest.raises(JdlError, match=r"src and tgt_in must have the same batch size, got "
                                     r"src \(3, 5\) and tgt_in \(2, 4\)"):
    model.apply(variables, SRC, TGT_IN[:2])


def test_decoders_take_a_source_of_nested_lists_as_an_array():
  # A list was an AttributeError (.ndim, .shape); a ragged one is one JdlError.
  table = {"table": _table({BOS: {A: 0.6, B_: 0.4}, A: {EOS: 1.0}, B_: {EOS: 1.0}})}
  kw = dict(max_len=3, bos_id=BOS, eos_id=EOS)
  src = [[4, 5, 0], [6, 0, 0]]
  chex.assert_trees_all_equal(sequence.greedy_decode(toy_apply, table, src, **kw),
                              sequence.greedy_decode(toy_apply, table, jnp.asarray(src), **kw))
  chex.assert_trees_all_equal(
      sequence.beam_search(toy_apply, table, src, beam_size=2, **kw),
      sequence.beam_search(toy_apply, table, jnp.asarray(src), beam_size=2, **kw))
  for bad, message in (([[4, 5], [6]], r"src must be \[batch, S\] token ids \(an array or "
                                       r"equal-length lists of ints\), got a list"),
                       ([4, 5], r"src must be \[batch, S\] token ids, got \(2,\)")):
    with pytest.raises(JdlError, match=message):
      sequence.greedy_decode(toy_apply, table, bad, **kw)
    with pytest.raises(JdlError, match=message):
      sequence.beam_search(toy_apply, table, bad, beam_size=2, **kw)


@pytest.mark.parametrize("name", ["bahdanau_lstm", "none"])
def test_teacher_forced_exact_match_of_greedy_outputs_is_one(name):
  # Teacher-forced exact match (every argmax right given the true prefix) and greedy
  # decoding's agree example by example: the greedy outputs as targets all match,
  # and a target with one token changed does not.
  from jdl.sequence.tasks import Seq2SeqTask
  model, variables = _variant(name)
  greedy = np.asarray(sequence.greedy_decode(model.apply, variables, SRC, max_len=5,
                                             bos_id=BOS, eos_id=EOS, pad_id=PAD).tokens)
  targets = np.concatenate([np.full((3, 1), BOS), greedy], axis=1).astype(np.int32)
  task = Seq2SeqTask(apply_fn=model.apply, loss=None, metric_names=("exact_match",),
                     num_classes=0)

  def matched(y):
    batch = {"x": jnp.asarray(SRC), "y": jnp.asarray(y), "mask": jnp.ones(3)}
    _, (per, outputs, _) = task.loss_fn(variables["params"], {}, batch, _key(0), False)
    return int(task.metrics(("exact_match",), outputs, batch, per)["exact_match"]["sum"])

  assert matched(targets) == 3
  wrong = targets.copy()
  wrong[0, 1] = 4 if wrong[0, 1] != 4 else 5  # Its first token: another word.
  assert matched(wrong) == 2


def test_a_bad_config_field_names_its_config_key():
  # It read "model 'seq2seq': hidden must be ..." before.
  import ml_collections

  from jdl.sequence.build import create_seq2seq
  vocab = {"src": [str(i) for i in range(12)], "tgt": [str(i) for i in range(9)]}
  config = ml_collections.ConfigDict({"dataset": "dates",
                                      "model": {"name": "seq2seq", "hidden": 0}})
  with pytest.raises(JdlError, match=r"^model\.hidden must be a positive integer, got 0$"):
    create_seq2seq(config, vocab)
  config.model.hidden, config.model.cell = 8, "foo"
  with pytest.raises(JdlError, match=r"^model\.cell: unknown cell 'foo'; valid names: gru, lstm$"):
    create_seq2seq(config, vocab)
