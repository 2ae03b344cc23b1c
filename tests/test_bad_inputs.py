"""Malformed input, end to end: through the CLI and the Python API.

Every case must give one `jdl: error: ...` line naming the problem, exit status 2,
no traceback, and leave the workdir of a finished run byte for byte unchanged.
"""

from __future__ import annotations

import gzip
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import jdl
from jdl import cli

from conftest import make_config, snapshot

FAST = ["--config.num_epochs=1", "--config.tensorboard=false", "--config.plots=false",
        "--config.model.features=(4,)", "--config.model.dense=(8,)"]
IRIS = ["--config", "iris", "--config.num_epochs=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST]) == 0
  return workdir


def _npz(tmp, name, **arrays):
  path = tmp / name
  np.savez(path, **arrays)
  return f"--config.data_dir={path}"


def _idx_dir(tmp, name, damage):
  d = tmp / name
  d.mkdir()
  images = np.zeros((10, 28, 28), np.uint8)
  labels = np.arange(10, dtype=np.uint8)
  files = {"train-images-idx3-ubyte": struct.pack(">IIII", 2051, 10, 28, 28) + images.tobytes(),
           "train-labels-idx1-ubyte": struct.pack(">II", 2049, 10) + labels.tobytes(),
           "t10k-images-idx3-ubyte": struct.pack(">IIII", 2051, 10, 28, 28) + images.tobytes(),
           "t10k-labels-idx1-ubyte": struct.pack(">II", 2049, 10) + labels.tobytes()}
  for fname, data in files.items():
    if fname == "train-images-idx3-ubyte":
      data = damage(data)
    (d / (fname + ".gz")).write_bytes(gzip.compress(data))
  return f"--config.data_dir={d}"


def cases(tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  y = np.arange(40) % 3
  nan_x = x.copy()
  nan_x[3] = np.inf
  bad_cfg = tmp / "syntax.py"
  bad_cfg.write_text("def get_config(:\n")
  no_fn = tmp / "nofn.py"
  no_fn.write_text("x = 1\n")
  latin = tmp / "latin.py"
  latin.write_bytes(b"# caf\xe9\ndef get_config():\n  return None\n")
  exits = tmp / "exits.py"
  exits.write_text("import sys\n\ndef get_config():\n  sys.exit(3)\n")
  wrong_type = tmp / "wrongtype.py"
  wrong_type.write_text("def get_config():\n  return {'a': 1}\n")
  trunc_zip = tmp / "trunc.npz"
  np.savez(trunc_zip, x=x, y=y)
  trunc_zip.write_bytes(trunc_zip.read_bytes()[:100])
  txt = tmp / "config.txt"
  txt.write_text("seed = 1\n")
  json_list = tmp / "list.json"
  json_list.write_text("[1, 2]\n")
  json_true = tmp / "true.json"  # ml_collections took JSON's true as 1.0: trained at lr 1.
  json_true.write_text('{"optimizer": {"learning_rate": true}}\n')
  json_false = tmp / "false.json"  # An int field kept false, read as 0: "no limit".
  json_false.write_text('{"examples_per_class": false}\n')
  typo = tmp / "typo.py"
  typo.write_text("from jdl.config import base_config\n\ndef get_config():\n"
                  "  c = base_config()\n  c.batchsize = 32\n  return c\n")
  npz = "--config.dataset=npz"
  return {
      # The finished run's model with another optimizer state: a mismatch, not damage.
      "another optimizer than the run's": ([*FAST, "--config.optimizer.name=sgd"],
                                           ["another model or optimizer", "optimizer.name"]),
      "clipping added to the run's chain": ([*FAST, "--config.optimizer.clip_norm=1.0"],
                                            ["optimizer.clip_norm"]),
      "a misspelt key in a config file": (["--config", typo], ["'batchsize'", "typo.py"]),
      # Monitored names are checked when the run is built, not after an epoch.
      "misspelt early-stopping monitor": ([*FAST, "--config.early_stopping.enabled=true",
                                           "--config.early_stopping.monitor=val_acc"],
                                          ["early_stopping.monitor='val_acc'", "val_accuracy"]),
      "early stopping without validation": ([*FAST, "--config.validation_split=0.0",
                                             "--config.early_stopping.enabled=true"],
                                            ["no validation split"]),
      "misspelt checkpoint monitor": ([*FAST, "--config.monitor=val_acc"], ["monitor='val_acc'"]),
      # Config keys and values.
      "unknown top-level key": (["--config.learning_rate=0.1"], ["learning_rate"]),
      "unknown nested key": (["--config.optimizer.lr=0.1"], ["optimizer.lr"]),
      "unknown section": (["--config.optimiser.name=adam"], ["optimiser"]),
      "value for a section": (["--config.optimizer=adam"], ["section"]),
      "non-integer epochs": (["--config.num_epochs=ten"], ["num_epochs", "ten"]),
      "non-number learning rate": (["--config.optimizer.learning_rate=fast"], ["learning_rate"]),
      "non-bool flag": (["--config.plots=maybe"], ["plots"]),
      "override without value": (["--config.num_epochs"], ["num_epochs"]),
      "unknown optimizer": (["--config.optimizer.name=adamm"], ["adamm", "adam"]),
      "unknown schedule": (["--config.schedule.name=cosin"], ["cosin", "cosine"]),
      "unknown activation": (["--config.model.activation=relux"], ["relux"]),
      "unknown model": (["--config.model.name=transformer"], ["transformer", "mlp"]),
      "unknown model field": (["--config.model.widht=3"], ["widht"]),
      "unknown dataset": (["--config.dataset=mnits"], ["mnits", "mnist"]),
      "unknown loss": (["--config.loss=crossentropy"], ["crossentropy"]),
      "unknown metric": (["--config.metrics=('acc',)"], ["acc"]),
      "unknown conv_impl": (["--config.model.conv_impl=cudnn"], ["conv_impl"]),
      "unknown normalize": (["--config.normalize=zscore"], ["normalize", "zscore"]),
      "unknown epoch_mode": (["--config.epoch_mode=fast"], ["epoch_mode"]),
      "unknown task": (["--config.task=ranking"], ["task"]),
      "unknown nonfinite": (["--config.nonfinite=ignore"], ["nonfinite"]),
      "unknown nonfinite_check": (["--config.nonfinite_check=epoch"], ["nonfinite_check"]),
      "block check with skip": (["--config.nonfinite_check=block", "--config.nonfinite=skip"],
                                ["nonfinite_check='block'", "nonfinite='stop'"]),
      "microbatch not dividing the batch": (["--config.microbatch_size=5"],
                                            ["microbatch_size=5", "batch_size=32"]),
      "negative microbatch": (["--config.microbatch_size=-1"], ["microbatch_size"]),
      "unknown monitor_mode": (["--config.monitor_mode=up"], ["monitor_mode"]),
      "batch size zero": (["--config.batch_size=0"], ["batch_size"]),
      "batch size negative": (["--config.batch_size=-4"], ["batch_size"]),
      "batch size huge": (["--config.batch_size=1000000000000"], ["batch_size"]),
      "negative epochs": (["--config.num_epochs=-1"], ["num_epochs"]),
      "validation split 1.5": (["--config.validation_split=1.5"], ["validation_split"]),
      "test split 0": (["--config.test_split=0.0"], ["test_split"]),
      "learning rate negative": (["--config.optimizer.learning_rate=-1.0"], ["learning_rate"]),
      "accumulate steps zero": (["--config.optimizer.accumulate_steps=0"], ["accumulate_steps"]),
      "freeze pattern matches nothing": (["--config.optimizer.freeze=('nomatch',)"], ["nomatch"]),
      "L2 include matches nothing": (["--config.regularization.l2=0.01",
                                      "--config.regularization.include=Dense_.*/kernel"],
                                     ["regularization.include", "Dense_.*/kernel"]),
      "a rule matching nothing": (["--config.regularization.rules=(('head/.*', 0.0, 1.0),)"],
                                  ["regularization.rules[0]", "head/.*"]),
      "max_norm include matches nothing": (["--config.regularization.max_norm=3.0",
                                            "--config.regularization.max_norm_include=x"],
                                           ["max_norm_include"]),
      "keep zero checkpoints": (["--config.keep_checkpoints=0"], ["keep_checkpoints"]),
      "print every 0 epochs": (["--config.print_every_epochs=0"], ["print_every_epochs"]),
      "crop padding beyond the image": (["--config.augment.crop_padding=30000"],
                                        ["crop_padding", "no pixel"]),
      "crop padding beyond int32": (["--config.augment.crop_padding=3000000000"],
                                    ["crop_padding", "2**31 - 1"]),
      "a layer wider than an array can be": (["--config.model.features=(100000000000000000000,)"],
                                              ["features", "2**31"]),
      "checkpoint every 0 epochs": (["--config.checkpoint_every_epochs=0"],
                                    ["checkpoint_every_epochs"]),
      "checkpoint every -1 seconds": (["--config.checkpoint_every_seconds=-1.0"],
                                      ["checkpoint_every_seconds"]),
      "a decay beyond optax's int32 update count": (
          ["--config.schedule.name=linear", "--config.schedule.tau_epochs=1e9"],
          ["schedule.tau_epochs", "2**31 - 1 updates"]),
      "checkpoint every inf seconds": (["--config.checkpoint_every_seconds=inf"],
                                       ["checkpoint_every_seconds", "finite"]),
      "an infinite augmentation shift": (["--config.augment.width_shift=inf"],
                                         ["augment.width_shift", "finite"]),
      "dropout rate 1.5": (["--config.model.dropout_rate=1.5"], ["dropout_rate"]),
      "zero-width layer": (["--config.model.features=(0,)"], ["features"]),
      "label smoothing with kl_divergence": ([*IRIS, "--config.loss=kl_divergence",
                                              "--config.label_smoothing=0.1"],
                                             ["label_smoothing"]),
      "label smoothing 1": (["--config.label_smoothing=1.0"], ["label_smoothing", "[0, 1)"]),
      "a regression loss on classes": (["--config.loss=mse"], ["'mse'", "classification"]),
      "a classification loss on regression data": (
          ["--config", "linear_regression", "--config.loss=sparse_categorical_crossentropy"],
          ["sparse_categorical_crossentropy", "regression", "mse"]),
      "a probability loss on other values": (
          ["--config", "linear_regression", "--config.loss=binary_crossentropy"],
          ["binary_crossentropy", "probabilities"]),
      "roc_auc on 10 classes": (["--config.metrics=('accuracy','roc_auc')"],
                                ["roc_auc", "10 classes"]),
      "f1 on 10 classes": (["--config.metrics=('f1',)"], ["macro_f1"]),
      "top-k with k of all the classes": (["--config.metrics=('top10_accuracy',)"],
                                          ["top10_accuracy", "always 1"]),
      "seq2seq with another loss": (["--config", "seq2seq_dates", "--config.loss=mse"],
                                    ["seq2seq", "loss"]),
      "seq2seq with an activity penalty": (["--config", "seq2seq_dates",
                                            "--config.regularization.activity_l1=0.1"],
                                           ["seq2seq", "activity_l1"]),
      "a VAE with label smoothing": (["--config.task=vae", "--config.normalize=none",
                                      "--config.label_smoothing=0.1"], ["vae", "label_smoothing"]),
      "binary loss on 3 classes": ([*IRIS, "--config.loss=binary_crossentropy"], ["2 classes"]),
      "class outside the dataset": (["--config.classes=(11,)"], ["classes"]),
      "negative examples per class": (["--config.examples_per_class=-1"], ["examples_per_class"]),
      "augmenting a VAE": (["--config.task=vae", "--config.normalize=none",
                            "--config.augment.noise_std=0.1"], ["task 'vae'", "augment"]),
      "moving an autoencoder's inputs": (["--config.task=autoencoder", "--config.normalize=none",
                                          "--config.augment.hflip=true"],
                                         ["autoencoder", "augment.hflip"]),
      "mixup on token ids": (["--config", "seq2seq_dates", "--config.augment.mixup_alpha=0.2"],
                             ["token ids", "augment.mixup_alpha"]),
      # (init_from a missing run: a resume does not read the source run, so it is no
      # error here; test_transfer.py checks a run that starts with one.)
      "init_from with a bad regex": ([f"--config.init_from.workdir={tmp / 'nowhere'}",
                                      "--config.init_from.include=("],
                                     ["init_from.include", "invalid regex"]),
      "seed beyond int64": (["--config.seed=99999999999999999999999"], ["seed", "2**32"]),
      "seed of 2**32": ([f"--config.seed={2**32}"], ["seed", "[0, 2**32)"]),
      "negative seed": (["--config.seed=-1"], ["seed"]),
      "an unparsable tuple": (["--config.classes=(1,"], ["--config.classes", "'(1,'"]),
      "text classes": (["--config.classes=('a',)"], ["integer labels"]),
      "fractional classes": (["--config.classes=(1.5,2.5)"], ["integer labels"]),
      "one class": (["--config.classes=(3,)"], ["at least 2 classes", "(3,)"]),
      "freezing every parameter": (["--config.optimizer.freeze=('.*',)"],
                                   ["freezes every parameter"]),
      "min_delta nan": (["--config.early_stopping.min_delta=nan"], ["min_delta"]),
      "alpha_final inf": (["--config.schedule.name=linear", "--config.schedule.alpha_final=inf"],
                          ["alpha_final", "finite"]),
      "negative scan_chunk": (["--config.scan_chunk=-5"], ["scan_chunk"]),
      # Until 2026-11-30: JSON's true trained as 1 (the CLI refused it); counts beyond
      # int32 were OverflowError tracebacks from compiled code, one after the first
      # epoch had been saved; floats beyond float32 became inf (a divergence, or
      # clipping silently off) or 0; and an extension of the finished run wrote them
      # into its config.json before failing.
      "JSON's true as a learning rate": (["--config", json_true],
                                         ["optimizer.learning_rate", "needs a number", "true"]),
      "JSON's false as a count": (["--config", json_false], ["examples_per_class", "false"]),
      "diagnostics every 10**12 steps": (["--config.diagnostics.every_steps=1000000000000"],
                                         ["diagnostics.every_steps", "2**31 - 1"]),
      "plateau patience of 10**12 epochs": (
          ["--config.num_epochs=2", "--config.reduce_on_plateau.enabled=true",
           "--config.reduce_on_plateau.patience=1000000000000"],
          ["reduce_on_plateau.patience", "2**31 - 1"]),
      "a learning rate beyond float32": (["--config.num_epochs=2",
                                          "--config.optimizer.learning_rate=1e308"],
                                         ["optimizer.learning_rate=1e+308", "float32"]),
      "a learning rate that float32 rounds to 0": (["--config.optimizer.learning_rate=1e-50"],
                                                   ["optimizer.learning_rate=1e-50", "float32"]),
      "noise beyond float32": (["--config.num_epochs=2", "--config.augment.noise_std=1e308"],
                               ["augment.noise_std", "float32"]),
      "clipping beyond float32": (["--config.optimizer.clip_norm=1e300"],
                                  ["optimizer.clip_norm", "float32"]),
      "a metric that is no name": (["--config.metrics=(1,)"], ["metrics must be names", "1"]),
      "no prefetch": (["--config.stream.prefetch=0"], ["stream.prefetch"]),
      "a metric twice": (["--config.metrics=('accuracy','accuracy')"], ["twice"]),
      "negative distributed timeout": (["--config.distributed.timeout_seconds=-1"],
                                       ["timeout_seconds"]),
      "a beam wider than the vocabulary": (["--config", "seq2seq_dates", "--config.n_samples=300",
                                            "--config.sequence.beam_size=100000"],
                                           ["beam_size", "target vocabulary"]),
      "decoding 1e7 tokens": (["--config", "seq2seq_dates", "--config.n_samples=300",
                               "--config.sequence.decode_max_len=10000000"],
                              ["decode_max_len", "longest target"]),
      "length_penalty nan": (["--config", "seq2seq_dates", "--config.n_samples=300",
                              "--config.sequence.length_penalty=nan"], ["length_penalty"]),

      # Config files.
      "missing config file": (["--config", tmp / "nope.py"], ["nope.py"]),
      "config with a syntax error": (["--config", bad_cfg], ["syntax.py"]),
      "config whose get_config() exits": (["--config", exits], ["exits.py", "sys.exit(3)"]),
      "config without get_config": (["--config", no_fn], ["get_config"]),
      "non-UTF-8 config file": (["--config", latin], ["latin.py"]),
      "config returning a dict": (["--config", wrong_type], ["ConfigDict"]),
      "a folder as --config": (["--config", tmp], ["is a folder"]),
      "a text file as --config": (["--config", txt], ["neither a .py file"]),
      "a JSON list as --config": (["--config", json_list], ["does not hold a config"]),
      # Data files.
      "nan/inf in inputs": ([*IRIS, npz, _npz(tmp, "nan.npz", x=nan_x, y=y)], ["inf"]),
      "labels out of range": ([*IRIS, npz, _npz(tmp, "neg.npz", x=x, y=y - 1)], ["label"]),
      "float labels": ([*IRIS, npz, _npz(tmp, "fl.npz", x=x, y=y + 0.5)], ["regression"]),
      "empty dataset": ([*IRIS, npz, _npz(tmp, "empty.npz", x=x[:0], y=y[:0])], ["empty"]),
      "one-sample dataset": ([*IRIS, npz, _npz(tmp, "one.npz", x=x[:1], y=y[:1])], ["one.npz"]),
      "x/y length mismatch": ([*IRIS, npz, _npz(tmp, "mis.npz", x=x, y=y[:-1])], ["mis.npz"]),
      "string inputs": ([*IRIS, npz, _npz(tmp, "str.npz", x=x.astype(str), y=y)], ["str.npz"]),
      "object (pickled) array": ([*IRIS, npz, _npz(tmp, "obj.npz", x=np.array([x, 1], dtype=object),
                                                   y=y)], ["obj.npz"]),
      "npz without y": ([*IRIS, npz, _npz(tmp, "noy.npz", x=x)], ["'y'"]),
      "truncated npz": ([*IRIS, npz, f"--config.data_dir={trunc_zip}"], ["trunc.npz"]),
      "wrong input rank for a CNN": ([npz, "--config.batch_size=8",
                                      _npz(tmp, "flat.npz", x=x, y=y)], ["shape"]),
      "missing idx files": ([*IRIS, "--config.dataset=mnist", f"--config.data_dir={tmp / 'none'}",
                             "--config.download=false"], ["train-images-idx3-ubyte"]),
      "truncated idx": ([*IRIS, "--config.dataset=mnist",
                         _idx_dir(tmp, "trunc_idx", lambda b: b[:-100])], ["ubyte"]),
      "idx with a wrong magic": ([*IRIS, "--config.dataset=mnist",
                                  _idx_dir(tmp, "magic_idx", lambda b: b"\x00\x00\x09\x99" + b[4:])],
                                 ["ubyte"]),
  }


def test_every_bad_input_gets_one_line_exit_2_and_the_workdir_is_kept(finished, tmp_path, capsys):
  before = snapshot(finished)
  failures = []
  names_by_error = {}
  for name, (args, words) in cases(tmp_path).items():
    code = cli.main(["train", "--workdir", str(finished), "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    ok = (code == 2 and len(lines) == 1 and lines[0].startswith("jdl: error: ")
          and "Traceback" not in err and all(w.lower() in err.lower() for w in words))
    if not ok:
      failures.append(f"{name}: code={code} err={err.strip()!r}")
    names_by_error.setdefault(err.strip(), []).append(name)
  assert not failures, "\n".join(failures)
  assert snapshot(finished) == before
  # Each case is a problem of its own: no two cases got the same error line (a
  # duplicated case, or one check answering different problems with one message).
  assert [names for names in names_by_error.values() if len(names) > 1] == []


def test_read_commands_on_a_mismatched_or_damaged_run(finished, tmp_path, capsys):
  import shutil
  cases = {"evaluate with another model": ["evaluate", "--workdir", finished, "--config",
                                           "digits_mlp"],
           "evaluate with another optimizer": ["evaluate", "--workdir", finished,
                                               "--config.optimizer.name=sgd", *FAST]}
  damaged = {"emptied metrics": lambda step: (step / "metrics" / "metrics").write_text(""),
             "missing manifest": lambda step: (step / "tree" / "manifest.ocdbt").unlink()}
  for name, damage in damaged.items():
    copy = tmp_path / name.replace(" ", "_")
    shutil.copytree(finished, copy)
    damage(max((copy / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name)))
    cases[f"evaluate, {name}"] = ["evaluate", "--workdir", copy]
    cases[f"export, {name}"] = ["export", "--workdir", copy, "--out", tmp_path / "p.npz"]
  cases["export to a name numpy would change"] = ["export", "--workdir", finished, "--out",
                                                  tmp_path / "p.txt"]
  cases["export into a folder"] = ["export", "--workdir", finished, "--out", tmp_path]
  cases["export to .NPZ"] = ["export", "--workdir", finished, "--out", tmp_path / "p.NPZ"]
  cases["lr-find plot of another format"] = ["lr-find", "--config", "xor", "--steps", "3",
                                             "--out", tmp_path / "lr.txt"]
  cases["lr-find to an infinite rate"] = ["lr-find", "--config", "xor", "--steps", "3",
                                          "--max-lr", "inf", "--out", tmp_path / "lr.png"]
  cases["predict texts with an image run"] = ["predict", "--workdir", finished, "--text", "hi"]
  before = snapshot(finished)
  failures = []
  for name, args in cases.items():
    try:
      code = cli.main([str(a) for a in args])
    except SystemExit as e:  # An argument argparse refuses (e.g. --max-lr inf).
      code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    if not (code == 2 and len(err) == 1 and err[0].startswith("jdl: error: ")):
      failures.append(f"{name}: code={code} err={err[:3]!r}")
  assert not failures, "\n".join(failures)
  assert snapshot(finished) == before


_READ_A_DAMAGED_STEP = """
import sys
from jdl import cli
for _ in range(3):
  for args in (["evaluate"], ["export", "--out", sys.argv[2]]):
    assert cli.main([*args, "--workdir", sys.argv[1]]) == 2
"""


def test_a_step_with_cut_data_files_is_one_line_per_command_without_orbax_tracebacks(
    finished, tmp_path):
  # Each of orbax's concurrent reads of the step fails; it raises the first, and the
  # others printed "Exception ignored in: <coroutine object _read_array_index_and_
  # device_put>" or "Task exception was never retrieved" tracebacks (hundreds of lines)
  # when collected, after jdl's line: in most runs, so a few runs in one process.
  import shutil
  import subprocess
  import sys

  from conftest import cli_env

  run = tmp_path / "run"
  shutil.copytree(finished, run)
  latest = max((run / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  for data in (latest / "tree").glob("ocdbt.process_*/d/*"):
    with open(data, "r+b") as f:
      f.truncate(data.stat().st_size // 2)
  proc = subprocess.run([sys.executable, "-c", _READ_A_DAMAGED_STEP, str(run),
                         str(tmp_path / "p.npz")], env=cli_env(), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 6 and all(line.startswith(f"jdl: error: the checkpoint at step "
                                                 f"{latest.name} ") for line in lines), \
      "\n".join(lines[:30])


def test_only_orbaxs_abandoned_reads_are_dropped_from_unraisable_reports(monkeypatch):
  import sys
  import types

  from jdl import checkpoint as ckpt

  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  ckpt._quiet_abandoned_reads()
  ckpt._quiet_abandoned_reads()  # Once: not a hook around the hook.

  async def _read_array_index_and_device_put():
    pass

  async def other():
    pass

  def report(coroutine, text):
    sys.unraisablehook(types.SimpleNamespace(object=coroutine, exc_value=Exception(text)))
    coroutine.close()

  report(_read_array_index_and_device_put(), "Encountered error while reading array index: ()")
  report(_read_array_index_and_device_put(), "something else")
  report(other(), "Encountered error while reading array index: ()")
  assert [str(r.exc_value) for r in seen] == [
      "something else", "Encountered error while reading array index: ()"]
  assert seen[1].object.cr_code.co_name == "other"


def test_export_of_a_step_needs_only_that_step_undamaged(tmp_path, capsys):
  import shutil

  run = tmp_path / "run"
  assert cli.main(["train", "--workdir", str(run), "--quiet", *FAST,
                   "--config.num_epochs=2"]) == 0
  steps = sorted((run / "checkpoints").glob("[0-9]*"), key=lambda p: int(p.name))
  assert len(steps) == 2
  assert cli.main(["export", "--workdir", str(run), "--out", str(tmp_path / "last.npz"),
                   "--step", steps[1].name]) == 0
  shutil.copytree(run, tmp_path / "copy")
  data = next(p for p in (steps[1] / "tree").rglob("*") if p.is_file() and p.parent.name == "d")
  data.write_bytes(b"")  # The latest step's arrays are damaged.
  assert cli.main(["export", "--workdir", str(run), "--out",
                   str(tmp_path / "first.npz"), "--step", steps[0].name]) == 0
  assert cli.main(["export", "--workdir", str(run), "--out",
                   str(tmp_path / "damaged.npz")]) == 2
  assert not (tmp_path / "damaged.npz").exists()
  with np.load(tmp_path / "first.npz") as params:
    assert "conv_0/kernel" in params.files
  # The first step's emptied metrics (a file orbax's manager parses for every step)
  # block neither the latest step nor the step named.
  (tmp_path / "copy" / "checkpoints" / steps[0].name / "metrics" / "metrics").write_text("")
  capsys.readouterr()
  for extra in ([], ["--step", steps[1].name]):
    assert cli.main(["export", "--workdir", str(tmp_path / "copy"), "--out",
                     str(tmp_path / "again.npz"), *extra]) == 0, capsys.readouterr().err
    if not extra:  # The step evaluate scores cannot be ranked: the latest, and why.
      out, err = capsys.readouterr()
      assert "(the latest: see the warning)" in out
      assert err.startswith("jdl: warning: the step jdl evaluate scores cannot be chosen (")
    with np.load(tmp_path / "again.npz") as again, np.load(tmp_path / "last.npz") as last:
      assert sorted(again.files) == sorted(last.files)
      assert all(np.array_equal(again[k], last[k]) for k in last.files)


def test_export_of_a_run_with_a_damaged_config_json_warns_on_stderr(finished, tmp_path,
                                                                    capsys):
  # It exported the latest step with exit 0, and said why only on stdout, among what
  # it wrote: a pipeline reading stderr saw nothing.
  import shutil
  run = tmp_path / "run"
  shutil.copytree(finished, run)
  (run / "config.json").write_text('{"broken')
  latest = max(int(p.name) for p in (run / "checkpoints").glob("[0-9]*"))
  code = cli.main(["export", "--workdir", str(run), "--out", str(tmp_path / "p.npz")])
  out, err = capsys.readouterr()
  assert code == 0 and (tmp_path / "p.npz").is_file(), err
  assert f"arrays of step {latest} (the latest: see the warning)" in out
  assert "config.json" not in out, out
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      "jdl: warning: the step jdl evaluate scores cannot be chosen ("), err
  assert f"{run / 'config.json'} is not valid JSON" in lines[0], err
  assert lines[0].endswith(f"export wrote the latest, step {latest} (--step N for another)")


def test_evaluate_with_a_monitor_its_checkpoints_do_not_record_scores_the_latest_and_says_so(
    finished, capsys):
  # Each step records the training's monitor only (val_accuracy): ranked by val_loss
  # they all tied last, and orbax's latest was named "the best by val_loss (min)".
  latest = max(int(p.name) for p in (Path(finished) / "checkpoints").glob("[0-9]*"))
  capsys.readouterr()
  for mode in ("min", "max"):
    assert cli.main(["evaluate", "--workdir", str(finished), "--config.monitor=val_loss",
                     f"--config.monitor_mode={mode}"]) == 0
    line = capsys.readouterr().err.splitlines()[-1]
    assert f"scored at step {latest} (epoch " in line and line.endswith(
        "): the latest (no checkpoint records a value of val_loss)"), line
  assert cli.main(["evaluate", "--workdir", str(finished)]) == 0
  assert ": the best by val_accuracy (max)" in capsys.readouterr().err


def test_export_writes_the_state_evaluate_scores_by_default(tmp_path, capsys):
  # It wrote the latest step, while evaluate, predict and sample read the best one.
  run = tmp_path / "run"
  assert cli.main(["train", "--workdir", str(run), "--quiet", *FAST, "--config.num_epochs=3",
                   "--config.monitor=val_loss", "--config.monitor_mode=max"]) == 0
  records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
  val = {r["step"]: r["loss"] for r in records if r["split"] == "val"}
  worst = max(val, key=val.get)  # The "best" by this run's monitor_mode.
  assert worst != max(val), "the test needs a best step other than the latest"
  reopened = jdl.load_run(run)
  assert reopened.step == worst and reopened.loaded_as == "the best by val_loss (max)"
  # fit's test line scored its final state and evaluate the best step, and neither
  # said so: two test figures for one run, with nothing to tell them apart.
  assert cli.main(["train", "--workdir", str(run)]) == 0  # Finished: the test line again.
  test_line = next(line for line in capsys.readouterr().out.splitlines()
                   if line.startswith("test: "))
  assert test_line.endswith(f" (the state at step {max(val)}; jdl evaluate scores step "
                            f"{worst}: the best by val_loss (max))"), test_line
  assert cli.main(["evaluate", "--workdir", str(run)]) == 0
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"jdl evaluate: the test split, scored at step {worst} (epoch "
      f"{worst / reopened.steps_per_epoch:g}): the best "
      "by val_loss (max)")  # After the warning that monitor_mode='max' is odd for a loss.
  assert cli.main(["export", "--workdir", str(run), "--out", str(tmp_path / "p.npz")]) == 0
  assert f"arrays of step {worst} (the step jdl evaluate scores" in capsys.readouterr().out
  expected = jdl.checkpoint.restore_params(run / "checkpoints", step=worst, model_state=True)
  with np.load(tmp_path / "p.npz") as exported:
    scaling = ["input_scaling/float64", "input_scaling/mean", "input_scaling/std"]
    assert sorted(exported.files) == sorted([*expected, *scaling])
    assert all(np.array_equal(exported[k], expected[k]) for k in expected)


def test_evaluate_refuses_overrides_that_change_the_test_split(finished, capsys):
  before = snapshot(finished)
  for override in ("--config.seed=5", "--config.test_split=0.5", "--config.normalize=none"):
    assert cli.main(["evaluate", "--workdir", str(finished), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    key = override.split(".")[1].split("=")[0]
    assert len(err) == 1 and err[0].startswith(f"jdl: error: {key} differs"), err
  for fine in ("--config.eval_batch_size=7", "--config.batch_size=64"):  # Evaluation only.
    assert cli.main(["evaluate", "--workdir", str(finished), fine]) == 0
  assert snapshot(finished) == before


def test_evaluate_and_export_without_checkpoints(tmp_path, capsys):
  assert cli.main(["evaluate", "--workdir", str(tmp_path), *FAST]) == 2
  assert cli.main(["export", "--workdir", str(tmp_path), "--out", str(tmp_path / "p.npz")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 2 and "holds no jdl run (no config.json)" in err[0]
  assert err[1].startswith("jdl: error: no checkpoints")


def test_a_file_given_as_workdir_is_said_to_be_a_file(tmp_path, capsys):
  # evaluate said the file held no jdl run (no config.json), export "no checkpoints
  # in FILE", predict and sample what train one there first.
  a_file = tmp_path / "run.txt"
  a_file.write_text("notes\n")
  for workdir, where in ((a_file, f"workdir {a_file}"),
                         (a_file / "run", f"workdir {a_file / 'run'}: {a_file}")):
    for args in (["evaluate"], ["export", "--out", tmp_path / "p.npz"],
                 ["predict", "--text", "good"], ["sample", "--out", tmp_path / "s.png"]):
      assert cli.main([str(a) for a in (*args, "--workdir", workdir)]) == 2
      err = capsys.readouterr().err.strip().splitlines()
      assert err == [f"jdl: error: {where} is a file, not a folder; give the run's folder "
                     "as --workdir"], (args, err)
    assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"jdl: error: {where} is a file, not a folder; use another --workdir"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["run.txt"]
  assert a_file.read_text() == "notes\n"


def test_a_broken_symlink_as_workdir_is_said_to_be_one(tmp_path, capsys):
  # "cannot create workdir dang: File exists".
  link = tmp_path / "dang"
  link.symlink_to(tmp_path / "gone")
  assert cli.main(["train", "--workdir", str(link), "--quiet", *FAST]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"jdl: error: workdir {link} is a broken symbolic link (to {tmp_path / 'gone'}); "
      "make its target or use another --workdir"]
  assert link.is_symlink() and not (tmp_path / "gone").exists()


def test_a_resume_says_when_metrics_jsonl_lacks_the_earlier_epochs(finished, tmp_path, capsys):
  # A missing or emptied metrics.jsonl was taken in silence: the resumed run's file
  # (its plots, jdl compare) then began at the epoch it resumed at.
  import shutil
  for name, damage, args, state in (
      ("missing", lambda p: p.unlink(), ["--config.num_epochs=2"], "is missing"),
      ("empty", lambda p: p.write_text(""), [], "is empty"),
      ("test line only", lambda p: p.write_text(
          "".join(line + "\n" for line in p.read_text().splitlines() if '"test"' in line)),
       [], "has gaps")):
    workdir = tmp_path / name.replace(" ", "_")
    shutil.copytree(finished, workdir)
    path = workdir / "metrics.jsonl"
    damage(path)
    checkpoints = snapshot(workdir / "checkpoints")
    assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST, *args]) == 0
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if "metrics.jsonl" in line]
    assert err == [f"jdl: warning: {path} {state}, but the run resumes after epoch 1: the "
                   "earlier epochs' metrics (epoch 1) are missing from metrics.jsonl, and so "
                   "from its plots and jdl compare; the run continues, nothing was "
                   "deleted"], (name, err)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "train"] == (
        [2] if args else []), name
    assert records[-1]["split"] == "test", name
    if not args:  # Nothing trained: the checkpoints are as they were.
      assert snapshot(workdir / "checkpoints") == checkpoints, name
  # A resume with every epoch's line says nothing of it.
  workdir = tmp_path / "whole"
  shutil.copytree(finished, workdir)
  assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST,
                   "--config.num_epochs=2"]) == 0
  assert "metrics.jsonl" not in capsys.readouterr().err


def test_python_api_raises_jdl_errors(tmp_path):
  with pytest.raises(jdl.JdlError, match="batch_size"):
    jdl.fit(make_config(batch_size=0), quiet=True)
  with pytest.raises(jdl.JdlError, match="optimizer 'adamm'"):
    jdl.fit(make_config(optimizer__name="adamm"), quiet=True)
  with pytest.raises(jdl.JdlError, match="unknown config key"):
    jdl.config.apply_overrides(make_config(), {"nope": "1"})
  with pytest.raises(jdl.JdlError, match="classification"):
    jdl.fit(make_config(dataset="linear", task="classification"), quiet=True)
  # Not a config at all: said so, with the call that makes one.
  with pytest.raises(jdl.JdlError, match=r"got str; .* jdl.load_config\('digits_cnn'\)"):
    jdl.fit("digits_cnn", quiet=True)
  with pytest.raises(jdl.JdlError, match=r"got dict; jdl.config.from_dict"):
    jdl.Trainer(make_config().to_dict(), quiet=True)
  with pytest.raises(jdl.JdlError, match=r"ConfigDict .*got NoneType$"):
    jdl.fit(None, tmp_path / "run", quiet=True)
  assert not (tmp_path / "run").exists()
  for workdir in (None, ""):
    with pytest.raises(jdl.JdlError, match="load_run needs the run's workdir"):
      jdl.load_run(workdir)
  with pytest.raises(jdl.JdlError, match="workdir must be a path or None, got int 123"):
    jdl.fit(make_config(), 123, quiet=True)
  with pytest.raises(jdl.JdlError, match="Checkpointer: directory must be a path, got 5"):
    jdl.Checkpointer(5)
  with pytest.raises(jdl.JdlError, match="load_config takes an experiment name .* got int 5"):
    jdl.load_config(5)
  with pytest.raises(jdl.JdlError, match=r"got str; .*jdl.load_config\('digits_mlp'\)"):
    jdl.lr_finder.find_lr("digits_mlp")


# Run as root with the capabilities that bypass permission bits dropped, so that
# mode 000 means "unreadable" for this test as it would for an ordinary user.
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
           "--inh-caps=-dac_override,-dac_read_search"]
_UNREADABLE_SCRIPT = r"""
import contextlib, io, json, os, sys
from jdl import cli
cases = json.loads(sys.argv[1])
for name, workdir, target, args in cases:
  if name == "workdir itself":
    try:
      os.listdir(workdir)
      print(json.dumps({"skip": "permission bits are not enforced here"}))
      sys.exit(0)
    except PermissionError:
      pass
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main(["train", "--workdir", workdir, "--quiet", *args])
  print(json.dumps({"name": name, "target": target, "code": code, "err": err.getvalue()}))
"""


def test_unreadable_workdir_files_get_one_line_and_nothing_is_lost(finished, tmp_path):
  import os
  import shutil
  import subprocess
  import sys
  from conftest import cli_env
  prefix = []
  if os.geteuid() == 0:
    if shutil.which("setpriv") is None:
      pytest.skip("root without setpriv: permission bits cannot be enforced")
    prefix = _NO_DAC
  cases, originals = [], {}
  for name, rel in (("workdir itself", "."), ("config.json", "config.json"),
                    ("metrics.jsonl", "metrics.jsonl"), ("checkpoints", "checkpoints")):
    workdir = tmp_path / name.replace(" ", "_")
    shutil.copytree(finished, workdir)
    originals[name] = snapshot(workdir)
    target = workdir / rel
    cases.append((name, str(workdir), str(target.resolve()), FAST))
  for _, _, target, _ in cases:
    os.chmod(target, 0)
  try:
    proc = subprocess.run([*prefix, sys.executable, "-c", _UNREADABLE_SCRIPT, json.dumps(cases)],
                          env=cli_env(), capture_output=True, text=True, timeout=300)
  finally:
    for _, workdir, target, _ in cases:
      os.chmod(target, 0o755 if os.path.isdir(target) else 0o644)
  results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
  assert results, proc.stderr
  if "skip" in results[0]:
    pytest.skip(results[0]["skip"])
  assert [r["name"] for r in results] == [c[0] for c in cases]
  for r in results:
    lines = r["err"].strip().splitlines()
    assert r["code"] == 2, r
    assert len(lines) == 1 and lines[0].startswith("jdl: error: "), r
    assert "Traceback" not in r["err"] and "ermission denied" in lines[0], r
    assert os.path.basename(r["target"].rstrip("/")) in lines[0], r
  for name, workdir, _, _ in cases:
    assert snapshot(Path(workdir)) == originals[name], name


def test_corrupt_config_json_is_one_line_and_kept(finished, tmp_path, capsys):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  (workdir / "config.json").write_text('{"dataset": ')
  before = snapshot(workdir)
  assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "config.json is not valid JSON" in err[0] and "--restart" in err[0]
  # evaluate, which reads the run's settings, has no --restart to suggest.
  assert cli.main(["evaluate", "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "not valid JSON" in err[0] and "--restart" not in err[0], err
  assert snapshot(workdir) == before
  # Nor does a refused run leave folders behind (an empty tb/ was made first).
  fresh = tmp_path / "fresh"
  fresh.mkdir()
  (fresh / "config.json").write_text("[]")
  assert cli.main(["train", "--workdir", str(fresh), "--config", "digits_mlp", "--quiet"]) == 2
  assert sorted(p.name for p in fresh.iterdir()) == ["config.json"]


@pytest.mark.parametrize("field, value, words", [
    ("seed", None, ["'seed' is null"]),
    ("num_epochs", "abc", ["'num_epochs' needs an int", "'abc'"]),
    ("metrics", "accuracy", ["'metrics' needs a tuple"]),
    ("optimizer", 5, ["'optimizer' is a section"]),
])
def test_a_damaged_config_json_is_one_line_for_every_reader(finished, tmp_path, capsys, field,
                                                            value, words):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved[field] = value
  (workdir / "config.json").write_text(json.dumps(saved))
  before = snapshot(workdir)
  for args in (["evaluate", "--workdir", workdir],
               ["train", "--config", workdir / "config.json", "--workdir", tmp_path / "new"]):
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jdl: error: saved config key"), err
    assert all(w in err[0] for w in words), err
  assert snapshot(workdir) == before


def test_damaged_metrics_lines_are_backed_up_and_the_run_resumes(finished, tmp_path, capsys):
  import shutil
  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  path = workdir / "metrics.jsonl"
  good = path.read_bytes()
  damaged = (good + b'{"step": "abc", "split": "train"}\n' + b"[1, 2]\n" + b'{"step": null}\n'
             + b'\xff\xfe not utf-8\n' + b'{"step": 1, "split": "train", "loss": 1.0}\n')
  path.write_bytes(damaged)
  assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST,
                   "--config.num_epochs=2"]) == 0
  err = capsys.readouterr().err
  assert "had unreadable lines" in err
  backups = list(workdir.glob("metrics.jsonl.damaged-*"))
  assert len(backups) == 1 and backups[0].read_bytes() == damaged
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert all(isinstance(r["step"], int) for r in records)


def test_a_failed_resume_keeps_the_runs_files(finished, tmp_path):
  """A resume that cannot write (a file-size limit) or is refused keeps metrics.jsonl
  (test line included), config.json and tb/ as they were, and leaves no temporary file."""
  import shutil
  import subprocess
  import sys
  from conftest import cli_env
  workdir = tmp_path / "w"
  shutil.copytree(finished, workdir)
  with (workdir / "config.json").open("a") as f:  # Rewriting it exceeds the limit.
    f.write(" " * 2500)
  before = snapshot(workdir)
  assert '"split": "test"' in (workdir / "metrics.jsonl").read_text()
  import shlex
  command = shlex.join([sys.executable, "-m", "jdl.cli", "train", "--workdir", str(workdir),
                        "--quiet", *FAST, "--config.num_epochs=2", "--config.tensorboard=true"])
  proc = subprocess.run(["bash", "-c", f"ulimit -f 2 && trap '' XFSZ && exec {command}"],
                        env=cli_env(), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr
  last = proc.stderr.strip().splitlines()[-1]  # After the cosine schedule's warning.
  assert last.startswith(f"jdl: error: cannot write {workdir / 'config.json'}: File too large")
  assert snapshot(workdir) == before
  # A refused resume (another optimizer state) writes no TensorBoard file either.
  assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST,
                   "--config.tensorboard=true", "--config.optimizer.name=sgd"]) == 2
  assert snapshot(workdir) == before


def test_paths_orbax_cannot_use_and_empty_arguments(tmp_path, capsys):
  for workdir in (tmp_path / "a[1]" / "run", tmp_path / "b*"):
    assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "glob pattern" in err[0], err
    assert not workdir.exists()
  with pytest.raises(jdl.JdlError, match="glob pattern"):
    jdl.Checkpointer(tmp_path / "c?")
  for args in (["train", "--workdir", ""], ["check", "--config", ""]):
    assert cli.main(args) == 2
    assert capsys.readouterr().err.strip() == f"jdl: error: {args[1]} is empty"


def test_checkpointer_names_its_own_arguments(tmp_path):
  # Used directly, the Checkpointer's errors name its arguments, not config keys.
  for keep in (0, 1.5, "3", True):
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer: keep must be an int >= 1"):
      jdl.Checkpointer(tmp_path / "k", keep=keep)
  with pytest.raises(jdl.JdlError, match=r"^Checkpointer: best_mode must be 'min' or 'max'"):
    jdl.Checkpointer(tmp_path / "m", best_mode="mn")
  assert not (tmp_path / "k").exists() and not (tmp_path / "m").exists()


@pytest.mark.parametrize("async_save", [False, True])
def test_checkpointer_refuses_bad_steps_trees_and_metrics_in_one_error_and_keeps_its_steps(
    tmp_path, async_save):
  tree = {"w": np.arange(3, dtype=np.float32), "n": np.int32(7)}  # A numpy scalar leaf.
  with jdl.Checkpointer(tmp_path / "c", async_save=async_save, best_metric="loss") as ck:
    ck.save(1, tree, metrics={"loss": 0.5})
    for step in (-5, "2", 1.0, True):
      with pytest.raises(jdl.JdlError, match=r"^Checkpointer.save: step must be an int >= 0"):
        ck.save(step, tree)
    with pytest.raises(jdl.JdlError, match=r"^metrics\['loss'\] is a numpy.float32"):
      ck.save(2, tree, metrics={"loss": np.float32(0.4)})  # orbax failed it a save later.
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.save: metrics must be a dict"):
      ck.save(2, tree, metrics=[0.4])
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.save: \['e'\] is an empty array"):
      ck.save(2, {"e": np.zeros((0, 3), np.float32)})
    ck.wait()
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.save: step 1 is already saved"):
      ck.save(1, tree)
    ck.save(np.int64(2), tree, metrics={"loss": 0.25})
    ck.wait()
    restored, _ = ck.restore(1, tree)  # The numpy scalar leaf restores (it did not).
    np.testing.assert_array_equal(restored["n"], 7)
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.restore: no checkpoint at step 99 "
                       r"in .* \(steps there: 1, 2\)$"):
      ck.restore(99, tree)
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.restore_meta: no checkpoint at "
                       r"step 99"):
      ck.restore_meta(99)
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.restore: step must be an int"):
      ck.restore("1", tree)
    other = {"w": np.zeros(4, np.float32), "n": np.int32(0), "x": np.zeros(2, np.float32)}
    with pytest.raises(jdl.JdlError, match=r"^Checkpointer.restore: the checkpoint at step 1 "
                       r"in .* does not fit the target: w is \(3,\) float32 in the checkpoint, "
                       r"\(4,\) float32 here; x is not in the checkpoint$"):
      ck.restore(1, other)
    assert ck.steps() == [1, 2] and ck.best_step() == 2
  assert sorted(p.name for p in (tmp_path / "c").iterdir() if p.name[0] != ".") == ["1", "2"]


