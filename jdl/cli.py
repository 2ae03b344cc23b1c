"""The ``jdl`` command: ``train``, ``evaluate``, ``predict``, ``export``, ``sample``, ``list``, ``check``, ``lr-find``, ``profile``.

Flax-examples conventions: ``--config FILE_OR_NAME``, ``--config.key=value``
overrides, ``--workdir DIR``. Bad input prints one ``jdl: error: ...`` line and
exits with status 2; nothing already in the workdir is touched before the whole
setup has been validated. A ``train`` stopped by SIGTERM / SIGINT saves a checkpoint
and exits with 128 + the signal's number (143, 130): not finished, resumable.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
from pathlib import Path

from jdl import errors
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
  jdl predict --workdir runs/sst2_lstm --text "a charming , often affecting journey"
  jdl predict --workdir runs/seq2seq_dates --input "3 march 1998"   # beam search
  jdl sample --workdir runs/gan_mnist --n 64 --out samples.png   # VAE and GAN runs
  jdl check --config digits_cnn                  # sanity checks; exit 1 if any fails
  jdl lr-find --config digits_cnn --out lr.png   # learning-rate range test
  jdl profile --config digits_cnn                # time per XLA operation of a step (CPU)
  jdl compare runs/adam runs/sgd --out compare   # curves side by side, a table of results
"""


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose errors are one ``PROG: error: ...`` line (no
  usage block) and exit status 2, like every other error of jdl's commands."""

  def error(self, message):
    name = (self.prog.split() or ["jdl"])[0]
    self.exit(2, f"{name}: error: {message} (see {self.prog} --help)\n")


