"""Checks on 8 simulated CPU devices, run by tests/test_parallel.py in one subprocess.

Run as ``XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/parallel_checks.py
WORKDIR`` (the pytest process already holds a one-device JAX). Gathered in one
process to pay JAX's start-up once. Exits non-zero with the failing assertion.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # This checkout, and conftest.

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import jdl  # noqa: E402
from conftest import Crash, make_config  # noqa: E402
from jdl import cli  # noqa: E402
from jdl.train import callbacks as cb  # noqa: E402

RTOL = 1e-5


def _class_hits(logits, labels, mask):
  """Per class: its real examples and those predicted right (balanced accuracy's sums)."""
  real = jax.nn.one_hot(labels, logits.shape[-1], dtype=np.int32) * mask[:, None]
  hit = (logits.argmax(-1) == labels).astype(np.int32)
  return {"hits": (real * hit[:, None]).sum(0), "count": real.sum(0)}


# Registered metrics: their sums cross the devices as the built-in ones do.
jdl.metrics.register_metric("balanced_pc", statistics=_class_hits, compute=lambda t: np.mean(
    t["hits"][t["count"] > 0] / t["count"][t["count"] > 0]))
jdl.metrics.register_metric("max_logit_pc", lambda logits, labels: logits.max(-1))


class LossTrace(cb.Callback):
  """Each step's mean training loss (blocks of one step: ``scan_chunk=1``)."""

  def __init__(self):
    self.sums, self.losses = [], []

  def on_steps_end(self, trainer, step, num_steps):
    s = np.float64(jax.device_get(trainer._acc["loss"]["sum"]))
    prev = self.sums[-1] if self.sums and step % trainer.steps_per_epoch != 1 else 0.0
    self.sums.append(s)
    self.losses.append((s - prev) / trainer.batch_size)


def config(parallel: str, **overrides):
  # digits: 1293 training examples, batch 64: 20 steps an epoch. Dropout off: shard_map
  # folds its keys with the device index, so masks would differ from one device.
  settings = dict(parallel=parallel, num_epochs=1, scan_chunk=1, eval_batch_size=50,
                  model__dropout_rate=0.0)
  return make_config(**{**settings, **overrides})


def train(parallel, workdir=None, callbacks=(), **overrides):
  trace = LossTrace()
  result = jdl.fit(config(parallel, **overrides), workdir, quiet=True,
                   callbacks=[trace, *callbacks])
  return result, trace.losses


def params(result):
  return jax.device_get(result.state.variables)


def devices_of(result) -> set[int]:
  return {len(x.sharding.device_set) for x in jax.tree.leaves(result.state.params)}


def check_trajectories(root: Path) -> dict:
  """20 steps on 8 devices ('data', 'shard_map') equal 1 device within 1e-5 relative
  (Adam, and SGD with clipping and an L2 penalty, which a gradient scale would show)."""
  models = {
      "mlp": dict(model__hidden=(32,)),
      # Plain SGD with an L2 penalty and global-norm clipping: unlike Adam, whose update
      # barely moves when every gradient is scaled, this run differs at once if the
      # devices' gradients were summed instead of averaged.
      "mlp_sgd": dict(model__hidden=(32,), optimizer__name="sgd",
                      optimizer__learning_rate=0.3, optimizer__clip_norm=1.0,
                      regularization__l2=1e-3,
                      metrics=("accuracy", "balanced_pc", "max_logit_pc")),
      "cnn_bn": dict(model__name="cnn", model__features=(4, 8), model__dense=(16,),
                     model__batch_norm=True),
  }
  runs = {}
  for name, kw in models.items():
    ref, ref_losses = train("none", root / f"{name}_none" if name == "mlp" else None, **kw)
    assert len(ref_losses) == 20, len(ref_losses)
    assert devices_of(ref) == {1}
    for mode in ("data", "shard_map"):
      wd = root / f"{name}_{mode}" if name == "mlp" else None
      result, losses = train(mode, wd, **kw)
      assert result.trainer.parallel.num_devices == 8 and devices_of(result) == {8}
      np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, err_msg=f"{name} {mode}")
      chex.assert_trees_all_close(params(result), params(ref), rtol=RTOL, atol=1e-5)
      assert set(ref.test_metrics) >= set(config("none", **kw).metrics), ref.test_metrics
      for k, v in ref.test_metrics.items():  # Sharded, padded evaluation (50 -> 56).
        np.testing.assert_allclose(result.test_metrics[k], v, rtol=RTOL, err_msg=k)
      runs[(name, mode)] = result
    runs[(name, "none")] = ref
  return runs


