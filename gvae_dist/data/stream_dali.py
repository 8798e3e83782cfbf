"""The DALI backend: ``fn.readers.webdataset`` -> ``fn.decoders.image`` -> normalise, per rank.

Pipeline (one per rank, ``device_id=None`` when decoding on the CPU so no GPU or driver is
needed): the reader shards by sample (``shard_id=rank``, ``num_shards=world``), shuffles with a
seeded buffer and pads the last batch (see :mod:`gvae_dist.data.stream` for the epoch policy);
labels and factors come out as int64/float32 tensors through ``dtypes``, so no Python runs per
sample for them; images are decoded (``device="mixed"`` when batches go to a CUDA device),
resized only if ``data.image_size`` differs from the shards, and normalised to float CHW in
[0, 1] by ``crop_mirror_normalize``. ``Batch.keys`` come from each image's ``source_info``.

Bad samples: DALI stops the pipeline on an unreadable sample without naming it, so the start-up
check (:mod:`gvae_dist.data.shardset`) finds them first (label and factor sizes are checked on the
index in every mode, so DALI never batches a label vector of the wrong length); in skip mode the
reader gets rewritten index files without them. With ``data.verify=none`` a DALI error is
re-raised with that hint, and a label outside its classes (checked per batch, no copy) raises
``ValueError`` naming shard and key.

Position: DALI's own checkpointing (``enable_checkpointing``) serialises the reader state after
the last batch handed out; ``load_state_dict`` rebuilds the pipeline from it, which resumes the
exact sample order.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import weakref

import numpy as np
import torch

from gvae_dist.data.batch import Batch
from gvae_dist.data.checks import describe_label, label_bounds
from gvae_dist.data.shards import FACTORS_EXT, LABELS_EXT, key_width, split_member
from gvae_dist.data.stream_base import StreamLoaderBase

__all__ = ["DaliLoader"]

log = logging.getLogger("gvae_dist.data")
_READER = "Reader"


class DaliLoader(StreamLoaderBase):
    """Endless Batches for one rank from a DALI pipeline (see module docstring)."""

    backend = "dali"

    def __init__(self, shards, cfg, rank: int, world: int, device: torch.device, batch_size: int):
        super().__init__(shards, cfg, rank, world, device, batch_size)
        self._tmp = tempfile.mkdtemp(prefix="gvae-dali-index-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._tmp, True)
        self._paths, self._index_paths = shards.dali_inputs(self._tmp)
        self._threads = max(1, cfg.data.num_workers)
        self._shuffle_buffer = cfg.data.shuffle_buffer
        self._mixed = device.type == "cuda"
        self._key_width = self._uniform_key_width()
        low, num = label_bounds(shards.manifest["labels"])
        self._label_low, self._label_end = torch.from_numpy(low), torch.from_numpy(low + num)
        self._pipe = self._build()

    def _uniform_key_width(self) -> int | None:
        """The key length if every member name is ``<key>.<fmt>`` with keys of one length (as
        ``data build`` writes them): then keys are sliced out of ``source_info`` in the pipeline
        and come out as one dense array instead of one Python call per sample."""
        width = key_width(int(self.shards.manifest["num_samples"]))
        fmt = self.shards.manifest["image_format"]
        for sh in self.shards.shards:
            for entry in (sh.entries[0], sh.entries[-1]) if sh.entries else ():
                name = entry[0][3]
                if "/" in name or len(name) != width + 1 + len(fmt):
                    return None
        return width

    def _build(self, checkpoint: bytes | None = None):
        from nvidia.dali import fn, pipeline_def, types

        fmt = self.shards.manifest["image_format"]
        size, channels = self.image_size, self.channels

        @pipeline_def(enable_checkpointing=True)
        def pipeline():
            encoded, labels, factors = fn.readers.webdataset(
                paths=self._paths,
                index_paths=self._index_paths,
                ext=[fmt, LABELS_EXT, FACTORS_EXT],
                dtypes=[types.UINT8, types.INT64, types.FLOAT],
                missing_component_behavior="error",
                shard_id=self.rank,
                num_shards=self.world,
                random_shuffle=True,
                initial_fill=self._shuffle_buffer,
                pad_last_batch=True,
                seed=self.seed,
                name=_READER,
            )
            source = fn.get_property(encoded, key="source_info")  # b"<tar>:<offset>:<key>.<fmt>"
            if self._key_width:
                source = source[-(self._key_width + 1 + len(fmt)) : -(1 + len(fmt))]
            image = fn.decoders.image(
                encoded,
                device="mixed" if self._mixed else "cpu",
                output_type=types.GRAY if channels == 1 else types.RGB,
            )
            if self.native_size != size:
                image = fn.resize(image, resize_x=size, resize_y=size, antialias=True)
            image = fn.crop_mirror_normalize(image, dtype=types.FLOAT, output_layout="CHW", mean=[0.0], std=[255.0])
            return image, labels, factors, source

        device_id = (
            (self.device.index if self.device.index is not None else torch.cuda.current_device())
            if self._mixed
            else None
        )
        kwargs = {"checkpoint": checkpoint} if checkpoint else {}
        pipe = pipeline(
            batch_size=self.batch_size, num_threads=self._threads, device_id=device_id, seed=self.seed, **kwargs
        )
        pipe.build()
        seen = pipe.reader_meta(_READER)["epoch_size"]
        assert seen == self.shards.num_samples, (seen, self.shards.num_samples)
        return pipe

    def __next__(self) -> Batch:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        try:
            image, labels, factors, source = self._pipe.run()
        except RuntimeError as exc:
            raise RuntimeError(
                f"DALI failed reading the shards in {self.shards.root}: {exc}\nRun with "
                "data.verify=full to find the bad samples by shard and key "
                "(data.on_bad_sample=skip leaves them out)."
            ) from exc
        tensor = image.as_tensor()
        image_BCHW = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device) if self._mixed else None
        feed_ndarray(tensor, image_BCHW, cuda_stream=stream)
        # DALI reuses its buffers after the next run: copy out
        labels_BL = torch.from_dlpack(labels.as_tensor()).clone()
        factors_BF = torch.from_dlpack(factors.as_tensor()).clone()
        if self._key_width:
            keys = np.asarray(source.as_tensor()).view(f"S{self._key_width}").ravel().astype(str).tolist()
        else:
            keys = [split_member(source.at(i).tobytes().decode().rsplit(":", 1)[-1])[0] for i in range(len(source))]
        self._check_labels(labels_BL, keys)
        self._advance()
        return self._batch(image_BCHW, labels_BL, factors_BF, keys)

    def _check_labels(self, labels_BL: torch.Tensor, keys: list[str]) -> None:
        """``ValueError`` naming shard and key if a label is outside its classes."""
        bad_BL = (labels_BL < self._label_low) | (labels_BL >= self._label_end)
        if not bad_BL.any():
            return
        i, j = (int(v) for v in bad_BL.nonzero()[0])
        meta = self.shards.manifest["labels"]
        raise ValueError(
            f"{self.shards.tar_of_key(keys[i])}: key {keys[i]}: "
            f"{describe_label(meta, j, int(labels_BL[i, j]))}. Run with data.verify=full to "
            "find every such sample (data.on_bad_sample=skip leaves them out), or rebuild "
            "the shards with `gvae-dist data build`."
        )

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["samples"] = self.shards.num_samples
        state["dali"] = base64.b64encode(self._pipe.checkpoint()).decode("ascii")
        return state

    def load_state_dict(self, state: dict) -> None:
        exact = state.get("backend") == "dali" and state.get("samples") == self.shards.num_samples
        if exact:
            self._pipe = self._build(base64.b64decode(state["dali"]))
            self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
            return
        log.warning(
            "data position %s was not saved by this DALI loader on these shards: "
            "restarting at the beginning of epoch %s",
            {k: v for k, v in state.items() if k != "dali"},
            state.get("epoch", 0),
        )
        self.epoch, self.batch = int(state.get("epoch", 0)), 0
        self._pipe = self._build()

    def close(self) -> None:
        self._pipe = None
        self._cleanup()
