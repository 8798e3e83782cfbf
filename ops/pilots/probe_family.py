"""Does the code hold what the tree probe does not read? (docs/faces.md, "Probe family").

For each run directory: encode 15,000 held-out faces (the run's own eval seed stream,
``data.num_eval=15000``, as ops/pilots/probe_size.py), then read each targeted factor's test
informativeness on the same last 5,000 codes with disentanglement_lib's probe (boosted trees,
``evaluate.dci``) fitted on the first 2,000 codes, and with the flexible probe
(``evaluate.probe_informativeness``, an MLP) fitted on the first 2,000 and on the first 10,000.
``init:RUN_DIR`` reads the same network at initialisation instead (the run's config and seed, no
training): the control that says how much a probe reads from an untrained encoder.

python ops/pilots/probe_family.py runs/pilot_expression/px32_s0 init:runs/pilot_expression/px32_s0 ...
"""

import sys

import torch
from heldout_codes import TARGETED, heldout_codes, score_cells

from gvae_dist.evaluate import dci, probe_informativeness

FIT = (2000, 10000)
TEST = 5000

torch.set_num_threads(2)
print("| run | probe | fitting codes | " + " | ".join(TARGETED) + " | expression mean |")
print("|---|---|---:|" + "---:|" * (len(TARGETED) + 1))
for arg in sys.argv[1:]:
    h = heldout_codes(arg, max(FIT) + TEST)
    codes, factors, discrete, seed = h.codes, h.factors, h.discrete, h.cfg.run.seed
    test_codes, test_factors = codes[-TEST:], factors[-TEST:]
    label = ("untrained " if h.untrained else "") + f"{h.run.parent.name}/{h.run.name}"
    n = FIT[0]
    rows = [("trees", n, dci(codes[:n], factors[:n], test_codes, test_factors, discrete, "gbt", seed, n_jobs=2))]
    for n in FIT:
        probe = probe_informativeness(codes[:n], factors[:n], test_codes, test_factors, discrete, seed, n_jobs=2)
        rows.append(("mlp", n, probe))
    for probe, n, result in rows:
        print(f"| {label} | {probe} | {n:,} | {score_cells(result)} |", flush=True)
