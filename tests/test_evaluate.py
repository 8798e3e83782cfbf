"""DCI, per-partition DCI, MIG and SAP: golden values, hand-computed cases, end to end."""

import json
import math

import numpy as np
import pytest

from gvae_dist.evaluate import (
    completeness,
    completeness_per_factor,
    dci,
    dci_over,
    discretize,
    disentanglement,
    disentanglement_per_code,
    evaluate_codes,
    importance_matrix,
    mig,
    partition_importance,
    partition_purity,
    probe_informativeness,
    purity_by_partition,
    sap,
)

LN2_OVER_LN10 = math.log(2) / math.log(10)
DISCRETE = [True, True, False, False]


def _factors(n, rng):
    """[n, 4]: two discrete factors (3 and 4 classes), two continuous ones."""
    return np.column_stack(
        [rng.integers(0, 3, n), rng.integers(0, 4, n), rng.uniform(size=n), rng.uniform(size=n)]
    ).astype(float)


def _signal_codes(factors_NF, rng, perm, noise=0.05):
    """Codes: a permuted, scaled, noisy copy of the factors plus two pure-noise dims."""
    scaled_NF = factors_NF / factors_NF.std(axis=0)
    x_NC = np.column_stack([scaled_NF, rng.normal(size=(len(factors_NF), 2))])
    return x_NC[:, perm] + noise * rng.normal(size=x_NC.shape)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    perm = rng.permutation(6)
    ftr, fte = _factors(600, rng), _factors(300, rng)
    return {
        "perm": perm,
        "ftr": ftr,
        "fte": fte,
        "xtr": _signal_codes(ftr, rng, perm),
        "xte": _signal_codes(fte, rng, perm),
        "ntr": rng.normal(size=(600, 6)),
        "nte": rng.normal(size=(300, 6)),
    }


# ---------------------------------------------------------------------------------------------
# D and C on given importance matrices


def test_diagonal_importance_is_perfect():
    imp = np.diag([0.5, 1.0, 2.0, 3.0])
    assert disentanglement(imp) == pytest.approx(1.0)
    assert completeness(imp) == pytest.approx(1.0)


def test_all_zero_importance_is_zero_not_nan():
    imp = np.zeros((4, 3))
    assert disentanglement(imp) == 0.0
    assert completeness(imp) == 0.0


def test_every_code_duplicated():
    # 10 codes, 5 factors: factor j split equally over codes 2j and 2j+1
    imp = np.repeat(np.eye(5), 2, axis=0) * 0.5
    assert disentanglement(imp) == pytest.approx(1.0)
    assert completeness(imp) == pytest.approx(1.0 - LN2_OVER_LN10)


def test_every_factor_duplicated():
    # 5 codes, 10 factors: code i serves factors 2i and 2i+1 equally
    imp = np.repeat(np.eye(5), 2, axis=1)
    assert disentanglement(imp) == pytest.approx(1.0 - LN2_OVER_LN10)
    assert completeness(imp) == pytest.approx(1.0)


