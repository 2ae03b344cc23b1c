"""Runs on the user's own dataset and module (``fit(dataset=..., model=...)``).

Checkpoints record where the data and the model came from (a fingerprint of the
arrays, whether they were passed in), so that reopening or resuming the run with
other ones is refused instead of silently normalising, scoring or training on them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

import jdl
from jdl import config as config_lib
from jdl.train import callbacks as cb

from conftest import make_config

RNG = np.random.default_rng(1)
X = (RNG.normal(size=(600, 8, 8, 1)) * 5 + 3).astype(np.float32)
Y = X.reshape(600, 64)[:, :10].argmax(-1).astype(np.int32)
MINE = jdl.data.Dataset(x_train=X[:500], y_train=Y[:500], x_test=X[500:], y_test=Y[500:],
                        num_classes=10, task="classification", name="mine",
                        input_shape=(8, 8, 1))


class Tiny(nn.Module):
  """A module of the user's (not one jdl's config can build)."""
  hidden: int = 16

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x.reshape(len(x), -1))))


class TinyTanh(nn.Module):
  """:class:`Tiny`'s parameters, another function."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(10)(jnp.tanh(nn.Dense(16)(x.reshape(len(x), -1))))


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("own")
  result = jdl.fit(make_config(num_epochs=1), workdir, dataset=MINE, quiet=True)
  return workdir, result


def test_fingerprint_tells_datasets_apart_and_is_stable():
  digits = jdl.data.load_dataset("digits")
  assert jdl.data.fingerprint(MINE) == jdl.data.fingerprint(MINE)
  assert jdl.data.fingerprint(digits) == jdl.data.fingerprint(jdl.data.load_dataset("digits"))
  assert jdl.data.fingerprint(MINE) != jdl.data.fingerprint(digits)
  changed = X[:500].copy()
  changed[-1, 0, 0, 0] += 1  # The last row is always among the sampled rows.
  other = jdl.data.Dataset(**{**MINE.__dict__, "x_train": changed})
  assert jdl.data.fingerprint(other) != jdl.data.fingerprint(MINE)


def test_the_checksum_hashes_every_byte_the_fingerprint_samples_a_few_rows():
  import hashlib
  data = RNG.normal(size=(1000, 8)).astype(np.float32)
  labels = np.arange(1000, dtype=np.int32) % 3
  base = jdl.data.Dataset(x_train=data, y_train=labels, num_classes=3, name="rows")
  edited = data.copy()
  edited[1, 0] += 1  # Row 1: not among the 256 rows the fingerprint samples.
  other = jdl.data.Dataset(x_train=edited, y_train=labels, num_classes=3, name="rows")
  assert jdl.data.fingerprint(other) == jdl.data.fingerprint(base)
  assert jdl.data.checksum(other) != jdl.data.checksum(base)
  # Independent reference: sha256 over each split's shape, dtype and bytes, in order.
  h = hashlib.sha256()
  for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
    a = {"x_train": data, "y_train": labels}.get(name)
    h.update(f"{name}:none;".encode() if a is None
             else f"{name}:{a.shape}:{a.dtype.str};".encode() + a.tobytes())
  assert jdl.data.checksum(base) == h.hexdigest()[:16]
  # The same values as a strided view or a jax array: the same checksum.
  strided = jdl.data.Dataset(x_train=np.repeat(data, 2, axis=0)[::2], y_train=jnp.asarray(labels),
                             num_classes=3, name="rows")
  assert jdl.data.checksum(strided) == jdl.data.checksum(base)


def test_data_edited_outside_the_sampled_rows_is_refused(tmp_path):
  # Edited in one row the fingerprint does not sample: resume and evaluate refuse it
  # (both passed before checkpoints recorded the checksum), touching nothing.
  edited_x = X[:500].copy()
  sampled = np.linspace(0, 499, jdl.data.sources.FINGERPRINT_ROWS).astype(int)
  edited_x[min(set(range(500)) - set(sampled)), 0, 0, 0] += 1  # A row not sampled.
  edited = jdl.data.Dataset(**{**MINE.__dict__, "x_train": edited_x})
  assert jdl.data.fingerprint(edited) == jdl.data.fingerprint(MINE)
  workdir = tmp_path / "run"
  jdl.fit(make_config(num_epochs=1), workdir, dataset=MINE, quiet=True)
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  saved = json.loads((workdir / "config.json").read_text())["sources"]["data"]
  assert saved["checksum"] == jdl.data.checksum(MINE)
  message = (r"trained on other data: its arrays \('mine', checksum "
             + jdl.data.checksum(MINE) + r"\) differ from this call's \('mine', "
             + jdl.data.checksum(edited) + r"\)")
  with pytest.raises(jdl.JdlError, match=message):
    jdl.fit(make_config(num_epochs=2), workdir, dataset=edited, quiet=True)
  with pytest.raises(jdl.JdlError, match=message):
    jdl.evaluate(workdir, dataset=edited)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  # A checkpoint written before the checksum (no record of it) still resumes.
  from jdl.train import resume
  source = {"name": "mine", "given": True, "fingerprint": jdl.data.fingerprint(edited),
            "checksum": jdl.data.checksum(edited)}
  resume.check_provenance({"data": {**saved, "checksum": None}}, 1, workdir, source,
                          {"given": False}, call="fit")
  resume.check_provenance({"data": {k: v for k, v in saved.items() if k != "checksum"}}, 1,
                          workdir, source, {"given": False}, call="fit")
  resumed = jdl.fit(make_config(num_epochs=2), workdir, dataset=MINE, quiet=True)
  assert resumed.trainer.step == 2 * resumed.trainer.steps_per_epoch


