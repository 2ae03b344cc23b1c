"""Optimizers, learning-rate schedules and regularisation, built from optax.

Three config sections drive this package (see :func:`default_config`):
``optimizer``, ``schedule`` and ``reduce_on_plateau``. Durations in the config are
given in epochs and converted to optimizer updates once.

Modules:

* :mod:`jdl.optim.schedules`: learning-rate schedules, indexed by optimizer update
  count; what ``steps_per_epoch`` counts under gradient accumulation.
* :mod:`jdl.optim.masks`: parameter paths (``'Conv_0/kernel'``, no leading
  collection name), kernel masks and freezing. Loss penalties and max-norm are in
  :mod:`jdl.regularizers`.
* :mod:`jdl.optim.plateau`: reduce on plateau, update count, current learning rate.
* ``jdl.optim._chain``: the config sections and the optax chain of
  :func:`create_optimizer`.
"""

from jdl.optim._chain import OPTIMIZERS
from jdl.optim._chain import advice
from jdl.optim._chain import apply_updates
from jdl.optim._chain import create_optimizer
from jdl.optim._chain import default_config
from jdl.optim.masks import FROZEN
from jdl.optim.masks import KERNEL_NAMES
from jdl.optim.masks import TRAINABLE
from jdl.optim.masks import check_freeze_patterns
from jdl.optim.masks import freeze_labels
from jdl.optim.masks import frozen_paths
from jdl.optim.masks import keep_frozen_state
from jdl.optim.masks import kernel_mask
from jdl.optim.masks import param_path
from jdl.optim.plateau import PlateauState
from jdl.optim.plateau import current_learning_rate
from jdl.optim.plateau import scale_by_plateau
from jdl.optim.plateau import update_count
from jdl.optim.plateau import update_plateau
from jdl.optim.schedules import SCHEDULES
from jdl.optim.schedules import create_learning_rate_fn
from jdl.optim.schedules import shortest_run

__all__ = [
    "FROZEN",
    "KERNEL_NAMES",
    "OPTIMIZERS",
    "PlateauState",
    "SCHEDULES",
    "TRAINABLE",
    "advice",
    "apply_updates",
    "check_freeze_patterns",
    "create_learning_rate_fn",
    "shortest_run",
    "create_optimizer",
    "current_learning_rate",
    "default_config",
    "freeze_labels",
    "frozen_paths",
    "keep_frozen_state",
    "kernel_mask",
    "param_path",
    "scale_by_plateau",
    "update_count",
    "update_plateau",
]
