"""`jdl check`: each sanity check passes on a healthy model and fails on its own fault."""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import cli
from jdl import sanity
from conftest import fake_trainer, make_config

CHECKS = ("initial_loss", "overfit", "gradcheck", "grad_nonzero", "data_balance",
          "data_inputs", "data_finite")
FROZEN = ("hidden_0/bias", "hidden_0/kernel", "hidden_1/bias", "hidden_1/kernel")


@jax.custom_vjp
def _identity_twice_grad(x):
  return x


def _fwd(x):
  return x, None


def _bwd(_, g):
  return (2.0 * g,)  # Deliberately wrong: the true vjp of the identity is g.


_identity_twice_grad.defvjp(_fwd, _bwd)


class _Net(nn.Module):
  """64 -> 32 -> 4 -> 10 relu net with switchable faults.

  ``fault``: ``'stop_gradient'`` before the head (the layers below never learn),
  ``'double_grad'`` (a custom_vjp after ``hidden_0`` that doubles its gradient),
  ``'big_bias'`` (head bias ~ N(0, 20^2): confident, wrong first predictions).
  """
  num_outputs: int = 10
  fault: str = ""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    del train
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(32, kernel_init=nn.initializers.lecun_normal(), name="hidden_0")(x))
    if self.fault == "double_grad":
      x = _identity_twice_grad(x)
    x = nn.relu(nn.Dense(16, kernel_init=nn.initializers.lecun_normal(), name="hidden_1")(x))
    if self.fault == "stop_gradient":
      x = jax.lax.stop_gradient(x)
    bias_init = (nn.initializers.normal(20.0) if self.fault == "big_bias"
                 else nn.initializers.zeros_init())
    out = nn.Dense(self.num_outputs, kernel_init=nn.initializers.lecun_normal(),
                   bias_init=bias_init, name="head")(x)
    # Probabilities where the loss wants logits: every example can come out right,
    # but the cross-entropy cannot fall below -log(e / (e + 9)) = 1.46.
    return jax.nn.softmax(out) if self.fault == "double_softmax" else out


@functools.lru_cache(maxsize=None)  # Each fault's checks run once per session.
def _run(fault: str):
  config = make_config(model__kernel_init="lecun_normal")
  results = sanity.run_checks(config, model=_Net(fault=fault), overfit_steps=200,
                              overfit_lr=1e-2)
  return {r.name: r for r in results}


# Which checks each fault must fail (all others pass) and the leaves they name.
@pytest.mark.parametrize("fault, failing, leaves", [
    ("", (), ()),
    ("stop_gradient", ("overfit", "gradcheck", "grad_nonzero"), FROZEN),
    ("double_grad", ("gradcheck",), ("hidden_0/bias", "hidden_0/kernel")),
    ("big_bias", ("initial_loss",), ()),
    ("double_softmax", ("overfit",), ()),
])
def test_checks_fail_exactly_on_the_fault(fault, failing, leaves):
  results = _run(fault)
  assert tuple(results) == CHECKS
  got = tuple(name for name, r in results.items() if r.failed)
  assert got == failing, [r.line() for r in results.values()]
  for name in ("gradcheck", "grad_nonzero"):
    if name in failing:
      assert tuple(sorted(results[name].leaves)) == leaves, results[name].line()


def test_stop_gradient_zero_gradients_are_named_on_the_line():
  line = _run("stop_gradient")["grad_nonzero"].line()
  assert line.startswith("FAIL grad_nonzero")
  for leaf in FROZEN:
    assert leaf in line
  assert "head/" not in line


def test_double_gradient_relative_error_is_one_half():
  # ad = 2 fd, so |fd - ad| / max(|fd|, |ad|) = 1/2 for the doubled leaves.
  errors = _run("double_grad")["gradcheck"].values["errors"]
  for leaf in ("hidden_0/kernel", "hidden_0/bias"):
    assert errors[leaf] == pytest.approx(0.5, abs=1e-4)
  for leaf in ("hidden_1/kernel", "hidden_1/bias", "head/kernel", "head/bias"):
    assert errors[leaf] < sanity.GRADCHECK_TOL


def test_initial_loss_reference_is_ln_c_on_the_healthy_net():
  r = _run("")["initial_loss"]
  assert r.values["expected"] == pytest.approx(math.log(10), rel=1e-12)
  assert abs(r.values["loss"] - math.log(10)) < sanity.INITIAL_LOSS_RTOL * math.log(10)