def int_at_least(minimum: int):
  """An argparse type: an integer >= ``minimum``, its error naming the flag."""
  def parse(raw: str) -> int:
    try:
      value = int(raw)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expects an integer, got {raw!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value
  return parse


def _positive_float(raw: str) -> float:
  """An argparse type: a finite number > 0, its error naming the flag."""
  try:
    value = float(raw)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expects a number, got {raw!r}") from None
  if not 0 < value < math.inf:
    raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {raw}")
  return value


def _parser() -> argparse.ArgumentParser:
  p = ArgumentParser(
      prog="jdl", description="jdl: a JAX functional training framework.",
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
  sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
  commands = p.commands = {}  # Each command's parser, for its own errors.

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
                          "checkpoints/, tb/, plots/ "
                          + ("(default: runs/<experiment>)" if config else "(required)"))
    commands[name] = s
    return s

  t = add("train", "Train an experiment; re-running with the same --workdir resumes it (the "
          "config defaults to the workdir's config.json, if it has one).")
  t.add_argument("--quiet", action="store_true", help="print nothing but errors and warnings")
  t.add_argument("--restart", action="store_true",
                 help="start over in the workdir; the previous run's files are moved to "
                      "WORKDIR/previous-<time>/, not deleted")
  ev = add("evaluate", "Print one JSON line of test metrics of the epoch early stopping "
           "restored (restore_best), else of the best checkpoint by config.monitor, else of "
           "the latest (the config defaults to the workdir's config.json).")
  ev.add_argument("--split", choices=("test", "val", "train"), default="test",
                  help="the split evaluated (default: test)")
  r = add("predict", "Print the predictions of a text run's checkpoint (evaluate's): the "
          "class of each --text (text classifiers), or the beam-search output of each --input "
          "(seq2seq).", config=False)
  r.add_argument("--text", action="append", default=[], metavar="TEXT",
                 help="a text to classify (repeatable)")
  r.add_argument("--input", action="append", default=[], metavar="TEXT",
                 help="a source text to translate (repeatable)")
  r.add_argument("--greedy", action="store_true",
                 help="seq2seq: greedy decoding instead of beam search")
  e = add("export", "Write a checkpoint's parameters (and batch-norm statistics, keyed "
          "'batch_stats/...') to a flat .npz file: by default the one jdl evaluate scores. "
          "A run whose inputs are normalised adds their scaling: the model takes (x - "
          "input_scaling/mean) / input_scaling/std.", config=False)
  e.add_argument("--out", required=True, metavar="FILE.npz", help="output file")
  e.add_argument("--step", type=int, default=None,
                 help="checkpoint step (default: the one jdl evaluate scores)")
  s = add("sample", "Write a grid of images generated by a VAE or GAN run's checkpoint.",
          config=False)
  s.add_argument("--n", type=int, default=64, help="number of images (default: 64)")
  s.add_argument("--out", required=True, metavar="FILE.png", help="output PNG file")
  s.add_argument("--seed", type=int, default=0, help="noise seed (default: 0)")
  add("list", "List the experiments with one-line descriptions.", config=False, workdir=False)
  add("config", "Print the experiment's whole config, overrides applied, as JSON: every key "
      "that --config.KEY=VALUE can set, with the value training would use (the values "
      "training checks before reading data are checked here too).", workdir=False)
  c = add("check", "Sanity checks (initial loss, overfitting a small subset, gradients, data); "
          "one PASS/FAIL/SKIP line each, exit 1 if any fails.", workdir=False)
  c.add_argument("--overfit-examples", type=int_at_least(1), default=32, metavar="N",
                 help="size of the fixed train subset to overfit (default: 32)")
  c.add_argument("--overfit-steps", type=int_at_least(1), default=300, metavar="N",
                 help="Adam steps allowed to fit the subset (100%% training accuracy and a "
                      "tenth of the initial loss; regression: 1%% of the mean target's "
                      "loss) (default: 300)")
  c.add_argument("--overfit-lr", type=_positive_float, default=None, metavar="LR",
                 help="Adam learning rate of the overfitting check (default: the "
                      "config's when its optimizer is Adam-like, else 1e-3, 1e-2, 1e-1 "
                      "until one fits)")
  f = add("lr-find", "Learning-rate range test: loss against a geometrically growing learning "
          "rate; prints the suggested rate and saves a plot.", workdir=False)
  f.add_argument("--out", default=None, metavar="FILE.png",
                 help="plot file (default: lr_find_<experiment>.png)")
  f.add_argument("--min-lr", type=_positive_float, default=1e-7,
                 help="first learning rate (default: 1e-7)")
  f.add_argument("--max-lr", type=_positive_float, default=10.0,
                 help="last learning rate (default: 10)")
  f.add_argument("--steps", type=int_at_least(2), default=100,
                 help="most steps to run (default: 100)")
  cp = add("compare", "Compare finished or running runs: one PNG a quantity with every run's "
           "validation (solid) and training (dashed) curve, and a table of each run's test "
           "metrics and best validation values.", config=False, workdir=False)
  cp.add_argument("runs", nargs="+", metavar="WORKDIR", help="a run's directory (repeatable)")
  cp.add_argument("--out", default="compare", metavar="DIR",
                  help="folder of the plots, <quantity>.png (default: compare); the plots "
                       "an earlier compare wrote there (listed in DIR/.jdl-compare.json) "
                       "of quantities not plotted again are removed, unless changed since")
  pr = add("profile", "Time one block of training steps per XLA:CPU operation and per layer "
           "and pass (forward / backward), from the initial state; trains and writes nothing.",
           workdir=False)
  pr.add_argument("--steps", type=int_at_least(1), default=10,
                  help="steps in the block (default: 10)")
  pr.add_argument("--top", type=int_at_least(1), default=25,
                  help="operations listed (default: 25)")
  pr.add_argument("--out", default=None, metavar="FILE.json",
                  help="also write every operation's figures as JSON")
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
      overrides[key] = value  # Given twice, the last wins (as for argparse and absl flags).
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _config(args, overrides, *, workdir_run: bool = False, rebuilds: bool = True):
  """The ``--config`` experiment with its ``--config.key=value`` overrides.

  ``workdir_run``: ``--config`` is the config.json of the run being continued; the
  launch's coordinator and process id it recorded are left out (they described that
  launch; a resume in one process would wait for its peers). ``rebuilds``: the
  command builds the config's dataset and model (all but ``jdl config``), so a run's
  config.json that records a dataset or module given to ``fit`` is refused.
  """
  from jdl import config as config_lib
  config = config_lib.load_config(args.config)
  path = config_lib.resolve_config_path(args.config)
  if path.suffix == ".json" and rebuilds and not workdir_run:  # A run's config.json.
    from jdl.train import workdir as workdir_lib
    given = config_lib.given_sources(workdir_lib.read_json(path))
    if given:  # Its config.dataset / config.model are not what that run trained on.
      raise JdlError(f"{args.config} is the config of a run trained on {given}, which the "
                     "CLI cannot rebuild (it would use the config's own dataset or model "
                     "instead); run it from Python with the same arguments")
  if workdir_run:
    config = config_lib.without_launch(config)
  config_lib.apply_overrides(config, overrides)
  return config


def _out_path(raw: str, suffix: str, *, exact: bool = False) -> Path:
  """``--out``, checked before any work: its suffix, not a folder, no file where a
  folder of its path would be (missing folders are made when it is written, and the
  line saying so names them: :func:`_out_note`)."""
  out = Path(raw)
  if (out.suffix if exact else out.suffix.lower()) != suffix:
    raise JdlError(f"--out must name a {suffix} file, got {raw!r}")
  if out.is_dir():
    raise JdlError(f"--out {raw!r} is a folder; name a {suffix} file")
  _spare_runs(raw, out, folder=False)
  for parent in out.absolute().parents:
    if parent.exists():
      if not parent.is_dir():
        raise JdlError(f"--out {raw!r}: {parent} is a file, not a folder")
      _check_writable(parent, raw)
      break
  return out


def _holds_run(folder: Path) -> bool:
  return (folder / "config.json").is_file() or (folder / "checkpoints").is_dir()


def _spare_runs(raw: str, out: Path, *, folder: bool) -> None:
  """Refuses an ``--out`` (a file, or a ``folder`` of files) that would overwrite or
  write among what a run wrote: a run's own file, anything in its folders (plots/,
  tb/, ...), or, for a folder, a run's folder itself; as named, and where its links
  lead."""
  from jdl.train import workdir as workdir_lib
  try:
    target = out.resolve()
  except (OSError, RuntimeError) as e:  # A loop of links (RuntimeError on Python 3.11).
    raise JdlError(f"--out {raw!r}: cannot follow its links ({e})") from None
  for path in dict.fromkeys((out.absolute(), target)):
    parents = path.parents
    if folder and _holds_run(path):
      raise JdlError(f"--out {raw!r} is the folder of the run in {path}; name a folder "
                     "outside it")
    if not folder and path.name in workdir_lib.RUN_FILES and _holds_run(parents[0]):
      raise JdlError(f"--out {raw!r} would overwrite the {path.name} of the run in "
                     f"{parents[0]}; name another file")
    # Nothing a run wrote is lost to an --out: not in its folders either.
    for p in ((path, *parents) if folder else parents):
      if p.name in workdir_lib.RUN_FILES and _holds_run(p.parent):
        raise JdlError(f"--out {raw!r} would write into the {p.name}/ of the run in "
                       f"{p.parent}; name a {'folder' if folder else 'file'} outside it")


def _out_note(out: str | Path) -> str:
  """What the line saying ``out`` was written adds: that it replaced a file, or that
  the folder it goes in was made for it (a mistyped folder is then seen, not silent).
  Called before the write."""
  out = Path(out)
  if out.is_file():
    return " (it replaced the file there)"
  return "" if out.parent.exists() else f" (its folder {out.parent} was made for it)"


def _check_writable(folder: Path, raw: str) -> None:
  """Creates and removes a file in ``folder``: a place nothing can be written to
  (read-only, /proc, no permission) is an error before the work, not after it."""
  import tempfile
  try:
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".jdl-probe-"):
      pass
  except OSError as e:
    raise JdlError(f"--out {raw!r}: cannot write in {folder} ({e.strerror or e})") from None


