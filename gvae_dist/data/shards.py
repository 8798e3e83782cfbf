"""On-disk shard format and ``gvae-dist data build``: WebDataset tars + DALI indexes + manifest.

Layout of a shard directory::

    manifest.json              written last: counts, factor/label names and ranges, the train/eval
                               split, per-shard sha256 and ``split`` ("train" or "eval")
    shard-000000.tar           WebDataset tar: samples in stored order (importers shuffle on write)
    shard-000000.idx           DALI index of that tar (format v1.2, the same as the wheel's wds2idx)
    .build/shard-000000.json   build marker: fingerprint + checksums (lets a rerun skip the shard)

One sample = four tar members sharing a key (the zero-padded global sample number; keys have no
dots because WebDataset and DALI both split a member name at its first dot):

    <key>.png | <key>.jpg   the image, 8-bit L (1 channel) or RGB
    <key>.labels.i64        weak labels, raw little-endian int64 [L] (DALI reads it with a dtype,
                            so no Python per sample: text labels would come out as ASCII bytes)
    <key>.factors.f32       ground-truth factors, raw little-endian float32 [F]
    <key>.json              the same labels and factors by name (+ provenance) for humans

Split: the last ``round(N * eval_fraction)`` samples (``data.eval_fraction``) are the held-out
evaluation set and go into shards of their own, after the training shards; no shard mixes the
two, so a loader that opens one split never touches a sample of the other (see
:mod:`gvae_dist.data.shardset`). Stored order is already random (generators draw i.i.d.
factors, importers shuffle), so the tail is a random sample.

Atomicity: a shard is written to a hidden temporary file and renamed into place, its index
likewise, then its marker; ``manifest.json`` is removed when a build starts and written after
every shard is complete, so a crash never leaves a directory that a loader accepts. Resume: a
rerun with the same generating config skips shards whose marker and checksums still match, and
one whose manifest matches that config and whose shards all match their checksums returns the
manifest untouched (``built.cached``): a cached, verified build.
Tars are byte-reproducible (fixed mtime/owner; deterministic encoders), so checksums are stable.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import os
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "FORMAT_VERSION",
    "IMAGE_EXTS",
    "MANIFEST",
    "SPLITS",
    "BuildPlan",
    "build_shards",
    "encode_image",
    "read_index",
    "source_names",
    "read_manifest",
    "sample_members",
    "sha256_file",
    "split_member",
    "write_index",
]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "eval")
IMAGE_EXTS = ("png", "jpg")
LABELS_EXT, FACTORS_EXT, JSON_EXT = "labels.i64", "factors.f32", "json"
JPEG_QUALITY = 95  # recorded in the manifest's generating config
_INDEX_VERSION = "v1.2"  # DALI's webdataset index format (tools/wds2idx.py)
_MTIME = 0  # fixed member times make tars byte-reproducible


def shard_name(j: int) -> str:
    return f"shard-{j:06d}"


def key_width(num_samples: int) -> int:
    return max(8, len(str(max(num_samples - 1, 0))))


def split_member(name: str) -> tuple[str, str]:
    """``dir/key.ext.more`` -> (``dir/key``, ``ext.more``): split at the first dot of the basename,
    as WebDataset and DALI do."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Samples and tars


def encode_image(image_HWC: np.ndarray, fmt: str) -> bytes:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG or JPEG bytes (8-bit L or RGB)."""
    from PIL import Image

    if image_HWC.dtype != np.uint8 or image_HWC.ndim != 3 or image_HWC.shape[-1] not in (1, 3):
        raise ValueError(f"expected a uint8 [H, W, 1|3] image, got {image_HWC.dtype} {image_HWC.shape}")
    img = Image.fromarray(image_HWC[..., 0] if image_HWC.shape[-1] == 1 else image_HWC)
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG")
    elif fmt == "jpg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        raise ValueError(f"image format must be one of {IMAGE_EXTS}, got {fmt!r}")
    return buf.getvalue()


def sample_members(
    key: str, image: bytes, fmt: str, labels_L: np.ndarray, factors_F: np.ndarray, record: dict
) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in a fixed order (see module docstring)."""
    meta = {"key": key, **record}
    return [
        (f"{key}.{fmt}", image),
        (f"{key}.{LABELS_EXT}", np.ascontiguousarray(labels_L, "<i8").tobytes()),
        (f"{key}.{FACTORS_EXT}", np.ascontiguousarray(factors_F, "<f4").tobytes()),
        (f"{key}.{JSON_EXT}", json.dumps(meta).encode()),
    ]


