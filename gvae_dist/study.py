"""The Gated-VAE study: gated vs un-gated x objectives x seeds x label-noise levels.

Vowels et al. (arXiv 1911.06443) claim gating improves the average of DCI disentanglement,
completeness and informativeness (Eastwood & Williams 2018) over the un-gated models. A study
file names the grid; every cell is one independent :func:`gvae_dist.train.train_loop` run in its
own run directory, run in sequence in this process or, with ``parallel: N`` / ``--parallel N``,
N at a time: as Ray tasks (one CPU each) on a Ray cluster (``--address`` / ``RAY_ADDRESS``, or a
private local one), or as N local processes (``executor: local``, and ``auto`` when Ray is not
installed), so a study needs no Ray on a single machine.

Each finished cell leaves ``result.json`` in its run directory: its evaluation, timing
(seconds, steps/s, device) and the **fingerprint** of its config, a hash of everything that
defines the experiment, leaving out run-local keys (paths, names, tracking, threads, device,
logging and checkpoint cadence, see :data:`RUN_LOCAL`). A cell whose result carries the
fingerprint of the study's cell is skipped, so re-running the same command resumes a partly
finished study (an interrupted cell resumes from its own newest checkpoint through
``run.resume``), and cells run on other machines (``--cells GLOB`` picks which) are merged by
copying their run directories into ``<output_dir>/runs/`` and re-running the command. A run
directory made with a different config is refused with the keys that differ, never silently
re-used or overwritten. Results: ``results.csv`` (with seconds and steps/s per cell),
``results.md`` (mean ± std per objective, variant and noise level) and ``results.png`` in
``study.output_dir``.

Study file::

    study:
      output_dir: runs/study_faces     # relative to the working directory
      objectives: [beta, infovae, dip2]
      variants: [gated, ungated]
      preset: "faces_{objective}_{variant}.yaml"   # relative to the study file
      seeds: [0, 1, 2]
      label_flip_probs: [0.0, 0.2]
      overrides: ["optim.steps=1500"]  # --set style, applied to every cell

or ``presets: [a.yaml, b.yaml]`` instead of objectives/variants/preset (each preset's
objective and variant are read from its ``objective.name`` and ``gate.enabled``).
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import math
import os
import platform
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gvae_dist.compare import compare, format_comparison
from gvae_dist.config import Config, ConfigError, build_typed, load_config, read_yaml_mapping
from gvae_dist.fingerprint import MOOT, RUN_LOCAL, differing_keys, fingerprint  # noqa: F401 (re-exported)
from gvae_dist.fingerprint import fingerprinted as _fingerprinted

__all__ = [
    "StudySpec",
    "StudyError",
    "Cell",
    "load_study",
    "plan_cells",
    "run_study",
    "collect",
    "format_table",
    "fingerprint",
    "RESULT_FILE",
    "RUN_LOCAL",
]

METRICS = {
    "D": "disentanglement",
    "C": "completeness",
    "I": "informativeness",
    "purity": "partition_purity",
    "I_probe": "probe_informativeness",
    "MIG": "mig",
    "SAP": "sap",
}
VARIANTS = ("gated", "ungated")
EXECUTORS = ("auto", "local", "ray")
RESULT_FILE = "result.json"
# RUN_LOCAL (config keys that say where and how a cell runs, not what it computes: left out of
# the fingerprint) and MOOT live in gvae_dist.fingerprint, shared with run.resume.


@dataclass
class StudySpec:
    output_dir: str = "runs/study"
    """parent of the study's run directories and result files"""
    objectives: list[str] = field(default_factory=list)
    """objective names filled into ``preset`` (ignored with ``presets``)"""
    variants: list[Literal["gated", "ungated"]] = field(default_factory=lambda: list(VARIANTS))
    """'gated' and/or 'ungated', filled into ``preset``"""
    preset: str = "faces_{objective}_{variant}.yaml"
    """template of the preset file per objective and variant, relative to the study file"""
    presets: list[str] = field(default_factory=list)
    """explicit preset files instead of objectives x variants"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """run.seed values"""
    label_flip_probs: list[float] = field(default_factory=lambda: [0.0])
    """data.label_flip_prob values (weak-label noise)"""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides applied to every cell before seed and noise"""
    gated_overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides applied to the gated cells only, after ``overrides`` (an ablation arm
    such as ``pairing.identity=0.75`` that would change what the un-gated baseline computes)"""
    parallel: int = 1
    """cells run at a time: 1 = in sequence in this process, N > 1 = N at once (see executor)"""
    executor: Literal["auto", "local", "ray"] = "auto"
    """where parallel cells run: 'ray' tasks, 'local' processes, 'auto' = ray if installed"""
    base_dir: Path = Path(".")
    """directory the preset paths are relative to (the study file's; not a file key)"""


FILE_KEYS = [f.name for f in dataclasses.fields(StudySpec) if f.name != "base_dir"]


@dataclass
class Cell:
    name: str
    objective: str
    variant: str
    seed: int
    label_flip_prob: float
    cfg: Config

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cfg)