def _default_workdir(config_arg) -> Path:
  """``runs/<config name>``; for a run's config.json (beside its checkpoints/ or
  metrics.jsonl), that run's folder."""
  from jdl import config as config_lib
  path = config_lib.resolve_config_path(config_arg)
  a_run = (path.name == "config.json" and ((path.parent / "checkpoints").is_dir()
                                          or (path.parent / "metrics.jsonl").is_file()))
  return path.parent if a_run else Path("runs") / path.stem


def _load(args, overrides, *, workdir_run: bool = False):
  config = _config(args, overrides, workdir_run=workdir_run)
  return config, args.workdir or str(_default_workdir(args.config))


def _train(args, overrides) -> int:
  from jdl import config as config_lib
  from jdl.train import workdir as workdir_lib
  if args.config is None and args.workdir:
    saved = Path(args.workdir) / "config.json"
    if saved.is_file():
      # `jdl train --workdir DIR` resumes (or extends: --config.num_epochs=N) DIR's run,
      # rather than refusing it as another config than the default experiment.
      try:
        run = workdir_lib.read_json(saved)
      except JdlError as e:  # Its remedy (--restart) alone would train the default there.
        raise JdlError(f"{e}; as no --config was given, also name the run's experiment "
                       "with --config FILE_OR_NAME") from None
      given = config_lib.given_sources(run)
      if given:  # Its config would train on config.dataset, or build config.model.
        raise JdlError(f"{args.workdir} holds a run trained on {given}, which the CLI cannot "
                       f"load; {'start it over' if args.restart else 'resume it'} from "
                       "Python, giving fit the same arguments, or train another "
                       "experiment with --config FILE_OR_NAME and another --workdir (or "
                       "--restart)")
      args.config = str(saved)
      try:
        config, workdir = _load(args, overrides, workdir_run=True)
      except JdlError as e:  # E.g. a key this version of jdl does not know.
        raise JdlError(f"{e} (the config was read from {saved}, as no --config was given: "
                       "give --config FILE_OR_NAME to train with another)") from None
      return _run_training(args, config, workdir)
    checkpoints = Path(args.workdir) / "checkpoints"
    steps = sorted((p.name for p in checkpoints.iterdir() if p.name.isdigit()),
                   key=int, reverse=True) if checkpoints.is_dir() else []
    if steps and not args.restart:  # Not the default experiment over another run.
      raise JdlError(
          f"{args.workdir} holds a run's checkpoints but no config.json, and no --config was "
          f"given: name the run's experiment with --config FILE_OR_NAME (each checkpoint "
          f"records the config it was trained with, under \"config\" in "
          f"{checkpoints / steps[0] / 'meta' / 'metadata'})")
  config, workdir = _load(args, overrides)
  return _run_training(args, config, workdir)


def _run_training(args, config, workdir) -> int:
  from jdl.train import loop
  result = loop.fit(config, workdir, quiet=args.quiet, restart=args.restart)
  trainer = result.trainer
  if trainer.preempted:
    # 128 + the signal's number, as a shell reports a process the signal ended: a
    # wrapper (a retry loop, a scheduler's requeue) sees that the run is not finished.
    # Another process's signal (multi-host) counts as SIGTERM, a preemption.
    signum = getattr(signal.Signals, trainer.preempted, signal.SIGTERM)
    print(f"jdl: stopped by {trainer.preempted} at step {trainer.step}; checkpoint saved in "
          f"{result.workdir}/checkpoints; re-run the same command to resume", file=sys.stderr)
    return 128 + int(signum)
  if trainer.nan_detected:  # Said (terminate_on_nan's line): the run did not finish.
    return 2
  if not args.quiet:
    print(f"workdir: {result.workdir}")
  return 0


