"""Vanishing gradients: a 10-hidden-layer sigmoid MLP on MNIST (ReLU and batch-norm variants in the driver).

MLP 784-(128 x 10)-10, SGD with momentum 0.9 at lr 0.01, batch 128. The driver
experiments/vanishing_gradients.py trains this network with sigmoid (Glorot
init), ReLU (He init) and each with batch norm, and measures the gradient norm of
every layer on a fixed batch at initialisation and during training.

Command:  python experiments/vanishing_gradients.py --data_dir ../shared/data/mnist
          (this config alone: jdl train --config vanishing_gradients --workdir runs/vg --config.data_dir=../shared/data/mnist)
Result:   at initialisation the sigmoid network's first-layer gradient norm is 1.7e-06 times
          its output layer's, and it stays at 10.10% test accuracy after 3 epochs; ReLU
          95.41%, sigmoid + batch norm 94.71%, ReLU + batch norm 97.10%
          (experiments/README.md, vanishing_gradients; 2026-11-29).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "10-hidden-layer sigmoid MLP on MNIST (vanishing gradients)"
  config.dataset = "mnist"
  config.validation_split = 1 / 12
  config.normalize = "global"
  config.model.name = "mlp"
  config.model.hidden = (128,) * 10
  config.model.activation = "sigmoid"
  config.model.kernel_init = "glorot_uniform"
  config.model.batch_norm = False
  config.optimizer.name = "momentum"
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.01
  config.batch_size = 128
  config.num_epochs = 3
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.metrics = ("accuracy",)
  return config
