#!/usr/bin/env python
"""The Gated-VAE study on one GPU machine with only the core stack, within one time limit.

    ops/gpu_study.sh OUT [STUDY_FILE] [--steps N|auto] [--parallel P] [--set key=value ...]
    python ops/gpu_study.py --out OUT [--study FILE] [--deadline-s 540] ...   (what the .sh runs)

One process (the cells in ``--parallel`` local processes). Needs PyTorch, numpy, scikit-learn, scipy, PyYAML,
Pillow, matplotlib, Accelerate (no Ray, DALI,
MLflow or WebDataset, no network, no install: it runs from a copy of the repository). Steps,
each bounded by what is left of ``--deadline-s``:

1. ``OUT/env.json``: device, versions, which optional backends are importable.
2. Budget (``--steps auto``): the study's first un-gated cell is trained once for up to
   ``--probe-steps``, checkpointing every ``--probe-every`` steps; the held-out negative ELBO of
   every checkpoint gives the learning curve (``OUT/curve.json``), and the budget is the first
   step after which no later checkpoint improves it by more than ``--tol`` (relative). A probe
   that never levels off says so and uses its last step. A rerun reuses ``curve.json``.
3. Study: ``gvae-dist study`` at that budget into ``OUT/study`` (cells on ``cuda`` when present,
   ``--parallel`` local processes), stopped through ``run.stop_file`` before the deadline (the
   stopped cells checkpoint; rerunning the same command resumes them and skips finished cells).
4. Report (``OUT/report.md``, printed): per cell the steps, steps/s, seconds, device, held-out
   negative ELBO and D / C / I, from each cell's ``result.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _env(out: Path) -> dict:
    import torch

    from gvae_dist.optional import available

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "host": platform.node(),
        "cuda": torch.cuda.is_available(),
        "cpus": os.cpu_count(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "optional": {m: available(m) for m in ("ray", "nvidia.dali", "mlflow", "webdataset")},
    }
    (out / "env.json").write_text(json.dumps(env, indent=2))
    return env


def _stop_at(stop_file: Path, at: float) -> threading.Timer:
    """Create ``stop_file`` at monotonic time ``at``: the cells checkpoint and stop (exit 75)."""
    timer = threading.Timer(max(0.0, at - time.monotonic()), stop_file.touch)
    timer.daemon = True
    timer.start()
    return timer


def level_off(curve: list[dict], tol: float) -> tuple[int, bool]:
    """(budget step, levelled off?): the first step after which no later point of the curve
    improves the held-out negative ELBO by more than ``tol`` relative to it."""
    for i, point in enumerate(curve):
        best_later = min(p["neg_elbo"] for p in curve[i:])
        if point["neg_elbo"] - best_later <= tol * abs(point["neg_elbo"]):
            return point["step"], i < len(curve) - 1
    return curve[-1]["step"], False


def probe(args, cell_cfg, out: Path, deadline: float) -> dict:
    """Train one un-gated cell, checkpoint often, score every checkpoint's held-out ELBO."""
    import torch

    from gvae_dist.checkpoint import list_checkpoints, load_checkpoint
    from gvae_dist.data.loader import load_eval_arrays
    from gvae_dist.eval_runner import heldout_elbo
    from gvae_dist.model import build_model
    from gvae_dist.train import Preempted, train_loop

    path = out / "curve.json"
    if path.is_file():
        return json.loads(path.read_text())
    stop = out / "STOP_PROBE"
    stop.unlink(missing_ok=True)
    cfg = cell_cfg.replace(
        {
            "run.output_dir": str(out),
            "run.name": "probe",
            "eval.at_end": False,
            "tracking.enabled": False,
            "optim.steps": args.probe_steps,
            "run.checkpoint_every": args.probe_every,
            "run.log_every": args.probe_every,
            "run.keep_checkpoints": 10**6,
            "run.stop_file": str(stop),
        }
    )
    timer = _stop_at(stop, time.monotonic() + args.probe_share * (deadline - time.monotonic()))
    t0 = time.monotonic()
    stopped = False
    try:
        train_loop(cfg)
    except Preempted:
        stopped = True
    timer.cancel()
    seconds = time.monotonic() - t0
    run_dir = cfg.run_dir()
    device = "cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu"
    images, _, info = load_eval_arrays(cfg, limit=args.probe_eval)
    model = build_model(cfg, info.channels).to(device)
    curve = []
    for ckpt in list_checkpoints(run_dir / "checkpoints"):
        state = load_checkpoint(ckpt, map_location=device)
        model.load_state_dict(state["model"])
        curve.append({"step": int(state["step"]), **heldout_elbo(cfg, model, images, device, seed=0)})
    if not curve:
        raise SystemExit(f"gpu_study: the probe wrote no checkpoint in {run_dir}")
    budget, levelled = level_off(curve, args.tol)
    result = {
        "cell": cell_cfg.run.name,
        "budget": budget,
        "levelled_off": levelled,
        "tol": args.tol,
        "probe_stopped_at_time_share": stopped,
        "probe_seconds": seconds,
        "steps_per_s_with_checkpoints": curve[-1]["step"] / seconds,
        "curve": curve,
    }
    path.write_text(json.dumps(result, indent=2))
    return result


