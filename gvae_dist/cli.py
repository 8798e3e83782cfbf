"""The ``gvae-dist`` command: a small surface over the config tree.

    gvae-dist train  --config FILE [--set key=value ...] [--workers N] [--address ADDR]
    gvae-dist eval   --checkpoint DIR [--json] [--set key=value ...]
    gvae-dist encode --checkpoint DIR --images FILE.npz|FOLDER [--out codes.npz] [--json]
    gvae-dist config --config FILE [--set ...] [--explain]
    gvae-dist tracking sync RUN_DIR [--set key=value ...]
    gvae-dist data build --source faces|shapes|dsprites|3dshapes|folder --out DIR [--num N]
                         [--format png|jpg] [--shard-size K] [--workers W] [--input PATH]
                         [--labels-csv CSV] [--config FILE] [--set data.key=value ...]
    gvae-dist data verify DIR [--full]
    gvae-dist data factor-effect --source faces|shapes|shards [--path DIR] [--image-size 32]
                         [--num N] [--likelihood bernoulli|gaussian --sigma S] [--feature-scale X]
    gvae-dist bench [--quick] [--suite NAME ...] [--device cpu|cuda] [--out FILE.json]
    gvae-dist tune   --space tune_spaces/FILE.yaml [--address ADDR] [--set key=value | --set tune.field=value ...]
    gvae-dist study  --config configs/study_faces.yaml [--parallel N] [--executor auto|local|ray]
                     [--cells GLOB ...] [--out DIR] [--address ADDR] [--set key=value ...]

New knobs go into the config tree (``--set``), not onto the command line.

Ray, DALI, MLflow and WebDataset are optional (gvae_dist/optional.py): a command that needs a
missing one prints one line naming the feature and the extra to install, and exits 2.

Exit codes: 0 done; 2 bad config or input, or a missing optional backend; 75 (``EX_TEMPFAIL``) stopped early on
``run.checkpoint_signal`` / ``run.stop_file`` after writing a checkpoint: run the same command
again to resume (the SLURM scripts in cluster/slurm requeue the job on it); 73 the run
directory is in use by another live run (its lock names the pid and host); 130 interrupted
(Ctrl-C): the MLflow run is marked KILLED, run the same command again to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gvae_dist.config import ClusterUnreachable, ConfigError, explain, load_config
from gvae_dist.optional import MissingDependency

__all__ = ["main", "build_parser"]


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--config", "-c", required=required, help="YAML preset (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set objective.beta=8 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gvae-dist", description="Distributed Gated-VAE training")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (in this process, or on Ray with --workers)")
    _add_config_args(p)
    p.add_argument("--workers", type=int, help="Ray Train workers (sets distributed.workers)")
    p.add_argument("--address", help="Ray cluster to join (sets distributed.address)")

    p = sub.add_parser("eval", help="evaluate a checkpoint: DCI, partition purity, MIG, SAP")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory (runs/<name>/checkpoints/step_N), "
        "or a run directory (runs/<name>: its newest checkpoint)",
    )
    p.add_argument("--out", help="output directory (default: <run dir>/eval)")
    p.add_argument("--json", action="store_true", help="print the headline numbers as JSON instead of a summary")
    _add_config_args(p)

    p = sub.add_parser("encode", help="encode images with a checkpoint: posterior means split by named partition")
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint directory (runs/<name>/checkpoints/step_N), "
        "or a run directory (runs/<name>: its newest checkpoint)",
    )
    p.add_argument(
        "--images",
        required=True,
        help=".npz with an 'images' array [N, H, W, C] (uint8, or float in [0, 1]), or a folder of PNG/JPG files",
    )
    p.add_argument("--out", help="write the codes to this .npz: one array per partition, mu, logvar, names")
    p.add_argument("--json", action="store_true", help="print the codes as JSON instead of a summary")

    p = sub.add_parser("config", help="print the resolved config, or --explain every key")
    _add_config_args(p)
    p.add_argument("--explain", action="store_true", help="list every key with its type, default and doc")

    p = sub.add_parser("tracking", help="MLflow bookkeeping of a run directory")
    t_sub = p.add_subparsers(dest="tracking_command", required=True)
    t = t_sub.add_parser(
        "sync",
        help="send what a tracking outage left owed (tracking_pending.json: the "
        "end status, metrics from metrics.jsonl) without training",
    )
    t.add_argument("run_dir", help="run directory (runs/<name>)")
    t.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key of the run's config.yaml, e.g. --set tracking.uri=http://127.0.0.1:5000",
    )

    p = sub.add_parser("data", help="build WebDataset shards (+ DALI indexes, manifest) or check them")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    b = data_sub.add_parser(
        "build",
        help="write shards from a generator or an imported dataset; resumable; labels etc. from the data.* config keys",
    )
    b.add_argument(
        "--source",
        required=True,
        choices=["faces", "shapes", "arrays", "dsprites", "3dshapes", "folder"],
        help="arrays: any labelled .npz/.h5 (dsprites and 3dshapes are its presets); folder: images + a labels CSV",
    )
    b.add_argument("--out", required=True, help="shard directory to write")
    b.add_argument("--num", type=int, help="samples (default: data.num_train generated, or all imported)")
    b.add_argument("--format", choices=["png", "jpg"], help="image encoding (sets data.image_format)")
    b.add_argument("--shard-size", type=int, default=2000, help="samples per tar (default 2000)")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel writer processes")
    b.add_argument("--input", help="the .npz / .h5 file (arrays, dsprites, 3dshapes) or the image folder")
    b.add_argument("--labels-csv", help="per-image labels for --source folder (default <input>/labels.csv)")
    b.add_argument(
        "--keys",
        help="arrays: which array holds what, e.g. images=imgs,factors=latents_values,"
        "classes=latents_classes,weak_labels=my_labels (default: found by name)",
    )
    b.add_argument(
        "--factor-names",
        help="arrays: comma-separated factor names, one per column (default: the file's factor_names, else latent0..)",
    )
    b.add_argument(
        "--discrete",
        help="arrays: comma-separated discrete factors, scored by accuracy (default: columns of class ids)",
    )
    b.add_argument(
        "--groups",
        help="arrays: factor groups that become partitions, "
        "e.g. 'pose=yaw,pitch,roll;expression=smile' (default: the file's factor_groups)",
    )
    _add_config_args(b)
    x = data_sub.add_parser(
        "export",
        help="write a built-in generator's images + factors as a labelled .npz (reads back with --source arrays)",
    )
    x.add_argument("--source", required=True, choices=["faces", "shapes"])
    x.add_argument("--out", required=True, help="the .npz to write (never overwritten)")
    x.add_argument("--num", type=int, help="samples (default data.num_train)")
    _add_config_args(x)
    v = data_sub.add_parser("verify", help="check shards against manifest.json and list bad samples")
    v.add_argument("path", help="shard directory")
    v.add_argument("--full", action="store_true", help="decode-check every sample, not only changed shards")
    e = data_sub.add_parser(
        "factor-effect",
        help="nats of reconstruction loss each factor is worth: "
        "one factor resampled (synthetic) or matched pairs (shards)",
    )
    e.add_argument("--source", required=True, choices=["faces", "shapes", "shards"])
    e.add_argument("--path", help="shard directory (--source shards)")
    e.add_argument(
        "--image-size",
        type=int,
        choices=[32, 64, 128],
        help="pixels (default 32 for faces/shapes, the shards' own size for shards)",
    )
    e.add_argument("--num", type=int, default=256, help="base images, or matched pairs per factor (default 256)")
    e.add_argument("--likelihood", choices=["bernoulli", "gaussian"], default="bernoulli")
    e.add_argument("--sigma", type=float, default=0.1, help="Gaussian observation std (default 0.1)")
    e.add_argument(
        "--feature-scale",
        type=float,
        default=1.0,
        help="faces: size of eyes, brows and mouth (as data.feature_scale; default 1.0)",
    )
    e.add_argument("--seed", type=int, default=0, help="seed of the bases and the resampled values (default 0)")

    p = sub.add_parser(
        "bench", help="performance benchmarks (gate, train step, vs a plain loop, end to end, scaling): table + JSON"
    )
    from gvae_dist.bench import add_arguments as add_bench_arguments

    add_bench_arguments(p)

    p = sub.add_parser(
        "tune",
        help="hyperparameter sweep (Ray Tune over Ray Train runs, MLflow parent + "
        "child runs); re-run the same command to resume an interrupted sweep",
    )
    p.add_argument("--space", required=True, help="search space file (see tune_spaces/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base config key, or a space field as tune.FIELD=VALUE (repeatable)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to run the trials on (default RAY_ADDRESS, else a private local cluster)",
    )

    p = sub.add_parser(
        "study",
        help="gated vs un-gated x objectives x seeds x label noise, run in sequence "
        "into results.csv/.md/.png; re-run the same command to resume; "
        "finished cells copied in from another machine are picked up",
    )
    p.add_argument("--config", "-c", required=True, help="study file (see configs/study_faces.yaml)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every cell, after study.overrides (repeatable)",
    )
    p.add_argument(
        "--set-gated",
        dest="gated_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in the gated cells only, after study.gated_overrides "
        "(repeatable): an ablation arm that the un-gated baseline must not get",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="cells at a time (default study.parallel): 1 = in sequence here, N > 1 = N Ray tasks "
        "or N local processes (--executor)",
    )
    p.add_argument(
        "--executor",
        choices=["auto", "local", "ray"],
        default=None,
        help="where parallel cells run (default study.executor): ray, local processes on this "
        "machine, or auto = ray if it is installed, else local",
    )
    p.add_argument(
        "--cells",
        action="append",
        default=[],
        metavar="GLOB",
        help="run only the cells whose names match (repeatable); finished cells are all collected",
    )
    p.add_argument("--out", default=None, help="study output directory (sets study.output_dir)")
    p.add_argument(
        "--address", default=None, help="Ray cluster for --parallel (default RAY_ADDRESS, else a private local cluster)"
    )

    p = sub.add_parser(
        "compare",
        help="an ablation: one arm of two studies run on the same data and seeds (e.g. the gated preset "
        "with and without a setting), A - B paired by seed with 95%% intervals, and what the cells compute "
        "differently",
    )
    p.add_argument("study_a", metavar="A", help="study output directory (holds results.csv)")
    p.add_argument("study_b", metavar="B", help="the other study's output directory")
    p.add_argument("--variant", choices=["gated", "ungated"], default="gated", help="which arm to pair (default gated)")
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
    from gvae_dist.rundir import RunLocked
    from gvae_dist.train import INTERRUPTED_EXIT_CODE, Interrupted, Preempted

    try:
        if cfg.distributed.workers > 0:
            from gvae_dist.launch import launch

            result = launch(cfg)
        else:
            from gvae_dist.train import train_loop

            result = train_loop(cfg)
    except (Preempted, RunLocked, Interrupted) as exc:
        print(f"gvae-dist: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # before the loop started (or after it ended)
        print("gvae-dist: interrupted; run the same command to resume", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    if os.environ.get("RANK", "0") != "0":  # torchrun: the summary is rank 0's to print
        return 0
    _print_data_summary(cfg, Path(result.run_dir))
    print(f"[gvae-dist] run directory: {result.run_dir}")
    if result.checkpoint:
        print(f"[gvae-dist] last checkpoint: {result.checkpoint}")
    if cfg.tracking.enabled and result.tracking_run_id:
        from gvae_dist.config import redact_uri
        from gvae_dist.tracking import tracking_uri

        uri = redact_uri(tracking_uri(cfg))
        print(f"[gvae-dist] MLflow run {result.tracking_run_id} in {uri}")
        if uri.startswith("sqlite:"):
            print(f"[gvae-dist] browse it: mlflow ui --backend-store-uri {uri} --host 127.0.0.1")
    return 0


def _print_data_summary(cfg, run_dir: Path) -> None:
    """Which data path, backend and split the run used, and where the shards are."""
    d = cfg.data
    if d.source != "shards":
        print(
            f"[gvae-dist] data: built-in synthetic {d.source!r} generated in memory ({d.num_train} train, "
            f"{d.num_eval} held-out eval images from another seed); no shards"
        )
        return
    from gvae_dist.data.shards import read_manifest

    try:
        split = read_manifest(d.path).get("split", False)
    except ValueError:  # e.g. shards on the workers' file system only: the run itself went fine
        split = None
    held_out = (
        f"data.eval_path {d.eval_path} (all of it)"
        if d.eval_path
        else f"the eval split ({split['eval']} samples)"
        if split
        else "its eval split"
        if split is None
        else "no eval split (a manifest from before splits)"
    )
    reads = [json.loads(p.read_text()) for p in sorted((run_dir / "data").glob("rank-*.json"))]
    if reads:
        backends = sorted({f"{r['backend']} ({r['decode_device']} decode)" for r in reads})
        once = all(r["first_epoch_keys"] is not None for r in reads)
        keys = [k for r in reads for k in (r["first_epoch_keys"] or [])]
        epoch = (
            f"; first epoch: {len(set(keys))} distinct of {reads[0]['samples']} samples, "
            f"{len(keys) - len(set(keys))} repeats (padding)"
            if once
            else ""
        )
        print(
            f"[gvae-dist] data: {', '.join(backends)} backend on {len(reads)} rank(s), "
            f"{reads[0]['split']} split: {reads[0]['samples']} samples in {len(reads[0]['shards'])} shards"
            f"{epoch}"
        )
    else:
        from gvae_dist.data.stream import choose_backend

        print(
            f"[gvae-dist] data: {choose_backend(cfg)} backend (chosen here; set data.record_reads=true "
            "for what each rank read), train split"
        )
    print(f"[gvae-dist] data: shards in {Path(d.path).resolve()}; evaluation read {held_out}")


def cmd_eval(args) -> int:
    from gvae_dist.eval_runner import (
        default_out_dir,
        evaluate_checkpoint,
        format_summary,
        resolve_checkpoint,
    )

    ckpt = resolve_checkpoint(args.checkpoint)
    cfg = load_config(ckpt / "config.yaml", args.overrides)
    out = Path(args.out) if args.out else default_out_dir(ckpt)
    result = evaluate_checkpoint(ckpt, cfg, out)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if isinstance(v, int | float | str)}, indent=2))
        return 0
    print(
        f"[gvae-dist] evaluated {ckpt} on {cfg.eval.num_train} + {cfg.eval.num_test} held-out codes "
        f"(fit + score, eval.num_train / eval.num_test)"
    )
    for line in format_summary(result):
        print(f"  {line}")
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    print(f"[gvae-dist] wrote to {out}: {', '.join(files)}")
    return 0


def cmd_encode(args) -> int:
    from gvae_dist.encode import encode_checkpoint, save_codes, summary_lines

    result = encode_checkpoint(args.checkpoint, args.images)
    out = save_codes(result, args.out) if args.out else None
    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint": str(result["checkpoint"]),
                    "partitions": result["partitions"],
                    "names": result["names"],
                    "codes": {k: v.tolist() for k, v in result["codes"].items()},
                    "mu": result["mu"].tolist(),
                    "logvar": result["logvar"].tolist(),
                }
            )
        )
        return 0
    print(
        f"[gvae-dist] encoded {len(result['names'])} images from {args.images} with {result['checkpoint']} "
        "(posterior means)"
    )
    for line in summary_lines(result):
        print(f"  {line}")
    print(
        f"[gvae-dist] wrote {out}: " + ", ".join([*result["codes"], "mu", "logvar", "names"])
        if out
        else "[gvae-dist] --out FILE.npz saves the codes (one array per partition, mu, logvar); --json prints them"
    )
    return 0


def cmd_config(args) -> int:
    if args.explain:
        print("\n".join(explain()))
        return 0
    import yaml

    print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")
    return 0


def cmd_tracking(args) -> int:
    """``tracking sync``: settle ``RUN_DIR/tracking_pending.json`` against the run's tracking store
    (its config.yaml, ``--set``, else ``$MLFLOW_TRACKING_URI``); exit 1 while something stays owed."""
    from gvae_dist.rundir import RunLock, RunLocked
    from gvae_dist.tracking import mlflow_client, tracking_uri
    from gvae_dist.tracking_pending import PENDING_FILE, settle_run_dir

    run_dir = Path(args.run_dir)
    if not (run_dir / PENDING_FILE).is_file():
        print(f"[gvae-dist] nothing owed: {run_dir / PENDING_FILE} does not exist")
        return 0
    cfg = load_config(run_dir / "config.yaml", args.overrides)
    out = run_dir.resolve()
    for _ in Path(cfg.run.name).parts:  # the store of a run without tracking.uri lies under run.output_dir
        out = out.parent
    cfg = load_config(run_dir / "config.yaml", [*args.overrides, f"run.output_dir={out}"])
    uri = tracking_uri(cfg)
    if "***" in uri:  # config.yaml holds the URI redacted
        uri = os.environ.get("MLFLOW_TRACKING_URI") or ""
        if not uri:
            raise ValueError(
                f"{run_dir / 'config.yaml'} holds tracking.uri with its credentials masked; give the "
                "real one in $MLFLOW_TRACKING_URI or with --set tracking.uri=..."
            )
    try:
        lock = RunLock(run_dir).acquire()  # not while a run of this directory settles or adds to it
    except RunLocked as exc:
        print(f"gvae-dist: {exc}", file=sys.stderr)
        return exc.exit_code
    with lock:
        return 0 if settle_run_dir(mlflow_client(uri), uri, run_dir) else 1


def _cmd_factor_effect(args) -> int:
    from gvae_dist.data.factor_effect import format_table, shards_effect, synthetic_effect

    def progress(msg: str) -> None:
        print(f"[gvae-dist] factor-effect: {msg}", file=sys.stderr, flush=True)

    if args.source == "shards":
        if not args.path:
            raise ValueError("--source shards needs --path DIR (a directory built by `gvae-dist data build`)")
        if args.feature_scale != 1.0:
            raise ValueError("--feature-scale applies to --source faces only")
        effects = shards_effect(
            args.path, args.image_size, args.num, args.seed, args.likelihood, args.sigma, progress=progress
        )
        from gvae_dist.data.shards import read_manifest

        size, count = args.image_size or int(read_manifest(args.path)["image_size"]), "pairs"
        what = f"shards {args.path}, matched pairs of weak labels"
    else:
        if args.path:
            raise ValueError(f"--path applies to --source shards only, not {args.source}")
        size, count = args.image_size or 32, "images"
        effects = synthetic_effect(
            args.source, size, args.num, args.seed, args.likelihood, args.sigma, args.feature_scale, progress=progress
        )
        what = f"{args.source}, feature_scale {args.feature_scale}, one factor resampled"
    lik = "Bernoulli" if args.likelihood == "bernoulli" else f"Gaussian sigma {args.sigma}"
    print(f"nats lost per image ({lik}; {what}; seed {args.seed})")
    print(format_table(effects, size, count))
    if args.source == "shards":
        print(
            "A factor's row says something only where it clearly exceeds the '(all labels equal)' "
            "row: what the labels leave free (within-bin variation, unlabelled nuisance) is in every row."
        )
    return 0


def cmd_data(args) -> int:
    if args.data_command == "factor-effect":
        return _cmd_factor_effect(args)
    if args.data_command == "export":
        from gvae_dist.data.importers import export_arrays

        cfg = _load(args)
        done = export_arrays(args.source, args.out, cfg.data, args.num)
        print(
            f"[gvae-dist] {done['num']} {args.source} images ({done['image_size']} px, data.seed={cfg.data.seed}) "
            f"and factors {', '.join(done['factors'])} written to {done['path']}"
            + (f"; factor groups {'; '.join(done['groups'])}" if done["groups"] else "")
        )
        print(f"[gvae-dist] import it: gvae-dist data build --source arrays --input {done['path']} --out DIR")
        return 0
    if args.data_command == "verify":
        import logging

        from gvae_dist.data.shardset import open_shards

        logging.getLogger("gvae_dist.data").setLevel(logging.ERROR)  # the problems are printed below
        shards = open_shards(args.path, on_bad="skip", verify="full" if args.full else "checksum")
        issues = shards.problems + shards.bad
        for issue in issues:
            print(f"BAD {issue}")
        print(
            f"{shards.num_samples} of {shards.manifest['num_samples']} samples readable in "
            f"{len(shards.shards)} shards; {len(issues)} problems"
        )
        return 1 if issues else 0
    from gvae_dist.data.importers import build_dataset, parse_layout_flags, partitions_hint

    cfg = _load(args, [f"data.image_format={args.format}"] if args.format else [])
    layout = parse_layout_flags(args.keys, args.factor_names, args.discrete, args.groups)
    manifest = build_dataset(
        args.source,
        args.out,
        cfg.data,
        num=args.num,
        shard_size=args.shard_size,
        workers=args.workers,
        input_path=args.input,
        labels_csv=args.labels_csv,
        layout=layout,
    )
    built, split = manifest["built"], manifest["split"]
    if built.get("cached"):
        print(
            f"[gvae-dist] shards at {args.out} are up to date (manifest.json matches the generator and its "
            f"settings, fingerprint {manifest['fingerprint']}; {len(manifest['shards'])} shards match their "
            f"sha256 ({built['verify_seconds']}s)): build skipped"
        )
    else:
        print(
            f"[gvae-dist] {manifest['num_samples']} samples in {len(manifest['shards'])} shards at {args.out} "
            f"({built['skipped_complete_shards']} were already complete; {built['seconds']}s); weak labels: "
            f"{', '.join(lab['name'] for lab in manifest['labels'])}"
        )
    print(
        f"[gvae-dist] split: {split['train']} train / {split['eval']} held-out eval samples "
        f"(data.eval_fraction={split['eval_fraction']}), each split in shards of its own"
    )
    for note in manifest["notes"]:
        print(f"[gvae-dist] note: {note}")
    hint = f" {partitions_hint(manifest['groups'])}" if manifest.get("groups") else ""
    print(f"[gvae-dist] train on it: gvae-dist train --set data.source=shards --set data.path={args.out}{hint}")
    return 0


def cmd_bench(args) -> int:
    from gvae_dist.bench import cmd_bench as run_bench

    return run_bench(args)


def _with_address(args) -> list[str]:
    """``--set`` overrides plus ``--address`` as ``distributed.address``."""
    return [*args.overrides, *([f"distributed.address={args.address}"] if args.address else [])]


def cmd_tune(args) -> int:
    from gvae_dist.tune import format_table, load_space, run_sweep

    overrides = _with_address(args)
    space = load_space(args.space, overrides)
    out = run_sweep(space)
    print(format_table(space, out["rows"]))
    print(f"[gvae-dist] sweep {out['path']}: {out['seconds']:.0f}s; MLflow parent run {out['parent_run_id']}")
    if out["interrupted"]:
        print("gvae-dist: sweep interrupted; run the same command again to resume it", file=sys.stderr)
        return 75
    if out["best"]:
        print(
            f"[gvae-dist] best trial {out['best']['trial']}: "
            + ", ".join(f"{k}={out['best'][k]}" for k in space.params)
            + f"; {space.metric}={out['best'][space.metric]:.4g}"
        )
    return 0


def cmd_study(args) -> int:
    from gvae_dist.study import StudyError, load_study, run_study

    overrides = _with_address(args)
    spec = load_study(args.config, overrides, args.gated_overrides)
    if args.out:
        spec.output_dir = args.out
    try:
        out = run_study(spec, parallel=args.parallel, executor=args.executor, only=args.cells)
    except StudyError as exc:
        print(f"gvae-dist: {exc}", file=sys.stderr)
        return 1
    print(out["paths"]["table"].read_text(), end="")
    print(
        f"[gvae-dist] study: ran {len(out['ran'])}, skipped {len(out['skipped'])} finished; "
        + ", ".join(f"{k} {v}" for k, v in out["paths"].items())
    )
    return 0


def cmd_compare(args) -> int:
    from gvae_dist.compare import compare_arms, config_differences, format_comparison, read_results

    entries = compare_arms(read_results(args.study_a), read_results(args.study_b), variant=args.variant)
    print(f"A = {args.study_a}, B = {args.study_b}: {args.variant} cells, A - B paired by seed (95% t-interval)")
    first_a, first_b = entries[0]["pairs"][0]
    differences = config_differences(args.study_a, args.study_b, first_a, first_b)
    if differences is None:
        print(f"(what A and B compute differently is unknown: {first_a} or {first_b} has no result.json)")
    elif differences:
        print("A and B differ in: " + "; ".join(differences))
        if any(d.startswith("data.") for d in differences):
            print("note: their data differ too, so each difference mixes the data with the setting under test")
    else:
        print("A and B compute the same configs: the differences are run-to-run variation")
    print()
    print(format_comparison(entries, winner="A"), end="")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "encode": cmd_encode,
    "config": cmd_config,
    "tracking": cmd_tracking,
    "data": cmd_data,
    "bench": cmd_bench,
    "tune": cmd_tune,
    "study": cmd_study,
    "compare": cmd_compare,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"gvae-dist: config error: {exc}", file=sys.stderr)
        return 2
    except MissingDependency as exc:
        print(f"gvae-dist: {exc}", file=sys.stderr)
        return 2
    # an address that does not answer; any other ConnectionError is a bug to see with its traceback
    except ClusterUnreachable as exc:
        print(f"gvae-dist: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"gvae-dist: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
