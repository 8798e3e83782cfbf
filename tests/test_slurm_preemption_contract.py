"""The train loop's side of preemption, without SLURM: on ``run.checkpoint_signal`` or
``run.stop_file`` it checkpoints at the next step boundary and raises ``Preempted`` (CLI exit
75); running again resumes from that checkpoint to the same numbers as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from gvae_dist.checkpoint import latest_checkpoint, load_checkpoint
from gvae_dist.config import load_config
from gvae_dist.train import PREEMPTED_EXIT_CODE, Preempted, train_loop

TINY = [
    "data.num_train=512",
    "data.num_eval=400",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "run.log_every=4",
    "eval.at_end=false",
    "tracking.enabled=false",
    "run.threads=1",
    "run.checkpoint_every=1000",
]


def _cfg(out, *extra):
    return load_config(None, [*TINY, f"run.output_dir={out}", *extra])


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {int(r["step"]): r["loss"] for r in rows}


def test_stop_file_checkpoints_off_grid_and_resume_matches_uninterrupted(tmp_path):
    full = train_loop(_cfg(tmp_path / "full", "optim.steps=16"))
    stop = tmp_path / "stop"
    stop.touch()
    with pytest.raises(Preempted) as info:
        train_loop(_cfg(tmp_path / "split", "optim.steps=16", f"run.stop_file={stop}"))
    exc = info.value
    assert exc.step == 4 and exc.exit_code == PREEMPTED_EXIT_CODE and "stop file" in exc.reason
    assert exc.checkpoint.name == "step_00000004" and load_checkpoint(exc.checkpoint)["step"] == 4
    stop.unlink()
    resumed = train_loop(_cfg(tmp_path / "split", "optim.steps=16", f"run.stop_file={stop}"))
    assert resumed.step == 16
    a, b = _losses(full.run_dir), _losses(resumed.run_dir)
    assert sorted(a) == sorted(b) == [4, 8, 12, 16]
    torch.testing.assert_close([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5, atol=1e-4)


def test_signal_stops_at_the_next_step_and_restores_the_handler(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    cfg = _cfg(tmp_path, "optim.steps=100000")
    metrics = cfg.run_dir() / "metrics.jsonl"

    def send_when_training():
        deadline = time.monotonic() + 120
        while not metrics.is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=send_when_training, daemon=True).start()
    with pytest.raises(Preempted) as info:
        train_loop(cfg)
    exc = info.value
    assert exc.reason == "SIGUSR1" and 4 <= exc.step < 100000
    assert latest_checkpoint(cfg.run_dir() / "checkpoints") == exc.checkpoint
    assert load_checkpoint(exc.checkpoint)["step"] == exc.step
    assert signal.getsignal(signal.SIGUSR1) == before


def test_checkpoint_signal_none_leaves_the_handler_alone(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    result = train_loop(_cfg(tmp_path, "optim.steps=2", "run.checkpoint_signal=none"))
    assert result.step == 2 and signal.getsignal(signal.SIGUSR1) == before


def test_cli_exits_75_when_stopped(tmp_path):
    stop = tmp_path / "stop"
    stop.touch()
    args = [
        a
        for kv in [*TINY, f"run.output_dir={tmp_path}", "optim.steps=50", f"run.stop_file={stop}"]
        for a in ("--set", kv)
    ]
    res = subprocess.run(
        [sys.executable, "-m", "gvae_dist.cli", "train", *args], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 75, res.stderr[-2000:]
    assert "stopped at step 4 on stop file" in res.stderr
