"""The adding problem: LSTM, GRU and a simple RNN at T = 50, 100, 200, and their vanishing gradients.

Trains configs/adding_problem.py for every (cell, T) into WORKDIR/adding_{cell}_T{T}
(a finished run is reused, an interrupted one resumed), reads each run's test MSE
(the trivial baseline, always predicting 1, scores 1/6 = 0.167), and draws:

* ``val_mse.png``: validation MSE per epoch of each cell at each T;
* ``input_gradients.png``: the vanishing gradient, shown. For each cell at T =
  ``--grad_T``, ``mean_b ||d loss / d x_t||`` for every time step t (the gradient of
  the batch's MSE with respect to the inputs, jax.grad on 256 test sequences), of the
  initial model and of the trained one: a simple RNN's gradient from the early
  steps is orders of magnitude below that from the last steps, so it cannot learn
  to carry the first marked value; the gated cells' is not.

Writes ``results.json`` and ``table.md`` beside the figures.

Usage:  python experiments/adding_problem.py [--lengths 50,100,200] [--cells lstm,gru,simple] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402
from jdl.train import loop  # noqa: E402

NAME = "adding_problem"
BASELINE = 1 / 6


def make_config(cell: str, seq_len: int, args) -> jdl.config.ml_collections.ConfigDict:
  config = jdl.load_config(NAME)
  config.model.cell = cell
  config.sequence.seq_len = seq_len
  if args.tiny:
    config.n_samples, config.num_epochs, config.model.hidden = 500, 2, (8,)
  if args.epochs:  # --epochs wins over --tiny's.
    config.num_epochs = args.epochs
  return config


def input_gradient_norms(trainer: loop.Trainer, state, x, y) -> np.ndarray:
  """``[T]``: mean over the batch of ``||d MSE / d x_t||`` (the trainer's own model)."""
  def loss(xs):
    out = state.apply_fn(state.variables, xs, train=False)
    return jnp.mean(jnp.square(out - y))
  g = jax.jit(jax.grad(loss))(x)  # [B, T, F]
  return np.asarray(jnp.mean(jnp.linalg.norm(g, axis=-1), axis=0))


def history(workdir: Path) -> list[float]:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r["mse"] for r in rows if r.get("split") == "val"]


CELLS = ("lstm", "gru", "simple")


def _cells(raw: str) -> list[str]:
  cells = [c.strip() for c in raw.split(",")]
  unknown = [c for c in cells if c not in CELLS]
  if unknown or len(set(cells)) != len(cells):
    raise argparse.ArgumentTypeError(f"must list distinct cells of {', '.join(CELLS)}, got "
                                     f"{raw!r}")
  return cells


def main(argv=None) -> int:
  parser = _common.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs", help="runs go to WORKDIR/adding_{cell}_T{T}")
  parser.add_argument("--lengths", type=_common.int_list(2), default=[50, 100, 200],
                      help="comma list of sequence lengths T (default 50,100,200)")
  parser.add_argument("--cells", type=_cells, default=list(CELLS),
                      help=f"comma list of {', '.join(CELLS)} (default all)")
  parser.add_argument("--grad_T", type=_common.int_in(2), default=100,
                      help="T of the gradient figure, one of --lengths")
  parser.add_argument("--epochs", type=_common.epochs_arg, default=0,
                      help="default: the config's")
  parser.add_argument("--tiny", action="store_true", help="500 sequences, 2 epochs")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  if args.grad_T not in args.lengths:
    parser.error(f"--grad_T {args.grad_T} is not one of --lengths "
                 f"{','.join(map(str, args.lengths))}: input_gradients.png would not be drawn")
  # The published figures are of the default lengths and cells, the gradients at T = 100.
  out = _common.out_dir(args, NAME, partial=(sorted(args.lengths) != [50, 100, 200]
                                              or sorted(args.cells) != sorted(CELLS)
                                              or args.grad_T != 100))
  lengths, cells = args.lengths, args.cells
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  results, curves, grads = [], {}, {}
  for seq_len in lengths:
    for cell in cells:
      workdir = Path(args.workdir) / f"adding_{cell}_T{seq_len}"
      t0 = time.perf_counter()
      result = _common.fit(make_config(cell, seq_len, args), workdir, quiet=True)
      mse = result.test_metrics["mse"]
      results.append({"cell": cell, "T": seq_len, "test_mse": mse,
                      "learned": mse < 0.01,
                      "train_seconds": round(_common.epoch_seconds(workdir), 1),
                      "steps": int(result.state.step)})
      curves[(cell, seq_len)] = history(workdir)
      print(f"{cell:>6} T={seq_len:<4} test MSE {mse:.4f} ({time.perf_counter() - t0:.0f} s)",
            flush=True)
      if seq_len == args.grad_T:
        trainer = result.trainer
        x, y = trainer.data.test.x[:256], trainer.data.test.y[:256]
        initial = loop.Trainer(trainer.config, None, quiet=True).state
        grads[cell] = {"initial": input_gradient_norms(trainer, initial, x, y),
                       "trained": input_gradient_norms(trainer, result.state, x, y)}

  fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.6), squeeze=False)
  for ax, seq_len in zip(axes[0], lengths):
    for cell in cells:
      ax.plot(np.arange(1, len(curves[(cell, seq_len)]) + 1), curves[(cell, seq_len)],
              label=cell)
    ax.axhline(BASELINE, color="grey", ls="--", lw=1, label="predict 1 (1/6)")
    ax.set_yscale("log")
    ax.set_title(f"T = {seq_len}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / "val_mse.png", dpi=120)
  plt.close(fig)

  if grads:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, which in zip(axes, ("initial", "trained")):
      for cell in cells:
        ax.plot(np.arange(args.grad_T), grads[cell][which], label=cell)
      ax.set_yscale("log")
      ax.set_xlabel("time step t of the input")
      ax.set_title(f"{which} model, T = {args.grad_T}")
      ax.legend(fontsize=8)
    axes[0].set_ylabel("mean ||d loss / d x_t||")
    fig.suptitle("Gradient of the loss with respect to each input step")
    fig.tight_layout()
    fig.savefig(out / "input_gradients.png", dpi=120)
    plt.close(fig)
    for cell in cells:
      g = grads[cell]
      for which in ("initial", "trained"):
        ratio = float(g[which][0] / g[which][-1])
        for r in results:
          if r["cell"] == cell and r["T"] == args.grad_T:
            r[f"grad_first_over_last_{which}"] = ratio

  rows = []
  for r in results:
    ratio = (f"{r['grad_first_over_last_initial']:.1e}, {r['grad_first_over_last_trained']:.1e}"
             if "grad_first_over_last_initial" in r else "")
    rows.append([r["cell"], r["T"], f"{r['test_mse']:.4f}", "yes" if r["learned"] else "no",
                 ratio, r["train_seconds"]])
  table = _common.markdown_table(["cell", "T", "test MSE", "learned (< 0.01)",
                                  "grad ratio x_1 / x_T (init, trained)",
                                  "epochs s (no compile)"], rows)
  _common.write_results(out, table, results)
  print(table)
  return 0


if __name__ == "__main__":
  _common.run(main, "adding_problem.py")
