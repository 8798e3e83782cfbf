"""The SLURM launch scripts against a real SLURM: slurmctld + two slurmd "nodes" on this host.

``ops/slurm_up.sh`` starts the private cluster once for this module (munge auth, CR_Core_Memory,
1 CPU per node) and ``ops/slurm_down.sh`` tears it down. Each test submits a script from
``cluster/slurm/`` with a tiny config and checks what a user would: the job state, the
checkpoint on disk and the metrics in the job's MLflow store. Needs root and the Debian SLURM
packages (``ops/services.sh`` installs them); otherwise skipped with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
TINY = (
    "data.num_train=512 data.num_eval=400 data.image_size=32 optim.batch_size=32 "
    "model.channels=[8,8,16] model.hidden=32 run.log_every=5 eval.at_end=false"
)
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"  # slurmctld, slurmd, munged
    missing = [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM not installed ({', '.join(missing)} missing): run ops/services.sh as root")
    if os.geteuid() != 0:
        pytest.skip("a private SLURM cluster needs root (slurmd)")
    state = tmp_path_factory.mktemp("slurm") / "state"
    env = {**os.environ, "GVAE_SLURM_NODES": "2"}
    up = subprocess.run(
        ["bash", str(REPO / "ops/slurm_up.sh"), str(state)], env=env, capture_output=True, text=True, timeout=120
    )
    assert up.returncode == 0, f"slurm_up failed:\n{up.stdout}\n{up.stderr}"
    node_mb = int(re.search(r"RealMemory=(\d+)", (state / "slurm.conf").read_text()).group(1))
    try:
        yield {"conf": str(state / "slurm.conf"), "state": state, "mem_mb": min(3000, node_mb)}
    finally:
        subprocess.run(["bash", str(REPO / "ops/slurm_down.sh"), str(state), "--purge"], timeout=180)


def _env(slurm, out_dir: Path, overrides: str, **extra: str) -> dict[str, str]:
    """The submitting environment: nothing of another Ray or MLflow leaks into the job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_", "GVAE_", "SLURM_"))}
    env.update(SLURM_CONF=slurm["conf"], GVAE_VENV=str(VENV), GVAE_OUTPUT_DIR=str(out_dir), GVAE_SET=overrides, **extra)
    return env


def _submit(slurm, script: str, out_dir: Path, overrides: str, *sbatch_args: str, **extra) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        "sbatch",
        "--parsable",
        "--cpus-per-task=1",
        f"--mem={slurm['mem_mb']}",
        f"--output={out_dir}/job.log",
        *sbatch_args,
        str(REPO / "cluster/slurm" / script),
    ]
    res = subprocess.run(
        cmd, cwd=REPO, env=_env(slurm, out_dir, overrides, **extra), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0]


def _job(slurm, job_id: str) -> dict[str, str]:
    res = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        capture_output=True,
        text=True,
        env={**os.environ, "SLURM_CONF": slurm["conf"]},
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    return dict(re.findall(r"(\w+)=(\S*)", res.stdout))


def _wait(slurm, job_id: str, timeout: float, log: Path) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = _job(slurm, job_id)
        if info["JobState"] in TERMINAL:
            return info
        time.sleep(2)
    subprocess.run(["scancel", job_id], env={**os.environ, "SLURM_CONF": slurm["conf"]})
    pytest.fail(f"job {job_id} not finished after {timeout}s:\n{_tail(log)}")


def _tail(log: Path, n: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-n:]) if log.is_file() else "(no log)"


def _mlflow_metrics(out_dir: Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in run.data.metrics}


