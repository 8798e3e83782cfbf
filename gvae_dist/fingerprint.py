"""What a config computes: its fingerprint, and the keys in which two configs differ.

One definition for the two places that must recognise "the same experiment": a study cell
whose finished run directory may be re-used (:mod:`gvae_dist.study`), and a run directory
that ``run.resume`` may continue (:mod:`gvae_dist.train`, :mod:`gvae_dist.launch`). Both
leave out the :data:`RUN_LOCAL` keys (where and how a run executes, not what it computes) and
the :data:`MOOT` keys (options another key's value makes unread), and keys added later while
at the default that reproduces older runs (:data:`ADDED`). Resuming also tolerates
:data:`RESUME_SAFE` keys: a longer ``optim.steps`` extends a run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "ADDED",
    "RUN_LOCAL",
    "MOOT",
    "RESUME_SAFE",
    "fingerprinted",
    "fingerprint",
    "flat",
    "differing_keys",
    "resume_fingerprint",
]

# Config keys that say where and how a run executes, not what it computes.
RUN_LOCAL: dict[str, Any] = {
    "run": {
        "name",
        "output_dir",
        "resume",
        "keep_checkpoints",
        "checkpoint_every",
        "log_every",
        "threads",
        "retain_freed_memory",
        "checkpoint_signal",
        "stop_file",
        "device",
    },
    "tracking": "*",
    "distributed": "*",
    "data": {"path", "num_workers", "verify", "backend"},
    # flexible_probe adds metrics beside DCI's and changes none of them
    "eval": {"batch_size", "jobs", "flexible_probe"},
    "optim": {"compile", "channels_last"},
}

# Keys a run's numbers cannot depend on, given another key's value: an un-gated run never reads
# the gate's options, a run without shared-factor (transform) pairs never searches partners
# (transforms). Dropped so that, e.g., the un-gated cells of two studies whose gated presets differ
# only in gate.decoder are recognised as the same cell.
MOOT = [
    (("gate", "enabled", False), ("gate", {"kl", "regularizer", "decoder", "closed_code", "drop_high_loss"})),
    (("pairing", "shared_factor", 0.0), ("pairing", {"match", "partner", "match_nuisance", "bank_size", "min_found"})),
    (("pairing", "transform", 0.0), ("pairing", {"transform_kind", "transform_partition", "blur_sigma"})),
]

# Keys added after fingerprints were first stored (study result.json files, checkpoints), with
# the default that reproduces what runs computed before the key existed. A key at that value is
# dropped before hashing, so run directories made before it was added are still recognised.
ADDED: dict[tuple[str, str], Any] = {
    ("objective", "warmup_steps"): 0,
    ("gate", "drop_high_loss"): 0.0,
    ("gate", "regularizer"): False,
    ("optim", "schedule"): "constant",
    ("optim", "min_lr"): 0.0,
    ("optim", "lr_warmup_steps"): 0,
    ("optim", "lr_warmup_fraction"): 0.0,
    ("objective", "gamma"): 1000.0,
    ("objective", "capacity_max"): 25.0,
    ("objective", "capacity_steps"): 100_000,
    ("model", "center_codes"): False,
    ("model", "refine_channels"): 0,
}

# Keys that may change when a run is resumed without changing what the steps so far computed.
RESUME_SAFE: dict[str, Any] = {"optim": {"steps"}}


def _drop(config: dict[str, Any], drop: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for section, value in config.items():
        keys = drop.get(section, set())
        if keys == "*":
            continue
        out[section] = {k: v for k, v in value.items() if k not in keys} if isinstance(value, dict) else value
    return out


def fingerprinted(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a ``Config.to_dict()``) without the :data:`RUN_LOCAL` keys and the
    :data:`MOOT` keys that cannot change its numbers."""
    out = _drop(config, RUN_LOCAL)
    for (section, key, value), (moot_section, moot_keys) in MOOT:
        if isinstance(out.get(section), dict) and out[section].get(key, value) == value and moot_section in out:
            out[moot_section] = {k: v for k, v in out[moot_section].items() if k not in moot_keys}
    for (section, key), default in ADDED.items():
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] == default:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def fingerprint(cfg) -> str:
    """A short hash of what a config computes (a ``Config`` or its ``to_dict()``)."""
    return _hash(fingerprinted(cfg if isinstance(cfg, dict) else cfg.to_dict()))


def resume_fingerprint(cfg) -> str:
    """:func:`fingerprint` also without the :data:`RESUME_SAFE` keys: stored with every
    checkpoint; a run may be resumed by a config with the same one."""
    return _hash(_drop(fingerprinted(cfg if isinstance(cfg, dict) else cfg.to_dict()), RESUME_SAFE))


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_keys(
    theirs: dict[str, Any], mine: dict[str, Any], resume: bool = False, names: tuple[str, str] = ("there", "here")
) -> list[str]:
    """``"key: <theirs> there, <mine> here"`` (``names`` for "there" and "here") for every
    fingerprinted key (and, with ``resume``, not a :data:`RESUME_SAFE` key) in which two
    ``Config.to_dict()`` differ. An :data:`ADDED` key a config leaves out shows its default."""

    def view(c: dict[str, Any]) -> dict[str, Any]:
        out = fingerprinted(c)
        out = flat(_drop(out, RESUME_SAFE) if resume else out)
        for (section, key), default in ADDED.items():
            out.setdefault(f"{section}.{key}", default)
        return out

    a, b = view(theirs), view(mine)
    there, here = names
    return [
        f"{k}: {a.get(k, '?')!r} {there}, {b.get(k, '?')!r} {here}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
