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

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jdl import regularizers
from jdl.errors import JdlError
from jdl.generative import objectives
from jdl.train import steps as steps_lib

TASKS = ("autoencoder", "vae", "gan", "wgan_gp")
BINARIZE = ("dynamic", "threshold", "none")
_EVAL_NOISE = 0x5EED  # fold_in tag of the fixed noise that eval steps score.

METRICS = {
    "autoencoder": ("mse",),
    "vae": ("neg_elbo", "recon", "kl"),
    "gan": ("d_loss", "g_loss", "d_real", "d_fake"),
    "wgan_gp": ("critic_loss", "wasserstein", "gradient_penalty", "g_loss"),
}
# What eval steps report: a GAN's training-only quantities are left out.
EVAL_METRICS = {**METRICS, "wgan_gp": ("wasserstein", "g_loss")}


def mean_group(values: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """The mergeable statistics of a mean over the examples where ``mask`` is set."""
  mask = mask.astype(bool)
  return {"sum": jnp.sum(jnp.where(mask, values, 0.0), dtype=jnp.float32),
          "count": jnp.sum(mask, dtype=jnp.int32)}


def compute(names, state) -> dict[str, float]:
  """``{name: mean}`` on the host, plus ``loss`` when the state has it."""
  host = jax.device_get(state)
  out = {}
  for name in (*names, *(("loss",) if "loss" in host and "loss" not in names else ())):
    g = host.get(name)
    if g is None:
      raise JdlError(f"no statistics for metric {name!r}; the task reports "
                     f"{', '.join(k for k in host if k != steps_lib.NONFINITE)}")
    out[name] = float(g["sum"]) / float(g["count"]) if g["count"] else math.nan
  return out


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

  def metrics(self, names, outputs, batch, per_example_loss):
    mask = batch["mask"]
    out = {"loss": mean_group(per_example_loss, mask)}
    if "mse" in names:
      err = jnp.square(jax.nn.sigmoid(outputs) - batch["y"])
      out["mse"] = mean_group(jnp.mean(err.reshape(err.shape[0], -1), axis=1), mask)
    return out


# -------------------------------------------------------------------- VAE
@dataclasses.dataclass(frozen=True)
class VAETask(steps_lib.SupervisedTask):
  """A VAE with a Bernoulli decoder: loss = -ELBO = reconstruction NLL + KL.

  ``binarize='dynamic'`` draws each training image's pixels from Bernoulli(x)
  with ``fold_in(step_key, 3)``; the reparameterized sample uses
  ``fold_in(step_key, 2)``. In evaluation the sample's key is the state's key,
  so a test ELBO is a deterministic single-sample estimate.
  """
  binarize: str = "dynamic"

  def loss_fn(self, params, model_state, batch, key, train):
    x = batch["x"].astype(jnp.float32)
    if self.binarize == "threshold":
      x = (x > 0.5).astype(jnp.float32)
    elif self.binarize == "dynamic" and train:  # Eval splits are binarized once, at load.
      x = jax.random.bernoulli(jax.random.fold_in(key, 3), x).astype(jnp.float32)
    variables = {"params": params, **model_state}
    logits, mean, logvar = self.apply_fn(variables, x, key=jax.random.fold_in(key, 2),
                                         train=train)
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


# -------------------------------------------------------------------- GAN
class GANState(struct.PyTreeNode):
  """Both players of a GAN: one PyTree, so one checkpoint restores the game.

  ``params``, ``model_state`` and ``opt_state`` are dicts with a ``generator`` and
  a ``discriminator`` entry; ``step`` counts loop steps (discriminator updates);
  the generator's optimizer counts its own updates.
  """
  step: jax.Array
  params: Any
  model_state: Any
  opt_state: Any
  key: jax.Array
  generator: nn.Module = struct.field(pytree_node=False)
  discriminator: nn.Module = struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False)

  @property
  def variables(self) -> dict[str, Any]:
    """``{'params': ..., collection: {player: ...}}`` (for summaries and exports)."""
    out = {"params": self.params}
    for player, collections in self.model_state.items():
      for name, value in collections.items():
        out.setdefault(name, {})[player] = value
    return out

  def sample(self, z: jax.Array) -> jax.Array:
    """Generated images for noise ``z: [n, latent]`` (inference mode)."""
    variables = {"params": self.params["generator"], **self.model_state["generator"]}
    return self.generator.apply(variables, z, train=False)


def create_gan_state(generator: nn.Module, discriminator: nn.Module,
                     g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                     example_x: jax.Array, latent_dim: int, *, key: jax.Array) -> GANState:
  """Initialises both players and their optimizers."""
  kg, kd, kdrop, state_key = jax.random.split(key, 4)
  z = jnp.zeros((example_x.shape[0], latent_dim), jnp.float32)

  def init(kg, kd, kdrop, z, x):
    g = generator.init({"params": kg}, z, train=False)
    d = discriminator.init({"params": kd, "dropout": kdrop}, x, train=False)
    return g, d

  g_vars, d_vars = jax.jit(init)(kg, kd, kdrop, z, example_x)
  g_vars, d_vars = flax.core.unfreeze(g_vars), flax.core.unfreeze(d_vars)
  params = {"generator": g_vars.pop("params"), "discriminator": d_vars.pop("params")}
  return GANState(
      step=jnp.zeros((), jnp.int32), params=params,
      model_state={"generator": g_vars, "discriminator": d_vars},
      opt_state={"generator": g_tx.init(params["generator"]),
                 "discriminator": d_tx.init(params["discriminator"])},
      key=state_key, generator=generator, discriminator=discriminator, g_tx=g_tx, d_tx=d_tx)


