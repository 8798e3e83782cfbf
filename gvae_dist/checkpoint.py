"""Save and restore the full training state as one directory, atomically.

Layout: ``<run_dir>/checkpoints/step_00000500/{state.pt, config.yaml, meta.json}``. A checkpoint
is written into a hidden temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint that looks valid; only directories with ``meta.json`` count. ``state.pt``
is a named dict of the whole state (unwrapped model, optimizer, scaler, step, RNG states, data
position, tracking run id) and is loaded with ``torch.load(weights_only=True)``.

Resume (:func:`load_newest`) tries the checkpoints newest first and skips one that does not load
with a warning naming its file, so a damaged newest checkpoint costs one checkpoint interval,
not the run; the damaged directory is set aside as ``damaged-step_N-<time>`` (kept for a look,
never listed again). Pruning never removes a checkpoint newer than the one just written.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "CheckpointError",
    "Candidate",
    "load_newest",
    "set_aside",
    "step_of",
    "local_candidates",
]

log = logging.getLogger(__name__)

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


def save_checkpoint(
    ckpt_root: str | Path,
    step: int,
    state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
    meta: dict[str, Any] | None = None,
) -> Path:
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

    A checkpoint of a *later* step is never removed: a run restores the newest checkpoint that
    loads (see :func:`load_newest`), so a later one on disk is not an abandoned timeline but
    the newest progress some other reader may still want (ranking by step alone would otherwise
    delete the checkpoint just written). Returns what was removed.
    """
    current = [p for p in list_checkpoints(ckpt_root) if _step_of(p) <= step]
    removed = current[: max(0, len(current) - max(1, keep))]
    for old in removed:
        shutil.rmtree(old, ignore_errors=True)
    return removed


def _step_of(path: Path) -> int:
    return int(path.name.split("_")[1])


step_of = _step_of


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


class Candidate(NamedTuple):
    """A checkpoint a run may restore: its step, a local directory holding ``state.pt`` (maybe a
    temporary copy) and where it really is (named in warnings and errors)."""

    step: int
    path: Path
    origin: str


def local_candidates(ckpt_root: str | Path) -> list[Candidate]:
    """The complete checkpoints under ``ckpt_root`` as :class:`Candidate` s."""
    return [Candidate(_step_of(p), p, str(p / STATE_FILE)) for p in list_checkpoints(ckpt_root)]


def load_newest(
    candidates: list[Candidate],
    map_location: str | torch.device = "cpu",
) -> tuple[Candidate, dict[str, Any], list[Candidate]] | None:
    """Load the newest candidate that reads back whole: ``(candidate, state, skipped)``.

    Newest step first (at equal steps, the order given); a candidate that fails to load, or
    whose state is not of its step, is skipped with a warning naming its file. None when there
    are no candidates; :class:`CheckpointError` listing every file tried when none loads.
    """
    skipped, errors = [], []
    for cand in sorted(candidates, key=lambda c: c.step, reverse=True):  # stable: order kept per step
        try:
            state = load_checkpoint(cand.path, map_location=map_location)
            if not isinstance(state, dict) or int(state.get("step", -1)) != cand.step or "model" not in state:
                raise CheckpointError(f"state.pt does not hold the step-{cand.step} training state")
        except (CheckpointError, ValueError, TypeError) as exc:
            cause = exc.__cause__ or exc  # load_checkpoint's message names the (maybe copied) file
            reason = f"{type(cause).__name__}: {cause}" if cause is not exc else str(exc)
            log.warning(
                "checkpoint %s is damaged and is skipped (%s); trying the previous one", cand.origin, reason[:300]
            )
            skipped.append(cand)
            errors.append(f"{cand.origin}: {reason[:200]}")
            continue
        return cand, state, skipped
    if errors:
        raise CheckpointError(
            "no checkpoint of this run can be loaded; tried, newest first:\n  "
            + "\n  ".join(errors)
            + "\nMove the run directory away (or pick another "
            "run.name) to start over"
        )
    return None


def set_aside(path: str | Path) -> Path | None:
    """Rename a damaged checkpoint directory to ``damaged-<name>-<time>`` next to it, out of
    :func:`list_checkpoints`' sight but kept for inspection; None if it is gone already."""
    path = Path(path)
    dest = path.with_name(f"damaged-{path.name}-{time.time_ns()}")
    try:
        path.rename(dest)
    except OSError:
        return None
    return dest
