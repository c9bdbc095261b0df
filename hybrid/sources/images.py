"""Image tables as Spark DataFrames: Fashion-MNIST from its IDX files, or a user's Parquet or CSV table (the pixels
in any layout of :mod:`hybrid.features`; ingest turns them into one array column)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from hybrid.config import DataConfig
from hybrid.sources.idx import FASHION_MNIST_LABELS, read_fashion_mnist
from hybrid.sources.tables import read_image_csv, read_user_table, write_parquet

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class ImageTables:
    """Raw (unvalidated) tables of one data set."""

    train: DataFrame
    """Training table; validation is split from it."""
    test: DataFrame | None
    """Held-out test table, never used for training or model selection; ``None`` when the source has none
    (ingest then holds out ``data.test_fraction`` of each class of ``train``)."""
    label_names: tuple[str, ...]
    """Class names by label."""


def images_to_parquet(images: np.ndarray, labels: np.ndarray, path: str | Path, *, row_group_rows: int = 8192) -> Path:
    """Write ``(n, h, w)`` uint8 images and ``(n,)`` labels as a Parquet table of ``(id, pixels, label)``.

    ``pixels`` is a list of ``h * w`` int16 values (Parquet has no unsigned byte Spark reads back as such).
    """
    n = len(images)
    flat = np.ascontiguousarray(images.reshape(n, -1), dtype=np.int16)
    width = flat.shape[1]
    pixels = pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)), pa.array(flat.ravel()))
    table = pa.table({"id": pa.array(np.arange(n, dtype=np.int64)), "pixels": pixels, "label": pa.array(labels.astype(np.int32))})
    return write_parquet(table, path, row_group_rows=row_group_rows)


def read_image_tables(spark: SparkSession, config: DataConfig, *, work_dir: str | Path) -> ImageTables:
    """Read the training and test tables that ``config`` names, as raw Spark DataFrames (every column kept).

    A ``parquet`` or ``csv`` source without ``data.test_path`` has no test table (``test`` is None).

    Args:
        spark: Session to read with.
        config: The ``data`` section.
        work_dir: Where the IDX source writes its Parquet copy (a path every executor can read).

    Raises:
        DataError: If the files are missing or malformed.
    """
    if config.source == "fashion_mnist":
        paths = {}
        for split in ("train", "test"):
            images, labels = read_fashion_mnist(config.path, split)
            limit = config.max_train_rows if split == "train" else config.max_test_rows
            images, labels = images[:limit], labels[:limit]
            paths[split] = images_to_parquet(images, labels, Path(work_dir) / f"fashion_mnist_{split}.parquet")
        train, test = (spark.read.parquet(str(Path(p).resolve())) for p in (paths["train"], paths["test"]))
        names = config.label_names or FASHION_MNIST_LABELS
    else:
        test = None
        if config.source == "csv":
            def read(path: str, key: str) -> DataFrame:
                return read_image_csv(spark, path, feature_columns=config.feature_columns,
                                      pixel_prefix=config.pixel_prefix, key=key)
        else:
            def read(path: str, key: str) -> DataFrame:
                return read_user_table(spark, path, source="parquet", key=key)
        train = read(config.path, "data.path")
        if config.test_path is not None:
            test = read(config.test_path, "data.test_path")
        names = config.label_names or tuple(str(i) for i in range(config.num_classes))
        if config.max_train_rows is not None:
            train = train.limit(config.max_train_rows)
        if test is not None and config.max_test_rows is not None:
            test = test.limit(config.max_test_rows)
    return ImageTables(train=train, test=test, label_names=tuple(names))
