"""Train-step benchmark: the gvae-dist step in its variants, and the plain loop a researcher writes.

``GvaeStep`` is one optimizer step of ``train.train_loop``: the same
:func:`gvae_dist.step.train_step` (batch -> ``make_pairs`` -> ``GatedVAE`` with the fused gate ->
``reconstruction_loss`` + ``objective`` -> backward -> AdamW) and the same on-device metric sums
(:meth:`gvae_dist.step.StepMetrics.add`, no host sync), on random data in the default
configuration, minus Accelerate, which on one process only enters ``torch.autocast`` (entered
here directly). The ``e2e`` suite times the whole ``train_loop``.

``PlainStep`` is the fp32 loop a researcher would write without any framework: the same 64x64
network spelled out with ``nn.Sequential``, a ``TensorDataset`` + ``DataLoader``, BCE + beta-KL,
Adam, ``loss.item()`` every step.

Everything here needs only PyTorch (no numpy, YAML, Accelerate, Ray), so the GPU script can
import it on a bare box. Data are random uint8 images and random binned weak labels: step time
does not depend on image content.

Legend: N dataset size, B batch, C channels, H/W pixels, L weak labels, D latent dims.
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gvae_dist.bench.harness import interleave, minor_faults_per_call
from gvae_dist.data.batch import Batch, to_float_nchw
from gvae_dist.data.pairing import PairingPlan
from gvae_dist.gate import PartitionSpec
from gvae_dist.model import GatedVAE
from gvae_dist.objective import gaussian_kl, objective
from gvae_dist.step import StepMetrics, StepParts, train_step

__all__ = [
    "StepSpec",
    "GvaeStep",
    "PlainStep",
    "PlainVAE",
    "gate_config",
    "objective_config",
    "step_flops",
    "run_step",
    "run_regularizer_share",
]

LABELS = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
PARTITIONS = [("pose", 4, ("yaw", "pitch", "roll")), ("expression", 4, ("mouth", "eyes", "brow")), ("rest", 2, ())]

# The defaults of gvae_dist.config.ObjectiveConfig, kept here so this module imports without
# YAML on a bare GPU box; tests/test_bench.py checks they agree.
OBJECTIVE_DEFAULTS = dict(
    likelihood="bernoulli",
    beta=4.0,
    alpha=0.0,
    mmd_lambda=500.0,
    kernel="imq",
    kernel_scales=[0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0],
    lambda_od=10.0,
    lambda_d=None,
    gaussian_std=0.1,
    gaussian_calibrated=False,
    warmup_steps=0,
    gamma=1000.0,
    capacity_max=25.0,
    capacity_steps=100_000,
)


# The defaults of gvae_dist.config.GateConfig other than ``enabled`` (same reason, same test).
GATE_DEFAULTS = dict(kl=False, regularizer=False, decoder=True, closed_code="input", drop_high_loss=0.0)


def objective_config(name: str) -> types.SimpleNamespace:
    """The default objective config for ``name`` (``beta``, ``infovae``, ``dip2``, ``dip1``)."""
    return types.SimpleNamespace(name=name, **OBJECTIVE_DEFAULTS)


def gate_config(gated: bool) -> types.SimpleNamespace:
    """The default gate config, gated or the un-gated baseline."""
    return types.SimpleNamespace(enabled=gated, **GATE_DEFAULTS)


@dataclass(frozen=True)
class StepSpec:
    """One train-step configuration (defaults: gvae-dist's default CPU configuration)."""

    objective: str = "beta"
    batch: int = 64
    gated: bool = True
    precision: str = "fp32"  # "fp32" or "bf16" (autocast)
    compile: bool = False
    channels_last: bool = False
    image_size: int = 64
    channels: int = 3

    def label(self) -> str:
        return (
            f"{self.objective}/B{self.batch}/{'gated' if self.gated else 'ungated'}/{self.precision}"
            f"/{'compile' if self.compile else 'eager'}/{'cl' if self.channels_last else 'nchw'}"
        )


class RandomImages:
    """``N`` random uint8 NHWC images + binned labels; batches like ``MemoryLoader`` makes them."""

    def __init__(self, n: int, image_size: int, channels: int, device, seed: int = 0, bins: int = 3):
        g = torch.Generator().manual_seed(seed)
        self.images_NHWC = torch.randint(0, 256, (n, image_size, image_size, channels), generator=g, dtype=torch.uint8)
        self.labels_NL = torch.randint(0, bins, (n, len(LABELS)), generator=g)
        self.device, self.gen, self.pos = torch.device(device), g, 0
        self.order = torch.randperm(n, generator=g)

    def next(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image_BCHW float in [0, 1], labels_BL)`` on the device."""
        if self.pos + batch > len(self.order):
            self.order, self.pos = torch.randperm(len(self.order), generator=self.gen), 0
        idx = self.order[self.pos : self.pos + batch]
        self.pos += batch
        image = self.images_NHWC[idx].to(self.device, non_blocking=True)
        return to_float_nchw(image), self.labels_NL[idx].to(self.device)


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class GvaeStep:
    """One gvae-dist optimizer step per call (see module doc). ``model`` is the raw module;
    ``metrics`` holds the step's on-device sums (read them back with ``metrics.flush(step)``)."""

    def __init__(self, spec: StepSpec, device="cpu", data: RandomImages | None = None, seed: int = 0):
        self.spec, self.device = spec, torch.device(device)
        torch.manual_seed(seed)
        self.data = data or RandomImages(max(1024, 4 * spec.batch), spec.image_size, spec.channels, device)
        pspec = PartitionSpec(PARTITIONS, 10)
        self.model = GatedVAE(spec.channels, spec.image_size, 10).to(self.device)
        if spec.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)
        forward = torch.compile(self.model) if spec.compile else self.model
        plan = PairingPlan(pspec, LABELS, gate=spec.gated, device=self.device)
        ocfg = objective_config(spec.objective)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        self.parts = StepParts(
            forward,
            self.model,
            self.opt,
            plan,
            gen,
            gate_config(spec.gated),
            ocfg,
            channels_last=spec.channels_last,
            context=lambda: _autocast(self.device, spec.precision),
        )
        self.metrics = StepMetrics(plan, ocfg, gate_kl=GATE_DEFAULTS["kl"])

    def __call__(self) -> None:
        image_BCHW, labels_BL = self.data.next(self.spec.batch)
        no_factors_B0 = image_BCHW.new_empty(image_BCHW.shape[0], 0)  # ground truth: evaluation only
        self.metrics.add(train_step(self.parts, Batch(image_BCHW, labels_BL, no_factors_B0)))


