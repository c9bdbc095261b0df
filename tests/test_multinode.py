"""hybrid on a real multi-node Ray cluster, simulated on this host the way the README's recipe starts one.

``scripts/local_cluster.py`` starts a head with no CPUs (so nothing sized from the cluster's total can
fit on it) and two 1-CPU worker nodes, each a separate ``ray start`` with its own temp dir, ports and
custom resources. Drivers run ``hybrid`` as a user would, in a subprocess, against the cluster's
address. Placement is proven by node id (every node has the same IP).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests._cluster import local_cluster, worker_node_ids

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.spark, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
SLICE = [
    "data.max_train_rows=1200", "data.max_test_rows=400", "tune.time_budget_s=null", "tune.n_startup_trials=2",
    "train.max_epochs=2", "distill.max_epochs=1", "quantize.backend=onnxruntime", "quantize.calibration_samples=256",
]


def hybrid(cluster: dict[str, Any], command: str, workdir: Path, sets: list[str], *, timeout: float = 900,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``hybrid COMMAND`` against the cluster from ``workdir`` (the driver's own directory)."""
    args = [sys.executable, "-m", "hybrid", command, str(ROOT / "configs" / "fashion_mnist.yaml")]
    for item in [*SLICE, f"runtime.ray_address={cluster['address']}", *sets]:
        args += ["--set", item]
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(args, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"hybrid {command} failed (rc {out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def test_run_places_trials_and_executors_on_two_worker_nodes(cluster: dict[str, Any], tmp_path: Path) -> None:
    hybrid(cluster, "run", tmp_path, ["name=placed", "runs_dir=runs", "tune.num_samples=2", "tune.max_concurrent=2",
                                      "runtime.spark_executors=2"])
    summary = json.loads((tmp_path / "runs" / "placed" / "summary.json").read_text())
    block = summary["cluster"]
    workers = worker_node_ids(cluster)
    head = {n["node_id"] for n in block["nodes"] if n["head"]}
    assert {n["node_id"] for n in block["nodes"]} == workers | head and len(head) == 1
    # Trials, Spark executors and training workers ran on both worker nodes, never on the CPU-less head.
    assert set(block["trials_by_node"]) == workers, block
    assert sum(block["trials_by_node"].values()) == 2
    assert set(block["spark_executors_by_node"]) == workers, block
    assert set(block["train_workers_by_node"]) == workers, block
    # The chain learned on the cluster (chance is 0.1; one distill epoch of 5 steps leaves the student far
    # below the teacher on this slice, so only the teacher is held to a bar) and Spark on the cluster scored
    # every test row exactly as the driver does in process.
    assert summary["models"]["teacher"]["test"]["accuracy"] > 0.3, summary["models"]
    assert summary["score"]["rows"] == summary["data"]["test"]
    assert summary["score"]["accuracy_in_spark"] == summary["score"]["accuracy_in_process"]
    assert (tmp_path / "runs" / "placed" / "report.html").read_text().count("<svg") >= 3

    # Every stage is recorded: the same command again redoes nothing and needs no Ray.
    again = hybrid(cluster, "run", tmp_path, ["name=placed", "runs_dir=runs", "tune.num_samples=2",
                                              "tune.max_concurrent=2", "runtime.spark_executors=2"], timeout=120)
    assert "stages to run: none" in again.stdout, again.stdout[-3000:]
    assert json.loads((tmp_path / "runs" / "placed" / "summary.json").read_text())["models"] == summary["models"]


def test_a_request_no_node_can_hold_fails_at_once(cluster: dict[str, Any], tmp_path: Path) -> None:
    t0 = time.monotonic()
    out = hybrid(cluster, "run", tmp_path, ["name=too-big", "train.cpus_per_worker=2"], check=False, timeout=300)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "cpus_per_worker" in last or "CPU" in last, last
    assert "largest node" in last, last
    # Checked before ingest, not after Spark has started and read the data.
    assert "[run] ingest: started" not in out.stdout, out.stdout[-3000:]
    assert time.monotonic() - t0 < 120


def _record(run_dir: Path, trial_id: str) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / "trials" / f"{trial_id}.json").read_text())
    except (OSError, ValueError):
        return None


def test_a_lost_worker_node_costs_the_trial_only_its_epoch_in_flight(cluster: dict[str, Any], tmp_path: Path) -> None:
    """SIGKILL the worker node that holds a running trial: the search completes, and that trial goes on from
    its last checkpoint on the other node (its recorded epochs kept, later epochs resumed, not restarted)."""
    run_dir = tmp_path / "runs" / "lost"
    args = [sys.executable, "-m", "hybrid", "tune", str(ROOT / "configs" / "fashion_mnist.yaml")]
    for item in [*SLICE, f"runtime.ray_address={cluster['address']}", "name=lost", "runs_dir=runs",
                 "tune.num_samples=2", "tune.max_concurrent=1", "train.max_epochs=3", "tune.grace_period=3"]:
        args += ["--set", item]
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    victim = before = None
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            record = _record(run_dir, "t0000")
            if record and record["status"] == "running" and 1 <= len(record["history"]) < 3:
                victim, before = record["history"][-1]["node_id"], record
                break
            time.sleep(0.5)
        assert victim is not None, "the first trial never ran an epoch"
        local_cluster.kill_node(cluster["base"], victim)
        out, _ = proc.communicate(timeout=max(60, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        local_cluster.add_worker(cluster["base"])  # the next test gets two workers again
    assert proc.returncode == 0, out[-5000:]
    after = _record(run_dir, "t0000")
    assert after["status"] == "completed" and after["epochs"] == 3, after
    kept = len(before["history"])
    assert after["history"][:kept] == before["history"], "epochs recorded before the node died were redone"
    nodes = [row["node_id"] for row in after["history"]]
    assert nodes[0] == victim and nodes[-1] != victim, nodes  # moved to the surviving node
    # The epochs after the loss continued from a checkpoint: their start epoch is past zero.
    assert all(row["start_epoch"] >= 1 for row in after["history"][kept:]), after["history"]
    assert "lost a worker" in out, out[-3000:]
    summary_trials = {t["trial_id"]: t for t in json.loads((run_dir / "summary.json").read_text())["trials"]}
    assert len(summary_trials) == 2 and summary_trials["t0000"]["nodes"][0] == victim


def test_two_ddp_workers_on_two_nodes_learn_as_one_worker_does(cluster: dict[str, Any], tmp_path: Path) -> None:
    """train.num_workers: 2 spreads over both 1-CPU nodes (gloo across nodes); each worker reads half the rows
    (Ray Data shards the train split) and the batch size is per worker, so 2 workers at 16 take the global
    batch (and steps) of 1 worker at 32, with the learning rate unscaled; validation accuracy then matches
    one worker's within noise on the same toy slice."""
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "multinode_child.py"), cluster["address"],
                          str(tmp_path / "storage")], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = result["1"], result["2"]
    assert set(two["train_workers"]) == worker_node_ids(cluster), two  # one worker on each node
    assert sum(one["train_workers"].values()) == 1
    assert one["val_accuracy"] > 0.8 and two["val_accuracy"] > 0.8, result
    assert abs(one["val_accuracy"] - two["val_accuracy"]) <= 0.1, result