def test_gradcheck_leaves_float32_default_in_place():
  _run("double_grad")
  assert jnp.asarray(1.0).dtype == jnp.float32
  assert not jax.config.jax_enable_x64


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_gradcheck_passes_on_recurrent_models(cell):
  # Their carries were float32 in the float64 check, so every recurrent config
  # failed it (relative errors 2e-2 to 0.8) with right gradients.
  config = jdl.load_config("adding_problem")
  config.n_samples, config.sequence.seq_len = 64, 12
  config.model.cell, config.model.hidden = cell, (6,)
  results = {r.name: r for r in sanity.run_checks(config, overfit_steps=1)}
  assert results["gradcheck"].status == sanity.PASS, results["gradcheck"].message
  assert results["gradcheck"].values["max_rel_error"] < 1e-7
  with jax.enable_x64(True):
    wide = jdl.models.cells.make_cell(cell, 3, dtype=jnp.float64)
    assert all(c.dtype == jnp.float64 for c in jax.tree.leaves(wide.initialize_carry(2)))
  for narrow in (jnp.bfloat16, jnp.float16, jnp.float32, None):
    cells = jdl.models.cells.make_cell(cell, 3, dtype=narrow)
    assert all(c.dtype == jnp.float32 for c in jax.tree.leaves(cells.initialize_carry(2)))


def test_regression_skips_initial_loss_and_class_balance():
  config = make_config(dataset="diabetes", task="regression", loss="mse",
                       metrics=("mse",), model__hidden=(8,))
  results = {r.name: r for r in sanity.run_checks(config, overfit_steps=5)}
  assert results["initial_loss"].status == sanity.SKIP
  assert results["data_balance"].status == sanity.SKIP
  assert results["gradcheck"].status == sanity.PASS


def test_overfit_uses_the_configs_adam_rate_by_default(capsys):
  # xor trains at Adam 0.05; at the fixed 1e-3 the 2-8-1 MLP did not fit its subset
  # in 300 steps, and `jdl check` failed on a shipped experiment.
  assert cli.main(["check", "--config", "xor"]) == 0
  overfit = [line for line in capsys.readouterr().out.splitlines() if " overfit " in line]
  assert len(overfit) == 1 and overfit[0].startswith("PASS") and "(lr 0.05)" in overfit[0]
  # SGD-like optimizers get Adam at 1e-3, 1e-2, 1e-1 (their rates mean something else).
  results = sanity.run_checks(make_config(optimizer__name="sgd", optimizer__learning_rate=0.5),
                              overfit_steps=1)
  message = {r.name: r for r in results}["overfit"].message
  assert "(lr 0.1)" in message and message.endswith("(lr 0.001, 0.01 failed too)")


def test_check_passes_on_the_linear_regression_experiment(capsys):
  # SGD at 0.1 in its config; Adam at 1e-3 or 1e-2 cannot move its weights far
  # enough in 300 steps, 1e-1 can.
  assert cli.main(["check", "--config", "linear_regression"]) == 0
  overfit = [line for line in capsys.readouterr().out.splitlines() if " overfit " in line]
  assert overfit[0].startswith("PASS") and "(lr 0.1)" in overfit[0]


def test_the_overfit_check_turns_convolutional_dropout_off_too():
  model = sanity._without_dropout(jdl.models.create_model(
      {"name": "cnn", "features": (4,), "dense": (8,), "dropout_rate": 0.5,
       "conv_dropout_rate": 0.9}, num_outputs=10))
  assert model.dropout_rate == 0.0 and model.conv_dropout_rate == 0.0


