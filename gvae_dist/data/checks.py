"""Validation of imported arrays before any shard is written, and of labels when shards are read.

Every importer (:mod:`gvae_dist.data.importers`) passes its raw arrays through these checks, and
``build_dataset`` passes the finished :class:`~gvae_dist.data.importers.Source` through
:func:`check_source` before :func:`~gvae_dist.data.shards.build_shards` touches the output
directory, so bad input fails with the file, column and row, and never as a half-written set.

Rules (each refusal is a ``ValueError`` naming the file and what to do):

- **images**: shape ``[N, H, W]`` or ``[N, H, W, C]`` with C in {1, 3}, N >= 1, a numeric dtype.
- **pixels** (:func:`pixel_scale`): integers must lie in 0..255; an integer set whose values
  are all 0 or 1 (binary masks, as dSprites stores them) is scaled to 0/255 (``uint8`` read
  lazily from HDF5 is not scanned and taken as it is). Floats must be finite and lie in [0, 1] (scaled by
  255) or else in [0, 255]
  (rounded); a float set whose maximum is <= 1 is always read as [0, 1]. Anything else (e.g.
  16-bit 0..65535, negative values, z-scored floats) is refused with the range found, never
  wrapped or clipped. 16-bit, 32-bit and float image files are mapped by the same rule
  (:func:`eight_bit`).
- **factors** (:func:`check_factors`): a 2-D table ``[N, F]`` with N >= 1, every value finite;
  a non-finite value names its column, the first bad row and how many rows are bad.
- **labels** (:func:`label_bounds`, :func:`first_bad_label`): weak label l of a factor is valid
  in ``[low, low + num_classes)`` (the manifest's ``labels[l]``); checked on the arrays before
  writing and on every sample when shards are read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "PixelRangeError",
    "check_factors",
    "check_image_shape",
    "check_source",
    "eight_bit",
    "first_bad_label",
    "label_bounds",
    "pixel_range",
    "pixel_scale",
    "to_uint8",
]

_PIXEL_CHUNK = 4096  # images per block when scanning an image array for its range


def check_image_shape(shape: Sequence[int], dtype, where: str) -> tuple[int, int, int, int]:
    """``(N, H, W, C)`` of an image array of ``shape``; ``ValueError`` naming ``where`` if it is not
    ``[N, H, W]`` or ``[N, H, W, C]`` with C in {1, 3}, holds no image, or is not numeric."""
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
        raise ValueError(
            f"{where}: images must have shape [N, H, W] or [N, H, W, C] with C = 1 or 3, got {list(shape)}"
        )
    if shape[0] < 1:
        raise ValueError(f"{where}: holds no images (shape {list(shape)}); nothing to import")
    if min(shape[1:3]) < 1:
        raise ValueError(f"{where}: images of {shape[1]}x{shape[2]} pixels are empty")
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"{where}: images must hold numbers, got dtype {dtype}")
    return shape[0], shape[1], shape[2], shape[3] if len(shape) == 4 else 1


def pixel_range(
    read: Callable[[int, int], np.ndarray], n: int, dtype, where: str, scan_uint8: bool = True
) -> tuple[float, float]:
    """(min, max) over images ``read(lo, hi)`` for ``[0, n)``, in blocks. ``scan_uint8=False``
    skips reading ``uint8`` images (every value is valid; a large file on disk is not read twice).
    ``ValueError`` naming the first image with a non-finite pixel."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8 and not scan_uint8:
        return 0.0, 255.0
    lo, hi = np.inf, -np.inf
    for a in range(0, n, _PIXEL_CHUNK):
        block = np.asarray(read(a, min(n, a + _PIXEL_CHUNK)))
        if dtype.kind == "f":
            bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
            if bad.any():
                raise ValueError(
                    f"{where}: image {a + int(np.argmax(bad))} has a non-finite pixel "
                    f"(NaN or inf; {int(bad.sum())} such images in rows {a}..{a + len(block) - 1}); "
                    "fix or drop those images"
                )
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return lo, hi


class PixelRangeError(ValueError):
    """Pixel values outside what their dtype may hold (the message names the file and range)."""


def pixel_scale(dtype, lo: float, hi: float, where: str) -> float:
    """The factor that maps stored pixels in ``[lo, hi]`` to 0..255 (see module docstring);
    :class:`PixelRangeError` if there is none."""
    dtype = np.dtype(dtype)
    found = f"found values in [{lo:g}, {hi:g}] ({dtype})"
    if dtype.kind in "biu":
        if lo < 0 or hi > 255:
            raise PixelRangeError(
                f"{where}: integer pixels must lie in 0..255, {found}; convert the images "
                "to 8 bits (e.g. divide 16-bit images by 257) before importing"
            )
        return 255.0 if hi <= 1 else 1.0
    if lo < 0 or hi > 255:
        raise PixelRangeError(
            f"{where}: float pixels must lie in [0, 1] or [0, 255], {found}; rescale "
            "them (e.g. undo a normalisation) before importing"
        )
    return 255.0 if hi <= 1 else 1.0


