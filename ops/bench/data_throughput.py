"""Data-loading throughput: DALI CPU pipeline vs WebDataset + PIL DataLoader, and the train step.

Both loaders read the same 64x64 faces shards (PNG and JPEG) with the same batch size and the
same number of CPU workers/threads, through the real loaders of ``gvae_dist.data.stream`` (so
the numbers include building the Batch: float [0, 1] NCHW, labels, factors, keys). The train
step's own consumption rate is that of a few ``train_loop`` steps of the default model on
in-memory data; the report says which side is the bottleneck and how much headroom the data
side has (the issue's target: data at least 3x the train step).

    python ops/bench/data_throughput.py [--quick] [--out report.json] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from gvae_dist.config import load_config
from gvae_dist.data.importers import build_dataset
from gvae_dist.data.stream import build_stream_loader

BACKENDS = ("dali", "webdataset")
FORMATS = ("png", "jpg")


def loader_rate(path: Path, backend: str, batch: int, workers: int, seconds: float) -> float:
    """Images per second out of one rank's loader, after a warm-up."""
    cfg = load_config(
        None,
        [
            "data.source=shards",
            f"data.path={path}",
            f"data.backend={backend}",
            "data.image_size=64",
            f"data.num_workers={workers}",
        ],
    )
    loader = build_stream_loader(cfg, 0, 1, torch.device("cpu"), batch)
    try:
        for _ in range(5):  # pipeline build, worker start-up, first buffer fill
            next(loader)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            n += len(next(loader).keys)
        return n / (time.perf_counter() - t0)
    finally:
        loader.close()
        del loader
        gc.collect()


def train_rate(steps: int, batch: int, out: Path) -> float:
    """Images per second consumed by train steps of the default model (second half of the run)."""
    from gvae_dist.train import train_loop

    cfg = load_config(
        None,
        [
            f"optim.batch_size={batch}",
            f"optim.steps={2 * steps}",
            f"run.log_every={steps}",
            f"run.checkpoint_every={10 * steps}",
            "eval.at_end=false",
            "tracking.enabled=false",
            f"data.num_train={max(512, 4 * batch)}",
            f"run.output_dir={out}",
            "run.resume=false",
        ],
    )
    return float(train_loop(cfg).metrics["perf/images_per_s"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small data, short timings (a smoke test)")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--data-dir", help="where to build (or reuse) the shards; default: a temp dir")
    p.add_argument("--num", type=int, help="images per shard set (default 8192, quick 768)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="DALI threads = DataLoader workers (default: all cores)",
    )
    p.add_argument("--seconds", type=float, help="timing window per loader (default 6, quick 1)")
    p.add_argument("--rounds", type=int, help="best of N timings per loader (default 2, quick 1)")
    p.add_argument("--train-steps", type=int, help="timed train steps (default 10, quick 2)")
    args = p.parse_args(argv)
    num = args.num or (768 if args.quick else 8192)
    seconds = args.seconds or (1.0 if args.quick else 6.0)
    rounds = args.rounds or (1 if args.quick else 2)
    steps = args.train_steps or (2 if args.quick else 10)
    tmp = tempfile.TemporaryDirectory(prefix="gvae-bench-")
    root = Path(args.data_dir or tmp.name)

    rows = []
    for fmt in FORMATS:
        path = root / f"faces64-{fmt}-{num}"
        build_dataset("faces", path, num=num, image_format=fmt, shard_size=1000, workers=args.workers, progress=False)
        rates = {
            b: max(loader_rate(path, b, args.batch, args.workers, seconds) for _ in range(rounds)) for b in BACKENDS
        }
        rows.append(
            {
                "format": fmt,
                "dali_img_s": round(rates["dali"], 1),
                "webdataset_img_s": round(rates["webdataset"], 1),
                "ratio": round(rates["dali"] / rates["webdataset"], 3),
            }
        )
    train = train_rate(steps, args.batch, Path(tmp.name) / "train")
    slowest = min(r["dali_img_s"] for r in rows)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "settings": {
            "images": num,
            "image_size": 64,
            "batch": args.batch,
            "workers": args.workers,
            "seconds": seconds,
            "rounds": rounds,
            "quick": args.quick,
        },
        "loaders": rows,
        "train_step": {
            "img_s": round(train, 1),
            "batch": args.batch,
            "timed_steps": steps,
            "model": "default config (64x64, beta objective, fp32)",
        },
        "data_over_train": {r["format"]: round(r["dali_img_s"] / train, 2) for r in rows},
        "bottleneck": "data" if slowest < train else "compute",
        "targets": {
            "dali_vs_pil_jpg>=3": rows[1]["ratio"] >= 3,
            "dali_vs_pil_png>=2.5": rows[0]["ratio"] >= 2.5,
            "data>=3x_train": slowest >= 3 * train,
        },
    }
    print(f"{'format':<8}{'DALI CPU img/s':>16}{'WDS+PIL img/s':>16}{'ratio':>8}{'data/train':>12}")
    for r in rows:
        print(
            f"{r['format']:<8}{r['dali_img_s']:>16.0f}{r['webdataset_img_s']:>16.0f}{r['ratio']:>8.2f}"
            f"{report['data_over_train'][r['format']]:>12.1f}"
        )
    print(
        f"train step (default model, batch {args.batch}): {train:.0f} img/s -> bottleneck: "
        f"{report['bottleneck']}; targets: {report['targets']}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
