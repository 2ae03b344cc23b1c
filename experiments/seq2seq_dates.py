"""Date normalisation with a seq2seq model: attention vs none, greedy vs beam search, attention map.

Trains configs/seq2seq_dates.py (GRU encoder-decoder, Bahdanau attention) and the
same model with ``attention='none'`` into WORKDIR/seq2seq_dates and
WORKDIR/seq2seq_dates_noattn (finished runs are reused, interrupted ones
resumed), and reports on the held-out test dates (calendar days never seen in
training) the exact match of greedy decoding and of beam search (k = 5, from the
runs' test lines). Draws ``attention.png``: the attention weights of greedy
decoding on a few test inputs (rows: output characters; columns: input
characters). Writes ``results.json`` and ``table.md``.

Usage:  python experiments/seq2seq_dates.py [--workdir runs] [--tiny]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import jdl  # noqa: E402
from jdl.train import loop  # noqa: E402
from jdl.train import reopen  # noqa: E402

NAME = "seq2seq_dates"
EXAMPLES = ("3 march 1998", "tuesday, march 3, 1998", "21st of october 2026", "03/03/98")


def make_config(attention: str, args):
  config = jdl.load_config(NAME)
  config.model.attention = attention
  if args.tiny:
    config.n_samples, config.num_epochs, config.model.hidden = 256, 1, 16
  if args.epochs:  # --epochs wins over --tiny's.
    config.num_epochs = args.epochs
  return config


def test_line(workdir: Path) -> dict:
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in rows if r.get("split") == "test"][-1]


def save_attention(trainer: loop.Trainer, texts, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  src = trainer.encode_texts(texts, vocab="src")
  tokens, attention = trainer.decode(src, beam=False)
  v_src, v_tgt = trainer.vocab["src"], trainer.vocab["tgt"]
  fig, axes = plt.subplots(1, len(texts), figsize=(4.2 * len(texts), 3.8))
  for ax, text, row, src_row, att in zip(np.atleast_1d(axes), texts, tokens, src, attention):
    out = v_tgt.decode(row)
    out = out + ["<eos>"] if 3 in row.tolist() else out  # 3: <eos>.
    n_in = int((src_row != 0).sum())
    ax.imshow(att[:len(out), :n_in], cmap="viridis", aspect="auto", vmin=0, vmax=1)
    ax.set_xticks(range(n_in))
    ax.set_xticklabels([c if c != " " else "_" for c in v_src.decode(src_row[:n_in])],
                       fontsize=7)
    ax.set_yticks(range(len(out)))
    ax.set_yticklabels(out, fontsize=7)
    ax.set_title(f"{text!r} -> {v_tgt.decode_text(row)}", fontsize=8)
  fig.suptitle("Bahdanau attention of greedy decoding (rows: output, columns: input)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  parser = _common.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="runs")
  parser.add_argument("--epochs", type=_common.epochs_arg, default=0,
                      help="default: the config's")
  parser.add_argument("--tiny", action="store_true", help="256 examples, 1 epoch")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  out = _common.out_dir(args, NAME)
  results = []
  for attention, suffix in (("bahdanau", ""), ("none", "_noattn")):
    workdir = Path(args.workdir) / f"{NAME}{suffix}"
    result = _common.fit(make_config(attention, args), workdir, quiet=True)
    line = test_line(workdir)
    seconds = _common.epoch_seconds(workdir)  # Compilation left out.
    results.append({"attention": attention, "token_accuracy": line["token_accuracy"],
                    "greedy_exact_match": line["greedy_exact_match"],
                    "beam_exact_match": line.get("beam_exact_match"),
                    "train_seconds": round(seconds, 1), "steps": int(result.state.step)})
    print(json.dumps(results[-1]), flush=True)
    if attention != "none":
      trainer = reopen.load_run(workdir)
      save_attention(trainer, EXAMPLES, out / "attention.png")
      src = trainer.encode_texts(EXAMPLES, vocab="src")
      beam, _ = trainer.decode(src, beam=True)
      results[-1]["examples"] = {t: trainer.vocab["tgt"].decode_text(r)
                                 for t, r in zip(EXAMPLES, beam)}
  table = _common.markdown_table(
      ["attention", "token accuracy", "greedy exact match", "beam (k = 5) exact match",
       "epochs s (no compile)"],
      [[r["attention"], f"{100 * r['token_accuracy']:.2f}%", f"{100 * r['greedy_exact_match']:.2f}%",
        f"{100 * r['beam_exact_match']:.2f}%", r["train_seconds"]] for r in results])
  _common.write_results(out, table, results)
  print(table)
  return 0


if __name__ == "__main__":
  _common.run(main, "seq2seq_dates.py")
