"""What a trained run produces beyond metrics: generated images and decoded sequences.

:class:`jdl.train.loop.Trainer` mixes these in. They read the trainer's ``state``,
``task``, ``model``, ``data``, ``config``, ``vocab``, ``sample_key``,
``eval_batch_size`` and ``primary``; none of them changes the training state (the
``save_*`` methods write image files, from process 0 only).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jdl.data import pipeline
from jdl.errors import JdlError
from jdl.generative import tasks as gen_tasks
from jdl.sequence import tasks as seq_tasks
from jdl.sequence import text as text_lib
from jdl.train.state import TrainState


class GenerativeOutputs:
  """Samples, reconstructions and sample scores of the VAE and GAN tasks."""

  def sample(self, n: int, *, key: jax.Array | None = None, state=None) -> np.ndarray:
    """``n`` generated images ``[n, H, W, C]`` in [0, 1] (VAE and GAN runs).

    The default key is the run's fixed sample key, so successive epochs' grids
    show the same noise.
    """
    state = self.state if state is None else state
    key = self.sample_key if key is None else key
    if not hasattr(self, "_sample"):
      self._sample = jax.jit(
          lambda st, k, n: gen_tasks.sample_images(st, self.task, self.model, n, key=k),
          static_argnums=2)
    return np.asarray(self._sample(state, key, int(n)), np.float32)

  def save_samples(self, path: str | Path, *, n: int = 64, key=None, title=None) -> Path:
    """A grid of ``n`` generated images (VAE and GAN runs)."""
    from jdl.generative import images
    grid = self.sample(n, key=key)  # Every process computes; process 0 writes.
    return images.save_image_grid(grid, path, title=title) if self.primary else Path(path)

  def save_reconstructions(self, path: str | Path, *, n: int = 10) -> Path | None:
    """Test (else train) images over their reconstructions (autoencoder and VAE runs)."""
    from jdl.generative import images
    split = self.data.test or self.data.train
    x = split.x[:n]
    if self.config.task == "vae":  # The decoder's mean at the posterior mean.
      mean, _ = self.state.apply_fn(self.state.variables, x, method="encode")
      recon = self.state.apply_fn(self.state.variables, mean, method="generate")
    else:
      recon = jax.nn.sigmoid(self.state.apply_fn(self.state.variables, x, train=False))
    if not self.primary:
      return None
    return images.save_reconstructions(np.asarray(x), np.asarray(recon, np.float32), path,
                                       n=n, title="test images (top), reconstructions (bottom)")

  def judge(self):
    """The classifier that scores generated images (``generative.classifier_workdir``)."""
    from jdl.generative import judge as judge_lib
    from jdl.train.loop import load_run  # The judge is another run (a classifier).
    if not hasattr(self, "_judge"):
      workdir = self.config.generative.classifier_workdir
      judge = None
      if workdir:
        classifier = load_run(workdir)
        if tuple(classifier.data.input_shape) != tuple(self.data.input_shape):
          raise JdlError(f"generative.classifier_workdir {workdir!r} holds a classifier of "
                         f"inputs {tuple(classifier.data.input_shape)}, but this run "
                         f"generates {tuple(self.data.input_shape)}")
        judge = judge_lib.judge_from_trainer(classifier)
      self._judge = judge
    return self._judge

  def generative_scores(self, split: pipeline.Split, state=None) -> dict[str, float]:
    """Inception Score and Frechet distance of a VAE's or GAN's samples against ``split``.

    Empty for other tasks, or without ``generative.classifier_workdir``.
    """
    generates = self.gan or self.config.task == "vae"
    if not generates or not self.config.generative.classifier_workdir:
      return {}
    from jdl.generative import judge as judge_lib
    judge = self.judge()
    if judge is None:  # It could not be loaded; fit() said so once.
      return {}
    n = int(self.config.generative.eval_samples)
    key = jax.random.fold_in(self.sample_key, 1)  # Not the grids' noise.
    fake = np.concatenate([self.sample(min(1000, n - i), key=jax.random.fold_in(key, i),
                                       state=state) for i in range(0, n, 1000)])
    return judge_lib.scores(judge, fake, np.asarray(split.x))


class SequenceOutputs:
  """Text encoding and greedy / beam-search decoding of the sequence tasks."""

  def encode_texts(self, texts: Sequence[str], vocab: str = "text") -> np.ndarray:
    """Token ids ``[n, maxlen]`` of ``texts``, padded as the run's train split."""
    if not self.vocab or vocab not in self.vocab:
      has = (f"its vocabularies are {', '.join(map(repr, sorted(self.vocab)))}" if self.vocab
             else "text input needs a text dataset such as sst2 or dates")
      raise JdlError(f"this run ({self.data.name!r}) has no {vocab!r} vocabulary; {has}")
    v, seq = self.vocab[vocab], self.config.sequence
    width = int(self.data.train.x.shape[1])
    padding = seq.padding if vocab == "text" else "post"
    truncating = seq.truncating if vocab == "text" else "post"
    return text_lib.pad_sequences([v.encode_text(t) for t in texts], width,
                                  padding=padding, truncating=truncating)

  def text_problems(self, texts: Sequence[str], vocab: str = "text") -> list[str | None]:
    """Why each text may be answered poorly (``None`` if not): no tokens, only tokens
    outside the run's vocabulary, or more tokens than its sequences hold (cut)."""
    v, width = self.vocab[vocab], int(self.data.train.x.shape[1])
    problems = []
    for text in texts:
      ids = v.encode_text(text)
      if not ids:
        problems.append("it has no tokens")
      elif all(i == text_lib.UNK_ID for i in ids):
        problems.append("none of its tokens is in the run's vocabulary")
      elif len(ids) > width:
        problems.append(f"it has {len(ids)} tokens and the run's sequences hold {width}: "
                        "the rest is cut")
      else:
        problems.append(None)
    return problems

  def decode(self, src: np.ndarray, *, beam: bool, state: TrainState | None = None):
    """Greedy or beam-search decoding of source ids ``[n, S]`` (seq2seq runs).

    Returns:
      ``(tokens, attention)``: ``[n, L]`` output ids and ``[n, L, S]`` attention
      weights (the best beam's), as numpy arrays.
    """
    from jdl.sequence import decoding
    state = self.state if state is None else state
    seq = self.config.sequence
    max_len = int(seq.decode_max_len) or int(self.data.train.y.shape[1]) - 1
    ids = dict(max_len=max_len, bos_id=text_lib.BOS_ID, eos_id=text_lib.EOS_ID)
    # decoding's functions are jitted with apply_fn static: runs of one model share
    # their compilations (evaluate, then predict, in one process).
    if beam and int(seq.beam_size) < 1:
      raise JdlError(f"beam search needs sequence.beam_size >= 1, this run has "
                     f"{seq.beam_size}; decode greedily (beam=False)")
    if beam:
      fn = functools.partial(decoding.beam_search, state.apply_fn, beam_size=int(seq.beam_size),
                             length_penalty=float(seq.length_penalty), **ids)
    else:
      fn = functools.partial(decoding.greedy_decode, state.apply_fn, **ids)
    idx, _ = pipeline.eval_batch_indices(len(src), self.eval_batch_size)
    src = np.asarray(src, np.int32)
    tokens, attention = [], []
    for i in idx:
      result = fn(state.variables, jnp.asarray(src[i]))
      tokens.append(np.asarray(result.tokens))
      att = getattr(result, "attention", None)
      attention.append(None if att is None else np.asarray(att, np.float32))
    tokens = np.concatenate(tokens)[: len(src)]
    attention = None if attention[0] is None else np.concatenate(attention)[: len(src)]
    return tokens, attention

  def sequence_scores(self, split: pipeline.Split, state=None) -> dict[str, float]:
    """Seq2seq: exact match of greedy decoding and of beam search (``sequence.beam_size``).

    Empty for the other tasks.
    """
    if not self.seq2seq:
      return {}
    strip = functools.partial(seq_tasks.strip_ids, bos_id=text_lib.BOS_ID,
                              eos_id=text_lib.EOS_ID)
    targets = [strip(row) for row in np.asarray(split.y)]
    out = {}
    for name, beam in (("greedy", False), ("beam", True)):
      if beam and int(self.config.sequence.beam_size) < 1:
        continue
      tokens, _ = self.decode(np.asarray(split.x), beam=beam, state=state)
      hits = sum(strip(row) == t for row, t in zip(tokens, targets))
      out[f"{name}_exact_match"] = hits / len(targets)
    return out
