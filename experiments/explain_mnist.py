"""Trains a small MNIST CNN (configs/explain_mnist.py) and explains its test predictions.

Trains (or reuses the finished run in --workdir), then for one test digit of each of
the first --num_digits classes writes overlays.png (rows: digits; columns: input,
saliency |grad|, gradient x input, integrated gradients, LIME on a grid of cells)
and prints the integrated-gradients completeness errors. The deletion check sets
the k most attributed pixels of --deletion_examples test images to black and
measures the accuracy, against k random pixels and the k brightest pixels; the
curves go to deletion.png. The explained output is the predicted class's logit
(probability for LIME); the IG and LIME baseline is the black image.

Usage:  python experiments/explain_mnist.py --data_dir ../shared/data/mnist [--workdir runs/explain_mnist]
        [--config.KEY=VALUE ...]
        python experiments/explain_mnist.py --tiny --workdir /tmp/explain   # 8x8 digits, seconds
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402
from jdl import explain  # noqa: E402
from jdl.config import apply_overrides  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "explain_mnist"
KS = (0, 10, 25, 50, 100, 150)  # Pixels removed per image (of 784) in the deletion check.
# --tiny (8x8 digits): smaller defaults for what the flags leave unset.
FULL = {"ig_steps": 50, "lime_samples": 1000, "cell_size": 4, "deletion_examples": 500,
        "deletion_lime_examples": 100}
TINY = {"ig_steps": 16, "lime_samples": 64, "cell_size": 2, "deletion_examples": 100,
        "deletion_lime_examples": 10}


def parse_args(argv):
  p = _common.ArgumentParser(description=__doc__.splitlines()[0],
                             epilog="Also --config.KEY=VALUE overrides of the CNN's config "
                                    "(explain_mnist), as for `jdl train`.")
  p.add_argument("--data_dir", default="../shared/data/mnist")
  p.add_argument("--workdir", default="runs/explain_mnist")
  p.add_argument("--out", default="",
                 help=f"default {OUT} for the full run; WORKDIR/results for --tiny or any other")
  p.add_argument("--tiny", action="store_true",
                 help="the 8x8 digits, a narrow CNN, fewer samples: a smoke run of about a minute or less")
  p.add_argument("--num_digits", type=_common.int_in(1, 10), default=6,
                 help="digits shown in the overlay grids, 1-10 (default 6)")
  for name, value in FULL.items():
    p.add_argument(f"--{name}", type=_common.int_in(1), default=None,
                   help=f"default {value} ({TINY[name]} with --tiny)")
  p.add_argument("--seed", type=int, default=0,
                 help="the CNN's seed and the explanations' (--config.seed sets both too)")
  args, rest = p.parse_known_args(argv)
  for name in FULL:
    if getattr(args, name) is None:
      setattr(args, name, (TINY if args.tiny else FULL)[name])
  overrides = {}
  for arg in rest:  # --config.KEY=VALUE, as for `jdl train`.
    if not (arg.startswith("--config.") and "=" in arg):
      p.error(f"unrecognized argument {arg!r}")
    key, value = arg[len("--config."):].split("=", 1)
    overrides[key] = value
  return args, overrides


def attributions(m, x, black, *, ig_steps, lime_samples, cell_size, key, with_lime=True,
                 with_gradients=True, chunk=50):
  """Per-method ``[n, 28, 28, 1]`` attributions for the predicted class; IG errors."""
  out = {"saliency": [], "gradient_x_input": [], "integrated_gradients": [], "lime": []}
  rel = []
  for i in range(0, len(x) if with_gradients else 0, chunk):
    xb = x[i:i + chunk]
    out["saliency"].append(explain.saliency(m.apply_fn, m.variables, xb))
    out["gradient_x_input"].append(
        explain.saliency(m.apply_fn, m.variables, xb, variant="gradient_x_input"))
    ig = explain.integrated_gradients(m.apply_fn, m.variables, xb, baseline=black,
                                      steps=ig_steps, steps_per_batch=10, check="off")
    out["integrated_gradients"].append(ig.attributions)
    rel.append(ig.relative_error)
  if with_lime:
    for j, image in enumerate(x):
      res = explain.lime_image(m.probabilities, image, key=jax.random.fold_in(key, j),
                               cell_size=cell_size, baseline=black[0], num_samples=lime_samples)
      out["lime"].append(res.attribution[None, :, :, None])
  return {k: np.concatenate(v) for k, v in out.items() if v}, np.concatenate(rel or [[]])


def deletion_ks(num_pixels: int) -> list[int]:
  """KS for an image of ``num_pixels`` pixels: the same fractions as of MNIST's 784."""
  return sorted({round(k * num_pixels / 784) for k in KS})


def deletion(m, x, y, scores, black, key):
  """Accuracy after removing the top-k pixels by each score, for each k of deletion_ks."""
  rows = {}
  for name, s in {"random": np.asarray(jax.random.uniform(key, x.shape)),
                  "brightest": np.asarray(x), **scores}.items():
    rows[name] = []
    for k in deletion_ks(int(np.prod(x.shape[1:3]))):
      pred = np.argmax(m.logits(explain.remove_top_k(x, s, k, black)), axis=1)
      rows[name].append(round(float(np.mean(pred == y)), 4))
  return rows


