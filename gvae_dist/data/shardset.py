"""Open a shard directory for reading: check it against its manifest, find bad samples, and
index the good ones for the loaders.

Splits: ``open_shards(root, split="train")`` opens only the shards that ``data build`` marked
``train`` in manifest.json, ``split="eval"`` only the held-out ones (``split=None``: all). The
other split's shards are not opened, checked or indexed, so a loader built on one split cannot
yield a sample of the other. A manifest written before splits existed has no ``split`` per
shard: ``train`` then reads every shard with a warning, ``eval`` raises (rebuild the shards, or
evaluate on another built set with ``data.eval_path``).

What is checked at start-up (``data.verify``):

- ``checksum`` (default): the manifest must be consistent and list at least one shard; every
  tar's sha256 must equal the manifest's. A tar that matches is trusted (``data build`` decoded
  nothing it had not encoded itself). A tar that does not match is scanned sample by sample
  (below), so a damaged shard is reported by key rather than as a bare checksum failure.
- ``full``: every sample of every shard is scanned.
- ``none``: the index files are trusted as they are; a bad sample then surfaces while loading
  (named by the WebDataset backend, as a DALI error by the DALI backend).

In every mode the index entries (names and sizes, no I/O) must agree with the manifest: only the
keys the manifest lists for a shard (positions ``first .. first + count - 1``) are read, each
once, and each sample must have the image, a ``.labels.i64`` of 8 x L bytes and a ``.factors.f32``
of 4 x F bytes. So neither skip mode nor a stale index can feed a sample the manifest does not
list, and DALI never meets a label vector of the wrong length (it would fail with a bare
``Assert "IsDenseTensor()" failed``). While loading, both backends also check every label
against its classes (``labels[l]``: ``low .. low + num_classes - 1``) and name shard and key.

The per-sample scan reads the tar and flags: a missing component, a label/factor payload of the
wrong byte size, a label outside its classes, a ``.json`` that does not parse or whose labels
disagree with ``.labels.i64``,
image bytes that do not decode, an image whose size differs from the manifest, a member cut off
by a truncated tar. Shard-level problems: a missing tar, a sample count or checksum that differs
from the manifest.

``data.on_bad_sample=error`` raises one ``ValueError`` listing the problems (shard and key);
``skip`` warns, leaves the bad samples out of the index every backend reads (the DALI backend gets
a rewritten index file), and counts them: ``skipped`` = samples the manifest lists minus samples
that can be read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gvae_dist.data.batch import DatasetInfo
from gvae_dist.data.checks import describe_label, first_bad_label
from gvae_dist.data.shards import (
    FACTORS_EXT,
    JSON_EXT,
    LABELS_EXT,
    MANIFEST,
    SPLITS,
    index_entries,
    key_width,
    read_index,
    read_manifest,
    sha256_file,
    split_member,
    write_index,
)

__all__ = ["BadSample", "ShardSet", "open_shards", "check_sample", "select_split"]

log = logging.getLogger("gvae_dist.data")
_Entry = list[tuple[str, int, int, str]]  # one sample: (ext, data offset, size, member name) per component


@dataclass
class BadSample:
    shard: str
    key: str | None
    reason: str

    def __str__(self) -> str:
        return f"{self.shard}: key {self.key}: {self.reason}" if self.key else f"{self.shard}: {self.reason}"


@dataclass
class _Shard:
    tar: Path
    index: Path
    entries: list[_Entry]  # good samples only, in stored order
    rewritten: bool  # entries differ from the index file on disk


@dataclass
class ShardSet:
    """The readable samples of a shard directory (positions 0..num_samples-1, stored order)."""

    root: Path
    manifest: dict
    shards: list[_Shard]
    bad: list[BadSample] = field(default_factory=list)
    problems: list[BadSample] = field(default_factory=list)  # shard-level mismatches
    split: str | None = None  # the split these shards are ("train", "eval"; None: all shards)
    listed: int | None = None  # samples the manifest lists in these shards (default: all)

    def __post_init__(self) -> None:
        counts = [len(s.entries) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._fds: dict[int, int] = {}

    @property
    def num_samples(self) -> int:
        return int(self.starts[-1])

    @property
    def skipped(self) -> int:
        listed = self.manifest["num_samples"] if self.listed is None else self.listed
        return max(0, int(listed) - self.num_samples)

    def info(self) -> DatasetInfo:
        m = self.manifest
        return DatasetInfo(
            channels=int(m["channels"]),
            image_size=int(m["image_size"]),
            factor_names=[f["name"] for f in m["factors"]],
            factor_discrete=[bool(f["discrete"]) for f in m["factors"]],
            label_names=[lab["name"] for lab in m["labels"]],
            num_samples=self.num_samples,
            extra={
                "path": str(self.root),
                "split": self.split or "all",
                "image_format": m["image_format"],
                "label_classes": [int(lab["num_classes"]) for lab in m["labels"]],
                "skipped": self.skipped,
                "bad_samples": [str(b) for b in self.bad[:20]],
            },
        )

    def locate(self, pos: int) -> tuple[int, int]:
        """Global position -> (shard number, sample number within the shard's good samples)."""
        s = int(np.searchsorted(self.starts, pos, side="right")) - 1
        return s, pos - int(self.starts[s])

    def key(self, pos: int) -> str:
        s, j = self.locate(pos)
        return split_member(self.shards[s].entries[j][0][3])[0]

    def tar_of_key(self, key: str) -> Path | None:
        """The tar that holds the sample ``key`` (to name it in an error), or None."""
        for sh in self.shards:
            if any(split_member(e[0][3])[0] == key for e in sh.entries):
                return sh.tar
        return None

    def read(self, pos: int) -> dict[str, bytes]:
        """The components of the sample at ``pos``: ``{ext: bytes}`` (random access by offset)."""
        s, j = self.locate(pos)
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.shards[s].tar, os.O_RDONLY)
        return {ext: os.pread(fd, size, off) for ext, off, size, _ in self.shards[s].entries[j]}

    def dali_inputs(self, tmpdir: str | Path) -> tuple[list[str], list[str]]:
        """Tar and index paths for ``fn.readers.webdataset``; rewritten indexes go to tmpdir."""
        tars, idxs = [], []
        for sh in self.shards:
            if not sh.entries:
                continue
            idx = sh.index
            if sh.rewritten:
                idx = Path(tmpdir) / sh.index.name
                write_index(idx, sh.entries)
            tars.append(str(sh.tar))
            idxs.append(str(idx))
        return tars, idxs

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self):  # file descriptors do not travel to other processes
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state


