"""The `jdl` command: smoke runs, evaluate/export/list, and every bad input.

Bad input must give exit status 2, one `jdl: error: ...` line naming the problem,
no traceback, and leave everything already in the workdir untouched.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jdl
from jdl import cli

from conftest import cli_env, snapshot

FAST = ["--config.num_epochs=1", "--config.tensorboard=false", "--config.plots=false",
        "--config.model.features=(8,)", "--config.model.dense=(16,)"]


def run_cli(*args, capsys):
  code = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A finished default-experiment run (digits_cnn, one small epoch)."""
  workdir = tmp_path_factory.mktemp("run")
  assert cli.main(["train", "--workdir", str(workdir), "--quiet", *FAST]) == 0
  return workdir


def test_train_smoke_writes_the_workdir(trained):
  for name in ("config.json", "metrics.jsonl", "summary.txt", "checkpoints"):
    assert (trained / name).exists()
  last = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
  assert last["split"] == "test" and {"loss", "accuracy", "macro_f1"} <= set(last)


def test_evaluate_prints_one_json_line(trained, capsys):
  code, out, _ = run_cli("evaluate", "--workdir", trained, *FAST, capsys=capsys)
  assert code == 0
  lines = out.strip().splitlines()
  assert len(lines) == 1
  metrics = json.loads(lines[0])
  # The run's own test line: one epoch, so the scored checkpoint is the final state.
  logged = json.loads((trained / "metrics.jsonl").read_text().splitlines()[-1])
  assert set(metrics) == {"loss", "accuracy", "macro_f1"}
  for name, value in metrics.items():
    assert value == pytest.approx(logged[name], rel=1e-6), name


def test_evaluate_a_split(trained, capsys):
  code, out, _ = run_cli("evaluate", "--workdir", trained, "--split", "val", capsys=capsys)
  assert code == 0
  records = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
  logged = next(r for r in records if r["split"] == "val")  # One epoch: the checkpoint's.
  got = json.loads(out)
  assert set(got) == {"loss", "accuracy", "macro_f1"}
  for name, value in got.items():
    assert value == pytest.approx(logged[name], rel=1e-6), name
  # Other metrics than the run logged: the checkpoint's metric sums are not needed.
  code, out, err = run_cli("evaluate", "--workdir", trained, "--split", "val",
                           "--config.metrics=('accuracy','top2_accuracy')", capsys=capsys)
  assert code == 0, err
  other = json.loads(out)
  assert set(other) == {"loss", "accuracy", "top2_accuracy"}
  assert other["accuracy"] == got["accuracy"] <= other["top2_accuracy"]
  # A metric without a value is null: the line is strict JSON (NaN is not).
  from jdl.train import reopen
  real = reopen.evaluate_run

  def with_nan(*args, **kwargs):
    scores, trainer = real(*args, **kwargs)
    return {**scores, "loss": float("nan")}, trainer

  monkey = pytest.MonkeyPatch()
  monkey.setattr(reopen, "evaluate_run", with_nan)
  try:
    code, out, _ = run_cli("evaluate", "--workdir", trained, "--split", "val", capsys=capsys)
  finally:
    monkey.undo()
  assert code == 0 and json.loads(out, parse_constant=pytest.fail)["loss"] is None
  with pytest.raises(SystemExit) as exit_:
    cli.main(["evaluate", "--workdir", str(trained), "--split", "dev"])
  err = capsys.readouterr().err
  assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
  assert "invalid choice: 'dev'" in err


def test_a_runs_config_json_is_a_config(trained, capsys):
  saved = json.loads((trained / "config.json").read_text())
  config = jdl.load_config(trained / "config.json")
  assert json.loads(jdl.config.to_json(config)) == {
      k: v for k, v in saved.items()
      if k not in (jdl.config.RUNTIME_KEY, jdl.config.SOURCES_KEY)}
  digits = jdl.data.load_dataset("digits")
  assert saved[jdl.config.SOURCES_KEY]["data"] == {
      "name": "digits", "given": False, "fingerprint": jdl.data.fingerprint(digits),
      "checksum": jdl.data.checksum(digits)}
  # evaluate with the run's own config file: the same metrics as without.
  code, out, _ = run_cli("evaluate", "--workdir", trained, capsys=capsys)
  code2, out2, _ = run_cli("evaluate", "--workdir", trained, "--config",
                           trained / "config.json", capsys=capsys)
  assert code == code2 == 0 and json.loads(out) == json.loads(out2)


def test_the_default_workdir_of_evaluate_and_of_a_runs_config_json(tmp_path, monkeypatch,
                                                                   capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["train", "--config", "xor", "--quiet"]) == 0  # runs/xor
  capsys.readouterr()
  # The run's own config.json is compared, not one in the current directory.
  (tmp_path / "config.json").write_text(json.dumps({"seed": 3}))
  code, out, _ = run_cli("evaluate", "--config", "xor", capsys=capsys)
  assert code == 0
  code, _, err = run_cli("evaluate", "--config", "xor", "--config.test_split=0.5",
                         capsys=capsys)
  assert code == 2 and "test_split differs" in err
  # A run's config.json names its run: evaluate reads that run.
  code, out2, _ = run_cli("evaluate", "--config", "runs/xor/config.json", capsys=capsys)
  assert code == 0 and json.loads(out2) == json.loads(out)
  assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["xor"]


def test_a_file_named_like_an_experiment_does_not_hide_it(tmp_path, monkeypatch, capsys):
  # E.g. a log written with `jdl train --config xor | tee xor`.
  monkeypatch.chdir(tmp_path)
  (tmp_path / "xor").write_text("a log\n")
  assert jdl.config.resolve_config_path("xor") == jdl.config.CONFIG_DIR / "xor.py"
  code, out, _ = run_cli("config", "--config", "xor", capsys=capsys)
  assert code == 0 and (tmp_path / "xor").read_text() == "a log\n"


def test_an_override_of_a_model_field_set_to_none_is_a_literal():
  config = jdl.load_config("digits_mlp")
  with config.model.unlocked():
    config.model.dropout_rate = None
  jdl.config.apply_overrides(config, {"model.dropout_rate": "0.25", "seed": "3"})
  assert config.model.dropout_rate == 0.25 and config.seed == 3


