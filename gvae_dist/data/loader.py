"""The training and evaluation data sources behind the :class:`~gvae_dist.data.batch.Batch`
contract (defined in :mod:`gvae_dist.data.batch`), and the dispatch between them.

Backends: ``memory`` (built-in synthetic data held in RAM, sharded by rank). The shard backends
(DALI, WebDataset) live in ``gvae_dist.data.stream`` and follow the same ``TrainLoader``
protocol: iterate batches forever, ``state_dict()`` / ``load_state_dict()`` for the data position.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from gvae_dist.data.batch import Batch, DatasetInfo, to_float_nchw
from gvae_dist.data.synthetic import SyntheticSet, generate, weak_labels

__all__ = ["MemoryLoader", "build_train_loader", "load_eval_arrays"]


def _synthetic(cfg, n: int, seed: int) -> tuple[SyntheticSet, np.ndarray]:
    d = cfg.data
    data = generate(d.source, n, seed=seed, image_size=d.image_size, feature_scale=d.feature_scale)
    labels_NL = weak_labels(
        data.factors, data.factor_specs, d.label_bins, d.label_flip_prob, d.label_jitter, seed=seed + 7919
    )
    return data, labels_NL


def _info(data: SyntheticSet) -> DatasetInfo:
    return DatasetInfo(
        channels=data.images.shape[-1],
        image_size=data.images.shape[1],
        factor_names=list(data.factor_names),
        factor_discrete=[bool(getattr(s, "discrete", False)) for s in data.factor_specs],
        label_names=list(data.factor_names),
        num_samples=len(data.images),
    )


class MemoryLoader:
    """Endless, seeded, rank-sharded batches from arrays held in memory.

    Each epoch is a permutation of all samples drawn from ``seed + epoch``; rank r takes every
    ``world``-th index of it, so ranks never overlap within an epoch. The data position
    (``epoch``, ``index``) is part of the checkpoint.
    """

    def __init__(
        self,
        images_NHWC: np.ndarray,
        labels_NL: np.ndarray,
        factors_NF: np.ndarray,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        device: torch.device,
        info: DatasetInfo,
    ):
        self.images = torch.from_numpy(images_NHWC)  # uint8; converted per batch
        self.labels = torch.from_numpy(labels_NL.astype(np.int64))
        self.factors = torch.from_numpy(factors_NF.astype(np.float32))
        self.batch_size, self.rank, self.world, self.seed = batch_size, rank, world, seed
        self.device, self.info = device, info
        self.epoch, self.index = 0, 0
        self.skipped = 0  # bad samples skipped (always 0 for generated data)
        self._order = self._epoch_order()

    def _epoch_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(len(self.images), generator=g)
        return perm[self.rank :: self.world]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._epoch_order()

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.index + self.batch_size > len(self._order):  # drop the ragged tail of an epoch
            self.epoch, self.index = self.epoch + 1, 0
            self._order = self._epoch_order()
        idx = self._order[self.index : self.index + self.batch_size]
        self.index += self.batch_size
        image = self.images[idx].to(self.device, non_blocking=True)
        image_BCHW = to_float_nchw(image)
        return Batch(
            image_BCHW, self.labels[idx].to(self.device), self.factors[idx].to(self.device), ids=idx.to(self.device)
        )


def build_train_loader(
    cfg, rank: int = 0, world: int = 1, device: torch.device | str = "cpu", batch_size: int | None = None
):
    """The training loader for ``cfg.data`` (per-rank batch size defaults to global / world)."""
    device = torch.device(device)
    per_rank = batch_size or cfg.optim.batch_size // world
    d = cfg.data
    if d.source == "shards" or d.backend in ("dali", "webdataset"):
        from gvae_dist.data.stream import build_stream_loader

        return build_stream_loader(cfg, rank, world, device, per_rank)
    data, labels = _synthetic(cfg, d.num_train, d.seed)
    return MemoryLoader(data.images, labels, data.factors, per_rank, rank, world, cfg.run.seed, device, _info(data))


def load_eval_arrays(cfg, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, DatasetInfo]:
    """Held-out images ``uint8 [N, H, W, C]`` and factors ``[N, F]`` for evaluation."""
    d = cfg.data
    if d.source == "shards":
        from gvae_dist.data.stream import load_eval_arrays as from_shards

        return from_shards(cfg, limit)
    n = min(limit or d.num_eval, d.num_eval)
    # a different seed stream than training: held-out samples
    data = generate(d.source, n, seed=d.seed + 1_000_003, image_size=d.image_size, feature_scale=d.feature_scale)
    return data.images, data.factors, _info(data)
