"""Seed-paired comparison of gated and un-gated study cells.

A gated cell and the un-gated cell of the same objective and run seed share everything but the
gate (the un-gated model never reads the weak labels, so one un-gated cell per seed serves every
label-flip level). The difference gated - un-gated is taken per seed, and its mean is reported
with a two-sided 95% Student-t interval over seeds. A "win" is an interval entirely above zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import stats

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


def format_comparison(entries: list[dict[str, Any]], metrics: tuple[str, ...] = METRICS) -> str:
    """Markdown table of :func:`compare`: mean difference [95% CI] per metric, and whether
    mean(D, C, I) wins (interval above zero)."""
    lines = [
        "| objective | label flip | seeds | " + " | ".join(f"Δ {m}" for m in metrics) + " | gated wins |",
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
