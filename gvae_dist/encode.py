"""Use a trained model: images -> posterior-mean codes, split by the run's named partitions.

``gvae-dist encode`` (:func:`encode_checkpoint`) and the pyfunc model a training run logs to
MLflow (:mod:`gvae_dist.codes_model`, columns named by ``PartitionSpec.code_columns``) give the same numbers
for the same images: the posterior means ``mu`` (as the evaluation scores them), cut into
``pose``, ``expression``, ``rest``... as the checkpoint's ``partitions`` config says.

Images come from an ``.npz`` with an ``images`` array ``[N, H, W, C]`` (or ``[N, H, W]`` grey),
uint8 or float in [0, 1] (the pixel rule of :mod:`gvae_dist.data.checks`), or from a folder of
PNG/JPG files (sorted by name). Legend: N images, D latent dims.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "check_fits",
    "encode_checkpoint",
    "load_model",
    "read_images",
    "save_codes",
    "split_codes",
    "summary_lines",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def split_codes(mu_ND: np.ndarray, partitions: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """``{partition name: mu_ND[:, start:start + size]}`` in latent order (``partitions``: a
    ``PartitionSpec.table()``)."""
    return {p["name"]: mu_ND[:, p["start"] : p["start"] + p["size"]] for p in partitions}


def load_model(checkpoint: str | Path, device: str = "cpu"):
    """``(checkpoint dir, config, model in eval mode)`` for a checkpoint or run directory (its newest
    checkpoint, as ``gvae-dist eval`` resolves it); weights loaded with ``weights_only=True``.
    The image channels come from the weights (the first convolution), so no data is read."""
    from gvae_dist.checkpoint import CONFIG_FILE, CheckpointError, load_checkpoint
    from gvae_dist.config import load_config
    from gvae_dist.eval_runner import resolve_checkpoint
    from gvae_dist.model import build_model

    ckpt = resolve_checkpoint(checkpoint)
    cfg = load_config(ckpt / CONFIG_FILE)
    state = load_checkpoint(ckpt, map_location=device)
    weights = state.get("model") if isinstance(state, dict) else None
    first_conv = (weights or {}).get("encoder.trunk.0.weight")
    if first_conv is None:
        raise CheckpointError(f"{ckpt / 'state.pt'} holds no GatedVAE weights ('model' with encoder.trunk.0.weight)")
    model = build_model(cfg, int(first_conv.shape[1])).to(device)
    model.load_state_dict(weights)
    return ckpt, cfg, model.eval()


def read_images(path: str | Path) -> tuple[np.ndarray, list[str]]:
    """``(images [N, H, W, C] uint8, or float32 in [0, 1], names)`` from an ``.npz`` (key ``images``; names
    ``images[i]``) or a folder of PNG/JPG files (names: the file names, sorted). ``ValueError``
    naming the file and what to do when it cannot be read as images."""
    from gvae_dist.data.checks import check_image_shape, pixel_scale, to_uint8

    p = Path(path)
    if p.is_dir():
        images, names = _read_folder(p)
    elif p.is_file() and p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if "images" not in z.files:
                raise ValueError(
                    f"{p}: no 'images' array (found {', '.join(z.files) or 'none'}); save the images "
                    "as np.savez(FILE, images=array_NHWC)"
                )
            images = z["images"]
        names = [f"images[{i}]" for i in range(len(images))]
    elif p.exists():
        raise ValueError(f"--images {p}: give an .npz with an 'images' array or a folder of PNG/JPG files")
    else:
        raise ValueError(f"--images {p} does not exist")
    check_image_shape(images.shape, images.dtype, str(p))
    if images.ndim == 3:
        images = images[..., None]
    if not np.isfinite(images).all():
        raise ValueError(f"{p}: the images hold NaN or infinite values")
    scale = pixel_scale(images.dtype, float(images.min()), float(images.max()), str(p))
    if images.dtype.kind in "biu":  # 8-bit values (0/1 masks scaled), divided by 255 where they are encoded
        return to_uint8(images, scale), names
    x = images.astype(np.float32)
    return (x if scale != 1.0 else x / np.float32(255.0)), names


def _read_folder(root: Path) -> tuple[np.ndarray, list[str]]:
    from PIL import Image

    from gvae_dist.data.checks import eight_bit

    files = sorted(f for f in root.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise ValueError(f"--images {root}: no .png/.jpg/.jpeg files in this folder")
    arrays = []
    for f in files:
        try:
            with Image.open(f) as img:
                # 16/32-bit and float files by the importers' pixel rule (PIL's convert would clip
                # 16-bit values above 255), then palette and alpha files as 8-bit grey or RGB
                img = eight_bit(img, f)
                arrays.append(np.asarray(img.convert("L" if img.mode in ("1", "L") else "RGB")))
        except OSError as exc:
            raise ValueError(f"{f}: cannot read the image ({exc})") from None
    for f, a in zip(files, arrays):
        if a.shape != arrays[0].shape:
            raise ValueError(
                f"{f}: image shape {a.shape} differs from {files[0].name}'s {arrays[0].shape}; "
                "give the folder's images one size and one colour mode"
            )
    return np.stack(arrays), [f.name for f in files]


def check_fits(images_NHWC: np.ndarray, cfg, channels: int, where: str) -> None:
    """``ValueError`` naming ``where`` and the shape the model expects, unless the images fit."""
    size = cfg.data.image_size
    if images_NHWC.shape[1:] != (size, size, channels):
        _, h, w, c = images_NHWC.shape
        raise ValueError(
            f"{where}: images are {h}x{w} with {c} channel(s), the model expects "
            f"[N, {size}, {size}, {channels}] (data.image_size={size}, {channels} channel(s)); "
            "resize/convert them first"
        )


def encode_checkpoint(
    checkpoint: str | Path, images: str | Path, batch_size: int | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Encode the images at ``images`` with the checkpoint's model (eval mode, no grad, batched by
    ``eval.batch_size`` unless given). Returns ``checkpoint``, ``partitions`` (``PartitionSpec.table()``),
    ``names`` (one per image), ``mu`` and ``logvar`` ``[N, D]`` and ``codes`` (:func:`split_codes`)."""
    from gvae_dist.eval_runner import encode

    ckpt, cfg, model = load_model(checkpoint, device)
    x_NHWC, names = read_images(images)
    check_fits(x_NHWC, cfg, model.encoder.trunk[0].in_channels, str(images))
    mu, logvar = encode(model, x_NHWC, batch_size or cfg.eval.batch_size, device, with_logvar=True)
    parts = cfg.partition_spec().table()
    return {
        "checkpoint": ckpt,
        "partitions": parts,
        "names": names,
        "mu": mu,
        "logvar": logvar,
        "codes": split_codes(mu, parts),
    }


