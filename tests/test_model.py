"""Unit tests for gvae_dist.model: shapes, parameter count, gated gradients into the encoder."""

from __future__ import annotations

import pytest
import torch

from gvae_dist.model import GatedVAE, VAEOutput, layer_channels


@pytest.mark.parametrize("image_size", [32, 64, 128])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_output_shapes(image_size, in_channels):
    torch.manual_seed(0)
    model = GatedVAE(in_channels, image_size, latent_dim=7)
    x_BCHW = torch.rand(2, in_channels, image_size, image_size)
    out = model(x_BCHW)
    assert isinstance(out, VAEOutput)
    for t in (out.mu, out.logvar, out.z_dec, out.z_reg):
        assert t.shape == (2, 7)
    assert out.logits.shape == x_BCHW.shape
    assert model.decode(out.z_dec).shape == x_BCHW.shape


def test_layer_count_follows_image_size():
    assert layer_channels(32, (32, 32, 64, 64)) == [32, 32, 64]
    assert layer_channels(64, (32, 32, 64, 64)) == [32, 32, 64, 64]
    assert layer_channels(128, (32, 32, 64, 64)) == [32, 32, 64, 64, 64]
    model = GatedVAE(1, 128, 4)
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    deconvs = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == len(deconvs) == 5


@pytest.mark.parametrize("image_size", [28, 48, 256, 0])
def test_bad_image_size_raises(image_size):
    with pytest.raises(ValueError, match="image_size"):
        GatedVAE(1, image_size, 10)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"channels": ()}, "channels"),
        ({"channels": (32, 0)}, "channels"),
        ({"hidden": 0}, "hidden"),
        ({"latent_dim": 0}, "latent_dim"),
    ],
)
def test_bad_arguments_raise(kwargs, key):
    args = {"in_channels": 1, "image_size": 64, "latent_dim": 10, **kwargs}
    with pytest.raises(ValueError, match=key):
        GatedVAE(**args)


def _conv(cin, cout):
    return cin * cout * 4 * 4 + cout


def _linear(fin, fout):
    return fin * fout + fout


def test_default_param_count_matches_reference_net():
    c, d = 3, 10
    encoder = (
        _conv(c, 32) + _conv(32, 32) + _conv(32, 64) + _conv(64, 64) + _linear(64 * 4 * 4, 256) + 2 * _linear(256, d)
    )
    decoder = _linear(d, 256) + _linear(256, 64 * 4 * 4) + _conv(64, 64) + _conv(64, 32) + _conv(32, 32) + _conv(32, c)
    model = GatedVAE(c, 64, d)
    assert sum(p.numel() for p in model.encoder.parameters()) == encoder
    assert sum(p.numel() for p in model.decoder.parameters()) == decoder
    # Ballpark of the beta-VAE / disentanglement_lib 64x64 net: about 0.77M parameters, most of
    # them in the two 1024x256 dense layers.
    assert 700_000 < encoder + decoder < 850_000


def test_mask_zero_gates_encoder_heads_exactly():
    torch.manual_seed(0)
    model = GatedVAE(1, 64, latent_dim=10)
    x_BCHW = torch.rand(4, 1, 64, 64)
    mask_BD = torch.ones(4, 10)
    mask_BD[:, 4:] = 0.0
    out = model(x_BCHW, mask=mask_BD)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, x_BCHW, reduction="sum")
    loss.backward()
    enc = model.encoder
    for head in (enc.mu_head, enc.logvar_head):
        assert torch.equal(head.weight.grad[4:], torch.zeros_like(head.weight.grad[4:]))
        assert torch.equal(head.bias.grad[4:], torch.zeros_like(head.bias.grad[4:]))
        assert (head.weight.grad[:4].abs().sum(1) > 0).all()
        assert (head.bias.grad[:4].abs() > 0).all()
    # Open dims still train the shared trunk.
    assert enc.trunk[0].weight.grad.abs().sum() > 0


def test_all_ones_mask_equals_ungated():
    torch.manual_seed(0)
    model = GatedVAE(1, 32, latent_dim=6)
    x_BCHW = torch.rand(3, 1, 32, 32)
    eps_BD = torch.randn(3, 6)
    grads = []
    for mask in (None, torch.ones(6)):
        model.zero_grad()
        out = model(x_BCHW, mask=mask, eps_BD=eps_BD)
        out.logits.square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for g_none, g_ones in zip(*grads):
        torch.testing.assert_close(g_none, g_ones, rtol=0, atol=0)


def test_eps_is_used_and_z_values_agree():
    torch.manual_seed(0)
    model = GatedVAE(1, 32, latent_dim=5)
    x_BCHW = torch.rand(2, 1, 32, 32)
    eps_BD = torch.randn(2, 5)
    out = model(x_BCHW, mask=torch.ones(2, 5), eps_BD=eps_BD)
    expected_BD = out.mu + eps_BD * torch.exp(0.5 * out.logvar)
    torch.testing.assert_close(out.z_dec, expected_BD)
    torch.testing.assert_close(out.z_reg, expected_BD)