def test_a_run_on_own_data_reopens_only_with_that_data(own_run):
  workdir, result = own_run
  with pytest.raises(jdl.JdlError, match=r"passed to fit\(dataset=\.\.\.\) \('mine'\).*"
                                         r"jdl\.load_run\(\.\.\., dataset=\.\.\.\)"):
    jdl.load_run(workdir)  # Would rebuild config.dataset (digits) and normalise with it.
  with pytest.raises(jdl.JdlError, match="trained on other data"):
    jdl.load_run(workdir, dataset=jdl.data.load_dataset("digits"))
  with pytest.raises(jdl.JdlError, match="passed to fit"):
    jdl.evaluate(None, workdir)
  reopened = jdl.load_run(workdir, dataset=MINE, best=False)
  np.testing.assert_array_equal(jdl.predict(reopened, X[500:]), jdl.predict(result, X[500:]))
  best = jdl.load_run(workdir, dataset=MINE)
  assert jdl.evaluate(None, workdir, dataset=MINE) == best.evaluate_split(best.data.test)
  # The workdir alone, as load_run takes it (a TypeError before), and best=False.
  assert jdl.evaluate(workdir, dataset=MINE) == best.evaluate_split(best.data.test)
  assert jdl.evaluate(str(workdir), dataset=MINE, best=False) == reopened.evaluate_split(
      reopened.data.test)
  with pytest.raises(jdl.JdlError, match=r"evaluate's config must be a config .* got str"):
    jdl.evaluate(str(workdir), str(workdir))
  with pytest.raises(jdl.JdlError, match=r"^evaluate needs the run's workdir"):
    jdl.evaluate()


def test_a_run_on_own_data_resumes_only_with_that_data(own_run, tmp_path):
  import shutil
  workdir = tmp_path / "run"
  shutil.copytree(own_run[0], workdir)
  before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  with pytest.raises(jdl.JdlError, match=r"fit\(\.\.\., dataset=\.\.\.\)"):
    jdl.fit(make_config(num_epochs=2), workdir, quiet=True)  # Would train on digits.
  shuffled = jdl.data.Dataset(**{**MINE.__dict__, "x_train": X[:500][::-1].copy()})
  with pytest.raises(jdl.JdlError, match="trained on other data"):
    jdl.fit(make_config(num_epochs=2), workdir, dataset=shuffled, quiet=True)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
  resumed = jdl.fit(make_config(num_epochs=2), workdir, dataset=MINE, quiet=True)
  assert resumed.trainer.step == 2 * resumed.trainer.steps_per_epoch


def test_a_run_of_own_model_reopens_only_with_that_model(tmp_path):
  result = jdl.fit(make_config(num_epochs=1), tmp_path, model=Tiny(), quiet=True)
  with pytest.raises(jdl.JdlError, match=r"passed to fit\(model=\.\.\.\) \(Tiny\)"):
    jdl.load_run(tmp_path)
  reopened = jdl.load_run(tmp_path, model=Tiny(), best=False)
  x = jdl.data.load_dataset("digits").x_test[:8]
  np.testing.assert_array_equal(jdl.predict(reopened, x), jdl.predict(result, x))
  # Another module with the same parameters (tanh for relu) restored them silently,
  # and computed something else.
  refused = (r"^the checkpoint at step \d+ in .* was trained with the module Tiny, passed to "
             r"fit\(model=\.\.\.\); this call passes TinyTanh\. Pass the module that trained "
             r"it: {}\(\.\.\., model=Tiny\(\.\.\.\)\)")
  with pytest.raises(jdl.JdlError, match=refused.format(r"jdl\.load_run") + "$"):
    jdl.load_run(tmp_path, model=TinyTanh())
  with pytest.raises(jdl.JdlError, match=refused.format(r"jdl\.load_run")):
    jdl.evaluate(tmp_path, model=TinyTanh())
  before = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
  with pytest.raises(jdl.JdlError, match=refused.format("fit") + ", or use another workdir"):
    jdl.fit(make_config(num_epochs=2), tmp_path, model=TinyTanh(), quiet=True)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before
  # The same class, other parameters: the mismatch names the module, not only the config.
  wider = (r"holds another model or optimizer state than this call's model Tiny and config "
           r"build \(state/params/Dense_\d/.*\)\. Pass the module that trained it ")
  with pytest.raises(jdl.JdlError, match=wider + r"\(model=\.\.\.\)\. Use the run's own config"):
    jdl.load_run(tmp_path, model=Tiny(hidden=17))
  with pytest.raises(jdl.JdlError, match=wider + r"\(fit\(model=\.\.\.\)\)\. Use the run's"):
    jdl.fit(make_config(num_epochs=2), tmp_path, model=Tiny(hidden=17), quiet=True)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == before


def test_the_cli_refuses_a_run_it_cannot_rebuild_and_touches_nothing(own_run, tmp_path,
                                                                       capsys):
  # config.json records what fit was given: the CLI, which has only the config,
  # would resume, restart or evaluate with config.dataset or config.model instead.
  import shutil
  from jdl import cli
  own, module = tmp_path / "own", tmp_path / "module"
  shutil.copytree(own_run[0], own)
  jdl.fit(make_config(num_epochs=1), module, model=Tiny(), quiet=True)
  for workdir, what in ((own, r"a dataset passed to fit\(dataset=\.\.\.\) \('mine'\)"),
                        (module, r"a model passed to fit\(model=\.\.\.\) \(Tiny\)")):
    sources = json.loads((workdir / "config.json").read_text())["sources"]
    assert (sources["data"]["given"], sources["model"]["given"]) == (workdir == own,
                                                                      workdir == module)
    files = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    for argv, then in ((["train", "--quiet"], "resume it from Python"),
                       (["train", "--restart", "--quiet"], "start it over from Python"),
                       (["evaluate"], r"evaluate it from Python: jdl\.evaluate")):
      capsys.readouterr()
      assert cli.main([*argv, "--workdir", str(workdir)]) == 2, argv
      err = capsys.readouterr().err
      assert len(err.strip().splitlines()) == 1, err
      assert re.match(rf"jdl: error: {re.escape(str(workdir))} holds a run trained on "
                      rf"{what}, which the CLI cannot load; {then}", err), (argv, err)
    # Its config.json given as --config: check, lr-find, profile and train elsewhere
    # ran on config.dataset / config.model, with no word of it.
    for argv in (["check"], ["lr-find", "--out", str(tmp_path / "lr.png")], ["profile"],
                 ["train", "--workdir", str(tmp_path / "elsewhere")]):
      capsys.readouterr()
      assert cli.main([*argv, "--config", str(workdir / "config.json")]) == 2, argv
      err = capsys.readouterr().err
      assert len(err.strip().splitlines()) == 1, err
      assert re.match(rf"jdl: error: {re.escape(str(workdir / 'config.json'))} is the config "
                      rf"of a run trained on {what}, which the CLI cannot rebuild", err), err
    assert not (tmp_path / "elsewhere").exists() and not (tmp_path / "lr.png").exists()
    assert cli.main(["config", "--config", str(workdir / "config.json")]) == 0  # Only shown.
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == files
    assert not list(workdir.glob("previous-*"))  # --restart moved nothing aside.


