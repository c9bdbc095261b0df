"""Scoring on a user's own plain Spark (no Ray): works with hybrid's interpreter, one line without it.

Each case runs ``tests/plain_spark_child.py`` in a process of its own (a fresh Spark application whose
Python workers run the interpreter the case chose), directly or through ``spark-submit``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyspark
import pyarrow.parquet as pq
import pytest
import torch

from hybrid.artifacts import save_model
from hybrid.ingest import Normalizer
from hybrid.models import CNN
from hybrid.score import normalize_pixels
from hybrid.spark_workers import worker_error
from hybrid.testing import tiny_cnn_config, toy_images

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "plain_spark_child.py"
SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
CONFIG = tiny_cnn_config()  # 8x8 images, 3 classes
LABEL_NAMES = ["circle", "square", "cross"]
EXIT_HYBRID_ERROR = 3
CHILD_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A tiny CNN trained on toy images, saved; and a table to score with its in-process predictions."""
    torch.manual_seed(0)
    images, labels = toy_images(300, image_size=CONFIG.image_size, num_classes=CONFIG.num_classes, seed=0)
    norm = Normalizer(mean=float(images.mean()), std=float(images.std()))
    x = torch.from_numpy(normalize_pixels(images, mean=norm.mean, std=norm.std))
    model = CNN(CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels)).backward()
        opt.step()
    model.eval()
    directory = save_model(tmp_path_factory.mktemp("model") / "tiny", model, family="cnn", config=CONFIG,
                           normalizer=norm.to_dict(), label_names=LABEL_NAMES)
    test_images, _ = toy_images(30, image_size=CONFIG.image_size, num_classes=CONFIG.num_classes, seed=1)
    with torch.no_grad():
        want = model(torch.from_numpy(normalize_pixels(test_images, mean=norm.mean, std=norm.std))).argmax(1)
    return directory, test_images, want.numpy()


