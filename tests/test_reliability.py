"""Workdir safety: locks, --restart, damaged checkpoints, SIGTERM/SIGINT."""

from __future__ import annotations

import errno
import functools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdl
from jdl import cli
from jdl.errors import JdlError, NonFiniteError
from jdl.train import workdir as workdir_lib
from jdl.train.callbacks import Callback

from conftest import assert_exports_equal, cli_env, make_config, start_training



_HOLDER = """
import sys, time
from pathlib import Path
from jdl.train import workdir
with workdir.locked(Path(sys.argv[1]), print):
  print("held", flush=True)
  time.sleep(float(sys.argv[2]))
"""


def test_second_run_on_a_locked_workdir_refuses(tmp_path, capsys):
  sleeper = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path), "60"],
                             stdout=subprocess.PIPE, text=True)
  try:
    assert sleeper.stdout.readline() == "held\n"
    code = cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "xor"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"in use by process {sleeper.pid}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lib.LOCK_NAME]
  finally:
    sleeper.kill()
    sleeper.wait()


# A file system without locks (some NFS and FUSE mounts): flock fails with ENOLCK.
_NO_FLOCK = """
import errno, fcntl
def _no_flock(fd, op):
  raise OSError(errno.ENOLCK, "No locks available")
fcntl.flock = _no_flock
"""

_CONTENDER = """
import sys, time
from pathlib import Path
from jdl.errors import JdlError
from jdl.train import workdir
if sys.argv[3:] == ["noflock"]:
  exec(NO_FLOCK)
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time() - 0.02))  # Spin only the last 20 ms: 3 spinning
while time.time() < start:  # processes would starve the other tests' worker.
  pass
try:
  with workdir.locked(Path(sys.argv[1]), lambda message: None):
    t0 = time.time()
    time.sleep(0.3)
    print("acquired", t0, time.time(), flush=True)
except JdlError as e:
  print("refused", e, flush=True)
"""


@pytest.mark.parametrize("locks", ["flock", "noflock"])
def test_runs_started_at_the_same_instant_never_share_the_workdir(tmp_path, locks):
  # With a pid file alone, a contender read the other's just-created, still empty
  # lock file as stale and took it over: both trained (4 trials in 20). Without
  # kernel locks that pid file was all there was (an exclusive claim file now).
  host = os.uname().nodename
  contender = _CONTENDER.replace("exec(NO_FLOCK)", f"exec({_NO_FLOCK!r})")
  for trial in range(8):
    workdir = tmp_path / str(trial)
    workdir.mkdir()
    if trial % 2:  # A killed run's lock file: taken over by exactly one.
      name = workdir_lib.LOCK_NAME + (".claim" if locks == "noflock" else "")
      (workdir / name).write_text(f"999999999 {host}\n")
    start = str(time.time() + 0.5)
    procs = [subprocess.Popen([sys.executable, "-c", contender, str(workdir), start, locks],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    held = sorted((float(o.split()[1]), float(o.split()[2])) for o in outs
                  if o.startswith("acquired"))
    assert held and all(o.startswith(("acquired", "refused")) for o in outs), outs
    # One holder at a time (a contender scheduled late may take it after a release).
    assert all(b[0] > a[1] for a, b in zip(held, held[1:])), outs
    assert not (workdir / workdir_lib.LOCK_NAME).exists()  # Released by the winner.
    assert not (workdir / (workdir_lib.LOCK_NAME + ".claim")).exists()


def test_without_kernel_locks_a_live_holders_claim_refuses(tmp_path, capsys, monkeypatch):
  holder = _HOLDER.replace("from jdl.train import workdir",
                           "from jdl.train import workdir\n" + _NO_FLOCK)
  sleeper = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path), "60"],
                             stdout=subprocess.PIPE, text=True)
  patched = {}
  exec(_NO_FLOCK.replace("fcntl.flock = _no_flock", ""), patched)
  import fcntl
  monkeypatch.setattr(fcntl, "flock", patched["_no_flock"])  # This process too.
  try:
    said = sleeper.stdout.readline()  # Its warning (print is its warn), then "held".
    assert "the exclusive claim file" in said and sleeper.stdout.readline() == "held\n"
    code = cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "xor"])
    err = capsys.readouterr().err
    assert code == 2 and f"in use by process {sleeper.pid}" in err, err
    assert ".jdl.lock.claim" in err, err
  finally:
    sleeper.kill()
    sleeper.wait()
  # Its holder killed: the claim is stale, taken over with a warning, and released.
  assert cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "xor",
                   "--config.num_epochs=1"]) == 0
  err = capsys.readouterr().err
  assert "the exclusive claim file" in err and "taking over the stale lock" in err, err
  assert not (tmp_path / ".jdl.lock.claim").exists()


def test_without_kernel_locks_a_claim_naming_this_pid_is_a_dead_processes(tmp_path,
                                                                         monkeypatch):
  # A container restarted in place gets the same PIDs: the claim its killed run left
  # named this very process, which counted as alive (in use by itself, for good).
  patched = {}
  exec(_NO_FLOCK.replace("fcntl.flock = _no_flock", ""), patched)
  import fcntl
  monkeypatch.setattr(fcntl, "flock", patched["_no_flock"])
  claim = tmp_path / (workdir_lib.LOCK_NAME + ".claim")
  claim.write_text(f"{os.getpid()} {socket.gethostname()}\n")
  said = []
  with workdir_lib.locked(tmp_path, said.append):
    assert str(claim) in workdir_lib._CLAIMS_HELD  # Taken over: this process's now.
    # Held by this process now: a second lock of it here is refused.
    with pytest.raises(JdlError, match=f"in use by process {os.getpid()}"):
      with workdir_lib.locked(tmp_path, said.append):
        pass
  assert not claim.exists()


@pytest.mark.skipif(not workdir_lib._boot_id(), reason="no kernel boot id (not Linux)")
def test_a_free_lock_of_another_hostname_on_this_kernel_is_taken_over(tmp_path):
  # Each `docker run` has a new hostname: a killed run's lock file refused the next
  # container for good, though the kernel's lock (this kernel's) was free.
  lock = tmp_path / workdir_lib.LOCK_NAME
  lock.write_text(f"999999999 ctr-aaaa {workdir_lib._boot_id()}\n")
  said = []
  with workdir_lib.locked(tmp_path, said.append):
    assert lock.read_text().split()[:2] == [str(os.getpid()), socket.gethostname()]
  assert any("taking over the stale lock" in m for m in said), said
  # Another machine's (another boot id, or none: written before boot ids), refused.
  for other in ("ctr-aaaa 0123-other-boot", "ctr-aaaa"):
    lock.write_text(f"999999999 {other}\n")
    with pytest.raises(JdlError, match="locked by process 999999999 on host ctr-aaaa"):
      with workdir_lib.locked(tmp_path, said.append):
        pass
    assert lock.read_text() == f"999999999 {other}\n"  # Left as it was.


