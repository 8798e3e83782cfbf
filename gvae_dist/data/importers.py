"""Data sources for ``gvae-dist data build``: images + ground-truth factors + weak labels.

- ``faces`` / ``shapes``: the procedural generators of :mod:`gvae_dist.data.synthetic`, with the
  same factors and weak labels as the in-memory backend for the same ``data.*`` settings.
- ``arrays``: any labelled ``.npz`` / HDF5 file (see :class:`ArrayLayout`): images grey or RGB,
  ``[N, H, W]`` / ``[N, H, W, C]`` / ``[N, C, H, W]``, uint8 or float; factor values and/or class
  ids; names, discrete factors, provided weak labels and factor groups (-> partitions) from the
  file or the ``data build`` flags. ``dsprites`` and ``3dshapes`` are its presets (``LAYOUTS``).
- ``dsprites``: the dSprites ``.npz`` (Matthey et al. 2017, github.com/deepmind/dsprites-dataset):
  ``imgs`` uint8 [N, 64, 64] in {0, 1}, ``latents_values`` and ``latents_classes`` [N, 6] for
  (color, shape, scale, orientation, posX, posY). Discrete latents (color, shape) use their class
  index, the others their value; constant latents (color) are dropped.
- ``3dshapes``: the 3dshapes ``.h5`` (Burgess & Kim 2018, github.com/deepmind/3d-shapes):
  ``images`` uint8 [N, 64, 64, 3], ``labels`` float [N, 6] for (floor_hue, wall_hue, object_hue,
  scale, shape, orientation); shape is discrete.
- ``folder``: an image folder plus a CSV with one row per image (the real-faces case: head-pose
  angles and expression classes estimated by another tool, hence noisy). The file column is the
  one named file/filename/image/path (else the first column); every other column becomes a factor
  and a weak label of the same name. A column is *categorical* when most values are not numbers,
  or when all values are integers with at most ``MAX_INTEGER_CLASSES`` distinct values (class ids);
  its label is the class index (sorted values). Other columns are continuous and binned like the
  synthetic factors. A NaN/inf cell, or a text cell in a column that is at least half numbers, is
  refused with its line (it would otherwise turn a continuous factor into a categorical one).
  Images are centre-cropped to a square and resized to ``data.image_size``.

Every importer's arrays pass :mod:`gvae_dist.data.checks` before any shard is written: finite
factors (else the column and first bad row are named), image shapes, pixel ranges (never
wrapped), weak labels within their classes, at least one sample.

Weak labels for every source (unless an array file provides its own) come from
:func:`gvae_dist.data.synthetic.weak_labels` with
``data.label_bins``, ``data.label_flip_prob`` and ``data.label_jitter`` (seed ``data.seed + 7919``).
Imported datasets are written in a seeded random order (``data.seed``): dSprites and 3dshapes are
stored in factor order, and the loaders' shuffle buffers only shuffle locally. ``--num`` takes a
seeded random subset.
"""

from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gvae_dist.data import synthetic
from gvae_dist.data.checks import (
    PixelRangeError,
    check_factors,
    check_image_shape,
    check_source,
    eight_bit,
    pixel_range,
    pixel_scale,
    to_uint8,
)
from gvae_dist.data.synthetic import FACTOR_SPECS, FactorSpec, render, sample_factors, weak_labels

__all__ = [
    "SOURCES",
    "LAYOUTS",
    "MAX_INTEGER_CLASSES",
    "ArrayLayout",
    "Source",
    "build_dataset",
    "export_arrays",
    "open_source",
    "parse_layout_flags",
    "partitions_hint",
]

SOURCES = ("faces", "shapes", "arrays", "dsprites", "3dshapes", "folder")
MAX_INTEGER_CLASSES = 16
DSPRITES_LATENTS = ("color", "shape", "scale", "orientation", "posX", "posY")
DSPRITES_DISCRETE = {"color", "shape"}
SHAPES3D_LATENTS = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")
SHAPES3D_DISCRETE = {"shape"}
_FILE_COLUMNS = ("file", "filename", "image", "path")


