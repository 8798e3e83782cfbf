"""Procedural datasets with known ground-truth factors: cartoon faces and dSprites-style shapes.

Sources:
- ``faces`` mirrors the head-pose / expression task of Vowels, Camgoz & Bowden, "Gated
  Variational AutoEncoders: Incorporating Weak Supervision to Encourage Disentanglement"
  (2019, arXiv:1911.06443): pose (yaw, pitch, roll), expression (mouth, eyes, brow),
  identity (face width, skin tone) and lighting, each a known continuous factor. The face fills
  most of the frame and eyes, brows and mouth are cartoon-sized, so that resampling any pose or
  expression factor costs a model at least 30 nats of Bernoulli loss at 32 and 64 px
  (``gvae-dist data factor-effect``; docs/faces.md); ``feature_scale`` shrinks them towards
  real-face proportions.
- ``shapes`` follows dSprites (Matthey et al. 2017, github.com/deepmind/dsprites-dataset):
  shape (square, ellipse, heart), scale, rotation, x, y as binary 1-channel images.
- Rendering evaluates implicit shapes on a pixel grid for a chunk of images at once; the
  ellipse distance bound and the heart construction follow Inigo Quilez, "2D distance
  functions" (iquilezles.org/articles/distfunctions2d).
- ``weak_labels`` makes the noisy binned labels that Gated-VAE pairing consumes.

Shape legend: N images, B images in one render chunk, H/W pixel rows/columns (H == W == S),
C channels, F factors. Image coordinates are x right, y down, both in [-1, 1].
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "FACTOR_SPECS",
    "FEATURE_SCALE_RANGE",
    "IMAGE_SIZES",
    "KINDS",
    "FactorSpec",
    "SyntheticSet",
    "generate",
    "render",
    "sample_factors",
    "weak_labels",
]

IMAGE_SIZES = (32, 64, 128)
KINDS = ("faces", "shapes")
FEATURE_SCALE_RANGE = (0.25, 2.0)  # faces: size of eyes, brows and mouth (1.0 cartoon)
# Pixels per render chunk: 2**18 float32 = 1 MiB per plane keeps the working set in cache.
_CHUNK_PIXELS = 2**18
_Param = float | np.ndarray  # a scalar or a per-image [B, 1, 1] array


@dataclass(frozen=True)
class FactorSpec:
    """A ground-truth factor: values lie in [low, high]; discrete ones are the integers there."""

    name: str
    low: float
    high: float
    doc: str
    discrete: bool = False

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"FactorSpec {self.name!r}: high ({self.high}) must exceed low ({self.low})")
        if self.discrete and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"FactorSpec {self.name!r}: a discrete factor needs integer low/high")


@dataclass
class SyntheticSet:
    """Images with their ground-truth factors.

    images: uint8 [N, H, W, C]; factors: float32 [N, F], column f described by factor_specs[f].
    """

    images: np.ndarray
    factors: np.ndarray
    factor_specs: list[FactorSpec]

    @property
    def factor_names(self) -> list[str]:
        """Names of the factor columns, in order."""
        return [spec.name for spec in self.factor_specs]


FACTOR_SPECS: dict[str, list[FactorSpec]] = {
    "faces": [
        FactorSpec("yaw", -1.0, 1.0, "head turn left/right; features slide and foreshorten"),
        FactorSpec("pitch", -1.0, 1.0, "head tilt; +1 chin up, features and hairline move up"),
        FactorSpec("roll", -1.0, 1.0, "in-plane head rotation, +-0.6 rad"),
        FactorSpec("mouth", -1.0, 1.0, "-1 closed frown, 0 half-open, +1 wide-open smile"),
        FactorSpec("eyes", 0.0, 1.0, "eye openness: 0 closed, 1 wide open"),
        FactorSpec("brow", -1.0, 1.0, "eyebrows: -1 low, inner ends down; +1 raised, inner ends up"),
        FactorSpec("face_width", 0.0, 1.0, "identity: head width, 0 narrow, 1 wide"),
        FactorSpec("skin_tone", 0.0, 1.0, "identity: 0 light, 1 dark skin"),
        FactorSpec("light", -1.0, 1.0, "horizontal lighting gradient: -1 lit from left, +1 right"),
    ],
    "shapes": [
        FactorSpec("shape", 0.0, 2.0, "0 square, 1 ellipse, 2 heart", discrete=True),
        FactorSpec("scale", 0.5, 1.0, "size relative to the largest shape"),
        FactorSpec("rotation", 0.0, 2.0 * math.pi, "in-plane rotation in radians"),
        FactorSpec("x", 0.0, 1.0, "horizontal position, 0 left, 1 right"),
        FactorSpec("y", 0.0, 1.0, "vertical position, 0 top, 1 bottom"),
    ],
}


def _check_kind(kind: str) -> list[FactorSpec]:
    if kind not in FACTOR_SPECS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    return FACTOR_SPECS[kind]


def _check_image_size(image_size: int) -> None:
    if image_size not in IMAGE_SIZES:
        raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size!r}")


def _check_feature_scale(kind: str, feature_scale: float) -> None:
    low, high = FEATURE_SCALE_RANGE
    if isinstance(feature_scale, bool) or not low <= feature_scale <= high:
        raise ValueError(
            f"feature_scale must be within [{low}, {high}] (1.0 cartoon, 0.5 about real-face "
            f"proportions), got {feature_scale!r}"
        )
    if kind != "faces" and feature_scale != 1.0:
        raise ValueError(f"feature_scale applies to faces only, not {kind!r}; leave it at 1.0")


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates: gx [1, 1, S] and gy [1, S, 1] in [-1, 1], float32."""
    c = ((np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0).astype(np.float32)
    return c[None, None, :], c[None, :, None]


def _ellipse_sd(x: np.ndarray, y: np.ndarray, cx: _Param, cy: _Param, ax: _Param, ay: _Param) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (negative inside).

    x, y: [B, S, S] coordinates; centre (cx, cy) and semi-axes (ax, ay) broadcast as [B, 1, 1].
    Uses the gradient-normalised bound k0 (k0 - 1) / k1 so thin ellipses keep sharp ends.
    """
    u = (x - cx) / ax
    v = (y - cy) / ay
    k0 = np.sqrt(u * u + v * v)
    u /= ax
    v /= ay
    k1 = np.sqrt(u * u + v * v) + 1e-6
    return k0 * (k0 - 1.0) / k1


def _coverage(sd: np.ndarray, inv_px: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance: a one-pixel linear ramp."""
    cov = 0.5 - sd * inv_px
    return np.clip(cov, 0.0, 1.0, out=cov)


def _blend(img_3BHW: np.ndarray, alpha_BHW: np.ndarray, color: Sequence | np.ndarray) -> None:
    """In place, plane by plane: img = img + alpha (color - img).

    img_3BHW: float32 [3, B, H, W]; alpha_BHW: [B, H, W]; color: 3 scalars or [3, B, 1, 1].
    Images are planar while rendering because a trailing channel axis of 3 makes numpy's
    inner loops 3 elements long, several times slower.
    """
    for c in range(3):
        img_3BHW[c] += alpha_BHW * (color[c] - img_3BHW[c])


def _window(
    cx: np.ndarray,
    cy: np.ndarray,
    radius: float,
    cos_r: np.ndarray,
    sin_r: np.ndarray,
    size: int,
    zoom: float = 1.0,
) -> tuple[tuple, np.ndarray, np.ndarray]:
    """A per-image K x K pixel window around a head-frame point, for drawing one small feature.

    cx, cy: head-frame centre [B, 1, 1]; radius: bound on the feature's extent around it
    (head-frame units; the image shows zoom times as many pixels per unit). Returns the selector of the
    window, for img_3BSS[selector] ->
    [3, B, K, K], and the head-frame coordinates x, y [B, K, K] of its pixels. Features cover
    a few percent of the image, so drawing them in windows rather than on the full grid is
    what makes faces fast.
    """
    k = min(size, math.ceil(radius * zoom * size) + 3)  # + 3 pixels for anti-aliasing, rounding
    half = size / 2.0
    pix, coords = [], []
    for centre in (cos_r * cx - sin_r * cy, sin_r * cx + cos_r * cy):  # image-frame x, y
        start = np.floor((zoom * centre[:, 0, 0] + 1.0) * half - k / 2.0)
        p = np.clip(start, 0, size - k).astype(np.int64)[:, None] + np.arange(k)  # [B, K]
        pix.append(p)
        coords.append(((p + 0.5) / half - 1.0).astype(np.float32) / np.float32(zoom))
    (cols, rows), (wx, wy) = pix, coords
    selector = (
        slice(None),
        np.arange(len(cols))[:, None, None],
        rows[:, :, None],
        cols[:, None, :],
    )
    wx, wy = wx[:, None, :], wy[:, :, None]
    return selector, cos_r * wx + sin_r * wy, cos_r * wy - sin_r * wx


_BACKGROUND = (0.55, 0.62, 0.72)
_SKIN_LIGHT = np.array([0.98, 0.84, 0.72], np.float32)
_SKIN_DARK = np.array([0.42, 0.27, 0.17], np.float32)
_HAIR = (0.16, 0.10, 0.07)
_DARK = (0.04, 0.03, 0.05)
_WHITE = (0.97, 0.97, 0.97)
_LIPS = (0.62, 0.08, 0.12)
_MOUTH_INSIDE = (0.12, 0.01, 0.03)
_YAW_MAX, _PITCH_MAX, _ROLL_MAX = 0.7, 0.45, 0.6  # radians at factor value +-1
# The head is drawn 1.15x larger than the unit frame, so it fills most of the image (corners
# may clip under roll): the features then cover enough pixels to matter to the loss.
_ZOOM = 1.2


def _render_faces_chunk(factors_BF: np.ndarray, size: int, feature_scale: float = 1.0) -> np.ndarray:
    """Render faces: factors_BF [B, 9] (FACTOR_SPECS["faces"] order) -> uint8 [B, S, S, 3].

    The head is an ellipse; features sit on an ellipsoid at fixed angles (theta across,
    phi down), so yaw/pitch move them by a * sin(theta + yaw) and shrink them by
    cos(theta + yaw), the orthographic projection of a turned head. Roll rotates the frame.
    Eyes, brows and mouth are cartoon-sized (each of them moves tens of pixels over its range,
    tens of nats of reconstruction loss at 32 px); feature_scale multiplies their size (0.5:
    about real-face proportions).
    """
    f = factors_BF.astype(np.float32)[:, :, None, None]  # [B, F, 1, 1]
    yaw, pitch, roll, mouth, eyes, brow, width, tone, light = (f[:, i] for i in range(9))
    s = np.float32(feature_scale)
    gx, gy = _grid(size)
    gx, gy = gx / _ZOOM, gy / _ZOOM  # head-frame units; the frame spans +-1 / _ZOOM of them
    inv_px = size / 2.0 * _ZOOM
    psi, chi, rho = yaw * _YAW_MAX, -pitch * _PITCH_MAX, roll * _ROLL_MAX
    cos_r, sin_r = np.cos(rho), np.sin(rho)
    a, b = 0.50 + 0.16 * width, np.float32(0.74)
    skin = _SKIN_LIGHT[:, None, None, None] + tone * (_SKIN_DARK - _SKIN_LIGHT)[:, None, None, None]

    # Head and hair on the full grid. Hair covers the head above the hairline and, down to ear
    # level, beyond the face's sides at theta = +-1.3; yaw exposes the back of the head there.
    x, y = cos_r * gx + sin_r * gy, cos_r * gy - sin_r * gx  # head frame [B, S, S]
    head = _coverage(_ellipse_sd(x, y, 0.0, 0.0, a, b), inv_px)
    sides = np.minimum(x - a * np.sin(-1.3 + psi), a * np.sin(1.3 + psi) - x)
    sides = np.maximum(sides, y - b * np.sin(0.05 + chi))
    hair = _coverage(np.minimum(sides, y - b * np.sin(-0.95 + chi)), inv_px)
    img = np.empty((3, *head.shape), np.float32)
    for c in range(3):
        face = skin[c] + hair * (_HAIR[c] - skin[c])
        img[c] = _BACKGROUND[c] + head * (face - _BACKGROUND[c])

    # Nose tip protrudes beyond the face surface, so it slides further than the eyes under yaw.
    nose_x, nose_y = (a + 0.10) * np.sin(psi), b * np.sin(0.20 + chi)
    sel, x, y = _window(nose_x, nose_y, 0.08, cos_r, sin_r, size, _ZOOM)
    win = img[sel]
    _blend(win, _coverage(_ellipse_sd(x, y, nose_x, nose_y, 0.05, 0.075), inv_px), skin * 0.72)
    img[sel] = win

    # Eyes: a white of height 0 (closed: only the dark lid line) to wide open, a big dark iris
    # that the lids clip. Brows: thick bars that rise with brow and tilt (inner ends up when
    # raised, down when lowered), drawn over the eye.
    fy = np.cos(-0.05 + chi)
    eye_y = b * np.sin(-0.05 + chi)
    ey = (0.002 + 0.18 * eyes) * s * fy
    lid = (0.02 + 0.03 * eyes) * s
    fade = np.minimum(ey * inv_px, 1.0)  # an opening under a pixel fades in, no white line
    brow_y = eye_y - (0.32 + 0.15 * brow) * s * fy
    for theta in (-0.46, 0.46):
        eye_x, fx = a * np.sin(theta + psi), np.cos(theta + psi)
        ex = 0.19 * s * fx
        sel, x, y = _window(eye_x, eye_y, 0.24 * s, cos_r, sin_r, size, _ZOOM)
        win = img[sel]
        sd = _ellipse_sd(x, y, eye_x, eye_y, ex, ey)
        # The lids: a dark rim around the white. The distance bound is loose beside a nearly
        # closed (very thin) ellipse, so the rim is also cut at the eye's corners.
        rim = np.maximum(sd - lid, np.abs(x - eye_x) - (ex + lid))
        _blend(win, _coverage(rim, inv_px), _DARK)
        white = _coverage(sd, inv_px)
        white *= fade
        _blend(win, white, _WHITE)
        iris_x = eye_x + 0.05 * s * np.sin(psi)
        iris = _coverage(_ellipse_sd(x, y, iris_x, eye_y, 0.14 * s * fx, 0.14 * s), inv_px)
        _blend(win, iris * white, _DARK)
        img[sel] = win
        sel, x, y = _window(eye_x, brow_y, 0.27 * s, cos_r, sin_r, size, _ZOOM)
        win = img[sel]
        dx = x - eye_x
        inward = -1.0 if theta > 0 else 1.0
        bar = y - (brow_y - 0.5 * brow * inward * dx)
        sd = np.maximum(np.abs(bar) - 0.06 * s * fy, np.abs(dx) - 0.2 * s * fx)
        _blend(win, _coverage(sd, inv_px), _HAIR)
        img[sel] = win

    # Mouth: thick lips along a parabola that bends from frown (-1) to smile (+1) and opens
    # linearly over the whole range (closed at -1, wide at +1): dark inside, teeth at the top.
    mouth_x, mouth_y = a * np.sin(psi), b * np.sin(0.55 + chi)
    half_w = (0.30 + 0.04 * mouth) * s * np.cos(psi)
    sel, x, y = _window(mouth_x, mouth_y, 0.40 * s, cos_r, sin_r, size, _ZOOM)
    win = img[sel]
    dx = x - mouth_x
    curve = mouth_y - (1.8 / s) * mouth * (dx * dx - half_w * half_w / 3.0)
    half_open = 0.10 * s * (mouth + 1.0) * np.maximum(1.0 - (dx / half_w) ** 2, 0.0)  # lens
    dist = np.abs(y - curve)
    side = np.abs(dx) - half_w
    _blend(win, _coverage(np.maximum(dist - half_open - 0.045 * s, side), inv_px), _LIPS)
    inside = _coverage(np.maximum(dist - half_open, side), inv_px)
    _blend(win, inside, _MOUTH_INSIDE)
    teeth = _coverage(y - (curve - 0.1 * half_open), inv_px)
    _blend(win, inside * teeth, _WHITE)
    img[sel] = win

    # Lighting is a horizontal gradient in the image frame, so it does not turn with roll.
    img *= 255.0 * (1.0 + head * (0.45 * light / a) * gx)
    img += 0.5
    np.clip(img, 0.0, 255.0, out=img)
    return np.moveaxis(img, 0, -1).astype(np.uint8)


def _render_shapes_chunk(factors_BF: np.ndarray, size: int) -> np.ndarray:
    """Render binary sprites: factors_BF [B, 5] (shape, scale, rotation, x, y) -> uint8 [B, S, S, 1]."""
    f = factors_BF.astype(np.float32)[:, :, None, None]
    gx, gy = _grid(size)
    cx, cy = (2.0 * f[:, 3] - 1.0) * 0.62, (2.0 * f[:, 4] - 1.0) * 0.62
    cos_r, sin_r = np.cos(f[:, 2]), np.sin(f[:, 2])
    radius = 0.34 * f[:, 1]
    u = (cos_r * (gx - cx) + sin_r * (gy - cy)) / radius  # shape frame, unit half-extent
    v = (cos_r * (gy - cy) - sin_r * (gx - cx)) / radius
    shape = np.rint(factors_BF[:, 0]).astype(np.int64)
    inside = np.empty(u.shape, bool)
    sq, el, he = shape == 0, shape == 1, shape == 2
    inside[sq] = np.maximum(np.abs(u[sq]), np.abs(v[sq])) <= 0.8
    inside[el] = u[el] ** 2 + (v[el] / 0.5) ** 2 <= 1.0
    # Heart: a 45-degree square (tip at the origin) plus two discs, y up, spanning [0, 1.1].
    hx, hy = np.abs(u[he]) * 0.6, 0.55 - v[he] * 0.6
    inside[he] = ((hy >= hx) & (hy + hx <= 1.0)) | ((hx - 0.25) ** 2 + (hy - 0.75) ** 2 <= 0.125)
    return (inside * np.uint8(255))[..., None]


_RENDERERS = {"faces": _render_faces_chunk, "shapes": _render_shapes_chunk}
_CHANNELS = {"faces": 3, "shapes": 1}


def render(kind: str, factors_NF: np.ndarray, image_size: int = 64, feature_scale: float = 1.0) -> np.ndarray:
    """Render images for given factor values; no randomness.

    factors_NF: [N, F] in the order of FACTOR_SPECS[kind], each within its [low, high]
    (discrete factors integer-valued). Returns uint8 [N, S, S, C], C = 3 faces, 1 shapes.
    feature_scale (faces only) multiplies the size of eyes, brows and mouth, within
    FEATURE_SCALE_RANGE. Works in chunks so float intermediates stay small whatever N is.
    """
    specs = _check_kind(kind)
    _check_image_size(image_size)
    _check_feature_scale(kind, feature_scale)
    factors_NF = np.asarray(factors_NF, dtype=np.float64)
    if factors_NF.ndim != 2 or factors_NF.shape[1] != len(specs):
        raise ValueError(f"factors_NF must have shape [N, {len(specs)}] for {kind!r}, got {factors_NF.shape}")
    for col, spec in enumerate(specs):
        values = factors_NF[:, col]
        if (
            not np.all(np.isfinite(values))
            or values.min(initial=spec.low) < spec.low
            or values.max(initial=spec.high) > spec.high
        ):
            raise ValueError(f"factor {spec.name!r} must be finite and within [{spec.low}, {spec.high}]")
        if spec.discrete and not np.all(values == np.rint(values)):
            raise ValueError(f"factor {spec.name!r} is discrete and needs integer values")
    n = factors_NF.shape[0]
    out = np.empty((n, image_size, image_size, _CHANNELS[kind]), np.uint8)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
    extra = {"feature_scale": float(feature_scale)} if kind == "faces" else {}
    for start in range(0, n, chunk):
        out[start : start + chunk] = _RENDERERS[kind](factors_NF[start : start + chunk], image_size, **extra)
    return out


def sample_factors(kind: str, n: int, seed: int) -> np.ndarray:
    """Uniform factor values float32 [N, F]; row i depends only on (seed, i), not on n."""
    specs = _check_kind(kind)
    unit_NF = np.random.default_rng(seed).random((n, len(specs)))
    low = np.array([s.low for s in specs])
    high = np.array([s.high for s in specs])
    discrete = np.array([s.discrete for s in specs])
    values_NF = np.where(discrete, np.floor(low + unit_NF * (high - low + 1.0)), low + unit_NF * (high - low))
    return np.clip(values_NF, low, high).astype(np.float32)


def generate(kind: str, n: int, seed: int, image_size: int = 64, feature_scale: float = 1.0) -> SyntheticSet:
    """Sample n factor vectors uniformly (seeded) and render them; see render for shapes."""
    specs = _check_kind(kind)
    _check_image_size(image_size)
    _check_feature_scale(kind, feature_scale)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    factors_NF = sample_factors(kind, int(n), seed)
    images = render(kind, factors_NF, image_size, feature_scale)
    return SyntheticSet(images, factors_NF, list(specs))


def _check_bins(bins: int | list[int], num_factors: int) -> np.ndarray:
    per_factor = list(bins) if isinstance(bins, (list, tuple, np.ndarray)) else [bins] * num_factors
    if len(per_factor) != num_factors:
        raise ValueError(f"bins must be an int or a list of {num_factors} ints, got {len(per_factor)}")
    for b in per_factor:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 2:
            raise ValueError(f"bins must be integers >= 2 (also for discrete factors), got {b!r}")
    return np.array(per_factor, np.int64)


def weak_labels(
    factors_NF: np.ndarray,
    specs: list[FactorSpec],
    bins: int | list[int],
    flip_prob: float = 0.0,
    jitter: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Noisy binned labels int64 [N, F] from true factors float [N, F].

    Continuous factor f: value + N(0, (jitter * (high - low))^2), binned uniformly into
    bins[f] bins over [low, high] (outside values clip to the edge bins). Discrete factor:
    its own integer value (no jitter, bins ignored). Then each label is, with probability
    flip_prob, replaced by a uniform draw over the factor's labels (possibly the same one),
    so the observed change rate is flip_prob * (1 - 1 / num_labels). Uses its own RNG.
    """
    factors_NF = np.asarray(factors_NF, dtype=np.float64)
    if factors_NF.ndim != 2 or factors_NF.shape[1] != len(specs):
        raise ValueError(f"factors_NF must have shape [N, {len(specs)}] matching specs, got {factors_NF.shape}")
    if not np.all(np.isfinite(factors_NF)):
        raise ValueError("factors_NF must be finite")
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob!r}")
    if not jitter >= 0.0:
        raise ValueError(f"jitter must be >= 0, got {jitter!r}")
    bins_F = _check_bins(bins, len(specs))
    low_F = np.array([s.low for s in specs])
    high_F = np.array([s.high for s in specs])
    discrete_F = np.array([s.discrete for s in specs])
    rng = np.random.default_rng(seed)

    noisy_NF = factors_NF + rng.standard_normal(factors_NF.shape) * (jitter * (high_F - low_F))
    binned_NF = np.clip(np.floor((noisy_NF - low_F) / (high_F - low_F) * bins_F), 0, bins_F - 1)
    labels_NF = np.where(discrete_F, np.rint(factors_NF), binned_NF).astype(np.int64)

    label_low_F = np.where(discrete_F, low_F, 0).astype(np.int64)
    num_labels_F = np.where(discrete_F, high_F - low_F + 1, bins_F).astype(np.int64)
    flip_NF = rng.random(labels_NF.shape) < flip_prob
    random_NF = label_low_F + np.floor(rng.random(labels_NF.shape) * num_labels_F).astype(np.int64)
    return np.where(flip_NF, random_NF, labels_NF)


def _benchmark(n: int = 4096, image_size: int = 64) -> None:
    """Print render throughput (images/s) per kind; run with OMP_NUM_THREADS=1 for one core."""
    for kind in KINDS:
        generate(kind, 64, seed=0, image_size=image_size)  # warm-up
        start = time.perf_counter()
        generate(kind, n, seed=1, image_size=image_size)
        rate = n / (time.perf_counter() - start)
        print(f"{kind:6s} {image_size}x{image_size}: {rate:8.0f} images/s")


if __name__ == "__main__":
    _benchmark()
