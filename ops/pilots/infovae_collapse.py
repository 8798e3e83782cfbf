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
    kl = lambda s: f"{rows[s]['kl']:.1f}" if s in rows else "-"  # noqa: E731
    print(f"| {run.name} | {kl(250)} | {kl(500)} | {last['kl']:.1f} | {last['recon']:.0f} | "
          f"{'yes' if last['kl'] < 1 else 'no'} |")
