"""MLP 64-128-64-10 on scikit-learn's 8x8 digits.

Command:  jdl train --config digits_mlp --workdir runs/digits_mlp
Result:   see experiments/README.md.
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MLP 64-128-64-10 on scikit-learn's 8x8 digits"
  config.dataset = "digits"
  config.model.name = "mlp"
  config.model.hidden = (128, 64)
  config.model.dropout_rate = 0.1
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 32
  config.num_epochs = 40
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy", "macro_f1")
  return config