@dataclass
class Source:
    """Everything the shard writer needs.

    ``factors`` [R, F] and ``labels`` [R, L] are indexed by source row; ``rows`` [N] lists the
    source row stored at each position; ``load_images(rows)`` -> uint8 [n, S, S, C] runs in the
    build workers (forked, so it may use arrays loaded here).
    """

    name: str
    image_size: int
    channels: int
    factor_specs: list[FactorSpec]
    factors: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    load_images: Callable[[np.ndarray], np.ndarray]
    bins: int
    config: dict
    categories: dict[str, list] = field(default_factory=dict)
    files: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # factor groups -> partitions
    label_classes: list[int] | None = None  # classes per provided weak label (None: derived labels)

    @property
    def num_samples(self) -> int:
        return len(self.rows)

    def images(self, rows: np.ndarray) -> np.ndarray:
        out = self.load_images(np.asarray(rows))
        expect = (len(rows), self.image_size, self.image_size, self.channels)
        assert out.shape == expect and out.dtype == np.uint8, (out.shape, expect)
        return out

    def record(self, row: int) -> dict:
        """The human-readable ``.json`` of a sample (labels and factors by name, provenance)."""
        names = [s.name for s in self.factor_specs]
        rec = {
            "source": self.name,
            "source_row": row,
            "factors": dict(zip(names, self.factors[row].tolist())),
            "labels": dict(zip(names, self.labels[row].tolist())),
        }
        if self.files is not None:
            rec["file"] = self.files[row]
        return rec

    def factor_meta(self) -> list[dict]:
        out = []
        for s in self.factor_specs:
            meta = {"name": s.name, "low": s.low, "high": s.high, "discrete": s.discrete, "doc": s.doc}
            if s.name in self.categories:
                meta["categories"] = self.categories[s.name]
            out.append(meta)
        return out

    def label_meta(self) -> list[dict]:
        """Per weak label: its classes. Continuous factors: ``bins`` uniform bins over [low, high]."""
        out = []
        if self.label_classes is not None:  # provided by the file: class ids 0 .. max
            return [
                {"name": s.name, "discrete": s.discrete, "low": 0, "num_classes": c, "provided": True}
                for s, c in zip(self.factor_specs, self.label_classes)
            ]
        for s in self.factor_specs:
            if s.discrete:
                out.append(
                    {"name": s.name, "discrete": True, "low": int(s.low), "num_classes": int(s.high - s.low + 1)}
                )
            else:
                edges = np.linspace(s.low, s.high, self.bins + 1).tolist()
                out.append({"name": s.name, "discrete": False, "low": 0, "num_classes": self.bins, "bin_edges": edges})
        return out


def open_source(
    name: str,
    data_cfg,
    num: int | None = None,
    input_path: str | None = None,
    labels_csv: str | None = None,
    layout: dict | None = None,
) -> Source:
    """Build the :class:`Source` for ``--source name`` under the ``data.*`` settings ``data_cfg``;
    ``layout`` holds :class:`ArrayLayout` fields (from :func:`parse_layout_flags`) over the
    source's preset (``arrays``, ``dsprites``, ``3dshapes`` only)."""
    if name not in SOURCES:
        raise ValueError(f"--source must be one of {list(SOURCES)}, got {name!r}")
    if num is not None and num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    if layout and name not in LAYOUTS:
        raise ValueError(
            f"--keys / --factor-names / --discrete / --groups apply to --source "
            f"{' / '.join(LAYOUTS)} (labelled arrays), not {name!r}"
        )
    if name in ("faces", "shapes"):
        if input_path or labels_csv:
            raise ValueError(f"--source {name} is generated: --input / --labels-csv do not apply")
        return _synthetic(name, data_cfg, num or data_cfg.num_train)
    if not input_path:
        raise ValueError(f"--source {name} needs --input PATH")
    path = Path(input_path)
    if not path.exists():
        raise ValueError(f"--input {path} does not exist")
    if name == "folder":
        return _folder(path, Path(labels_csv) if labels_csv else path / "labels.csv", data_cfg, num)
    if labels_csv:
        raise ValueError("--labels-csv applies to --source folder only")
    return _arrays(name, path, data_cfg, num, LAYOUTS[name].replace(**(layout or {})))


def build_dataset(
    source: str,
    out: str | Path,
    data_cfg=None,
    *,
    num: int | None = None,
    image_format: str | None = None,
    shard_size: int = 2000,
    workers: int = 1,
    progress: bool = True,
    input_path: str | None = None,
    labels_csv: str | None = None,
    layout: dict | None = None,
) -> dict:
    """``gvae-dist data build`` as a function: open the source, write the shards (resumably),
    return the manifest. ``data_cfg`` (a ``DataConfig``; defaults if None) sets image size, seed,
    weak-label bins/noise and the default image format."""
    from gvae_dist.config import DataConfig
    from gvae_dist.data.shards import BuildPlan, build_shards

    d = data_cfg or DataConfig()
    src = open_source(source, d, num, input_path, labels_csv, layout)
    check_source(src, input_path or f"--source {source}")  # before anything is written
    return build_shards(
        BuildPlan(
            src,
            Path(out),
            image_format or d.image_format,
            shard_size,
            max(1, workers),
            progress,
            eval_fraction=d.eval_fraction,
        )
    )


