"""The fused gated reparameterisation: gradients, equivalences, autocast, compile."""

import pytest
import torch

from gvae_dist.gate import PartitionSpec, gate_gradient, gated_reparameterize


def _inputs(B=6, D=5, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, dtype=dtype, generator=g, requires_grad=True)
    logvar = (0.3 * torch.randn(B, D, dtype=dtype, generator=g)).requires_grad_()
    eps = torch.randn(B, D, dtype=dtype, generator=g)
    mask = (torch.rand(B, D, generator=g) > 0.5).to(dtype)
    return mu, logvar, eps, mask


def _reference(mu, logvar, eps, mask):
    z = mu + eps * torch.exp(0.5 * logvar)
    return mask * z + (1 - mask) * z.detach(), z


def test_gradcheck_float64_both_outputs():
    mu, logvar, eps, mask = _inputs()
    eps.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: gated_reparameterize(a, b, c, mask)[1], (mu, logvar, eps))
    # z_dec alone: gradcheck of a gated function compares against the ungated numerical
    # jacobian, so check it with an all-ones mask (then they must agree)
    ones = torch.ones_like(mask)
    assert torch.autograd.gradcheck(lambda a, b, c: gated_reparameterize(a, b, c, ones)[0], (mu, logvar, eps))


@pytest.mark.parametrize("shared_mask", [False, True])
def test_matches_reference_composition(shared_mask):
    mu, logvar, eps, mask = _inputs(dtype=torch.float32)
    if shared_mask:
        mask = mask[0]
    w_dec, w_reg = torch.randn(6, 5), torch.randn(6, 5)
    z_dec, z_reg = gated_reparameterize(mu, logvar, eps, mask)
    ((z_dec * w_dec).sum() + (z_reg**2 * w_reg).sum()).backward()
    got = mu.grad.clone(), logvar.grad.clone()
    mu.grad = logvar.grad = None
    ref_dec, ref_reg = _reference(mu, logvar, eps, mask)
    ((ref_dec * w_dec).sum() + (ref_reg**2 * w_reg).sum()).backward()
    torch.testing.assert_close(z_dec, ref_dec, rtol=0, atol=0)
    torch.testing.assert_close(got[0], mu.grad, rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], logvar.grad, rtol=0, atol=1e-6)


def test_all_ones_mask_is_exactly_ungated():
    mu, logvar, eps, _ = _inputs(dtype=torch.float32)
    w = torch.randn(6, 5)
    z, _ = gated_reparameterize(mu, logvar, eps, torch.ones(6, 5))
    (z * w).sum().backward()
    g = mu.grad.clone(), logvar.grad.clone()
    mu.grad = logvar.grad = None
    z_plain, _ = gated_reparameterize(mu, logvar, eps, None)
    (z_plain * w).sum().backward()
    assert torch.equal(z, z_plain)
    assert torch.equal(g[0], mu.grad) and torch.equal(g[1], logvar.grad)


def test_zero_mask_blocks_and_regulariser_path_is_ungated():
    mu, logvar, eps, _ = _inputs(dtype=torch.float32)
    mask = torch.zeros(6, 5)
    mask[:, :2] = 1
    z_dec, z_reg = gated_reparameterize(mu, logvar, eps, mask)
    z_dec.sum().backward(retain_graph=True)
    assert (mu.grad[:, 2:] == 0).all() and (logvar.grad[:, 2:] == 0).all()
    assert (mu.grad[:, :2] != 0).all()
    mu.grad = None
    z_reg.sum().backward()
    assert (mu.grad != 0).all()


def test_gate_gradient_identity_forward_masked_backward():
    x = torch.randn(4, 3, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0])
    y = gate_gradient(x, mask)
    assert torch.equal(y, x)
    (y * 2).sum().backward()
    assert torch.equal(x.grad, torch.tensor([[2.0, 0.0, 2.0]] * 4))


