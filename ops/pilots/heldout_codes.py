"""What the probe pilots share (ops/pilots/probe_size.py, probe_family.py): a run's codes of
its own held-out faces with the targeted factors, and a probe's scores as table cells. Imported by
those scripts (their own folder is on ``sys.path`` when they run)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from gvae_dist.data.loader import load_eval_arrays
from gvae_dist.encode import load_model
from gvae_dist.eval_runner import encode
from gvae_dist.model import build_model

TARGETED = ["yaw", "pitch", "roll", "mouth", "eyes", "brow"]
EXPRESSION = ["mouth", "eyes", "brow"]


def heldout_codes(arg: str, num: int) -> SimpleNamespace:
    """``arg``: a run directory, or ``init:RUN_DIR`` for the same network at initialisation (the
    run's config and seed, no training). Encodes ``num`` faces of the run's eval seed stream
    (``data.num_eval=num``); ``factors`` and ``discrete`` are the :data:`TARGETED` columns."""
    untrained = arg.startswith("init:")
    run = Path(arg.removeprefix("init:"))
    _, cfg, model = load_model(run)
    if untrained:
        torch.manual_seed(cfg.run.seed)
        model = build_model(cfg, model.in_channels).eval()
    cfg = cfg.replace({"data.num_eval": num})
    images, factors, info = load_eval_arrays(cfg)
    cols = [info.factor_names.index(f) for f in TARGETED]
    return SimpleNamespace(
        run=run,
        untrained=untrained,
        cfg=cfg,
        codes=encode(model, images, 256, torch.device("cpu")),
        factors=factors[:, cols],
        discrete=[info.factor_discrete[c] for c in cols],
    )


def score_cells(result: dict) -> str:
    """A ``dci`` or ``probe_informativeness`` result as table cells: each targeted factor's test
    informativeness, then the expression mean."""
    scores = {f: p["informativeness"] for f, p in zip(TARGETED, result["per_factor"])}
    cells = " | ".join(f"{scores[f]:.2f}" for f in TARGETED)
    return f"{cells} | {np.mean([scores[f] for f in EXPRESSION]):.2f}"
