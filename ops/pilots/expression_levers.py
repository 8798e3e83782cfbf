"""The tables of ops/pilots/expression_levers.sh: held-out informativeness per targeted factor, and
for the runs that carry it the flexible probe's (eval.flexible_probe) with D and purity."""

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

probed = [m for m in sorted(out.glob("*/metrics.json")) if "probe_informativeness" in json.loads(m.read_text())["eval"]]
if probed:
    print("\nflexible probe (probe_informativeness/<factor>), with the trees' D and partition purity:\n")
    print("| run | " + " | ".join(factors) + " | expression mean | D | purity |")
    print("|---|" + "---:|" * (len(factors) + 3))
    for metrics in probed:
        e = json.loads(metrics.read_text())["eval"]
        cells = [f"{e[f'probe_informativeness/{f}']:.2f}" for f in factors]
        expr = sum(e[f"probe_informativeness/{f}"] for f in factors[3:]) / 3
        purity = e.get("partition_purity", float("nan"))
        tail = f" | {expr:.2f} | {e['disentanglement']:.2f} | {purity:.2f} |"
        print(f"| {metrics.parent.name} | " + " | ".join(cells) + tail)
