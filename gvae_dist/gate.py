"""Latent partitions and the fused gated reparameterisation of Gated-VAE.

Source: M. J. Vowels, N. C. Camgoz, R. Bowden, "Gated Variational AutoEncoders: Incorporating
Weak Supervision to Encourage Disentanglement", FG 2020 (arXiv 1911.06443). The latent vector is
split into named partitions; every partition is used on the forward pass, but the reconstruction
gradient of an example reaches only the partition(s) its image/target pairing is about.

Semantics (the contract in ARCHITECTURE.md):

- forward: ``z = mu + eps * exp(0.5 * logvar)`` for every partition (the usual reparameterisation);
- backward through the decoder path: ``dL/dz`` is multiplied by the example's gate mask before it
  reaches ``mu`` and ``logvar``;
- the regulariser path (``z_reg``: MMD samples) is un-gated. It is a second output of the same
  Function, so both paths share one forward and one fused backward;
- optional ``closed`` code (``gate.closed_code: target``, ours): on the decoder path the closed
  dims (mask 0) carry ``closed`` instead of the input's sample, ``z_dec = mask * z + (1 - mask)
  * closed``; no gradient reaches ``closed``, and the gradients into ``mu``/``logvar`` are the
  same as without it. The paper's choice (``input``) is ``closed=None``.

With an all-ones mask the result is the un-gated model, bit for bit.

Legend: B batch, D latent dims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = [
    "Partition",
    "PartitionSpec",
    "GatedReparameterize",
    "gated_reparameterize",
    "GateGradient",
    "gate_gradient",
    "drop_high_loss",
]


@dataclass(frozen=True)
class Partition:
    """One named, contiguous block of latent dims ``[start, start + size)``."""

    name: str
    start: int
    size: int
    factors: tuple[str, ...] = ()

    @property
    def stop(self) -> int:
        return self.start + self.size


class PartitionSpec:
    """Ordered, contiguous latent partitions, e.g. ``pose:4, expression:4, rest:2``.

    ``factors`` per partition names the weak labels whose pairings train it (empty for a
    nuisance/"rest" partition that only identity pairings train).
    """

    _NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

    def __init__(self, partitions: list[tuple[str, int, tuple[str, ...]]], latent_dim: int):
        if not partitions:
            raise ValueError("partitions: at least one partition is needed, e.g. 'rest: 10'")
        parts, start, seen = [], 0, set()
        for name, size, factors in partitions:
            if not self._NAME.match(name):
                raise ValueError(f"partitions: name {name!r} must be an identifier (letters, digits, _)")
            if name in seen:
                raise ValueError(f"partitions: name {name!r} appears twice")
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"partitions.{name}.size must be a positive integer, got {size!r}")
            seen.add(name)
            parts.append(Partition(name, start, size, tuple(factors)))
            start += size
        if start != latent_dim:
            sizes = " + ".join(f"{p.name}:{p.size}" for p in parts)
            raise ValueError(
                f"partitions: sizes add up to {start} ({sizes}) but model.latent_dim is {latent_dim}; make them equal"
            )
        self.partitions: tuple[Partition, ...] = tuple(parts)
        self.latent_dim = latent_dim

    @classmethod
    def parse(cls, text: str, latent_dim: int) -> PartitionSpec:
        """Parse ``"pose:4, expression:4, rest:2"`` (no factor lists)."""
        items = []
        for chunk in filter(None, (c.strip() for c in text.split(","))):
            name, _, size = chunk.partition(":")
            try:
                items.append((name.strip(), int(size), ()))
            except ValueError:
                raise ValueError(f"partitions: {chunk!r} is not 'name:size'") from None
        return cls(items, latent_dim)

    def __iter__(self):
        return iter(self.partitions)

    def __len__(self) -> int:
        return len(self.partitions)

    def __repr__(self) -> str:
        return "PartitionSpec(" + ", ".join(f"{p.name}:{p.size}" for p in self.partitions) + ")"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.partitions]

    def index(self, name: str) -> int:
        for i, p in enumerate(self.partitions):
            if p.name == name:
                return i
        raise ValueError(f"unknown partition {name!r}; partitions are {self.names}")

    def masks(self) -> torch.Tensor:
        """``[P, D]`` float tensor: row p is 1 on partition p's dims, 0 elsewhere."""
        masks_PD = torch.zeros(len(self.partitions), self.latent_dim)
        for i, p in enumerate(self.partitions):
            masks_PD[i, p.start : p.stop] = 1.0
        return masks_PD

    def sizes(self) -> list[tuple[str, int]]:
        return [(p.name, p.size) for p in self.partitions]

    def table(self) -> list[dict]:
        """``[{"name", "start", "size"}, ...]``, JSON-ready (written next to a logged model)."""
        return [{"name": p.name, "start": p.start, "size": p.size} for p in self.partitions]

    def code_columns(self) -> list[str]:
        """Names of the latent dims as table columns: ``<partition>_<i>``, in latent order."""
        return [f"{p.name}_{i}" for p in self.partitions for i in range(p.size)]


