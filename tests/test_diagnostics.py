"""Diagnostics: each quantity against numpy, the loop's records, bitwise-neutral runs."""

from __future__ import annotations

import json

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import diagnostics as diag
from jdl.errors import JdlError
from jdl.train import callbacks as cb
from jdl.train import diagnose

from conftest import make_config


def _tree(rng, *shapes):
  return {f"layer_{i}": {"kernel": rng.normal(size=s).astype(np.float32),
                         "bias": rng.normal(size=s[-1:]).astype(np.float32)}
          for i, s in enumerate(shapes)}


# ------------------------------------------------------------ pure functions
@pytest.mark.parametrize("shapes", [[(3, 4)], [(5, 2), (2, 7)], [(1, 1)]])
def test_grad_norm_is_the_root_of_the_sum_of_squares(shapes):
  grads = _tree(np.random.default_rng(0), *shapes)
  expected = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in jax.tree.leaves(grads)))
  np.testing.assert_allclose(diag.grad_norm(grads), expected, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e-3, 1.0])
def test_update_ratios_per_module(scale):
  rng = np.random.default_rng(1)
  old = _tree(rng, (4, 3), (3, 2))
  new = jax.tree.map(lambda w: w + scale * rng.normal(size=w.shape).astype(np.float32), old)
  ratios = diag.update_ratios(old, new)
  assert sorted(ratios) == ["layer_0", "layer_1"]
  for layer in ratios:
    d = np.concatenate([(new[layer][k] - old[layer][k]).ravel() for k in ("kernel", "bias")])
    w = np.concatenate([old[layer][k].ravel() for k in ("kernel", "bias")])
    np.testing.assert_allclose(ratios[layer], np.linalg.norm(d) / np.linalg.norm(w), rtol=1e-5)


def test_update_ratio_of_a_zero_layer_uses_the_floor():
  ratios = diag.update_ratios({"w": np.zeros(3, np.float32)}, {"w": np.full(3, 1e-3, np.float32)})
  np.testing.assert_allclose(ratios["w"], np.sqrt(3) * 1e-3 / diag.NORM_FLOOR, rtol=1e-5)


