"""Ray Train driver: run the one ``train_loop`` on ``distributed.workers`` Ray workers.

``launch(cfg)`` builds a ``TorchTrainer`` (Ray Train V2) whose workers each call
``train_loop(cfg, RayHooks(...))``; Accelerate inside the loop picks up the process group Ray
sets up (``Accelerator(cpu=True)`` on CPU workers, see ``train.py``).

- Cluster: ``distributed.address`` or ``$RAY_ADDRESS`` (set by ``ray job submit``) joins that
  cluster; otherwise a private local cluster is started with exactly the CPUs of this machine,
  and shut down afterwards. Nothing attaches to another Ray on the machine by accident. The
  private cluster is for this user on this machine only: loopback node IP (every Ray server
  binds 127.0.0.1), a fresh token (0600) and Ray's temp dir in one 0700 directory, dashboard on
  127.0.0.1, no metrics export port (``connect``). A guard process stops that cluster and removes
  its token if the driver is killed (``gvae_dist.orphan_guard``).
- Resources are checked before ``fit()``: an unsatisfiable ``ScalingConfig`` would otherwise
  wait forever.
- Run identity: ``RunConfig(name=run.name, storage_path=distributed.storage_path or
  <run.output_dir>/ray)``. The driver holds the run directory's lock (``gvae_dist.rundir``)
  from before anything is written until it returns, so a second launch of the same run fails
  at once, naming the holder. Re-running the same name resumes it; worker failures restart the
  group, up to ``distributed.max_failures`` times. Either way the workers restore the newest
  checkpoint that loads among the run directory's, the storage's and Ray's own (Ray's
  latest-registered checkpoint can lag the newest on disk by a report or two), and a config
  that computes something else is refused by the driver before Ray starts.
- MLflow: the driver opens (or, when resuming, finds by tag) the run and passes its id to the
  workers, so a restart before the first checkpoint logs into the same run; the checkpoint
  carries the id from then on.
- Paths are made absolute on the driver before the config is shipped: workers do not share
  the driver's working directory (``ray job submit`` runs the driver in a temporary copy).
- Ray is optional (``pip install 'gvae-dist[ray]'``): :func:`launch` says so in one line when it
  is missing; ``distributed.workers=0`` trains in this process without it.
- Preemption (``run.stop_file``): the workers checkpoint, report and *return*, so Ray keeps that
  checkpoint; the driver then raises ``train.Preempted`` (the CLI exits 75 to be requeued).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

from gvae_dist import orphan_guard
from gvae_dist.checkpoint import Candidate, local_candidates
from gvae_dist.config import ClusterUnreachable, Config, ConfigError, redact_uri
from gvae_dist.rundir import METRICS_FILE, RESTORE_DIR, clear_leftovers
from gvae_dist.train import (
    Interrupted,
    Preempted,
    RunHooks,
    TrainResult,
    check_resume_config,
    claim_run_dir,
    train_loop,
)

__all__ = [
    "launch",
    "RayHooks",
    "resolve_config",
    "check_resources",
    "check_address",
    "ClusterUnreachable",
    "local_cpus",
    "free_port",
    "connect",
    "disconnect",
    "run_exists",
    "build_trainer",
]


def _candidates_on_disk(cfg: Config) -> list[Candidate]:
    """The run directory's checkpoints, then the (local) Ray storage's copies of them."""
    found = local_candidates(cfg.run_dir() / "checkpoints")
    storage = cfg.distributed.storage_path
    if storage and not _is_uri(storage):
        found += local_candidates(Path(storage) / cfg.run.name)
    return found


class RayHooks(RunHooks):
    """Report metrics and checkpoints to Ray Train; restore the newest checkpoint that loads.

    The driver holds the run directory's lock (so ``claim`` does nothing here). Candidates:
    the run directory's checkpoints, the storage's copies when the storage is a local path, and
    Ray's latest-registered checkpoint (copied to ``<run dir>/.restore/rank<r>`` when the
    storage is remote; the copy is dropped once loaded). Ray's is not always the newest: its
    controller registers a report only when it next polls, so a worker killed just after a
    checkpoint would otherwise resume one checkpoint early.
    """

    def __init__(self, tracking_run_id: str | None = None):
        self._run_id = tracking_run_id
        self._copy: Path | None = None

    def tracking_run_id(self, cfg: Config) -> str | None:
        return self._run_id

    def claim(self, cfg: Config) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def restore_candidates(self, cfg: Config) -> list[Candidate]:
        import ray.train

        found = _candidates_on_disk(cfg)
        ckpt = ray.train.get_checkpoint()
        storage = cfg.distributed.storage_path or ""
        if ckpt is not None and _is_uri(storage):
            # a private local copy: ranks on one node must not race on one directory
            self._copy = cfg.run_dir() / RESTORE_DIR / f"rank{ray.train.get_context().get_world_rank()}"
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy.parent.mkdir(parents=True, exist_ok=True)
            name = Path(ckpt.path).name
            local = Path(ckpt.to_directory(str(self._copy)))
            found.append(
                Candidate(int(name.split("_")[1]), local, f"{storage.rstrip('/')}/{cfg.run.name}/{name}/state.pt")
            )
        return found

    def restored(self, cfg: Config) -> None:
        if self._copy is not None:
            shutil.rmtree(self._copy, ignore_errors=True)
            self._copy = None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(
            metrics,
            checkpoint=ckpt,
            checkpoint_dir_name=f"step_{int(metrics['step']):08d}",
            delete_local_checkpoint_after_upload=False,
        )


def _quiet_report_log() -> None:
    """Ray Train 2.60 logs every report with its whole metrics dict at INFO through a logger
    named after its file path (``getLogger(__file__)``), so ``LoggingConfig`` cannot filter it."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


