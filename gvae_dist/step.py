"""One train step and its metrics: what :func:`gvae_dist.train.train_loop` runs per micro-batch
and what the ``step`` benchmarks (:mod:`gvae_dist.bench.step`) time, the same code for both.

:func:`train_step`: batch -> pairing (targets + gate masks, :func:`gvae_dist.data.pairing.make_pairs`)
-> model (gated reparameterisation) -> reconstruction + regulariser
(:mod:`gvae_dist.objective`) -> backward -> optimizer step. The launcher's wrappers come in
through :class:`StepParts`: the module to call (compiled, DDP-wrapped), the context the forward
and backward run in (Accelerate's accumulation and autocast), the backward and gradient clipping.

:class:`StepMetrics`: the step's loss terms summed on the device with no host sync, read back
once per log interval (:meth:`StepMetrics.flush`: one ``.tolist()``) as the means over the steps
added since the last flush.

Only PyTorch and the math modules are imported here (no Accelerate, YAML, numpy), so the GPU
benchmark script can run the step on a bare box.

Legend: B batch, C channels, H/W pixels, D latent dims, P partitions, K kinds of pair or
supervised partitions (as named), S supervised partitions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gvae_dist.data.pairing import IDENTITY, KIND_NAMES, SHARED, PairingPlan, Pairs, make_pairs
from gvae_dist.gate import drop_high_loss
from gvae_dist.model import GatedVAE
from gvae_dist.objective import kl_weight, objective, reconstruction_loss, validate_objective, warmup_weight

__all__ = ["StepMetrics", "StepOut", "StepParts", "train_step"]


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


@dataclass
class StepParts:
    """What every step of a run works with, built once (by the loop or a benchmark).

    ``gate`` and ``objective`` are ``cfg.gate`` and ``cfg.objective`` (or objects with the same
    fields). ``model`` is what the step calls (the module, possibly compiled and wrapped);
    ``raw_model`` the plain module (``gate.closed_code: target`` encodes partners with it).
    ``context()`` is entered around forward, backward and optimizer step; ``clip_grad()``
    (optional) runs between backward and the optimizer step.
    """

    model: Callable[..., Any]
    raw_model: GatedVAE
    optimizer: torch.optim.Optimizer
    plan: PairingPlan
    pair_gen: torch.Generator
    gate: Any
    objective: Any
    partners: Any = None
    channels_last: bool = False
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    backward: Callable[[torch.Tensor], None] = _backward
    clip_grad: Callable[[], None] | None = None

    def __post_init__(self) -> None:
        validate_objective(self.objective)  # once per run, not in every step's objective()


@dataclass
class StepOut:
    """What a step leaves for its metrics: the pairings, per-example reconstruction ``[B]``
    and the objective's terms (see :func:`gvae_dist.objective.objective`)."""

    pairs: Pairs
    recon_B: torch.Tensor
    terms: dict[str, torch.Tensor]
    dropped_B: torch.Tensor | None = None  # gate.drop_high_loss: pairs whose gradient was dropped


def train_step(parts: StepParts, batch, reg_weight: float = 1.0, capacity: float = 0.0) -> StepOut:
    """One micro-batch: pair, forward, loss, backward, optimizer step (see module docstring).

    ``batch``: a :class:`gvae_dist.data.batch.Batch` (``image`` ``[B, C, H, W]`` in [0, 1],
    weak ``labels`` ``[B, L]``, ``factors``); ``reg_weight``: the regulariser's multiplier
    (:func:`gvae_dist.objective.warmup_weight`); ``capacity``: the annealed objective's KL target
    (:func:`gvae_dist.objective.capacity_at`). With gradient accumulation the optimizer (an
    Accelerate-prepared one) steps only on the last micro-batch.
    """
    g, oc = parts.gate, parts.objective
    x_BCHW = batch.image
    if parts.channels_last:
        x_BCHW = x_BCHW.contiguous(memory_format=torch.channels_last)
    partners = parts.partners
    own_B = partners.observe(batch) if partners is not None else None
    pairs = make_pairs(x_BCHW, batch.labels, parts.plan, parts.pair_gen, partners, own_B, batch.factors)
    with parts.context():
        closed_BD = None
        if g.enabled and g.closed_code == "target":
            closed_BD = parts.raw_model.sample_code(pairs.target_BCHW)  # one more encoder forward
        out = parts.model(
            x_BCHW,
            mask=pairs.mask_BD if g.enabled else None,
            closed_BD=closed_BD,
            decoder_update_B=None if g.decoder or not g.enabled else pairs.kind_B == IDENTITY,
        )
        recon_B = reconstruction_loss(
            out.logits.float(), pairs.target_BCHW, oc.likelihood, oc.gaussian_std, oc.gaussian_calibrated
        )
        dropped_B = None
        if g.enabled and g.drop_high_loss > 0:
            recon_B, dropped_B = drop_high_loss(recon_B, pairs.kind_B == SHARED, g.drop_high_loss)
        loss, terms = objective(
            oc,
            recon_B,
            out.mu.float(),
            out.logvar.float(),
            out.z_reg.float(),
            kl_mask=pairs.mask_BD if g.kl and g.enabled else None,
            reg_weight=reg_weight,
            capacity=capacity,
            reg_mask=pairs.mask_BD if g.regularizer and g.enabled else None,
        )
        parts.backward(loss)
        if parts.clip_grad is not None:
            parts.clip_grad()
        parts.optimizer.step()
        parts.optimizer.zero_grad(set_to_none=True)
    return StepOut(pairs, recon_B, terms, dropped_B)


