"""Checkpoint files: atomic layout, retention, and falling back past damaged checkpoints."""

from __future__ import annotations

import pytest
import torch

from gvae_dist.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_newest,
    local_candidates,
    save_checkpoint,
    set_aside,
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


def test_pruning_never_removes_a_newer_checkpoint(tmp_path):
    # A save at an older step (a run restored 20 because 30 and 40 did not load for it) keeps
    # its own predecessor and never deletes the newer ones: they are progress, not litter.
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep=4)
    new30 = save_checkpoint(tmp_path, 30, {"step": 30, "w": torch.zeros(2), "new": True}, "a: 1\n", keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000020", "step_00000030", "step_00000040"]
    assert load_checkpoint(new30)["new"] is True  # the same step is replaced whole
    assert load_checkpoint(tmp_path / "step_00000040")["w"].tolist() == [40.0, 40.0]


def test_load_newest_falls_back_past_damaged_checkpoints(tmp_path, caplog):
    for step in (10, 20, 30):
        _save(tmp_path, step, keep=3)
    (tmp_path / "step_00000030" / "state.pt").write_bytes(b"\x00" * 100)  # torn write / bad disk
    torch.save({"step": 10, "model": {}}, tmp_path / "step_00000020" / "state.pt")  # wrong step inside
    for p in list_checkpoints(tmp_path):  # make 10 a loadable training state
        if p.name == "step_00000010":
            torch.save({"step": 10, "model": {}}, p / "state.pt")
    cand, state, skipped = load_newest(local_candidates(tmp_path))
    assert cand.step == 10 and state["step"] == 10
    assert [c.step for c in skipped] == [30, 20]
    assert f"{tmp_path}/step_00000030/state.pt is damaged" in caplog.text
    assert f"{tmp_path}/step_00000020/state.pt is damaged" in caplog.text
    moved = set_aside(skipped[0].path)
    assert moved.name.startswith("damaged-step_00000030-") and (moved / "state.pt").is_file()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000010", "step_00000020"]

    (tmp_path / "step_00000010" / "state.pt").write_bytes(b"junk")
    with pytest.raises(
        CheckpointError,
        match=r"no checkpoint of this run can be loaded(.|\n)*"
        r"step_00000020/state.pt(.|\n)*step_00000010/state.pt",
    ):
        load_newest(local_candidates(tmp_path))
    assert load_newest([]) is None


def test_unreadable_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "step_00000001"
    bad.mkdir()
    (bad / "state.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="step_00000001"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing")
