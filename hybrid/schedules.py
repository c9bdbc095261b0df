"""Learning-rate schedules as pure functions of the step: easy to test, plotted in the report.

Each schedule returns the multiplier of the peak learning rate at optimiser step ``step``
(0-based) of ``total_steps``, after an optional linear warm-up of ``warmup_steps``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hybrid._dataclass_io import require

if TYPE_CHECKING:
    import torch

    from hybrid.config import TrainConfig


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    steps_per_epoch: int = 1,
    step_epochs: int = 1,
    step_gamma: float = 1.0,
    min_lr_ratio: float = 0.0,
) -> float:
    """Fraction of the peak learning rate to use at ``step``.

    - ``constant``: 1 after warm-up.
    - ``step``: multiplied by ``step_gamma`` every ``step_epochs`` epochs.
    - ``cosine``: half a cosine from 1 down to ``min_lr_ratio`` over the steps after warm-up.
    - ``onecycle``: without a configured warm-up, ramps up linearly for the first 30% of steps
      (as ``torch.optim.lr_scheduler.OneCycleLR`` does), then anneals with a cosine to ``min_lr_ratio``.
    """
    require(total_steps >= 1, f"total_steps must be >= 1, but got {total_steps}")
    require(0 <= warmup_steps < total_steps, f"warmup_steps must be in [0, {total_steps}), but got {warmup_steps}")
    if schedule == "onecycle" and warmup_steps == 0:
        warmup_steps = max(1, int(0.3 * total_steps)) if total_steps > 1 else 0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        epoch = (step - warmup_steps) // max(1, steps_per_epoch)
        return step_gamma ** (epoch // step_epochs)
    if schedule in ("cosine", "onecycle"):
        span = max(1, total_steps - warmup_steps - 1)
        progress = min(1.0, (step - warmup_steps) / span)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be one of constant, step, cosine, onecycle, but got {schedule!r}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, *, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepping once per optimiser step through :func:`lr_multiplier`."""
    import torch

    total = max(1, steps_per_epoch * config.max_epochs)
    warmup = min(int(round(config.warmup_epochs * steps_per_epoch)), total - 1)

    def multiplier(step: int) -> float:
        return lr_multiplier(
            min(step, total - 1),
            total_steps=total,
            warmup_steps=warmup,
            schedule=config.schedule,
            steps_per_epoch=steps_per_epoch,
            step_epochs=config.step_epochs,
            step_gamma=config.step_gamma,
            min_lr_ratio=config.min_lr_ratio,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
