"""``gvae-dist bench``: the performance benchmarks, as one command.

    gvae-dist bench [--quick] [--suite NAME ...] [--device cpu|cuda] [--out FILE.json]
    make bench            # the same, full size, writes bench-results/bench.json

Suites (each returns rows, see ``harness``; ``--quick`` runs a CI-sized version of each):

- ``gate``      fused gated reparameterisation vs plain vs naive, fwd+bwd time and memory;
- ``step``      train-step images/s: gated vs un-gated per objective, fp32/bf16, eager/compile,
                channels_last, and the plain fp32 loop, interleaved in one process;
- ``share``     share of a train step spent in the regulariser (KL / MMD / DIP) and in the gate;
- ``vs_plain``  the default ``gvae-dist train`` configuration vs the plain loop (target >= 2x);
- ``e2e``       ``train_loop`` on shards and in memory: images/s, data-wait fraction (< 5 %);
- ``precision`` seeded fp32 vs bf16 loss curves;
- ``scaling``   Ray Train 1 vs 2 workers at equal cores vs the single-process loop (< 10 %).

The JSON holds ``meta`` (versions, device, threads, load average), ``results`` (every row) and
``targets`` (each issue target: value, goal, met). ``gate``, ``step`` and ``share`` need only
PyTorch; ``ops/bench/gpu_bench.py`` reuses them on a bare GPU box.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

__all__ = ["SUITES", "run", "targets", "format_table", "main"]

SUITES = ("gate", "step", "share", "vs_plain", "e2e", "precision", "scaling")


def _step_specs(batch: int, full: bool):
    from gvae_dist.bench.step import StepSpec

    specs = []
    for obj in ("beta", "infovae", "dip2"):
        for gated in (True, False):
            specs.append(StepSpec(objective=obj, batch=batch, gated=gated))
            specs.append(StepSpec(objective=obj, batch=batch, gated=gated, precision="bf16"))
    specs += [StepSpec(batch=batch, channels_last=True), StepSpec(batch=batch, precision="bf16", channels_last=True)]
    if full:
        specs += [
            StepSpec(batch=batch, compile=True),
            StepSpec(batch=batch, compile=True, channels_last=True),
            StepSpec(batch=batch, compile=True, precision="bf16"),
            StepSpec(batch=batch, gated=False, compile=True),
        ]
    return specs


def _suite(name: str, quick: bool, device: str) -> list[dict]:
    if name == "gate":
        from gvae_dist.bench.gate import run_gate

        if quick:
            return run_gate(batches=(64,), latents=(10, 64), modes=("eager",), rounds=3, device=device)
        return run_gate(device=device)
    if name == "step":
        from gvae_dist.bench.step import StepSpec, run_step

        if quick:
            from gvae_dist.bench.step import StepSpec as S

            specs = [
                S(batch=8),
                S(batch=8, gated=False),
                S(batch=8, precision="bf16"),
                S(objective="infovae", batch=8),
                S(objective="dip2", batch=8),
            ]
            return run_step(specs, specs[0], rounds=2, device=device)
        rows = []
        for batch in (64, 256):
            rows += run_step(_step_specs(batch, full=True), StepSpec(batch=batch), rounds=12, device=device)
        return rows
    if name == "share":
        from gvae_dist.bench.step import run_regularizer_share

        if quick:
            return run_regularizer_share(batches=(8,), rounds=2, device=device)
        return run_regularizer_share(device=device)
    if device != "cpu":
        raise ValueError(f"suite {name!r} runs train_loop as configured; use --device cpu")
    from gvae_dist.bench import e2e

    if name == "vs_plain":
        if quick:
            return e2e.run_default_vs_plain(rounds=1, interval=1, intervals=2, num_train=256)
        # the default, and the default before this allocator fix (the before/after)
        return e2e.run_default_vs_plain(rounds=5) + e2e.run_default_vs_plain(
            rounds=3, extra=("run.retain_freed_memory=false",)
        )
    if name == "e2e":
        return e2e.run_end_to_end(num=256, interval=1, intervals=2) if quick else e2e.run_end_to_end()
    if name == "precision":
        return e2e.run_precision_match(steps=4, log_every=2) if quick else e2e.run_precision_match()
    if name == "scaling":
        return e2e.run_scaling(interval=1, intervals=2) if quick else e2e.run_scaling()
    raise ValueError(f"unknown suite {name!r}; choose from {', '.join(SUITES)}")


def _meta(quick: bool, device: str) -> dict:
    import torch

    from gvae_dist.bench.harness import load_average

    meta = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "quick": quick,
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_start": load_average(),
    }
    if device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name(device)
    return meta


def run(suites=SUITES, quick: bool = False, device: str = "cpu") -> dict:
    """Run ``suites``; a suite that fails becomes one row with its error (the others still run)."""
    report = {"meta": _meta(quick, device), "results": []}
    for name in suites:
        t0 = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            rows = _suite(name, quick, device)
        except Exception as exc:  # report and go on: one missing backend must not lose the rest
            traceback.print_exc()
            rows = [{"suite": name, "name": "error", "error": f"{type(exc).__name__}: {exc}"}]
        for row in rows:
            row.setdefault("suite", name)
        report["results"] += rows
        report["meta"][f"seconds_{name}"] = round(time.perf_counter() - t0, 1)
    from gvae_dist.bench.harness import load_average

    report["meta"]["load_average_end"] = load_average()
    report["targets"] = targets(report["results"])
    return report


def _pick(rows, suite, **match):
    return [r for r in rows if r.get("suite") == suite and all(r.get(k) == v for k, v in match.items())]


def targets(rows: list[dict]) -> list[dict]:
    """The issue's targets as ``{target, value, goal, met}`` for the suites that ran."""
    out = []

    def add(target, value, goal, met):
        out.append({"target": target, "value": value, "goal": goal, "met": bool(met)})

    for r in _pick(rows, "share", name="gate/fused"):
        add(f"gate share of step (B={r['batch']})", r["share_of_step"], "<= 0.02", r["share_of_step"] <= 0.02)
    for mode in ("eager", "compile"):
        fused = _pick(rows, "gate", name="fused", mode=mode)
        if fused:  # 3% slack: the ratio of two ~100 us timings on a shared machine
            worst = min(fused, key=lambda r: r["naive_over_this"])
            add(
                f"fused gate vs naive ({mode}), worst t_naive/t_fused (B={worst['batch']}, D={worst['latent']})",
                worst["naive_over_this"],
                ">= 1 (no slower)",
                worst["naive_over_this"] >= 0.97,
            )
    for r in _pick(rows, "step"):
        if r.get("gate_overhead") is not None:
            add(f"gated vs un-gated {r['name']}", r["gate_overhead"], "<= 0.03", r["gate_overhead"] <= 0.03)
    for r in _pick(rows, "share"):
        if r["name"] in ("reg/infovae", "reg/dip2"):
            add(
                f"{r['name']} share of step (B={r['batch']})",
                r["share_of_step"],
                "< 0.5 (not dominant)",
                r["share_of_step"] < 0.5,
            )
    for r in _pick(rows, "vs_plain", name="default"):
        if "speedup_vs_plain" in r:
            add("default config vs plain fp32 loop", r["speedup_vs_plain"], ">= 2.0", r["speedup_vs_plain"] >= 2.0)
    for r in _pick(rows, "e2e"):
        if "data_wait_fraction" in r:
            add(
                f"data-wait fraction ({r['name']}, {r['backend']})",
                r["data_wait_fraction"],
                "< 0.05",
                r["data_wait_fraction"] < 0.05,
            )
    for r in _pick(rows, "precision"):
        if "max_rel_diff" in r:
            add(
                "bf16 vs fp32 loss curve, max rel diff",
                r["max_rel_diff"],
                f"<= {r['tolerance']}",
                r["within_tolerance"],
            )
    for r in _pick(rows, "scaling"):
        if r.get("overhead_vs_single") is not None and r["workers"] == 1:
            add(
                "Ray Train (1 worker) overhead vs single process",
                r["overhead_vs_single"],
                "< 0.10",
                r["overhead_vs_single"] < 0.10,
            )
    return out


