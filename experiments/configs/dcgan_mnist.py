"""DCGAN-style GAN on MNIST: resize-conv generator (7x7x128 -> 14x14x64 -> 28x28x1), strided-conv discriminator.

Non-saturating loss, batch norm in the generator, Adam(2e-4, b1=0.5).

Command:  jdl train --config dcgan_mnist --workdir runs/dcgan_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from gan_mnist import get_config as gan_config


def get_config():
  config = gan_config()
  config.description = "DCGAN-style GAN on MNIST"
  config.model.name = "dcgan"
  config.model.generator = {"features": (128, 64)}
  config.model.discriminator = {"features": (64, 128), "norm": "none", "dropout_rate": 0.3}
  config.batch_size = 128
  config.num_epochs = 10
  return config