@pytest.mark.parametrize("values, bins, value_range", [
    (np.random.default_rng(2).normal(size=1000), 30, None),
    # Values outside the range are dropped.
    (np.random.default_rng(3).normal(size=1000), 10, (-1.0, 1.0)),
    (np.array([0.0, 0.25, 0.5, 1.0, 1.0]), 4, (0.0, 1.0)),  # Edge values; last bin closed.
    (np.full(7, 3.0), 5, None),  # Constant: numpy widens the range by 0.5.
    (np.random.default_rng(4).uniform(size=(8, 9)), 1, None),
    # Quantised values on the edges of 0.25-wide bins (numpy's edges lo + i * step).
    (np.arange(-10, 12) * 0.25, 21, (-2.5, 2.75)),
    (np.random.default_rng(5).integers(-10, 12, size=500) * 0.25, 21, None),
])
def test_histogram_counts_match_numpy(values, bins, value_range):
  values = np.asarray(values, np.float32)
  h = diag.histogram(values, bins, value_range)
  counts, edges = np.histogram(values, bins, value_range)
  np.testing.assert_array_equal(np.asarray(h["counts"]), counts)
  np.testing.assert_allclose(h["edges"], edges, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(h["sum"], values.sum(), rtol=1e-5, atol=1e-5)
  deviations = values.astype(np.float64) - values.mean(dtype=np.float64)
  np.testing.assert_allclose(h["sum_sq_dev"], np.square(deviations).sum(), rtol=1e-5,
                             atol=1e-6)
  assert float(h["num"]) == values.size
  assert float(h["min"]) == values.min() and float(h["max"]) == values.max()


# One jitted function for every case (a compilation per number of bins, not per call).
_jitted_histogram = jax.jit(diag.histogram, static_argnums=1)


def test_histogram_under_jit_counts_by_its_own_edges():
  # As the training loop runs it: XLA may compute an edge an ulp from numpy's, but
  # the counts are always those of the edges it returns (300 random quantised cases).
  rng = np.random.default_rng(0)
  for _ in range(300):
    bins = int(rng.integers(2, 30))
    values = (rng.integers(-50, 50, 200) * rng.choice([0.1, 0.05, 0.25, 1 / 3])).astype(
        np.float32)
    h = _jitted_histogram(values, bins)
    edges = np.asarray(h["edges"])
    np.testing.assert_allclose(edges, np.histogram_bin_edges(values, bins), rtol=0,
                               atol=1e-6 * np.ptp(values))  # float32 rounding of the range.
    np.testing.assert_array_equal(np.asarray(h["counts"]), np.histogram(values, edges)[0])


def test_histogram_std_of_nearly_constant_and_of_huge_values():
  # The std came from float32 sum(x**2) - n * mean**2: 0 for values 0.999 +- 1e-4
  # (cancellation), inf for finite values of 4.6e10 (overflow), and a range near
  # float32's largest number gave edges [nan inf inf ...] and all counts in bin 0.
  rng = np.random.default_rng(1)
  for values in (0.999 + 1e-4 * rng.standard_normal(100_000),
                 1 / (1 + np.exp(-rng.normal(7, 0.5, (32, 128)))),
                 4.6e10 * rng.standard_normal(1000)):
    values = values.astype(np.float32)
    h = jax.device_get(jax.jit(lambda x: diag.histogram(x, 30))(values))
    record = diagnose.to_record({"grad_norm": 0.0, "histograms": {"v": h}}, 1, 1)
    np.testing.assert_allclose(record["histograms"]["v"]["std"], values.astype(np.float64).std(),
                               rtol=1e-3)
  huge = np.array([-2e38, 0.5e38, 1.5e38, 2e38], np.float32)
  h = diag.histogram(huge, 4)
  edges = np.linspace(-2e38, 2e38, 5)
  np.testing.assert_allclose(h["edges"], edges, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(h["counts"]), np.histogram(huge, edges)[0])
  assert np.asarray(h["counts"]).tolist() == [1, 0, 1, 2]


def test_histogram_shapes_are_static_under_jit():
  h = jax.jit(lambda x: diag.histogram(x, 12))(jnp.arange(50.0))
  chex.assert_shape([h["counts"], h["edges"]], [(12,), (13,)])
  assert float(h["counts"].sum()) == 50


@pytest.mark.parametrize("acts, expected", [
    # Unit 0 is zero for every example, unit 2 only for some: 1 dead of 3.
    (np.array([[0.0, 1.0, 0.0], [0.0, 2.0, 3.0]]), 1 / 3),
    (np.zeros((4, 5)), 1.0),
    (np.ones((4, 5)), 0.0),
    # Conv maps [batch, h, w, channels]: channel 1 is zero at every position.
    (np.stack([np.ones((2, 3, 3)), np.zeros((2, 3, 3))], axis=-1), 0.5),
])
def test_dead_relu_fraction(acts, expected):
  np.testing.assert_allclose(diag.dead_relu_fraction(jnp.asarray(acts)), expected, rtol=1e-6)


@pytest.mark.parametrize("kind, acts, expected", [
    ("tanh", [0.995, -0.999, 0.5, 0.99, -0.2, 0.0], 2 / 6),  # 0.99 itself is not saturated.
    ("sigmoid", [0.005, 0.995, 0.5, 0.01, 0.99, 0.3], 2 / 6),
    ("tanh", [0.0, 0.1], 0.0),
    ("sigmoid", [0.0, 1.0], 1.0),
])
def test_saturation_fraction(kind, acts, expected):
  got = diag.saturation_fraction(jnp.asarray(acts, jnp.float32), kind)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_saturation_of_an_unknown_kind_is_an_error():
  with pytest.raises(JdlError, match="'relu'"):
    diag.saturation_fraction(jnp.ones(3), "relu")


class _SowMLP(nn.Module):
  """A tiny MLP that sows its hidden activations as jdl models do."""
  num_outputs: int = 10
  hidden: tuple[int, ...] = (32, 16)
  activation: str = "relu"
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    act = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid}[self.activation]
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      x = act(nn.Dense(width, name=f"hidden_{i}")(x))
      self.sow("intermediates", f"act_{i}", x)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, name="head")(x)


@pytest.mark.parametrize("activation, group", [("relu", "dead_relu"), ("tanh", "saturated"),
                                               ("sigmoid", "saturated")])
