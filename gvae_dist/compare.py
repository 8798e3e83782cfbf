"""Seed-paired comparison of gated and un-gated study cells, and of one arm across two studies.

A gated cell and the un-gated cell of the same objective and run seed share everything but the
gate (the un-gated model never reads the weak labels, so one un-gated cell per seed serves every
label-flip level). The difference gated - un-gated is taken per seed, and its mean is reported
with a two-sided 95% Student-t interval over seeds. A "win" is an interval entirely above zero.

An ablation runs the same arm twice, in two studies on the same data and seeds, with one setting
changed (``gvae-dist compare A B``): :func:`compare_arms` pairs their cells by seed the same way
and :func:`config_differences` names what the two studies' cells compute differently.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from gvae_dist.fingerprint import differing_keys

METRICS = ("D", "C", "I", "DCI_mean", "purity", "I_probe")
"""``I_probe``: informativeness read by the flexible probe (``eval.flexible_probe``), "-" where a
cell has none (cells evaluated before it existed)."""


@dataclass(frozen=True)
class Difference:
    """Mean of the seed-paired differences with its 95% interval."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def wins(self) -> bool:
        return self.n > 1 and self.low > 0

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3f} (n=1)"
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(gated: list[float], ungated: list[float], level: float = 0.95) -> Difference:
    """Mean of ``gated[i] - ungated[i]`` and its two-sided t-interval at ``level``."""
    if len(gated) != len(ungated) or not gated:
        raise ValueError("paired_difference needs two equally long, non-empty lists")
    diffs = [g - u for g, u in zip(gated, ungated, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n < 2:
        return Difference(mean, math.nan, math.nan, n)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Difference(mean, mean - half, mean + half, n)


def compare(rows: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> list[dict[str, Any]]:
    """One entry per (objective, label flip) of the gated cells: the seeds paired with an
    un-gated cell and the :class:`Difference` of every metric present in the rows."""
    ungated: dict[tuple[str, int], dict[str, Any]] = {}
    for r in rows:
        if r["variant"] == "ungated":
            ungated.setdefault((r["objective"], int(r["seed"])), r)
    groups: dict[tuple[str, float], list[tuple[dict, dict]]] = {}
    for r in rows:
        twin = ungated.get((r["objective"], int(r["seed"])))
        if r["variant"] == "gated" and twin is not None:
            key = (r["objective"], float(r["label_flip_prob"]))
            groups.setdefault(key, []).append((r, twin))
    out = []
    for (objective, flip), pairs in sorted(groups.items()):
        pairs.sort(key=lambda p: int(p[0]["seed"]))
        entry: dict[str, Any] = {
            "objective": objective,
            "label_flip_prob": flip,
            "seeds": [int(g["seed"]) for g, _ in pairs],
        }
        for m in metrics:
            g_vals = [float(g.get(m, math.nan)) for g, _ in pairs]
            u_vals = [float(u.get(m, math.nan)) for _, u in pairs]
            if all(math.isfinite(v) for v in g_vals + u_vals):
                entry[m] = paired_difference(g_vals, u_vals)
        out.append(entry)
    return out


def format_comparison(entries: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS, winner: str = "gated") -> str:
    """Markdown table of :func:`compare` (or :func:`compare_arms`, ``winner="A"``): mean
    difference [95% CI] per metric, and whether mean(D, C, I) wins (interval above zero)."""
    lines = [
        "| objective | label flip | seeds | " + " | ".join(f"Δ {m}" for m in metrics) + f" | {winner} wins |",
        "|---|---|---|" + "---|" * (len(metrics) + 1),
    ]
    for e in entries:
        cells = [str(e[m]) if m in e else "-" for m in metrics]
        win = e.get("DCI_mean")
        verdict = "-" if win is None else ("yes" if win.wins else "no")
        seeds = ",".join(str(s) for s in e["seeds"])
        lines.append(
            f"| {e['objective']} | {e['label_flip_prob']:g} | {seeds} | " + " | ".join(cells) + f" | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def read_results(study_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a study's ``results.csv``."""
    path = Path(study_dir) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no study results there; run the study first (gvae-dist study --config <study file> "
            f"--out {study_dir}) or name the study's output directory"
        )
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):  # "" or "-": a metric the cell did not report
        return math.nan


def _arm(rows: list[dict[str, Any]], variant: str) -> dict[tuple[str, float, int], dict[str, Any]]:
    return {(r["objective"], float(r["label_flip_prob"]), int(r["seed"])): r for r in rows if r["variant"] == variant}


def compare_arms(
    a_rows: list[dict[str, Any]],
    b_rows: list[dict[str, Any]],
    variant: str = "gated",
    metrics: tuple[str, ...] = METRICS,
) -> list[dict[str, Any]]:
    """``A - B`` for the ``variant`` cells of two studies, paired by (objective, label flip, run
    seed), one entry per (objective, label flip) both ran; entries as :func:`compare`'s, each with
    the ``pairs`` of run names it paired. Cells only one study has are left out."""
    a, b = _arm(a_rows, variant), _arm(b_rows, variant)
    shared = sorted(set(a) & set(b))
    if not shared:

        def cells(arm: dict) -> str:
            return ", ".join(f"{o} flip {f:g} seed {s}" for o, f, s in sorted(arm)) or "none"

        raise ValueError(
            f"no {variant} cell of one study pairs with one of the other by objective, label flip and "
            f"seed (A has: {cells(a)}; B has: {cells(b)}); run both studies with the same objectives, "
            "seeds and label_flip_probs"
        )
    groups: dict[tuple[str, float], list[tuple[str, float, int]]] = {}
    for key in shared:
        groups.setdefault(key[:2], []).append(key)
    out = []
    for (objective, flip), keys in groups.items():
        entry: dict[str, Any] = {
            "objective": objective,
            "label_flip_prob": flip,
            "seeds": [k[2] for k in keys],
            "pairs": [(a[k]["run"], b[k]["run"]) for k in keys],
        }
        for m in metrics:
            a_vals = [_number(a[k].get(m)) for k in keys]
            b_vals = [_number(b[k].get(m)) for k in keys]
            if all(math.isfinite(v) for v in a_vals + b_vals):
                entry[m] = paired_difference(a_vals, b_vals)
        out.append(entry)
    return out


def config_differences(a_dir: str | Path, b_dir: str | Path, a_run: str, b_run: str) -> list[str] | None:
    """``"key: <A's> in A, <B's> in B"`` for every key that changes what two cells compute (their
    ``result.json`` configs, by :func:`gvae_dist.fingerprint.differing_keys`); None where either
    file is missing."""
    configs = []
    for study, run in ((a_dir, a_run), (b_dir, b_run)):
        path = Path(study) / "runs" / run / "result.json"
        if not path.is_file():
            return None
        config = json.loads(path.read_text()).get("config")
        if config is None:
            return None
        configs.append(config)
    return differing_keys(*configs, names=("in A", "in B"))