def _train_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Runs on every Ray worker; rank 0's return value comes back as ``Result.return_value``."""
    _quiet_report_log()
    try:
        result = train_loop(config["config"], RayHooks(config["tracking_run_id"]))
    except Preempted as stop:
        # a worker that raises makes Ray Train drop the checkpoint it just reported and restart
        # the group; returning keeps it, and the driver re-raises (exit 75: requeue and resume)
        return {"preempted": {"step": stop.step, "reason": stop.reason}}
    return {
        "step": result.step,
        "metrics": result.metrics,
        "eval_metrics": result.eval_metrics,
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
        "tracking_run_id": result.tracking_run_id,
    }


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# How long `--address` / $RAY_ADDRESS may take to accept a connection before gvae-dist gives up
# (Ray itself retries an unreachable GCS for minutes, printing its own warnings).
ADDRESS_TIMEOUT_S = 10.0


def check_address(address: str, source: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
    """Raise, within ``timeout`` seconds and with one line naming ``source``, when the Ray
    cluster at ``address`` (``host:port`` or ``ray://host:port``) cannot be reached; ``auto``
    and ``local`` are Ray's own lookups and pass. Only ``address`` is contacted."""
    import socket

    if address in ("auto", "local"):
        return
    scheme, sep, rest = address.partition("://")
    if sep and scheme in ("http", "https"):
        raise ConfigError(
            f"{source}: {address!r} is a dashboard / job-submission URL; training joins the "
            "cluster's GCS address host:port (the head's --port, 6379 by default); or submit "
            f"the run there: ray job submit --address {address} -- gvae-dist train ..."
        )
    if sep and scheme != "ray":
        raise ConfigError(f"{source}: {address!r} has an unknown scheme {scheme!r}; use host:port or ray://host:port")
    target = rest if sep else address
    host, colon, port = target.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit():
        raise ConfigError(f"{source}: {address!r} is not host:port (e.g. 127.0.0.1:6379, the head's --port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ClusterUnreachable(
            f"{source}={address}: no Ray cluster accepts connections there ({why}, waited at most "
            f"{timeout:.0f} s). Start one (ops/ray_head.sh start prints its address), fix the address, "
            "or leave it unset to train on a private local cluster"
        ) from None


def _is_uri(path: str) -> bool:
    return "://" in path


def resolve_config(cfg: Config) -> Config:
    """The config the workers get: absolute output/storage/data paths, explicit tracking URI."""
    from gvae_dist.tracking import default_tracking_uri

    out = Path(cfg.run.output_dir).expanduser().resolve()
    storage = cfg.distributed.storage_path or str(out / "ray")
    changes: dict[str, Any] = {
        "run.output_dir": str(out),
        "distributed.storage_path": storage if _is_uri(storage) else str(Path(storage).expanduser().resolve()),
    }
    if cfg.data.path and not _is_uri(cfg.data.path):
        changes["data.path"] = str(Path(cfg.data.path).expanduser().resolve())
    if cfg.data.eval_path and not _is_uri(cfg.data.eval_path):
        changes["data.eval_path"] = str(Path(cfg.data.eval_path).expanduser().resolve())
    if cfg.run.stop_file:
        changes["run.stop_file"] = str(Path(cfg.run.stop_file).expanduser().resolve())
    if cfg.tracking.enabled:
        uri = cfg.tracking.uri or default_tracking_uri(out)
        # a URI with credentials stays out of the config (which is shipped, saved and logged):
        # the driver reads it where it came from, the workers from their environment (worker_env)
        changes["tracking.uri"] = uri if redact_uri(uri) == uri else cfg.tracking.uri
    return cfg.replace(changes)


def _secret_tracking_uri(cfg: Config) -> str | None:
    """The tracking URI when it carries credentials (from ``tracking.uri`` or
    ``$MLFLOW_TRACKING_URI``), else None."""
    from gvae_dist.tracking import tracking_uri

    if not cfg.tracking.enabled:
        return None
    uri = tracking_uri(cfg)
    return uri if redact_uri(uri) != uri else None


def _shipped_config(cfg: Config) -> dict[str, Any]:
    """The config dict the workers get: no credentials (they find the tracking URI in
    ``$MLFLOW_TRACKING_URI``, set by :func:`worker_env`)."""
    return (cfg.replace({"tracking.uri": None}) if _secret_tracking_uri(cfg) else cfg).to_dict()


def local_cpus() -> int:
    """CPUs this process may run on (cgroup/affinity aware where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def check_resources(cfg: Config, nodes: list[dict[str, float]]) -> None:
    """Raise ``ConfigError`` unless ``distributed.workers`` workers fit on ``nodes`` (each a
    Ray resource dict such as ``{"CPU": 2.0, "GPU": 1.0}``) by capacity."""
    d = cfg.distributed
    need = {"CPU": float(d.cpus_per_worker)}
    if d.use_gpu:
        need["GPU"] = 1.0
    fits = sum(int(min(node.get(k, 0.0) // v for k, v in need.items())) for node in nodes)
    if fits < d.workers:
        cpus = sum(node.get("CPU", 0.0) for node in nodes)
        gpus = sum(node.get("GPU", 0.0) for node in nodes)
        raise ConfigError(
            f"distributed.workers={d.workers} x distributed.cpus_per_worker={d.cpus_per_worker}"
            + (" (+1 GPU each, distributed.use_gpu)" if d.use_gpu else "")
            + f" cannot be placed: the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs on "
            f"{len(nodes)} node(s), room for {fits} such worker(s). Lower distributed.workers or "
            "distributed.cpus_per_worker, or add nodes"
        )


def _validate(cfg: Config) -> None:
    d = cfg.distributed
    if d.workers < 1:
        raise ConfigError(
            "distributed.workers: launch() needs at least 1 Ray worker (0 means: run train_loop in this process)"
        )
    if d.cpus_per_worker < 1:
        raise ConfigError(f"distributed.cpus_per_worker: must be >= 1, got {d.cpus_per_worker}")
    if cfg.optim.mixed_precision == "fp16" and not d.use_gpu:
        raise ConfigError(
            "optim.mixed_precision: fp16 runs only on GPU workers (set "
            "distributed.use_gpu=true), use 'bf16' or 'no' on CPU workers"
        )
    if d.use_gpu and cfg.run.device == "cpu":
        raise ConfigError("run.device: 'cpu' contradicts distributed.use_gpu=true")


def run_exists(storage: str, name: str) -> bool:
    """Whether Ray Train's run directory ``name`` exists under ``storage`` (a local path or a
    ``pyarrow.fs`` URI such as ``s3://bucket/prefix``)."""
    import pyarrow.fs

    if _is_uri(storage):
        fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    else:
        fs, root = pyarrow.fs.LocalFileSystem(), storage
    return fs.get_file_info(f"{root.rstrip('/')}/{name}").type != pyarrow.fs.FileType.NotFound


# Environment of a private local cluster (see _private_session); restored by disconnect.
_SESSION_ENV = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_API_SERVER_ADDRESS",
    "RAY_enable_metrics_collection",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",
)
_saved_env: dict[str, str | None] = {}
_saved_cluster_flag: list[bool] = []
_guards: dict[str, Any] = {}  # session dir -> its orphan guard process (gvae_dist.orphan_guard)


