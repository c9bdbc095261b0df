"""Spark -> Ray hand-off: four paths, wall time and the driver's memory, at 100k to 5M rows.

What is compared
    A Spark DataFrame generated inside Spark (``spark.range`` plus columns; nothing is built on the driver) is
    persisted to the executors' disk and counted first, so Spark's own compute is not timed. Then each path
    turns it into a Ray dataset materialised in Ray's object store:

    - ``raydp``: what hybrid did until now (``to_ray`` before :mod:`hybrid.handoff`):
      ``df.repartition(4)`` (``data.blocks_per_split``), then
      ``raydp.spark.from_spark_recoverable(...).materialize()``;
    - ``raydp_tuned``: the same, with partitions sized from the executor memory: at most
      ``min(128 MiB, heap / 64)`` of payload each (RayDP builds a whole partition as one Arrow buffer in the
      executor's heap, beside Spark's cached copy);
    - ``parquet``: :func:`hybrid.handoff.spark_to_ray`, hybrid's hand-off now: the executors write Parquet
      (row groups of ``min(128 MiB, heap / 8)``) to a temporary directory under ``--storage-dir``, which is
      renamed into place, then 0-CPU Ray tasks read the files in parallel (``hybrid.handoff.read_table``);
    - ``arrow_collect``: ``df._collect_as_arrow()`` (Arrow batches streamed to the driver), then
      ``ray.data.from_arrow``.

Shapes (``--shapes``)
    ``floats64``: ``id: bigint`` and 64 ``float`` columns ``f0..f63``. ``images784``: ``id: bigint`` and
    ``pixels: array<float>`` of 784 values: the type hybrid's image ingest hands to Ray (``normalize`` casts
    pixels to float32 in an array column). The payload used for MB/s is ``rows * (8 + 4 * values)`` bytes.

Memory
    A thread samples every 20 ms the resident set size (RSS) of this driver process and of the Spark driver's
    JVM (this process's child), and of the Spark executors' JVMs (Ray actors, found with
    ``ray.util.state.list_actors``). ``driver MB`` is the peak RSS of this Python process during the
    conversion minus its RSS just before; ``drvJVM MB`` the same for the Spark driver JVM; ``exec MB`` the
    executors' peak RSS (absolute: heap plus off-heap; the heap is capped by ``--executor-memory``). RSS
    counts shared pages this process touched, so object-store pages the driver writes (``from_arrow``) count.

Isolation
    Every path first runs once, untimed, on a 1,000-row frame. Every (shape, rows) runs in a child process with its own Ray and Spark on Ray (hybrid's
    :func:`hybrid.runtime.running`, so the JVM flags are right), paths in the order of ``--paths``; a child that
    runs past ``--timeout-s`` is stopped and its missing paths are reported as such. Sizes that would not fit
    this machine are skipped and said so (e.g. 5M images: 15.7 GB as float32).

Example::

    python benchmarks/bench_ingest.py --rows 100000,1000000,5000000 --shapes floats64,images784
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _table import progress, render_table

if TYPE_CHECKING:
    import ray.data
    from pyspark.sql import DataFrame, SparkSession

PATHS = ("parquet", "arrow_collect", "raydp_tuned", "raydp")
SHAPES = {"floats64": 64, "images784": 784}
TODAY_PARTITIONS = 4  # DataConfig.blocks_per_split's default: what to_ray repartitioned to
RESULT = "RESULT "
WARMUP_ROWS = 1_000
log = progress("bench_ingest")


def payload_bytes(shape: str, rows: int) -> int:
    """Bytes of ``id`` plus the float32 values of ``rows`` rows."""
    return rows * (8 + 4 * SHAPES[shape])


# ---------------------------------------------------------------------------------------------- memory


class PeakRSS:
    """Samples RSS of this process, its Spark driver JVM and the executors every ``interval_s`` in a thread."""

    def __init__(self, executor_pids: list[int], interval_s: float = 0.02) -> None:
        import psutil

        self._psutil = psutil
        self.me = psutil.Process()
        self.jvms = [c for c in self.me.children(recursive=True) if "java" in c.name()]
        self.executors = [psutil.Process(p) for p in executor_pids]
        self.interval_s = interval_s
        self.base = self._sample()
        self.peak = dict(self.base)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self, procs: list[Any]) -> int:
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except self._psutil.Error:  # an executor may die (and be replaced) mid-run
                pass
        return total

    def _sample(self) -> dict[str, int]:
        return {"driver": self._rss([self.me]), "driver_jvm": self._rss(self.jvms), "executors": self._rss(self.executors)}

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for key, value in self._sample().items():
                self.peak[key] = max(self.peak[key], value)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in self._sample().items():
            self.peak[key] = max(self.peak[key], value)


# ---------------------------------------------------------------------------------------------- paths


def make_frame(spark: SparkSession, *, shape: str, rows: int) -> DataFrame:
    """``rows`` rows of ``shape``, generated and persisted on the executors' disk, counted."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    parts = max(4, math.ceil(payload_bytes(shape, rows) / 2**27))  # about 128 MiB per partition at most
    base = spark.range(0, rows, numPartitions=parts)
    if shape == "floats64":
        df = base.select("id", *(F.rand(seed=i).cast("float").alias(f"f{i}") for i in range(64)))
    else:
        # One expression per row (784 separate rand() columns would defeat Spark's code generation).
        px = F.transform(F.sequence(F.lit(0), F.lit(783)),
                         lambda i: (F.pmod(F.xxhash64(F.col("id"), i), F.lit(256)) / 255.0).cast("float"))
        df = base.select("id", px.alias("pixels"))
    df = df.persist(StorageLevel.DISK_ONLY)  # keeps the executor heap for the conversion itself
    df.count()
    return df