def test_compute_diagnostics_reads_sown_activations(activation, group):
  model = _SowMLP(activation=activation)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(6, 5)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  _, cols = model.apply({"params": params}, x, mutable=["intermediates"])
  grads = jax.tree.map(jnp.ones_like, params)
  before, after = _Params(params), _Params(jax.tree.map(lambda p: p * 1.001, params))
  out = jax.jit(lambda b, a, g, i: diag.compute_diagnostics(b, a, g, i, bins=8,
                                                            activation=activation))(
      before, after, grads, cols["intermediates"])
  n = sum(p.size for p in jax.tree.leaves(params))
  np.testing.assert_allclose(out["grad_norm"], np.sqrt(n), rtol=1e-6)
  for ratio in out["update_ratio"].values():  # Every weight scaled by 1.001.
    np.testing.assert_allclose(ratio, 1e-3, rtol=1e-3)
  assert sorted(out[group]) == ["act_0", "act_1"]
  acts = np.asarray(cols["intermediates"]["act_0"][0])
  ref = (np.all(acts == 0, axis=0).mean() if activation == "relu" else
         (np.abs(acts) > 0.99).mean() if activation == "tanh" else
         ((acts < 0.01) | (acts > 0.99)).mean())
  np.testing.assert_allclose(out[group]["act_0"], ref, rtol=1e-6)
  assert sorted(out["histograms"]) == sorted(
      ["act/act_0", "act/act_1", "grad/hidden_0/kernel", "grad/hidden_0/bias",
       "grad/hidden_1/kernel", "grad/hidden_1/bias", "grad/head/kernel", "grad/head/bias"])
  assert float(out["histograms"]["act/act_0"]["counts"].sum()) == acts.size


class _Params:
  """Stands in for a TrainState: diagnostics only read ``.params``."""

  def __init__(self, params):
    self.params = params


jax.tree_util.register_pytree_node(_Params, lambda s: ((s.params,), None),
                                   lambda _, c: _Params(*c))


@pytest.mark.parametrize("chunk, every, expected", [
    (100, 0, 100), (100, 100, 100), (20, 5, 5), (20, 30, 15), (7, 7, 7), (1, 50, 1),
    (100, 97, 97), (50, 97, 50), (100, 101, 100), (100, 202, 100), (8, 12, 6), (20, 2, 2),
])
def test_align_chunk_divides_every_steps(chunk, every, expected):
  assert diagnose.align_chunk(chunk, every) == expected


def test_update_ratio_monitor_warns_once_after_n_bad_periods():
  monitor = diagnose.UpdateRatioMonitor(1e-4, 1e-2, periods=3)
  assert monitor.observe(1, {"a": 0.5, "b": 1e-3, "frozen": 0.0}) == []
  assert monitor.observe(2, {"a": 0.5, "b": 1e-3, "frozen": 0.0}) == []
  lines = monitor.observe(3, {"a": 0.5, "b": 1e-3, "frozen": 0.0})
  assert len(lines) == 1 and lines[0].startswith("jdl: warning: ") and "'a'" in lines[0]
  assert "> 0.01" in lines[0]
  assert monitor.observe(4, {"a": 0.5}) == []  # Still bad: not repeated.
  monitor.observe(5, {"a": 1e-3})  # Recovered: the count restarts.
  assert [monitor.observe(s, {"a": 1e-6}) for s in (6, 7)] == [[], []]
  assert "< 0.0001" in monitor.observe(8, {"a": 1e-6})[0]


@pytest.mark.parametrize("key, value, match", [
    ("every_steps", -1, "every_steps"),
    ("histogram_bins", 0, "histogram_bins"),
    ("warn_after_periods", -2, "warn_after_periods"),
    ("ratio_low", 0.5, "ratio_low"),
    ("activation", "gelu", "activation"),
    # Steps that only accumulate a gradient logged an update ratio of 0.
    ("every_steps", 10, r"^diagnostics.every_steps=10 is not a multiple of "
     r"optimizer.accumulate_steps=4: .* use a multiple \(e.g. 12\)$"),
])
def test_bad_diagnostics_config_is_an_error(key, value, match):
  with pytest.raises(JdlError, match=match):
    diag.validate_config(make_config(**{f"diagnostics__{key}": value,
                                        "optimizer__accumulate_steps": 4}))