def test_bf16_autocast_cpu():
    mu, logvar, eps, mask = _inputs(dtype=torch.float32)
    lin = torch.nn.Linear(5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, _ = gated_reparameterize(lin(mu), lin(logvar), eps, mask)
        out = lin(z).float().sum()
    out.backward()
    # bf16 mu/logvar with fp32 noise promote to an fp32 z, which the next layer casts back
    assert z.dtype == torch.float32 and lin.weight.grad.dtype == torch.float32
    assert torch.isfinite(mu.grad).all() and mu.grad.abs().sum() > 0


def test_compile_without_graph_breaks():
    import torch._dynamo as dynamo

    def fn(mu, logvar, eps, mask):
        z_dec, z_reg = gated_reparameterize(mu, logvar, eps, mask)
        return (z_dec**2).sum() + z_reg.sum()

    mu, logvar, eps, mask = _inputs(dtype=torch.float32)
    explanation = dynamo.explain(fn)(mu, logvar, eps, mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    compiled(mu, logvar, eps, mask).backward()
    g = mu.grad.clone()
    mu.grad = None
    fn(mu, logvar, eps, mask).backward()
    torch.testing.assert_close(g, mu.grad)


def test_saves_no_more_than_plain_composition():
    mu, logvar, eps, mask = _inputs(dtype=torch.float32)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gated_reparameterize(mu, logvar, eps, mask)
    n_fused = sum(t.numel() for t in saved if t is not mask)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mu + eps * torch.exp(0.5 * logvar)
    n_plain = sum(t.numel() for t in saved)
    assert n_fused <= n_plain


def test_partition_spec_validation():
    spec = PartitionSpec.parse("pose:4, expression:4, rest:2", 10)
    assert spec.names == ["pose", "expression", "rest"]
    assert spec.masks().sum(1).tolist() == [4, 4, 2]
    assert spec.masks()[1, 4:8].sum() == 4
    with pytest.raises(ValueError, match="latent_dim is 11"):
        PartitionSpec.parse("pose:4, expression:4, rest:2", 11)
    with pytest.raises(ValueError, match="appears twice"):
        PartitionSpec.parse("a:1, a:1", 2)
    with pytest.raises(ValueError, match="not 'name:size'"):
        PartitionSpec.parse("a:x", 2)


def test_closed_code_fills_closed_dims_and_keeps_the_gated_gradient():
    mu, logvar, eps, mask = _inputs(dtype=torch.float32)
    closed = torch.randn(6, 5, requires_grad=True)
    w = torch.randn(6, 5)
    z_dec, z_reg = gated_reparameterize(mu, logvar, eps, mask, closed)
    z = mu + eps * torch.exp(0.5 * logvar)
    torch.testing.assert_close(z_dec, torch.where(mask.bool(), z, closed), rtol=0, atol=0)
    torch.testing.assert_close(z_reg, z, rtol=0, atol=0)
    (z_dec * w).sum().backward()
    got = mu.grad.clone(), logvar.grad.clone()
    assert closed.grad is None  # the partner's code gets no gradient
    mu.grad = logvar.grad = None
    z_plain, _ = gated_reparameterize(mu, logvar, eps, mask)
    (z_plain * w).sum().backward()
    assert torch.equal(got[0], mu.grad) and torch.equal(got[1], logvar.grad)


def test_model_closed_code_target_decodes_the_partners_code():
    from gvae_dist.model import GatedVAE

    torch.manual_seed(0)
    model = GatedVAE(1, 32, 4, channels=[8], hidden=16)
    x, partner = torch.rand(3, 1, 32, 32), torch.rand(3, 1, 32, 32)
    mask = torch.tensor([[1.0, 1, 0, 0]] * 3)
    eps = torch.zeros(3, 4)
    closed = model.encode(partner)[0].detach()  # the partner's posterior mean
    out = model(x, mask=mask, eps_BD=eps, closed_BD=closed)
    mu_x = model.encode(x)[0]
    torch.testing.assert_close(out.z_dec[:, :2], mu_x[:, :2])
    torch.testing.assert_close(out.z_dec[:, 2:], closed[:, 2:])
    torch.testing.assert_close(out.logits, model.decode(torch.cat([mu_x[:, :2], closed[:, 2:]], 1)))


def test_decoder_gate_keeps_gated_rows_out_of_the_decoder_weights():
    from gvae_dist.model import GatedVAE

    torch.manual_seed(0)
    model = GatedVAE(1, 32, 4, channels=[8], hidden=16)
    x = torch.rand(4, 1, 32, 32)
    mask = torch.tensor([[1.0, 1, 0, 0]] * 4)

    def grads(update):
        model.zero_grad()
        out = model(x, mask=mask, eps_BD=torch.zeros(4, 4), decoder_update_B=update)
        (out.logits**2).sum().backward()
        return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    logits_all, g_all = grads(None)
    logits_none, g_none = grads(torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(logits_none, logits_all)
    for name, g in g_none.items():
        if name.startswith("decoder."):
            assert (g == 0).all(), name  # gated-only batch: the decoder learns nothing
        else:
            torch.testing.assert_close(g, g_all[name])  # the encoder path is unchanged
    assert (g_none["encoder.mu_head.weight"][2:] == 0).all()  # closed dims: no gradient
    # one identity row: the decoder gets exactly that row's gradient
    update = torch.tensor([False, True, False, False])
    _, g_mixed = grads(update)
    model.zero_grad()
    out = model(x[1:2], mask=mask[1:2], eps_BD=torch.zeros(1, 4))
    (out.logits**2).sum().backward()
    for name, p in model.decoder.named_parameters():
        torch.testing.assert_close(g_mixed[f"decoder.{name}"], p.grad, rtol=1e-5, atol=1e-6)


def test_drop_high_loss_closes_the_gate_for_the_highest_loss_candidates_only():
    from gvae_dist.gate import drop_high_loss

    loss_B = torch.tensor([5.0, 9.0, 1.0, 7.0, 100.0, 3.0, 8.0, 2.0], requires_grad=True)
    cand_B = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1], dtype=torch.bool)  # 100 is not a candidate
    out_B, dropped_B = drop_high_loss(loss_B, cand_B, 0.3)  # round(0.3 * 7) = 2: 9 and 8
    assert dropped_B.tolist() == [False, True, False, False, False, False, True, False]
    assert torch.equal(out_B.detach(), loss_B.detach())  # values kept for the logs
    out_B.sum().backward()
    assert loss_B.grad.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    same_B, none_B = drop_high_loss(loss_B, cand_B, 0.0)
    assert same_B is loss_B and not none_B.any()
    _, all_B = drop_high_loss(loss_B, torch.zeros(8, dtype=torch.bool), 0.5)
    assert not all_B.any()  # no candidates, nothing dropped
