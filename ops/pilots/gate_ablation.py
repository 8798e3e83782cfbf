"""The ablation table of ops/pilots/gate_ablation.sh: per arm, the seed-paired gated - un-gated
differences (mean over the seeds) and held-out informativeness per targeted factor."""

import json
import statistics
import sys
from pathlib import Path

FACTORS = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pilot_gate_ablation")


def evals(arm: Path, variant: str) -> dict[int, dict]:
    out = {}
    for path in sorted(arm.glob(f"runs/faces_beta_{variant}__*/result.json")):
        result = json.loads(path.read_text())
        out[result["config"]["run"]["seed"]] = result["eval"]
    return out


def dci(e: dict) -> dict[str, float]:
    d, c, i = e["disentanglement"], e["completeness"], e["informativeness"]
    return {"D": d, "C": c, "I": i, "mean": (d + c + i) / 3, "purity": e["partition_purity"]}


print("| arm | seeds | Δ D | Δ C | Δ I | Δ mean(D,C,I) | Δ purity | " + " | ".join(FACTORS) + " | -ELBO |")
print("|---|---|" + "---:|" * (5 + len(FACTORS) + 1))
for arm in sorted(p for p in root.iterdir() if p.is_dir()):
    gated, ungated = evals(arm, "gated"), evals(arm, "ungated")
    seeds = sorted(set(gated) & set(ungated))
    if not seeds:
        continue
    delta = {
        k: statistics.mean(dci(gated[s])[k] - dci(ungated[s])[k] for s in seeds)
        for k in ("D", "C", "I", "mean", "purity")
    }
    info = [statistics.mean(gated[s][f"informativeness/{f}"] for s in seeds) for f in FACTORS]
    elbo = statistics.mean(gated[s]["neg_elbo"] for s in seeds)
    print(
        f"| {arm.name} | {','.join(map(str, seeds))} | "
        + " | ".join(f"{delta[k]:+.3f}" for k in delta)
        + " | "
        + " | ".join(f"{v:.2f}" for v in info)
        + f" | {elbo:,.0f} |"
    )
