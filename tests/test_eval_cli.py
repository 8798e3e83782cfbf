"""`gvae-dist eval`: which checkpoint a path names, the summary it prints, where it writes."""

from __future__ import annotations

import json

import torch
import yaml

from gvae_dist.checkpoint import save_checkpoint
from gvae_dist.cli import main
from gvae_dist.config import load_config
from gvae_dist.model import build_model

TINY = [
    "data.image_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "data.num_eval=60",
    "eval.num_train=30",
    "eval.num_test=30",
    "tracking.enabled=false",
]


def _run_dir(tmp_path):
    """runs/r with two real checkpoints (an untrained model's weights, steps 2 and 4)."""
    cfg = load_config(None, [*TINY, f"run.output_dir={tmp_path / 'runs'}", "run.name=r"])
    torch.manual_seed(0)
    model = build_model(cfg, 3)
    run = tmp_path / "runs" / "r"
    for step in (2, 4):
        save_checkpoint(
            run / "checkpoints",
            step,
            {"model": model.state_dict(), "step": step},
            yaml.safe_dump(cfg.to_dict(), sort_keys=False),
            keep=2,
        )
    return run


def test_eval_opens_a_run_directory_and_prints_a_summary(tmp_path, capsys):
    run = _run_dir(tmp_path)
    assert main(["eval", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"evaluated {run / 'checkpoints' / 'step_00000004'} on 30 + 30 held-out codes" in out
    assert "DCI over targeted factors (yaw, pitch, roll, mouth, eyes, brow): disentanglement " in out
    assert "partition purity " in out and "held-out -ELBO " in out
    assert f"wrote to {run / 'eval'}: importance.png, kl_per_dim.png, metrics.json, " in out
    assert json.loads((run / "eval" / "metrics.json").read_text())["dci_mean"] >= 0.0
    # --json: tests/test_core_only.py


def test_eval_of_a_missing_checkpoint_lists_those_that_exist(tmp_path, capsys):
    run = _run_dir(tmp_path)
    missing = run / "checkpoints" / "step_00000009"
    assert main(["eval", "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist; checkpoints under {run / 'checkpoints'}: step_00000002, step_00000004" in err
    assert main(["eval", "--checkpoint", str(tmp_path / "nowhere" / "x")]) == 2
    assert (
        "does not exist; give a checkpoint directory (runs/<name>/checkpoints/step_N) or a run directory"
        in capsys.readouterr().err
    )
