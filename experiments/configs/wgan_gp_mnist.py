"""WGAN-GP on MNIST (Gulrajani et al. 2017): critic without batch norm, lambda 10, n_critic 5.

Adam(1e-4, b1=0.5, b2=0.9) for both players; the critic loss (with the gradient
penalty), the Wasserstein estimate and the penalty are logged per epoch.

Command:  jdl train --config wgan_gp_mnist --workdir runs/wgan_gp_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from dcgan_mnist import get_config as dcgan_config


def get_config():
  config = dcgan_config()
  config.description = "WGAN-GP (DCGAN-style, critic without batch norm) on MNIST"
  config.task = "wgan_gp"
  config.model.discriminator = {"features": (32, 64), "norm": "none"}
  config.generative.d_steps = 5
  config.generative.gp_weight = 10.0
  config.optimizer.learning_rate = 1e-4
  config.optimizer.b1 = 0.5
  config.optimizer.b2 = 0.9
  config.batch_size = 64
  config.num_epochs = 20
  return config
