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
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ray.tune import Callback

from gvae_dist.config import ConfigError
from gvae_dist.tune import load_space, run_sweep
from tests.conftest import wait_for_train_actors_to_exit

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.image_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "data.num_train=256",
    "data.num_eval=100",
    "eval.num_train=50",
    "eval.num_test=50",
    "optim.batch_size=32",
    "optim.steps=20",
    "run.threads=1",
    "run.log_every=2",
    "run.checkpoint_every=2",
    # an interrupted trial resumes from the newest checkpoint on disk that loads (Ray's own
    # may lag it); pruning never removes a newer one (test_checkpoint)
    "run.keep_checkpoints=2",
    "data.backend=memory",
    "optim.lr=0.002",
    "distributed.workers=1",
    "eval.points=0",
]


def _space(tmp_path: Path, name: str = "s.yaml", **over) -> Path:
    doc = {
        "set": [*TINY, f"run.output_dir={tmp_path / 'runs'}", "run.name=sweep"],
        "metric": "loss",
        "mode": "min",
        "params": {"objective.beta": {"grid": [0.25, 1.0, 16.0, 64.0]}},
        "num_samples": 1,
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 10},
        "search": "random",
        "max_concurrent": 2,
        **over,
    }
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


# ---------------------------------------------------------------------------------------------
# Validation (no Ray)


@pytest.mark.parametrize("name", ["beta", "infovae", "dip2"])
def test_shipped_spaces_load(name):
    space = load_space(REPO / "tune_spaces" / f"{name}.yaml")
    assert space.params and space.base.is_file()


