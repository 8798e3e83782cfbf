"""Evaluate a trained model: encode held-out images, score the codes (DCI, partition purity, ...).

The math lives in :mod:`gvae_dist.evaluate` (pure numpy); this module does the torch side
(encoding, loading checkpoints), writes ``metrics.json`` into the output directory and decides
when a training run evaluates (:func:`eval_steps`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gvae_dist.config import Config
from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.loader import load_eval_arrays
from gvae_dist.model import eval_mode

__all__ = [
    "default_out_dir",
    "encode",
    "eval_steps",
    "evaluate_model",
    "evaluate_checkpoint",
    "format_summary",
    "heldout_elbo",
    "metric_names",
    "resolve_checkpoint",
    "summarize",
]


@torch.no_grad()
def encode(model, images_NHWC: np.ndarray, batch_size: int, device, with_logvar: bool = False):
    """Posterior means ``[N, D]`` of images ``[N, H, W, C]``, uint8 or float in [0, 1] (and
    log-variances ``[N, D]`` as a second array when ``with_logvar``)."""
    codes, logvars = [], []
    with eval_mode(model):
        for i in range(0, len(images_NHWC), batch_size):
            mu, logvar = model.encode(_to_tensor(images_NHWC[i : i + batch_size], device))
            codes.append(mu.float().cpu())
            if with_logvar:
                logvars.append(logvar.float().cpu())
    if with_logvar:
        return torch.cat(codes).numpy(), torch.cat(logvars).numpy()
    return torch.cat(codes).numpy()


def _to_tensor(images_NHWC: np.ndarray, device) -> torch.Tensor:
    x_NHWC = torch.from_numpy(images_NHWC).to(device)
    return to_float_nchw(x_NHWC) if images_NHWC.dtype == np.uint8 else x_NHWC.permute(0, 3, 1, 2).float()


@torch.no_grad()
def heldout_elbo(cfg: Config, model, images_NHWC: np.ndarray, device, seed: int = 0) -> dict[str, float]:
    """Negative ELBO per image on held-out images (identity targets, one posterior sample,
    seeded): ``recon + KL`` in nats, the quantity every objective bounds whatever its regulariser."""
    from gvae_dist.objective import gaussian_kl, reconstruction_loss

    o = cfg.objective
    gen = torch.Generator(device="cpu").manual_seed(seed)
    recon = kl = 0.0
    bs = cfg.eval.batch_size
    with eval_mode(model):
        for i in range(0, len(images_NHWC), bs):
            x = _to_tensor(images_NHWC[i : i + bs], device)
            mu, logvar = (t.float() for t in model.encode(x))
            eps = torch.randn(mu.shape, generator=gen).to(device)
            logits = model.decode(mu + eps * torch.exp(0.5 * logvar)).float()
            recon += reconstruction_loss(logits, x, o.likelihood, o.gaussian_std, o.gaussian_calibrated).sum().item()
            kl += gaussian_kl(mu, logvar).sum().item()
    n = max(1, len(images_NHWC))
    return {"neg_elbo": (recon + kl) / n, "recon": recon / n, "kl": kl / n}


def eval_steps(cfg: Config) -> set[int]:
    """The steps before the last at which a training run evaluates (cheaply, see
    :func:`evaluate_model`): every ``eval.every`` steps when that is set, else ``eval.points``
    steps spread evenly over the run (``k * steps / (points + 1)``), each moved to the nearest
    ``run.log_every`` step (evaluation runs at log steps); none with ``eval.at_end`` false."""
    steps, e = cfg.optim.steps, cfg.eval
    if e.every:
        return set(range(e.every, steps, e.every))
    if not e.at_end:
        return set()
    log_every = cfg.run.log_every
    points = {round(k * steps / (e.points + 1) / log_every) * log_every for k in range(1, e.points + 1)}
    return {s for s in points if 0 < s < steps}


def evaluate_model(
    cfg: Config, model, device, out_dir: str | Path | None = None, during: bool = False
) -> dict[str, Any]:
    """DCI (+ per-partition view, MIG, SAP) of ``model`` on held-out data; writes metrics.json
    and the pictures of :func:`gvae_dist.plots.write_eval_plots` into ``out_dir``.

    ``during``: an evaluation during training: at most ``eval.during_codes`` codes (2/3 to fit,
    1/3 to score; 0 = the full ``eval.num_train + eval.num_test``) and no pictures."""
    from gvae_dist.evaluate import evaluate_codes

    e = cfg.eval
    total = e.num_train + e.num_test
    if during and e.during_codes:
        total = min(total, e.during_codes)
    images, factors, info = load_eval_arrays(cfg, limit=total)
    n_train = min(e.num_train, len(images) * 2 // 3)
    codes, logvars = encode(model, images, e.batch_size, device, with_logvar=True)
    spec = cfg.partition_spec()
    result = evaluate_codes(
        codes[:n_train],
        factors[:n_train],
        codes[n_train:],
        factors[n_train:],
        factor_names=info.factor_names,
        discrete=info.factor_discrete,
        partitions=spec.sizes(),
        intended={p.name: list(p.factors) for p in spec if p.factors},
        method=e.method,
        seed=cfg.run.seed,
        n_jobs=e.jobs,
        flexible_probe=e.flexible_probe,
    )
    result = {
        **summarize(result),
        **heldout_elbo(cfg, model, images[n_train:], device, cfg.run.seed),
        "details": result,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
    if out_dir is not None and not during:
        from gvae_dist.plots import write_eval_plots

        write_eval_plots(model, images[n_train:], codes, logvars, result["details"], spec, out, device)
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an ``evaluate_codes`` result, flat and named for what they hold.

    ``disentanglement``, ``completeness``, ``informativeness`` (+ ``_error``) and ``dci_mean``
    (mean of the three) are taken over the targeted factors (those the partitions name); the
    same over every factor are ``all/<name>``. ``informativeness/<factor>`` is each factor's
    test score (accuracy or ``1 - NRMSE``, named in ``informativeness_measures``).
    ``partition_purity``: mean over targeted factors of the share of the factor's importance in
    its own partition; ``purity/<partition>`` and ``purity_mean``: share of the partition's
    importance that goes to its own factors. With the flexible probe (``eval.flexible_probe``):
    ``probe_informativeness`` (targeted factors), ``all/probe_informativeness`` and
    ``probe_informativeness/<factor>``, the same scores read by an MLP instead of the trees.
    """
    d, t = result["dci"], result["targeted"]
    keys = ("disentanglement", "completeness", "informativeness", "informativeness_error", "dci_mean")
    out: dict[str, Any] = {k: t[k] for k in keys}
    out.update({f"all/{k}": d[k] for k in keys})
    out.update({f"informativeness/{pf['name']}": pf["informativeness"] for pf in d["per_factor"]})
    probe = result.get("probe")
    if probe:
        out["probe_informativeness"] = probe["targeted_informativeness"]
        out["all/probe_informativeness"] = probe["informativeness"]
        out.update({f"probe_informativeness/{pf['name']}": pf["informativeness"] for pf in probe["per_factor"]})
    out["mig"] = result["mig"]["mig"]
    out["sap"] = result["sap"]["sap"]
    parts = result.get("partitions")
    if parts:
        out["partition_disentanglement"] = parts["disentanglement"]
        out["partition_completeness"] = parts["completeness"]
        if parts.get("purity"):
            out["partition_purity"] = parts["purity"]["mean"]
        if parts.get("purity_by_partition"):
            by_part = parts["purity_by_partition"]
            out.update({f"purity/{name}": v for name, v in by_part.items() if name != "mean"})
            out["purity_mean"] = by_part["mean"]
    out["targeted_factors"] = list(t["factors"])
    out["informativeness_measures"] = {pf["name"]: pf["informativeness_measure"] for pf in d["per_factor"]}
    return out


