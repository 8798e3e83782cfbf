"""One typed, validated run config: YAML presets + dotted ``--set`` overrides.

Every field has a one-line doc (``gvae-dist config --explain`` prints them). Unknown keys and
bad values raise :class:`ConfigError` (a ``ValueError``) naming the dotted key and the allowed
values before any work starts. The resolved config is written into every run directory.

A preset may start with ``extends: other.yaml`` (relative to the preset) to inherit and override.

Hostile input is bounded before any work: a config file larger than :data:`MAX_CONFIG_BYTES`,
or whose YAML aliases would expand to more than :data:`MAX_CONFIG_NODES` values, is refused
naming the file; every float must be finite; keys that size memory (batch, dataset, bank,
image, latent and evaluation sizes) have an upper bound, shown by ``--explain`` as ``max N``;
``run.name`` must stay inside ``run.output_dir``. Credentials in URIs (``user:password@``,
``?token=``) never reach a saved config: :func:`redact_uri` masks them.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

__all__ = [
    "ConfigError",
    "ClusterUnreachable",
    "Config",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "save_config",
    "explain",
    "redact_uri",
    "redact",
    "config_yaml",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
]

# A config file is a few KB; a megabyte is far past any real preset.
MAX_CONFIG_BYTES = 1 << 20
# Values a loaded YAML document may expand to, counting each alias use in full: the defaults
# are ~130 leaves, a study file a few thousand; 8 nested alias levels reach millions.
MAX_CONFIG_NODES = 100_000


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the dotted key."""


class ClusterUnreachable(ConnectionError):
    """The configured Ray address (``distributed.address`` or ``$RAY_ADDRESS``) does not accept
    connections (raised by :func:`gvae_dist.launch.check_address`, which re-exports it). It lives
    here beside :class:`ConfigError` so the CLI can catch it without importing the launcher (torch)."""


def f(default: Any, doc: str, max: int | None = None) -> Any:  # noqa: A002 - reads as the bound
    """A dataclass field with a default and a one-line doc; ``max`` is an upper bound that
    :func:`validate` enforces (for sizes that would exhaust memory long before they are useful)."""
    meta = {"doc": doc, **({"max": max} if max is not None else {})}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    source: Literal["faces", "shapes", "shards"] = f(
        "faces", "built-in synthetic 'faces' or 'shapes', or 'shards' (WebDataset tars at data.path)"
    )
    path: str | None = f(None, "directory holding manifest.json and the tar shards (source=shards)")
    backend: Literal["auto", "dali", "webdataset", "memory"] = f(
        "auto", "loader: 'auto' (DALI if importable, else WebDataset+PIL), or force one; 'memory' = synthetic in RAM"
    )
    num_train: int = f(20000, "training images generated for synthetic sources", max=2_000_000)
    num_eval: int = f(6000, "held-out images generated for evaluation (synthetic sources)", max=1_000_000)
    image_size: Literal[32, 64, 128] = f(64, "image height = width in pixels")
    feature_scale: float = f(
        1.0, "faces: size of eyes, brows and mouth, 0.25..2.0 (1.0 cartoon, 0.5 about real-face proportions)"
    )
    seed: int = f(0, "seed of the synthetic data and of its weak labels (independent of run.seed)")
    label_bins: int = f(3, "bins per continuous factor for the weak labels used by pairing", max=1000)
    label_flip_prob: float = f(0.0, "probability a weak label is replaced by a random bin (label noise)")
    label_jitter: float = f(0.0, "Gaussian jitter (fraction of the factor range) added before binning")
    on_bad_sample: Literal["error", "skip"] = f(
        "error", "a corrupt sample stops with an error naming it, or is skipped and counted"
    )
    num_workers: int = f(2, "decoding threads (DALI) or DataLoader workers (WebDataset backend)", max=256)
    image_format: Literal["png", "jpg"] = f("png", "image encoding when shards are written")
    verify: Literal["checksum", "full", "none"] = f(
        "checksum",
        "shard check at loader start: sha256 vs manifest (changed shards are scanned sample by "
        "sample), 'full' scans every sample, 'none' trusts the files",
    )
    shuffle_buffer: int = f(1024, "samples in the shard loaders' shuffle buffer (DALI initial_fill)", max=100_000)
    eval_fraction: float = f(
        0.2,
        "share of the samples `data build` holds out in evaluation shards of their own; training "
        "reads only the train shards, evaluation only these",
    )
    eval_path: str | None = f(
        None, "another built shard directory to evaluate on (all its samples) instead of data.path's eval split"
    )
    record_reads: bool = f(
        False,
        "each shard-loader rank writes <run dir>/data/rank-R.json: backend, split, epoch layout, "
        "keys of its first epoch",
    )


