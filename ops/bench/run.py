"""Gate and train-step benchmarks: JSON + a printed table, ratios measured in the same run.

    python ops/bench/run.py [--quick] [--device cpu|cuda] [--out bench.json]

Needs only PyTorch and this package (no Ray, DALI or MLflow), so it also runs on a bare GPU box.
Every number is a ratio against a baseline timed interleaved in the same process:
- gate: fused gate vs the naive composition ``mask*z + (1-mask)*z.detach()`` and vs plain
  reparameterisation (``vs_naive`` > 1 means the naive one is slower);
- step: gvae-dist's step (gated / un-gated, fp32 / bf16) vs a plain fp32 PyTorch loop over the
  same network and batch (``speedup_vs_plain``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gvae_dist.bench.gate import run_gate  # noqa: E402
from gvae_dist.bench.step import StepSpec, run_regularizer_share, run_step  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: few sizes, few rounds")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rounds = 3 if args.quick else 15
    if args.quick:
        gate = run_gate(batches=(64,), latents=(10,), modes=("eager",), rounds=rounds, device=args.device)
        base = StepSpec(batch=16)
        specs = [base, StepSpec(batch=16, gated=False)]
    else:
        gate = run_gate(modes=("eager",), rounds=rounds, device=args.device)
        base = StepSpec()
        specs = [base, StepSpec(gated=False), StepSpec(precision="bf16"),
                 StepSpec(precision="bf16", gated=False), StepSpec(precision="bf16", channels_last=True)]
    step = run_step(specs, base, rounds=rounds, device=args.device)
    share = run_regularizer_share(batches=(16,) if args.quick else (64, 256), rounds=rounds, device=args.device)
    report = {"device": args.device, "quick": args.quick, "gate": gate, "step": step, "share": share}
    print(f"{'step config':<48}{'img/s':>10}{'vs plain':>10}")
    for r in step:
        print(f"{r['name']:<48}{r['images_per_s']:>10.0f}{r['speedup_vs_plain'] or 1.0:>10.2f}")
    print(f"{'share of a train step':<48}{'':>10}{'share':>10}")
    for r in share:
        print(f"{r['name'] + ' B' + str(r['batch']):<48}{'':>10}{r['share_of_step']:>10.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return report


if __name__ == "__main__":
    main()
