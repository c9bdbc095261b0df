"""Child process of ``tests/test_handoff_faults.py``: hand a table to Ray through :mod:`hybrid.handoff` with
two Spark executors, SIGKILL one executor JVM (that pid only) while Spark is writing, and print what Ray got
as one JSON line. Runs its own local Ray, so the kill cannot touch the test process's Ray."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

ROWS = 3_000_000
FEATURES = 16
PARTITIONS = 12


def main(out_dir: str) -> int:
    """Run the scenario; print ``RESULT {json}``."""
    import numpy as np
    from pyspark.sql import functions as F

    from hybrid.config import RuntimeConfig
    from hybrid.handoff import spark_to_ray
    from hybrid.runtime import running

    # Three logical CPUs on two cores: two 1-core executors plus one for Ray Data's read tasks.
    config = RuntimeConfig(num_cpus=3, spark_executors=2, spark_executor_memory="1g", spark_driver_memory="1g")
    result: dict[str, Any] = {"rows": ROWS}
    with running(config) as runtime:
        spark = runtime.spark
        if spark is None:
            raise RuntimeError("running() returned no Spark session")
        deadline = time.monotonic() + 60
        pids = runtime.spark_executor_pids()
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            pids = runtime.spark_executor_pids()
        result["pids_before"] = pids
        df = spark.range(0, ROWS, numPartitions=PARTITIONS).select(
            "id", *(F.rand(seed=i).cast("float").alias(f"f{i}") for i in range(FEATURES)))
        box: dict[str, Any] = {}

        def hand_off() -> None:
            try:
                box["ds"] = spark_to_ray(df, Path(out_dir) / "handoff" / "train", rows=ROWS, min_blocks=4)[0]
            except BaseException as err:  # reported, never swallowed: the test fails on it
                box["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()[-2000:]

        tracker = spark.sparkContext.statusTracker()
        t0 = time.perf_counter()
        worker = threading.Thread(target=hand_off, daemon=True)
        worker.start()
        stage_info = None
        while worker.is_alive() and time.perf_counter() - t0 < 300:  # mid-way: some tasks done, more to run
            stages = [tracker.getStageInfo(s) for s in tracker.getActiveStageIds()]
            stage_info = next((s for s in stages if s is not None and s.numTasks == PARTITIONS), None)
            if stage_info is not None and stage_info.numCompletedTasks >= 2 and stage_info.numActiveTasks >= 1:
                break
            time.sleep(0.05)
        result["alive_at_kill"] = worker.is_alive()
        if stage_info is not None:
            result["stage_at_kill"] = {"completed": stage_info.numCompletedTasks, "active": stage_info.numActiveTasks,
                                       "tasks": stage_info.numTasks}
        victim = pids[0]
        os.kill(victim, signal.SIGKILL)
        result["killed_pid"] = victim
        result["kill_at_s"] = time.perf_counter() - t0
        worker.join(timeout=400)
        result["hung"] = worker.is_alive()
        result["seconds"] = time.perf_counter() - t0
        if stage_info is not None:
            after = tracker.getStageInfo(stage_info.stageId)
            result["failed_tasks"] = after.numFailedTasks if after is not None else None
        result["pids_after"] = runtime.spark_executor_pids()
        result["error"] = box.get("error")
        if "ds" in box:
            ds = box["ds"]
            result["count"] = ds.count()
            ids = np.sort(ds.select_columns(["id"]).to_pandas()["id"].to_numpy())
            result["duplicates"] = int(np.count_nonzero(np.diff(ids) == 0))
            result["ids_exact"] = bool(len(ids) == ROWS and np.array_equal(ids, np.arange(ROWS)))
        print("RESULT " + json.dumps(result), flush=True)
        if result["hung"]:
            os._exit(3)  # a thread stuck in a JVM call would keep the process alive; the reaper cleans up
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
