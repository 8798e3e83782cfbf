"""Stop the private local Ray cluster of a driver that was killed (docs/reliability.md).

Ray ties the processes a driver starts (GCS, raylet, dashboard, monitors) to it with
``PR_SET_PDEATHSIG``, but not what the raylet starts in turn: a killed driver left its
dashboard agent and runtime-env agent running for about 60 s here (they wait out their GCS
reconnect timeout), and its token on disk. :func:`start` runs this module as a small guard process next to
the private cluster
(``gvae_dist.launch.connect``); :func:`disarm` stands it down when the driver shuts the cluster
down itself (``disconnect``), so a normal exit, or a Ctrl-C the driver handles, goes the usual way.

How the guard knows the driver died: it holds the read end of a pipe whose only writer is the
driver, and reads EOF without the word ``done`` (the kernel closes a killed process's files),
or its parent pid changes (a child forked by the driver could still hold the pipe). It runs in
its own session, so a Ctrl-C or hang-up aimed at the driver's terminal does not reach it.

Which processes belong to the cluster (:class:`Members`): this user's processes whose
environment names the session's token (``RAY_AUTH_TOKEN_PATH=<session>/auth_token``, set by the
driver before Ray starts, so every Ray process of that cluster inherits it), whose command line
names the session directory (a fresh ``mkdtemp``) or that write to a file under it (Ray's
retitled agents keep neither environment nor command line intact, but log there),
their descendants, and those the guard found so while the driver lived (looked at every second:
the agents are reparented when the raylet dies). Never a process name: other Ray clusters on the
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

__all__ = ["start", "disarm", "Members", "members", "stop_cluster"]

DONE = b"done"
POLL_S = 1.0  # how often the parent pid and the cluster's processes are looked at
GRACE_S = 1.5  # SIGTERM to SIGKILL


def start(session: str | Path) -> subprocess.Popen | None:
    """Start the guard of the private cluster in ``session`` (before Ray starts); None where
    there is no ``/proc`` to find the cluster's processes in."""
    if not Path("/proc/self/environ").exists():
        return None
    # stdin is a pipe only this process writes to (Python makes its end non-inheritable). The
    # file runs on its own (-I: no script dir, no PYTHON* variables), whatever sys.path the driver has.
    return subprocess.Popen(
        [sys.executable, "-I", __file__, str(os.getpid()), str(session)],
        stdin=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
    )


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


def _proc_text(pid: int, name: str) -> bytes:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as fh:
            return fh.read()
    except OSError:  # gone, another user's, or a kernel thread
        return b""


def _table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks) of every live process, zombies left out."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        stat = _proc_text(int(name), "stat")
        fields = stat[stat.rfind(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 19 and fields[0] not in (b"Z", b"X"):
            table[int(name)] = (int(fields[1]), int(fields[19]))
    return table


class Members:
    """Finds the live processes of the private cluster in ``session``.

    A process belongs to it when its environment names the session's token, its command line
    names the session dir or it holds a file under that dir open for writing, or when it descends
    from such a process, or when it was found before (same pid and start time). Ray retitles its
    workers and agents (``ray::DashboardAgent``), which overwrites their command line and part of
    their environment, and the raylet's children are reparented when it dies: their log files
    still name the session, and :meth:`find` while the cluster runs remembers them."""

    def __init__(self, session: str | Path):
        root = str(Path(session).resolve()).encode()
        self._dir = root + b"/"
        self._token = b"RAY_AUTH_TOKEN_PATH=" + root + b"/auth_token"
        self._known: set[tuple[int, int]] = set()
        self._looked: dict[tuple[int, int], bool] = {}  # a process's own match, read once

    def _names_session(self, pid: int, start: int) -> bool:
        key = (pid, start)
        if key not in self._looked:
            self._looked[key] = (
                self._token in _proc_text(pid, "environ").split(b"\0")
                or self._dir in _proc_text(pid, "cmdline")
                or self._writes_into_session(pid)
            )
        return self._looked[key]

    def _writes_into_session(self, pid: int) -> bool:
        """Whether ``pid`` holds a file under the session dir open for writing: a retitled Ray
        agent writes its logs there (and holds the raylet's), whatever became of its environment
        and command line. Not a file open for reading: a ``tail -f`` of those logs is the user's."""
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or another user's
            return False
        for fd in fds:
            try:
                if not os.readlink(f"/proc/{pid}/fd/{fd}").encode().startswith(self._dir):
                    continue
            except OSError:  # closed meanwhile
                continue
            info = _proc_text(pid, f"fdinfo/{fd}")
            flags = next((line.split()[1] for line in info.splitlines() if line.startswith(b"flags:")), b"0")
            if int(flags, 8) & (os.O_WRONLY | os.O_RDWR):
                return True
        return False

    def find(self, recheck: bool = False) -> list[int]:
        """The cluster's live processes now (this one excluded); remembered for later calls.
        ``recheck``: look again at processes that did not match before (their open files change)."""
        if recheck:
            self._looked = {k: v for k, v in self._looked.items() if v}
        table = _table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = [
            pid for pid, (_, start) in table.items() if (pid, start) in self._known or self._names_session(pid, start)
        ]
        found: set[int] = set()
        while todo:
            pid = todo.pop()
            if pid not in found:
                found.add(pid)
                todo.extend(children.get(pid, ()))
        found.discard(os.getpid())
        self._known = {(pid, table[pid][1]) for pid in found} | {
            k for k in self._known if table.get(k[0], (0, -1))[1] == k[1]
        }
        self._looked = {k: v for k, v in self._looked.items() if k[0] in table}
        return sorted(found)


def members(session: str | Path) -> list[int]:
    """Live processes of the private cluster in ``session`` (see :class:`Members`), this one
    excluded; with no history, a retitled process counts only through a parent that matches."""
    return Members(session).find()


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_cluster(found: Members, timeout: float = 20.0) -> int:
    """SIGTERM every process of the cluster, SIGKILL what is left after ``GRACE_S``, until two
    looks half a second apart find none (a raylet may start a worker while it shuts down) or
    ``timeout`` passes. Returns how many processes were signalled."""
    deadline = time.monotonic() + timeout
    signalled: set[int] = set()
    empty_looks = 0
    first = True
    while empty_looks < 2 and time.monotonic() < deadline:
        pids = found.find(recheck=first)
        first = False
        if not pids:
            empty_looks += 1
            time.sleep(0.5)
            continue
        empty_looks = 0
        _signal(pids, signal.SIGTERM)
        signalled.update(pids)
        until = min(deadline, time.monotonic() + GRACE_S)
        while time.monotonic() < until and set(pids) & set(found.find()):
            time.sleep(0.2)
        _signal(found.find(), signal.SIGKILL)
        time.sleep(0.1)
    return len(signalled)


def _driver_gone(driver: int, found: Members) -> bool:
    """Wait on stdin (the driver's pipe), looking at the cluster's processes every ``POLL_S``;
    True when the driver died, False when it disarmed us."""
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
        else:
            found.find()


def main(argv: list[str]) -> int:
    driver, session = int(argv[0]), Path(argv[1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # not ours to act on; the driver's pipe decides
    found = Members(session)
    if not _driver_gone(driver, found):
        return 0
    count = stop_cluster(found)
    (session / "auth_token").unlink(missing_ok=True)
    logs = f"; Ray logs kept in {session}" if session.exists() else ""
    print(
        f"[gvae-dist] the driver (pid {driver}) is gone: stopped {count} process(es) of its private Ray cluster{logs}",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
