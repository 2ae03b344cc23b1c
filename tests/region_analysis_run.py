"""Trains two small models in a fresh process; run by tests/test_runtime.py.

``python tests/region_analysis_run.py ON OUT.npz``: ``ON`` ('1' or '0') is
``config.xla_cpu_region_analysis``. Writes every trained array (parameters, batch
statistics, optimizer state) of a dropout MLP and a batch-norm CNN, the XLA_FLAGS
the run saw, and how many copies of a weight matrix the MLP's compiled block of
steps makes in its loop body.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # This checkout, and conftest.

import jax  # noqa: E402
import numpy as np  # noqa: E402

from conftest import make_config  # noqa: E402
from jdl.train import loop  # noqa: E402

MODELS = {
    "mlp": dict(model__hidden=(64, 64), model__dropout_rate=0.2),
    "cnn": dict(model__name="cnn", model__features=(4, 8), model__dense=(16,),
                model__batch_norm=True),
}


def loop_weight_copies(trainer: loop.Trainer) -> int:
  """Copies of rank-2 float arrays inside the while bodies of the compiled block."""
  shapes = trainer.block_shapes(4)
  text = jax.jit(trainer.fit_block).lower(trainer.state, trainer.empty_acc(), *shapes)
  text = text.compile().as_text()
  bodies = set(re.findall(r"body=(%[\w.\-]+)", text))
  count = 0
  for comp in re.split(r"\n(?=%|ENTRY)", text):
    if comp.split(" ", 1)[0] in bodies:
      count += len(re.findall(r"= f32\[\d+,\d+\]\S* copy\(", comp))
  return count


def main() -> None:
  on, out = sys.argv[1] == "1", sys.argv[2]
  arrays = {}
  for name, overrides in MODELS.items():
    config = make_config(num_epochs=2, xla_cpu_region_analysis=on, **overrides)
    if name == "mlp":
      arrays["mlp_loop_copies"] = np.int64(loop_weight_copies(loop.Trainer(config, quiet=True)))
    trainer = loop.Trainer(config, quiet=True)
    trainer.fit()
    leaves = jax.tree_util.tree_leaves_with_path(
        {"params": trainer.state.params, "model_state": trainer.state.model_state,
         "opt_state": trainer.state.opt_state})
    for path, leaf in leaves:
      arrays[f"{name}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
  arrays["xla_flags"] = np.array(os.environ.get("XLA_FLAGS", ""))
  np.savez(out, **arrays)


if __name__ == "__main__":
  main()
