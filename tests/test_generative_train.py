"""Generative tasks on the one loop: autoencoders, VAE, GAN and WGAN-GP (8x8 digits)."""

from __future__ import annotations

import json
import types

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdl
from jdl import cli
from jdl.data import augment as augment_lib
from jdl.errors import JdlError
from jdl.generative import objectives
from jdl.generative import tasks as gen_tasks
from conftest import Crash, make_config


def vae_config(**over):
  return make_config(task="vae", normalize="none", metrics=(), model__name="vae",
                     model__hidden=(32,), model__latent=4, **over)


def ae_config(**over):
  return make_config(task="autoencoder", normalize="none", metrics=(),
                     model__name="dense_autoencoder", model__hidden=(32,), model__latent=8,
                     regularization__activity_include=".*code", **over)


def gan_config(task="gan", **over):
  return make_config(task=task, normalize="none", metrics=(), model__name="mlp_gan",
                     model__generator={"hidden": (32,)},
                     model__discriminator={"hidden": (32,)},
                     generative__latent_dim=8, monitor="", **over)


@pytest.mark.full_opt
def test_diagnostics_of_a_vae_run_and_train_it_bitwise_as_without(tmp_path):
  # The diagnostics' forward pass called the VAE without its sampling key: a
  # TypeError traceback at compile time.
  on = jdl.fit(vae_config(num_epochs=1, diagnostics__every_steps=5), tmp_path, quiet=True)
  off = jdl.fit(vae_config(num_epochs=1), quiet=True)
  chex.assert_trees_all_equal(jax.device_get(on.state.params), jax.device_get(off.state.params))
  lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  diags = [r for r in lines if r["split"] == "diagnostics"]
  assert [r["step"] for r in diags] == [5, 10, 15, 20]
  assert all(np.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in diags)


def test_vae_reports_the_negative_elbo_as_reconstruction_plus_kl():
  result = jdl.fit(vae_config(num_epochs=2), quiet=True)
  h = result.history
  for i in range(2):
    np.testing.assert_allclose(h["neg_elbo"][i], h["recon"][i] + h["kl"][i], rtol=1e-5)
  assert h["val_neg_elbo"][-1] < h["val_neg_elbo"][0]
  # The test value, recomputed by hand from the model and the objectives.
  trainer, state = result.trainer, result.state
  x = np.asarray(trainer.data.test.x)
  assert set(np.unique(x)) <= {0.0, 1.0}  # Binarized once, with a fixed key.
  # Each example draws its own noise: the state's key folded with a hash of its bits
  # (every batch drew the same noise rows: a noisier estimate that changed with
  # eval_batch_size, by 0.25 nats on MNIST).
  keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.fold_in(state.key, 2),
                                                          _murmur_sum(x))
  logits, mean, logvar = state.apply_fn(state.variables, x, key=keys)
  nelbo = objectives.bernoulli_nll(logits, x) + objectives.gaussian_kl(mean, logvar)
  np.testing.assert_allclose(result.test_metrics["neg_elbo"], np.mean(nelbo), rtol=1e-5)
  for size in (7, 360):  # Whatever the batches.
    trainer.eval_batch_size = size
    np.testing.assert_allclose(trainer.evaluate_split(trainer.data.test)["neg_elbo"],
                               result.test_metrics["neg_elbo"], rtol=1e-6)


def _murmur_sum(x: np.ndarray) -> np.ndarray:
  """numpy reference of the VAE's per-example hash: MurmurHash3's finaliser of each
  (bits xor position * golden ratio) word, summed mod 2**32, finalised again."""
  def mix(h):
    h = h.astype(np.uint64)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)
  words = x.reshape(len(x), -1).astype(np.float32).view(np.uint32).astype(np.uint64)
  position = (np.arange(words.shape[1], dtype=np.uint64) * 0x9E3779B9) & 0xFFFFFFFF
  return mix(mix(words ^ position).sum(axis=1) & 0xFFFFFFFF).astype(np.uint32)


def test_denoising_autoencoder_scores_noisy_inputs_against_clean_targets():
  config = ae_config(augment__noise_std=0.3)
  trainer = jdl.Trainer(config, None, quiet=True)
  np.testing.assert_array_equal(trainer.data.train.x, trainer.data.train.y)
  state = trainer.state
  idx = np.arange(64)
  batch = {"x": trainer.data.train.x[idx], "y": trainer.data.train.y[idx],
           "mask": jnp.ones((64,), jnp.float32)}
  _, metrics = trainer.train_step(state, batch)
  augment = augment_lib.make_train_augment(config.augment, trainer.data.input_shape)
  key = jax.random.fold_in(state.key, state.step)
  noisy = augment(jax.random.fold_in(key, 1), batch)["x"]
  assert float(jnp.max(jnp.abs(noisy - batch["x"]))) > 0.1
  logits = state.apply_fn(state.variables, noisy, train=True)
  expected = jnp.mean(objectives.bernoulli_nll(logits, batch["x"]))
  np.testing.assert_allclose(metrics["loss"]["sum"] / metrics["loss"]["count"], expected,
                             rtol=1e-5)


