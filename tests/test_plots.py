"""Evaluation pictures: KL per dim by hand, PNG pixel sizes, and evaluate_model writing them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gvae_dist.config import load_config
from gvae_dist.eval_runner import evaluate_model
from gvae_dist.model import build_model
from gvae_dist.plots import (
    DPI,
    heatmap_figure,
    kl_per_dim,
    plot_bars,
    plot_heatmap,
    plot_kl,
    plot_reconstructions,
    plot_traversals,
    traversal_figsize,
)

TINY = [
    "data.image_size=32",
    "model.channels=[8,8,16]",
    "model.hidden=32",
    "data.num_eval=300",
    "eval.num_train=150",
    "eval.num_test=100",
    "tracking.enabled=false",
]


def _png_size(path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        return im.size


def test_kl_per_dim_matches_hand_values():
    mu = np.array([[0.0, 1.0], [0.0, 1.0]])
    logvar = np.array([[0.0, np.log(2.0)], [0.0, np.log(2.0)]])
    # dim 0 is the prior (KL 0); dim 1: 0.5 * (1 + 2 - ln 2 - 1)
    np.testing.assert_allclose(kl_per_dim(mu, logvar), [0.0, 0.5 * (2.0 - np.log(2.0))])
    with pytest.raises(ValueError, match="must both be"):
        kl_per_dim(mu, logvar[:, :1])


def test_pictures_have_the_expected_pixel_size(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    spec = cfg.partition_spec()
    model = build_model(cfg, channels=3)
    x = torch.rand(2, 3, 32, 32)
    path = plot_traversals(model, x, spec, tmp_path / "t.png", steps=5)
    w, h = traversal_figsize(cfg.model.latent_dim, seeds=2, steps=5)
    assert _png_size(path) == (round(w * DPI), round(h * DPI))

    imp = np.random.default_rng(0).random((10, 6))
    path = plot_heatmap(imp, [f"z{i}" for i in range(10)], list("abcdef"), "imp", tmp_path / "h.png")
    assert _png_size(path) == (round((0.7 * 6 + 2.5) * DPI), round((0.4 * 10 + 1.5) * DPI))
    with pytest.raises(ValueError, match="labels"):
        plot_heatmap(imp, ["z0"], list("abcdef"), "imp", tmp_path / "bad.png")

    path = plot_kl(np.arange(10.0), spec, tmp_path / "k.png")
    assert _png_size(path) == (round((0.4 * 10 + 2.0) * DPI), 300)


def test_bar_plot_has_its_pixel_size_and_refuses_ragged_inputs(tmp_path):
    """The study's results.png: one bar per group, 1 in per bar + 2 in wide, 3.5 in high."""
    path = plot_bars(
        ["a\ngated", "a\nungated", "b\ngated"],
        [0.5, 0.25, 0.75],
        [0.1, 0.0, 0.05],
        ["tab:blue", "tab:orange", "tab:blue"],
        "DCI",
        "t",
        tmp_path / "b.png",
    )
    assert _png_size(path) == (round((1.0 * 3 + 2.0) * DPI), round(3.5 * DPI))
    with pytest.raises(ValueError, match="2 labels, 3 means"):
        plot_bars(["a", "b"], [0.5, 0.25, 0.75], [0.1, 0.0], ["r", "g"], "DCI", "t", tmp_path / "bad.png")


def test_partition_heatmap_labels_lie_inside_the_image(tmp_path):
    """The partition heatmap (2 rows) used to cut its rotated factor names ("itch", "outh")."""
    import matplotlib.pyplot as plt

    names = ["yaw", "pitch", "roll", "mouth", "eyes", "brow", "face_width", "skin_tone", "light"]
    imp = np.random.default_rng(0).random((2, len(names)))
    fig = heatmap_figure(imp, ["pose", "expression"], names, "importance summed per partition")
    fig.canvas.draw()
    ax = fig.axes[0]
    box = fig.bbox
    texts = [*ax.get_xticklabels(), *ax.get_yticklabels(), ax.title]
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    for t in texts:
        ext = t.get_window_extent()
        assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0 and ext.y1 <= box.y1, (t.get_text(), ext, box)
    plt.close(fig)
    path = plot_heatmap(imp, ["pose", "expression"], names, "imp", tmp_path / "p.png")
    assert _png_size(path) == (round((0.7 * 9 + 2.5) * DPI), round((0.4 * 2 + 1.5) * DPI))


def test_evaluate_model_writes_the_pictures(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    model = build_model(cfg, channels=3)
    result = evaluate_model(cfg, model, "cpu", tmp_path)
    assert (tmp_path / "metrics.json").is_file()
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "importance.png",
        "kl_per_dim.png",
        "partition_importance.png",
        "reconstructions.png",
        "traversals.png",
    ]
    w, h = traversal_figsize(cfg.model.latent_dim, seeds=3, steps=7)
    assert _png_size(tmp_path / "traversals.png") == (round(w * DPI), round(h * DPI))
    assert "disentanglement" in result


def test_reconstructions_png_shows_each_input_above_its_decoded_posterior_mean(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_config(None, TINY), channels=3)
    x = torch.rand(3, 3, 32, 32)
    path = plot_reconstructions(model, x, tmp_path)
    assert path == tmp_path / "reconstructions.png" and model.training  # eval mode restored
    grid = np.asarray(Image.open(path)).astype(np.float32) / 255
    tile = 4 * 32  # 32 px scaled up 4x to reach 128 px, a 1 px white border between tiles
    assert grid.shape == (2 * (tile + 1) + 1, 3 * (tile + 1) + 1, 3)
    with torch.no_grad():
        model.eval()
        mu, _ = model.encode(x)
        recon = torch.sigmoid(model.decode(mu))
    for i in range(3):
        col = 1 + i * (tile + 1)
        top, bottom = grid[1 : 1 + tile, col : col + tile], grid[tile + 2 : 2 * tile + 2, col : col + tile]
        want_top = x[i].permute(1, 2, 0).numpy().repeat(4, axis=0).repeat(4, axis=1)
        want_bottom = recon[i].permute(1, 2, 0).numpy().repeat(4, axis=0).repeat(4, axis=1)
        assert np.abs(top - want_top).max() <= 0.5 / 255 + 1e-6
        assert np.abs(bottom - want_bottom).max() <= 0.5 / 255 + 1e-6
        assert np.abs(want_top - want_bottom).max() > 0.1  # an untrained model: the rows differ


def test_traversals_sweep_one_dim_per_row_around_each_code():
    class Echo(torch.nn.Module):  # decodes a code into a 1x1 "image" per latent dim: its logits
        def decode(self, z_ND):
            return z_ND[:, :, None, None]

    from gvae_dist.plots import decode_traversals

    mu_KD = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.25, -0.5]])
    imgs = decode_traversals(Echo(), mu_KD, span=2.0, steps=5)
    assert imgs.shape == (2, 3, 5, 3, 1, 1)
    z = torch.logit(imgs[..., 0, 0].double())  # [K, D, S, D]: the code each tile decoded
    sweep = torch.linspace(-2.0, 2.0, 5, dtype=torch.double)
    for k in range(2):
        for d in range(3):
            expect = mu_KD[k].double().expand(5, 3).clone()
            expect[:, d] = sweep
            torch.testing.assert_close(z[k, d], expect, atol=1e-5, rtol=0)