def _evaluate(args, overrides) -> int:
  from jdl import config as config_lib
  from jdl.train import reopen
  from jdl.train import workdir as workdir_lib
  if args.config is None and args.workdir:
    if not (Path(args.workdir) / "config.json").is_file():
      raise JdlError(f"{args.workdir} holds no jdl run (no config.json); give the run's "
                     "--workdir, or its --config as well")
    workdir = args.workdir
    run = workdir_lib.read_json(Path(workdir) / "config.json", workdir_lib.READ_REMEDY)
    given = config_lib.given_sources(run)
    if given:
      raise JdlError(f"{workdir} holds a run trained on {given}, which the CLI cannot load; "
                     "evaluate it from Python: jdl.evaluate(workdir, dataset=..., "
                     "model=...) with the same arguments")
    config = config_lib.from_dict(run)
    config_lib.apply_overrides(config, overrides)
  else:
    config, workdir = _load(args, overrides)
  # load_run refuses another split, classes or scaling than the run's.
  scores, trainer = reopen.evaluate_run(config, workdir, split=args.split)
  # Strict JSON: a metric without a value (r2 of one row, roc_auc of one class) is null.
  print(json.dumps({k: v if math.isfinite(v) else None for k, v in scores.items()}))
  # Which state: the run's own test line may score another (fit's final state).
  print(f"jdl evaluate: the {args.split} split, scored at step {trainer.step} (epoch "
        f"{trainer.loaded_epoch:g}): {trainer.loaded_as}", file=sys.stderr)
  return 0


# What `jdl predict` and `jdl sample` let a command change: where this host finds the
# run's data (the run read it from another folder, or on another machine).
_READ_OVERRIDES = ("data_dir", "download")


def _run_config(command: str, workdir: str, overrides):
  """The config of the run in ``workdir`` with ``overrides`` of :data:`_READ_OVERRIDES`;
  ``None`` (the run's config.json as it is) without overrides."""
  if not overrides:
    return None
  other = sorted(set(overrides) - set(_READ_OVERRIDES))
  if other:
    raise JdlError(f"{command} reads the run as it was trained: of the --config overrides "
                   f"it takes only {', '.join(_READ_OVERRIDES)} (where this host finds the "
                   f"data), not {', '.join(other)}")
  from jdl import config as config_lib
  from jdl.train import workdir as workdir_lib
  path = Path(workdir) / "config.json"
  if not path.is_file():
    return None  # load_run says what is missing.
  config = config_lib.from_dict(workdir_lib.read_json(path, workdir_lib.READ_REMEDY))
  config_lib.apply_overrides(config, overrides)
  return config


def _predict(args, overrides) -> int:
  import numpy as np
  from jdl.train import reopen
  from jdl.train import transfer
  if not args.workdir:
    raise JdlError("predict needs --workdir")
  config = _run_config("predict", args.workdir, overrides)
  if not args.text and not args.input:
    raise JdlError("predict needs --text TEXT (text classifier) or --input TEXT (seq2seq)")
  trainer = reopen.load_run(args.workdir, config)
  if trainer.seq2seq:
    if args.text:
      raise JdlError(f"{args.workdir} holds a seq2seq run; give its sources with --input")
    _warn_text_problems(trainer, args.input, "src", "--input")
    src = trainer.encode_texts(args.input, vocab="src")
    # A run trained with sequence.beam_size=0 has no beam: it decodes greedily.
    beam = not args.greedy and int(trainer.config.sequence.beam_size) >= 1
    tokens, _ = trainer.decode(src, beam=beam)
    for text, row in zip(args.input, tokens):
      print(json.dumps({"input": text, "prediction": trainer.vocab["tgt"].decode_text(row)}))
    return 0
  if not (trainer.vocab and "text" in trainer.vocab):
    raise JdlError(f"{args.workdir} holds a run of task {trainer.config.task!r} on "
                   f"{trainer.data.name!r}, not of texts: `jdl predict` serves text "
                   "classifiers (--text) and seq2seq runs (--input); use jdl.predict in "
                   "Python for other inputs")
  if args.input:
    raise JdlError(f"{args.workdir} holds a text classifier; classify texts with --text")
  if args.greedy:
    raise JdlError("--greedy is for seq2seq runs (--input); a text classifier has no decoding")
  _warn_text_problems(trainer, args.text, "text", "--text")
  logits = trainer.predict(trainer.encode_texts(args.text)).astype(np.float64)
  if logits.shape[-1] == 1:  # One logit: P(class 1) = sigmoid.
    p1 = 1 / (1 + np.exp(-logits[:, 0]))
    probs = np.stack([1 - p1, p1], axis=1)
  else:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)
  ids = transfer.class_ids(trainer.config.classes, probs.shape[1])  # A subset's own ids.
  for text, p in zip(args.text, probs):
    print(json.dumps({"text": text, "label": ids[int(np.argmax(p))],
                      "probabilities": [round(float(v), 4) for v in p]}))
  return 0


