"""MLP 784-512-512-10 with dropout on MNIST: mnist_cnn's data and optimizer, another model.

Command:  jdl train --config mnist_mlp --workdir runs/mnist_mlp --config.data_dir=../shared/data/mnist
Result:   98.57% test accuracy (experiments/README.md; 2026-11-29).
"""

import ml_collections

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "MLP 784-512-512-10 with dropout on MNIST"
  config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (512, 512),
                                            "dropout_rate": 0.2})
  config.num_epochs = 15
  config.checkpoint_every_steps = 0
  return config