HEADLINE = ("disentanglement", "completeness", "informativeness", "informativeness_error", "dci_mean")


def metric_names(cfg: Config, factor_names: list[str]) -> list[str]:
    """The numeric keys of an evaluation result (:func:`summarize` + :func:`heldout_elbo`), which
    a training run logs as ``eval/<name>``, for ``cfg`` on data whose factors are ``factor_names``."""
    spec = cfg.partition_spec()
    names = [
        *HEADLINE,
        *(f"all/{k}" for k in HEADLINE),
        *(f"informativeness/{f}" for f in factor_names),
        *(
            [
                "probe_informativeness",
                "all/probe_informativeness",
                *(f"probe_informativeness/{f}" for f in factor_names),
            ]
            if cfg.eval.flexible_probe
            else []
        ),
        "mig",
        "sap",
        "partition_disentanglement",
        "partition_completeness",
    ]
    owned = [p.name for p in spec if any(f in factor_names for f in p.factors)]
    if owned:
        names += ["partition_purity", *(f"purity/{name}" for name in owned), "purity_mean"]
    return [*names, "neg_elbo", "recon", "kl"]


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: a checkpoint itself, or a run directory (or its
    ``checkpoints/`` folder, or a Ray run directory holding ``step_*`` copies): its newest
    checkpoint. ``FileNotFoundError`` naming the path and the checkpoints that do exist nearby."""
    from gvae_dist.checkpoint import CONFIG_FILE, STATE_FILE, latest_checkpoint, list_checkpoints

    p = Path(path)
    if (p / CONFIG_FILE).is_file() and (p / STATE_FILE).is_file():
        return p
    for root in (p / "checkpoints", p):
        found = latest_checkpoint(root)
        if found is not None:
            return found
    # what is there: the checkpoints of the nearest existing run directory above the path
    for above in (p.parent, p.parent.parent):
        for root in (above / "checkpoints", above):
            listed = list_checkpoints(root)
            if listed:
                what = "does not exist" if not p.exists() else "is not a checkpoint (no config.yaml + state.pt)"
                raise FileNotFoundError(f"{p} {what}; checkpoints under {root}: {', '.join(c.name for c in listed)}")
    if not p.exists():
        raise FileNotFoundError(
            f"{p} does not exist; give a checkpoint directory "
            "(runs/<name>/checkpoints/step_N) or a run directory (runs/<name>)"
        )
    raise FileNotFoundError(
        f"{p} holds no checkpoint: neither config.yaml + state.pt nor "
        "checkpoints/step_* with meta.json; give runs/<name> or runs/<name>/checkpoints/step_N"
    )


def default_out_dir(checkpoint: Path) -> Path:
    """``<run dir>/eval``: runs/<name>/eval for runs/<name>/checkpoints/step_N, and
    runs/ray/<name>/eval for Ray Train's copy runs/ray/<name>/step_N."""
    ckpt = Path(checkpoint)
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    return run_dir / "eval"


