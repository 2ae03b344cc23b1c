"""CNN on scikit-learn's 8x8 digits (the default experiment; no download).

Command:  jdl train --config digits_cnn --workdir runs/digits_cnn
Result:   see experiments/README.md (measured by that command).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "CNN on scikit-learn's 8x8 digits (default experiment)"
  config.dataset = "digits"
  config.test_split = 0.2
  config.validation_split = 0.1
  config.normalize = "global"
  config.model.name = "cnn"
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.pool = "max"
  config.model.dense = (128,)
  config.model.dropout_rate = 0.25
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-3
  config.schedule.name = "cosine"
  config.batch_size = 32
  config.num_epochs = 20
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy", "macro_f1")
  return config
