"""Ray Train launcher: resource checks, 2-worker DDP runs, fault recovery, resume, tracking.

The integration tests share one module-scoped two-node cluster (``ray.cluster_utils.Cluster``,
1 CPU per node, so the two workers land on different nodes). Runs use a tiny 32x32 model; the
uninterrupted run is the reference the faulted and the resumed runs must reproduce.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from gvae_dist.config import ConfigError, load_config
from gvae_dist.launch import check_resources, launch, resolve_config, worker_env
from gvae_dist.rundir import RunLock
from gvae_dist.train import Interrupted, Preempted
from tests.conftest import wait_for_train_actors_to_exit

# the cluster's two "nodes" share this machine's disk, so the SQLite store is reachable from both
pytestmark = pytest.mark.filterwarnings("ignore:tracking.uri=sqlite:RuntimeWarning")

TINY = [
    "data.num_train=512",
    "data.num_eval=400",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.at_end=false",
    "run.threads=1",
]
RAY_RUN = [
    *TINY,
    "distributed.workers=2",
    "distributed.cpus_per_worker=1",
    "optim.steps=150",
    "run.log_every=5",
    "run.checkpoint_every=50",
    "run.keep_checkpoints=2",
    "tracking.image_every=50",
    "optim.lr=0.002",
    # per worker: 16 images as 2 micro-batches of 8, bf16 autocast, channels_last
    "optim.grad_accum=2",
    "optim.mixed_precision=bf16",
    "optim.channels_last=true",
]


def _losses(run_dir: Path) -> dict[int, float]:
    """Loss per logged step; a restarted run rewinds metrics.jsonl to its checkpoint, so each
    step is there once."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"
    return {int(r["step"]): r["loss"] for r in rows}


