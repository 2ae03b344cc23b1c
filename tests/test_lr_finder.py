"""`jdl lr-find`: geometric schedule, smoothing, the suggestion on a known quadratic, plot."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import cli
from jdl import data as data_lib
from jdl import lr_finder
from jdl.errors import JdlError
from conftest import make_config


@pytest.mark.parametrize("min_lr, max_lr, steps", [
    (1e-7, 10.0, 100), (1e-4, 1e-1, 20), (0.5, 2.0, 2), (3e-3, 3.0, 37)])
def test_schedule_is_geometric(min_lr, max_lr, steps):
  schedule = lr_finder.lr_schedule(min_lr, max_lr, steps)
  got = np.array([float(schedule(t)) for t in range(steps)])
  np.testing.assert_allclose(got, np.geomspace(min_lr, max_lr, steps), rtol=1e-5)


def _reference_smoothing(losses, beta):
  # Closed form of the bias-corrected average: sum_k beta^(t-k) (1-beta) l_k / (1 - beta^(t+1)).
  out = []
  for t in range(len(losses)):
    w = (1 - beta) * beta ** np.arange(t, -1, -1)
    out.append(np.dot(w, losses[:t + 1]) / (1 - beta ** (t + 1)))
  return np.array(out)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.98])
def test_smoothing_matches_closed_form_and_is_unbiased(beta):
  losses = np.random.default_rng(0).uniform(1, 3, 30)
  np.testing.assert_allclose(lr_finder.smooth_losses(losses, beta),
                             _reference_smoothing(losses, beta), rtol=1e-12)
  np.testing.assert_allclose(lr_finder.smooth_losses(np.full(10, 2.5), beta), 2.5, rtol=1e-12)


def test_suggestion_is_the_steepest_descent_before_the_minimum():
  lrs = np.geomspace(1e-4, 1.0, 5)  # log10 steps of 1.
  # Falls of 0.1, 1.9, 0.5: the steepest stretch starts at lrs[1].
  assert lr_finder.suggest_lr(lrs, np.array([4.0, 3.9, 2.0, 1.5, 9.0])) == pytest.approx(lrs[1])
  # The last stretch is the steepest: its left end, not the minimum (np.gradient's
  # one-sided difference at the minimum gave the minimum's own rate).
  assert lr_finder.suggest_lr(lrs, np.array([4.0, 3.9, 3.8, 1.0, 9.0])) == pytest.approx(lrs[2])


def test_the_first_steps_noise_is_not_the_steepest_descent():
  # A flat curve whose first difference is its largest fall (the average of one or
  # two steps is their noise): the suggestion was the range's first rate, --min-lr.
  lrs = np.geomspace(1e-7, 10.0, 20)
  flat = 0.693 + 0.001 * np.sin(np.arange(20.0))
  flat[0], flat[12] = 0.75, 0.69
  assert lr_finder.suggest_lr(lrs, flat) == pytest.approx(lrs[0])
  assert lr_finder.suggest_lr(lrs, flat, skip=2) > lrs[1]
  # A minimum inside the skipped steps: searched from the start, as before.
  early = np.linspace(1.0, 2.0, 20)
  early[:2] = 0.9, 0.5
  assert lr_finder.suggest_lr(lrs, early, skip=2) == pytest.approx(lrs[0])


def _linear_problem(n=64, d=3, seed=0):
  """y = x w + b + noise with feature scales (3, 1, 0.3); full-batch MSE."""
  rng = np.random.default_rng(seed)
  x = (rng.standard_normal((n, d)) * np.array([3.0, 1.0, 0.3])).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 + 0.1 * rng.standard_normal(n)).astype(np.float32)
  dataset = data_lib.Dataset(x_train=x, y_train=y, x_test=x[:8], y_test=y[:8], num_classes=0,
                             task="regression", name="toy_linear", input_shape=(d,))
  config = make_config(task="regression", loss="mse", metrics=("mse",), normalize="none",
                       validation_split=0.0, batch_size=n, model__hidden=(),
                       optimizer__name="sgd")
  # Hessian of mean_i (x_i w + b - y_i)^2 in (w, b): (2/n) [x 1]^T [x 1].
  xa = np.concatenate([x, np.ones((n, 1), np.float32)], axis=1).astype(np.float64)
  lam_max = np.linalg.eigvalsh(2.0 / n * xa.T @ xa).max()
  return config, dataset, lam_max


@functools.lru_cache(maxsize=None)
def _linear_result(min_lr=1e-4, max_lr=10.0, steps=60):
  config, dataset, lam_max = _linear_problem()
  return lr_finder.find_lr(config, dataset=dataset, min_lr=min_lr, max_lr=max_lr,
                           steps=steps), lam_max


def test_suggestion_on_linear_regression_is_below_divergence():
  result, lam_max = _linear_result()
  assert 1e-4 < 2 / lam_max < 10.0  # The sweep crosses the divergence threshold.
  assert result.diverged
  assert result.suggestion < 2 / lam_max, (result.suggestion, 2 / lam_max)
  assert result.learning_rates[-1] > 2 / lam_max  # It stopped only after passing it.
  assert result.suggestion == max(min(result.steepest, result.min_loss_lr / 10),
                                  float(result.learning_rates[0]))


def _mse_minus_20(outputs, targets):
  """mse shifted below zero: the same gradients, so the same run, at losses < 0."""
  return jdl.losses.mse(outputs, targets) - 20.0


def test_a_negative_loss_is_swept_as_its_positive_shift():
  # `smoothed > 4 * best` holds at once for best < 0 (4 * -19.9 < -19.9): a loss that
  # can be negative "diverged" after two steps at the range's lowest rates.
  jdl.losses.register_loss("mse_minus_20_test", _mse_minus_20, tasks=("regression",))
  config, dataset, lam_max = _linear_problem()
  config.loss = "mse_minus_20_test"
  shifted = lr_finder.find_lr(config, dataset=dataset, min_lr=1e-4, max_lr=10.0, steps=60)
  plain, _ = _linear_result()
  assert shifted.diverged and shifted.learning_rates[-1] > 2 / lam_max
  n = min(len(plain.losses), len(shifted.losses))
  np.testing.assert_allclose(shifted.losses[:n], plain.losses[:n] - 20.0, rtol=0, atol=1e-3)
  assert shifted.min_loss_lr == plain.min_loss_lr
  assert shifted.suggestion < 2 / lam_max


@pytest.mark.parametrize("best, first, limit", [
    (0.5, 2.3, 2.0),      # Positive: fastai's 4 * best, whatever the start.
    (-3.0, -1.0, 6.0),    # -3 + 3 * max(3, 2): on the loss's magnitude.
    (-0.01, 2.3, 6.92),   # -0.01 + 3 * max(0.01, 2.31): on its descent, near 0.
    (0.0, 0.0, 0.0),      # A loss at 0 from the start: any rise.
])
def test_divergence_limit(best, first, limit):
  assert lr_finder.divergence_limit(best, first, 4.0) == pytest.approx(limit)


def test_learning_rates_run_are_the_geometric_prefix():
  result, _ = _linear_result()
  n = len(result.learning_rates)
  np.testing.assert_allclose(result.learning_rates, np.geomspace(1e-4, 10.0, 60)[:n],
                             rtol=1e-5)
  np.testing.assert_allclose(result.smoothed, lr_finder.smooth_losses(result.losses),
                             rtol=1e-12)


def test_full_sweep_without_divergence_and_png(tmp_path):
  result, lam_max = _linear_result(min_lr=1e-5, max_lr=1e-3, steps=12)
  assert not result.diverged and len(result.learning_rates) == 12
  np.testing.assert_allclose(result.learning_rates, np.geomspace(1e-5, 1e-3, 12), rtol=1e-5)
  # Far below 2 / lambda_max every step lowers the loss: the minimum is the last rate.
  assert np.all(np.diff(result.losses) < 0) and result.min_loss_lr == pytest.approx(1e-3)
  path = lr_finder.plot_lr_finder(result, tmp_path / "sub" / "lr.png")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _rising_result():
  """A range test whose loss rose from its first step (smoothed minimum at step 0)."""
  lrs = np.geomspace(1e-2, 1.0, 30).astype(np.float32)
  losses = 2.3 + np.linspace(0.0, 3.0, 30) ** 2
  smoothed = lr_finder.smooth_losses(losses)
  return lr_finder.LRFinderResult(lrs, losses, smoothed, float(lrs[0]), float(lrs[0]),
                                  float(lrs[0]), float(smoothed[0]), False)


def test_the_plot_of_a_loss_rising_from_the_first_step_shows_the_curve(tmp_path,
                                                                       monkeypatch):
  # The y range was the descent's, here one point: 1e-5 wide, and the plot blank.
  from matplotlib.figure import Figure
  ylims, savefig = [], Figure.savefig
  monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (
      ylims.append(fig.axes[0].get_ylim()), savefig(fig, *args, **kwargs))[1])
  result = _rising_result()
  lr_finder.plot_lr_finder(result, tmp_path / "rising.png")
  (lo, hi), = ylims
  assert lo < result.smoothed.min() < result.smoothed.max() < hi
  assert hi - lo < 2 * (result.smoothed.max() - result.smoothed.min())


def test_the_plot_leaves_matplotlibs_backend_alone(tmp_path):
  # matplotlib.use("Agg") switched a notebook's (the caller's) backend.
  import matplotlib
  before = matplotlib.get_backend()
  matplotlib.use("svg")
  try:
    path = lr_finder.plot_lr_finder(_rising_result(), tmp_path / "lr.png")
    assert matplotlib.get_backend() == "svg"
  finally:
    matplotlib.use(before)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_range_test_uses_the_experiments_whole_optimizer_chain():
  def run(**overrides):
    config = make_config(optimizer__name="sgd", **overrides)
    return lr_finder.find_lr(config, min_lr=1e-3, max_lr=overrides.pop("max_lr", 1.0),
                             steps=8, diverge_factor=1e9)

  # Decoupled weight decay changes the updates, so the losses.
  plain, decayed = run(), run(optimizer__weight_decay=5.0)
  assert not np.allclose(plain.losses[1:], decayed.losses[1:])
  # All but the head's bias frozen: the freeze reaches the range test's updates (and
  # freezing everything is refused, as for training).
  frozen = run(optimizer__freeze=("hidden_0", "head/kernel"))
  assert not np.allclose(plain.losses[1:], frozen.losses[1:])
  with pytest.raises(JdlError, match="freezes every parameter"):
    run(optimizer__freeze=("hidden_0", "head"))
  # The experiment's augmentation reaches the range test's batches (it was left out).
  noisy = run(augment__noise_std=3.0)
  assert not np.allclose(plain.losses[1:], noisy.losses[1:])
  # Accumulating 2 steps an update: 8 steps are 4 updates over the whole range.
  acc = run(optimizer__accumulate_steps=2)
  np.testing.assert_allclose(acc.learning_rates,
                             np.repeat(np.geomspace(1e-3, 1.0, 4), 2), rtol=1e-5)
  assert 1e-3 <= acc.steepest <= 1.0  # Steps of one update are one point of the curve.
  # 8 steps of 5 make one update, at min_lr: refused (max_lr was never reached).
  with pytest.raises(JdlError, match=r"accumulate_steps=5 that is steps >= 10, got 8"):
    run(optimizer__accumulate_steps=5)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr < max_lr"),
    ({"min_lr": 0.0}, "min_lr < max_lr"),
    ({"steps": 1}, "steps >= 2"),
    ({"beta": 1.0}, "beta must be in [0, 1)"),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(JdlError, match=message.replace("[", r"\[").replace("(", r"\(")
                     .replace(")", r"\)")):
    lr_finder.find_lr(make_config(), **kwargs)


def test_cli_lr_find_writes_png_and_prints_suggestion(tmp_path, capsys):
  out = tmp_path / "lr.png"
  code = cli.main(["lr-find", "--config", "digits_mlp", "--out", str(out), "--steps", "15",
                   "--config.model.hidden=(16,)",
                   "--min-lr", "1e-5", "--max-lr", "1", "--config.batch_size=32"])
  assert code == 0
  text = capsys.readouterr().out
  assert "suggested learning rate: " in text
  value = float(text.split("suggested learning rate: ")[1].split()[0])
  # The printed rate is find_lr's on the same config (printed to 3 digits).
  config = jdl.load_config("digits_mlp")
  config.model.hidden, config.batch_size = (16,), 32
  assert value == pytest.approx(lr_finder.find_lr(config, min_lr=1e-5, max_lr=1.0,
                                                  steps=15).suggestion, rel=5e-3)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["lr-find", "--config.nope=1"], "unknown config key 'nope'"),
    (["lr-find", "--min-lr", "1", "--max-lr", "0.1"], "--min-lr (1) must be below --max-lr (0.1)"),
    # Beyond float32 the rates read 0 (a math domain error traceback, no plot) or the
    # sweep jumped from min_lr to max_lr at its second step.
    (["lr-find", "--min-lr", "1e-50", "--max-lr", "1"],
     "min_lr and max_lr must be float32 learning rates (the optimizer's): min_lr >= 1.18e-38 "
     "and max_lr / min_lr <= 3.4e+38, got min_lr=1e-50, max_lr=1"),
    (["lr-find", "--min-lr", "1e-20", "--max-lr", "1e25"], "max_lr / min_lr <= 3.4e+38"),
])
def test_cli_lr_find_bad_input_is_one_error_line(argv, message, capsys, tmp_path):
  assert cli.main([*argv, "--out", str(tmp_path / "x.png")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jdl: error: ") and message in err[0], err
  assert not (tmp_path / "x.png").exists()


def test_a_first_loss_that_is_not_finite_is_an_error_not_a_suggestion(tmp_path):
  # Inputs of +-3e38 (finite float32) overflow the first layer: the loss was inf
  # before any learning rate acted, and lr-find suggested --min-lr and exited 0.
  x = np.full((64, 4), 3e38, np.float32) * np.where(np.arange(64) % 2, 1, -1)[:, None]
  ds = jdl.data.Dataset(x_train=x, y_train=np.arange(64) % 2, x_test=x[:8],
                        y_test=np.arange(8) % 2, num_classes=2, task="classification",
                        name="huge", input_shape=(4,))
  with pytest.raises(JdlError, match=r"^the loss of the first step is (inf|nan), before any "
                                     r"learning rate acted"):
    lr_finder.find_lr(make_config(normalize="none", batch_size=16), dataset=ds, steps=10)


def test_cli_lr_find_says_when_the_suggestion_is_the_lowest_rate(tmp_path, capsys,
                                                                 monkeypatch):
  lrs = np.geomspace(1e-7, 10.0, 20, dtype=np.float32)
  flat = np.full(20, 0.693)
  result = lr_finder.LRFinderResult(
      learning_rates=lrs, losses=flat, smoothed=flat, suggestion=float(lrs[0]),
      steepest=float(lrs[0]), min_loss_lr=float(lrs[0]), min_loss=0.693, diverged=False)
  monkeypatch.setattr(lr_finder, "find_lr", lambda *args, **kwargs: result)
  out = tmp_path / "lr.png"
  for time in ("first", "second"):
    assert cli.main(["lr-find", "--config", "xor", "--out", str(out)]) == 0
    text, err = capsys.readouterr()
    assert "jdl: warning: the suggestion is the lowest rate tried (--min-lr)" in err, err
    assert ("(it replaced the file there)" in text) == (time == "second"), text



class _ScriptedLoss(nn.Module):
  """Outputs ``script[t]`` at the ``t``-th training call, whatever the parameters.

  A counter in ``batch_stats`` counts the training calls; the Dense layer's output is
  multiplied by 0, so the gradients are 0 and the learning rate changes nothing: with
  targets 0 and the mse, step ``t``'s loss is ``script[t] ** 2``.
  """
  script: tuple[float, ...]

  @nn.compact
  def __call__(self, x, train: bool = False):
    seen = self.variable("batch_stats", "seen", lambda: jnp.zeros((), jnp.int32))
    out = 0.0 * nn.Dense(1)(x)[:, 0]
    if not train:
      return out
    if not self.is_initializing():
      seen.value = seen.value + 1
    return out + jnp.asarray(self.script, jnp.float32)[seen.value - 1]


def _scripted_find_lr(losses, **kwargs):
  n = 16
  x = np.random.default_rng(0).standard_normal((n, 3)).astype(np.float32)
  y = np.zeros(n, np.float32)
  dataset = data_lib.Dataset(x_train=x, y_train=y, x_test=x[:8], y_test=y[:8], num_classes=0,
                             task="regression", name="toy_scripted", input_shape=(3,))
  config = make_config(task="regression", loss="mse", metrics=("mse",), normalize="none",
                       validation_split=0.0, batch_size=n, model__hidden=(),
                       optimizer__name="sgd")
  model = _ScriptedLoss(tuple(float(v) for v in np.sqrt(losses)))
  return lr_finder.find_lr(config, dataset=dataset, model=model, min_lr=1e-4, max_lr=10.0,
                           steps=len(losses), **kwargs)


def _ema(losses, beta=0.98):
  out, avg = [], 0.0
  for t, v in enumerate(losses):
    avg = beta * avg + (1 - beta) * v
    out.append(avg / (1 - beta ** (t + 1)))
  return np.array(out)


def test_the_run_stops_at_the_first_rise_past_four_times_its_best_so_far():
  # Losses fall from 1 to 0.5 over 20 steps, then rise by 8% a step: the smoothed loss
  # climbs a little each step and crosses 4 x its best at a step found here from the
  # definition (fastai's rule). Measured against the previous step instead of the best,
  # no single step's rise reaches 4x and the run went on to the end.
  losses = np.concatenate([np.linspace(1.0, 0.5, 20), 0.5 * 1.08 ** np.arange(1, 61)])
  s = _ema(losses)
  stop = next(t for t in range(1, len(s)) if s[t] > 4.0 * s[:t].min())
  assert np.all(s[1:stop + 1] < 4.0 * s[:stop])  # No one-step rise past 4x.
  result = _scripted_find_lr(losses)
  assert result.diverged and len(result.losses) == stop + 1
  np.testing.assert_allclose(result.losses, losses[:stop + 1], rtol=1e-5)
  np.testing.assert_allclose(result.smoothed, s[:stop + 1], rtol=1e-5)
  assert result.min_loss == pytest.approx(s[:stop].min(), rel=1e-5)


def test_find_lr_leaves_the_first_tenth_of_the_steps_out_of_the_steepest_search():
  # A first step whose loss is a spike (the noise of a first batch): the smoothed curve
  # falls most between steps 0 and 1, at the range's lowest rates. fastai's start
  # (search // 10 steps skipped) keeps that fall out: the steepest descent is the one a
  # numpy slope finds from step search // 10 to the minimum.
  losses = np.concatenate([[6.0], 2.0 - np.tanh(np.linspace(-3.0, 3.0, 39)), [9.0] * 20])
  result = _scripted_find_lr(losses)
  s, lrs = result.smoothed, result.learning_rates.astype(np.float64)
  np.testing.assert_allclose(s, _ema(losses[:len(s)]), rtol=1e-5)
  search = len(s) - 1 if result.diverged else len(s)
  end = int(np.argmin(s[:search])) + 1
  start = search // 10
  assert start >= 2 and end > start + 2
  slopes = np.diff(s[start:end]) / np.diff(np.log10(lrs[start:end]))
  assert result.steepest == pytest.approx(lrs[start + int(np.argmin(slopes))], rel=1e-6)
  # Searched from step 0, the spike's fall would have been the steepest: the range's
  # lowest rate.
  all_slopes = np.diff(s[:end]) / np.diff(np.log10(lrs[:end]))
  assert int(np.argmin(all_slopes)) == 0
  assert result.steepest > 10 * lrs[0], result.steepest
