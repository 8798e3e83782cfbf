"""Data sources for ``gvae-dist data build``: images + ground-truth factors + weak labels.

- ``faces`` / ``shapes``: the procedural generators of :mod:`gvae_dist.data.synthetic`, with the
  same factors and weak labels as the in-memory backend for the same ``data.*`` settings.
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

Weak labels for every source come from :func:`gvae_dist.data.synthetic.weak_labels` with
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

__all__ = ["SOURCES", "MAX_INTEGER_CLASSES", "Source", "build_dataset", "open_source"]

SOURCES = ("faces", "shapes", "dsprites", "3dshapes", "folder")
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
        rec = {"source": self.name, "source_row": row,
               "factors": dict(zip(names, self.factors[row].tolist())),
               "labels": dict(zip(names, self.labels[row].tolist()))}
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
        for s in self.factor_specs:
            if s.discrete:
                out.append({"name": s.name, "discrete": True, "low": int(s.low),
                            "num_classes": int(s.high - s.low + 1)})
            else:
                edges = np.linspace(s.low, s.high, self.bins + 1).tolist()
                out.append({"name": s.name, "discrete": False, "low": 0, "num_classes": self.bins,
                            "bin_edges": edges})
        return out


def open_source(name: str, data_cfg, num: int | None = None, input_path: str | None = None,
                labels_csv: str | None = None) -> Source:
    """Build the :class:`Source` for ``--source name`` under the ``data.*`` settings ``data_cfg``."""
    if name not in SOURCES:
        raise ValueError(f"--source must be one of {list(SOURCES)}, got {name!r}")
    if num is not None and num < 1:
        raise ValueError(f"--num must be >= 1, got {num}")
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
    return _dsprites(path, data_cfg, num) if name == "dsprites" else _shapes3d(path, data_cfg, num)


def build_dataset(source: str, out: str | Path, data_cfg=None, *, num: int | None = None,
                  image_format: str | None = None, shard_size: int = 2000, workers: int = 1,
                  progress: bool = True, input_path: str | None = None,
                  labels_csv: str | None = None) -> dict:
    """``gvae-dist data build`` as a function: open the source, write the shards (resumably),
    return the manifest. ``data_cfg`` (a ``DataConfig``; defaults if None) sets image size, seed,
    weak-label bins/noise and the default image format."""
    from gvae_dist.config import DataConfig
    from gvae_dist.data.shards import BuildPlan, build_shards

    d = data_cfg or DataConfig()
    src = open_source(source, d, num, input_path, labels_csv)
    check_source(src, input_path or f"--source {source}")  # before anything is written
    return build_shards(BuildPlan(src, Path(out), image_format or d.image_format, shard_size,
                                  max(1, workers), progress, eval_fraction=d.eval_fraction))


# ---------------------------------------------------------------------------------------------


def _finish(name: str, specs: list[FactorSpec], factors: np.ndarray, rows: np.ndarray, loader,
            image_size: int, channels: int, d, config: dict, **kw) -> Source:
    labels = weak_labels(factors, specs, d.label_bins, d.label_flip_prob, d.label_jitter,
                         seed=d.seed + 7919)
    config = {"source": name, "num": int(len(rows)), "image_size": image_size, "seed": d.seed,
              "label_bins": d.label_bins, "label_flip_prob": d.label_flip_prob,
              "label_jitter": d.label_jitter, **config}
    return Source(name, image_size, channels, specs, factors.astype(np.float32), labels, rows,
                  loader, d.label_bins, config, **kw)


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
    return _finish(kind, specs, factors, np.arange(num),
                   lambda rows: render(kind, factors[rows], d.image_size, scale), d.image_size, channels,
                   d, generating)


def _columns_to_specs(names, values_NF: np.ndarray, discrete: set[str], doc: str, notes: list[str],
                      where: str, row_name=lambda i: f"row {i}"):
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


def _dsprites(path: Path, d, num: int | None) -> Source:
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for a bad file
        raise ValueError(f"--input {path}: not a readable .npz ({exc})") from None
    missing = [k for k in ("imgs", "latents_values", "latents_classes") if k not in npz.files]
    if missing:
        raise ValueError(f"--input {path}: a dSprites .npz needs arrays {missing} (has {npz.files})")
    imgs, values, classes = npz["imgs"], npz["latents_values"], npz["latents_classes"]
    where = f"--input {path}"
    count, _, _, channels = check_image_shape(imgs.shape, imgs.dtype, f"{where} array 'imgs'")
    for key, arr in (("latents_values", values), ("latents_classes", classes)):
        if arr.ndim != 2:
            raise ValueError(f"{where}: array {key!r} must be [N, K] (one row of latents per image), got "
                             f"shape {list(arr.shape)}" + ("; one latent needs shape [N, 1]" if arr.ndim == 1 else ""))
    if values.shape != classes.shape or len(values) != count:
        raise ValueError(f"{where}: expected imgs [N, H, W] and latents [N, K] with the same N; "
                         f"got {imgs.shape}, {values.shape}, {classes.shape}")
    k = values.shape[1]
    names = DSPRITES_LATENTS if k == len(DSPRITES_LATENTS) else tuple(f"latent{i}" for i in range(k))
    disc = [n in DSPRITES_DISCRETE for n in names]  # discrete latents are read from the classes
    for key, arr, cols in (("latents_classes", classes, np.flatnonzero(disc)),
                           ("latents_values", values, np.flatnonzero(~np.array(disc)))):
        check_factors(arr[:, cols], [names[j] for j in cols], f"{where} array {key!r}", "latent")
    mixed = np.where(disc, classes, values).astype(np.float64)
    notes: list[str] = []
    specs, keep = _columns_to_specs(names, mixed, DSPRITES_DISCRETE, "dSprites latent", notes, where)
    rows = _subset(count, num, d.seed)
    scale = pixel_scale(imgs.dtype, *pixel_range(lambda a, b: imgs[a:b], count, imgs.dtype,
                                                 f"{where} array 'imgs'"), f"{where} array 'imgs'")
    if scale != 1:
        notes.append(f"pixels 0..1 ({imgs.dtype}) were scaled by {scale:g} to 0..255")

    def load(sel: np.ndarray) -> np.ndarray:
        return _resize(to_uint8(imgs[sel], scale).reshape(len(sel), *imgs.shape[1:3], channels), d.image_size)

    return _finish("dsprites", specs, mixed[:, keep], rows, load, d.image_size, channels, d,
                   _input_stamp(path), notes=notes)


_H5_FILES: dict[str, object] = {}  # one open handle per build worker process


def _h5(path: str):
    import h5py

    if path not in _H5_FILES:
        _H5_FILES[path] = h5py.File(path, "r")
    return _H5_FILES[path]


def _shapes3d(path: Path, d, num: int | None) -> Source:
    import h5py

    where = f"--input {path}"
    try:
        with h5py.File(path, "r") as fh:  # closed again: h5py handles must not cross a fork
            missing = [k for k in ("images", "labels") if k not in fh]
            if missing:
                raise ValueError(f"--input {path}: a 3dshapes .h5 needs datasets {missing} "
                                 f"(has {list(fh.keys())})")
            shape, dtype, labels = fh["images"].shape, fh["images"].dtype, fh["labels"][()]
            count, _, _, channels = check_image_shape(shape, dtype, f"{where} dataset 'images'")
            # a lazily read uint8 file is not scanned (all values valid); other dtypes are, once
            lo, hi = pixel_range(lambda a, b: fh["images"][a:b], count, dtype, f"{where} dataset 'images'",
                                 scan_uint8=False)
    except OSError as exc:
        raise ValueError(f"--input {path}: not a readable HDF5 file ({exc})") from None
    scale = pixel_scale(dtype, lo, hi, f"{where} dataset 'images'")
    if labels.ndim != 2 or len(labels) != count:
        raise ValueError(f"{where}: expected images [N, H, W, C] and labels [N, K] with the same N; "
                         f"got {list(shape)} and {list(labels.shape)}"
                         + ("; one factor needs labels of shape [N, 1]" if labels.ndim == 1 else ""))
    k = labels.shape[1]
    names = SHAPES3D_LATENTS if k == len(SHAPES3D_LATENTS) else tuple(f"latent{i}" for i in range(k))
    notes: list[str] = []
    if scale != 1:
        notes.append(f"pixels 0..1 ({dtype}) were scaled by {scale:g} to 0..255")
    values = check_factors(labels, names, f"{where} dataset 'labels'")
    disc = [j for j, n in enumerate(names) if n in SHAPES3D_DISCRETE]
    values[:, disc] = np.rint(values[:, disc])
    specs, keep = _columns_to_specs(names, values, SHAPES3D_DISCRETE, "3dshapes factor", notes, where)
    rows = _subset(count, num, d.seed)
    h5_path = str(path)

    def load(sel: np.ndarray) -> np.ndarray:
        order = np.argsort(sel)  # h5py reads need increasing indices
        block = _h5(h5_path)["images"][np.sort(sel)]
        out = np.empty_like(block)
        out[order] = block
        return _resize(to_uint8(out, scale).reshape(len(sel), *shape[1:3], channels), d.image_size)

    return _finish("3dshapes", specs, values[:, keep], rows, load, d.image_size, channels, d,
                   _input_stamp(path), notes=notes)


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
        raise ValueError(f"{csv_path} line {lines[bad[0]]}: column {name!r} holds {column[bad[0]]!r} "
                         f"({kind}; {len(bad)} such cell(s) in the column). Fix or drop those rows: "
                         "missing or non-finite values cannot be imported")
    return nums


def _folder(root: Path, csv_path: Path, d, num: int | None) -> Source:
    if not root.is_dir():
        raise ValueError(f"--input {root}: --source folder needs a directory of images")
    if not csv_path.is_file():
        raise ValueError(f"labels CSV {csv_path} does not exist; pass --labels-csv")
    with open(csv_path, newline="") as fh:
        table = list(csv.reader(fh))
    if len(table) < 3 or len(table[0]) < 2:
        raise ValueError(f"{csv_path}: need a header with a file column and at least one label "
                         f"column, and at least 2 rows")
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
    specs, keep = _columns_to_specs(names, values, discrete, f"from {csv_path.name}", notes, str(csv_path),
                                    row_name=lambda i: f"line {lines[i]}")
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

    stamp = {**_input_stamp(root), "labels_csv": str(csv_path.resolve()),
             "labels_csv_sha256": sha256_file(csv_path)}
    return _finish("folder", specs, values[:, keep], rows, load, size, 3, d, stamp,
                   categories={k: v for k, v in categories.items() if k in {s.name for s in specs}},
                   files=files, notes=notes)