@dataclass
class ModelConfig:
    latent_dim: int = f(10, "latent dims D; must equal the sum of partition sizes", max=1024)
    channels: list[int] = f(
        [32, 32, 64, 64], "conv channels of the encoder (decoder mirrors them); each at most 4096", max=4096
    )
    hidden: int = f(256, "width of the fully connected layer", max=16384)
    refine_channels: int = f(
        0,
        "0 = the decoder's last transposed convolution draws the image; N = it outputs N channels, "
        "then a ReLU and a 3x3 convolution at full resolution draw it (capacity where small features "
        "are drawn: docs/faces.md, decoder probe)",
        max=4096,
    )
    center_codes: bool = f(
        False,
        "subtract the batch mean of the posterior means (a running mean in eval), the mean-only "
        "half of BN-VAE's batch norm (Zhu et al. 2020): a constant offset of the codes, free for the "
        "decoder but paid in KL, cannot build up; off: at rest 2 it exposed a collapse of the gated "
        "codes' scale, not a fix (docs/study.md v17)",
    )


@dataclass
class PartitionConfig:
    name: str = f("rest", "partition name (identifier)")
    size: int = f(1, "number of latent dims", max=1024)
    factors: list[str] = f([], "weak-label names whose shared_factor pairings train this partition")


def _default_partitions() -> list[PartitionConfig]:
    return [
        PartitionConfig("pose", 4, ["yaw", "pitch", "roll"]),
        PartitionConfig("expression", 4, ["mouth", "eyes", "brow"]),
        PartitionConfig("rest", 2, []),
    ]


@dataclass
class GateConfig:
    enabled: bool = f(
        True, "gate the reconstruction gradient by pairing; false = the un-gated baseline (all-ones masks)"
    )
    kl: bool = f(False, "also gate the KL gradient per partition (default: regulariser un-gated)")
    regularizer: bool = f(
        False,
        "ours: also gate the gradient of the regulariser's own term per partition, InfoVAE's MMD "
        "samples and DIP-VAE's moments, as gate.kl does the KL (default: un-gated, the paper's); "
        "no effect on beta-VAE (docs/objectives.md)",
    )
    decoder: bool = f(
        True,
        "paper: gated pairs update the decoder weights too; ours (false): their gradient reaches "
        "only the open partition's encoder path and the decoder learns from identity pairs only",
    )
    drop_high_loss: float = f(
        0.0,
        "ours, against label noise: the share of each batch's shared-factor pairs with the highest "
        "reconstruction loss whose gradient is dropped (small-loss selection, Han et al. 2018); 0 "
        "= off; about the share of wrong pairs (docs/objectives.md)",
    )
    closed_code: Literal["input", "target"] = f(
        "input",
        "what the closed partitions' dims carry into the decoder on gated pairs: paper 'input' "
        "(the input's own code), ours 'target' (the partner's code, encoded without gradient: the "
        "target becomes explainable; costs one more encoder forward)",
    )


@dataclass
class PairingConfig:
    identity: float = f(0.2, "share of examples paired with themselves (mask: pairing.identity_partitions)")
    shared_factor: float = f(
        0.8, "share paired with a partner sharing partition k's weak labels (mask: k; source: pairing.partner)"
    )
    transform: float = f(0.0, "share paired with a transform of themselves (mask: pairing.transform_partition)")
    identity_partitions: list[str] = f([], "partitions trained by identity pairs (empty = all)")
    match: Literal["all", "one"] = f(
        "all", "shared_factor partner must match all of k's weak labels, or one chosen at random"
    )
    partner: Literal["batch", "dataset", "rendered"] = f(
        "dataset",
        "where shared_factor partners come from: a batch-mate (paper), an index of the whole "
        "training set (shards: a per-rank bank of decoded samples), or rendered with only the "
        "other supervised partitions' factors resampled (built-in generators; ours)",
    )
    match_nuisance: bool = f(
        False, "partners must also match the weak labels of factors no partition lists (when the data has such labels)"
    )
    bank_size: int = f(
        4096,
        "shard loaders with pairing.partner=dataset: samples each rank keeps (uint8, on the "
        "training device) to draw partners from",
        max=262_144,
    )
    min_found: float = f(
        0.5, "warn when a partition's share of shared_factor draws that find a partner falls below this"
    )
    transform_kind: Literal["blur", "hflip"] = f("blur", "transform used by transform pairs")
    transform_partition: str = f("rest", "partition trained by transform pairs")
    blur_sigma: float = f(1.5, "Gaussian blur sigma in pixels (transform_kind=blur)")


