"""Where a shared_factor pair's target comes from: the batch, the dataset, or a render.

``pairing.partner`` picks the source (see :mod:`gvae_dist.data.pairing` for the pair kinds):

- ``batch``: a batch-mate whose weak labels match (the original rule; small batches find few).
- ``dataset``: a :class:`PartnerIndex` over the samples this rank can reach, per *match set*
  (the label columns that must agree: partition k's columns for ``pairing.match: all``, one of
  them for ``match: one``, plus the nuisance columns with ``pairing.match_nuisance``).
  The in-memory loader (:class:`DatasetPartners`) indexes the whole training set: every rank
  holds all of it in RAM anyway, so every rank has the same index. The shard loaders
  (:class:`BankPartners`) cannot afford a random read per partner, so each rank keeps a ring
  buffer of the last ``pairing.bank_size`` samples it decoded (images as uint8 on the training
  device, with their labels) and indexes that; each batch is written into the bank before its
  partners are drawn, so the first steps find batch-mates only, and since ranks read rotating
  slices of the data (``gvae_dist.data.stream``) a bank mixes every rank's data over epochs.
  The bank is not checkpointed: a resumed run refills it.
- ``rendered`` (:class:`RenderedPartners`, built-in generators only): the partner keeps every
  ground-truth factor of the input except those of the *other* supervised partitions, which are
  resampled uniformly, and is rendered on the fly (CPU). The shared factors match exactly and
  the nuisance factors are identical, so the only part of the target the input's open partition
  cannot explain is what the closed partitions hold. It uses the true factors: label noise
  (``data.label_flip_prob``) does not reach it.

The index: per match set s, the labels of the store rows are packed into one int64 key
(mixed radix over each column's label range) and sorted; a query's partner is a uniform draw
from the run of equal keys, excluding the query's own row when it is in the store. Everything
runs on the device with the pairing generator: no host sync, seeded, checkpointed with it
(rendering is the exception: it syncs and runs on the CPU).

Legend: B batch, C channels, H/W pixels, L weak labels, F factors, N stored samples, S match sets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from gvae_dist.data.batch import to_float_nchw

if TYPE_CHECKING:  # numpy is imported where it is used: the GPU benchmark runs without it
    import numpy as np

__all__ = ["PartnerIndex", "DatasetPartners", "BankPartners", "RenderedPartners", "build_partners", "match_sets"]

log = logging.getLogger("gvae_dist.data")


def match_sets(
    part_columns: list[list[int]], num_labels: int, match: str, nuisance: list[int] | None = None
) -> tuple[list[list[int]], list[int]]:
    """The label-column sets partners must agree on, and the supervised partition of each.

    ``part_columns[k]``: label columns of supervised partition k. ``match="all"``: one set per
    partition; ``"one"``: one set per column of each partition (a draw picks one uniformly).
    ``nuisance`` columns are added to every set (``pairing.match_nuisance``).
    """
    sets, owner = [], []
    for k, cols in enumerate(part_columns):
        for chunk in [cols] if match == "all" or not cols else [[c] for c in cols]:
            sets.append(sorted(set(chunk) | set(nuisance or ())))
            owner.append(k)
    assert all(0 <= c < num_labels for s in sets for c in s)
    return sets, owner


class PartnerIndex:
    """Sorted label keys of N stored rows per match set; uniform same-key partner draws.

    Args:
        sets: label columns per match set.
        label_low_L, label_card_L: the label range of every column (values outside it never
            match); keys are packed in mixed radix over it.
    """

    def __init__(self, sets: list[list[int]], label_low_L, label_card_L, device="cpu"):
        self.device = torch.device(device)
        L = len(label_low_L)
        self.low_L = torch.as_tensor(label_low_L, dtype=torch.long, device=self.device)
        card_L = torch.as_tensor(label_card_L, dtype=torch.long, device=self.device).clamp(min=1)
        stride_SL = torch.zeros(len(sets), L, dtype=torch.long)
        for s, cols in enumerate(sets):
            mult = 1
            for c in cols:
                stride_SL[s, c] = mult
                mult *= int(card_L[c])
                if mult >= 2**62:
                    raise ValueError(
                        f"pairing: the labels of match set {cols} have too many "
                        "combinations to index; use pairing.match: one or fewer "
                        "label classes"
                    )
        self.stride_SL = stride_SL.to(self.device)
        self.card_L = card_L
        self.num_sets = len(sets)
        self.sorted_SN = self.order_SN = self.pos_SN = None
        self.num_rows = 0

    def keys(self, labels_NL: torch.Tensor) -> torch.Tensor:
        """``[S, N]`` int64 keys; -1 where a label of the set is outside its column's range."""
        rel_NL = labels_NL.to(self.device, torch.long) - self.low_L
        bad_NL = (rel_NL < 0) | (rel_NL >= self.card_L)
        # a broadcast sum, not a matmul: CUDA has no int64 matmul
        key_SN = (rel_NL.clamp(min=0).unsqueeze(0) * self.stride_SL.unsqueeze(1)).sum(-1)
        used_SL = self.stride_SL > 0
        bad_SN = (bad_NL.unsqueeze(0) & used_SL.unsqueeze(1)).any(-1)
        return key_SN.masked_fill(bad_SN, -1)

    def build(self, labels_NL: torch.Tensor) -> None:
        """Index the store's labels ``[N, L]`` (row i of the store = row i here)."""
        key_SN = self.keys(labels_NL)
        self.sorted_SN, self.order_SN = torch.sort(key_SN, dim=1, stable=True)
        self.pos_SN = torch.empty_like(self.order_SN)
        self.pos_SN.scatter_(
            1, self.order_SN, torch.arange(key_SN.shape[1], device=self.device).expand_as(self.order_SN).contiguous()
        )
        self.num_rows = key_SN.shape[1]

    def group_sizes(self) -> torch.Tensor:
        """``[S, N]``: how many stored rows (itself included) share row n's key in set s."""
        lo = torch.searchsorted(self.sorted_SN, self.sorted_SN, side="left")
        hi = torch.searchsorted(self.sorted_SN, self.sorted_SN, side="right")
        return (hi - lo).gather(1, self.pos_SN)

    def draw(
        self, labels_BL: torch.Tensor, set_B: torch.Tensor, own_B: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A uniform partner row per example among the stored rows with the same key in set
        ``set_B[b]``, never the example's own row ``own_B[b]`` (-1 or None: not stored).

        Returns ``(row_B, found_B)``; ``row_B`` is 0 where nothing was found.
        """
        B, dev = labels_BL.shape[0], self.device
        ar_B = torch.arange(B, device=dev)
        rand_B = torch.rand(B, device=dev, generator=generator)
        if self.num_rows == 0:
            return torch.zeros(B, dtype=torch.long, device=dev), torch.zeros(B, dtype=torch.bool, device=dev)
        q_SB = self.keys(labels_BL)
        lo_B = torch.searchsorted(self.sorted_SN, q_SB, side="left")[set_B, ar_B]
        hi_B = torch.searchsorted(self.sorted_SN, q_SB, side="right")[set_B, ar_B]
        count_B = torch.where(q_SB[set_B, ar_B] >= 0, hi_B - lo_B, 0)
        if own_B is None:
            own_B = torch.full((B,), -1, dtype=torch.long, device=dev)
        own_pos_B = self.pos_SN[set_B, own_B.clamp(min=0)]
        has_self_B = (own_B >= 0) & (own_pos_B >= lo_B) & (own_pos_B < hi_B) & (count_B > 0)
        avail_B = count_B - has_self_B.long()
        u_B = (rand_B * avail_B).long().clamp(max=(avail_B - 1).clamp(min=0))
        pos_B = lo_B + u_B
        pos_B = pos_B + (has_self_B & (pos_B >= own_pos_B)).long()
        row_B = self.order_SN[set_B, pos_B.clamp(max=self.num_rows - 1)]
        found_B = avail_B > 0
        return torch.where(found_B, row_B, 0), found_B


def _label_range(labels_NL: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    low = labels_NL.min(0) if len(labels_NL) else np.zeros(labels_NL.shape[1], np.int64)
    high = labels_NL.max(0) if len(labels_NL) else low
    return low, high - low + 1


def _to_float_BCHW(images_BHWC_u8: torch.Tensor) -> torch.Tensor:
    return to_float_nchw(images_BHWC_u8)


class DatasetPartners:
    """Partners from the whole in-memory training set (``MemoryLoader``; ``Batch.ids`` = rows).

    The uint8 images are moved to the training device once (N*H*W*C bytes: 245 MB for 20k
    64 px RGB faces).
    """

    kind = "dataset"

    def __init__(self, images_NHWC: torch.Tensor, labels_NL: torch.Tensor, sets, device):
        low, card = _label_range(labels_NL.cpu().numpy())
        self.index = PartnerIndex(sets, low, card, device)
        self.index.build(labels_NL.to(device))
        self.images = images_NHWC.to(device)

    def observe(self, batch) -> torch.Tensor | None:
        """Store rows of the batch's samples (their dataset rows)."""
        return batch.ids

    def coverage(self) -> torch.Tensor:
        """``[S]``: share of stored rows that have at least one partner in set s."""
        return (self.index.group_sizes() > 1).float().mean(1)

    def draw(self, labels_BL, factors_BF, set_B, own_B, generator, want_B=None):
        """Partner images ``[B, C, H, W]`` and whether each was found (see PartnerIndex.draw)."""
        row_B, found_B = self.index.draw(labels_BL, set_B, own_B, generator)
        return _to_float_BCHW(self.images[row_B]), found_B


class BankPartners:
    """Partners from a per-rank ring buffer of the last ``capacity`` samples decoded (shards)."""

    kind = "dataset"

    def __init__(self, capacity: int, image_shape_HWC, sets, label_low_L, label_card_L, device):
        self.capacity, self.device = capacity, torch.device(device)
        num_labels = len(label_low_L)
        self.images = torch.zeros((capacity, *image_shape_HWC), dtype=torch.uint8, device=self.device)
        self.labels = torch.zeros((capacity, num_labels), dtype=torch.long, device=self.device)
        # which sample a slot holds: a bank larger than a rank's share of an epoch holds a sample
        # twice, and a copy of the input is not a partner
        self.sample_ids = torch.full((capacity,), -1, dtype=torch.long, device=self.device)
        self.index = PartnerIndex(sets, label_low_L, label_card_L, device)
        self.filled, self.ptr = 0, 0

    def observe(self, batch) -> torch.Tensor:
        """Write the batch into the bank (oldest rows first) and index it; returns its slots."""
        B = batch.image.shape[0]
        slots_B = (self.ptr + torch.arange(B, device=self.device)) % self.capacity
        # the loaders made the floats as uint8 / 255: rounding back is exact
        img = batch.image.detach().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        self.images[slots_B] = img.permute(0, 2, 3, 1)
        self.labels[slots_B] = batch.labels.to(self.device, torch.long)
        if batch.keys is not None:
            ids = [hash(k) & 0x7FFFFFFFFFFFFFFF for k in batch.keys]
            self.sample_ids[slots_B] = torch.tensor(ids, dtype=torch.long, device=self.device)
        self.ptr, self.filled = (self.ptr + B) % self.capacity, min(self.filled + B, self.capacity)
        self.index.build(self.labels[: self.filled])
        return slots_B

    def draw(self, labels_BL, factors_BF, set_B, own_B, generator, want_B=None):
        """Partner images ``[B, C, H, W]`` and whether each was found (see PartnerIndex.draw)."""
        row_B, found_B = self.index.draw(labels_BL, set_B, own_B, generator)
        if own_B is not None:
            own_id_B = self.sample_ids[own_B]
            copy_B = (self.sample_ids[row_B] == own_id_B) & (own_id_B >= 0)
            found_B = found_B & ~copy_B
        return _to_float_BCHW(self.images[row_B]), found_B


class RenderedPartners:
    """Rendered partners for the built-in generators (see module doc).

    Args:
        kind: ``faces`` or ``shapes`` (``data.source``).
        part_factor_cols: factor columns of each supervised partition (index = its position in
            ``PairingPlan.shared_parts_S``).
    """

    kind = "rendered"

    def __init__(
        self, kind: str, image_size: int, part_factor_cols: list[list[int]], set_owner_T: torch.Tensor, device
    ):
        from gvae_dist.data.synthetic import FACTOR_SPECS

        specs = FACTOR_SPECS[kind]
        self.source, self.image_size, self.device = kind, image_size, torch.device(device)
        F = len(specs)
        self.low_F = torch.tensor([s.low for s in specs], dtype=torch.float64, device=self.device)
        self.high_F = torch.tensor([s.high for s in specs], dtype=torch.float64, device=self.device)
        self.discrete_F = torch.tensor([bool(s.discrete) for s in specs], device=self.device)
        # resample_KF[k]: the factors of every supervised partition except k
        K = len(part_factor_cols)
        own_KF = torch.zeros(K, F, dtype=torch.bool)
        for k, cols in enumerate(part_factor_cols):
            own_KF[k, cols] = True
        supervised_F = own_KF.any(0)
        self.resample_KF = (supervised_F.unsqueeze(0) & ~own_KF).to(self.device)
        self.set_owner_T = set_owner_T.to(self.device)

    def observe(self, batch) -> None:
        return None

    def partner_factors(
        self, factors_BF: torch.Tensor, part_B: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """The input's factors with the other supervised partitions' factors resampled."""
        f_BF = factors_BF.to(self.device, torch.float64)
        u_BF = torch.rand(f_BF.shape, device=self.device, generator=generator, dtype=torch.float64)
        span_F = self.high_F - self.low_F
        new_BF = torch.where(self.discrete_F, torch.floor(self.low_F + u_BF * (span_F + 1)), self.low_F + u_BF * span_F)
        new_BF = torch.minimum(torch.maximum(new_BF, self.low_F), self.high_F)
        return torch.where(self.resample_KF[part_B], new_BF, f_BF)

    def draw(self, labels_BL, factors_BF, set_B, own_B, generator, want_B=None):
        """Rendered partner images ``[B, C, H, W]`` and all-True found. Only the rows in
        ``want_B`` (the shared_factor draws) are rendered; the others are zeros."""
        from gvae_dist.data.synthetic import render

        if factors_BF is None:
            raise ValueError("pairing.partner=rendered needs the batch's ground-truth factors")
        dev = factors_BF.device
        new_BF = self.partner_factors(factors_BF, self.set_owner_T[set_B.to(self.device)], generator)
        rows = torch.arange(len(set_B)) if want_B is None else want_B.cpu().nonzero().flatten()
        images = render(self.source, new_BF[rows.to(self.device)].cpu().numpy(), self.image_size)
        out = torch.zeros((len(set_B), *images.shape[1:]), dtype=torch.uint8)
        out[rows] = torch.from_numpy(images)
        return _to_float_BCHW(out.to(dev)), torch.ones(len(set_B), dtype=torch.bool, device=dev)


def build_partners(cfg, loader, plan, device):
    """The partner source for ``pairing.partner`` (None for ``batch``); see module doc."""
    from gvae_dist.data.loader import MemoryLoader

    p = cfg.pairing
    if p.partner == "batch" or p.shared_factor <= 0:
        return None
    if p.partner == "rendered":
        if cfg.data.source not in ("faces", "shapes") or not isinstance(loader, MemoryLoader):
            raise ValueError(
                "pairing.partner=rendered renders the built-in generators: it needs "
                "data.source faces or shapes with data.backend auto or memory; use "
                "pairing.partner=dataset for shards"
            )
        names = loader.info.factor_names
        cols = [[names.index(f) for f in plan.spec.partitions[int(k)].factors] for k in plan.shared_parts_S.tolist()]
        return RenderedPartners(cfg.data.source, cfg.data.image_size, cols, plan.set_owner_T, device)
    if isinstance(loader, MemoryLoader):
        src = DatasetPartners(loader.images, loader.labels, plan.sets, device)
        cov = src.coverage()
        for s, name in enumerate(plan.set_names):
            if cov[s] < p.min_found:
                log.warning(
                    "pairing: only %.0f%% of training samples have a partner for %s; "
                    "lower data.label_bins, or set pairing.match: one%s",
                    100 * float(cov[s]),
                    name,
                    " or pairing.match_nuisance: false" if p.match_nuisance else "",
                )
        return src
    info = loader.info
    labels_meta = loader.shards.manifest["labels"]
    low = [int(lab.get("low", 0)) for lab in labels_meta]
    card = [int(lab["num_classes"]) for lab in labels_meta]
    size = cfg.data.image_size
    return BankPartners(p.bank_size, (size, size, info.channels), plan.sets, low, card, device)
