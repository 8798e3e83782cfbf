"""Is held-out informativeness limited by the probe's sample? (docs/faces.md, "Probe size").

For each run directory: encode 15,000 held-out faces (the run's own eval seed stream,
``data.num_eval=15000``), fit the DCI probes (the run's ``eval.method``) on the first 1,000 /
2,000 / 4,000 / 10,000 codes and score every fit on the same last 5,000. Prints one row per run
and fitting size: the targeted factors' test informativeness and the expression mean.

python ops/pilots/probe_size.py runs/pilot_expression/px32_s0 runs/pilot_expression/px64_s0 ...
"""

import sys
from pathlib import Path

import numpy as np
import torch

from gvae_dist.data.loader import load_eval_arrays
from gvae_dist.encode import load_model
from gvae_dist.eval_runner import encode
from gvae_dist.evaluate import dci

SIZES = (1000, 2000, 4000, 10000)
TEST = 5000
TARGETED = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
EXPRESSION = ["mouth", "eyes", "brow"]

torch.set_num_threads(2)
print("| run | fitting codes | " + " | ".join(TARGETED) + " | expression mean |")
print("|---|---:|" + "---:|" * (len(TARGETED) + 1))
for arg in sys.argv[1:]:
    run = Path(arg)
    _, cfg, model = load_model(run)
    cfg = cfg.replace({"data.num_eval": max(SIZES) + TEST})
    images, factors, info = load_eval_arrays(cfg)
    codes = encode(model, images, 256, torch.device("cpu"))
    cols = [info.factor_names.index(f) for f in TARGETED]
    discrete = [info.factor_discrete[c] for c in cols]
    test_codes, test_factors = codes[-TEST:], factors[-TEST:, cols]
    for n in SIZES:
        result = dci(
            codes[:n], factors[:n, cols], test_codes, test_factors, discrete, cfg.eval.method, cfg.run.seed, n_jobs=2
        )
        scores = {f: p["informativeness"] for f, p in zip(TARGETED, result["per_factor"])}
        cells = " | ".join(f"{scores[f]:.2f}" for f in TARGETED)
        mean = np.mean([scores[f] for f in EXPRESSION])
        print(f"| {run.name} | {n:,} | {cells} | {mean:.2f} |", flush=True)