def test_a_mixup_autoencoders_training_mse_scores_the_mixed_image_it_reconstructs():
  # The training mse compared the reconstruction with the unmixed image, measuring the
  # mixing; the loss (rightly) scored the mixed one.
  config = ae_config(augment__mixup_alpha=1.0)
  trainer = jdl.Trainer(config, None, quiet=True)
  state = trainer.state
  batch = {"x": trainer.data.train.x[:64], "y": trainer.data.train.y[:64],
           "mask": jnp.ones((64,), jnp.float32)}
  _, metrics = trainer.train_step(state, batch)
  augment = augment_lib.make_train_augment(config.augment, trainer.data.input_shape)
  mixed = augment(jax.random.fold_in(jax.random.fold_in(state.key, state.step), 1), batch)
  lam = float(mixed["y"].lam)
  target = lam * np.asarray(mixed["y"].y_a) + (1 - lam) * np.asarray(mixed["y"].y_b)
  recon = np.asarray(jax.nn.sigmoid(state.apply_fn(state.variables, mixed["x"], train=True)))
  np.testing.assert_allclose(metrics["mse"]["sum"] / metrics["mse"]["count"],
                             np.mean((recon - target) ** 2), rtol=1e-5)
  assert abs(np.mean((recon - target) ** 2) - np.mean((recon - batch["x"]) ** 2)) > 1e-3
  np.testing.assert_allclose(
      metrics["loss"]["sum"] / metrics["loss"]["count"],
      np.mean(objectives.bernoulli_nll(state.apply_fn(state.variables, mixed["x"], train=True),
                                       jnp.asarray(target, jnp.float32))), rtol=1e-5)


def test_an_autoencoders_predict_is_the_logits_its_test_loss_scores():
  # As the README says: sigmoid(predict(x)) is the reconstruction.
  result = jdl.fit(ae_config(num_epochs=1), quiet=True)
  x = np.asarray(result.trainer.data.test.x)
  logits = jdl.predict(result, x)
  assert logits.shape == x.shape and logits.min() < 0 < logits.max()  # Not probabilities.
  np.testing.assert_allclose(np.mean(objectives.bernoulli_nll(jnp.asarray(logits), x)),
                             result.test_metrics["loss"], rtol=1e-5)


def test_sparse_autoencoder_penalises_the_sown_code():
  plain = jdl.Trainer(ae_config(), None, quiet=True)
  sparse = jdl.Trainer(ae_config(regularization__activity_l1=0.01), None, quiet=True)
  x = plain.data.train.x[:64]
  batch = {"x": x, "y": x, "mask": jnp.ones((64,), jnp.float32)}
  state = plain.state
  key = jax.random.key(0)
  loss_plain, _ = plain.task.loss_fn(state.params, state.model_state, batch, key, True)
  loss_sparse, _ = sparse.task.loss_fn(state.params, state.model_state, batch, key, True)
  code = state.apply_fn(state.variables, x, method="encode")
  np.testing.assert_allclose(loss_sparse - loss_plain,
                             0.01 * np.sum(np.abs(code)) / 64, rtol=1e-4)


def test_gan_resume_is_bitwise_exact(tmp_path):
  # WGAN-GP with n_critic 3: both players, both optimizer states, the generator's
  # batch statistics and the cond-skipped generator steps all resume exactly.
  config = gan_config("wgan_gp", num_epochs=1, checkpoint_every_steps=8, epoch_mode="scan",
                      scan_chunk=4, generative__d_steps=3)
  full = jdl.fit(config, tmp_path / "full", quiet=True)
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, tmp_path / "resumed", quiet=True, callbacks=[Crash(at_step=9)])
  resumed = jdl.fit(config, tmp_path / "resumed", quiet=True)
  assert int(resumed.state.step) == int(full.state.step) == 20
  parts = lambda s: jax.device_get((s.params, s.opt_state, s.model_state, s.step,  # noqa: E731
                                    jax.random.key_data(s.key)))
  chex.assert_trees_all_equal(parts(full.state), parts(resumed.state))
  assert resumed.history == full.history
  # Both players' parameters export.
  assert cli.main(["export", "--workdir", str(tmp_path / "full"), "--out",
                   str(tmp_path / "p.npz")]) == 0
  names = np.load(tmp_path / "p.npz").files
  assert any(n.startswith("generator") for n in names)
  assert any(n.startswith("discriminator") for n in names)


