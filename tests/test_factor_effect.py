"""Tests for gvae_dist.data.factor_effect and ``gvae-dist data factor-effect``: the loss each
factor is worth, the floor the faces must keep, and the matched-pair estimate on shards."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gvae_dist.cli import main
from gvae_dist.config import ConfigError, DataConfig, load_config
from gvae_dist.data.factor_effect import (
    BASELINE,
    EPS,
    excess_nll,
    shards_effect,
    synthetic_effect,
)
from gvae_dist.data.importers import build_dataset
from gvae_dist.data.synthetic import render, sample_factors

TARGETED = ("yaw", "pitch", "roll", "mouth", "eyes", "brow")


@pytest.mark.parametrize("image_size", [32, 64])
def test_targeted_face_factors_cost_at_least_30_nats(image_size: int) -> None:
    effects = {e.name: e for e in synthetic_effect("faces", image_size, num=64, seed=0)}
    assert list(effects)[:6] == list(TARGETED)
    for name in TARGETED:
        assert effects[name].count == 64
        assert effects[name].nats >= 30.0, f"{name}: {effects[name].nats:.1f} nats at {image_size} px"


def test_smaller_features_cost_less() -> None:
    big = {e.name: e.nats for e in synthetic_effect("faces", 32, num=32, seed=1)}
    small = {e.name: e.nats for e in synthetic_effect("faces", 32, num=32, seed=1, feature_scale=0.5)}
    for name in ("mouth", "eyes", "brow"):
        assert small[name] < 0.5 * big[name], (name, small[name], big[name])


def test_excess_nll_by_hand() -> None:
    base = np.full((2, 1, 2, 1), 0.5)
    changed = np.array([0.5, 1.0, 0.0, 0.5]).reshape(2, 1, 2, 1)
    # Bernoulli: a pixel that becomes 1 (or 0) under mean 0.5 costs log 2 (less the clip).
    per_pixel = math.log(2.0) + math.log1p(-EPS)
    np.testing.assert_allclose(excess_nll(changed, base), [per_pixel, per_pixel], rtol=1e-9)
    np.testing.assert_allclose(excess_nll(changed, base, "gaussian", 0.1), [12.5, 12.5])
    images = render("faces", sample_factors("faces", 3, seed=0), 32)
    np.testing.assert_array_equal(excess_nll(images, images), 0.0)
    with pytest.raises(ValueError, match="likelihood"):
        excess_nll(changed, base, "poisson")
    with pytest.raises(ValueError, match="sigma"):
        excess_nll(changed, base, "gaussian", 0.0)


def test_feature_scale_is_validated() -> None:
    assert load_config(None, ["data.feature_scale=0.5"]).data.feature_scale == 0.5
    with pytest.raises(ConfigError, match=r"data\.feature_scale.*0\.25, 2\.0"):
        load_config(None, ["data.feature_scale=3"])
    with pytest.raises(ConfigError, match=r"data\.feature_scale.*faces only"):
        load_config(None, ["data.source=shapes", "data.feature_scale=0.5"])
    with pytest.raises(ValueError, match="feature_scale"):
        render("faces", sample_factors("faces", 1, seed=0), 32, feature_scale=0.1)


def test_cli_prints_the_table_and_rejects_bad_input(capsys) -> None:
    assert main(["data", "factor-effect", "--source", "shapes", "--num", "16"]) == 0
    out = capsys.readouterr()
    assert "| factor | nats at 32 px |" in out.out
    rows = [line.split("|")[1].strip() for line in out.out.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["shape", "scale", "rotation", "x", "y"]
    assert "rotation (3/5)" in out.err  # progress goes to stderr
    assert main(["data", "factor-effect", "--source", "shards"]) == 2
    assert "--path" in capsys.readouterr().err
    assert main(["data", "factor-effect", "--source", "shapes", "--feature-scale", "0.5"]) == 2
    assert "faces only" in capsys.readouterr().err


def test_shards_matched_pairs(tmp_path, capsys) -> None:
    man = build_dataset(
        "shapes", tmp_path, DataConfig(image_size=32, label_bins=2), num=200, shard_size=100, progress=False
    )
    assert man["num_samples"] == 200
    effects = {e.name: e for e in shards_effect(str(tmp_path), num=40, seed=0)}
    assert list(effects) == ["shape", "scale", "rotation", "x", "y", BASELINE]
    for e in effects.values():
        assert e.count == 40 and e.nats > 0 and not e.note, e
    # Moving a sprite to the other half of the frame costs more than what the labels leave open.
    assert effects["x"].nats > effects[BASELINE].nats
    sparse = shards_effect(str(tmp_path), num=40, min_pairs=10_000)
    assert all(e.nats is None and "do not allow" in e.note for e in sparse)

    assert (
        main(
            [
                "data",
                "factor-effect",
                "--source",
                "shards",
                "--path",
                str(tmp_path),
                "--num",
                "20",
                "--likelihood",
                "gaussian",
                "--sigma",
                "0.2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Gaussian sigma 0.2" in out and f"| {BASELINE} |" in out


def test_feature_scale_reaches_the_loaders(tmp_path) -> None:
    from gvae_dist.data.loader import load_eval_arrays

    cfg = load_config(None, ["data.image_size=32", "data.num_eval=4", "data.feature_scale=0.5"])
    images, factors, _ = load_eval_arrays(cfg)
    np.testing.assert_array_equal(images, render("faces", factors, 32, feature_scale=0.5))
    assert not np.array_equal(images, render("faces", factors, 32))
    man = build_dataset("faces", tmp_path, cfg.data, num=4, shard_size=4, progress=False)
    assert man["generating_config"]["feature_scale"] == 0.5
