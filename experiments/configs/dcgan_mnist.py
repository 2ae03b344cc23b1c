"""DCGAN-style GAN on MNIST: resize-conv generator (7x7x64 -> 14x14x32 -> 28x28x1), strided-conv discriminator (32, 64).

Non-saturating loss, batch norm in the generator, Adam(2e-4, b1=0.5). Unlike
Radford et al.: no batch norm in the discriminator, which drops out 30% of its
features instead, and a sigmoid output in [0, 1] (jdl's image range), not tanh. Half the
widths of the usual MNIST DCGAN and 3x3 windows instead of 5x5: on 2 CPU cores even
these half-width nets cost ~1 s a step with 5x5 windows (a convolution there is a
matmul over kernel_size**2 shifted views, and memory traffic dominates).

Command:  jdl train --config dcgan_mnist --workdir runs/dcgan_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from gan_mnist import get_config as gan_config


def get_config():
  config = gan_config()
  config.description = "DCGAN-style GAN on MNIST"
  config.model.name = "dcgan"
  config.model.generator = {"features": (64, 32), "kernel_size": 3}
  config.model.discriminator = {"features": (32, 64), "kernel_size": 3, "norm": "none",
                                "dropout_rate": 0.3}
  config.batch_size = 128
  config.num_epochs = 10
  return config
