"""The seq2seq task on jdl's one loop: teacher forcing, masked token cross-entropy.

A batch holds ``x: [B, S]`` source ids and ``y: [B, T]`` target ids laid out as
``<bos> t_1 ... t_n <eos> <pad> ...``. The decoder reads ``y[:, :-1]`` and is
scored on ``y[:, 1:]``; target padding counts nowhere (neither in the loss nor in
the metrics), so a batch padded to any length has the loss of the unpadded one.

Metrics are mergeable ``{"sum", "count"}`` groups (:mod:`jdl.generative.stats`):

* ``loss``: mean cross-entropy per real target token (``<eos>`` included),
  against label-smoothed targets when ``config.label_smoothing`` is set;
* ``token_accuracy``: the share of real target tokens whose argmax is right
  under teacher forcing;
* ``exact_match``: the share of sequences with every token right under teacher
  forcing. This equals greedy decoding's exact match: greedy decoding feeds
  back its own argmax, which is the teacher's token as long as every earlier
  argmax was right, so greedy reproduces the target exactly iff every
  teacher-forced argmax is right (within the target length; both argmaxes skip
  ``<pad>`` and ``<bos>``, which a sequence never emits). Greedy and beam
  search are run for real at the end of training and by ``jdl evaluate``
  (``greedy_exact_match``, ``beam_exact_match``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jdl import regularizers
from jdl.errors import JdlError
from jdl.sequence import decoding
from jdl.sequence.text import BOS_ID, EOS_ID, PAD_ID
from jdl.train import steps as steps_lib

METRICS = ("token_accuracy", "exact_match")


def metric_names(requested) -> tuple[str, ...]:
  for name in requested:
    if name not in METRICS:
      raise JdlError(f"{name!r} is not a metric of task 'seq2seq'; its metrics are "
                     f"{', '.join(METRICS)} (config.metrics=() for both)")
  return tuple(requested) or METRICS


def masked_token_loss(logits: jax.Array, targets: jax.Array, mask: jax.Array,
                      label_smoothing: float = 0.0):
  """Cross-entropy summed over the real tokens, and their count.

  Args:
    logits: ``[B, T, V]``.
    targets: ``[B, T]`` int ids.
    mask: ``[B, T]``, 1 for real tokens.
    label_smoothing: ``alpha``: each token's one-hot target becomes
      ``(1 - alpha) t + alpha / V``, as for classification.

  Returns:
    ``(per_token [B, T], sum, count)``, the per-token losses zero where masked.
  """
  logits = logits.astype(jnp.float32)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if label_smoothing:  # -mean_v log p_v = logsumexp - mean of the logits.
    uniform = jax.nn.logsumexp(logits, axis=-1) - jnp.mean(logits, axis=-1)
    ce = (1.0 - label_smoothing) * ce + label_smoothing * uniform
  ce = jnp.where(mask > 0, ce, 0.0)
  return ce, jnp.sum(ce), jnp.sum(mask)


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask(steps_lib.SupervisedTask):
  """An encoder-decoder trained with teacher forcing (see the module docstring)."""
  pad_id: int = PAD_ID
  label_smoothing: float = 0.0

  def token_mask(self, batch) -> jax.Array:
    """``[B, T-1]`` float32: 1 for each real target token (not padding, of a real row)."""
    tgt_out = batch["y"][:, 1:]
    return ((tgt_out != self.pad_id) & (batch["mask"][:, None] > 0)).astype(jnp.float32)

  def loss_fn(self, params, model_state, batch, key, train):
    src, tgt = batch["x"], batch["y"]
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]
    token_mask = self.token_mask(batch)
    variables = {"params": params, **model_state}
    if train:
      logits, new_state = self.apply_fn(variables, src, tgt_in, train=True,
                                        rngs={"dropout": key}, mutable=list(model_state))
    else:
      logits, new_state = self.apply_fn(variables, src, tgt_in, train=False), model_state
    ce, total, count = masked_token_loss(logits, tgt_out, token_mask, self.label_smoothing)
    loss = total / jnp.maximum(count, 1.0)
    if self.penalty_rules:
      loss = loss + regularizers.penalty(params, self.penalty_rules)
    return loss, (jnp.sum(ce, axis=1), (logits, token_mask), new_state)

  def loss_count(self, batch):
    """The real target tokens: :meth:`loss_fn`'s loss is a mean over them."""
    return jnp.sum(self.token_mask(batch))

  def metrics(self, names, outputs, batch, per_example_loss):
    logits, token_mask = outputs
    tgt_out = batch["y"][:, 1:]
    # As decoding: a running sequence never emits <pad> or <bos>.
    never = decoding.never_emitted(logits.shape[-1], bos_id=BOS_ID, eos_id=EOS_ID,
                                   pad_id=self.pad_id)
    emitted = jnp.where(never, -jnp.inf, logits)
    right = (jnp.argmax(emitted, -1) == tgt_out).astype(jnp.float32) * token_mask
    n_tokens = jnp.sum(token_mask)
    example = batch["mask"] > 0
    out = {"loss": {"sum": jnp.sum(per_example_loss, dtype=jnp.float32),
                    "count": n_tokens.astype(jnp.int32)}}
    if "token_accuracy" in names:
      out["token_accuracy"] = {"sum": jnp.sum(right), "count": n_tokens.astype(jnp.int32)}
    if "exact_match" in names:
      whole = jnp.all((right > 0) | (token_mask == 0), axis=1) & example
      out["exact_match"] = {"sum": jnp.sum(whole, dtype=jnp.float32),
                            "count": jnp.sum(example, dtype=jnp.int32)}
    return out


def strip_ids(ids, *, bos_id: int, eos_id: int, pad_id: int = PAD_ID) -> tuple[int, ...]:
  """The tokens of a decoded or target row: a leading <bos> dropped, cut at <eos>."""
  out = []
  for i, t in enumerate(int(v) for v in ids):
    if t == eos_id:
      break
    if (i == 0 and t == bos_id) or t == pad_id:
      continue
    out.append(t)
  return tuple(out)
