"""VAE objectives: reconstruction likelihoods and the beta / InfoVAE-MMD / DIP-VAE regularisers.

Sources:
    - beta-VAE: Higgins et al., ICLR 2017; closed-form Gaussian KL as in Kingma & Welling 2014
      (appendix B) and disentanglement_lib's ``compute_gaussian_kl``.
    - InfoVAE (MMD-VAE): Zhao, Song, Ermon, AAAI 2019, eq. (6): KL weight ``1 - alpha``, MMD
      weight ``alpha + lambda - 1``. Unbiased MMD estimator: Gretton et al., JMLR 2012, eq. (3);
      RBF and multi-scale IMQ kernels with ``C = 2 * D * scale`` as in the WAE reference code
      (Tolstikhin et al., ICLR 2018).
    - DIP-VAE-I/II: Kumar, Sattigeri, Balakrishnan, ICLR 2018, eqs. (6)-(7);
      disentanglement_lib's ``compute_covariance_z_mean`` / ``regularize_diag_off_diag_dip``.
    - Annealed capacity ("annealed"): Burgess et al., "Understanding disentangling in beta-VAE",
      2018, eq. (8): ``gamma * |KL - C|`` with C raised linearly from 0 to ``capacity_max`` nats
      (disentanglement_lib's ``AnnealedVAE``: gamma 1000, c_max 25).

    - Calibrated Gaussian decoder (sigma-VAE, "optimal sigma"): Rybkin, Daniilidis, Levine,
      ICML 2021: the shared observation std is the batch RMSE of the decoder mean.

Loss convention (disentanglement_lib's): the reconstruction term is summed over pixels and the
KL over latent dims, and both are averaged over the batch. ``beta``, ``lambda_od``/``lambda_d``
and the MMD weight therefore mean what the papers mean. The reconstruction term is always the
full negative log-likelihood in nats per image, the Gaussian one with its normalising constant
(see ``reconstruction_loss``), so ``recon`` and ``recon + kl`` (the negative ELBO) compare across
likelihoods and observation stds. The weights as each paper defines them, and what the gated
variants change, are in docs/objectives.md.

Computation is promoted to at least float32 so that bf16 autocast outputs are not summed over
thousands of pixels in bf16.

Legend: B batch, C channels, H/W height/width, D latent dims.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from gvae_dist.gate import gate_gradient

__all__ = [
    "KERNELS",
    "LIKELIHOODS",
    "REGULARIZERS",
    "ObjectiveConfigLike",
    "capacity_at",
    "dip_covariance",
    "dip_lambda_d",
    "dip_penalty",
    "gaussian_kl",
    "kl_weight",
    "mmd",
    "objective",
    "reconstruction_loss",
    "validate_objective",
    "warmup_weight",
]

LIKELIHOODS = ("bernoulli", "gaussian")
KERNELS = ("rbf", "imq")


class ObjectiveConfigLike(Protocol):
    """The fields of ``gvae_dist.config.ObjectiveConfig`` that the objective reads."""

    name: str
    likelihood: str
    beta: float
    alpha: float
    mmd_lambda: float
    kernel: str
    kernel_scales: Sequence[float]
    lambda_od: float
    lambda_d: float | None
    gaussian_std: float
    gaussian_calibrated: bool
    warmup_steps: int
    gamma: float
    capacity_max: float
    capacity_steps: int


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Promote half/bf16 to float32; leave float32/float64 alone (gradcheck uses float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# --------------------------------------------------------------------------- likelihoods


# Smallest std of the calibrated Gaussian: a decoder that reproduces its batch exactly would
# otherwise drive 1 / sigma^2 (and the gradient scale) to infinity.
MIN_CALIBRATED_STD = 1e-3


def reconstruction_loss(
    logits_BCHW: torch.Tensor,
    target_BCHW: torch.Tensor,
    likelihood: str,
    gaussian_std: float = 0.1,
    gaussian_calibrated: bool = False,
) -> torch.Tensor:
    """Per-example negative log-likelihood of ``target`` under the decoder, in nats, summed over
    pixels.

    - ``"bernoulli"``: ``sum BCE_with_logits(logits, target)``; exact ``-log p`` for binary
      targets, the usual continuous relaxation for targets in [0, 1].
    - ``"gaussian"``: mean ``sigmoid(logits)``, std ``sigma``, the full density:
      ``sum (target - mean)^2 / (2 sigma^2) + log(sigma) + 0.5 log(2 pi)``. The constant has no
      gradient but makes the value a log-likelihood (negative for small sigma: it is a density).
      ``sigma`` is ``gaussian_std``, or with ``gaussian_calibrated`` the batch RMSE of the mean
      over every pixel (sigma-VAE's optimal shared sigma), detached and at least
      ``MIN_CALIBRATED_STD``. At the optimum the loss' gradient through sigma is zero, so
      detaching it changes no gradient and saves the backward through the batch statistic.

    Args:
        logits_BCHW: decoder output. target_BCHW: images in [0, 1], same shape.

    Returns:
        ``loss_B``.
    """
    if logits_BCHW.shape != target_BCHW.shape:
        raise ValueError(f"logits shape {tuple(logits_BCHW.shape)} != target shape {tuple(target_BCHW.shape)}")
    logits_BCHW, target_BCHW = _fp32(logits_BCHW), _fp32(target_BCHW)
    if likelihood == "bernoulli":
        nll_BCHW = F.binary_cross_entropy_with_logits(logits_BCHW, target_BCHW, reduction="none")
    elif likelihood == "gaussian":
        if not gaussian_std > 0:
            raise ValueError(f"objective.gaussian_std must be > 0, got {gaussian_std!r}")
        err_BCHW = target_BCHW - torch.sigmoid(logits_BCHW)
        if gaussian_calibrated:
            std = err_BCHW.detach().square().mean().sqrt().clamp_min(MIN_CALIBRATED_STD)
            log_std = std.log()
        else:
            std, log_std = gaussian_std, math.log(gaussian_std)
        nll_BCHW = err_BCHW.square() / (2.0 * std**2) + (log_std + 0.5 * math.log(2.0 * math.pi))
    else:
        raise ValueError(f"objective.likelihood must be one of {list(LIKELIHOODS)}, got {likelihood!r}")
    return nll_BCHW.flatten(1).sum(1)


# --------------------------------------------------------------------------- divergences


def gaussian_kl(mu_BD: torch.Tensor, logvar_BD: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, 1))`` per example and per dim, shape ``[B, D]``."""
    mu_BD, logvar_BD = _fp32(mu_BD), _fp32(logvar_BD)
    return 0.5 * (mu_BD.square() + logvar_BD.exp() - 1.0 - logvar_BD)


def mmd(
    z_BD: torch.Tensor,
    prior_BD: torch.Tensor,
    kernel: str,
    scales: Sequence[float],
) -> torch.Tensor:
    """Unbiased estimate of MMD^2 between the samples ``z_BD`` and ``prior_BD`` (a 0-d tensor).

    ``MMD^2_u = mean_{i!=j} k(z_i, z_j) + mean_{i!=j} k(p_i, p_j) - 2 mean_{i,j} k(z_i, p_j)``.
    The kernel is a sum over ``scales`` with ``C = 2 * D * scale`` (2 * D is the WAE choice:
    twice the expected squared distance scale of a standard normal in D dims):

    - ``"rbf"``: ``k(x, y) = sum_s exp(-|x - y|^2 / C_s)``;
    - ``"imq"``: ``k(x, y) = sum_s C_s / (C_s + |x - y|^2)``.

    Being unbiased, the estimate can be slightly negative.
    """
    if kernel not in KERNELS:
        raise ValueError(f"objective.kernel must be one of {list(KERNELS)}, got {kernel!r}")
    scales = list(scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"objective.kernel_scales must be non-empty and positive, got {scales!r}")
    if z_BD.ndim != 2 or z_BD.shape != prior_BD.shape:
        raise ValueError(
            f"z and prior must both be [B, D] of the same shape, got {tuple(z_BD.shape)} and {tuple(prior_BD.shape)}"
        )
    n, dim = z_BD.shape
    if n < 2:
        raise ValueError(f"the unbiased MMD needs a batch of at least 2, got {n}")
    z_BD, prior_BD = _fp32(z_BD), _fp32(prior_BD)
    x_ND = torch.cat([z_BD, prior_BD])
    # Squared distances from the Gram matrix; clamp the tiny negatives that rounding produces.
    sq_N = x_ND.square().sum(1)
    d2_NN = (sq_N[:, None] + sq_N[None, :] - 2.0 * x_ND @ x_ND.T).clamp_min(0.0)
    k_NN = torch.zeros_like(d2_NN)
    for scale in scales:
        c = 2.0 * dim * scale
        k_NN = k_NN + (torch.exp(-d2_NN / c) if kernel == "rbf" else c / (c + d2_NN))
    k_zz, k_pp, k_zp = k_NN[:n, :n], k_NN[n:, n:], k_NN[:n, n:]
    off_diag = n * (n - 1)
    return (
        (k_zz.sum() - k_zz.diagonal().sum()) / off_diag
        + (k_pp.sum() - k_pp.diagonal().sum()) / off_diag
        - 2.0 * k_zp.mean()
    )


def dip_covariance(mu_BD: torch.Tensor, logvar_BD: torch.Tensor, variant: str) -> torch.Tensor:
    """Covariance of the aggregate posterior that DIP-VAE pushes towards the identity, ``[D, D]``.

    - ``"dip1"``: ``Cov_p(x)[mu(x)]`` (batch covariance of the means, divided by B as in
      disentanglement_lib).
    - ``"dip2"``: ``Cov[mu] + E_p(x)[diag(sigma^2(x))]``. The expectation of the diagonal
      matrices is ``torch.diag(var_BD.mean(0))``; ``torch.diag(var_BD)`` on the ``[B, D]``
      tensor would instead return a vector and add it to every row.
    """
    if variant not in ("dip1", "dip2"):
        raise ValueError(f"DIP-VAE variant must be 'dip1' or 'dip2', got {variant!r}")
    mu_BD, logvar_BD = _fp32(mu_BD), _fp32(logvar_BD)
    centered_BD = mu_BD - mu_BD.mean(0, keepdim=True)
    cov_DD = centered_BD.T @ centered_BD / mu_BD.shape[0]
    if variant == "dip2":
        cov_DD = cov_DD + torch.diag(logvar_BD.exp().mean(0))
    return cov_DD


def dip_penalty(cov_DD: torch.Tensor, lambda_od: float, lambda_d: float) -> torch.Tensor:
    """``lambda_od * sum_{i!=j} cov_ij^2 + lambda_d * sum_i (cov_ii - 1)^2`` (a 0-d tensor)."""
    diag_D = cov_DD.diagonal()
    off_diag_sq = cov_DD.square().sum() - diag_D.square().sum()
    return lambda_od * off_diag_sq + lambda_d * (diag_D - 1.0).square().sum()


# --------------------------------------------------------------------------- regularisers
#
# One seam: every regulariser maps (cfg, kl, mu, logvar, z_reg, prior, capacity) to its weighted
# scalar and its own extra (undetached) terms. ``kl`` is the batch-mean KL summed over dims.

Regularizer = Callable[
    [
        ObjectiveConfigLike,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor,
        torch.Tensor | None,
        float,
    ],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]


def _beta(cfg, kl, mu_BD, logvar_BD, z_reg_BD, prior_BD, capacity):
    return cfg.beta * kl, {}


def _annealed(cfg, kl, mu_BD, logvar_BD, z_reg_BD, prior_BD, capacity):
    return cfg.gamma * (kl - capacity).abs(), {"capacity": torch.tensor(float(capacity), device=kl.device)}


def capacity_at(cfg: ObjectiveConfigLike, step: int) -> float:
    """The annealed objective's KL target C at 0-based ``step``: ``capacity_max * min(1, step /
    capacity_steps)`` (reached at once when ``capacity_steps`` is 0); 0 for other objectives."""
    if cfg.name != "annealed":
        return 0.0
    if cfg.capacity_steps <= 0:
        return float(cfg.capacity_max)
    return float(cfg.capacity_max) * min(1.0, step / cfg.capacity_steps)


def _infovae(cfg, kl, mu_BD, logvar_BD, z_reg_BD, prior_BD, capacity):
    if prior_BD is None:
        prior_BD = torch.randn_like(z_reg_BD)
    mmd_value = mmd(z_reg_BD, prior_BD, cfg.kernel, cfg.kernel_scales)
    return (1.0 - cfg.alpha) * kl + (cfg.alpha + cfg.mmd_lambda - 1.0) * mmd_value, {"mmd": mmd_value}


# disentanglement_lib's ``lambda_d_factor`` (its dip_vae_i / dip_vae_ii configs): the diagonal
# weight as a multiple of lambda_od when objective.lambda_d is not set. Kumar et al. use
# lambda_d = 10 lambda_od for DIP-VAE-I and lambda_d = lambda_od for DIP-VAE-II.
DIP_LAMBDA_D_FACTOR = {"dip1": 10.0, "dip2": 1.0}


def dip_lambda_d(cfg: ObjectiveConfigLike) -> float:
    """The DIP-VAE diagonal weight: ``objective.lambda_d`` if set, else ``DIP_LAMBDA_D_FACTOR``
    of the variant (10 for DIP-VAE-I, 1 for DIP-VAE-II) times ``objective.lambda_od``."""
    if cfg.lambda_d is not None:
        return float(cfg.lambda_d)
    return DIP_LAMBDA_D_FACTOR.get(cfg.name, 1.0) * cfg.lambda_od


def kl_weight(cfg: ObjectiveConfigLike) -> float:
    """The weight of the KL term in the objective: ``beta`` (beta-VAE), ``1 - alpha`` (InfoVAE),
    ``gamma`` (annealed: the size of the gradient of ``gamma |KL - C|``) or 1 (DIP-VAE). Divided
    by a partition's gate open share it is that partition's effective beta when the KL is not
    gated (docs/objectives.md)."""
    if cfg.name == "beta":
        return float(cfg.beta)
    if cfg.name == "infovae":
        return 1.0 - float(cfg.alpha)
    if cfg.name == "annealed":
        return float(cfg.gamma)
    return 1.0


def warmup_weight(warmup_steps: int, step: int) -> float:
    """The regulariser's multiplier at 0-based ``step``: ``min(1, (step + 1) / warmup_steps)``,
    1 when ``warmup_steps`` is 0. A linear warm-up (KL annealing: Bowman et al., CoNLL 2016;
    Sonderby et al., NeurIPS 2016) lets the encoder carry information before the regulariser
    reaches its weight, against the early posterior collapse docs/objectives.md measures."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def _dip(variant: str) -> Regularizer:
    def regularizer(cfg, kl, mu_BD, logvar_BD, z_reg_BD, prior_BD, capacity):
        penalty = dip_penalty(dip_covariance(mu_BD, logvar_BD, variant), cfg.lambda_od, dip_lambda_d(cfg))
        return kl + penalty, {"dip": penalty}

    return regularizer


REGULARIZERS: dict[str, Regularizer] = {
    "beta": _beta,
    "infovae": _infovae,
    "dip2": _dip("dip2"),
    "dip1": _dip("dip1"),
    "annealed": _annealed,
}
"""Objective name -> regulariser. ``beta`` is read only by "beta"; DIP-VAE keeps KL weight 1;
``capacity`` (the KL target, :func:`capacity_at`) only by "annealed"."""


def validate_objective(cfg: ObjectiveConfigLike) -> None:
    """Raise ``ValueError`` naming the offending ``objective.*`` key if ``cfg`` is unusable."""
    if cfg.name not in REGULARIZERS:
        raise ValueError(f"objective.name must be one of {list(REGULARIZERS)}, got {cfg.name!r}")
    if cfg.likelihood not in LIKELIHOODS:
        raise ValueError(f"objective.likelihood must be one of {list(LIKELIHOODS)}, got {cfg.likelihood!r}")
    if not cfg.gaussian_std > 0:
        raise ValueError(f"objective.gaussian_std must be > 0, got {cfg.gaussian_std!r}")
    if not cfg.warmup_steps >= 0:
        raise ValueError(f"objective.warmup_steps must be >= 0 (0 = no warm-up), got {cfg.warmup_steps!r}")
    if not cfg.beta >= 0:
        raise ValueError(f"objective.beta must be >= 0 (a negative KL weight), got {cfg.beta!r}")
    if cfg.name == "annealed":
        for key in ("gamma", "capacity_max", "capacity_steps"):
            if not getattr(cfg, key) >= 0:
                raise ValueError(f"objective.{key} must be >= 0, got {getattr(cfg, key)!r}")
    if not cfg.lambda_od >= 0:
        raise ValueError(f"objective.lambda_od must be >= 0, got {cfg.lambda_od!r}")
    if cfg.lambda_d is not None and not cfg.lambda_d >= 0:
        raise ValueError(f"objective.lambda_d must be >= 0 or null, got {cfg.lambda_d!r}")
    if cfg.kernel not in KERNELS:
        raise ValueError(f"objective.kernel must be one of {list(KERNELS)}, got {cfg.kernel!r}")
    scales = list(cfg.kernel_scales)
    if not scales or any(not s > 0 for s in scales):
        raise ValueError(f"objective.kernel_scales must be non-empty and positive, got {scales!r}")
    if cfg.name == "infovae":
        # A negative weight would reward a large divergence instead of penalising it.
        if not cfg.alpha + cfg.mmd_lambda - 1.0 > 0:
            raise ValueError(
                "objective.alpha + objective.mmd_lambda - 1 is the MMD weight and must be > 0, "
                f"got alpha={cfg.alpha!r}, mmd_lambda={cfg.mmd_lambda!r}"
            )
        if not cfg.alpha <= 1.0:
            raise ValueError(f"objective.alpha must be <= 1 (1 - alpha is the KL weight), got {cfg.alpha!r}")


def objective(
    cfg: ObjectiveConfigLike,
    recon_B: torch.Tensor,
    mu_BD: torch.Tensor,
    logvar_BD: torch.Tensor,
    z_reg_BD: torch.Tensor,
    prior_BD: torch.Tensor | None = None,
    kl_mask: torch.Tensor | None = None,
    reg_weight: float = 1.0,
    reg_mask: torch.Tensor | None = None,
    capacity: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss ``mean_B(recon_B) + reg_weight * regulariser`` for ``cfg.name``.

    Args:
        cfg: objective config (see ``ObjectiveConfigLike``), valid (:func:`validate_objective`:
            the config does it when it is built, ``StepParts`` once per run; not every step).
        recon_B: per-example reconstruction loss from ``reconstruction_loss``.
        mu_BD, logvar_BD: posterior parameters.
        z_reg_BD: posterior sample with un-gated gradient (used by InfoVAE's MMD).
        prior_BD: prior samples for the MMD; ``torch.randn_like(z_reg_BD)`` when None.
        kl_mask: optional ``[B, D]`` or ``[D]`` gate on the KL gradient (value unchanged).
        reg_weight: multiplier of the whole regulariser (``warmup_weight`` during a warm-up);
            the reported terms stay unweighted except ``loss``.
        reg_mask: optional ``[B, D]`` or ``[D]`` gate on the gradient of the regulariser's own
            term (value unchanged): InfoVAE's MMD samples ``z_reg``, DIP-VAE's moments of
            ``mu``/``logvar`` (``gate.regularizer``; the KL has ``kl_mask``).
        capacity: the annealed objective's KL target C in nats (:func:`capacity_at`).

    Returns:
        ``(loss, terms)``: ``loss`` a 0-d tensor with gradient; ``terms`` detached tensors
        ``recon``, ``kl`` (0-d), ``kl_per_dim`` (``[D]``, batch mean), ``loss``, plus ``mmd``
        (unweighted MMD^2 estimate) for InfoVAE, ``dip`` (weighted penalty) for DIP-VAE or
        ``capacity`` (C) for the annealed objective.
    """
    kl_BD = gate_gradient(gaussian_kl(mu_BD, logvar_BD), kl_mask)
    kl_per_dim_D = kl_BD.mean(0)
    kl = kl_per_dim_D.sum()
    recon = _fp32(recon_B).mean()
    if reg_mask is not None:
        mu_BD, logvar_BD = gate_gradient(mu_BD, reg_mask), gate_gradient(logvar_BD, reg_mask)
        z_reg_BD = gate_gradient(z_reg_BD, reg_mask)
    reg, extra = REGULARIZERS[cfg.name](cfg, kl, mu_BD, logvar_BD, z_reg_BD, prior_BD, capacity)
    loss = recon + reg_weight * reg if reg_weight != 1.0 else recon + reg
    terms = {"recon": recon, "kl": kl, "kl_per_dim": kl_per_dim_D, **extra, "loss": loss}
    return loss, {k: v.detach() for k, v in terms.items()}