def export_arrays(kind: str, out: str | Path, data_cfg=None, num: int | None = None) -> dict:
    """``gvae-dist data export``: a built-in generator's images and factors as a labelled ``.npz``
    that ``--source arrays`` reads back with no flags (``images`` uint8 [N, S, S, C], ``factors``
    float32 [N, F], ``factor_names``, and for the faces ``factor_groups``: the default
    partitions' factors), e.g. to rehearse an imported-data study or to feed another tool.
    :func:`synthetic.generate` under the ``data.*`` settings ``data_cfg`` (``seed``,
    ``image_size``, ``feature_scale``; ``num`` defaults to ``data.num_train``); written to a
    temporary file and renamed, and an existing ``out`` is never replaced."""
    from gvae_dist.config import Config, DataConfig

    d = data_cfg or DataConfig()
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: data export writes an .npz; give a path ending in .npz")
    if out.exists():
        raise ValueError(f"--out {out} already exists; remove it or choose another path (an export never overwrites)")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: folder {out.parent} does not exist")
    if num is not None and num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
    data = synthetic.generate(kind, num or d.num_train, d.seed, d.image_size, d.feature_scale)
    arrays = {"images": data.images, "factors": data.factors, "factor_names": np.array(data.factor_names)}
    groups = [f"{p.name}={','.join(p.factors)}" for p in Config().partitions if p.factors] if kind == "faces" else []
    if groups:
        arrays["factor_groups"] = np.array(groups)
    tmp = out.with_name(f".{out.name}.partial.npz")
    try:
        np.savez_compressed(tmp, **arrays)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out),
        "num": len(data.images),
        "image_size": d.image_size,
        "factors": data.factor_names,
        "groups": groups,
    }


# ---------------------------------------------------------------------------------------------


def _finish(
    name: str,
    specs: list[FactorSpec],
    factors: np.ndarray,
    rows: np.ndarray,
    loader,
    image_size: int,
    channels: int,
    d,
    config: dict,
    provided_labels: np.ndarray | None = None,
    **kw,
) -> Source:
    if provided_labels is None:
        labels = weak_labels(factors, specs, d.label_bins, d.label_flip_prob, d.label_jitter, seed=d.seed + 7919)
    else:
        labels = provided_labels
        kw["label_classes"] = [int(c) + 1 for c in labels.max(axis=0)]
    config = {
        "source": name,
        "num": int(len(rows)),
        "image_size": image_size,
        "seed": d.seed,
        "label_bins": d.label_bins,
        "label_flip_prob": d.label_flip_prob,
        "label_jitter": d.label_jitter,
        **config,
    }
    return Source(
        name, image_size, channels, specs, factors.astype(np.float32), labels, rows, loader, d.label_bins, config, **kw
    )


def _subset(total: int, num: int | None, seed: int) -> np.ndarray:
    """A seeded random order of ``num`` (default all) of ``total`` rows."""
    if num is not None and num > total:
        raise ValueError(f"--num {num} exceeds the {total} samples of the input")
    return np.random.default_rng(seed).permutation(total)[: num or total]