def _warn_text_problems(trainer, texts, vocab: str, flag: str) -> None:
  """One warning line for each text the run can only answer poorly (still answered)."""
  for i, (text, problem) in enumerate(zip(texts, trainer.text_problems(texts, vocab))):
    if problem:
      shown = text if len(text) <= 40 else text[:37] + "..."
      print(f"jdl: warning: {flag} {i + 1} ({shown!r}): {problem}", file=sys.stderr)


# `jdl sample --n`: at most a 64x64 grid in one PNG.
MAX_SAMPLES = 4096


def _sample(args, overrides) -> int:
  import jax
  from jdl.train import reopen
  if not args.workdir:
    raise JdlError("sample needs --workdir")
  config = _run_config("sample", args.workdir, overrides)
  if not 1 <= args.n <= MAX_SAMPLES:
    raise JdlError(f"--n must be in [1, {MAX_SAMPLES}] (a {math.isqrt(MAX_SAMPLES)}x"
                   f"{math.isqrt(MAX_SAMPLES)} grid: one image of more is not legible), "
                   f"got {args.n}")
  if not 0 <= args.seed < 2**32:  # jax.random.key keeps 32 bits: 2**32 drew as 0.
    raise JdlError(f"--seed must be in [0, 2**32), as config.seed, got {args.seed}")
  replacing = _out_note(_out_path(args.out, ".png"))
  trainer = reopen.load_run(args.workdir, config)
  if trainer.config.task not in ("vae", "gan", "wgan_gp"):
    raise JdlError(f"{args.workdir} holds a run of task {trainer.config.task!r}; only VAE and GAN "
                   "runs generate images")
  path = trainer.save_samples(args.out, n=args.n, key=jax.random.key(args.seed),
                             title=f"{trainer.config.task}: {args.n} samples, seed {args.seed}")
  print(f"wrote {args.n} sample{'' if args.n == 1 else 's'} to {path}{replacing}")
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
  out = _out_path(args.out, ".npz", exact=True)  # numpy adds .npz to other names (.NPZ).
  step, which, unchosen = args.step, "", None
  if step is None:  # The state `jdl evaluate` scores; only the step read must be intact,
    from jdl.train import reopen  # so a run whose other steps cannot rank exports its latest.
    try:
      step = reopen.scored_step(args.workdir)
      which = " (the step jdl evaluate scores; --step N for another)"
    except JdlError as e:  # Not the state asked for: a warning on stderr, once written.
      step = (checkpoint.step_numbers(ckdir) or [None])[-1]
      which, unchosen = " (the latest: see the warning)", e
  params = checkpoint.restore_params(ckdir, step=step, model_state=True)
  scaling = _input_scaling(Path(args.workdir))
  clash = sorted(set(scaling) & set(params))
  if clash:
    raise JdlError(f"the checkpoint has parameters named {', '.join(clash)}, the keys "
                   "export gives the inputs' scaling; rename that module")
  replacing = _out_note(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  np.savez(out, **params, **scaling)
  print(f"wrote {len(params)} arrays of step {step}{which} to {out}{replacing}")
  if unchosen is not None:
    print(f"jdl: warning: the step jdl evaluate scores cannot be chosen ({unchosen}); "
          f"export wrote the latest, step {step} (--step N for another)", file=sys.stderr)
  if scaling:
    kind = "float64" if scaling[_SCALING_FLOAT64] else "float32"
    print(f"and {len(scaling)} arrays input_scaling/*: the model takes inputs scaled as in "
          f"training, (x - {_SCALING_MEAN}) / {_SCALING_STD} in {kind} (statistics of the "
          "train rows)")
  return 0


_SCALING_MEAN, _SCALING_STD, _SCALING_FLOAT64 = (
    "input_scaling/mean", "input_scaling/std", "input_scaling/float64")


def _input_scaling(workdir: Path) -> dict:
  """The run's input scaling (its normalizer.npz) under export's keys; ``{}`` when its
  inputs go to the model as they are (or a run of before 2026-11-30 did not record it:
  ``jdl.explain.from_run(run).normalize`` recomputes it from the data)."""
  import numpy as np
  from jdl.train import workdir as workdir_lib
  path = workdir / workdir_lib.NORMALIZER_FILE
  if not path.is_file():
    return {}
  try:
    with np.load(path, allow_pickle=False) as f:
      return {_SCALING_MEAN: f["mean"], _SCALING_STD: f["std"],
              _SCALING_FLOAT64: np.asarray(bool(f["float64"]))}
  except (OSError, ValueError, KeyError) as e:
    raise JdlError(f"cannot read {path}: {e}; it holds the inputs' scaling, which the run "
                   "writes again when it resumes (jdl train with the same --workdir)") from None


def _check(args, overrides) -> int:
  from jdl import sanity
  config = _config(args, overrides)
  results = sanity.run_checks(config, overfit_examples=args.overfit_examples,
                              overfit_steps=args.overfit_steps, overfit_lr=args.overfit_lr)
  for r in results:
    print(r.line(), flush=True)
  failed = [r.name for r in results if r.failed]
  print(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}" if failed
        else f"all {len(results)} checks passed (or skipped)")
  return 1 if failed else 0


