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

import sys

import numpy as np
import torch

from gvae_dist.config import load_config
from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.synthetic import generate
from gvae_dist.model import Encoder, layer_channels
from gvae_dist.schedule import learning_rate

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
cfg = load_config("configs/faces_beta_ungated.yaml", [f"optim.steps={steps}"])  # network, optimiser, schedule
torch.manual_seed(0)
torch.set_num_threads(2)
train = generate("faces", 20000, 1, 32, feature_scale=scale)
test = generate("faces", 3000, 1 + 1_000_003, 32, feature_scale=scale)
mean, std = train.factors.mean(0), train.factors.std(0)
x_tr, y_tr = to_float_nchw(torch.from_numpy(train.images)), torch.from_numpy((train.factors - mean) / std).float()
x_te = to_float_nchw(torch.from_numpy(test.images))
net = Encoder(3, layer_channels(32, cfg.model.channels), cfg.model.hidden, y_tr.shape[1])
o = cfg.optim
opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


gen = torch.Generator().manual_seed(0)
for step in range(steps):
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg.optim, step)
    idx = torch.randint(0, len(x_tr), (cfg.optim.batch_size,), generator=gen)
    pred, _ = net(x_tr[idx])
    loss = (pred - y_tr[idx]).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (step + 1) % 500 == 0:
        print(f"step {step + 1}/{steps}  train mse {loss.item():.3f}", flush=True)
with torch.no_grad():
    net.eval()
    pred = torch.cat([net(x_te[i : i + 500])[0] for i in range(0, len(x_te), 500)]).numpy() * std + mean
rmse = np.sqrt(((pred - test.factors) ** 2).mean(0))
scores = np.maximum(0.0, 1.0 - rmse / test.factors.std(0))
print(f"feature scale {scale}, {steps} steps: held-out 1 - NRMSE per factor")
print(" | ".join(f"{n} {s:.2f}" for n, s in zip(train.factor_names, scores)))
