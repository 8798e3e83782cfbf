"""Time DCI (and the whole evaluate_codes) at the issue's size: 10,000 train / 5,000 test codes,
10 code dims, 6 factors (3 discrete, 3 continuous), for each importance method.

    .venv/bin/python ops/bench/dci_cost.py [--n-train 10000] [--n-test 5000] [--method gbt ...]

Codes are a noisy linear mix of the factors (so the regressors have something to learn). Prints
seconds per method and the load average, and writes JSON with --out.
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

from gvae_dist.evaluate import METHODS, evaluate_codes  # noqa: E402


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=10_000)
    ap.add_argument("--n-test", type=int, default=5_000)
    ap.add_argument("--method", action="append", choices=METHODS)
    ap.add_argument("--out", type=Path)
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
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