@pytest.mark.full_opt
def test_a_gan_in_static_loops_gets_the_while_loops_bits(monkeypatch):
  # A GPU's blocks loop a known number of times, padding rows' steps discarded
  # (strategy.static_loops): both players, their optimizer states and the generator's
  # skipped steps (n_critic 3) must come out as in the while loop, with a padded last
  # block (20 steps in blocks of 6).
  from jdl.train import strategy
  config = gan_config("wgan_gp", num_epochs=1, epoch_mode="scan", scan_chunk=6,
                      generative__d_steps=3)
  loop = jdl.fit(config, quiet=True)
  monkeypatch.setattr(strategy, "static_loops", lambda backend=None: True)
  scan = jdl.fit(config, quiet=True)
  assert scan.trainer.static_loops and scan.trainer.padded_blocks
  assert int(scan.state.step) == int(loop.state.step) == 20
  parts = lambda s: jax.device_get((s.params, s.opt_state, s.model_state))  # noqa: E731
  chex.assert_trees_all_equal(parts(scan.state), parts(loop.state))
  assert scan.history == loop.history


def test_generator_updates_once_every_d_steps_and_the_critic_is_logged():
  result = jdl.fit(gan_config("wgan_gp", num_epochs=1, generative__d_steps=3), quiet=True)
  state = result.state
  counts = {player: [int(x) for x in jax.tree.leaves(state.opt_state[player])
                     if jnp.issubdtype(x.dtype, jnp.integer)] for player in state.opt_state}
  assert set(counts["discriminator"]) == {20}
  assert set(counts["generator"]) == {20 // 3}
  h = result.history
  for name in ("critic_loss", "wasserstein", "gradient_penalty", "g_loss"):
    assert np.isfinite(h[name][0]), name
  assert h["gradient_penalty"][0] >= 0
  assert h["loss"] == h["critic_loss"]  # The critic's objective is the run's loss.


def test_sampling_is_a_function_of_the_key():
  trainer = jdl.Trainer(gan_config(), None, quiet=True)
  a = trainer.sample(8, key=jax.random.key(1))
  b = trainer.sample(8, key=jax.random.key(1))
  c = trainer.sample(8, key=jax.random.key(2))
  chex.assert_shape(a, (8, 8, 8, 1))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.min() >= 0 and a.max() <= 1


def test_gan_is_scored_by_a_jdl_classifier(tmp_path, capsys, monkeypatch):
  clf = jdl.fit(make_config(num_epochs=4, optimizer__learning_rate=1e-2), tmp_path / "clf",
                quiet=True)
  assert clf.test_metrics["accuracy"] > 0.9
  result = jdl.fit(gan_config(num_epochs=1, generative__eval_samples=200,
                              generative__classifier_workdir=str(tmp_path / "clf")),
                   tmp_path / "gan", quiet=True)
  test = result.test_metrics
  assert 1.0 <= test["inception_score"] <= 10.0
  assert test["frechet_distance"] > 0
  judge = result.trainer.judge()
  real = np.asarray(result.trainer.data.test.x)
  from jdl.generative import judge as judge_lib
  same = judge_lib.scores(judge, real, real)
  assert same["frechet_distance"] < 1e-6 * max(1.0, test["frechet_distance"])
  one = judge_lib.scores(judge, np.repeat(real[:1], 100, axis=0), real)
  assert one["inception_score"] == pytest.approx(1.0, abs=1e-6)
  assert same["inception_score"] > 3 * one["inception_score"]
  # A VAE's samples are scored by the same judge.
  vae = jdl.fit(vae_config(num_epochs=1, generative__eval_samples=200,
                           generative__classifier_workdir=str(tmp_path / "clf")),
                tmp_path / "vae", quiet=True)
  assert 1.0 <= vae.test_metrics["inception_score"] <= 10.0
  assert vae.test_metrics["frechet_distance"] > 0
  # Its grey decoder means are compared with the grey test images, not with the
  # once-binarized ones its ELBO is scored on (FD 69.8 instead of 58.5 on MNIST).
  split, seen = vae.trainer.data.test, []
  assert set(np.unique(np.asarray(split.x))) <= {0.0, 1.0}
  monkeypatch.setattr(judge_lib, "scores", lambda judge, fake, real: seen.append(real) or {})
  vae.trainer.generative_scores(split)
  assert len(np.unique(seen[0])) > 2  # Grey: the images the binary ones were drawn from.
  np.testing.assert_array_equal(gen_tasks.binarize_eval_inputs(seen[0]), split.x)
  capsys.readouterr()  # A classifier's run does not sample: one clear line, exit 2.
  assert cli.main(["sample", "--workdir", str(tmp_path / "clf"), "--out",
                   str(tmp_path / "x.png")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "only VAE and GAN" in err


def test_cli_evaluate_and_sample_a_vae_run(tmp_path, capsys):
  vae = tmp_path / "vae"
  jdl.fit(vae_config(num_epochs=1), vae, quiet=True)
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(vae)]) == 0
  line = json.loads(capsys.readouterr().out)
  assert line["neg_elbo"] > 0 and line["neg_elbo"] == pytest.approx(line["recon"] + line["kl"])
  # The train split is scored as val and test are: on one fixed binary draw of its grey
  # images (they were scored grey, as no Bernoulli targets).
  train = jdl.evaluate(vae, split="train")
  trainer = jdl.load_run(vae)
  images = np.asarray(trainer.data.train.x)
  assert len(np.unique(images)) > 2
  binary = jdl.data.pipeline.Split(jnp.asarray(gen_tasks.binarize_eval_inputs(images)),
                                   trainer.data.train.y, images=images)
  assert train["neg_elbo"] == pytest.approx(trainer.evaluate_split(binary)["neg_elbo"], rel=1e-6)
  assert train["neg_elbo"] != pytest.approx(trainer.evaluate_split(trainer.data.train)["neg_elbo"],
                                            rel=1e-6)
  # The binarisation decides the test inputs: another one is refused, not scored.
  other = "none" if vae_config().generative.binarize != "none" else "threshold"
  assert cli.main(["evaluate", "--workdir", str(vae), f"--config.generative.binarize={other}"]) == 2
  assert "generative.binarize" in capsys.readouterr().err
  out = tmp_path / "grid.png"
  assert cli.main(["sample", "--workdir", str(vae), "--n", "16", "--out", str(out)]) == 0
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # A key keeps 32 bits of its seed: 2**32 drew seed 0's images. Refused, as -1.
  capsys.readouterr()
  for seed in (2**32, -1):
    assert cli.main(["sample", "--workdir", str(vae), "--out", str(out), "--seed",
                     str(seed)]) == 2
    assert f"--seed must be in [0, 2**32), as config.seed, got {seed}" in capsys.readouterr().err


@pytest.mark.parametrize("over, message", [
    ({"normalize": "global"}, "normalize='none'"),
    ({"metrics": ("accuracy",)}, "not a metric of task 'vae'"),
    ({"model__name": "mlp"}, "needs model.name in vae"),
    ({"generative__binarize": "coin"}, "generative.binarize"),
    ({"generative__eval_samples": 10**7}, r"generative.eval_samples must be <= 100,000"),
    # inf passed the config's check and failed in GANTask, not naming the key.
    ({"task": "wgan_gp", "model__name": "mlp_gan", "generative__gp_weight": float("inf")},
     r"generative.gp_weight must be >= 0 and finite, got inf"),
])
def test_bad_generative_configs_get_one_clear_error(over, message):
  base = dict(task="vae", normalize="none", metrics=(), model__name="vae",
              model__hidden=(8,), model__latent=2)
  base.update(over)
  with pytest.raises(JdlError, match=message):
    jdl.Trainer(make_config(**base), None, quiet=True)


def test_gan_rejects_what_it_cannot_honour():
  with pytest.raises(JdlError, match="does not support reduce_on_plateau"):
    jdl.Trainer(gan_config(reduce_on_plateau__enabled=True), None, quiet=True)
  # No pattern could pass both the players' optimizers and the run's check.
  with pytest.raises(JdlError, match="does not support optimizer.freeze"):
    jdl.Trainer(gan_config(optimizer__freeze=("generator/hidden_0",)), None, quiet=True)
  # 20 steps an epoch: with d_steps=21 some epochs would have no generator update
  # (their g_loss 0/0), so it is refused before anything is written.
  with pytest.raises(JdlError, match=r"d_steps=21 exceeds the 20 train steps of an epoch"):
    jdl.Trainer(gan_config("wgan_gp", generative__d_steps=21), None, quiet=True)
  jdl.Trainer(gan_config("wgan_gp", generative__d_steps=20), None, quiet=True)


def test_a_wgan_gp_critic_with_batch_norm_is_refused_before_anything_is_written(tmp_path):
  config = make_config(task="wgan_gp", normalize="none", metrics=(), model__name="dcgan",
                       model__generator={"features": (8,), "kernel_size": 3},
                       model__discriminator={"features": (8, 8), "kernel_size": 3,
                                             "norm": "batch"},  # Not after the first.
                       generative__latent_dim=4, monitor="")
  with pytest.raises(JdlError, match="WGAN-GP critic must not keep batch statistics"):
    jdl.Trainer(config, tmp_path / "run", quiet=True)
  assert not (tmp_path / "run").exists()
  with pytest.raises(JdlError, match="batch statistics"):  # The library's own guard.
    gen_tasks.check_critic({"batch_stats": {}})


class _ModeScaledCritic(flax.linen.Module):
  """``f(x) = <w, x>``, doubled in training mode: its input gradient is ``w`` or ``2w``."""

  @flax.linen.compact
  def __call__(self, x, train: bool = False):
    w = self.param("w", lambda _, shape: jnp.full(shape, 0.1), (x[0].size,))
    return x.reshape(x.shape[0], -1) @ w * (2.0 if train else 1.0)


def test_the_gradient_penalty_is_that_of_the_critic_in_training_mode():
  # The critic loss trains f in training mode (dropout on), so the penalty must
  # constrain that f: (||2w|| - 1)^2 here, not the inference critic's (||w|| - 1)^2.
  critic = _ModeScaledCritic()
  x = jnp.ones((3, 4, 4, 1))
  params = critic.init(jax.random.key(0), x)["params"]
  task = gen_tasks.GANTask(kind="wgan_gp", latent_dim=2, d_steps=1, gp_weight=10.0,
                           metric_names=())
  state = types.SimpleNamespace(discriminator=critic)
  fake = jax.random.uniform(jax.random.key(1), x.shape)
  _, (parts, _) = task._d_loss(state, params, {}, x, fake, jax.random.key(2))
  norm = 2 * 0.1 * np.sqrt(16)
  np.testing.assert_allclose(parts["gradient_penalty"], (norm - 1) ** 2 * np.ones(3),
                             rtol=1e-6)


@pytest.mark.parametrize("fields, message", [
    ({"kind": "wgan"}, "kind must be 'gan' or 'wgan_gp', got 'wgan'"),
    ({"d_steps": 0}, "d_steps must be an integer >= 1, got 0"),
    ({"latent_dim": 2.0}, "latent_dim must be an integer >= 1, got 2.0"),
    ({"gp_weight": -1.0}, "gp_weight must be >= 0 and finite, got -1.0"),
])
def test_a_gan_task_of_the_python_api_refuses_bad_fields(fields, message):
  kwargs = {"kind": "wgan_gp", "latent_dim": 2, **fields}
  with pytest.raises(JdlError, match=message.replace("(", r"\(").replace(")", r"\)")):
    gen_tasks.GANTask(**kwargs)
  # numpy scalars are numbers; a bool is not a weight.
  gen_tasks.GANTask(kind="gan", latent_dim=np.int64(8), d_steps=np.int32(2),
                    gp_weight=np.float32(10))
  with pytest.raises(JdlError, match="gp_weight must be >= 0 and finite, got True"):
    gen_tasks.GANTask(kind="gan", latent_dim=2, gp_weight=True)


def test_metric_groups_are_exact_means():
  mask = jnp.array([1.0, 1.0, 0.0])
  g = gen_tasks.mean_group(jnp.array([1.0, 3.0, 100.0]), mask)
  assert gen_tasks.compute(["m"], {"m": g}) == {"m": 2.0}


def test_scores_of_shape_batch_by_one_are_one_value_an_example():
  # Broadcast against the [batch] mask, [batch, 1] scores were summed batch times.
  mask = jnp.array([1.0, 1.0, 0.0])
  g = gen_tasks.mean_group(jnp.array([[1.0], [3.0], [100.0]]), mask)
  assert gen_tasks.compute(["m"], {"m": g}) == {"m": 2.0}
  g = gen_tasks.mean_group(jnp.array([[1.0, 3.0], [5.0, 7.0], [9.0, 9.0]]), mask)
  assert gen_tasks.compute(["m"], {"m": g}) == {"m": 4.0}  # Means (2, 6) of the two.


class _ColumnCritic(flax.linen.Module):
  """A discriminator of [batch, 1] logits, as a user would write one."""

  @flax.linen.compact
  def __call__(self, x, train=False):
    h = flax.linen.Dense(16)(x.reshape(x.shape[0], -1))
    return flax.linen.Dense(1)(flax.linen.leaky_relu(h, 0.2))


def test_a_discriminator_of_column_logits_gets_probabilities_in_its_metrics():
  from jdl.models.gan import MLPGenerator
  model = (MLPGenerator(output_shape=(8, 8, 1), hidden=(16,)), _ColumnCritic())
  result = jdl.fit(gan_config(num_epochs=1), None, quiet=True, model=model)
  for name in ("d_real", "d_fake", "val_d_real", "val_d_fake"):
    assert 0 <= result.history[name][0] <= 1, (name, result.history[name])


def test_a_gans_max_norm_pattern_is_matched_per_player():
  # Each player's optimizer projects its own 'hidden_0/kernel'; a pattern with the
  # player's name in it matches no path an optimizer sees, so it is an error.
  trainer = jdl.Trainer(gan_config(num_epochs=1, regularization__max_norm=0.05,
                                   regularization__max_norm_include="hidden_0/kernel"),
                        quiet=True)
  result = trainer.fit()
  for player in ("generator", "discriminator"):
    kernel = np.asarray(result.state.params[player]["hidden_0"]["kernel"], np.float64)
    assert np.linalg.norm(kernel, axis=0).max() <= 0.05 * (1 + 1e-5)
  with pytest.raises(jdl.JdlError, match="max_norm_include='generator/hidden_0/kernel'"):
    jdl.Trainer(gan_config(regularization__max_norm=0.05,
                           regularization__max_norm_include="generator/hidden_0/kernel"),
                quiet=True)


def test_a_judge_that_cannot_score_the_run_is_said_before_training(tmp_path, capfd):
  # A warning, not an error: the run (and its resume) goes on, unscored.
  jdl.fit(make_config(dataset="iris", num_epochs=1, batch_size=16), tmp_path / "iris",
          quiet=True)
  for workdir, message in ((tmp_path / "iris", "classifier of inputs (4,), but this run "
                                               "generates (8, 8, 1)"),
                           (tmp_path / "none", "holds no jdl run (no config.json); train one "
                                               "there first: `jdl train --config NAME")):
    capfd.readouterr()
    result = jdl.fit(gan_config(num_epochs=1, generative__classifier_workdir=str(workdir)),
                     tmp_path / f"gan_{workdir.name}", quiet=True)
    err = capfd.readouterr().err
    said = [line for line in err.splitlines() if "scored" in line]
    assert len(said) == 1 and "will not be scored" in said[0], err  # Once, before training.
    assert message in said[0]
    assert "inception_score" not in result.test_metrics
  # Nor its evaluation (it failed, with no metrics at all): the same line, and a way out.
  capfd.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path / "gan_none")]) == 0
  out, err = capfd.readouterr()
  said = [line for line in err.splitlines() if "will not be scored" in line]
  assert len(said) == 1 and "--config.generative.classifier_workdir= leaves the scores out" \
      in said[0], err
  assert json.loads(out) == result.test_metrics


