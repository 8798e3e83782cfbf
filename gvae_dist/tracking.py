"""Experiment tracking behind one interface: MLflow on rank 0, a null tracker everywhere else.

The train loop calls ``tracker.log_metrics(...)`` unconditionally (nanochat's DummyWandb pattern).
An unreachable or failing tracking backend never stops training: the first failure is warned
about once, and the tracker turns itself into a null tracker. HTTP retries and timeouts are
bounded (``MLFLOW_HTTP_REQUEST_*``, overridable) so a dead server costs seconds, not minutes.

Stores: ``sqlite:///<run.output_dir>/mlflow.db`` by default (browse with
``mlflow ui --backend-store-uri sqlite:///<abs path>/mlflow.db``), its artifacts in
``<run.output_dir>/mlartifacts`` (MLflow would otherwise use ``./mlruns`` in the working
directory); ``$MLFLOW_TRACKING_URI`` or ``tracking.uri`` point at a server instead
(``ops/mlflow_server.sh``), which then decides where artifacts go.

MLflow is optional (``pip install 'gvae-dist[mlflow]'``): without it, runs with
``tracking.enabled`` train untracked after one warning line per process.

Run identity: a launcher that may restart workers (Ray Train) opens the run up front with
:func:`open_run`, keyed by a ``gvae_dist.run_key`` tag, and hands its id to the workers; the id
is also stored in every checkpoint, so restarts and resumes log into the same run. A continued
run is sent each metric only for steps after the last one it holds for that key (MLflow appends a
second point for a step logged twice), so a resume from a checkpoint older than the crash does not
log the steps in between twice; ``run/*`` bookkeeping metrics are always sent. In MLflow the
training metrics are named ``train/<metrics.jsonl name>`` (``train/loss``, ``train/kl/pose``;
:func:`gvae_dist.tracking_pending.mlflow_metric_name`), evaluation ``eval/*`` as everywhere.

Outages: what a run could not send once its tracker broke (metrics of later steps, the end status)
is recorded in ``<run_dir>/tracking_pending.json`` and sent by the next ``gvae-dist train`` of that
run directory or ``gvae-dist tracking sync`` (:mod:`gvae_dist.tracking_pending`).

Credentials: a tracking URI may carry them (``http://user:password@host``, as
``$MLFLOW_TRACKING_URI`` often does). Params, warnings and printed lines go through
:func:`gvae_dist.config.redact_uri`; the saved config is redacted by ``config_yaml``; Ray
workers get the real URI in their environment, not in their config (``launch.worker_env``).

The reconstruction and latent-traversal grids logged as PNG artifacts are drawn by
:mod:`gvae_dist.plots` (``log_image_grids``); this module only sends them.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gvae_dist.config import redact, redact_uri

log = logging.getLogger(__name__)

__all__ = [
    "NullTracker",
    "MLflowTracker",
    "make_tracker",
    "open_run",
    "close_run",
    "default_tracking_uri",
    "tracking_uri",
    "mlflow_missing",
    "mlflow_client",
    "settle_pending",
    "posterior_mean",
    "RUN_KEY_TAG",
]

RUN_KEY_TAG = "gvae_dist.run_key"

# Bounded HTTP behaviour unless the user set these: one retry, ~1 s back-off, 10 s timeout.
_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class NullTracker:
    """Accepts every call and does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_model(
        self,
        model,
        input_example: np.ndarray,
        partitions,
        work_dir: Path,
        name: str = "encoder",
        registry_name: str | None = None,
        version_tags: dict[str, Any] | None = None,
    ) -> str | None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def default_tracking_uri(output_dir: str | Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def tracking_uri(cfg) -> str:
    """``tracking.uri``, else the SQLite store under ``run.output_dir``."""
    return cfg.tracking.uri or default_tracking_uri(cfg.run.output_dir)


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a SQLite store live next to its database file; a server decides its own."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :]).resolve()
    return (db.parent / "mlartifacts").as_uri()


_warned_missing = False


def mlflow_missing() -> bool:
    """True (and one warning line, once per process) when MLflow is not installed."""
    global _warned_missing
    from gvae_dist.optional import available

    if available("mlflow"):
        return False
    if not _warned_missing:
        _warned_missing = True
        log.warning(
            "[gvae-dist] warning: tracking.enabled=true but MLflow is not installed: training runs untracked "
            "(pip install 'gvae-dist[mlflow]', or set tracking.enabled=false)"
        )
    return True


def mlflow_client(uri: str):
    """An ``MlflowClient`` for ``uri`` with bounded HTTP retries and timeouts, URL printing off when
    the URI carries credentials, and the directory of a ``sqlite:///`` store created."""
    from mlflow.tracking import MlflowClient

    for key, value in _HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if redact_uri(uri) != uri:  # MLflow prints "View run at <URI>" on every run end, credentials included
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).resolve().parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def _set_fluent_uri(uri: str) -> None:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``) at ``uri`` without
    exporting it: ``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``, which a later
    run in this process (a study cell, a Tune trial) would take as its default store."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def _experiment_id(client, uri: str, experiment: str) -> str:
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(experiment, artifact_location=_artifact_location(uri))