def tuned_partitions(payload: int, executor_memory: int) -> int:
    """RayDP partitions so that each holds at most ``min(128 MiB, heap / 64)`` of payload (and at least 4)."""
    from hybrid.handoff import TARGET_BLOCK_BYTES

    return max(TODAY_PARTITIONS, math.ceil(payload / min(TARGET_BLOCK_BYTES, executor_memory // 64)))


def via_raydp(df: DataFrame, partitions: int) -> ray.data.Dataset:
    """hybrid's former ``to_ray``: repartition, ``from_spark_recoverable``, materialise, release Spark's copy."""
    from raydp.spark.dataset import from_spark_recoverable, release_spark_recoverable

    parts = df.repartition(partitions)
    ds = from_spark_recoverable(parts).materialize()
    release_spark_recoverable(parts)
    return ds


def via_arrow(df: DataFrame, blocks: int) -> ray.data.Dataset:
    """Arrow record batches collected to the driver, then ``from_arrow`` in about ``blocks`` tables."""
    import pyarrow as pa
    import ray.data

    batches = df._collect_as_arrow()
    step = max(1, -(-len(batches) // blocks))
    tables = [pa.Table.from_batches(batches[i: i + step]) for i in range(0, len(batches), step)]
    del batches
    return ray.data.from_arrow(tables).materialize()


def run_path(path: str, df: DataFrame, *, shape: str, rows: int, executor_memory: int,
             storage: Path) -> ray.data.Dataset:
    """One conversion of ``df`` through ``path``."""
    from hybrid.handoff import TARGET_BLOCK_BYTES, spark_to_ray

    payload = payload_bytes(shape, rows)
    if path == "raydp":
        return via_raydp(df, TODAY_PARTITIONS)
    if path == "raydp_tuned":
        return via_raydp(df, tuned_partitions(payload, executor_memory))
    if path == "parquet":
        return spark_to_ray(df, storage / "handoff" / "bench", rows=rows, min_blocks=TODAY_PARTITIONS)[0].materialize()
    if path == "arrow_collect":
        return via_arrow(df, max(TODAY_PARTITIONS, math.ceil(payload / TARGET_BLOCK_BYTES)))
    raise ValueError(f"unknown path {path!r}; choose from {PATHS}")


def collect_skip(shape: str, rows: int) -> str | None:
    """Why ``arrow_collect`` is skipped at this size, or None: it needs about 3x the payload in the driver."""
    import psutil

    need = 3 * payload_bytes(shape, rows) + 4 * 2**30
    free = psutil.virtual_memory().available
    if need > free:
        return f"driver would need ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
    return None


def child(args: argparse.Namespace) -> int:
    """Run every path at one (shape, rows) in this process; one ``RESULT {json}`` line per path."""
    warnings.filterwarnings("ignore", message="DataFrame.sql_ctx is an internal property")
    from hybrid.config import RuntimeConfig
    from raydp.utils import parse_memory_size

    from hybrid.runtime import running

    shape, rows = args.child_shape, args.child_rows
    heap = parse_memory_size(args.executor_memory)
    storage = Path(args.storage_dir)
    config = RuntimeConfig(spark_executor_memory=args.executor_memory, spark_driver_memory=args.driver_memory)
    with running(config) as runtime:
        spark = runtime.spark
        if spark is None:
            raise RuntimeError("hybrid.runtime.running() returned no Spark session")
        # Untimed warm-up: every path once on a tiny frame, so one-off costs (JVM class loading, Ray Data's
        # workers, Arrow/JNI set-up) do not land on whichever path runs first.
        warm = make_frame(spark, shape=shape, rows=WARMUP_ROWS)
        for path in args.paths:
            run_path(path, warm, shape=shape, rows=WARMUP_ROWS, executor_memory=heap, storage=storage)
            shutil.rmtree(storage / "handoff", ignore_errors=True)
        warm.unpersist()
        t0 = time.perf_counter()
        df = make_frame(spark, shape=shape, rows=rows)
        log(f"{shape} x {rows:,}: generated and persisted in {time.perf_counter() - t0:.1f} s (not counted)")
        for path in args.paths:
            skip = collect_skip(shape, rows) if path == "arrow_collect" else None
            if skip:
                print(RESULT + json.dumps({"path": path, "skipped": skip}), flush=True)
                continue
            import gc

            gc.collect()
            try:
                with PeakRSS(runtime.spark_executor_pids()) as mem:
                    t1 = time.perf_counter()
                    ds = run_path(path, df, shape=shape, rows=rows, executor_memory=heap, storage=storage)
                    seconds = time.perf_counter() - t1
            except Exception as err:  # a path that fails at this size is a result (e.g. driver.maxResultSize)
                text = str(err)
                cause = next((ln for ln in text.splitlines() if "Caused by" in ln or "Exception:" in ln), text[:200])
                print(RESULT + json.dumps({"path": path, "failed": cause.strip()[:200]}), flush=True)
                continue
            rows_out = ds.count()
            id_sum = ds.sum("id")  # identity: ids 0..rows-1 once each (with the count)
            blocks = ds.num_blocks()
            del ds
            shutil.rmtree(storage / "handoff", ignore_errors=True)
            out = {
                "path": path, "seconds": seconds, "rows_out": rows_out, "ids_ok": id_sum == rows * (rows - 1) // 2,
                "blocks": blocks,
                "driver_mb": (mem.peak["driver"] - mem.base["driver"]) / 2**20,
                "driver_jvm_mb": (mem.peak["driver_jvm"] - mem.base["driver_jvm"]) / 2**20,
                "exec_mb": mem.peak["executors"] / 2**20,
            }
            print(RESULT + json.dumps(out), flush=True)
            log(f"  {path}: {seconds:.2f} s, {rows_out:,} rows, driver +{out['driver_mb']:.0f} MB")
        df.unpersist()
    return 0


# ---------------------------------------------------------------------------------------------- parent


def run_child(shape: str, rows: int, args: argparse.Namespace, storage: Path) -> list[dict[str, Any]]:
    """The results of one child; paths it never reported are marked with why."""
    cmd = [sys.executable, __file__, "--child-shape", shape, "--child-rows", str(rows), "--paths", *args.paths,
           "--executor-memory", args.executor_memory, "--driver-memory", args.driver_memory,
           "--storage-dir", str(storage)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    results: list[dict[str, Any]] = []
    tail: list[str] = []
    fired = threading.Event()

    def stop() -> None:
        fired.set()
        os.killpg(proc.pid, signal.SIGTERM)  # the child's running() unwinds; its reaper catches the rest

    timer = threading.Timer(args.timeout_s, stop)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(RESULT):
                results.append(json.loads(line[len(RESULT):]))
            else:
                sys.stdout.write(line)
                tail = (tail + [line.strip()])[-30:]
        proc.wait()
    finally:
        timer.cancel()
    done = {r["path"] for r in results}
    errors = [t for t in tail if "Error" in t or "Exception" in t]
    why = f"timed out after {args.timeout_s:.0f} s" if fired.is_set() else f"child exit {proc.returncode}: {errors[-1][:120] if errors else tail[-1:]}"
    for path in args.paths:
        if path not in done:
            results.append({"path": path, "failed": why})
    for r in results:
        r.update(shape=shape, rows=rows)
    return results


def format_table(results: list[dict[str, Any]]) -> str:
    """Rows x paths: seconds, MB/s, memory, ratio to ``raydp`` (rows/s over RayDP's at the same size)."""
    header = ("shape", "rows", "path", "s", "MB/s", "x raydp", "driver MB", "drvJVM MB", "exec MB", "blocks", "rows ok")
    lines = [header]
    base = {(r["shape"], r["rows"]): r["seconds"] for r in results if r["path"] == "raydp" and "seconds" in r}
    for r in results:
        key = (r["shape"], r["rows"])
        if "seconds" not in r:
            lines.append((r["shape"], f"{r['rows']:,}", r["path"], "-", "-", "-", "-", "-", "-", "-",
                          "skipped: " + r["skipped"] if "skipped" in r else "FAILED: " + r["failed"]))
            continue
        mb = payload_bytes(r["shape"], r["rows"]) / 1e6
        ratio = f"{base[key] / r['seconds']:.2f}" if key in base else "n/a"
        ok = r["rows_out"] == r["rows"] and r["ids_ok"]
        lines.append((r["shape"], f"{r['rows']:,}", r["path"], f"{r['seconds']:.2f}", f"{mb / r['seconds']:.0f}",
                      ratio, f"{r['driver_mb']:+.0f}", f"{r['driver_jvm_mb']:+.0f}", f"{r['exec_mb']:.0f}",
                      str(r["blocks"]), "yes" if ok else f"NO ({r['rows_out']:,})"))
    return render_table(lines, left=(0, 2, 10))


def machine_lines() -> list[str]:
    """The machine and versions."""
    import pyarrow
    import pyspark
    import ray
    import raydp

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return [f"machine: {platform.machine()}, {os.cpu_count()} cores, {mem:.1f} GiB; load {os.getloadavg()[0]:.1f}",
            f"versions: ray {ray.__version__}, raydp {raydp.__version__}, pyspark {pyspark.__version__}, "
            f"pyarrow {pyarrow.__version__}"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=ints, default=[100_000, 1_000_000, 5_000_000], help="comma-separated sizes")
    parser.add_argument("--shapes", type=lambda s: s.split(","), default=list(SHAPES), help="floats64,images784")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="paths, in run order")
    parser.add_argument("--max-image-rows", type=int, default=1_000_000,
                        help="images784 above this many rows are skipped (5M x 784 float32 is 15.7 GB)")
    parser.add_argument("--executor-memory", default="2g", help="Spark executor heap (RuntimeConfig's default)")
    parser.add_argument("--driver-memory", default="2g", help="Spark driver heap")
    parser.add_argument("--storage-dir", default=None, help="where the parquet path writes (default: a temp dir)")
    parser.add_argument("--timeout-s", type=float, default=900, help="limit per (shape, rows) child")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--child-shape", help=argparse.SUPPRESS)
    parser.add_argument("--child-rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if any(s not in SHAPES for s in args.shapes):
        parser.error(f"--shapes must be among {list(SHAPES)}, but got {args.shapes}")
    if not args.rows or min(args.rows) < 1:
        parser.error(f"--rows must all be >= 1, but got {args.rows}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every (shape, rows) in a child, print the table; status 1 if a row count or id set is off."""
    args = parse_args(argv)
    if args.child_shape:
        return child(args)
    t0 = time.perf_counter()
    own_storage = args.storage_dir is None
    storage = Path(args.storage_dir or tempfile.mkdtemp(prefix="bench_ingest_"))
    results: list[dict[str, Any]] = []
    try:
        for shape in args.shapes:
            for rows in args.rows:
                if shape == "images784" and rows > args.max_image_rows:
                    gb = payload_bytes(shape, rows) / 1e9
                    results += [{"shape": shape, "rows": rows, "path": p,
                                 "skipped": f"{gb:.1f} GB as float32 does not fit beside other jobs "
                                            f"(--max-image-rows {args.max_image_rows:,})"} for p in args.paths]
                    continue
                log(f"{shape} x {rows:,}: child with its own Ray + Spark on Ray")
                results += run_child(shape, rows, args, storage)
    finally:
        if own_storage:
            shutil.rmtree(storage, ignore_errors=True)
    print()
    print(f"Spark -> Ray hand-off, executor heap {args.executor_memory}, one run per path "
          f"(frames persisted DISK_ONLY first; the conversion timed up to a materialised dataset)")
    for line in machine_lines():
        print(line)
    print()
    print(format_table(results))
    print("\nMB/s on rows * (8 + 4 * values) bytes; x raydp = raydp's seconds / this path's (> 1: faster); driver MB "
          "and drvJVM MB = peak RSS growth of the Python driver and of the Spark driver JVM during the conversion; "
          "exec MB = peak RSS of the executor JVMs; rows ok = count and sum(id) match.")
    print(f"total wall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    bad = [r for r in results if "seconds" in r and not (r["rows_out"] == r["rows"] and r["ids_ok"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
