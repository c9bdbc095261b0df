"""Spark batch scoring: hybrid's Arrow pandas UDF against the other ways to run a model in Spark.

What is compared (same model, same rows, same plain local Spark, one run)
    A CNN for 28x28 images (``--channels`` in its first block, twice that in the second, a 64-wide
    head, random weights: speed does not depend on them) is saved as a model directory. The rows are
    ``--rows`` toy images as ``array<smallint>`` raw pixels (the layout of hybrid's Fashion-MNIST
    source) with one row in 100 too short (a bad row), cached in ``--partitions`` partitions and
    counted before anything is timed. Each Spark path scores every row and the result is written
    to Spark's ``noop`` sink (every column computed, nothing stored), so what differs is only how
    the rows reach the model:

    - ``pandas_udf``: :func:`hybrid.score.score`, an iterator pandas UDF on the pixels column only
      (bad rows sent as null), returning a struct of prediction, probabilities and error;
    - ``predict_batch_udf``: ``pyspark.ml.functions.predict_batch_udf`` with the same loader and the
      same batch size; it cannot take a null or short row, so bad rows are replaced by zeros and
      their results nulled afterwards;
    - ``mapInPandas``: Arrow ``mapInPandas``, which must carry every column (the pixels too)
      through Python and back;
    - ``row_udf``: a row-at-a-time ``F.udf`` (pickled rows, one forward pass per row), on
      ``--row-udf-rows`` rows only because it is slow;
    - ``validate_only``: the Spark validation expression and the noop sink without any model, the
      floor every Spark path pays;
    - ``in_process``: no Spark, ``hybrid.models.predict.predict_proba`` on the same rows in this process, with
      torch using as many threads as Spark has cores; ``in_process_1t`` the same on one thread (on a
      busy machine, torch's intra-op threads wait on each other and one thread can be faster; Spark
      runs one single-threaded task per core).

    Every path is run once on a small frame first (not reported): that starts Python workers, imports
    torch and loads the model in each, and checks that every path predicts what ``in_process`` does.

How to read the numbers
    ``best s`` is the fastest of ``--repeats`` runs; rows/s uses it. Runs go round robin (every path
    once per round), so that other load on the machine falls on all paths alike. ``x in_process`` is rows/s
    divided by in-process torch's: the share of the model's speed that survives Spark. The machine
    is small and shared, so compare ratios in one run, not seconds across runs.

Example::

    python benchmarks/bench_score.py --rows 20000
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from _table import Timed, progress, render_table

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from hybrid.score import ShippedModel

SPARK_PATHS = ("pandas_udf", "predict_batch_udf", "mapInPandas", "row_udf", "validate_only")
IN_PROCESS_THREADS = {"in_process": 0, "in_process_1t": 1}
"""In-process paths and their torch threads (0: one per core)."""
PATHS = (*SPARK_PATHS, *IN_PROCESS_THREADS)
WARMUP_ROWS = 1_000
BAD_EVERY = 100




log = progress("bench_score")


@dataclass
class Measurement(Timed):
    """One path."""

    @property
    def rows_per_s(self) -> float:
        """Rows per second of the fastest run."""
        return self.rows / max(self.best_s, 1e-9)


def start_spark(partitions: int) -> SparkSession:
    """A plain local Spark (no Ray) with one task slot per core, set up as the tests do."""
    from pyspark.sql import SparkSession

    from hybrid.runtime import JAVA_OPTIONS

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    spark = (
        SparkSession.builder.master(f"local[{os.cpu_count() or 2}]")
        .appName("bench-score")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.extraJavaOptions", JAVA_OPTIONS)
        .config("spark.driver.memory", "2g")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def make_model(directory: Path, channels: int) -> tuple[Path, Any]:
    """Save a 28x28, 10-class CNN (random weights) with a Fashion-MNIST-like normaliser."""
    import torch

    from hybrid.artifacts import save_model
    from hybrid.models import CNN, CNNConfig

    torch.manual_seed(0)
    config = CNNConfig(base_channels=channels, head_width=64, dropout=0.0)
    model = CNN(config).eval()
    save_model(directory, model, family="cnn", config=config, normalizer={"mean": 72.94, "std": 90.02},
               label_names=[f"class_{i}" for i in range(10)])
    return directory, model


def make_rows(rows: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(ids of good rows, pixel rows)``: int16 raw pixels, every ``BAD_EVERY``-th row one pixel short."""
    from hybrid.testing import toy_images

    images, _ = toy_images(rows, image_size=28, num_classes=10, seed=seed)
    pixels = np.clip(images * 255, 0, 255).astype(np.int16)
    out = [pixels[i] if i % BAD_EVERY else pixels[i, :-1] for i in range(rows)]
    return np.array([i for i in range(rows) if i % BAD_EVERY]), out


