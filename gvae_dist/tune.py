"""Hyperparameter sweeps: Ray Tune over Ray Train runs, one nested MLflow run per trial.

A search space file (``tune_spaces/*.yaml``) names a base config preset, the objective metric
and mode, distributions over dotted config keys, the number of samples, the scheduler and the
search algorithm; :func:`load_space` validates it before any work starts.

Pattern (Ray Train V2, see docs/notes): ``Tuner`` runs a *function* trainable; each trial builds
its own ``TorchTrainer`` with a stable run name (``<sweep>_<trial id>``) and
``TuneReportCallback``, so the checkpoints ``train_loop`` reports (every
``run.checkpoint_every`` steps) reach Tune and ASHA can stop a trial early. A trial that is
restored after an interruption re-runs the same Train run name, so Ray Train continues it from
its newest checkpoint.

MLflow: one parent run per sweep (keyed ``tune:<experiment path>``); each trial opens its child
run through :func:`gvae_dist.tracking.open_run` (as ``launch`` does) and tags it
``mlflow.parentRunId``. At the end the parent gets the best trial's params, metric, checkpoint
and tag ``gvae_dist.best_trial``; the child of the best trial is tagged ``gvae_dist.best=true``.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gvae_dist.config import (
    Config,
    ConfigError,
    apply_overrides,
    build_typed,
    load_config,
    read_yaml_mapping,
)

__all__ = ["Space", "load_space", "run_sweep", "trial_config"]

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid")
PARENT_TAG = "mlflow.parentRunId"
TRIAL_DRIVER_CPUS = 1


@dataclass
class Space:
    """A validated search space file."""

    path: Path
    base: Path | None
    overrides: list[str]
    metric: str
    mode: str
    params: dict[str, dict[str, list]]
    num_samples: int
    scheduler: dict[str, Any] = field(default_factory=dict)
    search: str = "random"
    max_concurrent: int = 0

    def num_trials(self) -> int:
        """num_samples x the size of every grid dimension (what Tune will run)."""
        return self.num_samples * math.prod(len(d["grid"]) for d in self.params.values() if "grid" in d)


@dataclass
class SchedulerFile:
    """``scheduler:`` of a search space file (``scheduler: asha`` is short for ``{name: asha}``)."""

    name: Literal["asha", "none"] = "none"
    grace_period: int | None = None
    reduction_factor: float | None = None
    max_t: int | None = None


@dataclass
class SpaceFile:
    """The keys of a search space file, read by the config's typed builder; :func:`load_space`
    then checks what types cannot say (distributions, the metric, ASHA's counts)."""

    base: str | None = None
    set: list[str] = field(default_factory=list)
    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    params: dict[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    scheduler: SchedulerFile = field(default_factory=SchedulerFile)
    search: Literal["random", "optuna"] = "random"
    max_concurrent: int = 0


def _err(path: Path, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {key}: {msg}")


def _check_dist(path: Path, key: str, spec: Any) -> dict[str, list]:
    where = f"params.{key}"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise _err(path, where, f"expected one of {{{', '.join(d + ': [...]' for d in DISTRIBUTIONS)}}}, got {spec!r}")
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        raise _err(path, where, f"unknown distribution {kind!r}; choose one of {', '.join(DISTRIBUTIONS)}")
    if not isinstance(args, list) or not args:
        raise _err(path, where, f"{kind} needs a non-empty list, got {args!r}")
    if kind in ("loguniform", "uniform"):
        try:
            lo, hi = (float(a) for a in args)  # YAML 1.1 reads `1e-4` as a string
        except (TypeError, ValueError):
            raise _err(path, where, f"{kind} needs [low, high] numbers, got {args!r}") from None
        if not lo < hi or (kind == "loguniform" and lo <= 0):
            raise _err(path, where, f"{kind} needs {'0 < ' if kind == 'loguniform' else ''}low < high, got {args!r}")
        args = [lo, hi]
    return {kind: args}


def _corners(params: dict[str, dict[str, list]]) -> list[dict[str, Any]]:
    """Bounds of every numeric distribution x every choice/grid value: the objective weight
    constraints are linear in the weights, so a violation is reachable iff one corner violates."""
    axes = [[(k, v) for v in next(iter(d.values()))] for k, d in params.items()]
    combos = list(itertools.islice(itertools.product(*axes), 512))
    return [dict(c) for c in combos]


def _build(space: Space, extra: list[str], point: dict[str, Any]) -> Config:
    return load_config(space.base, [*space.overrides, *extra]).replace(point)


def load_space(path: str | Path, overrides: list[str] | None = None) -> Space:
    """Read and validate a space file; ``overrides`` are ``--set`` config keys for the base
    config, or ``tune.<field>=value`` for the space's own fields (``tune.num_samples=4``)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "search space")
    cfg_sets = [o for o in overrides or [] if not o.startswith("tune.")]
    tune_sets = [o.removeprefix("tune.") for o in overrides or [] if o.startswith("tune.")]
    raw = apply_overrides(raw, tune_sets)
    if isinstance(raw.get("scheduler"), str):  # `scheduler: asha` is short for {name: asha}
        raw["scheduler"] = {"name": raw["scheduler"]}
    try:  # unknown keys, types and choices: the config's typed builder
        file = build_typed(SpaceFile, {k: v for k, v in raw.items() if v is not None}, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    base = (path.parent / file.base).resolve() if file.base else None
    if base is not None and not base.is_file():
        raise _err(path, "base", f"config preset {base} does not exist")
    sets, mode, search, mc = file.set, file.mode, file.search, file.max_concurrent
    if not file.params:
        raise _err(path, "params", "need at least one `dotted.config.key: {distribution: [...]}`")
    params = {k: _check_dist(path, k, v) for k, v in file.params.items()}
    n = file.num_samples
    if n < 1:
        raise _err(path, "num_samples", f"a positive integer, got {n!r}")
    sched = {k: v for k, v in dataclasses.asdict(file.scheduler).items() if v is not None}
    if search == "optuna" and any("grid" in d for d in params.values()):
        raise _err(path, "search", "optuna cannot sample 'grid' dimensions; use choice, or search: random")
    if mc < 0:
        raise _err(path, "max_concurrent", f"an integer >= 0 (0 = as many as the cluster fits), got {mc!r}")
    space = Space(path, base, [*sets, *cfg_sets], file.metric, mode, params, n, sched, search, mc)
    try:
        cfg = load_config(base, space.overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: base config: {exc}") from None
    _check_metric(path, space.metric, space.mode, cfg)
    _check_scheduler(path, sched, cfg)
    for point in _corners(params):
        try:
            _build(space, [], point)
        except ConfigError as exc:
            raise ConfigError(f"{path}: params: the point {point} is reachable and invalid: {exc}") from None
    return space


TRAIN_METRICS = ("loss", "recon", "kl")
# the direction in which each reported metric improves (the rest have none: kl, ...)
LOWER_IS_BETTER = (
    "loss",
    "recon",
    "eval/informativeness_error",
    "eval/all/informativeness_error",
    "eval/neg_elbo",
    "eval/recon",
)


UNKNOWN_FACTOR = "<factor>"
"""Stands for the factors of shards whose manifest is not readable where a sweep starts."""


def reported_metrics(cfg: Config) -> list[str]:
    """Every metric a trial reports to Tune at each checkpoint (when eval/* coincides with it):
    the train loss terms and the ``eval/*`` names of :func:`gvae_dist.eval_runner.metric_names`.
    When the data's factors cannot be read here (shards without a manifest on this machine),
    the partitions' factors and :data:`UNKNOWN_FACTOR`, which stands for any other factor."""
    from gvae_dist.data.shards import source_names
    from gvae_dist.eval_runner import metric_names

    names = source_names(cfg.data)
    if names is None:
        named = dict.fromkeys(f for p in cfg.partition_spec() for f in p.factors)
        factors = [*named, UNKNOWN_FACTOR]
    else:
        factors = names["factors"]
    return [*TRAIN_METRICS, *(f"eval/{m}" for m in metric_names(cfg, factors))]


def _is_reported(metric: str, valid: list[str]) -> bool:
    """``metric`` is in ``valid``, or fills an :data:`UNKNOWN_FACTOR` name of it with a factor."""
    if metric in valid:
        return True
    for name in valid:
        head, sep, tail = name.partition(UNKNOWN_FACTOR)
        if sep and metric.startswith(head) and metric.endswith(tail):
            factor = metric[len(head) : len(metric) - len(tail)]
            if factor and "/" not in factor:
                return True
    return False


def _check_metric(path: Path, metric: str, mode: str, cfg: Config) -> None:
    """The objective metric must be one a trial reports, in every Tune report (one per
    checkpoint), or Tune ends the sweep after the first trial trained; the mode must improve it."""
    valid = reported_metrics(cfg)
    if not _is_reported(metric, valid):
        close = difflib.get_close_matches(metric, valid, n=1)
        raise _err(
            path,
            "metric",
            f"{metric!r} is not a metric a trial reports"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; valid metrics: {', '.join(valid)}",
        )
    best = "min" if metric in LOWER_IS_BETTER else "max" if metric.startswith("eval/") and metric != "eval/kl" else None
    if best and mode != best:
        raise _err(
            path,
            "mode",
            f"{metric} is better when {'lower' if best == 'min' else 'higher'}: set mode: {best} (now {mode})",
        )
    if metric in TRAIN_METRICS:
        return
    every, ckpt = cfg.eval.every, cfg.run.checkpoint_every
    if not cfg.eval.at_end or not every or ckpt % every:
        raise _err(
            path,
            "metric",
            f"{metric} is reported only when an evaluation coincides with a checkpoint: "
            f"set eval.every to run.checkpoint_every ({ckpt}) or a divisor of it "
            f"(now {every}) and eval.at_end=true (now {cfg.eval.at_end})",
        )


def _check_scheduler(path: Path, sched: dict[str, Any], cfg: Config) -> None:
    """ASHA's numbers are counts of Tune reports (one per checkpoint)."""
    for key, kind, low in (("grace_period", int, 1), ("max_t", int, 1), ("reduction_factor", (int, float), 1)):
        v = sched.get(key)
        if v is not None and (
            not isinstance(v, kind) or isinstance(v, bool) or v < low or (key == "reduction_factor" and v <= 1)
        ):
            want = "a number > 1" if key == "reduction_factor" else "an integer >= 1"
            raise _err(path, f"scheduler.{key}", f"{want}, got {v!r}")
    reports = math.ceil(cfg.optim.steps / cfg.run.checkpoint_every)
    if sched.get("name") == "asha" and int(sched.get("grace_period", 1)) > int(sched.get("max_t", 100)):
        raise _err(path, "scheduler.grace_period", f"{sched['grace_period']} is above max_t {sched.get('max_t', 100)}")
    if sched.get("name") == "asha" and int(sched.get("grace_period", 1)) > reports:
        raise _err(
            path,
            "scheduler.grace_period",
            f"{sched.get('grace_period', 1)} reports, but a trial reports "
            f"only {reports} times (optim.steps {cfg.optim.steps} / "
            f"run.checkpoint_every {cfg.run.checkpoint_every}): ASHA "
            "would never decide; lower it or checkpoint more often",
        )


def _tune_param(spec: dict[str, list]):
    from ray import tune

    ((kind, args),) = spec.items()
    return {
        "loguniform": lambda: tune.loguniform(*args),
        "uniform": lambda: tune.uniform(*args),
        "choice": lambda: tune.choice(args),
        "grid": lambda: tune.grid_search(args),
    }[kind]()


def trial_config(space: Space, extra: list[str], point: dict[str, Any], name: str) -> Config:
    """The run config of one trial: base + overrides + the sampled point, named ``name``, on
    at least one Ray worker."""
    cfg = _build(space, extra, point)
    return cfg.replace({"run.name": name, "distributed.workers": max(1, cfg.distributed.workers)})


def _trial(config: dict[str, Any], space: Space, sweep: str, extra: list[str], parent_run_id: str | None) -> None:
    """One Tune trial (``config`` = the sampled point): a Ray Train run of ``train_loop``.

    Every checkpoint ``train_loop`` reports reaches Tune through ``TuneReportCallback``; with
    ``eval.every`` equal to ``run.checkpoint_every`` each report carries the held-out ``eval/*``
    metrics (the final one always does), so ASHA and the best-trial choice can use them."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gvae_dist.launch import build_trainer, run_exists
    from gvae_dist.tracking import mlflow_client, open_run, tracking_uri

    point = {k: config[k] for k in space.params}
    name = f"{sweep}_{tune.get_context().get_trial_id()}"
    cfg = trial_config(space, extra, point, name)
    storage = cfg.distributed.storage_path
    exists = run_exists(storage, name)
    run_id = open_run(cfg, f"{storage}/{name}", reuse=exists)
    if run_id is not None and parent_run_id:
        client = mlflow_client(tracking_uri(cfg))
        client.set_tag(run_id, PARENT_TAG, parent_run_id)
        client.set_tag(run_id, "gvae_dist.sweep", sweep)
        if not exists:
            for k, v in point.items():
                client.log_param(run_id, f"tune.{k}", v)
    build_trainer(cfg, run_id, callbacks=[TuneReportCallback()]).fit()


def run_sweep(space: Space, extra: list[str] | None = None, callbacks: list | None = None) -> dict[str, Any]:
    """Run (or resume) the sweep; returns ``{"rows", "best", "parent_run_id", "interrupted",
    "path", "seconds"}``."""
    import time

    from gvae_dist.optional import require

    ray = require("ray", "gvae-dist tune (Ray Tune)")
    from ray import tune

    from gvae_dist.launch import connect, disconnect, resolve_config
    from gvae_dist.tracking import mlflow_client, open_run, tracking_uri

    extra = list(extra or [])
    base = resolve_config(trial_config(space, extra, {}, "x"))
    sweep = load_config(space.base, [*space.overrides, *extra]).run.name
    tune_root = str(Path(base.run.output_dir) / "tune")
    exp_path = f"{tune_root}/{sweep}"
    # ship absolute paths to the trials; the trials' Train runs live next to launch's
    extra = [
        *extra,
        f"run.output_dir={base.run.output_dir}",
        f"distributed.storage_path={base.distributed.storage_path}",
    ]
    if base.tracking.enabled and base.tracking.uri:  # None: credentials, kept in the environment
        extra.append(f"tracking.uri={base.tracking.uri}")
    temp_dir = connect(base)
    t0 = time.perf_counter()
    parent = None
    try:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        d = base.distributed
        # what each trial reserves: its driver (a Tune actor that only waits on its TorchTrainer)
        # and the Train workers, which do the work
        per_trial = TRIAL_DRIVER_CPUS + d.workers * d.cpus_per_worker
        workers = f"{d.workers} worker(s) x {d.cpus_per_worker} CPU"
        if any(k.startswith("distributed.") for k in space.params):  # the largest trial bounds it
            sized = [trial_config(space, extra, point, "x").distributed for point in _corners(space.params)]
            c = max(sized, key=lambda c: c.workers * c.cpus_per_worker)
            per_trial = TRIAL_DRIVER_CPUS + c.workers * c.cpus_per_worker
            workers = f"up to {c.workers} worker(s) x {c.cpus_per_worker} CPU"
        fits = max(1, int(cpus // per_trial))
        concurrent = min(fits, space.max_concurrent) if space.max_concurrent else fits
        restoring = tune.Tuner.can_restore(exp_path)
        parent_cfg = base.replace({"run.name": sweep})
        parent = open_run(parent_cfg, f"tune:{exp_path}", reuse=restoring)
        # the sweep's fixed arguments stay out of the param space (and of Tune's trial table)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, space=space, sweep=sweep, extra=extra, parent_run_id=parent),
            {"CPU": TRIAL_DRIVER_CPUS},
        )
        if restoring:
            print(f"[gvae-dist] resuming sweep {exp_path}", flush=True)
            tuner = tune.Tuner.restore(exp_path, trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={k: _tune_param(v) for k, v in space.params.items()},
                tune_config=_tune_config(space, concurrent),
                run_config=tune.RunConfig(name=sweep, storage_path=tune_root, callbacks=callbacks, verbose=1),
            )
        print(
            f"[gvae-dist] sweep {sweep}: {space.num_trials()} trial(s), {min(concurrent, space.num_trials())} "
            f"at a time on {cpus:g} CPUs; each trial reserves {per_trial:g} CPUs: "
            f"{TRIAL_DRIVER_CPUS} for its driver (idle while its run trains) + {workers}; "
            f"MLflow parent run {parent}",
            flush=True,
        )
        grid = tuner.fit()
        seconds = time.perf_counter() - t0
        trials = grid._experiment_analysis.trials
        # Tune returns normally when interrupted (SIGINT/SIGUSR1): trials then are missing or unfinished
        interrupted = len(trials) < space.num_trials() or any(t.status not in ("TERMINATED", "ERROR") for t in trials)
        rows = _rows(space, trials)
        best = _pick(space, rows)
        if parent is not None and not interrupted:
            _finish_parent(mlflow_client(tracking_uri(base)), parent, space, sweep, base, rows, best, seconds)
    except BaseException as exc:
        if parent is not None:  # else the parent stays RUNNING forever in the MLflow UI
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            client = mlflow_client(tracking_uri(base))
            client.set_tag(parent, "gvae_dist.error", f"{type(exc).__name__}: {exc}"[:4000])
            client.set_terminated(parent, status)
        raise
    finally:
        disconnect(temp_dir)
    return {
        "rows": rows,
        "best": best,
        "parent_run_id": parent,
        "interrupted": interrupted,
        "path": exp_path,
        "seconds": seconds,
    }


def _finish_parent(
    client,
    parent: str,
    space: Space,
    sweep: str,
    base: Config,
    rows: list[dict[str, Any]],
    best: dict[str, Any] | None,
    seconds: float,
) -> None:
    """The parent run's best-trial params, metric and tags; FINISHED, or FAILED when no trial
    reached a finite value of the metric (every trial errored)."""
    from gvae_dist.checkpoint import latest_checkpoint

    if best is not None:
        for k in space.params:
            client.log_param(parent, f"best.{k}", best[k])
        client.log_metric(parent, f"best_{space.metric.replace('/', '_')}", best[space.metric])
        client.set_tag(parent, "gvae_dist.best_trial", best["trial"])
        # The newest checkpoint in the trial's run directory (what `gvae-dist eval --checkpoint`
        # opens, writing next to it into <run dir>/eval); Tune's copy (runs/ray/<run>/step_N) where
        # the run directory is not on this machine.
        run_dir = Path(base.run.output_dir) / f"{sweep}_{best['trial']}"
        found = latest_checkpoint(run_dir / "checkpoints")
        best["checkpoint"] = str(found) if found else best.get("checkpoint")
        if best["checkpoint"]:
            client.set_tag(parent, "gvae_dist.best_checkpoint", best["checkpoint"])
        child = _child_of(client, parent, best["trial"], sweep)
        if child:
            client.set_tag(child, "gvae_dist.best", "true")
    client.set_tag(parent, "gvae_dist.summary", format_table(space, rows))
    client.log_metric(parent, "sweep_seconds", seconds)
    if best is None:
        client.set_tag(
            parent,
            "gvae_dist.error",
            f"no trial reported a finite {space.metric}; statuses: {sorted({r['status'] for r in rows})}",
        )
    client.set_terminated(parent, "FINISHED" if best is not None else "FAILED")


def _tune_config(space: Space, concurrent: int):
    from ray import tune

    sched = None
    if space.scheduler.get("name") == "asha":
        from ray.tune.schedulers import ASHAScheduler

        sched = ASHAScheduler(
            time_attr="training_iteration",
            max_t=int(space.scheduler.get("max_t", 100)),
            grace_period=int(space.scheduler.get("grace_period", 1)),
            reduction_factor=float(space.scheduler.get("reduction_factor", 2)),
        )
    searcher = None
    if space.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:
            raise ConfigError(
                f"{space.path}: search: optuna is not importable ({exc}); pip install optuna or use search: random"
            ) from None
        searcher = OptunaSearch()
    return tune.TuneConfig(
        metric=space.metric,
        mode=space.mode,
        num_samples=space.num_samples,
        scheduler=sched,
        search_alg=searcher,
        max_concurrent_trials=concurrent,
    )


EVAL_COLUMNS = ("eval/dci_mean", "eval/partition_purity", "eval/neg_elbo")


def _rows(space: Space, trials) -> list[dict[str, Any]]:
    rows = []
    for t in trials:
        last = t.last_result or {}
        rows.append(
            {
                "trial": t.trial_id,
                "status": t.status,
                **{k: t.config.get(k) for k in space.params},
                "iters": last.get("training_iteration", 0),
                "step": last.get("step"),
                "loss": last.get("loss"),
                space.metric: last.get(space.metric),
                **{k: last[k] for k in EVAL_COLUMNS if k in last},
                "checkpoint": t.checkpoint.path if t.checkpoint else None,
            }
        )
    return rows


def _pick(space: Space, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Best trial among those that trained to the end (ASHA-stopped trials stopped early
    because they were worse; their last loss is from an earlier step and not comparable)."""
    done = [r for r in rows if isinstance(r.get(space.metric), float) and math.isfinite(r[space.metric])]
    full = max((r["step"] or 0 for r in done), default=0)
    done = [r for r in done if r["step"] == full] or done
    if not done:
        return None
    return (min if space.mode == "min" else max)(done, key=lambda r: r[space.metric])


def _child_of(client, parent: str, trial_id: str, sweep: str) -> str | None:
    exp = client.get_run(parent).info.experiment_id
    found = client.search_runs([exp], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    for run in found:
        if run.info.run_name == f"{sweep}_{trial_id}":
            return run.info.run_id
    return None


def format_table(space: Space, rows: list[dict[str, Any]]) -> str:
    cols = [
        "trial",
        "status",
        *space.params,
        "iters",
        "step",
        "loss",
        space.metric,
        *(k for k in EVAL_COLUMNS if any(k in r for r in rows)),
    ]
    cols = list(dict.fromkeys(cols))

    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    table = [cols] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in table)
