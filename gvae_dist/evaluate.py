"""Disentanglement metrics on encoded codes: DCI with a per-partition view, MIG and SAP.

Sources:

- DCI: C. Eastwood, C. K. I. Williams, "A Framework for the Quantitative Evaluation of
  Disentangled Representations", ICLR 2018. Conventions follow disentanglement_lib
  (Locatello et al. 2019) ``evaluation/metrics/dci.py``: one gradient-boosted-trees model per
  factor with sklearn's default settings, ``feature_importances_`` as importance, rows codes and
  columns factors, entropies with log base F (disentanglement) and C (completeness).
- MIG: R. T. Q. Chen et al., "Isolating Sources of Disentanglement in VAEs", NeurIPS 2018;
  disentanglement_lib ``mig.py`` and ``utils._histogram_discretize`` (20 equal-width bins).
- SAP: A. Kumar, P. Sattigeri, A. Balakrishnan, "Variational Inference of Disentangled Latent
  Concepts from Unlabeled Observations", ICLR 2018; disentanglement_lib ``sap_score.py``.

Informativeness is always a score in [0, 1] where higher is better, and each factor names its
measure (``informativeness_measure``): test accuracy for a discrete factor (disentanglement_lib's
DCI) and ``max(0, 1 - NRMSE)`` for a continuous one, NRMSE being the test RMSE over the factor's
std (Eastwood & Williams 2018, their ``nrmse``); "informativeness_error" is ``1 - score``. Test
R^2 is kept per factor as ``informativeness_r2`` (``NRMSE^2 = 1 - R^2``).

Targeted factors: the headline DCI is taken over the factors the partitions name (the ones the
gate is meant to place); codes that carry only other factors then weigh ~0 in D instead of
diluting it. The same numbers over every factor are reported beside it (``all_factors``).
Purity per partition is the share of the partition's importance (summed over its codes, over all
factors) that goes to its own targeted factors.

Legend: N samples, C code dims, F factors, P partitions, K classes.
"""

from __future__ import annotations

import inspect
import sys
import time
import warnings
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LogisticRegression
from sklearn.metrics import mutual_info_score, r2_score
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

__all__ = [
    "METHODS",
    "importance_matrix",
    "disentanglement_per_code",
    "completeness_per_factor",
    "disentanglement",
    "completeness",
    "dci",
    "probe_informativeness",
    "partition_importance",
    "partition_purity",
    "purity_by_partition",
    "dci_over",
    "discretize",
    "mig",
    "sap",
    "evaluate_codes",
]

METHODS = ("gbt", "lasso", "forest")
# The flexible probe of :func:`probe_informativeness`: two ReLU layers of 256 units, Adam, early
# stopping on a tenth of the fitting codes (sklearn's MLP defaults otherwise).
PROBE_HIDDEN = (256, 256)
PROBE_MAX_ITER = 500
PROBE_MIN_EARLY_STOP = 200
PROBE_SMALL_ITER = 100
MIN_SAMPLES = 10
# Eastwood & Williams' lasso strength, on standardised codes and targets.
LASSO_ALPHA = 0.02
# sklearn >= 1.8 deprecates LogisticRegression(penalty=...) in favour of l1_ratio alone;
# older versions ignore l1_ratio unless penalty="elasticnet".
_L1_LOGISTIC: dict[str, Any] = (
    {"l1_ratio": 1.0}
    if inspect.signature(LogisticRegression).parameters["penalty"].default == "deprecated"
    else {"penalty": "l1"}
)


# ---------------------------------------------------------------------------------------------
# input validation


def _as_matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array [samples, dims], got shape {arr.shape}; "
            "reshape a single column with .reshape(-1, 1)"
        )
    if not np.isfinite(arr).all():
        rows = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise ValueError(
            f"{name} has NaN or inf in {rows.size} rows (first: {rows[:5].tolist()}); "
            "drop those samples or fix the encoder/data that produced them"
        )
    return arr


