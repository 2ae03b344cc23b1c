"""Wall time from process start to a target MNIST test accuracy, compile included.

Runs a jdl config (default: experiments/configs/mnist_fast.py) and, for comparison,
the Flax MNIST example's recipe (its CNN, SGD 0.1 with momentum 0.9, batch 128, 10
epochs) through the same `jdl.fit`; after every epoch the test accuracy is measured
(that evaluation's time counts) and the run stops once it reaches the target.

Usage:
  python benchmarks/time_to_accuracy.py --data_dir ../shared/data/mnist [--target 0.99]
      [--recipe mnist_fast|flax_example] [--out FILE.json]
Each recipe runs in a fresh process (start-up, imports and compilation counted).
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # Before jax is imported: start-up is part of the time.

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from _cli import ArgumentParser, out_file  # noqa: E402
from _provenance import provenance  # noqa: E402  (imports jax only when called)


def flax_example_config(data_dir: str):
  import jdl
  config = jdl.base_config()
  config.description = "Flax MNIST example recipe"
  config.dataset = "mnist"
  config.data_dir = data_dir
  config.validation_split = 0.0
  config.normalize = "none"  # The example feeds pixels scaled to [0, 1].
  config.model = {"name": "cnn", "features": (32, 64), "pool": "avg", "dense": (256,),
                  "kernel_init": "lecun_normal"}
  config.optimizer.name = "momentum"
  config.optimizer.learning_rate = 0.1
  config.optimizer.momentum = 0.9
  config.batch_size = 128
  config.num_epochs = 10
  config.monitor = ""
  config.metrics = ("accuracy",)
  config.tensorboard = False
  config.plots = False
  return config


def run_one(recipe: str, data_dir: str, target: float) -> dict:
  import jdl
  from jdl.train.callbacks import Callback

  class StopAtTarget(Callback):
    def __init__(self):
      self.curve = []

    def on_epoch_end(self, trainer, epoch, logs):
      acc = trainer.evaluate_split(trainer.data.test)["accuracy"]
      self.curve.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - T0, 2),
                         "test_accuracy": acc})
      print(f"  {recipe}: epoch {epoch + 1}  test accuracy {acc:.4f}  "
            f"{time.perf_counter() - T0:.1f}s", flush=True)
      if acc >= target:
        trainer.stop_training = True

  if recipe == "flax_example":
    config = flax_example_config(data_dir)
  else:
    config = jdl.load_config(recipe)
    config.data_dir = data_dir
    config.plots = False
  stopper = StopAtTarget()
  trainer = jdl.Trainer(config, quiet=True, callbacks=[stopper])
  trainer.fit()
  reached = [c for c in stopper.curve if c["test_accuracy"] >= target]
  return {"recipe": recipe, "target": target, "epoch_mode": trainer.epoch_mode,
          "reached": bool(reached),
          "seconds_to_target": reached[0]["seconds"] if reached else None,
          "epochs_to_target": reached[0]["epoch"] if reached else None,
          "compile_seconds": round(trainer.compile_seconds, 2), "curve": stopper.curve}


RECIPES = ("mnist_fast", "flax_example")
PROG = "time_to_accuracy.py"


def _accuracy(raw: str) -> float:
  """An argparse ``type``: a test accuracy in (0, 1]."""
  try:
    value = float(raw)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
  if not 0 < value <= 1:  # NaN too.
    raise argparse.ArgumentTypeError(f"must be in (0, 1] (0.99 is 99%), got {raw!r}")
  return value


def main() -> None:
  parser = ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="../shared/data/mnist")
  parser.add_argument("--target", type=_accuracy, default=0.99,
                      help="the test accuracy to reach, in (0, 1] (default %(default)s)")
  parser.add_argument("--recipe", default=None, choices=RECIPES,
                      help="run one recipe in this process")
  parser.add_argument("--out", type=out_file, default=None)
  args = parser.parse_args()
  if args.recipe:
    from jdl.errors import JdlError  # Light: the package imports its parts lazily.
    try:
      result = run_one(args.recipe, args.data_dir, args.target)
    except JdlError as e:
      parser.exit(2, f"{PROG}: error: {e}\n")
    print(json.dumps(result))
    if args.out:
      with open(args.out, "w") as f:
        json.dump({"provenance": provenance(), "results": [result]}, f, indent=2)
    return
  results = []
  for recipe in RECIPES:
    proc = subprocess.run([sys.executable, __file__, "--recipe", recipe, "--data_dir",
                           args.data_dir, "--target", str(args.target)],
                          capture_output=True, text=True)
    if proc.returncode != 0:  # The recipe's own error, not a CalledProcessError.
      why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
      parser.exit(2, f"{PROG}: error: recipe {recipe}: {why.removeprefix(f'{PROG}: error: ')}\n")
    print(proc.stdout.strip().rsplit("\n", 1)[0])
    results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  print(f"\n| recipe | reached {args.target:.1%} | wall seconds (compile included) | epochs |")
  print("|---|---|---:|---:|")
  for r in results:
    print(f"| {r['recipe']} | {'yes' if r['reached'] else 'no'} | {r['seconds_to_target']} | "
          f"{r['epochs_to_target']} |")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"provenance": provenance(), "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