def test_cli_check_on_the_default_experiment(capsys):
  # Small settings: a narrow CNN, a short overfitting budget. lecun_normal: with the
  # default he_normal the first logits are too large for initial_loss (see sanity.py).
  code = cli.main(["check", "--config", "digits_cnn", "--overfit-steps", "100",
                   "--overfit-lr", "1e-2",
                   "--config.model.features=(4,)", "--config.model.dense=(16,)",
                   "--config.model.kernel_init=lecun_normal"])
  out = capsys.readouterr().out.splitlines()
  lines = [line for line in out if line.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
  assert [line.split()[1] for line in lines] == list(CHECKS)
  assert code == (1 if any(line.startswith("FAIL") for line in lines) else 0)
  assert code == 0, "\n".join(out)


@pytest.mark.parametrize("argv, message", [
    (["check", "--config.nope=1"], "unknown config key 'nope'"),
    (["check", "--overfit-steps", "0"], "argument --overfit-steps: must be >= 1, got 0"),
    (["check", "--config", "no_such_experiment"], "no config file or experiment"),
    # The config's rate, named by its key (was "overfit_lr must be > 0, got None").
    (["check", "--config", "xor", "--config.optimizer.learning_rate=-1"],
     "optimizer.learning_rate must be > 0 and finite, got -1.0"),
])
def test_cli_check_bad_input_is_one_error_line(argv, message, capsys):
  try:
    code = cli.main(argv)
  except SystemExit as e:  # An argument argparse refuses.
    code = e.code
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jdl: error: ") and message in err[0], err


def test_data_balance_names_a_subsets_classes_as_the_dataset_does():
  # classes=(7, 8, 9) trains them as 0, 1, 2: the message named the rare class "2".
  result = {r.name: r for r in sanity.check_data(fake_trainer(
      _X[:41], _Y[:41], classes=(7, 8, 9)))}["data_balance"]
  assert "min 0.024 (class 9) max 0.488 (class 7)" in result.message, result.message


_RNG = np.random.default_rng(0)
_X = _RNG.standard_normal((60, 5)).astype(np.float32)
_Y = np.repeat(np.arange(3), 20).astype(np.int32)


@pytest.mark.parametrize("x, y, failing", [
    (_X, _Y, ()),
    (_X[:43], _Y[:43], ()),  # Class 2: 3 examples vs 20, share ratio 0.15 >= 0.1.
    (_X[:41], _Y[:41], ("data_balance",)),  # 1 vs 20: ratio 0.05 < 0.1.
    (_X[:40], _Y[:40], ("data_balance",)),  # Class 2 missing.
    (_X * 1000, _Y, ("data_inputs",)),  # Unscaled inputs.
    (np.zeros_like(_X), _Y, ("data_inputs",)),  # Constant inputs.
    (np.where(_X > 2.5, np.nan, _X), _Y, ("data_finite",)),
    (np.full_like(_X, np.nan), _Y, ("data_inputs", "data_finite")),  # Was a ValueError.
])
def test_data_checks_against_numpy(x, y, failing):
  results = {r.name: r for r in sanity.check_data(fake_trainer(x, y))}
  got = tuple(name for name, r in results.items() if r.failed)
  share = np.bincount(y, minlength=3) / len(y)
  assert results["data_balance"].values["min_share"] == pytest.approx(share.min(), rel=1e-12)
  assert results["data_balance"].values["max_share"] == pytest.approx(share.max(), rel=1e-12)
  finite = x[np.isfinite(x)]
  if finite.size:
    assert results["data_inputs"].values["std"] == pytest.approx(
        finite.std(dtype=np.float64), rel=1e-6, abs=1e-12)
  assert got == failing, [r.line() for r in results.values()]


class _FirstFeatureOnly(nn.Module):
  """A regression model that reads one of the five features the targets need."""

  @nn.compact
  def __call__(self, x, train=False):
    return nn.Dense(1)(x[:, :1])


def test_the_overfit_check_of_regression_is_against_the_mean_target():
  # The targets are 20 + a signal of all five features: 1% of the initial loss (~400)
  # was reached by fitting the offset alone, 13 times worse than the mean predictor.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5)).astype(np.float32)
  y = (20.0 + x @ rng.normal(size=(5, 1)) * 0.3).astype(np.float32)
  ds = jdl.data.Dataset(x, y, x[:40], y[:40], 0, "regression", "toy", (5,))
  config = make_config(task="regression", loss="mse", metrics=("mse",), monitor="",
                       validation_split=0.0, normalize="none")
  config.optimizer.learning_rate = 0.5
  results = {r.name: r for r in sanity.run_checks(config, dataset=ds, model=_FirstFeatureOnly(),
                                                  overfit_steps=300)}
  assert results["overfit"].failed, results["overfit"].line()
  assert "predicting the mean target" in results["overfit"].message


def test_regression_to_constant_targets_is_fitted_against_its_initial_loss():
  # The mean target's loss is float32 rounding there (2e-16): no scale to compare with.
  x = np.eye(40, dtype=np.float32)
  y = np.full((40, 1), 0.1, np.float32)
  ds = jdl.data.Dataset(x, y, x[:8], y[:8], 0, "regression", "toy", (40,))
  config = make_config(task="regression", loss="mse", metrics=(), monitor="",
                       validation_split=0.0, normalize="none", batch_size=8)
  config.optimizer.learning_rate = 0.1
  results = {r.name: r for r in sanity.run_checks(config, dataset=ds, model=_FirstFeatureOnly(),
                                                  overfit_steps=300, overfit_examples=20)}
  assert not results["overfit"].failed, results["overfit"].line()
  assert "1% of its initial" in results["overfit"].message


def _soft_targets(loss):
  """Three classes' labels smoothed to probabilities (0.8 + 0.2 / 3) as regression
  targets of ``loss``: the dataset and the config."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 5)).astype(np.float32)
  labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
  y = (np.eye(3)[labels] * 0.8 + 0.2 / 3).astype(np.float32)
  ds = jdl.data.Dataset(x[:160], y[:160], x[160:], y[160:], 0, "regression", "soft", (5,))
  config = make_config(task="regression", loss=loss, metrics=("mse",), monitor="",
                       validation_split=0.0, model__hidden=(64,))
  return ds, config


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "binary_crossentropy"])
def test_soft_targets_are_fitted_down_to_their_entropy(loss):
  # Their cross-entropy cannot go below the targets' entropy, yet the check asked for
  # 1% of the initial loss: every soft-label run failed it, perfectly fitted.
  ds, config = _soft_targets(loss)
  y = ds.y_train
  results = {r.name: r for r in sanity.run_checks(config, dataset=ds, overfit_steps=1000,
                                                  overfit_lr=1e-2)}
  overfit = results["overfit"]
  assert not overfit.failed, overfit.line()
  subset = y[:32].astype(np.float64)  # The examples the check fits (its default 32).
  terms = [subset] if loss == "categorical_crossentropy" else [subset, 1 - subset]
  entropy = np.mean(-sum((t * np.log(t)).sum(-1) for t in terms)) / (
      1 if loss == "categorical_crossentropy" else 3)
  assert f"the soft targets' entropy ({entropy:.3g})" in overfit.message
  assert entropy - 1e-6 <= overfit.values["loss"] <= entropy + 0.01


class _ScaledBatchNormNet(nn.Module):
  """Inputs scaled by 50 before batch norm: on the batch's statistics the logits are
  small; on a fresh model's running ones (mean 0, variance 1) they are 50x larger."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train)(50.0 * x.reshape(len(x), -1))
    return nn.Dense(10, kernel_init=nn.initializers.normal(0.1))(x)


def test_batch_norm_models_are_checked_as_their_first_train_step_runs_them():
  # initial_loss, gradcheck and grad_nonzero ran the model in eval mode, where a fresh
  # model's batch-norm statistics normalise nothing: resnet20_mnist failed jdl check
  # (loss 7.0 against ln 10; 28 leaves "wrong" by finite differences).
  results = {r.name: r for r in sanity.run_checks(make_config(), model=_ScaledBatchNormNet(),
                                                  overfit_steps=50)}
  assert not results["initial_loss"].failed, results["initial_loss"].line()
  assert not results["gradcheck"].failed, results["gradcheck"].line()
  trainer = jdl.Trainer(make_config(), None, model=_ScaledBatchNormNet(), quiet=True)
  state = trainer.state
  x, y = trainer.data.train.x[:512], trainer.data.train.y[:512]
  eval_loss = float(jnp.mean(trainer.loss(state.apply_fn(state.variables, x), y)))
  assert eval_loss > 2 * math.log(10) > results["initial_loss"].values["loss"]


@pytest.mark.parametrize("loss", ["categorical_crossentropy", "binary_crossentropy"])
def test_soft_targets_not_fitted_in_time_fail_with_their_goal(loss):
  # The FAIL message of this branch read a variable only the others set: jdl check
  # raised UnboundLocalError instead of reporting the run that did not fit.
  ds, config = _soft_targets(loss)
  results = {r.name: r for r in sanity.run_checks(config, dataset=ds, overfit_steps=2,
                                                  overfit_lr=1e-3)}
  overfit = results["overfit"]
  assert overfit.failed and overfit.values["steps"] is None, overfit.line()
  assert overfit.message.startswith("not fitted after 2 Adam steps (lr 0.001) on 32 "
                                    "examples (wanted: loss within 1% of the way from its "
                                    "start"), overfit.message
  assert "the soft targets' entropy" in overfit.message


class _BatchNormDropoutNet(nn.Module):
  """A user's model: batch norm, and dropout that no ``*dropout_rate`` field sets."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.Dense(32)(x.reshape(len(x), -1))
    x = nn.BatchNorm(use_running_average=not train)(x)
    x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
    return nn.Dense(10)(x)


def test_a_users_model_with_batch_norm_and_dropout_is_checked():
  # Its train-mode call (batch norm on the batch's statistics) ran without a dropout
  # key: a raw flax InvalidRngError. One fixed mask keeps the finite differences of
  # gradcheck on the same function as autodiff.
  results = {r.name: r for r in sanity.run_checks(make_config(), model=_BatchNormDropoutNet(),
                                                  overfit_steps=5)}
  assert [*results] == ["initial_loss", "overfit", "gradcheck", "grad_nonzero",
                        "data_balance", "data_inputs", "data_finite"]
  for name in ("initial_loss", "gradcheck", "grad_nonzero"):
    assert not results[name].failed, results[name].line()
