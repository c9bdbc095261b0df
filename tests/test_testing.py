"""Unit tests of hybrid.testing: the synthetic data other tests rely on must be what it claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hybrid.models import CNN
from hybrid.sources.idx import parse_idx
from hybrid.testing import idx_bytes, tiny_cnn_config, toy_batches, toy_images


def test_toy_images_shapes_dtypes_and_balance() -> None:
    images, labels = toy_images(31, image_size=6, num_classes=4, channels=2)
    assert images.shape == (31, 2 * 6 * 6) and images.dtype == np.float32
    assert labels.shape == (31,) and labels.dtype == np.int64
    assert sorted(np.bincount(labels, minlength=4).tolist()) == [7, 8, 8, 8]


def test_toy_images_are_deterministic_per_seed() -> None:
    a, la = toy_images(20, seed=3)
    b, lb = toy_images(20, seed=3)
    c, _ = toy_images(20, seed=4)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_class_patterns_are_shared_across_seeds() -> None:
    # A nearest-class-mean classifier fitted on one seed must score well on another:
    # the classes are learnable and a validation set drawn with another seed is the same task.
    train, train_labels = toy_images(300, num_classes=3, seed=0)
    test, test_labels = toy_images(90, num_classes=3, seed=1)
    means = np.stack([train[train_labels == c].mean(axis=0) for c in range(3)])
    predicted = np.argmin(((test[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    assert np.mean(predicted == test_labels) > 0.9


def test_noise_zero_gives_the_bare_patterns() -> None:
    images, labels = toy_images(6, noise=0.0)
    for c in range(3):
        rows = images[labels == c]
        assert np.all(rows == rows[0])


@pytest.mark.parametrize(
    "kwargs", [{"n": -1}, {"n": 4, "num_classes": 1}, {"n": 4, "image_size": 0}, {"n": 4, "noise": -1.0}]
)
def test_toy_images_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match="but got"):
        toy_images(int(n), **kwargs)  # type: ignore[arg-type]


def test_toy_batches_are_shaped_like_ray_torch_batches() -> None:
    batches = toy_batches(50, batch_size=16)
    assert [len(b["label"]) for b in batches] == [16, 16, 16, 2]
    assert set(batches[0]) == {"pixels", "label"}
    assert batches[0]["pixels"].dtype == torch.float32 and batches[0]["pixels"].shape == (16, 64)
    assert batches[0]["label"].dtype == torch.int64
    images, labels = toy_images(50)
    assert np.array_equal(torch.cat([b["pixels"] for b in batches]).numpy(), images)
    assert np.array_equal(torch.cat([b["label"] for b in batches]).numpy(), labels)
    assert [len(b["label"]) for b in toy_batches(50, batch_size=16, drop_last=True)] == [16, 16, 16]
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        toy_batches(4, batch_size=0)


def test_tiny_cnn_fits_the_toy_data() -> None:
    model = CNN(tiny_cnn_config(head_width=4))
    assert model.config.head_width == 4 and model.config.image_size == 8
    assert model(toy_batches(4)[0]["pixels"]).shape == (4, 3)


def test_idx_bytes_round_trips_and_rejects_other_dtypes() -> None:
    array = np.arange(12, dtype=np.int16).reshape(3, 4) - 6
    assert np.array_equal(parse_idx(idx_bytes(array)), array)
    with pytest.raises(ValueError, match="int64"):
        idx_bytes(np.zeros(3, dtype=np.int64))
