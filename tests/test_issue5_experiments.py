"""The issue-5 experiment drivers: their --tiny runs, and their helpers against references.

The drivers live in experiments/ (scripts, not part of the library); each --tiny run
uses scikit-learn's digits, so no MNIST is needed.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

import jdl
from conftest import REPO, make_config

sys.path.insert(0, str(REPO / "experiments"))
import _common  # noqa: E402
import batchnorm  # noqa: E402
import optimizers  # noqa: E402
import overfitting  # noqa: E402
import vanishing_gradients  # noqa: E402


def _tiny(driver, tmp_path):
  records = driver.main(["--tiny", "--workdir", str(tmp_path / "runs"),
                         "--data_dir", str(tmp_path / "no_mnist")])
  return records, tmp_path / "runs" / "results"


def _logged_test_accuracy(workdir):
  """The accuracy of the one test line a run wrote to its metrics.jsonl."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
  tests = [r for r in records if r["split"] == "test"]
  assert len(tests) == 1, workdir
  return tests[0]["accuracy"]


def _softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def test_grad_norms_match_the_closed_form_gradient_of_the_output_layer():
  # One hidden ReLU layer: dL/dW_head = h^T (softmax(z) - onehot(y)) / B, in numpy.
  trainer = jdl.Trainer(make_config(), quiet=True)
  x, y = np.asarray(trainer.data.train.x[:64]), np.asarray(trainer.data.train.y[:64])
  names, grad_norms = vanishing_gradients.make_grad_norms(trainer, x, y)
  assert names == ["hidden_0", "head"]
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()}
       for k, d in trainer.state.params.items()}
  x = x.reshape(len(x), -1).astype(np.float64)
  h = np.maximum(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"], 0.0)
  z = h @ p["head"]["kernel"] + p["head"]["bias"]
  delta = (_softmax(z) - np.eye(z.shape[1])[y]) / len(y)
  d_hidden = (delta @ p["head"]["kernel"].T) * (h > 0)
  expected = [np.linalg.norm(x.T @ d_hidden), np.linalg.norm(h.T @ delta)]
  np.testing.assert_allclose(np.asarray(grad_norms(trainer.state)), expected, rtol=1e-4)


def test_vanishing_gradients_tiny_run(tmp_path):
  records, out = _tiny(vanishing_gradients, tmp_path)
  assert tuple(records) == vanishing_gradients.TINY_VARIANTS
  for name, r in records.items():
    assert r["layers"] == ["hidden_0", "hidden_1", "hidden_2", "head"]
    assert np.all(np.isfinite(r["init"])) and np.all(np.asarray(r["init"]) > 0)
    assert len(r["epoch_end"]) == 1 and len(r["trace"]) >= 1
    # The variant's own run (workdir "relu_bn" for "relu + BN"), its test line.
    workdir = tmp_path / "runs" / name.replace(" + ", "_").lower()
    assert r["test_accuracy"] == pytest.approx(_logged_test_accuracy(workdir), rel=0,
                                               abs=1e-6)
  # Sigmoid shrinks the gradient on its way down (sigmoid' <= 1/4); batch norm does not.
  ratio = {k: r["init"][0] / r["init"][-1] for k, r in records.items()}
  assert ratio["sigmoid"] < 0.1 < ratio["relu + BN"]
  assert {p.name for p in out.iterdir()} == {"gradient_norms.png", "table.md", "results.json"}
  assert "| sigmoid |" in (out / "table.md").read_text()
  # Again in the same workdir: nothing left to train; the norms come from its checkpoints.
  again, _ = _tiny(vanishing_gradients, tmp_path)
  for name, r in records.items():
    for key in ("init", "final", "test_accuracy"):
      np.testing.assert_allclose(again[name][key], r[key], rtol=1e-6, err_msg=f"{name} {key}")
    assert [e for e, _ in again[name]["trace"]] == [e for e, _ in r["trace"]]
    np.testing.assert_allclose([n for _, n in again[name]["trace"]],
                               [n for _, n in r["trace"]], rtol=1e-6)


def test_overfitting_tiny_run_and_pending_variants(tmp_path):
  records, out = _tiny(overfitting, tmp_path)
  assert tuple(records) == overfitting.TINY_VARIANTS
  for r in records.values():
    assert r["gap"] == pytest.approx(r["train_accuracy"] - r["val_accuracy"])
    assert 1 <= r["epochs_run"] <= 3 and len(r["history"]["val_accuracy"]) == r["epochs_run"]
  saved = json.loads((out / "results.json").read_text())
  config = jdl.load_config("overfitting")
  assert ("augmentation" in saved["pending"]) == ("augment" not in config)
  assert (out / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("overrides, expected", [
    ({}, False),
    ({"regularization.l2": 1e-4}, False),
    ({"model.dropout_rate": 0.5, "early_stopping.enabled": True}, False),
    ({"no_such_section.rate": 1.0}, True),
])
def test_pending_means_a_missing_config_section(overrides, expected):
  assert overfitting.pending(jdl.load_config("overfitting"), overrides) is expected


def test_batchnorm_tiny_run(tmp_path):
  records, out = _tiny(batchnorm, tmp_path)
  assert [(r["batch_norm"], r["learning_rate"]) for r in records.values()] == [
      (False, batchnorm.LEARNING_RATES["low"]), (True, batchnorm.LEARNING_RATES["high"])]
  for r in records.values():
    assert r["error"] is None and len(r["loss"]) == len(r["val_accuracy"]) == 2
  assert (out / "curves.png").stat().st_size > 0
  assert "epochs to" in (out / "table.md").read_text()


def test_optimizers_tiny_run(tmp_path):
  records, out = _tiny(optimizers, tmp_path)
  assert list(records) == list(optimizers.TINY)
  for r in records.values():
    assert r["error"] is None and len(r["loss"]) == len(r["val_accuracy"]) == 2
    # Each at its usual rate trains (Adadelta too: at the shared 1e-3 it barely moves).
    assert r["loss"][1] < r["loss"][0] < np.log(10), r
  assert records["adadelta"]["learning_rate"] == 1.0
  assert (out / "curves.png").stat().st_size > 0
  assert "| adadelta | lr 1, rho 0.95, eps 1e-06 | Zeiler 2012 |" in (out / "table.md").read_text()


@pytest.mark.parametrize("values, target, expected", [
    ([0.1, 0.5, 0.9], 0.5, 2),
    ([0.1, 0.5, 0.9], 0.05, 1),
    ([0.1, 0.5, 0.9], 0.95, None),
    ([], 0.5, None),
])
def test_epochs_to(values, target, expected):
  assert batchnorm.epochs_to(values, target) == expected


def test_hold_out_validation_is_disjoint_and_sized():
  ids = np.arange(100, dtype=np.float32).reshape(100, 1)  # Each row names its example.
  source = jdl.data.Dataset(x_train=ids, y_train=np.arange(100) % 10, x_test=ids[:10],
                            y_test=np.arange(10), num_classes=10, task="classification",
                            name="ids", input_shape=(1,))
  held = _common.hold_out_validation(source, 30)
  train, val = set(held.x_train[:, 0]), set(held.x_val[:, 0])
  assert len(val) == 30 and len(train) == 70 and train | val == set(range(100))
  np.testing.assert_array_equal(held.y_val, held.x_val[:, 0].astype(int) % 10)
  with pytest.raises(jdl.JdlError, match="n_val=0"):
    _common.hold_out_validation(source, 0)


def test_set_dotted_names_a_missing_key():
  config = jdl.load_config("overfitting")
  _common.set_dotted(config, "regularization.l2", 1e-3)
  assert config.regularization.l2 == 1e-3
  with pytest.raises(jdl.JdlError, match="'optimizer.l3'"):
    _common.set_dotted(config, "optimizer.l3", 1.0)


@pytest.mark.parametrize("name", ["vanishing_gradients", "overfitting", "batchnorm", "optimizers"])
def test_configs_train_alone_on_mnist_shaped_npz(name, tmp_path):
  # `jdl train --config NAME` without the driver: the config's own data handling.
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "d.npz", x=rng.random((120, 28, 28, 1), dtype=np.float32),
           y=np.arange(120) % 10)
  config = jdl.load_config(name)
  _common.quiet_outputs(config)
  _common.apply_overrides(config, {"num_epochs": 1, "batch_size": 32, "dataset": "npz",
                                   "data_dir": str(tmp_path / "d.npz")})
  result = jdl.fit(config, quiet=True)
  assert int(result.state.step) == result.trainer.steps_per_epoch >= 1
  # The reported accuracy is jdl.predict's on the raw test split of the file.
  test = jdl.data.load_dataset("npz", data_dir=tmp_path / "d.npz",
                               test_split=config.test_split, seed=config.seed)
  logits = jdl.predict(result, test.x_test)
  np.testing.assert_allclose(result.test_metrics["accuracy"],
                             np.mean(logits.argmax(axis=1) == test.y_test), rtol=0, atol=1e-6)


def test_only_a_drivers_full_run_writes_the_published_results(tmp_path, capsys):
  import argparse
  def args(**over):
    return argparse.Namespace(**{"out": "", "tiny": False, "epochs": 0,
                                 "workdir": str(tmp_path / "w"), **over})
  assert _common.out_dir(args(), "overfitting") == _common.RESULTS / "overfitting"
  capsys.readouterr()
  for partial_args, partial in ((args(epochs=3), False), (args(), True)):
    assert _common.out_dir(partial_args, "overfitting", partial=partial) == (
        tmp_path / "w" / "results")
    assert "a partial run" in capsys.readouterr().err
  assert _common.out_dir(args(tiny=True), "x") == tmp_path / "w" / "results"
  assert _common.out_dir(args(epochs=3, out=str(tmp_path / "o")), "x") == tmp_path / "o"
  # Through a driver's parser: --epochs equal to the full run's is the full run; with
  # per-variant epochs (a text default) any --epochs is partial.
  workdir = ["--workdir", str(tmp_path / "w")]
  for default, given, want in ((20, "20", _common.RESULTS / "overfitting"),
                               (20, "5", tmp_path / "w" / "results"),
                               ("20 (10 for the CNN)", "20", tmp_path / "w" / "results")):
    parser = _common.make_parser("doc", name="overfitting", epochs=default)
    assert _common.out_dir(parser.parse_args(["--epochs", given, *workdir]),
                           "overfitting") == want, (default, given)


def test_a_full_run_without_mnist_is_one_error_not_a_digits_run(tmp_path):
  import subprocess
  from conftest import cli_env
  args = ["--data_dir", str(tmp_path / "no_mnist"), "--epochs", "1", "--workdir",
          str(tmp_path / "runs")]
  with pytest.raises(jdl.JdlError, match="holds no MNIST IDX files"):
    overfitting.main(args)
  # Every MNIST driver refuses before it writes anything (ae_anomaly and vae_mnist made
  # WORKDIR/results first).
  import importlib.util
  for name in ("ae_anomaly", "architectures", "explain_mnist", "gan_mnist", "optimizers",
               "transfer_mnist", "vae_mnist", "vanishing_gradients"):
    # By path: a config of the same name (configs/gan_mnist.py) may hold the module name.
    spec = importlib.util.spec_from_file_location(f"driver_{name}",
                                                  REPO / "experiments" / f"{name}.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    given = args if name not in ("explain_mnist", "transfer_mnist") else (
        args[:2] + args[4:])  # These two take no --epochs.
    with pytest.raises(jdl.JdlError, match="holds no MNIST IDX files"):
      driver.main(given)
    assert not (tmp_path / "runs").exists(), name
  proc = subprocess.run([sys.executable, str(REPO / "experiments" / "batchnorm.py"), *args],
                        capture_output=True, text=True, env=cli_env(), timeout=300)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
  assert proc.stderr.startswith("batchnorm.py: error: --data_dir")
  assert not (tmp_path / "runs").exists()


def test_batchnorm_reports_only_a_non_finite_stop_as_divergence(tmp_path):
  # Any other error (here a workdir holding another run) stops the driver.
  (tmp_path / "runs").mkdir()
  jdl.fit(make_config(num_epochs=1), tmp_path / "runs" / "nobn_lr0.005", quiet=True)
  with pytest.raises(jdl.JdlError, match="holds a run with a different config"):
    _tiny(batchnorm, tmp_path)


def test_architectures_tiny_run_and_its_variants_argument(tmp_path, capsys):
  import architectures
  records = architectures.main(["--tiny", "--variants", "lenet5,resnet20", "--workdir",
                                str(tmp_path / "runs"), "--data_dir", str(tmp_path / "none")])
  assert list(records) == ["lenet5", "resnet20"]
  assert records["lenet5"]["parameters"] == 61_706  # LeNet-5 pads the 8x8 digits to 32x32.
  resnet = records["resnet20"]
  assert tuple(resnet["model"]["stage_sizes"]) == (1, 1)
  for key, r in records.items():
    assert len(r["val_accuracy"]) == 2
    assert r["test_accuracy"] == pytest.approx(
        _logged_test_accuracy(tmp_path / "runs" / key), rel=0, abs=1e-6)
    assert r["train_examples"] == 1437 - 300 and r["epoch_seconds"] > 0
  out = tmp_path / "runs" / "results"
  assert (out / "accuracy.png").stat().st_size > 0
  table = (out / "table.md").read_text()
  assert "| LeNet-5 | 61,706 |" in table and "| ResNet-20 (narrow, --tiny) |" in table
  # A re-run over the finished runs reports their logged times (it reported none).
  again = architectures.main(["--tiny", "--variants", "lenet5,resnet20", "--workdir",
                              str(tmp_path / "runs"), "--data_dir", str(tmp_path / "none")])
  for key, r in again.items():
    assert r["samples_per_sec"] == records[key]["samples_per_sec"]
    assert r["epoch_seconds"] == records[key]["epoch_seconds"] > 0
  # Fewer epochs over them: refused (the longer runs were labelled with the shorter count).
  with pytest.raises(jdl.JdlError, match=r"holds a run of 2 epochs, more than the 1 asked "
                                         r"for; .* or ask for 2 epochs"):
    architectures.main(["--tiny", "--variants", "lenet5", "--epochs", "1", "--workdir",
                        str(tmp_path / "runs"), "--data_dir", str(tmp_path / "none")])
  with pytest.raises(SystemExit) as e:
    architectures.main(["--tiny", "--variants", "lenet5,alexnet"])
  assert e.value.code == 2 and "unknown alexnet" in capsys.readouterr().err
  # The full run's ResNet-20: 272,474 parameters on 3 channels, 288 fewer on one.
  import jax
  model = jdl.models.create_model(jdl.load_config("resnet20_mnist").model, num_outputs=10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 1))))
  assert jdl.count_params(shapes["params"]) == 272_474 - 2 * 9 * 16


