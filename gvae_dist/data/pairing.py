"""Image/target pairings and gate masks for Gated-VAE weak supervision.

Source: Vowels, Camgoz, Bowden, "Gated Variational AutoEncoders" (arXiv 1911.06443). Each example
is paired with a *target*; the decoder must rebuild the target from the input's code, and the gate
mask says which latent partition(s) receive that reconstruction gradient:

- ``identity``: target = the input itself; mask = ``pairing.identity_partitions`` (default all).
- ``shared_factor``: choose a partition k that lists factors; the target is another example of the
  batch whose weak labels for k's factors fall in the same bins (all of them, or one chosen at
  random: ``pairing.match``); mask = partition k only. What the two images share is exactly what
  partition k is meant to hold, so only k is trained to carry it.
- ``transform``: target = a transform of the input (Gaussian blur, horizontal flip); mask = the
  partition named by ``pairing.transform_partition``.

Fallback (documented, reported): an example drawn for ``shared_factor`` whose batch holds no
partner becomes an ``identity`` pair. ``Pairs.found`` is the fraction of shared_factor draws that
found a partner; the train loop logs it.

Everything is vectorised on the batch's device: no Python loop over examples, no host sync, and
all randomness comes from the ``torch.Generator`` passed in (seeded per rank, checkpointed).

Legend: B batch, C channels, H/W pixels, L weak labels, P partitions, D latent dims.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gvae_dist.gate import PartitionSpec

__all__ = ["KIND_NAMES", "Pairs", "PairingPlan", "make_pairs"]

KIND_NAMES = ("identity", "shared_factor", "transform")
IDENTITY, SHARED, TRANSFORM = 0, 1, 2


@dataclass
class Pairs:
    """One batch's pairings."""

    target_BCHW: torch.Tensor
    mask_BD: torch.Tensor  # float 0/1; all ones when gating is off
    kind_B: torch.Tensor  # int64 in {0: identity, 1: shared_factor, 2: transform}
    partition_B: torch.Tensor  # int64 partition trained by the pair, -1 for identity pairs
    found: torch.Tensor  # 0-d float: share of shared_factor draws that found a partner


