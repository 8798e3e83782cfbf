"""Learning-rate schedule: the rate of each optimizer step as a pure function of the step.

Being a function of the step alone (no scheduler state), a resumed run continues the schedule
exactly where the checkpoint left it, and the optimizer's saved state stays the whole state.
Extending a finished run (a larger ``optim.steps`` on resume) stretches the cosine from that step
on: the steps already taken keep the rates of the shorter schedule.

- ``constant``: ``optim.lr`` every step (the default; the loop then never touches the rate).
- ``cosine``: half a cosine from ``optim.lr`` down to ``optim.min_lr`` over ``optim.steps``
  (Loshchilov & Hutter, "SGDR", ICLR 2017, without restarts).
- ``optim.lr_warmup_steps``: either schedule starts with a linear warm-up, ``lr * (s + 1) / N``
  for the first N steps (Goyal et al. 2017), then follows the schedule over the remaining steps.
  Where N is 0, ``optim.lr_warmup_fraction`` gives it as a share of ``optim.steps`` (rounded), so
  a preset's warm-up shrinks with a shortened run (``--set optim.steps=100``) instead of outlasting it.
"""

from __future__ import annotations

import math
from typing import Protocol

__all__ = ["SCHEDULES", "OptimConfigLike", "learning_rate", "scheduled", "warmup_steps"]

SCHEDULES = ("constant", "cosine")


class OptimConfigLike(Protocol):
    """The fields of ``gvae_dist.config.OptimConfig`` that the schedule reads."""

    lr: float
    steps: int
    schedule: str
    min_lr: float
    lr_warmup_steps: int
    lr_warmup_fraction: float


def warmup_steps(o: OptimConfigLike) -> int:
    """The warm-up length in steps: ``lr_warmup_steps``, or ``lr_warmup_fraction`` of the run."""
    return o.lr_warmup_steps or round(o.lr_warmup_fraction * o.steps)


def scheduled(o: OptimConfigLike) -> bool:
    """Whether the rate ever differs from ``optim.lr`` (the loop sets it only then)."""
    return o.schedule != "constant" or warmup_steps(o) > 0


def learning_rate(o: OptimConfigLike, step: int) -> float:
    """The learning rate of the 0-based optimizer ``step`` (see module docstring)."""
    if o.schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule must be one of {list(SCHEDULES)}, got {o.schedule!r}")
    warm = warmup_steps(o)
    if step < warm:
        return o.lr * (step + 1) / warm
    if o.schedule == "constant":
        return o.lr
    span = max(o.steps - warm, 1)
    progress = min(max(step - warm, 0) / span, 1.0)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1.0 + math.cos(math.pi * progress))