def load_study(
    path: str | Path, extra_overrides: list[str] | None = None, extra_gated: list[str] | None = None
) -> StudySpec:
    """Read and validate a study file (top-level ``study:`` mapping); ConfigError names the key.
    ``extra_overrides`` / ``extra_gated`` (the CLI's ``--set`` / ``--set-gated``) come after the
    file's ``overrides`` / ``gated_overrides``."""
    path = Path(path)
    data = read_yaml_mapping(path, "study file")
    if set(data) != {"study"} or not isinstance(data["study"], dict):
        raise ConfigError(f"{path}: expected one top-level key 'study' holding a mapping")
    body = data["study"]
    if "base_dir" in body:  # set from where the file is, never read from it
        raise ConfigError(f"study.base_dir: unknown key; allowed keys: {', '.join(FILE_KEYS)}")
    spec = build_typed(StudySpec, body, "study")  # unknown keys and wrong types, named
    spec.base_dir = path.parent
    for key in ("seeds", "label_flip_probs", "objectives", "presets", "overrides", "gated_overrides", "variants"):
        values = getattr(spec, key)
        if len(set(values)) != len(values):
            raise ConfigError(f"study.{key}: duplicate entries in {values}")
    for p in spec.label_flip_probs:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"study.label_flip_probs: {p} is outside [0, 1]")
    if not spec.seeds or not spec.label_flip_probs:
        raise ConfigError("study.seeds and study.label_flip_probs must not be empty")
    if bool(spec.presets) == bool(spec.objectives):
        raise ConfigError("study: give either study.presets or study.objectives (with study.variants), not both")
    if spec.objectives and not spec.variants:
        raise ConfigError("study.variants: must not be empty")
    for key, items in (("overrides", spec.overrides), ("gated_overrides", spec.gated_overrides)):
        for item in items:
            if "=" not in item:
                raise ConfigError(f"study.{key}: {item!r} is not key=value")
    spec.overrides = [*spec.overrides, *(extra_overrides or [])]  # --set: later ones win, repeats allowed
    spec.gated_overrides = [*spec.gated_overrides, *(extra_gated or [])]
    return spec


def _presets(spec: StudySpec) -> list[Path]:
    if spec.presets:
        return [spec.base_dir / p for p in spec.presets]
    try:
        return [
            spec.base_dir / spec.preset.format(objective=o, variant=v) for o in spec.objectives for v in spec.variants
        ]
    except (KeyError, IndexError) as exc:
        raise ConfigError(f"study.preset: {spec.preset!r} may use only {{objective}} and {{variant}}: {exc}") from None


def plan_cells(spec: StudySpec) -> list[Cell]:
    """Every cell's resolved, validated config (so a bad cell fails before any training)."""
    runs = Path(spec.output_dir) / "runs"
    cells = []
    for preset in _presets(spec):
        if not preset.is_file():
            raise ConfigError(f"study: preset {preset} does not exist (from study.preset/presets)")
        base = load_config(preset, spec.overrides)
        objective, variant = base.objective.name, "gated" if base.gate.enabled else "ungated"
        overrides = [*spec.overrides, *(spec.gated_overrides if variant == "gated" else [])]
        if variant == "gated" and spec.gated_overrides:
            base = load_config(preset, overrides)
            if not base.gate.enabled:
                raise ConfigError(
                    f"study.gated_overrides: they turn the gate of {preset.name} off; "
                    "an un-gated arm belongs in study.overrides or its own preset"
                )
        # A model that never reads the weak labels gives the same run at every noise level:
        # it runs once per seed and serves as the baseline of every label-flip level.
        reads_labels = base.gate.enabled or base.pairing.shared_factor > 0
        for p in spec.label_flip_probs if reads_labels else spec.label_flip_probs[:1]:
            for seed in spec.seeds:
                name = f"{preset.stem}__noise{p:g}__seed{seed}"
                cfg = load_config(
                    preset,
                    [
                        *overrides,
                        f"run.seed={seed}",
                        f"data.label_flip_prob={p}",
                        f"run.output_dir={runs}",
                        f"run.name={name}",
                    ],
                )
                cells.append(Cell(name, objective, variant, seed, float(p), cfg))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("study: two cells share a run name; are presets listed twice?")
    return cells