def test_first_user_traps_of_the_cli_audit(tmp_path, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)
  assert cli.main(["train", "--config", "xor", "--workdir", "xor", "--quiet",
                   "--config.num_epochs=2"]) == 0
  before = snapshot(tmp_path / "xor")
  # A folder named like the experiment does not hide it.
  code, out, _ = run_cli("evaluate", "--config", "xor", "--workdir", "xor", capsys=capsys)
  assert code == 0 and "accuracy" in json.loads(out)
  # No --out overwrites what a run wrote (profile's JSON replaced config.json).
  for args, words in [(["profile", "--config", "xor", "--steps", "2", "--out",
                        "xor/config.json"], "would overwrite the config.json of the run"),
                      (["export", "--workdir", "xor", "--out", "xor/checkpoints/p.npz"],
                       "would write into the checkpoints/ of the run"),
                      # A run's plots replaced by lr-find's (exit 0).
                      (["lr-find", "--config", "xor", "--steps", "5", "--out",
                        "xor/plots/loss.png"], "would write into the plots/ of the run"),
                      (["lr-find", "--config", "xor", "--steps", "5", "--out",
                        "xor/tb/x.png"], "would write into the tb/ of the run")]:
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 2 and words in err, err
  # Nor through a link to a run's file or folder (profile's JSON replaced config.json).
  (tmp_path / "cfg.json").symlink_to(tmp_path / "xor" / "config.json")
  (tmp_path / "plotlink").symlink_to(tmp_path / "xor" / "plots")
  (tmp_path / "loop.json").symlink_to(tmp_path / "loop.json")  # A traceback before.
  for args, words in [(["profile", "--config", "xor", "--out", "loop.json"],
                       "cannot follow its links"),
                      (["profile", "--config", "xor", "--steps", "2", "--out", "cfg.json"],
                       "would overwrite the config.json of the run"),
                      (["lr-find", "--config", "xor", "--steps", "5", "--out",
                        "plotlink/loss.png"], "would write into the plots/ of the run")]:
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 2 and words in err, err
  assert snapshot(tmp_path / "xor") == before
  # An --out that replaces a file says so (and one that does not, does not).
  for round_ in ("first", "second"):
    code, out, _ = run_cli("export", "--workdir", "xor", "--out", "p.npz", capsys=capsys)
    assert code == 0 and ("(it replaced the file there)" in out) == (round_ == "second"), out
  # A damaged config.json and no --config: the remedy (--restart) trained digits_cnn.
  (tmp_path / "xor" / "config.json").write_text("{oops")
  for extra in ([], ["--restart"]):
    code, _, err = run_cli("train", "--workdir", "xor", *extra, capsys=capsys)
    assert code == 2 and "also name the run's experiment with --config" in err, err
  assert not list((tmp_path / "xor").glob("previous-*"))
  # Evaluating where nothing was trained names the experiment to train.
  code, _, err = run_cli("evaluate", "--config", "iris", "--workdir", "none", capsys=capsys)
  assert code == 2 and "`jdl train --config FILE_OR_NAME --workdir none`" in err, err
  # A JSON config that is not a run's trains in runs/<name>, not beside the file.
  (tmp_path / "cfgs").mkdir()
  (tmp_path / "cfgs" / "mine.json").write_text(json.dumps(
      {**json.loads(jdl.config.to_json(jdl.load_config("xor"))), "num_epochs": 1}))
  assert cli.main(["train", "--config", "cfgs/mine.json", "--quiet"]) == 0
  assert sorted(p.name for p in (tmp_path / "cfgs").iterdir()) == ["mine.json"]
  assert (tmp_path / "runs" / "mine" / "checkpoints").is_dir()


@pytest.mark.parametrize("args, words", [
    (["--config", "xorr"], "no config file or experiment named 'xorr': did you mean 'xor'?"),
    (["--config", "xor", "--config.num_epoch=3"],
     "unknown config key 'num_epoch': did you mean 'num_epochs'? valid keys here: "),
    (["--config", "xor", "--config.optimzer.learning_rate=1"],
     "unknown config key 'optimzer' (in --config.optimzer.learning_rate): did you mean "
     "'optimizer'? valid keys here: "),
    # A unique name the typed word begins (too short for difflib's ratio).
    (["--config", "xor", "--config.optim.name=sgd"],
     "unknown config key 'optim' (in --config.optim.name): did you mean 'optimizer'? "
     "valid keys here: async_checkpoints, augment,"),
    (["--config", "xor", "--config.sched.name=cosine"], "did you mean 'schedule'?"),
    # A section's key set at the top level: the sections that hold it.
    (["--config", "xor", "--config.learning_rate=0.1"],
     "unknown config key 'learning_rate': did you mean 'optimizer.learning_rate'? "),
    (["--config", "xor", "--config.patience=3"],
     "unknown config key 'patience': did you mean 'early_stopping.patience' or "
     "'reduce_on_plateau.patience'? "),
    (["--config", "xor", "--config.=3"], "--config.=3 names no key"),
    # Another case is the nearest name (difflib's ratio of 'SGD' to 'sgd' is 0).
    (["--config", "xor", "--config.optimizer.name=SGD"], "did you mean 'sgd'?"),
])
def test_a_mistyped_name_gets_the_nearest_one(args, words, capsys):
  code, _, err = run_cli("check", *args, capsys=capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err


def test_a_platform_jax_cannot_start_is_one_line(tmp_path):
  env = {**cli_env(), "JAX_PLATFORMS": "nosuchplatform"}
  proc = subprocess.run([sys.executable, "-m", "jdl.cli", "train", "--config", "xor",
                         "--workdir", str(tmp_path / "run")], capture_output=True, text=True,
                        env=env, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith("jdl: error: JAX could not start a backend")
  assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert "JAX_PLATFORMS='nosuchplatform'" in proc.stderr
  assert not (tmp_path / "run").exists()


# Each reading command, under each JAX_PLATFORMS, in one process (JAX tries again to
# start a backend after a failed try; jax_platforms is read at each try).
_READ_UNDER_PLATFORMS = """
import contextlib, io, json, os, sys
import jax
from jdl import cli
results = []
for platform in json.loads(sys.argv[1]):
  os.environ["JAX_PLATFORMS"] = platform
  jax.config.update("jax_platforms", platform)
  for args in json.loads(sys.argv[2]):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
      code = cli.main(args)
    results.append([platform, args[0], code, err.getvalue()])
  import jdl  # The Python API's readers: the same message, as a JdlError.
  for name in ("evaluate", "load_run"):
    try:
      getattr(jdl, name)(json.loads(sys.argv[2])[0][2])
      results.append([platform, name, 0, ""])
    except jdl.JdlError as e:
      results.append([platform, name, 2, f"jdl: error: {e}"])
print(json.dumps(results))
"""


def test_reading_commands_say_a_platform_jax_cannot_start_not_damaged_checkpoints(
    trained, tmp_path):
  # evaluate, export, predict and sample reported it as an unreadable checkpoint ("move
  # it aside"): orbax started JAX inside the read. 'cuda' on a machine without an
  # NVIDIA device is skipped by JAX, which then asserts (a bare AssertionError).
  import glob
  platforms = ["nosuchplatform", *([] if glob.glob("/dev/nvidia*") else ["cuda"])]
  commands = [["evaluate", "--workdir", str(trained)],
              ["export", "--workdir", str(trained), "--out", str(tmp_path / "p.npz")],
              ["predict", "--workdir", str(trained), "--text", "hi"],
              ["sample", "--workdir", str(trained), "--out", str(tmp_path / "s.png")]]
  before = snapshot(trained)
  proc = subprocess.run([sys.executable, "-c", _READ_UNDER_PLATFORMS, json.dumps(platforms),
                         json.dumps(commands)], capture_output=True, text=True,
                        env=cli_env(), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout)
  assert len(results) == len(platforms) * (len(commands) + 2)
  for platform, command, code, err in results:
    assert code == 2 and len(err.strip().splitlines()) == 1, (platform, command, err)
    assert err.startswith("jdl: error: JAX could not start a backend ("), (command, err)
    assert f"JAX_PLATFORMS={platform!r} asks for a platform" in err, (command, err)
    assert "AssertionError" not in err, err  # Said in words.
  assert snapshot(trained) == before and not list(tmp_path.iterdir())


def test_train_without_config_continues_the_workdirs_own_run(tmp_path, capsys):
  # Not the default experiment (digits_cnn), which would be refused as another config.
  workdir = tmp_path / "xor"
  assert cli.main(["train", "--config", "xor", "--workdir", str(workdir), "--quiet",
                   "--config.num_epochs=2"]) == 0
  code, _, err = run_cli("train", "--workdir", workdir, "--quiet", "--config.num_epochs=3",
                         capsys=capsys)
  assert code == 0, err
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records if r["split"] == "train"] == [1, 2, 3]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["dataset"] == "xor" and saved["num_epochs"] == 3
  # A config.json this version cannot read says where it was read from, and the way out.
  saved["optimizer"]["old_option"] = 1
  (workdir / "config.json").write_text(json.dumps(saved))
  code, _, err = run_cli("train", "--workdir", workdir, "--quiet", capsys=capsys)
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert "old_option" in err and "read from" in err and "give --config" in err


def test_export_writes_flat_npz(trained, tmp_path, capsys):
  out_file = tmp_path / "params.npz"
  code, _, _ = run_cli("export", "--workdir", trained, "--out", out_file, capsys=capsys)
  assert code == 0
  # The checkpoint's parameters, every one, bit for bit, under '/'-joined names.
  run = jdl.load_run(trained)
  with np.load(out_file, allow_pickle=False) as params:
    assert params["conv_0/kernel"].shape == (3, 3, 1, 8)
    flat = jdl.checkpoint.flatten_params(run.state.params)
    assert set(flat) <= set(params.files)
    for name, value in flat.items():
      np.testing.assert_array_equal(params[name], value, err_msg=name)


def test_list_names_every_experiment(capsys):
  code, out, _ = run_cli("list", capsys=capsys)
  assert code == 0
  for name in ("xor", "linear_regression", "iris", "digits_mlp", "digits_cnn", "mnist_mlp",
               "mnist_cnn", "lenet5_mnist"):
    assert name in out
  assert "default" in out


def test_list_lists_the_others_beside_a_broken_config_file(tmp_path, capsys, monkeypatch):
  # A half-written or Latin-1 file in the configs folder failed `jdl list` with a
  # SyntaxError / UnicodeDecodeError traceback.
  from jdl import config as config_lib
  (tmp_path / "good.py").write_text('"""A fine experiment."""\n')
  (tmp_path / "half.py").write_text('"""Half written."""\ndef get_config(:\n')
  (tmp_path / "latin.py").write_bytes('"""Caf\u00e9."""\n'.encode("latin-1"))
  monkeypatch.setattr(config_lib, "CONFIG_DIR", tmp_path)
  code, out, err = run_cli("list", capsys=capsys)
  assert code == 0 and not err, err
  assert out.splitlines() == [
      "good   A fine experiment.",
      "half   (unreadable: SyntaxError at line 2; jdl config --config half says more)",
      "latin  (unreadable: UnicodeDecodeError; jdl config --config latin says more)"]


def test_help_is_complete(capsys):
  for args in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["export", "--help"],
               ["list", "--help"]):
    with pytest.raises(SystemExit) as e:
      cli.main(args)
    assert e.value.code == 0
  out = capsys.readouterr().out
  for word in ("--workdir", "--config", "--out", "--quiet", "--config.KEY=VALUE"):
    assert word in out