def _single_node_loopback(on: bool) -> None:
    """Ray's single-node mode (its default on macOS/Windows): ``ray.init`` turns a node IP of
    127.0.0.1 into this machine's network address, and every Ray gRPC server (GCS, raylet,
    object manager, workers, agents) then listens on all interfaces; in this mode the node IP
    stays 127.0.0.1 and they bind it. Ray reads the flag at import (``ray_constants``), so the
    loaded module is switched too; ``on=False`` restores it."""
    from ray._private import ray_constants

    if on:
        _saved_cluster_flag.append(ray_constants.ENABLE_RAY_CLUSTER)
        ray_constants.ENABLE_RAY_CLUSTER = False
    elif _saved_cluster_flag:
        ray_constants.ENABLE_RAY_CLUSTER = _saved_cluster_flag.pop()


def _reload_ray_auth() -> None:
    """Make this process's Ray re-read ``RAY_AUTH_MODE`` and the token: both are cached on first
    use, and a process may already have used another cluster (a test suite, a notebook)."""
    try:
        from ray._raylet import AuthenticationTokenLoader
        from ray._raylet import Config as RayConfig
    except ImportError:  # a Ray without token authentication: nothing cached
        return
    RayConfig.initialize("")  # before the cache reset, as Ray's own tests do
    AuthenticationTokenLoader.instance().reset_cache()


