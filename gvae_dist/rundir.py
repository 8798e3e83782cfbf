"""One run directory, one run: an exclusive lock, leftovers cleared, metrics rewound on resume.

- :class:`RunLock`: ``fcntl.flock`` on ``<run_dir>/.lock``, held for the run's life by the process
  that writes the run directory (the in-process ``train_loop``'s main rank, or the Ray driver in
  ``launch``). A second run with the same directory fails at once with :class:`RunLocked`, which
  names the holder's pid and host. The kernel drops the lock when its holder dies (SIGKILL,
  OOM, power loss of a local disk), so a stale lock never blocks; the pid/host text in the file is
  information only. (``flock`` is advisory and, on NFS, works only where the server supports it.)
- :func:`clear_leftovers`: checkpoint temp directories (``checkpoints/.tmp-step_*``) and Ray's
  restore copies (``.restore/``) that a killed run left behind.
- :func:`rewind_metrics`: ``metrics.jsonl`` cut back (atomically) to the steps up to the one a
  run resumes from, so each step is there once and a resumed curve equals an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

__all__ = ["RunLock", "RunLocked", "clear_leftovers", "rewind_metrics", "LOCK_FILE", "METRICS_FILE"]

LOCK_FILE, METRICS_FILE, RESTORE_DIR = ".lock", "metrics.jsonl", ".restore"


class RunLocked(RuntimeError):
    """Another live process holds the run directory's lock; the message names it."""

    exit_code = 73  # EX_CANTCREAT (sysexits.h): the run directory cannot be written now


class RunLock:
    """Exclusive lock on a run directory (created if missing), as a context manager.

    Non-blocking: :meth:`acquire` raises :class:`RunLocked` naming the holder when another open
    file description holds it (another process, or another run in this process).
    """

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise RunLocked(self._message(holder)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def _message(self, holder: str) -> str:
        try:
            info = json.loads(holder)
            who = f"pid {info['pid']} on host {info['host']} (since {info['since']})"
        except (ValueError, KeyError, TypeError):
            who = "another process (no holder recorded yet)"
        return (
            f"run directory {self.run_dir} is in use by {who}: two runs must not share a "
            f"run directory. Wait for that run to finish (or stop it), or pick another "
            f"run.name. The lock is {self.path}; it is released when its holder exits"
        )

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clear_leftovers(run_dir: str | Path) -> list[Path]:
    """Remove what an interrupted run leaves and nothing reads: half-written checkpoint temp
    directories and Ray's restore copies. Call only while holding the run's lock."""
    run_dir = Path(run_dir)
    gone = sorted((run_dir / "checkpoints").glob(".tmp-step_*"))
    if (run_dir / RESTORE_DIR).exists():
        gone.append(run_dir / RESTORE_DIR)
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def rewind_metrics(run_dir: str | Path, step: int) -> int:
    """Keep only the ``metrics.jsonl`` rows with ``step <= step`` (written atomically); returns
    how many rows were dropped. A run restored from ``step`` logs the later steps again."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            row_step = int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):  # a line torn by a crash mid-write
            dropped += 1
            continue
        if row_step <= step:
            keep.append(line)
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)
    return dropped