class PairingPlan:
    """Everything ``make_pairs`` needs, resolved once from the config (device tensors).

    Args:
        spec: latent partitions.
        label_names: names of the weak-label columns of ``Batch.labels``.
        probs: (identity, shared_factor, transform) probabilities (normalised here).
        identity_partitions: partitions trained by identity pairs (empty = all).
        match: ``"all"`` or ``"one"`` (see module doc).
        transform_kind, transform_partition, blur_sigma: the transform pairs.
        gate: False gives all-ones masks (the un-gated baseline) with the same targets.
    """

    def __init__(
        self,
        spec: PartitionSpec,
        label_names: list[str],
        probs: tuple[float, float, float] = (0.2, 0.8, 0.0),
        identity_partitions: list[str] | tuple[str, ...] = (),
        match: str = "all",
        transform_kind: str = "blur",
        transform_partition: str = "rest",
        blur_sigma: float = 1.5,
        gate: bool = True,
        device: torch.device | str = "cpu",
    ):
        if match not in ("all", "one"):
            raise ValueError(f"pairing.match: {match!r} is not allowed; choose 'all' or 'one'")
        if transform_kind not in ("blur", "hflip"):
            raise ValueError(f"pairing.transform_kind: {transform_kind!r}; choose 'blur' or 'hflip'")
        total = sum(probs)
        if min(probs) < 0 or total <= 0:
            raise ValueError(f"pairing: probabilities must be >= 0 with a positive sum, got {probs}")
        self.spec, self.match, self.gate = spec, match, gate
        self.transform_kind, self.blur_sigma = transform_kind, blur_sigma
        self.device = torch.device(device)
        masks_PD = spec.masks()
        self.masks_PD = masks_PD.to(self.device)

        # Partitions with factors, and which label columns each of them matches on.
        shared_rows, shared_parts = [], []
        for i, part in enumerate(spec):
            if not part.factors:
                continue
            missing = [f for f in part.factors if f not in label_names]
            if missing:
                raise ValueError(f"partitions.{part.name}.factors: {missing} not among the data's weak "
                                 f"labels {label_names}")
            shared_rows.append([name in part.factors for name in label_names])
            shared_parts.append(i)
        p_id, p_sh, p_tr = probs
        if not shared_parts:
            if p_sh > 0:
                raise ValueError("pairing.shared_factor > 0 but no partition lists factors")
            shared_rows, shared_parts = [[False] * len(label_names)], [0]
        self.has_transform = p_tr > 0
        self.probs = torch.tensor([p_id, p_sh, p_tr], dtype=torch.float32, device=self.device) / total
        self.shared_labels_SL = torch.tensor(shared_rows, dtype=torch.bool, device=self.device)
        self.shared_parts_S = torch.tensor(shared_parts, dtype=torch.long, device=self.device)

        if identity_partitions:
            idx = [spec.index(n) for n in identity_partitions]
            self.identity_mask_D = masks_PD[idx].sum(0).clamp(max=1).to(self.device)
        else:
            self.identity_mask_D = torch.ones(spec.latent_dim, device=self.device)
        self.transform_part = spec.index(transform_partition) if self.has_transform else -1
        self._blur_kernel = self._gaussian_kernel(blur_sigma).to(self.device) if transform_kind == "blur" else None

    @staticmethod
    def _gaussian_kernel(sigma: float) -> torch.Tensor:
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (x / sigma) ** 2)
        return k / k.sum()

    @classmethod
    def from_config(cls, cfg, label_names: list[str], device="cpu") -> PairingPlan:
        p = cfg.pairing
        return cls(cfg.partition_spec(), label_names, (p.identity, p.shared_factor, p.transform),
                   p.identity_partitions, p.match, p.transform_kind, p.transform_partition,
                   p.blur_sigma, cfg.gate.enabled, device)

    def transform(self, images_BCHW: torch.Tensor) -> torch.Tensor:
        """The transform-pair target of every example."""
        if self.transform_kind == "hflip":
            return images_BCHW.flip(-1)
        C = images_BCHW.shape[1]
        k = self._blur_kernel.to(images_BCHW.dtype)
        r = k.numel() // 2
        x = F.pad(images_BCHW, (r, r, r, r), mode="replicate")
        x = F.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        return F.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def make_pairs(
    images_BCHW: torch.Tensor, labels_BL: torch.Tensor, plan: PairingPlan, generator: torch.Generator
) -> Pairs:
    """Draw a pairing kind per example and build its target and gate mask (see module doc)."""
    B, dev = images_BCHW.shape[0], images_BCHW.device
    kind_B = torch.multinomial(plan.probs, B, replacement=True, generator=generator)

    # shared_factor: pick a partition per example, then a random partner matching its labels.
    S = plan.shared_parts_S.numel()
    choice_B = torch.randint(0, S, (B,), device=dev, generator=generator)
    rel_BL = plan.shared_labels_SL[choice_B]
    if plan.match == "one":
        # keep one of the partition's labels per example, chosen uniformly
        pick_BL = torch.rand(rel_BL.shape, device=dev, generator=generator) * rel_BL
        rel_BL = F.one_hot(pick_BL.argmax(1), rel_BL.shape[1]).bool() & rel_BL
    same_BBL = labels_BL.unsqueeze(1) == labels_BL.unsqueeze(0)
    match_BB = (same_BBL | ~rel_BL.unsqueeze(1)).all(-1)
    match_BB &= ~torch.eye(B, dtype=torch.bool, device=dev)
    # a uniformly random partner among the matches: argmax of random scores on matching columns
    score_BB = torch.rand((B, B), device=dev, generator=generator).masked_fill_(~match_BB, -1.0)
    partner_B = score_BB.argmax(1)
    has_partner_B = match_BB.any(1)
    wants_shared_B = kind_B == SHARED
    found = (wants_shared_B & has_partner_B).sum() / wants_shared_B.sum().clamp(min=1)
    kind_B = torch.where(wants_shared_B & ~has_partner_B, torch.full_like(kind_B, IDENTITY), kind_B)

    src_B = torch.where(kind_B == SHARED, partner_B, torch.arange(B, device=dev))
    target_BCHW = images_BCHW[src_B]
    if plan.has_transform:
        is_tr = (kind_B == TRANSFORM).view(B, 1, 1, 1)
        target_BCHW = torch.where(is_tr, plan.transform(images_BCHW), target_BCHW)

    shared_part_B = plan.shared_parts_S[choice_B]
    partition_B = torch.where(kind_B == SHARED, shared_part_B,
                              torch.where(kind_B == TRANSFORM, plan.transform_part, -1))
    if plan.gate:
        part_mask_BD = plan.masks_PD[partition_B.clamp(min=0)]
        mask_BD = torch.where((kind_B == IDENTITY).unsqueeze(1), plan.identity_mask_D, part_mask_BD)
    else:
        mask_BD = torch.ones(B, plan.spec.latent_dim, device=dev)
    return Pairs(target_BCHW, mask_BD.to(images_BCHW.dtype), kind_B, partition_B, found)
