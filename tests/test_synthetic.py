"""Tests for gvae_dist.data.synthetic: seeded generation, rendering and weak labels."""

from __future__ import annotations

import numpy as np
import pytest

from gvae_dist.data.synthetic import (
    FACTOR_SPECS,
    FactorSpec,
    generate,
    render,
    sample_factors,
    weak_labels,
)

CHANNELS = {"faces": 3, "shapes": 1}


@pytest.mark.parametrize("kind", ["faces", "shapes"])
def test_generate_is_deterministic_by_seed(kind: str) -> None:
    first = generate(kind, 12, seed=7, image_size=32)
    again = generate(kind, 12, seed=7, image_size=32)
    other = generate(kind, 12, seed=8, image_size=32)
    assert first.images.tobytes() == again.images.tobytes()
    assert first.factors.tobytes() == again.factors.tobytes()
    assert first.images.tobytes() != other.images.tobytes()
    assert not np.array_equal(first.factors, other.factors)


def test_rows_do_not_depend_on_n_or_chunking() -> None:
    # 300 images at 32x32 span two render chunks (256 per chunk).
    big = generate("faces", 300, seed=3, image_size=32)
    small = generate("faces", 5, seed=3, image_size=32)
    np.testing.assert_array_equal(big.factors[:5], small.factors)
    np.testing.assert_array_equal(big.images[:5], small.images)
    np.testing.assert_array_equal(big.images[290:], render("faces", big.factors[290:], 32))


@pytest.mark.parametrize("image_size", [32, 64, 128])
@pytest.mark.parametrize("kind", ["faces", "shapes"])
def test_shapes_dtypes_and_ranges(kind: str, image_size: int) -> None:
    n = 40
    data = generate(kind, n, seed=0, image_size=image_size)
    specs = FACTOR_SPECS[kind]
    assert data.images.shape == (n, image_size, image_size, CHANNELS[kind])
    assert data.images.dtype == np.uint8
    assert data.factors.shape == (n, len(specs))
    assert data.factors.dtype == np.float32
    assert data.factor_names == [s.name for s in specs]
    for col, spec in enumerate(specs):
        values = data.factors[:, col]
        assert values.min() >= spec.low and values.max() <= spec.high, spec.name
        if spec.discrete:
            assert set(values.tolist()) <= set(range(int(spec.low), int(spec.high) + 1))
    # Every image shows something besides the background.
    assert (data.images.reshape(n, -1).std(axis=1) > 10).all()
    if kind == "shapes":
        assert set(np.unique(data.images).tolist()) <= {0, 255}


def test_faces_factor_order_matches_brief() -> None:
    names = [s.name for s in FACTOR_SPECS["faces"]]
    assert names == [
        "yaw",
        "pitch",
        "roll",
        "mouth",
        "eyes",
        "brow",
        "face_width",
        "skin_tone",
        "light",
    ]
    assert [s.name for s in FACTOR_SPECS["shapes"]] == ["shape", "scale", "rotation", "x", "y"]


def _one_factor_pair(kind: str, col: int) -> np.ndarray:
    """Two factor rows [2, F]: mid-range values, factor col at 25% and 75% of its range."""
    specs = FACTOR_SPECS[kind]
    base_F = np.array([(s.low + s.high) / 2 for s in specs])
    if kind == "shapes":
        base_F[0] = 2  # heart: no rotational symmetry
    pair = np.tile(base_F, (2, 1))
    spec = specs[col]
    pair[:, col] = [
        spec.low + 0.25 * (spec.high - spec.low),
        spec.low + 0.75 * (spec.high - spec.low),
    ]
    if spec.discrete:
        pair[:, col] = [spec.low, spec.high]
    return pair


@pytest.mark.parametrize(
    ("kind", "col"),
    [(k, c) for k in ("faces", "shapes") for c in range(len(FACTOR_SPECS[k]))],
    ids=[f"{k}-{s.name}" for k in ("faces", "shapes") for s in FACTOR_SPECS[k]],
)
def test_each_factor_visibly_changes_the_image(kind: str, col: int) -> None:
    images = render(kind, _one_factor_pair(kind, col), image_size=64).astype(np.int16)
    changed_pixels = (np.abs(images[0] - images[1]).max(axis=-1) > 40).sum()
    assert changed_pixels >= 15, f"{FACTOR_SPECS[kind][col].name}: only {changed_pixels} pixels changed"


def test_render_rejects_bad_factors() -> None:
    good = sample_factors("faces", 2, seed=0)
    with pytest.raises(ValueError, match="factors_NF"):
        render("faces", good[:, :5], 64)
    bad = good.copy()
    bad[0, 4] = 1.5  # eyes in [0, 1]
    with pytest.raises(ValueError, match="eyes"):
        render("faces", bad, 64)
    shapes = sample_factors("shapes", 2, seed=0)
    shapes[0, 0] = 0.5
    with pytest.raises(ValueError, match="shape"):
        render("shapes", shapes, 64)


