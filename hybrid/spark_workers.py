"""Can Spark's Python workers run hybrid's code? A one-task probe before the real job, one line if not.

A plain Spark cluster runs each executor's Python workers with ``python3`` from that node's PATH
unless ``PYSPARK_PYTHON`` names another interpreter (``spark-submit`` and the ``pyspark`` shell also
read ``spark.pyspark.python``, and set ``PYSPARK_PYTHON`` from it; a ``SparkSession`` built inside an
already running Python ignores that setting and reads the environment variable only: the driver's
``SparkContext.pythonExec`` is fixed when the context starts). When that interpreter lacks a package
the scoring UDF imports, the real job fails in its first task with ``ModuleNotFoundError`` somewhere
inside a Java stack trace, after the model was shipped and the input read.

:func:`check_spark_workers` runs one tiny RDD task first (an RDD task needs nothing but the
interpreter and the ``pyspark.zip`` Spark puts on the workers' path: no pandas, no Arrow, no hybrid,
so it reports what is missing instead of dying of it), imports the modules the job needs there and
reports the worker's ``sys.executable``. A worker that cannot start at all (a wrong path, another
Python version) fails the Spark job: the Python traceback or the Java cause is read out of the Py4J
error. Either way the caller gets one line naming the module and the worker's interpreter. The
answer is kept per Spark application and interpreter, so a session pays for it once.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from hybrid.errors import WorkerEnvironmentError

FIX = (
    "set spark.pyspark.python or PYSPARK_PYTHON to an interpreter with hybrid installed "
    '(see README "On a cluster")'
)
SCORING_MODULES = ("numpy", "pandas", "pyarrow", "torch", "safetensors", "hybrid.score")
"""What a worker imports to run the scoring UDF on any model (see :mod:`hybrid.score`)."""


@dataclass(frozen=True)
class WorkerEnvironment:
    """What the probe found on one of Spark's Python workers."""

    python: str
    """The worker's ``sys.executable``."""
    version: str
    """Its Python version, e.g. ``3.11.9``."""
    modules: tuple[str, ...]
    """The modules it imported."""


_CHECKED: dict[tuple[str, str, tuple[str, ...]], WorkerEnvironment] = {}
_CHECKED_LOCK = threading.Lock()


def _probe(modules: tuple[str, ...]) -> Callable[[Iterable[Any]], Iterator[tuple[str, str, list[tuple[str, str, str]]]]]:
    """The task body. Nested, so that cloudpickle ships it by value: the worker needs no hybrid to run it."""

    def probe(_: Iterable[Any]) -> Iterator[tuple[str, str, list[tuple[str, str, str]]]]:
        import importlib
        import platform
        import sys

        failed = []
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as err:  # a present package can fail otherwise, e.g. OSError for a missing .so
                missing = err.name if isinstance(err, ModuleNotFoundError) and err.name else ""
                failed.append((name, missing, f"{type(err).__name__}: {err}"))
        yield sys.executable, platform.python_version(), failed

    return probe


def check_spark_workers(
    spark: SparkSession, *, modules: Iterable[str] = SCORING_MODULES, purpose: str = "score"
) -> WorkerEnvironment:
    """Run one task on the executors that imports ``modules``; raise one line if any import fails.

    Args:
        spark: The session whose executors will run the job (plain Spark or Spark on Ray).
        modules: Modules the job's Python code imports on the workers.
        purpose: Prefix of the error message, the job it protects (``score``).

    Returns:
        The worker's interpreter and Python version.

    Raises:
        WorkerEnvironmentError: If a module cannot be imported (naming every missing module and the
            worker's ``sys.executable``), or the workers cannot start (naming the interpreter Spark
            was told to run and the worker's own error).
    """
    modules = tuple(modules)
    sc = spark.sparkContext
    key = (sc.applicationId, sc.pythonExec, modules)
    with _CHECKED_LOCK:
        if key in _CHECKED:
            return _CHECKED[key]
    from py4j.protocol import Py4JJavaError

    try:
        python, version, failed = sc.parallelize([0], 1).mapPartitions(_probe(modules)).collect()[0]
    except Py4JJavaError as err:
        detail = worker_error(str(err))
        raise WorkerEnvironmentError(
            f"{purpose}: Spark's Python workers failed to start (worker python: {sc.pythonExec}): {detail}; "
            f"{FIX}{_conf_hint(spark)}"
        ) from None
    if failed:
        raise WorkerEnvironmentError(
            f"{purpose}: Spark's Python workers cannot import {_describe(failed)} (worker python: {python}); "
            f"{FIX}{_conf_hint(spark)}"
        )
    found = WorkerEnvironment(python=python, version=version, modules=modules)
    with _CHECKED_LOCK:
        _CHECKED[key] = found
    return found


def _describe(failed: list[tuple[str, str, str]]) -> str:
    """``'pandas', 'torch'`` for missing modules; a failure of another kind keeps its own message."""
    parts: list[str] = []
    for name, missing, message in failed:
        if missing:
            part = f"'{missing}'"  # the module that is absent (for hybrid.score without numpy: numpy)
        else:
            part = f"'{name}' ({' '.join(message.split())[:200]})"
        if part not in parts:
            parts.append(part)
    return ", ".join(parts)


def _conf_hint(spark: SparkSession) -> str:
    """Why ``spark.pyspark.python`` did not take effect, when it is set to another interpreter than the one used."""
    sc = spark.sparkContext
    wanted = sc.getConf().get("spark.pyspark.python")
    if wanted and wanted != sc.pythonExec:
        return (
            f" (spark.pyspark.python={wanted} is read by spark-submit only; a session started inside Python "
            f"runs {sc.pythonExec}: export PYSPARK_PYTHON before creating it)"
        )
    return ""


_PY_ERROR = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit)\b|pyspark\.errors\.\w+)[^\n]*$")


def worker_error(text: str) -> str:
    """The worker's own error out of a Py4J/Spark failure: the last line of the Python traceback in it,
    else the first ``Cannot run program`` / ``Caused by`` line of the Java trace, else its first line.

    Args:
        text: ``str()`` of a ``Py4JJavaError`` (or of any exception wrapping a failed Spark job).
    """
    for block in text.split("Traceback (most recent call last):")[1:]:
        lines = [ln.strip() for ln in block.splitlines()]
        # The Python traceback ends where the Java frames (`at org.apache...`) resume.
        end = next((i for i, ln in enumerate(lines) if ln.startswith("at ")), len(lines))
        errors = [ln for ln in lines[:end] if _PY_ERROR.match(ln)]
        if errors:
            return _short(errors[-1])
    for pattern in (r"Cannot run program[^\n]*", r"Caused by: ([^\n]*)"):
        match = re.search(pattern, text)
        if match:
            return _short(match.group(match.lastindex or 0))
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no message")
    return _short(first)


def _short(line: str, limit: int = 300) -> str:
    line = " ".join(line.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