def test_config_prints_every_key_that_training_would_use(capsys):
  code, out, _ = run_cli("config", "--config", "xor", "--config.optimizer.learning_rate=0.3",
                         capsys=capsys)
  printed = json.loads(out)
  expected = jdl.load_config("xor")
  expected.optimizer.learning_rate = 0.3
  assert code == 0 and printed == json.loads(jdl.config.to_json(expected))
  assert printed["optimizer"]["learning_rate"] == 0.3 and "augment" in printed
  # The printed JSON is itself a config: training from it is training the experiment.
  assert jdl.config.from_dict(printed).to_dict() == expected.to_dict()
  # Values training refuses are refused here too, not printed (exit 0) as if used.
  for bad, words in (("--config.batch_size=-3", "batch_size"),
                     ("--config.optimizer.learning_rate=nan", "learning_rate"),
                     ("--config.checkpoint_every_seconds=inf", "finite"),
                     ("--config.model.dropout_rate=2.0", "dropout_rate"),
                     ("--config.model.hiden=(8,)", "unknown field 'hiden'"),
                     # Checked only as the run was built, after the data was read:
                     ("--config.schedule.name=cosin", "did you mean 'cosine'"),
                     ("--config.early_stopping.patience=-1", "early_stopping.patience"),
                     ("--config.optimizer.accumulate_steps=0", "accumulate_steps"),
                     ("--config.augment.fill=mirror", "augment.fill"),
                     ("--config.eval_batch_size=-1", "eval_batch_size"),
                     ("--config.schedule.name=step --config.schedule.factor=2",
                      "schedule.factor"),
                     ("--config.reduce_on_plateau.enabled=true "
                      "--config.reduce_on_plateau.factor=1.5", "reduce_on_plateau.factor")):
    code, out, err = run_cli("config", "--config", "xor", *bad.split(), capsys=capsys)
    assert code == 2 and not out and words in err and len(err.strip().splitlines()) == 1, err
  # The data sets a text model's vocab_size and every output width: not required here.
  for name in ("sst2_lstm", "seq2seq_dates", "gan_mnist", "lenet5_mnist"):
    assert run_cli("config", "--config", name, capsys=capsys)[0] == 0
  assert run_cli("config", "--config", "sst2_lstm", "--config.model.vocab_size=0",
                 capsys=capsys)[0] == 0  # 0: the data's, as training takes it.