@pytest.fixture(scope="module")
def table(trained: tuple[Path, np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy images as a Parquet table (ids 0..29) plus one row with too few pixels (id 99)."""
    _, images, _ = trained
    pixels = [[float(v) for v in row] for row in images] + [[0.5] * 3]
    path = tmp_path_factory.mktemp("table") / "images.parquet"
    pq.write_table(pa.table({"id": list(range(len(images))) + [99], "pixels": pixels}), path)
    return path


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An interpreter without hybrid's packages: a venv of this Python with nothing installed (offline)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return {**env, **extra}


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=ROOT)


def _spark_submit(model: Path, table: Path, out: Path, *, worker_python: str) -> subprocess.CompletedProcess[str]:
    """The documented way: spark-submit with spark.pyspark.python; the driver keeps hybrid's interpreter."""
    return _run(
        [str(SPARK_SUBMIT), "--master", "local[2]", "--conf", f"spark.pyspark.python={worker_python}",
         "--conf", f"spark.pyspark.driver.python={sys.executable}", str(CHILD), str(model), str(table), str(out)],
        # spark-submit finds Spark through SPARK_HOME, else by importing pyspark with `python3` from PATH
        _child_env(SPARK_HOME=str(Path(pyspark.__file__).parent)),
    )


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == EXIT_HYBRID_ERROR, (done.returncode, done.stderr[-3000:])
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # the error is one line
    return lines[0]


@pytest.mark.spark
@pytest.mark.slow
def test_spark_submit_with_hybrids_interpreter_scores_like_pytorch(trained, table, tmp_path):
    model, _, want = trained
    out = tmp_path / "scored.parquet"

    done = _spark_submit(model, table, out, worker_python=sys.executable)

    assert done.returncode == 0, done.stderr[-3000:]
    got = pq.read_table(out).to_pandas().set_index("id").sort_index()
    assert list(got.index) == list(range(len(want))) + [99]
    np.testing.assert_array_equal(got.loc[range(len(want)), "prediction"].to_numpy(), want)
    assert list(got.loc[range(len(want)), "prediction_label"]) == [LABEL_NAMES[p] for p in want]
    assert got.loc[99, "error"] == "pixel_count" and pd.isna(got.loc[99, "prediction"])
    assert len(set(want)) > 1  # a constant predictor would hide a scoring bug


@pytest.mark.spark
@pytest.mark.slow
def test_spark_submit_with_a_bare_interpreter_fails_in_one_line(trained, table, bare_python, tmp_path):
    model, _, _ = trained
    out = tmp_path / "scored.parquet"

    line = _one_line_error(_spark_submit(model, table, out, worker_python=bare_python))

    assert line.startswith("score: Spark's Python workers cannot import 'numpy', 'pandas', 'pyarrow', 'torch'"), line
    assert f"(worker python: {bare_python})" in line
    assert "set spark.pyspark.python or PYSPARK_PYTHON" in line and 'README "On a cluster"' in line
    assert not out.exists(), "the probe must stop the job before any output is written"


@pytest.mark.spark
@pytest.mark.slow
def test_session_from_python_reads_pyspark_python_not_the_setting(trained, table, bare_python, tmp_path):
    """The trap: a session built inside Python runs PYSPARK_PYTHON's interpreter whatever spark.pyspark.python says."""
    model, _, _ = trained
    out = tmp_path / "scored.parquet"

    done = _run([sys.executable, str(CHILD), str(model), str(table), str(out), f"spark.pyspark.python={sys.executable}"],
                _child_env(PYSPARK_PYTHON=bare_python))

    line = _one_line_error(done)
    assert "cannot import 'numpy', 'pandas'" in line and f"(worker python: {bare_python})" in line, line
    assert f"spark.pyspark.python={sys.executable} is read by spark-submit only" in line, line
    assert "at org.apache.spark" not in done.stderr, "the probe reports, it does not fail a Spark task"


@pytest.mark.spark
@pytest.mark.slow
def test_an_interpreter_that_does_not_exist_is_named(trained, table, tmp_path):
    model, _, _ = trained
    missing = str(tmp_path / "no-such-venv" / "bin" / "python")

    line = _one_line_error(_run([sys.executable, str(CHILD), str(model), str(table), str(tmp_path / "out")],
                                _child_env(PYSPARK_PYTHON=missing)))

    assert line.startswith(f"score: Spark's Python workers failed to start (worker python: {missing}): "
                           f'Cannot run program "{missing}"'), line


# worker_error on the two shapes a failed Spark job's Py4J error takes in Spark 3.5.7: a Python traceback
# inside the Java one (the worker ran and raised), or a Java cause alone (the worker never started).
PY4J_PYTHON_FAILURE = """An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0 failed 1 times, most recent failure: Lost task 0.0 in stage 0.0 (TID 0) (127.0.0.1 executor driver): org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/x/pyspark.zip/pyspark/worker.py", line 1100, in main
    raise PySparkRuntimeError(
pyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different version (3, 12) than that in driver 3.11, PySpark cannot run with different minor versions.

\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:572)
\tat org.apache.spark.api.python.PythonRunner$$anon$3.read(PythonRunner.scala:784)
"""
PY4J_JAVA_FAILURE = """An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 0.0 failed 1 times
\tat org.apache.spark.scheduler.DAGScheduler.failJobAndIndependentStages(DAGScheduler.scala:2898)
Caused by: java.io.IOException: Cannot run program "/opt/venv/bin/python": error=13, Permission denied
\tat java.base/java.lang.ProcessBuilder.start(ProcessBuilder.java:1143)
"""


def test_worker_error_is_the_last_line_of_the_workers_traceback():
    assert worker_error(PY4J_PYTHON_FAILURE) == (
        "pyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has "
        "different version (3, 12) than that in driver 3.11, PySpark cannot run with different minor versions."
    )


def test_worker_error_without_a_python_traceback_is_the_java_cause():
    assert worker_error(PY4J_JAVA_FAILURE) == 'Cannot run program "/opt/venv/bin/python": error=13, Permission denied'
    assert worker_error("Job aborted: something else\n\tat org.apache.Foo") == "Job aborted: something else"