def test_a_workdir_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch):
  # A read-only file system raised a bare OSError (only PermissionError was caught).
  real_open = os.open

  def read_only(path, *args, **kwargs):
    if str(path).endswith(workdir_lib.LOCK_NAME):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(workdir_lib.os, "open", read_only)
  with pytest.raises(JdlError, match=r"cannot write to workdir .*: Read-only file system$"):
    with workdir_lib.locked(tmp_path, print):
      pass


def test_restart_moves_the_damaged_metrics_lines_aside_too(tmp_path):
  for name in ("metrics.jsonl", "metrics.jsonl.damaged-1796289051", "notes.txt"):
    (tmp_path / name).write_text("{}\n")
  moved = workdir_lib.move_aside(tmp_path)
  assert sorted(p.name for p in moved.iterdir()) == ["metrics.jsonl",
                                                     "metrics.jsonl.damaged-1796289051"]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted([moved.name, "notes.txt"])


@pytest.mark.parametrize("check", ["block", "step"])
def test_an_update_that_overflows_the_state_is_never_checkpointed(tmp_path, check):
  # Step 1's loss and gradients are finite, but lr * gradient overflows float32: the
  # step-1 checkpoint held Inf and the error called it intact.
  config = jdl.load_config("linear_regression")
  config.batch_size, config.optimizer.learning_rate = 16, 3e38
  config.checkpoint_every_steps, config.scan_chunk = 1, 1
  config.nonfinite_check, config.async_checkpoints = check, False
  config.tensorboard = config.plots = False
  with pytest.raises(NonFiniteError, match="by step 1 .* an update overflowed them"):
    jdl.fit(config, tmp_path, quiet=True)
  assert not any((tmp_path / "checkpoints").iterdir())


def test_a_lock_file_of_another_hosts_process_refuses(tmp_path, capsys):
  # The kernel's lock may not reach other hosts (FUSE, NFS with local locks): such a
  # file was taken over as stale, and two hosts trained in one workdir.
  (tmp_path / workdir_lib.LOCK_NAME).write_text("4242 another-host\n")
  assert cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "xor"]) == 2
  assert ("locked by process 4242 on host another-host" in capsys.readouterr().err)
  assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lib.LOCK_NAME]


def test_a_stale_lock_is_taken_over(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / workdir_lib.LOCK_NAME).write_text(f"{dead.pid} {os.uname().nodename}\n")
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  assert "stale lock" in capsys.readouterr().err
  assert not (tmp_path / workdir_lib.LOCK_NAME).exists()  # Released at the end.
  assert (tmp_path / "checkpoints").is_dir()


def test_restart_moves_the_previous_run_aside(tmp_path):
  first = jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  jdl.fit(make_config(num_epochs=1, model__hidden=(16,)), tmp_path, quiet=True, restart=True)
  previous = [p for p in tmp_path.iterdir() if p.name.startswith("previous-")]
  assert len(previous) == 1
  old = json.loads((previous[0] / "config.json").read_text())
  assert old["model"]["hidden"] == [32]
  assert (previous[0] / "checkpoints").is_dir()
  assert json.loads((tmp_path / "config.json").read_text())["model"]["hidden"] == [16]
  assert int(first.state.step) > 0


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.mark.parametrize("damage", ["truncate", "empty", "delete_metadata"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys, damage):
  config = make_config(num_epochs=3)
  reference = jdl.fit(config, tmp_path / "ref", quiet=True)
  run = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, run, quiet=True, callbacks=[_CrashAfter(epochs=3)])  # Before epoch 3 is saved.
  steps = _steps(run)
  assert steps[-1] == 40
  latest = run / "checkpoints" / "40"
  files = [p for p in latest.rglob("*") if p.is_file()]
  if damage == "truncate":
    for f in files:
      f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
  elif damage == "empty":
    for f in files:
      f.write_bytes(b"")
  else:
    for f in files:
      if "metadata" in f.name or f.suffix == ".json":
        f.unlink()
  capsys.readouterr()
  resumed = jdl.fit(config, run, quiet=True)
  err = capsys.readouterr().err
  warnings = [line for line in err.splitlines() if "unreadable" in line]
  assert len(warnings) == 1 and "step 40" in warnings[0]
  chex.assert_trees_all_equal(jax.device_get(reference.state.params),
                              jax.device_get(resumed.state.params))


def test_a_truncated_checkpoint_is_told_by_its_cause_and_file(tmp_path, capsys):
  # TensorStore's message is a chain of contexts and JSON specs: its first 200
  # characters ended mid-chain ("... in OCDBT database at local file ...: Erro").
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  step = _steps(tmp_path)[-1]
  for f in (tmp_path / "checkpoints" / str(step) / "tree" / "d").iterdir():
    f.write_bytes(f.read_bytes()[:100])
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert re.search(r"Requested byte range \[0, \d+\) is not valid for value of size 100 "
                   rf"\(file {tmp_path}/checkpoints/{step}/tree/d/\w+\)\); `jdl train` in "
                   "its workdir moves it to damaged-checkpoints/", err), err
  assert len(err.splitlines()) == 1 and "tensorstore_spec" not in err
  # The filter of asyncio's reports of the other failed reads is in place.
  import logging
  from jdl import checkpoint as ckpt_lib
  assert ckpt_lib._ABANDONED_READS in logging.getLogger("asyncio").filters
  # A flipped byte in TensorStore's index: its words, not only the numbers after them.
  crc = ('DATA_LOSS: Error opening "zarr" driver: Error reading "state.params.kernel/.zarray" '
         'in OCDBT database at local file "/r/checkpoints/20/tree/": Error reading '
         '"/r/checkpoints/20/tree/d/68a0": Error decoding b-tree node: CRC-32C checksum '
         'verification failed: expected=3714152547, actual=57955260 [tensorstore_spec=...]')
  assert ckpt_lib.error_summary(ValueError(crc)) == (
      'Error reading "/r/checkpoints/20/tree/d/68a0": Error decoding b-tree node: CRC-32C '
      'checksum verification failed: expected=3714152547, actual=57955260 (file '
      '/r/checkpoints/20/tree/)')
  other = "Encountered error " + "x" * 190 + ": detail"  # Not TensorStore's: as it is.
  assert ckpt_lib.error_summary(ValueError(other)) == other


