"""Can the presets' decoder render a factor within the budget? (docs/faces.md, after the
supervised encoder probe).

Trains the beta presets' decoder network (channels 32-64-64-128, hidden 512, 32 px) as a renderer
from the nine true, standardised factors to the face (Gaussian likelihood, sigma 0.1, as the
presets), with the optimiser and schedule of `configs/faces_beta_ungated.yaml` (AdamW, cosine from
3e-3, 200 warm-up steps, batch 64, 3,000 steps) on 20,000 faces of `data.seed=1` (tuning data).
Then, on 3,000 held-out faces: the reconstruction loss with the true factors, and the nats lost
when one factor is replaced by another face's value (the decoder's own factor effect; the
renderer's is in the table at the top). A factor the trained decoder draws no differently when it
changes is one an encoder gains nothing by encoding.

python ops/pilots/decoder_probe.py [FEATURE_SCALE] [STEPS] [refine]

``refine``: the decoder with `model.refine_channels: 32`: the last transposed convolution outputs 32
channels instead of the image's 3, then a ReLU and a 3x3 convolution at full resolution draw the
image (capacity where the small features are drawn).
"""

import sys

import numpy as np
import torch
from probe_setup import fit, setup

from gvae_dist.model import Decoder, layer_channels
from gvae_dist.objective import reconstruction_loss

s = setup()
refine = len(sys.argv) > 3 and sys.argv[3] == "refine"
net = Decoder(3, layer_channels(32, s.cfg.model.channels), s.cfg.model.hidden, s.z_tr.shape[1], 32 if refine else 0)
fit(net, s, lambda idx: reconstruction_loss(net(s.z_tr[idx]), s.x_tr[idx], "gaussian", 0.1).mean(), "nll")


def nll(z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        chunks = [
            reconstruction_loss(net(z[i : i + 500]), s.x_te[i : i + 500], "gaussian", 0.1)
            for i in range(0, len(z), 500)
        ]
    return torch.cat(chunks).numpy()


base = nll(s.z_te)
what = f"feature scale {s.scale}, {s.steps} steps" + (", refine" if refine else "")
print(f"{what}: held-out reconstruction {base.mean():,.0f} nats with the true factors")
perm = torch.from_numpy(np.random.default_rng(0).permutation(len(s.z_te)))
for j, name in enumerate(s.train.factor_names):
    z = s.z_te.clone()
    z[:, j] = s.z_te[perm, j]
    print(f"  {name:10s} resampled: +{(nll(z) - base).mean():,.0f} nats", flush=True)
