"""XOR with a small MLP (Goodfellow et al., Deep Learning, sec. 6.1).

Command:  jdl train --config xor --workdir runs/xor
Result:   see experiments/README.md (4/4 points correct).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "XOR with an MLP 2-8-1 (tanh), binary cross-entropy"
  config.dataset = "xor"
  config.n_samples = 4
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
  config.batch_size = 4
  config.num_epochs = 300
  config.monitor = ""
  config.plots = True
  return config