def _check_split(codes: Any, factors: Any, discrete: list[bool], suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (codes [N, C], factors [N, F]) pair, named ``codes{suffix}`` in messages."""
    cname, fname = f"codes{suffix}", f"factors{suffix}"
    codes_NC = _as_matrix(codes, cname)
    factors_NF = _as_matrix(factors, fname)
    if codes_NC.shape[0] != factors_NF.shape[0]:
        raise ValueError(
            f"{cname} has {codes_NC.shape[0]} samples but {fname} has {factors_NF.shape[0]}; "
            "pass the codes and factors of the same examples"
        )
    if codes_NC.shape[0] < MIN_SAMPLES:
        raise ValueError(
            f"{cname} has {codes_NC.shape[0]} samples; at least {MIN_SAMPLES} are needed "
            "(thousands for stable scores): encode more examples"
        )
    if codes_NC.shape[1] < 1 or factors_NF.shape[1] < 1:
        raise ValueError(f"{cname} and {fname} need at least one column each")
    if len(discrete) != factors_NF.shape[1]:
        raise ValueError(
            f"discrete has {len(discrete)} entries but {fname} has {factors_NF.shape[1]} "
            "columns; give one True/False per factor"
        )
    return codes_NC, factors_NF


def _check_train_test(
    codes_train: Any, factors_train: Any, codes_test: Any, factors_test: Any, discrete: list[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a train/test pair of splits and that every factor varies on train."""
    xtr_NC, ytr_NF = _check_split(codes_train, factors_train, discrete, "_train")
    xte_NC, yte_NF = _check_split(codes_test, factors_test, discrete, "_test")
    if xtr_NC.shape[1] != xte_NC.shape[1]:
        raise ValueError(
            f"codes_train has {xtr_NC.shape[1]} dims but codes_test has {xte_NC.shape[1]}; "
            "encode both splits with the same model"
        )
    if ytr_NF.shape[1] != yte_NF.shape[1]:
        raise ValueError(
            f"factors_train has {ytr_NF.shape[1]} columns but factors_test has "
            f"{yte_NF.shape[1]}; pass the same factors for both splits"
        )
    _check_factors_vary(ytr_NF, "factors_train")
    return xtr_NC, ytr_NF, xte_NC, yte_NF


def _check_factors_vary(factors_NF: np.ndarray, name: str) -> None:
    constant = [j for j in range(factors_NF.shape[1]) if np.ptp(factors_NF[:, j]) == 0]
    if constant:
        raise ValueError(
            f"{name} columns {constant} are constant; a constant factor cannot be predicted "
            "or have entropy: drop it from the factors"
        )


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _check_importance(importance_CF: Any) -> np.ndarray:
    imp_CF = np.asarray(importance_CF, dtype=np.float64)
    if imp_CF.ndim != 2 or imp_CF.size == 0:
        raise ValueError(f"importance_CF must be a non-empty 2-D array [codes, factors], got shape {imp_CF.shape}")
    if not np.isfinite(imp_CF).all() or (imp_CF < 0).any():
        raise ValueError("importance_CF must be finite and non-negative; take np.abs of signed weights")
    return imp_CF


# ---------------------------------------------------------------------------------------------
# DCI


def _standardise(train_N: np.ndarray, test_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale with train mean/std (dead dims keep std 1) so penalties are scale-free."""
    mean, std = train_N.mean(axis=0), train_N.std(axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return (train_N - mean) / std, (test_N - mean) / std


def _make_model(method: str, discrete: bool, seed: int, n_train: int) -> Any:
    if method == "gbt":
        # sklearn defaults (100 trees of depth 3) are disentanglement_lib's settings.
        return (GradientBoostingClassifier if discrete else GradientBoostingRegressor)(random_state=seed)
    if method == "forest":
        cls = RandomForestClassifier if discrete else RandomForestRegressor
        return cls(n_estimators=100, min_samples_leaf=5, random_state=seed, n_jobs=1)
    if discrete:
        # L1 logistic regression; sklearn's C multiplies the summed loss, so C = 1 / (alpha N)
        # matches Lasso's alpha on the mean loss.
        return LogisticRegression(
            solver="saga",
            C=1.0 / (LASSO_ALPHA * n_train),
            max_iter=2000,
            random_state=seed,
            **_L1_LOGISTIC,
        )
    return Lasso(alpha=LASSO_ALPHA, max_iter=10000)


def _progress(items, total: int, desc: str):
    """``items`` with a tqdm bar on an interactive terminal (tqdm is optional where only the
    math is installed, e.g. ops/gpu_study.py's machine)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, total=total, desc=desc, unit="factor", leave=False, disable=None, file=sys.stderr)


def _fit_factor(
    xtr_NC: np.ndarray,
    ytr_N: np.ndarray,
    xte_NC: np.ndarray,
    yte_N: np.ndarray,
    discrete: bool,
    method: str,
    seed: int,
) -> tuple[np.ndarray, dict[str, float]]:
    """Fit one factor's predictor; return its importance [C] and train/test scores."""
    if method == "lasso":
        xtr_NC, xte_NC = _standardise(xtr_NC, xte_NC)
        if not discrete:
            ytr_N, yte_N = _standardise(ytr_N, yte_N)
    model = _make_model(method, discrete, seed, xtr_NC.shape[0])
    model.fit(xtr_NC, ytr_N)
    if method == "lasso":
        coef_KC = np.atleast_2d(model.coef_)
        importance_C = np.abs(coef_KC).mean(axis=0)
    else:
        importance_C = np.abs(model.feature_importances_)
    pred_tr_N, pred_te_N = model.predict(xtr_NC), model.predict(xte_NC)
    if discrete:
        info = {
            "informativeness_measure": "accuracy",
            "informativeness_accuracy": float(np.mean(pred_te_N == yte_N)),
            "informativeness_accuracy_train": float(np.mean(pred_tr_N == ytr_N)),
        }
    else:
        info = {
            "informativeness_measure": "1-nrmse",
            "informativeness_r2": float(r2_score(yte_N, pred_te_N)),
            "informativeness_r2_train": float(r2_score(ytr_N, pred_tr_N)),
            "informativeness_nrmse": _nrmse(yte_N, pred_te_N),
            "informativeness_nrmse_train": _nrmse(ytr_N, pred_tr_N),
        }
    return importance_C, info


def _nrmse(y_N: np.ndarray, pred_N: np.ndarray) -> float:
    """RMSE over the split's std, so that ``nrmse**2 == 1 - R^2`` on the same split."""
    std = float(np.std(y_N))
    rmse = float(np.sqrt(np.mean((pred_N - y_N) ** 2)))
    if std == 0:
        # a constant target: r2_score has the same convention (1 if exact, else 0)
        return 0.0 if rmse == 0 else 1.0
    return rmse / std


def importance_matrix(
    codes_train_NC: np.ndarray,
    factors_train_NF: np.ndarray,
    codes_test_NC: np.ndarray,
    factors_test_NF: np.ndarray,
    discrete: list[bool],
    method: str = "gbt",
    seed: int = 0,
    n_jobs: int = 2,
) -> tuple[np.ndarray, list[dict[str, float]]]:
    """Importance of each code for each factor, from one predictor per factor.

    A classifier is fit for a discrete factor, a regressor for a continuous one, on the train
    split; scores come from both splits. Factors run in parallel (joblib, ``n_jobs`` processes).

    method: ``"gbt"`` gradient boosted trees (disentanglement_lib default; cost grows with the
    number of classes K of a discrete factor, ~15 s for K=5 at N=10,000 on one core),
    ``"forest"`` random forest, ``"lasso"`` L1 linear model (|coef|, mean over classes) on
    standardised codes, as in Eastwood & Williams.

    Returns ``importance_CF`` [C, F], non-negative, each non-zero column summing to 1 (tree
    importances already do; lasso columns are normalised too so every factor weighs the same),
    and per factor a dict with ``informativeness_measure`` (``"accuracy"`` or ``"1-nrmse"``),
    ``informativeness_accuracy`` (+ ``_train``) for a discrete factor or ``informativeness_r2``
    and ``informativeness_nrmse`` (+ ``_train``) otherwise.
    """
    _check_method(method)
    xtr_NC, ytr_NF, xte_NC, yte_NF = _check_train_test(
        codes_train_NC, factors_train_NF, codes_test_NC, factors_test_NF, discrete
    )
    n_factors = ytr_NF.shape[1]
    # A K-class GBT fits K trees per stage, so dispatch the most expensive factors first:
    # that shortens the parallel makespan (the slowest worker) without changing any result.
    cost_F = [np.unique(ytr_NF[:, j]).size if discrete[j] else 1 for j in range(n_factors)]
    order = sorted(range(n_factors), key=lambda j: -cost_F[j])
    jobs = (
        delayed(_fit_factor)(xtr_NC, ytr_NF[:, j], xte_NC, yte_NF[:, j], bool(discrete[j]), method, seed) for j in order
    )
    # Submission order, each as soon as it is ready (joblib's generator); a bar on a terminal only
    # (tqdm's disable=None: quiet in logs, pytest, Ray workers), gone when the fits are done.
    done = list(
        _progress(
            Parallel(n_jobs=max(1, min(n_jobs, n_factors)), return_as="generator")(jobs),
            n_factors,
            "eval: factor predictors",
        )
    )
    results = [done[order.index(j)] for j in range(n_factors)]
    importance_CF = np.stack([imp_C for imp_C, _ in results], axis=1)
    totals_F = importance_CF.sum(axis=0, keepdims=True)
    importance_CF = np.divide(importance_CF, totals_F, out=np.zeros_like(importance_CF), where=totals_F > 0)
    return importance_CF, [info for _, info in results]


def _normalised_entropy_rows(p_RK: np.ndarray) -> np.ndarray:
    """Entropy of each row's distribution with log base K; an all-zero row counts as uniform (1)."""
    n_rows, k = p_RK.shape
    if k == 1:
        return np.zeros(n_rows)
    totals_R = p_RK.sum(axis=1)
    out_R = np.ones(n_rows)
    nz = totals_R > 0
    q = p_RK[nz] / totals_R[nz, None]
    plogq = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    out_R[nz] = -plogq.sum(axis=1) / np.log(k)
    return out_R


def disentanglement_per_code(importance_CF: np.ndarray) -> np.ndarray:
    """``1 - H_F(importance of code i over factors)`` [C]; 0 for a code with no importance."""
    return 1.0 - _normalised_entropy_rows(_check_importance(importance_CF))


def completeness_per_factor(importance_CF: np.ndarray) -> np.ndarray:
    """``1 - H_C(importance of factor j over codes)`` [F]; 0 for a factor no code captures."""
    return 1.0 - _normalised_entropy_rows(_check_importance(importance_CF).T)


def disentanglement(importance_CF: np.ndarray) -> float:
    """Per-code disentanglement weighted by each code's share of the total importance.

    importance_CF: [C, F] non-negative. Returns a value in [0, 1]; 0 for an all-zero matrix.
    """
    imp_CF = _check_importance(importance_CF)
    total = imp_CF.sum()
    if total == 0:
        return 0.0
    weight_C = imp_CF.sum(axis=1) / total
    return float(np.sum(disentanglement_per_code(imp_CF) * weight_C))


def completeness(importance_CF: np.ndarray) -> float:
    """Per-factor completeness averaged over factors (a factor no code captures scores 0).

    importance_CF: [C, F] non-negative. Returns a value in [0, 1]; 0 for an all-zero matrix.
    disentanglement_lib weights factors by their importance share instead; with the
    column-normalised matrices of :func:`importance_matrix` the two agree unless a column is 0.
    """
    return float(np.mean(completeness_per_factor(importance_CF)))


def _score(info: dict[str, Any], discrete: bool, suffix: str = "") -> float:
    """The higher-is-better score of one factor in [0, 1]: accuracy if discrete, else
    ``max(0, 1 - NRMSE)``."""
    if discrete:
        return info["informativeness_accuracy" + suffix]
    return max(0.0, 1.0 - info["informativeness_nrmse" + suffix])


def dci_over(
    importance_CF: np.ndarray,
    informativeness_F: list[float],
    columns: list[int] | None = None,
) -> dict[str, float]:
    """D, C, I and their mean over a subset of factor columns (all when ``columns`` is None).

    D weighs each code by its share of the importance *within the subset*, so codes that carry
    only other factors drop out; C and I are means over the subset's factors.
    Keys: ``disentanglement``, ``completeness``, ``informativeness``, ``informativeness_error``,
    ``dci_mean`` (mean of D, C and I).
    """
    imp_CF = _check_importance(importance_CF)
    cols = list(range(imp_CF.shape[1])) if columns is None else list(columns)
    if not cols or any(not 0 <= j < imp_CF.shape[1] for j in cols):
        raise ValueError(f"columns must be a non-empty list of factor indices, got {columns}")
    sub_CF = imp_CF[:, cols]
    d, c = disentanglement(sub_CF), completeness(sub_CF)
    i = float(np.mean([informativeness_F[j] for j in cols]))
    return {
        "disentanglement": d,
        "completeness": c,
        "informativeness": i,
        "informativeness_error": 1.0 - i,
        "dci_mean": (d + c + i) / 3.0,
    }


def dci(
    codes_train_NC: np.ndarray,
    factors_train_NF: np.ndarray,
    codes_test_NC: np.ndarray,
    factors_test_NF: np.ndarray,
    discrete: list[bool],
    method: str = "gbt",
    seed: int = 0,
    n_jobs: int = 2,
    factor_names: list[str] | None = None,
) -> dict[str, Any]:
    """Disentanglement, completeness and informativeness (JSON-serialisable dict).

    Keys: ``disentanglement``, ``completeness``, ``informativeness`` (mean over factors of the
    test score in [0, 1], higher is better: accuracy for discrete, ``max(0, 1 - NRMSE)`` for
    continuous factors), ``informativeness_train``, ``informativeness_error`` (``1 -
    informativeness``), ``dci_mean``, ``disentanglement_per_code`` [C], ``per_factor`` (one dict
    per factor: ``name``, ``discrete``, ``informativeness``, ``informativeness_measure``,
    ``completeness`` and the scores of :func:`importance_matrix`), ``importance`` ([C][F]
    list), ``method``, ``seconds``.
    """
    start = time.perf_counter()
    imp_CF, infos = importance_matrix(
        codes_train_NC,
        factors_train_NF,
        codes_test_NC,
        factors_test_NF,
        discrete,
        method=method,
        seed=seed,
        n_jobs=n_jobs,
    )
    names = _factor_names(factor_names, imp_CF.shape[1])
    comp_F = completeness_per_factor(imp_CF)
    test_F = [_score(info, bool(discrete[j])) for j, info in enumerate(infos)]
    train_F = [_score(info, bool(discrete[j]), "_train") for j, info in enumerate(infos)]
    per_factor = [
        {
            "name": names[j],
            "discrete": bool(discrete[j]),
            "informativeness": test_F[j],
            "completeness": float(comp_F[j]),
            **info,
        }
        for j, info in enumerate(infos)
    ]
    return {
        **dci_over(imp_CF, test_F),
        "informativeness_train": float(np.mean(train_F)),
        "disentanglement_per_code": disentanglement_per_code(imp_CF).tolist(),
        "per_factor": per_factor,
        "importance": imp_CF.tolist(),
        "method": method,
        "seconds": time.perf_counter() - start,
    }


def _fit_probe(
    xtr_NC: np.ndarray, ytr_NK: np.ndarray, xte_NC: np.ndarray, yte_NK: np.ndarray, discrete: bool, seed: int
) -> list[float]:
    """Flexible-probe test scores of K factors fitted together: one discrete factor (K = 1,
    accuracy) or every continuous one (one multi-output regressor, ``max(0, 1 - NRMSE)`` each).
    The codes come standardised (:func:`probe_informativeness`)."""
    # early stopping holds out a tenth of the fitting codes; below PROBE_MIN_EARLY_STOP codes
    # (tests, tiny evaluations) that split is too small to stop on, and a fixed, short fit runs
    early = len(xtr_NC) >= PROBE_MIN_EARLY_STOP
    iters = PROBE_MAX_ITER if early else PROBE_SMALL_ITER
    kwargs = dict(hidden_layer_sizes=PROBE_HIDDEN, early_stopping=early, max_iter=iters, random_state=seed)
    # one BLAS thread per fit: joblib spreads the fits over the cores, and a study's cells each
    # evaluate in their own process; with a threaded BLAS on top, two v19 cells evaluating at once
    # spent 252 s in per-factor fits that took ~20 s alone
    with threadpool_limits(limits=1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a capped fit still scores honestly on test
        if discrete:
            model = MLPClassifier(**kwargs).fit(xtr_NC, ytr_NK[:, 0])
            return [float(np.mean(model.predict(xte_NC) == yte_NK[:, 0]))]
        # targets standardised with the fitting split's statistics, as the codes, so that each
        # factor weighs the same in the joint fit
        mean_K, std_K = ytr_NK.mean(0), ytr_NK.std(0)
        std_K = np.where(std_K > 0, std_K, 1.0)
        model = MLPRegressor(**kwargs).fit(xtr_NC, (ytr_NK - mean_K) / std_K)
    pred_NK = model.predict(xte_NC).reshape(len(xte_NC), -1) * std_K + mean_K
    return [max(0.0, 1.0 - _nrmse(yte_NK[:, k], pred_NK[:, k])) for k in range(ytr_NK.shape[1])]


def probe_informativeness(
    codes_train_NC: np.ndarray,
    factors_train_NF: np.ndarray,
    codes_test_NC: np.ndarray,
    factors_test_NF: np.ndarray,
    discrete: list[bool],
    seed: int = 0,
    n_jobs: int = 2,
    factor_names: list[str] | None = None,
) -> dict[str, Any]:
    """Informativeness read by a flexible probe: how much of each factor the code *holds*,
    whether or not a factor is laid along single code dims.

    DCI's informativeness is the test score of the probe whose importances give D and C (here
    disentanglement_lib's depth-3 boosted trees, which split on one code dim at a time); a factor
    the code holds only along oblique directions scores low there although it is recoverable.
    DCI-ES (Eastwood et al., ICLR 2023) separates the two: informativeness read with a probe of
    enough capacity, and how much capacity reading it takes (explicitness). This is the first,
    with fixed MLPs (``PROBE_HIDDEN``, early stopping): one classifier per discrete factor and one
    multi-output regressor for the continuous factors together (standardised targets; one fit
    instead of one per continuous factor: on the faces' nine, 2.5 s against 21.5 s, within 0.06
    of the per-factor scores; ``ops/bench/dci_cost.py --probe`` times both against the trees):
    the same test scores
    (accuracy / ``max(0, 1 - NRMSE)``) on the same split as :func:`dci`, so the two compare
    factor by factor; a gap between them is information the tree probe cannot read.

    Keys: ``probe`` ("mlp"), ``hidden``, ``informativeness`` (mean over factors), ``per_factor``
    (``name``, ``discrete``, ``informativeness``, ``informativeness_measure``), ``seconds``.
    """
    start = time.perf_counter()
    xtr_NC, ytr_NF, xte_NC, yte_NF = _check_train_test(
        codes_train_NC, factors_train_NF, codes_test_NC, factors_test_NF, discrete
    )
    names = _factor_names(factor_names, ytr_NF.shape[1])
    xtr_NC, xte_NC = _standardise(xtr_NC, xte_NC)
    # each discrete factor its own classifier, the continuous ones one regressor together
    groups = [[j] for j in range(ytr_NF.shape[1]) if discrete[j]]
    groups += [cont] if (cont := [j for j in range(ytr_NF.shape[1]) if not discrete[j]]) else []
    fitted = Parallel(n_jobs=n_jobs)(
        delayed(_fit_probe)(xtr_NC, ytr_NF[:, g], xte_NC, yte_NF[:, g], bool(discrete[g[0]]), seed) for g in groups
    )
    scores = [0.0] * ytr_NF.shape[1]
    for g, group_scores in zip(groups, fitted, strict=True):
        for j, score in zip(g, group_scores, strict=True):
            scores[j] = score
    per_factor = [
        {
            "name": names[j],
            "discrete": bool(discrete[j]),
            "informativeness": scores[j],
            "informativeness_measure": "accuracy" if discrete[j] else "1-nrmse",
        }
        for j in range(len(scores))
    ]
    return {
        "probe": "mlp",
        "hidden": list(PROBE_HIDDEN),
        "informativeness": float(np.mean(scores)),
        "per_factor": per_factor,
        "seconds": time.perf_counter() - start,
    }


def _factor_names(factor_names: list[str] | None, n_factors: int) -> list[str]:
    if factor_names is None:
        return [f"factor_{j}" for j in range(n_factors)]
    names = list(factor_names)
    if len(names) != n_factors or len(set(names)) != n_factors:
        raise ValueError(f"factor_names must be {n_factors} distinct names (one per factor column), got {names}")
    return names


# ---------------------------------------------------------------------------------------------
# per-partition view of DCI


def _check_partitions(partitions: list[tuple[str, int]], n_codes: int) -> list[tuple[str, int]]:
    parts = [(str(name), size) for name, size in partitions]
    names = [name for name, _ in parts]
    if not parts or len(set(names)) != len(names):
        raise ValueError(f"partitions must be a non-empty list of distinct names, got {names}")
    bad = [(n, s) for n, s in parts if not isinstance(s, (int, np.integer)) or s < 1]
    if bad:
        raise ValueError(f"partitions sizes must be positive integers, got {bad}")
    total = sum(int(s) for _, s in parts)
    if total != n_codes:
        raise ValueError(
            f"partitions sizes add up to {total} but there are {n_codes} code dims; "
            "pass the model's partitions (PartitionSpec.sizes())"
        )
    return [(n, int(s)) for n, s in parts]


def partition_importance(importance_CF: np.ndarray, partitions: list[tuple[str, int]]) -> np.ndarray:
    """Sum the importance rows of each contiguous partition, in order: [C, F] -> [P, F].

    partitions: ``[(name, size), ...]`` covering the C code dims left to right.
    """
    imp_CF = _check_importance(importance_CF)
    parts = _check_partitions(partitions, imp_CF.shape[0])
    stops = np.cumsum([size for _, size in parts])
    return np.stack([block.sum(axis=0) for block in np.split(imp_CF, stops[:-1])], axis=0)


def _owners(intended: dict[str, list[str]], part_names: list[str], names: list[str]) -> dict[str, str]:
    """Factor name -> the partition meant to hold it; validates ``intended``."""
    owner: dict[str, str] = {}
    for part, factors in intended.items():
        if part not in part_names:
            raise ValueError(f"intended names partition {part!r}; partitions are {part_names}")
        for factor in factors:
            if factor not in names:
                raise ValueError(f"intended[{part!r}] names factor {factor!r}; factors are {names}")
            if factor in owner:
                raise ValueError(
                    f"factor {factor!r} is intended for both {owner[factor]!r} and {part!r}; "
                    "give each factor one partition"
                )
            owner[factor] = part
    if not owner:
        raise ValueError("intended names no factor; pass intended=None to skip purity")
    return owner


def partition_purity(
    importance_CF: np.ndarray,
    partitions: list[tuple[str, int]],
    intended: dict[str, list[str]],
    factor_names: list[str],
) -> dict[str, float]:
    """Share of each intended factor's importance that lies in its intended partition.

    intended: partition name -> factor names meant to land there (Partition.factors).
    Returns ``{factor_name: share in [0, 1], ..., "mean": mean share}``; a factor with no
    importance at all has share 0.
    """
    imp_PF = partition_importance(importance_CF, partitions)
    names = _factor_names(factor_names, imp_PF.shape[1])
    part_names = [name for name, _ in partitions]
    owner = _owners(intended, part_names, names)
    if "mean" in owner:
        raise ValueError("a factor named 'mean' clashes with the 'mean' key; rename the factor")
    out: dict[str, float] = {}
    for factor, part in owner.items():
        column_P = imp_PF[:, names.index(factor)]
        total = column_P.sum()
        out[factor] = float(column_P[part_names.index(part)] / total) if total > 0 else 0.0
    out["mean"] = float(np.mean(list(out.values())))
    return out


def purity_by_partition(
    importance_CF: np.ndarray,
    partitions: list[tuple[str, int]],
    intended: dict[str, list[str]],
    factor_names: list[str],
) -> dict[str, float]:
    """Share of each partition's importance that goes to its own intended factors.

    The partition's importance is its rows of ``importance_CF`` summed, over every factor
    column (``partition_importance``); a partition whose codes matter for nothing scores 0.
    Returns ``{partition: share in [0, 1] for every partition that intends a factor,
    "mean": mean share}``.
    """
    imp_PF = partition_importance(importance_CF, partitions)
    names = _factor_names(factor_names, imp_PF.shape[1])
    part_names = [name for name, _ in partitions]
    owner = _owners(intended, part_names, names)
    if "mean" in part_names:
        raise ValueError("a partition named 'mean' clashes with the 'mean' key; rename it")
    out: dict[str, float] = {}
    for p, part in enumerate(part_names):
        own = [names.index(f) for f, o in owner.items() if o == part]
        if own:
            total = imp_PF[p].sum()
            out[part] = float(imp_PF[p, own].sum() / total) if total > 0 else 0.0
    out["mean"] = float(np.mean(list(out.values())))
    return out


# ---------------------------------------------------------------------------------------------
# MIG and SAP


def discretize(x_NC: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Per column, the index of its equal-width histogram bin [N, C] (disentanglement_lib)."""
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    out_NC = np.zeros(x_NC.shape, dtype=np.int64)
    for i in range(x_NC.shape[1]):
        edges = np.histogram(x_NC[:, i], num_bins)[1]
        out_NC[:, i] = np.digitize(x_NC[:, i], edges[:-1])
    return out_NC


def _factor_labels(factors_NF: np.ndarray, discrete: list[bool], num_bins: int) -> np.ndarray:
    """Discrete factors as class indices, continuous ones binned like the codes [N, F]."""
    binned_NF = discretize(factors_NF, num_bins)
    for j, is_discrete in enumerate(discrete):
        if is_discrete:
            binned_NF[:, j] = np.unique(factors_NF[:, j], return_inverse=True)[1]
    return binned_NF


def mig(codes_NC: np.ndarray, factors_NF: np.ndarray, discrete: list[bool], num_bins: int = 20) -> dict[str, Any]:
    """Mutual Information Gap: per factor, (top-1 minus top-2 MI over codes) / H(factor).

    Codes are discretised into ``num_bins`` equal-width bins, continuous factors too; MI and
    entropy are plug-in estimates in nats (sklearn ``mutual_info_score``).
    Keys: ``mig`` (mean over factors), ``mig_per_factor`` [F], ``mutual_info`` [C][F],
    ``factor_entropy`` [F], ``num_bins``.
    """
    codes_NC, factors_NF = _check_split(codes_NC, factors_NF, discrete, "_NC")
    _check_factors_vary(factors_NF, "factors_NF")
    if codes_NC.shape[1] < 2:
        raise ValueError("MIG needs at least 2 code dims (it is a gap between the top two)")
    codes_bin_NC = discretize(codes_NC, num_bins)
    labels_NF = _factor_labels(factors_NF, discrete, num_bins)
    n_codes, n_factors = codes_NC.shape[1], factors_NF.shape[1]
    mi_CF = np.array(
        [[mutual_info_score(labels_NF[:, j], codes_bin_NC[:, i]) for j in range(n_factors)] for i in range(n_codes)]
    )
    entropy_F = np.array([mutual_info_score(labels_NF[:, j], labels_NF[:, j]) for j in range(n_factors)])
    sorted_CF = np.sort(mi_CF, axis=0)
    gap_F = (sorted_CF[-1] - sorted_CF[-2]) / entropy_F
    return {
        "mig": float(gap_F.mean()),
        "mig_per_factor": gap_F.tolist(),
        "mutual_info": mi_CF.tolist(),
        "factor_entropy": entropy_F.tolist(),
        "num_bins": int(num_bins),
    }


def sap(
    codes_train_NC: np.ndarray,
    factors_train_NF: np.ndarray,
    codes_test_NC: np.ndarray,
    factors_test_NF: np.ndarray,
    discrete: list[bool],
) -> dict[str, Any]:
    """Separated Attribute Predictability: mean over factors of the top-2 gap of a score matrix.

    Score of (code i, factor j): continuous factor, R^2 of a 1-D linear fit on train (squared
    correlation); discrete factor, test accuracy of a class-balanced LinearSVC (C=0.01) on the
    one code, as disentanglement_lib. The code is standardised first (train stats) so the
    regularised classifier does not depend on the code's scale.
    Keys: ``sap``, ``sap_per_factor`` [F], ``score_matrix`` [C][F].
    """
    xtr_NC, ytr_NF, xte_NC, yte_NF = _check_train_test(
        codes_train_NC, factors_train_NF, codes_test_NC, factors_test_NF, discrete
    )
    if xtr_NC.shape[1] < 2:
        raise ValueError("SAP needs at least 2 code dims (it is a gap between the top two)")
    xtr_NC, xte_NC = _standardise(xtr_NC, xte_NC)
    n_codes, n_factors = xtr_NC.shape[1], ytr_NF.shape[1]
    score_CF = np.zeros((n_codes, n_factors))
    for i in range(n_codes):
        for j in range(n_factors):
            if discrete[j]:
                clf = LinearSVC(C=0.01, class_weight="balanced")
                clf.fit(xtr_NC[:, i : i + 1], ytr_NF[:, j])
                score_CF[i, j] = np.mean(clf.predict(xte_NC[:, i : i + 1]) == yte_NF[:, j])
            else:
                cov = np.cov(xtr_NC[:, i], ytr_NF[:, j], ddof=1)
                if cov[0, 0] > 1e-12:
                    score_CF[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1])
    sorted_CF = np.sort(score_CF, axis=0)
    gap_F = sorted_CF[-1] - sorted_CF[-2]
    return {
        "sap": float(gap_F.mean()),
        "sap_per_factor": gap_F.tolist(),
        "score_matrix": score_CF.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# everything at once


def evaluate_codes(
    codes_train: np.ndarray,
    factors_train: np.ndarray,
    codes_test: np.ndarray,
    factors_test: np.ndarray,
    factor_names: list[str],
    discrete: list[bool],
    partitions: list[tuple[str, int]] | None = None,
    intended: dict[str, list[str]] | None = None,
    method: str = "gbt",
    seed: int = 0,
    n_jobs: int = 2,
    num_bins: int = 20,
    flexible_probe: bool = False,
) -> dict[str, Any]:
    """All metrics as one JSON-serialisable dict.

    Keys: ``factor_names``, ``discrete``, ``n_train``, ``n_test``, ``n_codes``, ``dci`` (see
    :func:`dci`, over every factor), ``targeted`` (``factors``: the factors ``intended`` names,
    or every factor when it names none, and :func:`dci_over` of those columns), ``mig`` (on the
    train split, as disentanglement_lib), ``sap`` and ``partitions``: None without partitions,
    else ``names``, ``sizes``, ``importance`` [P][F], ``disentanglement``, ``completeness`` (of
    the partition-level matrix), ``purity`` (:func:`partition_purity`) and
    ``purity_by_partition`` (:func:`purity_by_partition`), both None when ``intended`` names no
    factor; ``probe``: with ``flexible_probe`` :func:`probe_informativeness` over every factor
    plus ``targeted_informativeness`` (its mean over the targeted factors), else None.
    """
    xtr_NC, ytr_NF, xte_NC, yte_NF = _check_train_test(codes_train, factors_train, codes_test, factors_test, discrete)
    names = _factor_names(factor_names, ytr_NF.shape[1])
    if partitions is not None:
        _check_partitions(partitions, xtr_NC.shape[1])
    if intended is not None and partitions is None:
        raise ValueError("intended needs partitions; pass partitions=[(name, size), ...] too")
    dci_out = dci(
        xtr_NC,
        ytr_NF,
        xte_NC,
        yte_NF,
        discrete,
        method=method,
        seed=seed,
        n_jobs=n_jobs,
        factor_names=names,
    )
    targeted = [f for f in names if any(f in fs for fs in (intended or {}).values())] or names
    test_F = [pf["informativeness"] for pf in dci_out["per_factor"]]
    out: dict[str, Any] = {
        "factor_names": names,
        "discrete": [bool(d) for d in discrete],
        "n_train": int(xtr_NC.shape[0]),
        "n_test": int(xte_NC.shape[0]),
        "n_codes": int(xtr_NC.shape[1]),
        "dci": dci_out,
        "targeted": {
            "factors": targeted,
            **dci_over(dci_out["importance"], test_F, [names.index(f) for f in targeted]),
        },
        "mig": mig(xtr_NC, ytr_NF, discrete, num_bins=num_bins),
        "sap": sap(xtr_NC, ytr_NF, xte_NC, yte_NF, discrete),
        "partitions": None,
        "probe": None,
    }
    if flexible_probe:
        probe = probe_informativeness(xtr_NC, ytr_NF, xte_NC, yte_NF, discrete, seed, n_jobs, names)
        probe_F = [pf["informativeness"] for pf in probe["per_factor"]]
        probe["targeted_informativeness"] = float(np.mean([probe_F[names.index(f)] for f in targeted]))
        out["probe"] = probe
    if partitions is not None:
        imp_CF = np.asarray(dci_out["importance"])
        imp_PF = partition_importance(imp_CF, partitions)
        has_intended = intended is not None and any(intended.values())
        out["partitions"] = {
            "names": [str(name) for name, _ in partitions],
            "sizes": [int(size) for _, size in partitions],
            "importance": imp_PF.tolist(),
            "disentanglement": disentanglement(imp_PF),
            "completeness": completeness(imp_PF),
            "purity": partition_purity(imp_CF, partitions, intended, names) if has_intended else None,
            "purity_by_partition": purity_by_partition(imp_CF, partitions, intended, names) if has_intended else None,
        }
    return out