def _refuse(cell: Cell, source: Path, theirs: dict[str, Any] | None, fp: str) -> ConfigError:
    diff = differing_keys(theirs, cell.cfg.to_dict()) if theirs else []
    return ConfigError(
        f"study cell {cell.name}: {source} was made with a different config (fingerprint {fp}, this "
        f"study's cell is {cell.fingerprint}"
        + (f"; differing keys: {'; '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}" if diff else "")
        + f"). Move {source.parent} away to run the cell again, or restore the study settings it was "
        "made with"
    )


def _finished(cell: Cell) -> dict[str, Any] | None:
    """The cell's result (``result.json``) if it finished with this cell's config fingerprint;
    None if it has not finished; ConfigError if its run directory holds a different config."""
    run_dir = cell.cfg.run_dir()
    path = run_dir / RESULT_FILE
    if path.is_file():
        result = json.loads(path.read_text())
        # Recomputed from the saved config: results written before MOOT keys were dropped match too.
        theirs = fingerprint(result["config"]) if result.get("config") else result.get("fingerprint")
        if theirs != cell.fingerprint:
            raise _refuse(cell, path, result.get("config"), result.get("fingerprint"))
        result["fingerprint"] = theirs
        return result
    saved = run_dir / "config.yaml"  # written by train_loop at its start
    if saved.is_file():
        theirs = load_config(saved).to_dict()
        if fingerprint(theirs) != cell.fingerprint:
            raise _refuse(cell, saved, theirs, fingerprint(theirs))
    metrics = run_dir / "metrics.json"
    if metrics.is_file() and json.loads(metrics.read_text()).get("eval"):
        return _record(cell.cfg, seconds=None)  # finished before result files existed
    return None


def _train_speed(run_dir: Path, batch_size: int) -> tuple[int, float | None]:
    """(steps, training seconds) from ``metrics.jsonl``: each logged interval's steps over its
    images/s (which leaves out evaluation and checkpoints)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0, None
    steps, seconds, prev = 0, 0.0, 0
    for line in path.read_text().splitlines():
        row = json.loads(line)
        step, ips = int(row["step"]), float(row.get("perf/images_per_s", 0.0))
        n = step - prev if step > prev else step  # a resumed run starts counting again
        prev = step
        if n > 0 and ips > 0:
            steps, seconds = steps + n, seconds + n * batch_size / ips
    return steps, (seconds or None)


def _record(cfg: Config, seconds: float | None) -> dict[str, Any]:
    """Write the cell's ``result.json`` (fingerprint, evaluation, timing) from its run directory."""
    import torch

    run_dir = cfg.run_dir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps, train_s = _train_speed(run_dir, cfg.optim.batch_size)
    device = cfg.run.device if cfg.run.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        "fingerprint": fingerprint(cfg),
        "name": cfg.run.name,
        "eval": metrics["eval"],
        "train": metrics["train"],
        "seconds": seconds,
        "train_seconds": train_s,
        "steps": steps,
        "steps_per_s": steps / train_s if train_s else None,
        "device": (
            "unknown"
            if seconds is None  # recorded after the fact, maybe elsewhere
            else torch.cuda.get_device_name()
            if device == "cuda"
            else f"cpu ({platform.processor() or platform.machine()})"
        ),
        "host": platform.node() if seconds is not None else "unknown",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": _fingerprinted(cfg.to_dict()),
    }
    tmp = run_dir / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(run_dir / RESULT_FILE)
    return result


class StudyError(RuntimeError):
    """Some cells failed; the others finished and are kept. The message names the failed cells."""


def _resolve_executor(executor: str) -> str:
    from gvae_dist.optional import available

    if executor == "auto":
        return "ray" if available("ray") else "local"
    return executor


