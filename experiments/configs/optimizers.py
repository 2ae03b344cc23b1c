"""Optimizers compared: one MLP on 10,000 MNIST images, each optimizer at its usual rate.

MLP 784-256-256-10 (ReLU), batch 128, constant learning rate, 10 epochs, 5,000
other training images for validation (held out by the driver: this config alone
holds out 10% of the 10,000, training on 9,000) and the full test set. The driver
experiments/optimizers.py trains it once per optimizer of jdl (optimizer.name),
each at the learning rate its authors or the common libraries use (the table in
experiments/README.md), from the same initial parameters and data order.

Command:  python experiments/optimizers.py --data_dir ../shared/data/mnist
          (this config alone, Adam: jdl train --config optimizers --workdir runs/optimizers --config.data_dir=../shared/data/mnist)
Result:   experiments/README.md, optimizers.
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MLP 784-256-256-10 on 10,000 MNIST images (optimizers compared)"
  config.dataset = "mnist"
  config.examples_per_class = 1000
  config.validation_split = 0.1
  config.normalize = "global"
  config.model.name = "mlp"
  config.model.hidden = (256, 256)
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 10
  config.checkpoint_every_epochs = 1000  # The last epoch only.
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy",)
  return config
