"""Anomaly detection with an autoencoder trained without one digit, against PCA.

Trains configs/ae_anomaly.py (dense autoencoder 784-256-64, sigmoid code) on the
training images of every digit but the held-out one (default 9), then scores the
FULL test set: anomaly score = per-image mean squared error of the reconstruction
sigmoid(logits). Reports the ROC-AUC of "is the held-out digit" for the
autoencoder and for PCA with as many components as the code, fitted on the same
training images. It also compares linear reconstructions at the code's dimension
k: a least-squares affine map from the autoencoder's code to the pixels against
PCA's k components. On the training images PCA is the best affine rank-k
reconstruction (Eckart-Young), so its train MSE must be <= the map's; the test
MSEs (normal test digits) follow, next to the autoencoder's own nonlinear decoder.

Writes, per held-out digit D: roc_dD.png (AE and PCA), scores_dD.png (score
histograms, normal vs held-out), recon_normal_dD.png and recon_heldout_dD.png;
and table.md + results.json (one row per held-out digit).

Usage:  python experiments/ae_anomaly.py --data_dir ../shared/data/mnist [--holdout 9]
        python experiments/ae_anomaly.py --data_dir ../shared/data/mnist --digits all
        python experiments/ae_anomaly.py --tiny --workdir /tmp/ae_anomaly
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jdl  # noqa: E402
from jdl.generative import images  # noqa: E402

NAME = "ae_anomaly"
TINY = {"model.hidden": (32,), "model.latent": 8, "num_epochs": 3,
        "optimizer.learning_rate": 1e-2}


def encode_reconstruct(state, x: np.ndarray, batch: int = 1000):
  """``(codes [N, k], reconstructions sigmoid(logits) [N, ...])`` of ``x``."""
  fn = jax.jit(lambda v, x: (state.apply_fn(v, x, method="encode"),
                             jax.nn.sigmoid(state.apply_fn(v, x, train=False))))
  parts = [fn(state.variables, x[i:i + batch]) for i in range(0, len(x), batch)]
  return (np.concatenate([np.asarray(c, np.float64) for c, _ in parts]),
          np.concatenate([np.asarray(r, np.float32) for _, r in parts]))


def per_image_mse(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
  diff = np.asarray(x, np.float64) - np.asarray(recon, np.float64)
  return np.mean(np.square(diff).reshape(len(x), -1), axis=1)


def pca_reconstructor(x_train: np.ndarray, k: int):
  """The rank-``k`` PCA reconstruction fitted on ``x_train`` ``[N, D]`` (float64)."""
  mean = x_train.mean(axis=0)
  centered = x_train - mean
  _, vecs = np.linalg.eigh(centered.T @ centered)  # Ascending eigenvalues.
  basis = vecs[:, -k:]
  return lambda x: mean + (x - mean) @ basis @ basis.T


def linear_decoder(codes: np.ndarray, x_train: np.ndarray):
  """Least-squares affine map code -> pixels, fitted on the training images."""
  design = lambda c: np.concatenate([c, np.ones((len(c), 1))], axis=1)  # noqa: E731
  weights, *_ = np.linalg.lstsq(design(codes), x_train, rcond=None)
  return lambda c: design(c) @ weights


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> dict:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sklearn.metrics import roc_auc_score, roc_curve
  aucs = {}
  fig, ax = plt.subplots(figsize=(5, 5))
  for name, (scores, labels) in curves.items():
    aucs[name] = float(roc_auc_score(labels, scores))
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=f"{name} (AUC {aucs[name]:.4f})")
  ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="chance")
  ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
  _common.save_figure(fig, [ax], path, title)
  return aucs


def plot_histogram(scores: np.ndarray, anomaly: np.ndarray, digit: int, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  bins = np.linspace(scores.min(), np.quantile(scores, 0.995), 60)
  ax.hist(scores[~anomaly], bins=bins, density=True, alpha=0.6, label="normal digits")
  ax.hist(scores[anomaly], bins=bins, density=True, alpha=0.6, label=f"held-out digit {digit}")
  ax.set(xlabel="reconstruction MSE per image (anomaly score)", ylabel="density")
  _common.save_figure(fig, [ax], path, "autoencoder anomaly scores on the test set")


def run_digit(digit: int, args, out: Path) -> dict:
  config = _common.generative_config(NAME, args, tiny=TINY)
  config.classes = tuple(c for c in range(10) if c != digit)
  workdir = Path(args.workdir) / f"holdout_{digit}"
  result = _common.fit(config, workdir, quiet=True)
  fitted = time.perf_counter()
  state, k = result.trainer.state, int(config.model.latent)
  x_train = np.asarray(result.trainer.data.train.x)  # Normal digits, validation held out.
  full = jdl.data.load_dataset(config.dataset, data_dir=config.data_dir,
                               test_split=float(config.test_split), seed=int(config.seed),
                               download=False)  # Every test digit, same split as training.
  x_test, anomaly = np.asarray(full.x_test, np.float32), np.asarray(full.y_test) == digit
  flat = lambda x: np.asarray(x, np.float64).reshape(len(x), -1)  # noqa: E731

  codes_train, recon_train = encode_reconstruct(state, x_train)
  codes_test, recon_test = encode_reconstruct(state, x_test)
  ae_scores = per_image_mse(x_test, recon_test)
  pca = pca_reconstructor(flat(x_train), k)
  pca_scores = per_image_mse(flat(x_test), pca(flat(x_test)))
  aucs = plot_roc({"autoencoder": (ae_scores, anomaly), f"PCA, {k} components": (pca_scores,
                                                                                 anomaly)},
                  out / f"roc_d{digit}.png", f"detecting the held-out digit {digit}")
  plot_histogram(ae_scores, anomaly, digit, out / f"scores_d{digit}.png")
  for name, sel, what in (("normal", ~anomaly, "normal digits"),
                          ("heldout", anomaly, f"held-out {digit}s")):
    images.save_reconstructions(x_test[sel], recon_test[sel],
                                out / f"recon_{name}_d{digit}.png", title=f"{what}: test / recon.")

  linear = linear_decoder(codes_train, flat(x_train))
  normal = ~anomaly
  mse = lambda x, r: float(per_image_mse(flat(x), r).mean())  # noqa: E731
  record = {
      "holdout": digit, "code_dim": k, "epochs": int(config.num_epochs),
      "auc_autoencoder": aucs["autoencoder"], "auc_pca": aucs[f"PCA, {k} components"],
      "mean_score_normal": float(ae_scores[normal].mean()),
      "mean_score_heldout": float(ae_scores[anomaly].mean()),
      "mse_train": {"autoencoder": mse(x_train, flat(recon_train)),
                    "linear_from_code": mse(x_train, linear(codes_train)),
                    "pca": mse(x_train, pca(flat(x_train)))},
      "mse_test_normal": {"autoencoder": mse(x_test[normal], flat(recon_test[normal])),
                          "linear_from_code": mse(x_test[normal], linear(codes_test[normal])),
                          "pca": mse(x_test[normal], pca(flat(x_test[normal])))},
      "test_metrics": result.test_metrics,
      "seconds": _common.variant_seconds(workdir, fitted),
  }
  tr = record["mse_train"]
  record["pca_le_linear_on_train"] = tr["pca"] <= tr["linear_from_code"] * (1 + 1e-9)
  print(f"held out {digit}: AUC autoencoder {record['auc_autoencoder']:.4f}, PCA "
        f"{record['auc_pca']:.4f}; train MSE AE {tr['autoencoder']:.5f}, linear-from-code "
        f"{tr['linear_from_code']:.5f}, PCA-{k} {tr['pca']:.5f} ({record['seconds']:.0f} s)",
        flush=True)
  if not record["pca_le_linear_on_train"]:
    print("  warning: PCA's train MSE exceeds the linear map's; check the fit", flush=True)
  return record


def _bold(text: str, best: bool) -> str:
  return f"**{text}**" if best else text


def _digits(raw: str) -> list[int]:
  if raw == "all":
    return list(range(10))
  try:
    return _common.int_list(0, 9)(raw)
  except argparse.ArgumentTypeError as e:
    raise argparse.ArgumentTypeError(f"'all' or a comma list of digits 0-9: {e}") from None


def main(argv: Sequence[str] | None = None) -> dict:
  parser = _common.make_parser(__doc__, name=NAME, epochs=10)
  parser.add_argument("--holdout", type=_common.int_in(0, 9), default=None,
                      help="the anomalous digit, 0-9 (default 9)")
  parser.add_argument("--digits", type=_digits, default=None,
                      help="'all' or a comma list of digits: one training per held-out digit")
  args = parser.parse_args(argv)
  if args.digits and args.holdout is not None:
    parser.error("give --holdout or --digits, not both (--digits trains one run per digit)")
  digits = args.digits or [9 if args.holdout is None else args.holdout]
  _common.require_mnist(args)  # Before out_dir makes a folder.
  out = _common.out_dir(args, NAME, partial=sorted(digits) != list(range(10)))
  records = {str(d): run_digit(d, args, out) for d in digits}
  rows = []
  for r in records.values():
    tr, te = r["mse_train"], r["mse_test_normal"]
    ae, pca = r["auc_autoencoder"], r["auc_pca"]
    rows.append((r["holdout"], _bold(f"{ae:.4f}", ae >= pca), _bold(f"{pca:.4f}", pca > ae),
                 f"{te['autoencoder']:.5f}",
                 f"{te['linear_from_code']:.5f} ({tr['linear_from_code']:.5f})",
                 f"{te['pca']:.5f} ({tr['pca']:.5f})"))
  k = next(iter(records.values()))["code_dim"]
  table = _common.markdown_table(
      ("held-out digit", "ROC-AUC autoencoder", f"ROC-AUC PCA-{k}",
       "AE test MSE (normal digits)", f"linear map from {k}-d code: test (train) MSE",
       f"PCA-{k}: test (train) MSE"), rows)
  print(f"\n{table}")
  _common.write_results(out, table, records)
  return records


if __name__ == "__main__":
  _common.run(main, "ae_anomaly.py")
