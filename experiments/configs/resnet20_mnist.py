"""ResNet-20 (CIFAR-style: 3 stages of 3 basic residual blocks, 16-32-64 filters) on MNIST.

Batch norm, identity and projection shortcuts (a 1x1 convolution and batch norm
where the shape changes: the paper's option B; its CIFAR networks use option A,
zero-padded identities, which makes 269,722 parameters), global average pooling;
272,474 parameters on 3-channel inputs, 272,186 on MNIST's one channel. Adam + cosine
as mnist_cnn. The driver experiments/architectures.py compares it with the
course's other architectures.

Command:  jdl train --config resnet20_mnist --workdir runs/resnet20_mnist --config.data_dir=../shared/data/mnist
Result:   99.49% test accuracy in 10.3 min on 2 CPU cores (4 epochs, 2026-11-29's AMD VM);
          on 1,000 images a class, 5 epochs (experiments/architectures.py): 98.32%.
"""

import ml_collections

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "ResNet-20 (3 x 3 basic blocks, 16-32-64 filters, batch norm) on MNIST"
  config.model = ml_collections.ConfigDict({"name": "resnet20"})
  config.num_epochs = 4
  config.checkpoint_every_steps = 0
  config.metrics = ("accuracy",)
  return config