@pytest.mark.parametrize(
    "over, match",
    [
        (
            {"params": {"objective.btea": {"uniform": [1, 2]}}},
            r"s\.yaml: params: .*objective.btea: unknown key .*'beta'",
        ),
        (
            {"params": {"objective.beta": {"normal": [1, 2]}}},
            r"s\.yaml: params.objective.beta: unknown distribution 'normal'",
        ),
        (
            {"params": {"objective.beta": {"loguniform": [0, 2]}}},
            r"params.objective.beta: loguniform needs 0 < low < high",
        ),
        ({"params": {"objective.beta": {"uniform": [3, 2]}}}, r"uniform needs low < high"),
        ({"params": {"objective.beta": {"choice": []}}}, r"choice needs a non-empty list"),
        ({"params": {"objective.beta": {"uniform": [-1, 2]}}}, r"reachable and invalid.*objective.beta must be >= 0"),
        (
            {
                "set": [*TINY, "objective.name=infovae"],
                "params": {
                    "objective.alpha": {"uniform": [-1, 0.5]},
                    "objective.mmd_lambda": {"loguniform": [0.5, 100]},
                },
            },
            r"reachable and invalid.*alpha \+ objective.mmd_lambda - 1",
        ),
        ({"scheduler": {"name": "pbt"}}, r"scheduler.name: 'pbt' is not allowed; choose one of 'asha', 'none'"),
        ({"search": "optuna"}, r"optuna cannot sample 'grid'"),
        ({"num_samples": 0}, r"num_samples: a positive integer"),
        ({"sampels": 3}, r"sampels: unknown key \(did you mean 'num_samples'\?\)"),
        ({"num_samples": "3"}, r"s\.yaml: num_samples: expected an integer, got '3'"),
        ({"mode": "maximize"}, r"mode: 'maximize' is not allowed; choose one of 'min', 'max'"),
        ({"set": "optim.steps=3"}, r"set: expected a list"),
        (
            {"scheduler": {"name": "asha", "grace": 2}},
            r"scheduler.grace: unknown key; allowed keys: name, grace_period",
        ),
        (
            {"metric": "eval/dci_mean", "mode": "max"},
            r"metric: eval/dci_mean is reported only when an evaluation coincides",
        ),
        (
            {"metric": "elbo"},
            r"metric: 'elbo' is not a metric a trial reports; valid metrics: loss, recon, kl, "
            r"eval/disentanglement, .*eval/informativeness/yaw, .*eval/purity/pose, .*eval/neg_elbo",
        ),
        (
            {"metric": "eval/dci_meen", "set": [*TINY, "eval.every=2"]},
            r"metric: 'eval/dci_meen' is not a metric a trial reports \(did you mean 'eval/dci_mean'\?\); valid",
        ),
        (
            {"metric": "eval/dci_mean", "mode": "min", "set": [*TINY, "eval.every=2"]},
            r"mode: eval/dci_mean is better when higher: set mode: max \(now min\)",
        ),
        ({"metric": "loss", "mode": "max"}, r"mode: loss is better when lower: set mode: min"),
        ({"scheduler": {"name": "asha", "grace_period": 0}}, r"scheduler.grace_period: an integer >= 1, got 0"),
        ({"scheduler": {"name": "asha", "reduction_factor": 1}}, r"scheduler.reduction_factor: a number > 1"),
        (
            {"scheduler": {"name": "asha", "grace_period": 11}},
            r"scheduler.grace_period: 11 reports, but a trial reports only 10 times \(optim.steps 20",
        ),
        ({"set": ["optim.stepz=3"]}, r"base config: optim.stepz: unknown key"),
    ],
)
def test_bad_spaces_name_the_file_and_key(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        load_space(_space(tmp_path, **over))


@pytest.mark.parametrize("probe", [True, False])
def test_valid_metric_names_are_what_an_evaluation_logs(tmp_path, probe):
    """The names load_space accepts are exactly the numeric keys a real evaluation returns
    (train_loop logs them as eval/<key>), so the list cannot drift from what runs log; with and
    without the flexible probe's metrics."""
    import torch

    from gvae_dist.config import load_config
    from gvae_dist.eval_runner import evaluate_model
    from gvae_dist.model import build_model
    from gvae_dist.tune import TRAIN_METRICS, reported_metrics

    cfg = load_config(
        None, [*TINY, "eval.num_train=20", "eval.num_test=20", "data.num_eval=40", f"eval.flexible_probe={probe}"]
    )
    torch.manual_seed(0)
    result = evaluate_model(cfg, build_model(cfg, 3), "cpu", None, during=True)
    logged = {f"eval/{k}" for k, v in result.items() if isinstance(v, int | float)}
    assert set(reported_metrics(cfg)) == logged | set(TRAIN_METRICS)
    assert "eval/informativeness/yaw" in logged and "eval/purity/pose" in logged
    assert ("eval/probe_informativeness/yaw" in logged) == probe


def test_sweep_whose_trials_all_errored_ends_its_parent_failed(tmp_path):
    """Tune returns normally when every trial errors; the parent must not end FINISHED then."""
    from mlflow.tracking import MlflowClient

    from gvae_dist.config import load_config
    from gvae_dist.tune import _finish_parent

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.create_run(client.create_experiment("e")).info.run_id
    space = load_space(_space(tmp_path))
    rows = [
        {
            "trial": t,
            "status": "ERROR",
            "objective.beta": 1.0,
            "iters": 0,
            "step": None,
            "loss": None,
            "checkpoint": None,
        }
        for t in ("a", "b")
    ]
    _finish_parent(client, parent, space, "sweep", load_config(None, TINY), rows, None, 1.0)
    run = client.get_run(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags["gvae_dist.error"] == "no trial reported a finite loss; statuses: ['ERROR']"


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
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 4,
            "temp_dir": str(ray_env.tmp),
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
        },
    )
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


class Overlap(Callback):
    """Tune callback: the most trials running at once (what the sweep's printed line promises)."""

    def __init__(self):
        self.running, self.most = set(), 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self.most = max(self.most, len(self.running))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)

    on_trial_error = on_trial_complete


