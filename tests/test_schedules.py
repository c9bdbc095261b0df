"""Unit tests of hybrid.schedules: the shape of every learning-rate schedule, and the torch scheduler."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from hybrid.config import TrainConfig
from hybrid.errors import ConfigError
from hybrid.schedules import build_scheduler, lr_multiplier

SCHEDULES = ["constant", "step", "cosine", "onecycle"]


def curve(schedule: str, *, total_steps: int, warmup_steps: int = 0, **kw: Any) -> np.ndarray:
    return np.array(
        [
            lr_multiplier(s, total_steps=total_steps, warmup_steps=warmup_steps, schedule=schedule, **kw)
            for s in range(total_steps)
        ]
    )


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("warmup_steps", [1, 4, 7])
def test_linear_warmup_reaches_one_exactly_at_its_end(schedule: str, warmup_steps: int) -> None:
    values = curve(
        schedule, total_steps=20, warmup_steps=warmup_steps, steps_per_epoch=5, step_epochs=1, step_gamma=0.5
    )
    warm = values[:warmup_steps]
    np.testing.assert_allclose(warm, np.arange(1, warmup_steps + 1) / warmup_steps)
    assert warm[-1] == 1.0
    assert np.all(np.diff(warm) > 0)
    # The first step after warm-up starts the schedule at its peak.
    assert values[warmup_steps] == pytest.approx(1.0)


def test_constant_is_flat_after_warmup() -> None:
    values = curve("constant", total_steps=12, warmup_steps=3)
    assert np.all(values[3:] == 1.0)
    assert np.all(curve("constant", total_steps=5) == 1.0)


def test_step_drops_by_gamma_every_step_epochs() -> None:
    steps_per_epoch, step_epochs, gamma = 5, 3, 0.5
    values = curve(
        "step", total_steps=50, steps_per_epoch=steps_per_epoch, step_epochs=step_epochs, step_gamma=gamma
    )
    epochs = np.arange(50) // steps_per_epoch
    np.testing.assert_allclose(values, gamma ** (epochs // step_epochs))
    assert values[14] == 1.0 and values[15] == 0.5 and values[29] == 0.5 and values[30] == 0.25


def test_step_with_gamma_one_is_constant() -> None:
    assert np.all(curve("step", total_steps=30, steps_per_epoch=2, step_epochs=1, step_gamma=1.0) == 1.0)


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1])
@pytest.mark.parametrize("warmup_steps", [0, 5])
def test_cosine_falls_monotonically_to_min_lr_ratio(min_lr_ratio: float, warmup_steps: int) -> None:
    total = 41
    values = curve("cosine", total_steps=total, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
    decay = values[warmup_steps:]
    assert decay[0] == pytest.approx(1.0)
    assert np.all(np.diff(decay) <= 1e-12)
    assert decay[-1] == pytest.approx(min_lr_ratio, abs=1e-12)
    assert np.all((values >= min_lr_ratio - 1e-12) & (values <= 1.0))
    # Half-way through the decay the cosine is half-way between its ends.
    middle = warmup_steps + (total - warmup_steps - 1) // 2
    assert values[middle] == pytest.approx((1.0 + min_lr_ratio) / 2, abs=0.05)
    assert np.all(np.diff(decay) < 0)  # strictly falling: the schedule really decays


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.04])
def test_onecycle_rises_then_falls_with_peak_one(min_lr_ratio: float) -> None:
    total = 50
    values = curve("onecycle", total_steps=total, min_lr_ratio=min_lr_ratio)
    peak = int(np.argmax(values))
    assert values.max() == pytest.approx(1.0)
    assert 0 < peak < total - 1
    assert peak == pytest.approx(0.3 * total, abs=2)  # the warm-up takes 30% of the steps
    assert values[0] < 0.2
    assert np.all(np.diff(values[: peak + 1]) > 0)
    assert np.all(np.diff(values[peak:]) <= 1e-12)
    assert values[-1] == pytest.approx(min_lr_ratio, abs=1e-12)


def test_onecycle_with_explicit_warmup_uses_it() -> None:
    values = curve("onecycle", total_steps=20, warmup_steps=2)
    assert values[1] == 1.0 and values[0] == 0.5


def test_single_step_runs_are_at_full_rate() -> None:
    for schedule in SCHEDULES:
        assert lr_multiplier(0, total_steps=1, warmup_steps=0, schedule=schedule) == 1.0


def test_invalid_arguments() -> None:
    with pytest.raises(ConfigError, match=r"total_steps must be >= 1, but got 0"):
        lr_multiplier(0, total_steps=0, warmup_steps=0, schedule="constant")
    with pytest.raises(ConfigError, match=r"warmup_steps must be in \[0, 5\), but got 5"):
        lr_multiplier(0, total_steps=5, warmup_steps=5, schedule="constant")
    with pytest.raises(ValueError, match=r"but got 'linear'"):
        lr_multiplier(0, total_steps=5, warmup_steps=0, schedule="linear")


# ---------------------------------------------------------------- build_scheduler


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_build_scheduler_follows_lr_multiplier(schedule: str) -> None:
    config = TrainConfig(
        lr=0.1, max_epochs=4, warmup_epochs=1.0, schedule=schedule, step_epochs=1, step_gamma=0.5, min_lr_ratio=0.1
    )
    steps_per_epoch = 5
    total = steps_per_epoch * config.max_epochs
    weight = torch.nn.Parameter(torch.zeros(2))
    bias = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [weight]}, {"params": [bias], "weight_decay": 0.0}], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    seen = []
    for _ in range(total + 3):  # three steps past the end: the rate holds its final value
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    expected = [
        config.lr
        * lr_multiplier(
            min(s, total - 1),
            total_steps=total,
            warmup_steps=steps_per_epoch,
            schedule=schedule,
            steps_per_epoch=steps_per_epoch,
            step_epochs=config.step_epochs,
            step_gamma=config.step_gamma,
            min_lr_ratio=config.min_lr_ratio,
        )
        for s in range(total + 3)
    ]
    seen_arr = np.array(seen)
    np.testing.assert_allclose(seen_arr[:, 0], expected, rtol=1e-12)
    np.testing.assert_allclose(seen_arr[:, 1], expected, rtol=1e-12)  # every param group follows
    assert seen_arr[steps_per_epoch - 1, 0] == pytest.approx(config.lr)  # peak at the end of warm-up
    assert seen_arr[0, 0] == pytest.approx(config.lr / steps_per_epoch)


def test_build_scheduler_rounds_fractional_warmup_to_steps() -> None:
    config = TrainConfig(lr=1.0, max_epochs=2, warmup_epochs=0.5, schedule="constant")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=8)
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(lrs, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
