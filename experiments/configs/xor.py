"""XOR with a small MLP (Goodfellow et al., Deep Learning, sec. 6.1).

Command:  jdl train --config xor --workdir runs/xor
Result:   see experiments/README.md (4/4 points correct).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "XOR with an MLP 2-8-1 (tanh), binary cross-entropy"
  config.dataset = "xor"
  config.n_samples = 64  # 16 copies of each point; the test set is the 4 points.
  config.validation_split = 0.0
  config.normalize = "none"
  config.model.name = "mlp"
  config.model.hidden = (8,)
  config.model.activation = "tanh"
  config.model.kernel_init = "glorot_uniform"
  config.loss = "binary_crossentropy"
  config.metrics = ("accuracy",)
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 0.05
  config.batch_size = 16
  config.num_epochs = 60
  config.print_every_epochs = 10
  config.checkpoint_every_epochs = 20
  config.monitor = ""
  config.plots = True
  return config