@dataclass
class ObjectiveConfig:
    name: Literal["beta", "infovae", "dip2", "dip1", "annealed"] = f(
        "beta",
        "regulariser: beta-VAE, InfoVAE (MMD), DIP-VAE-II, DIP-VAE-I or the annealed-capacity "
        "beta-VAE (weights as the papers define them: docs/objectives.md)",
    )
    likelihood: Literal["bernoulli", "gaussian"] = f(
        "bernoulli",
        "reconstruction likelihood; either way the 'recon' metric is -log p(x|z) in nats per image "
        "(Gaussian with its normalising constant)",
    )
    beta: float = f(4.0, "beta-VAE KL weight (Higgins et al. 2017); beta = 1 is the plain VAE's ELBO")
    alpha: float = f(
        0.0,
        "InfoVAE alpha (Zhao et al. 2019, eq. 6): the KL weight is 1 - alpha; alpha = 1 drops the "
        "KL, alpha < 0 strengthens it; must be <= 1",
    )
    mmd_lambda: float = f(
        500.0,
        "InfoVAE lambda: the MMD weight is alpha + lambda - 1 (must be > 0); alpha = 1 is the pure "
        "MMD-VAE (no KL, MMD weight lambda)",
    )
    kernel: Literal["rbf", "imq"] = f("imq", "MMD kernel")
    kernel_scales: list[float] = f(
        [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0],
        "MMD kernel scales s: the kernel sums k_C over C = 2*D*s (IMQ C/(C+d^2), RBF exp(-d^2/C))",
    )
    lambda_od: float = f(10.0, "DIP-VAE off-diagonal covariance weight (Kumar et al. 2018)")
    lambda_d: float | None = f(
        None,
        "DIP-VAE diagonal covariance weight; null = disentanglement_lib's lambda_d_factor x "
        "lambda_od: 1 x for dip2 (DIP-VAE-II), 10 x for dip1 (DIP-VAE-I)",
    )
    gaussian_std: float = f(
        0.1,
        "fixed observation std of the Gaussian likelihood on [0, 1] pixels. Not 1: the NLL scales "
        "as 1/std^2, and at std 1 a feature that changes 6 pixel values by 0.3 is worth 0.27 nats, "
        "less than the KL of encoding it, so the posterior collapses to the prior; 0.1 makes it "
        "~100x stronger (docs/objectives.md)",
    )
    warmup_steps: int = f(
        0,
        "regulariser warm-up: every weight but the reconstruction's ramps linearly from 1/N to "
        "full over the first N steps (KL annealing, Bowman et al. 2016); against early posterior "
        "collapse (docs/objectives.md); 0 = off",
        max=100_000_000,
    )
    gamma: float = f(
        1000.0, "annealed: weight of |KL - C| (Burgess et al. 2018; disentanglement_lib's annealed_vae default)"
    )
    capacity_max: float = f(25.0, "annealed: the KL target C (nats) reached after objective.capacity_steps")
    capacity_steps: int = f(
        100_000, "annealed: steps over which C rises linearly from 0 to objective.capacity_max", max=100_000_000
    )
    gaussian_calibrated: bool = f(
        False,
        "Gaussian likelihood: use the batch RMSE of the decoder mean as the std (sigma-VAE, Rybkin "
        "et al. 2021; detached) instead of objective.gaussian_std",
    )


@dataclass
class OptimConfig:
    lr: float = f(1e-4, "Adam learning rate")
    betas: list[float] = f([0.9, 0.999], "Adam betas")
    weight_decay: float = f(0.0, "AdamW weight decay")
    batch_size: int = f(64, "global batch size (split across workers)", max=65_536)
    steps: int = f(3000, "optimizer steps")
    grad_accum: int = f(1, "micro-batches accumulated per optimizer step", max=65_536)
    schedule: Literal["constant", "cosine"] = f(
        "constant",
        "learning-rate schedule over optim.steps: constant, or cosine decay from optim.lr to "
        "optim.min_lr (Loshchilov & Hutter 2017); a function of the step, so resuming continues it",
    )
    min_lr: float = f(0.0, "final learning rate of the cosine schedule")
    lr_warmup_steps: int = f(0, "linear learning-rate warm-up over the first N steps, before the schedule (0 = none)")
    lr_warmup_fraction: float = f(
        0.0,
        "warm-up over this share of optim.steps (rounded; shrinks with a shortened run); used when "
        "optim.lr_warmup_steps is 0",
    )
    grad_clip: float = f(0.0, "clip gradient norm to this value (0 = off)")
    mixed_precision: Literal["no", "bf16", "fp16"] = f("no", "autocast dtype; fp16 (GPU only) uses a GradScaler")
    compile: bool = f(False, "torch.compile the model")
    channels_last: bool = f(False, "use channels_last memory format")


