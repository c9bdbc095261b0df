"""Users' own tables (Parquet or CSV) as Spark DataFrames, and ingest's Parquet copies of local sources.

One reader for every modality, so images, text and question answering read a user's table alike: a
missing path is one line naming the config key, and CSV is parsed the same way everywhere.
"""

from __future__ import annotations

from pathlib import Path
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


def write_parquet(table: pa.Table, path: str | Path, *, row_group_rows: int | None = None) -> Path:
    """Write ``table`` to the Parquet file ``path`` atomically (it appears whole or not at all).

    Returns:
        The path written.
    """
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows)
    return write_bytes(path, sink.getvalue().to_pybytes())
