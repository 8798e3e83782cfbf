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

``refine``: a candidate architecture, not in the model: the last transposed convolution outputs 32
channels instead of the image's 3, followed by a ReLU and a 3x3 convolution at full resolution to
the 3 channels (capacity where the small features are drawn).
"""

import sys

import numpy as np
import torch

from gvae_dist.config import load_config
from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.synthetic import generate
from gvae_dist.model import Decoder, layer_channels
from gvae_dist.objective import reconstruction_loss
from gvae_dist.schedule import learning_rate

scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
cfg = load_config("configs/faces_beta_ungated.yaml", [f"optim.steps={steps}"])  # network, optimiser, schedule
torch.manual_seed(0)
torch.set_num_threads(2)
train = generate("faces", 20000, 1, 32, feature_scale=scale)
test = generate("faces", 3000, 1 + 1_000_003, 32, feature_scale=scale)
mean, std = train.factors.mean(0), train.factors.std(0)
x_tr, z_tr = to_float_nchw(torch.from_numpy(train.images)), torch.from_numpy((train.factors - mean) / std).float()
x_te, z_te = to_float_nchw(torch.from_numpy(test.images)), torch.from_numpy((test.factors - mean) / std).float()
net = Decoder(3, layer_channels(32, cfg.model.channels), cfg.model.hidden, z_tr.shape[1])
refine = len(sys.argv) > 3 and sys.argv[3] == "refine"
if refine:
    last = net.deconv[-1]
    net.deconv[-1] = torch.nn.ConvTranspose2d(last.in_channels, 32, kernel_size=4, stride=2, padding=1)
    net.deconv.append(torch.nn.ReLU())
    net.deconv.append(torch.nn.Conv2d(32, 3, kernel_size=3, padding=1))
o = cfg.optim
opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)


def nll(z, x):
    with torch.no_grad():
        return torch.cat(
            [reconstruction_loss(net(z[i : i + 500]), x[i : i + 500], "gaussian", 0.1) for i in range(0, len(x), 500)]
        ).numpy()


gen = torch.Generator().manual_seed(0)
for step in range(steps):
    for group in opt.param_groups:
        group["lr"] = learning_rate(cfg.optim, step)
    idx = torch.randint(0, len(x_tr), (cfg.optim.batch_size,), generator=gen)
    loss = reconstruction_loss(net(z_tr[idx]), x_tr[idx], "gaussian", 0.1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    if (step + 1) % 500 == 0:
        print(f"step {step + 1}/{steps}  train nll {loss.item():,.0f}", flush=True)
net.eval()
base = nll(z_te, x_te)
what = f"feature scale {scale}, {steps} steps" + (", refine" if refine else "")
print(f"{what}: held-out reconstruction {base.mean():,.0f} nats with the true factors")
perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x_te)))
for j, name in enumerate(train.factor_names):
    z = z_te.clone()
    z[:, j] = z_te[perm, j]
    print(f"  {name:10s} resampled: +{(nll(z, x_te) - base).mean():,.0f} nats", flush=True)
