"""Evaluation pictures: reconstructions, latent traversals grouped by partition, DCI heatmaps, KL
per latent dim.

What to draw follows the Gated-VAE paper's figures (Vowels et al., arXiv 1911.06443, traversals
per partition) and Eastwood & Williams 2018 (the importance matrix as a Hinton-style heatmap).
The training-time grids (reconstructions, traversals; :func:`log_image_grids`) are tiled by the same
:func:`tile_images`.

Every figure has a fixed pixel size (``figsize * dpi``, no tight bounding box) so callers and
tests know what they get. matplotlib is imported here only, with the Agg backend.

Legend: N images, C channels, H/W height/width, D latent dims, S traversal steps, K seed images,
F factors, P partitions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "kl_per_dim",
    "traversal_figsize",
    "plot_traversals",
    "heatmap_figure",
    "plot_heatmap",
    "plot_kl",
    "plot_bars",
    "plot_side_by_side",
    "write_eval_plots",
    "tile_images",
    "reconstructions",
    "plot_reconstructions",
    "decode_traversals",
    "image_grids",
    "log_image_grids",
]

DPI = 100
RECON_IMAGES = 8  # held-out images in an evaluation's reconstructions.png
RECON_MIN_PX = 128  # reconstructions.png scales small images up (nearest) to at least this size


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless: rank-0 workers and CI have no display
    import matplotlib.pyplot as plt

    return plt


def kl_per_dim(mu_ND: np.ndarray, logvar_ND: np.ndarray) -> np.ndarray:
    """``KL(q(z_d|x) || N(0, 1))`` averaged over images: ``[D]`` nats.

    ``0.5 * mean_n(mu^2 + exp(logvar) - logvar - 1)``; a collapsed (unused) dim scores ~0.
    """
    mu_ND = np.asarray(mu_ND, dtype=np.float64)
    logvar_ND = np.asarray(logvar_ND, dtype=np.float64)
    if mu_ND.shape != logvar_ND.shape or mu_ND.ndim != 2:
        raise ValueError(f"mu and logvar must both be [N, D], got {mu_ND.shape} and {logvar_ND.shape}")
    return 0.5 * (mu_ND**2 + np.exp(logvar_ND) - logvar_ND - 1.0).mean(axis=0)


def _partition_rows(spec) -> list[tuple[str, int, int]]:
    """``[(name, start, size), ...]`` from a PartitionSpec (or None: one 'latent' block)."""
    return [(p.name, p.start, p.size) for p in spec]


def traversal_figsize(latent_dim: int, seeds: int, steps: int) -> tuple[float, float]:
    """Inches of :func:`plot_traversals`' figure: 0.5 in per tile plus room for labels."""
    return seeds * steps * 0.5 + 1.5, latent_dim * 0.5 + 1.0


def plot_traversals(model, x_KCHW, spec, path: str | Path, span: float = 3.0, steps: int = 7) -> Path:
    """One panel per seed image; row d sets latent dim d to ``linspace(-span, span, steps)``
    (prior standard deviations; the other dims stay at the image's posterior mean).

    Rows are in latent order, so partitions are contiguous blocks: each row is labelled
    ``partition:d`` and blocks are separated by a line.
    """
    import torch

    from gvae_dist.model import eval_mode

    plt = _pyplot()
    with eval_mode(model), torch.no_grad():
        mu_KD, _ = model.encode(x_KCHW)
        imgs = decode_traversals(model, mu_KD, span, steps).cpu().numpy()
    K, D = mu_KD.shape

    rows = _partition_rows(spec)
    labels = [f"{name}:{d - start}" for name, start, size in rows for d in range(start, start + size)]
    fig, axes = plt.subplots(1, K, figsize=traversal_figsize(D, K, steps), dpi=DPI, squeeze=False)
    for k, ax in enumerate(axes[0]):
        grid = tile_images(imgs[k])  # [D*(H+1)+1, S*(W+1)+1, 3]
        H, W = imgs.shape[-2:]
        ax.imshow(grid, interpolation="nearest")
        ax.set_yticks([1 + d * (H + 1) + H / 2 for d in range(D)])
        ax.set_yticklabels(labels if k == 0 else [], fontsize=7)
        ax.set_xticks([1 + s * (W + 1) + W / 2 for s in range(steps)])
        ax.set_xticklabels([f"{v:+.1f}" for v in np.linspace(-span, span, steps)], fontsize=6)
        for _, start, _ in rows[1:]:
            ax.axhline(start * (H + 1) + 0.5, color="red", linewidth=1.0)
        ax.set_title(f"seed image {k}", fontsize=8)
    fig.suptitle(f"latent traversals (values in prior sigmas, ±{span:g})", fontsize=9)
    return _save(fig, path)


def plot_heatmap(matrix_RF: Any, row_labels: list[str], col_labels: list[str], title: str, path: str | Path) -> Path:
    """Annotated heatmap of a non-negative ``[rows, factors]`` matrix (e.g. DCI importance)."""
    return _save(heatmap_figure(matrix_RF, row_labels, col_labels, title), path)


