"""Draw docs/img/faces_factors.png: the built-in faces with one row per factor swept across its
range (every other factor at the middle of its range), for two feature scales side by side.

    .venv/bin/python ops/figures/face_factors.py [--image-size 64] [--steps 8]
                                                 [--feature-scale 1.0 0.5] [--out FILE.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gvae_dist.data.synthetic import FACTOR_SPECS, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def sweep_grid(image_size: int, steps: int, feature_scale: float) -> np.ndarray:
    """uint8 [F * S, steps * S, 3]: row f sweeps factor f from low to high."""
    specs = FACTOR_SPECS["faces"]
    middle_F = np.array([(s.low + s.high) / 2 for s in specs])
    rows = []
    for j, spec in enumerate(specs):
        factors = np.tile(middle_F, (steps, 1))
        factors[:, j] = np.linspace(spec.low, spec.high, steps)
        rows.append(np.concatenate(list(render("faces", factors, image_size, feature_scale)), axis=1))
    return np.concatenate(rows, axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=64, choices=[32, 64, 128])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--feature-scale", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--out", default=str(ROOT / "docs" / "img" / "faces_factors.png"))
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    specs = FACTOR_SPECS["faces"]
    panels = len(args.feature_scale)
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 5.4), squeeze=False)
    size = args.image_size
    for ax, scale in zip(axes[0], args.feature_scale):
        ax.imshow(sweep_grid(size, args.steps, scale), interpolation="nearest")
        ax.set_title(f"feature_scale {scale}, {size} px")
        ax.set_yticks([(j + 0.5) * size for j in range(len(specs))])
        ax.set_yticklabels([f"{s.name}\n{s.low:g} .. {s.high:g}" for s in specs], fontsize=8)
        ax.set_xticks([])
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
