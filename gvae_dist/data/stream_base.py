"""What the shard backends share: the epoch and padding policy, train-time label noise, image
decoding and :class:`StreamLoaderBase`, the base class of both loaders.

The dispatcher :mod:`gvae_dist.data.stream` picks a backend (:mod:`gvae_dist.data.stream_dali`,
:mod:`gvae_dist.data.stream_wds`); both derive from the base here, which imports neither, so
the backends never import their dispatcher.

Epoch and padding policy (both backends; it is DALI's reader policy with ``pad_last_batch``):
the N readable samples in stored order are split into ``world`` contiguous slices,
``[N*s//world, N*(s+1)//world)``; in epoch e rank r reads slice ``(r + e) % world``, shuffled
with a seeded buffer of ``data.shuffle_buffer`` samples. Every rank yields
``ceil(ceil(N / world) / B)`` batches per epoch (equal counts keep DDP in step); a rank whose
slice is shorter than that repeats its last sample to fill them. So across ranks one epoch sees
every sample exactly once plus ``padded`` repeats, reported by :func:`epoch_layout` and in
``loader.info.extra["epoch"]``. Loaders iterate forever; ``state_dict()`` holds the position.

Label noise: ``data.label_flip_prob`` is the noise level of the weak labels a run trains on. Shards
store the labels of their build (``generating_config.label_flip_prob`` in the manifest); a higher
train-time value is reached by flipping the labels read, per sample key and label column,
seeded by ``data.seed`` (:func:`flip_labels`), so a sample keeps its noisy labels across epochs,
ranks, backends and resumes. A lower value cannot be (noise cannot be taken out): refused.
"""

from __future__ import annotations

import io
import json
import logging
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from gvae_dist.data.batch import Batch, DatasetInfo

__all__ = ["StreamLoaderBase", "decode_image", "epoch_layout", "flip_labels", "rank_range", "train_time_flip"]

log = logging.getLogger("gvae_dist.data")


def rank_range(n: int, rank: int, world: int, epoch: int) -> tuple[int, int]:
    """Positions ``[lo, hi)`` that ``rank`` reads in ``epoch`` (see module docstring)."""
    s = (rank + epoch) % world
    return n * s // world, n * (s + 1) // world


def epoch_layout(n: int, world: int, batch_size: int) -> dict:
    """Batches per rank per epoch and how many samples are repeats (padding)."""
    if n < world:
        raise ValueError(f"{n} readable samples cannot be split over {world} ranks")
    per_rank = math.ceil(math.ceil(n / world) / batch_size)
    yielded = per_rank * batch_size * world
    return {
        "samples": n,
        "world": world,
        "batch_size": batch_size,
        "batches_per_rank": per_rank,
        "yielded": yielded,
        "padded": yielded - n,
        "policy": "each rank repeats the last sample of its slice to fill its batches",
    }