@dataclass
class EvalConfig:
    num_train: int = f(4000, "codes used to fit the DCI regressors", max=200_000)
    num_test: int = f(2000, "codes used to score them", max=200_000)
    method: Literal["gbt", "lasso", "forest"] = f("gbt", "DCI importance model")
    every: int = f(
        0,
        "evaluate every N steps (0 = at eval.points steps); overrides eval.points; Tune reports "
        "carry eval/* only where this matches run.checkpoint_every",
    )
    points: int = f(
        4,
        "evaluations spread evenly over the run (moved to run.log_every steps) besides the full "
        "one at the end, so the tracker shows curves; 0 = none; needs eval.at_end",
    )
    during_codes: int = f(
        1500,
        "held-out codes of an evaluation during training (2/3 fit, 1/3 score; no pictures); 0 = "
        "eval.num_train + eval.num_test",
        max=400_000,
    )
    flexible_probe: bool = f(
        True,
        "also read each factor's informativeness with a flexible probe (MLPs: "
        "probe_informativeness/*): how much of it the code holds, where DCI's trees read how much "
        "single dims hold",
    )
    at_end: bool = f(True, "evaluate DCI when training ends (on eval.num_train + eval.num_test codes, with pictures)")
    batch_size: int = f(256, "encoding batch size", max=65_536)
    jobs: int = f(
        2,
        "processes fitting the DCI regressors (joblib, one factor each; the numbers do not depend "
        "on it); 1 = in this process, e.g. for study cells that already fill the cores",
        max=256,
    )


@dataclass
class TrackingConfig:
    enabled: bool = f(True, "log to MLflow (rank 0 only)")
    uri: str | None = f(
        None, "MLflow tracking URI; default: $MLFLOW_TRACKING_URI, else sqlite:///<run.output_dir>/mlflow.db"
    )
    experiment: str = f("gvae-dist", "MLflow experiment name")
    image_every: int = f(0, "log reconstruction/traversal grids every N steps (0 = at the end only)")
    registry_name: str | None = f(
        None,
        "register the logged 'encoder' pyfunc in the MLflow Model Registry under this name when "
        "training ends, its version tagged with the run's final eval/* metrics; unset = no "
        "registration",
    )


@dataclass
class DistributedConfig:
    workers: int = f(0, "Ray Train workers (0 = run in this process without Ray)")
    use_gpu: bool = f(False, "one GPU per worker")
    cpus_per_worker: int = f(1, "CPUs reserved per worker")
    address: str | None = f(None, "Ray address to join (default: $RAY_ADDRESS, else start a local cluster)")
    max_failures: int = f(2, "worker/node failures tolerated before the run fails")
    storage_path: str | None = f(None, "Ray Train storage (shared FS or s3://); default <run.output_dir>/ray")


