"""Unit tests for gvae_dist.objective: golden values against torch.distributions and by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

from gvae_dist.objective import (
    MIN_CALIBRATED_STD,
    REGULARIZERS,
    dip_covariance,
    dip_lambda_d,
    dip_penalty,
    gaussian_kl,
    kl_weight,
    mmd,
    objective,
    reconstruction_loss,
    validate_objective,
    warmup_weight,
)

WAE_SCALES = [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0]


def make_cfg(**overrides):
    fields = dict(
        name="beta",
        likelihood="bernoulli",
        beta=1.0,
        alpha=0.0,
        mmd_lambda=1000.0,
        kernel="imq",
        kernel_scales=list(WAE_SCALES),
        lambda_od=10.0,
        lambda_d=100.0,
        gaussian_std=1.0,
        gaussian_calibrated=False,
        warmup_steps=0,
        gamma=1000.0,
        capacity_max=25.0,
        capacity_steps=100_000,
    )
    fields.update(overrides)
    return SimpleNamespace(**fields)


def _inputs(b=6, d=4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mu_BD = torch.randn(b, d, generator=g, dtype=dtype)
    logvar_BD = 0.5 * torch.randn(b, d, generator=g, dtype=dtype)
    eps_BD = torch.randn(b, d, generator=g, dtype=dtype)
    z_BD = mu_BD + eps_BD * torch.exp(0.5 * logvar_BD)
    prior_BD = torch.randn(b, d, generator=g, dtype=dtype)
    recon_B = torch.rand(b, generator=g, dtype=dtype) * 100
    return recon_B, mu_BD, logvar_BD, z_BD, prior_BD


# --------------------------------------------------------------------------- likelihoods


def test_bernoulli_matches_torch_distributions():
    torch.manual_seed(0)
    logits_BCHW = 3 * torch.randn(4, 3, 8, 8)
    target_BCHW = (torch.rand(4, 3, 8, 8) > 0.5).float()
    expected_B = -Bernoulli(logits=logits_BCHW).log_prob(target_BCHW).sum((1, 2, 3))
    got_B = reconstruction_loss(logits_BCHW, target_BCHW, "bernoulli")
    assert got_B.shape == (4,)
    torch.testing.assert_close(got_B, expected_B)


@pytest.mark.parametrize("std", [1.0, 0.1])
def test_gaussian_is_the_full_negative_log_density_in_nats(std):
    torch.manual_seed(0)
    logits_BCHW = torch.randn(3, 1, 16, 16)
    target_BCHW = torch.rand(3, 1, 16, 16)
    log_prob_B = Normal(torch.sigmoid(logits_BCHW), std).log_prob(target_BCHW).sum((1, 2, 3))
    got_B = reconstruction_loss(logits_BCHW, target_BCHW, "gaussian", gaussian_std=std)
    torch.testing.assert_close(got_B, -log_prob_B, rtol=1e-5, atol=1e-3)


def test_calibrated_gaussian_uses_the_batch_rmse_detached():
    torch.manual_seed(0)
    logits_BCHW = torch.randn(3, 1, 8, 8, requires_grad=True)
    target_BCHW = torch.rand(3, 1, 8, 8)
    got_B = reconstruction_loss(logits_BCHW, target_BCHW, "gaussian", gaussian_calibrated=True)
    mean_BCHW = torch.sigmoid(logits_BCHW)
    rmse = (target_BCHW - mean_BCHW).square().mean().sqrt().item()
    log_prob_B = Normal(mean_BCHW, rmse).log_prob(target_BCHW).sum((1, 2, 3))
    torch.testing.assert_close(got_B, -log_prob_B, rtol=1e-5, atol=1e-3)
    # sigma is detached: the gradient is that of a fixed-sigma Gaussian at sigma = rmse
    (grad,) = torch.autograd.grad(got_B.sum(), logits_BCHW)
    fixed_B = reconstruction_loss(logits_BCHW, target_BCHW, "gaussian", gaussian_std=rmse)
    (grad_fixed,) = torch.autograd.grad(fixed_B.sum(), logits_BCHW)
    torch.testing.assert_close(grad, grad_fixed)
    # a perfect reconstruction stays finite
    logits = torch.logit(target_BCHW.clamp(0.01, 0.99))
    perfect_B = reconstruction_loss(logits, torch.sigmoid(logits), "gaussian", gaussian_calibrated=True)
    n_pixels = 64
    expected = n_pixels * (math.log(MIN_CALIBRATED_STD) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(perfect_B, torch.full((3,), expected), rtol=1e-4, atol=1e-2)


def test_reconstruction_rejects_bad_input():
    x = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="likelihood"):
        reconstruction_loss(x, x, "laplace")
    with pytest.raises(ValueError, match="gaussian_std"):
        reconstruction_loss(x, x, "gaussian", gaussian_std=0.0)
    with pytest.raises(ValueError, match="shape"):
        reconstruction_loss(x, x[:1], "bernoulli")


def test_bf16_inputs_are_computed_in_float32():
    logits_BCHW = torch.randn(2, 1, 8, 8).bfloat16()
    assert reconstruction_loss(logits_BCHW, logits_BCHW.sigmoid(), "bernoulli").dtype == torch.float32
    _, mu_BD, logvar_BD, z_BD, prior_BD = _inputs()
    loss, _ = objective(
        make_cfg(name="infovae"),
        torch.ones(6).bfloat16(),
        mu_BD.bfloat16(),
        logvar_BD.bfloat16(),
        z_BD.bfloat16(),
        prior_BD.bfloat16(),
    )
    assert loss.dtype == torch.float32


# --------------------------------------------------------------------------- KL


def test_kl_matches_torch_distributions():
    _, mu_BD, logvar_BD, _, _ = _inputs(b=5, d=7)
    expected_BD = kl_divergence(Normal(mu_BD, torch.exp(0.5 * logvar_BD)), Normal(0.0, 1.0))
    got_BD = gaussian_kl(mu_BD, logvar_BD)
    assert got_BD.shape == (5, 7)
    torch.testing.assert_close(got_BD, expected_BD)


def test_kl_gradcheck():
    _, mu_BD, logvar_BD, _, _ = _inputs(b=3, d=2, dtype=torch.float64)
    assert torch.autograd.gradcheck(gaussian_kl, (mu_BD.requires_grad_(), logvar_BD.requires_grad_()))


# --------------------------------------------------------------------------- MMD


def test_mmd_rbf_hand_computed_three_points():
    z_BD = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    prior_BD = torch.tensor([[0.0], [0.5], [-1.0]], dtype=torch.float64)
    e = math.exp
    # D = 1, scale 1: C = 2, k(x, y) = exp(-(x - y)^2 / 2). Squared distances:
    # z-z pairs 1, 4, 1; p-p pairs 0.25, 1, 2.25; z-p rows [0, .25, 1], [1, .25, 4], [4, 2.25, 9].
    k_zz = (e(-0.5) + e(-2.0) + e(-0.5)) / 3
    k_pp = (e(-0.125) + e(-0.5) + e(-1.125)) / 3
    k_zp = (e(0) + e(-0.125) + e(-0.5) + e(-0.5) + e(-0.125) + e(-2.0) + e(-2.0) + e(-1.125) + e(-4.5)) / 9
    expected = k_zz + k_pp - 2 * k_zp
    got = mmd(z_BD, prior_BD, "rbf", [1.0])
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_mmd_imq_hand_computed_two_points():
    z_BD = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    prior_BD = torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=torch.float64)
    scales = [0.5, 2.0]

    def k(d2):  # D = 2: C = 4 * scale
        return sum(4 * s / (4 * s + d2) for s in scales)

    # d2: z-z 2; p-p 5; z-p rows [1, 4], [1, 2].
    expected = k(2.0) + k(5.0) - 2 * (k(1.0) + k(4.0) + k(1.0) + k(2.0)) / 4
    assert mmd(z_BD, prior_BD, "imq", scales).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("kernel, scales", [("rbf", [1.0]), ("imq", WAE_SCALES)])
def test_mmd_unbiased_for_identical_and_positive_for_shifted(kernel, scales):
    g = torch.Generator().manual_seed(0)
    draws, b, d = 400, 16, 3
    same, shifted = [], []
    for _ in range(draws):
        z_BD, p_BD = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
        same.append(mmd(z_BD, p_BD, kernel, scales))
        shifted.append(mmd(z_BD + 1.0, p_BD, kernel, scales))
    same_t, shifted_t = torch.stack(same), torch.stack(shifted)
    stderr = same_t.std() / math.sqrt(draws)
    # Unbiased: the mean over draws is within a few standard errors of 0, although a biased
    # (diagonal-including) estimator would be positive for every draw.
    assert same_t.mean().abs() < 4 * stderr
    assert (same_t < 0).any()
    assert shifted_t.mean() > 20 * stderr
    assert shifted_t.mean() > 10 * same_t.mean().abs()


def test_mmd_gradcheck():
    _, _, _, z_BD, prior_BD = _inputs(b=4, d=3, dtype=torch.float64)
    for kernel in ("rbf", "imq"):
        assert torch.autograd.gradcheck(
            lambda z, p, kernel=kernel: mmd(z, p, kernel, [0.5, 2.0]),
            (z_BD.clone().requires_grad_(), prior_BD.clone().requires_grad_()),
        )


def test_mmd_rejects_bad_input():
    z_BD = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="kernel"):
        mmd(z_BD, z_BD, "laplace", [1.0])
    with pytest.raises(ValueError, match="kernel_scales"):
        mmd(z_BD, z_BD, "rbf", [])
    with pytest.raises(ValueError, match="kernel_scales"):
        mmd(z_BD, z_BD, "imq", [1.0, -1.0])
    with pytest.raises(ValueError, match="same shape"):
        mmd(z_BD, z_BD[:3], "rbf", [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        mmd(z_BD[:1], z_BD[:1], "rbf", [1.0])


# --------------------------------------------------------------------------- DIP-VAE


def test_dip2_covariance_hand_computed_and_not_the_diag_bug():
    mu_BD = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    var_BD = torch.tensor([[0.5, 1.0], [1.5, 2.0]])
    logvar_BD = var_BD.log()
    # Cov[mu] (divide by B): centred means [[-1, -1], [1, 1]] -> [[1, 1], [1, 1]];
    # E[diag(var)] = diag([1.0, 1.5]).
    expected_DD = torch.tensor([[2.0, 1.0], [1.0, 2.5]])
    got_DD = dip_covariance(mu_BD, logvar_BD, "dip2")
    torch.testing.assert_close(got_DD, expected_DD)
    # The known bug: torch.diag on [B, D] is the vector [0.5, 2.0], added to every row.
    cov_mu_DD = torch.ones(2, 2)
    buggy_DD = cov_mu_DD + torch.diag(var_BD)
    torch.testing.assert_close(buggy_DD, torch.tensor([[1.5, 3.0], [1.5, 3.0]]))
    assert not torch.allclose(got_DD, buggy_DD)
    # Penalty: lambda_od * (1^2 + 1^2) + lambda_d * ((2 - 1)^2 + (2.5 - 1)^2) = 2*2 + 3*3.25.
    assert dip_penalty(got_DD, lambda_od=2.0, lambda_d=3.0).item() == pytest.approx(13.75)


def test_dip1_covariance_matches_numpy():
    _, mu_BD, logvar_BD, _, _ = _inputs(b=9, d=3)
    expected = np.cov(mu_BD.numpy(), rowvar=False, bias=True)
    got_DD = dip_covariance(mu_BD, logvar_BD, "dip1")
    np.testing.assert_allclose(got_DD.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dip_rejects_unknown_variant():
    with pytest.raises(ValueError, match="dip1"):
        dip_covariance(torch.zeros(2, 2), torch.zeros(2, 2), "dip3")


def test_dip_gradcheck():
    _, mu_BD, logvar_BD, _, _ = _inputs(b=5, d=3, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda m, lv: dip_penalty(dip_covariance(m, lv, "dip2"), 2.0, 3.0),
        (mu_BD.requires_grad_(), logvar_BD.requires_grad_()),
    )


# --------------------------------------------------------------------------- objective


def _kl(mu_BD, logvar_BD):
    q = Normal(mu_BD, torch.exp(0.5 * logvar_BD))
    return kl_divergence(q, Normal(0.0, 1.0)).sum(1).mean()


def _dip_by_hand(mu_BD, logvar_BD, lambda_od, lambda_d, with_var):
    cov = np.cov(mu_BD.numpy(), rowvar=False, bias=True)
    if with_var:
        cov = cov + np.diag(np.exp(logvar_BD.numpy()).mean(0))
    off = cov - np.diag(np.diag(cov))
    return lambda_od * (off**2).sum() + lambda_d * ((np.diag(cov) - 1) ** 2).sum()


@pytest.mark.parametrize("name", ["beta", "infovae", "dip2", "dip1"])
def test_each_regularizer_equals_hand_composed_formula(name):
    recon_B, mu_BD, logvar_BD, z_BD, prior_BD = _inputs(b=8, d=5)
    cfg = make_cfg(name=name, beta=4.0, alpha=0.5, mmd_lambda=50.0, lambda_od=3.0, lambda_d=7.0)
    loss, terms = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD, prior_BD)
    recon, kl = recon_B.mean(), _kl(mu_BD, logvar_BD)
    if name == "beta":
        expected = recon + 4.0 * kl
    elif name == "infovae":
        expected = recon + 0.5 * kl + 49.5 * mmd(z_BD, prior_BD, "imq", WAE_SCALES)
    else:
        dip = _dip_by_hand(mu_BD, logvar_BD, 3.0, 7.0, with_var=name == "dip2")
        expected = recon + kl + float(dip)
        assert terms["dip"].item() == pytest.approx(dip, rel=1e-5)
    torch.testing.assert_close(loss, torch.as_tensor(expected, dtype=loss.dtype))
    torch.testing.assert_close(terms["loss"], loss)
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    assert terms["kl_per_dim"].shape == (5,)
    torch.testing.assert_close(terms["kl_per_dim"].sum(), kl)
    assert ("mmd" in terms) == (name == "infovae")
    assert ("dip" in terms) == name.startswith("dip")
    assert all(not t.requires_grad for t in terms.values())


def test_beta_one_objective_is_negative_elbo():
    torch.manual_seed(0)
    b, d = 4, 3
    mu_BD, logvar_BD = torch.randn(b, d), 0.3 * torch.randn(b, d)
    logits_BCHW = torch.randn(b, 1, 8, 8)
    x_BCHW = (torch.rand(b, 1, 8, 8) > 0.5).float()
    recon_B = reconstruction_loss(logits_BCHW, x_BCHW, "bernoulli")
    loss, _ = objective(make_cfg(beta=1.0), recon_B, mu_BD, logvar_BD, mu_BD)
    log_lik_B = Bernoulli(logits=logits_BCHW).log_prob(x_BCHW).sum((1, 2, 3))
    kl_B = kl_divergence(Normal(mu_BD, torch.exp(0.5 * logvar_BD)), Normal(0.0, 1.0)).sum(1)
    neg_elbo = -(log_lik_B - kl_B).mean()
    torch.testing.assert_close(loss, neg_elbo)


def test_infovae_draws_prior_when_not_given():
    recon_B, mu_BD, logvar_BD, z_BD, _ = _inputs()
    cfg = make_cfg(name="infovae")
    torch.manual_seed(3)
    loss_drawn, _ = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD)
    torch.manual_seed(3)
    loss_given, _ = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD, torch.randn_like(z_BD))
    torch.testing.assert_close(loss_drawn, loss_given)


@pytest.mark.parametrize("mask_shape", [(6, 4), (4,)])
def test_kl_mask_gates_gradient_not_value(mask_shape):
    recon_B, mu_BD, logvar_BD, z_BD, _ = _inputs()
    mask = torch.ones(mask_shape)
    mask[..., 2:] = 0.0
    mu_BD.requires_grad_()
    logvar_BD.requires_grad_()
    cfg = make_cfg(beta=2.0)
    loss_open, _ = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD)
    loss_gated, _ = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD, kl_mask=mask)
    torch.testing.assert_close(loss_gated, loss_open)
    g_open = torch.autograd.grad(loss_open, (mu_BD, logvar_BD))
    g_gated = torch.autograd.grad(loss_gated, (mu_BD, logvar_BD))
    for open_BD, gated_BD in zip(g_open, g_gated):
        assert torch.equal(gated_BD[:, 2:], torch.zeros_like(gated_BD[:, 2:]))
        torch.testing.assert_close(gated_BD[:, :2], open_BD[:, :2])
        assert open_BD[:, 2:].abs().sum() > 0


@pytest.mark.parametrize("name", ["infovae", "dip2"])
def test_reg_mask_gates_the_regulariser_term_not_the_kl_or_value(name):
    """gate.regularizer: the MMD samples' / DIP moments' gradient reaches only open dims; the
    KL's gradient (kl_mask unset) and every value stay as they are."""
    recon_B, mu_BD, logvar_BD, z_BD, prior_BD = _inputs()
    b = mu_BD.shape[0]
    mask_BD = torch.ones_like(mu_BD)
    mask_BD[:3, 2:] = 0.0  # half the batch closes dims 2-3
    cfg = make_cfg(name=name, mmd_lambda=50.0, lambda_od=5.0)
    leaves = [t.clone().requires_grad_() for t in (mu_BD, logvar_BD, z_BD)]
    loss_open, _ = objective(cfg, recon_B, *leaves, prior_BD)
    loss_gated, _ = objective(cfg, recon_B, *leaves, prior_BD, reg_mask=mask_BD)
    torch.testing.assert_close(loss_gated, loss_open)
    g_open = torch.autograd.grad(loss_open, leaves, allow_unused=True, materialize_grads=True)
    g_gated = torch.autograd.grad(loss_gated, leaves, allow_unused=True, materialize_grads=True)
    # What is left on closed entries: the un-gated KL's gradient (KL weight 1 - alpha = 1 here)
    # for mu / logvar, nothing for the MMD samples z.
    kl_grad = (leaves[0].detach() / b, 0.5 * (leaves[1].detach().exp() - 1.0) / b, torch.zeros_like(z_BD))
    for open_BD, gated_BD, left_BD in zip(g_open, g_gated, kl_grad):
        torch.testing.assert_close(gated_BD[3:], open_BD[3:])  # open rows: unchanged
        torch.testing.assert_close(gated_BD[:3, :2], open_BD[:3, :2])
        torch.testing.assert_close(gated_BD[:3, 2:], left_BD[:3, 2:])
    moved = g_open[2] if name == "infovae" else g_open[0]  # the regulariser's own term did reach them
    assert not torch.allclose(moved[:3, 2:], kl_grad[2 if name == "infovae" else 0][:3, 2:])


