"""Sweeps: search-space validation, and a real 4-trial ASHA sweep on a local Ray cluster with a
SQLite MLflow store, interrupted after its first finished trial and resumed.

The sweep is a grid over objective.beta; all trials share seed and data, so their losses at equal
steps differ by the beta-weighted KL: ASHA (grace period 1, a report every 2 of 20 steps)
stops the high-beta trials that reach a rung after a lower-beta one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray.tune import Callback

from gvae_dist.config import ConfigError
from gvae_dist.tune import load_space, run_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.image_size=32", "model.channels=[8,8,16]", "model.hidden=32", "data.num_train=256",
        "data.num_eval=100", "eval.num_train=50", "eval.num_test=50", "optim.batch_size=32",
        "optim.steps=20", "run.threads=1", "run.log_every=2", "run.checkpoint_every=2",
        # an interrupted trial resumes from the newest checkpoint on disk that loads (Ray's own
        # may lag it); pruning never removes a newer one (test_checkpoint)
        "run.keep_checkpoints=2", "data.backend=memory", "optim.lr=0.002",
        "distributed.workers=1", "eval.points=0"]


def _space(tmp_path: Path, name: str = "s.yaml", **over) -> Path:
    doc = {"set": [*TINY, f"run.output_dir={tmp_path / 'runs'}", "run.name=sweep"],
           "metric": "loss", "mode": "min",
           "params": {"objective.beta": {"grid": [0.25, 1.0, 16.0, 64.0]}},
           "num_samples": 1, "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2,
                                           "max_t": 10},
           "search": "random", "max_concurrent": 2, **over}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------------------------------------
# Validation (no Ray)


@pytest.mark.parametrize("name", ["beta", "infovae", "dip2"])
def test_shipped_spaces_load(name):
    space = load_space(REPO / "tune_spaces" / f"{name}.yaml")
    assert space.params and space.base.is_file()


@pytest.mark.parametrize("over, match", [
    ({"params": {"objective.btea": {"uniform": [1, 2]}}}, r"s\.yaml: params: .*objective.btea: unknown key .*'beta'"),
    ({"params": {"objective.beta": {"normal": [1, 2]}}}, r"s\.yaml: params.objective.beta: unknown distribution 'normal'"),
    ({"params": {"objective.beta": {"loguniform": [0, 2]}}}, r"params.objective.beta: loguniform needs 0 < low < high"),
    ({"params": {"objective.beta": {"uniform": [3, 2]}}}, r"uniform needs low < high"),
    ({"params": {"objective.beta": {"choice": []}}}, r"choice needs a non-empty list"),
    ({"params": {"objective.beta": {"uniform": [-1, 2]}}}, r"reachable and invalid.*objective.beta must be >= 0"),
    ({"set": [*TINY, "objective.name=infovae"],
      "params": {"objective.alpha": {"uniform": [-1, 0.5]}, "objective.mmd_lambda": {"loguniform": [0.5, 100]}}},
     r"reachable and invalid.*alpha \+ objective.mmd_lambda - 1"),
    ({"scheduler": {"name": "pbt"}}, r"scheduler.name: 'asha' or 'none'"),
    ({"search": "optuna"}, r"optuna cannot sample 'grid'"),
    ({"num_samples": 0}, r"num_samples: a positive integer"),
    ({"sampels": 3}, r"sampels: unknown key"),
    ({"metric": "eval/dci_mean"}, r"metric: eval/dci_mean is reported only when an evaluation coincides"),
    ({"metric": "elbo"}, r"metric: 'elbo' is not reported"),
    ({"set": ["optim.stepz=3"]}, r"base config: optim.stepz: unknown key"),
])
def test_bad_spaces_name_the_file_and_key(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        load_space(_space(tmp_path, **over))


def test_tune_overrides_reach_the_space(tmp_path):
    space = load_space(_space(tmp_path), ["tune.num_samples=3", "tune.scheduler.grace_period=4", "optim.steps=7"])
    assert space.num_samples == 3 and space.scheduler["grace_period"] == 4
    assert space.overrides[-1] == "optim.steps=7"


# ---------------------------------------------------------------------------------------------
# A real sweep


@pytest.fixture(scope="module")
def ray_4cpu(ray_env):
    """One local node with 4 logical CPUs (2 trials x (driver + 1 worker)) on this process."""
    import ray
    from ray.cluster_utils import Cluster

    from gvae_dist.launch import free_port

    assert not ray.is_initialized()
    port = free_port()
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_API_SERVER_ADDRESS", f"http://127.0.0.1:{port}")  # see gvae_dist.launch
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 4, "temp_dir": str(ray_env.tmp), "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port})
    try:
        cluster.connect()
        yield SimpleNamespace(cluster=cluster)
    finally:
        ray.shutdown()
        cluster.shutdown()
        mp.undo()


class InterruptOnce(Callback):
    """Tune callback: SIGUSR1 to this driver (Tune's own 'stop and save' signal) when the first
    trial completes, once per marker file (the restored Tuner unpickles this callback too)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def on_trial_complete(self, iteration, trials, trial, **info):
        if not self.marker.exists():
            self.marker.write_text(trial.trial_id)
            os.kill(os.getpid(), signal.SIGUSR1)


def _wait_for_train_actors_to_exit(timeout: float = 60.0) -> None:
    """An interrupted trial's Train workers die asynchronously after Tune stops the trial; a
    restore in the same cluster while they still run would have two worker groups pruning the
    same checkpoint directory. (A restarted driver on a fresh cluster has no such leftovers.)"""
    from ray.util.state import list_actors

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")])
                 if a.class_name in ("RayTrainWorker", "TrainController", "ImplicitFunc")]
        if not alive:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Train actors still alive after {timeout}s: {alive}")


