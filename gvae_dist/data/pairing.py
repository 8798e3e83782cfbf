"""Image/target pairings and gate masks for Gated-VAE weak supervision.

Source: Vowels, Camgoz, Bowden, "Gated Variational AutoEncoders" (arXiv 1911.06443). Each example
is paired with a *target*; the decoder must rebuild the target from the input's code, and the gate
mask says which latent partition(s) receive that reconstruction gradient:

- ``identity``: target = the input itself; mask = ``pairing.identity_partitions`` (default all).
- ``shared_factor``: choose a partition k that lists factors; the target is another example whose
  weak labels for k's factors fall in the same bins (all of them, or one chosen at random:
  ``pairing.match``; with ``pairing.match_nuisance`` the labels of factors no partition lists must
  agree too); mask = partition k only. What the two images share is exactly what partition k is
  meant to hold, so only k is trained to carry it. Where the partner comes from is
  ``pairing.partner``: a batch-mate, the whole dataset (or a shard loader's bank), or a render
  that changes only the other supervised partitions' factors (:mod:`gvae_dist.data.partners`).
- ``transform``: target = a transform of the input (Gaussian blur, horizontal flip); mask = the
  partition named by ``pairing.transform_partition``.

Fallback (documented, reported): an example drawn for ``shared_factor`` that finds no partner
becomes an ``identity`` pair. ``Pairs.found`` is the fraction of shared_factor draws that found a
partner (``Pairs.found_K`` / ``drawn_K`` per supervised partition); the train loop logs them.

Everything is vectorised on the batch's device: no Python loop over examples, no host sync, and
all randomness comes from the ``torch.Generator`` passed in (seeded per rank, checkpointed).

Legend: B batch, C channels, H/W pixels, L weak labels, P partitions, D latent dims, K supervised
partitions (those listing factors), T match sets (label columns a partner must agree on).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gvae_dist.data.partners import match_sets
from gvae_dist.gate import PartitionSpec

__all__ = ["KIND_NAMES", "Pairs", "PairingPlan", "make_pairs"]

KIND_NAMES = ("identity", "shared_factor", "transform")
IDENTITY, SHARED, TRANSFORM = 0, 1, 2

log = logging.getLogger("gvae_dist.data")


@dataclass
class Pairs:
    """One batch's pairings."""

    target_BCHW: torch.Tensor
    mask_BD: torch.Tensor  # float 0/1; all ones when gating is off
    kind_B: torch.Tensor  # int64 in {0: identity, 1: shared_factor, 2: transform}
    partition_B: torch.Tensor  # int64 partition trained by the pair, -1 for identity pairs
    found: torch.Tensor  # 0-d float: share of shared_factor draws that found a partner
    found_K: torch.Tensor | None = None  # float [K supervised partitions]: draws that found one
    drawn_K: torch.Tensor | None = None  # float [K]: shared_factor draws per supervised partition


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
        match_nuisance: partners must also agree on the labels no partition lists.
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
        match_nuisance: bool = False,
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
                raise ValueError(
                    f"partitions.{part.name}.factors: {missing} not among the data's weak labels {label_names}"
                )
            shared_rows.append([name in part.factors for name in label_names])
            shared_parts.append(i)
        p_id, p_sh, p_tr = probs
        if not shared_parts:
            if p_sh > 0:
                raise ValueError("pairing.shared_factor > 0 but no partition lists factors")
            shared_rows, shared_parts = [[False] * len(label_names)], [0]
        self.has_transform = p_tr > 0
        self.probs = torch.tensor([p_id, p_sh, p_tr], dtype=torch.float32, device=self.device) / total
        self.shared_parts_S = torch.tensor(shared_parts, dtype=torch.long, device=self.device)
        self.num_shared = len(shared_parts)
        self.shared_names = [spec.partitions[i].name for i in shared_parts]

        # Match sets: the label columns a partner must agree on (gvae_dist.data.partners).
        part_cols = [[c for c, on in enumerate(row) if on] for row in shared_rows]
        listed = {c for cols in part_cols for c in cols}
        self.nuisance_cols = [c for c in range(len(label_names)) if c not in listed]
        if match_nuisance and not self.nuisance_cols and p_sh > 0:
            log.warning(
                "pairing.match_nuisance: every weak label %s belongs to a partition, so "
                "there are no nuisance labels to match; the setting has no effect",
                label_names,
            )
        self.sets, owner = match_sets(
            part_cols, len(label_names), match, self.nuisance_cols if match_nuisance else None
        )
        self.set_names = [
            f"{spec.partitions[shared_parts[k]].name} ({', '.join(label_names[c] for c in cols)})"
            for cols, k in zip(self.sets, owner)
        ]
        self.set_owner_T = torch.tensor(owner, dtype=torch.long, device=self.device)
        cols_TL = torch.zeros(len(self.sets), len(label_names), dtype=torch.bool)
        for t, cols in enumerate(self.sets):
            cols_TL[t, cols] = True
        self.set_cols_TL = cols_TL.to(self.device)
        first = [owner.index(k) for k in range(len(shared_parts))]
        self.set_first_K = torch.tensor(first, dtype=torch.long, device=self.device)
        self.set_count_K = torch.tensor(
            [owner.count(k) for k in range(len(shared_parts))], dtype=torch.long, device=self.device
        )

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
        return cls(
            cfg.partition_spec(),
            label_names,
            (p.identity, p.shared_factor, p.transform),
            p.identity_partitions,
            p.match,
            p.transform_kind,
            p.transform_partition,
            p.blur_sigma,
            cfg.gate.enabled,
            device,
            p.match_nuisance,
        )

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
    images_BCHW: torch.Tensor,
    labels_BL: torch.Tensor,
    plan: PairingPlan,
    generator: torch.Generator,
    partners=None,
    own_B: torch.Tensor | None = None,
    factors_BF: torch.Tensor | None = None,
) -> Pairs:
    """Draw a pairing kind per example and build its target and gate mask (see module doc).

    ``partners``: a source from :func:`gvae_dist.data.partners.build_partners` (None = batch
    partners); ``own_B``: the examples' rows in it (``partners.observe(batch)``);
    ``factors_BF``: ground truth, read only by rendered partners.
    """
    B, dev = images_BCHW.shape[0], images_BCHW.device
    kind_B = torch.multinomial(plan.probs, B, replacement=True, generator=generator)

    # shared_factor: pick a supervised partition per example, then one of its match sets.
    K = plan.num_shared
    choice_B = torch.randint(0, K, (B,), device=dev, generator=generator)
    sub_B = (torch.rand(B, device=dev, generator=generator) * plan.set_count_K[choice_B]).long()
    set_B = plan.set_first_K[choice_B] + sub_B.clamp(max=plan.set_count_K[choice_B] - 1)
    wants_shared_B = kind_B == SHARED
    if partners is None:
        rel_BL = plan.set_cols_TL[set_B]
        same_BBL = labels_BL.unsqueeze(1) == labels_BL.unsqueeze(0)
        match_BB = (same_BBL | ~rel_BL.unsqueeze(1)).all(-1)
        match_BB &= ~torch.eye(B, dtype=torch.bool, device=dev)
        # a uniformly random partner among the matches: argmax of random scores on matching columns
        score_BB = torch.rand((B, B), device=dev, generator=generator).masked_fill_(~match_BB, -1.0)
        has_partner_B = match_BB.any(1)
        partner_BCHW = images_BCHW[score_BB.argmax(1)]
    else:
        partner_BCHW, has_partner_B = partners.draw(labels_BL, factors_BF, set_B, own_B, generator, wants_shared_B)
        partner_BCHW = partner_BCHW.to(images_BCHW.dtype)
    hit_B = wants_shared_B & has_partner_B
    found = hit_B.sum() / wants_shared_B.sum().clamp(min=1)
    drawn_K = torch.zeros(K, device=dev).index_add_(0, choice_B, wants_shared_B.float())
    found_K = torch.zeros(K, device=dev).index_add_(0, choice_B, hit_B.float())
    kind_B = torch.where(wants_shared_B & ~has_partner_B, torch.full_like(kind_B, IDENTITY), kind_B)

    is_sh = (kind_B == SHARED).view(B, 1, 1, 1)
    target_BCHW = torch.where(is_sh, partner_BCHW, images_BCHW)
    if plan.has_transform:
        is_tr = (kind_B == TRANSFORM).view(B, 1, 1, 1)
        target_BCHW = torch.where(is_tr, plan.transform(images_BCHW), target_BCHW)

    shared_part_B = plan.shared_parts_S[choice_B]
    partition_B = torch.where(
        kind_B == SHARED, shared_part_B, torch.where(kind_B == TRANSFORM, plan.transform_part, -1)
    )
    if plan.gate:
        part_mask_BD = plan.masks_PD[partition_B.clamp(min=0)]
        mask_BD = torch.where((kind_B == IDENTITY).unsqueeze(1), plan.identity_mask_D, part_mask_BD)
    else:
        mask_BD = torch.ones(B, plan.spec.latent_dim, device=dev)
    return Pairs(target_BCHW, mask_BD.to(images_BCHW.dtype), kind_B, partition_B, found, found_K, drawn_K)
