"""Users' own tables (Parquet or CSV) as Spark DataFrames, and ingest's Parquet copies of local sources.

One reader for every modality, so images, text and question answering read a user's table alike: a
missing path is one line naming the config key, and CSV is parsed the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from hybrid._atomic import write_bytes
from hybrid.errors import DataError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def read_user_table(
    spark: SparkSession, path: str, *, source: Literal["parquet", "csv"], key: str = "data.path"
) -> DataFrame:
    """The table at ``path`` with every column the user stored.

    CSV: a header row, every column read as a string (a label column with one stray word must not turn
    the whole column to strings or nulls behind the user's back; the rules decide row by row), quoted
    fields may span lines, and a quote inside a quoted field is doubled (``""``), as spreadsheets and
    Python's ``csv`` module write it (JSON text in a cell, for example).

    Args:
        spark: Session to read with.
        path: File or directory (any URI Spark reads).
        source: ``parquet`` or ``csv``.
        key: The config key that named ``path``, for the error message.

    Raises:
        DataError: If nothing exists at ``path``.
    """
    from pyspark.errors import AnalysisException

    try:
        if source == "csv":
            return spark.read.option("header", True).option("multiLine", True).option("escape", '"').csv(path)
        return spark.read.parquet(path)
    except AnalysisException as err:
        if "PATH_NOT_FOUND" in str(err) or "Path does not exist" in str(err):
            raise DataError(f"{key}: no {source} table at {path!r}") from None
        raise


def read_image_csv(
    spark: SparkSession, path: str, *, feature_columns: Sequence[str] = (), pixel_prefix: str | None = None,
    label: str | None = "label", key: str = "data.path", key_prefix: str = "data.",
) -> DataFrame:
    """An image table stored as CSV, one column per pixel (``label,pixel0,...,pixel783``), with numbers as numbers.

    The header is read first (one small Spark job), then the file with an explicit schema: the feature columns
    (:func:`hybrid.features.feature_names`) and ``label`` as ``double``, every other column as a string. Not
    ``inferSchema``: that reads the whole file once more, and one stray word would turn a pixel column into
    strings. A cell that is not a number reads as null (its row is quarantined under ``pixel_null`` or
    ``label_null``, the column named); ``NaN``, ``Inf`` and ``-Inf`` (Spark's spellings, Java's ``Infinity``
    too) read as non-finite values (``pixel_not_finite``). Unlike text CSV, a quoted field may not span lines:
    that keeps the file splittable, so a large table is read by many tasks.

    Args:
        spark: Session to read with.
        path: File or directory (any URI Spark reads).
        feature_columns: See :class:`hybrid.config.DataConfig`.
        pixel_prefix: See :class:`hybrid.config.DataConfig`.
        label: The label column, read as a number (None: a table to score, without labels).
        key: The config key that named ``path``, for the error message.
        key_prefix: Put before ``feature_columns`` / ``pixel_prefix`` in messages.

    Raises:
        DataError: If nothing exists at ``path``.
        ConfigError: If the feature columns cannot be found in the header (see :func:`hybrid.features.feature_names`).
    """
    from pyspark.sql import types as T

    from hybrid.features import feature_names

    header = read_user_table(spark, path, source="csv", key=key).columns
    numeric = {*feature_names(header, feature_columns=feature_columns, pixel_prefix=pixel_prefix,
                              key_prefix=key_prefix), label}
    schema = T.StructType([T.StructField(c, T.DoubleType() if c in numeric else T.StringType()) for c in header])
    return spark.read.schema(schema).option("header", True).option("mode", "PERMISSIVE").csv(path)


def write_parquet(table: pa.Table, path: str | Path, *, row_group_rows: int | None = None) -> Path:
    """Write ``table`` to the Parquet file ``path`` atomically (it appears whole or not at all).

    Returns:
        The path written.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows)
    return write_bytes(path, sink.getvalue().to_pybytes())
