"""The table of ops/pilots/expression_levers.sh: held-out informativeness per targeted factor."""

import json
import sys
from pathlib import Path

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/pilot_expression")
factors = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
print("| run | " + " | ".join(factors) + " | -ELBO (nats) | KL |")
print("|---|" + "---:|" * (len(factors) + 2))
for metrics in sorted(out.glob("*/metrics.json")):
    m = json.loads(metrics.read_text())
    e, t = m["eval"], m.get("train", {})
    elbo = e.get("neg_elbo", e.get("elbo", float("nan")))
    cells = [f"{e[f'informativeness/{f}']:.2f}" for f in factors]
    print(f"| {metrics.parent.name} | " + " | ".join(cells) + f" | {elbo:,.0f} | {e.get('kl', float('nan')):.1f} |")
