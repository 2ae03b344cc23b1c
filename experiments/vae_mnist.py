"""Variational autoencoder on binarized MNIST: test negative ELBO, samples, latent space.

Trains configs/vae_mnist.py (784-500-(20, 20)-500-784, Bernoulli decoder,
dynamically binarized training images, 10 epochs) and the same VAE with a 2-D
latent. Reports each run's test negative ELBO in nats (a single-sample estimate
on the once-binarized test images) with its reconstruction and KL parts.

Writes samples.png (64 decoder means sigmoid(decode(z)), z ~ N(0, I)),
reconstructions.png (test images over the decoder mean at their posterior
mean), interpolation.png (rows: pairs of test images, their posterior means
joined by a straight line in z, 10 decoded steps), latent2_scatter.png (the
2-D VAE's posterior means of the test set, coloured by digit), nelbo_curves.png
(train and validation negative ELBO per epoch of both runs), table.md and
results.json.

Usage:  python experiments/vae_mnist.py --data_dir ../shared/data/mnist [--epochs 10]
        python experiments/vae_mnist.py --tiny --workdir /tmp/vae_mnist
"""

from __future__ import annotations

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

NAME = "vae_mnist"
TINY = {"model.hidden": (32,), "model.latent": 4, "num_epochs": 3,
        "optimizer.learning_rate": 1e-2}
ROWS, STEPS = 8, 10  # Interpolation: pairs of test images, decoded points per pair.


def train(latent: int | None, args) -> tuple[jdl.FitResult, dict]:
  config = _common.generative_config(NAME, args, tiny=TINY)
  if latent is not None:
    config.model.latent = latent
  latent = int(config.model.latent)
  workdir = Path(args.workdir) / f"latent{latent}"
  result = _common.fit(config, workdir, quiet=True)
  fitted = time.perf_counter()
  test = result.test_metrics
  record = {"latent": latent, "epochs": int(config.num_epochs), "dataset": config.dataset,
            **{k: test.get(k) for k in ("neg_elbo", "recon", "kl")},
            "history": {k: result.history.get(k, []) for k in ("neg_elbo", "val_neg_elbo")},
            "seconds": _common.variant_seconds(workdir, fitted)}
  print(f"latent {latent}: test -ELBO {record['neg_elbo']:.2f} nats (recon "
        f"{record['recon']:.2f} + KL {record['kl']:.2f}) ({record['seconds']:.0f} s)", flush=True)
  return result, record


def posterior_means(trainer, x: np.ndarray, batch: int = 1000) -> np.ndarray:
  state = trainer.state
  fn = jax.jit(lambda v, x: state.apply_fn(v, x, method="encode")[0])
  return np.concatenate([np.asarray(fn(state.variables, x[i:i + batch]))
                         for i in range(0, len(x), batch)])


def interpolations(trainer, x: np.ndarray) -> np.ndarray:
  """``[ROWS, STEPS, H, W, C]``: decoded lines between the means of test images 2i, 2i+1."""
  state = trainer.state
  means = posterior_means(trainer, x[:2 * ROWS])
  t = np.linspace(0.0, 1.0, STEPS)[None, :, None]
  z = (1 - t) * means[0::2, None] + t * means[1::2, None]  # [ROWS, STEPS, latent]
  decoded = state.apply_fn(state.variables, z.reshape(ROWS * STEPS, -1), method="generate")
  return np.asarray(decoded, np.float32).reshape((ROWS, STEPS) + x.shape[1:])


def main(argv: Sequence[str] | None = None) -> dict:
  args = _common.make_parser(__doc__, name=NAME, epochs=10).parse_args(argv)
  _common.require_mnist(args)  # Before out_dir makes a folder.
  out = _common.out_dir(args, NAME)
  main_run, record = train(None, args)
  flat_run, flat_record = train(2, args) if record["latent"] != 2 else (main_run, record)
  trainer = main_run.trainer
  x_test = np.asarray(trainer.data.test.x)

  trainer.save_samples(out / "samples.png", n=64, key=jax.random.key(0),
                       title=f"VAE (latent {record['latent']}): 64 samples, decoder means")
  trainer.save_reconstructions(out / "reconstructions.png", n=10)
  images.save_interpolation(
      interpolations(trainer, x_test), out / "interpolation.png",
      title="test-image pairs: straight lines between posterior means")
  images.save_latent_scatter(
      posterior_means(flat_run.trainer, x_test),
      np.asarray(flat_run.trainer.data.test.y).astype(np.int64), out / "latent2_scatter.png",
      title="2-D VAE: posterior means of the test set")
  curves = {}
  runs = [record] if flat_record is record else [record, flat_record]
  for r in runs:
    for key, what in (("neg_elbo", "train"), ("val_neg_elbo", "val")):
      ys = r["history"][key]
      if ys:
        curves[f"latent {r['latent']} {what}"] = (np.arange(1, len(ys) + 1), ys)
  images.save_curves(curves, out / "nelbo_curves.png", xlabel="epoch",
                     ylabel="negative ELBO (nats)",
                     title="train (dynamic binarization, training mode) vs validation")

  records = {f"latent{r['latent']}": r for r in runs}
  rows = [(r["latent"], r["epochs"], f"**{r['neg_elbo']:.2f}**", f"{r['recon']:.2f}",
           f"{r['kl']:.2f}", f"{r['seconds']:.0f} s") for r in records.values()]
  table = _common.markdown_table(
      ("latent", "epochs", "test -ELBO (nats)", "reconstruction NLL", "KL", "time"), rows)
  print(f"\n{record['dataset']}:\n{table}")
  _common.write_results(out, table, records)
  return records


if __name__ == "__main__":
  _common.run(main, "vae_mnist.py")