@pytest.mark.parametrize("driver, argv, message", [
    # Accepted, then a ZeroDivisionError / KeyError traceback after training.
    ("explain_mnist", ["--deletion_examples", "0"], "--deletion_examples: must be >= 1, got 0"),
    ("explain_mnist", ["--deletion_lime_examples", "0"], "must be >= 1, got 0"),
    # --holdout was ignored when --digits was given.
    ("ae_anomaly", ["--holdout", "3", "--digits", "1,2"], "give --holdout or --digits, not both"),
    # The full set with one twice counted as the full run (published table, a row twice).
    ("architectures", ["--variants", "mlp,cnn,lenet5,vgg,inception,resnet20,mlp"],
     "--variants lists mlp more than once"),
])
def test_driver_arguments_are_refused_before_training(driver, argv, message, tmp_path, capsys):
  import importlib
  module = importlib.import_module(driver)
  with pytest.raises(SystemExit) as e:
    module.main([*argv, "--workdir", str(tmp_path / "runs")])
  err = capsys.readouterr().err
  assert e.value.code == 2 and message in err and err.count("\n") == 1, err
  assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, partial", [([], False), (["--grad_T", "50"], True),
                                           (["--cells", "lstm"], True)])
def test_an_adding_problem_run_of_other_settings_leaves_the_published_figures(
    argv, partial, monkeypatch):
  # --grad_T 50 over the default lengths and cells wrote over input_gradients.png (T = 100).
  import _common
  import adding_problem
  seen = []

  def out_dir(args, name, *, partial=False):
    seen.append(partial)
    raise SystemExit(0)  # Before any training.

  monkeypatch.setattr(_common, "out_dir", out_dir)
  with pytest.raises(SystemExit):
    adding_problem.main(argv)
  assert seen == [partial]