def run_study(
    spec: StudySpec, log=print, parallel: int | None = None, executor: str | None = None, only: list[str] | None = None
) -> dict[str, Any]:
    """Run the unfinished cells, then write results.csv / .md / .png.

    ``parallel`` (default ``study.parallel``) = 1 runs the cells one after another in this
    process; N > 1 runs N at a time with ``executor`` (default ``study.executor``): ``ray`` tasks
    (one CPU and one torch thread each) on the cluster at ``distributed.address`` /
    ``RAY_ADDRESS`` or a private local one, or ``local`` processes on this machine. ``only``
    (glob patterns) restricts which cells run; every finished cell is collected. A failed cell
    does not stop the others; :class:`StudyError` names it at the end (rerun to retry it).

    Returns ``{"ran": [names], "skipped": [names], "rows": [...], "paths": {...}}``.
    """
    cells = plan_cells(spec)
    parallel = spec.parallel if parallel is None else parallel
    executor = spec.executor if executor is None else executor
    if parallel < 1:
        raise ConfigError(f"study.parallel: must be >= 1, got {parallel}")
    if executor not in EXECUTORS:
        raise ConfigError(f"study.executor: {executor!r} is not one of {list(EXECUTORS)}")
    selected = {c.name for c in cells if not only or any(fnmatch.fnmatchcase(c.name, g) for g in only)}
    if only and not selected:
        raise ConfigError(
            f"--cells {' '.join(only)}: matches none of the {len(cells)} cells (names look like {cells[0].name})"
        )
    todo, skipped, results = [], [], {}
    for i, cell in enumerate(cells, 1):
        if (result := _finished(cell)) is not None:
            results[cell.name] = result
            skipped.append(cell.name)
            log(
                f"[gvae-dist study] {i}/{len(cells)} {cell.name}: done already"
                + (f" on {result.get('host')}" if result.get("host") else "")
                + ", skipped"
            )
        elif cell.name not in selected:
            continue
        elif not cell.cfg.eval.at_end:
            raise ConfigError(f"study cell {cell.name}: eval.at_end is false, so it would have no metrics")
        else:
            todo.append(cell)
    t_start = time.perf_counter()
    if parallel == 1 or len(todo) <= 1:
        failed = _run_here(todo, log)
    elif _resolve_executor(executor) == "ray":
        failed = _run_on_ray(todo, parallel, log)
    else:
        failed = _run_local(todo, parallel, log)
    ran = [c.name for c in todo if c.name not in failed]
    if todo:
        log(f"[gvae-dist study] ran {len(ran)} cell(s) in {time.perf_counter() - t_start:.0f}s")
    for cell in todo:
        if cell.name not in failed and (result := _finished(cell)) is not None:
            results[cell.name] = result
    rows = [_row(c, results[c.name]) for c in cells if c.name in results]
    paths = collect(rows, Path(spec.output_dir)) if rows else {}
    if failed:
        raise StudyError(
            f"{len(failed)} of {len(cells)} study cells failed (the rest are in "
            f"{spec.output_dir}); rerun the same command to retry them:\n"
            + "\n".join(f"  {name}: {err}" for name, err in failed.items())
        )
    return {"ran": ran, "skipped": skipped, "rows": rows, "paths": paths}


def _run_here(todo: list[Cell], log) -> dict[str, str]:
    from gvae_dist.optional import MissingDependency
    from gvae_dist.train import train_loop

    failed = {}
    for i, cell in enumerate(todo, 1):
        t0 = time.perf_counter()
        log(f"[gvae-dist study] {i}/{len(todo)} {cell.name}: training")
        try:
            train_loop(cell.cfg)
        except (KeyboardInterrupt, SystemExit, MissingDependency):
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the cell's name, others go on
            failed[cell.name] = f"{type(exc).__name__}: {exc} (run dir {cell.cfg.run_dir()})"
            log(f"[gvae-dist study] {i}/{len(todo)} {cell.name}: FAILED: {exc}")
            continue
        result = _record(cell.cfg, time.perf_counter() - t0)
        log(
            f"[gvae-dist study] {i}/{len(todo)} {cell.name}: done in {result['seconds']:.0f}s"
            + (f", {result['steps_per_s']:.1f} steps/s" if result["steps_per_s"] else "")
            + f" on {result['device']}"
        )
    return failed