def component_problem(sizes: dict[str, int], manifest: dict, need=(LABELS_EXT, FACTORS_EXT)) -> str | None:
    """Why a sample with components ``{ext: byte size}`` cannot be read, or None: a component of
    ``need`` (and the image) missing, or a label/factor payload of the wrong size."""
    for ext in (manifest["image_format"], *need):
        if ext not in sizes:
            return f"missing component .{ext} (has {sorted(sizes)})"
    for ext, width, n in ((LABELS_EXT, 8, len(manifest["labels"])), (FACTORS_EXT, 4, len(manifest["factors"]))):
        if sizes[ext] != width * n:
            return f".{ext} holds {sizes[ext]} bytes, expected {width * n} ({n} values)"
    return None


def check_sample(comps: dict[str, bytes], manifest: dict) -> str | None:
    """Why the sample ``{ext: bytes}`` is unusable, or None if it is fine."""
    from PIL import Image

    fmt, size = manifest["image_format"], int(manifest["image_size"])
    reason = component_problem({ext: len(b) for ext, b in comps.items()}, manifest, (LABELS_EXT, FACTORS_EXT, JSON_EXT))
    if reason:
        return reason
    stored = np.frombuffer(comps[LABELS_EXT], "<i8")
    bad = first_bad_label(stored[None], manifest["labels"])
    if bad is not None:
        return describe_label(manifest["labels"], bad[1], bad[2])
    try:
        meta = json.loads(comps[JSON_EXT])
        named = meta["labels"]
        labels = [int(named[lab["name"]]) for lab in manifest["labels"]]
    except (ValueError, TypeError, KeyError) as exc:
        return f"malformed .json ({type(exc).__name__}: {exc})"
    if labels != stored.tolist():
        return f"the .json labels {labels} disagree with .{LABELS_EXT}"
    try:
        with Image.open(io.BytesIO(comps[fmt])) as img:
            img.load()
            if img.size != (size, size):
                return f"image is {img.size[0]}x{img.size[1]}, the manifest says {size}x{size}"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt bytes
        return f"image bytes do not decode as .{fmt} ({type(exc).__name__}: {exc})"
    return None