def _lr_find(args, overrides) -> int:
  from jdl import lr_finder
  config = _config(args, overrides)
  out = _out_path(args.out or f"lr_find_{_default_workdir(args.config).resolve().name}.png",
                  ".png")
  if not args.min_lr < args.max_lr:
    raise JdlError(f"--min-lr ({args.min_lr:g}) must be below --max-lr ({args.max_lr:g})")
  result = lr_finder.find_lr(config, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
  replacing = _out_note(out)
  path = lr_finder.plot_lr_finder(result, out)
  end = ("the smoothed loss diverged" if result.diverged
         else "the smoothed loss stayed below 4x its best")
  print(f"ran {len(result.learning_rates)} steps, lr {result.learning_rates[0]:.2e} to "
        f"{result.learning_rates[-1]:.2e} ({end}); min smoothed loss "
        f"{result.min_loss:.4g} at lr {result.min_loss_lr:.2e}")
  print(f"suggested learning rate: {result.suggestion:.2e} (the smaller of: steepest descent "
        f"of the smoothed loss {result.steepest:.2e}, min-loss lr / 10 "
        f"{result.min_loss_lr / 10:.2e})")
  if result.suggestion <= float(result.learning_rates[0]) * (1 + 1e-6):
    print("jdl: warning: the suggestion is the lowest rate tried (--min-lr): the loss fell "
          "little or not at all over this range, or a good rate lies below it; look at the "
          "plot, and try more --steps or a lower --min-lr", file=sys.stderr)
  print(f"plot: {path}{replacing}")
  return 0


def _profile(args, overrides) -> int:
  from jdl.train import loop
  from jdl.train import profile
  if args.steps < 1 or args.top < 1:
    raise JdlError(f"--steps and --top must be >= 1, got {args.steps} and {args.top}")
  if args.out:
    _out_path(args.out, ".json")
  config = _config(args, overrides)
  with config.unlocked():
    config.tensorboard, config.plots = False, False
  result = profile.profile_block(loop.Trainer(config, quiet=True), args.steps)
  print(profile.format_report(result, args.top))
  if args.out:
    replacing = _out_note(args.out)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote the profile to {args.out}{replacing}")
  return 0


def _show_config(args, overrides) -> int:
  from jdl import config as config_lib
  from jdl.train import checks
  config = _config(args, overrides, rebuilds=False)
  checks.validate_config(config)  # A value training would refuse is not printed as used.
  checks.check_model(config)
  print(json.dumps(json.loads(config_lib.to_json(config)), indent=2))
  return 0


def _list(args, overrides) -> int:
  from jdl import config as config_lib
  names = config_lib.list_experiments()
  width = max(map(len, names), default=0)
  for name in names:
    print(f"{name:<{width}}  {config_lib.experiment_description(name)}")
  return 0


def _quiet_library_logs() -> None:
  """orbax and absl log routine warnings at WARNING level; a CLI user needs none.

  orbax also logs a failed background write at ERROR level, with a traceback, from
  each of its threads; jdl reports that failure as one ``jdl: error:`` line (see
  :meth:`jdl.checkpoint.Checkpointer.save`), so only CRITICAL messages pass.
  """
  import logging
  try:
    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.FATAL)
  except ImportError:
    pass
  logging.getLogger("absl").setLevel(logging.CRITICAL)
  _ignore_closed_loop_callbacks()
  # A failed background write (reported as one line) can leave orbax's serialization
  # coroutines unawaited; Python then warns of each when it collects them, at exit.
  import warnings
  warnings.filterwarnings("ignore", category=RuntimeWarning,
                          message=r"coroutine '.*' was never awaited")


def _closed_loop(exc: BaseException | None) -> bool:
  return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _ignore_closed_loop_callbacks() -> None:
  """Silences tensorstore's callbacks into an event loop orbax already closed.

  After a failed read of a damaged checkpoint (reported as one ``jdl: error:`` or
  warning line), tensorstore still completes the read's other futures, and each
  completion calls ``call_soon_threadsafe`` on orbax's closed loop: a "RuntimeError:
  Event loop is closed" traceback apiece, from threads jdl does not own, with
  nothing left to do. Every other exception is printed as before.
  """
  if getattr(sys.excepthook, "_jdl_closed_loop", False):
    return
  previous_hook, previous_unraisable = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not _closed_loop(value):
      previous_hook(kind, value, tb)

  def unraisablehook(unraisable):
    if not _closed_loop(unraisable.exc_value):
      previous_unraisable(unraisable)

  excepthook._jdl_closed_loop = True  # type: ignore[attr-defined]
  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook

  import errno
  import threading
  previous_thread_hook = threading.excepthook

  def thread_hook(args):
    # tensorboardX's writer thread failing on a full disk: the main thread reports
    # the same write's failure as one line.
    if not (isinstance(args.exc_value, OSError) and args.exc_value.errno == errno.ENOSPC
            and type(args.thread).__module__.startswith("tensorboardX")):
      previous_thread_hook(args)

  threading.excepthook = thread_hook


