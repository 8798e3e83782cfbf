"""Checkpoint files: atomic layout, retention, and resuming from an older checkpoint."""

from __future__ import annotations

import pytest
import torch

from gvae_dist.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


def _save(root, step, keep=2):
    return save_checkpoint(root, step, {"step": step, "w": torch.full((2,), float(step))}, "a: 1\n", keep=keep)


def test_keeps_the_newest_and_loads_weights_only(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020", "step_00000030"]
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["step"] == 30 and state["w"].tolist() == [30.0, 30.0]
    assert not list(tmp_path.glob(".tmp-*"))


def test_resuming_from_an_older_checkpoint_keeps_the_new_one(tmp_path):
    # A run wrote 10..40; Ray restored it from step 20 (the newest Ray had persisted): the next
    # save (30, a new timeline) must survive and the abandoned 30/40 must not outrank it.
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep=4)
    old30 = load_checkpoint(tmp_path / "step_00000030")["w"]
    new30 = save_checkpoint(tmp_path, 30, {"step": 30, "w": torch.zeros(2), "new": True}, "a: 1\n", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020", "step_00000030"]
    assert latest_checkpoint(tmp_path) == new30 and load_checkpoint(new30)["new"] is True
    assert old30.tolist() == [30.0, 30.0]
    _save(tmp_path, 25, keep=2)  # even a save between the old steps becomes the newest
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020", "step_00000025"]


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "step_00000001"
    bad.mkdir()
    (bad / "state.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="step_00000001"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")