def _scan(tar: Path, manifest: dict, name: str) -> tuple[list[_Entry], list[BadSample], int]:
    """Check every sample of a tar: (good entries, bad samples, samples seen)."""
    good: list[_Entry] = []
    bad: list[BadSample] = []
    file_size = tar.stat().st_size
    groups: list[tuple[str, _Entry, dict[str, bytes]]] = []
    try:
        with tarfile.open(tar, "r:") as tf:
            for m in tf:
                if not m.isreg():
                    continue
                key, ext = split_member(m.name)
                if not key or key.rsplit("/", 1)[-1].startswith("."):
                    continue
                if not groups or groups[-1][0] != key:
                    groups.append((key, [], {}))
                groups[-1][1].append((ext, m.offset_data, m.size, m.name))
                if m.offset_data + m.size > file_size:
                    groups[-1][2]["!truncated"] = b""
                else:
                    groups[-1][2][ext] = tf.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        bad.append(
            BadSample(name, None, f"the tar is damaged after {len(groups)} samples ({type(exc).__name__}: {exc})")
        )
        if groups:  # the sample being read when the archive ended may lack components
            groups[-1][2]["!truncated"] = b""
    for key, entry, comps in groups:
        reason = "cut off by a truncated tar" if "!truncated" in comps else check_sample(comps, manifest)
        if reason:
            bad.append(BadSample(name, key, reason))
        else:
            good.append(entry)
    return good, bad, len(groups)


def select_split(manifest: dict, split: str | None, root: Path) -> list[dict]:
    """The manifest's shard records of ``split`` (see module docstring)."""
    if split is None:
        return list(manifest["shards"])
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    if not any("split" in rec for rec in manifest["shards"]):
        if split == "eval":
            raise ValueError(
                f"{root / MANIFEST} has no train/eval split (built before `data build` wrote "
                "one), so evaluation would read training samples: rebuild it with "
                "`gvae-dist data build` (data.eval_fraction), or set data.eval_path to "
                "another built shard directory"
            )
        log.warning(
            "%s has no train/eval split (built before `data build` wrote one): training reads "
            "all %d samples; rebuild it, or set data.eval_path, to evaluate on held-out "
            "samples",
            root / MANIFEST,
            manifest["num_samples"],
        )
        return list(manifest["shards"])
    chosen = [rec for rec in manifest["shards"] if rec.get("split") == split]
    if not chosen:
        hint = (
            " (it was built with data.eval_fraction=0): rebuild with data.eval_fraction > 0, "
            "or set data.eval_path to another built shard directory"
            if split == "eval"
            else ""
        )
        raise ValueError(f"{root / MANIFEST} lists no {split} shards{hint}")
    return chosen


