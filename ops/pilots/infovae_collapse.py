"""Table of the InfoVAE collapse pilot (ops/pilots/infovae_collapse.sh): training KL per run."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pilot_infovae")
print("| run | KL @250 | KL @500 | KL @1500 | recon @1500 | collapsed (KL < 1) |")
print("|---|---:|---:|---:|---:|---|")
for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").exists()):
    rows = {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").open()) if "kl" in r}
    last = rows[max(rows)]
    early = [f"{rows[s]['kl']:.1f}" if s in rows else "-" for s in (250, 500)]
    print(
        f"| {run.name} | {early[0]} | {early[1]} | {last['kl']:.1f} | {last['recon']:.0f} | "
        f"{'yes' if last['kl'] < 1 else 'no'} |"
    )