def plot_deletion(rows, ks, num_pixels, path):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(5, 3.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, acc in rows.items():
    ax.plot(ks, acc, marker="o", label=name, linestyle="--" if name in ("random", "brightest")
            else "-")
  ax.set_xlabel(f"pixels set to black (of {num_pixels})")
  ax.set_ylabel("test accuracy")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def main(argv=None) -> dict:
  args, overrides = parse_args(argv)
  _common.require_mnist(args)
  # Only the full run (FULL's samples, 6 digits, seed 0, the config as it is) writes
  # the published figures; any other goes to WORKDIR/results, said (--out chooses).
  partial = bool(overrides) or args.seed != 0 or args.num_digits != 6 or any(
      getattr(args, name) != value for name, value in FULL.items())
  out = _common.out_dir(args, "explain_mnist", partial=partial)  # Before training.
  config = jdl.load_config("explain_mnist")
  config.data_dir, config.seed = args.data_dir, args.seed
  if args.tiny:
    _common.tiny_digits(config)
  apply_overrides(config, overrides)
  t0 = time.perf_counter()
  result = _common.fit(config, args.workdir, quiet=True)
  acc = result.test_metrics["accuracy"]
  print(f"CNN: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)

  m = explain.from_run(result)
  test = result.trainer.data.test
  x_all, y_all = np.asarray(test.x), np.asarray(test.y)
  black = m.normalize(np.zeros((1, *x_all.shape[1:]), np.float32))
  key = jax.random.key(int(config.seed))  # --seed, or a --config.seed override of it.

  # One digit per class for the pictures.
  picks = [int(np.flatnonzero(y_all == c)[0]) for c in range(args.num_digits)]
  t0 = time.perf_counter()
  # Three streams of randomness: the pictures' LIME (0), the deletion check's random
  # scores (1) and its LIME (2). (The pictures' LIME drew from fold_in(key, j) for
  # digit j, so digit 1's masks were the random scores' bits.)
  attr, rel = attributions(m, x_all[picks], black, ig_steps=args.ig_steps,
                           lime_samples=args.lime_samples, cell_size=args.cell_size,
                           key=jax.random.fold_in(key, 0))
  pred = np.argmax(m.logits(x_all[picks]), axis=1)
  print(f"attributions for {len(picks)} digits ({time.perf_counter() - t0:.0f} s); IG relative "
        f"completeness errors: {', '.join(f'{e:.2e}' for e in rel)}", flush=True)
  methods = ("saliency", "gradient_x_input", "integrated_gradients", "lime")
  images, maps, titles = [], [], []
  for i, (idx, p) in enumerate(zip(picks, pred)):
    images += [x_all[idx]] * 5
    maps += [None] + [attr[k][i] for k in methods]
    titles += [f"label {y_all[idx]}, pred {p}", "saliency |grad|", "grad x input",
               f"IG (err {rel[i]:.0e})", f"LIME {args.cell_size}x{args.cell_size} cells"]
  explain.save_overlay_grid(images, maps, out / "overlays.png", titles=titles, ncols=5,
                            panel_size=1.6, dpi=60)

  # Deletion check on the first test images (LIME on fewer: it needs many model calls).
  n = min(args.deletion_examples, len(x_all))
  t0 = time.perf_counter()
  x, y = x_all[:n], y_all[:n]
  scores, rel_n = attributions(m, x, black, ig_steps=args.ig_steps, lime_samples=0,
                               cell_size=args.cell_size, key=key, with_lime=False)
  rows = deletion(m, x, y, scores, black, jax.random.fold_in(key, 1))
  n_lime = min(args.deletion_lime_examples, n)
  lime_scores, _ = attributions(m, x[:n_lime], black, ig_steps=0, lime_samples=args.lime_samples,
                                cell_size=args.cell_size, key=jax.random.fold_in(key, 2),
                                with_gradients=False)
  lime_rows = deletion(m, x[:n_lime], y[:n_lime], {"lime": lime_scores["lime"]}, black,
                       jax.random.fold_in(key, 1))
  rows["lime"] = lime_rows["lime"]
  print(f"deletion check ({time.perf_counter() - t0:.0f} s); IG relative completeness error "
        f"over {n} images: median {np.median(rel_n):.2e}, 95th percentile "
        f"{np.percentile(rel_n, 95):.2e}, max {rel_n.max():.2e}")
  num_pixels = int(np.prod(x_all.shape[1:3]))
  ks = deletion_ks(num_pixels)
  plot_deletion(rows, ks, num_pixels, out / "deletion.png")
  print(f"\nTest accuracy after setting the top-k pixels to black ({n} test images; "
        f"LIME and its random reference on the first {n_lime}):\n")
  print("| pixels removed | " + " | ".join(str(k) for k in ks) + " |")
  print("|---|" + "---:|" * len(ks))
  for name, accs in rows.items():
    print(f"| {name} | " + " | ".join(f"{a:.1%}" for a in accs) + " |")
  print(f"| random (first {n_lime}) | " + " | ".join(f"{a:.1%}" for a in lime_rows["random"])
        + " |")
  summary = {"test_accuracy": acc, "ig_relative_error": [round(float(e), 5) for e in rel],
             "ig_relative_error_median": round(float(np.median(rel_n)), 5),
             "deletion_k": ks,
             "deletion": rows}
  print(json.dumps(summary))
  return summary


if __name__ == "__main__":
  _common.run(main, "explain_mnist.py")
