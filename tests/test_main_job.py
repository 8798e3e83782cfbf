"""The main job, ``ops/main.sh``, end to end at a small size: faces built once into shards with a
held-out split, streamed by DALI (or the stated WebDataset fallback) into 2 Ray Train workers,
tracked in MLflow; a rerun verifies the shards and skips the build."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUM, TRAIN, BATCH = 160, 128, 64  # 128 train = 2 ranks x 2 batches of 32: no padding
SMALL = [
    "--set",
    "data.image_size=32",
    "--set",
    "model.channels=[8,8,16]",
    "--set",
    "model.hidden=32",
    "--set",
    "eval.at_end=false",
    "--set",
    "run.log_every=2",
    "--set",
    "run.threads=1",
]


def _main_sh(tmp: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GVAE_MAIN_SKIP_SETUP": "1",
        "GVAE_VENV": str(Path(sys.executable).parents[1]),
        "GVAE_MAIN_DATA": str(tmp / "faces"),
        "GVAE_MAIN_NUM": str(NUM),
        "GVAE_MAIN_STEPS": "4",
        **env,
    }
    proc = subprocess.run(
        ["bash", str(REPO / "ops" / "main.sh"), *SMALL, "--set", f"run.output_dir={tmp / 'runs'}", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _expected_backend() -> str:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # noqa: BLE001 - as gvae_dist.data.stream.choose_backend
        return "webdataset"
    return "dali"


@pytest.mark.integration
@pytest.mark.slow
def test_main_job_streams_shards_through_the_backend_into_both_workers(ray_env, tmp_path):
    first = _main_sh(tmp_path)
    shards = tmp_path / "faces"
    man = json.loads((shards / "manifest.json").read_text())
    assert man["split"] == {"train": TRAIN, "eval": NUM - TRAIN, "eval_fraction": 0.2}
    train_keys = {f"{i:08d}" for i in range(TRAIN)}

    # what each Ray worker read in its first epoch (data.record_reads in the main job's preset)
    run_dir = tmp_path / "runs" / "faces_beta_gated_shards"
    reads = [json.loads((run_dir / "data" / f"rank-{r}.json").read_text()) for r in range(2)]
    backend = _expected_backend()
    for rank, rec in enumerate(reads):
        assert (rec["rank"], rec["world"], rec["backend"], rec["split"]) == (rank, 2, backend, "train")
        assert rec["layout"]["padded"] == 0 and len(rec["first_epoch_keys"]) == TRAIN // 2
    counts = collections.Counter(k for rec in reads for k in rec["first_epoch_keys"])
    assert set(counts) == train_keys and set(counts.values()) == {1}  # every sample exactly once

    out = first.stdout
    assert f"[gvae-dist] split: {TRAIN} train / {NUM - TRAIN} held-out eval samples" in out
    assert f"[gvae-dist] data: {backend} (cpu decode) backend on 2 rank(s), train split: {TRAIN} samples" in out
    assert f"first epoch: {TRAIN} distinct of {TRAIN} samples, 0 repeats" in out
    assert f"[gvae-dist] data: shards in {shards}; evaluation read the eval split ({NUM - TRAIN} samples)" in out
    assert "[gvae-dist] MLflow run " in out and (tmp_path / "runs" / "mlflow.db").is_file()
    assert (run_dir / "checkpoints").is_dir()

    # a rerun verifies the shards against the manifest and skips the build (that a changed setting
    # rebuilds is tests/test_shards.py's)
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()}
    again = _main_sh(tmp_path, GVAE_MAIN_BUILD_ONLY="1")
    assert "build skipped" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir() if p.is_file()} == mtimes
