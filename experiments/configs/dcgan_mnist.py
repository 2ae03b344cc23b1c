"""DCGAN-style GAN on MNIST: resize-conv generator (7x7x64 -> 14x14x32 -> 28x28x1), strided-conv discriminator (32, 64).

Non-saturating loss, batch norm in the generator, Adam(2e-4, b1=0.5). Half the
widths of the DCGAN paper's MNIST-sized nets, so that an epoch fits a 2-core CPU.

Command:  jdl train --config dcgan_mnist --workdir runs/dcgan_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from gan_mnist import get_config as gan_config


def get_config():
  config = gan_config()
  config.description = "DCGAN-style GAN on MNIST"
  config.model.name = "dcgan"
  config.model.generator = {"features": (64, 32)}
  config.model.discriminator = {"features": (32, 64), "norm": "none", "dropout_rate": 0.3}
  config.batch_size = 128
  config.num_epochs = 10
  return config
