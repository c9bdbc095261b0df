"""Spark -> Ray hand-off: the executors write Parquet under the run directory, Ray tasks read it in parallel.

Why not RayDP's conversion (``from_spark_recoverable``)? Measured in ``benchmarks/bench_ingest.py``: it
serialises each whole partition to one Arrow buffer in the executor's Java heap (a 250k-row partition of 64
floats ran a 2 GiB heap out of memory), then fetches every partition through a JVM actor call; the Parquet
path streams rows through bounded row groups and never moves data through the driver, so the driver's memory
stays flat however many rows there are, and Spark's own task retry covers a lost executor.

Files are written to a temporary sibling directory and renamed into place only once Spark has committed the
job, so a killed run leaves either the previous complete table or none, never half-written Parquet. The files
stay after the hand-off: Ray re-reads a file if it has to rebuild a lost block (its lineage), and the next
run replaces them. On a multi-node cluster the run directory must be storage every node sees (as Ray Train's
``storage_path`` must be already).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from hybrid import _atomic

if TYPE_CHECKING:
    import ray.data
    from pyspark.sql import DataFrame

HANDOFF_DIR = "handoff"
"""Under ``<run_dir>/data/``: one Parquet directory per split handed to Ray."""
TARGET_BLOCK_BYTES = 128 * 2**20
"""Ray Data's default target block size; a Parquet row group is never larger than this."""
HEAP_FRACTION = 8
"""A writing task buffers at most 1/HEAP_FRACTION of the executor heap in one row group."""
def row_group_bytes(executor_memory: int) -> int:
    """Bytes of one Parquet row group: what one writing task holds in the executor heap at a time.

    At most :data:`TARGET_BLOCK_BYTES`, at most ``1/HEAP_FRACTION`` of the heap (a 1 GiB executor buffers
    128 MiB, a 512 MiB one 64 MiB), at least 1 MiB.
    """
    return max(2**20, min(TARGET_BLOCK_BYTES, executor_memory // HEAP_FRACTION))


def rows_per_file(rows: int, *, min_blocks: int) -> int:
    """Rows per Parquet file so that ``rows`` make at least ``min_blocks`` files."""
    return max(1, math.ceil(rows / max(1, min_blocks)))


def parquet_files(table_dir: Path) -> list[str]:
    """The data files Spark wrote, in Spark's order (partition, then file number within it)."""
    # Absolute: Ray's read tasks run on other nodes, in other working directories.
    return sorted(str(p) for p in table_dir.resolve().glob("part-*.parquet"))


def write_table(df: DataFrame, dest: Path, *, rows: int, min_blocks: int) -> list[str]:
    """Write ``df`` as Parquet to ``dest``, replacing what was there only once Spark has committed the job.

    Returns:
        The data files, in Spark's row order.
    """
    from raydp.utils import parse_memory_size  # RayDP reads spark.executor.memory with it too

    conf = df.sparkSession.sparkContext.getConf()
    heap = parse_memory_size(conf.get("spark.executor.memory", "1g"))
    _atomic.remove_debris(dest.parent)  # what a run killed mid-write left
    with _atomic.replace_dir(dest) as tmp:
        (
            # Uncompressed and without dictionaries: the files live on local or cluster storage for minutes, and
            # features (floats, pixels, token ids) rarely repeat; both cost CPU on write and read for nothing.
            df.write.mode("overwrite")  # into replace_dir's fresh, empty temporary directory
            .option("parquet.block.size", str(row_group_bytes(heap)))
            .option("compression", "none")
            .option("parquet.enable.dictionary", "false")
            .option("maxRecordsPerFile", str(rows_per_file(rows, min_blocks=min_blocks)))
            .parquet(str(tmp.resolve()))
        )
    return parquet_files(dest)


def read_table(files: list[str]) -> ray.data.Dataset:
    """``files`` read into Ray's object store, one block per file, blocks in file order.

    Each file is read by a Ray task that asks for no CPU, so the read neither waits behind Spark's executors
    (Ray actors that may hold every CPU of the cluster until Spark stops) nor, when a node dies with blocks
    on it, behind a training worker while Ray rebuilds the blocks from lineage: Ray re-runs the lost file's
    task, which needs nothing but the file. The task also computes the block's metadata, so making the
    dataset runs no other task.

    Why not ``ray.data.read_parquet``: on a 600-row slice beside one Spark executor its datasource-V2 plan
    (``ListFiles`` then ``ReadFiles``, each task asking for a CPU under Ray Data's resource budget) took 36 s
    for three splits; the V1 reader took 4.6 s but samples the files with CPU tasks when the dataset is made
    (hung beside executors holding every CPU) and its lineage re-read waited forever for a CPU a training
    worker held after a node was lost.
    """
    import ray
    from ray.data._internal.logical.interfaces import LogicalPlan
    from ray.data._internal.logical.operators.from_operators import FromArrow
    from ray.data._internal.stats import DatasetStats
    from ray.data.context import DataContext
    from ray.data.dataset import MaterializedDataset

    if not files:
        raise ValueError("bug: no Parquet files to hand to Ray")
    read = ray.remote(num_cpus=0, num_returns=2, max_retries=3, scheduling_strategy="DEFAULT")(_read_file)
    blocks, metadata = zip(*(read.remote(path) for path in files))
    metadata = ray.get(list(metadata))
    context = DataContext.get_current().copy()
    plan = LogicalPlan(FromArrow(list(blocks), metadata), context)
    return MaterializedDataset(plan, context, DatasetStats(metadata={"FromArrow": metadata}, parent=None))


def _read_file(path: str) -> tuple[object, object]:
    """One Parquet file as an Arrow table (one Ray Data block) and that block's metadata and schema."""
    import pyarrow.parquet as pq
    from ray.data._internal.util import get_table_block_metadata_schema

    table = pq.read_table(path, partitioning=None)
    return table, get_table_block_metadata_schema(table)


def parquet_rows(files: list[str]) -> int:
    """Rows in ``files``, from their footers (nothing else is read)."""
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def materialize(datasets: dict[str, ray.data.Dataset]) -> dict[str, ray.data.Dataset]:
    """Each dataset computed into Ray's object store (call it after Spark's executors are stopped: a lazy
    step on a split, such as tokenising, may need a CPU); a materialised one is passed through as it is."""
    from ray.data.dataset import MaterializedDataset

    return {name: ds if isinstance(ds, MaterializedDataset) else ds.materialize() for name, ds in datasets.items()}


def spark_to_ray(df: DataFrame, dest: Path, *, rows: int, min_blocks: int = 1) -> tuple[ray.data.Dataset, int]:
    """Hand ``df`` to Ray: Spark writes it as Parquet to ``dest``; returns the files read into a Ray dataset
    and the rows Spark wrote.

    Args:
        df: Any Spark DataFrame.
        dest: Directory for the table (replaced atomically); normally ``<run_dir>/data/handoff/<split>``.
        rows: Rows of ``df`` (counted beforehand): with ``min_blocks`` it sets the rows per file.
        min_blocks: At least this many files (one block per file).

    Returns:
        The dataset (read already, see :func:`read_table`: independent of Spark, which may be stopped at
        once) and the rows in its files.
    """
    files = write_table(df, dest, rows=rows, min_blocks=min_blocks)
    return read_table(files), parquet_rows(files)
