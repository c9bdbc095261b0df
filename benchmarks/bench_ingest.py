"""Spark -> Ray hand-off: RayDP against two driver-side paths, measured in the same run.

What is compared
    A synthetic Spark DataFrame (``spark.range`` plus ``--features`` random float32 values per row) is
    cached and counted first, so Spark's own compute is not timed. Then each path turns it into a
    Ray dataset held in Ray's object store (``materialize()`` is inside the timing for all of them):

    - ``raydp``: ``raydp.spark.spark_dataframe_to_ray_dataset(df).materialize()``, the path
      :func:`hybrid.ingest.to_ray` uses (executors write Arrow bytes, Ray tasks fetch them);
    - ``to_pandas``: ``df.toPandas()`` (Arrow-enabled) then ``ray.data.from_pandas``;
    - ``arrow_collect``: ``df._collect_as_arrow()`` (Arrow record batches streamed to the driver)
      then ``ray.data.from_arrow``, in ``--partitions`` tables so the block count matches RayDP's.

    Before the timed runs every path is run once on a 1,000-row frame (not reported), so that
    one-off costs (class loading, Arrow/JNI set-up, Ray worker start) do not land on whichever
    path happens to go first.

Data layout (``--layout``)
    ``array`` (default): columns ``id: bigint`` and ``features: array<float>``, the shape of
    hybrid's ``pixels`` column. ``columns``: ``id`` plus ``--features`` scalar float columns
    ``f0..fN``. The payload used for MB/s is the same for both: ``rows * (8 + 4 * features)``
    bytes. ``store MB`` is Ray's ``size_bytes()`` of the result: Arrow blocks for ``raydp`` and
    ``arrow_collect``; pandas blocks for ``to_pandas``, whose figure is Ray's estimate (about
    twice the payload for an array column) rather than a measured footprint.

How to read the numbers
    ``best s`` is the fastest of ``--repeats`` runs (``median s`` shows the spread); rows/s, MB/s
    and ``x raydp`` use the best. ``x raydp`` is that path's rows/s divided by RayDP's at the same
    size: above 1 means faster than RayDP. RayDP pays a fixed cost per conversion (a Spark job
    that caches Arrow bytes, then one Ray task per partition calling the executor's JVM actor),
    so small frames exaggerate its disadvantage; compare the largest size. The machine is shared and small,
    so read ratios, not absolute seconds; all paths here are far below memory bandwidth. The
    driver-side paths move every byte through the driver process, so they stop scaling with the
    cluster (and need driver memory for the whole frame), which RayDP does not.

    The defaults (100k and 1M rows x 64, three runs per path) take a few minutes on 2 cores, a
    good part of it Ray and RayDP start-up and the warm-up.

Example::

    python benchmarks/bench_ingest.py --rows 100000 1000000 --features 64
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import warnings
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from _table import Timed, progress, render_table

if TYPE_CHECKING:
    import ray.data
    from pyspark.sql import DataFrame, SparkSession

Layout = Literal["array", "columns"]
PATHS = ("raydp", "to_pandas", "arrow_collect")
WARMUP_ROWS = 1_000




@dataclass
class Measurement(Timed):
    """One path at one size."""

    rows_out: int
    store_bytes: int


log = progress("bench_ingest")


def make_frame(spark: SparkSession, *, rows: int, features: int, partitions: int, layout: Layout) -> DataFrame:
    """A cached, counted frame of ``rows`` x (``id`` + ``features`` float32), in ``partitions`` partitions."""
    from pyspark.sql import functions as F

    values = [F.rand(seed=i).cast("float") for i in range(features)]
    base = spark.range(0, rows, numPartitions=partitions)
    if layout == "array":
        df = base.select("id", F.array(*values).alias("features"))
    else:
        df = base.select("id", *(v.alias(f"f{i}") for i, v in enumerate(values)))
    df = df.cache()
    df.count()  # builds the cache: the conversions below read it, Spark's compute stays untimed
    return df


def via_raydp(df: DataFrame, partitions: int) -> ray.data.Dataset:
    """RayDP's recoverable conversion (the one :func:`hybrid.ingest.to_ray` uses)."""
    import raydp.spark
    from raydp.spark.dataset import release_spark_recoverable

    ds = raydp.spark.spark_dataframe_to_ray_dataset(df).materialize()
    # The blocks are in Ray now; drop Spark's pinned Arrow copy so repeats do not pile up.
    release_spark_recoverable(df)
    return ds


def via_pandas(df: DataFrame, partitions: int) -> ray.data.Dataset:
    """Collect to the driver as pandas (Arrow-enabled ``toPandas``), then ``from_pandas``."""
    import ray.data

    return ray.data.from_pandas(df.toPandas()).materialize()


