"""Workdir safety: one run at a time, starting over without losing the old run, signals.

A run holds an exclusive lock on ``WORKDIR/.jdl.lock`` (which names its pid and
host) while it trains; a second run on the same workdir refuses, and a killed run
leaves no lock (the kernel releases it). ``--restart`` moves the previous run's files
into ``WORKDIR/previous-<time>/`` instead of deleting them. SIGTERM and SIGINT
ask the loop to stop after the step in flight and write a checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from jdl.errors import JdlError

LOCK_NAME = ".jdl.lock"
NORMALIZER_FILE = "normalizer.npz"  # The inputs' scaling: mean, std (jdl export reads it).
RUN_FILES = ("checkpoints", "damaged-checkpoints", "metrics.jsonl", "summary.txt",
             "config.json", "config_changes.jsonl", "vocab.json", NORMALIZER_FILE, "tb",
             "plots")
# A run's records, apart from its checkpoints.
RECORD_FILES = tuple(n for n in RUN_FILES if n not in ("checkpoints", "damaged-checkpoints"))


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  return True


def _holder(path: Path) -> tuple[int, str]:
  """The ``(pid, host)`` a lock file names; ``(-1, "")`` if it names none."""
  try:
    pid_text, host = path.read_text().split()[:2]
    return int(pid_text), host
  except (OSError, ValueError):
    return -1, ""


def _boot_id_of(path: Path) -> str:
  """The kernel boot id a lock file names (its third word; ``""`` if none)."""
  try:
    words = path.read_text().split()
  except OSError:
    return ""
  return words[2] if len(words) > 2 else ""


def _boot_id() -> str:
  """This kernel's boot id (Linux), shared by the containers that run on it."""
  try:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
  except OSError:
    return ""


def _in_use(workdir: Path, path: Path, pid: int, host: str) -> JdlError:
  if host and host != socket.gethostname():
    return JdlError(f"workdir {workdir} is locked by process {pid} on host {host} "
                    f"(lock file {path}); wait for that run to finish or use another "
                    "--workdir (if that run is gone, remove the file)")
  who = f"process {pid}" if pid > 0 else "another process"
  return JdlError(f"workdir {workdir} is in use by {who} (lock file {path}); wait for it "
                  "to finish or use another --workdir")


@contextlib.contextmanager
def locked(workdir: Path, warn: Callable[[str], None]) -> Iterator[None]:
  """Holds the workdir's lock for the duration of the block.

  The lock is an exclusive ``flock`` on ``WORKDIR/.jdl.lock``, held for the whole
  run: the kernel grants it to one process only and releases it when the process
  ends, however it ends, so a killed run of this host leaves no lock behind. The
  file names the holder (pid, host and the kernel's boot id) for the error message
  of the next contender. A file that names another host's process refuses even when
  the lock is free (a FUSE mount or an NFS mount with local locks does not share
  locks between hosts): remove it once that run is gone; unless it names this
  kernel's boot id (a container of this machine, whose hostname changes from one
  start to the next): the kernel's lock covered it, and being free, is taken over. On a file system without locks
  (a warning says so) an exclusive create of ``WORKDIR/.jdl.lock.claim`` decides
  between contenders instead (atomic on local disks and NFS v3+); the claim names
  its holder and goes at release. A claim of a dead process of this host is taken
  over (removed under a second exclusive file, ``.jdl.lock.claim.takeover``, if it
  is still the one judged stale, then claimed like a free one); one of another host
  refuses until removed by hand.

  Raises:
    JdlError: another process holds the lock, or the workdir is not writable.
  """
  workdir = Path(workdir)
  path = workdir / LOCK_NAME
  boot = _boot_id()
  me = f"{os.getpid()} {socket.gethostname()}{f' {boot}' if boot else ''}\n"
  claim = path.with_name(LOCK_NAME + ".claim")
  for _ in range(100):  # Another process may release (unlink) the file between our steps.
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # Permissions, a read-only file system.
      raise JdlError(f"cannot write to workdir {workdir}: {e.strerror or e}") from None
    try:
      taken = _take(fd, workdir, path, warn, claim, me)
      if taken:
        os.ftruncate(fd, 0)
        os.pwrite(fd, me.encode(), 0)
    except BaseException:
      os.close(fd)  # Not held past an error (a notebook would keep it for good).
      raise
    if taken:
      break
    os.close(fd)
  else:
    raise JdlError(f"could not lock {path}: other processes kept replacing it")
  try:
    yield
  finally:
    with contextlib.suppress(OSError):
      if path.read_text() == me:  # Then the kernel's lock goes with the descriptor.
        path.unlink()
    with contextlib.suppress(OSError):
      if claim.read_text() == me:  # Only without kernel locks.
        claim.unlink()
    _CLAIMS_HELD.discard(str(claim))
    os.close(fd)