def test_resume_keeps_diagnostics_lines_up_to_the_step(tmp_path):
  logger = cb.MetricsLogger(tmp_path / "metrics.jsonl")
  for step in (5, 10, 15):
    logger.write({"step": step, "split": "diagnostics", "grad_norm": 1.0})
  logger.truncate_after(10)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [5, 10]


def test_a_damaged_line_is_dropped_but_the_file_kept_a_partial_last_line_just_dropped(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 5, "split": "train"}\n{"step": 10, "spl\n'
                  '{"step": 10, "split": "val"}\n{"step": 15, "sp')
  original = path.read_text()
  backup = cb.MetricsLogger(path).truncate_after(15)
  assert [json.loads(line) for line in path.read_text().splitlines()] == [
      {"step": 5, "split": "train"}, {"step": 10, "split": "val"}]
  assert backup is not None and backup.read_text() == original
  # Only a partial last line (a kill mid-append): nothing to keep.
  path.write_text('{"step": 5, "split": "train"}\n{"step": 10, "sp')
  assert cb.MetricsLogger(path).truncate_after(15) is None
  assert path.read_text() == '{"step": 5, "split": "train"}\n'


# --------------------------------------------------------------- end to end
def _fit(workdir, **overrides):
  config = make_config(**{"num_epochs": 1, **overrides})
  return jdl.fit(config, workdir, model=_SowMLP(), quiet=True)


def _tensorboard_tags(logdir) -> set[str]:
  """Tags of the summaries in TFRecord event files (length, crc, event, crc)."""
  from tensorboardX.proto import event_pb2
  tags = set()
  for path in logdir.iterdir():
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      length = int.from_bytes(data[pos:pos + 8], "little")
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      tags |= {f"{v.tag}:{v.WhichOneof('value')}" for v in event.summary.value}
      pos += 12 + length + 4
  return tags


@pytest.mark.parametrize("mode", ["scan", "step"])
def test_diagnostics_land_on_the_multiples_across_epochs_under_accumulation(tmp_path, mode):
  # With accumulate_steps=3 and 20 steps an epoch, the second epoch's blocks (of 6,
  # from its start) end on 26, 32, 38, between updates: the diagnostics landed there
  # (first without ratios, which read 0 and restarted the count of bad periods;
  # then with no ratio at all, so a whole epoch went unwatched). They land on the
  # multiples of 6, which are updates.
  _fit(tmp_path, num_epochs=2, epoch_mode=mode, diagnostics__every_steps=6,
       optimizer__accumulate_steps=3)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  diagnostics = {r["step"]: r for r in records if r["split"] == "diagnostics"}
  assert sorted(diagnostics) == [6, 12, 18, 24, 30, 36]
  for step, record in diagnostics.items():
    ratios = [v for k, v in record.items() if k.startswith("update_ratio/")]
    assert len(ratios) == 3, (step, record)  # 3 layers.
    assert all(r > 0 for r in ratios) and record["grad_norm"] > 0
    assert record["epoch"] == (1 if step <= 20 else 2)


