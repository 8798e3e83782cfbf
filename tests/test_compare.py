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


def _study(root, name, dci_by_seed, variant="gated", config=None, extra=()):
    """A study directory as `gvae-dist study` leaves it: results.csv, and each cell's result.json
    with its config where ``config`` is given."""
    import csv
    import json

    study = root / name
    rows = [
        {
            "run": f"faces_beta_{variant}__noise0__seed{seed}",
            "objective": "beta",
            "variant": variant,
            "seed": seed,
            "label_flip_prob": 0.0,
            "DCI_mean": dci,
            "I_probe": "" if "no_probe" in extra else 0.7 + dci / 10,
        }
        for seed, dci in dci_by_seed.items()
    ]
    study.mkdir()
    with (study / "results.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if config is not None:
        for r in rows:
            (study / "runs" / r["run"]).mkdir(parents=True)
            cell = {**config, "run": {**config["run"], "seed": r["seed"], "output_dir": str(study / "runs")}}
            (study / "runs" / r["run"] / "result.json").write_text(json.dumps({"config": cell}))
    return study


def test_compare_arms_pairs_two_studies_by_seed(tmp_path):
    from gvae_dist.compare import compare_arms, read_results

    # seed effects are large; A is B + 0.02 on the seeds both ran (seed 3 only in A, left out)
    a = _study(tmp_path, "a", {2: 0.62, 0: 0.32, 1: 0.52, 3: 0.9})
    b = _study(tmp_path, "b", {0: 0.30, 1: 0.50, 2: 0.60})
    (entry,) = compare_arms(read_results(a), read_results(b), metrics=("DCI_mean", "I_probe"))
    assert entry["seeds"] == [0, 1, 2]
    assert entry["pairs"][0] == ("faces_beta_gated__noise0__seed0", "faces_beta_gated__noise0__seed0")
    assert entry["DCI_mean"].mean == pytest.approx(0.02) and entry["DCI_mean"].wins
    assert entry["I_probe"].mean == pytest.approx(0.002)
    # a metric one study did not report is left out, not read as zero
    c = _study(tmp_path, "c", {0: 0.30, 1: 0.50, 2: 0.60}, extra=("no_probe",))
    (entry,) = compare_arms(read_results(a), read_results(c), metrics=("DCI_mean", "I_probe"))
    assert "I_probe" not in entry and "DCI_mean" in entry
    # the other arm is not paired
    with pytest.raises(ValueError, match="no ungated cell.*A has: none"):
        compare_arms(read_results(a), read_results(b), variant="ungated")


def test_cli_compare_names_what_the_two_studies_compute_differently(tmp_path, capsys):
    from gvae_dist.cli import main
    from gvae_dist.config import load_config

    config = load_config(None, ["gate.enabled=true"]).to_dict()
    gated_kl = {**config, "gate": {**config["gate"], "kl": True}}
    a = _study(tmp_path, "kl", {0: 0.55, 1: 0.60, 2: 0.58}, config=gated_kl)
    b = _study(tmp_path, "preset", {0: 0.53, 1: 0.57, 2: 0.55}, config=config)
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "A and B differ in: gate.kl: True in A, False in B\n" in out  # run.seed / output_dir are not
    assert "| beta | 0 | 0,1,2 | - | - | - | +0.027 [" in out  # D, C, I not in these rows; DCI_mean is
    assert "| A wins |" in out and "note: their data differ" not in out

    other_data = {**config, "data": {**config["data"], "seed": 99}}
    c = _study(tmp_path, "other", {0: 0.5, 1: 0.5, 2: 0.5}, config=other_data)
    assert main(["compare", str(b), str(c)]) == 0
    out = capsys.readouterr().out
    assert "data.seed: 0 in A, 99 in B" in out and "note: their data differ" in out

    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'missing' / 'results.csv'}: no study results there" in err
