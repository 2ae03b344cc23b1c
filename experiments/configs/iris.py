"""MLP 4-16-3 on iris, 60/40 split (random_state=0), vs scikit-learn LogisticRegressionCV.

Command:  jdl train --config iris --workdir runs/iris
Result:   see experiments/README.md (both accuracies, measured by tests/test_experiments.py).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MLP 4-16-3 on iris (60/40 split, random_state=0)"
  config.dataset = "iris"
  config.test_split = 0.4
  config.validation_split = 0.0
  config.model.name = "mlp"
  config.model.hidden = (16,)
  config.optimizer.learning_rate = 1e-2
  config.batch_size = 16
  config.num_epochs = 100
  config.monitor = ""
  config.metrics = ("accuracy", "macro_f1")
  return config
