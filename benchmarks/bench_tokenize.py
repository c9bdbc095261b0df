"""Tokenisation throughput of real sentences: a Spark pandas UDF vs Ray Data ``map_batches`` vs in-process.

What is measured
    The sentence-polarity sentences (``--data``, 10,568 labelled rows of
    ``movieReviewSnippets_GroundTruth.txt``) replicated to ``--rows`` rows, turned into token ids by the
    model's fast tokenizer (``--model-dir``) through :func:`hybrid.text.tokenize` with
    ``max_length=--max-length`` (truncated, unpadded), three ways:

    - ``in_process``: ``tokenize`` called in this (driver) process on ``--batch-size`` slices of a Python
      list, while Ray and Spark are up but idle. No Arrow, no serialisation, no scheduling: the ceiling
      the other two are compared with.
    - ``spark_udf``: a ``pandas_udf`` returning ``array<int>`` over a cached Spark DataFrame of the
      rows (Spark on Ray through RayDP, started by :func:`hybrid.runtime.running`), forced by
      ``agg(sum(size(input_ids)))``. Timed: the Spark job (scan of the cache, Arrow to the Python
      worker and back, the aggregate).
    - ``ray_map_batches``: the same DataFrame handed to Ray Data through RayDP (``from_spark_recoverable``,
      the path :func:`hybrid.ingest.to_ray` uses) and materialised, untimed; then timed:
      ``ds.map_batches(fn, batch_format="pyarrow", batch_size=--batch-size).materialize()`` with a
      ``list<int32>`` column out.

    Spark's Arrow batches are set to ``--batch-size`` rows (``spark.sql.execution.arrow.maxRecordsPerBatch``),
    so all three paths tokenise slices of the same size. The total number of tokens is counted on every
    path and must agree (exit status 1 otherwise): each path did the whole job.

    Before the timed runs every path runs once on a small frame (not reported), so that one-off costs
    (the tokenizer's load in each Python worker, Ray worker start, class loading) do not land on
    whichever path goes first.

How to read the numbers
    ``best s`` is the fastest of ``--repeats`` runs; rows/s, tokens/s and the ratios use the best.
    ``x in-process`` is the path's rows/s over the in-process ceiling (1.00: no overhead), ``x spark``
    over the Spark UDF's. CPU slots: the Spark executor (a Ray actor) holds ``spark_executor_cores`` of
    Ray's CPUs and runs that many tasks at a time; Ray Data gets the CPUs left (one each on 2 cores).
    The fast tokenizer could use more threads than its slot (its Rust thread pool), but on these batch
    calls it kept about one core busy (CPU time ~ wall time, checked in the driver and in a Ray worker),
    so each path is one core's worth, and ``ray_map_batches`` can match the "ceiling" within noise (same
    work, another process). On a shared 2-core machine read ratios, not seconds; spreads of ~10% are noise.

Example::

    python benchmarks/bench_tokenize.py --rows 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from _table import Timed, progress, render_table

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data
    from pyspark.sql import DataFrame, SparkSession

WARMUP_ROWS = 2_000
DEFAULT_MODEL_DIR = "data/models/all-MiniLM-L6-v2"
DEFAULT_DATA = "data/sentence_polarity/movieReviewSnippets_GroundTruth.txt"


@dataclass
class Measurement(Timed):
    """One path at one size."""

    tokens: int
    """Token ids produced in the last run (all rows, with [CLS]/[SEP])."""


log = progress("bench_tokenize")


def load_sentences(path: str | Path, rows: int) -> list[str]:
    """The labelled sentences of the polarity file, repeated in order until there are ``rows`` of them."""
    from hybrid.sources.polarity import read_sentence_polarity

    polarity = read_sentence_polarity(path)
    labelled = polarity.table.filter(polarity.table.column("label").is_valid())
    texts = labelled.column("text").to_pylist()
    return [texts[i % len(texts)] for i in range(rows)]


def list_array(sequences: list) -> pa.Array:
    """``list<int32>`` Arrow array of int32 numpy sequences, built from one concatenation (no per-row objects)."""
    import numpy as np
    import pyarrow as pa

    offsets = np.zeros(len(sequences) + 1, dtype=np.int32)
    np.cumsum([len(s) for s in sequences], out=offsets[1:])
    values = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=pa.int32()))


def run_in_process(texts: list[str], *, model_dir: str, max_length: int, batch_size: int) -> int:
    """Tokenise ``texts`` in this process, ``batch_size`` at a time; returns the number of tokens."""
    from hybrid.text import load_tokenizer, tokenize

    tokenizer = load_tokenizer(model_dir)
    tokens = 0
    for start in range(0, len(texts), batch_size):
        tokens += sum(len(ids) for ids in tokenize(tokenizer, texts[start : start + batch_size], max_length=max_length))
    return tokens


def make_udf(model_dir: str, max_length: int) -> Callable:
    """A pandas UDF ``text -> array<int>`` that loads the tokenizer once per Python worker."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<int>")
    def token_ids(texts):  # pandas Series of str -> Series of int32 arrays
        import pandas as pd

        from hybrid.text import load_tokenizer, tokenize

        tokenizer = load_tokenizer(model_dir)  # cached per worker process
        return pd.Series(tokenize(tokenizer, texts.tolist(), max_length=max_length), index=texts.index)

    return token_ids


