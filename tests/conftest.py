"""Shared pytest settings for hybrid's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that start several Ray clusters on this host (marker ``cluster``) run only when asked for with
    ``HYBRID_CLUSTER_TESTS=1``: they passed alone but not yet inside one full suite run (see README "Tests")."""
    if os.environ.get("HYBRID_CLUSTER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="multi-cluster test: set HYBRID_CLUSTER_TESTS=1 to run it")
    for item in items:
        if item.get_closest_marker("cluster") is not None:
            item.add_marker(skip)
