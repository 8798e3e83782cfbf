"""The ``gvae-dist`` command: a small surface over the config tree.

    gvae-dist train  --config FILE [--set key=value ...] [--workers N] [--address ADDR]
    gvae-dist eval   --checkpoint DIR [--set key=value ...]
    gvae-dist config --config FILE [--set ...] [--explain]

New knobs go into the config tree (``--set``), not onto the command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gvae_dist.config import ConfigError, explain, load_config

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML preset (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set objective.beta=8 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gvae-dist", description="Distributed Gated-VAE training")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (in this process, or on Ray with --workers)")
    _add_config_args(p)
    p.add_argument("--workers", type=int, help="Ray Train workers (sets distributed.workers)")
    p.add_argument("--address", help="Ray cluster to join (sets distributed.address)")

    p = sub.add_parser("eval", help="evaluate a checkpoint: DCI, partition purity, MIG, SAP")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (runs/<name>/checkpoints/step_N)")
    p.add_argument("--out", help="output directory (default: <run dir>/eval)")
    _add_config_args(p)

    p = sub.add_parser("config", help="print the resolved config, or --explain every key")
    _add_config_args(p)
    p.add_argument("--explain", action="store_true", help="list every key with its type, default and doc")
    return parser


def _load(args, extra: list[str] | None = None):
    return load_config(args.config, [*args.overrides, *(extra or [])])


def cmd_train(args) -> int:
    extra = []
    if args.workers is not None:
        extra.append(f"distributed.workers={args.workers}")
    if args.address:
        extra.append(f"distributed.address={args.address}")
    cfg = _load(args, extra)
    if cfg.distributed.workers > 0:
        from gvae_dist.launch import launch

        result = launch(cfg)
    else:
        from gvae_dist.train import train_loop

        result = train_loop(cfg)
    print(f"[gvae-dist] run directory: {result.run_dir}")
    if result.checkpoint:
        print(f"[gvae-dist] last checkpoint: {result.checkpoint}")
    if cfg.tracking.enabled:
        from gvae_dist.tracking import default_tracking_uri

        uri = cfg.tracking.uri or default_tracking_uri(cfg.run.output_dir)
        print(f"[gvae-dist] MLflow run {result.tracking_run_id} in {uri}")
        if uri.startswith("sqlite:"):
            print(f"[gvae-dist] browse it: mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    return 0


def cmd_eval(args) -> int:
    from gvae_dist.eval_runner import evaluate_checkpoint

    ckpt = Path(args.checkpoint)
    cfg = load_config(ckpt / "config.yaml", args.overrides) if (ckpt / "config.yaml").is_file() else None
    if cfg is None:
        raise ConfigError(f"--checkpoint {ckpt}: no config.yaml there; is this a checkpoint directory?")
    result = evaluate_checkpoint(ckpt, cfg, args.out)
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str)}, indent=2))
    return 0


def cmd_config(args) -> int:
    if args.explain:
        print("\n".join(explain()))
        return 0
    import yaml

    print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "config": cmd_config}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"gvae-dist: config error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"gvae-dist: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
