"""Seed-paired difference between the gated arms of two studies run on the same data and seeds
(e.g. the gated preset with and without one setting), with the same 95% t-intervals as the studies'
gated - un-gated comparisons (gvae_dist.compare). Study v21 (docs/study.md):

    python ops/pilots/arm_difference.py runs/study_v21_kl runs/study_v21_preset

prints A - B per metric, paired by (objective, label flip, run seed), from each study's results.csv."""

import csv
import sys
from pathlib import Path

from gvae_dist.compare import METRICS, paired_difference


def gated_rows(study: Path) -> dict[tuple[str, float, int], dict[str, str]]:
    path = study / "results.csv"
    if not path.exists():
        sys.exit(f"{path}: no results.csv; run the study first (gvae-dist study -c ...)")
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r["variant"] == "gated"]
    return {(r["objective"], float(r["label_flip_prob"]), int(r["seed"])): r for r in rows}


if len(sys.argv) != 3:
    sys.exit(__doc__)
a, b = (gated_rows(Path(p)) for p in sys.argv[1:])
keys = sorted(set(a) & set(b))
if not keys:
    sys.exit("the two studies share no (objective, label flip, seed) of a gated cell")
groups: dict[tuple[str, float], list[tuple[str, float, int]]] = {}
for key in keys:
    groups.setdefault(key[:2], []).append(key)
print(f"A = {sys.argv[1]}, B = {sys.argv[2]}: gated A - gated B, paired by seed (95% t-interval)\n")
print("| objective | label flip | seeds | " + " | ".join(f"Δ {m}" for m in METRICS) + " |")
print("|---|---|---|" + "---|" * len(METRICS))
for (objective, flip), members in groups.items():
    cells = []
    for m in METRICS:
        if all(a[k].get(m) not in (None, "", "-") and b[k].get(m) not in (None, "", "-") for k in members):
            cells.append(str(paired_difference([float(a[k][m]) for k in members], [float(b[k][m]) for k in members])))
        else:
            cells.append("-")
    seeds = ",".join(str(k[2]) for k in members)
    print(f"| {objective} | {flip:g} | {seeds} | " + " | ".join(cells) + " |")