def _runs_with_key(cfg, key: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(cfg.tracking.uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`gvae_dist.run_key` = '{key}'")


# ---------------------------------------------------------------------------------------------
# Without Ray


def test_check_resources_names_the_keys_and_the_cluster():
    cfg = load_config(None, [*TINY, "distributed.workers=3", "distributed.cpus_per_worker=2", "optim.batch_size=30"])
    with pytest.raises(
        ConfigError,
        match=r"distributed.workers=3 x distributed.cpus_per_worker=2.*"
        r"4 CPUs .* 2 node\(s\), room for 2",
    ):
        check_resources(cfg, [{"CPU": 2.0}, {"CPU": 2.0}])
    check_resources(cfg, [{"CPU": 2.0}, {"CPU": 4.0}])  # 1 + 2 workers fit
    gpu = load_config(None, [*TINY, "distributed.workers=2", "distributed.use_gpu=true"])
    with pytest.raises(ConfigError, match="GPU"):
        check_resources(gpu, [{"CPU": 8.0, "GPU": 1.0}])


def test_worker_env_follows_the_config():
    env = worker_env(load_config(None, [*TINY, "distributed.workers=2"]))
    assert env["MALLOC_ARENA_MAX"] == "1" and env["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    assert "MALLOC_ARENA_MAX" not in worker_env(load_config(None, [*TINY, "run.retain_freed_memory=false"]))
    assert "MALLOC_ARENA_MAX" not in worker_env(load_config(None, [*TINY, "distributed.use_gpu=true"]))


def test_launch_rejects_bad_settings_before_starting_ray(tmp_path):
    with pytest.raises(ConfigError, match="fp16"):
        launch(
            load_config(
                None, [*TINY, "distributed.workers=2", "optim.mixed_precision=fp16", f"run.output_dir={tmp_path}"]
            )
        )
    with pytest.raises(ConfigError, match="distributed.cpus_per_worker=64"):
        launch(
            load_config(
                None, [*TINY, "distributed.workers=2", "distributed.cpus_per_worker=64", f"run.output_dir={tmp_path}"]
            )
        )
    (tmp_path / "ray" / "gvae").mkdir(parents=True)
    with pytest.raises(ConfigError, match="run.resume"):
        launch(load_config(None, [*TINY, "distributed.workers=1", "run.resume=false", f"run.output_dir={tmp_path}"]))


def test_resolve_config_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = resolve_config(load_config(None, [*TINY, "run.output_dir=out", "distributed.workers=2"]))
    assert cfg.run.output_dir == str(tmp_path / "out")
    assert cfg.distributed.storage_path == str(tmp_path / "out" / "ray")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"


# ---------------------------------------------------------------------------------------------
# On a two-node Ray cluster


@pytest.fixture(scope="module")
def reference(ray_cluster, tmp_path_factory):
    """The uninterrupted 2-worker run every other run is compared with."""
    out = tmp_path_factory.mktemp("launch")
    cfg = load_config(None, [*RAY_RUN, f"run.output_dir={out}", "run.name=reference"])
    return out, resolve_config(cfg), launch(cfg)


@pytest.mark.integration
@pytest.mark.slow
def test_two_workers_stay_in_sync_and_report_checkpoints_and_tracking(reference):
    out, cfg, result = reference
    assert result.step == 150
    # Ray's copy of the newest checkpoint, retention applied to Ray's storage
    assert result.checkpoint == out / "ray" / "reference" / "step_00000150"
    assert (result.checkpoint / "state.pt").is_file()
    assert sorted(p.name for p in (out / "ray" / "reference").glob("step_*")) == ["step_00000100", "step_00000150"]
    # DDP: ranks see disjoint shards and their own noise, so only synchronised gradients keep
    # their weights bitwise equal; every checkpoint records both ranks' digests
    metas = [json.loads(p.read_text()) for p in (result.run_dir / "checkpoints").glob("*/meta.json")]
    assert metas and all(len(m["param_digests"]) == 2 and len(set(m["param_digests"])) == 1 for m in metas)
    state = torch.load(result.checkpoint / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["pairing"], state["rng"][1]["pairing"])  # per-rank randomness

    client, runs = _runs_with_key(cfg, f"{out / 'ray'}/reference")
    assert [r.info.run_id for r in runs] == [result.tracking_run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.batch_size"] == "32" and run.data.params["distributed.workers"] == "2"
    for key in (
        "loss",
        "recon/identity",
        "kl/pose",
        "kl_dim/09",
        "perf/images_per_s",
        "perf/data_wait_fraction",
        "gate/open_fraction",
        "pairing/found",
    ):
        assert f"train/{key}" in run.data.metrics, key  # MLflow's train/* sections
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == list(range(5, 151, 5))
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    images = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
    assert {"config.yaml", "images", "metrics.json"} <= arts
    assert {"images/reconstruction_step_00000050.png", "images/traversal_step_00000150.png"} <= images
    models = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in models] == [run.info.run_id]


def _train_worker_pids(node) -> list[int]:
    """PIDs of Ray Train workers started by ``node``'s raylet (this suite's cluster only)."""
    import psutil
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    return [p.pid for p in raylet.children(recursive=True) if any("RayTrainWorker" in part for part in p.cmdline())]


def _logged_steps(run_dir: Path) -> list[int]:
    """Steps in metrics.jsonl so far, read while a run may be appending to it."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(int(json.loads(line)["step"]))
        except (ValueError, KeyError):  # a line being written
            pass
    return steps


def _wait_until(done, thread: threading.Thread, what: str) -> None:
    deadline = time.monotonic() + 240
    while not done():
        assert thread.is_alive() and time.monotonic() < deadline, f"run ended before {what}"
        time.sleep(0.02)


def _kill_train_worker(node) -> None:
    import psutil

    victims = _train_worker_pids(node)
    assert len(victims) == 1
    # launch.worker_env reached the worker: one malloc arena for the training thread (CPU,
    # run.retain_freed_memory), so its freed activations stay mapped (no page faults per step)
    victim = psutil.Process(victims[0])
    assert victim.environ().get("MALLOC_ARENA_MAX") == "1"
    os.kill(victims[0], signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.slow
def test_killed_workers_recover_and_relaunch_resumes_and_preempts_in_one_mlflow_run(ray_cluster, reference, tmp_path):
    """Kill the worker on the second node twice: before the first checkpoint (the run restarts
    from scratch) and after Ray registered the step-50 checkpoint (the run restores it). Both
    restarts log into the one MLflow run the driver opened; the losses equal the uninterrupted
    run's. A second launch with more steps resumes the finished run, and a stop file preempts it
    with a kept checkpoint. (A checkpoint counts once Ray's controller has taken the report, which it polls every
    2 s: a worker killed right after reporting may still restart from the previous one.)"""
    _, _, ref = reference
    cfg = load_config(None, [*RAY_RUN, f"run.output_dir={tmp_path}", "run.name=faulty"])
    run_dir, snapshot = tmp_path / "faulty", tmp_path / "ray" / "faulty" / "checkpoint_manager_snapshot.json"
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=launch(cfg)), daemon=True)
    thread.start()
    _wait_until(lambda: (run_dir / "metrics.jsonl").exists() and 5 in _losses(run_dir), thread, "step 5")
    assert not snapshot.exists() or "step_" not in snapshot.read_text()  # metrics, no checkpoint yet
    _kill_train_worker(ray_cluster.worker)
    _wait_until(lambda: snapshot.exists() and "step_00000050" in snapshot.read_text(), thread, "the step-50 checkpoint")
    _kill_train_worker(ray_cluster.worker)
    thread.join(timeout=300)
    result = box["result"]
    assert result.step == 150

    _, runs = _runs_with_key(resolve_config(cfg), f"{tmp_path / 'ray'}/faulty")
    assert len(runs) == 1 and runs[0].info.run_id == result.tracking_run_id  # no duplicate run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(resolve_config(cfg).tracking.uri)
    resumed = client.get_metric_history(result.tracking_run_id, "run/resumed_from_step")
    # restart 1 had nothing to restore, restart 2 did: the step-50 checkpoint, or on a loaded
    # machine the step-100 one, when the worker got there before the kill landed
    restored = [m.value for m in resumed]
    assert restored in ([50], [100])
    history = client.get_metric_history(result.tracking_run_id, "train/loss")
    # nothing lost, nothing twice: steps re-trained after a restart are not sent again
    assert sorted(m.step for m in history) == list(range(5, 151, 5))
    got, want = _losses(run_dir), _losses(ref.run_dir)
    assert sorted(got) == sorted(want)
    # CPU kernels are deterministic here; the tolerance only allows float reordering noise
    torch.testing.assert_close([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5, atol=1e-3)

    # launching the same run again with more steps resumes it in the same MLflow run; a stop
    # file (preemption) makes it checkpoint at the next log step and raise Preempted on the driver
    stop = tmp_path / "stop"
    stop.touch()
    with pytest.raises(Preempted) as preempted:
        launch(
            load_config(
                None,
                [*RAY_RUN, f"run.output_dir={tmp_path}", "run.name=faulty", "optim.steps=200", f"run.stop_file={stop}"],
            )
        )
    assert preempted.value.step == 155
    assert preempted.value.checkpoint == tmp_path / "ray" / "faulty" / "step_00000155"
    assert torch.load(preempted.value.checkpoint / "state.pt", weights_only=True)["step"] == 155
    resumed = client.get_metric_history(result.tracking_run_id, "run/resumed_from_step")
    assert [m.value for m in resumed] == [*restored, 150]
    assert len(_runs_with_key(resolve_config(cfg), f"{tmp_path / 'ray'}/faulty")[1]) == 1

    # Ctrl-C on the driver (SIGINT to the main thread, as in `gvae-dist train --workers 2`) once the
    # step-200 checkpoint is on disk: the Train workers stop, the MLflow run is KILLED (resumable,
    # not FAILED), Interrupted names the newest checkpoint and the last logged step, the run
    # directory is unlocked, and this process's SIGINT handler is its own again
    def interrupt_after_step_200() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(s > 200 for s in _logged_steps(run_dir)):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    threading.Thread(target=interrupt_after_step_200, daemon=True).start()
    with pytest.raises(Interrupted) as interrupted:
        launch(load_config(None, [*RAY_RUN, f"run.output_dir={tmp_path}", "run.name=faulty", "optim.steps=400"]))
    wait_for_train_actors_to_exit()
    stopped = interrupted.value
    assert 200 < stopped.step < 400 and stopped.step <= max(_logged_steps(run_dir))  # logged when it stopped
    assert stopped.checkpoint is not None and stopped.checkpoint.name >= "step_00000200", stopped.checkpoint
    assert torch.load(stopped.checkpoint / "state.pt", weights_only=True)["step"] >= 200
    assert "run the same command to resume" in str(stopped)
    assert client.get_run(result.tracking_run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGINT) is handler
    with RunLock(run_dir):  # released
        pass
