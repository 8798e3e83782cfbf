"""What the encoder and decoder probes share (ops/pilots/supervised_probe.py, decoder_probe.py):
the un-gated beta preset's network, optimiser and schedule, its tuning-data faces with their
factors standardised, and the training loop. Imported by those scripts (their own folder is on
``sys.path`` when they run)."""

import sys
from collections.abc import Callable
from types import SimpleNamespace

import torch

from gvae_dist.config import load_config
from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.synthetic import generate
from gvae_dist.schedule import learning_rate


def setup() -> SimpleNamespace:
    """``argv``: [FEATURE_SCALE (1.0)] [STEPS (3000)] [...]. 20,000 training faces of
    ``data.seed=1`` and 3,000 held-out ones of its eval stream, 32 px; ``z_tr``/``z_te`` are the
    factors standardised with the training mean and std."""
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    cfg = load_config("configs/faces_beta_ungated.yaml", [f"optim.steps={steps}"])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    train = generate("faces", 20000, 1, 32, feature_scale=scale)
    test = generate("faces", 3000, 1 + 1_000_003, 32, feature_scale=scale)
    mean, std = train.factors.mean(0), train.factors.std(0)
    return SimpleNamespace(
        scale=scale,
        steps=steps,
        cfg=cfg,
        train=train,
        test=test,
        mean=mean,
        std=std,
        x_tr=to_float_nchw(torch.from_numpy(train.images)),
        x_te=to_float_nchw(torch.from_numpy(test.images)),
        z_tr=torch.from_numpy((train.factors - mean) / std).float(),
        z_te=torch.from_numpy((test.factors - mean) / std).float(),
    )


def fit(net: torch.nn.Module, s: SimpleNamespace, loss_of: Callable[[torch.Tensor], torch.Tensor], what: str) -> None:
    """Train ``net`` for ``s.steps`` steps with the preset's AdamW, lr schedule and batch size;
    ``loss_of(idx)`` is the loss of the training examples ``idx``."""
    o = s.cfg.optim
    opt = torch.optim.AdamW(net.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    gen = torch.Generator().manual_seed(0)
    for step in range(s.steps):
        for group in opt.param_groups:
            group["lr"] = learning_rate(o, step)
        loss = loss_of(torch.randint(0, len(s.x_tr), (o.batch_size,), generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}/{s.steps}  train {what} {loss.item():,.3f}", flush=True)
    net.eval()
