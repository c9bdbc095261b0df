"""Unit tests of hybrid.train_state: saving a training run without pickle, resuming it, the best-epoch rule."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hybrid.artifacts import save_model
from hybrid.config import TrainConfig
from hybrid.errors import TrainingError
from hybrid.models import CNN
from hybrid.schedules import build_scheduler
from hybrid.testing import tiny_cnn_config, toy_batches
from hybrid.train import make_optimizer, train_epoch
from hybrid.train_state import (
    MODEL_DIR,
    TrainState,
    best_index,
    flatten_optimizer_state,
    improves,
    load_train_state,
    read_train_state,
    run_differences,
    run_identity,
    save_train_state,
    unflatten_optimizer_state,
)

CPU = torch.device("cpu")


def _setup(config: TrainConfig, *, steps_per_epoch: int, seed: int = 0) -> tuple[CNN, Any, Any]:
    torch.manual_seed(seed)
    model = CNN(tiny_cnn_config(dropout=0.3))  # dropout: the RNG state matters
    optimizer = make_optimizer(model, config)
    return model, optimizer, build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)


def _epoch(model: CNN, optimizer: Any, scheduler: Any, config: TrainConfig, batches: list, epoch: int) -> float:
    loss, _ = train_epoch(model, batches, optimizer=optimizer, scheduler=scheduler, config=config,
                          columns=("pixels",), device=CPU, epoch=epoch)
    return loss


def _save(directory: Path, model: CNN, optimizer: Any, scheduler: Any, state: TrainState) -> None:
    save_model(directory / MODEL_DIR, model, family="cnn", config=tiny_cnn_config(dropout=0.3))
    save_train_state(directory, state, optimizer=optimizer, scheduler=scheduler, scaler=None)


def _same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_state_round_trip_restores_optimizer_schedule_and_rng_exactly(tmp_path: Path, optimizer: str) -> None:
    config = TrainConfig(max_epochs=4, lr=1e-2, optimizer=optimizer, schedule="cosine", warmup_epochs=1)
    batches = toy_batches(64, batch_size=16)
    model, opt, sched = _setup(config, steps_per_epoch=len(batches))
    _epoch(model, opt, sched, config, batches, 0)
    random.random(), np.random.rand()  # move every generator off its seed
    state = TrainState(epoch=1, best_value=0.5, best_epoch=1, history=[{"epoch": 1, "val_accuracy": 0.5}])
    _save(tmp_path, model, opt, sched, state)
    expected_rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())

    model2, opt2, sched2 = _setup(config, steps_per_epoch=len(batches), seed=123)
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restored = load_train_state(tmp_path, model=model2, optimizer=opt2, scheduler=sched2, scaler=None)

    assert restored.to_json() == state.to_json()
    _same(opt.state_dict(), opt2.state_dict())  # tensors, param groups, Adam's betas still a tuple
    assert sched2.state_dict() == sched.state_dict()
    _same(model.state_dict(), model2.state_dict())
    assert torch.equal(torch.get_rng_state(), expected_rng[0])
    numpy_now = np.random.get_state()
    assert numpy_now[0] == expected_rng[1][0] and np.array_equal(numpy_now[1], expected_rng[1][1])
    assert numpy_now[2:] == expected_rng[1][2:]
    assert random.getstate() == expected_rng[2]
    assert read_train_state(tmp_path).history == state.history


def test_flattened_optimizer_state_is_tensors_plus_json(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {f"state.{i}.{k}" for i in (0, 1) for k in ("step", "exp_avg", "exp_avg_sq")}
    import json

    assert json.loads(json.dumps(meta)) == meta  # plain JSON, nothing pickled
    _same(unflatten_optimizer_state(tensors, meta, like=opt.state_dict()), opt.state_dict())


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_resumed_run_continues_the_straight_curve(tmp_path: Path, optimizer: str) -> None:
    """N epochs straight == k epochs, save, fresh process state, load, N - k more: same losses, same weights."""
    config = TrainConfig(max_epochs=4, lr=1e-2, optimizer=optimizer, schedule="cosine", warmup_epochs=1)
    batches = toy_batches(64, batch_size=16)
    model, opt, sched = _setup(config, steps_per_epoch=len(batches))
    straight = [_epoch(model, opt, sched, config, batches, e) for e in range(4)]

    model_a, opt_a, sched_a = _setup(config, steps_per_epoch=len(batches))
    first = [_epoch(model_a, opt_a, sched_a, config, batches, e) for e in range(2)]
    _save(tmp_path, model_a, opt_a, sched_a, TrainState(epoch=2))
    del model_a, opt_a, sched_a
    torch.manual_seed(7)  # the new process starts from other RNG state and fresh weights
    model_b, opt_b, sched_b = _setup(config, steps_per_epoch=len(batches), seed=7)
    state = load_train_state(tmp_path, model=model_b, optimizer=opt_b, scheduler=sched_b, scaler=None)
    rest = [_epoch(model_b, opt_b, sched_b, config, batches, e) for e in range(state.epoch, 4)]

    assert first + rest == pytest.approx(straight, rel=1e-6, abs=1e-7)
    for key, value in model.state_dict().items():
        assert torch.allclose(value, model_b.state_dict()[key], atol=1e-6), key


def test_loading_a_checkpoint_without_training_state_is_one_clear_error(tmp_path: Path) -> None:
    config = TrainConfig()
    model, opt, sched = _setup(config, steps_per_epoch=1)
    save_model(tmp_path / MODEL_DIR, model, family="cnn", config=tiny_cnn_config(dropout=0.3))
    with pytest.raises(TrainingError, match="no training state"):
        load_train_state(tmp_path, model=model, optimizer=opt, scheduler=sched, scaler=None)
    assert read_train_state(tmp_path) is None


def test_improves_is_strict_and_ignores_non_finite_values() -> None:
    assert improves(0.5, None, "max") and improves(0.5, None, "min")
    assert improves(0.6, 0.5, "max") and not improves(0.5, 0.5, "max") and not improves(0.4, 0.5, "max")
    assert improves(0.4, 0.5, "min") and not improves(0.5, 0.5, "min")
    assert not improves(math.nan, None, "max") and not improves(math.inf, 0.1, "min") and not improves(None, 0.1, "max")


@pytest.mark.parametrize(
    ("values", "mode", "expected"),
    [
        ([0.5, 0.7, 0.7, 0.6], "max", 1),  # a tie goes to the earlier epoch (the review's epoch 5 vs 6)
        ([0.9, 0.9, 0.9], "max", 0),
        ([1.0, 0.4, 0.4, 0.3], "min", 3),
        ([0.3, 0.2, 0.2], "min", 1),
        ([math.nan, 0.1, math.nan], "max", 1),
        ([math.nan], "max", None),
        ([], "max", None),
    ],
)
def test_best_index_breaks_ties_towards_the_earlier_epoch(values: list[float], mode: str, expected: int | None) -> None:
    history = [{"epoch": i + 1, "m": v} for i, v in enumerate(values)]
    assert best_index(history, "m", mode) == expected


def test_best_index_agrees_with_the_marks_the_loop_reports() -> None:
    """The loop marks each strict improvement with its epoch; Ray keeps the largest mark: that is best_index."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        values = [float(v) for v in rng.integers(0, 4, size=int(rng.integers(1, 8))) / 4]
        best, marks = None, []
        for epoch, value in enumerate(values, start=1):
            marks.append(epoch if improves(value, best, "max") else -1)
            best = value if improves(value, best, "max") else best
        history = [{"m": v} for v in values]
        assert max(marks) == best_index(history, "m", "max") + 1


def test_run_identity_ignores_max_epochs_and_names_what_differs() -> None:
    from hybrid.train import LoopSpec

    spec = LoopSpec(model_name="cnn", model={"base_channels": 4}, train={"lr": 0.1, "max_epochs": 3}, num_classes=3,
                    train_rows=10, metadata={"label_names": ("a", "b")})
    same = run_identity({**spec.to_dict(), "train": {"lr": 0.1, "max_epochs": 9}})
    assert run_differences(run_identity(spec.to_dict()), same) == []  # extending a run resumes it
    other = run_identity({**spec.to_dict(), "train": {"lr": 0.2, "max_epochs": 3}, "distill": {"alpha": 0.5}})
    assert run_differences(run_identity(spec.to_dict()), other) == ["distill", "train.lr"]
    assert run_differences(None, same) == ["(no record of the run that wrote it)"]