def test_out_paths_are_checked_before_the_work(finished, tmp_path, capsys):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  for args in (["export", "--workdir", finished, "--out", a_file / "p.npz"],
               ["lr-find", "--config", "xor", "--out", a_file / "l.png"],
               ["sample", "--workdir", tmp_path / "none", "--out", a_file / "s.png"],
               ["sample", "--workdir", tmp_path / "none", "--out", "s.png",
                "--seed", str(2**64)]):
    assert cli.main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert (f"{a_file} is a file, not a folder" in err[0] or "--seed" in err[0]), err


def test_a_reopened_run_refuses_another_split_classes_or_scaling(finished, capsys):
  # The CLI compared config.json alone; jdl.load_run / jdl.evaluate with a config of
  # other classes scored another problem (0.108 where the run scores 0.892), with
  # normalize='none' raw inputs, with another validation_split other rows: no error.
  run = jdl.config.from_dict(json.loads((Path(finished) / "config.json").read_text()))
  step = max(int(p.name) for p in (Path(finished) / "checkpoints").glob("[0-9]*"))
  for key, value in (("classes", (3, 5)), ("normalize", "none"), ("validation_split", 0.5)):
    config = jdl.config.editable_copy(run)
    config[key] = value
    with pytest.raises(jdl.JdlError, match=rf"^{key} differs from the run's config \(the "
                       rf"config its checkpoint at step {step} records\): the test split"):
      jdl.evaluate(config, finished)
  config = jdl.config.editable_copy(run)
  config.batch_size = 32  # Training only: allowed, and the epoch is the run's own.
  assert jdl.load_run(finished, config).loaded_epoch == 1
  with pytest.raises(jdl.JdlError, match=r"^load_run's config must be a config .* got str "
                                         r"'digits_cnn'"):
    jdl.load_run(finished, "digits_cnn")  # An AttributeError before.
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(finished), "--config.batch_size=32"]) == 0
  assert f"scored at step {step} (epoch 1): " in capsys.readouterr().err  # Was "epoch 0.25".


def test_evaluate_says_when_early_stoppings_best_step_is_gone(tmp_path, capsys):
  # It scored the latest and called it "early stopping's restored epoch".
  config = make_config(num_epochs=3, early_stopping__enabled=True, keep_checkpoints=5,
                       early_stopping__monitor="val_loss", early_stopping__mode="max",
                       early_stopping__patience=10)  # The highest val_loss: epoch 1's.
  result = jdl.fit(config, tmp_path, quiet=True)
  spe = result.trainer.steps_per_epoch
  assert result.trainer.step == spe  # Restored.
  shutil.rmtree(tmp_path / "checkpoints" / str(spe))
  assert jdl.load_run(tmp_path).loaded_as == (
      f"the latest (early stopping's best step {spe} is gone)")