def run_spark(df: DataFrame, udf: Callable) -> int:
    """Tokenise every row of ``df`` with ``udf``; the aggregate forces the UDF on every row."""
    from pyspark.sql import functions as F

    row = df.select(udf("text").alias("input_ids")).agg(F.sum(F.size("input_ids")).alias("tokens")).collect()[0]
    return int(row["tokens"])


def make_batch_fn(model_dir: str, max_length: int) -> Callable[[pa.Table], pa.Table]:
    """The ``map_batches`` function: an Arrow batch with ``text`` -> one with ``input_ids: list<int32>``."""

    def token_ids(batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        from hybrid.text import load_tokenizer, tokenize

        tokenizer = load_tokenizer(model_dir)  # cached per worker process
        ids = tokenize(tokenizer, batch.column("text").to_pylist(), max_length=max_length)
        return pa.table({"input_ids": list_array(ids)})

    return token_ids


def run_ray(ds: ray.data.Dataset, fn: Callable, *, batch_size: int) -> ray.data.Dataset:
    """Tokenise ``ds`` with ``map_batches``; materialising runs every batch."""
    return ds.map_batches(fn, batch_format="pyarrow", batch_size=batch_size).materialize()


def count_tokens(ds: ray.data.Dataset) -> int:
    """Token ids in a materialised ``input_ids`` dataset (read from the object store, untimed)."""
    import pyarrow.compute as pc

    return sum(
        int(pc.sum(pc.list_value_length(batch.column("input_ids"))).as_py() or 0)
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None)
    )


def spark_frame(spark: SparkSession, texts: list[str], *, partitions: int) -> DataFrame:
    """A cached, counted frame ``(id: bigint, text: string)`` of ``texts`` in ``partitions`` partitions."""
    import pandas as pd

    df = spark.createDataFrame(pd.DataFrame({"id": range(len(texts)), "text": texts}))
    df = df.repartition(partitions).cache()
    df.count()  # builds the cache: the timed jobs read it
    return df


def to_ray(df: DataFrame) -> ray.data.Dataset:
    """``df`` as a materialised Ray dataset, one block per partition (the conversion hybrid's ingest uses)."""
    from raydp.spark.dataset import from_spark_recoverable, release_spark_recoverable

    ds = from_spark_recoverable(df).materialize()
    release_spark_recoverable(df)
    return ds


def timed(path: str, rows: int, repeats: int, run: Callable[[], int]) -> Measurement:
    """``repeats`` runs of ``run`` (which returns a token count), timed with a wall clock."""
    times: list[float] = []
    tokens = -1
    for attempt in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        tokens = run()
        times.append(time.perf_counter() - t0)
        log(f"  {path}: run {attempt + 1}/{repeats} {times[-1]:.2f} s")
    return Measurement(path=path, rows=rows, seconds=times, tokens=tokens)


