"""``train_loop(config)``: the only training loop.

It runs unchanged in a plain process, under ``torchrun`` / ``accelerate launch`` and inside a
Ray Train worker. Accelerate is the only wrapper (DDP, autocast, GradScaler); launchers differ
only in the :class:`RunHooks` they pass (where to report metrics and checkpoints, where to
restore from). Nothing here imports Ray or ``torch.distributed`` directly.

One step (:func:`gvae_dist.step.train_step`, the code the step benchmarks time): next batch ->
pairing (targets + gate masks) -> model (gated reparameterisation) -> objective -> backward ->
optimizer. Loss terms are accumulated on the device (:class:`gvae_dist.step.StepMetrics`) and
read back once per ``run.log_every`` steps, so the loop has no per-step host sync.

Preemption: ``run.checkpoint_signal`` (default SIGUSR1, e.g. SLURM's ``--signal``) or the
appearance of ``run.stop_file`` asks the loop to write a checkpoint at the next step boundary and
raise :class:`Preempted`; the CLI turns that into exit code 75 (``EX_TEMPFAIL``: run again to
resume). Several processes agree on the stop at a log step, so all ranks stop at the same step.

Run directory (docs/reliability.md): the process that writes it holds its lock
(:mod:`gvae_dist.rundir`) for the whole run. Resume restores the newest checkpoint that loads,
skipping damaged ones with a warning, and refuses one made with a config that computes something
else (:mod:`gvae_dist.fingerprint`; ``run.resume: force`` overrides). ``metrics.jsonl`` is cut back
to the restored step, and MLflow is not sent steps it already holds, so each step is logged once.
What a tracking outage left owed (``tracking_pending.json``) is sent before the run logs anything.
Ctrl-C marks the MLflow run KILLED and raises :class:`Interrupted` (the CLI exits 130).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from gvae_dist.checkpoint import (
    CONFIG_FILE,
    Candidate,
    CheckpointError,
    load_newest,
    local_candidates,
    save_checkpoint,
    set_aside,
)
from gvae_dist.config import Config, ConfigError, config_from_dict, config_yaml, save_config
from gvae_dist.data.batch import to_float_nchw
from gvae_dist.data.loader import build_train_loader, load_eval_arrays
from gvae_dist.data.pairing import PairingPlan
from gvae_dist.data.partners import build_partners
from gvae_dist.eval_runner import eval_steps
from gvae_dist.fingerprint import differing_keys, resume_fingerprint
from gvae_dist.model import GatedVAE, build_model
from gvae_dist.objective import capacity_at, warmup_weight
from gvae_dist.plots import log_image_grids
from gvae_dist.rundir import RunLock, clear_leftovers, rewind_metrics
from gvae_dist.schedule import learning_rate, scheduled
from gvae_dist.step import StepMetrics, StepParts, train_step
from gvae_dist.tracking import make_tracker, posterior_mean, settle_pending

__all__ = [
    "RunHooks",
    "train_loop",
    "TrainResult",
    "Preempted",
    "PREEMPTED_EXIT_CODE",
    "Interrupted",
    "INTERRUPTED_EXIT_CODE",
    "claim_run_dir",
    "check_resume_config",
]

log = logging.getLogger("gvae_dist.train")


class RunHooks:
    """What a launcher supplies to the loop. The default: a local run directory.

    ``claim`` is entered by the main rank before anything is written and held for the run: the
    run directory's lock (a launcher that holds it itself returns a null context);
    ``restore_candidates`` lists the checkpoints to resume from (the loop loads the newest that
    loads); ``restored`` is called on every rank after that (drop temporary copies); ``report``
    is called on every rank at every checkpoint with the metrics and, on the main rank, the
    checkpoint directory just written (None elsewhere); ``tracking_run_id`` names an MLflow run
    the launcher opened (a checkpoint's run id takes precedence), so a run restarted before its
    first checkpoint still logs into the same run.
    """

    def claim(self, cfg: Config) -> contextlib.AbstractContextManager:
        return claim_run_dir(cfg.run_dir())

    def restore_candidates(self, cfg: Config) -> list[Candidate]:
        found = local_candidates(cfg.run_dir() / "checkpoints")
        if found and not cfg.run.resume:
            raise ConfigError(
                f"run.resume: false, but {cfg.run_dir()} holds checkpoints (newest "
                f"{found[-1].path.name}) of a run this one would mix with; pick another "
                "run.name, move that directory away, or set run.resume=true"
            )
        return found

    def restored(self, cfg: Config) -> None:
        pass

    def tracking_run_id(self, cfg: Config) -> str | None:
        return None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        pass


@dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    eval_metrics: dict[str, Any] | None
    run_dir: Path
    checkpoint: Path | None
    tracking_run_id: str | None


def _resolve_device(cfg: Config) -> str:
    if cfg.run.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg.run.device


def _rng_state(pair_gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "pairing": pair_gen.get_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], pair_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    pair_gen.set_state(state["pairing"])
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _param_digest(model: torch.nn.Module) -> str:
    """Bitwise fingerprint of the weights: DDP ranks in sync report the same digest."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _grid_inputs(cfg: Config, device, n: int = 8) -> torch.Tensor:
    """A fixed set of held-out images ``[n, C, H, W]`` for the logged image grids."""
    images_NHWC, _, _ = load_eval_arrays(cfg, limit=n)
    return to_float_nchw(torch.from_numpy(images_NHWC[:n]).to(device))


PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): stopped early on request, run again to resume