def test_channels_last_input_matches_contiguous():
    torch.manual_seed(0)
    model = GatedVAE(3, 64, latent_dim=10)
    x_BCHW = torch.rand(2, 3, 64, 64)
    eps_BD = torch.randn(2, 10)
    ref = model(x_BCHW, eps_BD=eps_BD)
    out = model(x_BCHW.to(memory_format=torch.channels_last), eps_BD=eps_BD)
    torch.testing.assert_close(out.mu, ref.mu, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_cpu_forward_backward():
    torch.manual_seed(0)
    model = GatedVAE(1, 64, latent_dim=10)
    x_BCHW = torch.rand(2, 1, 64, 64).to(memory_format=torch.channels_last)
    mask_BD = torch.ones(2, 10)
    mask_BD[:, 5:] = 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x_BCHW, mask=mask_BD)
        loss = out.logits.float().square().mean()
    assert out.logits.dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(loss)
    grad = model.encoder.mu_head.weight.grad
    assert torch.equal(grad[5:], torch.zeros_like(grad[5:]))
    assert grad[:5].abs().sum() > 0


def test_eval_mode_restores_the_mode_it_found():
    from gvae_dist.model import eval_mode

    net = torch.nn.Sequential(torch.nn.Dropout(0.5))
    for training in (True, False):
        net.train(training)
        with eval_mode(net) as m:
            assert m is net and not net.training
        assert net.training is training
    net.train()
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("boom")
    assert net.training  # restored on the way out of an error too


def test_center_codes_removes_a_constant_offset_in_training_and_eval():
    """An encoder whose means sit 5 prior sigmas off zero: centred codes have batch mean 0 in
    training (the KL cannot be spent on the offset), the running mean learns the offset, and eval
    subtracts it; the gradient reaches the encoder through the centring; only a centring model
    carries the extra buffer, so older checkpoints load unchanged."""
    torch.manual_seed(0)
    model = GatedVAE(1, 32, latent_dim=4, center_codes=True)
    with torch.no_grad():
        model.encoder.mu_head.bias += 5.0
    x = torch.rand(16, 1, 32, 32)
    raw_mu, _ = model.encoder(x)
    assert raw_mu.mean(0).abs().min() > 3.0
    mu, _ = model.encode(x)
    assert torch.allclose(mu.mean(0), torch.zeros(4), atol=1e-5)
    torch.testing.assert_close(mu, raw_mu - raw_mu.mean(0))
    mu.pow(2).sum().backward()
    assert model.encoder.mu_head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for _ in range(100):  # momentum 0.1: 0.9**100 of the start remains
            model.encode(x)
    torch.testing.assert_close(model.code_mean, raw_mu.mean(0).detach(), atol=1e-3, rtol=0)
    model.eval()
    eval_mu, _ = model.encode(x[:1])  # one image: no batch statistics needed
    torch.testing.assert_close(eval_mu, (raw_mu[:1] - model.code_mean).detach(), atol=1e-5, rtol=0)
    assert "code_mean" in model.state_dict()
    assert "code_mean" not in GatedVAE(1, 32, latent_dim=4).state_dict()


def test_refine_channels_add_a_full_resolution_stage_and_zero_keeps_the_plain_decoder():
    torch.manual_seed(0)
    plain = GatedVAE(3, 32, latent_dim=4)
    refined = GatedVAE(3, 32, latent_dim=4, refine_channels=8)
    # 0: the same parameters under the same names, so older checkpoints load
    assert GatedVAE(3, 32, latent_dim=4, refine_channels=0).state_dict().keys() == plain.state_dict().keys()
    last_t = [m for m in refined.decoder.deconv if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    final = refined.decoder.deconv[-1]
    assert last_t.out_channels == 8 and isinstance(final, torch.nn.Conv2d)
    assert (final.in_channels, final.out_channels, final.kernel_size, final.stride) == (8, 3, (3, 3), (1, 1))
    x = torch.rand(2, 3, 32, 32)
    assert refined(x).logits.shape == x.shape
    extra = sum(p.numel() for p in refined.parameters()) - sum(p.numel() for p in plain.parameters())
    # the last transposed conv widens from 3 to 8 outputs, plus the 3x3 conv
    assert extra == last_t.in_channels * (8 - 3) * 16 + (8 - 3) + 8 * 3 * 9 + 3
    with pytest.raises(ValueError, match="refine_channels"):
        GatedVAE(3, 32, latent_dim=4, refine_channels=-1)
    # the config key reaches the model that training, evaluation and the loaders build
    from gvae_dist.config import load_config
    from gvae_dist.model import build_model

    built = build_model(load_config(None, ["data.image_size=32", "model.refine_channels=8"]), channels=3)
    assert isinstance(built.decoder.deconv[-1], torch.nn.Conv2d) and built.decoder.deconv[-1].in_channels == 8


def test_coord_channels_show_every_decoder_convolution_where_its_pixels_are():
    from gvae_dist.model import AddCoords, Decoder

    h = torch.zeros(2, 5, 4, 8)
    out = AddCoords()(h)
    assert out.shape == (2, 7, 4, 8) and not out[:, :5].any()
    assert torch.equal(out[0, 5, 0], torch.linspace(-1, 1, 8))  # x varies along the width
    assert torch.equal(out[1, 6, :, 3], torch.linspace(-1, 1, 4))  # y along the height
    torch.manual_seed(0)
    plain, coord = Decoder(3, [8, 16, 16], 32, 4), Decoder(3, [8, 16, 16], 32, 4, refine=6, coords=True)
    convs = [m for m in coord.deconv if isinstance(m, torch.nn.ConvTranspose2d | torch.nn.Conv2d)]
    assert [m.in_channels for m in convs] == [16 + 2, 16 + 2, 8 + 2, 6 + 2]
    before = [type(coord.deconv[i - 1]) for i, m in enumerate(coord.deconv) if m in convs]
    assert before == [AddCoords] * 4
    z = torch.randn(3, 4)
    assert coord(z).shape == plain(z).shape == (3, 3, 32, 32)