_COLUMNS = {
    "gate": [
        "mode",
        "batch",
        "latent",
        "name",
        "us_per_fwd_bwd",
        "naive_over_this",
        "plain_over_this",
        "saved_bytes",
        "peak_bytes",
    ],
    "step": ["name", "images_per_s", "speedup_vs_base", "speedup_vs_plain", "gate_overhead", "spread"],
    "share": ["batch", "name", "ms", "step_ms", "share_of_step"],
    "vs_plain": [
        "name",
        "batch",
        "mixed_precision",
        "plain_images_per_s",
        "gvae_images_per_s",
        "speedup_vs_plain",
        "data_wait_fraction",
    ],
    "e2e": ["name", "backend", "batch", "images_per_s", "data_wait_fraction"],
    "precision": [
        "name",
        "steps",
        "max_rel_diff",
        "final_rel_diff",
        "tolerance",
        "fp32_images_per_s",
        "bf16_images_per_s",
    ],
    "scaling": ["name", "workers", "threads", "images_per_s", "overhead_vs_single"],
}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return "-" if v is None else str(v)


def format_table(report: dict) -> str:
    """Plain-text tables, one per suite, then the targets."""
    lines = []
    rows = report["results"]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        srows = [r for r in rows if r["suite"] == suite]
        cols = ["name", "error"] if any("error" in r for r in srows) else _COLUMNS.get(suite, sorted(srows[0]))
        cells = [[_fmt(r.get(c)) for c in cols] for r in srows]
        widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
        lines += [f"== {suite}", "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
        lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in cells]
        lines.append("")
    if report.get("targets"):
        lines.append("== targets")
        for t in report["targets"]:
            lines.append(f"{'MET ' if t['met'] else 'MISS'}  {t['target']}: {_fmt(t['value'])} (goal {t['goal']})")
    return "\n".join(lines)


def add_arguments(p) -> None:
    """The ``bench`` command's flags (shared by ``gvae-dist bench`` and ``python -m``)."""
    p.add_argument("--quick", action="store_true", help="CI-sized run of every suite (seconds, not minutes)")
    p.add_argument("--suite", action="append", choices=SUITES, help="run only these suites (repeatable)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (gate, step, share suites)")
    p.add_argument("--out", default="bench-results/bench.json", help="JSON report path")


def cmd_bench(args) -> int:
    report = run(args.suite or SUITES, quick=args.quick, device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(format_table(report))
    print(f"[bench] wrote {out}")
    return 1 if any(r["name"] == "error" for r in report["results"]) else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gvae_dist.bench", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return cmd_bench(parser.parse_args(argv))