def _warn(what: str, exc: Exception) -> None:
    # MLflow's errors quote the request URL, credentials included
    warnings.warn(
        f"MLflow {what} failed ({type(exc).__name__}: {redact_uri(str(exc))}); training continues without tracking",
        RuntimeWarning,
        stacklevel=3,
    )


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                out.update(_flatten(item, f"{key}.{i}."))
        else:
            out[key] = v
    return out


def prepare_store(cfg) -> str | None:
    """Create the store's tables and the experiment once, from one process, before several
    processes open runs in it at the same time (two processes creating a fresh SQLite store
    race on its schema and one loses tracking). Returns the experiment id, None when off or
    unreachable (warned)."""
    if not cfg.tracking.enabled or mlflow_missing():
        return None
    uri = tracking_uri(cfg)
    try:
        return _experiment_id(mlflow_client(uri), uri, cfg.tracking.experiment)
    except Exception as exc:  # tracking must never stop a launch
        _warn("store set-up", exc)
        return None


def open_run(cfg, run_key: str, reuse: bool) -> str | None:
    """Id of the MLflow run for ``run_key``: the newest run tagged with it when ``reuse``, else a
    new run. None when tracking is off or the store is unreachable (warned once)."""
    if not cfg.tracking.enabled or mlflow_missing():
        return None
    uri = tracking_uri(cfg)
    try:
        client = mlflow_client(uri)
        exp_id = _experiment_id(client, uri, cfg.tracking.experiment)
        if reuse:
            key = run_key.replace("'", "\\'")
            found = client.search_runs(
                [exp_id],
                filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1,
            )
            if found:
                return found[0].info.run_id
        return client.create_run(exp_id, run_name=cfg.run.name, tags={RUN_KEY_TAG: run_key}).info.run_id
    except Exception as exc:  # tracking must never stop a launch
        _warn("run set-up", exc)
        return None


def close_run(cfg, run_id: str | None, status: str) -> None:
    """Mark a run ``FINISHED`` / ``FAILED`` / ``KILLED`` from outside the workers (best effort; an
    unreachable store: the status is recorded as owed in the run directory)."""
    if run_id is None or not cfg.tracking.enabled or mlflow_missing():
        return
    uri = tracking_uri(cfg)
    try:
        mlflow_client(uri).set_terminated(run_id, status)
    except Exception as exc:
        _warn("run status update", exc)
        from gvae_dist.tracking_pending import owe

        try:
            path = owe(cfg.run_dir(), run_id, uri, status=status)
        except OSError:  # nowhere to record it: the warning above is all there is
            return
        log.warning(
            "[gvae-dist] warning: MLflow run %s could not be marked %s; recorded in %s for the next "
            "`gvae-dist train` of this run directory or `gvae-dist tracking sync %s`",
            run_id,
            status,
            path,
            cfg.run_dir(),
        )