def test_generate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="kind.*faces.*shapes"):
        generate("cats", 4, seed=0)
    for n in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n must"):
            generate("faces", n, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_size"):
        generate("shapes", 4, seed=0, image_size=48)
    with pytest.raises(ValueError, match="high"):
        FactorSpec("bad", 1.0, 0.0, "inverted range")


SPECS = [
    FactorSpec("a", 0.0, 1.0, "continuous"),
    FactorSpec("s", 0.0, 2.0, "discrete", discrete=True),
]


def test_weak_labels_exact_binning() -> None:
    factors_NF = np.array([[0.0, 0], [0.24, 1], [0.25, 2], [0.99, 0], [1.0, 1], [-0.5, 2], [1.7, 0]])
    labels_NF = weak_labels(factors_NF, SPECS, bins=4)
    assert labels_NF.dtype == np.int64
    np.testing.assert_array_equal(labels_NF[:, 0], [0, 0, 1, 3, 3, 0, 3])
    np.testing.assert_array_equal(labels_NF[:, 1], [0, 1, 2, 0, 1, 2, 0])
    per_factor = weak_labels(factors_NF, SPECS, bins=[2, 7])
    np.testing.assert_array_equal(per_factor[:, 0], [0, 0, 0, 1, 1, 0, 1])
    np.testing.assert_array_equal(per_factor[:, 1], labels_NF[:, 1])


def test_weak_labels_jitter_moves_continuous_only() -> None:
    factors_NF = np.column_stack([np.linspace(0, 1, 5000), np.arange(5000) % 3])
    exact = weak_labels(factors_NF, SPECS, bins=10)
    noisy = weak_labels(factors_NF, SPECS, bins=10, jitter=0.05, seed=1)
    np.testing.assert_array_equal(noisy[:, 1], exact[:, 1])
    moved = np.abs(noisy[:, 0] - exact[:, 0])
    assert 0.2 < (moved > 0).mean() < 0.8
    assert (moved > 3).mean() < 0.01


def test_weak_labels_full_flip_is_uniform() -> None:
    n = 30_000
    factors_NF = np.zeros((n, 2))
    labels_NF = weak_labels(factors_NF, SPECS, bins=5, flip_prob=1.0, seed=2)
    for col, num_labels in ((0, 5), (1, 3)):
        counts = np.bincount(labels_NF[:, col], minlength=num_labels)
        assert len(counts) == num_labels
        np.testing.assert_allclose(counts / n, 1.0 / num_labels, atol=0.015)


@pytest.mark.parametrize("flip_prob", [0.1, 0.3, 0.8])
def test_weak_labels_observed_flip_rate(flip_prob: float) -> None:
    n = 40_000
    rng = np.random.default_rng(0)
    factors_NF = np.column_stack([rng.random(n), rng.integers(0, 3, n)])
    exact = weak_labels(factors_NF, SPECS, bins=4)
    noisy = weak_labels(factors_NF, SPECS, bins=4, flip_prob=flip_prob, seed=5)
    for col, num_labels in ((0, 4), (1, 3)):
        observed = (noisy[:, col] != exact[:, col]).mean()
        assert abs(observed - flip_prob * (1 - 1 / num_labels)) < 0.012


def test_weak_labels_seeded_and_leave_global_rng_alone() -> None:
    factors_NF = sample_factors("shapes", 500, seed=0)
    specs = FACTOR_SPECS["shapes"]
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = weak_labels(factors_NF, specs, bins=6, flip_prob=0.2, jitter=0.1, seed=4)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    again = weak_labels(factors_NF, specs, bins=6, flip_prob=0.2, jitter=0.1, seed=4)
    other = weak_labels(factors_NF, specs, bins=6, flip_prob=0.2, jitter=0.1, seed=5)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"flip_prob": -0.1}, "flip_prob"),
        ({"flip_prob": 1.5}, "flip_prob"),
        ({"jitter": -0.01}, "jitter"),
        ({"bins": 1}, "bins"),
        ({"bins": [4]}, "bins"),
        ({"bins": 2.5}, "bins"),
    ],
)
def test_weak_labels_rejects_bad_arguments(kwargs: dict, argument: str) -> None:
    call = {"bins": 4, **kwargs}
    with pytest.raises(ValueError, match=argument):
        weak_labels(np.zeros((3, 2)), SPECS, **call)


def test_weak_labels_rejects_mismatched_factors() -> None:
    with pytest.raises(ValueError, match="factors_NF"):
        weak_labels(np.zeros((3, 3)), SPECS, bins=4)