def test_a_layout_mismatch_names_only_the_callers_changes(own_run):
  workdir, _ = own_run
  config = jdl.load_config(str(workdir / "config.json"))
  config.model.hidden = (8,)
  with pytest.raises(jdl.JdlError) as error:
    jdl.load_run(workdir, config, dataset=MINE)
  message = str(error.value)
  assert "model.hidden" in message and "distributed" not in message, message


def test_predict_refuses_what_it_cannot_answer(own_run, tmp_path):
  workdir, result = own_run
  with pytest.raises(jdl.JdlError, match=r"predict needs inputs \[n, 8, 8, 1\]"):
    jdl.predict(result, X[500:].reshape(100, 64))
  with pytest.raises(jdl.JdlError,
                     match=r"got shape \(8, 8, 1\); for one example, pass x\[None\]$"):
    jdl.predict(result, X[500])  # One example without its batch axis.
  # A Trainer of a trained workdir holds initial parameters until fit() or load_run().
  fresh = jdl.Trainer(make_config(num_epochs=1), workdir, dataset=MINE, quiet=True)
  with pytest.raises(jdl.JdlError, match="holds its initial parameters"):
    jdl.predict(fresh, X[500:])
  with pytest.raises(jdl.JdlError, match="holds its initial parameters"):
    jdl.explain.from_run(fresh)  # It explained the initial weights, silently.
  jdl.explain.from_run(result)
  jdl.predict(jdl.Trainer(make_config(num_epochs=1), tmp_path / "new", dataset=MINE,
                          quiet=True), X[500:])  # No run there: initial parameters asked for.
  vae = jdl.Trainer(make_config(task="vae", normalize="none", metrics=(), model__name="vae",
                                model__hidden=(8,), model__latent=2), quiet=True)
  with pytest.raises(jdl.JdlError, match=r"generates images: use trainer.sample"):
    vae.predict(np.zeros((2, 8, 8, 1), np.float32))


def test_callback_state_must_be_json_and_nothing_is_written(tmp_path):
  class NumpyBest(cb.Callback):
    best = None

    def on_epoch_end(self, trainer, epoch, logs):
      self.best = np.float32(logs["loss"])

    def state_dict(self):
      return {"best": self.best}

  with pytest.raises(jdl.JdlError, match=r"callback 'NumpyBest'\['best'\] is a numpy.float32"):
    jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True, callbacks=[NumpyBest()])
  assert list((tmp_path / "checkpoints").iterdir()) == []  # No half-written step.
  ck = jdl.Checkpointer(tmp_path / "direct", async_save=False)
  with pytest.raises(jdl.JdlError, match=r"meta\['lr'\]\[1\] is a numpy.int64"):
    ck.save(1, {"w": np.ones(2)}, meta={"lr": [0.1, np.int64(2)]})
  ck.save(2, {"w": np.ones(2)})  # meta defaults to {}.
  assert ck.steps() == [2]
  ck.close()


def test_a_given_module_is_named_and_the_step_checks_its_batch(own_run):
  config = make_config(num_epochs=1)
  trainer = jdl.Trainer(config, None, model=Tiny(), quiet=True)
  assert "model: Tiny (given to fit)" in trainer.summary()

  class NoTrainArgument(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(x.reshape(len(x), -1))

  with pytest.raises(jdl.JdlError, match=r"model NoTrainArgument failed to initialise.*'train'"):
    jdl.Trainer(config, None, model=NoTrainArgument(), quiet=True)
  step = jdl.make_train_step(trainer.task)
  with pytest.raises(jdl.JdlError, match=r"a batch is a dict with 'x', 'y' and 'mask'"):
    step(trainer.state, {"x": X[:4], "y": Y[:4]})
  _, result = own_run
  for bad, message in (([["a"] * 64] * 2, "numeric inputs"), ([[1.0], [1.0, 2.0]], "numeric")):
    with pytest.raises(jdl.JdlError, match=message):
      jdl.predict(result, bad)
  with pytest.raises(jdl.JdlError, match="result of jdl.fit, a Trainer .* or a run's workdir"):
    jdl.predict(result.state, X[:2])
  with pytest.raises(jdl.JdlError, match="runs/x holds no jdl run"):  # A path is a workdir.
    jdl.predict("runs/x", X[:2])


def test_a_registered_loss_trains_through_fit(tmp_path):
  import jax.numpy as jnp

  def focal(logits, labels, gamma=2.0):
    logp = jax.nn.log_softmax(logits)
    p_true = jnp.take_along_axis(jnp.exp(logp), labels[:, None], axis=1)[:, 0]
    return -((1 - p_true) ** gamma) * jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]

  jdl.losses.register_loss("focal_test", focal)
  try:
    jdl.losses.register_loss("focal_test", focal)  # The same code again: accepted.
    with pytest.raises(jdl.JdlError, match="exists already"):
      jdl.losses.register_loss("focal_test", lambda o, t: focal(o, t, gamma=1.0))
    with pytest.raises(jdl.JdlError, match="tasks must be"):
      jdl.losses.register_loss("other_test", focal, tasks=("ranking",))
    result = jdl.fit(make_config(num_epochs=2, loss="focal_test"), tmp_path, quiet=True)
    history = result.history["loss"]
    assert history[1] < history[0]
    # The test loss is the focal loss of the run's own outputs.
    test = result.trainer.data.test
    logits = jnp.asarray(result.trainer.predict_normalized(test.x))
    np.testing.assert_allclose(result.test_metrics["loss"],
                               float(np.mean(np.asarray(focal(logits, jnp.asarray(test.y)),
                                                        np.float64))), rtol=1e-5)
    with pytest.raises(jdl.JdlError, match="'focal_test' is a classification loss"):
      jdl.fit(make_config(dataset="linear", task="regression", loss="focal_test"), None,
              quiet=True)
  finally:
    jdl.losses.LOSSES.pop("focal_test", None)
    jdl.losses.TASKS.pop("focal_test", None)


