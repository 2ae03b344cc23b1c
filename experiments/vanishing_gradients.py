"""Vanishing gradients: per-layer gradient norms of a deep sigmoid MLP vs ReLU and batch norm.

Trains configs/vanishing_gradients.py (10 hidden layers of 128) four ways:
sigmoid (Glorot init), ReLU (He init), and each with batch norm. The gradient of
the training loss with respect to every layer's kernel is taken with jax.grad on
one fixed batch of training images (the model in training mode, as the optimizer
sees it), from the run's own states: the initial one, and every checkpoint the run
writes (every 100 steps and at each epoch end), read back after training. Writes gradient_norms.png and a table (ratio of the
first to the last layer's gradient norm at init, final test accuracy).

Usage:  python experiments/vanishing_gradients.py --data_dir ../shared/data/mnist [--epochs 3] [--tiny]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402
from jdl.checkpoint import Checkpointer  # noqa: E402

NAME = "vanishing_gradients"
EPOCHS = 3
GRAD_BATCH = 512  # Examples in the fixed batch the gradient norms are measured on.
CHECKPOINT_EVERY = 100  # Steps between the checkpoints the norms are traced on.
CHECKPOINTS_KEPT = 10_000
# Variant -> config overrides (on top of configs/vanishing_gradients.py).
VARIANTS = {
    "sigmoid": {"model.activation": "sigmoid", "model.kernel_init": "glorot_uniform"},
    "relu": {"model.activation": "relu", "model.kernel_init": "he_normal"},
    "sigmoid + BN": {"model.activation": "sigmoid", "model.kernel_init": "glorot_uniform",
                     "model.batch_norm": True},
    "relu + BN": {"model.activation": "relu", "model.kernel_init": "he_normal",
                  "model.batch_norm": True},
}
TINY_VARIANTS = ("sigmoid", "relu + BN")  # --tiny: one plain, one batch-norm model.


def layer_names(params) -> list[str]:
  """The MLP's dense layers in forward order: hidden_0 ... hidden_{n-1}, head."""
  hidden = sorted((k for k in params if k.startswith("hidden_")), key=lambda k: int(k[7:]))
  return hidden + ["head"]


def make_grad_norms(trainer: jdl.Trainer, x: jax.Array, y: jax.Array):
  """A jitted ``state -> [num_layers]`` of ``||d loss / d kernel||_F`` per dense layer.

  The loss is the trainer's own (``SupervisedTask.loss_fn`` in training mode, with
  the batch's statistics under batch norm and no dropout in these models).
  """
  names = layer_names(trainer.state.params)
  batch = {"x": x, "y": y, "mask": jnp.ones((x.shape[0],), jnp.float32)}

  @jax.jit
  def grad_norms(state):
    def loss(params):
      return trainer.task.loss_fn(params, state.model_state, batch, state.key, True)[0]
    grads = jax.grad(loss)(state.params)
    return jnp.stack([jnp.linalg.norm(grads[n]["kernel"]) for n in names])

  return names, grad_norms


def norms_from_checkpoints(trainer: jdl.Trainer, grad_norms) -> list[tuple[int, list[float]]]:
  """``(step, per-layer norms)`` of every checkpoint the run left in its workdir.

  Reads the checkpoints after training, so a resumed or already finished run
  gives the same curve as an uninterrupted one.
  """
  target = {"state": trainer.state, "acc": trainer.empty_acc()}
  with Checkpointer(trainer.workdir / "checkpoints", keep=CHECKPOINTS_KEPT,
                    async_save=False) as ckpt:
    return [(step, np.asarray(grad_norms(ckpt.restore(step, target)[0]["state"])).tolist())
            for step in ckpt.steps()]