class StepMetrics:
    """Running sums of the step metrics on the device; :meth:`flush` reads them back once.

    Per step: the objective's terms, ``gate/open_fraction``, ``pairing/found``, KL per partition
    (``kl/<p>``) and per dim (``kl_dim/<d>``), the share of examples whose gate opens each
    partition (``gate/open_share/<p>``), reconstruction per kind of pair (``recon/<kind>``) and
    the share of shared-factor draws that found a partner per supervised partition
    (``pairing/found/<p>``). ``gate_kl``: ``gate.kl`` (the effective beta of a partition is the
    KL weight over its open share unless the KL is gated too, docs/objectives.md).
    """

    def __init__(self, plan: PairingPlan, objective_cfg: Any, gate_kl: bool):
        self.plan, self.objective, self.gate_kl = plan, objective_cfg, gate_kl
        spec, device = plan.spec, plan.device
        self.masks_PD = spec.masks().to(device)
        # Share of the examples whose gate opens each partition (masks are constant per partition);
        # un-gated, every example's reconstruction gradient reaches every partition.
        self.share_PD = self.masks_PD / self.masks_PD.sum(1, keepdim=True)
        self.names = [part.name for part in spec]
        K, S = len(KIND_NAMES), plan.num_shared
        self.sums: dict[str, torch.Tensor] = {}
        self.kind_sum_K = torch.zeros(K, device=device)
        self.kind_cnt_K = torch.zeros(K, device=device)
        self.kl_sum_D = torch.zeros(spec.latent_dim, device=device)
        self.found_sum_S = torch.zeros(S, device=device)
        self.drawn_sum_S = torch.zeros(S, device=device)
        self.count = 0  # steps added since the last flush

    @torch.no_grad()
    def add(self, out: StepOut) -> None:
        """Add one step's metrics to the sums (no host sync)."""
        pairs = out.pairs
        terms = dict(out.terms)
        terms["gate/open_fraction"] = pairs.mask_BD.float().mean()
        terms["pairing/found"] = pairs.found
        if out.dropped_B is not None:
            terms["gate/dropped_fraction"] = out.dropped_B.float().mean()
        kl_D = terms.pop("kl_per_dim").detach().float()
        self.kl_sum_D += kl_D
        kl_P = self.masks_PD @ kl_D
        open_P = (
            pairs.mask_BD.float().mean(0) @ self.share_PD.T
            if self.plan.gate
            else torch.ones(len(self.names), device=kl_D.device)
        )
        for p, name in enumerate(self.names):
            terms[f"kl/{name}"] = kl_P[p]
            terms[f"gate/open_share/{name}"] = open_P[p]
        sums = self.sums
        for k, v in terms.items():
            sums[k] = sums[k] + v.detach().float() if k in sums else v.detach().float().clone()
        self.kind_sum_K.scatter_add_(0, pairs.kind_B, out.recon_B.detach().float())
        self.kind_cnt_K += torch.bincount(pairs.kind_B, minlength=len(KIND_NAMES)).float()
        self.found_sum_S += pairs.found_K
        self.drawn_sum_S += pairs.drawn_K
        self.count += 1

    def flush(self, step: int) -> dict[str, float]:
        """The means over the steps added since the last flush (one host sync), then reset.

        ``step``: the number of optimizer steps done; ``objective/warmup_weight`` is the weight
        of the last of them when the objective warms up.
        """
        keys, K, S, n = list(self.sums), len(KIND_NAMES), self.plan.num_shared, self.count
        values = torch.cat(
            [
                torch.stack([self.sums[k] for k in keys]),
                self.kind_sum_K,
                self.kind_cnt_K,
                self.kl_sum_D,
                self.found_sum_S,
                self.drawn_sum_S,
            ]
        ).tolist()  # one sync
        found_S, drawn_S = values[len(values) - 2 * S : len(values) - S], values[len(values) - S :]
        values = values[: len(values) - 2 * S]
        metrics = {k: v / n for k, v in zip(keys, values[: len(keys)])}
        ks, kc = values[len(keys) : len(keys) + K], values[len(keys) + K : len(keys) + 2 * K]
        for d, v in enumerate(values[len(keys) + 2 * K :]):
            metrics[f"kl_dim/{d:02d}"] = v / n
        for name, s, c in zip(KIND_NAMES, ks, kc):
            if c > 0:
                metrics[f"recon/{name}"] = s / c
        if self.objective.warmup_steps:
            metrics["objective/warmup_weight"] = warmup_weight(self.objective.warmup_steps, step - 1)
        for name in self.names:  # KL weight over the share of reconstruction gradient (docs/objectives.md)
            share = metrics[f"gate/open_share/{name}"]
            if share > 0:
                metrics[f"gate/effective_beta/{name}"] = kl_weight(self.objective) / (1.0 if self.gate_kl else share)
        for name, fd, dr in zip(self.plan.shared_names, found_S, drawn_S):
            if dr > 0:
                metrics[f"pairing/found/{name}"] = fd / dr
        self.reset()
        return metrics

    def reset(self) -> None:
        self.sums.clear()
        for t in (self.kind_sum_K, self.kind_cnt_K, self.kl_sum_D, self.found_sum_S, self.drawn_sum_S):
            t.zero_()
        self.count = 0
