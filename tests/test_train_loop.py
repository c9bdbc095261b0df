"""Unit tests of the pure parts of hybrid.train, on a tiny CNN and synthetic batches (no Ray)."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybrid.config import TrainConfig
from hybrid.errors import TrainingError
from hybrid.metrics import confusion_matrix
from hybrid.models import CNN
from hybrid.models.tasks import evaluate_batches, model_inputs
from hybrid.schedules import build_scheduler
from hybrid.testing import tiny_cnn_config, toy_batches
from hybrid.train import LoopSpec, autocast_context, make_optimizer, train_epoch

CPU = torch.device("cpu")
COLUMNS = ("pixels",)


def run_epochs(
    model: CNN, batches: list[dict[str, torch.Tensor]], config: TrainConfig, *, epochs: int
) -> tuple[list[float], torch.optim.lr_scheduler.LRScheduler]:
    optimizer = make_optimizer(model, config)
    steps_per_epoch = math.ceil(len(batches) / config.grad_accum_steps)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=steps_per_epoch)
    losses = []
    for epoch in range(epochs):
        loss, seen = train_epoch(
            model, batches, optimizer=optimizer, scheduler=scheduler, config=config,
            columns=COLUMNS, device=CPU, epoch=epoch,
        )
        assert seen == sum(len(b["label"]) for b in batches)
        losses.append(loss)
    return losses, scheduler


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"optimizer": "sgd", "lr": 0.05},
        {"precision": "bf16"},
        {"grad_accum_steps": 2, "label_smoothing": 0.1},
    ],
    ids=["adamw", "sgd", "bf16", "accum+smoothing"],
)
def test_train_epoch_lowers_the_loss(overrides: dict[str, Any]) -> None:
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config(batch_norm=True))
    config = TrainConfig(**{"max_epochs": 5, "lr": 1e-2, "schedule": "constant", **overrides})
    losses, _ = run_epochs(model, toy_batches(96, batch_size=16), config, epochs=5)
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    # The model learnt the classes, not the particular samples: it scores well on fresh ones.
    cm, _, _ = evaluate_batches(model, toy_batches(60, seed=1), num_classes=3, columns=COLUMNS, device=CPU)
    assert np.trace(cm) / cm.sum() >= 0.8


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_training_error(bad: float) -> None:
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config())
    config = TrainConfig(schedule="constant")
    batches = toy_batches(48, batch_size=16)
    batches[1]["pixels"][0, 0] = bad
    optimizer = make_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=3)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch 2, batch 1: training diverged"):
        train_epoch(
            model, batches, optimizer=optimizer, scheduler=scheduler, config=config,
            columns=COLUMNS, device=CPU, epoch=2,
        )


def test_evaluate_batches_counts_every_sample_exactly() -> None:
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config(batch_norm=True, dropout=0.5))
    model.train()
    batches = toy_batches(50, batch_size=16)  # 16, 16, 16, 2
    cm, loss_sum, seen = evaluate_batches(model, batches, num_classes=3, columns=COLUMNS, device=CPU)
    assert not model.training
    assert seen == 50 and cm.sum() == 50 and cm.dtype == np.int64
    pixels = torch.cat([b["pixels"] for b in batches])
    labels = torch.cat([b["label"] for b in batches])
    with torch.no_grad():
        logits = model(pixels)
    np.testing.assert_array_equal(cm, confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), 3))
    assert loss_sum == pytest.approx(F.cross_entropy(logits, labels, reduction="sum").item(), rel=1e-5)


def test_evaluate_batches_of_nothing() -> None:
    cm, loss_sum, seen = evaluate_batches(
        CNN(tiny_cnn_config()), [], num_classes=3, columns=COLUMNS, device=CPU
    )
    assert seen == 0 and loss_sum == 0.0 and cm.shape == (3, 3) and cm.sum() == 0


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_make_optimizer_exempts_biases_and_norms_from_decay(name: str) -> None:
    model = CNN(tiny_cnn_config(batch_norm=True, head_width=8, num_blocks=2))
    config = TrainConfig(optimizer=name, weight_decay=0.05, lr=0.01)  # type: ignore[arg-type]
    optimizer = make_optimizer(model, config)
    assert isinstance(optimizer, torch.optim.AdamW if name == "adamw" else torch.optim.SGD)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    named = dict(model.named_parameters())
    ids = {id(p): n for n, p in named.items()}
    decay_names = {ids[id(p)] for p in decay["params"]}
    no_decay_names = {ids[id(p)] for p in no_decay["params"]}
    assert decay_names | no_decay_names == set(named) and not decay_names & no_decay_names
    norm_params = {
        f"features.{i}.{kind}"
        for i, m in enumerate(model.features)
        if isinstance(m, torch.nn.BatchNorm2d)
        for kind in ("weight", "bias")
    }
    biases = {n for n in named if n.endswith(".bias")}
    assert norm_params and biases - norm_params
    assert no_decay_names == norm_params | biases
    assert all(named[n].ndim > 1 for n in decay_names)  # conv and linear weights
    if name == "sgd":
        assert decay["nesterov"] and decay["momentum"] == 0.9


def test_sgd_without_momentum_is_plain_sgd() -> None:
    optimizer = make_optimizer(CNN(tiny_cnn_config()), TrainConfig(optimizer="sgd", momentum=0.0))
    assert not optimizer.param_groups[0]["nesterov"]


def test_frozen_parameters_are_left_out() -> None:
    model = CNN(tiny_cnn_config())
    model.head[-1].weight.requires_grad_(False)
    params = [p for g in make_optimizer(model, TrainConfig()).param_groups for p in g["params"]]
    assert all(p is not model.head[-1].weight for p in params)
    assert len(params) == len(list(model.parameters())) - 1


@pytest.mark.parametrize(("num_batches", "accum", "steps"), [(6, 1, 6), (6, 2, 3), (5, 2, 3), (6, 4, 2)])
def test_grad_accumulation_steps_the_scheduler_once_per_optimizer_step(
    num_batches: int, accum: int, steps: int
) -> None:
    torch.manual_seed(0)
    model = CNN(tiny_cnn_config())
    config = TrainConfig(optimizer="sgd", lr=0.1, grad_accum_steps=accum, schedule="cosine", max_epochs=2)
    optimizer = make_optimizer(model, config)
    optimizer_steps = []
    optimizer.register_step_post_hook(lambda *_: optimizer_steps.append(1))
    scheduler = build_scheduler(optimizer, config, steps_per_epoch=math.ceil(num_batches / accum))
    train_epoch(
        model, toy_batches(8 * num_batches, batch_size=8), optimizer=optimizer, scheduler=scheduler,
        config=config, columns=COLUMNS, device=CPU,
    )
    assert len(optimizer_steps) == steps
    assert scheduler.last_epoch == steps
    # No gradient is left over for the next epoch.
    assert all(p.grad is None for p in model.parameters())


def test_accumulated_micro_batches_equal_one_large_batch() -> None:
    torch.manual_seed(0)
    base = CNN(tiny_cnn_config())
    (big,) = toy_batches(16, batch_size=16)
    halves = [{k: v[:8] for k, v in big.items()}, {k: v[8:] for k, v in big.items()}]
    results = []
    for batches, accum in (([big], 1), (halves, 2)):
        model = copy.deepcopy(base)
        config = TrainConfig(optimizer="sgd", lr=0.5, momentum=0.9, grad_accum_steps=accum, schedule="constant")
        optimizer = make_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config, steps_per_epoch=1)
        train_epoch(
            model, batches, optimizer=optimizer, scheduler=scheduler, config=config, columns=COLUMNS, device=CPU
        )
        results.append(model)
    one, accumulated = results
    changed = False
    for (name, p1), p2, p0 in zip(one.named_parameters(), accumulated.parameters(), base.parameters(), strict=True):
        torch.testing.assert_close(p2, p1, atol=1e-6, rtol=1e-5, msg=name)
        changed |= not torch.equal(p1, p0)
    assert changed


def test_autocast_context() -> None:
    assert isinstance(autocast_context(TrainConfig(), CPU), nullcontext)
    with autocast_context(TrainConfig(precision="bf16"), CPU):
        out = torch.nn.Linear(4, 2)(torch.rand(3, 4))
    assert out.dtype == torch.bfloat16


def test_model_inputs_follow_the_declared_columns() -> None:
    batch = {"label": torch.zeros(2), "a": torch.ones(2), "b": torch.full((2,), 2.0)}
    assert [t[0].item() for t in model_inputs(batch, ("b", "a"))] == [2.0, 1.0]


def test_loop_spec_round_trips_through_its_dict() -> None:
    spec = LoopSpec(
        model_name="cnn",
        model={"num_blocks": 1},
        train={"lr": 0.1},
        num_classes=3,
        train_rows=100,
        metadata={"label_names": ["a", "b", "c"]},
    )
    assert LoopSpec(**spec.to_dict()) == spec