@pytest.mark.full_opt
def test_fit_writes_diagnostics_and_trains_bitwise_as_without(tmp_path):
  # 1,293 train examples / 64 = 20 steps: diagnostics at steps 5, 10, 15, 20.
  on = _fit(tmp_path / "on", diagnostics__every_steps=5, tensorboard=True, plots=True)
  off = _fit(tmp_path / "off")
  chex.assert_trees_all_equal(jax.device_get(on.state.params), jax.device_get(off.state.params))
  records = [json.loads(line) for line in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
  diags = [r for r in records if r["split"] == "diagnostics"]
  assert [r["step"] for r in diags] == [5, 10, 15, 20]
  for r in diags:
    assert {"grad_norm", "learning_rate", "update_ratio/hidden_0", "update_ratio/head",
            "dead_relu/act_0", "dead_relu/act_1"} <= set(r)
    scalars = [v for k, v in r.items() if k not in ("split", "histograms")]
    assert all(np.isfinite(v) for v in scalars)
    np.testing.assert_allclose(r["learning_rate"], 1e-3, rtol=1e-6)
    assert sum(r["histograms"]["act/act_0"]["counts"]) == 64 * 32
  off_records = (tmp_path / "off" / "metrics.jsonl").read_text()
  assert "diagnostics" not in off_records
  assert (tmp_path / "on" / "plots" / "diagnostics.png").is_file()
  tags = _tensorboard_tags(tmp_path / "on" / "tb")
  assert {"diagnostics/grad_norm:simple_value", "diagnostics/update_ratio/hidden_0:simple_value",
          "diagnostics/act/act_1:histo", "diagnostics/grad/head/kernel:histo"} <= tags


@pytest.mark.full_opt
def test_diagnostics_leave_a_cnns_training_bitwise_unchanged(tmp_path):
  # The diagnostics recompute the gradients beside the step; XLA must not merge the
  # two (it fused the conv gradients differently, 1e-9 apart, when it could).
  from conftest import small_digits_cnn
  off = jdl.fit(small_digits_cnn(), tmp_path / "off", quiet=True)
  on = jdl.fit(small_digits_cnn(diagnostics__every_steps=5), tmp_path / "on", quiet=True)
  assert on.trainer.epoch_mode == "scan"
  chex.assert_trees_all_equal(jax.device_get((on.state.params, on.state.opt_state)),
                              jax.device_get((off.state.params, off.state.opt_state)))
  assert on.history == off.history


@pytest.mark.parametrize("augment", [{}, {"augment__noise_std": 0.5},
                                     {"augment__mixup_alpha": 0.4},
                                     # Each microbatch draws its own dropout masks.
                                     {"microbatch_size": 16, "dropout": 0.5},
                                     # Beside augmentation the dropout key is fold_in(key,
                                     # 2): other masks were drawn (9% off).
                                     {"microbatch_size": 16, "dropout": 0.5,
                                      "augment__noise_std": 0.5},
                                     # A frozen layer's gradient is not applied.
                                     {"optimizer__freeze": ("hidden_0",)},
                                     # The mean of steps 9 and 10's gradients (the
                                     # norm of step 10's alone was logged).
                                     {"optimizer__accumulate_steps": 2}])
def test_the_logged_gradient_is_the_one_the_update_applied(tmp_path, augment):
  # Plain SGD: the gradient applied at step 10 is (w_9 - w_10) / lr, whatever the
  # augmentation did to the batch the step trained on.
  params = {}

  class Keep(cb.Callback):
    def on_steps_end(self, trainer, step, num_steps):
      if step in (9, 10):
        params[step] = jax.device_get(trainer.state.params)

  lr = 0.1
  augment = dict(augment)
  model = _SowMLP(dropout_rate=augment.pop("dropout", 0.0))
  config = make_config(num_epochs=1, epoch_mode="step", optimizer__name="sgd",
                       optimizer__learning_rate=lr, diagnostics__every_steps=10, **augment)
  jdl.fit(config, tmp_path, model=model, quiet=True, callbacks=[Keep()])
  record = next(json.loads(line) for line in (tmp_path / "metrics.jsonl").open()
                if '"diagnostics"' in line)
  assert record["step"] == 10
  applied = jax.tree.map(lambda a, b: (np.float64(a) - b) / lr, params[9], params[10])
  norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(applied)))
  np.testing.assert_allclose(record["grad_norm"], norm, rtol=2e-3)
  if "optimizer__freeze" in augment:
    assert not any(k.startswith("grad/hidden_0") for k in record["histograms"])
    assert "grad/head/kernel" in record["histograms"]


def test_a_diverged_diagnostic_step_gets_the_non_finite_error_not_a_traceback(tmp_path):
  # A histogram's NaN min (a NaN gradient) or inf std (squares of finite activations
  # overflowing float32) reached the JSON writer inside "histograms": a ValueError
  # traceback instead of the loop's non-finite error.
  with pytest.raises(jdl.NonFiniteError, match="non-finite"):
    _fit(tmp_path, epoch_mode="step", diagnostics__every_steps=1, optimizer__name="sgd",
         optimizer__learning_rate=1e6)
  line = json.dumps({"histograms": {"grad/w": {"min": float("nan"), "counts": [1, 2]}},
                     "loss": float("inf")})
  written = json.loads(cb._strict_json(json.loads(line)))
  assert written == {"histograms": {"grad/w": {"min": None, "counts": [1, 2]}}, "loss": None}


