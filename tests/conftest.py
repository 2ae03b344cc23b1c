"""Shared fixtures: small configs that train in a second or two on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must not depend on the user's JDL_DATA_DIR or write under $HOME.
os.environ.pop("JDL_DATA_DIR", None)

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"


def make_config(**overrides):
  """A digits MLP config, small enough for unit tests; keys as dotted overrides."""
  from jdl.config import base_config
  config = base_config()
  config.dataset = "digits"
  config.model.name = overrides.pop("model__name", "mlp")
  if config.model.name == "mlp":
    config.model.hidden = (32,)
  config.batch_size = 64
  config.num_epochs = 2
  config.tensorboard = False
  config.plots = False
  config.async_checkpoints = False
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split("__")
    for p in parents:
      node = node[p]
    if leaf not in node and parents == ["model"]:
      with node.unlocked():
        node[leaf] = value
    else:
      node[leaf] = value
  config.lock()
  return config


@pytest.fixture
def tiny_config():
  return make_config