class Preempted(RuntimeError):
    """The loop stopped early on request after writing a checkpoint; rerun to resume."""

    exit_code = PREEMPTED_EXIT_CODE

    def __init__(self, step: int, checkpoint: Path | None, reason: str):
        super().__init__(
            f"stopped at step {step} on {reason}; checkpoint "
            f"{checkpoint or '(written by the main process)'}; "
            "run the same command again to resume"
        )
        self.step, self.checkpoint, self.reason = step, checkpoint, reason

    def __reduce__(self):  # picklable with its arguments (Ray ships worker errors to the driver)
        return type(self), (self.step, self.checkpoint, self.reason)


INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the run; the MLflow run is marked KILLED. Rerun to resume."""

    exit_code = INTERRUPTED_EXIT_CODE

    def __init__(self, step: int | None, checkpoint: Path | None):
        at = f"at step {step}" if step is not None else "before the first step"
        super().__init__(
            f"interrupted {at}; last checkpoint {checkpoint or '(none yet)'}; run the same command to resume"
        )
        self.step, self.checkpoint = step, checkpoint

    def __reduce__(self):
        return type(self), (self.step, self.checkpoint)


def claim_run_dir(run_dir: Path) -> RunLock:
    """Take ``run_dir``'s lock (:class:`gvae_dist.rundir.RunLocked` names a live holder) and
    clear what an interrupted run left there; release it with ``.release()`` or ``with``."""
    lock = RunLock(run_dir).acquire()
    try:
        clear_leftovers(run_dir)
    except BaseException:
        lock.release()
        raise
    return lock


def _saved_config(ckpt_dir: Path) -> dict[str, Any] | None:
    """The config a checkpoint was made with, completed with today's defaults; None if absent."""
    path = ckpt_dir / CONFIG_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text())
    try:
        return config_from_dict(data).to_dict()
    except ConfigError:  # a key renamed since: compare what is there
        return data if isinstance(data, dict) else None


def check_resume_config(cfg: Config, ckpt_dir: Path, origin: str | None = None) -> None:
    """Raise :class:`ConfigError` listing the keys in which ``cfg`` computes something other
    than the run that wrote ``ckpt_dir`` (``run.resume: force``: warn and go on)."""
    saved = _saved_config(ckpt_dir)
    if saved is None:
        return
    diff = differing_keys(saved, cfg.to_dict(), resume=True)
    if not diff:
        return
    shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
    where = origin or str(ckpt_dir)
    if cfg.run.resume == "force":
        warnings.warn(
            f"run.resume: force: resuming {where} with a different config ({shown})", RuntimeWarning, stacklevel=2
        )
        return
    raise ConfigError(
        f"run.resume: {cfg.run_dir()} holds a run made with a different config (checkpoint {where}); "
        f"differing keys: {shown}. To start a new run, pick another run.name (or move the "
        "directory away); to continue that run with this config anyway, set run.resume=force"
    )