@pytest.mark.full_opt
def test_diagnostic_blocks_under_the_per_block_check_train_and_stop_as_the_plain_ones(
    tmp_path):
  # nonfinite_check='block': the diagnostic block's other steps skip the per-step
  # gradient test (as the plain blocks do); a non-finite block runs again with it, to
  # name the first non-finite step, as a plain block does.
  on = _fit(tmp_path / "on", epoch_mode="scan", nonfinite_check="block",
            diagnostics__every_steps=5)
  assert on.trainer.run_checked_block is not None and on.trainer._diagnostics._checked
  off = _fit(tmp_path / "off", epoch_mode="scan", nonfinite_check="block")
  chex.assert_trees_all_equal(jax.device_get(on.state.params), jax.device_get(off.state.params))
  messages = []
  for run, every in (("diverged_on", 5), ("diverged_off", 0)):
    with pytest.raises(jdl.NonFiniteError) as error:
      _fit(tmp_path / run, epoch_mode="scan", nonfinite_check="block", scan_chunk=5,
           diagnostics__every_steps=every, optimizer__name="sgd", optimizer__learning_rate=1e6)
    messages.append(str(error.value))
  assert messages[0] == messages[1] and "non-finite value at step" in messages[0], messages


@pytest.mark.parametrize("layers", [4, 15])
def test_the_diagnostics_plot_stays_readable_for_many_layers(tmp_path, monkeypatch, layers):
  # 43 ResNet-20 layers each had a legend entry over the curves, in 10 colours;
  # layers that never moved (frozen) had one too, and the warning band was not drawn.
  from jdl.train import plots
  figures = []
  monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
  with (tmp_path / "metrics.jsonl").open("w") as f:
    for step in (10, 20, 30):
      ratios = {f"update_ratio/l{i}": 0.0 if i < 2 else 0.05 if i in (3, 5, 7) else 1e-3
                for i in range(layers)}
      ratios["update_ratio/zz"] = None  # Never finite (null): not "never moved".
      f.write(json.dumps({"step": step, "split": "diagnostics", "grad_norm": 1.0, **ratios})
              + "\n")
  plots.plot_diagnostics(tmp_path / "metrics.jsonl", tmp_path, ratio_bounds=(1e-4, 1e-2))
  bottom = figures[0].axes[1]
  names = [t.get_text() for t in bottom.get_legend().get_texts()]
  if layers == 4:
    assert names == ["[0.0001, 0.01]", "l2", "l3"]
  else:
    assert names == ["[0.0001, 0.01]", "lowest to highest of 13 layers", "median layer",
                     "l3", "l5", "l7"]
  assert bottom.get_title().endswith(
      "(2 never moved: not drawn) (1 never finite: not drawn)"), bottom.get_title()


def test_sown_tuples_dicts_repeats_and_scalars_are_named_apart():
  # The sow count was read from the last key: a tuple's position overwrote the
  # count (8 values became 4 names), and a scalar sow crashed dead_relu_fraction.
  class Cell(nn.Module):
    @nn.compact
    def __call__(self, x):
      for _ in range(2):
        self.sow("intermediates", "state", (x[:, :3], x))
        self.sow("intermediates", "gates", {"i": x, "f": -x})
      self.sow("intermediates", "aux_loss", jnp.sum(x))
      self.sow("intermediates", "empty", x[:, :0])  # No statistics: a ZeroDivisionError.
      return nn.Dense(2)(x)

  x = jnp.arange(8.0).reshape(2, 4) - 3
  params = Cell().init(jax.random.key(0), x)["params"]
  _, cols = Cell().apply({"params": params}, x, mutable=["intermediates"])
  leaves = diag.activation_leaves(cols["intermediates"])
  assert sorted(leaves) == sorted(["state/0", "state/1", "state#1/0", "state#1/1", "gates/i",
                                   "gates/f", "gates#1/i", "gates#1/f", "aux_loss",
                                   "empty"])
  np.testing.assert_array_equal(leaves["gates#1/f"], -x)
  np.testing.assert_array_equal(leaves["state/0"], x[:, :3])
  grads = {**params, "empty": jnp.zeros((0, 3))}  # An empty leaf has no histogram.
  out = diag.compute_diagnostics(_Params(params), _Params(params), grads, cols["intermediates"],
                                 bins=4)
  assert "aux_loss" not in out["dead_relu"] and "act/aux_loss" in out["histograms"]
  assert not any("empty" in k for k in [*out["dead_relu"], *out["histograms"]])
  # No column of x is 0 for both examples.
  assert float(out["dead_relu"]["state/1"]) == 0.0


