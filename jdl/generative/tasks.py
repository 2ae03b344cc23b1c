"""Generative tasks on jdl's one loop: autoencoders, VAE, GAN and WGAN-GP.

Autoencoders and the VAE are single-model tasks: they plug into the supervised
step (:func:`jdl.train.steps.make_train_step`) with their own loss, so
augmentation (the denoising autoencoder's input noise), penalties (the sparse
autoencoder's L1 activity penalty on the sown ``code``), clipping, non-finite
handling and exact resume are the supervised ones. GANs are two-player: a
:class:`GANState` holds both players and :class:`GANTask` supplies its own step,
one compiled call for a discriminator update and, every ``d_steps`` steps, a
generator update.

Metrics are mergeable ``{name: {"sum", "count"}}`` groups (:func:`mean_group`),
so epoch values are exact means over examples, as for the supervised metrics.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jdl import regularizers
from jdl.data import augment as augment_lib
from jdl.data import pipeline
from jdl.errors import JdlError
from jdl.generative import objectives
from jdl.generative.gan import GANState
from jdl.generative.gan import GANTask
from jdl.generative.gan import check_critic
from jdl.generative.gan import create_gan_state
from jdl.generative.stats import compute
from jdl.generative.stats import mean_group
from jdl.generative.stats import example_keys
from jdl.train import steps as steps_lib

TASKS = ("autoencoder", "vae", "gan", "wgan_gp")
BINARIZE = ("dynamic", "threshold", "none")

METRICS = {
    "autoencoder": ("mse",),
    "vae": ("neg_elbo", "recon", "kl"),
    "gan": ("d_loss", "g_loss", "d_real", "d_fake"),
    "wgan_gp": ("critic_loss", "wasserstein", "gradient_penalty", "g_loss"),
}
# What eval steps report: a GAN's training-only quantities are left out.
EVAL_METRICS = {**METRICS, "wgan_gp": ("wasserstein", "g_loss")}

__all__ = ["TASKS", "METRICS", "EVAL_METRICS", "GANState", "GANTask", "ReconstructionTask",
           "VAETask", "check_critic", "compute", "create_gan_state", "create_models", "make_gan_task",
           "make_task", "mean_group", "metric_names", "sample_images", "validate_config"]


def metric_names(task: str, requested) -> tuple[str, ...]:
  """The metrics a generative task reports: all of them, or the requested subset."""
  valid = METRICS[task]
  for name in requested:
    if name not in valid:
      raise JdlError(f"{name!r} is not a metric of task {task!r}; its metrics are "
                     f"{', '.join(valid)} (set config.metrics=() for all of them)")
  return tuple(requested) or valid


# ------------------------------------------------------------ autoencoders
@dataclasses.dataclass(frozen=True)
class ReconstructionTask(steps_lib.SupervisedTask):
  """An autoencoder: targets are the (clean) inputs, outputs are pixel logits.

  The loss is the Bernoulli negative log-likelihood summed over pixels (Keras's
  binary cross-entropy times the number of pixels); ``mse`` is the mean squared
  error of the reconstructed pixels, ``sigmoid(logits)``, per pixel.
  """

  scores_train_batch = True  # Under mixup the target is the mixed image.

  def metrics(self, names, outputs, batch, per_example_loss):
    mask = batch["mask"]
    out = {"loss": mean_group(per_example_loss, mask)}
    if "mse" in names:
      target = batch["y"]
      if isinstance(target, augment_lib.MixupTargets):  # The one the loss scores.
        target = target.mixed()
      err = jnp.square(jax.nn.sigmoid(outputs) - target)
      out["mse"] = mean_group(jnp.mean(err.reshape(err.shape[0], -1), axis=1), mask)
    return out


# -------------------------------------------------------------------- VAE
@dataclasses.dataclass(frozen=True)
class VAETask(steps_lib.SupervisedTask):
  """A VAE with a Bernoulli decoder: loss = -ELBO = reconstruction NLL + KL.

  ``binarize='dynamic'`` draws each training image's pixels from Bernoulli(x)
  with ``fold_in(step_key, 3)``; the reparameterized sample uses
  ``fold_in(step_key, 2)``. In evaluation each example draws its own sample, keyed
  by the state's key and the example's own bits (:func:`example_keys`): a test
  ELBO is a deterministic single-sample estimate whose noise is independent across
  examples and does not depend on the batch size, the order or the devices.
  """
  binarize: str = "dynamic"

  def _inputs(self, batch, key, train):
    x = batch["x"].astype(jnp.float32)
    if self.binarize == "threshold":
      x = (x > 0.5).astype(jnp.float32)
    elif self.binarize == "dynamic" and train:  # Eval splits are binarized once, at load.
      x = jax.random.bernoulli(jax.random.fold_in(key, 3), x).astype(jnp.float32)
    return x

  def sown(self, params, model_state, batch, key):
    """As :meth:`SupervisedTask.sown`, with the step's binarized inputs and noise."""
    _, collections = self.apply_fn(
        {"params": params, **model_state}, self._inputs(batch, key, True),
        key=jax.random.fold_in(key, 2), train=True, mutable=[*model_state, "intermediates"])
    return collections.get("intermediates", {})

  def loss_fn(self, params, model_state, batch, key, train):
    x = self._inputs(batch, key, train)
    variables = {"params": params, **model_state}
    sample_key = jax.random.fold_in(key, 2)
    if not train:  # Not one noise draw shared by every evaluation batch.
      sample_key = example_keys(sample_key, x)
    logits, mean, logvar = self.apply_fn(variables, x, key=sample_key, train=train)
    recon = objectives.bernoulli_nll(logits.astype(jnp.float32), x)
    kl = objectives.gaussian_kl(mean.astype(jnp.float32), logvar.astype(jnp.float32))
    per_example = recon + kl
    mask = batch["mask"].astype(jnp.float32)
    loss = jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if self.penalty_rules:
      loss = loss + regularizers.penalty(params, self.penalty_rules)
    return loss, (per_example, (recon, kl), model_state)

  def metrics(self, names, outputs, batch, per_example_loss):
    recon, kl = outputs
    mask = batch["mask"]
    values = {"neg_elbo": per_example_loss, "recon": recon, "kl": kl}
    return {"loss": mean_group(per_example_loss, mask),
            **{n: mean_group(values[n], mask) for n in names}}