def evaluate_checkpoint(
    checkpoint: str | Path, cfg: Config | None = None, out_dir: str | Path | None = None, device: str = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint directory (its own config unless ``cfg`` is given) and evaluate it;
    writes into ``out_dir`` (default :func:`default_out_dir`)."""
    from gvae_dist.checkpoint import load_checkpoint
    from gvae_dist.config import load_config
    from gvae_dist.model import build_model

    ckpt = Path(checkpoint)
    cfg = cfg or load_config(ckpt / "config.yaml")
    state = load_checkpoint(ckpt, map_location=device)
    _, _, info = load_eval_arrays(cfg, limit=1)
    model = build_model(cfg, info.channels).to(device)
    model.load_state_dict(state["model"])
    return evaluate_model(cfg, model, device, out_dir or default_out_dir(ckpt))


def format_summary(result: dict[str, Any]) -> list[str]:
    """Readable lines of an evaluation result: DCI headline (targeted, all factors), partition
    purity, MIG/SAP, held-out -ELBO, informativeness per factor."""

    def dci(prefix: str) -> str:
        g = lambda k: result[f"{prefix}{k}"]  # noqa: E731
        return (
            f"disentanglement {g('disentanglement'):.3f}  completeness {g('completeness'):.3f}  "
            f"informativeness {g('informativeness'):.3f} (error {g('informativeness_error'):.3f})  "
            f"mean {g('dci_mean'):.3f}"
        )

    lines = [
        f"DCI over targeted factors ({', '.join(result['targeted_factors'])}): {dci('')}",
        f"DCI over all factors: {dci('all/')}",
    ]
    if "partition_purity" in result:
        parts = ", ".join(f"{k.removeprefix('purity/')} {v:.3f}" for k, v in result.items() if k.startswith("purity/"))
        lines.append(f"partition purity {result['partition_purity']:.3f} (factor-wise); by partition: {parts}")
    lines.append(
        f"MIG {result['mig']:.3f}  SAP {result['sap']:.3f}  held-out -ELBO {result['neg_elbo']:.1f} nats "
        f"(recon {result['recon']:.1f} + KL {result['kl']:.1f})"
    )
    measures = result.get("informativeness_measures", {})
    per = ", ".join(
        f"{name} {result[f'informativeness/{name}']:.3f} ({measures.get(name, '?')})"
        for name in measures
        if f"informativeness/{name}" in result
    )
    if per:
        lines.append(f"informativeness per factor: {per}")
    if "probe_informativeness" in result:
        per = ", ".join(
            f"{name} {result[f'probe_informativeness/{name}']:.3f}"
            for name in measures
            if f"probe_informativeness/{name}" in result
        )
        lines.append(
            f"informativeness read by the flexible probe (MLP; what the code holds, however it is laid out): "
            f"targeted {result['probe_informativeness']:.3f}, all {result['all/probe_informativeness']:.3f}; {per}"
        )
    return lines
