"""Stop the private local Ray cluster of a driver that was killed (issue 14, item 12).

Ray ties the processes a driver starts (GCS, raylet, dashboard, monitors) to it with
``PR_SET_PDEATHSIG``, but not what the raylet starts in turn: killed during start-up, a driver
left its dashboard agent and runtime-env agent running for more than 45 s here, and its token
on disk. :func:`start` runs this module as a small guard process next to the private cluster
(``gvae_dist.launch._connect``); :func:`disarm` stands it down when the driver shuts the cluster
down itself (``_disconnect``), so a normal exit, or a Ctrl-C the driver handles, goes the usual way.

How the guard knows the driver died: it holds the read end of a pipe whose only writer is the
driver, and reads EOF without the word ``done`` (the kernel closes a killed process's files),
or its parent pid changes (a child forked by the driver could still hold the pipe). It runs in
its own session, so a Ctrl-C or hang-up aimed at the driver's terminal does not reach it.

Which processes belong to the cluster: this user's processes whose environment names the
session's token (``RAY_AUTH_TOKEN_PATH=<session>/auth_token``, set by the driver before Ray
starts, so every Ray process of that cluster inherits it) or whose command line names the
session directory (a fresh ``mkdtemp``). Never a process name: other Ray clusters on the
machine (tests, experiments) are left alone. They get SIGTERM, SIGKILL after a grace period;
then the token is removed and the logs kept, as after any failed run. Linux only (``/proc``);
elsewhere :func:`start` does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["start", "disarm", "members", "stop_cluster"]

DONE = b"done"
POLL_S = 0.5  # how often the parent pid is checked while the pipe stays open
GRACE_S = 1.5  # SIGTERM to SIGKILL


def start(session: str | Path) -> subprocess.Popen | None:
    """Start the guard of the private cluster in ``session`` (before Ray starts); None where
    there is no ``/proc`` to find the cluster's processes in."""
    if not Path("/proc/self/environ").exists():
        return None
    # stdin is a pipe only this process writes to (Python makes its end non-inheritable). The
    # file runs on its own (-I: no script dir, no PYTHON* variables), whatever sys.path the driver has.
    return subprocess.Popen([sys.executable, "-I", __file__, str(os.getpid()), str(session)],
                            stdin=subprocess.PIPE, start_new_session=True, close_fds=True)


def disarm(guard: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Tell the guard the driver stopped the cluster itself; it exits without touching anything."""
    if guard is None:
        return
    try:
        guard.stdin.write(DONE)
        guard.stdin.close()
    except (BrokenPipeError, ValueError):  # the guard is gone already, or disarmed before
        pass
    try:
        guard.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # it must not outlive us either: it would act on EOF
        guard.kill()
        guard.wait()


def _proc_text(pid: str, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read()
    except OSError:  # gone, another user's, or a kernel thread
        return b""


def members(session: str | Path) -> list[int]:
    """Live processes (no zombies) of the private cluster in ``session``, this one excluded."""
    session = str(Path(session).resolve()).encode()
    token = b"RAY_AUTH_TOKEN_PATH=" + session + b"/auth_token"
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        stat = _proc_text(pid, "stat")
        if not stat or stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X"):
            continue
        if token in _proc_text(pid, "environ").split(b"\0") or session + b"/" in _proc_text(pid, "cmdline"):
            found.append(int(pid))
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_cluster(session: str | Path, timeout: float = 20.0) -> int:
    """SIGTERM every process of the cluster, SIGKILL what is left after ``GRACE_S``, until two
    looks half a second apart find none (a raylet may start a worker while it shuts down) or
    ``timeout`` passes. Returns how many processes were signalled."""
    deadline = time.monotonic() + timeout
    signalled: set[int] = set()
    empty_looks = 0
    while empty_looks < 2 and time.monotonic() < deadline:
        pids = members(session)
        if not pids:
            empty_looks += 1
            time.sleep(0.5)
            continue
        empty_looks = 0
        _signal(pids, signal.SIGTERM)
        signalled.update(pids)
        until = min(deadline, time.monotonic() + GRACE_S)
        while time.monotonic() < until and set(pids) & set(members(session)):
            time.sleep(0.2)
        _signal(members(session), signal.SIGKILL)
        time.sleep(0.1)
    return len(signalled)


def _driver_gone(driver: int) -> bool:
    """Wait on stdin (the driver's pipe); True when the driver died, False when it disarmed us."""
    fd = sys.stdin.fileno()
    got = b""
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:  # EOF: every writer is gone
                return got != DONE
            got += chunk
        elif os.getppid() != driver:  # reparented: the driver died, a forked child holds the pipe
            return True


def main(argv: list[str]) -> int:
    driver, session = int(argv[0]), Path(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not ours to act on; the driver's pipe decides
    if not _driver_gone(driver):
        return 0
    count = stop_cluster(session)
    (session / "auth_token").unlink(missing_ok=True)
    logs = f"; Ray logs kept in {session}" if session.exists() else ""
    print(f"[gvae-dist] the driver (pid {driver}) is gone: stopped {count} process(es) of its private "
          f"Ray cluster{logs}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