def report(out: Path, env: dict, curve: dict | None, study_rc: int | None, seconds: float) -> str:
    runs = sorted((out / "study" / "runs").glob("*/result.json"))
    lines = [f"# gpu_study on {env['device']} ({env['host']}, torch {env['torch']})", ""]
    if curve:
        lines.append(
            f"Budget: {curve['budget']} steps ({'levelled off' if curve['levelled_off'] else 'NOT levelled off'}"
            f" within {curve['curve'][-1]['step']} probe steps at tol {curve['tol']:g}; probe "
            f"{curve['probe_seconds']:.0f}s). Held-out -ELBO by step: "
            + ", ".join(f"{p['step']}: {p['neg_elbo']:.1f}" for p in curve["curve"])
        )
        lines.append("")
    lines += [
        "| cell | device | steps | steps/s | seconds | -ELBO | D | C | I |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for path in runs:
        r = json.loads(path.read_text())
        ev = r["eval"]
        lines.append(
            f"| {r['name']} | {r['device']} | {r['steps']} | {r['steps_per_s'] or 0:.1f} | "
            f"{r['seconds'] or 0:.0f} | {ev.get('neg_elbo', float('nan')):.1f} | "
            f"{ev['disentanglement']:.3f} | {ev['completeness']:.3f} | {ev['informativeness']:.3f} |"
        )
    lines += ["", f"{len(runs)} finished cell(s); study exit {study_rc}; whole run {seconds:.0f}s."]
    if study_rc not in (0, None):
        lines.append("Not finished: run the same command again to resume (finished cells are skipped).")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output folder (everything is written under it)")
    p.add_argument("--study", default=str(REPO / "configs" / "study_faces.yaml"), help="study file")
    p.add_argument("--steps", default="auto", help="optim.steps per cell, or auto (the probe's budget)")
    p.add_argument("--parallel", type=int, default=None, help="cells at a time (default 4 on cuda, else 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"], help="run.device of the cells")
    p.add_argument("--deadline-s", type=float, default=540.0, help="stop everything after this many seconds")
    p.add_argument("--probe-steps", type=int, default=20000, help="most steps of the budget probe")
    p.add_argument("--probe-every", type=int, default=1000, help="checkpoint (curve point) every N steps")
    p.add_argument("--probe-share", type=float, default=0.3, help="share of the time left the probe may use")
    p.add_argument("--probe-eval", type=int, default=2000, help="held-out images scored per curve point")
    p.add_argument("--tol", type=float, default=0.01, help="relative ELBO gain below which it levelled off")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every cell")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    deadline = t0 + args.deadline_s
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = _env(out)
    cuda = env["cuda"] and args.device != "cpu"
    parallel = args.parallel or (4 if cuda else 1)
    print(f"[gpu_study] {env['device']}, {env['cpus']} CPUs; optional backends: {env['optional']}", flush=True)

    from gvae_dist.study import StudyError, load_study, plan_cells, run_study

    sets = [*args.overrides, f"run.device={args.device}"]
    spec = load_study(args.study, sets)
    curve = None
    if args.steps == "auto":
        cells = plan_cells(spec)
        first = next((c for c in cells if c.variant == "ungated"), cells[0])
        curve = probe(args, first.cfg, out, deadline)
        steps = curve["budget"]
        print(
            f"[gpu_study] budget {steps} steps (levelled off: {curve['levelled_off']}; curve in {out / 'curve.json'})",
            flush=True,
        )
    else:
        steps = int(args.steps)
    stop = out / "STOP"
    stop.unlink(missing_ok=True)
    margin = min(60.0, 0.15 * (deadline - time.monotonic()))  # for the cells to checkpoint and eval
    timer = _stop_at(stop, deadline - margin)
    spec = load_study(args.study, [*sets, f"optim.steps={steps}", f"run.stop_file={stop}"])
    spec.output_dir = str(out / "study")
    print(
        f"[gpu_study] study {args.study}: {len(plan_cells(spec))} cells of {steps} steps, {parallel} at a "
        f"time into {spec.output_dir}",
        flush=True,
    )
    try:
        run_study(spec, parallel=parallel, executor="local")
        rc = 0
    except StudyError as exc:  # cells stopped at the deadline (or failed): rerun to resume
        print(f"[gpu_study] {exc}", flush=True)
        rc = 1
    timer.cancel()
    text = report(out, env, curve, rc, time.monotonic() - t0)
    print(text, end="", flush=True)
    return 0 if rc == 0 else 75


if __name__ == "__main__":
    sys.exit(main())
