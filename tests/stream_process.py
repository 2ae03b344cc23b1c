"""One process of a two-process streamed (``dataset='npy_dir'``) run, for tests/test_parallel.py.

Run as ``python tests/stream_process.py ROOT DATA_DIR ADDRESS PROCESS_ID`` twice (process
ids 0 and 1, one CPU device each, gloo collectives). Trains ``ROOT/full`` uninterrupted,
then ``ROOT/crash`` up to a simulated crash after step 15 (last checkpoint: step 10) and
resumed to the end, and writes what this process read, and whether the resumed run
equals the uninterrupted one bit for bit, to ``ROOT/process_ID.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # This checkout, and conftest.

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jdl  # noqa: E402
from conftest import Crash, make_config  # noqa: E402
from jdl import cli  # noqa: E402

# 1500 rows, 150 held out: 1350 train rows, 21 steps of 64 an epoch in blocks of 5;
# val 150 and test 297 rows in batches of 50.
SETTINGS = dict(dataset="npy_dir", validation_split=0.1, num_epochs=2, scan_chunk=5,
                checkpoint_every_steps=5, eval_batch_size=50, model__dropout_rate=0.0)


def config(data_dir: str, **overrides):
  return make_config(**SETTINGS, data_dir=data_dir, **overrides)


def host_leaves(state) -> list[np.ndarray]:
  """The (replicated) state's leaves, from this process's first shard."""
  return [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state.variables)]


def main() -> None:
  root, data_dir, address, pid = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
  cli._quiet_library_logs()
  dist = dict(distributed__coordinator_address=address, distributed__num_processes=2,
              distributed__process_id=pid)
  full = jdl.fit(config(data_dir, **dist), root / "full", quiet=True)
  t = full.trainer
  report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
            "gathered": t.gathered, "columns": list(t.feed.columns),
            "rows_read": t.feed.rows_read, "total_steps": t.total_steps,
            "eval_batch_size": t.eval_batch_size, "val_rows_read": t.data.val.eval_rows_read,
            "test_rows_read": t.data.test.eval_rows_read, "test_metrics": full.test_metrics}
  try:
    jdl.fit(config(data_dir, **dist), root / "crash", quiet=True, callbacks=[Crash(at_step=13)])
    raise AssertionError("the crash callback did not fire")
  except KeyboardInterrupt:
    pass
  resumed = jdl.fit(config(data_dir, **dist), root / "crash", quiet=True)
  report["resumed_rows_read"] = resumed.trainer.feed.rows_read
  report["resumed_bitwise"] = all(
      a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
      for a, b in zip(host_leaves(full.state), host_leaves(resumed.state), strict=True))
  (root / f"process_{pid}.json").write_text(json.dumps(report) + "\n")


if __name__ == "__main__":
  main()
