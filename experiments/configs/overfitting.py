"""Overfitting: an MLP 784-1024-1024-10 on 1,000 MNIST training images (100 per class).

Adam 1e-3, batch 50, no regularisation. The driver experiments/overfitting.py
holds out 5,000 other training images for validation (this config alone holds out
10% of the 1,000), tests on the full 10,000-image test set, and compares this
baseline with L2, dropout, early stopping and data augmentation.

Command:  python experiments/overfitting.py --data_dir ../shared/data/mnist
          (this config alone: jdl train --config overfitting --workdir runs/overfitting --config.data_dir=../shared/data/mnist)
Result:   every variant reaches 100% train accuracy (99.90% with dropout) and ~91% test:
          none 91.08%, L2 2e-4 90.47%, dropout 0.5 90.55%, early stopping 90.91% after
          12 of 50 epochs; train-val gap 8.8-9.4 points (experiments/README.md).
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "MLP 784-1024-1024-10 on 1,000 MNIST images (overfitting)"
  config.dataset = "mnist"
  config.examples_per_class = 100
  config.validation_split = 0.1
  config.normalize = "global"
  config.model.name = "mlp"
  config.model.hidden = (1024, 1024)
  config.model.dropout_rate = 0.0
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 1e-3
  config.batch_size = 50
  config.num_epochs = 50
  config.checkpoint_every_epochs = 1000  # The last epoch only: 1.8M parameters + Adam.
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  config.early_stopping.monitor = "val_loss"
  config.early_stopping.patience = 5
  config.metrics = ("accuracy",)
  return config
