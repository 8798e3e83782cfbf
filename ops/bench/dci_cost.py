"""Time DCI (and the whole evaluate_codes) at the issue's size: 10,000 train / 5,000 test codes,
10 code dims, 6 factors (3 discrete, 3 continuous), for each importance method.

    .venv/bin/python ops/bench/dci_cost.py [--n-train 10000] [--n-test 5000] [--method gbt ...] [--probe]

Codes are a noisy linear mix of the factors (so the regressors have something to learn). Prints
seconds per method and the load average, and writes JSON with --out. ``--probe`` also times the
flexible probe (``evaluate.probe_informativeness``) as shipped, its continuous factors in one
multi-output fit, and the same probe fitted one factor at a time, each as a ratio to the trees'
DCI (gbt) timed in the same run: ``--n-train 2000 --n-test 1000 --probe`` is a study cell's
evaluation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gvae_dist.evaluate import METHODS, dci, evaluate_codes, probe_informativeness  # noqa: E402


def synthetic_codes(n: int, seed: int = 0, n_codes: int = 10):
    rng = np.random.default_rng(seed)
    discrete = [True, True, True, False, False, False]
    f_NF = np.stack(
        [
            rng.integers(0, 4, n),
            rng.integers(0, 3, n),
            rng.integers(0, 5, n),
            rng.uniform(-1, 1, n),
            rng.uniform(-1, 1, n),
            rng.uniform(-1, 1, n),
        ],
        1,
    ).astype(float)
    mix_FC = rng.normal(size=(6, n_codes)) * (rng.uniform(size=(6, n_codes)) < 0.3)
    codes = f_NF @ mix_FC + 0.3 * rng.normal(size=(n, n_codes))
    return codes, f_NF, discrete


def _timed(fn) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def probe_rows(xtr, ftr, xte, fte, discrete) -> list[dict]:
    """Seconds and informativeness of the trees' DCI (the baseline), the flexible probe as shipped
    and the probe one factor at a time, all on one process's cores (n_jobs=1, as a study cell)."""
    trees_s, trees = _timed(lambda: dci(xtr, ftr, xte, fte, discrete, "gbt", 0, n_jobs=1))
    joint_s, joint = _timed(lambda: probe_informativeness(xtr, ftr, xte, fte, discrete, 0, n_jobs=1))
    single = [
        _timed(lambda j=j: probe_informativeness(xtr, ftr[:, [j]], xte, fte[:, [j]], [discrete[j]], 0, n_jobs=1))
        for j in range(ftr.shape[1])
    ]
    per_s = sum(sec for sec, _ in single)
    rows = []
    for name, sec, scores in [
        ("trees (gbt, baseline)", trees_s, [p["informativeness"] for p in trees["per_factor"]]),
        ("probe, shipped", joint_s, [p["informativeness"] for p in joint["per_factor"]]),
        ("probe, per factor", per_s, [out["per_factor"][0]["informativeness"] for _, out in single]),
    ]:
        rows.append({"probe": name, "seconds": sec, "ratio_to_trees": sec / trees_s, "informativeness": scores})
        print(
            f"{name:22s} {len(xtr)}/{len(xte)} codes: {sec:6.1f} s = {sec / trees_s:5.2f} x the trees; "
            f"informativeness {' '.join(f'{v:.2f}' for v in scores)}",
            flush=True,
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=5_000)
    ap.add_argument("--method", action="append", choices=METHODS)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--probe", action="store_true", help="also time the flexible probe against the trees")
    args = ap.parse_args(argv)
    codes, f_NF, discrete = synthetic_codes(args.n_train + args.n_test)
    tr, te = slice(0, args.n_train), slice(args.n_train, None)
    rows = []
    for method in args.method or ["gbt"]:
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        out = evaluate_codes(
            codes[tr],
            f_NF[tr],
            codes[te],
            f_NF[te],
            [f"f{j}" for j in range(6)],
            discrete,
            method=method,
            partitions=[("a", 4), ("b", 4), ("c", 2)],
            seed=0,
        )
        sec = time.perf_counter() - t0
        rows.append(
            {
                "method": method,
                "n_train": args.n_train,
                "n_test": args.n_test,
                "factors": 6,
                "seconds": sec,
                "load_before": load0,
                "cpus": os.cpu_count(),
                "disentanglement": out["dci"]["disentanglement"],
            }
        )
        print(
            f"{method:7s} {args.n_train}/{args.n_test} codes, 6 factors: {sec:6.1f} s "
            f"(load average before {load0:.2f}, {os.cpu_count()} CPUs)",
            flush=True,
        )
    if args.probe:
        rows += probe_rows(codes[tr], f_NF[tr], codes[te], f_NF[te], discrete)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
