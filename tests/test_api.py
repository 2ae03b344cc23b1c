"""The public surface: every exported name imports and is what it claims to be."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

import conftest

PUBLIC = {
    "jdl": ["fit", "evaluate", "predict", "Trainer", "FitResult", "TrainState",
            "create_train_state", "make_train_step", "make_eval_step", "SupervisedTask",
            "Checkpointer", "base_config", "load_config", "count_params", "param_table",
            "JdlError", "data", "losses", "metrics", "models", "optim", "regularizers",
            "diagnostics", "sanity", "lr_finder", "explain", "generative", "load_run", "sequence",
            "checkpoint", "config", "errors", "summary", "train", "Callback",
            "EarlyStopping"],
    "jdl.models": ["MLP", "CNN", "LeNet5", "VGG", "InceptionBlock", "InceptionNet", "ResNet",
                   "ResNet20", "ResNet18", "create_model", "get_activation", "get_initializer",
                   "get_head_initializer", "DenseAutoencoder", "ConvAutoencoder", "VAE",
                   "MLPGenerator", "MLPDiscriminator", "DCGANGenerator", "DCGANDiscriminator",
                   "SimpleRNNCell", "LSTMCell", "GRUCell", "RNN", "Bidirectional", "StackedRNN",
                   "Embedding", "TextClassifier", "Conv1DText", "SequenceRegressor", "Seq2Seq",
                   "EncoderOutput"],
    "jdl.sequence": ["greedy_decode", "beam_search", "DecodeResult", "BeamResult"],
    "jdl.losses": ["mse", "mae", "huber", "binary_crossentropy", "categorical_crossentropy",
                   "sparse_categorical_crossentropy", "squared_hinge", "kl_divergence",
                   "get_loss"],
    "jdl.metrics": ["empty", "from_outputs", "merge", "compute", "validate_names"],
    "jdl.optim": ["create_optimizer", "create_learning_rate_fn", "kernel_mask",
                  "update_plateau", "current_learning_rate", "default_config"],
    "jdl.regularizers": ["penalty", "activity_penalty", "max_norm", "project_max_norm",
                         "rules_from_config", "validate_config", "KERNELS"],
    "jdl.diagnostics": ["grad_norm", "update_ratios", "histogram", "dead_relu_fraction",
                        "saturation_fraction", "compute_diagnostics"],
    "jdl.sanity": ["run_checks", "check_initial_loss", "check_overfit", "check_gradients",
                   "check_nonzero_gradients", "check_data"],
    "jdl.lr_finder": ["find_lr", "lr_schedule", "smooth_losses", "suggest_lr", "plot_lr_finder"],
    "jdl.explain": ["saliency", "integrated_gradients", "lime", "lime_tabular", "lime_image",
                    "save_overlay", "save_overlay_grid", "from_run"],
    "jdl.generative": ["bernoulli_nll", "gaussian_kl", "reparameterize",
                       "gan_discriminator_loss", "gan_generator_loss", "wgan_critic_loss",
                       "wgan_generator_loss", "gradient_penalty", "inception_score",
                       "frechet_distance", "frechet_distance_from_stats", "image_grid",
                       "save_image_grid", "save_reconstructions", "save_interpolation",
                       "save_latent_scatter", "save_roc_curve", "save_curves", "Judge",
                       "GANState", "GANTask", "TASKS", "create_gan_state"],
    "jdl.data": ["Dataset", "load_dataset", "read_idx", "validate_arrays", "DATASETS",
                 "StreamDataset", "NpyRows"],
}


@pytest.mark.parametrize("module,names", sorted(PUBLIC.items()))
def test_public_names_import(module, names):
  mod = importlib.import_module(module)
  missing = [n for n in names if not hasattr(mod, n)]
  assert not missing, f"{module} lacks {missing}"


def test_jdl_trains_modules_are_reached_from_import_jdl_alone():
  # `import jdl; jdl.train.callbacks.Callback` was an AttributeError until something
  # had imported jdl.train.callbacks (jdl.fit, say).
  code = ("import jdl, sys\n"
          "assert 'jdl.train.callbacks' not in sys.modules\n"
          "assert jdl.train.callbacks.Callback is jdl.Callback\n"
          "assert jdl.train.callbacks.EarlyStopping is jdl.EarlyStopping\n"
          "assert jdl.train.reopen.load_run is jdl.load_run\n"
          "assert 'callbacks' in dir(jdl.train)\n"
          "try:\n  jdl.train.nothing\nexcept AttributeError as e:\n"
          "  assert str(e) == \"module 'jdl.train' has no attribute 'nothing'\"\n"
          "else:\n  raise AssertionError\n")
  subprocess.run([sys.executable, "-c", code], check=True, env=conftest.cli_env(),
                 timeout=120)


def test_jdl_errors_are_value_errors():
  import jdl
  assert issubclass(jdl.JdlError, ValueError)


def test_readme_example_runs(tmp_path):
  """The Python example of the README, shortened to one epoch."""
  import jdl
  config = jdl.load_config("digits_mlp")
  config.num_epochs = 1
  result = jdl.fit(config, workdir=tmp_path, quiet=True)
  # The reported accuracy is that of jdl.predict on the raw test split the run drew.
  dataset = jdl.data.load_dataset("digits", test_split=config.test_split, seed=config.seed)
  logits = jdl.predict(result, dataset.x_test)
  assert logits.shape == (len(dataset.y_test), 10)
  np.testing.assert_allclose(result.test_metrics["accuracy"],
                             np.mean(logits.argmax(axis=1) == dataset.y_test), rtol=0, atol=1e-6)
  probs = jdl.predict(result, jdl.data.load_dataset("digits").x_test[:5])
  assert probs.shape == (5, 10)
  # A workdir is a run too (its one epoch is its best state): the same outputs.
  np.testing.assert_array_equal(jdl.predict(tmp_path, dataset.x_test), logits)
  np.testing.assert_array_equal(jdl.predict(str(tmp_path), dataset.x_test[:3]), logits[:3])
  # The run's own (read-only) config reads it too: load_run edits a copy of it.
  assert jdl.evaluate(result.trainer.config, tmp_path) == result.test_metrics


def test_readme_own_data_example_runs(tmp_path, monkeypatch):
  """The README's "your own data, module and loss" block, as written, on a synthetic
  3-class set, with the loss it registers trained too."""
  import optax

  import jdl
  readme = (conftest.REPO / "README.md").read_text()
  start = readme.index("```python", readme.index("Your own data, module and loss")) + 9
  block = readme[start:readme.index("```", start)]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1000, 20)).astype(np.float32)
  namespace = {"jdl": jdl, "X": x, "y": x[:, :3].argmax(1).astype(np.int32),
               "focal": lambda o, t: optax.softmax_cross_entropy_with_integer_labels(o, t)}
  monkeypatch.chdir(tmp_path)
  try:
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    assert namespace["logits"].shape == (200, 3)
    assert namespace["result"].test_metrics["accuracy"] > 0.5  # Chance: 1/3.
    assert (tmp_path / "runs" / "mine" / "checkpoints").is_dir()
    config = namespace["config"]
    config.num_epochs = 1
    focal = jdl.fit(config, None, dataset=namespace["data"], model=namespace["MyModule"](),
                    quiet=True)
    assert np.isfinite(focal.history["loss"][0])
  finally:  # The registry is the process's: later tests on this worker must not see it.
    jdl.losses.LOSSES.pop("focal", None)
    jdl.losses.TASKS.pop("focal", None)


def test_readme_callback_example_runs(tmp_path, monkeypatch, capsys):
  """The README's custom callback, as written, on two epochs of digits_mlp: it stops
  the run at its target, and its state_dict is in the checkpoints a resume reads."""
  import jdl
  readme = (conftest.REPO / "README.md").read_text()
  start = readme.index("```python", readme.index("Your own callbacks subclass")) + 9
  block = readme[start:readme.index("```", start)]
  config = jdl.load_config("digits_mlp")
  config.num_epochs = 3
  namespace = {"jdl": jdl, "config": config}
  monkeypatch.chdir(tmp_path)
  exec(compile(block.replace("StopAtAccuracy(0.95)", "StopAtAccuracy(0.5)"), "README.md",
               "exec"), namespace)  # noqa: S102 (our own README)
  result = namespace["result"]
  assert result.stopped is None and len(result.history["loss"]) == 1  # 0.5 at epoch 1.
  assert "None" in capsys.readouterr().out
  meta = jdl.Checkpointer(tmp_path / "runs" / "callbacks" / "checkpoints").restore_meta(
      result.trainer.step)
  assert meta["callbacks"]["StopAtAccuracy"] == {"epochs": 1}
  # The stop ended the run, as early stopping's does: a re-run trains nothing (it
  # trained an epoch more each time), and the callback's state is restored.
  again = namespace["StopAtAccuracy"](0.999)
  rerun = jdl.fit(config, tmp_path / "runs" / "callbacks", callbacks=[again], quiet=True)
  assert again.epochs == 1 and rerun.history == result.history
  assert rerun.trainer.step == result.trainer.step


@pytest.mark.parametrize("module", sorted({*PUBLIC, "jdl.lr_finder", "jdl.regularizers",
                                           "jdl.sanity", "jdl.checkpoint", "jdl.config",
                                           "jdl.train.callbacks", "jdl.summary"}))
def test_every_public_module_declares_its_surface(module):
  import inspect
  mod = importlib.import_module(module)
  assert hasattr(mod, "__all__"), module
  assert [n for n in mod.__all__ if not hasattr(mod, n)] == []
  assert set(PUBLIC.get(module, ())) <= set(mod.__all__)
  # Each exported function and class says what it is. Class docstrings are not inherited;
  # a dataclass or NamedTuple without one gets its signature, "Name(field, ...)".
  undocumented = [n for n in mod.__all__ if (inspect.isfunction(getattr(mod, n))
                                             or inspect.isclass(getattr(mod, n)))
                  and (not (getattr(mod, n).__doc__ or "").strip()
                       or getattr(mod, n).__doc__.startswith(f"{n}("))]
  assert undocumented == [], module


def _modules_with_examples() -> list[str]:
  import pkgutil

  import jdl
  names = []
  for info in pkgutil.walk_packages(jdl.__path__, "jdl."):
    spec = importlib.util.find_spec(info.name)
    lines = open(spec.origin, encoding="utf-8").read().splitlines() if spec and spec.origin else []
    if any(">>>" in line and "+SKIP" not in line for line in lines):  # Not only skipped ones.
      names.append(info.name)
  return names


EXAMPLES = _modules_with_examples()


def test_docstring_examples_are_found():
  # The walk itself: a package renamed away would otherwise test nothing.
  assert {"jdl.losses", "jdl.metrics", "jdl.models", "jdl.sequence.text"} <= set(EXAMPLES)


@pytest.mark.parametrize("module", EXAMPLES)
def test_docstring_examples_run(module):
  # The examples of the documentation are the code's: pytest runs only tests/.
  import doctest
  failed, attempted = doctest.testmod(importlib.import_module(module),
                                      optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert attempted >= 1 and failed == 0


def _jdl_imports(path) -> set[str]:
  """The jdl modules a source file imports, at its top or inside a function (a lazy
  import is a dependency too): ``from jdl import x`` counts as ``jdl.x``. jdl imports
  absolutely; a relative import is returned as ``'.'`` + its module, which no rule
  allows."""
  import ast
  from pathlib import Path
  found: set[str] = set()
  for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.split(".")[0] == "jdl"}
    elif isinstance(node, ast.ImportFrom) and node.level:
      found.add("." * node.level + (node.module or ""))
    elif isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "jdl":
      found |= {f"{node.module}.{a.name}" for a in node.names}
  return found


def _floor_violations() -> dict[str, list[str]]:
  """ARCHITECTURE's floors (principle 5): models, losses, metrics and regularizers
  import nothing of jdl but its errors and the shared registry helpers, their own
  package aside; checkpoint.py nothing but errors (it saves any PyTree, knowing nothing
  of training); and nothing imports the CLI, the top floor, but the package's lazy
  name table."""
  base = {"jdl.errors", "jdl._registry"}
  rules = {"jdl.models": base, "jdl.losses": base, "jdl.metrics": base,
           "jdl.regularizers": base, "jdl.checkpoint": {"jdl.errors"}}
  bad = {}
  for path in sorted((conftest.REPO / "jdl").rglob("*.py")):
    parts = path.relative_to(conftest.REPO).with_suffix("").parts
    module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    imports = _jdl_imports(path)
    floor = next((f for f in rules if module == f or module.startswith(f + ".")), None)
    wrong = [] if floor is None else sorted(
        i for i in imports
        if not (i == floor or i.startswith(floor + ".")
                or any(i == a or i.startswith(a + ".") for a in rules[floor])))
    if module != "jdl":
      wrong += sorted(i for i in imports if i == "jdl.cli" or i.startswith("jdl.cli."))
    wrong += sorted(i for i in imports if i.startswith(".") and i not in wrong)
    if wrong:
      bad[module] = wrong
  return bad


def test_lower_floors_import_no_upper_floor():
  # The reading itself: imports at the top and inside functions (the CLI's are lazy).
  jdl_dir = conftest.REPO / "jdl"
  assert "jdl.errors.JdlError" in _jdl_imports(jdl_dir / "train" / "callbacks.py")
  assert any(i.startswith("jdl.train.loop") for i in _jdl_imports(jdl_dir / "cli.py"))
  assert any(i.startswith("jdl.models") for i in _jdl_imports(jdl_dir / "models" / "mlp.py"))
  assert _floor_violations() == {}


def test_an_installed_copy_of_jdl_finds_its_named_experiments(tmp_path):
  """A wheel holds jdl/ with experiments/configs copied into jdl/_configs (pyproject's
  package-dir), and no checkout beside it: the named experiments, and a config that
  imports its sibling, load from the copy."""
  import shutil
  import tomllib
  setuptools = tomllib.loads((conftest.REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
  packages = sorted("jdl" + "".join(f".{part}" for part in p.parent.relative_to(
      conftest.REPO / "jdl").parts) for p in (conftest.REPO / "jdl").rglob("__init__.py"))
  assert sorted(setuptools["packages"]) == sorted([*packages, "jdl._configs"])
  assert setuptools["package-dir"] == {"jdl._configs": "experiments/configs"}
  assert "py.typed" in setuptools["package-data"]["jdl"]

  site = tmp_path / "site-packages"  # As pip lays the wheel out.
  shutil.copytree(conftest.REPO / "jdl", site / "jdl",
                  ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copytree(conftest.REPO / "experiments" / "configs", site / "jdl" / "_configs",
                  ignore=shutil.ignore_patterns("__pycache__"))
  probe = ("import jdl, jdl.config as c; "
           "print(c.CONFIG_DIR); print(len(c.list_experiments())); "
           "print(jdl.load_config('mnist_fast').model.name)")
  out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                       text=True, env={**conftest.cli_env(), "PYTHONPATH": str(site)},
                       timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  where, count, model = out.stdout.split()
  expected = sorted(p.stem for p in (conftest.REPO / "experiments" / "configs").glob("*.py")
                    if not p.name.startswith("_"))
  assert where == str(site / "jdl" / "_configs") and int(count) == len(expected) > 20
  import jdl
  assert model == jdl.load_config("mnist_fast").model.name


def test_readme_explain_example_runs(tmp_path, monkeypatch):
  """The README's attribution block, as written, on one epoch of digits_mlp: integrated
  gradients from the black image (the default baseline, 0, is the mean image once
  normalised) and the overlay PNG."""
  import jdl
  readme = (conftest.REPO / "README.md").read_text()
  start = readme.index("```python", readme.index("Attributions for a trained run")) + 9
  block = readme[start:readme.index("```", start)]
  config = jdl.load_config("digits_mlp")
  config.num_epochs = 1
  result = jdl.fit(config, None, quiet=True)
  x_new = jdl.data.load_dataset("digits").x_test[:3]
  namespace = {"jdl": jdl, "np": np, "result": result, "x_new": x_new}
  monkeypatch.chdir(tmp_path)
  exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
  ig, m = namespace["ig"], namespace["m"]
  black = m.logits(m.normalize(np.zeros_like(x_new)))
  np.testing.assert_allclose(ig.baseline_output,
                             np.asarray(black)[np.arange(3), ig.target], rtol=1e-5, atol=1e-6)
  assert (tmp_path / "ig.png").stat().st_size > 1000
