"""Contract tests of the CNN family: every architecture corner must forward, backward and save/load."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from hybrid._dataclass_io import to_dict
from hybrid.artifacts import load_model, save_model
from hybrid.errors import ConfigError
from hybrid.models import CNN, CNNConfig, create_model, get_family, list_models

FIELDS = (
    "num_blocks",
    "convs_per_block",
    "kernel_size",
    "batch_norm",
    "pooling",
    "global_pool",
    "head_width",
    "channel_growth",
    "image_size",
    "in_channels",
)
# A covering set of corners: every value of every field appears several times, in varied company
# (image_size 8 allows at most 3 blocks; 28 pools to 14, 7, 3, 1, exercising odd sizes).
CORNERS = [
    (1, 1, 3, True, "max", False, 0, 1.0, 8, 1),
    (1, 2, 5, False, "avg", True, 16, 2.0, 28, 3),
    (2, 1, 5, True, "avg", False, 16, 1.0, 28, 1),
    (2, 2, 3, False, "max", True, 0, 2.0, 8, 3),
    (3, 1, 3, False, "avg", True, 0, 1.0, 8, 3),
    (3, 2, 5, True, "max", False, 16, 2.0, 28, 1),
    (4, 1, 5, False, "max", False, 0, 2.0, 28, 3),
    (4, 2, 3, True, "avg", True, 16, 1.0, 28, 1),
    (4, 1, 3, True, "avg", False, 16, 2.0, 28, 3),
    (3, 2, 3, False, "max", False, 16, 1.0, 8, 1),
    (2, 1, 3, True, "max", True, 16, 2.0, 8, 1),
    (1, 2, 3, True, "avg", False, 0, 2.0, 28, 1),
    (2, 2, 5, True, "max", False, 0, 1.0, 28, 3),
    (1, 1, 5, False, "max", True, 16, 1.0, 8, 3),
    (3, 1, 5, True, "avg", True, 0, 2.0, 28, 3),
    (4, 2, 5, False, "avg", True, 16, 2.0, 28, 1),
]


def corner_kwargs(values: tuple[Any, ...]) -> dict[str, Any]:
    return {**dict(zip(FIELDS, values, strict=True)), "base_channels": 4, "num_classes": 5, "dropout": 0.2}


def corner_id(values: tuple[Any, ...]) -> str:
    kw = dict(zip(FIELDS, values, strict=True))
    return (
        f"b{kw['num_blocks']}c{kw['convs_per_block']}k{kw['kernel_size']}"
        f"-{'bn' if kw['batch_norm'] else 'nobn'}-{kw['pooling']}-{'gp' if kw['global_pool'] else 'flat'}"
        f"-h{kw['head_width']}-g{kw['channel_growth']}-s{kw['image_size']}-ch{kw['in_channels']}"
    )


def test_corners_cover_every_value() -> None:
    for i, name in enumerate(FIELDS):
        values = {row[i] for row in CORNERS}
        expected = {"num_blocks": 4, "pooling": 2}.get(name, 2)
        assert len(values) == expected, (name, values)


@pytest.fixture(params=CORNERS, ids=[corner_id(c) for c in CORNERS])
def corner(request: pytest.FixtureRequest) -> tuple[CNN, CNNConfig]:
    torch.manual_seed(0)
    kwargs = corner_kwargs(request.param)
    model = create_model("cnn", **kwargs)
    assert isinstance(model, CNN)
    assert model.config == CNNConfig(**kwargs)
    return model, model.config


def _images(config: CNNConfig, n: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, config.in_channels, config.image_size, config.image_size, generator=generator)


def test_forward_gives_logits_for_image_and_flat_batches(corner: tuple[CNN, CNNConfig]) -> None:
    model, config = corner
    model.eval()
    images = _images(config)
    logits = model(images)
    assert logits.shape == (4, config.num_classes)
    assert torch.isfinite(logits).all()
    flat = model(images.reshape(4, -1))  # rows straight from a table of pixels
    assert flat.shape == (4, config.num_classes)
    torch.testing.assert_close(flat, logits)


def test_backward_gives_finite_grads_for_every_parameter(corner: tuple[CNN, CNNConfig]) -> None:
    model, config = corner
    model.train()
    loss = F.cross_entropy(model(_images(config)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    params = dict(model.named_parameters())
    assert params
    for name, param in params.items():
        assert param.grad is not None, f"{name} got no gradient"
        assert param.grad.shape == param.shape
        assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
    classifier = model.head[-1]
    assert classifier.weight.grad.abs().sum() > 0


def test_save_load_gives_identical_outputs(corner: tuple[CNN, CNNConfig], tmp_path: Path) -> None:
    model, config = corner
    # One training-mode pass moves batch-norm running statistics away from their initial values,
    # so the round trip must carry buffers, not only parameters.
    model.train()
    model(_images(config, n=8))
    model.eval()
    images = _images(config)
    expected = model(images)
    save_model(tmp_path / "m", model, family="cnn", config=config)
    loaded, meta = load_model(tmp_path / "m")
    assert not loaded.training
    assert loaded.config == config
    assert meta["family"] == "cnn" and meta["config"] == to_dict(config)
    assert torch.equal(loaded(images), expected)


# ---------------------------------------------------------------- factory and config


def test_registry_lists_cnn_with_its_input_column() -> None:
    assert "cnn" in list_models()
    family = get_family("cnn")
    assert family.config_cls is CNNConfig and family.input_columns == ("pixels",)


def test_create_model_accepts_a_config_object() -> None:
    config = CNNConfig(image_size=8, num_blocks=1, base_channels=2, head_width=0)
    model = create_model("cnn", config=config)
    assert model.config is config


def test_unknown_family_suggests_the_close_name() -> None:
    with pytest.raises(ConfigError, match=r"model\.name must be one of \[.*'cnn'.*but got 'cnm'.*did you mean 'cnn'"):
        create_model("cnm")


def test_unknown_config_key_suggests_the_field() -> None:
    with pytest.raises(ConfigError, match=r"'model\.num_block'.*did you mean 'num_blocks'"):
        create_model("cnn", num_block=2)


@pytest.mark.parametrize(
    ("kwargs", "field", "shown"),
    [
        ({"kernel_size": 4}, "kernel_size", "4"),
        ({"kernel_size": 0}, "kernel_size", "0"),
        ({"num_blocks": 0}, "num_blocks", "0"),
        ({"num_blocks": 6}, "num_blocks", "6"),
        ({"image_size": 4, "num_blocks": 3}, "image_size", "4"),
        ({"image_size": 28, "num_blocks": 5}, "image_size", "28"),
        ({"dropout": 1.0}, "dropout", "1.0"),
        ({"dropout": -0.1}, "dropout", "-0.1"),
        ({"channel_growth": 0.5}, "channel_growth", "0.5"),
        ({"convs_per_block": 0}, "convs_per_block", "0"),
        ({"head_width": -1}, "head_width", "-1"),
        ({"in_channels": 0}, "in_channels", "0"),
        ({"num_classes": 1}, "num_classes", "1"),
        ({"base_channels": 0}, "base_channels", "0"),
        ({"pooling": "mean"}, "pooling", "'mean'"),
    ],
)
def test_invalid_config_names_field_and_value(kwargs: dict[str, Any], field: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_model("cnn", **kwargs)
    message = str(info.value)
    assert message.startswith(f"model.{field}"), message
    assert f"but got {shown}" in message


def test_image_size_rule_states_the_bound() -> None:
    with pytest.raises(ConfigError, match=r"^image_size must be >= 2\*\*num_blocks = 8, but got 4$"):
        CNNConfig(image_size=4, num_blocks=3)


def test_block_channels_grow_geometrically() -> None:
    assert CNNConfig(base_channels=32, channel_growth=2.0, num_blocks=3).block_channels() == [32, 64, 128]
    assert CNNConfig(base_channels=8, channel_growth=1.0, num_blocks=3).block_channels() == [8, 8, 8]
    assert CNNConfig(base_channels=4, channel_growth=1.5, num_blocks=3).block_channels() == [4, 6, 9]


def test_architecture_follows_the_config() -> None:
    config = CNNConfig(
        num_blocks=2, convs_per_block=2, base_channels=4, batch_norm=True, pooling="avg", head_width=0, image_size=8
    )
    model = CNN(config)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8]
    assert all(c.bias is None for c in convs)  # batch norm makes conv biases redundant
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.features) == 4
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in model.features) == 2
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(8 * 2 * 2, 10)]
    with_head = CNN(dataclasses.replace(config, head_width=16, global_pool=True))
    linears = [m for m in with_head.head if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(8, 16), (16, 10)]


def test_flat_rows_of_the_wrong_width_raise() -> None:
    model = CNN(CNNConfig(image_size=8, num_blocks=1, base_channels=2, in_channels=1, head_width=0)).eval()
    with pytest.raises(RuntimeError):
        model(torch.zeros(4, 3 * 8 * 8))  # must not silently become a batch of 12 images


def test_dropout_is_off_in_eval_mode() -> None:
    torch.manual_seed(0)
    model = CNN(CNNConfig(image_size=8, num_blocks=1, base_channels=4, dropout=0.5)).eval()
    images = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(images), model(images))
