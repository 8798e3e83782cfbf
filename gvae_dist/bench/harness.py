"""Timing and memory helpers shared by every benchmark suite (PyTorch only).

Measuring on a shared, noisy machine: the variants being compared run **interleaved in one
process** (round r runs every variant once, in an order rotated per round), and a comparison is
reported as the **median over rounds of the per-round time ratio**, so that load from other
processes, which drifts over seconds, hits both sides of a ratio alike. Absolute rates are
medians over rounds.

Every result is one flat dict (a row): ``suite``, ``name``, the parameters, then the numbers.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

import torch

__all__ = [
    "Timings",
    "device_sync",
    "interleave",
    "load_average",
    "minor_faults_per_call",
    "peak_memory",
    "saved_tensor_bytes",
]


def device_sync(device: torch.device | str) -> None:
    """Wait for queued kernels (CUDA); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class Timings:
    """Seconds per call of each variant, one entry per round (see module doc)."""

    def __init__(self, seconds: dict[str, list[float]]):
        self.seconds = seconds

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, name: str, base: str) -> float:
        """Median over rounds of ``t_base / t_name`` (> 1: ``name`` is faster than ``base``)."""
        return statistics.median(b / t for b, t in zip(self.seconds[base], self.seconds[name]))

    def spread(self, name: str) -> float:
        """Interquartile range over the median (a noise indicator; 0 when < 4 rounds)."""
        v = sorted(self.seconds[name])
        if len(v) < 4:
            return 0.0
        q = statistics.quantiles(v, n=4)
        return (q[2] - q[0]) / statistics.median(v)


def interleave(
    fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 2, device: torch.device | str = "cpu"
) -> Timings:
    """Time ``rounds`` calls of each function, interleaved and order-rotated per round."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    device_sync(device)
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            device_sync(device)
            t0 = time.perf_counter()
            fns[name]()
            device_sync(device)
            seconds[name].append(time.perf_counter() - t0)
    return Timings(seconds)


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs (eager).

    A device-independent measure of the activation memory a forward pass holds; it does not see
    tensors saved inside compiled graphs.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_memory(fn: Callable[[], object], device: torch.device | str) -> int | None:
    """Peak bytes allocated above the starting level while ``fn`` runs (CUDA only, else None)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    start = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def minor_faults_per_call(fn: Callable[[], object], calls: int = 3) -> float | None:
    """Minor page faults of this process per call of ``fn`` (allocation churn; None off Unix)."""
    try:
        import resource
    except ImportError:
        return None
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def load_average() -> float | None:
    """1-minute load average of this machine (a noise indicator), None where unavailable."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
