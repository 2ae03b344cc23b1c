"""Scoring generated images with a trained jdl classifier: IS and Frechet distance.

The "Inception" network of the Inception Score and of the Frechet distance is,
for MNIST, a jdl classifier trained on MNIST (e.g. ``runs/mnist_fast``): its
softmax gives ``p(y | x)`` and its last hidden activation (the one it sows as
``act_{i}`` with the largest ``i``; else its last ``conv_act_{i}``, flattened)
is the feature space of the distance.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jdl import metrics as metrics_lib
from jdl.errors import JdlError
from jdl.generative import evaluation

_DENSE = re.compile(r"act_(\d+)")
_CONV = re.compile(r"conv_act_(\d+)")


@dataclasses.dataclass(frozen=True)
class Judge:
  """A trained classifier as a scorer of images.

  Attributes:
    apply_fn: the classifier's ``apply``.
    variables: its variables.
    normalize: pixels in [0, 1] -> the classifier's normalised inputs.
    batch_size: images per compiled call.
  """
  apply_fn: Callable[..., Any]
  variables: Any
  normalize: Callable[[np.ndarray], np.ndarray]
  batch_size: int = 500

  def __post_init__(self):
    def run(variables, x):
      logits, inter = self.apply_fn(variables, x, train=False, mutable=["intermediates"])
      logits = logits.astype(jnp.float32)
      if logits.shape[-1] == 1:  # A binary classifier's one logit.
        logits = metrics_lib.two_class_logits(logits)
      return jax.nn.softmax(logits, axis=-1), _features(inter)
    object.__setattr__(self, "_run", jax.jit(run))

  def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(probs [N, C], features [N, D])`` for images ``[N, H, W, C]`` in [0, 1]."""
    images = np.asarray(images, np.float32)
    n = len(images)
    if n == 0:
      raise JdlError("no images to score")
    probs, feats = [], []
    for start in range(0, n, self.batch_size):
      chunk = images[start:start + self.batch_size]
      pad = self.batch_size - len(chunk)  # One compiled shape for every chunk.
      if pad:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
      p, f = self._run(self.variables, jnp.asarray(self.normalize(chunk)))
      probs.append(np.asarray(p)[:self.batch_size - pad])
      feats.append(np.asarray(f, np.float64)[:self.batch_size - pad])
    return np.concatenate(probs).astype(np.float64), np.concatenate(feats)


def _features(intermediates) -> jax.Array:
  dense, conv = {}, {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(intermediates):
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    for name in reversed([n for n in names if isinstance(n, str)]):
      if m := _CONV.fullmatch(name):
        conv[int(m.group(1))] = leaf
        break
      if m := _DENSE.fullmatch(name):
        dense[int(m.group(1))] = leaf
        break
  chosen = dense[max(dense)] if dense else conv[max(conv)] if conv else None
  if chosen is None:
    raise JdlError("the classifier sows no activations (act_i / conv_act_i into "
                   "'intermediates'); use a jdl model (mlp, cnn, lenet5, vgg, ...)")
  return chosen.reshape(chosen.shape[0], -1).astype(jnp.float32)


def judge_from_trainer(trainer) -> Judge:
  """The :class:`Judge` of a loaded classification run (:func:`jdl.train.reopen.load_run`)."""
  if trainer.config.task != "classification":
    raise JdlError(f"the judge of generated images must be a classifier; that run's task "
                   f"is {trainer.config.task!r}")
  return Judge(trainer.state.apply_fn, trainer.state.variables,
               lambda x: trainer.normalizer(np.asarray(x, np.float32)))


def scores(judge: Judge, fake: np.ndarray, real: np.ndarray) -> dict[str, float]:
  """Inception Score of ``fake`` and its Frechet distance to ``real`` (same judge)."""
  p_fake, f_fake = judge(fake)
  _, f_real = judge(real)
  mean, std = evaluation.inception_score(p_fake, splits=min(10, len(fake)))
  return {"inception_score": mean, "inception_score_std": std,
          "frechet_distance": evaluation.frechet_distance(f_fake, f_real)}