# Settings training refused only once the data was read or the model built (or as
# JAX started), which `jdl config` printed as if they were used.
CONFIG_ONLY_REFUSALS = [
    ("parallel=foo", "parallel must be one of auto, none, data, shard_map, got 'foo'"),
    ("distributed.initialize=sometimes", "distributed.initialize must be one of"),
    ("distributed.coordinator_address=nohostport",
     "distributed.coordinator_address must be HOST:PORT"),
    ("distributed.num_processes=-3", "distributed.num_processes must be >= 0"),
    ("distributed.process_id=-7", "distributed.process_id must be >= -1"),
    ("parallel=shard_map diagnostics.every_steps=10", "diagnostics.every_steps needs"),
    ("parallel=shard_map task=gan model.name=mlp_gan normalize=none metrics=()",
     "parallel='shard_map' does not support task 'gan'"),
    ("optimizer.name=adamm", "unknown optimizer 'adamm': did you mean 'adam'?"),
    ("optimizer.freeze=('(',)", "optimizer.freeze: invalid regex '('"),
    ("regularization.l2=-1", "regularization.l2 must be"),
    ("regularization.include=(", "regularization.include"),
    ("microbatch_size=-1", "microbatch_size must be >= 0"),
    ("loss=foo", "unknown loss 'foo'"),
    ("loss=mse label_smoothing=0.1", "label_smoothing applies to categorical_crossentropy"),
    ("sequence.min_freq=0", "sequence.min_freq must be >= 1"),
    ("sequence.max_vocab=3", "sequence.max_vocab must be 0 (no limit) or > 4"),
    # Keys the digits run does not read are checked too: a bad value is a typo.
    ("sequence.seq_len=1", "sequence.seq_len (the adding problem's length) must be an integer >= 2"),
    ("sequence.padding=middle", "sequence.padding must be 'pre' or 'post', got 'middle'"),
    ("task=vae model.name=vae normalize=none metrics=('accuracy',)",
     "'accuracy' is not a metric of task 'vae'"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_ONLY_REFUSALS,
                         ids=[o.split("=")[0] for o, _ in CONFIG_ONLY_REFUSALS])
def test_config_and_training_refuse_before_any_data(overrides, message, capsys, monkeypatch):
  flags = [f"--config.{o}" for o in overrides.split()]
  code, out, err = run_cli("config", "--config", "digits_mlp", *flags, capsys=capsys)
  assert code == 2 and not out and len(err.strip().splitlines()) == 1, err
  assert err.startswith("jdl: error: ") and message in err, err
  # A run refuses it as it starts: before its data is read.
  from jdl.train import run_data

  def no_data(*args, **kwargs):
    raise AssertionError("the data was read")

  monkeypatch.setattr(run_data, "load_data", no_data)
  config = jdl.load_config("digits_mlp")
  jdl.config.apply_overrides(config, dict(o.split("=", 1) for o in overrides.split()))
  with pytest.raises(jdl.JdlError) as e:
    jdl.Trainer(config, None, quiet=True)
  assert message in str(e.value)


def test_fixed_metrics_and_mixed_precision_are_refused_where_ignored(capsys):
  # A task of fixed metrics (seq2seq here; a generative one above) names them.
  code, _, err = run_cli("config", "--config", "seq2seq_dates", "--config.metrics=('accuracy',)",
                         capsys=capsys)
  assert code == 2 and "'accuracy' is not a metric of task 'seq2seq'" in err, err
  # seq2seq's model and a module given to fit computed in float32 with it set.
  code, _, err = run_cli("config", "--config", "seq2seq_dates", "--config.mixed_precision=true",
                         capsys=capsys)
  assert code == 2 and "task 'seq2seq' does not support mixed_precision" in err, err
  import flax.linen as nn
  config = jdl.load_config("digits_mlp")
  config.mixed_precision = True
  with pytest.raises(jdl.JdlError, match="give it dtype=jnp.bfloat16"):
    jdl.Trainer(config, None, model=nn.Dense(10), quiet=True)


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return path


def _bad_inputs(tmp: Path):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  y = (np.arange(40) % 3).astype(np.int64)
  nan_x = x.copy()
  nan_x[3, 1] = np.nan
  idx_dir = tmp / "idx"
  idx_dir.mkdir()
  for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte"):
    (idx_dir / name).write_bytes(b"\x00\x00\x08\x03 not an idx file")
  corrupt = tmp / "corrupt.npz"
  corrupt.write_bytes(b"PK\x03\x04 truncated zip")
  mlp = ["--config", "iris"]
  return {
      # name: (args, words the error must contain)
      "unknown key": (["--config.learning_rate=0.1"], ["learning_rate"]),
      "unknown optimizer": (["--config.optimizer.name=adamm"], ["adamm", "adam", "sgd"]),
      "unknown schedule": (["--config.schedule.name=cosin"], ["cosin", "cosine"]),
      "unknown activation": (["--config.model.activation=relux"], ["relux", "relu"]),
      "unknown dataset": (["--config.dataset=mnits"], ["mnits", "mnist"]),
      "unknown model field": (["--config.model.widht=3"], ["widht"]),
      "bad value type": (["--config.num_epochs=ten"], ["num_epochs", "ten"]),
      "batch size zero": (["--config.batch_size=0"], ["batch_size"]),
      "batch size negative": (["--config.batch_size=-4"], ["batch_size"]),
      "batch larger than data": (["--config.batch_size=100000"], ["batch_size", "100000"]),
      "missing config file": (["--config", tmp / "nope.py"], ["nope.py"]),
      "nan in inputs": ([*mlp, "--config.dataset=npz", f"--config.data_dir={_npz(tmp / 'nan.npz', x=nan_x, y=y)}"],
                        ["NaN"]),
      "labels out of range": ([*mlp, "--config.dataset=npz",
                               f"--config.data_dir={_npz(tmp / 'neg.npz', x=x, y=y - 1)}"], ["label"]),
      "empty dataset": ([*mlp, "--config.dataset=npz",
                         f"--config.data_dir={_npz(tmp / 'empty.npz', x=x[:0], y=y[:0])}"], ["empty"]),
      "wrong dtype": ([*mlp, "--config.dataset=npz",
                       f"--config.data_dir={_npz(tmp / 'str.npz', x=x.astype(str), y=y)}"], ["str.npz"]),
      "wrong input shape": (["--config.dataset=npz", "--config.batch_size=8",
                             f"--config.data_dir={_npz(tmp / 'flat.npz', x=x, y=y)}"], ["shape"]),
      "corrupt npz": ([*mlp, "--config.dataset=npz", f"--config.data_dir={corrupt}"], ["corrupt.npz"]),
      "missing idx files": ([*mlp, "--config.dataset=mnist", f"--config.data_dir={tmp / 'none'}",
                             "--config.download=false"], ["train-images-idx3-ubyte"]),
      "corrupt idx files": ([*mlp, "--config.dataset=mnist", f"--config.data_dir={idx_dir}"],
                            ["ubyte"]),
  }


def test_bad_inputs_give_one_line_and_exit_2_and_keep_the_workdir(trained, tmp_path, capsys):
  before = snapshot(trained)
  failures = []
  for name, (args, words) in _bad_inputs(tmp_path).items():
    code, out, err = run_cli("train", "--workdir", trained, "--quiet", *args, capsys=capsys)
    lines = err.strip().splitlines()
    ok = (code == 2 and len(lines) == 1 and lines[0].startswith("jdl: error: ")
          and "Traceback" not in err and all(w.lower() in err.lower() for w in words))
    if not ok:
      failures.append(f"{name}: code={code} err={err!r}")
  assert not failures, "\n".join(failures)
  assert snapshot(trained) == before


@pytest.mark.parametrize("raw, value", [("false", False), ("False", False), ("TRUE", True),
                                        ("None", None), ("null", None), ("none", "none"),
                                        ("(32, 16)", (32, 16)), ("0.5", 0.5), ("relu", "relu")])
def test_a_new_model_field_parses_like_the_other_keys(raw, value):
  # 'none' is the text, as where the experiment sets the field (model.pool=none on a
  # CNN config without pool was None, which pool refused); Python's None is spelt so.
  # A model field the config does not list yet: 'false' must not stay the (truthy) text.
  config = jdl.load_config("digits_mlp")
  jdl.config.apply_overrides(config, {"model.batch_norm": raw})
  assert config.model.batch_norm == value and type(config.model.batch_norm) is type(value)


def test_a_gan_players_new_field_is_set_from_the_command_line(capsys):
  # Refused as "unknown config key ... valid keys here: hidden", though a config file
  # may set it and the README says model.* takes any module field.
  config = jdl.load_config("gan_mnist")
  jdl.config.apply_overrides(config, {"model.generator.batch_norm": "false"})
  assert config.model.generator.batch_norm is False
  with pytest.raises(jdl.JdlError, match=r"unknown config key 'model.nope' \(in "):
    jdl.config.apply_overrides(config, {"model.nope.x": "1"})  # A sub-model not there.
  code, out, _ = run_cli("config", "--config", "gan_mnist",
                         "--config.model.discriminator.dropout_rate=0.25", capsys=capsys)
  assert code == 0 and json.loads(out)["model"]["discriminator"]["dropout_rate"] == 0.25


def test_changed_model_refuses_to_resume(trained, capsys):
  code, _, err = run_cli("train", "--workdir", trained, *FAST[:-1], "--config.model.dense=(32,)",
                         capsys=capsys)
  assert code == 2
  assert "model.dense" in err



def test_cli_process_exit_code_for_bad_input(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jdl.cli", "train", "--workdir", str(tmp_path),
                         "--config.optimizer.name=adamm"], capture_output=True, text=True,
                        env=cli_env(), timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert proc.stderr.startswith("jdl: error: unknown optimizer 'adamm'")
  assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, words", [
    ([], ["required: COMMAND"]),
    (["train", "--bogus"], ["jdl: error: unrecognized arguments: --bogus",
                            "(see jdl train --help)"]),
    (["export", "--workdir", "x"], ["required: --out"]),
    (["check", "--overfit-steps", "many"], ["--overfit-steps", "expects an integer, got 'many'"]),
    # Bad values are named by their flags, not by the functions' parameters.
    (["check", "--overfit-steps", "0"], ["argument --overfit-steps: must be >= 1, got 0"]),
    (["lr-find", "--steps", "1"], ["argument --steps: must be >= 2, got 1"]),
    (["lr-find", "--overfit-lr", "1"], ["unrecognized arguments: --overfit-lr 1"]),
    (["check", "--overfit-lr", "nan"], ["argument --overfit-lr: must be a finite number > 0"]),
    (["frob"], ["invalid choice: 'frob'"]),
])
def test_argument_errors_are_one_line_without_the_usage_block(args, words, capsys):
  with pytest.raises(SystemExit) as exit_:
    cli.main(args)
  out, err = capsys.readouterr()
  assert exit_.value.code == 2 and out == ""
  assert len(err.strip().splitlines()) == 1, err
  assert err.startswith("jdl") and ": error: " in err and "usage:" not in err
  assert all(w in err for w in words), err