def save_codes(result: dict[str, Any], out: str | Path) -> Path:
    """An ``.npz`` with one array per partition, ``mu``, ``logvar`` and ``names``."""
    clash = {"mu", "logvar", "names"} & set(result["codes"])
    if clash:  # partition names are identifiers, so only these three can collide
        raise ValueError(
            f"partition name(s) {sorted(clash)} clash with the npz's own arrays; "
            "--json prints the codes under 'codes' instead"
        )
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"--out {out}: the codes are written as .npz; name the file <something>.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, mu=result["mu"], logvar=result["logvar"], names=np.array(result["names"]), **result["codes"])
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """One line per partition: its dims, the spread of its codes over the images, the mean
    posterior sigma and its KL to the prior (nats per image; ~0 = a collapsed partition)."""
    from gvae_dist.plots import kl_per_dim

    mu, logvar = result["mu"], result["logvar"]
    kl_D = kl_per_dim(mu, logvar)
    lines = []
    for p in result["partitions"]:
        s = slice(p["start"], p["start"] + p["size"])
        lines.append(
            f"{p['name']:<12} dims {p['start']}-{s.stop - 1} ({p['size']}): code std over images "
            f"{mu[:, s].std(0).mean():.3f}, posterior sigma {np.exp(0.5 * logvar[:, s]).mean():.3f}, "
            f"KL {kl_D[s].sum():.2f} nats/image"
        )
    return lines
