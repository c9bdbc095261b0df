"""The cluster block of summary.json from hand-made placements (pure: no Ray)."""

from __future__ import annotations

from hybrid.placement import cluster_block, count_by_node, epoch_nodes, trials_by_node


def test_count_by_node_counts_every_kind_from_one_list() -> None:
    actors = [("org.apache.spark.executor.RayDPExecutor", "n1"), ("RayTrainWorker", "n1"),
              ("RayTrainWorker", "n2"), ("org.apache.spark.executor.RayDPExecutor", "n2"), ("TrainController", "h")]
    assert count_by_node(iter(actors)) == {"spark_executors": {"n1": 1, "n2": 1}, "train_workers": {"n1": 1, "n2": 1}}


def test_epoch_nodes_names_each_run_of_epochs_once() -> None:
    history = [{"node_id": "a"}, {"node_id": "a"}, {"node_id": "b"}, {}, {"node_id": "b"}]
    assert epoch_nodes(history) == ["a", "b"]
    assert trials_by_node([{"nodes": ["a", "b"]}, {"nodes": ["a"]}, {"nodes": []}]) == {"a": 1, "b": 1}


def test_cluster_block_sums_stages_and_keeps_the_latest_nodes() -> None:
    placements = {
        "ingest": {"nodes": [{"node_id": "h", "head": True}], "actors": {"spark_executors": {"n1": 2}}},
        "tune": {"nodes": [{"node_id": "h", "head": True}, {"node_id": "n1", "head": False}],
                 "actors": {"train_workers": {"n1": 3}}},
        "score": {"nodes": [], "actors": None},  # the state API did not answer
    }
    block = cluster_block(placements, [{"nodes": ["n1"]}])
    assert [n["node_id"] for n in block["nodes"]] == ["h", "n1"]
    assert block["spark_executors_by_node"] == {"n1": 2} and block["train_workers_by_node"] == {"n1": 3}
    assert block["trials_by_node"] == {"n1": 1} and block["by_stage"]["score"] is None
    assert cluster_block({"ingest": {"nodes": [], "actors": None}}, [])["train_workers_by_node"] is None