def _digits(scale, dtype):
  from sklearn import datasets
  b = datasets.load_digits()
  x = (b.images[..., None] * scale).astype(dtype)
  return jdl.data.Dataset(x_train=x[:1500], y_train=b.target[:1500].astype(np.int32),
                          x_test=x[1500:], y_test=b.target[1500:].astype(np.int32),
                          num_classes=10, task="classification", name="digits16",
                          input_shape=(8, 8, 1))


@pytest.mark.parametrize("config", [ae_config, vae_config, gan_config], ids=["ae", "vae", "gan"])
def test_generative_tasks_refuse_pixels_outside_the_unit_interval(tmp_path, config):
  # Digits in [0, 16] gave an autoencoder a test loss of -14.9 (a Bernoulli
  # likelihood has no bound there); uint8 images were read as token ids.
  for scale, dtype, words in ((1.0, np.float32, r"values from 0 to 16; scale them to \[0, 1\]"),
                              (15.9, np.uint8, "holds uint8 values; scale them")):
    with pytest.raises(JdlError, match=words):
      jdl.fit(config(), tmp_path / "run", dataset=_digits(scale, dtype), quiet=True)
    assert not (tmp_path / "run").exists()
  jdl.Trainer(config(), None, dataset=_digits(1 / 16, np.float32), quiet=True)


