"""Save and restore the full training state as one directory, atomically.

Layout: ``<run_dir>/checkpoints/step_00000500/{state.pt, config.yaml, meta.json}``. A checkpoint
is written into a hidden temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint that looks valid; only directories with ``meta.json`` count. ``state.pt``
is a named dict of the whole state (unwrapped model, optimizer, scaler, step, RNG states, data
position, tracking run id) and is loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "list_checkpoints", "prune_checkpoints",
           "CheckpointError"]

STATE_FILE, META_FILE, CONFIG_FILE = "state.pt", "meta.json", "config.yaml"


class CheckpointError(ValueError):
    """A checkpoint is missing or unreadable; the message names the path."""


def list_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """Complete checkpoints under ``ckpt_root``, oldest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if (p / META_FILE).is_file() and (p / STATE_FILE).is_file()]
    return sorted(done, key=_step_of)


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    found = list_checkpoints(ckpt_root)
    return found[-1] if found else None


def save_checkpoint(ckpt_root: str | Path, step: int, state: dict[str, Any], config_yaml: str,
                    keep: int = 2, meta: dict[str, Any] | None = None) -> Path:
    """Write ``state`` for ``step`` atomically and keep only the ``keep`` newest checkpoints."""
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{time.time_ns()}"
    tmp.mkdir()
    try:
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(config_yaml)
        (tmp / META_FILE).write_text(json.dumps({"step": step, "time": time.time(), **(meta or {})}))
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(root, step, keep)
    return final


def prune_checkpoints(ckpt_root: str | Path, step: int, keep: int) -> list[Path]:
    """After writing ``step``, keep it and the ``keep - 1`` newest older checkpoints.

    Checkpoints of a *later* step belong to a timeline this run abandoned when it resumed from
    an older checkpoint (Ray Train / Tune restore from the newest checkpoint *they* persisted,
    which may lag the run directory). They are removed, not kept: ranking by step alone would
    otherwise delete the checkpoint just written. Returns what was removed.
    """
    found = list_checkpoints(ckpt_root)
    stale = [p for p in found if _step_of(p) > step]
    current = [p for p in found if _step_of(p) <= step]
    removed = stale + current[: max(0, len(current) - max(1, keep))]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


def _step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory (or its ``state.pt``) with ``weights_only=True``."""
    path = Path(path)
    file = path / STATE_FILE if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {path}: expected a directory holding {STATE_FILE}")
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt or foreign file: name it
        raise CheckpointError(f"cannot read checkpoint {file}: {exc}") from exc