def test_asyncio_reports_of_the_other_failed_reads_are_dropped():
  # orbax raises the first failed array read; asyncio logged the others' tracebacks
  # when collected ("Task exception was never retrieved"), after jdl's one line.
  import logging
  from jdl import checkpoint as ckpt_lib

  def record(msg, error):
    return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None,
                             (type(error), error, None))

  ts = ValueError('OUT_OF_RANGE: Error opening "cast" driver: Error reading ...')
  keep = ckpt_lib._ABANDONED_READS.filter
  assert not keep(record("Task exception was never retrieved", ts))
  assert not keep(record("Future exception was never retrieved", ts))
  assert keep(record("Task exception was never retrieved", ValueError("a bug of yours")))
  assert keep(record("Task exception was never retrieved",
                     ConnectionError("HTTP: 503 from the server")))
  assert keep(record("Unclosed client session", ts))


def _flip_bytes(step_dir):
  """XORs 64 bytes in the middle of a step's largest data file."""
  data = max((p for p in (step_dir / "tree").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)
  raw = bytearray(data.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 64] = bytes(b ^ 0x5A for b in raw[middle:middle + 64])
  data.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_checkpoint_is_detected_and_the_previous_step_used(tmp_path,
                                                                              capsys):
  # tensorstore's uncompressed files carry no checksum: the one saved in the step's
  # metadata tells the changed bytes, as the truncated and emptied files are told.
  config = make_config(num_epochs=3)
  reference = jdl.fit(config, tmp_path / "ref", quiet=True)
  run = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, run, quiet=True, callbacks=[_CrashAfter(epochs=3)])
  _flip_bytes(run / "checkpoints" / str(_steps(run)[-1]))
  out = tmp_path / "params.npz"
  assert cli.main(["export", "--workdir", str(run), "--out", str(out)]) == 2
  assert "does not match the checksum" in capsys.readouterr().err and not out.exists()
  resumed = jdl.fit(config, run, quiet=True)
  warnings = [line for line in capsys.readouterr().err.splitlines() if "unreadable" in line]
  assert len(warnings) == 1 and "does not match the checksum" in warnings[0], warnings
  chex.assert_trees_all_equal(jax.device_get(reference.state.params),
                              jax.device_get(resumed.state.params))


def test_a_damaged_best_step_is_moved_aside_and_the_test_line_kept_until_replaced(
    tmp_path, capsys):
  # Early stopping's best epoch is not the latest step, and only the latest was checked:
  # a damaged best step failed every later run, and the first of them had already
  # dropped the finished run's test line.
  config = make_config(num_epochs=30, optimizer__learning_rate=0.5, optimizer__name="sgd",
                       early_stopping__enabled=True, early_stopping__patience=1,
                       early_stopping__restore_best=True)
  first = jdl.fit(config, tmp_path, quiet=True)
  best_step = int(first.state.step)
  assert best_step < _steps(tmp_path)[-1]  # Restored: an earlier step than the last.
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert json.loads(lines[-1])["split"] == "test"
  _flip_bytes(tmp_path / "checkpoints" / str(best_step))
  capsys.readouterr()
  again = jdl.fit(config, tmp_path, quiet=True)
  err = capsys.readouterr().err
  assert f"the checkpoint at step {best_step} is unreadable" in err, err
  assert best_step not in _steps(tmp_path)
  assert any(p.name.startswith(f"{best_step}-")
             for p in (tmp_path / "damaged-checkpoints").iterdir())
  assert int(again.state.step) == _steps(tmp_path)[-1]  # The last state, said so.
  records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["split"] for r in records].count("test") == 1  # Replaced, not doubled.
  assert records[:-1] == [json.loads(x) for x in lines[:-1]]
  assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 0  # No longer blocked.


def test_damaged_early_stopping_metadata_is_one_warning_not_a_traceback(tmp_path, capsys):
  # Valid JSON of the wrong shape in the latest step's callback states: evaluate raised
  # AttributeError ('callbacks': null), and a resume trained a whole epoch on a "wait"
  # of "0" before a TypeError lost that epoch's checkpoint.
  config = make_config(num_epochs=2, early_stopping__enabled=True,
                       early_stopping__patience=5, early_stopping__restore_best=True)
  jdl.fit(config, tmp_path, quiet=True)
  first, last = _steps(tmp_path)
  path = tmp_path / "checkpoints" / str(last) / "meta" / "metadata"
  good = json.loads(path.read_text())
  capsys.readouterr()
  for callbacks in (None, [1], {"EarlyStopping": None}):
    path.write_text(json.dumps({**good, "callbacks": callbacks}))
    assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 0
    assert "Traceback" not in capsys.readouterr().err
  state = good["callbacks"]["EarlyStopping"]
  path.write_text(json.dumps({**good, "callbacks": {"EarlyStopping": {**state, "wait": "0"}}}))
  more = make_config(num_epochs=3, early_stopping__enabled=True,
                     early_stopping__patience=5, early_stopping__restore_best=True)
  resumed = jdl.fit(more, tmp_path, quiet=True)
  warnings = [x for x in capsys.readouterr().err.splitlines() if "unreadable" in x]
  assert len(warnings) == 1, warnings
  assert (f"the checkpoint at step {last} is unreadable (a damaged EarlyStopping state: the "
          "saved early-stopping state has wait='0', not a number)") in warnings[0]
  assert int(resumed.state.step) in _steps(tmp_path) and _steps(tmp_path)[0] == first
  assert any(p.name.startswith(f"{last}-") for p in (tmp_path / "damaged-checkpoints").iterdir())


