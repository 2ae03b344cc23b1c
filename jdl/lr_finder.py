"""The learning-rate range test: ``jdl lr-find``.

A short training run whose learning rate grows geometrically from ``min_lr`` to
``max_lr`` (one ``optax.exponential_decay`` schedule with a growth rate above 1,
fed to the experiment's own optimizer), recording the training loss of every
step. The loss is smoothed by an exponential moving average with bias correction
(``beta = 0.98``, as in fastai); the run stops early once the smoothed loss
exceeds ``diverge_factor`` (4) times its best value, or is not finite. A loss that
can be negative (a log-likelihood of densities, a loss of your own) has no such
ratio: at a best value ``<= 0`` the run stops once the smoothed loss rises above it
by ``diverge_factor - 1`` times the larger of ``|best|`` and its descent from the
first smoothed loss (:func:`divergence_limit`).

The suggestion is the **smaller** of two rules of thumb, both printed:

* ``steepest``: the learning rate at the steepest descent of the smoothed loss
  against ``log10(lr)``: the left end of the most negative forward difference,
  searched over the steps up to the smoothed minimum after the first 10% (fastai's
  "steep"), so never the minimum itself;
* ``min_loss_lr / 10``: a tenth of the learning rate at the smallest smoothed loss
  (fastai's "minimum").

Each fails on its own kind of curve. The moving average lags the raw loss by up to
``beta / (1 - beta)`` (50) steps, so where the loss falls sharply just before it
diverges (a quadratic: fastest near ``1 / lambda_max``) the smoothed steepest
descent lands past the divergence threshold ``2 / lambda_max``, while the minimum's
tenth stays below it (``tests/test_lr_finder.py``). Where the loss falls early and
then plateaus over decades, the minimum sits far right and its tenth can be well
above a good rate. The smaller of the two is the conservative choice in both cases.
(Adam on ``digits_cnn``, 100 steps, measured 2026-11-29: steepest ``1.23e-2``
(``2.15e-2`` by the earlier central-difference rule), minimum ``6.58e-2``, suggestion
``6.58e-3``; the experiment is tuned at ``2e-3``.)

References:
  L. N. Smith, `Cyclical Learning Rates for Training Neural Networks
  <https://arxiv.org/abs/1506.01186>`_, 2015 (the "LR range test");
  J. Howard & S. Gugger, fastai's ``lr_find``, 2020.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jdl import _plotting
from jdl import data as data_lib
from jdl import optim
from jdl.data import pipeline
from jdl.data import stream
from jdl.errors import JdlError, require


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
  """What :func:`find_lr` returns.

  Attributes:
    learning_rates: ``[n]`` the learning rate of each step run (float32, as used).
    losses: ``[n]`` the raw training loss of each step.
    smoothed: ``[n]`` the bias-corrected moving average of ``losses``.
    suggestion: ``min(steepest, min_loss_lr / 10)``, at least ``learning_rates[0]``.
    steepest: the learning rate at the steepest descent of ``smoothed``.
    min_loss_lr: the learning rate at the smallest smoothed loss.
    min_loss: that smallest (finite) smoothed loss.
    diverged: whether the run stopped because the loss diverged.
  """
  learning_rates: np.ndarray
  losses: np.ndarray
  smoothed: np.ndarray
  suggestion: float
  steepest: float
  min_loss_lr: float
  min_loss: float
  diverged: bool


def lr_schedule(min_lr: float, max_lr: float, steps: int) -> optax.Schedule:
  """``lr(t) = min_lr * (max_lr / min_lr) ** (t / (steps - 1))``, ``t = 0..steps-1``.

  Raises:
    JdlError: ``0 < min_lr < max_lr`` or ``steps >= 2`` does not hold, or the rates
      or their ratio are beyond float32, the optimizer's (a rate below ~1.2e-38 read
      as 0, a ratio above ~3.4e38 as inf: the sweep jumped from min_lr to max_lr).
  """
  require(0 < min_lr < max_lr < math.inf, f"need 0 < min_lr < max_lr < inf, got "
                                          f"min_lr={min_lr}, max_lr={max_lr}")
  tiny, largest = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
  require(min_lr >= tiny and max_lr / min_lr <= largest,
          f"min_lr and max_lr must be float32 learning rates (the optimizer's): min_lr >= "
          f"{tiny:.3g} and max_lr / min_lr <= {largest:.3g}, got min_lr={min_lr:g}, "
          f"max_lr={max_lr:g}")
  require(steps >= 2, f"lr-find needs steps >= 2, got {steps}")
  return optax.exponential_decay(min_lr, transition_steps=steps - 1,
                                 decay_rate=max_lr / min_lr, end_value=max_lr)


def smooth_losses(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
  """Exponential moving average with bias correction: ``avg_t / (1 - beta**(t+1))``."""
  out, avg = np.empty(len(losses)), 0.0
  for t, loss in enumerate(losses):
    avg = beta * avg + (1 - beta) * float(loss)
    out[t] = avg / (1 - beta ** (t + 1))
  return out


def suggest_lr(learning_rates: np.ndarray, smoothed: np.ndarray, skip: int = 0) -> float:
  """The learning rate where ``smoothed`` falls fastest against ``log10(lr)`` ("steepest").

  Only the steps up to the smallest smoothed loss are searched (the descent): the
  rate at the left end of the most negative forward difference
  ``(s[i+1] - s[i]) / (log10 lr[i+1] - log10 lr[i])``, so the minimum's own rate
  is never the answer (a one-sided difference there would credit it with the last
  stretch of the descent). Steps that share a rate (the ``k`` steps of one
  accumulated update) count as one point, at their mean loss. The first ``skip``
  steps are left out when at least two rates remain before the minimum (the
  average of a few steps is mostly their noise: a flat curve's steepest "descent"
  was then its first step, the range's lowest rate).
  """
  lrs = np.asarray(learning_rates, np.float64)
  end = int(np.nanargmin(smoothed)) + 1
  start = skip if len(np.unique(lrs[skip:end])) >= 2 else 0
  rates, group = np.unique(lrs[start:end], return_inverse=True)
  if len(rates) < 2:
    return float(lrs[0])
  mean = (np.bincount(group, weights=np.asarray(smoothed[start:end], np.float64))
          / np.bincount(group))
  slope = np.diff(mean) / np.diff(np.log10(rates))
  return float(rates[int(np.argmin(slope))])


def divergence_limit(best: float, first: float, diverge_factor: float) -> float:
  """The smoothed loss above which the range test stops (the loss diverged).

  ``diverge_factor * best`` for a positive ``best`` (fastai's test); for
  ``best <= 0``, where a ratio means nothing (``4 * -2.7`` lies *below* ``-2.7``),
  ``best + (diverge_factor - 1) * max(|best|, first - best)``: a rise measured on
  the loss's own scale, its magnitude or how far it has fallen.

  Args:
    best: the smallest smoothed loss so far.
    first: the first step's smoothed loss.
    diverge_factor: > 1.

  Returns:
    The limit; the run has diverged once a smoothed loss exceeds it.
  """
  if best > 0:
    return diverge_factor * best
  return best + (diverge_factor - 1) * max(-best, first - best)


def find_lr(config: ml_collections.ConfigDict, *, dataset: data_lib.Dataset | None = None,
            model: nn.Module | None = None, min_lr: float = 1e-7, max_lr: float = 10.0,
            steps: int = 100, beta: float = 0.98,
            diverge_factor: float = 4.0) -> LRFinderResult:
  """Runs the learning-rate range test on ``config``'s experiment.

  The experiment's whole optimizer chain (the optimizer, clipping, weight decay,
  ``freeze``, ``accumulate_steps``, ``max_norm``, ``nonfinite``) is used with the
  geometric schedule in place of ``optimizer.learning_rate`` and ``schedule``
  (``reduce_on_plateau`` is left out: it would act per epoch). The schedule runs
  over optimizer updates: with ``accumulate_steps = k`` the ``steps`` train steps
  make ``steps / k`` updates (``steps >= 2k``), and each step records the rate of
  the update it contributes to. The batches are those of a normal run
  (``config.batch_size``, the seeded epoch order, the experiment's augmentation) and
  per-step keys are ``fold_in(key, step)`` inside the one jitted step.

  Args:
    config: an experiment config.
    dataset: a :class:`jdl.data.Dataset` to use instead of ``config.dataset``.
    model: a flax.linen module to use instead of ``config.model``.
    min_lr: the first step's learning rate.
    max_lr: the last step's learning rate.
    steps: the most steps to run (fewer if the loss diverges).
    beta: the moving average's decay.
    diverge_factor: stop once the smoothed loss exceeds this times its best (for a
      best value <= 0, see :func:`divergence_limit`).

  Returns:
    An :class:`LRFinderResult`.

  Raises:
    JdlError: a bad config or argument.
  """
  from jdl.train import steps as steps_lib
  from jdl.train import checks
  from jdl.train.loop import Trainer
  checks.check_is_config(config)
  if config.task not in ("classification", "regression"):
    raise JdlError(f"the learning-rate finder supports classification and regression runs, not task "
                   f"{config.task!r}")
  require(0 <= beta < 1, f"beta must be in [0, 1), got {beta}")
  require(diverge_factor > 1, f"diverge_factor must be > 1, got {diverge_factor}")
  require(steps >= 2, f"lr-find needs steps >= 2, got {steps}")
  k = max(1, int(config.optimizer.accumulate_steps))
  require(steps >= 2 * k,
          f"lr-find needs at least two optimizer updates: with optimizer.accumulate_steps={k} "
          f"that is steps >= {2 * k}, got {steps}")
  schedule = lr_schedule(min_lr, max_lr, max(2, -(-steps // k)))
  trainer = Trainer(config, None, dataset=dataset, model=model, quiet=True, progress=False,
                    parallel="none")  # Its own one-device steps.
  tx = optim.create_optimizer(config, steps_per_epoch=trainer.steps_per_epoch,
                              num_epochs=trainer.schedule_epochs, learning_rate_fn=schedule,
                              with_plateau=False)
  state = trainer.state.replace(tx=tx, opt_state=tx.init(trainer.state.params))
  task, train, bs = trainer.task, trainer.data.train, trainer.batch_size
  freeze = tuple(config.optimizer.freeze)

  @jax.jit
  def step(state, x, y, idx):
    batch = {"x": x[idx], "y": y[idx], "mask": jnp.ones((bs,), jnp.float32)}
    key = jax.random.fold_in(state.key, state.step)
    # The experiment's augmentation (and mixup's loss), with the train step's keys.
    loss_task, batch = steps_lib.augmented(task, trainer.augment, key, batch)
    grad_fn = jax.value_and_grad(loss_task.loss_fn, has_aux=True)
    (loss, (_, _, model_state)), grads = grad_fn(state.params, state.model_state, batch, key,
                                                 True)
    model_state = optim.keep_frozen_state(model_state, state.model_state, freeze)
    lr = schedule(state.step // k)  # The rate of the update this step is part of.
    return state.apply_gradients(grads=grads, model_state=model_state), loss, lr

  steps_per_epoch = train.size // bs
  lrs, losses, smoothed = [], [], []
  avg, best, diverged, epoch_idx = 0.0, math.inf, False, None
  for t in range(steps):
    epoch, i = divmod(t, steps_per_epoch)
    if i == 0:
      perm = pipeline.epoch_permutation(trainer.shuffle_key, epoch, train.size)
      epoch_idx = pipeline.train_batch_indices(perm, bs)
    if isinstance(train, stream.StreamSplit):  # dataset='npy_dir': this batch's rows only.
      xb, yb = train.gather(np.asarray(epoch_idx[i]))
      state, loss, lr = step(state, xb, yb, np.arange(bs, dtype=np.int32))
    else:
      state, loss, lr = step(state, train.x, train.y, epoch_idx[i])
    loss = float(loss)
    lrs.append(float(lr))
    losses.append(loss)
    avg = beta * avg + (1 - beta) * loss
    s = avg / (1 - beta ** (t + 1))
    smoothed.append(s)
    if not math.isfinite(s) or s > divergence_limit(best, smoothed[0], diverge_factor):
      diverged = True
      break
    best = min(best, s)
  lrs_np = np.asarray(lrs, np.float32)
  smoothed_np = np.asarray(smoothed)
  # The diverged step is recorded but not searched: its smoothed loss is the worst.
  search = len(smoothed) - 1 if diverged and len(smoothed) > 1 else len(smoothed)
  finite = np.where(np.isfinite(smoothed_np[:search]), smoothed_np[:search], np.inf)
  require(np.isfinite(finite).any(),
          f"the loss of the first step is {losses[0]}, before any learning rate acted: the "
          "data or the model give no finite loss (see `jdl check`)")
  steepest = suggest_lr(lrs_np[:search], finite, skip=search // 10)  # fastai's start.
  k_min = int(np.argmin(finite))
  min_loss_lr = float(lrs_np[k_min])
  return LRFinderResult(
      learning_rates=lrs_np, losses=np.asarray(losses), smoothed=smoothed_np,
      suggestion=max(min(steepest, min_loss_lr / 10), float(lrs_np[0])), steepest=steepest,
      min_loss_lr=min_loss_lr, min_loss=float(finite[k_min]), diverged=diverged)


def plot_lr_finder(result: LRFinderResult, path: str | Path) -> Path:
  """Writes the smoothed (and raw) loss against the learning rate, log x axis, as PNG.

  The suggested learning rate is marked with a vertical line and a dot. The y axis
  shows the descent up to the smallest smoothed loss (the divergence leaves the
  top), or the whole finite curve where the loss rose from the first step. The
  figure is drawn on its own Agg canvas: matplotlib's backend and pyplot's figures
  (a notebook's) are left as they were.

  Returns:
    The path written.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = _plotting.figure((6, 4))
  ax = fig.add_subplot(1, 1, 1)
  ax.plot(result.learning_rates, result.losses, color="0.75", lw=0.8, label="loss")
  ax.plot(result.learning_rates, result.smoothed, color="C0", label="smoothed loss")
  k = int(np.argmin(np.abs(np.log(result.learning_rates) - math.log(result.suggestion))))
  ax.axvline(result.suggestion, color="C3", ls="--", lw=1)
  ax.plot([result.suggestion], [result.smoothed[k]], "o", color="C3",
          label=f"suggested lr {result.suggestion:.2e}")
  ax.set_xscale("log")
  finite = np.where(np.isfinite(result.smoothed), result.smoothed, np.inf)
  if np.isfinite(finite).any():
    k_min = int(np.argmin(finite))
    # The descent up to the smallest smoothed loss; a loss that rose from the first
    # step has none (a range of one point): then the whole finite curve.
    shown = finite[:k_min + 1] if k_min > 0 else finite[np.isfinite(finite)]
    lo, hi = float(finite[k_min]), float(np.max(shown))
    pad = 0.1 * (hi - lo) + 1e-6 * max(abs(lo), 1.0)
    ax.set_ylim(lo - pad, hi + (3 if k_min > 0 else 1) * pad)
  ax.set_xlabel("learning rate")
  ax.set_ylabel("training loss")
  ax.set_title("learning-rate range test")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path

__all__ = ["LRFinderResult", "lr_schedule", "smooth_losses", "suggest_lr",
    "divergence_limit", "find_lr", "plot_lr_finder"]