def _add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), _MTIME, 0o644
    tf.addfile(info, io.BytesIO(data))


def index_entries(tar_path: str | Path) -> list[list[tuple[str, int, int, str]]]:
    """Scan a tar: per sample, its components ``(ext, data offset, size, member name)``.

    Raises ``tarfile.TarError`` / ``EOFError`` on a damaged archive (callers name the shard).
    """
    samples: list[list[tuple[str, int, int, str]]] = []
    last = None
    with tarfile.open(tar_path, "r:") as tf:
        for m in tf:
            if not m.isreg():
                continue
            base, ext = split_member(m.name)
            if not base or base.rsplit("/", 1)[-1].startswith("."):
                continue  # hidden files are not samples (DALI and WebDataset skip them too)
            if base != last:
                samples.append([])
                last = base
            samples[-1].append((ext, m.offset_data, m.size, m.name))
    return samples


def write_index(path: str | Path, samples: list[list[tuple[str, int, int, str]]]) -> None:
    """Write a DALI webdataset index (v1.2: ``ext offset size name`` per component)."""
    lines = [f"{_INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{e} {o} {s} {n}" for e, o, s, n in comps) for comps in samples]
    Path(path).write_text("\n".join(lines) + "\n")


def read_index(path: str | Path) -> list[list[tuple[str, int, int, str]]]:
    """Parse a DALI webdataset index file; ``ValueError`` if it is not one."""
    text = Path(path).read_text().splitlines()
    head = text[0].split() if text else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise ValueError(f"{path}: not a DALI webdataset index (first line {text[:1]})")
    samples = []
    for line in text[1 : 1 + int(head[1])]:
        parts = line.split()
        if not parts or len(parts) % 4:
            raise ValueError(f"{path}: malformed index line {line!r}")
        samples.append(
            [(parts[i], int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)]
        )
    if len(samples) != int(head[1]):
        raise ValueError(f"{path}: header says {head[1]} samples, found {len(samples)}")
    return samples


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False))
    _replace_atomically(tmp, path)


