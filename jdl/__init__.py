"""jdl: a JAX functional training framework.

Flax linen models called through ``apply``, optax chains built from config, one
``TrainState`` PyTree, pure jitted and donated steps, orbax checkpoints with exact
resume. Start with :func:`jdl.fit` and a config from :func:`jdl.load_config`.
"""

import importlib
from typing import TYPE_CHECKING

# The package imports its modules (and JAX) when a name is first used (PEP 562), so
# that `jdl --help`, `jdl list` and a Ctrl-C while the command starts need no JAX.
_SUBMODULES = frozenset({
    "checkpoint", "cli", "config", "data", "diagnostics", "errors", "explain", "generative",
    "losses", "lr_finder", "metrics", "models", "optim", "regularizers", "sanity",
    "sequence", "summary", "train",
})
_ATTRIBUTES = {
    "Checkpointer": "jdl.checkpoint",
    "base_config": "jdl.config",
    "load_config": "jdl.config",
    "JdlError": "jdl.errors",
    "NonFiniteError": "jdl.errors",
    "count_params": "jdl.summary",
    "param_table": "jdl.summary",
    "Callback": "jdl.train.callbacks",
    "EarlyStopping": "jdl.train.callbacks",
    "FitResult": "jdl.train.loop",
    "Trainer": "jdl.train.loop",
    "evaluate": "jdl.train.reopen",
    "fit": "jdl.train.loop",
    "load_run": "jdl.train.reopen",
    "predict": "jdl.train.reopen",
    "TrainState": "jdl.train.state",
    "create_train_state": "jdl.train.state",
    "SupervisedTask": "jdl.train.steps",
    "make_eval_step": "jdl.train.steps",
    "make_train_step": "jdl.train.steps",
}


def __getattr__(name: str):
  if name in _SUBMODULES:
    return importlib.import_module(f"jdl.{name}")
  if name in _ATTRIBUTES:
    value = getattr(importlib.import_module(_ATTRIBUTES[name]), name)
    globals()[name] = value  # Looked up once.
    return value
  raise AttributeError(f"module 'jdl' has no attribute {name!r}")


def __dir__():
  return sorted({*globals(), *_SUBMODULES, *_ATTRIBUTES})


if TYPE_CHECKING:  # What the names are, for type checkers and IDEs.
  from jdl import checkpoint
  from jdl import config
  from jdl import data
  from jdl import diagnostics
  from jdl import errors
  from jdl import explain
  from jdl import generative
  from jdl import losses
  from jdl import lr_finder
  from jdl import metrics
  from jdl import models
  from jdl import optim
  from jdl import regularizers
  from jdl import sanity
  from jdl import sequence
  from jdl import summary
  from jdl import train
  from jdl.checkpoint import Checkpointer
  from jdl.config import base_config
  from jdl.config import load_config
  from jdl.errors import JdlError
  from jdl.errors import NonFiniteError
  from jdl.summary import count_params
  from jdl.summary import param_table
  from jdl.train.callbacks import Callback
  from jdl.train.callbacks import EarlyStopping
  from jdl.train.loop import FitResult
  from jdl.train.loop import Trainer
  from jdl.train.loop import fit
  from jdl.train.reopen import evaluate
  from jdl.train.reopen import load_run
  from jdl.train.reopen import predict
  from jdl.train.state import TrainState
  from jdl.train.state import create_train_state
  from jdl.train.steps import SupervisedTask
  from jdl.train.steps import make_eval_step
  from jdl.train.steps import make_train_step

__version__ = "0.1.0"

__all__ = ["fit", "evaluate", "predict", "load_run", "Trainer", "FitResult",
    "TrainState", "create_train_state", "make_train_step", "make_eval_step",
    "SupervisedTask", "Callback", "EarlyStopping", "Checkpointer", "base_config", "load_config", "count_params",
    "param_table", "JdlError", "NonFiniteError", "data", "diagnostics", "explain",
    "generative", "losses", "lr_finder", "metrics", "models", "optim", "regularizers",
    "sanity", "sequence", "checkpoint", "config", "errors", "summary", "train"]
