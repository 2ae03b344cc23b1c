"""VAE 784-500-(20, 20)-500-784 with a Bernoulli decoder on binarized MNIST (the Flax VAE example's shape).

Training images are binarized dynamically (a fresh Bernoulli draw per step from the
step's key); the validation and test images once, with a fixed key. The loss is the
negative ELBO in nats: Bernoulli NLL + closed-form KL to N(0, I).

Command:  jdl train --config vae_mnist --workdir runs/vae_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "VAE (latent 20) on binarized MNIST, negative ELBO in nats"
  config.dataset = "mnist"
  config.task = "vae"
  config.normalize = "none"
  config.validation_split = 1 / 12
  config.metrics = ()  # neg_elbo, recon, kl.
  config.generative.binarize = "dynamic"
  config.model.name = "vae"
  config.model.hidden = (500,)
  config.model.latent = 20
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 10
  config.monitor = "val_loss"
  return config