@dataclass
class RunConfig:
    name: str = f(
        "gvae", "run name: the run directory is <output_dir>/<name>; relative, no '..', must stay inside run.output_dir"
    )
    output_dir: str = f("runs", "parent directory of run directories")
    seed: int = f(0, "seed for weights, noise and pairing")
    log_every: int = f(50, "print/log metrics every N steps")
    checkpoint_every: int = f(500, "save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = f(2, "checkpoints kept on disk")
    resume: Literal[True, False, "force"] = f(
        True,
        "true: resume from the newest checkpoint that loads (damaged ones skipped), refusing one "
        "made with a config that computes something else (the differing keys are listed; "
        "run.*/tracking.*/distributed.* locality and a longer optim.steps may change); false: "
        "refuse a run directory that holds checkpoints; 'force': resume despite a different config",
    )
    device: Literal["auto", "cpu", "cuda"] = f("auto", "training device; auto = cuda when available")
    threads: int = f(0, "torch CPU threads per process (0 = torch default)", max=1024)
    retain_freed_memory: bool = f(
        True,
        "CPU runs: keep freed heap memory in the process (glibc mallopt) instead of page-faulting "
        "it back every step: ~1.3x images/s on CPU; holds the peak heap (docs/performance.md)",
    )
    checkpoint_signal: Literal["none", "USR1", "USR2", "TERM", "INT", "HUP"] = f(
        "USR1",
        "on this signal the loop checkpoints at the next step boundary (log step when "
        "multi-process) and stops with exit code 75 so a SLURM job can requeue itself; 'none' = "
        "default signal action",
    )
    stop_file: str | None = f(
        None,
        "a file whose appearance (checked at log steps) acts like run.checkpoint_signal: for "
        "training processes no signal reaches (Ray workers)",
    )


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    partitions: list[PartitionConfig] = field(default_factory=_default_partitions)
    gate: GateConfig = field(default_factory=GateConfig)
    pairing: PairingConfig = field(default_factory=PairingConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, values: dict[str, Any]) -> Config:
        """A validated copy with ``values`` set: dotted keys to Python values, e.g.
        ``{"run.name": "trial_3", "partitions.2.size": 8}``; this config is left as it is.
        ConfigError names a key that does not exist or a value the config refuses."""
        data = self.to_dict()
        for key, value in values.items():
            set_dotted(data, key, value, create=False, where=key)
        return config_from_dict(data)

    def run_dir(self) -> Path:
        return Path(self.run.output_dir) / self.run.name

    def partition_spec(self):
        from gvae_dist.gate import PartitionSpec

        return PartitionSpec([(p.name, p.size, tuple(p.factors)) for p in self.partitions], self.model.latent_dim)


# ---------------------------------------------------------------------------------------------
# Building a typed Config from plain dicts


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose {_type_name(tp)}")
        return value
    if tp is Any:  # checked by the spec's own rules (e.g. a search space's distributions)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, value_tp = args
        return {str(k): _coerce(v, value_tp, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = args
        return [_coerce(v, item_tp, f"{key}.{i}") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        # every float key, present and future: NaN compares False with every bound below, and
        # an infinite lr or weight only surfaces as a NaN loss thousands of steps later
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise AssertionError(f"unsupported config type {tp} at {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [fl.name for fl in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{dotted}: unknown key{hint}; allowed keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], dotted)
    return cls(**kwargs)


def build_typed(cls: type, data: Any, prefix: str) -> Any:
    """A dataclass ``cls`` from a mapping read from YAML, typed as the config is (its field
    hints: Literal, lists, numbers, nested dataclasses); a ConfigError names ``prefix.key`` for an
    unknown key (with the closest known one) or a value of the wrong type. The one reader of
    every spec: the run config, study files (:mod:`gvae_dist.study`), search spaces
    (:mod:`gvae_dist.tune`)."""
    return _build(cls, data, prefix)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a nested dict (missing keys take defaults)."""
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _check_bounds(node: Any, prefix: str = "") -> None:
    """Enforce every field's ``max`` (see :func:`f`), on list items too (``model.channels.2``)."""
    for fl in dataclasses.fields(node):
        value, key = getattr(node, fl.name), f"{prefix}{fl.name}"
        if dataclasses.is_dataclass(value):
            _check_bounds(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_bounds(item, f"{key}.{i}.")
                elif "max" in fl.metadata and isinstance(item, int | float) and item > fl.metadata["max"]:
                    raise ConfigError(f"{key}.{i}: at most {fl.metadata['max']:_}, got {item:_}")
        elif "max" in fl.metadata and isinstance(value, int | float) and value > fl.metadata["max"]:
            raise ConfigError(
                f"{key}: at most {fl.metadata['max']:_} (a bound against exhausting memory; "
                f"see `gvae-dist config --explain`), got {value:_}"
            )


def _check_run_name(run: RunConfig) -> None:
    """``run.name`` names a directory inside ``run.output_dir``, never outside (nor the output
    directory itself, which holds the shared MLflow store and Ray storage)."""
    name = run.name
    where = f"run.name: {name!r}"
    if not name.strip() or Path(name).is_absolute() or name.startswith("~"):
        raise ConfigError(
            f"{where} must be a relative name inside run.output_dir ({run.output_dir}), "
            "e.g. 'beta4-seed0'; set the parent directory with run.output_dir"
        )
    parts = Path(name).parts
    if ".." in parts or not parts or parts == (".",):
        raise ConfigError(
            f"{where} may not contain '..' (or be '.'): the run directory must stay inside "
            f"run.output_dir ({run.output_dir}); set the parent directory with run.output_dir"
        )
    out = Path(run.output_dir).expanduser().resolve()
    target = (out / name).resolve()  # follows symlinks already on disk
    if target == out or out not in target.parents:
        raise ConfigError(
            f"{where} resolves to {target}, outside run.output_dir ({out}) (a symlink?); pick another run.name"
        )


def validate(cfg: Config) -> None:
    """Cross-field checks; raises ConfigError naming the key."""
    _check_bounds(cfg)
    _check_run_name(cfg.run)
    d, o, p = cfg.data, cfg.optim, cfg.pairing
    for key, val in [
        ("data.num_train", d.num_train),
        ("data.num_eval", d.num_eval),
        ("data.shuffle_buffer", d.shuffle_buffer),
        ("optim.batch_size", o.batch_size),
        ("optim.steps", o.steps),
        ("optim.grad_accum", o.grad_accum),
        ("optim.lr", o.lr),
        ("model.latent_dim", cfg.model.latent_dim),
        ("model.hidden", cfg.model.hidden),
        ("run.log_every", cfg.run.log_every),
        ("run.checkpoint_every", cfg.run.checkpoint_every),
        ("run.keep_checkpoints", cfg.run.keep_checkpoints),
        ("eval.batch_size", cfg.eval.batch_size),
        ("eval.jobs", cfg.eval.jobs),
        ("pairing.bank_size", p.bank_size),
    ]:
        _positive(val, key)
    for key, val in [
        ("data.label_jitter", d.label_jitter),
        ("optim.grad_clip", o.grad_clip),
        ("optim.weight_decay", o.weight_decay),
        ("pairing.identity", p.identity),
        ("pairing.shared_factor", p.shared_factor),
        ("pairing.transform", p.transform),
        ("eval.every", cfg.eval.every),
        ("model.refine_channels", cfg.model.refine_channels),
        ("eval.points", cfg.eval.points),
        ("eval.during_codes", cfg.eval.during_codes),
        ("tracking.image_every", cfg.tracking.image_every),
        ("distributed.workers", cfg.distributed.workers),
        ("data.num_workers", d.num_workers),
        ("run.threads", cfg.run.threads),
        ("objective.warmup_steps", cfg.objective.warmup_steps),
        ("optim.min_lr", o.min_lr),
        ("optim.lr_warmup_steps", o.lr_warmup_steps),
    ]:
        _positive(val, key, allow_zero=True)
    if o.min_lr > o.lr:
        raise ConfigError(
            f"optim.min_lr: the cosine schedule's final rate must not exceed optim.lr ({o.lr}), got {o.min_lr}"
        )
    if o.lr_warmup_steps >= o.steps and o.lr_warmup_steps:
        raise ConfigError(f"optim.lr_warmup_steps: must be below optim.steps ({o.steps}), got {o.lr_warmup_steps}")
    if not 0.0 <= o.lr_warmup_fraction < 1.0:
        raise ConfigError(
            f"optim.lr_warmup_fraction: must be in [0, 1) (a share of optim.steps), got {o.lr_warmup_fraction}"
        )
    if not 0.0 <= d.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction: must be in [0, 1), got {d.eval_fraction}")
    if not 0.0 <= cfg.gate.drop_high_loss < 1.0:
        raise ConfigError(
            f"gate.drop_high_loss: must be in [0, 1) (a share of the shared-factor pairs), "
            f"got {cfg.gate.drop_high_loss}"
        )
    if not 0.0 <= d.label_flip_prob <= 1.0:
        raise ConfigError(f"data.label_flip_prob: must be in [0, 1], got {d.label_flip_prob}")
    if d.label_bins < 2:
        raise ConfigError(f"data.label_bins: must be >= 2, got {d.label_bins}")
    from gvae_dist.data.synthetic import FEATURE_SCALE_RANGE

    if not FEATURE_SCALE_RANGE[0] <= d.feature_scale <= FEATURE_SCALE_RANGE[1]:
        raise ConfigError(
            f"data.feature_scale: must be within {list(FEATURE_SCALE_RANGE)} (1.0 cartoon "
            f"features, 0.5 about real-face proportions), got {d.feature_scale}"
        )
    if d.source == "shapes" and d.feature_scale != 1.0:
        raise ConfigError("data.feature_scale: applies to data.source=faces only; leave it at 1.0 for shapes")
    if d.source == "shards" and not d.path:
        raise ConfigError(
            "data.path: data.source is 'shards', so set data.path to the shard directory "
            "(build one with `gvae-dist data build`)"
        )
    if not cfg.model.channels or any(c < 1 for c in cfg.model.channels):
        raise ConfigError(f"model.channels: need positive channel counts, got {cfg.model.channels}")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas: need two values in [0, 1), got {o.betas}")
    if p.identity + p.shared_factor + p.transform <= 0:
        raise ConfigError("pairing: identity + shared_factor + transform must be > 0")
    if cfg.eval.num_train < 10 or cfg.eval.num_test < 10:
        raise ConfigError("eval.num_train / eval.num_test: need at least 10 codes each")
    if 0 < cfg.eval.during_codes < 30:
        raise ConfigError(
            f"eval.during_codes: need at least 30 codes (20 to fit, 10 to score) or 0, got {cfg.eval.during_codes}"
        )
    if o.batch_size % max(1, cfg.distributed.workers) != 0:
        raise ConfigError(
            f"optim.batch_size: {o.batch_size} must be divisible by distributed.workers "
            f"({cfg.distributed.workers}) so every worker gets the same share"
        )
    try:
        spec = cfg.partition_spec()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    names = spec.names
    for key, part_list in [("pairing.identity_partitions", p.identity_partitions)]:
        for name in part_list:
            if name not in names:
                raise ConfigError(f"{key}: unknown partition {name!r}; partitions are {names}")
    if p.transform > 0 and p.transform_partition not in names:
        raise ConfigError(
            f"pairing.transform_partition: unknown partition {p.transform_partition!r}; partitions are {names}"
        )
    if p.partner == "rendered" and d.source not in ("faces", "shapes"):
        raise ConfigError(
            f"pairing.partner: 'rendered' renders the built-in generators but data.source is "
            f"{d.source!r}; use pairing.partner: dataset (or batch)"
        )
    if p.shared_factor > 0 and not any(part.factors for part in cfg.partitions):
        raise ConfigError(
            "pairing.shared_factor > 0 but no partition lists factors: give a partition "
            "`factors: [...]` or set pairing.shared_factor: 0"
        )
    _check_partition_factors(cfg)
    if o.mixed_precision == "fp16" and cfg.run.device == "cpu":
        raise ConfigError("optim.mixed_precision: fp16 needs a GPU; use 'bf16' or 'no' on CPU")
    from gvae_dist.objective import validate_objective

    try:
        validate_objective(cfg.objective)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _check_partition_factors(cfg: Config) -> None:
    """Partitions name weak labels the data has: the built-in generators' factors, or the labels
    in the manifest at data.path (checked when it is readable here, before any data is loaded)."""
    from gvae_dist.data.shards import source_names

    d = cfg.data
    try:
        names = source_names(d)
    except ValueError as exc:  # a manifest that is there but unreadable
        raise ConfigError(f"data.path: {exc}") from None
    if names is None:
        return
    for i, part in enumerate(cfg.partitions):
        missing = [fac for fac in part.factors if fac not in names["labels"]]
        if not missing:
            continue
        one = len(missing) == 1
        what = (
            ("a weak label" if one else "weak labels") + f" in {Path(d.path) / 'manifest.json'} (data.path)"
            if d.source == "shards"
            else ("a factor" if one else "factors") + f" of data.source={d.source!r}"
        )
        raise ConfigError(
            f"partitions.{i}.factors: {', '.join(map(repr, missing))} {'is' if one else 'are'} "
            f"not {what}; available: {', '.join(names['labels'])}"
        )


# ---------------------------------------------------------------------------------------------
# Files and overrides


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping (config, search space, study file); every
    failure is a ConfigError that names the file (``what`` says which kind it is)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path}: {size:_} bytes, more than a {what} may hold ({MAX_CONFIG_BYTES:_}); is this the right file?"
        )
    data = _safe_load(path.read_text(), str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values in ``node`` with every shared (aliased) sub-tree counted at each use, as merging and
    building the config would copy them; linear in the distinct objects (``memo``)."""
    if not isinstance(node, dict | list):
        return 1
    if id(node) not in memo:
        memo[id(node)] = 0  # a recursive alias (`&a [*a]`) counts once instead of looping
        items = node.values() if isinstance(node, dict) else node
        memo[id(node)] = 1 + sum(_expanded_size(v, memo) for v in items)
    return memo[id(node)]


def _safe_load(text: str, where: str) -> Any:
    """``yaml.safe_load`` that refuses documents whose aliases expand past
    :data:`MAX_CONFIG_NODES` values ("billion laughs"): PyYAML shares aliased objects, but the
    ``extends`` merge, the overrides and the dataclasses copy them out in full."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    _check_expansion(data, where)
    return data


def _check_expansion(data: Any, where: str) -> None:
    size = _expanded_size(data, {})
    if size > MAX_CONFIG_NODES:
        raise ConfigError(
            f"{where}: its YAML aliases (*name) expand to {size:_} values, more than "
            f"{MAX_CONFIG_NODES:_}; write the values out or use fewer nested aliases"
        )


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'extends' loop through {[str(s) for s in seen]}")
    data = read_yaml_mapping(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    base = _read_yaml((path.parent / parent), seen + (path.resolve(),))
    return _merge(base, data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = val
    return out


def set_dotted(data: Any, key: str, value: Any, *, create: bool, where: str) -> None:
    """Set ``value`` at the dotted ``key`` (``"optim.lr"``, ``"partitions.2.size"``) in nested
    dicts and lists, in place. A list index must exist. ``create``: a missing section or key is
    made (``--set`` may name what a YAML file left out; validation then names unknown keys, and
    ``partitions`` starts from the default partitions); else it is refused with the closest name.
    Errors start with ``where``."""
    parts, node = key.strip().split("."), data
    for depth, part in enumerate(parts):
        at, last = ".".join(parts[:depth]), depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"{where}: {at} is a list; use an index 0..{len(node) - 1} for {part!r}")
            if int(part) >= len(node):
                raise ConfigError(
                    f"{where}: index {part} is out of range: {at} has {len(node)} entries "
                    f"(0..{len(node) - 1}); set the whole list to add entries, e.g. --set 'partitions=[...]'"
                )
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{where}: {at} is a value, not a section")
        elif part not in node:
            if not create:
                close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
                raise ConfigError(f"{where}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
            if not last:
                node[part] = [dataclasses.asdict(pc) for pc in _default_partitions()] if part == "partitions" else {}
        if last:
            node[part] = value
        else:
            node = node[part]


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (values parsed as YAML: ``3``, ``true``, ``[1,2]``, ``null``)."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set objective.beta=8")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _check_expansion(value, f"--set {key}")
        set_dotted(data, key, value, create=True, where=f"--set {key}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML preset (or defaults when None), apply overrides, validate."""
    data = _read_yaml(Path(path)) if path else {}
    return config_from_dict(apply_overrides(data, overrides or []))


# userinfo of any scheme://user:password@host (also a token alone as user), and query values
# whose names say they are secrets (?token=..., &X-Amz-Signature=..., &password=...)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:?#]*)(?::(?P<pw>[^\s/@?#]*))?@")
_SECRET_QUERY = re.compile(
    r"(?P<name>[?&;][^=&\s#]*(?:token|passw|secret|signature|sig|key|credential|auth)"
    r"[^=&\s#]*=)(?P<value>[^&\s#]+)",
    re.IGNORECASE,
)


def redact_uri(text: str) -> str:
    """``text`` with the credentials of every URI in it masked: ``http://user:pw@host`` ->
    ``http://user:***@host``, ``https://TOKEN@host`` -> ``https://***@host``, secret-named query
    values -> ``***``. Idempotent; text without credentials comes back unchanged. Use it wherever
    a URI (or an error message that may quote one) is logged, saved or printed."""

    def userinfo(m: re.Match) -> str:
        if m["pw"] is not None:
            return f"{m['scheme']}{m['user']}:***@"
        return f"{m['scheme']}***@" if m["user"] not in ("", "***") else m[0]

    return _SECRET_QUERY.sub(lambda m: f"{m['name']}***", _USERINFO.sub(userinfo, text))


def redact(data: Any) -> Any:
    """A copy of a config dict (or list, or value) with :func:`redact_uri` applied to every
    string that holds a URI: tracking.uri, data paths, storage_path, addresses."""
    if isinstance(data, dict):
        return {k: redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return redact_uri(data)
    return data


def config_yaml(cfg: Config) -> str:
    """The config as it is written to disk (run dir, checkpoints): YAML, credentials redacted."""
    return yaml.safe_dump(redact(cfg.to_dict()), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as YAML (``load_config`` reads it back to the same Config,
    except for credentials in URIs, which are redacted)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(config_yaml(cfg))
    tmp.replace(path)
    return path


def explain(cls: type = Config, prefix: str = "") -> list[str]:
    """One line per leaf key: ``key  (type, default)  doc``."""
    lines, hints = [], typing.get_type_hints(cls)
    defaults = cls()
    for fl in dataclasses.fields(cls):
        key, tp = f"{prefix}{fl.name}", hints[fl.name]
        if dataclasses.is_dataclass(tp):
            lines += explain(tp, key + ".")
        elif fl.name == "partitions" and cls is Config:
            lines.append(f"{key}  (list of {{name, size, factors}})  named contiguous latent blocks")
            lines += explain(PartitionConfig, key + ".N.")
        else:
            bound = f", max {fl.metadata['max']:_}" if "max" in fl.metadata else ""
            lines.append(
                f"{key}  ({_type_name(tp)}, default {getattr(defaults, fl.name)!r}{bound})  "
                f"{fl.metadata.get('doc', '')}"
            )
    return lines
