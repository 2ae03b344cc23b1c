"""Anomaly detection: ae_mnist trained without one digit (9); reconstruction error flags it.

experiments/ae_anomaly.py trains it (and, with --digits, one run per held-out digit),
scores every test image by its reconstruction error and reports the ROC-AUC of
detecting the held-out digit, against PCA with as many components as the code.

Command:  python experiments/ae_anomaly.py --data_dir ../shared/data/mnist
          (the training alone: jdl train --config ae_anomaly --workdir runs/ae_anomaly --config.data_dir=../shared/data/mnist)
Result:   see experiments/README.md (generative models).
"""

from ae_mnist import get_config as ae_config


def get_config():
  config = ae_config()
  config.description = "Autoencoder trained without the digit 9 (anomaly detection)"
  config.classes = (0, 1, 2, 3, 4, 5, 6, 7, 8)  # The normal digits.
  return config