class _StopRequest:
    """Checkpoint-and-stop requests: a signal handler that sets a flag, plus an optional stop file.

    Python delivers signals to the main thread only, so the handler is installed only there
    (plain runs, torchrun workers); elsewhere (Ray workers) only the stop file works. The
    previous handler is restored on exit.
    """

    def __init__(self, signame: str, stop_file: str | None):
        self.signame, self.stop_file = signame, Path(stop_file) if stop_file else None
        self.received, self.reason = False, ""
        self._sig, self._old = None, None
        if signame != "none" and threading.current_thread() is threading.main_thread():
            self._sig = getattr(signal, f"SIG{signame}")

    def _handle(self, signum, frame) -> None:
        self.received = True

    def __enter__(self) -> _StopRequest:
        if self._sig is not None:
            self._old = signal.signal(self._sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._sig is not None:
            signal.signal(self._sig, self._old if self._old is not None else signal.SIG_DFL)

    def agreed(self, accelerator, check_file: bool) -> bool:
        """Whether any rank was asked to stop; collective when there are several processes."""
        by_file = bool(check_file and self.stop_file and self.stop_file.exists())
        mine = self.received or by_file
        anyone = mine
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(mine)], device=accelerator.device)
            anyone = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        if anyone:
            self.reason = (
                f"SIG{self.signame}"
                if self.received
                else f"stop file {self.stop_file}"
                if by_file
                else "another rank's stop request"
            )
        return anyone


