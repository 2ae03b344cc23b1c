"""MLP 784-512-512-10 with dropout on MNIST (IDX files from data_dir or a download).

Command:  jdl train --config mnist_mlp --workdir runs/mnist_mlp --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md.
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MLP 784-512-512-10 with dropout on MNIST"
  config.dataset = "mnist"
  config.validation_split = 1 / 12  # 5,000 of 60,000.
  config.normalize = "global"
  config.model.name = "mlp"
  config.model.hidden = (512, 512)
  config.model.dropout_rate = 0.2
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.schedule.name = "cosine"
  config.batch_size = 128
  config.num_epochs = 15
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy", "macro_f1")
  return config
