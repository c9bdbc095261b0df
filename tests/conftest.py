"""Shared pytest settings for hybrid's tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_single_thread() -> Iterator[None]:
    """Run each test's torch ops on one thread.

    Unit tests use tensors of a few kilobytes, where intra-op threads only add synchronisation; on a
    busy 2-core machine a second thread made a tiny CNN's forward pass 100x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def runtime() -> Iterator[object]:
    """A real local Ray with real Spark on it through RayDP, shared by the integration tests."""
    from hybrid.config import RuntimeConfig
    from hybrid.runtime import running

    with running(RuntimeConfig(num_cpus=2, spark_executor_memory="1g", spark_driver_memory="1g")) as rt:
        yield rt


@pytest.fixture
def spark(runtime: object) -> object:
    """The session's SparkSession (Spark on Ray), restarted if a test stopped it."""
    return runtime.start_spark(app_name="hybrid-tests")  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def local_spark() -> Iterator[object]:
    """A plain local SparkSession (no Ray), one per module, stopped afterwards.

    If another test module already started a session in this process (Spark on Ray through
    RayDP), Spark allows only one per process, so that one is used and left running.
    """
    from pyspark.sql import SparkSession

    from hybrid.testing import local_spark_builder

    if SparkSession.getActiveSession() is not None:
        yield SparkSession.getActiveSession()
        return
    saved = {k: os.environ.get(k) for k in ("PYSPARK_PYTHON", "SPARK_LOCAL_IP")}
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    spark = local_spark_builder("hybrid-tests-local").config("spark.sql.shuffle.partitions", "2").getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    try:
        yield spark
    finally:
        _stop_with_its_jvm(spark)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stop_with_its_jvm(spark: object) -> None:
    """Stop a plain local session and the JVM pyspark launched for it: that JVM's classpath has no RayDP, so
    Spark on Ray started later in this process (the ``runtime`` fixture) must launch a JVM of its own."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()  # type: ignore[attr-defined]
    if gateway is None:
        return
    gateway.shutdown()
    proc = getattr(gateway, "proc", None)
    if proc is not None:
        proc.stdin.close()  # Spark's gateway server exits when its parent's pipe closes
        proc.wait(timeout=60)
    SparkContext._gateway = None
    SparkContext._jvm = None


@pytest.fixture(scope="session")
def cluster() -> dict[str, Any]:
    """A real multi-node Ray on this host (a CPU-less head, two 1-CPU workers: ``scripts/local_cluster.py``),
    shared by the ``cluster`` tests, which run first and stop it once the last of them is done."""
    from tests._cluster import shared_cluster

    return shared_cluster()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    if item.get_closest_marker("cluster") is not None and (nextitem is None or nextitem.get_closest_marker("cluster") is None):
        from tests._cluster import stop_shared

        stop_shared()  # its three nodes' daemons would otherwise take CPU from every later test


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start Ray clusters on this host (marker ``cluster``, about 16 minutes) run first, together,
    while no other Ray is up; ``HYBRID_CLUSTER_TESTS=0`` skips them. Tests marked ``full`` (heavier runs of
    what the default tier also covers) run only with ``HYBRID_FULL_TESTS=1`` (see README "Tests")."""
    items.sort(key=lambda item: item.get_closest_marker("cluster") is None)  # stable: file order otherwise
    skips = []
    if os.environ.get("HYBRID_CLUSTER_TESTS", "1") == "0":
        skips.append(("cluster", "multi-node test skipped: HYBRID_CLUSTER_TESTS=0"))
    if os.environ.get("HYBRID_FULL_TESTS", "0") != "1":
        skips.append(("full", "full-tier test: run scripts/test.sh --full (HYBRID_FULL_TESTS=1)"))
    for marker, reason in skips:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if item.get_closest_marker(marker) is not None:
                item.add_marker(skip)
