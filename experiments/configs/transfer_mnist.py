"""Transfer learning, step 2: fine-tune on digits 5-9 from the 0-4 network, convs frozen.

The convolutions (and the hidden dense layer) start from runs/transfer_mnist_pretrain;
the 5-way head starts fresh; the convolutions stay frozen. Set
--config.examples_per_class to 100 or 1000 for the small-data regimes, and
--config.init_from.workdir='' --config.optimizer.freeze='()' to train from scratch.

Command:  jdl train --config transfer_mnist --workdir runs/transfer_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (transfer_mnist table, by experiments/transfer_mnist.py).
"""

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "Fine-tune on digits 5-9 from a 0-4 network, convolutions frozen"
  config.classes = (5, 6, 7, 8, 9)
  config.init_from.workdir = "runs/transfer_mnist_pretrain"
  config.init_from.exclude = r"mlp/head/.*"
  config.optimizer.freeze = (r"conv_\d+",)
  config.num_epochs = 3
  config.checkpoint_every_steps = 0
  config.metrics = ("accuracy",)
  return config
