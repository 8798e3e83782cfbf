"""optim.schedule / optim.min_lr / optim.lr_warmup_steps / _fraction: the rate as a function of the step,
what the loop applies and logs, and that a preempted, resumed run continues the schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gvae_dist.checkpoint import latest_checkpoint, load_checkpoint
from gvae_dist.config import ConfigError, load_config
from gvae_dist.schedule import learning_rate, scheduled, warmup_steps
from gvae_dist.train import Preempted, train_loop

REPO = Path(__file__).resolve().parents[1]


def _o(**kw):
    fields = dict(lr=1e-3, steps=100, schedule="constant", min_lr=0.0, lr_warmup_steps=0, lr_warmup_fraction=0.0)
    fields.update(kw)
    return SimpleNamespace(**fields)


def test_constant_is_the_configured_rate_and_not_scheduled():
    o = _o()
    assert [learning_rate(o, s) for s in (0, 50, 99)] == [1e-3] * 3
    assert not scheduled(o) and scheduled(_o(lr_warmup_steps=5)) and scheduled(_o(schedule="cosine"))


def test_warmup_then_cosine_to_min_lr():
    o = _o(schedule="cosine", min_lr=1e-4, lr_warmup_steps=10)
    assert [learning_rate(o, s) for s in range(3)] == pytest.approx([1e-4, 2e-4, 3e-4])
    assert learning_rate(o, 9) == pytest.approx(1e-3)  # warm-up ends at the full rate
    assert learning_rate(o, 10) == pytest.approx(1e-3)  # cosine starts there
    assert learning_rate(o, 55) == pytest.approx(0.5 * (1e-3 + 1e-4))  # half-way: the mean
    assert learning_rate(o, 100) == pytest.approx(1e-4)  # ends at min_lr
    after = [learning_rate(o, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))  # never rises again
    assert learning_rate(_o(schedule="cosine"), 25) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="optim.schedule"):
        learning_rate(_o(schedule="step"), 0)


def test_a_warmup_fraction_scales_with_the_run_and_steps_take_precedence():
    # the presets' warm-up is a share of the run, so a shortened run (--set optim.steps=12) stays valid
    assert warmup_steps(_o(steps=3000, lr_warmup_fraction=0.0667)) == 200
    assert warmup_steps(_o(steps=12, lr_warmup_fraction=0.0667)) == 1
    assert warmup_steps(_o(steps=3000, lr_warmup_fraction=0.0667, lr_warmup_steps=50)) == 50
    o = _o(steps=300, schedule="cosine", lr_warmup_fraction=0.1)
    assert scheduled(_o(lr_warmup_fraction=0.1)) and not scheduled(_o(lr_warmup_fraction=0.001))
    assert learning_rate(o, 0) == pytest.approx(1e-3 / 30) and learning_rate(o, 29) == pytest.approx(1e-3)
    cfg = load_config(REPO / "configs" / "faces_beta_gated.yaml", ["optim.steps=12"])
    assert warmup_steps(cfg.optim) == 1 and learning_rate(cfg.optim, 0) == pytest.approx(cfg.optim.lr)


@pytest.mark.parametrize(
    "sets, key",
    [
        (["optim.min_lr=0.01"], "optim.min_lr"),
        (["optim.lr_warmup_fraction=1.0"], "optim.lr_warmup_fraction"),
        (["optim.lr_warmup_steps=3000"], "optim.lr_warmup_steps"),
        (["optim.lr_warmup_steps=-1"], "optim.lr_warmup_steps"),
        (["optim.schedule=linear"], "optim.schedule"),
    ],
)
def test_bad_schedule_settings_name_the_key(sets, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["optim.lr=0.001", "optim.steps=3000", *sets])


TINY = [
    "data.num_train=256",
    "data.num_eval=64",
    "data.image_size=32",
    "optim.batch_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "run.log_every=2",
    "eval.at_end=false",
    "eval.points=0",
    "tracking.enabled=false",
    "run.threads=1",
    "run.checkpoint_every=1000",
    "optim.steps=8",
    "optim.lr=0.002",
]
COSINE = ["optim.schedule=cosine", "optim.min_lr=0.0002", "optim.lr_warmup_steps=2"]


def _rows(run_dir):
    return {int(r["step"]): r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_the_loop_applies_and_logs_the_schedule_and_a_resume_continues_it(tmp_path):
    full = train_loop(load_config(None, [*TINY, *COSINE, f"run.output_dir={tmp_path / 'full'}"]))
    o = load_config(None, [*TINY, *COSINE]).optim
    rows = _rows(full.run_dir)
    assert sorted(rows) == [2, 4, 6, 8]
    for step, row in rows.items():  # the rate of the interval's last step
        assert row["optim/lr"] == pytest.approx(learning_rate(o, step - 1))
    # the optimizer ran at the schedule's rate: its saved state holds the last step's rate
    saved = load_checkpoint(latest_checkpoint(full.run_dir / "checkpoints"))["optimizer"]
    assert saved["param_groups"][0]["lr"] == pytest.approx(learning_rate(o, o.steps - 1))
    assert saved["param_groups"][0]["lr"] != pytest.approx(o.lr)

    stop = tmp_path / "stop"
    stop.touch()
    split = [*TINY, *COSINE, f"run.output_dir={tmp_path / 'split'}", f"run.stop_file={stop}"]
    with pytest.raises(Preempted):
        train_loop(load_config(None, split))
    stop.unlink()
    resumed = _rows(train_loop(load_config(None, split)).run_dir)
    assert sorted(resumed) == sorted(rows)
    torch.testing.assert_close(
        [resumed[s]["loss"] for s in rows], [rows[s]["loss"] for s in rows], rtol=1e-5, atol=1e-4
    )
    assert [resumed[s]["optim/lr"] for s in rows] == [rows[s]["optim/lr"] for s in rows]