def format_table(results: list[Measurement]) -> str:
    """The results as a fixed-width table; ratios compare rows/s with the in-process and Spark paths."""
    header = ("path", "rows", "best s", "median s", "rows/s", "tokens/s", "x in-process", "x spark", "tokens")
    best = {m.path: max(m.best_s, 1e-9) for m in results}
    lines = [header]
    for m in results:
        b = best[m.path]
        vs = {p: (best[p] / b if p in best else float("nan")) for p in ("in_process", "spark_udf")}
        lines.append(
            (
                m.path,
                f"{m.rows:,}",
                f"{m.best_s:.2f}",
                f"{m.median_s:.2f}",
                f"{m.rows / b:,.0f}",
                f"{m.tokens / b:,.0f}",
                f"{vs['in_process']:.2f}",
                f"{vs['spark_udf']:.2f}",
                f"{m.tokens:,}",
            )
        )
    return render_table(lines, left=(0,))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows to tokenise (the sentences repeated)")
    parser.add_argument("--model-dir", default=DEFAULT_MODEL_DIR, help="local model directory with the tokenizer")
    parser.add_argument("--data", default=DEFAULT_DATA, help="the sentence-polarity ground-truth file")
    parser.add_argument("--max-length", type=int, default=128, help="truncate to this many tokens")
    parser.add_argument("--batch-size", type=int, default=10_000,
                        help="rows per tokenizer call on every path (Spark Arrow batch, Ray batch, in-process slice)")
    parser.add_argument("--partitions", type=int, default=4, help="Spark partitions (= Ray Data blocks)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; rates use the best")
    args = parser.parse_args(argv)
    for name in ("rows", "max_length", "batch_size", "partitions", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, but got {getattr(args, name)}")
    for name, hint in (("model_dir", "tokenizer.json"), ("data", None)):
        path = Path(getattr(args, name))
        if not (path / hint if hint else path).exists():
            parser.error(f"--{name.replace('_', '-')}: {str(path)!r} is missing; run scripts/setup.sh to install it")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the three paths and print the table; exit status 1 if their token counts differ."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="DataFrame.sql_ctx is an internal property")
    import tokenizers
    import transformers

    from bench_ingest import machine_info
    from hybrid.config import RuntimeConfig
    from hybrid.runtime import running

    model_dir = str(Path(args.model_dir).resolve())  # workers may run in another directory
    texts = load_sentences(args.data, args.rows)
    warm_texts = texts[:WARMUP_ROWS]
    kw = {"model_dir": model_dir, "max_length": args.max_length, "batch_size": args.batch_size}
    results: list[Measurement] = []
    t_start = time.perf_counter()

    log("starting Ray and Spark on Ray (RayDP)...")
    with running(RuntimeConfig()) as runtime:
        spark = runtime.spark
        if spark is None:
            raise RuntimeError("hybrid.runtime.running() returned no Spark session")
        log(f"runtime up after {time.perf_counter() - t_start:.1f} s")
        info = machine_info(spark)
        info.append(f"tokenizer: {model_dir} (transformers {transformers.__version__}, "
                    f"tokenizers {tokenizers.__version__}), "
                    f"max_length {args.max_length}, batch {args.batch_size:,} rows")
        for line in info:
            log(line)
        # Measured with Ray and Spark up (idle), so that the ceiling sees the same background load.
        log(f"in_process: warm-up, then {args.repeats} run(s) on {args.rows:,} rows")
        run_in_process(warm_texts, **kw)
        results.append(timed("in_process", args.rows, args.repeats, lambda: run_in_process(texts, **kw)))

        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(args.batch_size))
        udf = make_udf(model_dir, args.max_length)
        batch_fn = make_batch_fn(model_dir, args.max_length)

        log(f"warm-up: Spark UDF and Ray map_batches on {len(warm_texts):,} rows (not reported)")
        warm_df = spark_frame(spark, warm_texts, partitions=args.partitions)
        warm_ds = to_ray(warm_df)
        run_spark(warm_df, udf)
        count_tokens(run_ray(warm_ds, batch_fn, batch_size=args.batch_size))
        warm_df.unpersist()
        del warm_ds

        t0 = time.perf_counter()
        df = spark_frame(spark, texts, partitions=args.partitions)
        log(f"{args.rows:,} rows cached in Spark in {args.partitions} partitions in {time.perf_counter() - t0:.1f} s "
            "(not counted)")
        results.append(timed("spark_udf", args.rows, args.repeats, lambda: run_spark(df, udf)))

        t0 = time.perf_counter()
        ds = to_ray(df)
        log(f"converted to Ray Data ({ds.num_blocks()} blocks) in {time.perf_counter() - t0:.1f} s (not counted)")
        outputs: list[ray.data.Dataset] = []

        def ray_once() -> int:
            outputs[:] = [run_ray(ds, batch_fn, batch_size=args.batch_size)]
            return -1  # counted below, outside the timed region

        m = timed("ray_map_batches", args.rows, args.repeats, ray_once)
        m.tokens = count_tokens(outputs[0])
        results.append(m)
        outputs.clear()
        del ds
        df.unpersist()

    print()
    print(f"Tokenisation of {args.rows:,} sentence-polarity rows ({len(set(texts)):,} distinct), "
          f"{args.repeats} run(s) per path")
    for line in info:
        print(line)
    print()
    print(format_table(results))
    print("\nx in-process = rows/s relative to a plain tokenizer call in this process (the ceiling); "
          "x spark = relative to the Spark pandas UDF (> 1: faster).")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    counts = {m.path: m.tokens for m in results}
    if len(set(counts.values())) != 1:
        print(f"ERROR: token counts differ between paths: {counts}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