def _children(uri: str, parent: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return client, client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")


@pytest.mark.slow
@pytest.mark.integration
def test_sweep_asha_mlflow_and_resume(tmp_path, ray_4cpu, capsys):
    from gvae_dist.cli import main

    space = load_space(_space(tmp_path))
    overlap = Overlap()
    first = run_sweep(space, callbacks=[InterruptOnce(tmp_path / "interrupted"), overlap])
    assert first["interrupted"], first["rows"]
    # the printed resources are what ran: 2 trials at a time, each 1 driver CPU + 1 worker CPU
    printed = capsys.readouterr().out
    assert (
        "4 trial(s), 2 at a time on 4 CPUs; each trial reserves 2 CPUs: 1 for its driver (idle while its "
        "run trains) + 1 worker(s) x 1 CPU"
    ) in printed, printed
    assert overlap.most == 2
    finished = (tmp_path / "interrupted").read_text()  # the trial whose completion interrupted
    runs = tmp_path / "runs"
    before = (runs / f"sweep_{finished}" / "metrics.jsonl").read_text()

    wait_for_train_actors_to_exit()
    second = run_sweep(space)
    assert not second["interrupted"]
    rows = second["rows"]
    assert len(rows) == 4 and all(r["status"] == "TERMINATED" for r in rows), rows
    # the finished trial was not re-run: Tune kept its result, and its training log only grew by
    # lines its workers may have written while being stopped (never a step logged twice)
    assert {r["trial"]: (r["iters"], r["loss"]) for r in rows}[finished] == {
        r["trial"]: (r["iters"], r["loss"]) for r in first["rows"]
    }[finished]
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
        assert len(client.get_metric_history(child.info.run_id, "train/loss")) >= 1
    # the end-of-run evaluation reaches Tune with the last report of every finished trial
    assert all(0.0 <= r["eval/dci_mean"] <= 1.0 and r["eval/neg_elbo"] > 0 for r in rows if r["step"] == 20), rows
    best = second["best"]
    assert best["step"] == 20 and best["loss"] == min(r["loss"] for r in rows if r["step"] == 20)
    p = client.get_run(parent)
    assert p.data.tags["gvae_dist.best_trial"] == best["trial"]
    assert float(p.data.params["best.objective.beta"]) == best["objective.beta"]
    assert [c.data.tags.get("gvae_dist.best") for c in children].count("true") == 1
    assert p.info.status == "FINISHED"
    # the best checkpoint is the newest one of the best trial's run directory, and eval opens it
    best_ckpt = Path(p.data.tags["gvae_dist.best_checkpoint"])
    assert best_ckpt == runs / f"sweep_{best['trial']}" / "checkpoints" / "step_00000020"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best_ckpt)]) == 0
    out = capsys.readouterr().out
    assert "DCI over targeted factors (yaw, pitch, roll, mouth, eyes, brow): disentanglement" in out, out
    assert f"wrote to {best_ckpt.parent.parent / 'eval'}: " in out and "metrics.json" in out
    print(f"\nsweep: {first['seconds']:.0f}s + {second['seconds']:.0f}s (resumed)\n{p.data.tags['gvae_dist.summary']}")


class FailOnStart(Callback):
    def on_trial_start(self, iteration, trials, trial, **info):
        raise RuntimeError("injected failure at trial start")


@pytest.mark.integration
def test_failing_sweep_marks_its_mlflow_parent_failed(tmp_path, ray_4cpu):
    """An exception that ends the sweep leaves the MLflow parent FAILED with the error, not RUNNING."""
    from mlflow.tracking import MlflowClient

    space = load_space(_space(tmp_path, params={"objective.beta": {"grid": [1.0]}}, scheduler="none"))
    with pytest.raises(Exception) as info:
        run_sweep(space, callbacks=[FailOnStart()])
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exps = [e.experiment_id for e in client.search_experiments()]
    parents = client.search_runs(exps, filter_string="tags.`mlflow.runName` = 'sweep'")
    assert len(parents) == 1, parents
    assert parents[0].info.status == "FAILED"
    assert parents[0].data.tags["gvae_dist.error"].startswith(type(info.value).__name__)
    wait_for_train_actors_to_exit()


@pytest.mark.parametrize(
    ("metric", "probe", "accepted"),
    [
        ("eval/informativeness/mouth", True, True),
        ("eval/probe_informativeness/mouth", True, True),
        ("eval/probe_informativeness/mouth", False, False),  # the probe is off: never reported
        ("eval/purity/expression", True, True),
        ("eval/purity/expresion", True, False),  # partitions are known without the manifest
        ("eval/purity/rest", True, False),  # a partition that owns no factor reports no purity
        ("eval/informativeness/jaw", True, True),  # a factor only the manifest would name
        ("eval/informativeness/jaw/x", True, False),
        ("eval/purity_mean", True, True),
        ("eval/informativenes/mouth", True, False),
        ("eval/informativeness/", True, False),
        ("expression", True, False),
    ],
)
def test_per_factor_metrics_of_shards_not_readable_here(tmp_path, metric, probe, accepted):
    """Shards may exist only on the workers: their factors (and which partitions own one) are
    unknown at sweep validation, so any factor's per-factor names pass, and the per-partition
    names of partitions that own a factor, but only families a trial can report."""
    over = ["data.source=shards", f"data.path={tmp_path / 'on_the_workers'}", f"eval.flexible_probe={probe}"]
    path = _space(tmp_path, metric=metric, mode="max", set=[*TINY, *over, "eval.every=2"])
    if accepted:
        assert load_space(path).metric == metric
    else:
        with pytest.raises(ConfigError, match=r"metric: .* is not a metric a trial reports"):
            load_space(path)
