"""Gate benchmark: forward+backward of the fused gated reparameterisation vs the alternatives.

Variants, each producing ``(z_dec, z_reg)`` from ``(mu, logvar, eps, mask)`` and then
back-propagating given upstream gradients into both outputs (no loss ops in the timing):

- ``fused``: ``gvae_dist.gate.GatedReparameterize`` (one autograd Function, one fused backward);
- ``plain``: ``z = mu + eps * exp(0.5 * logvar)`` used for both outputs (no gating at all: the
  floor any gate is measured against);
- ``naive``: ``z_dec = mask * z + (1 - mask) * z.detach()``, ``z_reg = z`` (the composition a
  researcher would write).

Reported per (batch, latent, mode): microseconds per forward+backward, the ratio to ``naive``
and to ``plain`` (> 1: the other one is slower), bytes saved for backward (eager) and, on
CUDA, the peak bytes allocated.

Legend: B batch, D latent dims.
"""

from __future__ import annotations

import math

import torch

from gvae_dist.bench.harness import interleave, peak_memory, saved_tensor_bytes
from gvae_dist.gate import gated_reparameterize

__all__ = ["VARIANTS", "gate_forward", "gate_inputs", "gate_fwd_bwd", "run_gate"]


def _fused(mu_BD, logvar_BD, eps_BD, mask_BD):
    return gated_reparameterize(mu_BD, logvar_BD, eps_BD, mask_BD)


def _plain(mu_BD, logvar_BD, eps_BD, mask_BD):
    z_BD = mu_BD + eps_BD * torch.exp(0.5 * logvar_BD)
    return z_BD, z_BD


def _naive(mu_BD, logvar_BD, eps_BD, mask_BD):
    z_BD = mu_BD + eps_BD * torch.exp(0.5 * logvar_BD)
    return mask_BD * z_BD + (1 - mask_BD) * z_BD.detach(), z_BD


VARIANTS = {"fused": _fused, "plain": _plain, "naive": _naive}


def gate_forward(name: str, compiled: bool = False):
    """The forward of variant ``name``, optionally through ``torch.compile``."""
    fn = VARIANTS[name]
    return torch.compile(fn, dynamic=False) if compiled else fn


def gate_inputs(B: int, D: int, device, dtype, seed: int = 0):
    """Seeded ``(mu, logvar, eps, mask)`` (``mu``, ``logvar`` leaves that require grad) and the
    upstream gradients ``(dz_dec, dz_reg)``, all ``[B, D]``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mu_BD = torch.randn(B, D, generator=g).to(device, dtype).requires_grad_()
    logvar_BD = (0.1 * torch.randn(B, D, generator=g)).to(device, dtype).requires_grad_()
    eps_BD = torch.randn(B, D, generator=g).to(device, dtype)
    mask_BD = (torch.rand(B, D, generator=g) < 0.5).to(device, dtype)
    dz_dec_BD = torch.randn(B, D, generator=g).to(device, dtype)
    dz_reg_BD = torch.randn(B, D, generator=g).to(device, dtype)
    return (mu_BD, logvar_BD, eps_BD, mask_BD), (dz_dec_BD, dz_reg_BD)


def gate_fwd_bwd(forward, args, grads):
    """One forward of a variant on ``args`` and its backward from ``grads`` into ``mu, logvar``."""
    z_dec_BD, z_reg_BD = forward(*args)
    return torch.autograd.grad((z_dec_BD, z_reg_BD), args[:2], grads)


def run_gate(
    batches=(64, 256, 1024, 4096),
    latents=(10, 64, 256),
    modes=("eager", "compile"),
    rounds: int = 15,
    device="cpu",
    dtype=torch.float32,
) -> list[dict]:
    """One row per (mode, batch, latent, variant); see module doc."""
    rows = []
    for mode in modes:
        for B in batches:
            for D in latents:
                if mode == "compile":
                    # one static graph per shape; without the reset dynamo stops compiling after
                    # its recompile limit and silently runs the remaining shapes eagerly
                    torch._dynamo.reset()
                forwards = {n: gate_forward(n, compiled=mode == "compile") for n in VARIANTS}
                args, grads = gate_inputs(B, D, device, dtype)
                # enough repetitions per timed call to rise well above timer and launch noise
                inner = max(1, min(200, math.ceil(65536 / (B * D))))

                def call(fwd, inner=inner, args=args, grads=grads):
                    for _ in range(inner):
                        gate_fwd_bwd(fwd, args, grads)

                fns = {n: (lambda f=f: call(f)) for n, f in forwards.items()}
                t = interleave(fns, rounds=rounds, warmup=2, device=device)
                for n, fwd in forwards.items():
                    saved = None if mode == "compile" else saved_tensor_bytes(lambda f=fwd, a=args: f(*a))
                    rows.append(
                        {
                            "suite": "gate",
                            "name": n,
                            "mode": mode,
                            "batch": B,
                            "latent": D,
                            "dtype": str(dtype).removeprefix("torch."),
                            "device": str(device),
                            "us_per_fwd_bwd": 1e6 * t.median(n) / inner,
                            "naive_over_this": t.ratio(n, "naive"),
                            "plain_over_this": t.ratio(n, "plain"),
                            "spread": t.spread(n),
                            "saved_bytes": saved,
                            "peak_bytes": peak_memory(lambda f=fwd, a=args, g=grads: gate_fwd_bwd(f, a, g), device),
                        }
                    )
    return rows