def open_shards(
    root: str | Path, on_bad: str = "error", verify: str = "checksum", split: str | None = None
) -> ShardSet:
    """Read the manifest, check the shards of ``split`` (see module docstring) and index their
    good samples."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"data.on_bad_sample must be 'error' or 'skip', got {on_bad!r}")
    if verify not in ("checksum", "full", "none"):
        raise ValueError(f"data.verify must be 'checksum', 'full' or 'none', got {verify!r}")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data.path {root} is not a directory")
    manifest = read_manifest(root)
    records = select_split(manifest, split, root)
    firsts = _first_positions(manifest)
    shards, bad, problems = [], [], []
    for rec in records:
        name, count = rec["tar"], int(rec["count"])
        tar, idx = root / name, root / rec.get("index", Path(name).stem + ".idx")
        if not tar.is_file():
            problems.append(BadSample(name, None, f"listed in manifest.json ({count} samples) but missing"))
            continue
        sha_ok = verify == "none" or sha256_file(tar) == rec.get("sha256")
        if verify == "full" or not sha_ok:
            entries, found, seen = _scan(tar, manifest, name)
            bad += found
            if seen != count:
                problems.append(BadSample(name, None, f"holds {seen} samples, manifest.json lists {count}"))
            elif not found and not sha_ok:
                problems.append(
                    BadSample(name, None, "sha256 differs from manifest.json (the shard changed after `data build`)")
                )
            rewritten = True
        else:
            entries = _trusted_index(idx, rec, verify, name)
            rewritten = entries is None
            if entries is None:  # index missing or stale: rebuild it from the (trusted) tar
                entries, found = _scan_plain(tar, name)
                bad += found
            if verify != "none" and len(entries) != count:
                problems.append(BadSample(name, None, f"holds {len(entries)} samples, manifest.json lists {count}"))
        kept, found = _listed_entries(entries, firsts[id(rec)], count, manifest, name)
        bad += found
        shards.append(_Shard(tar, idx, kept, rewritten or len(kept) != len(entries)))
    sset = ShardSet(root, manifest, shards, bad, problems, split, sum(int(rec["count"]) for rec in records))
    issues = problems + bad
    if issues:
        listing = "\n  ".join(str(b) for b in issues[:10])
        more = f"\n  ... and {len(issues) - 10} more" if len(issues) > 10 else ""
        if on_bad == "error":
            raise ValueError(
                f"shards in {root} failed verification ({len(issues)} problems):\n  {listing}"
                f"{more}\nSet data.on_bad_sample=skip to leave the bad samples out, or "
                f"rebuild with `gvae-dist data build`."
            )
        log.warning(
            "shards in %s: skipping %d of %d samples (%d problems):\n  %s%s",
            root,
            sset.skipped,
            sset.listed,
            len(issues),
            listing,
            more,
        )
    if sset.num_samples == 0:
        raise ValueError(f"shards in {root}: no readable samples left (of {sset.listed} listed)")
    return sset


def _first_positions(manifest: dict) -> dict[int, int]:
    """Per shard record (by id): the position of its first sample (``first``, or the running
    count for a manifest that does not record it)."""
    out, pos = {}, 0
    for rec in manifest["shards"]:
        out[id(rec)] = int(rec.get("first", pos))
        pos = out[id(rec)] + int(rec["count"])
    return out


def _listed_entries(
    entries: list[_Entry], first: int, count: int, manifest: dict, name: str
) -> tuple[list[_Entry], list[BadSample]]:
    """The entries whose key the manifest lists for this shard (each once) and whose components
    have the manifest's sizes (see module docstring); the others as bad samples."""
    width = key_width(int(manifest["num_samples"]))
    listed = {f"{pos:0{width}d}" for pos in range(first, first + count)}
    span = f"{first:0{width}d}..{first + count - 1:0{width}d}" if count else "none"
    good, bad, seen = [], [], set()
    for entry in entries:
        key = split_member(entry[0][3])[0]
        if key not in listed:
            reason = f"not listed in manifest.json (this shard lists keys {span}); it is not read"
        elif key in seen:
            reason = "appears more than once in the shard; only the first copy is read"
        elif len({ext for ext, *_ in entry}) != len(entry):
            reason = f"has a component twice ({sorted(ext for ext, *_ in entry)})"
        else:
            reason = component_problem({ext: size for ext, _, size, _ in entry}, manifest)
        seen.add(key)
        if reason:
            bad.append(BadSample(name, key, reason))
        else:
            good.append(entry)
    return good, bad


def _index_matches(idx: Path, rec: dict) -> bool:
    return idx.is_file() and "index_sha256" in rec and sha256_file(idx) == rec["index_sha256"]


def _trusted_index(idx: Path, rec: dict, verify: str, name: str) -> list[_Entry] | None:
    if not idx.is_file():
        log.warning("%s: index %s is missing; rebuilding it in memory", name, idx.name)
        return None
    if verify != "none" and "index_sha256" in rec and not _index_matches(idx, rec):
        log.warning("%s: index %s does not match manifest.json; rebuilding it in memory", name, idx.name)
        return None
    try:
        return read_index(idx)
    except (ValueError, OSError) as exc:
        log.warning("%s: %s; rebuilding the index in memory", name, exc)
        return None


def _scan_plain(tar: Path, name: str) -> tuple[list[_Entry], list[BadSample]]:
    """Index a trusted tar without checking its samples."""
    try:
        return index_entries(tar), []
    except (tarfile.TarError, EOFError, OSError) as exc:
        return [], [BadSample(name, None, f"not a readable tar ({exc})")]
