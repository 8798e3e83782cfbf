#!/usr/bin/env python
"""Gate and train-step benchmarks on one GPU in under 5 minutes, with nothing but PyTorch.

    python ops/bench/gpu_bench.py                     # one CUDA GPU, full size (~3-4 min)
    python ops/bench/gpu_bench.py --device cpu --quick   # CI-sized, any machine
    python ops/bench/gpu_bench.py --peak-tflops 989   # state the peak if the table lacks the GPU

Run from a copy of the repository; it imports only the PyTorch-only parts of ``gvae_dist``
(model, gate, objective, pairing, ``gvae_dist.bench``), so a bare GPU box without Ray, DALI,
MLflow, Accelerate, YAML or numpy is enough. Reports, as a table and as JSON (``--out``):

- gate: fused vs plain vs naive forward+backward, eager and ``torch.compile``, with peak memory;
- step: images/s of the gvae-dist train step (gated and un-gated, beta / InfoVAE / DIP-II, fp32
  and bf16 autocast, channels_last, ``torch.compile``) and the plain fp32 loop, interleaved;
  achieved FLOP/s = FLOPs of one forward+backward of the network (``torch.utils.flop_counter``)
  x steps/s, against the device's peak for the step's math (bf16 tensor cores, or TF32/FP32)
  and against a large matmul measured on the same device (a practical ceiling).

A time budget (``--budget-s``, default 270 s) bounds the run: parts that would start after it
is spent are listed under ``skipped`` instead of run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo, installed or not

import torch  # noqa: E402

from gvae_dist.bench import format_table  # noqa: E402
from gvae_dist.bench.gate import run_gate  # noqa: E402
from gvae_dist.bench.harness import peak_memory  # noqa: E402
from gvae_dist.bench.step import GvaeStep, StepSpec, run_step, step_flops  # noqa: E402

# Dense (no sparsity) spec-sheet peaks in TFLOP/s: (bf16 tensor core, tf32 tensor core, fp32).
PEAKS_TFLOPS = {
    "H200": (989.0, 494.0, 67.0),
    "H100 SXM": (989.0, 494.0, 67.0),
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100 NVL": (835.0, 418.0, 60.0),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L4": (121.0, 60.0, 30.3),
    "A10": (125.0, 62.5, 31.2),
}


def device_peaks(device: torch.device, override_tflops: float | None) -> dict:
    """Spec-sheet peaks for this device (``None`` when unknown)."""
    if override_tflops:
        return {"bf16": override_tflops * 1e12, "tf32": None, "fp32": None, "source": "--peak-tflops"}
    if device.type != "cuda":
        return {"bf16": None, "tf32": None, "fp32": None, "source": "unknown (CPU)"}
    name = torch.cuda.get_device_name(device)
    for key, (bf16, tf32, fp32) in PEAKS_TFLOPS.items():
        if all(part in name for part in key.split()):
            return {"bf16": bf16 * 1e12, "tf32": tf32 * 1e12, "fp32": fp32 * 1e12, "source": key}
    return {"bf16": None, "tf32": None, "fp32": None, "source": f"unknown ({name})"}


def measured_matmul_flops(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """FLOP/s of an ``n x n`` matmul on ``device``: a practical ceiling for dense math."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(10):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def step_specs(batch: int, quick: bool, compile_ok: bool) -> list[StepSpec]:
    specs = []
    for obj in ("beta", "infovae", "dip2"):
        for gated in (True, False):
            for prec in ("fp32", "bf16"):
                if quick and (obj != "beta" or prec == "bf16" and not gated):
                    continue
                specs.append(StepSpec(objective=obj, batch=batch, gated=gated, precision=prec))
    if not quick:
        specs += [
            StepSpec(batch=batch, channels_last=True),
            StepSpec(batch=batch, precision="bf16", channels_last=True),
        ]
    if compile_ok:
        specs += [StepSpec(batch=batch, precision="bf16", channels_last=True, compile=True)]
    return specs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="CI-sized: tiny shapes, few rounds, no compile")
    p.add_argument("--out", default="bench-results/gpu_bench.json", help="JSON report path")
    p.add_argument("--budget-s", type=float, default=270.0, help="stop starting new parts after this")
    p.add_argument("--peak-tflops", type=float, help="device peak (bf16 dense) when the table lacks it")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device; use --device cpu", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    quick = args.quick
    peaks = device_peaks(device, args.peak_tflops)
    mm_n = 512 if quick else 8192
    meta = {
        "device": str(device),
        "torch": torch.__version__,
        "quick": quick,
        "peaks": peaks,
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_flops_fp32": measured_matmul_flops(device, torch.float32, mm_n),
        "matmul_flops_bf16": measured_matmul_flops(device, torch.bfloat16, mm_n),
    }
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    results, skipped = [], []

    def within_budget(part: str) -> bool:
        if time.perf_counter() - t_start < args.budget_s:
            print(f"[gpu_bench] {part} ({time.perf_counter() - t_start:.0f}s)", file=sys.stderr, flush=True)
            return True
        skipped.append(part)
        return False

    compile_ok = not quick
    gate_batches = (64,) if quick else (64, 256, 1024, 4096)
    gate_latents = (10,) if quick else (10, 64, 256)
    if within_budget("gate eager"):
        results += run_gate(gate_batches, gate_latents, modes=("eager",), rounds=3 if quick else 15, device=device)
    if compile_ok and within_budget("gate compile"):
        for B, D in ((256, 10), (4096, 256)):  # two shapes: each compile costs seconds
            results += run_gate((B,), (D,), modes=("compile",), rounds=15, device=device)

    for batch in (8,) if quick else (64, 256):
        if not within_budget(f"step B={batch}"):
            continue
        specs = step_specs(batch, quick, compile_ok and batch == 256)
        rows = run_step(specs, specs[0], rounds=3 if quick else 20, device=device)
        flops = step_flops(StepSpec(batch=batch), device)
        for row in rows:
            achieved = flops / (row["ms_per_step"] / 1e3)
            bf16 = row.get("precision") == "bf16"
            peak = peaks["bf16"] if bf16 else (peaks["tf32"] if torch.backends.cudnn.allow_tf32 else peaks["fp32"])
            measured = meta["matmul_flops_bf16" if bf16 else "matmul_flops_fp32"]
            row.update(
                flops_per_step=flops,
                achieved_tflops=achieved / 1e12,
                frac_of_peak=achieved / peak if peak else None,
                frac_of_matmul=achieved / measured,
            )
            if device.type == "cuda" and row["name"] != "plain":
                spec = StepSpec(**{k: row[k] for k in StepSpec.__dataclass_fields__})
                step = GvaeStep(spec, device)
                step()
                row["peak_bytes"] = peak_memory(step, device)
        results += rows

    report = {
        "meta": {**meta, "seconds": round(time.perf_counter() - t_start, 1), "skipped": skipped},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(format_table(report))
    step_rows = [r for r in results if r["suite"] == "step"]
    print("\n== step FLOP/s")
    for r in step_rows:
        frac = f"{100 * r['frac_of_peak']:.1f}% of peak" if r["frac_of_peak"] else "peak unknown"
        print(
            f"{r['name']:45s} {r['images_per_s']:9.0f} img/s  {r['achieved_tflops']:8.3f} TFLOP/s  "
            f"{frac}  {100 * r['frac_of_matmul']:.1f}% of measured matmul"
        )
    print(f"[gpu_bench] {report['meta']['seconds']}s; wrote {out}" + (f"; skipped {skipped}" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
