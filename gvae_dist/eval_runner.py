"""Evaluate a trained model: encode held-out images, score the codes (DCI, partition purity, ...).

The math lives in :mod:`gvae_dist.evaluate` (pure numpy); this module does the torch side
(encoding, loading checkpoints) and writes ``metrics.json`` into the output directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gvae_dist.config import Config
from gvae_dist.data.loader import load_eval_arrays

__all__ = ["encode", "evaluate_model", "evaluate_checkpoint", "summarize"]


@torch.no_grad()
def encode(model, images_NHWC: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Posterior means ``[N, D]`` of uint8 images ``[N, H, W, C]``."""
    was_training = model.training
    model.eval()
    codes = []
    for i in range(0, len(images_NHWC), batch_size):
        x = torch.from_numpy(images_NHWC[i : i + batch_size]).to(device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mu, _ = model.encode(x)
        codes.append(mu.float().cpu())
    model.train(was_training)
    return torch.cat(codes).numpy()


def evaluate_model(cfg: Config, model, device, out_dir: str | Path | None = None) -> dict[str, Any]:
    """DCI (+ per-partition view, MIG, SAP) of ``model`` on held-out data; writes metrics.json."""
    from gvae_dist.evaluate import evaluate_codes

    e = cfg.eval
    images, factors, info = load_eval_arrays(cfg, limit=e.num_train + e.num_test)
    n_train = min(e.num_train, len(images) * 2 // 3)
    codes = encode(model, images, e.batch_size, device)
    spec = cfg.partition_spec()
    result = evaluate_codes(
        codes[:n_train], factors[:n_train], codes[n_train:], factors[n_train:],
        factor_names=info.factor_names, discrete=info.factor_discrete,
        partitions=spec.sizes(), intended={p.name: list(p.factors) for p in spec if p.factors},
        method=e.method, seed=cfg.run.seed,
    )
    result = {**summarize(result), "details": result}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def summarize(result: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of an ``evaluate_codes`` result, flat and named for what they hold."""
    d = result["dci"]
    out = {
        "disentanglement": d["disentanglement"],
        "completeness": d["completeness"],
        "informativeness": d["informativeness"],
        "informativeness_error": d["informativeness_error"],
        "mig": result["mig"]["mig"],
        "sap": result["sap"]["sap"],
    }
    parts = result.get("partitions")
    if parts:
        out["partition_disentanglement"] = parts["disentanglement"]
        out["partition_completeness"] = parts["completeness"]
        if parts.get("purity"):
            out["partition_purity"] = parts["purity"]["mean"]
    return out


def evaluate_checkpoint(checkpoint: str | Path, cfg: Config | None = None, out_dir: str | Path | None = None,
                        device: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint directory (its own config unless ``cfg`` is given) and evaluate it."""
    from gvae_dist.checkpoint import load_checkpoint
    from gvae_dist.config import load_config
    from gvae_dist.train import build_model

    ckpt = Path(checkpoint)
    cfg = cfg or load_config(ckpt / "config.yaml")
    state = load_checkpoint(ckpt, map_location=device)
    _, _, info = load_eval_arrays(cfg, limit=1)
    model = build_model(cfg, info.channels).to(device)
    model.load_state_dict(state["model"])
    return evaluate_model(cfg, model, device, out_dir or ckpt.parent.parent / "eval")