def run_variant(name: str, overrides: dict[str, Any], dataset, args, epochs: int) -> dict:
  config = jdl.load_config(NAME)
  _common.apply_overrides(config, overrides)
  _common.quiet_outputs(config)
  config.num_epochs = epochs
  if args.tiny:
    config.model.hidden = (8,) * 3
    config.batch_size = 64
  # A checkpoint every CHECKPOINT_EVERY steps, all kept: the gradient-norm trace.
  config.checkpoint_every_steps = CHECKPOINT_EVERY
  config.keep_checkpoints = CHECKPOINTS_KEPT
  workdir = Path(args.workdir) / name.replace(" + ", "_").lower()
  trainer = jdl.Trainer(config, workdir, dataset=dataset, quiet=True)
  n = min(GRAD_BATCH, trainer.data.train.size)
  names, grad_norms = make_grad_norms(trainer, trainer.data.train.x[:n], trainer.data.train.y[:n])
  # Before fit (which resumes from the workdir), the state is the seed's initial one.
  init = np.asarray(grad_norms(trainer.state)).tolist()
  result = _common.check_epochs(trainer.fit(), config, workdir)
  fitted = time.perf_counter()
  final = np.asarray(grad_norms(result.state)).tolist()
  spe = trainer.steps_per_epoch
  trace = [(step / spe, norms) for step, norms in norms_from_checkpoints(trainer, grad_norms)]
  seconds = _common.variant_seconds(workdir, fitted)
  record = {
      "layers": names, "init": init, "final": final,
      "epoch_end": [norms for epoch, norms in trace if epoch == int(epoch)],
      "trace": trace, "test_accuracy": result.test_metrics.get("accuracy"),
      "val_accuracy": result.history.get("val_accuracy", []),
      "train_loss": result.history.get("loss", []), "seconds": seconds,
  }
  print(f"{name}: init first/last {init[0] / init[-1]:.3g}, test accuracy "
        f"{_common.pct(record['test_accuracy'])} ({seconds:.0f} s)", flush=True)
  return record


def plot(records: dict[str, dict], path: Path, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for (name, r), color in zip(records.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
    layers = np.arange(1, len(r["init"]) + 1)
    axes[0].plot(layers, r["init"], "o-", color=color, label=name)
    axes[1].plot(layers, r["final"], "o-", color=color, label=name)
    if r["trace"]:
      epochs, norms = zip(*r["trace"])
      axes[2].plot((0.0,) + epochs, [r["init"][0]] + [n[0] for n in norms], ".-", color=color,
                   label=name)
  for ax, sub in zip(axes[:2], ("at initialisation", "after training")):
    ax.set(yscale="log", xlabel="layer (1 = first hidden, last = output)",
           ylabel="||dL/dW||", title=f"gradient norm per layer, {sub}")
  axes[2].set(yscale="log", xlabel="epoch", ylabel="||dL/dW_1||",
              title="first layer's gradient norm during training")
  _common.save_figure(fig, axes, path, title)


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
  args = _common.make_parser(__doc__, name=NAME, epochs=EPOCHS).parse_args(argv)
  epochs = args.epochs or (1 if args.tiny else EPOCHS)
  dataset = _common.load_source(args)
  out = _common.out_dir(args, NAME)
  names = TINY_VARIANTS if args.tiny else tuple(VARIANTS)
  records = {name: run_variant(name, VARIANTS[name], dataset, args, epochs) for name in names}
  rows = [(name, f"{r['init'][0]:.3g}", f"{r['init'][-1]:.3g}",
           f"{r['init'][0] / r['init'][-1]:.3g}", f"{r['final'][0] / r['final'][-1]:.3g}",
           _common.pct(r["test_accuracy"]), f"{r['seconds']:.0f} s")
          for name, r in records.items()]
  table = _common.markdown_table(
      ("model", "first layer at init", "output layer at init", "first / output at init",
       "first / output after training", "test accuracy", "time"), rows)
  print(f"\n{dataset.name}, {epochs} epoch(s):\n{table}")
  depth = len(records[names[0]]["init"]) - 1
  plot(records, out / "gradient_norms.png",
       f"{depth}-hidden-layer MLP on {dataset.name}: gradient norms (fixed batch of "
       f"{GRAD_BATCH}), {epochs} epoch(s)")
  _common.write_results(out, table, {"dataset": dataset.name, "epochs": epochs, **records})
  return records


if __name__ == "__main__":
  _common.run(main, "vanishing_gradients.py")
