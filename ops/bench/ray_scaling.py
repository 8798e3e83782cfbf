"""Images/s of the train loop: plain process vs Ray Train with 1 and 2 workers at equal cores.

    .venv/bin/python ops/bench/ray_scaling.py [--cores 2] [--steps 80] [--set key=value ...]

Each case trains the same config (64x64 reference net, global batch 64, no tracking, no eval)
in a fresh output dir; throughput is the median (and the best) of ``perf/images_per_s`` over
the logged intervals after the first (warm-up), which exclude checkpoint/report time; the best
interval is the less contended estimate on a shared machine. Wall time includes start-up. Cases: plain (1
process x C threads), ray-1 (1 worker x C CPUs/threads),
ray-N (C workers x 1 CPU/thread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASE = ["optim.batch_size=64", "eval.at_end=false", "tracking.enabled=false", "run.log_every=10"]


def run(case: str, cores: int, steps: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{case}-"))
    sets = [*BASE, f"optim.steps={steps}", f"run.checkpoint_every={steps}", f"run.output_dir={out}", *extra]
    if case == "plain":
        sets += [f"run.threads={cores}"]
    elif case == "ray-1":
        sets += ["distributed.workers=1", f"distributed.cpus_per_worker={cores}", f"run.threads={cores}"]
    else:
        sets += [f"distributed.workers={cores}", "distributed.cpus_per_worker=1", "run.threads=1"]
    cmd = [sys.executable, "-m", "gvae_dist.cli", "train", *[a for s in sets for a in ("--set", s)]]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "gvae" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["perf/images_per_s"] for r in rows[1:]]
    return {"case": case, "median": statistics.median(rates), "best": max(rates), "wall_s": wall, "out": str(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()
    for case in ("plain", "ray-1", f"ray-{args.cores}"):
        r = run(case, args.cores, args.steps, args.extra)
        print(
            f"{r['case']:>6}: median {r['median']:5.0f} img/s  best {r['best']:5.0f} img/s  wall {r['wall_s']:5.1f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
