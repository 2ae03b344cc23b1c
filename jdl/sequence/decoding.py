"""Greedy decoding and beam search for encoder-decoder models, scan-based and jitted.

Both functions drive a model through ``apply_fn`` (``model.apply``, e.g.
``state.apply_fn``) and two methods that the model provides
(:class:`jdl.models.Seq2Seq` does):

* ``encode(src) -> enc`` (a PyTree whose leaves have a leading batch axis, with
  the initial decoder carry in ``enc.carry``);
* ``decode_step(carry, token [batch], enc) -> (carry, logits [batch, V],
  attention [batch, S])``.

Decoding runs for exactly ``max_len`` steps in one ``lax.scan``; a sequence that
has emitted ``eos_id`` is padded with ``pad_id`` from then on (attention rows 0).
``pad_id`` and ``bos_id`` are never emitted before ``<eos>``: their log-probabilities
are set to ``-inf`` for a sequence still running (the others are not renormalised,
so scores stay the model's log-probabilities).
``apply_fn``, ``max_len``, ``beam_size``, the ids and ``length_penalty`` are static:
each function compiles once per (``apply_fn``, batch, source length, ``max_len``,
...) and is cached by ``jax.jit``. Pass the same ``apply_fn`` object each time
(``model.apply`` of one model instance compares equal to itself; a fresh lambda
per call would recompile). Inside an outer ``jax.jit`` they inline.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
import numbers
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jdl import errors

ApplyFn = Callable[..., Any]


def never_emitted(vocab: int, *, bos_id: int, eos_id: int, pad_id: int) -> jax.Array:
  """``[vocab]`` bool: the ids a running sequence cannot produce (pad and bos, not eos).

  Raises:
    JdlError: a special id outside the ``vocab`` ids (no sequence could end, or
      none start).
  """
  for name, value in (("bos_id", bos_id), ("eos_id", eos_id), ("pad_id", pad_id)):
    errors.require(isinstance(value, numbers.Integral) and not isinstance(value, bool)
                   and 0 <= value < vocab,
                   f"{name} must be a token id in [0, {vocab}) (the decoder's vocabulary), "
                   f"got {value!r}")
  ids = jnp.arange(vocab)
  return ((ids == pad_id) | (ids == bos_id)) & (ids != eos_id)


class DecodeResult(NamedTuple):
  """Greedy decoding's output.

  Attributes:
    tokens: ``[batch, max_len]`` int32, up to and including ``<eos>``, then
      ``pad_id``.
    attention: ``[batch, max_len, S]`` attention weights of each output step (0
      after ``<eos>``).
    lengths: ``[batch]`` tokens up to and including ``<eos>`` (``max_len`` when no
      ``<eos>`` was produced).
  """

  tokens: jax.Array
  attention: jax.Array
  lengths: jax.Array


class BeamResult(NamedTuple):
  """Beam search's output: the best hypothesis of each batch element.

  Attributes:
    tokens: ``[batch, max_len]`` int32, up to and including ``<eos>``, then
      ``pad_id``.
    scores: ``[batch]`` the length-normalized score ``log_prob / length**alpha``
      that ranked the hypotheses.
    attention: ``[batch, max_len, S]`` attention weights of the best hypothesis.
    lengths: ``[batch]`` tokens up to and including ``<eos>`` (``max_len`` when
      the hypothesis never ended).
    log_probs: ``[batch]`` the hypothesis' total log-probability.
  """

  tokens: jax.Array
  scores: jax.Array
  attention: jax.Array
  lengths: jax.Array
  log_probs: jax.Array


def _check_max_len(max_len: int) -> None:
  errors.require(isinstance(max_len, numbers.Integral) and not isinstance(max_len, bool)
                 and max_len >= 1,
                 f"max_len must be an integer >= 1, got {max_len!r}")


def _lengths(tokens: jax.Array, eos_id: int) -> jax.Array:
  is_eos = tokens == eos_id
  first = jnp.argmax(is_eos, axis=1).astype(jnp.int32)
  return jnp.where(jnp.any(is_eos, axis=1), first + 1, tokens.shape[1]).astype(jnp.int32)


def _source(src: Any) -> jax.Array:
  """``src`` as a ``[batch, S]`` array: nested lists of ids are accepted as arrays are.

  Raises:
    JdlError: ``src`` is not a rectangular 2-D array of numbers.
  """
  try:
    src = jnp.asarray(src)
  except (TypeError, ValueError):
    raise errors.JdlError(
        f"src must be [batch, S] token ids (an array or equal-length lists of ints), got "
        f"a {type(src).__name__} that is not a rectangular array of numbers") from None
  errors.require(src.ndim == 2, f"src must be [batch, S] token ids, got {tuple(src.shape)}")
  return src


def greedy_decode(apply_fn: ApplyFn, variables: Any, src: jax.Array, *, max_len: int,
                  bos_id: int, eos_id: int, pad_id: int = 0) -> DecodeResult:
  """Decodes by taking the most likely token at every step.

  Args:
    apply_fn: ``model.apply`` of a model with ``encode`` and ``decode_step``.
    variables: the model's variables, ``{'params': ...}``.
    src: ``[batch, S]`` source token ids (an array, or nested lists of ints).
    max_len: number of output steps (static).
    bos_id: the first decoder input.
    eos_id: ends a sequence.
    pad_id: fills the steps after ``<eos>``.

  Returns:
    A :class:`DecodeResult`.

  Raises:
    JdlError: ``src`` is not ``[batch, S]`` numbers, a bad ``max_len`` or special id.
  """
  return _greedy_decode(apply_fn, variables, _source(src), max_len=max_len, bos_id=bos_id,
                        eos_id=eos_id, pad_id=pad_id)


@functools.partial(jax.jit, static_argnames=("apply_fn", "max_len", "bos_id",
                                             "eos_id", "pad_id"))
def _greedy_decode(apply_fn: ApplyFn, variables: Any, src: jax.Array, *, max_len: int,
                   bos_id: int, eos_id: int, pad_id: int) -> DecodeResult:
  _check_max_len(max_len)
  enc = apply_fn(variables, src, method="encode")
  batch = src.shape[0]

  def step(state, _):
    carry, token, done = state
    carry, logits, attn = apply_fn(variables, carry, token, enc, method="decode_step")
    never = never_emitted(logits.shape[-1], bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    logits = jnp.where(never, jnp.asarray(-jnp.inf, logits.dtype), logits)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, pad_id, nxt)
    attn = jnp.where(done[:, None], jnp.zeros_like(attn), attn)
    done = done | (nxt == eos_id)
    return (carry, nxt, done), (nxt, attn)

  init = (enc.carry, jnp.full((batch,), bos_id, jnp.int32), jnp.zeros((batch,), bool))
  _, (tokens, attn) = jax.lax.scan(step, init, None, length=max_len)
  tokens = tokens.T
  return DecodeResult(tokens, jnp.swapaxes(attn, 0, 1), _lengths(tokens, eos_id))


def _gather_beams(x: jax.Array, beams: jax.Array) -> jax.Array:
  """``x [batch, k, ...]``, ``beams [batch, k]`` -> ``x[b, beams[b, j]]``."""
  return jax.vmap(lambda xb, ib: xb[ib])(x, beams)


def beam_search(apply_fn: ApplyFn, variables: Any, src: jax.Array, *,
                beam_size: int = 5, max_len: int, bos_id: int, eos_id: int,
                pad_id: int = 0, length_penalty: float = 1.0) -> BeamResult:
  """Beam search with length normalization and end-of-sequence handling.

  Keeps ``beam_size`` hypotheses per batch element. At each step every live
  hypothesis is extended by every token, and the ``beam_size`` best candidates by
  ``log_prob / length**length_penalty`` survive. A hypothesis that has emitted
  ``<eos>`` stays in the beam with its score frozen (it can only be extended by
  ``pad_id`` at no cost) until better candidates push it out, so finished and
  live hypotheses compete on the same normalized score. The answer is the best of
  the hypotheses in the beam after ``max_len`` steps and of those that finished in
  the beam earlier (one pushed out by live hypotheses that later fell below it is
  not lost). With ``beam_size=1`` this is :func:`greedy_decode` except where two
  tokens' scores are equal to float32 rounding: greedy decoding takes the largest
  logit, while beam search ranks the float32 sum of the running log-probability
  and the token's log-softmax, so two tokens whose log-probabilities differ by
  less than that sum's float32 spacing tie, and ``top_k`` keeps the lower id.

  Args:
    apply_fn: ``model.apply`` of a model with ``encode`` and ``decode_step``.
    variables: the model's variables, ``{'params': ...}``.
    src: ``[batch, S]`` source token ids (an array, or nested lists of ints).
    beam_size: ``k``, hypotheses kept per batch element (static).
    max_len: number of output steps (static).
    bos_id: the first decoder input.
    eos_id: ends a hypothesis.
    pad_id: fills the steps after ``<eos>``.
    length_penalty: ``alpha``; scores are ``log_prob / length**alpha``, with the
      length counting ``<eos>``; 0 ranks by raw log-probability.

  Returns:
    A :class:`BeamResult`.

  References:
    Wu et al., "Google's neural machine translation system", 2016 (length
    normalization); Graves, "Sequence transduction with recurrent neural
    networks", 2012 (beam search for RNN decoders).

  Raises:
    JdlError: ``src`` is not ``[batch, S]`` numbers, a bad ``beam_size``,
      ``max_len``, special id or ``length_penalty``.
  """
  return _beam_search(apply_fn, variables, _source(src), beam_size=beam_size,
                      max_len=max_len, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id,
                      length_penalty=length_penalty)


@functools.partial(jax.jit, static_argnames=("apply_fn", "beam_size", "max_len",
                                             "bos_id", "eos_id", "pad_id",
                                             "length_penalty"))
def _beam_search(apply_fn: ApplyFn, variables: Any, src: jax.Array, *, beam_size: int,
                 max_len: int, bos_id: int, eos_id: int, pad_id: int,
                 length_penalty: float) -> BeamResult:
  errors.require(isinstance(beam_size, numbers.Integral) and not isinstance(beam_size, bool)
                 and beam_size >= 1, f"beam_size must be an integer >= 1, got {beam_size!r}")
  _check_max_len(max_len)
  errors.require(isinstance(length_penalty, numbers.Real) and math.isfinite(length_penalty),
                 f"length_penalty must be a finite number, got {length_penalty!r}")
  k, batch, alpha = int(beam_size), src.shape[0], float(length_penalty)
  enc = apply_fn(variables, src, method="encode")
  enc = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), enc)  # [batch * k, ...]
  src_len = src.shape[1]
  neg_inf = jnp.float32(-jnp.inf)

  def normalize(log_prob, length):
    if alpha == 0.0:
      return log_prob
    return log_prob / length.astype(jnp.float32) ** alpha

  def best_of(scores, log_prob, length, tokens, attn) -> BeamResult:
    """The highest-scoring of ``k`` hypotheses (``[batch, k, ...]`` fields)."""
    j = jnp.argmax(scores, axis=1)
    pick = lambda x: jnp.take_along_axis(  # noqa: E731
        x, j.reshape((batch,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]
    return BeamResult(tokens=pick(tokens), scores=pick(scores), attention=pick(attn),
                      lengths=pick(length), log_probs=pick(log_prob))

  def better(a: BeamResult, b: BeamResult) -> BeamResult:
    """Per batch element, ``a`` where it scores higher than ``b``, else ``b``."""
    take_a = a.scores > b.scores
    return jax.tree.map(
        lambda x, y: jnp.where(take_a.reshape((batch,) + (1,) * (x.ndim - 1)), x, y), a, b)

  def step(state, t):
    carry, last, log_prob, finished, length, tokens, attn, kept = state
    carry, logits, weights = apply_fn(variables, carry, last.reshape(batch * k), enc,
                                      method="decode_step")
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1).reshape(batch, k, -1)
    vocab = lp.shape[-1]
    is_pad = jnp.arange(vocab) == pad_id
    never = never_emitted(vocab, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    # A finished hypothesis has one continuation, pad_id, at no cost; a live one
    # any token but pad_id and bos_id.
    cand = jnp.where(finished[..., None],
                     jnp.where(is_pad, log_prob[..., None], neg_inf),
                     jnp.where(never, neg_inf, log_prob[..., None] + lp))
    cand_len = jnp.where(finished, length, t + 1)[..., None]
    _, idx = jax.lax.top_k(normalize(cand, cand_len).reshape(batch, k * vocab), k)
    beams, tok = idx // vocab, (idx % vocab).astype(jnp.int32)
    log_prob = jnp.take_along_axis(cand.reshape(batch, k * vocab), idx, axis=1)
    was_finished = _gather_beams(finished, beams)
    tok = jnp.where(was_finished, pad_id, tok)
    length = jnp.where(was_finished, _gather_beams(length, beams), t + 1)
    finished = was_finished | (tok == eos_id)
    weights = _gather_beams(weights.reshape(batch, k, src_len), beams)
    weights = jnp.where(was_finished[..., None], jnp.zeros_like(weights), weights)
    tokens = _gather_beams(tokens, beams).at[:, :, t].set(tok)
    attn = _gather_beams(attn, beams).at[:, :, t].set(weights)
    carry = jax.tree.map(
        lambda x: _gather_beams(x.reshape(batch, k, *x.shape[1:]), beams).reshape(x.shape),
        carry)
    # Keep the best hypothesis that has finished in the beam so far: live ones
    # that later push it out of the beam may end up scoring worse.
    new = finished & ~was_finished
    new_scores = jnp.where(new, normalize(log_prob, length), neg_inf)
    kept = better(best_of(new_scores, log_prob, length, tokens, attn), kept)
    return (carry, tok, log_prob, finished, length, tokens, attn, kept), None

  first = jnp.where(jnp.arange(k) == 0, 0.0, neg_inf).astype(jnp.float32)
  none_kept = BeamResult(
      tokens=jnp.full((batch, max_len), pad_id, jnp.int32),
      scores=jnp.full((batch,), neg_inf), attention=jnp.zeros((batch, max_len, src_len)),
      lengths=jnp.zeros((batch,), jnp.int32), log_probs=jnp.full((batch,), neg_inf))
  init = (
      enc.carry,
      jnp.full((batch, k), bos_id, jnp.int32),
      jnp.tile(first, (batch, 1)),                        # Beams start identical:
      jnp.zeros((batch, k), bool),                        # only the first is live.
      jnp.zeros((batch, k), jnp.int32),
      jnp.full((batch, k, max_len), pad_id, jnp.int32),
      jnp.zeros((batch, k, max_len, src_len), jnp.float32),
      none_kept,
  )
  state, _ = jax.lax.scan(step, init, jnp.arange(max_len, dtype=jnp.int32))
  _, _, log_prob, _, length, tokens, attn, kept = state
  final = best_of(normalize(log_prob, length), log_prob, length, tokens, attn)
  return better(kept, final)