def binarize_eval_inputs(x: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """One fixed Bernoulli draw of ``x`` (the dynamic binarization's val/test sets).

  The key does not depend on the run's seed, so test ELBOs of runs with different
  seeds score the same binary images.
  """
  key = jax.random.key(seed)
  return np.asarray(jax.random.bernoulli(key, jnp.asarray(x))).astype(np.float32)


def binarized_split(x: np.ndarray, y: Any) -> pipeline.Split:
  """A dynamic-binarization VAE's evaluation split: :func:`binarize_eval_inputs` of
  its images ``x`` as the inputs, the grey ``x`` kept as ``images`` (generated
  images are compared with those)."""
  x = np.asarray(x)
  return pipeline.Split(jnp.asarray(binarize_eval_inputs(x)), jnp.asarray(y), images=x)


# ------------------------------------------------------------ construction
# The most generated images a run scores (generative.eval_samples).
MAX_EVAL_SAMPLES = 100_000


def validate_config(config) -> None:
  """Errors for settings a generative task cannot honour (before any work)."""
  g, task = config.generative, config.task
  if g.binarize not in BINARIZE:
    raise JdlError(f"generative.binarize must be one of {', '.join(BINARIZE)}, got "
                   f"{g.binarize!r}")
  if config.normalize != "none":
    raise JdlError(f"task {task!r} models pixels in [0, 1]; set normalize='none' (got "
                   f"{config.normalize!r})")
  for key in ("latent_dim", "d_steps", "eval_samples", "sample_every_epochs"):
    if int(g[key]) < 1:
      raise JdlError(f"generative.{key} must be >= 1, got {g[key]}")
  if int(g.eval_samples) > MAX_EVAL_SAMPLES:  # A typo (1e7) would generate for hours
    # after training, and hold them all in memory.
    raise JdlError(f"generative.eval_samples must be <= {MAX_EVAL_SAMPLES:,} (the usual "
                   f"Inception Score / FID sample is 10,000-50,000), got {g.eval_samples}")
  for key in ("gp_weight", "d_learning_rate"):
    if not 0 <= float(g[key]) < math.inf:
      raise JdlError(f"generative.{key} must be >= 0 and finite, got {g[key]}")
  if config.loss != "sparse_categorical_crossentropy" or config.label_smoothing:
    raise JdlError(f"task {task!r} has its own objective, so loss and label_smoothing do "
                   "not apply; leave them at their defaults")
  aug = config.augment
  if task == "vae" and any(aug[k] for k in aug if k != "fill"):
    raise JdlError("task 'vae' does not support augment: its likelihood is of the input "
                   "it encodes, so a noisy or moved image would be its own target (noise "
                   "can leave [0, 1], where the Bernoulli likelihood has no bound); turn "
                   "augment off")
  if task == "autoencoder":
    moved = [k for k in augment_lib.IMAGE_KEYS if aug[k]]
    if moved:
      raise JdlError(f"task 'autoencoder' reconstructs the clean input, so augment."
                     f"{', augment.'.join(moved)} would train it to undo the transform; "
                     "only augment.noise_std (a denoising autoencoder) and "
                     "augment.mixup_alpha are supported")
  if task in ("gan", "wgan_gp"):
    reg = config.regularization
    unsupported = [name for name, on in (
        ("regularization.l1/l2/rules/activity_l1",
         reg.l1 or reg.l2 or reg.rules or reg.activity_l1),
        ("reduce_on_plateau", config.reduce_on_plateau.enabled),
        ("diagnostics", config.diagnostics.every_steps),
        ("augment", any(aug[k] for k in aug if k != "fill")),
        ("mixed_precision", config.mixed_precision),
        ("init_from", config.init_from.workdir),
        # Each player's optimizer would match the patterns against its own paths,
        # the run's checks against both players' ('generator/...'): no pattern fits.
        ("optimizer.freeze", tuple(config.optimizer.freeze))) if on]
    if unsupported:
      raise JdlError(f"task {task!r} does not support {', '.join(unsupported)}; turn "
                     "them off in the config")


def make_task(config, apply_fn, penalty_rules, names) -> steps_lib.SupervisedTask:
  """The single-model task (autoencoder or VAE) of a config."""
  reg = config.regularization
  common = dict(apply_fn=apply_fn, metric_names=names, num_classes=0,
                penalty_rules=penalty_rules)
  if config.task == "autoencoder":
    return ReconstructionTask(loss=objectives.bernoulli_nll, activity_l1=float(reg.activity_l1),
                              activity_include=reg.activity_include, **common)
  if reg.activity_l1:
    raise JdlError("task 'vae' does not support regularization.activity_l1")
  return VAETask(loss=objectives.bernoulli_nll, binarize=config.generative.binarize, **common)


def make_gan_task(config, names) -> GANTask:
  g = config.generative
  return GANTask(kind=config.task, latent_dim=int(g.latent_dim), d_steps=int(g.d_steps),
                 gp_weight=float(g.gp_weight), metric_names=names)


def sample_images(state, task, model, n: int, *, key: jax.Array) -> jax.Array:
  """``n`` generated images ``[n, H, W, C]`` in [0, 1] from a VAE or a GAN state.

  Args:
    state: a :class:`GANState`, or the ``TrainState`` of a VAE.
    task: the run's task.
    model: the VAE module (unused for a GAN).
    n: how many images.
    key: the noise key; the same key gives the same images.
  """
  if isinstance(state, GANState):
    return state.sample(task.noise(key, n))
  if isinstance(task, VAETask):
    z = jax.random.normal(key, (n, model.latent), jnp.float32)
    return state.apply_fn(state.variables, z, method="generate")
  raise JdlError("only VAE and GAN runs generate images (an autoencoder reconstructs "
                 "its inputs)")


_VAE_CONTRACT = ("a VAE module for task 'vae' needs a 'latent' field (the size of z), a "
                 "generate(z) method giving pixel probabilities, and __call__(x, *, key, "
                 "train) returning (logits, mean, logvar), where key is one key in "
                 "training and [batch] keys, one per example, in evaluation (see "
                 "jdl.models.VAE)")


def check_vae_model(model, variables, example) -> None:
  """Refuses a VAE module given to ``fit`` that the task cannot drive, before training.

  Raises:
    JdlError: a missing ``latent`` or ``generate``, or a ``__call__`` that does not
      take a batch of per-example keys; the message states the contract.
  """
  latent = getattr(model, "latent", None)
  if not (isinstance(latent, int) and latent >= 1 and callable(getattr(model, "generate", None))):
    raise JdlError(f"{type(model).__name__}: {_VAE_CONTRACT}")
  x = jnp.concatenate([example, example]).astype(jnp.float32)
  keys = jax.random.split(jax.random.key(0), 2)
  try:
    jax.eval_shape(lambda v, x, k: model.apply(v, x, key=k, train=False), variables, x, keys)
    jax.eval_shape(lambda v, z: model.apply(v, z, method="generate"), variables,
                   jnp.zeros((2, latent), jnp.float32))
  except Exception as e:  # noqa: BLE001 - any failure of the user's module is reported.
    raise JdlError(f"{type(model).__name__}: {_VAE_CONTRACT}; it failed with "
                   f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


AUTOENCODERS = ("dense_autoencoder", "conv_autoencoder")
GANS = ("mlp_gan", "dcgan")


def create_models(config, input_shape: tuple[int, ...]) -> Any:
  """The module(s) of a generative config: one module, or (generator, discriminator).

  ``config.model.name``: ``dense_autoencoder`` / ``conv_autoencoder`` (task
  autoencoder), ``vae`` (task vae), ``mlp_gan`` / ``dcgan`` (tasks gan and
  wgan_gp, with ``generator`` and ``discriminator`` sub-sections of fields).
  """
  from jdl import models as models_lib  # Models import nothing of jdl's upper floors.
  spec = config.model.to_dict()
  name = spec.pop("name", None)
  output_shape = tuple(input_shape)
  valid = {"autoencoder": AUTOENCODERS, "vae": ("vae",), "gan": GANS, "wgan_gp": GANS}[config.task]
  if name not in valid:
    raise JdlError(f"task {config.task!r} needs model.name in {', '.join(valid)}, got {name!r}")
  classes = {"dense_autoencoder": models_lib.DenseAutoencoder,
             "conv_autoencoder": models_lib.ConvAutoencoder, "vae": models_lib.VAE,
             "mlp_gan": (models_lib.MLPGenerator, models_lib.MLPDiscriminator),
             "dcgan": (models_lib.DCGANGenerator, models_lib.DCGANDiscriminator)}[name]
  if name in GANS:
    extra = sorted(set(spec) - {"generator", "discriminator"})
    if extra:
      raise JdlError(f"model {name!r} takes 'generator' and 'discriminator' sections; "
                     f"unknown field(s): {', '.join(extra)}")
    g_cls, d_cls = classes
    return (_build(g_cls, spec.get("generator") or {}, name, "model.generator",
                   output_shape=output_shape),
            _build(d_cls, spec.get("discriminator") or {}, name, "model.discriminator"))
  dtype = {"dtype": jnp.bfloat16} if config.mixed_precision else {}
  return _build(classes, spec, name, "model", output_shape=output_shape, **dtype)


def _build(cls, fields: dict, name: str, section: str, **fixed) -> nn.Module:
  from jdl import models as models_lib
  valid = models_lib.model_fields(cls)
  fields = dict(fields)
  for key in fields:
    if key not in valid or key in fixed:
      raise JdlError(f"unknown field {key!r} for model {name!r} ({section}); valid fields: "
                     f"{', '.join(k for k in valid if k not in fixed)}")
  fields.update({k: v for k, v in fixed.items() if k in valid})
  return models_lib.build(cls, fields, section)