def make_frame(spark: SparkSession, rows: list[np.ndarray], *, partitions: int, work: Path) -> DataFrame:
    """The rows as a cached, counted ``(id, pixels array<smallint>)`` frame in ``partitions`` partitions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = work / f"rows-{len(rows)}.parquet"
    table = pa.table({"id": pa.array(np.arange(len(rows))), "pixels": pa.array(rows, type=pa.list_(pa.int16()))})
    pq.write_table(table, path)
    df = spark.read.parquet(str(path)).repartition(partitions).cache()
    df.count()
    return df


# ---------------------------------------------------------------------------------------------
# The paths. Each returns a DataFrame with id, prediction (null for a bad row) and the rest.


def via_pandas_udf(df: DataFrame, model_dir: Path, shipped: ShippedModel, batch_size: int) -> DataFrame:
    """hybrid.score.score: the chosen path."""
    from hybrid.score import score

    return score(df, model_dir, batch_size=batch_size)


def via_predict_batch_udf(df: DataFrame, model_dir: Path, shipped: ShippedModel, batch_size: int) -> DataFrame:
    """pyspark.ml.functions.predict_batch_udf with hybrid's loader; bad rows zero-filled, then nulled."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from hybrid.score import pixel_reject_reason

    ref = shipped.ref

    def make_predict_fn() -> Callable[[np.ndarray], dict[str, np.ndarray]]:
        from hybrid.score import worker_model

        loaded = worker_model(ref)

        def predict(x: np.ndarray) -> dict[str, np.ndarray]:
            out = loaded.predict({"pixels": x}, batch_size)
            return {"prediction": out["prediction"], "probability": np.stack(out["probability"])}

        return predict

    udf = predict_batch_udf(
        make_predict_fn,
        return_type=T.StructType([T.StructField("prediction", T.IntegerType()),
                                  T.StructField("probability", T.ArrayType(T.FloatType()))]),
        batch_size=batch_size,
        input_tensor_shapes=[[shipped.predictor.inputs[0].length]],
    )
    error = pixel_reject_reason(F.col("pixels"), num_pixels=shipped.predictor.inputs[0].length)
    zeros = F.array_repeat(F.lit(0).cast("smallint"), shipped.predictor.inputs[0].length)
    out = df.withColumn("error", error).withColumn(
        "_r", udf(F.when(F.col("error").isNull(), F.col("pixels")).otherwise(zeros))
    )
    ok = F.col("error").isNull()
    return out.select(
        "*",
        F.when(ok, F.col("_r.prediction")).alias("prediction"),
        F.when(ok, F.col("_r.probability")).alias("probability"),
    ).drop("_r")


