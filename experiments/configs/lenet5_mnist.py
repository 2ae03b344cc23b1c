"""LeNet-5 (6-16-120-84-10, 61,706 parameters) on MNIST.

Command:  jdl train --config lenet5_mnist --workdir runs/lenet5_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md.
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "LeNet-5 (61,706 parameters) on MNIST"
  config.dataset = "mnist"
  config.validation_split = 1 / 12
  config.normalize = "global"
  config.model.name = "lenet5"
  config.model.activation = "relu"
  config.model.pool = "max"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.schedule.name = "cosine"
  config.batch_size = 128
  config.num_epochs = 6
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy",)
  return config