def test_a_damaged_best_by_monitor_step_is_moved_aside_by_the_next_train(tmp_path, capsys):
  # evaluate / predict / sample read the best step by config.monitor, which orbax keeps
  # for good; train checked only the latest: its advice ("jdl train moves it aside")
  # did nothing, and every read of the run failed for good.
  config = make_config(num_epochs=3, keep_checkpoints=1, monitor_mode="max")
  jdl.fit(config, tmp_path, quiet=True)
  records = map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
  history = [r["loss"] for r in records if r["split"] == "val"]  # Its highest is the best.
  steps = _steps(tmp_path)
  best = steps[0]
  assert len(steps) == 2 and best == (1 + int(np.argmax(history))) * steps[-1] // 3
  _flip_bytes(tmp_path / "checkpoints" / str(best))
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
  assert "does not match the checksum" in capsys.readouterr().err
  jdl.fit(config, tmp_path, quiet=True)  # Nothing left to train: only the check.
  warnings = [x for x in capsys.readouterr().err.splitlines() if "unreadable" in x]
  assert len(warnings) == 1 and f"step {best} " in warnings[0], warnings
  assert _steps(tmp_path) == steps[1:]
  assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 0


@pytest.mark.parametrize("name, text, reason", [
    ("metrics/metrics", '{"val_loss": "abc"}', "the metric 'val_loss' is 'abc', not a number"),
    ("metrics/metrics", '{"val_loss": null}', "the metric 'val_loss' is None, not a number"),
    ("metrics/metrics", '"abc"', "a JSON str, not an object"),
    ("_CHECKPOINT_METADATA", "[1]", "a JSON list, not an object"),
    ("_CHECKPOINT_METADATA", '{"commit_timestamp_nsecs": "x"}', "commit_timestamp_nsecs is 'x'"),
    ("_CHECKPOINT_METADATA", '{"metrics": "x"}', "metrics is 'x'"),
])
def test_metadata_of_the_wrong_shape_is_damage_not_a_traceback(tmp_path, capsys, name, text,
                                                                reason):
  # Valid JSON of the wrong shape passed the damage check: orbax then failed on it with
  # a traceback, when it opened the checkpoints or ranked them at the next save (whose
  # epoch was lost), on every later run.
  from jdl import checkpoint as ckpt_lib
  config = make_config(num_epochs=2)
  jdl.fit(config, tmp_path, quiet=True)
  first, latest = _steps(tmp_path)
  (tmp_path / "checkpoints" / str(latest) / name).write_text(text)
  assert ckpt_lib.find_damaged(tmp_path / "checkpoints") == {latest: f"corrupt {name} ({reason})"}
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and f"step {latest}: corrupt {name}" in err, err
  if name != "metrics/metrics" or "abc" not in text:
    return  # The rest once: the run resumes from the step before and trains on.
  config.unlock()
  config.num_epochs = 3
  jdl.fit(config, tmp_path, quiet=True)
  warnings = [x for x in capsys.readouterr().err.splitlines() if "unreadable" in x]
  assert len(warnings) == 1 and f"step {latest} " in warnings[0], warnings
  assert _steps(tmp_path) == [first, latest, latest + first]


def test_checkpoints_orbax_cannot_open_are_one_clear_error(tmp_path, monkeypatch):
  # Damage the folder check does not see fails in orbax's manager, which reads every
  # step's metadata when it opens: a traceback before.
  from jdl import checkpoint as ckpt_lib

  def refuse(*args, **kwargs):
    raise ValueError("Metadata dict must be a dictionary, but got list")

  monkeypatch.setattr(ckpt_lib.ocp, "CheckpointManager", refuse)
  with pytest.raises(jdl.JdlError, match=r"checkpoints in .* could not be opened \(Metadata "
                     r"dict must be a dictionary, but got list\); if a step's metadata"):
    ckpt_lib.Checkpointer(tmp_path / "checkpoints")


def test_best_metric_ranks_a_step_without_a_number_last(tmp_path):
  from jdl import checkpoint as ckpt_lib
  rank = functools.partial(ckpt_lib._rank, metric="val_loss", worst=math.inf)
  assert rank({"val_loss": 0.5}) == 0.5 and rank({"val_loss": 2}) == 2.0
  for bad in ({}, {"val_loss": "0.5"}, {"val_loss": None}, {"val_loss": True},
              {"val_loss": math.nan}, {"val_loss": -math.inf}, [0.5], None):
    assert rank(bad) == math.inf


