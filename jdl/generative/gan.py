"""Two-player training: the :class:`GANState` and the GAN / WGAN-GP step.

Both players live in one PyTree, so one checkpoint restores the game; one
compiled step updates the discriminator (critic) on every batch and, every
``d_steps`` batches, the generator (``lax.cond``). All noise comes from
``fold_in(state.key, step)``, so a resumed run is bitwise equal to an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jdl.errors import JdlError
from jdl import optim
from jdl.generative import objectives
from jdl.generative.stats import example_keys
from jdl.generative.stats import mean_group
from jdl.train import steps as steps_lib

_EVAL_NOISE = 0x5EED  # fold_in tag of the fixed noise that eval steps score.


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


def check_critic(critic_state: dict) -> None:
  """Refuses a WGAN-GP critic with batch statistics (batch norm).

  The gradient penalty asks each example's critic value to have a unit gradient
  with respect to that example's input; batch norm makes every output depend on the
  whole batch, so that per-example gradient is not the critic's (Gulrajani et al.,
  2017, section 4: use layer normalisation instead).
  """
  if critic_state:
    raise JdlError(f"a WGAN-GP critic must not keep batch statistics (it has "
                   f"{', '.join(sorted(critic_state))}): batch norm couples the examples "
                   "that the gradient penalty treats one by one; use "
                   "model.discriminator.norm='layer' or 'none'")


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

  def __post_init__(self):
    # The config path validates these; the Python API's callers get the same refusals
    # (a kind of 'wgan' trained a WGAN-GP, d_steps=0 a generator update every step).
    if self.kind not in ("gan", "wgan_gp"):
      raise JdlError(f"GANTask kind must be 'gan' or 'wgan_gp', got {self.kind!r}")
    for name in ("latent_dim", "d_steps"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise JdlError(f"GANTask {name} must be an integer >= 1, got {value!r}")
    w = self.gp_weight
    if isinstance(w, bool) or not (isinstance(w, numbers.Real) and 0 <= w < math.inf):
      raise JdlError(f"GANTask gp_weight must be >= 0 and finite, got {w!r}")

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
      check_critic(d_state)
      # The penalty is on the critic the loss trains: in training mode, its own
      # dropout mask (as the real and the fake batch each have theirs).
      k_drop = jax.random.fold_in(k_gp, 1)
      critic = lambda x: self._discriminate(state, d_params, d_state, x, True, k_drop)[0]  # noqa: E731
      gp = objectives.gradient_penalty(critic, real, fake, key=k_gp)
      per = objectives.wgan_critic_loss(real_out, fake_out) + self.gp_weight * gp
      parts = {"critic_loss": per, "wasserstein": real_out - fake_out, "gradient_penalty": gp}
    return per, (parts, d_state)

  def _g_loss(self, state, g_params, g_state, d_params, d_state, z, key, mask):
    fake, g_state = self._generate(state, g_params, g_state, z, True)
    out, _ = self._discriminate(state, d_params, d_state, fake, True, key)
    if self.kind == "gan":
      per = objectives.gan_generator_loss(out)
    else:
      per = objectives.wgan_generator_loss(out)
    return _masked_mean(per, mask), (per, g_state)

  def train_step(self, state: GANState, batch):
    """One discriminator update and, every ``d_steps`` steps, one generator update.

    Rows with ``batch["mask"] == 0`` (padding) count in no loss and no metric; a
    discriminator with batch norm still sees them in its batch statistics, as it sees
    every row it is given (``fit`` never pads a training batch).
    """
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
      return _masked_mean(per, mask), aux  # Padding rows (a public caller's): no loss.

    (d_loss, (parts, d_state)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
        p["discriminator"])
    d_updates, d_opt = state.d_tx.update(d_grads, opt["discriminator"], p["discriminator"])
    d_params = optim.apply_updates(p["discriminator"], d_updates)

    def g_update(_):
      grad_fn = jax.value_and_grad(self._g_loss, argnums=1, has_aux=True)
      (g_loss, (per, g_state)), g_grads = grad_fn(state, p["generator"], ms["generator"],
                                                  d_params, d_state, self.noise(k_z2, n), k_g,
                                                  mask)
      updates, g_opt = state.g_tx.update(g_grads, opt["generator"], p["generator"])
      return (optim.apply_updates(p["generator"], updates), g_opt, g_state, g_grads, g_loss,
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

    def keep(new, old, when=bad):
      return jax.tree.map(lambda a, b: jnp.where(when, b, a), new, old)

    # A skipped step leaves the whole state as it was, except the count of skips of a
    # player whose optimizer skips non-finite gradients itself (optax.apply_if_finite,
    # with nonfinite='skip') and whose own gradients were the non-finite ones.
    opt_kept = {}
    for name, new in (("generator", g_opt), ("discriminator", d_opt)):
      counted = _skips_itself(new) & ~steps_lib.all_finite(grads[name])
      opt_kept[name] = keep(new, opt[name], bad & ~counted)
    new_state = state.replace(
        step=state.step + 1,
        params=keep({"generator": g_params, "discriminator": d_params}, p),
        opt_state=opt_kept,
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
    """Losses on a real split against fakes of fixed noise (inference mode): each real
    example is paired with the fake of its own key (its bits hashed,
    :func:`jdl.generative.stats.example_keys`), so a split's scores do not depend on
    how it is batched and as many fakes are scored as real examples."""
    real, mask = batch["x"], batch["mask"]
    keys = example_keys(jax.random.fold_in(state.key, _EVAL_NOISE), real)
    z = jax.vmap(lambda k: self.noise(k, 1)[0])(keys)
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


def _masked_mean(per: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of ``per`` over the examples ``mask`` sets (an example's entries averaged)."""
  group = mean_group(per, mask)
  return group["sum"] / jnp.maximum(group["count"], 1).astype(jnp.float32)


def _skips_itself(opt_state) -> bool:
  """Whether an optimizer state is (or holds) optax.apply_if_finite's: known when
  tracing, from the state's structure."""
  is_skip = lambda s: isinstance(s, optax.ApplyIfFiniteState)  # noqa: E731
  return any(map(is_skip, jax.tree.leaves(opt_state, is_leaf=is_skip)))
