"""Models: Flax linen modules called as ``model.apply(variables, x, train=...)``.

The classifiers and regressors of :data:`MODELS` map ``[batch, ...]`` inputs to
``[batch, num_outputs]``; ``seq2seq`` takes ``(src, tgt_in)`` and gives ``[batch,
length, tgt_vocab_size]`` logits. Dropout uses the ``'dropout'`` RNG stream and batch
norm the mutable ``'batch_stats'`` collection. The building blocks (``RNN``,
``Bidirectional``, ``StackedRNN``, the cells) give sequences and carries, as their
docstrings say. The generative models (autoencoders, VAE, GAN generators and
discriminators) have their own interfaces, described in
:mod:`jdl.models.autoencoder` and :mod:`jdl.models.gan`, and are not in
:data:`MODELS`.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
from typing import Any

import flax.linen as nn

from jdl import errors
from jdl.models.activations import ACTIVATIONS
from jdl.models.activations import get_activation
from jdl.models.autoencoder import ConvAutoencoder
from jdl.models.autoencoder import DenseAutoencoder
from jdl.models.autoencoder import VAE
from jdl.models.cnn import CNN
from jdl.models.cnn import LeNet5
from jdl.models.cnn import VGG
from jdl.models.gan import DCGANDiscriminator
from jdl.models.gan import DCGANGenerator
from jdl.models.gan import MLPDiscriminator
from jdl.models.gan import MLPGenerator
from jdl.models.inception import InceptionBlock
from jdl.models.inception import InceptionNet
from jdl.models.initializers import INITIALIZERS
from jdl.models.initializers import get_head_initializer
from jdl.models.initializers import get_initializer
from jdl.models.mlp import MLP
from jdl.models.recurrent import Bidirectional
from jdl.models.recurrent import Conv1DText
from jdl.models.recurrent import Embedding
from jdl.models.recurrent import GRUCell
from jdl.models.recurrent import LSTMCell
from jdl.models.recurrent import RNN
from jdl.models.recurrent import SequenceRegressor
from jdl.models.recurrent import SimpleRNNCell
from jdl.models.recurrent import StackedRNN
from jdl.models.recurrent import TextClassifier
from jdl.models.resnet import ResidualBlock
from jdl.models.resnet import ResNet
from jdl.models.resnet import ResNet18
from jdl.models.resnet import ResNet20
from jdl.models.seq2seq import EncoderOutput
from jdl.models.seq2seq import Seq2Seq

MODELS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "lenet5": LeNet5,
    "vgg": VGG,
    "inception": InceptionNet,
    "resnet20": ResNet20,
    "resnet18": ResNet18,
    "resnet": ResNet,
    "text_rnn": TextClassifier,
    "text_conv1d": Conv1DText,
    "seq_rnn": SequenceRegressor,
    "seq2seq": Seq2Seq,
}

_NOT_CONFIGURABLE = ("parent", "name")


def model_fields(model: type[nn.Module]) -> dict[str, dataclasses.Field]:
  """The constructor fields of a model class that a config may set."""
  return {f.name: f for f in dataclasses.fields(model)
          if f.init and f.name not in _NOT_CONFIGURABLE}


def _to_tuples(value: Any) -> Any:
  # Configs and JSON give lists; module fields are compared and hashed, so freeze.
  if isinstance(value, (list, tuple)):
    return tuple(_to_tuples(v) for v in value)
  return value


def build(model: type[nn.Module], fields: Mapping[str, Any], section: str = "model") -> nn.Module:
  """``model(**fields)``, lists frozen to tuples, with a bad value's error naming its
  config key: ``model.dropout_rate must be in [0, 1), got 1.5``.

  Args:
    model: the module class.
    fields: its constructor fields (already checked to be fields of ``model``).
    section: the config section the fields come from (``model``,
      ``model.generator``), to prefix the message with.

  Raises:
    JdlError: the module refused a value (its own check, or a ``TypeError``/
      ``ValueError`` from the constructor).
  """
  try:
    return model(**{k: _to_tuples(v) for k, v in fields.items()})
  except (TypeError, ValueError) as e:
    message = str(e)
    words = message.split(" ", 2)
    valid = model_fields(model)  # Also a default that the others make wrong (eos_id).
    if words[0] in valid:  # "dropout_rate must be ..."
      message = f"{section}.{message}"
    elif words[0] == "unknown" and len(words) > 1 and words[1] in valid:  # errors.lookup's.
      message = f"{section}.{words[1]}: {message}"
    else:
      message = f"{section}: {message}"
    raise errors.JdlError(message) from None


def create_model(config: Mapping[str, Any], *, num_outputs: int) -> nn.Module:
  """Builds the model a config describes.

  Args:
    config: an ``ml_collections.ConfigDict`` or a mapping with ``name`` (a key of
      :data:`MODELS`) and any constructor fields of that model; lists are turned
      into tuples.
    num_outputs: width of the output, set by the data (e.g. number of classes);
      ignored by a model without a ``num_outputs`` field (``seq2seq``, whose
      output width is its ``tgt_vocab_size``).

  Returns:
    The unbound module.

  Raises:
    JdlError: a missing or unknown name, an unknown or missing field, a
      ``num_outputs`` in the config that disagrees with the data, or a bad value.

  Examples:
    >>> model = create_model({"name": "mlp", "hidden": [128]}, num_outputs=10)
    >>> model.hidden
    (128,)
  """
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  errors.require(isinstance(config, Mapping),
                 f"model config must be a mapping, got {type(config).__name__}")
  fields = dict(config)
  name = fields.pop("name", None)
  errors.require(name is not None,
                 f"model config needs a 'name'; valid names: {errors.names(MODELS)}")
  model = errors.lookup("model", name, MODELS)
  valid = model_fields(model)
  for key in fields:
    errors.require(
        key in valid,
        f"unknown field {key!r} for model {name!r}{errors.did_you_mean(key, valid) or ';'} "
        f"valid fields: {errors.names(valid)}",
    )
  if "num_outputs" in valid and "num_outputs" in fields:
    errors.require(
        fields["num_outputs"] == num_outputs,
        f"model config sets num_outputs={fields['num_outputs']!r} but the data "
        f"needs {num_outputs}; remove num_outputs from the model config",
    )
  if "num_outputs" in valid:
    fields["num_outputs"] = num_outputs
  missing = [k for k, f in valid.items() if k not in fields
             and f.default is dataclasses.MISSING
             and f.default_factory is dataclasses.MISSING]
  errors.require(not missing,
                 f"model {name!r} needs field(s): {errors.names(missing)}")
  return build(model, fields)


__all__ = [
    "ACTIVATIONS",
    "Bidirectional",
    "CNN",
    "Conv1DText",
    "ConvAutoencoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "DenseAutoencoder",
    "Embedding",
    "EncoderOutput",
    "GRUCell",
    "get_head_initializer",
    "INITIALIZERS",
    "InceptionBlock",
    "InceptionNet",
    "LSTMCell",
    "LeNet5",
    "MLP",
    "MLPDiscriminator",
    "MLPGenerator",
    "MODELS",
    "RNN",
    "ResNet",
    "ResNet18",
    "ResNet20",
    "ResidualBlock",
    "Seq2Seq",
    "SequenceRegressor",
    "SimpleRNNCell",
    "StackedRNN",
    "TextClassifier",
    "VAE",
    "VGG",
    "build",
    "create_model",
    "get_activation",
    "get_initializer",
    "model_fields",
]