def test_a_workdir_without_config_json_is_not_trained_as_the_default_experiment(tmp_path,
                                                                                 capsys):
  # The CLI fell back to its default experiment (digits_cnn), built it, and refused it
  # as "another config; config.json may have been edited", after making plots/ and tb/.
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  (tmp_path / "config.json").unlink()
  before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  step = _steps(tmp_path)[-1]
  capsys.readouterr()
  assert cli.main(["train", "--workdir", str(tmp_path), "--config.num_epochs=2"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert "holds a run's checkpoints but no config.json" in err, err
  assert f"checkpoints/{step}/meta/metadata" in err, err
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


_MACHINE_FAILURES = [
    # What a restore raised for real under a low RLIMIT_NOFILE:
    (OSError(24, "Too many open files", "/run/checkpoints/40/tree/_METADATA"),
     "Too many open files"),
    (MemoryError(), "out of memory"),
    # tensorstore's form of an unreadable file (its os_error_code, as in write errors):
    (ValueError("PERMISSION_DENIED: Error opening file: [os_error_code=13]"),
     "Permission denied"),
]


def test_a_restore_the_machine_fails_moves_no_checkpoint_aside(tmp_path, monkeypatch):
  # Not damage: every step would have been moved to damaged-checkpoints/ in turn, and
  # the run refused as having no readable checkpoint.
  config = make_config(num_epochs=3)
  reference = jdl.fit(config, tmp_path / "ref", quiet=True)
  run = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, run, quiet=True, callbacks=[_CrashAfter(epochs=2)])
  before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
  from jdl import checkpoint as ckpt_lib
  for failure, words in _MACHINE_FAILURES:
    def fail(self, *args, failure=failure, **kwargs):
      raise failure
    with monkeypatch.context() as patch:
      patch.setattr(ckpt_lib.Checkpointer, "restore", fail)
      with pytest.raises(jdl.JdlError, match=f"step {_steps(run)[-1]}.*{words}.*nothing "
                         "was moved or deleted"):
        jdl.fit(config, run, quiet=True)
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before, words
  resumed = jdl.fit(config, run, quiet=True)
  chex.assert_trees_all_equal(jax.device_get(reference.state.params),
                              jax.device_get(resumed.state.params))


def test_a_workdir_inside_another_runs_folders_is_refused(tmp_path):
  # A run trained into another run's checkpoints/80 was deleted with that step when
  # the other run pruned it.
  jdl.fit(make_config(num_epochs=1), tmp_path / "a", quiet=True)
  before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
  step = _steps(tmp_path / "a")[-1]
  for inside in (f"checkpoints/{step}", "checkpoints", "tb/x"):
    with pytest.raises(jdl.JdlError, match=f"inside the {inside.split('/')[0]}/ of the run"):
      jdl.fit(make_config(num_epochs=1), tmp_path / "a" / inside, quiet=True)
  assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
  # A workdir that is itself named checkpoints (beside no run) trains and resumes, and
  # so does one beside another tool's config.json, or named through "..".
  own = tmp_path / "b" / "checkpoints"
  jdl.fit(make_config(num_epochs=1), own, quiet=True)
  assert int(jdl.fit(make_config(num_epochs=2), own, quiet=True).state.step) == 2 * step
  (tmp_path / "c").mkdir()
  (tmp_path / "c" / "config.json").write_text('{"name": "another tool"}')
  jdl.fit(make_config(num_epochs=1), tmp_path / "c" / "tb", quiet=True)
  jdl.fit(make_config(num_epochs=1), tmp_path / "a" / "checkpoints" / ".." / "d", quiet=True)
  assert (tmp_path / "a" / "d" / "config.json").is_file()


def test_a_failed_rerun_keeps_the_finished_runs_test_line(tmp_path, monkeypatch):
  jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True)
  before = (tmp_path / "metrics.jsonl").read_text()
  assert json.loads(before.splitlines()[-1])["split"] == "test"
  from jdl.train import loop
  def fail(self, *args, **kwargs):
    raise jdl.JdlError("evaluation failed")
  monkeypatch.setattr(loop.Trainer, "split_sums", fail)  # Every evaluation goes through it.
  with pytest.raises(jdl.JdlError, match="evaluation failed"):
    jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True)
  assert (tmp_path / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("stray", ["0300", "020"])
def test_a_step_folder_with_a_leading_zero_is_moved_aside_alone(tmp_path, capsys, stray):
  # A copied-in "0300" is step 300 to a listing; moving "300" aside failed, on every
  # run. An empty "020" beside the healthy step 20 must not take step 20 with it.
  reference = jdl.fit(make_config(num_epochs=2), tmp_path / "ref", quiet=True)
  run = tmp_path / "run"
  jdl.fit(make_config(num_epochs=1), run, quiet=True)
  assert _steps(run) == [20]
  (run / "checkpoints" / stray).mkdir()
  resumed = jdl.fit(make_config(num_epochs=2), run, quiet=True)
  assert not (run / "checkpoints" / stray).exists()
  assert f"step {int(stray)} is unreadable" in capsys.readouterr().err
  assert [p.name.split("-")[0] for p in (run / "damaged-checkpoints").iterdir()] == [stray]
  chex.assert_trees_all_equal(jax.device_get(reference.state.params),
                              jax.device_get(resumed.state.params))


def test_an_edited_config_json_does_not_resume_another_seed(tmp_path):
  # The structural check compared the config with config.json alone: a seed edited
  # there resumed silently, on another shuffle. The checkpoint's own record tells.
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  saved = json.loads((tmp_path / "config.json").read_text())
  saved["seed"] = 5
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(jdl.JdlError, match=r"trained with another config \(seed differs from "
                                         r"the one it recorded; config.json may have been"):
    jdl.fit(make_config(num_epochs=2, seed=5), tmp_path, quiet=True)


def test_a_step_half_deleted_by_orbax_is_removed_without_an_alarm(tmp_path, capsys):
  # orbax first renames a step it deletes into checkpoints/.deleted-steps (one atomic
  # rename), so a run killed while the files go leaves nothing half deleted among the
  # steps; what is left there is removed when the checkpoints are opened again.
  from jdl.checkpoint import TRASH
  config = make_config(num_epochs=3, checkpoint_every_steps=5)
  reference = jdl.fit(config, tmp_path / "ref", quiet=True)
  run = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    jdl.fit(config, run, quiet=True, callbacks=[_CrashAfter(epochs=3)])
  steps = _steps(run)
  assert (run / "checkpoints" / TRASH).is_dir() and steps[0] > 5, steps  # Steps were deleted.
  half = run / "checkpoints" / TRASH / str(steps[0] - 5)
  shutil.copytree(run / "checkpoints" / str(steps[0]), half)
  (half / "_CHECKPOINT_METADATA").unlink()
  capsys.readouterr()
  resumed = jdl.fit(config, run, quiet=True)
  assert "unreadable" not in capsys.readouterr().err
  assert not half.exists() and not (run / "damaged-checkpoints").exists()
  chex.assert_trees_all_equal(jax.device_get(reference.state.params),
                              jax.device_get(resumed.state.params))


def test_old_steps_are_removed_beside_training_and_gone_after_wait(tmp_path, monkeypatch):
  # Removing a deleted step's files took ~8 ms of every save() on the training
  # thread; a thread does it now, and wait() (and close()) see it done.
  import threading
  from jdl import checkpoint as ckpt_lib
  removing, release = threading.Event(), threading.Event()
  rmtree = shutil.rmtree

  def held_rmtree(path, *args, **kwargs):
    removing.set()
    assert release.wait(20)
    return rmtree(path, *args, **kwargs)

  monkeypatch.setattr(ckpt_lib.shutil, "rmtree", held_rmtree)
  tree = {"w": jnp.arange(4.0)}
  ckpt = ckpt_lib.Checkpointer(tmp_path, keep=1, async_save=False)
  ckpt.save(1, tree)
  ckpt.save(2, tree)  # orbax moves step 1 into the trash.
  trash = tmp_path / ckpt_lib.TRASH
  assert [p.name for p in trash.iterdir()] == ["1"]
  ckpt.save(3, tree)  # Returns while step 1's removal is held.
  assert removing.wait(20) and (trash / "1").exists()
  release.set()
  ckpt.wait()
  assert not any(trash.iterdir()) and ckpt.steps() == [3]
  ckpt.close()


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, capsys):
  config = make_config(num_epochs=1)
  jdl.fit(config, tmp_path, quiet=True)
  for step in _steps(tmp_path):
    for f in (tmp_path / "checkpoints" / str(step)).rglob("*"):
      if f.is_file():
        f.write_bytes(b"")
  code = cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "xor"])
  assert code == 2  # Different config: refused before any checkpoint is read.
  with pytest.raises(jdl.JdlError, match="no readable checkpoint.*--restart"):
    jdl.fit(config, tmp_path, quiet=True)
  history = (tmp_path / "metrics.jsonl").read_bytes()
  # The same command again: checkpoints/ is now empty, but the moved-aside steps say
  # this is not a fresh workdir. Starting over would overwrite the run's history.
  with pytest.raises(jdl.JdlError, match=r"no readable checkpoint .*moved earlier.*--restart"):
    jdl.fit(config, tmp_path, quiet=True)
  assert (tmp_path / "metrics.jsonl").read_bytes() == history
  # --restart moves the whole old run aside, the moved-aside steps with it.
  assert cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "digits_mlp",
                   "--config.num_epochs=1", "--restart"]) == 0
  previous = list(tmp_path.glob("previous-*"))
  assert len(previous) == 1 and (previous[0] / "damaged-checkpoints").is_dir()
  assert not (tmp_path / "damaged-checkpoints").exists()


