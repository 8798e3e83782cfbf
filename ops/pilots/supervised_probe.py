"""Can the presets' encoder see a factor at all? (docs/faces.md, "KL warm-up" and after).

Trains the beta presets' encoder network (channels 32-64-64-128, hidden 512, 32 px) as a plain
supervised regressor from faces to their nine standardised factors (MSE on the posterior-mean
head, no decoder, no KL), with the optimiser and schedule of `configs/faces_beta_ungated.yaml`
(AdamW, cosine from 3e-3, 200 warm-up steps, batch 64, 3,000 steps), on 20,000 training faces of
`data.seed=1` (tuning data); prints held-out 1 - NRMSE per factor on 3,000 faces of the eval seed
stream, the measure the DCI informativeness uses. If the encoder reads a factor here but the VAE's
code does not, what keeps it out is the unsupervised objective, not what the network can see.

python ops/pilots/supervised_probe.py [FEATURE_SCALE] [STEPS]
"""

import numpy as np
import torch
from probe_setup import fit, setup

from gvae_dist.model import Encoder, layer_channels

s = setup()
net = Encoder(3, layer_channels(32, s.cfg.model.channels), s.cfg.model.hidden, s.z_tr.shape[1])
fit(net, s, lambda idx: (net(s.x_tr[idx])[0] - s.z_tr[idx]).square().mean(), "mse")
with torch.no_grad():
    pred = torch.cat([net(s.x_te[i : i + 500])[0] for i in range(0, len(s.x_te), 500)]).numpy() * s.std + s.mean
rmse = np.sqrt(((pred - s.test.factors) ** 2).mean(0))
scores = np.maximum(0.0, 1.0 - rmse / s.test.factors.std(0))
print(f"feature scale {s.scale}, {s.steps} steps: held-out 1 - NRMSE per factor")
print(" | ".join(f"{n} {v:.2f}" for n, v in zip(s.train.factor_names, scores)))