def settle_pending(cfg) -> bool:
    """Send what an earlier tracking outage left owed in ``cfg.run_dir()`` (see
    :mod:`gvae_dist.tracking_pending`); True when nothing is owed any more. Tracking off or MLflow
    missing: the file is left for a tracked run or ``gvae-dist tracking sync`` (False)."""
    from gvae_dist.tracking_pending import PENDING_FILE, settle_run_dir

    if not (cfg.run_dir() / PENDING_FILE).is_file():
        return True
    if not cfg.tracking.enabled or mlflow_missing():
        return False  # kept for a tracked run (or `gvae-dist tracking sync`)
    uri = tracking_uri(cfg)
    return settle_run_dir(mlflow_client(uri), uri, cfg.run_dir())


class MLflowTracker:
    """MLflow run (created, or continued by ``run_id``) with warn-once failure handling."""

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        dedupe: bool = False,
        run_dir: str | Path | None = None,
    ):
        # a continued run keeps its id when the store is out of reach: its checkpoints name it, and
        # what it misses is owed to it
        self.uri, self.run_id = uri, run_id
        self._client = None
        self._broken = False
        self._run_dir = Path(run_dir) if run_dir is not None else None  # where what is owed is recorded
        self._owing = False
        self._dedupe = dedupe and run_id is not None
        self._last_step: dict[str, int] = {}
        self._call(self._start, experiment, run_name, run_id, tags or {})

    def _start(self, experiment, run_name, run_id, tags):
        client = mlflow_client(self.uri)
        if run_id is None:
            exp_id = _experiment_id(client, self.uri, experiment)
            run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
        self._client, self.run_id = client, run_id

    def _call(self, fn, *args) -> Any:
        if self._broken:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # tracking must never kill training
            self._broken = True
            _warn("tracking", exc)
            return None

    @property
    def active(self) -> bool:
        return not self._broken and self._client is not None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        if self._client is None:
            return
        items = [Param(k, str(v)[:6000]) for k, v in _flatten(redact(params)).items()]
        for i in range(0, len(items), 100):
            self._call(self._client.log_batch, self.run_id, [], items[i : i + 100])

    def _logged_up_to(self, key: str) -> int:
        """The last step this run holds for ``key`` (-1: none), asked once per key."""
        if key not in self._last_step:
            history = self._call(self._client.get_metric_history, self.run_id, key) or []
            self._last_step[key] = max((m.step for m in history), default=-1)
        return self._last_step[key]

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        from gvae_dist.tracking_pending import mlflow_metrics

        metrics = mlflow_metrics(metrics)  # train/*, eval/*, run/* (the run page's sections)
        if self._dedupe and self.active:
            metrics = {k: v for k, v in metrics.items() if k.startswith("run/") or step > self._logged_up_to(k)}
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500) if self._client is not None else ():
            self._call(self._client.log_batch, self.run_id, items[i : i + 500])
        if self._broken:
            self._owe(steps=[step])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._client is None:
            return
        self._call(self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_model(
        self,
        model,
        input_example: np.ndarray,
        partitions,
        work_dir: Path,
        name: str = "encoder",
        registry_name: str | None = None,
        version_tags: dict[str, Any] | None = None,
    ) -> str | None:
        """The pyfunc of :mod:`gvae_dist.codes_model`: images ``[N, C, H, W]`` float32 in [0, 1]
        (the signature's shape, batch dim dynamic) -> a DataFrame with one column group per
        partition (``pose_0 ..``), the posterior means ``gvae-dist encode`` gives.

        ``model`` is a :func:`posterior_mean` module, ``partitions`` the run's
        :class:`~gvae_dist.gate.PartitionSpec`; the model is exported with ``torch.export`` into
        ``work_dir/<name>.pt2`` (with ``<name>_partitions.json``), and the model code is the file
        itself, so the logged model loads and serves without gvae_dist. Pinning the requirements
        skips MLflow's slow import-scanning subprocess.

        ``registry_name``: also register it in the Model Registry, the new version tagged with
        ``version_tags``; returns the version number (None when not registered or on failure)."""

        def _log():
            import json

            import mlflow
            import pandas as pd
            import torch
            from mlflow.models import infer_signature

            _set_fluent_uri(self.uri)
            x_NCHW = torch.from_numpy(np.ascontiguousarray(input_example, dtype=np.float32))
            program = torch.export.export(model, (x_NCHW,), dynamic_shapes=({0: torch.export.Dim("batch")},))
            work = Path(work_dir)
            work.mkdir(parents=True, exist_ok=True)
            torch.export.save(program, work / f"{name}.pt2")
            (work / f"{name}_partitions.json").write_text(json.dumps(partitions.table()))
            with torch.no_grad():
                codes = pd.DataFrame(model(x_NCHW).numpy(), columns=partitions.code_columns())
            reqs = [
                f"torch=={torch.__version__.split('+')[0]}",
                f"pandas=={pd.__version__}",
                f"numpy=={np.__version__}",
            ]
            with mlflow.start_run(run_id=self.run_id):
                logged = mlflow.pyfunc.log_model(
                    name=name,
                    python_model=str(Path(__file__).with_name("codes_model.py")),
                    artifacts={
                        "program": str(work / f"{name}.pt2"),
                        "partitions": str(work / f"{name}_partitions.json"),
                    },
                    signature=infer_signature(x_NCHW.numpy(), codes),
                    input_example=x_NCHW.numpy(),
                    pip_requirements=reqs,
                )
            if registry_name is None:
                return None
            tags = {k: str(v) for k, v in (version_tags or {}).items()}
            return mlflow.register_model(logged.model_uri, registry_name, tags=tags).version

        return self._call(_log)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items() if self._client is not None else ():
            self._call(self._client.set_tag, self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        if self._client is not None:
            self._call(self._client.set_terminated, self.run_id, status)
        if self._broken:
            self._owe(status=status)

    def _owe(self, steps: list[int] = (), status: str | None = None) -> None:
        """Record in the run directory what the run did not receive (:mod:`gvae_dist.tracking_pending`);
        one warning line the first time."""
        if self._run_dir is None or self.run_id is None:
            return
        from gvae_dist.tracking_pending import owe

        try:
            path = owe(self._run_dir, self.run_id, self.uri, steps, status)
        except OSError as exc:  # a full disk must not stop training either
            log.warning("[gvae-dist] warning: could not record what MLflow run %s is owed: %s", self.run_id, exc)
            return
        if not self._owing:
            self._owing = True
            log.warning(
                "[gvae-dist] warning: MLflow run %s is out of reach; what it misses from here on "
                "(metrics of later steps, its end status) is recorded in %s and sent by the next "
                "`gvae-dist train` of this run directory, or now by `gvae-dist tracking sync %s`",
                self.run_id,
                path,
                self._run_dir,
            )


def make_tracker(cfg, is_main: bool, run_id: str | None = None, dedupe: bool = False):
    """MLflow tracker on the main process when tracking is enabled, else a NullTracker (also when the
    store cannot be reached for a new run; continuing ``run_id``, the broken tracker is kept: it
    records what the run is owed). ``dedupe``: continuing ``run_id``, skip the steps it already
    holds (see module doc)."""
    if not (is_main and cfg.tracking.enabled) or mlflow_missing():
        return NullTracker()
    uri = tracking_uri(cfg)
    tracker = MLflowTracker(
        uri,
        cfg.tracking.experiment,
        cfg.run.name,
        run_id,
        tags={RUN_KEY_TAG: str(cfg.run_dir().resolve())},
        dedupe=dedupe,
        run_dir=cfg.run_dir(),
    )
    # a continued run whose store is out of reach keeps its (broken) tracker: it records what is owed
    return tracker if tracker.active or tracker.run_id is not None else NullTracker()


def posterior_mean(model):
    """A CPU fp32 copy of a VAE as the module MLflow logs: images ``[N, C, H, W]`` in [0, 1] ->
    posterior means ``[N, D]`` (the codes the evaluation scores). One tensor in, one out, so
    ``torch.export`` and the pyfunc signature work without gvae_dist installed."""
    import copy

    import torch

    class PosteriorMean(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def forward(self, x_NCHW):
            return self.vae.encode(x_NCHW)[0]

    return PosteriorMean(copy.deepcopy(model).cpu().float().eval()).eval()