def test_auto_kinds_follow_what_each_sown_value_is(tmp_path):
  # An autoencoder's code (sigmoid) was scored as dead ReLUs; a seq2seq model's
  # attention weights as dead ReLUs too (the share of padded positions).
  ae = jdl.models.DenseAutoencoder(output_shape=(4,))
  config = make_config()
  assert diag.sown_kinds(config, ae) == {"code": "sigmoid"}
  with config.unlocked():
    config.diagnostics.activation = "relu"  # Asked for: every sow, as asked.
  assert diag.sown_kinds(config, ae) == {}
  assert diag.sown_kinds(make_config(), jdl.models.Seq2Seq(src_vocab_size=9, tgt_vocab_size=9)
                         ) == {"attention": "none"}
  x = jnp.full((4, 3), 0.5)
  acts = {"encoder": {"code": (jax.nn.sigmoid(50 * x),)}, "act_0": (x * 0,)}
  out = diag.compute_diagnostics(_Params({}), _Params({}), {}, acts, histograms=False,
                                 kinds={"code": "sigmoid"})
  assert out["saturated"] == {"encoder/code": 1.0} and out["dead_relu"] == {"act_0": 1.0}


def test_boxed_parameters_are_read_unboxed():
  # nn.with_partitioning's boxes: summary counted each kernel as 1 and the update
  # ratios split off the bias as a layer of its own.
  class Boxed(nn.Module):
    @nn.compact
    def __call__(self, x):
      init = nn.with_partitioning(nn.initializers.lecun_normal(), (None, "model"))
      return nn.Dense(4, kernel_init=init)(x)

  variables = Boxed().init(jax.random.key(0), jnp.ones((1, 3)))
  assert jdl.count_params(variables["params"]) == 16
  assert jdl.param_table(variables).splitlines()[-1] == "Total: 16 trainable, 0 non-trainable"
  assert diag.layer_names(variables["params"]) == ["Dense_0", "Dense_0"]
  doubled = jax.tree.map(lambda a: 2 * a, variables["params"])
  np.testing.assert_allclose(diag.update_ratios(variables["params"], doubled)["Dense_0"], 1.0,
                             rtol=1e-6)
  out = diag.compute_diagnostics(_Params(variables["params"]), _Params(doubled),
                                 variables["params"], {}, bins=4)
  assert sorted(out["histograms"]) == ["grad/Dense_0/bias", "grad/Dense_0/kernel"]


def test_param_table_checks_its_frozen_patterns():
  variables = jax.eval_shape(lambda: jdl.models.LeNet5().init(jax.random.key(0),
                                                               jnp.zeros((1, 28, 28, 1))))
  last = jdl.param_table(variables, frozen=("conv1",)).splitlines()[-1]
  assert last == "Total: 61,550 trainable, 156 frozen, 0 non-trainable", last
  for frozen, message in (("conv1", "must be a tuple of regexes, got 'conv1'"),
                          (("conv[",), r"invalid regex 'conv\['"),
                          (("Conv1",), r"frozen patterns \['Conv1'\] match no parameter")):
    with pytest.raises(JdlError, match=message):
      jdl.param_table(variables, frozen=frozen)


def test_auto_activation_reads_the_models_own_default():
  # LeNet-5's default is tanh; a config without model.activation read as ReLU.
  config = make_config(model__name="lenet5")
  model = jdl.models.create_model(config.model, num_outputs=10)
  assert diag.activation_kind(config, model) == "tanh"
  assert diag.activation_kind(config) == "relu"  # The config alone: no field, ReLU.
  config = make_config(model__name="mlp", model__activation="sigmoid")
  assert diag.activation_kind(config, jdl.models.create_model(config.model, num_outputs=2)) == (
      "sigmoid")
  assert diag.activation_kind(make_config(), _SowMLP()) == "relu"  # A module without the field.


@pytest.mark.parametrize("field", ["every_steps", "histogram_bins", "warn_after_periods"])
def test_a_boolean_diagnostics_count_is_refused(field):
  # A config.json's true passed int() as 1: diagnostics every step.
  config = make_config(**{f"diagnostics__{field}": 1})
  with config.unlocked():
    config.diagnostics[field] = True
  with pytest.raises(JdlError, match=rf"^diagnostics.{field} must be an integer, got True$"):
    diag.validate_config(config)


