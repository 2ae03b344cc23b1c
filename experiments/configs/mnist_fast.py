"""Time-to-accuracy on MNIST: >= 99.0% test accuracy as fast as possible on 2 CPU cores.

The mnist_cnn network with dropout 0.2, Adam 3e-3, a short linear warm-up and a
cosine decay over a 3-epoch budget, every training example used (no validation
split). On CPU, jdl's convolutions lower to patches @ kernel and the epoch runs as
fused lax.scan blocks.

Command:  jdl train --config mnist_fast --workdir runs/mnist_fast --config.data_dir=../shared/data/mnist
Result:   99.10% test accuracy after 2 epochs, 36.7 s from process start on 2026-11-28's
          2-core Intel Xeon VM (microbatches of 32, config.microbatch_size's automatic
          choice there); 99.19% after 3; see benchmarks/README.md (time_to_accuracy.py).
"""

from mnist_cnn import get_config as mnist_cnn_config


def get_config():
  config = mnist_cnn_config()
  config.description = "MNIST to >= 99% test accuracy as fast as possible (CPU)"
  config.validation_split = 0.0  # Every example trains; the test split is the judge.
  config.model.dropout_rate = 0.2
  config.optimizer.learning_rate = 3e-3
  config.schedule.name = "warmup_cosine"
  config.schedule.warmup_epochs = 0.2
  config.num_epochs = 3
  config.checkpoint_every_steps = 0
  config.monitor = ""
  config.tensorboard = False
  config.metrics = ("accuracy",)
  return config
