"""Autoencoders: dense, convolutional and variational.

Every model here has ``encode``, ``decode`` and ``__call__`` methods built from
submodules declared in ``setup``, so each method can be applied on its own::

  code = model.apply(variables, x, method=model.encode)
  logits = model.apply(variables, code, method=model.decode)

Decoders return LOGITS of a Bernoulli per pixel (images in [0, 1]); the training
task applies the sigmoid or the sigmoid cross-entropy. The deterministic
autoencoders sow their code as ``intermediates/code`` and nothing else, so an
activity penalty over all sown values (the sparse autoencoder's L1 term) sees
exactly the code.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from jdl import errors
from jdl.models.activations import Activation, get_activation
from jdl.models.conv import Conv
from jdl.models.mlp import Dtype, check_common_fields, check_positive, check_widths


def check_output_shape(output_shape: Sequence[int], *, image: bool = False) -> None:
  """Raises ``JdlError`` unless ``output_shape`` is one example's shape.

  Args:
    output_shape: positive integers, e.g. ``(28, 28, 1)``.
    image: require ``(height, width, channels)``.
  """
  check_widths("output_shape", output_shape)
  errors.require(
      not image or len(output_shape) == 3,
      f"output_shape must be (height, width, channels) for a convolutional model, "
      f"got {tuple(output_shape)!r}; add a trailing channel axis to grey images",
  )


def check_divisible(output_shape: Sequence[int], levels: int, field: str) -> tuple[int, int]:
  """The spatial size after ``levels`` halvings of an ``(H, W, C)`` shape.

  Raises:
    JdlError: ``H`` or ``W`` is not divisible by ``2**levels``.
  """
  height, width = output_shape[0], output_shape[1]
  factor = 2**levels
  errors.require(
      height % factor == 0 and width % factor == 0,
      f"output_shape {tuple(output_shape)!r}: height and width must be divisible by "
      f"2**len({field}) = {factor} (one halving per level), got {height}x{width}; "
      f"pad or crop the images, or use fewer {field}",
  )
  return height // factor, width // factor


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Doubles the height and width of ``[batch, height, width, channels]``.

  Nearest-neighbour by repetition: the gradient is a plain sum over 2x2 blocks.
  Followed by a convolution this replaces a transposed convolution without its
  checkerboard artefacts (Odena et al., Distill 2016).
  """
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _flatten(x: jax.Array, dtype: Dtype) -> jax.Array:
  return jnp.asarray(x, dtype).reshape((x.shape[0], -1))