def test_a_regex_in_parentheses_is_one_pattern_and_a_broken_tuple_an_error():
  from jdl import config as config_lib
  config = config_lib.base_config()
  config_lib.apply_overrides(config, {"optimizer.freeze": "(conv_0|conv_1)",
                                      "regularization.include": "[c]onv_0"})
  assert config.optimizer.freeze == ("(conv_0|conv_1)",)
  with pytest.raises(jdl.JdlError, match=r"--config.classes expects a tuple"):
    config_lib.apply_overrides(config, {"classes": "(1,"})
  # An empty value is the empty tuple, as () is (it was ('',): "unknown metric ''").
  config_lib.apply_overrides(config, {"metrics": "", "optimizer.freeze": " "})
  assert config.metrics == () and config.optimizer.freeze == ()


def test_a_key_of_one_regex_refuses_a_tuple_and_a_tuple_key_parses_one(capsys):
  # A tuple or list given to a key that takes one regex (a string) was kept as one
  # pattern "('Dense_0', 'Dense_1')", matching no path (silently with l1 = l2 = 0).
  from jdl import config as config_lib
  for key, value, alternation in (
      ("regularization.include", "('Dense_0', 'Dense_1')", "Dense_0|Dense_1"),
      ("regularization.exclude", "['Dense_0/bias']", "Dense_0/bias"),
      ("regularization.activity_include", "('act_0',)", "act_0"),
      ("regularization.max_norm_include", "[Dense_0/kernel, Dense_1/kernel]",
       "Dense_0/kernel|Dense_1/kernel"),
      ("init_from.include", "(Dense_0, Dense_1)", "Dense_0|Dense_1"),
      ("init_from.exclude", "('head/.*', 'Dense_1/.*')", "head/.*|Dense_1/.*")):
    code, out, err = run_cli("config", "--config", "digits_mlp", f"--config.{key}={value}",
                             capsys=capsys)
    assert code == 2 and out == "", (key, code, err)
    assert err.strip().splitlines() == [
        f"jdl: error: --config.{key} takes one regex, not a tuple or list: got {value!r}; "
        "join the alternatives with | in one regex (each must match a whole path), "
        f"e.g. --config.{key}='{alternation}'"], err
  # One regex in brackets, or with a {m,n} count, is one pattern, as before.
  code, out, err = run_cli("config", "--config", "digits_mlp",
                           "--config.regularization.include=(Dense_0|Dense_1)/kernel",
                           "--config.init_from.include=Dense_[0-9]{1,2}/.*", capsys=capsys)
  assert code == 0, err
  shown = json.loads(out)
  assert shown["regularization"]["include"] == "(Dense_0|Dense_1)/kernel"
  assert shown["init_from"]["include"] == "Dense_[0-9]{1,2}/.*"
  # optimizer.freeze, a tuple of regexes, parses the tuple; a regex in brackets with
  # a {m,n} count is one pattern (it was refused as a broken tuple literal).
  config = config_lib.base_config()
  config_lib.apply_overrides(config, {"optimizer.freeze": "('Dense_0', 'Dense_1')"})
  assert config.optimizer.freeze == ("Dense_0", "Dense_1")
  config_lib.apply_overrides(config, {"optimizer.freeze": "(Dense_[0-9]{1,2})"})
  assert config.optimizer.freeze == ("(Dense_[0-9]{1,2})",)
  with pytest.raises(jdl.JdlError, match=r"--config.optimizer.freeze expects a tuple"):
    config_lib.apply_overrides(config, {"optimizer.freeze": "(Dense_0, Dense_1)"})
  # The keys refused a tuple are those of one regex (strings in the base config).
  assert all(isinstance(config[k.split(".")[0]][k.split(".")[1]], str)
             for k in config_lib.REGEX_KEYS)