def train_time_flip(manifest: dict, want: float, where) -> float:
    """The flip probability to apply to the labels read so that they carry ``want`` noise in
    all, given the noise they were built with: replacement by a uniform draw composes as
    ``1 - (1 - built)(1 - extra)``."""
    built = float((manifest.get("generating_config") or {}).get("label_flip_prob", 0.0))
    if math.isclose(want, built):
        return 0.0
    if want < built:
        raise ValueError(
            f"data.label_flip_prob={want:g}, but the shards at {where} were built with "
            f"label_flip_prob={built:g} (manifest.json generating_config): their labels already "
            f"carry that noise and it cannot be taken out. Set data.label_flip_prob={built:g} "
            "(or higher), or rebuild the shards with the lower value"
        )
    return 1.0 - (1.0 - want) / (1.0 - built) if built < 1.0 else 0.0


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a stateless uint64 hash (counter-based randomness)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def flip_labels(labels_BL: np.ndarray, keys: list[str], label_meta: list[dict], prob: float, seed: int) -> np.ndarray:
    """Each label replaced with probability ``prob`` by a uniform draw over its classes
    (possibly the same one, as :func:`gvae_dist.data.synthetic.weak_labels` does); the draws are
    a function of (``seed``, sample key, column) only."""
    B, L = labels_BL.shape
    with np.errstate(over="ignore"):
        key_B = np.array([zlib.crc32(k.encode()) for k in keys], dtype=np.uint64)
        base_BL = (key_B[:, None] << np.uint64(32)) ^ (np.arange(L, dtype=np.uint64)[None] << np.uint64(8))
        base_BL = _mix64(base_BL ^ _mix64(np.full((B, L), seed & 0xFFFFFFFF, dtype=np.uint64)))
        u_BL = (_mix64(base_BL) >> np.uint64(11)).astype(np.float64) / 2.0**53
        v_BL = (_mix64(base_BL ^ np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(11)).astype(np.float64) / 2.0**53
    low_L = np.array([int(m.get("low", 0)) for m in label_meta], dtype=np.int64)
    classes_L = np.array([int(m["num_classes"]) for m in label_meta], dtype=np.int64)
    random_BL = low_L + np.minimum((v_BL * classes_L).astype(np.int64), classes_L - 1)
    return np.where(u_BL < prob, random_BL, labels_BL)


class StreamLoaderBase:
    """What both backends share: the info, the epoch layout, the position and its state."""

    backend = "?"

    def __init__(self, shards, cfg, rank: int, world: int, device: torch.device, batch_size: int):
        d = cfg.data
        self.shards, self.rank, self.world, self.device = shards, rank, world, device
        self.batch_size, self.seed = batch_size, cfg.run.seed
        self.image_size, self.channels = d.image_size, int(shards.manifest["channels"])
        self.native_size = int(shards.manifest["image_size"])
        self.layout = epoch_layout(shards.num_samples, world, batch_size)
        self.skipped = shards.skipped  # bad samples left out (reaches metrics as data/skipped_samples)
        self.info: DatasetInfo = shards.info()
        self.info.image_size = self.image_size
        self.info.extra["epoch"] = self.layout
        self.info.extra["backend"] = self.backend
        self.flip_prob = train_time_flip(shards.manifest, d.label_flip_prob, shards.root)
        self.flip_seed = d.seed
        if self.flip_prob > 0 and rank == 0:
            log.info(
                "data.label_flip_prob=%g: flipping %.3g of the shards' weak labels as they are read",
                d.label_flip_prob,
                self.flip_prob,
            )
        self.epoch, self.batch = 0, 0  # position: batches consumed in the current epoch
        self._record: Path | None = None  # where to write the keys of the first epoch
        self._keys: list[str] = []
        if self.native_size != self.image_size:
            log.warning(
                "shards hold %dx%d images; resizing to data.image_size=%d while loading",
                self.native_size,
                self.native_size,
                self.image_size,
            )

    def record_to(self, path: Path) -> None:
        """Write what this rank reads to ``path`` (JSON): now the backend, split and layout, and
        once its first epoch is complete the keys it yielded (padding repeats included)."""
        self._record = Path(path)
        self._record.parent.mkdir(parents=True, exist_ok=True)
        self._write_record(None)

    def _write_record(self, keys: list[str] | None) -> None:
        extra = self.info.extra
        record = {
            "rank": self.rank,
            "world": self.world,
            "backend": self.backend,
            "decode_device": "gpu" if self.device.type == "cuda" else "cpu",
            "path": extra["path"],
            "split": extra["split"],
            "samples": self.shards.num_samples,
            "shards": [sh.tar.name for sh in self.shards.shards],
            "layout": self.layout,
            "first_epoch_keys": keys,
        }
        tmp = self._record.with_name(f".{self._record.name}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self._record)

    def _advance(self) -> None:
        self.batch += 1
        if self.batch == self.layout["batches_per_rank"]:
            self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"backend": self.backend, "epoch": self.epoch, "batch": self.batch}

    def __iter__(self):
        return self

    def _batch(self, image_BCHW, labels_BL, factors_BF, keys) -> Batch:
        per_epoch = self.layout["batches_per_rank"]
        # _advance ran already: this batch was number (batch - 1) of its epoch; record whole epochs
        if self._record is not None and (self._keys or (self.batch - 1) % per_epoch == 0):
            self._keys += keys
            if len(self._keys) == per_epoch * self.batch_size:
                self._write_record(self._keys)
                self._record, self._keys = None, []
        if self.flip_prob > 0:
            flipped = flip_labels(
                labels_BL.cpu().numpy(), keys, self.shards.manifest["labels"], self.flip_prob, self.flip_seed
            )
            labels_BL = torch.from_numpy(flipped)
        return Batch(
            image_BCHW,
            labels_BL.to(self.device, non_blocking=True),
            factors_BF.to(self.device, non_blocking=True),
            keys,
        )


def decode_image(data: bytes, channels: int, size: int, native: int) -> np.ndarray:
    """PNG/JPEG bytes of a ``native`` x ``native`` image -> uint8 [size, size, channels].

    ``ValueError`` if the image is not ``native`` pixels square (the manifest's size).
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        if img.size != (native, native):
            raise ValueError(f"image is {img.size[0]}x{img.size[1]}, the manifest says {native}x{native}")
        img = img.convert("L" if channels == 1 else "RGB")
        if native != size:  # data.image_size differs from the shards: resize (antialiased)
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img).reshape(size, size, channels)