def _take(fd: int, workdir: Path, path: Path, warn: Callable[[str], None], claim: Path,
          me: str) -> bool:
  """Locks the open lock file ``fd``; ``False``: it was replaced meanwhile, or a stale
  claim was moved away (try again).

  Raises:
    JdlError: another process holds it.
  """
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise _in_use(workdir, path, *_holder(path)) from None
  except OSError as e:  # No locks on this file system (some network or FUSE mounts).
    if not _claim(workdir, claim, me):
      return False
    warn(f"jdl: warning: cannot lock {path} ({e.strerror or e}): the exclusive claim "
         f"file {claim} guards the workdir instead")
  else:
    try:
      if os.stat(path).st_ino != os.fstat(fd).st_ino:
        return False  # Its holder released (removed) it after we opened it.
    except FileNotFoundError:
      return False
    pid, host = _holder(path)
    boot = _boot_id()
    same_kernel = bool(boot) and _boot_id_of(path) == boot  # Its lock was this kernel's.
    if pid > 0 and host and host != socket.gethostname() and not same_kernel:
      raise _in_use(workdir, path, pid, host)
  pid, _ = _holder(path)
  if pid > 0 and pid != os.getpid():
    warn(f"jdl: warning: taking over the stale lock {path} of process {pid}, which is gone")
  return True


# A claim younger than this that names no holder is being written by its creator.
_CLAIM_WRITE_SECONDS = 10.0
# The claims this process made and holds. One naming this process's PID that it does
# not hold was left by a dead process whose PID this one got again (a container
# restarted in place starts its processes at the same PIDs).
_CLAIMS_HELD: set[str] = set()


