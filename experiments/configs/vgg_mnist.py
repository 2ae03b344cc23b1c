"""VGG-style CNN (two stages of two 3x3 convs, batch norm, dense 256) on MNIST.

Stages (32, 32) and (64, 64), each ending in 2x2 max pooling, batch norm in every
layer, dropout 0.3 before the head; Adam + cosine as mnist_cnn. The driver
experiments/architectures.py compares it with the course's other architectures.

Command:  jdl train --config vgg_mnist --workdir runs/vgg_mnist --config.data_dir=../shared/data/mnist
Result:   99.49% test accuracy in 5.5 min on 2 CPU cores (4 epochs, 2026-11-29's AMD VM);
          on 1,000 images a class, 5 epochs (experiments/architectures.py): 98.97%.
"""

import ml_collections

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "VGG-style CNN (32-32-pool-64-64-pool, batch norm, dense 256) on MNIST"
  config.model = ml_collections.ConfigDict({
      "name": "vgg", "stages": ((32, 32), (64, 64)), "dense": (256,), "batch_norm": True,
      "dropout_rate": 0.3})
  config.num_epochs = 4
  config.checkpoint_every_steps = 0
  config.metrics = ("accuracy",)
  return config
