"""The run directory as one run's property: a fresh run starts only in an empty (or new) directory, and a lock held
for the run's whole life keeps a second run out of it.

The lock is `RUN_DIR/.lock`, taken with `flock`: the kernel releases it when its holder dies, however it dies
(SIGKILL, a lost node), so a killed run never leaves a lock that blocks the next `--resume`. The file keeps the
holder's pid and start time, which a refused run names; its content outlives the holder, but only the flock says
whether the run is alive. The file itself is never deleted (deleting a flock file races with the next run opening
it), and nothing else in the directory counts as a run's contents.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path

from rlqa.errors import UserError

LOCK = ".lock"

_held: dict[Path, int] = {}  # run directory (resolved) -> this process's locked file descriptor


def run_contents(run_dir: Path) -> list[str]:
    """What the directory holds besides the lock file: a fresh run needs this empty."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)


def refuse_fresh_start(run_dir: Path) -> None:
    """A fresh run writes metrics.jsonl, samples.jsonl and checkpoints from step 0: in a directory that holds
    another run's files it would wipe its logs and mix its checkpoints with the old ones."""
    contents = run_contents(run_dir)
    if contents:
        shown = ", ".join(contents[:3]) + (", ..." if len(contents) > 3 else "")
        raise UserError(
            f"--run-dir {run_dir}: not empty ({shown}); continue that run with --resume, or give another --run-dir"
        )


@contextlib.contextmanager
def locked(run_dir: Path):
    """Hold `RUN_DIR/.lock` for the block (the run's life). Another live holder: exit 2 naming its pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the processes a run execs
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _describe(os.pread(fd, 4096, 0))
        os.close(fd)
        raise UserError(f"--run-dir {run_dir}: in use by another rlqa run ({holder}); wait for it to end or stop it") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        os.ftruncate(fd, 0)  # a finished run leaves no holder to name
        os.close(fd)  # releases the flock


def holds_lock(run_dir: Path) -> bool:
    """Whether this process holds the run directory's lock (what may delete its temporary directories)."""
    return run_dir.resolve() in _held


def _describe(content: bytes) -> str:
    try:
        holder = json.loads(content.decode())
        return f"pid {int(holder['pid'])}, started {holder['started']}"
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return "its pid is not recorded yet"
