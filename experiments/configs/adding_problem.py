"""The adding problem (Hochreiter & Schmidhuber 1997): sum the two marked values of a long sequence.

In the form of Le et al. (2015) and Arjovsky et al. (2016): each input is T steps of
(value ~ U[0, 1], marker), with one marker in each half; the target is the sum of
the two marked values (Hochreiter & Schmidhuber's values lie in [-1, 1] and their
target is 0.5 + (X1 + X2) / 4). Predicting the mean (1) gives MSE
1/6 = 0.167, the trivial baseline: a model must carry one value across up to T
steps. LSTM and GRU learn it; a simple (tanh) RNN's gradient w.r.t. the early
inputs vanishes (experiments/adding_problem.py plots it). Cell and length:
--config.model.cell=lstm|gru|simple, --config.sequence.seq_len=50|100|200.
Gradient clipping by global norm 1.0, as for every recurrent config.
--config.model.tbptt=k: truncated BPTT, the loss's gradient reaches the last k
inputs only (windows of k start at the first step: with k not dividing T, the last
T mod k inputs); the GRU at T = 200 with k = 50 still learns, more slowly (one seed,
8 epochs: test MSE 0.0151, full BPTT 0.0006).

`jdl check --config adding_problem` needs --overfit-steps 1000: the LSTM takes ~600
Adam steps to bring 32 sequences' loss below 1% of the mean target's (300 by default).

Command:  jdl train --config adding_problem --workdir runs/adding_lstm_T100 --config.model.cell=lstm --config.sequence.seq_len=100
Result:   test MSE at T = 50 / 100 / 200: LSTM 0.00021 / 0.00020 / 0.00041, GRU 0.00006 / 0.00011 /
          0.00022, simple RNN 0.082 / 0.166 / 0.169 (baseline 0.167); details in experiments/README.md.
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "adding problem: LSTM / GRU / simple RNN, test MSE (baseline 0.167)"
  config.dataset = "adding_problem"
  config.n_samples = 10000  # Train examples; the test set has 1,000 more.
  config.sequence.seq_len = 100
  config.task = "regression"
  config.loss = "mse"
  config.metrics = ("mse",)
  config.normalize = "none"
  config.validation_split = 0.1
  config.model.name = "seq_rnn"
  config.model.cell = "lstm"
  config.model.hidden = (64,)
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 3e-3
  config.optimizer.clip_norm = 1.0
  config.batch_size = 50
  config.num_epochs = 30
  return config