def test_streamed_generative_data_is_checked_too(tmp_path):
  x = np.zeros((40, 4, 4, 1), np.float32)
  x[3, 1, 1, 0] = 1.5
  for name, a in dict(x_train=x, y_train=np.arange(40) % 2).items():
    np.save(tmp_path / f"{name}.npy", a)
  with pytest.raises(JdlError, match="x_train holds values from 0 to 1.5"):
    jdl.Trainer(ae_config(dataset="npy_dir", data_dir=str(tmp_path)), None, quiet=True)


def test_gan_test_scores_do_not_depend_on_the_eval_batch_size():
  # One fake batch of eval_batch_size rows was scored against every test batch: the
  # split's g_loss was an estimate over 8 fakes with batches of 8, 360 with 360.
  scores = [jdl.fit(gan_config(num_epochs=1, eval_batch_size=ebs), None, quiet=True).test_metrics
            for ebs in (8, 360)]
  assert scores[0].keys() == scores[1].keys()
  for name in scores[0]:
    assert scores[0][name] == pytest.approx(scores[1][name], rel=1e-5), name


class _NaNGradientGenerator(nn.Module):
  """Finite images, a NaN gradient for its parameter ``p`` (0 * d sqrt(p)/dp at 0)."""

  @nn.compact
  def __call__(self, z, train=False):
    p = self.param("p", nn.initializers.zeros, (1,))
    return (nn.sigmoid(nn.Dense(16)(z)) + 0.0 * jnp.sqrt(p)).reshape(z.shape[0], 4, 4, 1)


