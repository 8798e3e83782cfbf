"""Benchmarks of whole ``train_loop`` runs: default vs the plain loop, end to end, bf16, scaling.

- ``run_default_vs_plain``: the default CPU training configuration of ``gvae-dist train``
  (``train_loop`` as the CLI runs it; only the dataset size, tracking and evaluation are cut
  down) against ``step.PlainStep`` on the same images and batch, alternated round by round in
  this process. A round's ratio compares the loop's steady-state interval (after one warm-up
  log interval; ``perf/images_per_s``) with the plain loop timed just before it.
- ``run_end_to_end``: ``train_loop`` reading shards through the data plane (DALI when it is
  importable, else WebDataset), and from memory: images/s and ``perf/data_wait_fraction``.
- ``run_precision_match``: a seeded short run in fp32 and in bf16 autocast; the relative
  difference of the logged loss curves.
- ``run_scaling``: Ray Train with 1 worker x 2 threads and 2 workers x 1 thread (equal cores)
  against the plain single-process ``train_loop`` with 2 threads.

These need the full stack (YAML, Accelerate; Ray for scaling, DALI or WebDataset for shards).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

__all__ = ["run_default_vs_plain", "run_end_to_end", "run_precision_match", "run_scaling"]

_QUIET = ["tracking.enabled=false", "eval.at_end=false", "run.resume=false"]


def _cfg(out: Path, name: str, *overrides: str):
    from gvae_dist.config import load_config

    return load_config(None, [*_QUIET, f"run.output_dir={out}", f"run.name={name}", *overrides])


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _steady(cfg, interval: int, intervals: int = 1) -> dict:
    """Run ``train_loop`` for ``(1 + intervals) * interval`` steps, logging every ``interval``;
    the median ``perf/*`` over the intervals after the first (warm-up) one."""
    from gvae_dist.train import train_loop

    cfg.optim.steps, cfg.run.log_every = (1 + intervals) * interval, interval
    cfg.run.checkpoint_every = 10**9  # only the final checkpoint, written after the timing
    with contextlib.redirect_stdout(sys.stderr):  # keep the bench's stdout for its table
        result = train_loop(cfg)
    return _steady_rows(_rows(result.run_dir))


def _steady_rows(rows: list[dict]) -> dict:
    rows = rows[1:] or rows
    return {k: statistics.median(r[k] for r in rows) for k in ("perf/images_per_s", "perf/data_wait_fraction")}


def _pair_round(interval: int, intervals: int, num_train: int, extra: list[str]) -> dict:
    """One round, in a fresh process: the plain loop first (under the allocator as a fresh
    process has it), then ``train_loop`` (which may tune the allocator for itself)."""
    from gvae_dist.bench.step import PlainStep
    from gvae_dist.data.batch import to_float_nchw
    from gvae_dist.data.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _cfg(Path(tmp), "pair", f"data.num_train={num_train}", *extra)
        d, batch = cfg.data, cfg.optim.batch_size
        images = generate(d.source, num_train, seed=d.seed, image_size=d.image_size).images
        images_NCHW = to_float_nchw(torch.from_numpy(images)).contiguous()
        plain = PlainStep(images_NCHW, batch)
        rates = []
        for _ in range(1 + intervals):  # the same intervals as the loop logs; the first warms up
            t0 = time.perf_counter()
            for _ in range(interval):
                plain()
            rates.append(interval * batch / (time.perf_counter() - t0))
        plain_rate = statistics.median(rates[1:])
        del plain, images_NCHW
        m = _steady(cfg, interval, intervals)
    o = cfg.optim
    return {
        "plain_images_per_s": plain_rate,
        "gvae_images_per_s": m["perf/images_per_s"],
        "data_wait_fraction": m["perf/data_wait_fraction"],
        "batch": o.batch_size,
        "mixed_precision": o.mixed_precision,
        "compile": o.compile,
        "channels_last": o.channels_last,
        "retain_freed_memory": cfg.run.retain_freed_memory,
        "threads": cfg.run.threads or torch.get_num_threads(),
    }


_MARK = "GVAE_BENCH_JSON "


def run_default_vs_plain(
    rounds: int = 3, interval: int = 10, intervals: int = 4, num_train: int = 2048, extra: tuple[str, ...] = ()
) -> list[dict]:
    """The default configuration vs the plain fp32 loop (see module doc).

    Each round is one fresh Python process that runs the plain loop and then ``train_loop``:
    the same process for both sides, as the issue asks, and a clean allocator state for the
    plain loop in every round (``train_loop``'s allocator setting is process-wide and sticky).
    """
    import subprocess

    args = json.dumps({"interval": interval, "intervals": intervals, "num_train": num_train, "extra": list(extra)})
    results = []
    for _ in range(rounds):
        proc = subprocess.run(
            [sys.executable, "-m", "gvae_dist.bench.e2e", args], capture_output=True, text=True, check=False
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"vs_plain round failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(lines[-1][len(_MARK) :]))
    ratios = [r["gvae_images_per_s"] / r["plain_images_per_s"] for r in results]
    med = {
        k: statistics.median(r[k] for r in results)
        for k in ("plain_images_per_s", "gvae_images_per_s", "data_wait_fraction")
    }
    return [
        {
            "suite": "vs_plain",
            "name": "default" + ("+" + ",".join(extra) if extra else ""),
            **{k: v for k, v in results[0].items() if k not in med},
            **med,
            "speedup_vs_plain": statistics.median(ratios),
            "ratios": ratios,
            "target": 2.0,
        }
    ]


def _build_shards(out: Path, num: int) -> Path:
    from gvae_dist.config import DataConfig
    from gvae_dist.data.importers import build_dataset

    build_dataset("faces", out, DataConfig(), num=num, shard_size=max(1, num // 4), progress=False)
    return out


def run_end_to_end(num: int = 2048, interval: int = 10, intervals: int = 6) -> list[dict]:
    """Images/s and data-wait fraction of ``train_loop`` on shards and on in-memory data."""
    from gvae_dist.data.stream import choose_backend

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = _build_shards(Path(tmp) / "shards", num)
        for name, extra in [
            ("memory", [f"data.num_train={num}"]),
            ("shards", ["data.source=shards", f"data.path={shards}"]),
        ]:
            cfg = _cfg(Path(tmp), name, *extra)
            backend = choose_backend(cfg) if name == "shards" else "memory"
            m = _steady(cfg, interval, intervals)
            rows.append(
                {
                    "suite": "e2e",
                    "name": name,
                    "backend": backend,
                    "batch": cfg.optim.batch_size,
                    "steps": interval * intervals,
                    "images_per_s": m["perf/images_per_s"],
                    "data_wait_fraction": m["perf/data_wait_fraction"],
                    "target_wait": 0.05,
                }
            )
    return rows


def run_precision_match(steps: int = 100, log_every: int = 10, tolerance: float = 0.02) -> list[dict]:
    """Seeded fp32 vs bf16 runs of the default config: max relative loss-curve difference."""
    from gvae_dist.train import train_loop

    with tempfile.TemporaryDirectory() as tmp:
        curves, rates = {}, {}
        for prec in ("no", "bf16"):
            cfg = _cfg(
                Path(tmp),
                f"prec_{prec}",
                "data.num_train=2048",
                f"optim.steps={steps}",
                f"run.log_every={log_every}",
                f"optim.mixed_precision='{prec}'",
            )
            with contextlib.redirect_stdout(sys.stderr):
                rows = _rows(train_loop(cfg).run_dir)
            curves[prec] = [r["loss"] for r in rows]
            rates[prec] = statistics.median(r["perf/images_per_s"] for r in rows[1:] or rows)
    rel = [abs(b - a) / abs(a) for a, b in zip(curves["no"], curves["bf16"])]
    return [
        {
            "suite": "precision",
            "name": "bf16_vs_fp32_loss",
            "steps": steps,
            "log_every": log_every,
            "max_rel_diff": max(rel),
            "final_rel_diff": rel[-1],
            "tolerance": tolerance,
            "within_tolerance": max(rel) <= tolerance,
            "fp32_losses": curves["no"],
            "bf16_losses": curves["bf16"],
            "fp32_images_per_s": rates["no"],
            "bf16_images_per_s": rates["bf16"],
        }
    ]


def run_scaling(interval: int = 10, intervals: int = 4, cores: int = 2) -> list[dict]:
    """Ray Train 1 vs 2 workers at ``cores`` total cores, and the plain single-process loop."""
    from gvae_dist.launch import launch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common = ["data.num_train=2048", "optim.batch_size=64"]
        single = _steady(_cfg(Path(tmp), "single", *common, f"run.threads={cores}"), interval, intervals)
        rows.append(
            {
                "suite": "scaling",
                "name": "single_process",
                "workers": 0,
                "threads": cores,
                "images_per_s": single["perf/images_per_s"],
            }
        )
        for workers in (1, 2):
            cfg = _cfg(
                Path(tmp),
                f"ray{workers}",
                *common,
                f"distributed.workers={workers}",
                f"distributed.cpus_per_worker={cores // workers}",
                f"run.threads={cores // workers}",
                f"distributed.storage_path={Path(tmp) / 'ray'}",
            )
            cfg.optim.steps, cfg.run.log_every = (1 + intervals) * interval, interval
            cfg.run.checkpoint_every = 10**9
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):
                result = launch(cfg)
            wall = time.perf_counter() - t0
            rate = _steady_rows(_rows(result.run_dir))["perf/images_per_s"]
            rows.append(
                {
                    "suite": "scaling",
                    "name": f"ray_{workers}_workers",
                    "workers": workers,
                    "threads": cores // workers,
                    "images_per_s": rate,
                    "wall_s": wall,
                    "overhead_vs_single": 1.0 - rate / single["perf/images_per_s"],
                    "target_overhead": 0.10,
                }
            )
    return rows


if __name__ == "__main__":  # one vs_plain round (run_default_vs_plain starts this)
    a = json.loads(sys.argv[1])
    print(_MARK + json.dumps(_pair_round(a["interval"], a["intervals"], a["num_train"], a["extra"])), flush=True)
