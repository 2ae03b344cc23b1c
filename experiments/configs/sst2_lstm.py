"""Sentiment on SST-2: embedding + bidirectional LSTM classifier (GLUE TSVs; dev.tsv as test).

Words as tokens (SST-2 is tokenized and lower-cased), a vocabulary of the train
split's words seen at least twice, texts padded / truncated to 50 tokens at the
end; the LSTM runs over the real tokens only (the padding is masked), and its
outputs are max-pooled over the real steps. Dropout 0.5 on the embeddings and the
pooled features, Adam 2e-3 with a cosine decay over 3 epochs. Gradient clipping by
global norm 1.0, as for every recurrent config.

Command:  jdl train --config sst2_lstm --workdir runs/sst2_lstm --config.data_dir=../shared/data/sst2
Result:   dev accuracy 83.49% (3 epochs, 2.3 min on the 2-core VM); experiments/README.md.
"""

from jdl.config import base_config


def get_config():
  config = base_config()
  config.description = "SST-2 sentiment: embedding + biLSTM, dev accuracy"
  config.dataset = "sst2"
  config.data_dir = ""  # $JDL_DATA_DIR/sst2, else ~/.cache/jdl/sst2; or --config.data_dir.
  config.normalize = "none"
  config.validation_split = 0.05
  config.sequence.maxlen = 50
  config.sequence.min_freq = 2
  config.model.name = "text_rnn"
  config.model.embed_dim = 64
  config.model.cell = "lstm"
  config.model.hidden = (64,)
  config.model.bidirectional = True
  config.model.dropout_rate = 0.5
  config.model.pooling = "max"
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.clip_norm = 1.0
  config.schedule.name = "cosine"
  config.batch_size = 64
  config.num_epochs = 3
  config.monitor = "val_accuracy"
  config.monitor_mode = "max"
  return config