@dataclasses.dataclass(frozen=True)
class GANTask:
  """A GAN (non-saturating loss) or a WGAN-GP, trained one batch per loop step.

  Each step updates the discriminator (critic) once on the batch against a fresh
  fake batch; every ``d_steps``-th step also updates the generator with fresh
  noise (``lax.cond``: one compiled step for the pair). All noise comes from
  ``fold_in(state.key, step)``.

  Attributes:
    kind: ``'gan'`` or ``'wgan_gp'``.
    latent_dim: noise dimension.
    d_steps: discriminator updates per generator update (WGAN-GP's n_critic).
    gp_weight: WGAN-GP's lambda.
    metric_names: the metrics reported (a subset of :data:`METRICS`).
  """
  kind: str
  latent_dim: int
  d_steps: int = 1
  gp_weight: float = 10.0
  metric_names: tuple[str, ...] = ()

  def noise(self, key: jax.Array, n: int) -> jax.Array:
    return jax.random.normal(key, (n, self.latent_dim), jnp.float32)

  @staticmethod
  def _generate(state, params, model_state, z, train):
    variables = {"params": params, **model_state}
    if train and model_state:
      images, new = state.generator.apply(variables, z, train=True, mutable=list(model_state))
      return images, flax.core.unfreeze(new)
    return state.generator.apply(variables, z, train=train), model_state

  @staticmethod
  def _discriminate(state, params, model_state, x, train, key):
    variables = {"params": params, **model_state}
    rngs = {"dropout": key}
    if train and model_state:
      out, new = state.discriminator.apply(variables, x, train=True, rngs=rngs,
                                           mutable=list(model_state))
      return out.astype(jnp.float32), flax.core.unfreeze(new)
    return state.discriminator.apply(variables, x, train=train, rngs=rngs).astype(
        jnp.float32), model_state

  def _d_loss(self, state, d_params, d_state, real, fake, key):
    """Per-example discriminator (critic) loss and its parts."""
    k_real, k_fake, k_gp = jax.random.split(key, 3)
    real_out, d_state = self._discriminate(state, d_params, d_state, real, True, k_real)
    fake_out, d_state = self._discriminate(state, d_params, d_state, fake, True, k_fake)
    if self.kind == "gan":
      per = objectives.gan_discriminator_loss(real_out, fake_out)
      parts = {"d_loss": per, "d_real": jax.nn.sigmoid(real_out),
               "d_fake": jax.nn.sigmoid(fake_out)}
    else:
      critic = lambda x: self._discriminate(state, d_params, d_state, x, False, k_gp)[0]  # noqa: E731
      gp = objectives.gradient_penalty(critic, real, fake, key=k_gp)
      per = objectives.wgan_critic_loss(real_out, fake_out) + self.gp_weight * gp
      parts = {"critic_loss": per, "wasserstein": real_out - fake_out, "gradient_penalty": gp}
    return per, (parts, d_state)

  def _g_loss(self, state, g_params, g_state, d_params, d_state, z, key):
    fake, g_state = self._generate(state, g_params, g_state, z, True)
    out, _ = self._discriminate(state, d_params, d_state, fake, True, key)
    if self.kind == "gan":
      per = objectives.gan_generator_loss(out)
    else:
      per = objectives.wgan_generator_loss(out)
    return jnp.mean(per), (per, g_state)

  def train_step(self, state: GANState, batch):
    """One discriminator update and, every ``d_steps`` steps, one generator update."""
    key = jax.random.fold_in(state.key, state.step)
    k_z, k_d, k_z2, k_g = jax.random.split(key, 4)
    real, mask = batch["x"], batch["mask"]
    n = real.shape[0]
    p, ms, opt = state.params, state.model_state, state.opt_state

    # The discriminator sees a fake batch from the generator in training mode; the
    # generator's batch statistics move only in its own update.
    fake, _ = self._generate(state, p["generator"], ms["generator"], self.noise(k_z, n), True)
    fake = jax.lax.stop_gradient(fake)

    def d_objective(d_params):
      per, aux = self._d_loss(state, d_params, ms["discriminator"], real, fake, k_d)
      return jnp.mean(per), aux

    (d_loss, (parts, d_state)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
        p["discriminator"])
    d_updates, d_opt = state.d_tx.update(d_grads, opt["discriminator"], p["discriminator"])
    d_params = optax.apply_updates(p["discriminator"], d_updates)

    def g_update(_):
      grad_fn = jax.value_and_grad(self._g_loss, argnums=1, has_aux=True)
      (g_loss, (per, g_state)), g_grads = grad_fn(state, p["generator"], ms["generator"],
                                                  d_params, d_state, self.noise(k_z2, n), k_g)
      updates, g_opt = state.g_tx.update(g_grads, opt["generator"], p["generator"])
      return (optax.apply_updates(p["generator"], updates), g_opt, g_state, g_grads, g_loss,
              per, jnp.ones((), bool))

    def g_skip(_):
      zeros = jax.tree.map(jnp.zeros_like, p["generator"])
      return (p["generator"], opt["generator"], ms["generator"], zeros,
              jnp.zeros((), jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((), bool))

    g_due = (state.step + 1) % self.d_steps == 0
    g_params, g_opt, g_state, g_grads, g_loss, g_per, g_ran = jax.lax.cond(
        g_due, g_update, g_skip, None)

    grads = {"discriminator": d_grads, "generator": g_grads}  # The order of params' leaves.
    nonfinite = steps_lib.nonfinite_info(d_loss + g_loss, grads, state.step)
    bad = nonfinite["count"] > 0
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(bad, b, a), new, old)  # noqa: E731
    new_state = state.replace(
        step=state.step + 1,
        params={"generator": g_params, "discriminator": d_params},
        opt_state={"generator": g_opt, "discriminator": d_opt},
        model_state=keep({"generator": g_state, "discriminator": d_state}, ms))
    metrics = {name: mean_group(parts[name], mask) for name in self.metric_names
               if name in parts}
    if "g_loss" in self.metric_names:
      metrics["g_loss"] = mean_group(g_per, mask * g_ran)
    # The discriminator's (critic's) objective is the run's "loss" (aux dicts come
    # back from jax with sorted keys, so name it).
    metrics["loss"] = mean_group(parts["d_loss" if self.kind == "gan" else "critic_loss"], mask)
    metrics = jax.tree.map(lambda x: jnp.where(bad, jnp.zeros_like(x), x), metrics)
    return new_state, {**metrics, steps_lib.NONFINITE: nonfinite}

  def eval_step(self, state: GANState, batch):
    """Losses on a real split against a fixed fake batch (inference mode)."""
    real, mask = batch["x"], batch["mask"]
    z = self.noise(jax.random.fold_in(state.key, _EVAL_NOISE), real.shape[0])
    p, ms = state.params, state.model_state
    fake, _ = self._generate(state, p["generator"], ms["generator"], z, False)
    key = state.key
    real_out, _ = self._discriminate(state, p["discriminator"], ms["discriminator"], real,
                                     False, key)
    fake_out, _ = self._discriminate(state, p["discriminator"], ms["discriminator"], fake,
                                     False, key)
    if self.kind == "gan":
      values = {"d_loss": objectives.gan_discriminator_loss(real_out, fake_out),
                "g_loss": objectives.gan_generator_loss(fake_out),
                "d_real": jax.nn.sigmoid(real_out), "d_fake": jax.nn.sigmoid(fake_out)}
      loss = values["d_loss"]
    else:
      values = {"wasserstein": real_out - fake_out,
                "g_loss": objectives.wgan_generator_loss(fake_out)}
      loss = objectives.wgan_critic_loss(real_out, fake_out)
    names = [n for n in self.metric_names if n in values]
    return state, {"loss": mean_group(loss, mask), **{n: mean_group(values[n], mask)
                                                      for n in names}}