def test_warmup_scales_the_whole_regulariser_and_nothing_else():
    """objective.warmup_steps ramps every regulariser weight (KL, MMD, DIP) linearly to full;
    the reconstruction and the reported unweighted terms stay as they are."""
    assert [warmup_weight(4, s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_weight(0, 0) == 1.0
    recon_B, mu_BD, logvar_BD, z_BD, prior_BD = _inputs(b=8, d=5)
    for name in ("beta", "infovae", "dip2"):
        cfg = make_cfg(name=name, beta=4.0, mmd_lambda=50.0)
        full, terms = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD, prior_BD)
        quarter, terms_q = objective(cfg, recon_B, mu_BD, logvar_BD, z_BD, prior_BD, reg_weight=0.25)
        recon = recon_B.mean()
        torch.testing.assert_close(quarter - recon, 0.25 * (full - recon))
        torch.testing.assert_close(terms_q["kl"], terms["kl"])
    with pytest.raises(ValueError, match="objective.warmup_steps"):
        validate_objective(make_cfg(warmup_steps=-1))


def test_regularizers_are_one_lookup():
    """Every objective.name the config accepts has its regulariser, and no other exists."""
    import typing

    from gvae_dist.config import ObjectiveConfig

    names = typing.get_args(typing.get_type_hints(ObjectiveConfig)["name"])
    assert set(REGULARIZERS) == set(names) == {"beta", "infovae", "dip2", "dip1", "annealed"}


def test_dip_lambda_d_defaults_to_disentanglement_lib_factor():
    # DIP-VAE-II: lambda_d = lambda_od; DIP-VAE-I: lambda_d = 10 lambda_od; an explicit value wins
    assert dip_lambda_d(make_cfg(name="dip2", lambda_od=3.0, lambda_d=None)) == 3.0
    assert dip_lambda_d(make_cfg(name="dip1", lambda_od=3.0, lambda_d=None)) == 30.0
    assert dip_lambda_d(make_cfg(name="dip2", lambda_od=3.0, lambda_d=7.0)) == 7.0
    _, mu_BD, logvar_BD, z_BD, _ = _inputs(b=8, d=5)
    recon_B = torch.zeros(8)
    for name, ratio in (("dip2", 1.0), ("dip1", 10.0)):
        _, terms = objective(make_cfg(name=name, lambda_od=3.0, lambda_d=None), recon_B, mu_BD, logvar_BD, z_BD)
        expected = _dip_by_hand(mu_BD, logvar_BD, 3.0, 3.0 * ratio, with_var=name == "dip2")
        assert terms["dip"].item() == pytest.approx(expected, rel=1e-5)


def test_kl_weight_per_objective():
    assert kl_weight(make_cfg(name="beta", beta=4.0)) == 4.0
    assert kl_weight(make_cfg(name="infovae", alpha=-0.35)) == pytest.approx(1.35)
    assert kl_weight(make_cfg(name="dip2")) == 1.0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"name": "infovae", "alpha": 0.0, "mmd_lambda": 0.5},
            r"objective\.alpha.*objective\.mmd_lambda",
        ),
        ({"name": "infovae", "alpha": 0.5, "mmd_lambda": 0.5}, r"objective\.mmd_lambda"),
        ({"name": "infovae", "alpha": 1.5, "mmd_lambda": 1.0}, r"objective\.alpha"),
        ({"name": "vae"}, r"objective\.name.*'beta', 'infovae', 'dip2', 'dip1'"),
        ({"beta": -1.0}, r"objective\.beta"),
        ({"beta": float("nan")}, r"objective\.beta"),
        ({"likelihood": "laplace"}, r"objective\.likelihood"),
        ({"gaussian_std": 0.0}, r"objective\.gaussian_std"),
        ({"lambda_od": -1.0}, r"objective\.lambda_od"),
        ({"lambda_d": -1.0}, r"objective\.lambda_d"),
        ({"kernel": "poly"}, r"objective\.kernel"),
        ({"kernel_scales": []}, r"objective\.kernel_scales"),
    ],
)
def test_validate_objective_rejects(overrides, match):
    cfg = make_cfg(**overrides)
    with pytest.raises(ValueError, match=match):
        validate_objective(cfg)
    from gvae_dist.step import StepParts

    with pytest.raises(ValueError, match=match):  # a run's step parts check it once, up front
        StepParts(None, None, None, None, None, gate=None, objective=cfg)


