"""The ``jdl`` command: ``train``, ``evaluate``, ``export``, ``list``, ``check``, ``lr-find``.

Flax-examples conventions: ``--config FILE_OR_NAME``, ``--config.key=value``
overrides, ``--workdir DIR``. Bad input prints one ``jdl: error: ...`` line and
exits with status 2; nothing already in the workdir is touched before the whole
setup has been validated.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jdl.errors import JdlError

_EPILOG = """\
config overrides:
  --config.KEY=VALUE    set any config key, e.g. --config.num_epochs=3,
                        --config.optimizer.learning_rate=0.01, --config.model.features='(16, 32)'

examples:
  jdl train                                      # the default experiment (digits_cnn)
  jdl train --config mnist_cnn --workdir runs/mnist_cnn --config.data_dir=../shared/data/mnist
  jdl evaluate --config mnist_cnn --workdir runs/mnist_cnn
  jdl export --workdir runs/mnist_cnn --out params.npz
  jdl check --config digits_cnn                  # sanity checks; exit 1 if any fails
  jdl lr-find --config digits_cnn --out lr.png   # learning-rate range test
"""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="jdl", description="jdl: a JAX functional training framework.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
  sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

  def add(name, help_, config=True, workdir=True):
    s = sub.add_parser(name, help=help_, description=help_, epilog=_EPILOG if config else None,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if config:
      s.add_argument("--config", default=None, metavar="FILE_OR_NAME",
                     help="experiment config: a get_config() .py file or a name from "
                          "`jdl list` (default: digits_cnn)")
    if workdir:
      s.add_argument("--workdir", default=None, metavar="DIR",
                     help="run directory: config.json, metrics.jsonl, summary.txt, "
                          "checkpoints/, tb/, plots/ (default: runs/<experiment>)")
    return s

  t = add("train", "Train an experiment; re-running with the same --workdir resumes it.")
  t.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
  t.add_argument("--restart", action="store_true",
                 help="start over in the workdir; the previous run's files are moved to "
                      "WORKDIR/previous-<time>/, not deleted")
  add("evaluate", "Print one JSON line of test metrics from the best (else latest) checkpoint.")
  e = add("export", "Write the latest checkpoint's parameters to a flat .npz file.", config=False)
  e.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
  e.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  add("list", "List the experiments with one-line descriptions.", config=False, workdir=False)
  c = add("check", "Sanity checks (initial loss, overfitting a small subset, gradients, data); "
          "one PASS/FAIL/SKIP line each, exit 1 if any fails.", workdir=False)
  c.add_argument("--overfit-examples", type=int, default=32, metavar="N",
                 help="size of the fixed train subset to overfit (default: 32)")
  c.add_argument("--overfit-steps", type=int, default=300, metavar="N",
                 help="Adam steps allowed to reach 100%% training accuracy (default: 300)")
  c.add_argument("--overfit-lr", type=float, default=1e-3, metavar="LR",
                 help="Adam learning rate of the overfitting check (default: 1e-3)")
  f = add("lr-find", "Learning-rate range test: loss against a geometrically growing learning "
          "rate; prints the suggested rate and saves a plot.", workdir=False)
  f.add_argument("--out", default=None, metavar="FILE.png",
                 help="plot file (default: lr_find_<experiment>.png)")
  f.add_argument("--min-lr", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
  f.add_argument("--max-lr", type=float, default=10.0, help="last learning rate (default: 10)")
  f.add_argument("--steps", type=int, default=100, help="most steps to run (default: 100)")
  return p


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  rest, overrides, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, eq, value = arg[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise JdlError(f"{arg} needs a value (--config.{key}=VALUE)")
        value, i = argv[i + 1], i + 1
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _load(args, overrides):
  from jdl import config as config_lib
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  name = config_lib.resolve_config_path(args.config).stem
  workdir = args.workdir or os.path.join("runs", name)
  return config, workdir


def _train(args, overrides) -> int:
  from jdl.train import loop
  config, workdir = _load(args, overrides)
  result = loop.fit(config, workdir, quiet=args.quiet, restart=args.restart)
  trainer = result.trainer
  if trainer.preempted:
    print(f"jdl: stopped by {trainer.preempted} at step {trainer.step}; checkpoint saved in "
          f"{result.workdir}/checkpoints; re-run the same command to resume", file=sys.stderr)
  elif not args.quiet:
    print(f"workdir: {result.workdir}")
  return 0


def _evaluate(args, overrides) -> int:
  from jdl.train import loop
  config, workdir = _load(args, overrides)
  print(json.dumps(loop.evaluate(config, workdir)))
  return 0


def _export(args, overrides) -> int:
  import numpy as np
  from jdl import checkpoint
  if overrides:
    raise JdlError("export takes no --config overrides")
  if not args.workdir:
    raise JdlError("export needs --workdir")
  ckdir = Path(args.workdir) / "checkpoints"
  if not ckdir.is_dir():
    raise JdlError(f"no checkpoints in {args.workdir}")
  params = checkpoint.restore_params(ckdir, step=args.step)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(out, **params)
  print(f"wrote {len(params)} arrays to {out}")
  return 0


def _check(args, overrides) -> int:
  from jdl import config as config_lib
  from jdl import sanity
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  results = sanity.run_checks(config, overfit_examples=args.overfit_examples,
                              overfit_steps=args.overfit_steps, overfit_lr=args.overfit_lr)
  for r in results:
    print(r.line(), flush=True)
  failed = [r.name for r in results if r.failed]
  print(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed
        else f"all {len(results)} checks passed (or skipped)")
  return 1 if failed else 0


def _lr_find(args, overrides) -> int:
  from jdl import config as config_lib
  from jdl import lr_finder
  config = config_lib.load_config(args.config)
  config_lib.apply_overrides(config, overrides)
  out = args.out or f"lr_find_{config_lib.resolve_config_path(args.config).stem}.png"
  result = lr_finder.find_lr(config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
  path = lr_finder.plot_lr_finder(result, out)
  end = "loss diverged" if result.diverged else "no divergence"
  print(f"ran {len(result.learning_rates)} steps, lr {result.learning_rates[0]:.2e} to "
        f"{result.learning_rates[-1]:.2e} ({end}); min smoothed loss "
        f"{result.min_loss:.4g} at lr {result.min_loss_lr:.2e}")
  print(f"suggested learning rate: {result.suggestion:.2e} (the smaller of: steepest descent "
        f"of the smoothed loss {result.steepest:.2e}, min-loss lr / 10 "
        f"{result.min_loss_lr / 10:.2e})")
  print(f"plot: {path}")
  return 0


def _list(args, overrides) -> int:
  from jdl import config as config_lib
  names = config_lib.list_experiments()
  width = max(map(len, names), default=0)
  for name in names:
    print(f"{name:<{width}}  {config_lib.experiment_description(name)}")
  return 0


def _quiet_library_logs() -> None:
  """orbax and absl log routine warnings at WARNING level; a CLI user needs none."""
  import logging
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.ERROR)
  except ImportError:
    pass
  logging.getLogger("absl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  _quiet_library_logs()
  parser = _parser()
  try:
    rest, overrides = _split_overrides(argv)
  except JdlError as e:
    print(f"jdl: error: {e}", file=sys.stderr)
    return 2
  args = parser.parse_args(rest)
  if overrides and args.command == "list":
    print("jdl: error: list takes no --config overrides", file=sys.stderr)
    return 2
  command = {"train": _train, "evaluate": _evaluate, "export": _export, "list": _list,
             "check": _check, "lr-find": _lr_find}
  try:
    return command[args.command](args, overrides)
  except JdlError as e:
    print(f"jdl: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # The file system said no (permissions, disk full, a vanished file).
    where = f"{e.filename}: " if e.filename else ""
    print(f"jdl: error: {where}{e.strerror or e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("jdl: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
