"""Transfer learning, step 1: pretrain the mnist_cnn network on digits 0-4 only.

Command:  jdl train --config transfer_mnist_pretrain --workdir runs/transfer_mnist_pretrain --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (transfer_mnist); run all steps with
          python experiments/transfer_mnist.py --data_dir ../shared/data/mnist
"""

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "Pretrain the mnist_cnn network on digits 0-4"
  config.classes = (0, 1, 2, 3, 4)
  config.num_epochs = 3
  config.checkpoint_every_steps = 0
  config.metrics = ("accuracy",)
  return config