def _children(uri: str, parent: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return client, client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_asha_mlflow_and_resume(tmp_path, ray_4cpu):
    space = load_space(_space(tmp_path))
    first = run_sweep(space, callbacks=[InterruptOnce(tmp_path / "interrupted")])
    assert first["interrupted"], first["rows"]
    finished = (tmp_path / "interrupted").read_text()  # the trial whose completion interrupted
    runs = tmp_path / "runs"
    before = (runs / f"sweep_{finished}" / "metrics.jsonl").read_text()

    _wait_for_train_actors_to_exit()
    second = run_sweep(space)
    assert not second["interrupted"]
    rows = second["rows"]
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows), rows
    # the finished trial was not re-run: Tune kept its result, and its training log only grew by
    # lines its workers may have written while being stopped (never a step logged twice)
    assert {r["trial"]: (r["iters"], r["loss"]) for r in rows}[finished] == \
        {r["trial"]: (r["iters"], r["loss"]) for r in first["rows"]}[finished]
    after = (runs / f"sweep_{finished}" / "metrics.jsonl").read_text()
    steps = [json.loads(line)["step"] for line in after.splitlines()]
    assert after.startswith(before) and steps == sorted(set(steps)), steps
    # ASHA stopped at least one trial before step 20, and at least one trained to the end
    assert any(r["step"] < 20 for r in rows) and any(r["step"] == 20 for r in rows), rows
    # MLflow: one parent, 4 children with params and loss curves; best tagged
    uri = f"sqlite:///{runs / 'mlflow.db'}"
    parent = second["parent_run_id"]
    assert parent == first["parent_run_id"]
    client, children = _children(uri, parent)
    assert len(children) == 4
    for child in children:
        assert "tune.objective.beta" in child.data.params
        assert len(client.get_metric_history(child.info.run_id, "loss")) >= 1
    # the end-of-run evaluation reaches Tune with the last report of every finished trial
    assert all(0.0 <= r["eval/dci_mean"] <= 1.0 and r["eval/neg_elbo"] > 0 for r in rows if r["step"] == 20), rows
    best = second["best"]
    assert best["step"] == 20 and best["loss"] == min(r["loss"] for r in rows if r["step"] == 20)
    p = client.get_run(parent)
    assert p.data.tags["gvae_dist.best_trial"] == best["trial"]
    assert float(p.data.params["best.objective.beta"]) == best["objective.beta"]
    assert [c.data.tags.get("gvae_dist.best") for c in children].count("true") == 1
    print(f"\nsweep: {first['seconds']:.0f}s + {second['seconds']:.0f}s (resumed)\n{p.data.tags['gvae_dist.summary']}")
