"""Gate, train-step and regulariser-share benchmarks (PyTorch only): JSON + a printed table.

    python ops/bench/run.py [--quick] [--device cpu|cuda] [--out bench.json]

The PyTorch-only suites of ``gvae-dist bench`` (``gvae_dist.bench``: gate, step, share), runnable
from a checkout without installing it. The whole set, end to end and scaling included, is
``make bench`` / ``gvae-dist bench``; on a GPU box, ``ops/bench/gpu_bench.py`` adds FLOP/s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gvae_dist.bench import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--suite" not in args:
        args += ["--suite", "gate", "--suite", "step", "--suite", "share"]
    if "--out" not in args:
        args += ["--out", "bench-results/bench-core.json"]
    sys.exit(main(args))
