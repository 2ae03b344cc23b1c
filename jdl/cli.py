"""The ``jdl`` command: ``train``, ``evaluate``, ``export``, ``list``.

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
  command = {"train": _train, "evaluate": _evaluate, "export": _export, "list": _list}
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
