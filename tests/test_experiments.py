"""The course experiments against closed forms and independent references.

Each experiment config runs end to end (shortened where noted); XOR is checked
against the hand-built solution of Goodfellow et al. (Deep Learning, sec. 6.1),
linear regression against the normal equations, iris against scikit-learn.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import data, models

from conftest import SHARED_MNIST


def _quiet(config, **overrides):
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  config.tensorboard = False
  config.plots = False
  return config


def test_xor_hand_solution_computes_xor_exactly():
  # h = relu(x W + c), y = h w + b with W=[[1,1],[1,1]], c=[0,-1], w=[1,-2], b=0.
  model = models.MLP(num_outputs=1, hidden=(2,), activation="relu")
  x = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float32)
  variables = model.init(jax.random.key(0), x)
  params = jax.tree.map(np.asarray, variables["params"])
  assert set(params) == {"hidden_0", "head"}
  params["hidden_0"] = {"kernel": np.array([[1.0, 1.0], [1.0, 1.0]], np.float32),
                        "bias": np.array([0.0, -1.0], np.float32)}
  params["head"] = {"kernel": np.array([[1.0], [-2.0]], np.float32),
                    "bias": np.array([0.0], np.float32)}
  out = model.apply({"params": params}, x)
  np.testing.assert_array_equal(np.asarray(out)[:, 0], [0.0, 1.0, 1.0, 0.0])


def test_xor_experiment_learns_xor():
  result = jdl.fit(_quiet(jdl.load_config("xor")), quiet=True)
  assert result.test_metrics["accuracy"] == 1.0
  assert result.test_metrics["loss"] < 0.1


def test_linear_regression_matches_the_normal_equations():
  config = _quiet(jdl.load_config("linear_regression"))
  dataset = data.load_dataset("linear", test_split=float(config.test_split), seed=0)
  result = jdl.fit(config, dataset=dataset, quiet=True)
  x = np.asarray(dataset.x_train, np.float64)
  y = np.asarray(dataset.y_train, np.float64).reshape(len(x), -1)
  # The trainer holds out no validation data here, so it trained on all of x.
  design = np.hstack([x, np.ones((len(x), 1))])
  closed = np.linalg.solve(design.T @ design, design.T @ y)  # (X^T X)^-1 X^T y
  params = jax.device_get(result.state.params)["head"]
  np.testing.assert_allclose(params["kernel"], closed[:-1], atol=2e-3)
  np.testing.assert_allclose(params["bias"], closed[-1], atol=2e-3)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # scikit-learn API transitions.
def test_iris_mlp_and_logistic_regression_on_the_same_split():
  from sklearn.linear_model import LogisticRegressionCV
  config = _quiet(jdl.load_config("iris"))
  result = jdl.fit(config, quiet=True)
  dataset = data.load_dataset("iris", test_split=0.4, seed=0)
  assert len(dataset.x_test) == 60
  clf = LogisticRegressionCV(max_iter=5000).fit(dataset.x_train, dataset.y_train)
  reference = clf.score(dataset.x_test, dataset.y_test)
  print(f"iris: MLP {result.test_metrics['accuracy']:.4f}, LogisticRegressionCV {reference:.4f}")
  assert reference >= 0.9
  assert result.test_metrics["accuracy"] >= reference - 0.05


@pytest.mark.parametrize("name", ["digits_mlp", "digits_cnn"])
def test_digits_experiments_run(name):
  config = _quiet(jdl.load_config(name), num_epochs=2)
  result = jdl.fit(config, quiet=True)
  assert result.test_metrics["accuracy"] > 0.6


# resnet20_mnist: its config trains in test_architectures_tiny_run_... with a narrow
# ResNet, and its full network's parameter count is checked there.
@pytest.mark.parametrize("name", ["mnist_mlp", "mnist_cnn", "lenet5_mnist", "vgg_mnist"])
def test_mnist_configs_build_on_mnist_shaped_npz(name, tmp_path):
  # The MNIST configs run unchanged on any IDX/npz data of the same shape.
  rng = np.random.default_rng(0)
  x = rng.random((96, 28, 28, 1), dtype=np.float32)
  y = np.arange(96) % 10
  np.savez(tmp_path / "d.npz", x=x, y=y)
  config = _quiet(jdl.load_config(name), num_epochs=1, batch_size=32, dataset="npz",
                  data_dir=str(tmp_path / "d.npz"))
  trainer = jdl.Trainer(config, quiet=True)
  if name == "lenet5_mnist":
    assert jdl.count_params(trainer.state.params) == 61_706
  result = trainer.fit()
  assert int(result.state.step) == trainer.steps_per_epoch >= 1
  # The reported accuracy is jdl.predict's on the raw test split of the file.
  test = data.load_dataset("npz", data_dir=tmp_path / "d.npz", test_split=config.test_split,
                           seed=config.seed)
  logits = jdl.predict(result, test.x_test)
  np.testing.assert_allclose(result.test_metrics["accuracy"],
                             np.mean(logits.argmax(axis=1) == test.y_test), rtol=0, atol=1e-6)


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="../shared/data/mnist not present")
def test_mnist_mlp_one_epoch_on_real_mnist():
  config = _quiet(jdl.load_config("mnist_mlp"), num_epochs=1, data_dir=str(SHARED_MNIST))
  result = jdl.fit(config, quiet=True)
  assert result.test_metrics["accuracy"] > 0.95


@pytest.mark.parametrize("name, params", [
    # 784-256-64-256-784 dense autoencoder; 784-500-(20, 20) VAE with 20-500-784 decoder.
    ("ae_mnist", 2 * (784 * 256 + 256 * 64) + 256 + 64 + 256 + 784),
    ("vae_mnist", 784 * 500 + 500 + 2 * (500 * 20 + 20) + 20 * 500 + 500 + 500 * 784 + 784),
])
def test_generative_configs_build_on_mnist_shaped_npz(name, params, tmp_path):
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "d.npz", x=rng.random((96, 28, 28, 1), dtype=np.float32),
           y=np.arange(96) % 10)
  config = _quiet(jdl.load_config(name), batch_size=32, dataset="npz",
                  data_dir=str(tmp_path / "d.npz"))
  assert jdl.count_params(jdl.Trainer(config, quiet=True).state.params) == params


def test_configs_importing_siblings_do_not_clash_with_same_named_modules(tmp_path, monkeypatch):
  # experiments/gan_mnist.py (a driver) and experiments/configs/gan_mnist.py (a config
  # that dcgan_mnist imports) share a name; loading one never breaks the other.
  import sys
  (tmp_path / "gan_mnist.py").write_text("DRIVER = True\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  monkeypatch.delitem(sys.modules, "gan_mnist", raising=False)
  import gan_mnist
  assert jdl.load_config("wgan_gp_mnist").task == "wgan_gp"
  assert sys.modules["gan_mnist"] is gan_mnist and gan_mnist.DRIVER
  assert "dcgan_mnist" not in sys.modules