def _claim(workdir: Path, claim: Path, me: str) -> bool:
  """Creates ``claim`` exclusively and writes ``me`` into it; ``False``: a stale claim
  was moved away (try again).

  Raises:
    JdlError: a live process (or another host's) holds the claim.
  """
  try:
    cfd = os.open(claim, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    pid, host = _holder(claim)
    try:
      judged = claim.stat()
    except FileNotFoundError:
      return False  # Released meanwhile.
    age = time.time() - judged.st_mtime
    mine_before = pid == os.getpid() and str(claim) not in _CLAIMS_HELD
    if (pid > 0 and (host != socket.gethostname() or (_alive(pid) and not mine_before))) or (
        pid <= 0 and age < _CLAIM_WRITE_SECONDS):
      raise _in_use(workdir, claim, pid, host) from None
    # A dead process's claim (or one never written) is removed under a second
    # exclusive file, and only if it is still the one judged stale: a contender that
    # judged it too would otherwise remove the claim just made by another taker.
    mutex = claim.with_name(claim.name + ".takeover")
    try:
      mfd = os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:  # Another contender is taking it over: claim again after it.
      with contextlib.suppress(FileNotFoundError):
        if time.time() - mutex.stat().st_mtime > _CLAIM_WRITE_SECONDS:
          mutex.unlink()  # Left by a taker that died in these few lines.
      time.sleep(0.02)
      return False
    try:
      with contextlib.suppress(FileNotFoundError):
        now = claim.stat()
        if ((now.st_ino, now.st_mtime_ns) == (judged.st_ino, judged.st_mtime_ns)
            and _holder(claim) == (pid, host)):
          claim.unlink()
    finally:
      os.close(mfd)
      mutex.unlink()
    return False
  with os.fdopen(cfd, "w") as f:
    f.write(me)
  _CLAIMS_HELD.add(str(claim))
  return True


def write_text(path: Path, text: str) -> None:
  """Replaces ``path`` by ``text`` atomically (a temporary file, then a rename).

  Raises:
    JdlError: the write failed (disk full, a file-size limit, permissions); the
      message names the file, and ``path`` is as it was.
  """
  write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
  """:func:`write_text` of bytes."""
  tmp = Path(path).with_name(Path(path).name + ".tmp")
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  except OSError as e:
    raise JdlError(f"cannot write {path}: {e.strerror or e}; it is kept as it was") from None
  finally:
    tmp.unlink(missing_ok=True)


TRAIN_REMEDY = "fix or remove it, or use --restart to start over (the old run is moved aside)"
READ_REMEDY = "fix or restore it: the run's settings are read from it"


def read_json(path: Path, remedy: str = TRAIN_REMEDY) -> dict:
  """Reads a JSON object written by an earlier run.

  ``remedy``: what the error tells to do (``READ_REMEDY`` for the commands that read
  a run, which have no ``--restart``).

  Raises:
    JdlError: the file cannot be read or does not hold a JSON object; the message
      names the file and the remedy.
  """
  try:
    value = json.loads(Path(path).read_text(encoding="utf-8"))
  except OSError as e:
    raise JdlError(f"cannot read {path}: {e.strerror}") from None
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise JdlError(f"{path} is not valid JSON ({e}); {remedy}") from None
  if not isinstance(value, dict):
    raise JdlError(f"{path} holds a JSON {type(value).__name__}, not an object; "
                   f"{remedy}") from None
  return value


def _is_jdl_config(path: Path) -> bool:
  """Whether ``path`` is a config.json a jdl run wrote (a JSON object with jdl's keys)."""
  try:
    value = read_json(path) if path.is_file() else {}
  except JdlError:
    return False
  return {"num_epochs", "optimizer", "model"} <= set(value)


def check_outside_runs(workdir: Path) -> None:
  """Raises ``JdlError`` when ``workdir`` is, or lies inside, a folder another run
  manages (its ``checkpoints/``, ``tb/``, ``plots/``...): that run prunes, moves or
  rewrites those folders and would take this run with them.

  The other run is told by a ``config.json`` that is a jdl config (not another
  tool's, nor a ``checkpoints/`` folder, which a workdir named ``checkpoints`` is
  itself). Symbolic links and ``..`` are resolved first.
  """
  path = Path(workdir).resolve()
  for folder in (path, *path.parents):
    if folder.name in RUN_FILES and _is_jdl_config(folder.parent / "config.json"):
      raise JdlError(f"workdir {workdir} is inside the {folder.name}/ of the run in "
                     f"{folder.parent}, which deletes or rewrites what is there; use a "
                     "folder outside it")


def move_aside(workdir: Path, names: tuple[str, ...] = RUN_FILES) -> Path | None:
  """Moves a previous run's files (``names`` of them, if present) into
  ``workdir/previous-<time>/``; returns that path (``None``: nothing to move)."""
  present = [Path(workdir) / name for name in names if (Path(workdir) / name).exists()]
  if names is RUN_FILES:  # The damaged metrics lines the run set aside are the run's too.
    present += sorted(Path(workdir).glob("metrics.jsonl.damaged-*"))
  if not present:
    return None
  target = Path(workdir) / time.strftime("previous-%Y%m%d-%H%M%S")
  suffix = 0
  while target.exists():
    suffix += 1
    target = target.with_name(f"{target.name.split('.')[0]}.{suffix}")
  target.mkdir()
  for path in present:
    path.rename(target / path.name)
  return target


# `jdl train`: a SIGINT that comes while the command starts (imports, data, the
# model) is remembered by early_interrupts() and acted on when training begins
# (StopRequests: nothing written in the workdir, KeyboardInterrupt, exit 130).
# Raising at once could land the KeyboardInterrupt in a gc callback (JAX has one),
# where Python prints a traceback and drops it: the run would go on.
_EARLY = {"starting": False, "signals": []}


@contextlib.contextmanager
def early_interrupts(defer: bool = True) -> Iterator[None]:
  """Until training begins, the first SIGINT is recorded (``defer``) and a second one
  raises KeyboardInterrupt; after it (or without ``defer``) SIGINT raises at once,
  as by default. Main thread only; the old handler comes back after the block."""
  if not defer or threading.current_thread() is not threading.main_thread():
    yield
    return

  def handle(signum, frame):
    del frame
    if not _EARLY["starting"] or _EARLY["signals"]:
      raise KeyboardInterrupt
    _EARLY["signals"].append(signal.Signals(signum).name)
    print(f"jdl: {_EARLY['signals'][0]} received while starting; stopping before training "
          "(Ctrl-C again to abort now)", file=sys.stderr, flush=True)

  _EARLY.update(starting=True, signals=[])
  previous = signal.signal(signal.SIGINT, handle)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    _EARLY.update(starting=False, signals=[])


class StopRequests:
  """Turns SIGTERM / SIGINT into a flag the loop polls between steps.

  A second SIGINT raises KeyboardInterrupt at once (for an impatient Ctrl-C).
  Only installed in the main thread (signal handlers cannot be set elsewhere).
  Entering raises KeyboardInterrupt when :func:`early_interrupts` recorded a SIGINT
  while the command started (before anything is written in the workdir).
  """

  def __init__(self):
    self.signal_name: str | None = None
    # Set once the last step has run: a signal then lets the run finish (its last
    # checkpoint, the test evaluation), which is what a re-run would do.
    self.finishing = False
    # Set by the loop: the steps of its compiled blocks, and the seconds a step has
    # taken, so that the message says how long the blocks in flight still run.
    self.block_steps = 1
    self.step_seconds: float | None = None
    self._previous = {}

  def __enter__(self) -> StopRequests:
    interrupted = bool(_EARLY["signals"])
    _EARLY.update(starting=False, signals=[])  # From here a SIGINT is the loop's.
    if interrupted:  # Ctrl-C while the command started: stop before anything is written.
      raise KeyboardInterrupt
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    # On a terminal the progress bar's line is cleared first (the bar redraws below).
    clear = "\r\x1b[K" if sys.stderr.isatty() else ""
    what = ("training is over: finishing the run (its last checkpoint, the test evaluation)"
            if self.finishing else self._stopping())
    print(f"{clear}jdl: {self.signal_name} received; {what} (Ctrl-C again to abort)",
          file=sys.stderr, flush=True)

  def _stopping(self) -> str:
    if self.block_steps <= 1:
      return "stopping after the current step and saving a checkpoint"
    # The loop keeps one block queued behind the one it waits for: two in flight.
    most = 2 * self.block_steps
    eta = (f", about {most * self.step_seconds:.0f} s" if self.step_seconds is not None
           and most * self.step_seconds >= 2 else "")
    return (f"stopping after the blocks of {self.block_steps} steps in flight (at most "
            f"{most} steps{eta}), then saving a checkpoint")

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  @property
  def requested(self) -> bool:
    return self.signal_name is not None
