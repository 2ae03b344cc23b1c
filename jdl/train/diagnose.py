"""The loop's side of diagnostics: when they are due, records, histograms, warnings.

With ``config.diagnostics.every_steps = E > 0`` the loop's block size becomes a
divisor of ``E`` where one is not too small (:func:`align_chunk`), and a block that
holds a multiple of ``E`` runs the diagnostic variant of the block: the same steps,
the one numbered that multiple also returning
:func:`jdl.diagnostics.compute_diagnostics`. So diagnostics land exactly on the
multiples of ``E`` (counted from the run's first step, across epochs). With ``E =
0`` nothing here is built and the loop is unchanged.

Each diagnostic step writes one ``metrics.jsonl`` line with ``split:
"diagnostics"`` (``grad_norm``, ``learning_rate`` of that step's update,
``update_ratio/<layer>``,
``dead_relu/<act>`` or ``saturated/<act>``, and ``histograms: {name: {min, max,
mean, std, counts}}``, edges being ``bins`` equal steps from ``min`` to ``max``,
or from ``min - 0.5`` to ``max + 0.5`` when all values are equal),
the scalars and histograms to TensorBoard, and a ``jdl: warning: ...`` line when a
layer's update ratio stays outside ``[ratio_low, ratio_high]`` for
``warn_after_periods`` diagnostic periods in a row.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np

from jdl import diagnostics as diag_lib
from jdl import optim


def align_chunk(chunk: int, every_steps: int) -> int:
  """The block size for diagnostics every ``every_steps`` steps (``chunk`` if off).

  The largest divisor of ``every_steps`` that is at most ``chunk`` (``every_steps``
  itself when it fits), so blocks end on the diagnostic steps where the epochs
  allow. For an ``every_steps`` above ``chunk`` whose divisors are all below ``chunk
  // 4`` (a large prime) short blocks would cost more than a diagnostic step inside
  a block (which the diagnostic block also runs), so ``chunk`` is kept.
  """
  if every_steps <= 0:
    return chunk
  if every_steps <= chunk:
    return every_steps
  best = max(d for d in range(1, chunk + 1) if every_steps % d == 0)
  return best if best >= chunk // 4 else chunk


class UpdateRatioMonitor:
  """Warns when a layer's update ratio is out of range several periods in a row.

  A layer with a ratio of exactly 0 (frozen, or no gradient) is not warned about.
  One warning per run of bad periods; the count restarts once the ratio recovers.
  """

  def __init__(self, low: float, high: float, periods: int):
    self.low, self.high, self.periods = low, high, periods
    self._bad: dict[str, int] = {}

  def observe(self, step: int, ratios: dict[str, float]) -> list[str]:
    """Records one period's ratios; returns the warning lines due now."""
    lines = []
    for layer, r in ratios.items():
      bad = r != 0 and not self.low <= r <= self.high  # NaN counts as bad.
      self._bad[layer] = self._bad.get(layer, 0) + 1 if bad else 0
      if self.periods and self._bad[layer] == self.periods:
        cause = ("too large: lower the learning rate" if r > self.high or math.isnan(r)
                 else "too small: raise the learning rate or check the gradients")
        bound = f"> {self.high:g}" if r > self.high or math.isnan(r) else f"< {self.low:g}"
        lines.append(
            f"jdl: warning: update/parameter ratio of layer {layer!r} is {r:.3g} ({bound}; "
            f"healthy ~{diag_lib.HEALTHY_RATIO:g}) for {self.periods} diagnostic "
            f"period{'s' if self.periods > 1 else ''} in a row, up to step {step}; {cause}")
    return lines

  def state_dict(self) -> dict[str, int]:
    """Each layer's count of bad periods in a row (saved with checkpoints, so a resumed
    run warns where the uninterrupted one would, not again for the same run)."""
    return {layer: n for layer, n in self._bad.items() if n}

  def load_state_dict(self, state: dict[str, int]) -> None:
    self._bad = {str(layer): int(n) for layer, n in state.items()}


def to_record(diag: dict[str, Any], step: int, epoch: int) -> dict[str, Any]:
  """A ``metrics.jsonl`` record of a diagnostic step's (host) values."""
  record: dict[str, Any] = {"step": step, "epoch": epoch, "split": "diagnostics",
                            "grad_norm": float(diag["grad_norm"])}
  if "learning_rate" in diag:
    record["learning_rate"] = float(diag["learning_rate"])
  for group in ("update_ratio", "dead_relu", "saturated"):
    for name, value in diag.get(group, {}).items():
      record[f"{group}/{name}"] = float(value)
  hists = {}
  for name, h in diag.get("histograms", {}).items():
    num = max(float(h["num"]), 1.0)
    mean = float(h["sum"]) / num
    var = float(h["sum_sq_dev"]) / num
    hists[name] = {"min": float(h["min"]), "max": float(h["max"]), "mean": mean,
                   "std": math.sqrt(var), "counts": [int(c) for c in np.asarray(h["counts"])]}
  if hists:
    record["histograms"] = hists
  return record


