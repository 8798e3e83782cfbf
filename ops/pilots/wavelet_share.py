"""Would a Gaussian with one calibrated sigma per wavelet scale change expression's share of the
loss? (docs/faces.md, "Where issue 12's bar stands"). For a trained run: its reconstruction
residual's RMSE per scale of an orthonormal Haar transform (512 fresh faces), then per targeted
factor the nats lost when only that factor is resampled (256 bases, as `data factor-effect`),
under sigma 0.1 everywhere and under the per-scale sigmas; shares are relative to mean pose.

python ops/pilots/wavelet_share.py RUN_DIR FEATURE_SCALE
"""

import sys
from pathlib import Path

import numpy as np
import torch

from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.synthetic import FACTOR_SPECS, render, sample_factors
from gvae_dist.encode import load_model

torch.set_num_threads(1)


def haar(x):
    """Orthonormal Haar transform of ``x [N, C, H, W]`` down to 4x4: [(scale name, coefficients)]."""
    bands = []
    ll = x
    while ll.shape[-1] > 4:
        a, b = ll[..., 0::2, 0::2], ll[..., 0::2, 1::2]
        c, d = ll[..., 1::2, 0::2], ll[..., 1::2, 1::2]
        bands.append(
            (f"detail{ll.shape[-1]}", np.stack([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], 1))
        )
        ll = (a + b + c + d) / 2
    bands.append(("ll4", ll))
    return bands


def img(a):
    """uint8 ``[N, H, W, C]`` -> float64 ``[N, C, H, W]`` in [0, 1], as the model sees it."""
    return to_float_nchw(torch.from_numpy(a)).double().numpy()


run = Path(sys.argv[1])
fs = float(sys.argv[2])
_, cfg, model = load_model(run)
size = cfg.data.image_size
# per-scale residual RMSE of the trained model on faces of this feature scale
x = render("faces", sample_factors("faces", 512, 7), size, fs)
with torch.no_grad():
    model.eval()
    xt = to_float_nchw(torch.from_numpy(x))
    mu, _ = model.encode(xt)
    rec = torch.sigmoid(model.decode(mu)).numpy().astype(np.float64)
res = haar(img(x) - rec)
sig = {n: float(np.sqrt((c**2).mean())) for n, c in res}
print("residual RMSE per scale:", {k: round(v, 4) for k, v in sig.items()})
num = 256
base_NF = sample_factors("faces", num, 0)
other = sample_factors("faces", num, 1)
base = img(render("faces", base_NF, size, fs))
names = [s.name for s in FACTOR_SPECS["faces"]]
rows = []
for j, n in enumerate(names[:6]):
    ch = base_NF.copy()
    ch[:, j] = other[:, j]
    d = haar(img(render("faces", ch, size, fs)) - base)
    uni = sum(float((c**2).sum(axis=tuple(range(1, c.ndim))).mean()) for _, c in d) / (2 * 0.1**2)
    cal = sum(float((c**2).sum(axis=tuple(range(1, c.ndim))).mean()) / (2 * sig[b] ** 2) for b, c in d)
    rows.append((n, uni, cal))
pose_u = np.mean([r[1] for r in rows[:3]])
pose_c = np.mean([r[2] for r in rows[:3]])
for n, u, c in rows:
    print(
        f"{n:6s} sigma 0.1: {u:6.0f} nats, share {u / pose_u:.2f} | per-scale sigma: {c:6.0f}, share {c / pose_c:.2f}"
    )