def to_uint8(images: np.ndarray, scale: float) -> np.ndarray:
    """Stored pixels (already range-checked by :func:`pixel_scale`) -> uint8, rounded."""
    if images.dtype == np.uint8 and scale == 1.0:
        return images
    # clip only guards float rounding at the ends; the range was checked before
    return np.clip(np.rint(images.astype(np.float32) * np.float32(scale)), 0, 255).astype(np.uint8)


def eight_bit(img, path):
    """PIL ``img`` if it has 8-bit channels; a 16-bit/32-bit/float image mapped to 8 bits by
    :func:`pixel_scale` and :func:`to_uint8` (PIL's ``convert`` would clip 16-bit values above 255
    to 255 silently). :class:`PixelRangeError` naming ``path`` and the mode if out of range."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;"):
        return img
    from PIL import Image

    arr = np.asarray(img)
    scale = pixel_scale(arr.dtype, float(arr.min()), float(arr.max()), f"{path} (mode {img.mode})")
    return Image.fromarray(to_uint8(arr, scale))


def check_factors(
    values_NF: np.ndarray,
    names: Sequence[str],
    where: str,
    what: str = "column",
    row_name: Callable[[int], str] = lambda i: f"row {i}",
) -> np.ndarray:
    """``values_NF`` as float64 ``[N, F]``; ``ValueError`` naming ``where`` unless it is a
    non-empty 2-D table of finite numbers with one column per name."""
    values = np.asarray(values_NF)
    if values.ndim != 2:
        raise ValueError(
            f"{where}: factors must be a 2-D table [N samples, F {what}s], got shape "
            f"{list(values.shape)}" + ("; a single factor needs shape [N, 1]" if values.ndim == 1 else "")
        )
    if values.shape[0] < 1:
        raise ValueError(f"{where}: holds no samples (factors of shape {list(values.shape)}); nothing to import")
    if values.shape[1] != len(names):
        raise ValueError(f"{where}: {values.shape[1]} factor {what}s but {len(names)} names {list(names)}")
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{where}: factors must be numbers, got dtype {values.dtype}")
    values = values.astype(np.float64)
    bad_NF = ~np.isfinite(values)
    for j in np.flatnonzero(bad_NF.any(axis=0)):
        rows = np.flatnonzero(bad_NF[:, j])
        raise ValueError(
            f"{where}: {what} {names[j]!r} has {len(rows)} non-finite value(s) (NaN or inf), "
            f"the first at {row_name(int(rows[0]))} ({values[rows[0], j]}); fix or drop "
            "those rows before importing"
        )
    return values


def label_bounds(label_meta: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Per weak label, the lowest valid value and the number of classes (int64 ``[L]`` each)."""
    low = np.array([int(m.get("low", 0)) for m in label_meta], np.int64)
    return low, np.array([int(m["num_classes"]) for m in label_meta], np.int64)


def first_bad_label(labels_NL: np.ndarray, label_meta: list[dict]) -> tuple[int, int, int] | None:
    """``(row, label index, value)`` of the first label outside its classes, or None."""
    low, num = label_bounds(label_meta)
    bad_NL = (labels_NL < low) | (labels_NL >= low + num)
    if not bad_NL.any():
        return None
    i, j = np.argwhere(bad_NL)[0]
    return int(i), int(j), int(labels_NL[i, j])


def describe_label(label_meta: list[dict], j: int, value: int) -> str:
    """'label 99 of factor 'shape' is outside its 3 classes [0, 2]'."""
    low, num = label_bounds(label_meta)
    return (
        f"label {value} of factor {label_meta[j]['name']!r} is outside its {num[j]} classes "
        f"[{low[j]}, {low[j] + num[j] - 1}]"
    )


def check_source(src, where: str) -> None:
    """The last gate before shards are written: the finished source's tables agree with each other
    and with the declared classes (importers' own checks already named the input's rows)."""
    n_rows = len(src.factors)
    if src.num_samples < 1 or n_rows < 1:
        raise ValueError(f"{where}: no samples to import")
    if not src.factor_specs:
        raise ValueError(f"{where}: no factor to learn from (every factor was constant or dropped)")
    names = [s.name for s in src.factor_specs]
    check_factors(src.factors, names, where, "factor")
    if src.labels.shape != (n_rows, len(names)) or src.labels.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: weak labels of shape {src.labels.shape} ({src.labels.dtype}) do not "
            f"match {n_rows} rows x {len(names)} factors"
        )
    bad = first_bad_label(src.labels, src.label_meta())
    if bad is not None:
        row, j, value = bad
        raise ValueError(f"{where}: row {row}: {describe_label(src.label_meta(), j, value)}")
    rows = np.asarray(src.rows)
    if rows.ndim != 1 or rows.min() < 0 or rows.max() >= n_rows:
        raise ValueError(f"{where}: stored rows must index the {n_rows} input rows")
