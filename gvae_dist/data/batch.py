"""The Batch contract: what every training data source yields, and what it says about its data.

Every backend (:class:`gvae_dist.data.loader.MemoryLoader`, the shard loaders of
:mod:`gvae_dist.data.stream`) yields :class:`Batch` on the training device:

- ``image``   float ``[B, C, H, W]`` in [0, 1]
- ``labels``  int64 ``[B, L]`` weak (binned, possibly noisy) labels, used only for pairing
- ``factors`` float32 ``[B, F]`` ground truth, used only for evaluation
- ``keys``    sample keys (may be None for in-memory data)
- ``ids``     int64 ``[B]`` rows of the samples in the in-memory training set (None for shards);
              dataset partners use them to never pair a sample with itself

and describes its data with a :class:`DatasetInfo`. This module imports no other module of the
package, so every loader can depend on it without depending on another loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["Batch", "DatasetInfo", "to_float_nchw"]


@dataclass
class Batch:
    image: torch.Tensor
    labels: torch.Tensor
    factors: torch.Tensor
    keys: list[str] | None = None
    ids: torch.Tensor | None = None

    def to(self, device: torch.device, non_blocking: bool = True) -> Batch:
        return Batch(
            self.image.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.factors.to(device, non_blocking=non_blocking),
            self.keys,
            None if self.ids is None else self.ids.to(device, non_blocking=non_blocking),
        )


@dataclass
class DatasetInfo:
    """What the model and the evaluation need to know about a data source."""

    channels: int
    image_size: int
    factor_names: list[str]
    factor_discrete: list[bool]
    label_names: list[str]
    num_samples: int
    extra: dict = field(default_factory=dict)


def to_float_nchw(images_NHWC: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [0, 1]: the model's input
    layout, defined once (loaders, partner banks, evaluation, pictures and benchmarks use it)."""
    return images_NHWC.permute(0, 3, 1, 2).float().div_(255.0)
