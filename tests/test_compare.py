"""Seed-paired gated vs un-gated differences and their confidence intervals."""

import math

import pytest

from gvae_dist.compare import compare, format_comparison, paired_difference


def test_paired_difference_matches_the_t_interval_by_hand():
    gated = [0.50, 0.52, 0.47, 0.55, 0.51]
    ungated = [0.45, 0.44, 0.46, 0.47, 0.43]
    d = paired_difference(gated, ungated)
    diffs = [g - u for g, u in zip(gated, ungated, strict=True)]
    mean = sum(diffs) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)  # t_{0.975, 4}
    assert d.mean == pytest.approx(mean)
    assert (d.low, d.high) == pytest.approx((mean - half, mean + half))
    assert d.wins


def test_pairing_is_by_seed_not_by_row_order():
    # Un-gated seed effects are large; only pairing by seed reveals the constant +0.01.
    base = {0: 0.2, 1: 0.6, 2: 0.4}
    rows = [
        {"objective": "beta", "variant": "ungated", "seed": s, "label_flip_prob": 0.0, "DCI_mean": v}
        for s, v in base.items()
    ]
    rows += [
        {
            "objective": "beta",
            "variant": "gated",
            "seed": s,
            "label_flip_prob": 0.2,
            "DCI_mean": base[s] + 0.01 + 0.001 * s,
        }
        for s in reversed(base)
    ]
    (entry,) = compare(rows, metrics=("DCI_mean",))
    assert entry["seeds"] == [0, 1, 2] and entry["label_flip_prob"] == 0.2
    assert entry["DCI_mean"].mean == pytest.approx(0.011)
    assert entry["DCI_mean"].wins
    table = format_comparison([entry], metrics=("DCI_mean",))
    assert "| beta | 0.2 | 0,1,2 | +0.011 [" in table and table.rstrip().endswith("| yes |")


def test_an_interval_that_straddles_zero_is_not_a_win():
    d = paired_difference([0.5, 0.4, 0.6], [0.45, 0.45, 0.45])
    assert d.low < 0 < d.high and not d.wins
    assert not paired_difference([0.5], [0.4]).wins


def test_unequal_lists_are_refused():
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([0.1, 0.2], [0.1])