def _backend_failed(e: BaseException) -> bool:
  """Whether ``e`` came from JAX starting its backend (jax._src.xla_bridge)."""
  import traceback
  return any(frame.filename.endswith("xla_bridge.py")
             for frame in traceback.extract_tb(e.__traceback__))


def _workdir_not_a_folder(args) -> str | None:
  """The error when ``--workdir`` is a file, or lies under one; ``None`` else (a
  folder, or a path not made yet). evaluate, export, predict and sample said a file
  held no run (no config.json) or no checkpoints, or asked for other arguments."""
  raw = getattr(args, "workdir", None)
  if not raw:
    return None
  path = Path(raw)
  remedy = ("use another --workdir" if args.command == "train"
            else "give the run's folder as --workdir")
  for p in (path, *path.parents):  # The nearest that exists.
    try:
      if not p.exists():
        continue
      if p.is_dir():
        return None
    except OSError:  # Not readable: the command says what it meets.
      return None
    where = f"workdir {path}" if p == path else f"workdir {path}: {p}"
    return f"{where} is a file, not a folder; {remedy}"
  return None


def _fail(message: str) -> int:
  """Prints the one error line; returns the exit status 2."""
  print(f"jdl: error: {message}", file=sys.stderr)
  return 2


def _compare(args, overrides) -> int:
  from jdl.train import plots
  if overrides:
    raise JdlError("compare takes no --config overrides")
  runs = []
  for run, label in zip(args.runs, plots.run_labels(args.runs)):
    curves = plots.read_run(run, label)  # No folder, no file, a line that is not JSON.
    _check_metrics(Path(run) / "metrics.jsonl", curves)
    runs.append(curves)
  out = Path(args.out)
  _spare_runs(args.out, out, folder=True)  # Not the plots/ of a run, compared or not.
  if out.exists() and not out.is_dir():
    raise JdlError(f"--out {args.out!r} is a file; name a folder for the plots")
  try:  # Its failure before the table is printed.
    out.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise JdlError(f"--out {args.out!r}: cannot make the folder ({e.strerror or e})") from None
  _check_writable(out, args.out)
  previous = _compare_manifest(out)
  # A file there that no compare wrote (or one changed since), or a link: a user's
  # own figure, or a run's plot linked in; it is not replaced.
  def foreign(path: Path) -> bool:
    return path.is_symlink() or (path.exists() and (
        not path.is_file() or previous.get(path.name) != _sha256(path)))

  taken = [f"{q}.png" for q in plots.comparison_quantities(runs) if foreign(out / f"{q}.png")]
  if taken:
    raise JdlError(f"--out {args.out!r} holds {', '.join(taken[:4])}"
                   f"{', ...' if len(taken) > 4 else ''}, which jdl compare did not write "
                   f"(or which changed since): the plots would replace "
                   f"{'it; move it' if len(taken) == 1 else 'them; move them'} away or name "
                   "another --out folder")
  print(plots.comparison_table(runs))
  written = plots.plot_comparison(runs, out)
  print(f"plots: {len(written)} in {args.out} ({', '.join(p.name for p in written)})")
  removed = _remove_stale_plots(out, previous, written)
  if removed:
    print(f"removed {len(removed)} plot{'' if len(removed) == 1 else 's'} of the previous "
          f"compare there, of quantities these runs do not log: {', '.join(removed)}")
  return 0


def _check_metrics(path: Path, run) -> None:
  """What ``jdl compare`` needs of a run's ``metrics.jsonl`` beyond what
  ``plots.read_run`` (which read ``run`` from it) refuses: every JSON line a record
  as training's reader (``MetricsLogger``) takes one, a metric's value a number (or
  null), and some metrics at all.

  Raises:
    JdlError: naming the file and the first such line.
  """
  from jdl import metrics as metrics_lib
  from jdl.train import callbacks as cb
  raw, records, _ = cb.MetricsLogger(path).read() or (b"", [], False)
  kept = iter(records)  # The lines it took, in order: a line it left out is damage.
  expected = next(kept, None)

  def fail(i: int, line: bytes, what: str):
    text = line.decode("utf-8", "replace").strip()
    shown = text if len(text) <= 60 else text[:57] + "..."
    raise JdlError(f"{path}, line {i + 1}, {what}: {shown}; fix or remove it")

  for i, line in enumerate(raw.splitlines()):
    try:
      value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
      continue  # A blank line, a cut last one (read_run refused any other).
    if expected is None or _json_key(value) != _json_key(expected):
      fail(i, line, 'is not a record of a jdl run (a JSON object whose "step" is an integer)')
    record, expected = expected, next(kept, None)
    if record.get("split") not in ("train", "val", "test"):
      continue  # Diagnostics lines: histograms, not curves.
    epoch = record.get("epoch")
    if record["split"] != "test" and (not isinstance(epoch, int) or isinstance(epoch, bool)):
      fail(i, line, f'has no integer "epoch" ({epoch!r}): its values cannot be plotted')
    for k, v in record.items():
      if k in metrics_lib.RECORD_FACTS:
        continue
      if Path(k).name != k or k in ("", ".", "..") or "\\" in k:  # Plotted as <k>.png.
        fail(i, line, f"has a metric named {k!r}, which cannot name a plot file")
      if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)):
        fail(i, line, f"has {k} = {v!r}, not a number")
  if not run.curves and not run.test:
    raise JdlError(f"{path} holds no metrics (no train, val or test line with a value): "
                   "empty, or a run that has not finished an epoch")


