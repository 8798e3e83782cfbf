"""``ray job submit --working-dir . -- gvae-dist train ...`` against a ``ray start --head`` on
loopback (own ports and temp dir), with token authentication on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

TINY = [
    "data.num_train=512",
    "data.num_eval=400",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "eval.at_end=false",
    "run.threads=1",
    "optim.steps=20",
    "run.log_every=5",
    "run.checkpoint_every=10",
    "run.name=job",
]


def _ray(head, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VENV_BIN / "ray"), *args], cwd=REPO, env=env or head.env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.integration
@pytest.mark.slow
def test_job_submit_trains_on_the_head_and_tracks(ray_head, tmp_path):
    out = tmp_path / "out"  # absolute: the job runs in a temporary copy of the working dir
    entry = [
        "gvae-dist",
        "train",
        "--workers",
        "2",
        *[a for kv in TINY for a in ("--set", kv)],
        "--set",
        f"run.output_dir={out}",
    ]
    # as the README: the client's environment from `ops/ray_head.sh env`, no --address
    exported = subprocess.run(
        ["bash", ray_head.script, "env"], env=ray_head.env, capture_output=True, text=True, check=True
    ).stdout.split()
    client = {k: v for k, v in (kv.split("=", 1) for kv in exported if "=" in kv)}
    assert client["RAY_ADDRESS"] == ray_head.dashboard and client["RAY_AUTH_MODE"] == "token"
    proc = _ray(
        ray_head,
        "job",
        "submit",
        "--working-dir",
        ".",
        "--submission-id",
        "gvae-job-1",
        "--",
        *entry,
        env={**{k: v for k, v in ray_head.env.items() if not k.startswith("RAY_AUTH")}, **client},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "global batch 32 = 2 x 1 micro-batches of 16" in proc.stdout

    from ray.job_submission import JobStatus, JobSubmissionClient

    assert JobSubmissionClient(ray_head.dashboard).get_job_status("gvae-job-1") == JobStatus.SUCCEEDED
    assert (out / "ray" / "job" / "step_00000020" / "state.pt").is_file()
    assert (out / "job" / "checkpoints" / "step_00000020").is_dir()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gvae-dist").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [5, 10, 15, 20]


@pytest.mark.integration
def test_job_api_refuses_requests_without_the_token(ray_head, tmp_path):
    # the raw REST API: no token, wrong token -> refused; the right token -> served
    def status(headers: dict) -> int:
        req = urllib.request.Request(
            f"{ray_head.dashboard}/api/jobs/",
            method="POST",
            headers=headers,
            data=json.dumps({"entrypoint": "echo pwned"}).encode(),
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    assert status({"Content-Type": "application/json"}) in (401, 403)
    assert status({"Content-Type": "application/json", "Authorization": "Bearer " + "0" * 64}) in (401, 403)
    token = ray_head.token_file.read_text().strip()
    with urllib.request.urlopen(
        urllib.request.Request(f"{ray_head.dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"}),
        timeout=10,
    ) as resp:
        assert resp.status == 200

    # the CLI with another token is refused too, and nothing ran
    wrong = tmp_path / "wrong_token"
    wrong.write_text("1" * 64)
    proc = _ray(
        ray_head,
        "job",
        "submit",
        "--address",
        ray_head.dashboard,
        "--",
        "echo",
        "pwned",
        env={**ray_head.env, "RAY_AUTH_TOKEN_PATH": str(wrong)},
        timeout=60,
    )
    assert proc.returncode != 0
    assert "token" in (proc.stdout + proc.stderr).lower()
    jobs = _ray(ray_head, "job", "list", "--address", ray_head.dashboard, timeout=60)
    assert jobs.returncode == 0 and "echo pwned" not in jobs.stdout


def test_head_binds_the_dashboard_to_loopback(ray_head):
    import psutil

    family = [ray_head.pid] + [p.pid for p in psutil.Process(ray_head.pid).children(recursive=True)]
    port = int(ray_head.dashboard.rsplit(":", 1)[1])
    listening = [
        c
        for c in psutil.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid in family
    ]
    assert listening and all(c.laddr.ip == "127.0.0.1" for c in listening)
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_head_script_keeps_its_token_private_and_says_how_to_submit(ray_head):
    assert "ray job submit" in ray_head.start_output and "ops/ray_head.sh stop" in ray_head.start_output
    assert ray_head.token_file.stat().st_mode & 0o777 == 0o600
    assert ray_head.token_file.parent.stat().st_mode & 0o777 == 0o700
    status = subprocess.run(["bash", ray_head.script, "status"], env=ray_head.env, capture_output=True, text=True)
    assert status.returncode == 0 and f"PID {ray_head.pid}" in status.stdout
    again = subprocess.run(
        ["bash", ray_head.script, "start"], env=ray_head.env, capture_output=True, text=True, timeout=60
    )  # a second start finds the running head instead of a second one
    assert again.returncode == 0 and "runs already" in again.stderr
