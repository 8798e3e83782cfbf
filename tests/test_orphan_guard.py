"""A SIGKILLed driver leaves no process of its private Ray cluster behind.

Without the guard (``gvae_dist.orphan_guard``), a SIGKILLed ``gvae-dist train --workers 1``
left the raylet's dashboard agent and runtime-env agent running for about 60 s, and its token
on disk. The Ray test kills the real CLI at that moment; decoys that
look like another cluster's processes (a ``raylet`` whose session dir shares our prefix) must
survive. The guard-only tests drive the guard with plain processes, no Ray: it stands down when
disarmed and does nothing while its driver lives, and it finds a retitled agent it never saw by
the logs it writes in the session dir.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gvae_dist import orphan_guard
from tests.conftest import REPO, process_alive, stop_group

psutil = pytest.importorskip("psutil")

TINY = [
    "data.num_train=256",
    "data.num_eval=100",
    "data.image_size=32",
    "optim.batch_size=16",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.at_end=false",
    "run.threads=1",
    "optim.steps=1000",
    "distributed.cpus_per_worker=1",
    "tracking.enabled=false",
]


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.name()} {' '.join(p.cmdline())}"
    except psutil.Error:
        return ""


SLEEP = "import time; time.sleep(120)"
# a child that names no session, in neither its environment nor its command line, like a Ray
# agent once it has retitled itself
WITH_CHILD = (
    "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
    "time.sleep(120)'], env={}); time.sleep(120)"
)


def _sleeper(tmp: Path, name: str, session: Path, env_token: Path, code: str = SLEEP) -> subprocess.Popen:
    """A process called ``name`` that looks like a Ray process of the cluster in ``session``:
    its command line names the session dir, its environment the token (as Ray's do)."""
    exe = tmp / name
    exe.symlink_to(sys.executable)
    return subprocess.Popen(
        [str(exe), "-c", code, f"--session-dir={session}/r/x"],
        env={**os.environ, "RAY_AUTH_TOKEN_PATH": str(env_token)},
        start_new_session=True,
    )


def _session(tmp: Path) -> Path:
    session = tmp / "gvae-ray-test"
    (session / "r").mkdir(parents=True)
    (session / "auth_token").write_text("x")
    return session


def test_disarmed_guard_and_live_driver_leave_the_cluster_alone(tmp_path):
    session = _session(tmp_path)
    member = _sleeper(tmp_path, "raylet", session, session / "auth_token")
    try:
        assert orphan_guard.members(session) == [member.pid]
        guard = orphan_guard.start(session)
        time.sleep(2.0)  # several parent-pid polls while this "driver" lives
        assert guard.poll() is None and member.poll() is None
        t0 = time.monotonic()
        orphan_guard.disarm(guard)
        assert guard.returncode == 0 and time.monotonic() - t0 < 2.0
        time.sleep(0.5)
        assert member.poll() is None and (session / "auth_token").exists()
    finally:
        stop_group(member)


def test_guard_whose_pipe_closes_without_done_stops_the_cluster(tmp_path):
    session = _session(tmp_path)
    member = _sleeper(tmp_path, "gcs_server", session, session / "auth_token")
    raylet = _sleeper(tmp_path, "raylet", session, session / "auth_token", code=WITH_CHILD)
    # another cluster's raylet, its session dir sharing our prefix
    (tmp_path / "other").mkdir()
    other = _sleeper(tmp_path / "other", "raylet", Path(f"{session}X"), Path(f"{session}X/auth_token"))
    try:
        deadline = time.monotonic() + 10
        while not (agent := psutil.Process(raylet.pid).children()) and time.monotonic() < deadline:
            time.sleep(0.1)
        agent = agent[0]
        guard = orphan_guard.start(session)
        time.sleep(2.5)  # the guard looks every second while the driver lives
        raylet.kill()  # as Ray's fate-sharing kills the raylet: its child is reparented
        raylet.wait()
        guard.stdin.close()  # what the kernel does when the driver is killed
        guard.wait(timeout=15)
        assert member.wait(timeout=1) == -signal.SIGTERM
        assert not process_alive(agent)  # found through its parent while the driver lived
        assert other.poll() is None
        assert not (session / "auth_token").exists() and (session / "r").is_dir()
    finally:
        for proc in (member, raylet, other):
            stop_group(proc)


def _holding(session: Path, mode: str) -> subprocess.Popen:
    """A process that names no session (empty environment, plain command line), like a Ray agent
    once retitled and reparented, holding a log under the session dir open in ``mode``."""
    log = session / "r" / "logs" / "agent.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    code = f"import time; fh = open('agent.log', {mode!r}); print('open', flush=True); time.sleep(120)"
    proc = subprocess.Popen(  # the log's path in neither its command line nor its environment
        [sys.executable, "-c", code], env={}, cwd=log.parent, stdout=subprocess.PIPE, start_new_session=True
    )
    assert proc.stdout.readline() == b"open\n"
    return proc


def test_a_process_writing_into_the_session_belongs_to_it_and_one_reading_does_not(tmp_path):
    # the guard may first look after the raylet died and its agents were retitled (the CI run
    # that failed): then only their open log files still name the session
    session = _session(tmp_path)
    writer = _holding(session, "a")
    reader = _holding(session, "r")  # a user's `tail -f` of the logs
    try:
        assert orphan_guard.members(session) == [writer.pid]
        guard = orphan_guard.start(session)
        guard.stdin.close()  # the driver killed at once: the guard has no history
        guard.wait(timeout=15)
        assert writer.wait(timeout=1) == -signal.SIGTERM
        assert reader.poll() is None
    finally:
        for proc in (writer, reader):
            stop_group(proc)


def _cluster_processes(driver: int, session: Path) -> list[psutil.Process]:
    """The driver's descendants and whatever names the session dir in its command line."""
    try:
        found = {p.pid: p for p in psutil.Process(driver).children(recursive=True)}
    except psutil.NoSuchProcess:
        found = {}
    for p in psutil.process_iter(["cmdline"]):
        if f"{session}/" in " ".join(p.info["cmdline"] or []):
            found.setdefault(p.pid, p)
    return [p for p in found.values() if process_alive(p)]


@pytest.mark.integration
@pytest.mark.slow
def test_sigkilled_driver_leaves_no_process_of_its_private_cluster(ray_env, tmp_path):
    (tmp_path / "home").mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home"), "TMPDIR": str(ray_env.tmp), "PYTHONPATH": str(REPO)}
    log = tmp_path / "cli.log"
    decoy = None
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gvae_dist.cli",
                "train",
                "--workers",
                "1",
                *[a for kv in [*TINY, f"run.output_dir={tmp_path / 'out'}", "run.name=kill"] for a in ("--set", kv)],
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # wait for the raylet's agents to connect to the GCS (they retitle themselves then): killed
        # from here on, they outlived the driver by about 60 s without the guard
        deadline, cluster, session = time.monotonic() + 120, [], None
        while time.monotonic() < deadline and proc.poll() is None:
            session = next(iter(ray_env.tmp.glob("gvae-ray-*")), None)
            cluster = _cluster_processes(proc.pid, session) if session else []
            cmds = " ".join(_describe(p) for p in cluster)
            if "ray::DashboardAgent" in cmds and "ray::RuntimeEnvAgent" in cmds:
                break
            time.sleep(0.2)
        assert session and "raylet" in {_describe(p).split()[0] for p in cluster if _describe(p)}, log.read_text()[
            -3000:
        ]
        # another cluster's raylet, its session dir sharing our prefix, started from this process
        decoy = _sleeper(tmp_path, "raylet", Path(f"{session}2"), Path(f"{session}2/auth_token"))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        while time.monotonic() - killed < 15 and [p for p in cluster if process_alive(p)]:
            time.sleep(0.2)
        time.sleep(1.0)  # anything started while the cluster went down
        everyone = [*cluster, *_cluster_processes(proc.pid, session)]
        left = [(p.pid, _describe(p)[:80]) for p in everyone if process_alive(p)]
        assert left == [], f"{left} still running {time.monotonic() - killed:.1f}s after the SIGKILL"
        assert decoy.poll() is None
        assert not (session / "auth_token").exists() and (session / "r").is_dir()  # logs kept
        time.sleep(0.5)  # the guard's last line, after its final look
        assert f"the driver (pid {proc.pid}) is gone" in log.read_text()
    finally:
        for p in _cluster_processes(proc.pid, session) if session else []:
            p.kill()
        if proc.poll() is None:
            stop_group(proc)
        if decoy is not None:
            stop_group(decoy)