def via_map_in_pandas(df: DataFrame, model_dir: Path, shipped: ShippedModel, batch_size: int) -> DataFrame:
    """Arrow mapInPandas: every column goes through Python and back."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from hybrid.score import pixel_reject_reason

    ref = shipped.ref
    with_error = df.withColumn("error", pixel_reject_reason(F.col("pixels"), num_pixels=shipped.predictor.inputs[0].length))
    schema = T.StructType([*with_error.schema.fields, T.StructField("prediction", T.IntegerType()),
                           T.StructField("probability", T.ArrayType(T.FloatType()))])

    def run(frames):  # Iterator[pd.DataFrame] -> Iterator[pd.DataFrame]
        import pandas as pd

        from hybrid.score import worker_model

        loaded = worker_model(ref)
        for pdf in frames:
            ok = pdf["error"].isna().to_numpy()
            rows = np.flatnonzero(ok)
            prediction = np.zeros(len(pdf), np.int32)
            probability = [None] * len(pdf)
            if len(rows):
                out = loaded.predict({"pixels": pdf["pixels"].to_numpy()[rows]}, batch_size)
                pred, proba = out["prediction"], out["probability"]
                prediction[rows] = pred
                for i, p in zip(rows, proba):
                    probability[i] = p
            yield pdf.assign(prediction=pd.arrays.IntegerArray(prediction, ~ok),
                             probability=pd.Series(probability, dtype=object, index=pdf.index))

    return with_error.mapInPandas(run, schema)


def via_row_udf(df: DataFrame, model_dir: Path, shipped: ShippedModel, batch_size: int) -> DataFrame:
    """A row-at-a-time Python UDF (pickled rows), one forward pass per row."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from hybrid.score import pixel_reject_reason

    ref = shipped.ref
    result = T.StructType([T.StructField("prediction", T.IntegerType()),
                           T.StructField("probability", T.ArrayType(T.FloatType()))])

    def one(pixels, error):
        if error is not None:
            return None
        from hybrid.score import worker_model

        loaded = worker_model(ref)
        out = loaded.predict({"pixels": np.asarray(pixels)[None, :]}, 1)
        return int(out["prediction"][0]), np.asarray(out["probability"][0]).tolist()

    udf = F.udf(one, result, useArrow=False)
    error = pixel_reject_reason(F.col("pixels"), num_pixels=shipped.predictor.inputs[0].length)
    out = df.withColumn("error", error).withColumn("_r", udf("pixels", "error"))
    return out.select("*", F.col("_r.prediction").alias("prediction"),
                      F.col("_r.probability").alias("probability")).drop("_r")


def via_validate_only(df: DataFrame, model_dir: Path, shipped: ShippedModel, batch_size: int) -> DataFrame:
    """The validation expression alone, no model: the floor of every Spark path."""
    from pyspark.sql import functions as F

    from hybrid.score import pixel_reject_reason

    error = pixel_reject_reason(F.col("pixels"), num_pixels=shipped.predictor.inputs[0].length)
    return df.withColumn("error", error).withColumn("prediction", F.lit(None).cast("int"))


SCORERS: dict[str, Callable[[Any, Path, Any, int], Any]] = {
    "pandas_udf": via_pandas_udf,
    "predict_batch_udf": via_predict_batch_udf,
    "mapInPandas": via_map_in_pandas,
    "row_udf": via_row_udf,
    "validate_only": via_validate_only,
}


