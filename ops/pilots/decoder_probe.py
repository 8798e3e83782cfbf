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

python ops/pilots/decoder_probe.py [FEATURE_SCALE] [STEPS] [VARIANT] [INIT_SEED]

VARIANT (default ``plain``, the presets' decoder):
- ``refine``: `model.refine_channels: 32`: the last transposed convolution outputs 32 channels
  instead of the image's 3, then a ReLU and a 3x3 convolution at full resolution draw the image
  (capacity where the small features are drawn);
- ``coord``: `model.Decoder(..., coords=True)` (not a config key): every transposed convolution sees its pixels'
  coordinates (CoordConv, Liu et al. 2018); ``coord_refine``: both;
- ``broadcast``: a spatial broadcast decoder (Watters et al. 2019, here 32 channels): the code is
  tiled over a 40x40 grid with the pixels' coordinates, then four unpadded 3x3 convolutions with
  ReLUs and a 1x1 convolution draw the 32x32 image (no upsampling).
INIT_SEED (default 0) seeds the network's initial weights only.
"""

import sys

import numpy as np
import torch
from probe_setup import fit, setup
from torch import nn

from gvae_dist.model import AddCoords, Decoder, layer_channels
from gvae_dist.objective import reconstruction_loss


class Broadcast(nn.Module):
    def __init__(self, latent_dim: int, width: int = 32, size: int = 32):
        super().__init__()
        self.size = size + 8
        layers: list[nn.Module] = [AddCoords()]
        prev = latent_dim + 2
        for _ in range(4):
            layers += [nn.Conv2d(prev, width, kernel_size=3), nn.ReLU()]
            prev = width
        layers.append(nn.Conv2d(width, 3, kernel_size=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z_BD: torch.Tensor) -> torch.Tensor:
        return self.net(z_BD[:, :, None, None].expand(-1, -1, self.size, self.size))


s = setup()
variant = sys.argv[3] if len(sys.argv) > 3 else "plain"
torch.manual_seed(int(sys.argv[4]) if len(sys.argv) > 4 else 0)
d = s.z_tr.shape[1]
if variant == "broadcast":
    net = Broadcast(d)
else:
    widths = layer_channels(32, s.cfg.model.channels)
    refine = 32 if "refine" in variant else 0
    net = Decoder(3, widths, s.cfg.model.hidden, d, refine, coords=variant.startswith("coord"))
fit(net, s, lambda idx: reconstruction_loss(net(s.z_tr[idx]), s.x_tr[idx], "gaussian", 0.1).mean(), "nll")


def nll(z: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        chunks = [
            reconstruction_loss(net(z[i : i + 500]), s.x_te[i : i + 500], "gaussian", 0.1)
            for i in range(0, len(z), 500)
        ]
    return torch.cat(chunks).numpy()


base = nll(s.z_te)
what = f"feature scale {s.scale}, {s.steps} steps, {variant}, init seed {sys.argv[4] if len(sys.argv) > 4 else 0}"
print(f"{what}: held-out reconstruction {base.mean():,.0f} nats with the true factors")
perm = torch.from_numpy(np.random.default_rng(0).permutation(len(s.z_te)))
for j, name in enumerate(s.train.factor_names):
    z = s.z_te.clone()
    z[:, j] = s.z_te[perm, j]
    print(f"  {name:10s} resampled: +{(nll(z) - base).mean():,.0f} nats", flush=True)
