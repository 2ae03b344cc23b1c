"""Batch norm and convergence: a 6-hidden-layer ReLU MLP on 10,000 MNIST images, SGD + momentum.

MLP 784-(256 x 6)-10, SGD with momentum 0.9, batch 128, constant learning rate.
The driver experiments/batchnorm.py trains it with and without batch norm
(model.batch_norm) at a low (0.005) and a high (0.2) learning rate, with 5,000
other training images for validation (held out by the driver: this config alone
holds out 10% of the 10,000, training on 9,000) and the full test set.

Command:  python experiments/batchnorm.py --data_dir ../shared/data/mnist
          (this config alone: jdl train --config batchnorm --workdir runs/batchnorm --config.data_dir=../shared/data/mnist)
Result:   lr 0.2: without batch norm the loss turns NaN in the first epoch, with it
          96.58% (94% validation accuracy after 2 epochs); lr 0.005: 95.39% without,
          95.01% with (experiments/README.md, batchnorm; 2026-11-29).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "6-hidden-layer ReLU MLP on 10,000 MNIST images (batch norm)"
  config.dataset = "mnist"
  config.examples_per_class = 1000
  config.validation_split = 0.1
  config.normalize = "global"
  config.model.name = "mlp"
  config.model.hidden = (256,) * 6
  config.model.batch_norm = False
  config.optimizer.name = "momentum"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.005
  config.batch_size = 128
  config.num_epochs = 15
  config.checkpoint_every_epochs = 1000  # The last epoch only.
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy",)
  return config