def via_arrow(df: DataFrame, partitions: int) -> ray.data.Dataset:
    """Collect Arrow record batches to the driver, then ``from_arrow`` in ``partitions`` tables."""
    import pyarrow as pa
    import ray.data

    batches = df._collect_as_arrow()
    if not batches:
        raise RuntimeError("_collect_as_arrow returned no record batches")
    step = max(1, -(-len(batches) // partitions))  # ceil: at most `partitions` tables
    tables = [pa.Table.from_batches(batches[i : i + step]) for i in range(0, len(batches), step)]
    return ray.data.from_arrow(tables).materialize()


CONVERTERS: dict[str, Callable[[DataFrame, int], ray.data.Dataset]] = {
    "raydp": via_raydp,
    "to_pandas": via_pandas,
    "arrow_collect": via_arrow,
}


def measure(path: str, df: DataFrame, *, rows: int, partitions: int, repeats: int) -> Measurement:
    """``repeats`` conversions of ``df`` through ``path``; the dataset is dropped after each."""
    times: list[float] = []
    rows_out, store_bytes = -1, 0
    for attempt in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        ds = CONVERTERS[path](df, partitions)
        seconds = time.perf_counter() - t0
        rows_out = ds.count()  # metadata of a materialised dataset: no data is read
        store_bytes = ds.size_bytes()
        del ds
        times.append(seconds)
        if repeats > 1:
            log(f"  {path}: run {attempt + 1}/{repeats} {seconds:.2f} s")
    return Measurement(path=path, rows=rows, seconds=times, rows_out=rows_out, store_bytes=store_bytes)


def machine_info(spark: SparkSession) -> list[str]:
    """Lines describing the machine and the versions that matter."""
    import pyarrow
    import pyspark
    import ray
    import raydp

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = float("nan")
    java = spark.sparkContext._jvm.System.getProperty("java.version")
    resources = ray.cluster_resources()
    return [
        f"machine: {platform.machine()} {platform.system()} {platform.release()}, "
        f"cores: {os.cpu_count()} (usable: {affinity}), memory: {mem_gib:.1f} GiB",
        f"ray cluster: CPU={resources.get('CPU', 0):g}, "
        f"object store={resources.get('object_store_memory', 0) / 2**30:.1f} GiB",
        f"versions: python {platform.python_version()}, ray {ray.__version__}, raydp {raydp.__version__}, "
        f"pyspark {pyspark.__version__}, pyarrow {pyarrow.__version__}, java {java}",
    ]


def format_table(results: list[Measurement], *, features: int) -> str:
    """The results as a fixed-width table; ``x raydp`` compares rows/s at the same size."""
    header = ("path", "rows", "best s", "median s", "rows/s", "MB/s", "store MB", "x raydp", "rows ok")
    lines = [header]
    raydp_s = {m.rows: m.best_s for m in results if m.path == "raydp"}
    for m in results:
        payload_mb = m.rows * (8 + 4 * features) / 1e6
        best = max(m.best_s, 1e-9)
        ratio = raydp_s[m.rows] / best if m.rows in raydp_s else float("nan")
        lines.append(
            (
                m.path,
                f"{m.rows:,}",
                f"{m.best_s:.2f}",
                f"{m.median_s:.2f}",
                f"{m.rows / best:,.0f}",
                f"{payload_mb / best:.1f}",
                f"{m.store_bytes / 1e6:.1f}",
                f"{ratio:.2f}",
                "yes" if m.rows_out == m.rows else f"NO ({m.rows_out:,})",
            )
        )
    return render_table(lines, left=(0,))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000], help="frame sizes (rows)")
    parser.add_argument("--features", type=int, default=64, help="float32 values per row")
    parser.add_argument("--layout", choices=("array", "columns"), default="array",
                        help="one array<float> column (default) or one float column per feature")
    parser.add_argument("--partitions", type=int, default=4,
                        help="Spark partitions of the frame (= RayDP's Ray blocks)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per path and size; rates use the best")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths to run")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help=f"skip the untimed {WARMUP_ROWS:,}-row run of every path")
    args = parser.parse_args(argv)
    for name in ("features", "partitions", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, but got {getattr(args, name)}")
    if min(args.rows) < 1:
        parser.error(f"--rows must all be >= 1, but got {args.rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every path at every size and print the table; exit status 1 if a row count is off."""
    args = parse_args(argv)
    # RayDP reads DataFrame.sql_ctx on every conversion; pyspark warns each time. Not ours to fix.
    warnings.filterwarnings("ignore", message="DataFrame.sql_ctx is an internal property")
    from hybrid.config import RuntimeConfig
    from hybrid.runtime import running

    results: list[Measurement] = []
    t_start = time.perf_counter()
    log("starting Ray and Spark on Ray (RayDP)...")
    with running(RuntimeConfig()) as runtime:
        spark = runtime.spark
        if spark is None:
            raise RuntimeError("hybrid.runtime.running() returned no Spark session")
        log(f"runtime up after {time.perf_counter() - t_start:.1f} s")
        info = machine_info(spark)
        for line in info:
            log(line)
        if args.warmup:
            log(f"warm-up: every path once on {WARMUP_ROWS:,} rows (not reported)")
            df = make_frame(spark, rows=WARMUP_ROWS, features=args.features, partitions=args.partitions,
                            layout=args.layout)
            for path in args.paths:
                measure(path, df, rows=WARMUP_ROWS, partitions=args.partitions, repeats=1)
            df.unpersist()
        for rows in args.rows:
            t0 = time.perf_counter()
            log(f"building and caching {rows:,} x {args.features} ({args.layout}) in {args.partitions} partitions")
            df = make_frame(spark, rows=rows, features=args.features, partitions=args.partitions, layout=args.layout)
            log(f"  cached in {time.perf_counter() - t0:.1f} s (not counted)")
            for path in args.paths:
                log(f"  {path}: converting {rows:,} rows...")
                m = measure(path, df, rows=rows, partitions=args.partitions, repeats=args.repeats)
                log(f"  {path}: best {m.best_s:.2f} s, {m.rows_out:,} rows in Ray")
                results.append(m)
            df.unpersist()
    print()
    print(f"Spark -> Ray, {args.features} float32 features per row ({args.layout} layout), "
          f"{args.partitions} partitions, {args.repeats} run(s) per path")
    for line in info:
        print(line)
    print()
    print(format_table(results, features=args.features))
    print(f"\nMB/s on the payload rows * (8 + 4 * {args.features}) bytes; "
          "x raydp = rows/s relative to RayDP at the same size (> 1: faster).")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    bad = [m for m in results if m.rows_out != m.rows]
    if bad:
        print(f"ERROR: row counts differ for {[(m.path, m.rows, m.rows_out) for m in bad]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
