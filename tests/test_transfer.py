"""Transfer learning: class subsets, initialisation from a checkpoint, frozen layers."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

import jdl
from jdl.data import pipeline

from conftest import make_config

CNN = dict(model__name="cnn", model__features=(8, 16), model__dense=(32,))


def test_select_classes_and_limit_per_class():
  x = np.arange(20, dtype=np.float32)[:, None]
  y = np.arange(20) % 5
  xs, ys = pipeline.select_classes(x, y, (3, 1))
  assert sorted(set(ys.tolist())) == [0, 1]
  np.testing.assert_array_equal(xs[ys == 0, 0] % 5, 3)
  xl, yl = pipeline.limit_per_class(x, y, 2, seed=0)
  assert np.bincount(yl).tolist() == [2, 2, 2, 2, 2]


def test_init_from_errors(tmp_path):
  with pytest.raises(jdl.JdlError, match="holds no checkpoints"):
    jdl.Trainer(make_config(init_from__workdir=str(tmp_path)), quiet=True)
  jdl.fit(make_config(num_epochs=1), tmp_path / "mlp", quiet=True)
  with pytest.raises(jdl.JdlError, match="no parameter of this model matches"):
    jdl.Trainer(make_config(init_from__workdir=str(tmp_path / "mlp"), **CNN), quiet=True)
  with pytest.raises(jdl.JdlError, match="has shape"):
    jdl.Trainer(make_config(init_from__workdir=str(tmp_path / "mlp"), model__hidden=(16,)),
                quiet=True)
  with pytest.raises(jdl.JdlError, match="classes"):
    jdl.Trainer(make_config(classes=(3, 3)), quiet=True)


def test_transfer_mnist_driver_tiny_run(tmp_path, capsys):
  """experiments/transfer_mnist.py --tiny: pretrain on digits 0-4, then fine-tune (convs
  frozen at the pretrained values) and train from scratch on 5-9."""
  import importlib.util
  from pathlib import Path
  path = Path(__file__).resolve().parents[1] / "experiments" / "transfer_mnist.py"
  spec = importlib.util.spec_from_file_location("transfer_mnist", path)
  driver = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(driver)
  rows = driver.main(["--tiny", "--workdir", str(tmp_path)])
  assert [row["examples per class"] for row in rows] == list(driver.TINY_REGIMES)
  assert "| examples per class (5-9) |" in capsys.readouterr().out
  table = (tmp_path / "results" / "table.md").read_text()
  assert table.startswith("| examples per class (5-9) |") and "| 20 | 4 |" in table
  assert all(row["from scratch s"] > 0 for row in rows)  # Training time, from the log.
  source, tuned = jdl.load_run(tmp_path / "pretrain"), jdl.load_run(tmp_path / "20-finetune")
  assert source.data.num_classes == 5
  # 20 examples a class, before the validation split takes its rows.
  held = [np.bincount(np.asarray(split.y), minlength=5) for split in (tuned.data.train,
                                                                      tuned.data.val)]
  assert (held[0] + held[1]).tolist() == [20] * 5, held
  pre, fine = jax.device_get(source.state.params), jax.device_get(tuned.state.params)
  scratch = jdl.load_run(tmp_path / "20-scratch").state.params
  for conv in ("conv_0", "conv_1"):  # Copied, then frozen.
    np.testing.assert_array_equal(fine[conv]["kernel"], pre[conv]["kernel"])
    assert not np.array_equal(scratch[conv]["kernel"], pre[conv]["kernel"])
  assert not np.array_equal(pre["mlp"]["hidden_0"]["kernel"],
                            fine["mlp"]["hidden_0"]["kernel"])  # Copied, then trained.
  assert fine["mlp"]["head"]["kernel"].shape == (32, 5)
  # What the fine-tuning run copied from the pretrained one (the head is excluded).
  finetune = jdl.load_config(tmp_path / "20-finetune" / "config.json")
  copied = set(jdl.Trainer(finetune, None, quiet=True).init_from_copied)
  assert {"conv_0/kernel", "mlp/hidden_0/kernel"} <= copied
  assert not any(name.startswith("mlp/head/") for name in copied), copied


def test_init_from_brings_batch_norm_statistics_and_refuses_uncopied_frozen_layers(
    tmp_path, capsys):
  # Only the parameters were copied: a frozen pretrained batch-norm layer kept its
  # initial running statistics (mean 0, var 1) and evaluated with them for good.
  bn = dict(CNN, model__batch_norm=True)
  source = jdl.fit(make_config(classes=(0, 1, 2, 3, 4), num_epochs=1, **bn), tmp_path / "pre",
                   quiet=True)
  # Statistics go with their layer: here its scale and bias are named, not them.
  finetune = make_config(classes=(5, 6, 7, 8, 9), num_epochs=1, init_from__workdir=str(
      tmp_path / "pre"), init_from__include=r"conv_\d+/.*|bn_\d+/(scale|bias)|mlp/(hidden|bn)_.*",
                         optimizer__freeze=("conv_0", "bn_0"), **bn)
  trainer = jdl.Trainer(finetune, None)
  stats, pre = jax.device_get(trainer.state.model_state), jax.device_get(
      source.state.model_state)
  for name in ("mean", "var"):
    np.testing.assert_array_equal(stats["batch_stats"]["bn_0"][name],
                                  pre["batch_stats"]["bn_0"][name])
  assert not np.allclose(pre["batch_stats"]["bn_0"]["var"], 1.0)
  assert "batch_stats/bn_0/mean" in trainer.init_from_copied
  out = capsys.readouterr().out
  assert "kept their initial values: mlp/head/bias, mlp/head/kernel" in out
  # The fine-tuned run reads its own checkpoint, without the source run.
  jdl.fit(finetune, tmp_path / "fine", quiet=True)
  shutil.move(tmp_path / "pre", tmp_path / "gone")
  assert "accuracy" in jdl.evaluate(None, tmp_path / "fine")
  finetune.num_epochs = 2  # And resumes without it (nothing copied, nothing said).
  jdl.fit(finetune, tmp_path / "fine")
  assert "init_from" not in capsys.readouterr().out
  shutil.move(tmp_path / "gone", tmp_path / "pre")
  # A frozen layer the source lacks would stay at its random initial value.
  wider = make_config(num_epochs=1, init_from__workdir=str(tmp_path / "pre"),
                      init_from__exclude=r"mlp/.*", optimizer__freeze=(r"conv_\d+",),
                      **dict(CNN, model__features=(8, 16, 8)))
  with pytest.raises(jdl.JdlError, match=r"conv_2/bias, conv_2/kernel are frozen .* not in"):
    jdl.Trainer(wider, None, quiet=True)


def test_a_class_subsets_confusion_plot_names_the_datasets_classes(tmp_path, monkeypatch):
  # classes=(5, ..., 9) are relabelled 0..4 to train; the plot named them 0..4.
  from pathlib import Path

  import matplotlib.figure

  from jdl.train import plots
  ticks, real_savefig = {}, matplotlib.figure.Figure.savefig

  def savefig(fig, path, *args, **kwargs):
    ax = fig.axes[0]
    ticks[Path(path).name] = ([t.get_text() for t in ax.get_xticklabels()],
                              [t.get_text() for t in ax.get_yticklabels()])
    return real_savefig(fig, path, *args, **kwargs)
  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
  jdl.fit(make_config(classes=(5, 6, 7, 8, 9), num_epochs=1, plots=True), tmp_path / "run",
          quiet=True)
  assert ticks["confusion_test.png"] == (["5", "6", "7", "8", "9"],) * 2
  plots.plot_confusion(np.eye(3, dtype=np.int64), tmp_path / "default.png")
  assert ticks["default.png"] == (["0", "1", "2"],) * 2
  with pytest.raises(jdl.JdlError, match=r"^plot_confusion got 2 labels for a matrix of 3 "
                                         r"classes; give one label a class"):
    plots.plot_confusion(np.eye(3, dtype=np.int64), tmp_path / "bad.png", labels=(5, 6))