def check_collective_helpers() -> None:
  """Inside shard_map: a varying copy's gradient is the device's own; pmean_varying
  averages what differs across devices and leaves the rest as it is."""
  from jax.sharding import Mesh, PartitionSpec as P
  from jdl.train import parallel

  mesh = Mesh(jax.devices(), (parallel.AXIS,))
  x = jax.numpy.arange(16.0)  # Two examples a device.
  w = jax.numpy.float32(1.5)
  loss = lambda w, x: jax.numpy.mean((w * x) ** 2)  # noqa: E731

  def per_device(w, x):
    own = jax.grad(loss)(parallel.device_varying(w, parallel.AXIS), x)
    state = {"mean": jax.numpy.mean(x, keepdims=True), "w": w}
    return jax.lax.pmean(own, parallel.AXIS), parallel.pmean_varying(state, parallel.AXIS)

  grad, state = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                                      out_specs=P()))(w, x)
  # d/dw mean((w x)^2) = 2 w mean(x^2) over the global batch: the mean of the devices'.
  np.testing.assert_allclose(grad, 2 * 1.5 * np.mean(np.arange(16.0) ** 2), rtol=1e-6)
  np.testing.assert_allclose(state["mean"], [7.5], rtol=1e-6)
  assert float(state["w"]) == 1.5


def check_exact_resume(root: Path, runs: dict) -> None:
  """Killed at step 13 and resumed (same 8 devices): bitwise the uninterrupted run."""
  for mode in ("data", "shard_map"):
    wd = root / f"crash_{mode}"
    try:
      train(mode, wd, callbacks=[Crash(at_step=13)], checkpoint_every_steps=5,
            model__hidden=(32,))
      raise AssertionError("the crash callback did not fire")
    except KeyboardInterrupt:
      pass
    resumed, _ = train(mode, wd, checkpoint_every_steps=5, model__hidden=(32,))
    chex.assert_trees_all_equal(params(resumed), params(runs[("mlp", mode)]))
  # Mid-epoch (step 10's checkpoint, its metric sums not empty), 8 devices -> 1.
  wd = root / "crash_to_one"
  try:
    train("shard_map", wd, callbacks=[Crash(at_step=13)], checkpoint_every_steps=5,
          model__hidden=(32,))
    raise AssertionError("the crash callback did not fire")
  except KeyboardInterrupt:
    pass
  resumed, _ = train("none", wd, checkpoint_every_steps=5, model__hidden=(32,))
  assert devices_of(resumed) == {1}
  chex.assert_trees_all_close(params(resumed), params(runs[("mlp", "none")]), rtol=RTOL,
                              atol=1e-5)
  np.testing.assert_allclose(resumed.history["loss"], runs[("mlp", "none")].history["loss"],
                             rtol=RTOL)


def check_data_mode_draws() -> None:
  """'data' mode draws dropout and augmentation for the global batch, as one device
  does (jax_threefry_partitionable): the same run within float rounding."""
  kw = dict(model__hidden=(32,), model__dropout_rate=0.3, augment__noise_std=0.1)
  ref, ref_losses = train("none", **kw)
  result, losses = train("data", **kw)
  assert devices_of(result) == {8}
  np.testing.assert_allclose(losses, ref_losses, rtol=RTOL)
  chex.assert_trees_all_close(params(result), params(ref), rtol=RTOL, atol=1e-5)


def check_portability(root: Path) -> None:
  """1 -> 8 and 8 -> 1 devices: the epoch-1 checkpoints continue on the other count."""
  kw = dict(model__hidden=(32,), num_epochs=2)
  to8, _ = train("data", root / "mlp_none", **kw)  # Written on 1 device.
  to1, _ = train("none", root / "mlp_data", **kw)  # Written on 8 devices.
  assert devices_of(to8) == {8} and devices_of(to1) == {1}
  assert to8.state.params["head"]["kernel"].sharding.is_fully_replicated
  assert int(to8.state.step) == int(to1.state.step) == 40
  chex.assert_trees_all_close(params(to8), params(to1), rtol=RTOL, atol=1e-5)
  runtime = json.loads((root / "mlp_none" / "config.json").read_text())["runtime"]
  assert runtime == {"num_devices": 8, "num_processes": 1, "parallel": "data",
                     "platform": "cpu", "cpu_cores": len(os.sched_getaffinity(0)),
                     "xla_flags": os.environ["XLA_FLAGS"]}, runtime
  first = json.loads((root / "mlp_data" / "metrics.jsonl").read_text().splitlines()[0])
  assert (first["num_devices"], first["num_processes"]) == (8, 1), first