class GatedReparameterize(torch.autograd.Function):
    """``z = mu + eps * std`` with a gated backward, as one fused Function.

    Two outputs with the same value: ``z_dec`` (gradient multiplied by ``mask``) and ``z_reg``
    (gradient passed un-gated). The backward computes ``g = mask * dz_dec + dz_reg`` once and
    derives ``dmu = g`` and ``dlogvar = 0.5 * g * eps * std`` in the same pass. Saved tensors:
    ``eps`` and ``std``, the same two the plain composition keeps (plus the mask, an input).
    """

    @staticmethod
    def forward(ctx, mu_BD, logvar_BD, eps_BD, mask, closed_BD=None):
        std_BD = torch.exp(0.5 * logvar_BD)
        # not addcmul: its fused rounding would differ from the plain path in the last bit
        z_BD = mu_BD + eps_BD * std_BD
        ctx.save_for_backward(eps_BD, std_BD, mask)
        ctx.set_materialize_grads(False)
        if closed_BD is not None:
            z_dec_BD = torch.where(mask.to(torch.bool), z_BD, closed_BD.to(z_BD.dtype))
            return z_dec_BD, z_BD
        z_reg_BD = z_BD.view_as(z_BD)
        return z_BD, z_reg_BD

    @staticmethod
    def backward(ctx, dz_dec_BD, dz_reg_BD):
        eps_BD, std_BD, mask = ctx.saved_tensors
        g_BD = None
        if dz_dec_BD is not None:
            g_BD = dz_dec_BD * mask.to(dz_dec_BD.dtype)
        if dz_reg_BD is not None:
            g_BD = dz_reg_BD if g_BD is None else g_BD + dz_reg_BD
        if g_BD is None:
            return None, None, None, None, None
        dmu = g_BD if ctx.needs_input_grad[0] else None
        dlogvar = 0.5 * g_BD * eps_BD * std_BD if ctx.needs_input_grad[1] else None
        deps = g_BD * std_BD if ctx.needs_input_grad[2] else None
        return dmu, dlogvar, deps, None, None


def gated_reparameterize(
    mu_BD: torch.Tensor,
    logvar_BD: torch.Tensor,
    eps_BD: torch.Tensor,
    mask: torch.Tensor | None,
    closed_BD: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterise with a gated decoder-path gradient.

    Args:
        mu_BD, logvar_BD: posterior parameters.
        eps_BD: standard normal noise.
        mask: ``[B, D]`` per-example or ``[D]`` shared gate (1 = gradient flows; 0/1 values), or
            None for the plain un-gated reparameterisation.
        closed_BD: the code the closed dims carry on the decoder path (no gradient reaches
            it), or None: the input's own sample (see module doc).

    Returns:
        ``(z_dec_BD, z_reg_BD)``: equal values; the first carries the gated gradient (feed it to
        the decoder), the second the un-gated one (feed it to sample-based regularisers).
    """
    if mask is None:
        z_BD = mu_BD + eps_BD * torch.exp(0.5 * logvar_BD)
        return z_BD, z_BD
    if closed_BD is not None:
        closed_BD = closed_BD.detach()
    if torch.compiler.is_compiling():
        # Inside torch.compile the compiler fuses this composition into the one pass the
        # Function fuses by hand, and skips the Function's aliased second output, which made the
        # compiled Function 10-50% slower than it (docs/performance.md). Same value (z plus an
        # exact zero, for any mask) and the same gradients: mask * dz_dec + dz_reg into z.
        z_BD = mu_BD + eps_BD * torch.exp(0.5 * logvar_BD)
        z_fixed_BD = z_BD.detach()
        if closed_BD is not None:
            z_fixed_BD = torch.where(mask.to(torch.bool), z_fixed_BD, closed_BD.to(z_BD.dtype))
        return z_fixed_BD + mask * (z_BD - z_BD.detach()), z_BD
    return GatedReparameterize.apply(mu_BD, logvar_BD, eps_BD, mask, closed_BD)


class GateGradient(torch.autograd.Function):
    """Identity forward, ``grad * mask`` backward: gates any per-dim term (e.g. the KL)."""

    @staticmethod
    def forward(ctx, x_BD, mask):
        ctx.save_for_backward(mask)
        return x_BD.view_as(x_BD)

    @staticmethod
    def backward(ctx, dx_BD):
        (mask,) = ctx.saved_tensors
        return dx_BD * mask.to(dx_BD.dtype), None


def gate_gradient(x_BD: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Return ``x_BD`` unchanged whose gradient is multiplied by ``mask`` (None: un-gated)."""
    if mask is None:
        return x_BD
    return GateGradient.apply(x_BD, mask)


def drop_high_loss(
    loss_B: torch.Tensor, candidates_B: torch.Tensor, fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Small-loss selection against noisy pairings (``gate.drop_high_loss``): among the
    ``candidates_B`` examples, the ``round(fraction * n)`` with the highest loss keep their value
    but lose their gradient (the gate closes completely for them).

    A pair built from a wrong weak label asks the open partition for something the input does not
    hold; such pairs tend to have the largest reconstruction loss, and training on the small-loss
    ones is the standard defence of learning with noisy labels (Han et al., "Co-teaching",
    NeurIPS 2018; Jiang et al., "MentorNet", ICML 2018). Ranks are computed on the device, so
    there is no host sync.

    Returns:
        ``(loss_B, dropped_B)``: the loss with dropped entries detached, and the bool mask.
    """
    if fraction <= 0:
        return loss_B, torch.zeros_like(candidates_B, dtype=torch.bool)
    value_B = torch.where(candidates_B, loss_B.detach(), torch.full_like(loss_B, -torch.inf))
    order_B = value_B.argsort(descending=True)
    rank_B = torch.empty_like(order_B)
    rank_B[order_B] = torch.arange(order_B.numel(), device=order_B.device)
    n_drop = torch.round(fraction * candidates_B.sum())
    dropped_B = candidates_B & (rank_B < n_drop)
    return torch.where(dropped_B, loss_B.detach(), loss_B), dropped_B
