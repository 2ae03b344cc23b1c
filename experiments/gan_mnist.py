"""GANs on MNIST: Inception Score and Frechet distance against real data, latent walks.

Trains configs/gan_mnist.py (MLP GAN), dcgan_mnist.py or wgan_gp_mnist.py
(``--config``), or takes the finished run from its workdir, and scores 10,000
generated images with a jdl MNIST classifier as the "Inception" network
(``--classifier``, default runs/mnist_fast): Inception Score of the samples and
Frechet distance of their classifier features to the test set's. The same
numbers for real images are the yardstick: the IS of the real test images, and
the IS of 10,000 real training images with their Frechet distance to the test set.

Writes samples.png (64 samples), interpolation.png (rows: spherical
interpolation between two random noise vectors, 10 steps), arithmetic.png
(vector arithmetic: from 2,000 samples the judge classifies, the mean noise of
the 3 most confident samples of digits a, b and c; each row shows G(z_a),
G(z_b), G(z_c) and G(z_a - z_b + z_c), whose class the judge reports; the mean
of 3 standard normal vectors combined as a - b + c has the prior's variance),
curves.png (the task's per-epoch training losses), table.md and results.json.

Usage:  python experiments/gan_mnist.py --data_dir ../shared/data/mnist [--config dcgan_mnist]
          [--classifier runs/mnist_fast]   (train it first: jdl train --config mnist_fast ...)
        python experiments/gan_mnist.py --tiny --workdir /tmp/gan_mnist
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jdl  # noqa: E402
from jdl.generative import evaluation, images  # noqa: E402
from jdl.generative import judge as judge_lib  # noqa: E402
from jdl.generative import tasks as gen_tasks  # noqa: E402

NAME = "gan_mnist"
CONFIGS = ("gan_mnist", "dcgan_mnist", "wgan_gp_mnist")
TINY = {"num_epochs": 2, "generative.latent_dim": 16, "generative.eval_samples": 1000}
TINY_MODEL = {"mlp_gan": {"model.generator.hidden": (32,), "model.discriminator.hidden": (32,)},
              "dcgan": {"model.generator.features": (16, 8),
                        "model.discriminator.features": (8, 16)}}
TRIPLETS = ((7, 1, 4), (9, 4, 1), (8, 3, 2), (6, 0, 5))  # Rows (a, b, c) of G(z_a - z_b + z_c).
TOP = 3  # Samples averaged per class for its noise vector.


def classifier_run(args) -> str:
  """The judge's workdir; with --tiny a digits classifier is trained there if missing."""
  path = Path(args.classifier or (Path(args.workdir) / "classifier" if args.tiny
                                  else "runs/mnist_fast"))
  if (path / "config.json").is_file():
    return str(path)
  if not args.tiny:
    raise jdl.JdlError(f"no classifier run in {path}; train it first (jdl train --config "
                       f"mnist_fast --workdir {path} --config.data_dir={args.data_dir}) or "
                       "pass --classifier DIR")
  config = jdl.load_config("digits_mlp")
  _common.quiet_outputs(config)
  config.num_epochs = 10
  result = _common.fit(config, path, quiet=True)
  print(f"digits classifier for the judge: test accuracy "
        f"{result.test_metrics['accuracy']:.2%}", flush=True)
  return str(path)


def generate(state, z: np.ndarray, batch: int = 500) -> np.ndarray:
  fn = jax.jit(lambda st, z: st.sample(z))
  return np.concatenate([np.asarray(fn(state, z[i:i + batch]), np.float32)
                         for i in range(0, len(z), batch)])


def slerp(z0: np.ndarray, z1: np.ndarray, steps: int) -> np.ndarray:
  """``[R, steps, D]``: spherical interpolation between rows of ``z0`` and ``z1``."""
  cos = np.sum(z0 * z1, -1) / (np.linalg.norm(z0, axis=-1) * np.linalg.norm(z1, axis=-1))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))[:, None, None]
  t = np.linspace(0.0, 1.0, steps)[None, :, None]
  return (np.sin((1 - t) * omega) * z0[:, None] + np.sin(t * omega) * z1[:, None]) / np.sin(omega)


def arithmetic(state, judge, latent: int, out: Path) -> list[dict]:
  """The vector-arithmetic figure; returns per triplet the judge's verdict."""
  z = np.asarray(jax.random.normal(jax.random.key(2), (2000, latent)), np.float64)
  probs, _ = judge(generate(state, z.astype(np.float32)))
  means, confidence = {}, {}
  for c in sorted({c for t in TRIPLETS for c in t}):
    order = np.argsort(-probs[:, c])[:TOP]  # The TOP samples the judge finds most c-like.
    means[c], confidence[c] = z[order].mean(0), float(probs[order, c].mean())
  rows = np.stack([np.stack([means[a], means[b], means[c], means[a] - means[b] + means[c]])
                   for a, b, c in TRIPLETS]).astype(np.float32)
  flat = generate(state, rows.reshape(-1, latent))
  pictures = flat.reshape(rows.shape[:2] + flat.shape[1:])
  p_out, _ = judge(pictures[:, 3])
  verdicts = [{"a": a, "b": b, "c": c, "judge_class": int(p.argmax()),
               "judge_prob": float(p.max()), "confidence_abc": [confidence[k] for k in (a, b, c)]}
              for (a, b, c), p in zip(TRIPLETS, p_out)]
  said = " ".join(f"{a}{b}{c}" for a, b, c in TRIPLETS)
  images.save_interpolation(pictures, out / "arithmetic.png",
                            title=f"G(z_a), G(z_b), G(z_c), G(z_a-z_b+z_c)\nrows a,b,c: {said}")
  return verdicts