def test_a_resume_with_changed_settings_is_said_and_recorded(tmp_path, capsys):
  import jdl.train.workdir  # noqa: F401 (RUN_FILES lists the record)
  from conftest import make_config
  run = tmp_path / "run"
  first = jdl.fit(make_config(num_epochs=2), run, quiet=True)
  spe = first.trainer.steps_per_epoch
  capsys.readouterr()
  jdl.fit(make_config(num_epochs=3, optimizer__learning_rate=0.01), run)
  out = capsys.readouterr().out
  assert f"resuming from the checkpoint at step {2 * spe} (the end of epoch 2)" in out
  assert (f"resuming at step {2 * spe} with a changed config: num_epochs (2 -> 3), "
          "optimizer.learning_rate (0.001 -> 0.01) (recorded in config_changes.jsonl)") in out
  [record] = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
  assert record["step"] == 2 * spe and record["epoch"] == 2
  assert record["changes"] == {"num_epochs": [2, 3], "optimizer.learning_rate": [0.001, 0.01]}
  assert json.loads((run / "config.json").read_text())["optimizer"]["learning_rate"] == 0.01
  # A finished run keeps the record of the config it was trained with.
  before = {p: (run / p).read_bytes()
            for p in ("config.json", "config_changes.jsonl", "summary.txt")}
  jdl.fit(make_config(num_epochs=3, optimizer__learning_rate=0.01, print_every_epochs=7), run)
  assert "training already complete" in capsys.readouterr().out
  assert {p: (run / p).read_bytes() for p in before} == before
  assert "config_changes.jsonl" in jdl.train.workdir.RUN_FILES  # --restart moves it aside.


def test_a_setting_edited_in_config_json_is_recorded_as_a_change(tmp_path, capsys):
  # The checkpoint recorded the config it was trained with: a learning rate edited in
  # config.json by hand resumed with no line and no record.
  from conftest import make_config
  run = tmp_path / "run"
  first = jdl.fit(make_config(num_epochs=1), run, quiet=True)
  spe = first.trainer.steps_per_epoch
  saved = json.loads((run / "config.json").read_text())
  saved["optimizer"]["learning_rate"] = 0.02
  saved["num_epochs"] = 2
  (run / "config.json").write_text(json.dumps(saved))
  capsys.readouterr()
  assert cli.main(["train", "--workdir", str(run), "--quiet"]) == 0
  [record] = [json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()]
  assert record["step"] == spe
  assert record["changes"] == {"num_epochs": [1, 2], "optimizer.learning_rate": [0.001, 0.02]}


def test_a_change_record_is_taken_back_when_config_json_cannot_be_rewritten(tmp_path,
                                                                          monkeypatch):
  from conftest import make_config
  from jdl.train import workdir as workdir_lib
  run = tmp_path / "run"
  jdl.fit(make_config(num_epochs=1), run, quiet=True)
  jdl.fit(make_config(num_epochs=2), run, quiet=True)  # A first record.
  record = (run / "config_changes.jsonl").read_bytes()
  write_text = workdir_lib.write_text

  def full_disk(path, text):
    if path.name == "config.json":
      raise OSError(28, "No space left on device", str(path))
    write_text(path, text)

  monkeypatch.setattr(workdir_lib, "write_text", full_disk)
  with pytest.raises(OSError):
    jdl.fit(make_config(num_epochs=3), run, quiet=True)
  assert (run / "config_changes.jsonl").read_bytes() == record  # No change happened.
  assert json.loads((run / "config.json").read_text())["num_epochs"] == 2


def test_outputs_that_cannot_be_written_or_read_are_refused_before_the_work(tmp_path, capsys):
  # /proc takes no new files, even for root: refused before compiling and profiling.
  assert cli.main(["profile", "--config", "xor", "--out", "/proc/jdl_profile.json"]) == 2
  out, err = capsys.readouterr()
  assert out == "" and "cannot write in /proc" in err and len(err.splitlines()) == 1, err
  assert cli.main(["sample", "--workdir", str(tmp_path), "--out", str(tmp_path / "s.png"),
                   "--n", "5000"]) == 2
  assert "--n must be in [1, 4096]" in capsys.readouterr().err
  # The grid's figure keeps at least one output pixel per grid pixel (100 dpi).
  from jdl.generative import images
  fig, _ = images._grid_figure(np.zeros((3000, 2000, 1)), None)
  assert fig.get_size_inches()[0] >= 20.0
  fig, _ = images._grid_figure(np.zeros((100, 100, 1)), None)
  assert fig.get_size_inches()[0] == pytest.approx(3.0)


def test_a_monitor_no_validation_split_could_log_is_an_error():
  from conftest import make_config
  with pytest.raises(jdl.JdlError, match=r"^monitor='val_nope' is not a name this run would "
                     r"log with a validation split; it would log val_loss, val_accuracy$"):
    jdl.Trainer(make_config(validation_split=0.0, monitor="val_nope"), quiet=True)
  # A real val_ name without a validation split only ranks no checkpoint, as before.
  jdl.Trainer(make_config(validation_split=0.0, monitor="val_accuracy", monitor_mode="max"),
              quiet=True)


def test_export_holds_what_evaluation_needs_batch_norm_statistics_too(tmp_path, capsys):
  import flax
  from conftest import make_config
  result = jdl.fit(make_config(num_epochs=1, model__batch_norm=True), tmp_path / "bn",
                   quiet=True)
  out = tmp_path / "bn.npz"
  assert cli.main(["export", "--workdir", str(tmp_path / "bn"), "--out", str(out)]) == 0
  with np.load(out, allow_pickle=False) as f:
    flat = {k: f[k] for k in f.files}
  assert any(k.startswith("batch_stats/") and k.endswith("/mean") for k in flat), sorted(flat)
  variables = flax.traverse_util.unflatten_dict(flat, sep="/")
  scaling = variables.pop("input_scaling")
  params = {k: v for k, v in variables.items() if k != "batch_stats"}
  assert jax.tree.all(jax.tree.map(np.array_equal, variables["batch_stats"],
                                   jax.device_get(result.state.model_state["batch_stats"])))
  # The exported arrays alone give jdl.predict's outputs for raw inputs: its input
  # scaling is exported too (featurewise statistics of the train rows; without them
  # the outputs differed by ~0.2, found by an audit). Eager against the jitted
  # predict: equal within float rounding.
  raw = jdl.data.load_dataset("digits").x_test[:16]
  assert not scaling["float64"] and scaling["mean"].shape == raw.shape[1:] == (8, 8, 1)
  x = (raw.astype(np.float32) - scaling["mean"]) / scaling["std"]
  outputs = result.state.apply_fn({"params": params, "batch_stats": variables["batch_stats"]},
                                  x, train=False)
  np.testing.assert_allclose(np.asarray(outputs), jdl.predict(result, raw),
                             rtol=1e-4, atol=1e-6)
  # A run fed as it is (normalize='none') has no scaling to export.
  jdl.fit(make_config(num_epochs=1, normalize="none"), tmp_path / "raw", quiet=True)
  assert cli.main(["export", "--workdir", str(tmp_path / "raw"), "--out", str(out)]) == 0
  with np.load(out, allow_pickle=False) as f:
    assert not [k for k in f.files if k.startswith("input_scaling")]
  assert not (tmp_path / "raw" / "normalizer.npz").exists()


def _write_run(workdir: Path, records: list[dict], tail: str = "") -> Path:
  workdir.mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in records) + tail)
  return workdir