def test_registered_metrics_log_monitor_resume_and_reopen(tmp_path, capsys):
  import jax.numpy as jnp

  def brier(logits, labels):
    p = jax.nn.softmax(logits)
    return jnp.sum(jnp.square(p - jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)), axis=-1)

  def class_hits(logits, labels, mask):
    real = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.int32) * mask[:, None]
    hit = (jnp.argmax(logits, -1) == labels).astype(jnp.int32)
    return {"hits": jnp.sum(real * hit[:, None], axis=0), "count": jnp.sum(real, axis=0)}

  def balanced(totals):
    present = totals["count"] > 0
    return np.mean(totals["hits"][present] / totals["count"][present])

  def register():
    jdl.metrics.register_metric("brier_fit", brier, better="min", replace=True)
    jdl.metrics.register_metric("balanced_fit", statistics=class_hits, compute=balanced,
                                better="max", replace=True)

  register()
  try:
    config = make_config(metrics=("accuracy", "brier_fit", "balanced_fit"), num_epochs=2,
                         validation_split=0.2)
    jdl.Trainer(make_config(metrics=("brier_fit",), validation_split=0.2,
                            early_stopping__enabled=True, early_stopping__monitor="val_brier_fit",
                            early_stopping__mode="max"), None, quiet=True)
    assert "early_stopping.monitor='val_brier_fit' is better lower" in capsys.readouterr().err
    whole = jdl.fit(config, None, quiet=True)
    assert {"brier_fit", "val_brier_fit", "balanced_fit", "val_balanced_fit"} <= set(whole.history)
    # The test values are the formulas' on the run's own outputs.
    test = whole.trainer.data.test
    logits = np.asarray(whole.trainer.predict_normalized(test.x), np.float64)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(whole.test_metrics["brier_fit"],
                               np.mean(np.sum((p - np.eye(10)[test.y]) ** 2, -1)), rtol=1e-5)
    np.testing.assert_allclose(whole.test_metrics["balanced_fit"],
                               skm.balanced_accuracy_score(test.y, logits.argmax(-1)), rtol=1e-6)
    # Stopped after an epoch, resumed: the same logs as the uninterrupted run.
    first = config.copy_and_resolve_references()
    first.num_epochs = 1
    jdl.fit(first, tmp_path, quiet=True)
    resumed = jdl.fit(config, tmp_path, quiet=True)
    for name in ("brier_fit", "val_brier_fit", "val_balanced_fit"):
      assert resumed.history[name] == whole.history[name], name
    # A process that has not registered them is told how; registered, the run reopens.
    for name in ("brier_fit", "balanced_fit"):
      jdl.metrics.CUSTOM.pop(name)
    with pytest.raises(jdl.JdlError, match=r"unknown classification metric 'brier_fit'.*"
                                           r"jdl.metrics.register_metric"):
      jdl.load_run(tmp_path)
    register()
    assert jdl.evaluate(None, tmp_path) == pytest.approx(resumed.test_metrics, rel=1e-12)
    # A metric registered after training scores the run too, and a run resumed from
    # an epoch's end logs it from there on (its history NaN for the epochs before).
    jdl.metrics.register_metric("top_logit_fit", lambda logits, labels: logits.max(-1))
    other = config.copy_and_resolve_references()
    other.metrics = ("accuracy", "top_logit_fit")
    assert jdl.evaluate(other, tmp_path)["accuracy"] == resumed.test_metrics["accuracy"]
    other.num_epochs = 3
    more = jdl.fit(other, tmp_path, quiet=True)
    assert np.isnan(more.history["top_logit_fit"][:2]).all()
    assert np.isfinite(more.history["top_logit_fit"][2]) and "top_logit_fit" in more.test_metrics
    # A dropped metric: NaN from then on, so that every list has a value an epoch.
    assert more.history["brier_fit"][:2] == whole.history["brier_fit"]
    assert np.isnan(more.history["brier_fit"][2])
    assert {len(v) for v in more.history.values()} == {3}
  finally:
    for name in ("brier_fit", "balanced_fit", "top_logit_fit"):
      jdl.metrics.CUSTOM.pop(name, None)


_METRIC_CONFIG = """
import jax
import jax.numpy as jnp

import jdl
from jdl.config import base_config


def brier(logits, labels):
  p = jax.nn.softmax(logits)
  return jnp.sum(jnp.square(p - jax.nn.one_hot(labels, p.shape[-1], dtype=p.dtype)), axis=-1)


jdl.metrics.register_metric("brier_cfg", brier, better="min")


def get_config():
  config = base_config()
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.hidden = (16,)
  config.num_epochs = 1
  config.tensorboard = False
  config.plots = False
  config.metrics = ("accuracy", "brier_cfg")
  return config
"""