def read_manifest(root: str | Path) -> dict:
    """Load and sanity-check ``<root>/manifest.json``; ``ValueError`` with the reason."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        hint = (
            " (a build is incomplete or was interrupted: rerun it to finish)"
            if (Path(root) / ".build").is_dir()
            else ""
        )
        raise ValueError(
            f"{path} does not exist{hint}; build shards with `gvae-dist data build --source faces --out {root}`"
        )
    try:
        man = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    required = (
        "format_version",
        "num_samples",
        "image_size",
        "channels",
        "image_format",
        "factors",
        "labels",
        "shards",
    )
    missing = [k for k in required if k not in man] if isinstance(man, dict) else list(required)
    if missing:
        raise ValueError(f"{path}: missing fields {missing}; rebuild with `gvae-dist data build`")
    if man["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {man['format_version']} is not {FORMAT_VERSION}; rebuild")
    if man["image_format"] not in IMAGE_EXTS:
        raise ValueError(f"{path}: image_format {man['image_format']!r} is not one of {IMAGE_EXTS}")
    if not man["shards"]:
        raise ValueError(f"{path}: the shard list is empty; there is nothing to read")
    for i, rec in enumerate(man["shards"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("tar"), str) or not isinstance(rec.get("count"), int):
            raise ValueError(f"{path}: shards[{i}] needs a 'tar' name and an integer 'count', got {rec!r}")
        if "split" in rec and rec["split"] not in SPLITS:
            raise ValueError(f"{path}: shards[{i}] has split {rec['split']!r}, expected one of {SPLITS}")
    total = sum(int(s["count"]) for s in man["shards"])
    if total != man["num_samples"]:
        raise ValueError(
            f"{path}: num_samples is {man['num_samples']} but the shards hold {total}; "
            "the manifest does not match its shards"
        )
    return man


def source_names(data) -> dict[str, list[str]] | None:
    """``{"factors": [...], "labels": [...]}`` of the data a ``DataConfig`` points at, read
    without loading any sample: the built-in generators' factor lists (their weak labels carry
    the same names), or the shard manifest at ``data.path`` (factors from ``data.eval_path``'s
    manifest when set: evaluation reads those). None when a manifest is not there (yet): shards
    may exist only on the workers' file system; the loader then names what is missing."""
    if data.source != "shards":
        from gvae_dist.data.synthetic import FACTOR_SPECS

        names = [s.name for s in FACTOR_SPECS[data.source]]
        return {"factors": names, "labels": list(names)}
    if not data.path or not (Path(data.path) / MANIFEST).is_file():
        return None
    man = read_manifest(data.path)
    factors = man["factors"]
    if data.eval_path and (Path(data.eval_path) / MANIFEST).is_file():
        factors = read_manifest(data.eval_path)["factors"]
    return {"factors": [f["name"] for f in factors], "labels": [lab["name"] for lab in man["labels"]]}


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class BuildPlan:
    """What to write: a source (see ``importers.Source``), where, and how."""

    source: object
    out: Path
    image_format: str = "png"
    shard_size: int = 2000
    workers: int = 1
    progress: bool = True
    config: dict = field(default_factory=dict)  # the generating config recorded in the manifest
    eval_fraction: float = 0.0  # share of the samples held out for evaluation (last in stored order)

    def split_sizes(self) -> tuple[int, int]:
        """(train, eval) sample counts."""
        n, frac = self.source.num_samples, self.eval_fraction
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"data.eval_fraction must be in [0, 1), got {frac}")
        n_eval = int(round(n * frac))
        if frac > 0 and (n_eval < 1 or n_eval >= n):
            raise ValueError(
                f"data.eval_fraction={frac} of {n} samples leaves no "
                f"{'evaluation' if n_eval < 1 else 'training'} sample: build more "
                "samples (--num) or change data.eval_fraction"
            )
        return n - n_eval, n_eval

    def layout(self) -> list[tuple[int, int, str]]:
        """Per shard: (first, end, split). Training shards first, then the evaluation shards."""
        n_train, n_eval = self.split_sizes()
        out = []
        for split, lo, hi in (("train", 0, n_train), ("eval", n_train, n_train + n_eval)):
            out += [(a, min(a + self.shard_size, hi), split) for a in range(lo, hi, self.shard_size)]
        return out

    def fingerprint(self) -> str:
        blob = json.dumps(self.generating_config(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def generating_config(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "image_format": self.image_format,
            "jpeg_quality": JPEG_QUALITY if self.image_format == "jpg" else None,
            "shard_size": self.shard_size,
            "eval_fraction": self.eval_fraction,
            **self.source.config,
            **self.config,
        }


_PLAN: BuildPlan | None = None  # set before forking build workers (shared copy-on-write)


def _write_shard(j: int) -> dict:
    """Encode and write shard j atomically; returns its marker record."""
    plan = _PLAN
    src, out, n = plan.source, plan.out, plan.source.num_samples
    lo, hi, split = plan.layout()[j]
    rows = src.rows[lo:hi]
    images = src.images(rows)
    width = key_width(n)
    name = shard_name(j)
    tmp_tar = out / f".{name}.tar.tmp-{os.getpid()}"
    with tarfile.open(tmp_tar, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i, pos in enumerate(range(lo, hi)):
            key = f"{pos:0{width}d}"
            members = sample_members(
                key,
                encode_image(images[i], plan.image_format),
                plan.image_format,
                src.labels[rows[i]],
                src.factors[rows[i]],
                src.record(int(rows[i])),
            )
            for member, data in members:
                _add_member(tf, member, data)
    entries = index_entries(tmp_tar)  # read back: the index comes from what is really on disk
    assert len(entries) == hi - lo, (name, len(entries), hi - lo)
    tmp_idx = out / f".{name}.idx.tmp-{os.getpid()}"
    write_index(tmp_idx, entries)
    record = {
        "tar": f"{name}.tar",
        "index": f"{name}.idx",
        "count": hi - lo,
        "first": lo,
        "split": split,
        "sha256": sha256_file(tmp_tar),
        "index_sha256": sha256_file(tmp_idx),
        "bytes": tmp_tar.stat().st_size,
    }
    _replace_atomically(tmp_tar, out / record["tar"])
    _replace_atomically(tmp_idx, out / record["index"])
    _write_json(out / ".build" / f"{name}.json", {"fingerprint": plan.fingerprint(), **record})
    return record


def _done_record(plan: BuildPlan, j: int, first: int, count: int, split: str) -> dict | None:
    """The marker of shard j if the shard on disk is complete and from this same config."""
    name = shard_name(j)
    marker = plan.out / ".build" / f"{name}.json"
    try:
        rec = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if rec.pop("fingerprint", None) != plan.fingerprint():
        return None  # written by another generating config: rebuild
    if (rec.get("count"), rec.get("first"), rec.get("split")) != (count, first, split):
        return None
    return rec if _files_match(plan.out, rec) else None


def _files_match(out: Path, rec: dict) -> bool:
    """The shard's tar and index exist and have the checksums of ``rec``."""
    tar, idx = out / str(rec.get("tar")), out / str(rec.get("index"))
    return (
        tar.is_file()
        and idx.is_file()
        and sha256_file(tar) == rec.get("sha256")
        and sha256_file(idx) == rec.get("index_sha256")
    )


def _cached_manifest(plan: BuildPlan) -> dict | None:
    """The manifest already in ``plan.out`` if it was written by this same generating config
    and every shard it lists still has its checksums; None if anything must be (re)built."""
    try:
        man = read_manifest(plan.out)
    except ValueError:
        return None
    layout = [(first, hi - first, split) for first, hi, split in plan.layout()]
    if (
        man.get("fingerprint") != plan.fingerprint()
        or [(r.get("first"), r["count"], r.get("split")) for r in man["shards"]] != layout
    ):
        return None
    if not all(_files_match(plan.out, rec) for rec in man["shards"]):
        return None
    return man


def build_shards(plan: BuildPlan) -> dict:
    """Write all shards of ``plan`` (skipping complete ones), then the manifest; returns it."""
    global _PLAN
    src, out = plan.source, Path(plan.out)
    n = src.num_samples
    if plan.shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {plan.shard_size}")
    if plan.image_format not in IMAGE_EXTS:
        raise ValueError(f"--format must be one of {IMAGE_EXTS}, got {plan.image_format!r}")
    layout = plan.layout()
    t0 = time.perf_counter()
    cached = _cached_manifest(plan)
    if cached is not None:  # nothing to do: leave the directory as it is (readers may be open)
        cached["built"] = {
            **cached.get("built", {}),
            "cached": True,
            "verify_seconds": round(time.perf_counter() - t0, 2),
        }
        return cached
    out.mkdir(parents=True, exist_ok=True)
    (out / ".build").mkdir(exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # the directory is not readable until the build ends
    for stale in out.glob(".shard-*.tmp-*"):  # leftovers of an interrupted build
        stale.unlink()
    num_shards = len(layout)
    counts = [hi - lo for lo, hi, _ in layout]
    records: dict[int, dict] = {}
    for j, (lo, hi, split) in enumerate(layout):
        rec = _done_record(plan, j, lo, hi - lo, split)
        if rec is not None:
            records[j] = rec
    todo = [j for j in range(num_shards) if j not in records]
    bar = _progress(plan, n, sum(counts[j] for j in records))
    _PLAN = plan
    try:
        if plan.workers > 1 and len(todo) > 1:
            # fork: workers share the source's arrays copy-on-write instead of pickling them
            with mp.get_context("fork").Pool(min(plan.workers, len(todo))) as pool:
                for rec in pool.imap_unordered(_write_shard, todo):
                    records[layout.index((rec["first"], rec["first"] + rec["count"], rec["split"]))] = rec
                    bar.update(rec["count"])
        else:
            for j in todo:
                records[j] = _write_shard(j)
                bar.update(records[j]["count"])
    finally:
        _PLAN = None
        bar.close()
    extra = sorted(p.name for p in out.glob("shard-*.tar") if p.name not in {r["tar"] for r in records.values()})
    manifest = {
        "format_version": FORMAT_VERSION,
        "num_samples": n,
        "image_size": src.image_size,
        "channels": src.channels,
        "image_format": plan.image_format,
        "components": {"image": plan.image_format, "labels": LABELS_EXT, "factors": FACTORS_EXT, "json": JSON_EXT},
        "factors": src.factor_meta(),
        "labels": src.label_meta(),
        "split": {"train": plan.split_sizes()[0], "eval": plan.split_sizes()[1], "eval_fraction": plan.eval_fraction},
        "shards": [records[j] for j in range(num_shards)],
        "generating_config": plan.generating_config(),
        "fingerprint": plan.fingerprint(),
        "notes": src.notes,
        "groups": src.groups,
        "built": {
            "seconds": round(time.perf_counter() - t0, 2),
            "skipped_complete_shards": num_shards - len(todo),
            "unlisted_tars_in_directory": extra,
            "cached": False,
        },
    }
    _write_json(out / MANIFEST, manifest)
    return manifest


def _progress(plan: BuildPlan, total: int, done: int):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        unit="img",
        desc=f"data build -> {plan.out}",
        disable=None if plan.progress else True,
        file=sys.stderr,
        smoothing=0.1,
    )  # None: TTY only