class DenseAutoencoder(nn.Module):
  """A fully connected autoencoder, ``784-256-64-256-784`` by default.

  Encoder: ``Dense(h) -> activation`` for each ``h`` in ``hidden``, then
  ``Dense(latent) -> code_activation``. Decoder: the mirror image (``hidden``
  reversed), then ``Dense(prod(output_shape))`` reshaped, without activation.

  Attributes:
    output_shape: one example's shape, e.g. ``(28, 28, 1)``.
    hidden: widths of the encoder's hidden layers (the decoder's, reversed).
    latent: width of the code.
    activation: name for :func:`jdl.models.get_activation`, in hidden layers.
    code_activation: the code's activation (``'linear'`` for none).
    dtype: compute dtype; parameters stay float32.

  Submodules are named ``encoder_{i}``, ``to_code``, ``decoder_{i}`` and ``output``.
  """

  # The sown code is code_activation's output (diagnostics' shares of it).
  sown_activations: ClassVar[dict[str, str | None]] = {"code": "code_activation"}

  output_shape: Sequence[int]
  hidden: Sequence[int] = (256,)
  latent: int = 64
  activation: str | Activation = "relu"
  code_activation: str | Activation = "sigmoid"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_output_shape(self.output_shape)
    check_widths("hidden", self.hidden)
    check_positive("latent", self.latent)
    get_activation(self.code_activation)

  def setup(self):
    self.encoder = [nn.Dense(w, dtype=self.dtype) for w in self.hidden]
    self.to_code = nn.Dense(self.latent, dtype=self.dtype)
    self.decoder = [nn.Dense(w, dtype=self.dtype) for w in reversed(self.hidden)]
    self.output = nn.Dense(math.prod(self.output_shape), dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps ``x: [batch, ...]`` (flattened) to the code ``[batch, latent]``."""
    del train  # No dropout or batch norm; kept for a uniform interface.
    act = get_activation(self.activation)
    x = _flatten(x, self.dtype)
    for layer in self.encoder:
      x = act(layer(x))
    code = get_activation(self.code_activation)(self.to_code(x))
    self.sow("intermediates", "code", code)
    return code

  def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps codes ``z: [batch, latent]`` to logits ``[batch, *output_shape]``."""
    del train
    act = get_activation(self.activation)
    z = jnp.asarray(z, self.dtype)
    for layer in self.decoder:
      z = act(layer(z))
    return self.output(z).reshape((z.shape[0], *self.output_shape))

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Reconstruction logits ``[batch, *output_shape]`` = ``decode(encode(x))``."""
    return self.decode(self.encode(x, train=train), train=train)


class ConvAutoencoder(nn.Module):
  """A convolutional autoencoder for ``(H, W, C)`` images.

  Encoder: for each width in ``features`` a 3x3 stride-2 convolution and the
  activation (28 -> 14 -> 7 by default), flatten, ``Dense(latent)`` and
  ``code_activation``. Decoder: ``Dense`` to ``(H / 2**n, W / 2**n,
  features[-1])`` and the activation, then per level (``features`` reversed) a
  nearest-neighbour x2 upsampling, a 3x3 convolution and the activation, and a
  last 3x3 convolution to ``C`` channels (logits).

  Attributes:
    output_shape: ``(height, width, channels)``; height and width divisible by
      ``2**len(features)``.
    features: channels of the encoder's convolutions.
    latent: width of the code.
    activation: name for :func:`jdl.models.get_activation`.
    code_activation: the code's activation (``'linear'`` for none).
    dtype: compute dtype; parameters stay float32.
  """

  # The sown code is code_activation's output (diagnostics' shares of it).
  sown_activations: ClassVar[dict[str, str | None]] = {"code": "code_activation"}

  output_shape: Sequence[int]
  features: Sequence[int] = (32, 64)
  latent: int = 32
  activation: str | Activation = "relu"
  code_activation: str | Activation = "linear"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_output_shape(self.output_shape, image=True)
    check_widths("features", self.features, nonempty=True)
    check_positive("latent", self.latent)
    get_activation(self.code_activation)
    check_divisible(self.output_shape, len(self.features), "features")

  def setup(self):
    self.encoder = [Conv(f, (3, 3), strides=2, dtype=self.dtype) for f in self.features]
    self.to_code = nn.Dense(self.latent, dtype=self.dtype)
    h, w = check_divisible(self.output_shape, len(self.features), "features")
    self.expand = nn.Dense(h * w * self.features[-1], dtype=self.dtype)
    self.decoder = [Conv(f, (3, 3), dtype=self.dtype) for f in reversed(self.features)]
    self.output = Conv(self.output_shape[-1], (3, 3), dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps images ``[batch, H, W, C]`` to the code ``[batch, latent]``."""
    del train
    act = get_activation(self.activation)
    x = jnp.asarray(x, self.dtype)
    for conv in self.encoder:
      x = act(conv(x))
    code = get_activation(self.code_activation)(self.to_code(_flatten(x, self.dtype)))
    self.sow("intermediates", "code", code)
    return code

  def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps codes ``z: [batch, latent]`` to logits ``[batch, H, W, C]``."""
    del train
    act = get_activation(self.activation)
    h, w = check_divisible(self.output_shape, len(self.features), "features")
    x = act(self.expand(jnp.asarray(z, self.dtype)))
    x = x.reshape((x.shape[0], h, w, self.features[-1]))
    for conv in self.decoder:
      x = act(conv(upsample_nearest(x)))
    return self.output(x)

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Reconstruction logits ``[batch, H, W, C]`` = ``decode(encode(x))``."""
    return self.decode(self.encode(x, train=train), train=train)


class VAE(nn.Module):
  """A variational autoencoder with a diagonal Gaussian posterior, 784-500-(20, 20).

  Encoder: ``Dense(h) -> activation`` per hidden width, then two heads,
  ``Dense(latent)`` for the mean and for the log-variance of ``q(z | x)``.
  Decoder: ``Dense(h) -> activation`` per hidden width (reversed), then
  ``Dense(prod(output_shape))``: the logits of ``p(x | z)``, a Bernoulli per pixel.

  Attributes:
    output_shape: one example's shape, e.g. ``(28, 28, 1)``.
    hidden: widths of the encoder's hidden layers (the decoder's, reversed).
    latent: dimension of ``z``.
    activation: name for :func:`jdl.models.get_activation`.
    dtype: compute dtype; parameters stay float32.

  Initialise with ``model.init({"params": key}, x, key=sample_key)``.

  References:
    Kingma & Welling, `Auto-Encoding Variational Bayes
    <https://arxiv.org/abs/1312.6114>`_, ICLR 2014 (the reparameterization, section 2.4).
  """

  output_shape: Sequence[int]
  hidden: Sequence[int] = (500,)
  latent: int = 20
  activation: str | Activation = "relu"
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    super().__post_init__()
    check_common_fields(self)
    check_output_shape(self.output_shape)
    check_widths("hidden", self.hidden)
    check_positive("latent", self.latent)

  def setup(self):
    self.encoder = [nn.Dense(w, dtype=self.dtype) for w in self.hidden]
    self.mean = nn.Dense(self.latent, dtype=self.dtype)
    self.logvar = nn.Dense(self.latent, dtype=self.dtype)
    self.decoder = [nn.Dense(w, dtype=self.dtype) for w in reversed(self.hidden)]
    self.output = nn.Dense(math.prod(self.output_shape), dtype=self.dtype)

  def encode(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns ``(mean, logvar)``, each ``[batch, latent]``, of ``q(z | x)``."""
    del train
    act = get_activation(self.activation)
    x = _flatten(x, self.dtype)
    for layer in self.encoder:
      x = act(layer(x))
    return self.mean(x), self.logvar(x)

  def decode(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps ``z: [batch, latent]`` to Bernoulli logits ``[batch, *output_shape]``."""
    del train
    act = get_activation(self.activation)
    z = jnp.asarray(z, self.dtype)
    for layer in self.decoder:
      z = act(layer(z))
    return self.output(z).reshape((z.shape[0], *self.output_shape))

  def __call__(self, x: jax.Array, *, key: jax.Array,
               train: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Encodes, samples ``z = mean + exp(logvar / 2) * eps`` and decodes.

    Args:
      x: ``[batch, ...]``.
      key: PRNG key of ``eps ~ N(0, I)``, or ``[batch]`` keys, one per example.
      train: unused (no dropout or batch norm); kept for a uniform interface.

    Returns:
      ``(logits [batch, *output_shape], mean [batch, latent], logvar [batch, latent])``.
    """
    mean, logvar = self.encode(x, train=train)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    if key.ndim == (1 if typed else 2):  # One key per example.
      eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(key)
    else:
      eps = jax.random.normal(key, mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * logvar) * eps
    return self.decode(z, train=train), mean, logvar

  def generate(self, z: jax.Array) -> jax.Array:
    """Pixel probabilities ``sigmoid(decode(z))`` in [0, 1], ``[batch, *output_shape]``."""
    return jax.nn.sigmoid(self.decode(z))
