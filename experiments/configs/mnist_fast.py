"""Time-to-accuracy on MNIST: >= 99.0% test accuracy as fast as possible on 2 CPU cores.

A small CNN (conv32-pool-conv64-pool-dense128, dropout) with Adam, a short linear
warm-up and a cosine decay over a 3-epoch budget. On CPU, jdl's convolutions lower
to patches @ kernel and the whole epoch runs as fused lax.scan blocks.

Command:  jdl train --config mnist_fast --workdir runs/mnist_fast --config.data_dir=../shared/data/mnist
Result:   see experiments/README.md and benchmarks/README.md (time to 99%).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MNIST to >= 99% test accuracy as fast as possible (CPU)"
  config.dataset = "mnist"
  config.validation_split = 0.0  # Every example trains; the test split is the judge.
  config.normalize = "global"
  config.model.name = "cnn"
  config.model.features = (32, 64)
  config.model.kernel_size = 3
  config.model.pool = "max"
  config.model.dense = (128,)
  config.model.dropout_rate = 0.2
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 0.2
  config.batch_size = 128
  config.num_epochs = 3
  config.monitor = ""
  config.tensorboard = False
  config.metrics = ("accuracy",)
  return config
