"""The fallback backend: WebDataset tar streaming + PIL decoding in DataLoader workers.

Used when DALI cannot be imported or with ``data.backend=webdataset``; same Batch, same epoch
and padding policy as the DALI backend (:mod:`gvae_dist.data.stream`), same pixels for PNG.
Without the ``webdataset`` package, :func:`tar_samples` and :func:`shuffle` (standard-library
``tarfile`` and ``random``, the same grouping and the same seeded buffer algorithm as
``webdataset.tarfile_to_samples`` / ``webdataset.shuffle``) yield the same samples in the same
order, so the shards need only Pillow.

Per epoch, the rank's slice of positions is cut into W contiguous parts, one per DataLoader
worker (W = ``max(1, data.num_workers)``; WebDataset's node/worker splitters split by tar and
give ranks unequal sample counts, which stalls DDP, so the split is by sample here). Worker v
streams the tars holding its part with ``webdataset.tarfile_to_samples``, shuffles them with a
``webdataset.shuffle`` buffer seeded by (run seed, epoch, rank, v), decodes chunks of B samples
with PIL, and every worker yields the same number C of chunks per epoch (the last ones may be
short or empty) so the DataLoader's round-robin order is fixed. The main process turns chunks into
batches of B: chunk g of an epoch is batch g, except the last round of chunks, which is
re-batched and padded with repeats of the last sample to ``batches_per_rank`` batches.

Position: (epoch, batch). Resuming at batch k restarts the workers at chunk k: they read but do
not decode what comes before it, so the order is exactly that of an uninterrupted run (for the
same ``data.num_workers``; samples skipped *while reading*, possible only with
``data.verify=none``, can shift it by a few samples).

A sample that fails while reading (only possible with ``data.verify=none`` or a shard changed
after the start-up check) raises ``ValueError`` naming the tar and key, or under
``data.on_bad_sample=skip`` is dropped and counted in ``loader.skipped``.
"""

from __future__ import annotations

import math
import random
import re
import tarfile

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from gvae_dist.data.batch import Batch, to_float_nchw
from gvae_dist.data.checks import describe_label, first_bad_label
from gvae_dist.data.shards import FACTORS_EXT, LABELS_EXT, split_member
from gvae_dist.data.stream_base import StreamLoaderBase, decode_image, rank_range

__all__ = ["WdsLoader", "tar_samples", "shuffle"]

_FIELDS = ("image", "labels", "factors", "keys")


def _repeat(x_1, n: int):
    """n copies of a one-row tensor or one-item list."""
    return x_1 * n if isinstance(x_1, list) else x_1.expand(n, *x_1.shape[1:])


