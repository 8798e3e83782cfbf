"""Shared fixtures for integration tests: isolated Ray clusters and an MLflow server.

Every Ray started here gets its own short temp dir (``RAY_TMPDIR``, which also holds the
``ray_current_cluster`` address file), explicit free ports and a dashboard on 127.0.0.1, with
token authentication on. Teardown stops only the processes these fixtures started (by their
process group), never ``ray stop``.

Ray reads ``RAY_AUTH_MODE`` when it is first imported and keeps the token it first loads, so
both are fixed here, at collection time, for the whole session: token mode, with a private
token file named by ``RAY_AUTH_TOKEN_PATH`` (the user's ``~/.ray`` is never touched).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Once per process tree: importing this file a second time (``tests.conftest`` next to pytest's
# ``conftest``) or from a child process must not mint a new token and repoint RAY_AUTH_TOKEN_PATH
# after Ray cached the first one (every later GCS start then fails with InvalidAuthToken).
if "GVAE_TEST_RAY_TOKEN_FILE" not in os.environ:
    _auth_dir = Path(tempfile.mkdtemp(prefix="gvae-test-auth-"))
    atexit.register(shutil.rmtree, _auth_dir, True)
    (_auth_dir / "auth_token").touch(mode=0o600)
    (_auth_dir / "auth_token").write_text(secrets.token_hex(32))
    os.environ["GVAE_TEST_RAY_TOKEN_FILE"] = str(_auth_dir / "auth_token")
RAY_TOKEN_FILE = Path(os.environ["GVAE_TEST_RAY_TOKEN_FILE"])
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(RAY_TOKEN_FILE), RAY_USAGE_STATS_ENABLED="0")
os.environ.pop("RAY_AUTH_TOKEN", None)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def free_port() -> int:
    from gvae_dist.launch import free_port as _free_port

    return _free_port()


def wait_for_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers (any HTTP status) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_for_train_actors_to_exit(timeout: float = 60.0) -> None:
    """An interrupted or stopped Ray Train run's actors die asynchronously; a later run on the same
    cluster while they still run would have two worker groups writing one run directory."""
    from ray.util.state import list_actors

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [
            a
            for a in list_actors(filters=[("state", "=", "ALIVE")])
            if a.class_name in ("RayTrainWorker", "TrainController", "ImplicitFunc")
        ]
        if not alive:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Train actors still alive after {timeout}s: {alive}")


def process_alive(p) -> bool:
    """Whether the ``psutil.Process`` ``p`` still runs: a zombie no parent reaped (an orphan
    here, where PID 1 may not reap) counts as gone."""
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def stop_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process this suite started with ``start_new_session=True``, and everything it
    spawned: SIGTERM to its group, then SIGKILL to the group and any descendant left over."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in family:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=grace)


@pytest.fixture(scope="module")
def ray_env():
    """Environment for the Ray processes of one test module: own temp dir, no inherited
    cluster address or tracking URI, the venv's tools on PATH."""
    tmp = Path(tempfile.mkdtemp(prefix="gr-"))  # short: Ray puts Unix sockets under it
    (tmp / "ray").mkdir()  # $RAY_TMPDIR/ray/ray_current_cluster: the address file of our heads
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_TMPDIR", str(tmp))
    mp.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield SimpleNamespace(tmp=tmp, token_file=RAY_TOKEN_FILE)
    mp.undo()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster(ray_env):
    """A two-node local cluster (``ray.cluster_utils.Cluster``, 1 CPU per node) with this
    process connected as its driver. Dashboard on 127.0.0.1 at a free port."""
    import ray
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "another Ray connection is open in this process"
    port = free_port()
    # Ray Train's placement-group cleaner otherwise auto-detects "the newest cluster on the
    # machine", which may be someone else's (see gvae_dist.launch)
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "temp_dir": str(ray_env.tmp),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
        },
    )
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.connect()
        yield SimpleNamespace(cluster=cluster, head=cluster.head_node, worker=worker, address=cluster.address)
    finally:
        ray.shutdown()
        cluster.shutdown()
        mp.undo()


@pytest.fixture(scope="module")
def ray_head(ray_env):
    """The README's head: ``ops/ray_head.sh start`` (``ray start --head --block`` on 127.0.0.1,
    token auth, its own temp dir) with free ports; yields its addresses and the environment
    (with the auth token) clients must use; ``ops/ray_head.sh stop`` stops it."""
    ports = {
        name: free_port()
        for name in (
            "ray-client-server-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "node-manager-port",
            "object-manager-port",
        )
    }
    head_dir = ray_env.tmp / "head"
    head_dir.mkdir(mode=0o700)
    shutil.copy(RAY_TOKEN_FILE, head_dir / "auth_token")  # this process's Ray caches that token
    gcs, dash = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_HEAD_DIR": str(head_dir),
        "RAY_HEAD_TMP": str(ray_env.tmp),
        "RAY_HEAD_PORT": str(gcs),
        "RAY_DASHBOARD_PORT": str(dash),
        "RAY_HEAD_CPUS": "2",
        "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dash}",
    }
    script = str(REPO / "ops" / "ray_head.sh")
    start = subprocess.run(
        ["bash", script, "start", *[arg for name, port in ports.items() for arg in (f"--{name}", str(port))]],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert start.returncode == 0, start.stdout + start.stderr
    pid = int((head_dir / "head.pid").read_text())
    try:
        yield SimpleNamespace(
            pid=pid,
            dashboard=f"http://127.0.0.1:{dash}",
            gcs=f"127.0.0.1:{gcs}",
            env=env,
            temp_dir=ray_env.tmp,
            token_file=head_dir / "auth_token",
            script=script,
            start_output=start.stdout,
        )
    finally:
        stop = subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        import psutil

        left = [
            p.pid
            for p in psutil.process_iter(["status"])
            if _pgid(p.pid) == pid and p.info["status"] != psutil.STATUS_ZOMBIE
        ]
        if left:  # make sure, then fail: `ops/ray_head.sh stop` must stop its whole head
            os.killpg(pid, signal.SIGKILL)
        assert stop.returncode == 0 and not left, (stop.stdout, stop.stderr, left)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``ops/mlflow_server.sh`` on a free loopback port with a SQLite store and artifact root.
    One for the session (a start costs 10-40 s here): each module logs to its own experiment."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            "bash",
            str(REPO / "ops" / "mlflow_server.sh"),
            str(port),
            f"sqlite:///{root / 'db.sqlite'}",
            str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", timeout=120, proc=proc)
        yield SimpleNamespace(url=url, root=root, proc=proc)
    finally:
        stop_group(proc)
        log.close()