def in_process(model: Any, rows: list[np.ndarray], good: np.ndarray, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds for hybrid.models.predict.predict_proba on the good rows in this process, and its predictions."""
    from hybrid.models.predict import predict_proba

    x = np.stack([rows[i] for i in good])  # stacking is data preparation, not timed
    t0 = time.perf_counter()
    pred, _ = predict_proba(model, x, mean=72.94, std=90.02, batch_size=batch_size)
    return time.perf_counter() - t0, pred


def check_agreement(spark_preds: dict[str, dict[int, int | None]], want: dict[int, int], rows: int) -> list[str]:
    """Problems found when comparing each Spark path's predictions with in-process ones."""
    problems = []
    for path, got in spark_preds.items():
        if path == "validate_only":
            continue
        expected = {i: want.get(i) for i in range(rows)}
        if got != expected:
            wrong = sum(1 for i in expected if got.get(i) != expected[i])
            problems.append(f"{path}: {wrong} of {rows} predictions differ from in-process torch")
    return problems


def format_table(results: list[Measurement]) -> str:
    """The results as a fixed-width table."""
    base = next((m.rows_per_s for m in results if m.path == "in_process"), float("nan"))
    header = ("path", "rows", "best s", "median s", "rows/s", "x in_process")
    lines = [header]
    for m in results:
        lines.append((m.path, f"{m.rows:,}", f"{m.best_s:.2f}", f"{m.median_s:.2f}",
                      f"{m.rows_per_s:,.0f}", f"{m.rows_per_s / base:.2f}"))
    return render_table(lines, left=(0,))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows to score")
    parser.add_argument("--row-udf-rows", type=int, default=5_000, help="rows for the slow row-at-a-time UDF")
    parser.add_argument("--channels", type=int, default=16, help="channels of the CNN's first block")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per forward pass")
    parser.add_argument("--partitions", type=int, default=4, help="Spark partitions of the frame")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path; rates use the best")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths to run")
    args = parser.parse_args(argv)
    for name in ("rows", "row_udf_rows", "channels", "batch_size", "partitions", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, but got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every path and print the table; exit status 1 if a path disagrees with in-process torch."""
    args = parse_args(argv)
    import torch

    from hybrid.score import ship_model

    t_start = time.perf_counter()
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory(prefix="bench-score-") as tmp:
        work = Path(tmp)
        model_dir, model = make_model(work / "model", args.channels)
        spark = start_spark(args.partitions)
        try:
            shipped = ship_model(spark, model_dir, batch_size=args.batch_size)
            spark_paths = [p for p in args.paths if p in SCORERS]

            log(f"warm-up and agreement check on {WARMUP_ROWS:,} rows (not reported)")
            good, rows = make_rows(WARMUP_ROWS, seed=1)
            torch.set_num_threads(1)
            _, want = in_process(model, rows, good, args.batch_size)
            df = make_frame(spark, rows, partitions=args.partitions, work=work)
            preds = {}
            for path in spark_paths:
                out = SCORERS[path](df, model_dir, shipped, args.batch_size)
                preds[path] = {r["id"]: r["prediction"] for r in out.select("id", "prediction").collect()}
            df.unpersist()
            problems = check_agreement(preds, dict(zip(good.tolist(), want.tolist())), WARMUP_ROWS)
            for p in problems:
                log(f"DISAGREEMENT {p}")

            good, rows = make_rows(args.rows, seed=2)
            log(f"caching {args.rows:,} rows in {args.partitions} partitions")
            frames = {args.rows: make_frame(spark, rows, partitions=args.partitions, work=work)}
            row_udf_rows = min(args.rows, args.row_udf_rows)
            sizes = {path: row_udf_rows if path == "row_udf" else args.rows for path in args.paths}
            for n in set(sizes.values()) - set(frames):
                frames[n] = make_frame(spark, rows[:n], partitions=args.partitions, work=work)
            # Round robin (every path once per round) so that load from other jobs on the machine
            # drifts over all paths alike instead of landing on whichever ran during it.
            seconds: dict[str, list[float]] = {path: [] for path in args.paths}
            for round_ in range(args.repeats):
                for path in args.paths:
                    if path == "row_udf" and round_ > 0:
                        continue  # slow; one run says enough
                    if path in IN_PROCESS_THREADS:
                        torch.set_num_threads(IN_PROCESS_THREADS[path] or cores)
                        s, _ = in_process(model, rows, good, args.batch_size)
                        torch.set_num_threads(1)
                    else:
                        t0 = time.perf_counter()
                        out = SCORERS[path](frames[sizes[path]], model_dir, shipped, args.batch_size)
                        out.write.format("noop").mode("overwrite").save()
                        s = time.perf_counter() - t0
                    seconds[path].append(s)
                    log(f"round {round_ + 1}/{args.repeats} {path}: {sizes[path]:,} rows in {s:.2f} s")
            # in-process scores only the good rows; it is rated per input row like the others
            results = [Measurement(path, sizes[path], seconds[path]) for path in args.paths]
        finally:
            spark.stop()

    import pandas
    import pyarrow
    import pyspark

    print()
    print(f"Scoring {args.rows:,} rows of 28x28 int16 pixels (1 in {BAD_EVERY} bad), CNN {args.channels}/"
          f"{2 * args.channels} channels + 64 head, batch {args.batch_size}, {args.partitions} partitions, "
          f"local[{cores}], best of {args.repeats} (row_udf: 1 run)")
    print(f"machine: {platform.machine()} {platform.system()}, {cores} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; torch {torch.__version__}, pyspark "
          f"{pyspark.__version__}, pandas {pandas.__version__}, pyarrow {pyarrow.__version__}")
    print()
    print(format_table(results))
    print(f"\nx in_process = rows/s relative to in-process torch ({cores} threads) on the same rows.")
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")
    if problems:
        print("ERROR: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