@pytest.mark.parametrize("skip", [True, False], ids=["apply_if_finite", "plain"])
def test_a_skipped_gan_step_leaves_both_players_as_they_were(skip):
  from jdl.generative.gan import GANTask, create_gan_state
  from jdl.models.gan import DCGANDiscriminator
  x = jax.random.uniform(jax.random.key(5), (6, 4, 4, 1))
  # nonfinite='skip' wraps each optimizer in apply_if_finite; 'stop' (the default)
  # does not, and the loop stops at the step: its state must still be the old one.
  tx = lambda: optax.apply_if_finite(optax.adam(0.1), 10) if skip else optax.adam(0.1)  # noqa: E731
  disc = DCGANDiscriminator(features=(4, 8), kernel_size=3, norm="batch")
  state = create_gan_state(_NaNGradientGenerator(), disc, tx(), tx(), x, 3, key=jax.random.key(0))
  new, metrics = jax.jit(GANTask(kind="gan", latent_dim=3).train_step)(
      state, {"x": x, "mask": jnp.ones(6)})
  assert int(metrics["nonfinite"]["count"]) == 1
  # The discriminator's gradients were finite: its update (parameters, Adam's
  # moments, batch statistics) is undone, not only its batch statistics.
  for part in ("params", "opt_state", "model_state"):
    chex.assert_trees_all_equal(getattr(new, part)["discriminator"],
                                getattr(state, part)["discriminator"])
  chex.assert_trees_all_equal(new.params["generator"], state.params["generator"])
  if skip:  # The generator's own optimizer skipped it and counted the skip.
    assert int(new.opt_state["generator"].notfinite_count) == 1
  else:  # No NaN moments kept beside the old parameters.
    chex.assert_trees_all_equal(new.opt_state["generator"], state.opt_state["generator"])