def test_validate_objective_accepts_defaults_and_mmd_vae():
    validate_objective(make_cfg())
    validate_objective(make_cfg(name="infovae", alpha=0.0, mmd_lambda=1000.0))
    # A negative MMD weight is fine when the objective does not use the MMD.
    validate_objective(make_cfg(name="beta", alpha=0.0, mmd_lambda=0.5))


def test_annealed_capacity_is_burgess_gamma_abs_kl_minus_c():
    """Burgess et al. 2018 eq. (8): gamma |KL - C|, C rising linearly to capacity_max; the gradient
    pushes the KL up while it is below C and down above it."""
    from gvae_dist.objective import capacity_at, kl_weight

    cfg = make_cfg(name="annealed", gamma=100.0, capacity_max=20.0, capacity_steps=1000)
    assert [capacity_at(cfg, s) for s in (0, 250, 1000, 5000)] == [0.0, 5.0, 20.0, 20.0]
    assert capacity_at(make_cfg(name="annealed", capacity_steps=0), 0) == 25.0
    assert capacity_at(make_cfg(name="beta"), 500) == 0.0 and kl_weight(cfg) == 100.0
    recon_B, mu_BD, logvar_BD, z_BD, _ = _inputs()
    kl = gaussian_kl(mu_BD, logvar_BD).mean(0).sum()
    for capacity in (0.0, float(kl) + 3.0):
        mu = mu_BD.clone().requires_grad_(True)
        loss, terms = objective(cfg, recon_B, mu, logvar_BD, z_BD, capacity=capacity)
        torch.testing.assert_close(terms["loss"], recon_B.mean() + 100.0 * (kl - capacity).abs())
        assert float(terms["capacity"]) == pytest.approx(capacity)
        loss.backward()
        kl_grad_sign = 1.0 if capacity < float(kl) else -1.0  # d|KL - C|/dKL
        expected = kl_grad_sign * 100.0 * mu_BD.detach() / len(mu_BD)  # dKL/dmu = mu / B
        torch.testing.assert_close(mu.grad, expected)
    with pytest.raises(ValueError, match="objective.capacity_max must be >= 0"):
        validate_objective(make_cfg(name="annealed", capacity_max=-1.0))