def _private_session(dashboard_port: int) -> Path:
    """A private directory for a local cluster: ``<tmp>/gvae-ray-XXXX`` (0700, short: Ray puts
    Unix sockets under it) holding a fresh token (``auth_token``, 0600) and Ray's temp dir
    (``r``). Sets the environment the cluster's processes inherit: token auth with that token
    (never Ray's shared ``~/.ray/auth_token``), metrics collection off (its Prometheus port
    answers anyone who can connect), and the state API pinned to our dashboard."""
    import secrets

    session = Path(tempfile.mkdtemp(prefix="gvae-ray-"))  # mkdtemp: mode 0700
    token = session / "auth_token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    (session / "r").mkdir(mode=0o700)
    _saved_env.update({k: os.environ.get(k) for k in _SESSION_ENV})
    os.environ.pop("RAY_AUTH_TOKEN", None)
    # The dashboard serves the state API that Ray Train V2's placement-group cleaner polls
    # (without it, it warns every second). The cleaner finds the API by auto-detection, which
    # picks the newest of *all* Ray clusters on the machine and can then declare our controller
    # dead and remove our workers' placement group: pin it to ours.
    os.environ.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_API_SERVER_ADDRESS=f"http://127.0.0.1:{dashboard_port}",
        RAY_enable_metrics_collection="0",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    )
    _single_node_loopback(True)
    _reload_ray_auth()
    return session


def connect(cfg: Config) -> str | None:
    """Join the configured cluster or start a private local one; returns the session dir of a
    cluster this call started (to clean up), else None.

    The private cluster is reachable from this machine's loopback only and by this user only:
    node IP 127.0.0.1 (GCS, raylet, object manager, workers and dashboard bind 127.0.0.1), token
    authentication with a per-cluster token in a 0700 directory (:func:`_private_session`), Ray's
    temp dir (logs, sockets, spilled objects) in there too, so out of other users' reach although
    Ray makes it 0777 itself, no metrics export port."""
    import ray

    if ray.is_initialized():  # the caller (a test, a Tune trial) chose the cluster
        return None
    address = cfg.distributed.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address, "distributed.address" if cfg.distributed.address else "$RAY_ADDRESS")
        ray.init(address=address, log_to_driver=True)
        return None
    import torch

    # check before paying for a cluster start
    check_resources(cfg, [{"CPU": float(local_cpus()), "GPU": float(torch.cuda.device_count())}])
    port = free_port()
    session = _private_session(port)
    # stops the cluster and removes the token if this process is killed (SIGKILL, OOM killer):
    # Ray's own fate-sharing misses the processes its raylet starts
    _guards[str(session)] = orphan_guard.start(session)
    temp_dir = session / "r"
    try:
        ctx = ray.init(
            address="local",
            num_cpus=local_cpus(),
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=port,
            _temp_dir=str(temp_dir),
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
        )
    except BaseException:
        disconnect(str(session), keep_logs=True)
        raise
    # Ray opens its temp, session, socket and log dirs to everyone (0777), again in every worker
    # process it starts (ray/_private/node.py, try_make_directory_shared), so a chmod here would
    # not last: the 0700 session dir around them is what keeps other users out.
    node_ip = ctx.address_info.get("node_ip_address")
    if node_ip != "127.0.0.1":  # a Ray version that ignores the single-node flag
        warnings.warn(
            f"the private Ray cluster runs on node IP {node_ip}, not 127.0.0.1: its services "
            "may be reachable from the network (token authentication is on)",
            RuntimeWarning,
            stacklevel=2,
        )
    print(f"[gvae-dist] local Ray cluster (temp dir {temp_dir}); dashboard http://{ctx.dashboard_url}", flush=True)
    return str(session)


