"""Experiment tracking behind one interface: MLflow on rank 0, a null tracker everywhere else.

The train loop calls ``tracker.log_metrics(...)`` unconditionally (nanochat's DummyWandb pattern).
An unreachable or failing tracking backend never stops training: the first failure is warned
about once, and the tracker turns itself into a null tracker.

Default store: ``sqlite:///<run.output_dir>/mlflow.db`` (open it with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``); ``$MLFLOW_TRACKING_URI`` or
``tracking.uri`` point at a server instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["NullTracker", "MLflowTracker", "make_tracker", "default_tracking_uri"]


class NullTracker:
    """Accepts every call and does nothing."""

    run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_model(self, model, input_example) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def finish(self, status: str = "FINISHED") -> None: ...


def default_tracking_uri(output_dir: str | Path) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


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


class MLflowTracker:
    """MLflow run (created, or resumed by ``run_id``) with warn-once failure handling."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None = None,
                 tags: dict[str, str] | None = None):
        import mlflow

        self._mlflow = mlflow
        self._client = None
        self.run_id = None
        self._broken = False
        self._call(self._start, uri, experiment, run_name, run_id, tags or {})

    def _start(self, uri, experiment, run_name, run_id, tags):
        from mlflow.tracking import MlflowClient

        # short HTTP retries: an unreachable server should cost seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            exp = client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
            run_id = client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        else:
            client.update_run(run_id, status="RUNNING")
        self._client, self.run_id, self.uri = client, run_id, uri

    def _call(self, fn, *args) -> Any:
        if self._broken:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # tracking must never kill training
            self._broken = True
            warnings.warn(f"MLflow tracking disabled after an error ({type(exc).__name__}: {exc}); "
                          "training continues without tracking", RuntimeWarning, stacklevel=3)
            return None

    @property
    def active(self) -> bool:
        return not self._broken and self._client is not None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self._call(self._client.log_batch, self.run_id, [], items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k.replace("/", "."), float(v), ts, step) for k, v in metrics.items()]
        for i in range(0, len(items), 500):
            self._call(self._client.log_batch, self.run_id, items[i : i + 500])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(self._client.log_artifact, self.run_id, str(path), artifact_path)

    def log_model(self, model, input_example) -> None:
        def _log():
            mlflow = self._mlflow
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.run_id):
                mlflow.pytorch.log_model(model, name="model", input_example=input_example,
                                         serialization_format="pickle")
        self._call(_log)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call(self._client.set_tag, self.run_id, k, str(v))

    def finish(self, status: str = "FINISHED") -> None:
        if self._client is not None:
            self._call(self._client.set_terminated, self.run_id, status)


def make_tracker(cfg, is_main: bool, run_id: str | None = None):
    """MLflow tracker on the main process when tracking is enabled, else a NullTracker."""
    if not (is_main and cfg.tracking.enabled):
        return NullTracker()
    uri = cfg.tracking.uri or default_tracking_uri(cfg.run.output_dir)
    tracker = MLflowTracker(uri, cfg.tracking.experiment, cfg.run.name, run_id)
    return tracker if tracker.active else NullTracker()
