"""How large the gated and un-gated codes are: per partition, the spread of the posterior means
across images (std over 512 fresh faces, factor seed 999, median over the partition's dims) and
the mean posterior sigma, each a mean over the cell's seeds. The prior's spread is 1; a code whose
spread is far below it has shrunk, and spread / sigma is how many positions it can tell apart.
Raw encoder means (before `model.center_codes`). docs/study.md, "The gated codes' scale":
python ops/pilots/code_scale.py runs/study_imported_beta
Any argument may also be a single run directory (docs/faces.md: `runs/pilot_expression/<run>`);
the last column per partition is its KL in nats per image (summed over its dims)."""

import sys
from pathlib import Path

import numpy as np
import torch

from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.synthetic import generate
from gvae_dist.encode import load_model
from gvae_dist.plots import kl_per_dim

torch.set_num_threads(1)
runs = []
for arg in sys.argv[1:] or ["runs/study_imported_beta"]:
    root = Path(arg)
    runs += sorted(p.parent for p in root.glob("runs/*/result.json")) if (root / "runs").is_dir() else [root]
images: dict[tuple[int, float], torch.Tensor] = {}
cells: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
for run in runs:
    _, cfg, model = load_model(run)
    key = (cfg.data.image_size, cfg.data.feature_scale)
    if key not in images:
        faces = generate("faces", 512, 999, key[0], feature_scale=key[1]).images
        images[key] = to_float_nchw(torch.from_numpy(faces))
    with torch.no_grad():
        mu, logvar = model.encoder(images[key])
    spread, sigma = mu.std(0).numpy(), torch.exp(0.5 * logvar).mean(0).numpy()
    kl = kl_per_dim(mu.numpy(), logvar.numpy())
    cell, start = cells.setdefault(run.name.rsplit("__seed", 1)[0], {}), 0
    for p in cfg.partitions:
        dims = slice(start, start + p.size)
        cell.setdefault(p.name, []).append(
            (float(np.median(spread[dims])), float(np.median(sigma[dims])), float(kl[dims].sum()))
        )
        start += p.size
names = list(dict.fromkeys(name for cell in cells.values() for name in cell))
print("| cell (seeds) | " + " | ".join(f"{n} spread | {n} sigma | {n} KL" for n in names) + " |")
print("|---|" + "---:|" * (3 * len(names)))
for cell_name, cell in cells.items():
    seeds = len(next(iter(cell.values())))
    row = []
    for n in names:
        vals = cell.get(n, [])
        row += (
            [
                f"{np.mean([v[0] for v in vals]):.3f}",
                f"{np.mean([v[1] for v in vals]):.4f}",
                f"{np.mean([v[2] for v in vals]):.1f}",
            ]
            if vals
            else ["", "", ""]
        )
    print(f"| {cell_name} ({seeds}) | " + " | ".join(row) + " |")