class PlainVAE(nn.Module):
    """The same 64x64 network, written out the way a paper's reference code would be."""

    def __init__(self, channels: int = 3, latent: int = 10):
        super().__init__()
        self.enc = nn.Sequential(
            nn.Conv2d(channels, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 4, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256),
            nn.ReLU(),
        )
        self.mu, self.logvar = nn.Linear(256, latent), nn.Linear(256, latent)
        self.dec = nn.Sequential(
            nn.Linear(latent, 256),
            nn.ReLU(),
            nn.Linear(256, 64 * 4 * 4),
            nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 64, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 32, 4, 2, 1),
            nn.ReLU(),
            nn.ConvTranspose2d(32, channels, 4, 2, 1),
        )

    def forward(self, x):
        h = self.enc(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec(z), mu, logvar


class PlainStep:
    """One step of the plain fp32 loop per call: DataLoader batch, forward, loss, Adam, ``.item()``."""

    def __init__(self, images_NCHW: torch.Tensor, batch: int, device="cpu", beta: float = 4.0, seed: int = 0):
        from torch.utils.data import DataLoader, TensorDataset

        torch.manual_seed(seed)
        self.device, self.beta = torch.device(device), beta
        self.model = PlainVAE(images_NCHW.shape[1]).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loader = DataLoader(TensorDataset(images_NCHW), batch_size=batch, shuffle=True, drop_last=True)
        self.it = iter(self.loader)
        self.last_loss = float("nan")

    def __call__(self) -> None:
        try:
            (x,) = next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            (x,) = next(self.it)
        x = x.to(self.device)
        logits, mu, logvar = self.model(x)
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum() / x.shape[0]
        loss = recon + self.beta * kl
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.last_loss = loss.item()


def retain_memory_like_train_loop() -> bool:
    """Apply ``train.retain_freed_memory`` as ``train_loop`` does on CPU (False without it)."""
    try:
        from gvae_dist.train import retain_freed_memory
    except ImportError:  # a bare box without the training stack: time the allocator as it is
        return False
    return retain_freed_memory()


def plain_images(data: RandomImages) -> torch.Tensor:
    """The same images as float NCHW in [0, 1], contiguous (a ``ToTensor``-style dataset)."""
    return to_float_nchw(data.images_NHWC).contiguous()


def step_flops(spec: StepSpec, device="cpu") -> int:
    """FLOPs of one forward+backward of the network at ``spec`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = GatedVAE(spec.channels, spec.image_size, 10).to(device)
    x = torch.rand(spec.batch, spec.channels, spec.image_size, spec.image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        out.logits.float().sum().backward()
    return counter.get_total_flops()


def _row(name: str, spec: StepSpec, seconds: float, **extra) -> dict:
    return {
        "suite": "step",
        "name": name,
        **dataclasses.asdict(spec),
        "ms_per_step": 1e3 * seconds,
        "images_per_s": spec.batch / seconds,
        **extra,
    }


def run_step(specs: list[StepSpec], base: StepSpec, rounds: int = 20, device="cpu", plain: bool = True) -> list[dict]:
    """Time ``specs`` (and the plain loop at ``base.batch``) interleaved in this process.

    Rows give images/s, ``speedup_vs_base`` / ``speedup_vs_plain`` (median per-round ratios),
    ``gate_overhead`` (gated vs its un-gated twin) and minor page faults per step. On CPU the
    allocator is set up as ``train_loop`` sets it (``run.retain_freed_memory``) for every
    variant, the plain loop included: this suite compares compute; the ``vs_plain`` suite
    compares against the plain loop as a researcher runs it.
    """
    assert base in specs, "the base spec must be one of the timed specs"
    if torch.device(device).type == "cpu":
        retain_memory_like_train_loop()
    data = RandomImages(max(1024, 4 * base.batch), base.image_size, base.channels, device)
    steps = {s.label(): GvaeStep(s, device, data) for s in specs}
    fns: dict = dict(steps)
    if plain:
        fns["plain"] = PlainStep(plain_images(data), base.batch, device)
    t = interleave(fns, rounds=rounds, warmup=3, device=device)
    faults = {k: minor_faults_per_call(fn) for k, fn in fns.items()}
    rows = []
    for s in specs:
        k, twin = s.label(), dataclasses.replace(s, gated=False).label()
        # the gate's cost: median per-round t_gated / t_ungated - 1, when the twin was timed
        overhead = t.ratio(twin, k) - 1.0 if s.gated and twin in steps else None
        rows.append(
            _row(
                k,
                s,
                t.median(k),
                speedup_vs_base=t.ratio(k, base.label()),
                speedup_vs_plain=t.ratio(k, "plain") if plain else None,
                gate_overhead=overhead,
                spread=t.spread(k),
                page_faults=faults[k],
            )
        )
    if plain:
        spec = dataclasses.replace(base, gated=False)
        rows.append(
            {
                **_row("plain", spec, t.median("plain")),
                "objective": "beta",
                "gated": None,
                "speedup_vs_base": t.ratio("plain", base.label()),
                "speedup_vs_plain": 1.0,
                "spread": t.spread("plain"),
                "page_faults": faults["plain"],
            }
        )
    return rows


def run_regularizer_share(
    objectives=("beta", "infovae", "dip2"), batches=(64, 256), rounds: int = 20, device="cpu"
) -> list[dict]:
    """Share of a full (default) train step spent in each regulariser and in the fused gate.

    Timed interleaved with the step: the objective's forward+backward on leaf ``mu, logvar, z``
    (recon term excluded), and the gate's forward+backward at the same batch.
    """
    from gvae_dist.bench.gate import gate_forward, gate_fwd_bwd, gate_inputs

    dev, rows = torch.device(device), []
    if dev.type == "cpu":
        retain_memory_like_train_loop()
    for B in batches:
        spec = StepSpec(batch=B)
        fns = {"step": GvaeStep(spec, dev)}
        g = torch.Generator().manual_seed(1)
        mu_BD = torch.randn(B, 10, generator=g).to(dev).requires_grad_()
        logvar_BD = (0.1 * torch.randn(B, 10, generator=g)).to(dev).requires_grad_()
        z_BD = torch.randn(B, 10, generator=g).to(dev).requires_grad_()
        zero_B = torch.zeros(B, device=dev)

        def reg(name, mu=mu_BD, lv=logvar_BD, z=z_BD, r=zero_B):
            loss, _ = objective(objective_config(name), r, mu, lv, z)
            torch.autograd.grad(loss, (mu, lv, z), allow_unused=True)  # beta-VAE ignores z

        def kl_only(mu=mu_BD, lv=logvar_BD):
            torch.autograd.grad(gaussian_kl(mu, lv).mean(0).sum(), (mu, lv))

        for name in objectives:
            fns[f"reg/{name}"] = lambda n=name: reg(n)
        fns["reg/kl_only"] = kl_only
        args, grads = gate_inputs(B, 10, dev, torch.float32)
        fused = gate_forward("fused")
        fns["gate/fused"] = lambda f=fused, a=args, g=grads: gate_fwd_bwd(f, a, g)
        t = interleave(fns, rounds=rounds, warmup=3, device=dev)
        step_s = t.median("step")
        for k in fns:
            if k != "step":
                rows.append(
                    {
                        "suite": "share",
                        "name": k,
                        "batch": B,
                        "ms": 1e3 * t.median(k),
                        "step_ms": 1e3 * step_s,
                        "share_of_step": t.ratio("step", k),
                    }
                )
    return rows
