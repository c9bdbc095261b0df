"""A Spark executor SIGKILLed while hybrid hands a table to Ray: Ray still gets every row exactly once.

The hand-off (:mod:`hybrid.handoff`) has Spark write Parquet and Ray Data read it; Spark's task retry re-runs
the lost executor's tasks on the other executor, and its output committer keeps each task's files once. The
scenario runs in a child process (``tests/handoff_fault_child.py``) with a local Ray of its own and two
executors; this test process starts no Ray, so the kill (one pid: an executor JVM) touches nothing else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900


def test_a_killed_executor_mid_hand_off_loses_and_duplicates_no_row(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.handoff_fault_child", str(tmp_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the hand-off did not finish within {TIMEOUT_S} s of a lost executor (hang):\n{out[-3000:]}")
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the child reported nothing (exit {proc.returncode}):\n{out[-3000:]}"
    result = json.loads(lines[-1][len("RESULT "):])
    print(f"hand-off with a killed executor: {result}")  # shown with -s: when the kill landed, tasks retried
    assert len(result["pids_before"]) == 2, f"expected two Spark executors, found {result['pids_before']}"
    assert result["alive_at_kill"], f"the hand-off ended before the kill: the table is too small ({result})"
    assert not result["hung"], f"the hand-off hung after the kill: {result}"
    assert result["error"] is None, f"the hand-off failed after the kill: {result['error']}"
    assert result["killed_pid"] not in result["pids_after"], result
    assert result["count"] == result["rows"], result
    assert result["duplicates"] == 0, result
    assert result["ids_exact"], result