def _runs_named(out_dir: Path, name: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("gvae-dist")
    return client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{name}'")


def _checkpoint(path: Path) -> dict:
    from gvae_dist.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _listening(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


def _preempt_and_resume(slurm, out: Path, script: str, name_prefix: str, steps: int) -> str:
    """Submit, send the warning signal once training is under way, wait for the requeued job."""
    job = _submit(slurm, script, out, f"{TINY} optim.steps={steps} run.checkpoint_every=1000")
    log_file = out / "job.log"
    metrics_file = out / f"{name_prefix}-{job}" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics_file.is_file() and len(metrics_file.read_text().splitlines()) >= 2):
        assert time.monotonic() < deadline, f"training did not start:\n{_tail(log_file)}"
        assert _job(slurm, job)["JobState"] in ("PENDING", "RUNNING"), _tail(log_file)
        time.sleep(1)
    # What SLURM does at --signal=B:USR1@N before the time limit, sent now.
    subprocess.run(
        ["scancel", "--batch", "--signal=USR1", job], check=True, env={**os.environ, "SLURM_CONF": slurm["conf"]}
    )
    info = _wait(slurm, job, 420, log_file)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", _tail(log_file)
    assert info["Restarts"] == "1", _tail(log_file)
    return job


def test_torchrun_job_trains_on_two_nodes_checkpoints_on_signal_requeues_and_resumes(slurm, tmp_path):
    """One torchrun job across both nodes, preempted once: the first start trains on 2 processes
    until the signal, the requeued start resumes and trains to the end (the plain two-node run
    needs no job of its own: the requeued start is one)."""
    # long enough that the signal, sent at the second log step, lands before training ends: with
    # 120 steps one clean-clone run finished all of them first and the signal killed its teardown
    out, steps = tmp_path / "preempt", 360
    t0 = time.monotonic()
    job = _preempt_and_resume(slurm, out, "torchrun.sbatch", "gvae-torchrun", steps)
    log = (out / "job.log").read_text()
    assert "2 node(s) x 1 process(es)" in log and "2 process(es) on cpu" in log
    stopped = re.search(r"stopped at step (\d+) on SIGUSR1; checkpoint (\S+);", log)
    assert stopped, _tail(out / "job.log")
    at = int(stopped.group(1))
    assert 0 < at < steps
    assert "requeueing job" in log and "(restart 1)" in log
    assert f"resumed from {stopped.group(2)} at step {at}" in log
    run_dir = out / f"gvae-torchrun-{job}"
    first = _checkpoint(run_dir / "checkpoints" / f"step_{at:08d}")
    final = _checkpoint(run_dir / "checkpoints" / f"step_{steps:08d}")
    assert first["step"] == at and final["step"] == steps and final["world_size"] == 2
    # one MLflow run across both job starts, with metrics from before and after the requeue:
    # every log step once (several processes stop at a log step, after logging it)
    assert final["tracking_run_id"] == first["tracking_run_id"]
    assert len(_runs_named(out, run_dir.name)) == 1
    loss_steps = [s for s, _ in _mlflow_metrics(out, final["tracking_run_id"])["train/loss"]]
    assert sorted(loss_steps) == list(range(5, steps + 1, 5)) and min(loss_steps) < at, loss_steps
    print(f"torchrun preemption: {time.monotonic() - t0:.0f}s")


def test_ray_job_trains_with_two_workers_checkpoints_on_signal_requeues_resumes_and_tears_down(slurm, tmp_path):
    """One Ray job (head + worker node, 2 Train workers), preempted once: the first start
    checkpoints on the signal and requeues, the second resumes, trains to the end and tears the
    cluster down (a normal end: the plain two-worker run needs no job of its own)."""
    out, steps = tmp_path / "ray_preempt", 150
    t0 = time.monotonic()
    job = _preempt_and_resume(slurm, out, "ray.sbatch", "gvae-ray", steps)
    log = (out / "job.log").read_text()
    assert "all 2 node(s) joined: 2 CPUs" in log
    assert "Ray Train: 2 worker(s)" in log
    assert f"step {steps:>6}/{steps}" in log  # worker output is streamed into the job log
    assert "requeueing job" in log and "(restart 1)" in log
    resumed = re.search(r"resumed from \S+ at step (\d+)", log.split("(restart 1)")[1])
    assert resumed and 0 < int(resumed.group(1)) < steps, _tail(out / "job.log")
    # per-job token, readable only by the user; dashboard on loopback only
    token = out / ".slurm" / job / "ray_auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text().strip()) == 64
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    assert re.search(r"dashboard 127\.0\.0\.1:\d+", log)
    # the checkpoint Ray Train registered, and the one MLflow run it names
    name = f"gvae-ray-{job}"
    state = _checkpoint(out / "ray" / name / f"step_{steps:08d}")
    assert state["step"] == steps and state["world_size"] == 2
    assert len(_runs_named(out, name)) == 1
    metrics = _mlflow_metrics(out, state["tracking_run_id"])
    assert max(s for s, _ in metrics["train/loss"]) == steps
    # torn down: nothing listens on the job's GCS port any more
    host, port = re.search(r"head (\S+):(\d+);", log).groups()
    assert not _listening(host, int(port)), f"Ray GCS still listening on {host}:{port} after the job"
    assert not Path(f"/tmp/ray-gvae-{job}").exists(), "the job's Ray temp dir was left behind"
    print(f"ray preemption: {time.monotonic() - t0:.0f}s")