# ------------------------------------------------------------ construction
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
  if float(g.gp_weight) < 0 or float(g.d_learning_rate) < 0:
    raise JdlError("generative.gp_weight and generative.d_learning_rate must be >= 0")
  if task in ("gan", "wgan_gp"):
    reg, aug = config.regularization, config.augment
    unsupported = [name for name, on in (
        ("regularization.l1/l2/rules/activity_l1",
         reg.l1 or reg.l2 or reg.rules or reg.activity_l1),
        ("reduce_on_plateau", config.reduce_on_plateau.enabled),
        ("diagnostics", config.diagnostics.every_steps),
        ("augment", any(aug[k] for k in aug if k != "fill")),
        ("mixed_precision", config.mixed_precision),
        ("init_from", config.init_from.workdir)) if on]
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
    return (_build(g_cls, spec.get("generator") or {}, f"{name}.generator",
                   output_shape=output_shape),
            _build(d_cls, spec.get("discriminator") or {}, f"{name}.discriminator"))
  dtype = {"dtype": jnp.bfloat16} if config.mixed_precision else {}
  return _build(classes, spec, name, output_shape=output_shape, **dtype)


def _build(cls, fields: dict, what: str, **fixed) -> nn.Module:
  from jdl import models as models_lib
  valid = models_lib.model_fields(cls)
  fields = dict(fields)
  for key in fields:
    if key not in valid or key in fixed:
      raise JdlError(f"unknown field {key!r} for model {what!r}; valid fields: "
                     f"{', '.join(k for k in valid if k not in fixed)}")
  fields.update({k: v for k, v in fixed.items() if k in valid})
  freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v  # noqa: E731
  try:
    return cls(**{k: freeze(v) for k, v in fields.items()})
  except (TypeError, ValueError) as e:
    raise JdlError(f"model {what!r}: {e}") from None