def test_a_config_file_registers_its_metric_for_the_command_line(tmp_path, capsys):
  from jdl import cli

  path = tmp_path / "with_metric.py"
  path.write_text(_METRIC_CONFIG)
  try:
    jdl.load_config(path)
    jdl.load_config(path)  # Executed again: the same code registers without replace=True.
    workdir = tmp_path / "run"
    assert cli.main(["train", "--config", str(path), "--workdir", str(workdir), "--quiet"]) == 0
    assert cli.main(["evaluate", "--config", str(path), "--workdir", str(workdir)]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    test = next(r for r in logged if r["split"] == "test")
    assert 0 < scores["brier_cfg"] == pytest.approx(test["brier_cfg"], rel=1e-9)
    # Without the file the metric is unknown, and the error says where to register it.
    jdl.metrics.CUSTOM.pop("brier_cfg")
    assert cli.main(["evaluate", "--workdir", str(workdir)]) == 2
    assert "in the get_config() file given to --config" in capsys.readouterr().err
  finally:
    jdl.metrics.CUSTOM.pop("brier_cfg", None)


def test_predict_and_explain_take_sequences_of_another_length():
  config = make_config(dataset="adding_problem", task="regression", loss="mse",
                       metrics=("mse",), normalize="none", n_samples=256, num_epochs=1,
                       model__name="seq_rnn", model__cell="gru", model__hidden=(8,),
                       sequence__seq_len=20)
  result = jdl.fit(config, None, quiet=True)
  short = np.asarray(result.trainer.data.test.x)[:4, :10]  # 10 steps, trained on 20.
  assert jdl.predict(result, short).shape == (4, 1)
  m = jdl.explain.from_run(result)
  np.testing.assert_allclose(m.logits(m.normalize(short)), jdl.predict(result, short),
                             rtol=1e-6)
  with pytest.raises(jdl.JdlError, match=r"inputs of shape \(4, 10, 7\) do not fit"):
    jdl.predict(result, np.zeros((4, 10, 7), np.float32))


def test_every_split_must_have_the_train_examples_shape(own_run):
  # (1, 8, 1) broadcasts against the train split's (8, 8, 1) statistics: without the
  # check it scored garbage with no error.
  narrow = X[500:, :1]
  for bad, split in (({"x_test": narrow}, "test"),
                     ({"x_val": narrow, "y_val": Y[500:]}, "val")):
    with pytest.raises(jdl.JdlError, match=rf"^dataset 'mine': x_{split} has examples of "
                       r"shape \(1, 8, 1\) but x_train has \(8, 8, 1\); they must match$"):
      jdl.fit(make_config(num_epochs=1), None, dataset=dataclasses.replace(MINE, **bad),
              quiet=True)
  with pytest.raises(jdl.JdlError, match=r"^dataset 'mine': input_shape is \(64,\) but "
                     r"x_train has examples of shape \(8, 8, 1\); they must match$"):
    jdl.fit(make_config(num_epochs=1), None,
            dataset=dataclasses.replace(MINE, input_shape=(64,)), quiet=True)
  _, result = own_run
  with pytest.raises(jdl.JdlError, match=r"predict needs inputs \[n, 8, 8, 1\].*"
                     r"got shape \(100, 1, 8, 1\)"):
    jdl.predict(result, narrow)


class _Embedder(nn.Module):
  """Takes integer ids."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(10)(nn.Embed(256, 2)(x).reshape(len(x), -1))


def test_integer_inputs_are_numbers_unless_fed_as_they_are():
  u8 = {k: np.clip(getattr(MINE, k) * 10 + 100, 0, 255).astype(np.uint8)
        for k in ("x_train", "x_test")}
  images = dataclasses.replace(MINE, **u8)
  floats = dataclasses.replace(MINE, **{k: v.astype(np.float32) for k, v in u8.items()})
  config = make_config(num_epochs=1)
  as_numbers = jdl.Trainer(config, None, dataset=images, quiet=True)
  reference = jdl.Trainer(config, None, dataset=floats, quiet=True)
  assert as_numbers.data.train.x.dtype == jnp.float32
  for split in ("train", "test"):  # Normalised as the same values in float32 are.
    np.testing.assert_array_equal(np.asarray(getattr(as_numbers.data, split).x),
                                  np.asarray(getattr(reference.data, split).x))
  np.testing.assert_array_equal(jdl.predict(as_numbers, u8["x_test"]),
                                jdl.predict(reference, u8["x_test"].astype(np.float32)))
  # Fed as they are (normalize='none'), they are ids, e.g. for an embedding.
  ids = jdl.Trainer(make_config(num_epochs=1, normalize="none"), None, dataset=images,
                    model=_Embedder(), quiet=True)
  assert ids.data.train.x.dtype == jnp.int32 and ids.normalizer is None
  with pytest.raises(jdl.JdlError, match=r"model _Embedder failed to initialise.*cast to "
                     r"float32 and normalised as numbers.*set normalize='none'"):
    jdl.Trainer(config, None, dataset=images, model=_Embedder(), quiet=True)
  # jdl's text models refuse float inputs rather than truncate normalised ids to
  # -1, 0 and 1 (which would train on noise without an error).
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 50, size=(120, 10))
  ids = jdl.data.Dataset(x_train=tokens[:100], y_train=tokens[:100, 0] % 2,
                         x_test=tokens[100:], y_test=tokens[100:, 0] % 2, num_classes=2,
                         task="classification", name="ids", input_shape=(10,))
  text = dict(model__name="text_rnn", model__vocab_size=50, model__embed_dim=4,
              model__hidden=(4,), batch_size=20, num_epochs=1)
  with pytest.raises(jdl.JdlError, match=r"TextClassifier takes integer token ids, got "
                     r"float32 inputs.*normalize='none'"):
    jdl.Trainer(make_config(**text), None, dataset=ids, quiet=True)
  as_ids = jdl.Trainer(make_config(normalize="none", **text), None, dataset=ids, quiet=True)
  assert as_ids.data.test.x.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(as_ids.data.test.x), tokens[100:])


def test_a_loss_of_the_wrong_shape_and_a_binary_loss_on_ten_classes_are_named():
  jdl.losses.register_loss("squared_outputs_test", lambda outputs, labels: outputs ** 2)
  try:
    with pytest.raises(jdl.JdlError, match=r"^loss must be per-example, shape \((\d+),\), "
                       r"got \(\1, 10\)"):
      jdl.fit(make_config(num_epochs=1, loss="squared_outputs_test"), None, quiet=True)
  finally:
    jdl.losses.LOSSES.pop("squared_outputs_test", None)
    jdl.losses.TASKS.pop("squared_outputs_test", None)
  # A given model's 10 outputs would otherwise be blamed on the targets' shape.
  with pytest.raises(jdl.JdlError, match=r"^loss 'binary_crossentropy' needs 2 classes \(one "
                     r"logit an example\); dataset 'mine' has 10$"):
    jdl.Trainer(make_config(num_epochs=1, loss="binary_crossentropy"), None, dataset=MINE,
                model=Tiny(), quiet=True)
  with pytest.raises(jdl.JdlError, match=r"unknown loss 'my_loss'; valid names: .*mse.* "
                     r"\(your own: jdl\.losses\.register_loss, in each process that trains, "
                     r"resumes or evaluates the run"):
    jdl.losses.check_task("my_loss", "classification")


def test_fit_refuses_keys_the_base_config_does_not_declare():
  config = jdl.base_config()  # Unlocked, as get_config() files build it.
  config.num_epoch = 7
  config.optimizer.lerning_rate = 0.5
  with pytest.raises(jdl.JdlError, match=r"^config sets .*, which jdl\.base_config\(\) does "
                     r"not declare \(a misspelt key\?\)") as e:
    jdl.fit(config, None, quiet=True)
  assert "'num_epoch'" in str(e.value) and "'optimizer.lerning_rate'" in str(e.value)
  config = jdl.base_config()
  config.model.my_width = 3  # model.* is the model's own.
  assert config_lib.unknown_keys(config) == []


def test_token_ids_beyond_a_text_models_vocabulary_are_named_before_training():
  # An id >= vocab_size embedded as NaN and was reported as a divergence at step 1;
  # a negative one read another row silently.
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 50, size=(120, 10))
  text = dict(model__name="text_rnn", model__embed_dim=4, model__hidden=(4,),
              batch_size=20, num_epochs=1, normalize="none")

  def trainer(train, test, vocab_size):
    ids = jdl.data.Dataset(x_train=train, y_train=train[:, 0] % 2, x_test=test,
                           y_test=test[:, 0] % 2, num_classes=2, task="classification",
                           name="ids", input_shape=(10,))
    return jdl.Trainer(make_config(model__vocab_size=vocab_size, **text), None,
                       dataset=ids, quiet=True)

  with pytest.raises(jdl.JdlError, match=r"^model.vocab_size=10, but the train inputs hold "
                     r"token ids in \[1, 49\] \(e.g. 49 in example \d+\); model.vocab_size "
                     r"must be at least 50$"):
    trainer(tokens[:100], tokens[100:], 10)
  negative = tokens[100:].copy()
  negative[3, 2] = -2
  with pytest.raises(jdl.JdlError, match=r"the test inputs hold token ids in \[-2, \d+\] "
                     r"\(e.g. -2 in example 3\); token ids are >= 0 \(0 is padding\)$"):
    trainer(tokens[:100], negative, 50)
  run = trainer(tokens[:100], tokens[100:], 50)
  assert run.model.vocab_size == 50
  # predict checked none of it: an id past the vocabulary gave NaN outputs, a negative
  # one another row's, and float inputs were cast to int32 (3.7 read as id 3).
  outputs = run.predict(tokens[100:])
  np.testing.assert_array_equal(run.predict(tokens[100:].astype(np.float32)), outputs)
  with pytest.raises(jdl.JdlError, match=r"^model.vocab_size=50, but the predict inputs hold "
                     r"token ids in \[-2, \d+\] \(e.g. -2 in example 3\); token ids are >= 0"):
    run.predict(negative)
  beyond = tokens[100:].copy()
  beyond[1, 0] = 50
  with pytest.raises(jdl.JdlError, match=r"the predict inputs hold token ids in \[\d+, 50\] "
                     r"\(e.g. 50 in example 1\); model.vocab_size must be at least 51$"):
    run.predict(beyond)
  fractional = tokens[100:].astype(np.float32)
  fractional[4, 5] = 3.7
  with pytest.raises(jdl.JdlError, match=r"^predict got inputs that are not whole numbers "
                     r"\(e.g. 3.7 in example 4\), but this run's inputs are token ids"):
    run.predict(fractional)


class Dense(nn.Module):
  """``features`` outputs of each input vector (on the digits' [N, 8, 8, 1], of each
  pixel: [N, 8, 8, features])."""
  features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.features)(x)


def test_a_metric_that_counts_padding_is_refused_before_training(tmp_path):
  # Regression targets given as [N] are [B, 1] in a batch, and mask is [B]: the
  # natural `mask * (p - t) ** 2` broadcasts to [B, B]. The run logged an RMSE
  # sqrt(batch_size) times too large, and monitored it, before.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 3)).astype(np.float32)
  y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
  data = jdl.data.Dataset(x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:],
                          num_classes=0, task="regression", name="lin", input_shape=(3,))

  def rmse(totals):
    return float(np.sqrt(totals["sq"] / totals["n"]))

  def per_example(p, t, mask):
    return {"sq": jnp.sum(mask[:, None].astype(p.dtype) * (p - t) ** 2), "n": jnp.sum(mask)}

  def broadcast(p, t, mask):
    return {"sq": jnp.sum(mask.astype(p.dtype) * (p - t) ** 2), "n": jnp.sum(mask)}

  config = make_config(task="regression", loss="mse", metrics=("mse", "rmse_own"),
                       num_epochs=1, batch_size=8, validation_split=0.0)
  model = Dense(1)
  try:
    jdl.metrics.register_metric("rmse_own", statistics=per_example, compute=rmse,
                                tasks=("regression",))
    result = jdl.fit(config, tmp_path / "good", dataset=data, model=model, quiet=True)
    pred = np.asarray(jdl.predict(result, x[48:]), np.float64)
    assert pred.shape == (12, 1)  # [N] targets are [N, 1] (documented in register_metric).
    np.testing.assert_allclose(result.test_metrics["rmse_own"],
                               np.sqrt(np.mean((pred[:, 0] - y[48:]) ** 2)), rtol=1e-5)
    jdl.metrics.register_metric("rmse_own", statistics=broadcast, compute=rmse,
                                tasks=("regression",), replace=True)
    with pytest.raises(jdl.JdlError, match=r"metric 'rmse_own': its statistics 'sq' count "
                                           r"examples that mask marks as padding"):
      jdl.fit(config, tmp_path / "bad", dataset=data, model=model, quiet=True)
    assert not (tmp_path / "bad" / "checkpoints").exists()
  finally:
    jdl.metrics.CUSTOM.pop("rmse_own", None)


def test_a_call_without_the_runs_dataset_is_refused_before_the_configs_is_built(tmp_path):
  # The module alone: jdl built config.dataset (digits) and fed it to the module,
  # and said "int labels of shape (32,) do not match logits of shape (32, 8, 8, 3)".
  rng = np.random.default_rng(0)
  x = rng.normal(size=(90, 5)).astype(np.float32)
  y = (x[:, :3].argmax(-1)).astype(np.int32)
  data = jdl.data.Dataset(x_train=x[:72], y_train=y[:72], x_test=x[72:], y_test=y[72:],
                          num_classes=3, task="classification", name="three", input_shape=(5,))
  jdl.fit(make_config(num_epochs=1), tmp_path, dataset=data, model=Dense(3), quiet=True)
  files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  refused = r"trained on a dataset passed to fit\(dataset=\.\.\.\) \('three'\); this call loads "
  for call, name in ((lambda: jdl.load_run(tmp_path, model=Dense(3)), "jdl.load_run"),
                     (lambda: jdl.evaluate(None, tmp_path, model=Dense(3)), "jdl.load_run"),
                     (lambda: jdl.fit(make_config(num_epochs=2), tmp_path, model=Dense(3),
                                      quiet=True), "fit")):
    with pytest.raises(jdl.JdlError, match=rf"{refused}'digits' from the config instead\. "
                                           rf"Pass the same dataset: {re.escape(name)}\(\.\.\., "
                                           r"dataset=\.\.\.\)$"):
      call()
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == files
  assert jdl.load_run(tmp_path, dataset=data, model=Dense(3)).step == 1


def _dataset(**changes):
  x, y = np.zeros((10, 3), np.float32), np.zeros(10, np.int32)
  fields = dict(x_train=x, y_train=y, x_test=x, y_test=y, num_classes=2,
                task="classification", name="m", input_shape=(3,))
  return jdl.data.Dataset(**{**fields, **changes})


class StopNow(cb.Callback):
  pass


class NoTrainArgument(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(x.reshape(len(x), -1))


def test_a_dataset_needs_only_its_train_split_and_for_classification_its_classes(tmp_path):
  x, y = X[:96].reshape(96, 64), Y[:96]
  data = jdl.data.Dataset(x_train=x, y_train=y, num_classes=10)
  assert (data.task, data.name, data.input_shape, data.x_test, data.y_test) == (
      "classification", "custom", (64,), None, None)
  result = jdl.fit(make_config(num_epochs=1), tmp_path, dataset=data, model=Tiny(),
                   quiet=True)
  assert result.test_metrics == {} and len(result.history["loss"]) == 1
  targets = x[:, :2] @ np.array([[1.0], [-2.0]], np.float32)
  reg = jdl.data.Dataset(x_train=x, y_train=targets, task="regression")
  assert (reg.num_classes, reg.input_shape) == (0, (64,))


class Outputs(nn.Module):
  """Returns ``make(Dense(width)(x))``: one logit a example, a tuple, a dict..."""
  width: int
  make: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.Dense(self.width)(x)
    return y if self.make is None else self.make(y)


def _fit_outputs(width, make=None, dataset=None, **config):
  return jdl.fit(make_config(num_epochs=1, batch_size=4, **config), dataset=dataset or _dataset(),
                 model=Outputs(width, make), quiet=True)


class Noisy(nn.Module):
  """Draws noise from a stream of its own: flax's InvalidRngError from inside a step."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape(len(x), -1)
    if train:
      x = x + jax.random.normal(self.make_rng("noise"), x.shape)
    return nn.Dense(10)(x)


@pytest.mark.parametrize("make, message", [
    # Each was a traceback from deep inside, or an error about something else.
    (lambda: _dataset(task="classfication"),
     r"^unknown task 'classfication': did you mean 'classification'\? valid names: "),
    (lambda: _dataset(task="regression", num_classes=3),
     r"^a regression dataset has num_classes=0, got 3"),
    (lambda: _dataset(x_train=[[0.0, 1.0, 2.0]] * 10),
     r"^x_train must be an array \(numpy, one row per example\), got list; convert it "),
    (lambda: _dataset(x_val=np.zeros((4, 3), np.float32)),
     r"^x_val is given without y_val: a split needs its inputs and targets$"),
    (lambda: jdl.fit(make_config(), dataset=(X, Y), quiet=True),
     r"^dataset must be a jdl\.data\.Dataset, got tuple: wrap the arrays as "),
    (lambda: jdl.fit(make_config(), model=Tiny, quiet=True),
     r"^model must be a module instance, got the class Tiny: pass Tiny\(\.\.\.\)$"),
    (lambda: jdl.fit(make_config(), callbacks=[StopNow], quiet=True),
     r"^callbacks hold a class, StopNow: pass an instance, StopNow\(\.\.\.\)$"),
    (lambda: jdl.fit(make_config(), callbacks=StopNow(), quiet=True),
     r"^callbacks must be a list of callbacks, got StopNow: pass \[callback\]$"),
    (lambda: jdl.fit(make_config(), callbacks=[print], quiet=True),
     r"^callbacks must be instances of jdl\.train\.callbacks\.Callback"),
    (lambda: jdl.fit(make_config(num_epochs=1), model=Noisy(), quiet=True),
     r"^the model draws random numbers from the stream 'noise', which jdl does not give: .*"
     r"draw with self\.make_rng\('dropout'\)$"),
    (lambda: jdl.losses.register_loss("one_arg_t", lambda p: p),
     r"^loss 'one_arg_t': fn is called as fn\(outputs, targets\), but its signature is "
     r"<lambda>\(p\)$"),
    (lambda: jdl.metrics.register_metric("two_args_t", statistics=lambda p, t: {},
                                         compute=lambda totals: 0.0),
     r"^metric 'two_args_t': statistics is called as statistics\(outputs, targets, mask\)"),
    (lambda: jdl.data.Dataset(x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int32)),
     r"^a classification dataset needs num_classes \(the number of classes: labels are "
     r"0 \.\. num_classes - 1\)$"),
    (lambda: jdl.fit(make_config(num_epochs=1), dataset=_dataset(
        task="regression", num_classes=0, y_train=np.zeros(10, np.float32)), quiet=True),
     r"^dataset 'm' is a regression dataset but config\.task is 'classification'; set "
     r"config\.task = 'regression' \(with a regression loss and metrics, e\.g\. "),
    (lambda: jdl.fit(make_config(num_epochs=1), model=NoTrainArgument(), quiet=True),
     r"got an unexpected keyword argument 'train'; jdl calls a model as "
     r"model\.apply\(variables, x, train=\.\.\.\): give its __call__ a train: bool = False "),
    (lambda: jdl.fit(make_config(num_epochs=1), dataset=_dataset(
        y_train=np.arange(10, dtype=np.int32) % 3), quiet=True),
     r"labels outside \[0, 2\) \(e\.g\. 2\); remap the labels to 0\.\.1 or, if there are 3 "
     r"classes, set num_classes=3$"),
    # One logit a example under the default softmax loss of 2 classes: NaN at step 1
    # and advice about learning rates; as [batch]: "labels (32,) do not match logits".
    (lambda: _fit_outputs(1),
     r"^model Outputs returns outputs of shape \(1,\) an example, but loss "
     r"'sparse_categorical_crossentropy' takes one logit per class: \[batch, 2\] for the 2 "
     r"classes of dataset 'm'; for one logit an example, set config\.loss="
     r"'binary_crossentropy'$"),
    (lambda: _fit_outputs(1, lambda y: y[:, 0]), r"^model Outputs returns outputs of shape "
     r"\(\) an example, but loss 'sparse_categorical_crossentropy' takes one logit per "),
    (lambda: _fit_outputs(3), r"^model Outputs returns outputs of shape \(3,\) an example, "
     r"but loss 'sparse_categorical_crossentropy' takes one logit per class: \[batch, 2\] "
     r"for the 2 classes of dataset 'm'$"),
    (lambda: _fit_outputs(2, loss="binary_crossentropy"), r"^model Outputs returns outputs of "
     r"shape \(2,\) an example; loss 'binary_crossentropy' takes one logit an example "),
    (lambda: _fit_outputs(2, dataset=_dataset(task="regression", num_classes=0,
                                              y_train=np.zeros(10, np.float32)),
                          task="regression", loss="mse", metrics=("mse",)),
     r"^model Outputs returns outputs of shape \(2,\) an example, but the dataset's targets "
     r"have 1 value an example \(loss 'mse' compares them one to one\)$"),
    # An AttributeError from inside jdl's step.
    (lambda: _fit_outputs(2, lambda y: (y, y)), r"^model Outputs returns a tuple \(2 arrays\); "
     r"jdl's loss 'sparse_categorical_crossentropy' and metrics take one array, the logits"),
    (lambda: _fit_outputs(2, lambda y: {"logits": y}), r"^model Outputs returns a dict \(1 "
     r"array\); jdl's loss "),
])
def test_a_users_mistake_is_one_error_naming_it(make, message):
  with pytest.raises(jdl.JdlError, match=message):
    make()
  assert "one_arg_t" not in jdl.losses.LOSSES and "two_args_t" not in jdl.metrics.CUSTOM