def test_hand_computed_mixed_matrix():
    # code 0 serves only factor 0 (D=1), code 1 serves both equally (D=0);
    # weights are 1/3 and 2/3. Factor 0 spread equally over 2 codes (C=0), factor 1 in one (C=1).
    imp = np.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(disentanglement_per_code(imp), [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(completeness_per_factor(imp), [0.0, 1.0], atol=1e-12)
    assert disentanglement(imp) == pytest.approx(1.0 / 3.0)
    assert completeness(imp) == pytest.approx(0.5)


def test_zero_row_and_column_do_not_make_nan():
    # code 2 unused, factor 2 captured by no code
    imp = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert disentanglement(imp) == pytest.approx(1.0)  # unused code has no weight
    assert completeness(imp) == pytest.approx(2.0 / 3.0)  # uncaptured factor scores 0
    assert np.isfinite(disentanglement_per_code(imp)).all()


def test_importance_must_be_non_negative_2d():
    with pytest.raises(ValueError, match="non-negative"):
        disentanglement(np.array([[1.0, -0.1]]))
    with pytest.raises(ValueError, match="2-D"):
        completeness(np.ones(3))


# ---------------------------------------------------------------------------------------------
# importance matrix and DCI end to end


def test_dci_signal_codes_recover_permutation(data):
    out = dci(data["xtr"], data["ftr"], data["xte"], data["fte"], DISCRETE, n_jobs=1)
    imp = np.asarray(out["importance"])
    assert imp.shape == (6, 4) and (imp >= 0).all()
    np.testing.assert_allclose(imp.sum(axis=0), 1.0)
    # factor j was placed at code position where perm == j
    np.testing.assert_array_equal(imp.argmax(axis=0), [int(np.flatnonzero(data["perm"] == j)[0]) for j in range(4)])
    assert out["disentanglement"] > 0.8
    assert out["completeness"] > 0.8
    assert out["informativeness"] > 0.9
    assert out["informativeness_error"] == pytest.approx(1 - out["informativeness"])
    assert out["method"] == "gbt" and out["seconds"] > 0
    pf = out["per_factor"]
    assert [p["discrete"] for p in pf] == DISCRETE
    assert "informativeness_accuracy" in pf[0] and "informativeness_r2" not in pf[0]
    assert "informativeness_r2" in pf[2] and "informativeness_nrmse" in pf[2]
    # each factor names its measure: accuracy (discrete) or 1 - NRMSE (continuous)
    assert [p["informativeness_measure"] for p in pf] == ["accuracy"] * 2 + ["1-nrmse"] * 2
    assert pf[0]["informativeness"] == pf[0]["informativeness_accuracy"]
    assert pf[2]["informativeness"] == pytest.approx(1 - pf[2]["informativeness_nrmse"])
    # NRMSE is RMSE / std on the same split, so NRMSE^2 == 1 - R^2
    for p in pf[2:]:
        assert p["informativeness_nrmse"] ** 2 == pytest.approx(1 - p["informativeness_r2"])
        assert p["informativeness_nrmse_train"] ** 2 == pytest.approx(1 - p["informativeness_r2_train"])
    assert out["informativeness"] == pytest.approx(np.mean([p["informativeness"] for p in pf]))


def test_dci_noise_codes_score_low(data):
    out = dci(data["ntr"], data["ftr"], data["nte"], data["fte"], DISCRETE, n_jobs=1)
    # chance accuracy is 1/3 and 1/4; noise has test NRMSE >= 1, so 1 - NRMSE clips to 0
    assert out["informativeness"] < 0.25
    for p in out["per_factor"][2:]:
        assert p["informativeness_nrmse"] >= 1.0 and p["informativeness"] == 0.0
    assert out["disentanglement"] < 0.3
    # trees still fit the training noise: train score is far above test
    assert out["informativeness_train"] > out["informativeness"] + 0.2


@pytest.mark.parametrize("method", ["lasso", "forest"])
def test_other_methods_find_the_same_structure(data, method):
    imp, info = importance_matrix(data["xtr"], data["ftr"], data["xte"], data["fte"], DISCRETE, method=method, n_jobs=1)
    expected = [int(np.flatnonzero(data["perm"] == j)[0]) for j in range(4)]
    np.testing.assert_array_equal(imp.argmax(axis=0), expected)
    assert disentanglement(imp) > 0.7
    assert len(info) == 4


def test_parallel_matches_serial(data):
    a, info_a = importance_matrix(data["xtr"], data["ftr"], data["xte"], data["fte"], DISCRETE, n_jobs=1)
    b, info_b = importance_matrix(data["xtr"], data["ftr"], data["xte"], data["fte"], DISCRETE, n_jobs=2)
    np.testing.assert_array_equal(a, b)
    assert info_a == info_b


def test_input_validation(data):
    xtr, ftr, xte, fte = data["xtr"], data["ftr"], data["xte"], data["fte"]
    with pytest.raises(ValueError, match="method must be one of"):
        dci(xtr, ftr, xte, fte, DISCRETE, method="xgboost")
    with pytest.raises(ValueError, match="codes_train has 599 samples but factors_train has 600"):
        dci(xtr[:-1], ftr, xte, fte, DISCRETE)
    bad = xtr.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"codes_train has NaN or inf in 1 rows \(first: \[3\]\)"):
        dci(bad, ftr, xte, fte, DISCRETE)
    with pytest.raises(ValueError, match="codes_test has 5 samples; at least 10"):
        dci(xtr, ftr, xte[:5], fte[:5], DISCRETE)
    with pytest.raises(ValueError, match="codes_train has 6 dims but codes_test has 5"):
        dci(xtr, ftr, xte[:, :5], fte, DISCRETE)
    with pytest.raises(ValueError, match="discrete has 3 entries"):
        dci(xtr, ftr, xte, fte, DISCRETE[:3])
    with pytest.raises(ValueError, match="2-D"):
        dci(xtr[:, 0], ftr, xte, fte, DISCRETE)
    const = ftr.copy()
    const[:, 1] = 2.0
    with pytest.raises(ValueError, match=r"factors_train columns \[1\] are constant"):
        dci(xtr, const, xte, fte, DISCRETE)


# ---------------------------------------------------------------------------------------------
# per-partition view


PARTS = [("pose", 2), ("expr", 1), ("rest", 2)]
# 5 codes x 3 factors (yaw, smile, light)
IMP = np.array(
    [
        [0.4, 0.0, 0.1],
        [0.4, 0.1, 0.0],
        [0.1, 0.6, 0.0],
        [0.1, 0.2, 0.5],
        [0.0, 0.1, 0.4],
    ]
)


def test_partition_importance_sums_contiguous_rows():
    expected = np.array([[0.8, 0.1, 0.1], [0.1, 0.6, 0.0], [0.1, 0.3, 0.9]])
    np.testing.assert_allclose(partition_importance(IMP, PARTS), expected)


def test_partition_level_dc_of_block_diagonal_is_perfect():
    imp = np.array([[1, 0], [2, 0], [0, 1], [0, 3]], dtype=float)
    imp_pf = partition_importance(imp, [("a", 2), ("b", 2)])
    np.testing.assert_allclose(imp_pf, [[3, 0], [0, 4]])
    assert disentanglement(imp_pf) == pytest.approx(1.0)
    assert completeness(imp_pf) == pytest.approx(1.0)
    # at code level factor a is split 1:2 over two codes (log base 4), so C < 1
    assert completeness(imp) < 1.0


def test_partition_purity_hand_computed():
    out = partition_purity(IMP, PARTS, {"pose": ["yaw"], "expr": ["smile"], "rest": []}, ["yaw", "smile", "light"])
    assert out == pytest.approx({"yaw": 0.8, "smile": 0.6, "mean": 0.7})


def test_purity_by_partition_hand_computed():
    # partition rows: pose [0.8, 0.1, 0.1], expr [0.1, 0.6, 0.0]; 'rest' intends nothing
    out = purity_by_partition(IMP, PARTS, {"pose": ["yaw"], "expr": ["smile"], "rest": []}, ["yaw", "smile", "light"])
    assert out == pytest.approx({"pose": 0.8, "expr": 0.6 / 0.7, "mean": (0.8 + 0.6 / 0.7) / 2})
    # a partition whose codes matter for nothing is not pure
    zero = IMP.copy()
    zero[2] = 0.0
    assert purity_by_partition(zero, PARTS, {"expr": ["smile"]}, ["yaw", "smile", "light"]) == {
        "expr": 0.0,
        "mean": 0.0,
    }


def test_dci_over_targeted_factors_ignores_codes_of_other_factors():
    # codes 0 and 1 hold the targeted factors a and b; code 2 holds the nuisance factor n
    imp = np.array([[1.0, 0.0, 0.2], [0.0, 1.0, 0.2], [0.0, 0.0, 0.6]])
    targeted = dci_over(imp, [0.9, 0.7, 0.1], [0, 1])
    assert targeted == pytest.approx(
        {
            "disentanglement": 1.0,
            "completeness": 1.0,
            "informativeness": 0.8,
            "informativeness_error": 0.2,
            "dci_mean": 2.8 / 3,
        }
    )
    every = dci_over(imp, [0.9, 0.7, 0.1])
    assert every["disentanglement"] < 0.9 and every["completeness"] < 0.9
    assert every["informativeness"] == pytest.approx(1.7 / 3)
    with pytest.raises(ValueError, match="columns"):
        dci_over(imp, [0.9, 0.7, 0.1], [])


def test_partition_validation():
    with pytest.raises(ValueError, match="add up to 4 but there are 5 code dims"):
        partition_importance(IMP, [("pose", 2), ("rest", 2)])
    with pytest.raises(ValueError, match="positive integers"):
        partition_importance(IMP, [("pose", 5), ("rest", 0)])
    names = ["yaw", "smile", "light"]
    with pytest.raises(ValueError, match="intended names partition 'face'"):
        partition_purity(IMP, PARTS, {"face": ["yaw"]}, names)
    with pytest.raises(ValueError, match="names factor 'roll'"):
        partition_purity(IMP, PARTS, {"pose": ["roll"]}, names)
    with pytest.raises(ValueError, match="intended for both"):
        partition_purity(IMP, PARTS, {"pose": ["yaw"], "expr": ["yaw"]}, names)
    with pytest.raises(ValueError, match="names no factor"):
        partition_purity(IMP, PARTS, {"rest": []}, names)
    with pytest.raises(ValueError, match="factor_names must be 3 distinct"):
        partition_purity(IMP, PARTS, {"pose": ["yaw"]}, ["yaw", "smile"])


# ---------------------------------------------------------------------------------------------
# MIG and SAP


def test_discretize_equal_width_bins():
    x = np.array([[0.0], [0.24], [0.26], [0.5], [0.74], [1.0]])
    np.testing.assert_array_equal(discretize(x, num_bins=4)[:, 0], [1, 1, 2, 3, 3, 4])


def test_mig_hand_computed():
    # y = [0,0,1,1]; code 0 equals y (MI = H = ln 2); code 1 = [0,0,0,1]:
    # MI = ln2 - 3/4 h(1/3) with h the binary entropy, so MIG = 3/4 h(1/3) / ln 2.
    y = np.tile([0, 0, 1, 1], 3).astype(float)
    codes = np.column_stack([y, np.tile([0, 0, 0, 1], 3)]).astype(float)
    h = -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    out = mig(codes, y[:, None], [True], num_bins=2)
    assert out["mig"] == pytest.approx(0.75 * h / math.log(2))
    assert out["factor_entropy"] == pytest.approx([math.log(2)])
    np.testing.assert_allclose(np.asarray(out["mutual_info"])[:, 0], [math.log(2), math.log(2) - 0.75 * h])


def test_mig_codes_equal_factors_duplicated_and_random():
    rng = np.random.default_rng(1)
    f = np.column_stack([rng.integers(0, 5, 3000), rng.integers(0, 4, 3000), rng.uniform(size=3000)]).astype(float)
    disc = [True, True, False]
    equal = mig(f, f, disc)
    assert equal["mig"] > 0.95
    assert min(equal["mig_per_factor"]) > 0.9
    dup = mig(np.repeat(f, 2, axis=1), f, disc)
    assert dup["mig"] < 0.02
    rand = mig(rng.normal(size=(3000, 3)), f, disc)
    assert rand["mig"] < 0.05


def test_sap_codes_equal_factors_duplicated_and_random(data):
    ftr, fte = data["ftr"], data["fte"]
    equal = sap(ftr, ftr, fte, fte, DISCRETE)
    # continuous factors: R^2 of 1 vs ~0 for independent codes
    assert min(equal["sap_per_factor"][2:]) > 0.9
    assert equal["sap"] > 0.5
    dup = sap(np.repeat(ftr, 2, axis=1), ftr, np.repeat(fte, 2, axis=1), fte, DISCRETE)
    assert dup["sap"] == pytest.approx(0.0, abs=1e-9)
    rand = sap(data["ntr"], ftr, data["nte"], fte, DISCRETE)
    assert rand["sap"] < 0.1
    assert np.asarray(equal["score_matrix"]).shape == (4, 4)


def test_mig_sap_need_two_codes(data):
    with pytest.raises(ValueError, match="at least 2 code dims"):
        mig(data["xtr"][:, :1], data["ftr"], DISCRETE)
    with pytest.raises(ValueError, match="at least 2 code dims"):
        sap(data["xtr"][:, :1], data["ftr"], data["xte"][:, :1], data["fte"], DISCRETE)


# ---------------------------------------------------------------------------------------------
# everything at once


def test_evaluate_codes_is_json_serialisable(data):
    names = ["shape", "size", "x", "y"]
    # partitions over the 6 code dims in perm order
    out = evaluate_codes(
        data["xtr"],
        data["ftr"],
        data["xte"],
        data["fte"],
        names,
        DISCRETE,
        partitions=[("a", 3), ("b", 3)],
        intended={"a": ["shape"], "b": ["x"]},
        n_jobs=1,
    )
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert set(back) == {
        "factor_names",
        "discrete",
        "n_train",
        "n_test",
        "n_codes",
        "dci",
        "targeted",
        "mig",
        "sap",
        "partitions",
        "probe",
    }
    assert back["probe"] is None  # the flexible probe only when asked (the runner asks: eval.flexible_probe)
    assert back["dci"]["per_factor"][0]["name"] == "shape"
    # the headline DCI is over the factors the partitions name; dci is over all of them
    assert back["targeted"]["factors"] == ["shape", "x"]
    per_factor = back["dci"]["per_factor"]
    assert back["targeted"]["informativeness"] == pytest.approx(
        (per_factor[0]["informativeness"] + per_factor[2]["informativeness"]) / 2
    )
    assert set(back["partitions"]["purity_by_partition"]) == {"a", "b", "mean"}
    part = back["partitions"]
    assert part["names"] == ["a", "b"] and np.asarray(part["importance"]).shape == (2, 4)
    pos = {j: int(np.flatnonzero(data["perm"] == j)[0]) for j in range(4)}
    # purity of 'shape' in 'a' is ~1 if its code landed in the first 3 dims, ~0 otherwise
    assert part["purity"]["shape"] == pytest.approx(float(pos[0] < 3), abs=0.1)
    assert part["purity"]["x"] == pytest.approx(float(pos[2] >= 3), abs=0.1)
    assert out["dci"]["disentanglement"] > 0.8


def _rotated(factors_NF, rotation_CC, rng, noise=0.02):
    """Codes that hold every factor along oblique directions: the standardised factors and two
    noise dims, mixed by one rotation (no code dim is any single factor)."""
    scaled_NF = (factors_NF - factors_NF.mean(0)) / factors_NF.std(0)
    x_NC = np.column_stack([scaled_NF, rng.normal(size=(len(factors_NF), 2))])
    return x_NC @ rotation_CC + noise * rng.normal(size=x_NC.shape)


def test_flexible_probe_reads_what_an_entangled_code_holds_and_nothing_from_noise():
    rng = np.random.default_rng(3)
    rotation_CC, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    ftr, fte = _factors(1500, rng), _factors(500, rng)
    xtr, xte = _rotated(ftr, rotation_CC, rng), _rotated(fte, rotation_CC, rng)
    names = ["shape", "size", "x", "y"]
    held = probe_informativeness(xtr, ftr, xte, fte, DISCRETE, n_jobs=1, factor_names=names)
    scores = [pf["informativeness"] for pf in held["per_factor"]]
    assert [pf["informativeness_measure"] for pf in held["per_factor"]] == [
        "accuracy",
        "accuracy",
        "1-nrmse",
        "1-nrmse",
    ]
    assert [pf["name"] for pf in held["per_factor"]] == names
    # a linear mix of the factors: the MLP recovers each (accuracy of 3 / 4 classes, 1 - NRMSE)
    assert min(scores) > 0.85, scores
    assert held["informativeness"] == pytest.approx(np.mean(scores))
    # the trees, one dim per split, read the continuous factors less well from the same codes
    trees = dci(xtr, ftr, xte, fte, DISCRETE, n_jobs=1)["per_factor"]
    assert np.mean(scores[2:]) > np.mean([trees[j]["informativeness"] for j in (2, 3)]) + 0.05
    # codes that hold nothing: chance accuracy (1/3, 1/4) and ~0 for the continuous factors
    noise = probe_informativeness(rng.normal(size=(1500, 6)), ftr, rng.normal(size=(500, 6)), fte, DISCRETE, n_jobs=1)
    low = [pf["informativeness"] for pf in noise["per_factor"]]
    assert low[0] < 0.45 and low[1] < 0.35 and max(low[2:]) < 0.1, low


def test_evaluate_codes_with_the_flexible_probe_reports_it_over_the_targeted_factors(data):
    out = evaluate_codes(
        data["xtr"],
        data["ftr"],
        data["xte"],
        data["fte"],
        ["shape", "size", "x", "y"],
        DISCRETE,
        partitions=[("a", 3), ("b", 3)],
        intended={"a": ["shape"], "b": ["x"]},
        n_jobs=1,
        flexible_probe=True,
    )
    probe = json.loads(json.dumps(out, allow_nan=False))["probe"]
    per = [pf["informativeness"] for pf in probe["per_factor"]]
    assert probe["targeted_informativeness"] == pytest.approx((per[0] + per[2]) / 2)
    assert probe["informativeness"] == pytest.approx(np.mean(per))
    assert min(per) > 0.8  # permuted copies of the factors: every one is held


def test_evaluate_codes_validation(data):
    args = (data["xtr"], data["ftr"], data["xte"], data["fte"])
    with pytest.raises(ValueError, match="intended needs partitions"):
        evaluate_codes(*args, ["a", "b", "c", "d"], DISCRETE, intended={"p": ["a"]})
    with pytest.raises(ValueError, match="factor_names must be 4 distinct"):
        evaluate_codes(*args, ["a", "a", "c", "d"], DISCRETE)
    with pytest.raises(ValueError, match="add up to 5"):
        evaluate_codes(*args, ["a", "b", "c", "d"], DISCRETE, partitions=[("p", 5)])


def test_factor_fits_show_a_bar_on_a_terminal_only(monkeypatch):
    """The factor predictors report progress the way a terminal user expects (tqdm), and stay
    quiet in logs, pipes and Ray workers (stderr not a TTY)."""
    import io

    from gvae_dist import evaluate

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(evaluate.sys, "stderr", stream)
        assert list(evaluate._progress(iter([1, 2, 3]), 3, "eval: factor predictors")) == [1, 2, 3]
        assert ("eval: factor predictors" in stream.getvalue()) is shown
