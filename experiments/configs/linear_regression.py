"""Linear regression by gradient descent; compare with the normal equations.

Command:  jdl train --config linear_regression --workdir runs/linear_regression
Result:   see experiments/README.md (weights agree with (X^T X)^-1 X^T y).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "Linear regression by full-batch gradient descent (closed form check)"
  config.dataset = "linear"
  config.task = "regression"
  config.loss = "mse"
  config.metrics = ("mse", "mae", "r2")
  config.validation_split = 0.0
  config.normalize = "none"
  config.model.name = "mlp"
  config.model.hidden = ()
  config.optimizer.name = "sgd"
  config.optimizer.learning_rate = 0.1
  config.batch_size = 160
  config.num_epochs = 300  # Full-batch steps.
  config.print_every_epochs = 50
  config.checkpoint_every_epochs = 100
  config.monitor = ""
  return config