def disconnect(session: str | None, keep_logs: bool = False) -> None:
    """Undo :func:`connect`: shut down the private local cluster it started (``session``; None:
    a cluster someone else chose, left alone), restore the environment and remove its session
    dir, or with ``keep_logs`` keep the logs (the token is removed either way) and say where."""
    if session is None:
        return
    import ray

    ray.shutdown()
    for key, value in _saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved_env.clear()
    _single_node_loopback(False)
    _reload_ray_auth()
    if keep_logs:
        (Path(session) / "auth_token").unlink(missing_ok=True)
        print(f"[gvae-dist] Ray logs kept in {session}", flush=True)
    else:
        shutil.rmtree(session, ignore_errors=True)
    orphan_guard.disarm(_guards.pop(session, None))


def _per_worker(cfg: Config) -> dict[str, float]:
    d = cfg.distributed
    return {"CPU": d.cpus_per_worker, **({"GPU": 1} if d.use_gpu else {})}


def worker_env(cfg: Config) -> dict[str, str]:
    """Environment variables of the Train worker processes (set before they start).

    - ``RAY_TRAIN_ENABLE_PRINT_PATCH=0``: Ray Train's print patch tees every print() twice to
      the driver.
    - ``MALLOC_ARENA_MAX=1`` on CPU with ``run.retain_freed_memory``: Ray Train runs the loop in
      a thread, whose glibc arena deletes every heap that becomes free (``M_TRIM_THRESHOLD``
      does not cover that), so the activations were page-faulted back every step (48k faults/s);
      one arena keeps them (docs/performance.md).
    - ``MLFLOW_TRACKING_URI`` when the tracking URI carries credentials: they travel in the
      environment, never in the config the workers save and log (:func:`_shipped_config`).
    """
    env = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}
    if not cfg.distributed.use_gpu and cfg.run.retain_freed_memory:
        env["MALLOC_ARENA_MAX"] = "1"
    secret = _secret_tracking_uri(cfg)
    if secret:
        env["MLFLOW_TRACKING_URI"] = secret
    return env