def heatmap_figure(matrix_RF: Any, row_labels: list[str], col_labels: list[str], title: str):
    """The figure of :func:`plot_heatmap`. Constrained layout places the axes so that the rotated
    factor names, the row labels and the title lie inside the fixed-size figure (with the default
    margins a 2-row partition heatmap cut the names to "itch", "outh")."""
    plt = _pyplot()
    m_RF = np.asarray(matrix_RF, dtype=np.float64)
    if m_RF.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"matrix is {m_RF.shape} but got {len(row_labels)} row and {len(col_labels)} column labels")
    R, F = m_RF.shape
    fig, ax = plt.subplots(figsize=(0.7 * F + 2.5, 0.4 * R + 1.5), dpi=DPI, layout="constrained")
    im = ax.imshow(m_RF, cmap="viridis", vmin=0.0, vmax=max(float(m_RF.max()), 1e-12), aspect="auto")
    ax.set_xticks(range(F))
    ax.set_xticklabels(col_labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=7)
    ax.set_yticks(range(R))
    ax.set_yticklabels(row_labels, fontsize=7)
    for r in range(R):
        for j in range(F):
            ax.text(
                j,
                r,
                f"{m_RF[r, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if m_RF[r, j] < 0.5 * m_RF.max() else "black",
            )
    fig.colorbar(im, ax=ax)
    ax.set_title(title, fontsize=9)
    return fig


def plot_kl(kl_D: np.ndarray, spec, path: str | Path) -> Path:
    """Bar plot of KL per latent dim, bars coloured by partition."""
    plt = _pyplot()
    kl_D = np.asarray(kl_D, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(0.4 * len(kl_D) + 2.0, 3.0), dpi=DPI)
    cmap = plt.get_cmap("tab10")
    for i, (name, start, size) in enumerate(_partition_rows(spec)):
        ax.bar(range(start, start + size), kl_D[start : start + size], color=cmap(i % 10), label=name)
    ax.set_xticks(range(len(kl_D)))
    ax.set_xlabel("latent dim")
    ax.set_ylabel("KL (nats)")
    ax.set_title("KL(q(z_d|x) || N(0,1)) per latent dim", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_bars(
    labels: list[str],
    means: list[float],
    stds: list[float],
    colors: list[str],
    ylabel: str,
    title: str,
    path: str | Path,
) -> Path:
    """One bar per label at its mean with its std as an error bar (e.g. the study's DCI mean per
    objective, variant and label noise); ``1.0 * len(labels) + 2.0`` by 3.5 inches."""
    if not len(labels) == len(means) == len(stds) == len(colors):
        raise ValueError(
            f"plot_bars: got {len(labels)} labels, {len(means)} means, {len(stds)} stds and "
            f"{len(colors)} colors; give one of each per bar"
        )
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.0 * len(labels) + 2.0, 3.5), dpi=DPI)
    ax.bar(range(len(labels)), means, yerr=stds, color=colors, capsize=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_side_by_side(panels: dict[str, str | Path], title: str, path: str | Path) -> Path:
    """Existing PNGs (e.g. the gated and the un-gated model's ``traversals.png``) next to each
    other at their own pixel size, each titled with its key."""
    plt = _pyplot()
    images = {label: plt.imread(str(p)) for label, p in panels.items()}
    if not images:
        raise ValueError("plot_side_by_side: no panels")
    h = max(im.shape[0] for im in images.values())
    w = sum(im.shape[1] for im in images.values())
    fig, axes = plt.subplots(
        1,
        len(images),
        figsize=(w / DPI, h / DPI + 0.5),
        dpi=DPI,
        squeeze=False,
        gridspec_kw={"width_ratios": [im.shape[1] for im in images.values()]},
    )
    for ax, (label, im) in zip(axes[0], images.items()):
        ax.imshow(im, interpolation="nearest")
        ax.set_title(label, fontsize=11)
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.5 / (h / DPI + 0.5), wspace=0.02)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": the pixel size stays figsize * dpi
    plt.close(fig)
    return path


def write_eval_plots(
    model,
    images_NHWC: np.ndarray,
    mu_ND: np.ndarray,
    logvar_ND: np.ndarray,
    result: dict[str, Any],
    spec,
    out_dir: str | Path,
    device,
    seeds: int = 3,
) -> list[Path]:
    """All evaluation pictures for one model into ``out_dir``; returns the PNG paths.
    ``images_NHWC``: held-out images; the first ``RECON_IMAGES`` are reconstructed, the first
    ``seeds`` traversed.

    ``result`` is an ``evaluate_codes`` result (its ``dci.importance`` and ``partitions``).
    """
    import torch

    from gvae_dist.data.batch import to_float_nchw

    out = Path(out_dir)
    x_KCHW = to_float_nchw(torch.from_numpy(images_NHWC[:seeds]).to(device))
    names = result["factor_names"]
    code_labels = [
        f"{name}:{d - start}" for name, start, size in _partition_rows(spec) for d in range(start, start + size)
    ]
    paths = [
        plot_reconstructions(model, to_float_nchw(torch.from_numpy(images_NHWC[:RECON_IMAGES]).to(device)), out),
        plot_traversals(model, x_KCHW, spec, out / "traversals.png"),
        plot_heatmap(
            result["dci"]["importance"], code_labels, names, "DCI importance (codes x factors)", out / "importance.png"
        ),
        plot_kl(kl_per_dim(mu_ND, logvar_ND), spec, out / "kl_per_dim.png"),
    ]
    if result.get("partitions"):
        parts = result["partitions"]
        paths.append(
            plot_heatmap(
                parts["importance"],
                parts["names"],
                names,
                "importance summed per partition (partitions x factors)",
                out / "partition_importance.png",
            )
        )
    return paths


