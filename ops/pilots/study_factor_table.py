"""Per-cell table of a study directory: held-out informativeness per targeted factor (mean over
the cell's seeds), held-out -ELBO and KL, and how many seeds collapsed (KL < 1 nat); where the
cells carry the flexible probe's informativeness (eval.flexible_probe), a second table of it.
The v4/v5 tables of docs/study.md: python ops/pilots/study_factor_table.py runs/study_noise_beta"""

import json
import statistics
import sys
from pathlib import Path

FACTORS = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]

root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study_faces")
groups: dict[str, list[dict]] = {}
for path in sorted(root.glob("runs/*/result.json")):
    result = json.loads(path.read_text())
    groups.setdefault(result["name"].rsplit("__seed", 1)[0], []).append(result["eval"])
print("| cell | " + " | ".join(FACTORS) + " | -ELBO | KL | collapsed (KL < 1) |")
print("|---|" + "---:|" * (len(FACTORS) + 3))
for name, evals in groups.items():
    mean = {
        k: statistics.mean(e[k] for e in evals) for k in ["neg_elbo", "kl", *(f"informativeness/{f}" for f in FACTORS)]
    }
    print(
        f"| {name} ({len(evals)}) | "
        + " | ".join(f"{mean['informativeness/' + f]:.2f}" for f in FACTORS)
        + f" | {mean['neg_elbo']:,.0f} | {mean['kl']:.0f} | {sum(e['kl'] < 1 for e in evals)} |"
    )

probed = {name: evals for name, evals in groups.items() if all("probe_informativeness" in e for e in evals)}
if probed:
    print("\nflexible probe (probe_informativeness/<factor>):\n")
    print("| cell | " + " | ".join(FACTORS) + " | targeted mean |")
    print("|---|" + "---:|" * (len(FACTORS) + 1))
    for name, evals in probed.items():
        mean = {f: statistics.mean(e[f"probe_informativeness/{f}"] for e in evals) for f in FACTORS}
        low = {f: min(e[f"probe_informativeness/{f}"] for e in evals) for f in FACTORS}
        cells = " | ".join(f"{mean[f]:.2f} (min {low[f]:.2f})" for f in FACTORS)
        print(f"| {name} ({len(evals)}) | {cells} | {statistics.mean(e['probe_informativeness'] for e in evals):.3f} |")