def _train_cell(config: dict[str, Any]) -> float:
    """One cell in a worker process (Ray task or local process): ``train_loop`` with its output
    (per-step lines, warnings) in ``<run dir>/train.log`` rather than interleaved on the driver,
    then its ``result.json``; returns seconds."""
    import contextlib

    from gvae_dist.config import config_from_dict
    from gvae_dist.train import train_loop

    cfg = config_from_dict(config)
    cfg.run_dir().mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with (
        open(cfg.run_dir() / "train.log", "a") as log,
        contextlib.redirect_stdout(log),
        contextlib.redirect_stderr(log),
    ):
        train_loop(cfg)
    return _record(cfg, time.perf_counter() - t0)["seconds"]


def _run_local(todo: list[Cell], parallel: int, log) -> dict[str, str]:
    """N cells at a time, each in a fresh local process (spawned: no CUDA or thread state is
    inherited), with ``run.threads`` = this machine's CPUs / N unless set."""
    import multiprocessing

    from gvae_dist.launch import local_cpus

    threads = max(1, local_cpus() // parallel)
    log(f"[gvae-dist study] {len(todo)} cell(s), {parallel} at a time in local processes ({threads} thread(s) each)")
    ctx = multiprocessing.get_context("spawn")
    # Each cell's DCI runs its factors in-process: the cells already fill the cores, and a
    # joblib/loky pool left in a pool worker kept that worker (and so the study) from exiting.
    saved = os.environ.get("JOBLIB_MULTIPROCESSING")
    os.environ["JOBLIB_MULTIPROCESSING"] = "0"  # read by the spawned workers at start-up
    try:
        return _pool_cells(todo, parallel, threads, ctx, log)
    finally:
        if saved is None:
            os.environ.pop("JOBLIB_MULTIPROCESSING", None)
        else:
            os.environ["JOBLIB_MULTIPROCESSING"] = saved


# How often a local study worker checks that the study's driver still runs.
PARENT_POLL_S = 1.0


def _exit_with_parent(parent_pid: int) -> None:
    """Initializer of the local study workers: a daemon thread that ends the worker (SIGTERM,
    the cell's last checkpoint stays) once the driver that started it is gone. Without it a
    driver killed by a signal it cannot handle (``kill``, SIGKILL, a closed session) left its
    workers training the cells they held and the ones queued for them, writing into the study's
    run directories while a rerun trained the same cells (seen while running study v19)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gvae-study-parent-watch", daemon=True).start()


def _pool_cells(todo: list[Cell], parallel: int, threads: int, ctx, log) -> dict[str, str]:
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    failed: dict[str, str] = {}
    n, done_count = len(todo), 0
    with ProcessPoolExecutor(
        max_workers=parallel, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        pending = {}
        for cell in todo:
            data = cell.cfg.replace({"run.threads": cell.cfg.run.threads or threads}).to_dict()
            pending[pool.submit(_train_cell, data)] = cell
        while pending:
            ready, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in ready:
                cell = pending.pop(fut)
                done_count += 1
                try:
                    seconds = fut.result()
                    log(f"[gvae-dist study] {done_count}/{n} {cell.name}: done in {seconds:.0f}s")
                except Exception as exc:  # noqa: BLE001 - reported with the cell's name, others go on
                    failed[cell.name] = f"{type(exc).__name__}: {exc} (run dir {cell.cfg.run_dir()})"
                    log(f"[gvae-dist study] {done_count}/{n} {cell.name}: FAILED: {exc}")
    return failed


def _run_on_ray(todo: list[Cell], parallel: int, log) -> dict[str, str]:
    from gvae_dist.optional import require

    ray = require("ray", "gvae-dist study --executor ray (cells as Ray tasks)")
    from gvae_dist.launch import connect, disconnect
    from gvae_dist.tracking import prepare_store

    for cfg in {c.cfg.tracking.uri or c.cfg.run.output_dir: c.cfg for c in todo}.values():
        prepare_store(cfg)  # the cells open runs concurrently: create the store first
    temp_dir = connect(todo[0].cfg)
    failed: dict[str, str] = {}
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_train_cell)
        queue, pending, n = list(todo), {}, len(todo)
        log(
            f"[gvae-dist study] {n} cell(s), {parallel} at a time on Ray "
            f"({ray.cluster_resources().get('CPU', 0):g} CPUs)"
        )
        done_count = 0
        while queue or pending:
            while queue and len(pending) < parallel:
                cell = queue.pop(0)
                data = cell.cfg.replace({"run.threads": cell.cfg.run.threads or 1}).to_dict()  # one core per task
                pending[task.remote(data)] = cell
                log(f"[gvae-dist study] {cell.name}: started")
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                done_count += 1
                try:
                    seconds = ray.get(ref)
                    log(f"[gvae-dist study] {done_count}/{n} {cell.name}: done in {seconds:.0f}s")
                except ray.exceptions.RayError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    failed[cell.name] = f"{type(cause).__name__}: {cause} (run dir {cell.cfg.run_dir()})"
                    log(f"[gvae-dist study] {done_count}/{n} {cell.name}: FAILED: {cause}")
    finally:
        disconnect(temp_dir)
    return failed


def _row(cell: Cell, result: dict[str, Any]) -> dict[str, Any]:
    ev = result["eval"]
    assert ev, f"{cell.name} finished without eval metrics"
    row = {
        "run": cell.name,
        "objective": cell.objective,
        "variant": cell.variant,
        "seed": cell.seed,
        "label_flip_prob": cell.label_flip_prob,
    }
    row.update({k: ev.get(src, math.nan) for k, src in METRICS.items()})
    row["DCI_mean"] = (row["D"] + row["C"] + row["I"]) / 3
    row["neg_elbo"] = ev.get("neg_elbo", math.nan)
    row.update({k: result.get(k) for k in ("steps", "seconds", "steps_per_s", "device")})
    return row


def _group(rows: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["objective"], r["variant"], r["label_flip_prob"]), []).append(r)
    return groups


def _mean_std(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean ± std over seeds per objective, variant and noise level."""
    cols = ["D", "C", "I", "DCI_mean", "purity", "I_probe"]
    lines = [
        "| objective | variant | label flip | seeds | " + " | ".join(cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols),
    ]
    for (obj, var, p), group in sorted(_group(rows).items()):
        cells = []
        for c in cols:
            mean, std = _mean_std([g[c] for g in group])
            cells.append(f"{mean:.3f} ± {std:.3f}")
        lines.append(f"| {obj} | {var} | {p:g} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bar_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    from gvae_dist.plots import plot_bars

    groups = sorted(_group(rows).items())
    labels = [f"{o}\n{v}\nflip {p:g}" for (o, v, p), _ in groups]
    stats = [_mean_std([g["DCI_mean"] for g in grp]) for _, grp in groups]
    colors = ["tab:blue" if v == "gated" else "tab:orange" for (_, v, _), _ in groups]
    return plot_bars(
        labels,
        [m for m, _ in stats],
        [s for _, s in stats],
        colors,
        "mean of D, C, I (± std over seeds)",
        "Gated (blue) vs un-gated (orange)",
        path,
    )


def collect(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Write ``results.csv``, ``results.md`` and ``results.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "results.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    md_path = out_dir / "results.md"
    md_path.write_text(format_table(rows))
    comparison = out_dir / "comparison.md"
    comparison.write_text(format_comparison(compare(rows)))
    paths = {
        "csv": csv_path,
        "table": md_path,
        "comparison": comparison,
        "plot": _bar_plot(rows, out_dir / "results.png"),
    }
    paths.update(_traversal_pairs(rows, out_dir))
    return paths


def _traversal_pairs(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, Path]:
    """Per objective, the gated and the un-gated model's traversals side by side
    (``traversals_<objective>.png``), from the first seed and noise level both finished."""
    from gvae_dist.plots import plot_side_by_side

    out: dict[str, Path] = {}
    runs = out_dir / "runs"
    for obj in dict.fromkeys(r["objective"] for r in rows):
        by_key = {(r["variant"], r["seed"], r["label_flip_prob"]): r for r in rows if r["objective"] == obj}
        baseline = {seed: r for (v, seed, _), r in by_key.items() if v == "ungated"}
        for (variant, seed, p), r in sorted(by_key.items(), key=lambda kv: (kv[0][2], kv[0][1])):
            twin = baseline.get(seed)
            if variant != "gated" or twin is None:
                continue
            panels = {
                f"{v} ({row['run']})": runs / row["run"] / "eval" / "traversals.png"
                for v, row in (("gated", r), ("un-gated", twin))
            }
            if all(path.is_file() for path in panels.values()):
                out[f"traversals_{obj}"] = plot_side_by_side(
                    panels,
                    f"{obj}: gated vs un-gated latent traversals (seed {seed}, label flip {p:g})",
                    out_dir / f"traversals_{obj}.png",
                )
                break
    return out
