"""What each ground-truth factor is worth to the reconstruction loss: ``gvae-dist data factor-effect``.

The effect of factor f is the nats a model loses when it predicts one image but f changes: the
excess negative log-likelihood of the changed image x' under the base image x as the decoder's
mean, over the best possible prediction of x' (x' itself), summed over pixels and channels and
averaged over images:

- Bernoulli: sum_p KL(Bern(x'_p) || Bern(x_p)) = sum_p x' log(x'/x) + (1 - x') log((1 - x')/(1 - x)),
  means clipped to [EPS, 1 - EPS] as a decoder's sigmoid output would be;
- Gaussian with fixed sigma: sum_p (x'_p - x_p)^2 / (2 sigma^2).

A factor worth only a few nats is one a VAE with beta >= 1 has no reason to encode: its KL cost
is larger than the reconstruction it buys.

Sources:
- synthetic (``faces``, ``shapes``): render ``num`` base images from uniform factors, resample
  only factor f (uniformly over its range, seeded), render again, average over the bases.
- ``shards`` (imported labelled data): no renderer, so matched pairs: two samples whose weak
  labels agree on every other factor and differ on f. Their images also differ in what the labels
  do not hold fixed (within-bin variation, unlabelled nuisance), so each estimate is an upper
  bound; the ``(all labels equal)`` row measures that residual on pairs that agree on every label.

Shape legend: N images, H/W pixel rows/columns, C channels, P pairs. No Ray or MLflow here.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gvae_dist.data.shards import LABELS_EXT
from gvae_dist.data.synthetic import FACTOR_SPECS, IMAGE_SIZES, render, sample_factors

__all__ = [
    "EPS",
    "LIKELIHOODS",
    "FactorEffect",
    "excess_nll",
    "format_table",
    "shards_effect",
    "synthetic_effect",
]

EPS = 1e-3  # Bernoulli means are clipped to [EPS, 1 - EPS]
LIKELIHOODS = ("bernoulli", "gaussian")
BASELINE = "(all labels equal)"
_BATCH = 256  # images scored at a time, so float64 intermediates stay small
Progress = Callable[[str], None]


@dataclass
class FactorEffect:
    """One row: the mean excess NLL in nats per image and its standard error over the
    ``count`` bases (synthetic) or matched pairs (shards); ``nats`` is None when too few pairs
    were found (``note`` says why)."""

    name: str
    nats: float | None
    sem: float | None
    count: int
    note: str = ""


def excess_nll(
    changed_NHWC: np.ndarray,
    base_NHWC: np.ndarray,
    likelihood: str = "bernoulli",
    sigma: float = 0.1,
) -> np.ndarray:
    """Nats per image [N]: NLL of the changed images under the base images as means, minus the
    NLL under their own values (see the module docstring). Inputs uint8 or float in [0, 1]."""
    x1 = _unit(changed_NHWC)
    x0 = _unit(base_NHWC)
    if x1.shape != x0.shape:
        raise ValueError(f"changed {x1.shape} and base {x0.shape} images differ in shape")
    if likelihood == "bernoulli":
        p = np.clip(x0, EPS, 1.0 - EPS)
        q = np.clip(x1, EPS, 1.0 - EPS)
        per_px = x1 * (np.log(q) - np.log(p)) + (1.0 - x1) * (np.log1p(-q) - np.log1p(-p))
    elif likelihood == "gaussian":
        _check_sigma(sigma)
        per_px = (x1 - x0) ** 2 / (2.0 * sigma * sigma)
    else:
        raise ValueError(f"likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    return per_px.reshape(len(per_px), -1).sum(axis=1)


def synthetic_effect(
    kind: str,
    image_size: int = 32,
    num: int = 256,
    seed: int = 0,
    likelihood: str = "bernoulli",
    sigma: float = 0.1,
    feature_scale: float = 1.0,
    progress: Progress | None = None,
) -> list[FactorEffect]:
    """Per factor of FACTOR_SPECS[kind]: nats lost when only that factor is resampled, over
    ``num`` base images (seeded; ``seed + 1`` draws the new values)."""
    if kind not in FACTOR_SPECS:
        raise ValueError(f"--source must be one of {[*FACTOR_SPECS, 'shards']}, got {kind!r}")
    _check_common(num, likelihood, sigma)
    specs = FACTOR_SPECS[kind]
    base_NF = sample_factors(kind, num, seed)
    other_NF = sample_factors(kind, num, seed + 1)
    base = render(kind, base_NF, image_size, feature_scale)
    out = []
    for j, spec in enumerate(specs):
        if progress:
            progress(f"{spec.name} ({j + 1}/{len(specs)}): {num} images at {image_size} px")
        nats = np.empty(num)
        for start in range(0, num, _BATCH):
            rows = slice(start, start + _BATCH)
            changed_NF = base_NF[rows].copy()
            changed_NF[:, j] = other_NF[rows, j]
            changed = render(kind, changed_NF, image_size, feature_scale)
            nats[rows] = excess_nll(changed, base[rows], likelihood, sigma)
        out.append(FactorEffect(spec.name, float(nats.mean()), _sem(nats), num))
    return out


def shards_effect(
    path: str,
    image_size: int | None = None,
    num: int = 256,
    seed: int = 0,
    likelihood: str = "bernoulli",
    sigma: float = 0.1,
    min_pairs: int = 20,
    progress: Progress | None = None,
) -> list[FactorEffect]:
    """Per weak label of the shard set at ``path``: nats between up to ``num`` matched pairs
    (labels equal on all other factors, different on this one), plus the ``(all labels equal)``
    baseline. Images are resized to ``image_size`` (default: the shards' own size). A factor
    with fewer than ``min_pairs`` pairs gets no number and a note."""
    from gvae_dist.data.shardset import open_shards

    _check_common(num, likelihood, sigma)
    if image_size is not None and image_size not in IMAGE_SIZES:
        raise ValueError(f"--image-size must be one of {IMAGE_SIZES}, got {image_size!r}")
    shards = open_shards(path, on_bad="skip")
    try:
        names = [lab["name"] for lab in shards.manifest["labels"]]
        size = image_size or int(shards.manifest["image_size"])
        if progress:
            progress(f"reading the weak labels of {shards.num_samples} samples in {path}")
        labels_NL = np.stack([np.frombuffer(shards.read(i)[LABELS_EXT], "<i8") for i in range(shards.num_samples)])
        rng = np.random.default_rng(seed)
        cache: dict[int, np.ndarray] = {}
        out = []
        for j, name in enumerate([*names, BASELINE]):
            if progress:
                progress(f"{name} ({j + 1}/{len(names) + 1}): matching pairs")
            pairs_P2 = _matched_pairs(labels_NL, j if j < len(names) else None, num, rng)
            if len(pairs_P2) < min_pairs:
                note = (
                    f"only {len(pairs_P2)} pairs agree on all other labels and differ on this "
                    f"one (need {min_pairs}): the labels do not allow an estimate"
                )
                out.append(FactorEffect(name, None, None, len(pairs_P2), note))
                continue
            nats = np.concatenate(
                [
                    excess_nll(
                        _images(shards, pairs_P2[start : start + _BATCH, 1], size, cache),
                        _images(shards, pairs_P2[start : start + _BATCH, 0], size, cache),
                        likelihood,
                        sigma,
                    )
                    for start in range(0, len(pairs_P2), _BATCH)
                ]
            )
            out.append(FactorEffect(name, float(nats.mean()), _sem(nats), len(pairs_P2)))
        return out
    finally:
        shards.close()


def format_table(
    effects: list[FactorEffect],
    image_size: int,
    count_name: str = "images",
) -> str:
    """A markdown table: factor, nats at ``image_size`` px, standard error, count; notes below."""
    lines = [f"| factor | nats at {image_size} px | s.e. | {count_name} |", "|---|---:|---:|---:|"]
    for e in effects:
        nats = "n/a" if e.nats is None else f"{e.nats:.1f}"
        sem = "" if e.sem is None else f"{e.sem:.1f}"
        lines.append(f"| {e.name} | {nats} | {sem} | {e.count} |")
    lines += [f"- {e.name}: {e.note}" for e in effects if e.note]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def _unit(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float64) / 255.0
    return images.astype(np.float64)


def _sem(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _check_sigma(sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"--sigma must be a positive number, got {sigma!r}")


def _check_common(num: int, likelihood: str, sigma: float) -> None:
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"--num must be an integer >= 2, got {num!r}")
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"--likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    if likelihood == "gaussian":
        _check_sigma(sigma)


def _matched_pairs(labels_NL: np.ndarray, col: int | None, num: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``num`` random pairs [P, 2] of sample positions whose labels agree on every column
    but ``col`` and differ on ``col`` (col None: agree on every column), in random order."""
    keep = [c for c in range(labels_NL.shape[1]) if c != col]
    _, group_N = np.unique(labels_NL[:, keep], axis=0, return_inverse=True)
    group_N = group_N.reshape(-1)
    order = np.argsort(group_N, kind="stable")
    bounds = np.flatnonzero(np.diff(group_N[order])) + 1
    pairs = []
    for members in np.split(order, bounds):
        if len(members) < 2:
            continue
        if len(members) > 64:  # a big group: a random subset keeps the pair count in check
            members = rng.choice(members, 64, replace=False)
        i, k = np.triu_indices(len(members), 1)
        if col is not None:
            differ = labels_NL[members[i], col] != labels_NL[members[k], col]
            i, k = i[differ], k[differ]
        pairs.append(np.stack([members[i], members[k]], axis=1))
    if not pairs:
        return np.empty((0, 2), np.int64)
    all_P2 = np.concatenate(pairs)
    take = rng.permutation(len(all_P2))[:num]
    chosen = all_P2[take]
    flip = rng.random(len(chosen)) < 0.5  # which one is the base: no bias from storage order
    chosen[flip] = chosen[flip, ::-1]
    return chosen


def _images(shards, positions: np.ndarray, size: int, cache: dict[int, np.ndarray]) -> np.ndarray:
    """Decoded uint8 [n, size, size, C] images of the samples at ``positions`` (memoised)."""
    from PIL import Image

    fmt = shards.manifest["image_format"]
    out = []
    for pos in positions.tolist():
        if pos not in cache:
            img = Image.open(io.BytesIO(shards.read(pos)[fmt]))
            img = img.convert("L" if int(shards.manifest["channels"]) == 1 else "RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            arr = np.asarray(img, np.uint8)
            cache[pos] = arr[..., None] if arr.ndim == 2 else arr
        out.append(cache[pos])
    return np.stack(out)