def check_batch_error(root: Path) -> None:
  """A global batch the devices cannot split: one `jdl: error:` line, exit 2."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    code = cli.main(["train", "--workdir", str(root / "bad"), "--config", "digits_mlp",
                     "--config.batch_size=100", "--quiet"])
  assert code == 2 and not (root / "bad").exists()
  assert err.getvalue().startswith("jdl: error: batch_size (100) must be divisible by the "
                                   "number of devices (8)"), err.getvalue()
  assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
  # A run of that batch size trained on one device is still read here (evaluation
  # trains nothing; it runs on one device).
  run = jdl.fit(make_config(batch_size=100, parallel="none", num_epochs=1), root / "one100",
                quiet=True)
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert cli.main(["evaluate", "--workdir", str(root / "one100")]) == 0
  assert json.loads(out.getvalue()) == run.test_metrics
  # So is one trained in microbatches, its NaN check per block: settings training on
  # several devices refuses (reading refused them too, naming the microbatches).
  kw = dict(microbatch_size=16, nonfinite_check="block", num_epochs=1)
  run = jdl.fit(make_config(parallel="none", **kw), root / "one_mb", quiet=True)
  # As a run trained with parallel='auto' on a one-device machine reads here.
  assert jdl.evaluate(make_config(**kw), root / "one_mb") == run.test_metrics


def check_gan() -> None:
  """The two-player GANState is data-parallel too (its own step, under jit)."""
  from test_generative_train import gan_config
  runs = {mode: jdl.fit(gan_config(num_epochs=1, parallel=mode), None, quiet=True)
          for mode in ("none", "data")}
  assert devices_of(runs["data"]) == {8}
  chex.assert_trees_all_close(params(runs["data"]), params(runs["none"]), rtol=RTOL, atol=1e-5)
  np.testing.assert_allclose(runs["data"].history["g_loss"], runs["none"].history["g_loss"],
                             rtol=RTOL)


def check_recurrent() -> None:
  """A recurrent model (LSTM: a tuple carry) in 'shard_map': its scan's zero initial
  carry is typed per-device as its body's output (was a TypeError), and the run
  equals the 1-device one."""
  kw = dict(dataset="adding_problem", task="regression", loss="mse", metrics=("mse",),
            normalize="none", n_samples=320, batch_size=32, validation_split=0.0,
            model__name="seq_rnn", model__cell="lstm", model__hidden=(8,),
            sequence__seq_len=10)
  runs = {mode: jdl.fit(make_config(parallel=mode, num_epochs=1, **kw), None, quiet=True)
          for mode in ("none", "shard_map")}
  assert devices_of(runs["shard_map"]) == {8}
  np.testing.assert_allclose(runs["shard_map"].history["loss"], runs["none"].history["loss"],
                             rtol=RTOL)
  chex.assert_trees_all_close(params(runs["shard_map"]), params(runs["none"]), rtol=RTOL,
                              atol=1e-5)


def check_seq2seq_of_varying_lengths() -> None:
  """A seq2seq loss is a mean over target tokens: in 'shard_map' the devices' shares
  hold different counts, and their mean losses are weighted by them (an unweighted
  mean trained on other gradients: 3e-2 apart after an epoch)."""
  import dataclasses
  from jdl.data import sources
  ds = sources.load_dataset("dates", n_samples=256, seed=0)
  y = ds.y_train.copy()
  cut = np.arange(len(y)) % 3 == 0  # A third of the targets end after 3 characters.
  y[cut, 4], y[cut, 5:] = 3, 0  # <eos>, then <pad>.
  ds = dataclasses.replace(ds, y_train=y)
  runs = {}
  for mode in ("none", "shard_map"):
    c = jdl.load_config("seq2seq_dates")
    c.parallel, c.num_epochs, c.batch_size, c.scan_chunk = mode, 1, 64, 1
    c.model.hidden, c.model.embed_dim = 16, 8
    # No validation split: its decoding each epoch is a third of the check's time, and
    # the test split is still decoded (greedy and beam) on the 8 devices.
    c.validation_split, c.monitor, c.monitor_mode = 0.0, "loss", "min"
    runs[mode] = jdl.fit(c, None, dataset=ds, quiet=True)
  assert devices_of(runs["shard_map"]) == {8}
  np.testing.assert_allclose(runs["shard_map"].history["loss"], runs["none"].history["loss"],
                             rtol=RTOL)
  chex.assert_trees_all_close(params(runs["shard_map"]), params(runs["none"]), rtol=RTOL,
                              atol=1e-5)


def check_streamed(root: Path) -> None:
  """dataset='npy_dir' on 8 devices ('data', 'shard_map') equals the 1-device streamed run."""
  from sklearn import datasets
  digits = datasets.load_digits()
  x, y = (digits.images[..., None] / 16.0).astype(np.float32), digits.target.astype(np.int64)
  d = root / "npy"
  d.mkdir()
  for name, a in (("x_train", x[:1500]), ("y_train", y[:1500]), ("x_test", x[1500:]),
                  ("y_test", y[1500:])):
    np.save(d / f"{name}.npy", a)
  kw = dict(dataset="npy_dir", data_dir=str(d), validation_split=0.0)
  ref, ref_losses = train("none", **kw)
  assert not ref.trainer.gathered
  for mode, extra in (("data", {}), ("shard_map", {}), ("data", dict(diagnostics__every_steps=10))):
    result, losses = train(mode, **kw, **extra)
    assert devices_of(result) == {8}, mode
    # Pre-gathered blocks [steps, 64, ...] sharded P(None, 'data'), built from this
    # process's columns (all 64 on one process): each row read once, none replicated.
    t = result.trainer
    assert t.gathered and t.feed.columns == (0, 64), (mode, t.feed.columns)
    assert t.feed.rows_read == t.total_steps * 64, (mode, t.feed.rows_read)
    assert t.data.test.eval_rows_read == 336, t.data.test.eval_rows_read  # 297 padded to 6 x 56.
    assert t.block_shapes(1)[0].shape == (1, 64, 8, 8, 1)
    np.testing.assert_allclose(losses, ref_losses, rtol=RTOL, err_msg=f"streamed {mode}")
    # Adam divides by sqrt(v): a weight whose gradients are ~0 moves by a float-rounding
    # amount, seen up to 3e-5 here (one weight in 2,048); the losses agree to 1e-5.
    chex.assert_trees_all_close(params(result), params(ref), rtol=RTOL, atol=1e-4)
    for k, v in ref.test_metrics.items():  # Streamed, sharded, padded evaluation.
      np.testing.assert_allclose(result.test_metrics[k], v, rtol=RTOL, err_msg=k)


def check_profile() -> None:
  """jdl profile on 8 devices: an operation's time is one device's (it was the sum over
  the devices), and the gradients' all-reduce is a layer of its own (it was booked as
  'update and metrics')."""
  from jdl.train import loop, profile
  trainer = loop.Trainer(config("data", model__hidden=(32,)), quiet=True)
  result = profile.profile_block(trainer, 2)
  assert result["devices"] == 8, result["devices"]
  layers = {r["layer"] for r in result["ops"]}
  assert profile.COLLECTIVES_LAYER in layers, layers
  dense = [r for r in result["ops"] if r["layer"] == "hidden_0 (forward)"]
  assert dense and all(r["runs_per_step"] == 1.0 for r in dense), dense


def main() -> None:
  # Simulated CPU devices run each program's per-device parts on a shared thread pool;
  # with asynchronous dispatch, two programs with collectives (an evaluation batch and
  # the merge after it) can interleave across devices and deadlock in a rendezvous
  # (seen once in CI, in check_gan's evaluation). Dispatching synchronously orders them.
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  if os.environ.get("JDL_HANG_SECONDS"):  # A hang prints every thread's stack and exits.
    faulthandler.dump_traceback_later(float(os.environ["JDL_HANG_SECONDS"]), exit=True)
  cli._quiet_library_logs()
  assert jax.device_count() == 8, jax.devices()
  root = Path(sys.argv[1])
  check_collective_helpers()
  runs = check_trajectories(root)
  check_exact_resume(root, runs)
  check_portability(root)
  check_batch_error(root)
  check_gan()
  check_recurrent()
  check_streamed(root)
  check_data_mode_draws()
  check_seq2seq_of_varying_lengths()
  check_profile()
  print("parallel checks passed")


if __name__ == "__main__":
  main()