def test_padding_rows_do_not_move_a_gan_step():
  from jdl.generative.gan import GANTask, create_gan_state
  from jdl.models.gan import MLPDiscriminator, MLPGenerator
  x = jax.random.uniform(jax.random.key(5), (6, 4, 4, 1))
  gen = MLPGenerator(output_shape=(4, 4, 1), hidden=(8,), batch_norm=False)
  state = create_gan_state(gen, MLPDiscriminator(hidden=(8,)), optax.sgd(0.1),
                           optax.sgd(0.1), x, 3, key=jax.random.key(0))
  task, mask = GANTask(kind="gan", latent_dim=3, d_steps=1), jnp.array([1, 1, 1, 0, 0, 0.0])
  a, _ = task.train_step(state, {"x": x.at[3:].set(x[0]), "mask": mask})
  b, _ = task.train_step(state, {"x": x.at[3:].set(0.0), "mask": mask})
  chex.assert_trees_all_close(a.params, b.params, atol=0)


def test_two_gan_steps_equal_a_hand_written_reference():
  # Written from the formulas: the discriminator's step on the batch against fakes of
  # noise z_d (-log sigmoid(D(real)) - log(1 - sigmoid(D(fake)))), then, every
  # d_steps-th step, the generator's non-saturating step (-log sigmoid(D(G(z_g))))
  # against the discriminator just updated, with its own noise z_g; the noise of
  # step t from fold_in(state.key, t) split in four (z_d the first, z_g the third).
  from jdl.generative.gan import GANTask, create_gan_state
  from jdl.models.gan import MLPDiscriminator, MLPGenerator
  x = jax.random.uniform(jax.random.key(5), (6, 4, 4, 1))
  gen = MLPGenerator(output_shape=(4, 4, 1), hidden=(8,), batch_norm=False)
  disc = MLPDiscriminator(hidden=(8,))
  lr_g, lr_d = 0.3, 0.2
  state = create_gan_state(gen, disc, optax.sgd(lr_g), optax.sgd(lr_d), x, 3,
                           key=jax.random.key(0))
  task = GANTask(kind="gan", latent_dim=3, d_steps=2, metric_names=("g_loss",))
  G = lambda p, z: gen.apply({"params": p}, z, train=True)  # noqa: E731
  D = lambda p, v: disc.apply({"params": p}, v, train=True)  # noqa: E731
  g, d = state.params["generator"], state.params["discriminator"]
  jdl_state = state
  for t in range(2):
    k_z, _, k_z2, _ = jax.random.split(jax.random.fold_in(state.key, t), 4)
    z_d, z_g = (jax.random.normal(k, (6, 3)) for k in (k_z, k_z2))
    fake = G(g, z_d)
    d_loss = lambda p: jnp.mean(jax.nn.softplus(-D(p, x)) + jax.nn.softplus(D(p, fake)))  # noqa: E731
    loss, grads = jax.value_and_grad(d_loss)(d)
    d = jax.tree.map(lambda w, gr: w - lr_d * gr, d, grads)
    g_loss = lambda p: jnp.mean(jax.nn.softplus(-D(d, G(p, z_g))))  # noqa: E731
    if t == 1:  # (t + 1) % d_steps == 0
      expected_g_loss, g_grads = jax.value_and_grad(g_loss)(g)
      g = jax.tree.map(lambda w, gr: w - lr_g * gr, g, g_grads)
    jdl_state, metrics = task.train_step(jdl_state, {"x": x, "mask": jnp.ones(6)})
    np.testing.assert_allclose(metrics["loss"]["sum"] / metrics["loss"]["count"], loss,
                               rtol=1e-6)
    chex.assert_trees_all_close(jdl_state.params["discriminator"], d, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(jdl_state.params["generator"], g, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(metrics["g_loss"]["sum"] / metrics["g_loss"]["count"],
                             expected_g_loss, rtol=1e-6)


class _OwnVAE(nn.Module):
  """A user's VAE; ``per_example_keys=False`` draws eps from one key only."""
  latent: int = 3
  per_example_keys: bool = True

  def setup(self):
    self.enc, self.mu, self.lv = nn.Dense(16), nn.Dense(self.latent), nn.Dense(self.latent)
    self.dec = nn.Dense(64)

  def decode(self, z):
    return self.dec(z).reshape(z.shape[0], 8, 8, 1)

  def generate(self, z):
    return nn.sigmoid(self.decode(z))

  def __call__(self, x, *, key, train=False):
    h = nn.relu(self.enc(x.reshape(x.shape[0], -1)))
    mean, logvar = self.mu(h), self.lv(h)
    if self.per_example_keys and key.ndim == 1:
      eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(key)
    else:
      eps = jax.random.normal(key, mean.shape)
    return self.decode(mean + jnp.exp(logvar / 2) * eps), mean, logvar


def test_a_users_vae_module_is_checked_against_the_tasks_contract(tmp_path):
  # It failed after its first epoch with "normal accepts a single key, but was given
  # a key array of shape (64,)", then with AttributeError 'latent' when sampling.
  config = vae_config(num_epochs=1)
  with pytest.raises(JdlError, match=r"_OwnVAE: a VAE module .* \[batch\] keys.*failed with"):
    jdl.fit(config, tmp_path / "a", model=_OwnVAE(per_example_keys=False), quiet=True)
  assert not (tmp_path / "a").exists()

  class NoGenerate(_OwnVAE):
    generate = None

  with pytest.raises(JdlError, match="needs a 'latent' field .* a generate"):
    jdl.Trainer(config, None, model=NoGenerate(), quiet=True)
  result = jdl.fit(config, tmp_path / "b", model=_OwnVAE(), quiet=True)
  assert np.isfinite(result.test_metrics["loss"])


class _OneLogit(nn.Module):
  """A binary classifier of one logit: z = 4 * (mean pixel - 0.5)."""

  @nn.compact
  def __call__(self, x, train=False):
    self.sow("intermediates", "act_0", x.reshape(x.shape[0], -1))
    return 4.0 * (x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True) - 0.5)


def test_a_one_logit_judge_scores_the_two_classes():
  # softmax over one column made every probability 1: an Inception Score of 1 always.
  from jdl.generative import judge as judge_lib
  judge = judge_lib.Judge(_OneLogit().apply, {}, lambda x: x, batch_size=8)
  images = np.zeros((40, 2, 2, 1), np.float32)
  images[1::2] = 1.0  # Dark and bright in turn: each of IS's 10 splits holds 2 of each.
  probs, _ = judge(images)
  p = 1 / (1 + np.exp(-2.0))  # sigmoid(4 * 0.5).
  np.testing.assert_allclose(probs, [[p, 1 - p], [1 - p, p]] * 20, rtol=1e-6)
  # Two equally likely classes: IS = exp(mean KL(p(y|x) || p(y))), p(y) = (1/2, 1/2).
  kl = p * np.log(2 * p) + (1 - p) * np.log(2 * (1 - p))
  got = judge_lib.scores(judge, images, images)["inception_score"]
  assert got == pytest.approx(np.exp(kl), rel=1e-5)