def _chunk_plan(n: int, rank: int, world: int, epoch: int, workers: int, batch: int):
    """This epoch's rank slice ``(lo, hi)``, the W worker part bounds and the chunks per worker."""
    lo, hi = rank_range(n, rank, world, epoch)
    bounds = [lo + (hi - lo) * v // workers for v in range(workers + 1)]
    longest = max(b - a for a, b in zip(bounds, bounds[1:]))
    return bounds, max(1, math.ceil(longest / batch))


_MEMBER = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META = re.compile(r"__[^/]*__($|/)")


def tar_samples(url: str):
    """Samples of one tar in stored order, as ``webdataset.tarfile_to_samples`` yields them:
    consecutive members ``<key>.<ext>`` grouped into ``{"__key__", "__url__", ext: bytes}``
    (extension lower-cased, ``__*__`` meta members and non-files skipped)."""
    current = None
    with tarfile.open(url, mode="r|*") as stream:
        for member in stream:
            if not member.isreg() or _META.match(member.name):
                continue
            match = _MEMBER.match(member.name)
            if not match:
                continue
            key, ext = match.group(1), match.group(2).lower()
            data = stream.extractfile(member).read()
            if current is None or key != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": key, "__url__": url}
            if ext in current:
                raise ValueError(f"{member.name}: duplicate file name in tar file {url}")
            current[ext] = data
            stream.members = []  # streaming: keep no member list
    if current is not None:
        yield current


def shuffle(samples, bufsize: int, seed: int):
    """``webdataset.shuffle(bufsize, bufsize, seed=seed)``: the same buffer, the same draws."""
    rng, buf = random.Random(seed), []
    samples = iter(samples)
    for sample in samples:
        buf.append(sample)
        if len(buf) < bufsize:
            try:
                buf.append(next(samples))
            except StopIteration:
                pass
        if len(buf) >= bufsize:
            yield _pick(buf, rng)
    while buf:
        yield _pick(buf, rng)


def _pick(buf: list, rng: random.Random):
    k = rng.randint(0, len(buf) - 1)
    sample, buf[k] = buf[k], buf[-1]
    buf.pop()
    return sample


def _reader():
    """``(samples_of(url), shuffle(samples, bufsize, seed))``: WebDataset's when installed, else
    the standard-library twins above."""
    from gvae_dist.optional import available

    if not available("webdataset"):
        return tar_samples, shuffle
    import webdataset as wds

    return (
        lambda url: wds.tarfile_to_samples()(iter([{"url": url}])),
        lambda samples, bufsize, seed: wds.shuffle(bufsize, bufsize, seed=seed)(samples),
    )


class _RankStream(IterableDataset):
    """Runs in each DataLoader worker: endless epochs of decoded chunks (see module docstring)."""

    def __init__(self, loader: WdsLoader, start_epoch: int, start_chunk: int):
        self.tars = [str(sh.tar) for sh in loader.shards.shards]
        self.keys = loader.keys_by_shard
        self.starts = loader.shards.starts
        self.n, self.rank, self.world = loader.shards.num_samples, loader.rank, loader.world
        self.workers, self.batch = loader.workers, loader.batch_size
        self.seed, self.buffer, self.on_bad = loader.seed, loader.shuffle_buffer, loader.on_bad
        self.fmt, self.channels = loader.fmt, loader.channels
        self.native, self.size = loader.native_size, loader.image_size
        self.num_l, self.num_f = len(loader.info.label_names), len(loader.info.factor_names)
        self.label_meta = loader.shards.manifest["labels"]
        self.start_epoch, self.start_chunk = start_epoch, start_chunk
        self._skipped = 0
        self.reader = None  # chosen in the worker process (the WebDataset pipes do not pickle)

    def __iter__(self):
        self.reader = self.reader or _reader()
        info = get_worker_info()
        physical = info.id if info is not None else 0
        # physical worker i plays virtual worker (i + start) % W so that the DataLoader's
        # round robin resumes at chunk `start_chunk` (chunk g of an epoch is virtual g % W's)
        v = (physical + self.start_chunk) % self.workers
        epoch, skip_before = self.start_epoch, self.start_chunk
        while True:
            yield from self._epoch(epoch, v, skip_before)
            epoch, skip_before = epoch + 1, 0

    def _epoch(self, epoch: int, v: int, skip_before: int):
        bounds, chunks = _chunk_plan(self.n, self.rank, self.world, epoch, self.workers, self.batch)
        samples = self._samples(bounds[v], bounds[v + 1])
        seed = int(np.random.SeedSequence([self.seed, epoch, self.rank, v]).generate_state(1)[0])
        shuffled = self.reader[1](samples, self.buffer, seed)
        for j in range(chunks):
            raw = [s for _, s in zip(range(self.batch), shuffled)]
            if j * self.workers + v >= skip_before:  # chunks before a resume point: read, not decoded
                yield self._decode(raw, epoch)

    def _samples(self, a: int, b: int):
        """Raw samples at positions [a, b), in stored order, streamed tar by tar."""
        pos = a
        while pos < b:
            s = int(np.searchsorted(self.starts, pos, side="right")) - 1
            end = min(b, int(self.starts[s + 1]))
            wanted = set(self.keys[s][pos - int(self.starts[s]) : end - int(self.starts[s])])
            url = self.tars[s]
            try:
                for sample in self.reader[0](url):
                    if sample["__key__"] in wanted:
                        wanted.discard(sample["__key__"])
                        yield sample
                        if not wanted:
                            break
            except Exception as exc:  # noqa: BLE001 - tar/IO errors come in many types
                self._bad(
                    url, None, f"the tar cannot be read to the end ({type(exc).__name__}: {exc})", count=len(wanted)
                )
                wanted = set()
            if wanted:
                self._bad(
                    url, sorted(wanted)[0], f"{len(wanted)} indexed samples are not in the tar", count=len(wanted)
                )
            pos = end

    def _bad(self, url: str, key: str | None, reason: str, count: int = 1) -> None:
        if self.on_bad == "error":
            where = f"{url}: key {key}" if key else url
            raise ValueError(f"{where}: {reason}. Set data.on_bad_sample=skip to leave bad samples out.")
        self._skipped += count

    def _decode(self, raw: list[dict], epoch: int) -> dict:
        images, labels, factors, keys = [], [], [], []
        for s in raw:
            try:
                img = decode_image(s[self.fmt], self.channels, self.size, self.native)
                lab = np.frombuffer(s[LABELS_EXT], "<i8")
                fac = np.frombuffer(s[FACTORS_EXT], "<f4")
                if lab.size != self.num_l or fac.size != self.num_f:
                    raise ValueError(f"{lab.size} labels / {fac.size} factors, expected {self.num_l} / {self.num_f}")
                bad = first_bad_label(lab[None], self.label_meta)
                if bad is not None:
                    raise ValueError(describe_label(self.label_meta, bad[1], bad[2]))
            except KeyError as exc:
                self._bad(s["__url__"], s["__key__"], f"missing component .{exc.args[0]}")
                continue
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt bytes
                self._bad(s["__url__"], s["__key__"], f"{type(exc).__name__}: {exc}")
                continue
            images.append(img)
            labels.append(lab)
            factors.append(fac)
            keys.append(s["__key__"])
        n, size, c = len(images), self.size, self.channels
        chunk = {
            "image": torch.from_numpy(np.stack(images) if n else np.empty((0, size, size, c), np.uint8)),
            "labels": torch.from_numpy(np.stack(labels) if n else np.empty((0, self.num_l), np.int64)),
            "factors": torch.from_numpy(np.stack(factors) if n else np.empty((0, self.num_f), np.float32)),
            "keys": keys,
            "skipped": self._skipped,
            "epoch": epoch,
        }
        self._skipped = 0
        return chunk


class WdsLoader(StreamLoaderBase):
    """Endless Batches for one rank from WebDataset + PIL DataLoader workers."""

    backend = "webdataset"

    def __init__(self, shards, cfg, rank: int, world: int, device: torch.device, batch_size: int):
        super().__init__(shards, cfg, rank, world, device, batch_size)
        self.num_workers = cfg.data.num_workers
        self.workers = max(1, self.num_workers)  # virtual workers (parts per rank slice)
        self.shuffle_buffer, self.on_bad = cfg.data.shuffle_buffer, cfg.data.on_bad_sample
        self.fmt = shards.manifest["image_format"]
        self.keys_by_shard = [[split_member(e[0][3])[0] for e in sh.entries] for sh in shards.shards]
        self._base_skipped = self.skipped
        self._it = None

    def _start(self) -> None:
        """(Re)start the workers at the current position."""
        _, chunks = _chunk_plan(
            self.shards.num_samples, self.rank, self.world, self.epoch, self.workers, self.batch_size
        )
        start_chunk = min(self.batch, (chunks - 1) * self.workers)
        self._drop = (self.batch - start_chunk) * self.batch_size  # decoded, already consumed
        self._chunks_total, self._chunks_seen = chunks * self.workers, start_chunk
        self._buf: list[dict] = []
        self._last = None
        ds = _RankStream(self, self.epoch, start_chunk)
        dl = DataLoader(
            ds,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.num_workers else None,
        )
        self._it = iter(dl)

    def _pull(self) -> None:
        chunk = next(self._it)
        assert chunk["epoch"] == self.epoch, (chunk["epoch"], self.epoch)
        self._chunks_seen += 1
        self.skipped += chunk["skipped"]
        if self._drop:
            k = min(self._drop, len(chunk["keys"]))
            self._drop -= k
            if k:  # the last consumed sample is the padding sample if the slice ends here
                self._last = {f: chunk[f][k - 1 : k] for f in _FIELDS}
            chunk = {f: chunk[f][k:] for f in _FIELDS}
        if len(chunk["keys"]):
            self._buf.append(chunk)

    def _take(self) -> dict:
        """Up to B buffered samples, padded with repeats of the last sample to exactly B."""
        if len(self._buf) == 1 and len(self._buf[0]["keys"]) == self.batch_size:
            out = self._buf.pop()  # the common case: one chunk is one batch
        else:
            parts, need = [], self.batch_size
            while self._buf and need:
                head = self._buf[0]
                take = min(need, len(head["keys"]))
                parts.append({f: head[f][:take] for f in _FIELDS})
                rest = {f: head[f][take:] for f in _FIELDS}
                self._buf[0:1] = [rest] if len(rest["keys"]) else []
                need -= take
            if need:  # the rank's slice is used up: repeat its last sample
                tail = {f: parts[-1][f][-1:] for f in _FIELDS} if parts else self._last
                parts.append({f: _repeat(tail[f], need) for f in _FIELDS})
            out = {f: torch.cat([p[f] for p in parts]) for f in _FIELDS[:3]}
            out["keys"] = [k for p in parts for k in p["keys"]]
        self._last = {f: out[f][-1:] for f in _FIELDS}
        return out

    def __next__(self) -> Batch:
        if self._it is None:
            self._start()
        while sum(len(c["keys"]) for c in self._buf) < self.batch_size and self._chunks_seen < self._chunks_total:
            self._pull()
        out = self._take()
        epoch = self.epoch
        self._advance()
        if self.epoch != epoch:  # epoch done: its remaining chunks can only be empty
            while self._chunks_seen < self._chunks_total:
                self._pull()
            assert not self._buf, "samples left over at the end of an epoch"
            _, chunks = _chunk_plan(
                self.shards.num_samples, self.rank, self.world, self.epoch, self.workers, self.batch_size
            )
            self._chunks_total, self._chunks_seen = chunks * self.workers, 0
        image = out["image"].to(self.device, non_blocking=True)
        image_BCHW = to_float_nchw(image)
        return self._batch(image_BCHW, out["labels"], out["factors"], out["keys"])

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["workers"] = self.workers
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state.get("epoch", 0)), int(state.get("batch", 0))
        if self.batch >= self.layout["batches_per_rank"]:
            self.epoch, self.batch = self.epoch + 1, 0
        self._it = None  # workers restart at the new position on the next batch

    def close(self) -> None:
        self._it = None