class DiagnosticsHook:
  """Builds, compiles and runs the diagnostic block variant; logs its output."""

  def __init__(self, trainer):
    c = trainer.config.diagnostics
    self.every = int(c.every_steps)
    self.accumulate = int(trainer.config.optimizer.accumulate_steps)
    self.monitor = UpdateRatioMonitor(float(c.ratio_low), float(c.ratio_high),
                                      int(c.warn_after_periods))
    lr_fn = optim.create_learning_rate_fn(trainer.config, steps_per_epoch=trainer.steps_per_epoch,
                                          num_epochs=trainer.schedule_epochs)
    diagnose = diag_lib.make_diagnose(
        trainer.task,
        learning_rate_fn=functools.partial(optim.current_learning_rate, learning_rate_fn=lr_fn),
        bins=int(c.histogram_bins),
        activation=diag_lib.activation_kind(trainer.config, trainer.model),
        histograms=bool(c.histograms), augment=trainer.augment,
        microbatch_size=trainer.microbatch_size,
        freeze=tuple(trainer.config.optimizer.freeze),
        kinds=diag_lib.sown_kinds(trainer.config, trainer.model))
    block = diag_lib.make_diagnostic_block(trainer.run_block, diagnose, trainer.batch_size,
                                           self.every)
    self._run_block = jax.jit(block, donate_argnums=(0, 1))
    self._checked = trainer.run_checked_block is not None  # nonfinite_check='block'.
    if self._checked:  # The other steps as the loop's blocks run them: not donated, so
      # that a non-finite block runs again from its inputs, every gradient tested.
      self._run_fast = jax.jit(diag_lib.make_diagnostic_block(
          trainer.run_block, diagnose, trainer.batch_size, self.every,
          checked_block=trainer.run_checked_block))
    self._blocks: dict[int, Any] = {}
    self._replays: dict[int, Any] = {}

  def compile(self, trainer, sizes) -> None:
    """Compiles the diagnostic block for each block size, ahead of time."""
    for n in sizes:
      self._blocks[n] = trainer.compile_block(
          self._run_fast if self._checked else self._run_block, n)

  def _replay(self, trainer, n: int):
    """The diagnostic block of ``n`` steps with every gradient tested (compiled once)."""
    if n not in self._replays:
      self._replays[n] = trainer.compile_block(self._run_block, n)
    return self._replays[n]

  def due(self, start: int, end: int) -> bool:
    """Whether the block of steps ``(start, end]`` reaches a multiple of ``every``."""
    return end // self.every > start // self.every

  def run(self, trainer, x, y, idx, epoch: int) -> None:
    """Runs one diagnostic block on ``trainer`` and logs its diagnostics."""
    n = idx.shape[0]
    if n not in self._blocks:  # A resume from a checkpoint off the block grid.
      self.compile(trainer, (n,))
    if not self._checked:
      trainer.state, trainer._acc, diag = self._blocks[n](trainer.state, trainer._acc, x, y, idx)
    else:  # As the loop's blocks.
      diag, = trainer.keep_or_replay(self._blocks[n](trainer.state, trainer._acc, x, y, idx),
                                     functools.partial(self._replay, trainer, n), x, y, idx)
    step = trainer.step // self.every * self.every  # The step diagnosed in the block.
    record = to_record(jax.device_get(diag), step, epoch + 1)
    # With gradient accumulation a step that only accumulates changes no parameter:
    # no ratio to log or to warn about (a 0 would also restart the monitor's count of
    # bad periods). Multiples of every_steps are updates, unless optax skipped a
    # non-finite step (nonfinite='skip'), which MultiSteps does not count.
    updated = self.accumulate <= 1 or step % self.accumulate == 0
    ratios = {k.split("/", 1)[1]: v for k, v in record.items() if k.startswith("update_ratio/")}
    if not updated:
      record = {k: v for k, v in record.items() if not k.startswith("update_ratio/")}
    trainer._record(record)
    if trainer.tb is not None:
      self._histograms_to_tensorboard(trainer.tb.writer, diag, step)
    for line in self.monitor.observe(step, ratios) if updated else ():
      trainer.warn(line)

  @staticmethod
  def _histograms_to_tensorboard(writer, diag, step: int) -> None:
    for name, h in jax.device_get(diag.get("histograms", {})).items():
      counts = np.asarray(h["counts"], np.float64)
      writer.add_histogram_raw(
          f"diagnostics/{name}", min=float(h["min"]), max=float(h["max"]),
          num=int(h["num"]), sum=float(h["sum"]),
          sum_squares=float(h["sum_sq_dev"]) + float(h["sum"]) ** 2 / max(float(h["num"]), 1.0),
          bucket_limits=np.asarray(h["edges"], np.float64)[1:].tolist(),
          bucket_counts=counts.tolist(), global_step=step)
    writer.flush()