def test_compare_tabulates_and_plots_runs_side_by_side(trained, tmp_path, capsys):
  a = _write_run(tmp_path / "x" / "run", [
      *({"step": 10 * e, "epoch": e, "split": "train", "loss": loss, "learning_rate": 0.1,
         "epoch_seconds": 1.5, "samples_per_sec": 99.0} for e, loss in ((1, 1.0), (2, 0.5),
                                                                          (3, 0.3))),
      *({"step": 10 * e, "epoch": e, "split": "val", "loss": loss, "accuracy": acc}
        for e, loss, acc in ((1, 0.9, 0.5), (2, 0.4, 0.8), (3, 0.45, 0.7))),
      {"step": 30, "epoch": 3, "split": "test", "loss": 0.5, "accuracy": 0.75}],
      tail='{"step": 40, "epoch": 4, "spl')  # A run killed while writing a line.
  b = _write_run(tmp_path / "y" / "run", [  # Train lines only, a NaN loss: no val, no test.
      {"step": 5, "epoch": 1, "split": "train", "loss": None, "learning_rate": 0.01}],
      tail='\n{"step": 10, "epoch": 2, "split": "train", "loss": 2.0}\n')  # A blank line.
  out = tmp_path / "plots"
  code, text, err = run_cli("compare", a, b, trained, "--out", out, capsys=capsys)
  assert code == 0, err
  lines = text.splitlines()
  # Two runs named "run": each goes by its path below the common folder.
  header, row_a, row_b, row_t = (line.split() for line in lines[:4])
  assert header[:4] == ["run", "epochs", "train", "s"]
  assert row_a[0] == "x/run" and row_b[0] == "y/run" and row_t[0] == trained.name
  assert row_a[1:3] == ["3", "4.5"] and row_b[1:3] == ["2", "0.0"]
  # Columns in the order the runs name them: test loss, test accuracy, test macro_f1
  # (the real run's), then the best validation values with their epochs.
  assert lines[0].split("train s")[1].split() == [
      "test", "loss", "test", "accuracy", "test", "macro_f1", "best", "val", "loss", "(epoch)",
      "best", "val", "accuracy", "(epoch)", "best", "val", "macro_f1", "(epoch)"]
  assert row_a[3:] == ["0.5", "0.75", "-", "0.4", "(2)", "0.8", "(2)", "-"]
  assert row_b[3:] == ["-"] * 6
  real = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
  test = [r for r in real if r["split"] == "test"][-1]
  val = [r for r in real if r["split"] == "val"]
  assert row_t[3:6] == [f"{test[k]:.4g}" for k in ("loss", "accuracy", "macro_f1")]
  assert row_t[6:] == [f"{min(r['loss'] for r in val):.4g}", "(1)",
                       f"{max(r['accuracy'] for r in val):.4g}", "(1)",
                       f"{max(r['macro_f1'] for r in val):.4g}", "(1)"]
  assert lines[-1].startswith(f"plots: 4 in {out} ")
  for name in ("loss", "accuracy", "macro_f1", "learning_rate"):
    assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert not (out / "epoch_seconds.png").exists() and not (out / "step.png").exists()


