"""LeNet-5 (6-16-120-84-10, 61,706 parameters) on MNIST: mnist_cnn with another model.

Command:  jdl train --config lenet5_mnist --workdir runs/lenet5_mnist --config.data_dir=../shared/data/mnist
Result:   98.91% test accuracy (experiments/README.md; 2026-11-29).
"""

import ml_collections

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "LeNet-5 (61,706 parameters) on MNIST"
  config.model = ml_collections.ConfigDict({"name": "lenet5", "activation": "relu", "pool": "max"})
  config.checkpoint_every_steps = 0
  config.metrics = ("accuracy",)
  return config