@pytest.mark.parametrize("learning_rate, warns", [(50.0, True), (1e-3, False)])
def test_update_ratio_warning_on_an_absurd_learning_rate(tmp_path, capfd, learning_rate, warns):
  _fit(None, diagnostics__every_steps=2, diagnostics__warn_after_periods=2,
       diagnostics__histograms=False, optimizer__name="sgd",
       optimizer__learning_rate=learning_rate, nonfinite="skip", terminate_on_nan=False)
  err = capfd.readouterr().err
  assert ("jdl: warning: update/parameter ratio" in err) == warns, err


@pytest.mark.parametrize("name, over", [
    ("adding_problem", {"n_samples": 128, "sequence.seq_len": 6, "model.hidden": (4, 3)}),
    # No beam search (its test score is not what this checks).
    ("seq2seq_dates", {"n_samples": 96, "model.hidden": 8, "model.embed_dim": 4,
                       "sequence.beam_size": 0}),
], ids=["recurrent", "seq2seq"])
def test_diagnostics_and_activity_l1_run_on_sequence_models(tmp_path, name, over):
  # A recurrent stack's sows clashed with its layers' names (ValueError: Duplicate
  # use of scope name) and a seq2seq model's two inputs reached a one-input
  # wrapper (TypeError): both were tracebacks after the workdir was made.
  config = jdl.load_config(name)
  over = {"num_epochs": 1, "batch_size": 32, "tensorboard": False, "plots": False,
          "validation_split": 0.0, "monitor": "", "diagnostics.every_steps": 1, **over}
  with config.unlocked():
    for key, value in over.items():
      *parents, leaf = key.split(".")
      node = config
      for parent in parents:
        node = node[parent]
      node[leaf] = value
  result = jdl.fit(config, tmp_path / "run", quiet=True)
  lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
  diags = [json.loads(line) for line in lines if '"diagnostics"' in line]
  assert len(diags) == result.trainer.steps_per_epoch and all(
      np.isfinite(d["grad_norm"]) for d in diags)
  if name == "seq2seq_dates":
    assert "beam_exact_match" not in result.test_metrics
    assert "greedy_exact_match" in result.test_metrics
  if name == "adding_problem":  # Each layer's sown outputs are activations to penalise.
    # The model's tanh (its default; dead ReLUs were reported before).
    assert {"saturated/rnn/outputs_0", "saturated/rnn/outputs_1"} <= set(diags[0])
    assert not any(k.startswith("dead_relu/") for k in diags[0])
    config.diagnostics.every_steps = 0
    config.regularization.activity_l1 = 0.01
    l1 = jdl.fit(config, tmp_path / "l1", quiet=True)
    # The loss it trains on is the data loss plus 0.01 * sum|a| / B of every layer's
    # sown outputs.
    task, state, train = l1.trainer.task, l1.state, l1.trainer.data.train
    batch = {"x": jnp.asarray(train.x[:32]), "y": jnp.asarray(train.y[:32]),
             "mask": jnp.ones(32, jnp.float32)}

    @jax.jit
    def loss_and_sown(params, model_state, batch, key):
      loss, (per_example, *_) = task.loss_fn(params, model_state, batch, key, True)
      return loss, per_example, task.sown(params, model_state, batch, key)

    loss, per_example, sown = loss_and_sown(state.params, state.model_state, batch,
                                            jax.random.key(0))
    assert {"outputs_0", "outputs_1"} <= set(sown["rnn"])
    expected = 0.01 * sum(np.abs(np.asarray(a, np.float64)).sum() / 32
                          for a in jax.tree.leaves(sown))
    assert expected > 0
    np.testing.assert_allclose(float(loss) - float(per_example.mean()), expected, rtol=1e-4)
    # So training took another path than the run without it (the diagnostics leave a
    # run bitwise unchanged): the first layer's weights differ by percents.
    first, plain = (jax.device_get(r.state.params["rnn"]["layer_0"]) for r in (l1, result))
    moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)) / np.max(np.abs(b)), first, plain)
    assert min(jax.tree.leaves(moved)) > 1e-3, moved