def _json_key(value) -> str:
  return json.dumps(value, sort_keys=True)


# jdl compare's list of the plots it wrote in an --out folder, with their checksums:
# the next compare there removes those of quantities it does not plot again, unless
# they were changed since (then they are someone's file, left as they are).
_COMPARE_MANIFEST = ".jdl-compare.json"


def _compare_manifest(out: Path) -> dict[str, str]:
  """``{file name: sha256}`` of the plots a previous compare wrote in ``out``."""
  try:
    listed = json.loads((out / _COMPARE_MANIFEST).read_text(encoding="utf-8"))["plots"]
  except (OSError, ValueError, KeyError, TypeError):  # None, or not one of compare's.
    return {}
  if not isinstance(listed, dict):
    return {}
  return {name: digest for name, digest in listed.items()
          if isinstance(name, str) and isinstance(digest, str)
          and Path(name).name == name and name.endswith(".png")}


def _sha256(path: Path) -> str:
  import hashlib
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _remove_stale_plots(out: Path, previous: dict[str, str], written: list) -> list[str]:
  """Removes the plots of ``previous`` (:func:`_compare_manifest`) that this compare
  did not write again and that are as compare wrote them; records ``written``.

  Returns:
    The names removed.
  """
  names = {Path(p).name for p in written}
  removed = []
  for name, digest in sorted(previous.items()):
    path = out / name
    if name in names or path.is_symlink() or not path.is_file():
      continue
    try:
      if _sha256(path) == digest:
        path.unlink()
        removed.append(name)
    except OSError:  # Unreadable or not removable: left, as a file of someone else's.
      continue
  manifest = {"plots": {Path(p).name: _sha256(Path(p)) for p in written}}
  (out / _COMPARE_MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
  return removed


def main(argv: list[str] | None = None) -> int:
  from jdl.train import workdir as workdir_lib  # No JAX: the package imports lazily.
  try:  # The command, wherever the --config.key=value overrides are.
    command = _split_overrides(list(sys.argv[1:] if argv is None else argv))[0][:1]
  except JdlError:
    command = []
  with workdir_lib.early_interrupts(defer=command == ["train"]):
    try:
      return _main(argv)
    except KeyboardInterrupt:  # Before training (which stops and saves on its own).
      print("jdl: interrupted", file=sys.stderr)
      if argv is None:  # The command's own process (not a caller's: tests, scripts).
        # An interrupt that cut into an XLA compile can leave its threads running:
        # the interpreter's shutdown then crashed (SIGSEGV) now and then. Nothing
        # is left to write (training saves on its own signal handler).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
      return 130


def _main(argv: list[str] | None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  _quiet_library_logs()
  parser = _parser()
  try:
    rest, overrides = _split_overrides(argv)
  except JdlError as e:
    print(f"jdl: error: {e}", file=sys.stderr)
    return 2
  args, unknown = parser.parse_known_args(rest)
  if unknown:  # Named by the command's parser: `jdl train: error: ... (see jdl train --help)`.
    parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
  for name in ("workdir", "config"):
    if getattr(args, name, None) == "":
      print(f"jdl: error: --{name} is empty", file=sys.stderr)
      return 2
  if overrides and args.command == "list":
    print("jdl: error: list takes no --config overrides", file=sys.stderr)
    return 2
  if (blocked := _workdir_not_a_folder(args)) is not None:
    return _fail(blocked)
  command = {"train": _train, "evaluate": _evaluate, "export": _export, "sample": _sample,
             "predict": _predict,
             "list": _list, "config": _show_config,
             "check": _check, "lr-find": _lr_find, "profile": _profile, "compare": _compare}
  try:
    return command[args.command](args, overrides)
  except JdlError as e:
    return _fail(str(e))
  except (RuntimeError, AssertionError) as e:
    if not _backend_failed(e):
      raise
    return _fail(errors.backend_message(e))
  except BrokenPipeError:  # The reader of stdout went away (`jdl list | head`).
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # No error at exit.
    return 141  # 128 + SIGPIPE, as the shell reports a process killed by it.
  except OSError as e:  # The file system said no (permissions, disk full, a vanished file).
    where = f"{e.filename}: " if e.filename else ""
    return _fail(f"{where}{e.strerror or e}")


if __name__ == "__main__":
  sys.exit(main())