def test_a_file_where_the_checkpoints_folder_goes_is_refused_before_any_write(tmp_path, capsys):
  (tmp_path / "checkpoints").write_text("not a folder\n")
  assert cli.main(["train", "--workdir", str(tmp_path), "--quiet", "--config", "digits_mlp",
                   "--config.num_epochs=1"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"jdl: error: {tmp_path / 'checkpoints'} is a file, where a run keeps its "
                 "checkpoints folder; move it away or use another --workdir"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]
  # The workdir itself a file.
  assert cli.main(["train", "--workdir", str(tmp_path / "checkpoints"), "--quiet"]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"jdl: error: workdir {tmp_path / 'checkpoints'} is a file, not a folder; use another "
      "--workdir"]


class _CrashAfter(Callback):
  def __init__(self, epochs):
    self.epochs = epochs

  def on_epoch_end(self, trainer, epoch, logs):
    if epoch + 1 == self.epochs:
      trainer.checkpointer.wait()
      raise KeyboardInterrupt


def _wait_for_steps(workdir, n, proc, timeout=240):
  deadline = time.time() + timeout
  ckpts = workdir / "checkpoints"
  while time.time() < deadline and proc.poll() is None:
    if ckpts.exists() and len([p for p in ckpts.iterdir() if p.name.isdigit()]) >= n:
      return
    time.sleep(0.05)
  raise AssertionError("the run finished (or hung) before the signal could be sent")


_SIGNAL_RUN = ["--config", "digits_mlp", "--quiet", "--config.num_epochs=4",
               "--config.batch_size=64", "--config.checkpoint_every_steps=5",
               "--config.tensorboard=false", "--config.plots=false"]


@pytest.fixture(scope="module")
def uninterrupted_signal_run(tmp_path_factory):
  """The run the signalled ones must equal, trained once for both signals."""
  workdir = tmp_path_factory.mktemp("signal") / "full"
  assert start_training(workdir, _SIGNAL_RUN).wait(timeout=300) == 0
  return workdir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_exits_128_plus_signum_and_resumes_exactly(
    tmp_path, sig, uninterrupted_signal_run):

  def train(workdir):
    return start_training(workdir, _SIGNAL_RUN, stderr=subprocess.PIPE, text=True)

  proc = train(tmp_path / "stopped")
  _wait_for_steps(tmp_path / "stopped", 3, proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 128 + sig, err  # Not finished: a retry loop must run it again.
  lines = [line for line in err.splitlines() if line.startswith("jdl: stopped by")]
  assert len(lines) == 1 and signal.Signals(sig).name in lines[0]
  stopped_at = int(lines[0].split(" at step ")[1].split(";")[0])
  assert stopped_at in _steps(tmp_path / "stopped")
  assert not (tmp_path / "stopped" / workdir_lib.LOCK_NAME).exists()
  assert train(tmp_path / "stopped").wait(timeout=300) == 0

  assert_exports_equal(uninterrupted_signal_run, tmp_path / "stopped", past=stopped_at)


def test_sigkill_mid_epoch_then_rerun_is_bitwise_equal(tmp_path, uninterrupted_signal_run):
  """A real process killed with SIGKILL between checkpoints resumes exactly."""
  proc = start_training(tmp_path / "killed", _SIGNAL_RUN)
  _wait_for_steps(tmp_path / "killed", 4, proc)  # Past epoch 1 (20 steps, one save every 5).
  assert proc.poll() is None, "training finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_after = max(_steps(tmp_path / "killed"))
  assert start_training(tmp_path / "killed", _SIGNAL_RUN).wait(timeout=300) == 0

  assert_exports_equal(uninterrupted_signal_run, tmp_path / "killed", past=killed_after)
  # config.deterministic (default): the CLI process put XLA's flag into XLA_FLAGS.
  runtime = json.loads((tmp_path / "killed" / "config.json").read_text())["runtime"]
  assert "--xla_gpu_deterministic_ops" in runtime["xla_flags"], runtime


def test_ctrl_c_while_train_starts_exits_130_without_a_traceback(tmp_path):
  # Once JAX's library is loaded the command is importing JAX or building the run:
  # Ctrl-C there is two lines and exit status 130, never a traceback, never ignored
  # (raised at once, the KeyboardInterrupt could land in JAX's gc callback and be
  # dropped), and nothing is written in the workdir.
  proc = start_training(tmp_path / "run", ["--config", "xor", "--config.num_epochs=100000"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  maps, deadline = f"/proc/{proc.pid}/maps", time.time() + 60
  while time.time() < deadline and proc.poll() is None:
    with open(maps) as f:
      if "jaxlib" in f.read():
        break
    time.sleep(0.01)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert "Traceback" not in err and "SIGINT received while starting" in err, err
  assert err.strip().splitlines()[-1] == "jdl: interrupted", err
  assert not (tmp_path / "run" / "checkpoints").exists()


def test_an_interrupt_while_starting_stops_before_training_and_writes_nothing(tmp_path):
  with workdir_lib.early_interrupts():
    os.kill(os.getpid(), signal.SIGINT)  # Recorded, not raised.
    trainer = jdl.Trainer(make_config(num_epochs=50), tmp_path / "run", quiet=True)
    with pytest.raises(KeyboardInterrupt):
      trainer.fit()
  assert not (tmp_path / "run").exists()
  # Without the CLI's handler (Python callers) SIGINT raises at once, as by default.
  # Python's own handler is installed for the check: a process started in the
  # background by a shell without job control inherits SIGINT ignored, and Python
  # then leaves it so (`bash .ci/run &` failed here; early_interrupts is not at fault).
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with workdir_lib.early_interrupts(defer=False), pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
      for _ in range(500):
        time.sleep(0.01)
  finally:
    signal.signal(signal.SIGINT, previous)


def test_checkpoint_metadata_is_validated_against_its_schema():
  from jdl.checkpoint import validate_meta
  good = {"step": 5, "epoch": 0, "position": 5, "steps_per_epoch": 20, "history": {"loss": [1.0]},
          "callbacks": {}, "config": {}, "best": None}
  validate_meta(good, 5)
  validate_meta({**good, "warnings": {"nonfinite_reported": 2, "update_ratio": {"Dense_0": 3}}}, 5)
  validate_meta({**good, "stopped": {"epoch": 2, "by": "StopAtAccuracy"}}, 5)
  for bad, match in [({**good, "warnings": {"nonfinite_reported": -1}}, "not a record of warning"),
                     ({**good, "stopped": {"epoch": True, "by": "X"}}, "'stopped' is not a record"),
                     ({**good, "stopped": {"epoch": 0, "by": "X"}}, "'stopped' is not a record"),
                     ({**good, "stopped": "yes"}, "'stopped' is not a record"),
                     ({**good, "warnings": {"update_ratio": {"Dense_0": "3"}}}, "warning counts"),
                     ({**good, "warnings": []}, "'warnings' is not a record"),
                     ({**good, "step": 6}, "says step 6"), ({**good, "history": {"loss": ["x"]}},
                     "not a list of numbers"), ({k: v for k, v in good.items() if k != "config"},
                     "lacks 'config'"), ({**good, "epoch": "0"}, "wrong type"), ([], "JSON object")]:
    with pytest.raises(jdl.JdlError, match=match):
      validate_meta(bad, 5)


def _tree_bytes(step_dir):
  return sum(p.stat().st_size for p in (step_dir / "tree").rglob("*") if p.is_file())


def test_checkpoint_compression_switch_and_either_kind_restores(tmp_path):
  import numpy as np
  from jdl.checkpoint import Checkpointer, restore_params
  # Zeros compress to almost nothing; the uncompressed 4 MB must be stored in full.
  tree = {"params": {"w": jnp.zeros((1024, 1024)), "b": jnp.arange(7.0)},
          "key": jax.random.key(3)}
  for compression in (True, False):
    with Checkpointer(tmp_path / str(compression), compression=compression, async_save=False) as c:
      c.save(1, tree, meta={"m": compression})
  packed, plain = _tree_bytes(tmp_path / "True" / "1"), _tree_bytes(tmp_path / "False" / "1")
  assert packed < 200_000 < 4 * 1024 * 1024 <= plain
  # A compressed step (orbax's default, and jdl's before) restores through the default.
  with Checkpointer(tmp_path / "True") as c:
    restored, meta = c.restore(1, tree)
  chex.assert_trees_all_equal(jax.random.key_data(restored["key"]), jax.random.key_data(tree["key"]))
  chex.assert_trees_all_equal(restored["params"], tree["params"])
  assert meta == {"m": True}
  # The ``state/params`` reader (jdl export, transfer) reads both kinds.
  for compression in (True, False):
    d = tmp_path / f"state_{compression}"
    with Checkpointer(d, compression=compression, async_save=False) as c:
      c.save(2, {"state": {"params": tree["params"]}}, meta={})
    flat = restore_params(d)
    np.testing.assert_array_equal(flat["b"], np.arange(7.0))


def test_a_failed_checkpoint_write_is_a_clear_error_and_keeps_earlier_ones(tmp_path, monkeypatch):
  import errno

  import orbax.checkpoint as ocp
  config = make_config(num_epochs=3)
  real_save = ocp.CheckpointManager.save
  calls = []

  def flaky_save(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) == 2:  # The second save finds the disk full.
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", flaky_save)
  with pytest.raises(jdl.JdlError, match=r"cannot write the checkpoint at step 40 .*No space "
                                         r"left on device; the steps saved before are intact"):
    jdl.fit(config, tmp_path, quiet=True)
  monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
  assert _steps(tmp_path) == [20]
  resumed = jdl.fit(config, tmp_path, quiet=True)  # The surviving checkpoint restores.
  reference = jdl.fit(config, quiet=True)
  chex.assert_trees_all_equal(jax.device_get(reference.state.params),
                              jax.device_get(resumed.state.params))


def test_a_step_folder_that_cannot_be_made_fails_the_save_and_leaves_no_thread_waiting(
    tmp_path, monkeypatch):
  # A checkpoints folder the run may not write into: the step's temporary folder is
  # refused. Were it made in orbax's background threads, those writing into it would
  # wait 300 s for its signal and hold the process at exit (jdl train hung after its
  # error line).
  import errno
  import threading

  from jdl.checkpoint import Checkpointer

  real_mkdir = os.mkdir

  def mkdir(path, *args, **kwargs):
    if os.path.basename(os.fspath(path)).startswith("2.orbax-checkpoint-tmp"):
      raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
    return real_mkdir(path, *args, **kwargs)

  before = set(threading.enumerate())
  checkpointer = Checkpointer(tmp_path / "c", async_save=True)
  checkpointer.save(1, {"w": np.arange(3.0)}, meta={})
  monkeypatch.setattr(os, "mkdir", mkdir)
  with pytest.raises(jdl.JdlError, match=r"^cannot write the checkpoint at step 2 in .*: "
                                         r"Permission denied; the steps saved before are intact$"):
    checkpointer.save(2, {"w": np.arange(3.0) + 1}, meta={})
  monkeypatch.setattr(os, "mkdir", real_mkdir)
  checkpointer.close()
  deadline = time.time() + 20
  for thread in set(threading.enumerate()) - before:
    if not thread.daemon:
      thread.join(timeout=max(0.0, deadline - time.time()))
      assert not thread.is_alive(), f"{thread.name} still waits, and holds the process at exit"
  assert Checkpointer(tmp_path / "c", async_save=False).steps() == [1]


@pytest.mark.parametrize("text, reason", [
    # As this machine's tensorstore writes it.
    ("OUT_OF_RANGE: Error writing \"w/0\" in OCDBT database at local file \"/c/\": Failed "
     "writing: \"/c/d/7145\": Failed to write 43626 bytes to file 4: File too large "
     "[os_error_code='27']", "File too large"),
    # The code on a line of its own, then the spec of the store being opened: CI printed
    # the spec as the reason when the code's text was cut around " [os_error_code".
    ("Error writing \"w/0\": Failed to write\n[os_error_code='28'] "
     "[tensorstore_spec='{\"store_data_equal_to_fill_value\":true}']\n", "No space left on device"),
    # Inside a list of errors (escaped quotes), and bare.
    ("2 errors: ['Error writing: x [os_error_code=\\'13\\']', 'y']", "Permission denied"),
    ("RESOURCE_EXHAUSTED: Error writing: [os_error_code=30]", "Read-only file system"),
    ("DATA_LOSS: Error writing \"w/0\": Disk quota exceeded\nagain", "Disk quota exceeded"),
    # A code the OS has no words for: the message's own first line.
    ("Error writing \"w/0\": odd [os_error_code=99999]\nmore", "Error writing \"w/0\": odd "
     "[os_error_code=99999]"),
    ("Error writing \"w/0\": no code given\nsecond line", "Error writing \"w/0\": no code given"),
])
def test_the_reason_of_a_failed_write_is_the_os_words(text, reason):
  from jdl import checkpoint as ckpt

  assert ckpt._is_write_failure(ValueError(text))
  assert ckpt._write_failure_reason(ValueError(text)) == reason


def test_a_real_failed_write_is_one_line_through_the_cli(tmp_path):
  # Not a mocked OSError: the OS refuses the write (files limited to 59 kB, larger than
  # the config and logs, smaller than a checkpoint's data file), and tensorstore reports
  # it from orbax's background threads as a ValueError after the save call returned.
  import shlex

  command = shlex.join([sys.executable, "-m", "jdl.cli", "train", "--workdir", str(tmp_path),
                        "--config", "digits_mlp", "--quiet", "--config.num_epochs=2",
                        "--config.tensorboard=false", "--config.plots=false"])
  # SIGXFSZ ignored (across exec): write() then fails with EFBIG. 59 blocks of 1 kB.
  proc = subprocess.run(["bash", "-c", f"ulimit -f 59 && trap '' XFSZ && exec {command}"],
                        env=cli_env(cache=None), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = proc.stderr.strip().splitlines()
  if not (len(lines) == 1 and re.match(r"jdl: error: cannot write the checkpoint at step "
                                       r"[\d or]+ in .*: File too large; ", lines[0])):
    pytest.fail("\n".join(lines[:20]), pytrace=False)  # In full: the assertion's repr is cut.
  assert (tmp_path / "config.json").is_file() and (tmp_path / "metrics.jsonl").is_file()


def test_sigkill_inside_a_checkpoint_write_then_resume_is_bitwise_equal(tmp_path):
  args = ["--config", "digits_mlp", "--quiet", "--config.num_epochs=2",
          "--config.batch_size=64", "--config.checkpoint_every_steps=2", "--config.scan_chunk=2",
          "--config.tensorboard=false", "--config.plots=false"]

  def train(workdir):
    return start_training(workdir, args, stderr=subprocess.DEVNULL)

  assert train(tmp_path / "full").wait(timeout=300) == 0
  proc = train(tmp_path / "killed")
  ckpts = tmp_path / "killed" / "checkpoints"
  deadline, inside = time.time() + 240, False
  while time.time() < deadline and proc.poll() is None:
    steps = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else []
    if len(steps) >= 3 and any("tmp" in p.name for p in ckpts.iterdir()):
      proc.send_signal(signal.SIGKILL)  # A step folder is being written right now.
      inside = True
      break
    time.sleep(0.002)
  proc.wait()
  assert inside, "no checkpoint write was caught in flight"
  killed_after = max(_steps(tmp_path / "killed"))
  assert train(tmp_path / "killed").wait(timeout=300) == 0

  assert_exports_equal(tmp_path / "full", tmp_path / "killed", past=killed_after)


def test_a_partial_last_metrics_line_does_not_stop_the_resume(tmp_path):
  # A run killed while appending to metrics.jsonl leaves half a line behind.
  jdl.fit(make_config(num_epochs=1), tmp_path, quiet=True)
  with (tmp_path / "metrics.jsonl").open("a") as f:
    f.write('{"step": 99, "epoch": 2, "split": "tr')
  result = jdl.fit(make_config(num_epochs=2), tmp_path, quiet=True)
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records if r["split"] == "train"] == [1, 2]
  assert len(result.history["loss"]) == 2


def test_rerunning_a_finished_early_stopped_run_restores_the_same_best_state(tmp_path):
  # Early stopping ranks by val_loss, the checkpoints by val_accuracy, and only one
  # recent checkpoint is kept: the restored best epoch must still be on disk.
  config = make_config(num_epochs=12, keep_checkpoints=1, monitor="val_accuracy",
                       monitor_mode="max", early_stopping__enabled=True,
                       early_stopping__monitor="val_loss", early_stopping__patience=1,
                       optimizer__learning_rate=0.1)
  first = jdl.fit(config, tmp_path, quiet=True)
  best = first.trainer.callbacks[0]
  assert 0 <= best.best_epoch < best.stopped_epoch < 11  # Stopped early, best before.
  assert int(first.state.step) == best.best_step  # The best state was put back.
  again = jdl.fit(config, tmp_path, quiet=True)
  chex.assert_trees_all_equal(first.state.params, again.state.params)
  assert first.test_metrics == again.test_metrics


def test_a_step_pruned_while_the_checkpoints_are_opened_says_run_again(tmp_path, monkeypatch):
  # A reader opening the checkpoints of a run in progress: orbax listed a step that the
  # run then pruned, and the error advised moving folders aside or --restart.
  from orbax import checkpoint as ocp
  directory = (tmp_path / "checkpoints").resolve()
  directory.mkdir()

  def pruned(*args, **kwargs):
    raise FileNotFoundError(2, "No such file or directory", str(directory / "9760"))

  monkeypatch.setattr(ocp, "CheckpointManager", pruned)
  with pytest.raises(jdl.checkpoint.StepRemoved, match=r"^the checkpoint at step 9760 in .* "
                     r"was removed while the checkpoints were opened .* run the command again$"):
    jdl.Checkpointer(directory)