def test_one_logit_an_example_trains_with_a_binary_loss_and_any_width_with_ones_own():
  for make in (None, lambda y: y[:, 0]):  # [batch, 1] and [batch].
    assert set(_fit_outputs(1, make, loss="binary_crossentropy").test_metrics) == {
        "accuracy", "loss"}
  jdl.losses.register_loss("first_logit_t", lambda out, y: (out[:, 0] - y) ** 2,
                           replace=True)
  try:  # A registered loss takes whatever shape it takes.
    assert np.isfinite(_fit_outputs(5, loss="first_logit_t", metrics=()).test_metrics["loss"])
  finally:
    del jdl.losses.LOSSES["first_logit_t"], jdl.losses.TASKS["first_logit_t"]


def test_a_refused_resume_warns_about_nothing_else(tmp_path, capfd):
  # It printed "num_epochs is 3, the run had 1: its cosine schedule ..." first.
  jdl.fit(make_config(num_epochs=1, schedule__name="cosine"), tmp_path, dataset=MINE,
          quiet=True)
  shuffled = jdl.data.Dataset(**{**MINE.__dict__, "x_train": X[:500][::-1].copy()})
  capfd.readouterr()
  with pytest.raises(jdl.JdlError, match="trained on other data"):
    jdl.fit(make_config(num_epochs=3, schedule__name="cosine"), tmp_path, dataset=shuffled,
            quiet=True)
  assert capfd.readouterr().err == ""
  jdl.fit(make_config(num_epochs=2, schedule__name="cosine"), tmp_path, dataset=MINE,
          quiet=True)  # The same change, resumed: warned.
  assert "its cosine schedule now spans 2 epochs" in capfd.readouterr().err