def test_compare_refuses_what_it_cannot_read_and_writes_nothing_into_a_run(trained, tmp_path,
                                                                           capsys):
  before = snapshot(trained)
  other = _write_run(tmp_path / "other", [{"step": 1, "epoch": 1, "split": "train",
                                          "loss": 1.0}])
  # Not into a run's plots/ (its loss.png would be replaced), compared or not; not
  # into a run's folder either.
  for runs, out, words in [([trained], trained / "plots", "would write into the plots/"),
                           ([other], trained / "plots" / "more", "would write into the plots/"),
                           ([other], trained, "is the folder of the run")]:
    code, _, err = run_cli("compare", *runs, "--out", out, capsys=capsys)
    assert code == 2 and err.startswith("jdl: error: --out ") and words in err, err
  assert snapshot(trained) == before
  code, _, err = run_cli("compare", trained, tmp_path, capsys=capsys)
  assert code == 2 and f"{tmp_path} holds no metrics.jsonl" in err
  code, _, err = run_cli("compare", tmp_path / "nowhere", capsys=capsys)
  assert code == 2 and "nowhere is not a directory" in err
  (tmp_path / "a_file").write_text("mine")
  code, out, err = run_cli("compare", trained, "--out", tmp_path / "a_file", capsys=capsys)
  assert code == 2 and out == "" and "a_file' is a file; name a folder" in err
  assert (tmp_path / "a_file").read_text() == "mine"
  bad = _write_run(tmp_path / "bad", [], tail='{"step": 1, "spl\n{"step": 2}\n')
  code, _, err = run_cli("compare", bad, "--out", tmp_path / "out", capsys=capsys)
  assert code == 2 and "metrics.jsonl, line 1, is not a JSON record" in err
  assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def test_compare_refuses_lines_that_are_not_records_and_a_run_without_metrics(tmp_path,
                                                                             capsys):
  # Each was left out in silence (an empty file: exit 0 and an empty table). What is
  # a record is training's reader's (MetricsLogger) word: a JSON object, an int step.
  good = {"step": 1, "epoch": 1, "split": "train", "loss": 1.0}
  cases = {"a list": ("[1, 2]", 'line 2, is not a record of a jdl run'),
           "a string step": ('{"step": "2", "epoch": 2, "split": "train", "loss": 0.5}',
                             'line 2, is not a record of a jdl run'),
           "a string loss": ('{"step": 2, "epoch": 2, "split": "val", "loss": "low"}',
                             "line 2, has loss = 'low', not a number"),
           "a string epoch": ('{"step": 2, "epoch": "2", "split": "train", "loss": 0.5}',
                              'line 2, has no integer "epoch"')}
  for name, (line, words) in cases.items():
    run = _write_run(tmp_path / name.replace(" ", "_"), [good], tail=line + "\n")
    code, out, err = run_cli("compare", run, "--out", tmp_path / "out", capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, (name, err)
    assert err.startswith(f"jdl: error: {run / 'metrics.jsonl'}, {words}"), (name, err)
  for name, tail in (("empty", ""), ("a diagnostics line only",
                                     '{"step": 1, "epoch": 1, "split": "diagnostics"}\n')):
    run = _write_run(tmp_path / name.replace(" ", "_"), [], tail=tail)
    code, out, err = run_cli("compare", run, "--out", tmp_path / "out", capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, (name, err)
    assert f"{run / 'metrics.jsonl'} holds no metrics" in err, (name, err)
  assert not (tmp_path / "out").exists()


def test_compare_out_that_cannot_be_made_is_named(tmp_path, capsys):
  run = _write_run(tmp_path / "run", [{"step": 1, "epoch": 1, "split": "train", "loss": 1.0}])
  (tmp_path / "a_file").write_text("mine")
  code, out, err = run_cli("compare", run, "--out", tmp_path / "a_file" / "plots",
                           capsys=capsys)
  assert code == 2 and out == "" and err.count("\n") == 1, err
  assert err.startswith(f"jdl: error: --out '{tmp_path / 'a_file' / 'plots'}': cannot make "
                        "the folder"), err
  assert (tmp_path / "a_file").read_text() == "mine"


def test_compare_removes_only_the_stale_plots_it_wrote_itself(tmp_path, capsys):
  both = _write_run(tmp_path / "both", [
      {"step": 1, "epoch": 1, "split": "train", "loss": 1.0, "learning_rate": 0.1},
      {"step": 1, "epoch": 1, "split": "val", "loss": 1.0, "accuracy": 0.5}])
  out = tmp_path / "plots"
  code, text, err = run_cli("compare", both, "--out", out, capsys=capsys)
  assert code == 0, err
  assert sorted(p.name for p in out.glob("*.png")) == ["accuracy.png", "learning_rate.png",
                                                       "loss.png"]
  (out / "mine.png").write_bytes(b"the user's")  # Never compare's.
  (out / "learning_rate.png").write_bytes(b"edited since")  # No longer compare's.
  loss_only = _write_run(tmp_path / "loss_only", [
      {"step": 1, "epoch": 1, "split": "train", "loss": 2.0}])
  code, text, err = run_cli("compare", loss_only, "--out", out, capsys=capsys)
  assert code == 0, err
  # accuracy.png was the previous compare's, of a quantity no longer plotted: it went.
  assert sorted(p.name for p in out.glob("*.png")) == ["learning_rate.png", "loss.png",
                                                       "mine.png"]
  assert (out / "mine.png").read_bytes() == b"the user's"
  assert (out / "learning_rate.png").read_bytes() == b"edited since"
  assert text.splitlines()[-1] == ("removed 1 plot of the previous compare there, of "
                                   "quantities these runs do not log: accuracy.png")


def test_compare_replaces_no_file_it_did_not_write_and_writes_only_into_out(tmp_path,
                                                                              capsys):
  # A user's own loss.png in --out was replaced in silence, a link written through
  # (into a run's plots/), and a metric named "../escaped" plotted outside --out.
  run = _write_run(tmp_path / "run", [{"step": 1, "epoch": 1, "split": "train", "loss": 1.0}])
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "loss.png").write_bytes(b"my own figure")
  (tmp_path / "linked").mkdir()
  (tmp_path / "linked" / "loss.png").symlink_to(tmp_path / "run" / "plots.png")
  (tmp_path / "run" / "plots.png").write_bytes(b"a run's plot")
  for out in (mine, tmp_path / "linked"):
    code, text, err = run_cli("compare", run, "--out", out, capsys=capsys)
    assert code == 2 and text == "" and err == (
        f"jdl: error: --out '{out}' holds loss.png, which jdl compare did not write (or "
        "which changed since): the plots would replace it; move it away or name another "
        "--out folder\n"), err
  assert (mine / "loss.png").read_bytes() == b"my own figure"
  assert (tmp_path / "run" / "plots.png").read_bytes() == b"a run's plot"
  # Its own plots, unchanged since, it replaces (compare again into the same folder).
  code, _, err = run_cli("compare", run, "--out", tmp_path / "fresh", capsys=capsys)
  assert code == 0, err
  code, _, err = run_cli("compare", run, "--out", tmp_path / "fresh", capsys=capsys)
  assert code == 0, err
  bad = _write_run(tmp_path / "bad", [
      {"step": 1, "epoch": 1, "split": "train", "loss": 1.0, "../escaped": 2.0}])
  code, _, err = run_cli("compare", bad, "--out", tmp_path / "out2", capsys=capsys)
  assert code == 2 and "has a metric named '../escaped', which cannot name a plot file" in err
  assert not list(tmp_path.glob("*.png")) and not (tmp_path / "out2").exists()


def test_export_says_it_made_the_folder_of_its_out(trained, tmp_path, capsys):
  # A mistyped folder was made in silence; it is made (as every --out's is), and said.
  out = tmp_path / "new" / "deeper" / "p.npz"
  code, text, err = run_cli("export", "--workdir", trained, "--out", out, capsys=capsys)
  assert code == 0 and out.is_file(), err
  assert f" to {out} (its folder {out.parent} was made for it)\n" in text, text


def test_rerunning_a_finished_run_leaves_its_tensorboard_files_as_they_were(tmp_path, capsys):
  # Each re-run with nothing to train added an events file to tb/ (a header and the
  # purge step, no point: the test points are in the run's file already).
  args = ["train", "--workdir", tmp_path, "--quiet", *FAST, "--config.tensorboard=true"]
  code, _, err = run_cli(*args, capsys=capsys)
  assert code == 0, err
  files = {p.name: p.read_bytes() for p in (tmp_path / "tb").iterdir()}
  assert len(files) == 1
  for _ in range(2):
    code, _, err = run_cli(*args, capsys=capsys)
    assert code == 0, err
    assert {p.name: p.read_bytes() for p in (tmp_path / "tb").iterdir()} == files
  # A run that trains further writes its points to a new file, as before.
  code, _, err = run_cli(*args, "--config.num_epochs=2", capsys=capsys)
  assert code == 0, err
  new = [p for p in (tmp_path / "tb").iterdir() if p.name not in files]
  assert len(new) == 1 and ".from_step_" in new[0].name and new[0].stat().st_size > 200


def test_compare_names_the_latest_of_tied_best_epochs_as_evaluate_scores_it():
  # It named the first of epochs tied at the best value; the best checkpoint, which
  # evaluate scores, is the latest of them (a tie counts as an improvement).
  from jdl.train import plots
  run = plots.RunCurves(label="r", test={}, epochs=4, train_seconds=1.0, curves={
      "accuracy": {"val": ([1, 2, 3, 4], [0.5, 1.0, 1.0, 0.9])},
      "loss": {"val": ([1, 2, 3, 4], [0.3, 0.2, 0.2, 0.25])}})
  row = plots.comparison_table([run]).splitlines()[1].split()
  assert row[3:] == ["1", "(3)", "0.2", "(3)"]


def test_structural_keys_count_for_the_runs_that_read_them():
  # generative.* keys refused a classifier's resume or evaluation ("the test split or
  # the model would differ"); a config.json from before the generative section
  # refused a plain `jdl evaluate`; model.dropout_rate=0.0 against a config that
  # left it at the MLP's default 0.0 was refused too.
  from jdl import config as config_lib
  saved = json.loads(config_lib.to_json(jdl.load_config("xor")))
  diff = lambda **changes: config_lib.structural_diff(saved, {**saved, **changes})  # noqa: E731
  generative = lambda **g: {**saved["generative"], **g}  # noqa: E731
  assert diff(generative=generative(latent_dim=5, binarize="none")) == []
  old = {k: v for k, v in saved.items() if k != "generative"}
  assert config_lib.structural_diff(old, saved) == []
  assert "dropout_rate" not in saved["model"]
  assert diff(model={**saved["model"], "dropout_rate": 0.0}) == []
  assert diff(model={**saved["model"], "dropout_rate": 0.5}) == ["model.dropout_rate"]
  # A task that reads them: refused as before, each key by its own task.
  for task, key, value in (("vae", "binarize", "none"), ("gan", "latent_dim", 5),
                           ("wgan_gp", "latent_dim", 5)):
    run = {**saved, "task": task}
    assert config_lib.structural_diff(run, {**run, "generative": generative(**{key: value})}
                                      ) == [f"generative.{key}"]
  vae = {**saved, "task": "vae"}
  assert config_lib.structural_diff(vae, {**vae, "generative": generative(latent_dim=5)}) == []
