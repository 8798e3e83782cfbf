"""How much of a study cell's KL is information and how much a constant offset of the codes.

For each run of a study directory, encodes 1,000 freshly rendered faces (factor seed 12345, the
run's image size) and prints, as means over the cell's seeds: the held-out KL per image, the part
of it that a constant shift of the posterior means explains (0.5 * sum_d mean(mu_d)^2, nats that
carry no information), the largest |mean(mu_d)|, and sum_d log(std(mu_d) / mean sigma_d), a
resolution proxy for how much the codes can tell images apart. Study v12's diagnosis in
docs/study.md: python ops/pilots/posterior_offset.py runs/study_combined_rest2_beta"""

import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from gvae_dist.data.synthetic import render, sample_factors
from gvae_dist.encode import load_model
from gvae_dist.eval_runner import encode

torch.set_num_threads(1)
root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/study_combined_rest2_beta")
rows: dict[str, list[tuple[float, float, float, float]]] = {}
images: dict[int, np.ndarray] = {}
factors = sample_factors("faces", 1000, 12345)
for run in sorted(p.parent for p in root.glob("runs/*/result.json")):
    _, cfg, model = load_model(run)
    size = cfg.data.image_size
    if size not in images:
        images[size] = render("faces", factors, size)
    mu, logvar = encode(model, images[size], 256, "cpu", with_logvar=True)
    kl = 0.5 * (mu**2 + np.exp(logvar) - logvar - 1).sum(1).mean()
    offset = 0.5 * (mu.mean(0) ** 2).sum()
    resolution = np.log(mu.std(0) / np.exp(0.5 * logvar).mean(0)).sum()
    rows.setdefault(run.name.rsplit("__seed", 1)[0], []).append((kl, offset, np.abs(mu.mean(0)).max(), resolution))
print("| cell (seeds) | KL | of it a constant offset | max abs(mean mu_d) | sum log(std mu / sigma) |")
print("|---|---:|---:|---:|---:|")
for name, vals in rows.items():
    kl, off, big, res = (statistics.mean(float(v[i]) for v in vals) for i in range(4))
    print(f"| {name} ({len(vals)}) | {kl:.0f} | {off:.0f} ({off / kl:.0%}) | {big:.1f} | {res:.1f} |")
