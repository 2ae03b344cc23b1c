"""jdl: a JAX functional training framework.

Flax linen models called through ``apply``, optax chains built from config, one
``TrainState`` PyTree, pure jitted and donated steps, orbax checkpoints with exact
resume. Start with :func:`jdl.fit` and a config from :func:`jdl.load_config`.
"""

from jdl import data
from jdl import diagnostics
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
from jdl.checkpoint import Checkpointer
from jdl.config import base_config
from jdl.config import load_config
from jdl.errors import JdlError
from jdl.errors import NonFiniteError
from jdl.summary import count_params
from jdl.summary import param_table
from jdl.train.loop import FitResult
from jdl.train.loop import Trainer
from jdl.train.loop import evaluate
from jdl.train.loop import fit
from jdl.train.loop import load_run
from jdl.train.loop import predict
from jdl.train.state import TrainState
from jdl.train.state import create_train_state
from jdl.train.steps import SupervisedTask
from jdl.train.steps import make_eval_step
from jdl.train.steps import make_train_step

__version__ = "0.1.0"

__all__ = ["fit", "evaluate", "predict", "load_run", "Trainer", "FitResult",
    "TrainState", "create_train_state", "make_train_step", "make_eval_step",
    "SupervisedTask", "Checkpointer", "base_config", "load_config", "count_params",
    "param_table", "JdlError", "NonFiniteError", "data", "diagnostics", "explain",
    "generative", "losses", "lr_finder", "metrics", "models", "optim", "regularizers",
    "sanity", "sequence"]
