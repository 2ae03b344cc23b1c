"""GAN with MLP generator (100-256-512-1024-784) and discriminator (784-512-256-1) on MNIST.

Non-saturating generator loss, Adam(2e-4, b1=0.5) for both players, one
discriminator step per generator step; a sample grid of a fixed noise batch per
epoch in plots/. Scored by Inception Score and Frechet distance in the feature
space of a jdl MNIST classifier (train runs/mnist_fast first).

Command:  jdl train --config gan_mnist --workdir runs/gan_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MLP GAN (non-saturating loss) on MNIST"
  config.dataset = "mnist"
  config.task = "gan"
  config.normalize = "none"
  config.validation_split = 0.0
  config.metrics = ()
  config.model.name = "mlp_gan"
  config.model.generator = {"hidden": (256, 512, 1024)}
  config.model.discriminator = {"hidden": (512, 256), "dropout_rate": 0.3}
  config.generative.latent_dim = 100
  config.generative.classifier_workdir = "runs/mnist_fast"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-4
  config.optimizer.b1 = 0.5
  config.batch_size = 64
  config.num_epochs = 70  # IS 8.13 after 30 epochs, 8.45 after 50, 8.62 after 70.
  config.monitor = ""  # No "best" GAN by a loss: keep the latest checkpoints.
  return config
