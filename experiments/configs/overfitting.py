"""Overfitting: an MLP 784-1024-1024-10 on 1,000 MNIST training images (100 per class).

Adam 1e-3, batch 50, no regularisation. The driver experiments/overfitting.py
holds out 5,000 other training images for validation (this config alone holds out
10% of the 1,000), tests on the full 10,000-image test set, and compares this
baseline with L2, dropout, early stopping and data augmentation.

Command:  python experiments/overfitting.py --data_dir ../shared/data/mnist
          (this config alone: jdl train --config overfitting --workdir runs/overfitting --config.data_dir=../shared/data/mnist)
Result:   none 91.00%, L2 2e-4 90.94%, dropout 0.5 90.63%, early stopping 90.86% after 11
          of 50 epochs (all ~100% train accuracy, train-val gap ~9 points); augmentation
          (shifts, rotations) 93.44%, gap 4.3 points (experiments/README.md; 2026-11-29).
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
