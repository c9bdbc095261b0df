"""hybrid.cluster: a request no node can hold fails at once, in one line."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybrid.cluster import (
    Node,
    check_fits,
    cpus_per_node_free,
    largest_node,
    sets_that_fit,
    units_that_fit,
    worker_request,
)
from hybrid.errors import ClusterFitError, HybridError
from hybrid.tune import default_concurrency

GIB = 1024.0**3
# The shape measured on one host: a head with no CPUs and two 1-CPU workers (STACK.md).
SPLIT = [
    Node("head", {"CPU": 0.0, "memory": 4 * GIB}, {"CPU": 0.0, "memory": 4 * GIB}),
    Node("w1", {"CPU": 1.0, "memory": 4 * GIB}, {"CPU": 1.0, "memory": 4 * GIB}),
    Node("w2", {"CPU": 1.0, "memory": 4 * GIB}, {"CPU": 0.0, "memory": 3 * GIB}),
]


def test_units_that_fit_takes_the_scarcest_resource() -> None:
    assert units_that_fit({"CPU": 1.0, "memory": 2 * GIB}, {"CPU": 4.0, "memory": 5 * GIB}) == 2
    assert units_that_fit({"CPU": 2.0}, {"CPU": 1.0}) == 0
    assert units_that_fit({"GPU": 1.0}, {"CPU": 8.0}) == 0
    assert units_that_fit({"CPU": 0.0}, {}) == 1  # nothing asked: fits anywhere


def test_largest_node_is_the_closest_to_the_request() -> None:
    assert largest_node(SPLIT, {"CPU": 2.0}).node_id == "w1"  # type: ignore[union-attr]
    assert largest_node(SPLIT, {"CPU": 2.0}, free=True).node_id == "w1"  # type: ignore[union-attr]
    assert largest_node([], {"CPU": 1.0}) is None


def test_a_request_sized_from_the_total_fits_no_node() -> None:
    with pytest.raises(ClusterFitError) as info:
        check_fits("distill", {"CPU": 2.0}, what="the teacher-logits actor", nodes=SPLIT)
    message = str(info.value)
    assert message == (
        "distill: the teacher-logits actor asks {'CPU': 2.0} but the largest node has {'CPU': 1.0} (3 nodes); "
        "lower the request or add a node that large"
    )
    assert "\n" not in message
    assert isinstance(info.value, HybridError)  # the CLI prints it on one line and exits 1


def test_memory_is_shown_in_gib_and_checked_per_node() -> None:
    with pytest.raises(ClusterFitError, match=r"asks \{'CPU': 1.0, 'memory': '6.0 GiB'\} .* 'memory': '4.0 GiB'"):
        check_fits("spark", {"CPU": 1.0, "memory": 6 * GIB}, what="each Spark executor", nodes=SPLIT)
    check_fits("spark", {"CPU": 1.0, "memory": 2 * GIB}, what="each Spark executor", nodes=SPLIT)


def test_each_copy_must_fit_a_node_and_all_copies_the_cluster() -> None:
    check_fits("tune", {"CPU": 1.0}, count=2, what="each trial's training worker", nodes=SPLIT)
    with pytest.raises(ClusterFitError, match=r"^tune: each trial's training worker needs 3 x \{'CPU': 1.0\} at once "
                                              r"but the 3 nodes hold only 2 \(largest \{'CPU': 1.0\}\); lower"):
        check_fits("tune", {"CPU": 1.0}, count=3, what="each trial's training worker", nodes=SPLIT, fix="lower it")


def test_gpu_requests_and_empty_clusters() -> None:
    with pytest.raises(ClusterFitError, match=r"asks \{'CPU': 1.0, 'GPU': 1.0\} but the largest node has"):
        check_fits("tune", worker_request(cpus=1, use_gpu=True), what="a worker", nodes=SPLIT)
    with pytest.raises(ClusterFitError, match="has no alive node"):
        check_fits("tune", {"CPU": 1.0}, what="a worker", nodes=[])
    check_fits("tune", {"CPU": 0.0}, what="an all-zero request", nodes=[])  # asks nothing: nothing to check


def test_concurrency_counts_node_by_node_in_free_resources() -> None:
    # The cluster's free total is 1 CPU (w1), so one 1-CPU trial; a 2-CPU worker fits no node even
    # where the total of two 1-CPU nodes would say 1.
    assert default_concurrency({"CPU": 1.0}, workers=1, nodes=SPLIT) == 1
    idle = [Node(n.node_id, n.total, dict(n.total)) for n in SPLIT]
    assert default_concurrency({"CPU": 1.0}, workers=1, nodes=idle) == 2
    assert default_concurrency({"CPU": 1.0}, workers=2, nodes=idle) == 1
    assert sets_that_fit({"CPU": 2.0}, count=1, nodes=idle) == 0
    assert default_concurrency({"CPU": 2.0}, workers=1, nodes=idle) == 1  # at least one; check_fits guards
    two_big = [Node("a", {"CPU": 3.0}, {"CPU": 3.0}), Node("b", {"CPU": 3.0}, {"CPU": 3.0})]
    assert default_concurrency({"CPU": 2.0}, workers=1, nodes=two_big) == 2  # not 6 // 2 = 3


def test_cpus_per_node_free_is_one_nodes_not_the_total() -> None:
    idle = [Node(n.node_id, n.total, dict(n.total)) for n in SPLIT]
    assert cpus_per_node_free(idle) == 1
    assert cpus_per_node_free([Node("h", {"CPU": 0.0}, {"CPU": 0.0})]) == 1  # never asks for zero


@pytest.fixture
def split_cluster() -> Iterator[object]:
    """A real three-node Ray on this host: head with 0 CPUs, two 1-CPU nodes; host state put back after."""
    import ray
    from ray.cluster_utils import Cluster

    from hybrid._reaper import _token_in_use
    from hybrid.runtime import _AUTH_TOKEN, _RAY_TMP, _free_port

    address_file = _RAY_TMP / "ray_current_cluster"
    saved = {p: p.read_bytes() if p.exists() else None for p in (address_file, _AUTH_TOKEN)}
    temp_dir = Path(tempfile.mkdtemp(prefix="hyb-cl-", dir="/tmp"))
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "temp_dir": str(temp_dir),
        "dashboard_agent_listen_port": _free_port(),
    })
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
        for path, content in saved.items():
            if content is not None:
                path.write_bytes(content)
            elif path.exists() and not (path == _AUTH_TOKEN and _token_in_use(path)):
                path.unlink(missing_ok=True)


@pytest.mark.ray
@pytest.mark.slow
def test_on_a_real_split_cluster(split_cluster: object) -> None:
    import ray

    from hybrid.cluster import inventory

    nodes = inventory()
    assert sorted(n.total.get("CPU", 0.0) for n in nodes) == [0.0, 1.0, 1.0]
    assert ray.cluster_resources()["CPU"] == 2.0  # the total a request must not be sized from
    with pytest.raises(ClusterFitError) as info:
        check_fits("distill", {"CPU": 2.0}, what="the teacher-logits actor")
    assert str(info.value).startswith(
        "distill: the teacher-logits actor asks {'CPU': 2.0} but the largest node has {'CPU': 1.0} (3 nodes); ")
    check_fits("distill", {"CPU": 1.0}, count=2, what="the student's training workers")

    @ray.remote(num_cpus=1)
    class Where:
        def node(self) -> str:
            return ray.get_runtime_context().get_node_id()

    # What passed the check is placed for real, on a 1-CPU node.
    actor = Where.remote()
    node_id = ray.get(actor.node.remote(), timeout=60)
    assert {n.node_id: n.total.get("CPU") for n in nodes}[node_id] == 1.0
    # One CPU left, on the other node (free resources reach the GCS with a short delay).
    deadline = time.monotonic() + 15
    while default_concurrency({"CPU": 1.0}, workers=1, nodes=inventory()) != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert default_concurrency({"CPU": 1.0}, workers=1, nodes=inventory()) == 1
    ray.kill(actor)
