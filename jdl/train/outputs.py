"""What a trained run produces beyond metrics: predictions for new inputs,
generated images and decoded sequences.

:class:`jdl.train.loop.Trainer` mixes these in. They read the trainer's ``state``,
``task``, ``model``, ``data``, ``config``, ``vocab``, ``sample_key``,
``eval_batch_size`` and ``primary``; none of them changes the training state (the
``save_*`` methods write image files, from process 0 only).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Sequence

import flax.errors
import jax
import jax.numpy as jnp
import numpy as np

from jdl.data import pipeline
from jdl.errors import JdlError
from jdl.generative import tasks as gen_tasks
from jdl.sequence import tasks as seq_tasks
from jdl.sequence import text as text_lib
from jdl.train.state import TrainState


def check_token_ids(x: np.ndarray, vocab, name: str, what: str) -> None:
  """Token ids outside ``[0, len(vocab))`` are an error (an embedding would read
  them as NaN or clamp them, and answer for another text without a word)."""
  n = len(vocab)
  x = np.asarray(x)
  bad = (x < 0) | (x >= n) | (x != np.floor(x)) if x.dtype.kind == "f" else (x < 0) | (x >= n)
  if x.size and bad.any():
    rows = bad.reshape(len(x), -1).any(axis=1)
    raise JdlError(f"{what} token ids in [0, {n}) (the run's {name!r} vocabulary has {n} "
                   f"tokens); {int(rows.sum())} of {len(x)} examples hold others, e.g. "
                   f"{x[bad].flat[0].item()!r} in example {int(np.argmax(rows))}")


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
    from jdl.train.reopen import load_run  # The judge is another run (a classifier).
    if not hasattr(self, "_judge"):
      workdir = self.config.generative.classifier_workdir
      judge = None
      if workdir:
        try:
          classifier = load_run(workdir)
        except JdlError as e:  # Say what the run is for, and which run to train there.
          raise JdlError(f"{e}. The judge is a classifier of the generated images' kind, "
                         f"e.g. `jdl train --config mnist_fast --workdir {workdir}` for "
                         "MNIST") from None
        if tuple(classifier.data.input_shape) != tuple(self.data.input_shape):
          raise JdlError(f"generative.classifier_workdir {workdir!r} holds a classifier of "
                         f"inputs {tuple(classifier.data.input_shape)}, but this run "
                         f"generates {tuple(self.data.input_shape)}")
        judge = judge_lib.judge_from_trainer(classifier)
      self._judge = judge
    return self._judge

  def load_judge_or_warn(self) -> None:
    """Loads the judge now, if the run has one; one that cannot be loaded is a
    warning, not an error (a missing judge stops neither a run nor its evaluation:
    the scores are left out), and is not tried again."""
    if not (self.config.generative.classifier_workdir
            and (self.gan or self.config.task == "vae")):
      return
    try:
      self.judge()
    except JdlError as e:
      self.warn(f"jdl: warning: generated images will not be scored "
                f"(generative.classifier_workdir): {e}; "
                "--config.generative.classifier_workdir= leaves the scores out")
      self._judge = None

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
    real = split.images if getattr(split, "images", None) is not None else split.x
    return judge_lib.scores(judge, fake, np.asarray(real))


class SequenceOutputs:
  """Text encoding and greedy / beam-search decoding of the sequence tasks."""

  def _text_vocab(self, vocab: str, texts, what: str) -> tuple[text_lib.Vocabulary, list[str]]:
    """The run's ``vocab`` vocabulary and ``texts`` as a list of strings.

    Raises:
      JdlError: the run has no such vocabulary, ``texts`` is one string (iterated,
        it would be one text a character) or not a sequence of strings.
    """
    if not self.vocab or vocab not in self.vocab:
      has = (f"its vocabularies are {', '.join(map(repr, sorted(self.vocab)))}" if self.vocab
             else "text input needs a text dataset such as sst2 or dates")
      raise JdlError(f"this run ({self.data.name!r}) has no {vocab!r} vocabulary; {has}")
    if isinstance(texts, (str, bytes)):  # Iterated, it would be one text a character.
      raise JdlError(f"{what} takes a list of texts, got one {type(texts).__name__} "
                     f"({texts!r:.40}); pass [text]")
    try:
      texts = list(texts)
    except TypeError:
      raise JdlError(f"{what} takes a list of texts, got a value of type "
                     f"{type(texts).__name__}") from None
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise JdlError(f"{what} takes texts as str, but text {i} is a {type(text).__name__} "
                       f"({text!r:.40}); give each text as a str")
    return self.vocab[vocab], texts

  def encode_texts(self, texts: Sequence[str], vocab: str = "text") -> np.ndarray:
    """Token ids ``[n, maxlen]`` of ``texts`` (a list of strings: ``[text]`` for one),
    padded as the run's train split.

    Raises:
      JdlError: the run has no ``vocab`` vocabulary, or ``texts`` is one string or
        holds something other than strings.
    """
    v, texts = self._text_vocab(vocab, texts, "encode_texts")
    seq = self.config.sequence
    width = int(self.data.train.x.shape[1])
    padding = seq.padding if vocab == "text" else "post"
    truncating = seq.truncating if vocab == "text" else "post"
    return text_lib.pad_sequences([v.encode_text(t) for t in texts], width,
                                  padding=padding, truncating=truncating)

  def text_problems(self, texts: Sequence[str], vocab: str = "text") -> list[str | None]:
    """Why each text of ``texts`` (a list of strings) may be answered poorly
    (``None`` if not): no tokens, tokens outside the run's vocabulary (all or some:
    read as ``<unk>``), fewer tokens than a convolutional model's window (no feature:
    answered as an empty text), or more tokens than its sequences hold (cut).

    Raises:
      JdlError: as :meth:`encode_texts`.
    """
    v, texts = self._text_vocab(vocab, texts, "text_problems")
    width = int(self.data.train.x.shape[1])
    min_length = getattr(self.model, "min_length", None)
    shortest = min_length() if callable(min_length) else 1
    problems = []
    for text in texts:
      tokens = text_lib.tokenize(text, level=v.level, lowercase=v.lowercase)
      ids = v.encode(tokens)
      unknown = [t for t, i in zip(tokens, ids) if i == text_lib.UNK_ID]
      if not ids:
        problems.append("it has no tokens")
      elif len(unknown) == len(ids):
        problems.append("none of its tokens is in the run's vocabulary")
      elif len(ids) < shortest:
        problems.append(f"it has {len(ids)} token{'s' if len(ids) > 1 else ''}, fewer than "
                        f"the {shortest} the model's convolutions need for one feature: it "
                        "is answered as an empty text")
      elif len(ids) > width:
        problems.append(f"it has {len(ids)} tokens and the run's sequences hold {width}: "
                        "the rest is cut")
      elif unknown:  # "isn't" or "good!" where SST-2 has "is n't", "good !".
        distinct = list(dict.fromkeys(unknown))
        shown = ", ".join(repr(t) for t in distinct[:5]) + (", ..." if len(distinct) > 5 else "")
        hint = ("; words are split at spaces only, as the training text was (SST-2 writes "
                "\"is n't\", \"good !\")" if self.data.name == "sst2" else "")
        problems.append(f"{len(unknown)} of its {len(ids)} tokens are not in the run's "
                        f"vocabulary ({shown}): read as <unk>{hint}")
      else:
        problems.append(None)
    return problems

  def decode(self, src: np.ndarray, *, beam: bool, state: TrainState | None = None):
    """Greedy or beam-search decoding of source ids ``[n, S]`` (seq2seq runs).

    Returns:
      ``(tokens, attention)``: ``[n, L]`` int32 output ids and ``[n, L, S]`` float32
      attention weights (the best beam's), as numpy arrays; for ``n = 0``, empty
      arrays of those shapes.
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
    src = np.asarray(src)
    if src.dtype.kind not in "biuf" or src.ndim != 2:
      raise JdlError(f"decode needs source token ids [n, S], got an array of shape "
                     f"{src.shape} and dtype {src.dtype}")
    if self.vocab and "src" in self.vocab:
      check_token_ids(src, self.vocab["src"], "src", "decode needs")
    src = np.asarray(src, np.int32)
    if len(src) == 0:  # No sources: no outputs, of the outputs' shapes (nothing computed).
      result = jax.eval_shape(fn, state.variables, jax.ShapeDtypeStruct((1, src.shape[1]),
                                                                        jnp.int32))
      att = getattr(result, "attention", None)
      return (np.zeros((0, *result.tokens.shape[1:]), result.tokens.dtype),
              None if att is None else np.zeros((0, *att.shape[1:]), np.float32))
    idx, _ = pipeline.eval_batch_indices(len(src), self.eval_batch_size)
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


class Predictions:
  """Model outputs for new inputs (classification and regression runs).

  Reads the trainer's ``state``, ``data``, ``normalizer``, ``eval_batch_size``,
  ``config``, ``workdir``, ``holds_run_state`` and its compiled ``_predict``.
  """

  def predict(self, x: np.ndarray, state: TrainState | None = None) -> np.ndarray:
    """Model outputs for raw inputs ``x: [n, ...]`` (normalised as the train split):
    a classifier's logits, a regression's outputs, an autoencoder's reconstruction
    logits (``jax.nn.sigmoid`` of them: the reconstruction in [0, 1]).

    Outputs a model computes in 16-bit floats (``mixed_precision=True``: bfloat16)
    are returned as float32, which numpy and scipy take everywhere; other dtypes are
    returned as the model gives them. A classifier trained on ``config.classes``
    gives column ``j`` for class ``config.classes[j]`` (the classes are relabelled
    ``0..k-1`` in that order).

    Raises:
      JdlError: a VAE, GAN or seq2seq run (they sample or decode instead), inputs
        of the wrong shape, NaN or Inf, integers where the dataset gives floats, or a
        Trainer of a trained workdir that has not loaded its state (use
        :func:`load_run`, or ``fit()``, which resumes).
    """
    x = self._check_predict(x, state)
    try:
      if self.normalizer is None:  # Token ids.
        return self.predict_normalized(jnp.asarray(np.asarray(x, np.int32)), state)
      # Not cast here: the normaliser computes as it did for the splits (in float64
      # when the train split was float64).
      normalized = self.normalizer(x)
      self._warn_if_out_of_range(normalized)
      return self.predict_normalized(jnp.asarray(normalized), state)
    except (TypeError, ValueError, flax.errors.ScopeParamShapeError) as e:
      if isinstance(e, JdlError) or x.shape[1:] == self.data.train.x.shape[1:]:
        raise
      raise JdlError(f"predict: inputs of shape {x.shape} do not fit this run, whose "
                     f"examples are {tuple(self.data.train.x.shape[1:])} "
                     f"({str(e).splitlines()[0][:200]})") from None

  def _check_predict(self, x, state) -> np.ndarray:
    """``x`` as a numeric array, or one JdlError for what predict cannot answer."""
    task = self.config.task
    if self.gan or task == "vae":
      raise JdlError(f"predict maps inputs to outputs, but a {task} run generates images: "
                     "use trainer.sample(n) (or `jdl sample`)")
    if self.seq2seq:
      raise JdlError("predict maps inputs to outputs, but a seq2seq run decodes: use "
                     "trainer.decode(trainer.encode_texts(texts, vocab='src'), beam=True) "
                     "(or `jdl predict --input`)")
    try:
      x = np.asarray(x)
    except (TypeError, ValueError) as e:  # Ragged lists.
      raise JdlError(f"predict needs a numeric array of inputs: {e}") from None
    if x.dtype.kind not in "biuf":
      raise JdlError(f"predict needs numeric inputs, got an array of dtype {x.dtype}")
    shape, want = tuple(np.shape(x)), tuple(self.data.train.x.shape)
    # As many axes as the dataset's batches; the sizes may differ where the model
    # allows (a sequence of another length), which predict() finds out.
    # Numbers normalised with the train split's statistics need the train examples'
    # shape (other shapes would broadcast against them).
    if len(shape) != len(want) or (self.normalizer is not None
                                   and not self.normalizer.is_identity
                                   and shape[1:] != tuple(self.data.input_shape)):
      hint = ("; for one example, pass x[None]" if shape == tuple(self.data.input_shape)
              else "")
      raise JdlError(f"predict needs inputs [n, {', '.join(map(str, self.data.input_shape))}] "
                     f"(one example a row, as the dataset's); got shape {shape}{hint}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
      bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum()) if len(x) else 0
      raise JdlError(f"predict got NaN or Inf inputs (in {bad} of {len(x)} examples)")
    self.check_input_kind(x, "predict got")
    if self.normalizer is None and self.vocab and "text" in self.vocab:
      check_token_ids(x, self.vocab["text"], "text", "predict needs")
    elif self.normalizer is None:  # Token ids of the user's own embedding model.
      if x.dtype.kind == "f":  # Cast to int32 below: 3.7 would be read as id 3.
        rows = x.reshape(len(x), -1)
        fractional = rows != np.round(rows)
        if fractional.any():
          row = int(np.argmax(fractional.any(axis=1)))
          raise JdlError(f"predict got inputs that are not whole numbers (e.g. "
                         f"{rows[row][fractional[row]][0]:g} in example {row}), but this "
                         "run's inputs are token ids (normalize='none'): give the ids")
      from jdl.train import checks  # As training checks them.
      checks.check_token_ids(self.model, [("predict", x.astype(np.int64))])
    if state is None:
      self.check_holds_run_state()
    return x

  @property
  def _input_scale(self) -> str:
    """The scale of a built-in image source's inputs, for messages ('' for others)."""
    from jdl.data import sources
    return sources.INPUT_SCALES.get(self.data.name, "")

  def _warn_if_out_of_range(self, normalized: np.ndarray) -> None:
    """Says when over 1% of the inputs' values, normalised as the train split was,
    lie more than their feature's train range beyond that range: floats on another
    scale (pixels 0..255 where the loader gives / 255) pass every other check and are
    answered with confidence. Features constant in the train split are not counted."""
    train = self.data.train
    if not isinstance(train, pipeline.Split) or jax.process_count() > 1 or not normalized.size:
      return
    if getattr(self, "_train_range", None) is None:  # Per feature, once.
      self._train_range = (np.asarray(jnp.min(train.x, axis=0)),
                           np.asarray(jnp.max(train.x, axis=0)))
    lo, hi = self._train_range
    if normalized.shape[1:] != lo.shape:  # A sequence of another length, say.
      return
    span = hi - lo
    varies = np.broadcast_to(span > 0, normalized.shape)
    beyond = ((normalized < lo - span) | (normalized > hi + span)) & varies
    share = beyond.sum() / max(varies.sum(), 1)
    if share > 0.01:
      scale = f" ({self._input_scale})" if self._input_scale else ""
      print(f"jdl: warning: {100 * share:.3g}% of predict's input values lie further "
            "beyond their feature's range in the train split than that range is wide "
            f"(compared as normalised alike): give them on the scale dataset "
            f"{self.data.name!r} gives{scale}", file=sys.stderr, flush=True)

  def check_holds_run_state(self) -> None:
    """Refuses a Trainer of a trained workdir that holds its initial parameters
    (made, but neither fitted nor loaded): its outputs are not the run's.

    Raises:
      JdlError: naming the run and how to load it.
    """
    if not self.holds_run_state and int(self.state.step) == 0 and (
        self.workdir is not None and any(
            p.name.isdigit() and int(p.name) > 0
            for p in (self.workdir / "checkpoints").glob("*"))):
      raise JdlError(f"this Trainer holds its initial parameters, not those of the run in "
                     f"{self.workdir}; use jdl.load_run({str(self.workdir)!r}) (with the "
                     "dataset= and model= that fit() was given, if any), or trainer.fit(), "
                     "which resumes")

  def check_input_kind(self, x: np.ndarray, what: str) -> None:
    """Integer inputs to a run whose dataset gives floats are an error: taken 1:1
    they would be misread (MNIST-family loaders give pixels / 255)."""
    if x.dtype.kind in "iub" and self.normalizer is not None and self.data.float_inputs:
      example = (f"{self._input_scale}: taken 1:1 they would be misread" if self._input_scale
                 else "taken 1:1 they would be misread")
      raise JdlError(f"{what} {x.dtype} inputs, but dataset {self.data.name!r} gives float "
                     f"inputs ({example}); give them as the dataset's loader does")

  def confusion_matrix(self, split: str = "test", state: TrainState | None = None
                       ) -> np.ndarray:
    """Counts ``[C, C]`` of a classification run's ``split`` ('train', 'val' or
    'test'; in memory): row ``i``, column ``j`` counts the examples of class ``i`` the
    model puts in class ``j``, as its accuracy reads them (the diagonal's sum over the
    examples is the split's accuracy). An example whose outputs hold a NaN, which
    predicts no class, is in no column. With ``config.classes``, index ``i`` is class
    ``config.classes[i]``."""
    from jdl import metrics as metrics_lib
    if self.config.task != "classification":
      raise JdlError(f"a confusion matrix is for classification runs; this one is of task "
                     f"{self.config.task!r}")
    data = getattr(self.data, split, None) if split in ("train", "val", "test") else None
    if data is None:
      raise JdlError(f"this run has no {split} split in memory to score (splits: train, "
                     "val, test)")
    if not isinstance(data, pipeline.Split) or jax.process_count() > 1:
      raise JdlError(f"the {split} split is read from disk or spread over processes; a "
                     "confusion matrix needs it in this process's memory")
    return metrics_lib.confusion_matrix(self.predict_normalized(data.x, state),
                                        np.asarray(data.y), self.data.num_classes)

  def predict_normalized(self, x: jax.Array, state: TrainState | None = None) -> np.ndarray:
    """Model outputs for inputs already normalised (e.g. ``trainer.data.test.x``), as
    :meth:`predict` returns them (16-bit floats as float32)."""
    state = self.state if state is None else state
    if len(x) == 0:  # No examples: no outputs, of the outputs' shape.
      return self.predict_normalized(jnp.zeros((1, *x.shape[1:]), x.dtype), state)[:0]
    idx, _ = pipeline.eval_batch_indices(len(x), self.eval_batch_size)
    outs = np.concatenate([np.asarray(self._predict(state, x[i])) for i in idx])[: len(x)]
    if jnp.issubdtype(outs.dtype, jnp.floating) and jnp.finfo(outs.dtype).bits < 32:
      # A mixed-precision model's bfloat16 outputs: numpy and scipy take few functions
      # of bfloat16 (savetxt, linalg, special fail on them).
      return outs.astype(np.float32)
    return outs
