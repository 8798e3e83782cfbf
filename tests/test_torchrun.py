"""The same train_loop without Ray: ``torchrun --nproc_per_node 2`` on CPU (gloo), as the SLURM
scripts launch it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gvae_dist.launch import free_port

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
    "optim.grad_accum=2",
    "optim.mixed_precision=bf16",
]


@pytest.mark.integration
@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_in_sync(tmp_path):
    cmd = [
        str(VENV_BIN / "torchrun"),
        "--nnodes",
        "1",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "gvae_dist.cli",
        "train",
        *[a for kv in TINY for a in ("--set", kv)],
        "--set",
        f"run.output_dir={tmp_path}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank 0 prints; global batch 32 = 2 processes x 2 micro-batches of 8; bf16 autocast on CPU
    assert proc.stdout.count("global batch 32 = 2 x 2 micro-batches of 8; precision bf16") == 1
    run_dir = tmp_path / "gvae"
    metas = [json.loads(p.read_text()) for p in (run_dir / "checkpoints").glob("*/meta.json")]
    assert len(metas) == 2  # DDP: both ranks hold bitwise-equal weights at every checkpoint
    assert all(len(m["param_digests"]) == 2 and len(set(m["param_digests"])) == 1 for m in metas)
    # tracking on rank 0 only: one MLflow run, every logged step once; nothing written to the CWD
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gvae-dist").experiment_id])
    assert len(runs) == 1
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [5, 10, 15, 20]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gvae", "mlartifacts", "mlflow.db"]
    # run again with more steps: rank 0 alone holds the run directory's lock, both ranks agree on
    # the checkpoint to restore, and each step is logged once
    again = subprocess.run(
        [*cmd, "--set", "optim.steps=30"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'step_00000020'} at step 20" in again.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 25, 30]
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [5, 10, 15, 20, 25, 30]