def build_trainer(cfg: Config, run_id: str | None, callbacks: list | None = None):
    """The ``TorchTrainer`` of a resolved config: ``distributed.workers`` workers running
    :func:`_train_worker`, Ray Train run ``run.name`` under ``distributed.storage_path`` (so a
    rerun with the same name resumes it). Shared by :func:`launch` and the Tune trials."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    d = cfg.distributed
    return TorchTrainer(
        _train_worker,
        train_loop_config={"config": _shipped_config(cfg), "tracking_run_id": run_id},
        scaling_config=ScalingConfig(num_workers=d.workers, use_gpu=d.use_gpu, resources_per_worker=_per_worker(cfg)),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=d.storage_path,
            callbacks=callbacks,
            failure_config=FailureConfig(max_failures=d.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            logging_config=LoggingConfig(log_level="WARNING"),
            worker_runtime_env={"env_vars": worker_env(cfg)},
        ),
    )


def launch(cfg: Config) -> TrainResult:
    """Train ``cfg`` on a Ray cluster with ``distributed.workers`` workers; see module doc."""
    from gvae_dist.optional import require

    ray = require("ray", "distributed.workers > 0 (gvae-dist train --workers N: Ray Train)")
    _validate(cfg)
    cfg = resolve_config(cfg)
    with claim_run_dir(cfg.run_dir()):  # held until the run ends: one run per run directory
        try:
            return _launch(cfg, ray)
        finally:
            clear_leftovers(cfg.run_dir())


def _last_logged_step(run_dir: Path) -> int | None:
    try:
        lines = (run_dir / METRICS_FILE).read_text().splitlines()
        return int(json.loads(lines[-1])["step"]) if lines else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _fit_interruptibly(trainer, ray):
    """``trainer.fit()``, where Ctrl-C (SIGINT) on the driver stops the run on the cluster and
    raises ``KeyboardInterrupt`` here.

    Ray Train's own handler (registered inside ``fit``) aborts the run and then calls
    ``sys.exit(0)``: a Ctrl-C would end ``gvae-dist train`` with exit code 0, its MLflow run marked
    FAILED and no word on how to resume. Ours aborts the same way (the Train workers stop, also on
    a cluster this driver only joined), then raises, so the caller marks the run KILLED and names
    its newest checkpoint. A second Ctrl-C while the abort waits acts at once. The previous
    handler is restored when ``fit`` returns (Ray leaves its own installed)."""
    main = threading.current_thread() is threading.main_thread()  # Tune trials: no handler
    previous = signal.getsignal(signal.SIGINT) if main else None
    if main and hasattr(trainer, "_register_sigint_handler"):

        def register(controller) -> None:
            def on_sigint(signum, frame):
                signal.signal(signal.SIGINT, previous)
                print("[gvae-dist] Ctrl-C: stopping the Ray Train run (its workers) ...", flush=True)
                try:
                    ray.get(controller.abort.remote(), timeout=60)
                except Exception:  # noqa: BLE001 - the controller may exit while aborting
                    pass
                raise KeyboardInterrupt

            signal.signal(signal.SIGINT, on_sigint)

        trainer._register_sigint_handler = register  # Ray Train v2's hook for its own handler
    try:
        return trainer.fit()
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)


def _launch(cfg: Config, ray) -> TrainResult:
    from gvae_dist.tracking import close_run, open_run, tracking_uri

    d, storage, name = cfg.distributed, cfg.distributed.storage_path, cfg.run.name
    exists = run_exists(storage, name)
    if exists and not cfg.run.resume:
        raise ConfigError(
            f"run.resume: false, but Ray Train run {storage}/{name} exists and would be "
            "resumed; delete it, pick another run.name, or set run.resume=true"
        )
    on_disk = _candidates_on_disk(cfg)
    if on_disk and not cfg.run.resume:
        raise ConfigError(
            f"run.resume: false, but {cfg.run_dir()} holds checkpoints; pick another "
            "run.name, move that directory away, or set run.resume=true"
        )
    if on_disk:  # refuse a different config here, not after Ray has retried every worker
        newest = max(on_disk, key=lambda c: c.step)
        check_resume_config(cfg, newest.path)
    temp_dir = connect(cfg)
    ok = False
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        check_resources(cfg, nodes)
        if len(nodes) > 1 and cfg.tracking.enabled and tracking_uri(cfg).startswith("sqlite:"):
            warnings.warn(
                f"tracking.uri={cfg.tracking.uri} is a file on this machine, but rank 0 may "
                "run on another node (then the run is not tracked): use a tracking server "
                "(ops/mlflow_server.sh) or a path on a shared filesystem",
                RuntimeWarning,
                stacklevel=2,
            )
        run_key = redact_uri(f"{storage}/{name}")  # an MLflow tag and printed
        run_id = open_run(cfg, run_key, reuse=exists)
        print(
            f"[gvae-dist] Ray Train: {d.workers} worker(s) x {_per_worker(cfg)} on "
            f"{ray.get_runtime_context().gcs_address}; {'resuming' if exists else 'new'} run "
            f"{run_key}; MLflow run {run_id} at {redact_uri(tracking_uri(cfg)) if cfg.tracking.enabled else '-'}",
            flush=True,
        )
        trainer = build_trainer(cfg, run_id)
        try:
            result = _fit_interruptibly(trainer, ray)
        except KeyboardInterrupt:  # Ctrl-C on the driver: resumable, not a failure
            close_run(cfg, run_id, "KILLED")
            newest = max(_candidates_on_disk(cfg), key=lambda c: c.step, default=None)
            raise Interrupted(_last_logged_step(cfg.run_dir()), newest.path if newest else None) from None
        except BaseException:
            close_run(cfg, run_id, "FAILED")
            raise
        ok = True
    finally:
        disconnect(temp_dir, keep_logs=not ok)
    back = result.return_value or {}
    ckpt = result.checkpoint
    if "preempted" in back:
        raise Preempted(back["preempted"]["step"], Path(ckpt.path) if ckpt else None, back["preempted"]["reason"])
    return TrainResult(
        step=int(back.get("step") or (result.metrics or {}).get("step", 0)),
        metrics=back.get("metrics") or result.metrics or {},
        eval_metrics=back.get("eval_metrics"),
        run_dir=cfg.run_dir(),
        checkpoint=Path(ckpt.path)
        if ckpt is not None and not _is_uri(storage)
        else (Path(back["checkpoint"]) if back.get("checkpoint") else None),
        tracking_run_id=back.get("tracking_run_id") or run_id,
    )
