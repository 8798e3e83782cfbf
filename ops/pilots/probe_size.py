"""Is held-out informativeness limited by the probe's sample? (docs/faces.md, "Probe size").

For each run directory: encode 15,000 held-out faces (the run's own eval seed stream,
``data.num_eval=15000``), fit the DCI probes (the run's ``eval.method``) on the first 1,000 /
2,000 / 4,000 / 10,000 codes and score every fit on the same last 5,000. Prints one row per run
and fitting size: the targeted factors' test informativeness and the expression mean.

python ops/pilots/probe_size.py runs/pilot_expression/px32_s0 runs/pilot_expression/px64_s0 ...
"""

import sys

import torch
from heldout_codes import TARGETED, heldout_codes, score_cells

from gvae_dist.evaluate import dci

SIZES = (1000, 2000, 4000, 10000)
TEST = 5000

torch.set_num_threads(2)
print("| run | fitting codes | " + " | ".join(TARGETED) + " | expression mean |")
print("|---|---:|" + "---:|" * (len(TARGETED) + 1))
for arg in sys.argv[1:]:
    h = heldout_codes(arg, max(SIZES) + TEST)
    run, cfg, codes, factors, discrete = h.run, h.cfg, h.codes, h.factors, h.discrete
    test_codes, test_factors = codes[-TEST:], factors[-TEST:]
    for n in SIZES:
        result = dci(
            codes[:n], factors[:n], test_codes, test_factors, discrete, cfg.eval.method, cfg.run.seed, n_jobs=2
        )
        print(f"| {run.name} | {n:,} | {score_cells(result)} |", flush=True)
