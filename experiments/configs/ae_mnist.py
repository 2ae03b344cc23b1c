"""Dense autoencoder 784-256-64 (sigmoid code) on MNIST, Bernoulli reconstruction loss.

Variants by override: denoising (--config.augment.noise_std=0.3: noise on the inputs
only, from the step's key; the target stays clean), sparse
(--config.regularization.activity_l1=1e-4: L1 on the sown code). The convolutional
autoencoder has other model fields (no `hidden`), so it takes a config file of its own:

    import ml_collections
    from ae_mnist import get_config as ae_config

    def get_config():
      config = ae_config()
      config.model = ml_collections.ConfigDict({"name": "conv_autoencoder", "latent": 32})
      return config

Command:  jdl train --config ae_mnist --workdir runs/ae_mnist --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md (generative models).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "Dense autoencoder 784-256-64 (sigmoid code) on MNIST"
  config.dataset = "mnist"
  config.task = "autoencoder"
  config.normalize = "none"  # Pixels in [0, 1]: Bernoulli means.
  config.validation_split = 1 / 12
  config.metrics = ()  # All of the task's: mse (and the loss).
  config.model.name = "dense_autoencoder"
  config.model.hidden = (256,)
  config.model.latent = 64
  config.model.code_activation = "sigmoid"
  config.regularization.activity_include = ".*code"  # The sparse variant's target.
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 10
  config.monitor = "val_loss"
  return config