def _resize(images_NHWC: np.ndarray, size: int) -> np.ndarray:
    if images_NHWC.shape[1:3] == (size, size):
        return images_NHWC
    from PIL import Image

    out = np.empty((len(images_NHWC), size, size, images_NHWC.shape[-1]), np.uint8)
    for i, img in enumerate(images_NHWC):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(pil.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
    return out


def _input_stamp(path: Path) -> dict:
    st = path.stat()
    return {"input": str(path.resolve()), "input_bytes": st.st_size, "input_mtime": int(st.st_mtime)}


def _synthetic(kind: str, d, num: int) -> Source:
    specs = list(FACTOR_SPECS[kind])
    factors = sample_factors(kind, num, d.seed)  # the same rows as synthetic.generate(kind, num, seed)
    channels = 1 if kind == "shapes" else 3
    scale = d.feature_scale
    if kind != "faces" and scale != 1.0:
        raise ValueError(f"--source {kind}: data.feature_scale applies to faces only; leave it at 1.0")
    # the generator's code is part of the generating config: a changed renderer rebuilds the shards
    generating = {"generator_sha256": hashlib.sha256(Path(synthetic.__file__).read_bytes()).hexdigest()[:16]}
    if kind == "faces":
        generating["feature_scale"] = scale
    return _finish(
        kind,
        specs,
        factors,
        np.arange(num),
        lambda rows: render(kind, factors[rows], d.image_size, scale),
        d.image_size,
        channels,
        d,
        generating,
    )


def _columns_to_specs(
    names,
    values_NF: np.ndarray,
    discrete: set[str],
    doc: str,
    notes: list[str],
    where: str,
    row_name=lambda i: f"row {i}",
):
    """FactorSpecs for the non-constant columns (constant ones cannot be learned: dropped).
    Every value must be finite (checked first: a NaN column would otherwise look constant)."""
    values_NF = check_factors(values_NF, names, where, row_name=row_name)
    specs, keep = [], []
    for j, name in enumerate(names):
        col = values_NF[:, j]
        lo, hi = float(col.min()), float(col.max())
        if not hi > lo:
            notes.append(f"factor {name!r} is constant ({lo}) and was dropped")
            continue
        specs.append(FactorSpec(name, lo, hi, doc, discrete=name in discrete))
        keep.append(j)
    return specs, keep


@dataclass(frozen=True)
class ArrayLayout:
    """Where a labelled-array file (``.npz`` or HDF5) keeps what an import needs, and how to read it.

    Every field left ``None`` is found in the file: the first key of ``IMAGE_KEYS`` /
    ``FACTOR_KEYS`` / ``CLASS_KEYS`` / ``WEAK_LABEL_KEYS`` present; factor names from a string
    array (npz) or dataset/attribute (h5) named in ``NAME_KEYS``, else the preset's ``default_names``
    when the count matches, else ``latent0..``; factor groups from ``factor_groups`` (entries
    ``"group=factor,factor"``). A factor is discrete when named in ``discrete``; else (``discrete``
    None) the preset's ``default_discrete`` under its own names, all factors when there are classes
    but no values, otherwise the factors whose values are integers with at most
    ``MAX_INTEGER_CLASSES`` distinct values. A discrete factor is read from the classes when given.
    """

    images: str | None = None
    factors: str | None = None
    classes: str | None = None
    weak_labels: str | None = None
    names: tuple[str, ...] | None = None
    discrete: frozenset[str] | None = None
    groups: dict[str, tuple[str, ...]] | None = None
    default_names: tuple[str, ...] | None = None  # preset names, used when the count matches
    default_discrete: frozenset[str] = frozenset()  # the preset's discrete factors (with its names)
    required: tuple[str, ...] = ()  # keys the preset's format always has (named when missing)
    round_discrete: bool = False  # 3dshapes stores classes as floats: round them

    def replace(self, **changes) -> ArrayLayout:
        """This layout with the fields given (not None) replaced: flags over a preset."""
        from dataclasses import replace

        return replace(self, **{k: v for k, v in changes.items() if v is not None})


IMAGE_KEYS = ("images", "imgs", "x", "X")
FACTOR_KEYS = ("factors", "latents_values", "labels", "latents", "y")
CLASS_KEYS = ("classes", "latents_classes")
WEAK_LABEL_KEYS = ("weak_labels", "weak_classes")
NAME_KEYS = ("factor_names", "latents_names", "names")
GROUP_KEY = "factor_groups"
LAYOUTS = {
    "arrays": ArrayLayout(),
    "dsprites": ArrayLayout(
        images="imgs",
        factors="latents_values",
        classes="latents_classes",
        default_names=DSPRITES_LATENTS,
        default_discrete=frozenset(DSPRITES_DISCRETE),
        required=("imgs", "latents_values", "latents_classes"),
    ),
    "3dshapes": ArrayLayout(
        images="images",
        factors="labels",
        default_names=SHAPES3D_LATENTS,
        default_discrete=frozenset(SHAPES3D_DISCRETE),
        required=("images", "labels"),
        round_discrete=True,
    ),
}


def parse_layout_flags(
    keys: str | None = None, names: str | None = None, discrete: str | None = None, groups: str | None = None
) -> dict:
    """``ArrayLayout`` fields from the ``data build`` flags: ``--keys images=imgs,factors=y``,
    ``--factor-names a,b``, ``--discrete a,b``, ``--groups 'pose=yaw,pitch;expression=mouth'``."""
    out: dict = {}
    if keys:
        allowed = ("images", "factors", "classes", "weak_labels")
        for item in filter(None, (k.strip() for k in keys.split(","))):
            role, sep, key = item.partition("=")
            if not sep or role.strip() not in allowed or not key.strip():
                raise ValueError(
                    f"--keys {keys!r}: expected ROLE=KEY pairs with ROLE in {list(allowed)}, "
                    f"e.g. --keys images=imgs,factors=latents_values; got {item!r}"
                )
            out[role.strip()] = key.strip()
    if names:
        out["names"] = tuple(n.strip() for n in names.split(","))
    if discrete is not None:
        out["discrete"] = frozenset(n.strip() for n in discrete.split(",") if n.strip())
    if groups:
        out["groups"] = _parse_groups(groups.split(";"), "--groups")
    return out


def _parse_groups(entries, where: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for entry in filter(None, (str(e).strip() for e in entries)):
        name, sep, members = entry.partition("=")
        name = name.strip()
        factors = tuple(m.strip() for m in members.split(",") if m.strip())
        if not sep or not name.isidentifier() or not factors:
            raise ValueError(
                f"{where}: group {entry!r} must read NAME=factor,factor (NAME an identifier, e.g. pose=yaw,pitch,roll)"
            )
        if name in out:
            raise ValueError(f"{where}: group {name!r} is given twice")
        out[name] = factors
    return out


class _ArrayFile:
    """Read access to the arrays of an ``.npz`` or the datasets of an HDF5 file, with the words
    its messages use (``array 'imgs'`` / ``dataset 'images'``). HDF5 images are read lazily, one
    handle per build worker; an npz array is read once, when first used (arrays no import needs,
    such as dSprites' pickled ``metadata``, are never loaded)."""

    def __init__(self, path: Path):
        self.path, self.where = path, f"--input {path}"
        if _is_h5(path):
            import h5py

            self.kind, self.noun = "h5", "dataset"
            try:
                with h5py.File(path, "r") as fh:  # closed again: h5py handles must not cross a fork
                    self.keys = [k for k in fh.keys() if isinstance(fh[k], h5py.Dataset)]
                    self._dtypes = {k: fh[k].dtype for k in self.keys}
                    self._shapes = {k: fh[k].shape for k in self.keys}
                    self.attrs = {k: dict(fh[k].attrs) for k in self.keys}
                    self.attrs[""] = dict(fh.attrs)
            except OSError as exc:
                raise ValueError(f"{self.where}: not a readable HDF5 file ({exc})") from None
        else:
            self.kind, self.noun = "npz", "array"
            try:
                self.npz = np.load(path, allow_pickle=False)
                self.keys = list(self.npz.files)
            except Exception as exc:  # noqa: BLE001 - numpy raises several types for a bad file
                raise ValueError(f"{self.where}: not a readable .npz ({exc})") from None
            self._cache: dict[str, np.ndarray] = {}
            self.attrs = {}

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._shapes[key]) if self.kind == "h5" else self.read(key).shape

    def dtype(self, key: str) -> np.dtype:
        return self._dtypes[key] if self.kind == "h5" else self.read(key).dtype

    def name(self, key: str) -> str:
        return f"{self.where} {self.noun} {key!r}"

    def read(self, key: str) -> np.ndarray:
        if self.kind == "h5":
            import h5py

            with h5py.File(self.path, "r") as fh:  # no handle left open across the build's fork
                return fh[key][()]
        if key not in self._cache:
            try:
                self._cache[key] = self.npz[key]
            except ValueError as exc:  # an object array: refused without allow_pickle
                raise ValueError(
                    f"{self.name(key)}: cannot be read without pickle ({exc}); store numbers or strings"
                ) from None
        return self._cache[key]

    def rows(self, key: str, sel: np.ndarray) -> np.ndarray:
        """``key``'s entries at rows ``sel`` (any order)."""
        if self.kind == "npz":
            return self.read(key)[sel]
        order = np.argsort(sel)  # h5py reads need increasing indices
        block = _h5(str(self.path))[key][np.sort(sel)]
        out = np.empty_like(block)
        out[order] = block
        return out

    def pixel_range(self, key: str, count: int) -> tuple[float, float]:
        """(min, max) pixel of images ``key``; a lazily read uint8 HDF5 dataset is not scanned
        (every value is valid; a large file is not read twice)."""
        if self.kind == "npz":
            arr = self.read(key)
            return pixel_range(lambda a, b: arr[a:b], count, arr.dtype, self.name(key))
        import h5py

        with h5py.File(self.path, "r") as fh:
            return pixel_range(lambda a, b: fh[key][a:b], count, fh[key].dtype, self.name(key), scan_uint8=False)

    def find(self, given: str | None, candidates, role: str) -> str | None:
        if given is not None:
            if given not in self.keys:
                raise ValueError(
                    f"{self.where}: no {self.noun} {given!r} for the {role} (has {self.keys}); "
                    f"name the right one with --keys {role}=KEY"
                )
            return given
        return next((k for k in candidates if k in self.keys), None)

    def strings(self, key: str) -> list[str] | None:
        """A list of strings stored as an array/dataset or as an attribute (of the file or of a
        dataset) named ``key``; None when there is none."""
        if key in self.keys and self.dtype(key).kind in "USO":
            return [_text(v) for v in np.asarray(self.read(key)).reshape(-1)]
        for attrs in self.attrs.values():
            if key in attrs:
                return [_text(v) for v in np.atleast_1d(attrs[key])]
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _is_h5(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == b"\x89HDF\r\n\x1a\n" or path.suffix.lower() in (".h5", ".hdf5")


def _images_layout(shape: tuple[int, ...]) -> bool:
    """True when a 4-D image array is channels-first ``[N, C, H, W]`` (C in {1, 3}, W not)."""
    return len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)


def _arrays(name: str, path: Path, d, num: int | None, layout: ArrayLayout) -> Source:
    if not path.is_file():
        raise ValueError(f"--input {path}: --source {name} reads one .npz or .h5 file, not a directory")
    f = _ArrayFile(path)
    where = f.where
    missing = [k for k in layout.required if k not in f.keys]
    if missing:
        raise ValueError(
            f"{where}: a {name} {'.h5' if f.kind == 'h5' else '.npz'} needs {f.noun}s {missing} (has {f.keys})"
        )
    img_key = f.find(layout.images, IMAGE_KEYS, "images")
    fac_key = f.find(layout.factors, FACTOR_KEYS, "factors")
    cls_key = f.find(layout.classes, CLASS_KEYS, "classes")
    weak_key = f.find(layout.weak_labels, WEAK_LABEL_KEYS, "weak_labels")
    if img_key is None:
        raise ValueError(
            f"{where}: no image {f.noun} (looked for {list(IMAGE_KEYS)}; has {f.keys}); name it with --keys images=KEY"
        )
    if fac_key is None and cls_key is None:
        raise ValueError(
            f"{where}: no factor {f.noun} (looked for {list(FACTOR_KEYS + CLASS_KEYS)}; has "
            f"{f.keys}); name it with --keys factors=KEY (values) or classes=KEY (class ids)"
        )
    shape, dtype = f.shape(img_key), f.dtype(img_key)
    nchw = _images_layout(shape)
    hwc = (shape[0], shape[2], shape[3], shape[1]) if nchw else shape
    count, height, width, channels = check_image_shape(hwc, dtype, f.name(img_key))
    tables = {}
    for key in filter(None, (fac_key, cls_key, weak_key)):
        arr = np.asarray(f.read(key))
        if arr.ndim != 2:
            raise ValueError(
                f"{where}: {f.noun} {key!r} must be [N, K] (one row of factors per image), got "
                f"shape {list(arr.shape)}" + ("; one factor needs shape [N, 1]" if arr.ndim == 1 else "")
            )
        tables[key] = arr
    first = tables[fac_key or cls_key]
    for arr in tables.values():
        if arr.shape != first.shape or len(arr) != count:
            raise ValueError(
                f"{where}: {f.noun}s must have one row per image and the same columns: "
                f"{img_key!r} {list(shape)} ({count} images), "
                + ", ".join(f"{k!r} {list(a.shape)}" for k, a in tables.items())
            )
    k = first.shape[1]
    names = (
        layout.names
        or _file_names(f, k)
        or (
            layout.default_names
            if layout.default_names and len(layout.default_names) == k
            else tuple(f"latent{i}" for i in range(k))
        )
    )
    if len(names) != k or len(set(names)) != k or not all(names):
        raise ValueError(
            f"{where}: {k} factor columns need {k} distinct non-empty names, got {list(names)}"
            + (" (--factor-names)" if layout.names else "")
        )
    values = check_factors(tables[fac_key], names, f.name(fac_key), "factor") if fac_key else None
    classes = check_factors(tables[cls_key], names, f.name(cls_key), "factor") if cls_key else None
    discrete = _discrete(layout, names, values, classes, where)
    mixed = np.empty((count, k))
    for j, n in enumerate(names):
        if n in discrete and classes is not None:
            mixed[:, j] = classes[:, j]
        else:
            col = (values if values is not None else classes)[:, j]
            if n in discrete:
                col = _integral(col, n, f.name(fac_key or cls_key), layout.round_discrete)
            mixed[:, j] = col
    notes: list[str] = []
    specs, keep = _columns_to_specs(names, mixed, discrete, f"{name} factor", notes, where)
    labels = None
    if weak_key:
        labels = _provided_labels(tables[weak_key], names, f.name(weak_key), d)[:, keep]
        notes.append(
            f"weak labels are {f.noun} {weak_key!r} as provided (data.label_bins, "
            "label_flip_prob and label_jitter do not apply)"
        )
    groups = _groups(layout.groups or _file_groups(f), [s.name for s in specs], names, where)
    rows = _subset(count, num, d.seed)
    lo, hi = f.pixel_range(img_key, count)
    scale = pixel_scale(dtype, lo, hi, f.name(img_key))
    if scale != 1:
        notes.append(f"pixels 0..1 ({dtype}) were scaled by {scale:g} to 0..255")
    if nchw:
        notes.append(f"images {list(shape)} were read as channels-first [N, C, H, W]")

    def load(sel: np.ndarray) -> np.ndarray:
        block = f.rows(img_key, sel)
        if nchw:
            block = np.moveaxis(block, 1, -1)
        return _resize(to_uint8(block, scale).reshape(len(sel), height, width, channels), d.image_size)

    config = {
        **_input_stamp(path),
        "layout": {
            "images": img_key,
            "factors": fac_key,
            "classes": cls_key,
            "weak_labels": weak_key,
            "names": list(names),
            "discrete": sorted(discrete),
        },
    }
    return _finish(
        name,
        specs,
        mixed[:, keep],
        rows,
        load,
        d.image_size,
        channels,
        d,
        config,
        notes=notes,
        groups=groups,
        provided_labels=labels,
    )


def _file_names(f: _ArrayFile, k: int) -> tuple[str, ...] | None:
    for key in NAME_KEYS:
        names = f.strings(key)
        if names is not None:
            if len(names) != k:
                raise ValueError(
                    f"{f.where}: {key!r} lists {len(names)} factor names for {k} factor "
                    f"columns: {names}; fix it or give --factor-names"
                )
            return tuple(names)
    return None


def _file_groups(f: _ArrayFile) -> dict[str, tuple[str, ...]] | None:
    entries = f.strings(GROUP_KEY)
    return None if entries is None else _parse_groups(entries, f"{f.where} {GROUP_KEY!r}")


def _discrete(layout: ArrayLayout, names, values, classes, where: str) -> set[str]:
    if layout.discrete is not None:
        unknown = sorted(set(layout.discrete) - set(names))
        if unknown:
            raise ValueError(f"{where}: --discrete names {unknown}, not factors of the file ({list(names)})")
        return set(layout.discrete)
    if layout.default_discrete and tuple(names) == layout.default_names:
        return set(layout.default_discrete)
    if values is None:
        return set(names)  # classes only
    return {
        n
        for j, n in enumerate(names)
        if np.all(values[:, j] == np.rint(values[:, j])) and len(np.unique(values[:, j])) <= MAX_INTEGER_CLASSES
    }


def _integral(col: np.ndarray, name: str, where: str, round_: bool) -> np.ndarray:
    rounded = np.rint(col)
    if not round_:
        bad = np.flatnonzero(np.abs(col - rounded) > 1e-6)
        if len(bad):
            raise ValueError(
                f"{where}: factor {name!r} is discrete but row {bad[0]} holds {col[bad[0]]}, "
                "not a class id; give its classes (--keys classes=KEY) or leave it out of "
                "--discrete"
            )
    return rounded


def _provided_labels(arr: np.ndarray, names, where: str, d) -> np.ndarray:
    if d.label_flip_prob or d.label_jitter:
        raise ValueError(
            f"{where}: the file provides weak labels, so data.label_flip_prob "
            f"({d.label_flip_prob}) and data.label_jitter ({d.label_jitter}) cannot apply; "
            "set both to 0 (or name no weak_labels)"
        )
    labels = check_factors(arr, names, where, "weak label")
    bad = np.argwhere((labels != np.rint(labels)) | (labels < 0))
    if len(bad):
        r, j = bad[0]
        raise ValueError(f"{where}: weak labels are class ids 0, 1, ...; row {r} holds {labels[r, j]} for {names[j]!r}")
    return labels.astype(np.int64)


def _groups(groups, kept: list[str], names, where: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for group, members in (groups or {}).items():
        unknown = [m for m in members if m not in names]
        if unknown:
            raise ValueError(f"{where}: group {group!r} names {unknown}, not factors of the file ({list(names)})")
        out[group] = [m for m in members if m in kept]  # constant factors were dropped (noted)
    return out


# The unsupervised ``rest`` partition of a hint: the presets' 8 dims. Smaller rests separate the
# partitions more, but with dataset partners the gated codes then collapse in scale and drift off
# the prior (docs/study.md, v12, v15 and v17).
HINT_REST_SIZE = 8


def partitions_hint(groups: dict[str, list[str]]) -> str:
    """The ``--set`` flags that make a config's partitions the factor groups of a build (each group
    one dim per factor plus one, as the face presets' pose and expression) plus an
    ``HINT_REST_SIZE``-dim ``rest``, and the latent size they add up to."""
    sizes = {g: len(fs) + 1 for g, fs in groups.items() if fs}
    parts = [f"{{name: {g}, size: {sizes[g]}, factors: [{', '.join(groups[g])}]}}" for g in sizes]
    rest = f"{{name: rest, size: {HINT_REST_SIZE}, factors: []}}"
    return (
        "--set 'partitions=[" + ", ".join([*parts, rest]) + "]' "
        f"--set model.latent_dim={sum(sizes.values()) + HINT_REST_SIZE}"
    )


_H5_FILES: dict[str, object] = {}  # one open handle per build worker process


def _h5(path: str):
    import h5py

    if path not in _H5_FILES:
        _H5_FILES[path] = h5py.File(path, "r")
    return _H5_FILES[path]


def _number(text: str) -> float | None:
    """The number in a CSV cell (possibly NaN or inf), or None for text."""
    try:
        return float(text)
    except ValueError:
        return None


def _csv_column(csv_path: Path, name: str, column: list[str], lines: list[int]) -> list[float | None]:
    """The numbers of one label column (None for text cells), refusing cells that would silently
    change its meaning: a NaN/inf cell anywhere, and a text cell in a mostly numeric column
    (either would turn a continuous factor into a categorical one; see the module docstring)."""
    nums = [_number(c) for c in column]
    bad = [i for i, v in enumerate(nums) if v is not None and not math.isfinite(v)]
    kind = "not a finite number"
    if not bad and 2 * sum(v is not None for v in nums) >= len(nums):
        bad, kind = [i for i, v in enumerate(nums) if v is None], "text in a numeric column"
    if bad:
        raise ValueError(
            f"{csv_path} line {lines[bad[0]]}: column {name!r} holds {column[bad[0]]!r} "
            f"({kind}; {len(bad)} such cell(s) in the column). Fix or drop those rows: "
            "missing or non-finite values cannot be imported"
        )
    return nums


def _folder(root: Path, csv_path: Path, d, num: int | None) -> Source:
    if not root.is_dir():
        raise ValueError(f"--input {root}: --source folder needs a directory of images")
    if not csv_path.is_file():
        raise ValueError(f"labels CSV {csv_path} does not exist; pass --labels-csv")
    with open(csv_path, newline="") as fh:
        table = list(csv.reader(fh))
    if len(table) < 3 or len(table[0]) < 2:
        raise ValueError(
            f"{csv_path}: need a header with a file column and at least one label column, and at least 2 rows"
        )
    header = [h.strip() for h in table[0]]
    lower = [h.lower() for h in header]
    file_col = next((lower.index(c) for c in _FILE_COLUMNS if c in lower), 0)
    label_cols = [j for j in range(len(header)) if j != file_col]
    if len(set(header)) != len(header) or any(not header[j] for j in label_cols):
        raise ValueError(f"{csv_path}: column names must be unique and non-empty, got {header}")
    files, cells, lines = [], [], []
    for r, row in enumerate(table[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(header):
            raise ValueError(f"{csv_path} line {r}: {len(row)} fields, the header has {len(header)}")
        for j in label_cols:
            if not row[j].strip():
                raise ValueError(f"{csv_path} line {r}: column {header[j]!r} is empty")
        files.append(row[file_col].strip())
        lines.append(r)
        cells.append([row[j].strip() for j in label_cols])
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise ValueError(f"{csv_path}: {len(missing)} listed images are not in {root}, e.g. {missing[:3]}")
    names = [header[j] for j in label_cols]
    values = np.empty((len(files), len(names)), np.float64)
    categories, discrete = {}, set()
    for j, name in enumerate(names):
        column = [row[j] for row in cells]
        nums = _csv_column(csv_path, name, column, lines)
        integral = all(v is not None and v.is_integer() for v in nums)
        if any(v is None for v in nums) or (integral and len(set(nums)) <= MAX_INTEGER_CLASSES):
            classes = sorted(set(nums)) if integral else sorted(set(column))
            lookup = {c: i for i, c in enumerate(classes)}
            values[:, j] = [lookup[v if integral else c] for v, c in zip(nums, column)]
            categories[name] = [int(c) if integral else c for c in classes]
            discrete.add(name)
        else:
            values[:, j] = nums
    notes: list[str] = []
    specs, keep = _columns_to_specs(
        names, values, discrete, f"from {csv_path.name}", notes, str(csv_path), row_name=lambda i: f"line {lines[i]}"
    )
    if not specs:
        raise ValueError(f"{csv_path}: every label column is constant; nothing to learn from")
    rows = _subset(len(files), num, d.seed)
    size = d.image_size

    def load(sel: np.ndarray) -> np.ndarray:
        from PIL import Image

        out = np.empty((len(sel), size, size, 3), np.uint8)
        for i, row in enumerate(sel):
            try:
                with Image.open(root / files[row]) as img:
                    img = eight_bit(img, root / files[row]).convert("RGB")
                    w, h = img.size
                    s = min(w, h)
                    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
                    out[i] = np.asarray(img.resize((size, size), Image.BICUBIC, box=box))
            except PixelRangeError:
                raise
            except (OSError, ValueError) as exc:
                raise ValueError(f"{root / files[row]}: cannot read the image ({exc})") from None
        return out

    from gvae_dist.data.shards import sha256_file

    stamp = {**_input_stamp(root), "labels_csv": str(csv_path.resolve()), "labels_csv_sha256": sha256_file(csv_path)}
    return _finish(
        "folder",
        specs,
        values[:, keep],
        rows,
        load,
        size,
        3,
        d,
        stamp,
        categories={k: v for k, v in categories.items() if k in {s.name for s in specs}},
        files=files,
        notes=notes,
    )