# ---------------------------------------------------------------------------------------------
# Training-time image grids (legend: N images, C channels, H/W height/width, D latent dims, S traversal steps)


def tile_images(images_RSCHW) -> np.ndarray:
    """``[R, S, C, H, W]`` floats in [0, 1] -> one ``uint8 [R*(H+1)+1, S*(W+1)+1, 3]`` grid."""
    R, S, C, H, W = images_RSCHW.shape
    grid = np.ones((R * (H + 1) + 1, S * (W + 1) + 1, 3), dtype=np.float32)
    for r in range(R):
        for s in range(S):
            img = np.moveaxis(images_RSCHW[r, s], 0, -1)
            grid[1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + s * (W + 1) : 1 + s * (W + 1) + W] = (
                img if C == 3 else np.repeat(img, 3, axis=-1)
            )
    return (grid.clip(0, 1) * 255).round().astype(np.uint8)


def decode_traversals(model, mu_KD, span: float, steps: int):
    """``[K, D, S, C, H, W]`` images in [0, 1]: for each of the K codes, row d decodes it with
    latent dim d set to ``linspace(-span, span, S)`` and the other dims fixed. Call under
    ``torch.no_grad()`` with the model in eval mode."""
    import torch

    K, D = mu_KD.shape
    z_KDSD = mu_KD[:, None, None, :].expand(K, D, steps, D).clone()
    sweep_S = torch.linspace(-span, span, steps, device=mu_KD.device)
    for d in range(D):
        z_KDSD[:, d, :, d] = sweep_S
    imgs = torch.sigmoid(model.decode(z_KDSD.view(K * D * steps, D)).float())
    return imgs.view(K, D, steps, *imgs.shape[1:])


def _inputs_over_decoded(model, x_NCHW, mu_ND) -> np.ndarray:
    import torch

    return torch.stack([x_NCHW.float(), torch.sigmoid(model.decode(mu_ND).float())]).cpu().numpy()


def reconstructions(model, x_NCHW) -> np.ndarray:
    """``[2, N, C, H, W]`` in [0, 1]: the inputs and the decoded posterior means (no sampling:
    what the code holds of each image). Runs the model in eval mode without gradients."""
    import torch

    from gvae_dist.model import eval_mode

    with eval_mode(model), torch.no_grad():
        return _inputs_over_decoded(model, x_NCHW, model.encode(x_NCHW)[0])


def plot_reconstructions(model, x_NCHW, out_dir: str | Path) -> Path:
    """``out_dir/reconstructions.png``: row 1 the held-out inputs, row 2 their reconstructions
    (:func:`reconstructions`), each image scaled up by an integer factor (nearest neighbour) to
    at least ``RECON_MIN_PX`` pixels, so a 32 px face's eyes and mouth can be compared by eye."""
    from PIL import Image

    grid = reconstructions(model, x_NCHW)
    scale = max(1, -(-RECON_MIN_PX // grid.shape[-1]))
    grid = grid.repeat(scale, axis=-2).repeat(scale, axis=-1)
    path = Path(out_dir) / "reconstructions.png"
    Image.fromarray(tile_images(grid)).save(path)
    return path


def image_grids(model, x_NCHW, span: float = 2.5, steps: int = 7) -> dict[str, np.ndarray]:
    """PNG-ready grids for a (gated) VAE: ``reconstruction`` (row 1 inputs, row 2 decoded
    posterior means) and ``traversal`` (row d: latent dim d swept over ``[-span, span]`` around
    the first image's posterior mean, other dims fixed)."""
    import torch

    from gvae_dist.model import eval_mode

    with eval_mode(model), torch.no_grad():
        mu_ND, _ = model.encode(x_NCHW)
        recon = _inputs_over_decoded(model, x_NCHW, mu_ND)
        trav_DSCHW = decode_traversals(model, mu_ND[:1], span, steps)[0]
    return {"reconstruction": tile_images(recon), "traversal": tile_images(trav_DSCHW.cpu().numpy())}


def log_image_grids(tracker, model, x_NCHW, step: int, out_dir: Path) -> None:
    """Write the :func:`image_grids` of ``model`` as PNGs under ``out_dir`` and log them."""
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, grid in image_grids(model, x_NCHW).items():
        path = out_dir / f"{name}_step_{step:08d}.png"
        Image.fromarray(grid).save(path)
        tracker.log_artifact(path, "images")
