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
from pathlib import Path

import numpy as np
import torch

from gvae_dist.data.loader import load_eval_arrays
from gvae_dist.encode import load_model
from gvae_dist.eval_runner import encode
from gvae_dist.evaluate import dci, probe_informativeness
from gvae_dist.model import build_model

FIT = (2000, 10000)
TEST = 5000
TARGETED = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
EXPRESSION = ["mouth", "eyes", "brow"]

torch.set_num_threads(2)
print("| run | probe | fitting codes | " + " | ".join(TARGETED) + " | expression mean |")
print("|---|---|---:|" + "---:|" * (len(TARGETED) + 1))
for arg in sys.argv[1:]:
    untrained = arg.startswith("init:")
    run = Path(arg.removeprefix("init:"))
    _, cfg, model = load_model(run)
    if untrained:
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg, model.in_channels).eval()
    cfg = cfg.replace({"data.num_eval": max(FIT) + TEST})
    images, factors, info = load_eval_arrays(cfg)
    codes = encode(model, images, 256, torch.device("cpu"))
    cols = [info.factor_names.index(f) for f in TARGETED]
    discrete = [info.factor_discrete[c] for c in cols]
    test_codes, test_factors = codes[-TEST:], factors[-TEST:, cols]
    label = ("untrained " if untrained else "") + f"{run.parent.name}/{run.name}"
    rows = [
        (
            "trees",
            FIT[0],
            dci(
                codes[: FIT[0]],
                factors[: FIT[0], cols],
                test_codes,
                test_factors,
                discrete,
                "gbt",
                cfg.run.seed,
                n_jobs=2,
            ),
        )
    ]
    for n in FIT:
        rows.append(
            (
                "mlp",
                n,
                probe_informativeness(
                    codes[:n], factors[:n, cols], test_codes, test_factors, discrete, cfg.run.seed, n_jobs=2
                ),
            )
        )
    for probe, n, result in rows:
        scores = {f: p["informativeness"] for f, p in zip(TARGETED, result["per_factor"])}
        cells = " | ".join(f"{scores[f]:.2f}" for f in TARGETED)
        mean = np.mean([scores[f] for f in EXPRESSION])
        print(f"| {label} | {probe} | {n:,} | {cells} | {mean:.2f} |", flush=True)