def main(argv: Sequence[str] | None = None) -> dict:
  parser = _common.make_parser(
      __doc__, name=NAME,
      epochs="the config's num_epochs: gan_mnist 70, wgan_gp_mnist 200, dcgan_mnist 10",
      out_help="plots and tables; default experiments/results/CONFIG "
               "(WORKDIR/results/CONFIG with --tiny)")
  parser.add_argument("--config", default="gan_mnist", choices=CONFIGS)
  parser.add_argument("--classifier", default="",
                      help="the judge's run; default runs/mnist_fast (--tiny: WORKDIR/classifier)")
  args = parser.parse_args(argv)
  _common.require_mnist(args)  # The data first: the judge's run is trained on it.
  classifier = classifier_run(args)
  config = _common.generative_config(args.config, args, tiny=TINY)
  if args.tiny:
    _common.apply_overrides(config, TINY_MODEL[config.model.name])
  config.generative.classifier_workdir = classifier
  if (args.tiny or args.epochs) and not args.out:  # One folder per config, as
    args.out = str(Path(args.workdir) / "results" / args.config)  # experiments/results.
    if args.epochs:
      print(f"a run given --epochs: figures and tables go to {args.out}, not "
            f"experiments/results/{args.config} (--out to choose)", file=sys.stderr)
  out = _common.out_dir(args, args.config)
  workdir = Path(args.workdir) / args.config
  result = _common.fit(config, workdir, quiet=True)
  trainer, seconds = result.trainer, _common.training_seconds(workdir)
  state, judge, n = trainer.state, trainer.judge(), int(config.generative.eval_samples)
  latent = int(config.generative.latent_dim)

  fake = result.test_metrics
  if "frechet_distance" not in fake:  # E.g. the run finished before the judge existed.
    fake = trainer.generative_scores(trainer.data.test)
  x_test, x_train = np.asarray(trainer.data.test.x), np.asarray(trainer.data.train.x)
  pick = np.random.default_rng(0).permutation(len(x_train))[:n]
  real_train = judge_lib.scores(judge, x_train[pick], x_test)
  real_test_is = evaluation.inception_score(judge(x_test)[0], splits=10)
  records = {
      "config": args.config, "dataset": config.dataset, "epochs": int(config.num_epochs),
      "classifier": classifier, "train_seconds": seconds,
      "generated": {k: fake[k] for k in ("inception_score", "inception_score_std",
                                         "frechet_distance")},
      "real_train": {**real_train, "n": len(pick)},
      "real_test": {"inception_score": real_test_is[0], "inception_score_std": real_test_is[1],
                    "n": len(x_test)},
  }

  trainer.save_samples(out / "samples.png", n=64, key=jax.random.key(0),
                       title=f"{args.config}: 64 samples")
  ends = np.asarray(jax.random.normal(jax.random.key(1), (2, 8, latent)), np.float64)
  walks = slerp(ends[0], ends[1], 10).astype(np.float32)
  pictures = generate(state, walks.reshape(-1, latent))
  images.save_interpolation(pictures.reshape(walks.shape[:2] + pictures.shape[1:]),
                            out / "interpolation.png",
                            title="spherical interpolation between random noise pairs")
  records["arithmetic"] = arithmetic(state, judge, latent, out)
  names = [k for k in gen_tasks.METRICS[config.task] if result.history.get(k)]
  images.save_curves({k: (np.arange(1, len(result.history[k]) + 1), result.history[k])
                      for k in names}, out / "curves.png", xlabel="epoch",
                     ylabel="training mean per epoch", title=f"{args.config}: training losses")
  records["history"] = {k: result.history[k] for k in names}

  g, rt, rs = records["generated"], records["real_train"], records["real_test"]
  table = _common.markdown_table(
      ("images", "Inception Score", "Frechet distance to the test set"),
      [(f"generated ({n:,})", f"**{g['inception_score']:.3f}** +- "
        f"{g['inception_score_std']:.3f}", f"**{g['frechet_distance']:.3f}**"),
       (f"real train ({len(pick):,})", f"{rt['inception_score']:.3f} +- "
        f"{rt['inception_score_std']:.3f}", f"{rt['frechet_distance']:.3f}"),
       (f"real test ({len(x_test):,})", f"{rs['inception_score']:.3f} +- "
        f"{rs['inception_score_std']:.3f}", "0 (itself)")])
  arith = _common.markdown_table(
      ("a - b + c", "judge's class of G(z_a - z_b + z_c)", "its probability"),
      [(f"{v['a']} - {v['b']} + {v['c']}", v["judge_class"], f"{v['judge_prob']:.3f}")
       for v in records["arithmetic"]])
  table = (f"{args.config} on {config.dataset}, {records['epochs']} epochs, judge {classifier}:"
           f"\n\n{table}\n\n{arith}")
  print(f"\n{table}")
  _common.write_results(out, table, records)
  return records


if __name__ == "__main__":
  _common.run(main, "gan_mnist.py")