def retain_freed_memory() -> bool:
    """Keep freed heap memory in this process instead of handing it back to the OS (glibc).

    A CPU train step allocates and frees the same activations (~100 MB at batch 64) every
    step. By default glibc serves large blocks with fresh ``mmap``s and trims the heap top on
    ``free``, so each step page-faults that memory in again (~16k minor faults per step at batch
    64, a quarter of the step time here). ``M_MMAP_MAX=0`` and a maximal ``M_TRIM_THRESHOLD``
    keep those pages mapped and reused (no faults after the first step; see
    docs/performance.md). Cost: the process holds its peak heap. Process-wide, not undone.
    Returns False where glibc's ``mallopt`` is unavailable (macOS, musl): nothing changes.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc <malloc.h>
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


@contextlib.contextmanager
def _both(first: contextlib.AbstractContextManager, second: contextlib.AbstractContextManager):
    """``with first, second:`` as one context (the step's Accelerate accumulation + autocast)."""
    with first, second:
        yield


def _print(is_main: bool, msg: str) -> None:
    if is_main:
        print(msg, flush=True)


def train_loop(config: Config | dict, hooks: RunHooks | None = None) -> TrainResult:
    """Train a (gated) VAE as configured; returns the final metrics. See module docstring.

    Raises :class:`Preempted` after checkpointing when a stop was requested (see module doc).
    """
    cfg = config if isinstance(config, Config) else config_from_dict(config)
    with contextlib.ExitStack() as claims, _StopRequest(cfg.run.checkpoint_signal, cfg.run.stop_file) as stop:
        return _train_loop(cfg, hooks, stop, claims)


class _Restored:
    def __init__(self, cand: Candidate, state: dict[str, Any]):
        self.path, self.origin, self.step, self.state = cand.path, cand.origin, cand.step, state


def _restore(cfg: Config, hooks: RunHooks, accelerator, is_main: bool) -> _Restored | None:
    """The newest checkpoint every rank can load (None: start fresh), config-checked.

    Each rank loads the newest of ``hooks.restore_candidates`` that reads back (damaged ones
    are skipped with a warning, and the main rank sets its own damaged copies aside); with
    several ranks they agree on the oldest step any rank found, so all restore the same step.
    """
    from accelerate.utils import gather_object

    candidates = hooks.restore_candidates(cfg)
    found = load_newest(candidates)
    if accelerator.num_processes > 1:
        steps = gather_object([found[0].step if found else -1])
        target = min(steps)
        if target < 0 < max(steps):
            raise CheckpointError(
                f"ranks found different checkpoints to resume from (steps {steps}, -1: "
                "none): every rank must see the run directory or distributed.storage_path"
            )
        if found is not None and found[0].step != target:
            found = load_newest([c for c in candidates if c.step == target])
    hooks.restored(cfg)
    if found is None:
        return None
    cand, state, skipped = found
    check_resume_config(cfg, cand.path, cand.origin.removesuffix("/state.pt"))
    ckpt_root = cfg.run_dir() / "checkpoints"
    for bad in skipped if is_main else []:
        if bad.path.parent == ckpt_root and (moved := set_aside(bad.path)) is not None:
            log.warning("damaged checkpoint %s set aside as %s", bad.path, moved)
    return _Restored(cand, state)


def _load_state(
    state: dict[str, Any], cfg: Config, raw_model: GatedVAE, optimizer, accelerator, pair_gen: torch.Generator, loader
) -> int:
    """Put a checkpoint's ``state`` into this run's model, optimizer, scaler and (when the world
    size matches) this rank's RNGs and data position; returns the checkpoint's step."""
    o = cfg.optim
    raw_model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the config, not the checkpoint, sets the schedule
        group.update(lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    if state.get("scaler") is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    rank, world = accelerator.process_index, accelerator.num_processes
    rngs, positions = state["rng"], state["data"]
    if len(rngs) == world:
        _set_rng_state(rngs[rank], pair_gen)
        loader.load_state_dict(positions[rank])
    else:
        log.warning("checkpoint has %d ranks' RNG/data state but this run has %d: reseeding", len(rngs), world)
    return int(state["step"])


def _train_loop(
    config: Config | dict, hooks: RunHooks | None, stop: _StopRequest, claims: contextlib.ExitStack
) -> TrainResult:
    """The loop of :func:`train_loop`; ``stop`` carries checkpoint-and-stop requests, ``claims``
    holds the run directory's lock until the run ends."""
    cfg = config if isinstance(config, Config) else config_from_dict(config)
    hooks = hooks or RunHooks()
    w = _setup(cfg, hooks, claims)
    step, run_id, last_ckpt = _resume(w, hooks)
    tracker = _open_tracker(w, run_id, step, resumed=last_ckpt is not None)
    grid_x = _grid_inputs(cfg, w.device) if w.is_main and cfg.tracking.enabled else None
    parts = _step_parts(w)
    step_metrics = StepMetrics(w.plan, cfg.objective, cfg.gate.kl)  # on the device; read back per log step
    o, warned = cfg.optim, set()
    metrics: dict[str, float] = {}
    eval_metrics: dict | None = None
    preempt = False
    during = eval_steps(cfg)  # cheap evaluations before the full one at the end
    lr_scheduled = scheduled(o)  # a constant rate is left as the optimizer has it
    t_data, t_last = 0.0, time.perf_counter()
    try:
        w.model.train()
        while step < o.steps:
            if lr_scheduled:
                for group in w.optimizer.param_groups:
                    group["lr"] = learning_rate(o, step)
            for _ in range(o.grad_accum):
                t0 = time.perf_counter()
                batch = next(w.loader)
                t_data += time.perf_counter() - t0
                step_metrics.add(
                    train_step(
                        parts,
                        batch,
                        reg_weight=warmup_weight(cfg.objective.warmup_steps, step),
                        capacity=capacity_at(cfg.objective, step),
                    )
                )
            step += 1

            at_log = step % cfg.run.log_every == 0 or step == o.steps
            # One process checks its flag every step; several agree at log steps (one all-reduce).
            preempt = step < o.steps and (w.world == 1 or at_log) and stop.agreed(w.accelerator, at_log)
            at_ckpt = step % cfg.run.checkpoint_every == 0 or step == o.steps or preempt
            if at_log or at_ckpt:
                metrics = _step_record(w, step_metrics, step, t_data, t_last, warned, last_ckpt)
                tracker.log_metrics(metrics, step)
                if w.is_main:
                    with open(w.run_dir / "metrics.jsonl", "a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                _print(w.is_main, _progress_line(metrics, step, o.steps))
                # Evaluate before the checkpoint so its report (what Ray Tune / ASHA see) carries eval/*.
                final = step == o.steps
                if w.is_main and not preempt and ((final and cfg.eval.at_end) or (not final and step in during)):
                    result = _evaluate(
                        cfg,
                        w.raw_model,
                        w.loader.info,
                        w.device,
                        tracker,
                        step,
                        w.run_dir / ("eval" if final else f"eval_step_{step}"),
                        during=not final,
                    )
                    w.raw_model.train()
                    metrics.update({f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float)})
                    eval_metrics = result if final else eval_metrics
                if at_ckpt:
                    last_ckpt = _checkpoint(w, tracker, hooks, step, metrics) or last_ckpt
                if preempt:
                    break
                t_data, t_last = 0.0, time.perf_counter()  # perf/* excludes checkpoints, eval
            if grid_x is not None and cfg.tracking.image_every and step % cfg.tracking.image_every == 0:
                log_image_grids(tracker, w.raw_model, grid_x, step, w.run_dir / "images")

        if preempt:
            tracker.finish("KILLED")  # a resumed run sets it RUNNING again
            w.accelerator.wait_for_everyone()
            raise Preempted(step, last_ckpt, stop.reason)
        eval_metrics = _finish(w, tracker, step, metrics, eval_metrics, grid_x)
    except KeyboardInterrupt:  # Ctrl-C: not a failure of the run, and resumable
        tracker.finish("KILLED")
        raise Interrupted(step, last_ckpt) from None
    return TrainResult(step, metrics, eval_metrics, w.run_dir, last_ckpt, tracker.run_id)


@dataclass
class _Worker:
    """What one rank trains with: its accelerator and place in the world, the data, the model
    (``raw_model`` unwrapped, ``model`` as prepared), the optimizer and the pairing."""

    cfg: Config
    accelerator: Any
    rank: int
    world: int
    is_main: bool
    device: torch.device
    micro: int  # examples per micro-batch on this rank
    loader: Any
    raw_model: GatedVAE
    model: Any
    optimizer: Any
    plan: PairingPlan
    partners: Any
    pair_gen: torch.Generator

    @property
    def run_dir(self) -> Path:
        return self.cfg.run_dir()


def _setup(cfg: Config, hooks: RunHooks, claims: contextlib.ExitStack) -> _Worker:
    """Device, Accelerate, the run directory's claim, seeds, data, model, optimizer, pairing."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    device_kind = _resolve_device(cfg)
    if cfg.optim.mixed_precision == "fp16" and device_kind != "cuda":  # Accelerate would ignore it
        raise ConfigError(
            f"optim.mixed_precision: fp16 (autocast + GradScaler) needs a CUDA device, this "
            f"run is on {device_kind}; use bf16 or 'no' there"
        )
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if device_kind == "cpu" and cfg.run.retain_freed_memory:
        retain_freed_memory()
    o = cfg.optim
    # Accelerate keeps a process-wide singleton; a second run in the same process (tests, Tune
    # trials, studies) may ask for another precision, so start from a clean accelerator state.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        cpu=device_kind == "cpu", mixed_precision=o.mixed_precision, gradient_accumulation_steps=o.grad_accum
    )
    rank, world, is_main, device = (
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.is_main_process,
        accelerator.device,
    )
    per_rank = o.batch_size // world
    if per_rank * world != o.batch_size or per_rank % o.grad_accum:
        raise ValueError(
            f"optim.batch_size={o.batch_size} must split evenly over {world} workers and "
            f"optim.grad_accum={o.grad_accum} micro-batches"
        )
    micro = per_rank // o.grad_accum
    _print(
        is_main,
        f"[gvae-dist] {world} process(es) on {device}; global batch {o.batch_size} = "
        f"{world} x {o.grad_accum} micro-batches of {micro}; precision {o.mixed_precision}",
    )
    if is_main:  # before anything is written; released when train_loop returns or raises
        claims.enter_context(hooks.claim(cfg))
        settle_pending(cfg)  # what a tracking outage left owed, before this run logs anything
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    random.seed(cfg.run.seed)

    loader = build_train_loader(cfg, rank, world, device, batch_size=micro)
    raw_model = build_model(cfg, loader.info.channels).to(device)
    if o.channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    model = torch.compile(raw_model) if o.compile else raw_model
    # One process (a 1-worker Ray run has a process group of one): no DDP wrapper, whose
    # gradient bucketing and no-op all-reduce cost ~4% of a CPU step for nothing.
    model = accelerator.prepare_model(model, evaluation_mode=world == 1)
    optimizer = accelerator.prepare_optimizer(optimizer)
    plan = PairingPlan.from_config(cfg, loader.info.label_names, device=device)
    partners = build_partners(cfg, loader, plan, device)
    pair_gen = torch.Generator(device=device).manual_seed(stream_seed(cfg.run.seed, "pairing", rank))
    torch.manual_seed(stream_seed(cfg.run.seed, "noise", rank))  # per-rank reparameterisation noise
    return _Worker(
        cfg,
        accelerator,
        rank,
        world,
        is_main,
        device,
        micro,
        loader,
        raw_model,
        model,
        optimizer,
        plan,
        partners,
        pair_gen,
    )


STREAMS = ("pairing", "noise")  # the per-rank random streams of a run, one seed each


def stream_seed(seed: int, purpose: str, rank: int) -> int:
    """The seed of rank ``rank``'s ``purpose`` stream (:data:`STREAMS`) in a run seeded ``seed``:
    ``1000 seed + 2 rank + index``, distinct for every purpose and rank below 500 (rank 0 keeps
    the seeds runs always had: 1000 seed for pairing, 1000 seed + 1 for noise)."""
    return seed * 1000 + len(STREAMS) * rank + STREAMS.index(purpose)


def _resume(w: _Worker, hooks: RunHooks) -> tuple[int, str | None, Path | None]:
    """``(step, tracking run id, checkpoint restored from)``: the newest checkpoint's state put
    into the worker (step 0 and no checkpoint for a fresh run); the run's config saved and the
    metrics of steps after the checkpoint dropped (they are trained again)."""
    cfg, step, run_id = w.cfg, 0, hooks.tracking_run_id(w.cfg)
    found = _restore(cfg, hooks, w.accelerator, w.is_main)
    restore = found.path if found else None
    if found is not None:
        step = _load_state(found.state, cfg, w.raw_model, w.optimizer, w.accelerator, w.pair_gen, w.loader)
        run_id = found.state.get("tracking_run_id") or run_id
        _print(w.is_main, f"[gvae-dist] resumed from {found.origin.removesuffix('/state.pt')} at step {step}")
        del found.state  # the restored weights live in the model and optimizer now
    if w.is_main:
        save_config(cfg, w.run_dir / "config.yaml")
        dropped = rewind_metrics(w.run_dir, step)
        if dropped:
            _print(
                w.is_main, f"[gvae-dist] metrics.jsonl: dropped {dropped} row(s) after step {step}, trained again now"
            )
    return step, run_id, restore


def _open_tracker(w: _Worker, run_id: str | None, step: int, resumed: bool):
    """The run's tracker (MLflow on the main rank): params and config for a new run, a
    ``run/resumed_from_step`` point for a resumed one."""
    tracker = make_tracker(w.cfg, w.is_main, run_id=run_id, dedupe=resumed or run_id is not None)
    if w.is_main and not resumed:
        tracker.log_params(w.cfg.to_dict())
        tracker.log_artifact(w.run_dir / "config.yaml")
    if resumed:  # each restart shows in the run's history
        tracker.log_metrics({"run/resumed_from_step": step}, step)
    return tracker


def _step_parts(w: _Worker) -> StepParts:
    """What :func:`train_step` needs, with Accelerate's accumulation, autocast and backward."""
    o = w.cfg.optim

    def clip_grad() -> None:
        if w.accelerator.sync_gradients:
            w.accelerator.clip_grad_norm_(w.model.parameters(), o.grad_clip)

    return StepParts(
        w.model,
        w.raw_model,
        w.optimizer,
        w.plan,
        w.pair_gen,
        w.cfg.gate,
        w.cfg.objective,
        w.partners,
        o.channels_last,
        context=lambda: _both(w.accelerator.accumulate(w.model), w.accelerator.autocast()),
        backward=w.accelerator.backward,
        clip_grad=clip_grad if o.grad_clip > 0 else None,
    )


def _step_record(
    w: _Worker,
    step_metrics: StepMetrics,
    step: int,
    t_data: float,
    t_last: float,
    warned: set[str],
    last_ckpt: Path | None,
) -> dict[str, float]:
    """The metrics of a log step: the step sums read back once, throughput and data wait since
    the last log step, skipped samples, the learning rate; non-finite values stop the run."""
    cfg = w.cfg
    imgs = step_metrics.count * w.micro * w.world
    metrics = step_metrics.flush(step)
    now = time.perf_counter()
    _warn_few_partners(cfg, metrics, w.plan.shared_names, warned, w.partners is not None, step)
    metrics["perf/images_per_s"] = imgs / max(now - t_last, 1e-9)
    metrics["perf/data_wait_fraction"] = t_data / max(now - t_last, 1e-9)
    metrics["data/skipped_samples"] = float(getattr(w.loader, "skipped", 0))
    if scheduled(cfg.optim):
        metrics["optim/lr"] = learning_rate(cfg.optim, step - 1)
    metrics["step"] = step
    _check_finite(metrics, step, last_ckpt)
    return metrics


def _checkpoint(w: _Worker, tracker, hooks: RunHooks, at_step: int, metrics: dict[str, float]) -> Path | None:
    """Save a checkpoint (the main rank; every rank's RNG and data position gathered into it)
    and report it to the hooks (Ray Train); returns its path on the main rank."""
    from accelerate.utils import gather_object

    rng_all = gather_object([_rng_state(w.pair_gen)])
    data_all = gather_object([w.loader.state_dict()])
    digests = gather_object([_param_digest(w.raw_model)])
    path = None
    if w.is_main:
        if len(set(digests)) > 1:
            log.warning(
                "ranks hold different weights at step %d (%s): gradients are not synchronised", at_step, digests
            )
        scaler = w.accelerator.scaler
        state = {
            "model": w.raw_model.state_dict(),
            "optimizer": w.optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler else None,
            "step": at_step,
            "rng": rng_all,
            "data": data_all,
            "tracking_run_id": tracker.run_id,
            "world_size": w.world,
        }
        path = save_checkpoint(
            w.run_dir / "checkpoints",
            at_step,
            state,
            config_yaml(w.cfg),
            keep=w.cfg.run.keep_checkpoints,
            meta={"metrics": metrics, "param_digests": digests, "resume_fingerprint": resume_fingerprint(w.cfg)},
        )
    hooks.report(metrics, path)
    return path


def _finish(
    w: _Worker, tracker, step: int, metrics: dict[str, float], eval_metrics: dict | None, grid_x: torch.Tensor | None
) -> dict | None:
    """After the last step: the final evaluation if a resumed finished run lacks it,
    ``metrics.json``, the last image grids, the encoder logged (and registered), the tracker
    closed; returns the final evaluation."""
    cfg = w.cfg
    if eval_metrics is None and cfg.eval.at_end and w.is_main:  # resumed a run that had already finished
        eval_metrics = _evaluate(cfg, w.raw_model, w.loader.info, w.device, tracker, step, w.run_dir / "eval")
    if w.is_main:
        train_metrics = {k: v for k, v in metrics.items() if not k.startswith("eval/")}
        (w.run_dir / "metrics.json").write_text(json.dumps({"train": train_metrics, "eval": eval_metrics}, indent=2))
        tracker.log_artifact(w.run_dir / "metrics.json")
    if grid_x is not None:
        if not (cfg.tracking.image_every and step % cfg.tracking.image_every == 0):
            log_image_grids(tracker, w.raw_model, grid_x, step, w.run_dir / "images")
        registry = cfg.tracking.registry_name
        version = tracker.log_model(
            posterior_mean(w.raw_model),
            grid_x[:2].cpu().numpy(),
            cfg.partition_spec(),
            w.run_dir / "model",
            name="encoder",
            registry_name=registry,
            version_tags={
                "gvae_dist.step": step,
                **{f"eval/{k}": v for k, v in (eval_metrics or {}).items() if isinstance(v, int | float)},
            },
        )
        if version is not None:
            print(f"[gvae-dist] registered the encoder as model {registry!r} version {version}", flush=True)
    tracker.finish()
    w.accelerator.wait_for_everyone()
    return eval_metrics


def _warn_few_partners(
    cfg: Config, metrics: dict[str, float], shared_names: list[str], warned: set[str], dataset_partners: bool, step: int
) -> None:
    """Warn once per supervised partition whose shared_factor draws found a partner less often
    than ``pairing.min_found`` (``pairing/found/<name>`` of this log interval), naming the knobs
    that help; ``warned`` holds the names already warned about."""
    for name in shared_names:
        found = metrics.get(f"pairing/found/{name}")
        if found is None or found >= cfg.pairing.min_found or name in warned:
            continue
        warned.add(name)
        knobs = ["pairing.match: one", "fewer data.label_bins"]
        knobs += [] if dataset_partners else ["pairing.partner: dataset"]
        knobs += ["pairing.match_nuisance: false"] if cfg.pairing.match_nuisance else []
        knobs += ["a larger pairing.bank_size"] if cfg.data.source == "shards" else []
        log.warning(
            "pairing: only %.0f%% of %s's shared_factor draws found a partner "
            "(step %d); they train as identity pairs. Try %s",
            100 * found,
            name,
            step,
            ", ".join(knobs),
        )


def _check_finite(metrics: dict[str, float], step: int, last_ckpt: Path | None) -> None:
    """``FloatingPointError`` naming the non-finite metrics and the last good checkpoint."""
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"non-finite {bad} at step {step}; last good checkpoint: "
            f"{last_ckpt}. Lower optim.lr or enable optim.grad_clip"
        )


def _progress_line(metrics: dict[str, float], step: int, steps: int) -> str:
    return (
        f"step {step:>6}/{steps}  loss {metrics['loss']:.2f}  recon {metrics['recon']:.2f}"
        f"  kl {metrics['kl']:.2f}  found {metrics['pairing/found']:.2f}"
        f"  {metrics['perf/images_per_s']:.0f} img/s"
        f"  data-wait {100 * metrics['perf/data_wait_fraction']:.1f}%"
    )


def _evaluate(
    cfg: Config, model: GatedVAE, info, device, tracker, step: int, out_dir: Path, during: bool = False
) -> dict:
    from gvae_dist.eval_runner import evaluate_model

    t0 = time.perf_counter()
    result = evaluate_model(cfg, model, device, out_dir, during=during)
    flat = {f"eval/{k}": v for k, v in result.items() if isinstance(v, int | float)}
    tracker.log_metrics(flat, step)
    for png in sorted(out_dir.glob("*.png")):
        tracker.log_artifact(png, "eval")
    print(
        f"[gvae-dist] evaluation at step {step} ({time.perf_counter() - t0:.1f}s): "
        f"DCI over targeted factors: disentanglement {result['disentanglement']:.3f}  completeness "
        f"{result['completeness']:.3f}"
        f"  informativeness {result['informativeness']:.3f}"
        + (f"  partition purity {result['partition_purity']:.3f}" if "partition_purity" in result else ""),
        flush=True,
    )
    return result
