"""No shared-disk assumption: Ray workers get what they open through the object store, not the driver's disk.

A real multi-node Ray cluster runs on this host (``scripts/local_cluster.py``: a CPU-less head and two 1-CPU
worker nodes). The driver runs in a private mount namespace (``unshare -m``) with a tmpfs mounted over a
directory that holds the pretrained MiniLM and a saved teacher: every Ray worker process is forked by a
node's raylet, outside that namespace, so none of them can open those paths, exactly as a worker on
another machine could not. With shipping, training a BERT from the private ``pretrained_dir``, the
teacher-logits actor and a student that starts from the private teacher all succeed; with shipping off
(``ship_dir`` handing workers the driver's path, as hybrid did before) each fails naming the missing path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._cluster import worker_node_ids

from hybrid.testing import minilm_dir

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]
MODEL = minilm_dir()
DRIVER = Path(__file__).with_name("no_shared_disk_driver.py")
STEPS = ("train", "teacher_logits", "student")


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


if MODEL is None:
    pytest.skip("all-MiniLM-L6-v2 not installed (scripts/setup.sh)", allow_module_level=True)
if not _can_unshare():
    pytest.skip("needs root and `unshare -m` (a private mount namespace) to hide the driver's files",
                allow_module_level=True)


def _drive(cluster: dict[str, Any], tmp: Path, *, ship: bool) -> dict[str, Any]:
    """Run the driver in a private mount namespace; returns its JSON report (private paths are gone after)."""
    private, storage, out = tmp / "private", tmp / "storage", tmp / "report.json"
    private.mkdir()
    cmd = [sys.executable, str(DRIVER), "--address", cluster["address"], "--private", str(private),
           "--storage", str(storage), "--minilm", str(MODEL), "--out", str(out), *([] if ship else ["--no-ship"])]
    script = f"mount -t tmpfs none {private} && exec " + " ".join(f"'{c}'" for c in cmd)
    env = {**os.environ, **cluster["env"], "PYTHONPATH": str(ROOT)}
    env.pop("RAY_ADDRESS", None)
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], env=env,
                         capture_output=True, text=True, timeout=900)
    if run.returncode != 0 or not out.is_file():
        raise AssertionError(f"driver failed (rc {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    report = json.loads(out.read_text())
    report["private_is_empty_outside"] = not any(private.iterdir())
    return report


def _remove_cached(digests: list[str]) -> None:
    from hybrid.shipping import cache_root

    for digest in digests:  # unique to this test (the copies' names are random): no one else uses them
        shutil.rmtree(cache_root() / digest[:32], ignore_errors=True)


def _failures(report: dict[str, Any]) -> str:
    return "\n\n".join(f"{s}: {report[s].get('trace') or report[s]['error']}" for s in STEPS if not report[s]["ok"])


def test_workers_get_the_model_and_teacher_through_the_object_store(cluster: dict[str, Any], tmp_path: Path) -> None:
    report = _drive(cluster, tmp_path, ship=True)
    workers = worker_node_ids(cluster)
    try:
        # The isolation is real: the driver saw its files, a Ray worker and the host outside did not.
        assert report["driver_sees_minilm"] and report["private_is_empty_outside"]
        assert report["worker_view"]["exists"] is False
        assert report["worker_view"]["node_id"] in workers
        assert all(report[s]["ok"] for s in STEPS), _failures(report)
        # Training ran on a worker node (the head has no CPU), not where the driver is attached.
        assert report["train"]["node_id"] in workers
        assert report["student"]["node_id"] in workers
        assert report["teacher_logits"] == {"ok": True, "rows": 32, "shape": [32, 2]}
        # The student's config still names the user's (driver's) paths; only the workers read copies.
        assert report["student_config"]["init_from"] == str(tmp_path / "private" / "teacher")
        assert report["student_config"]["pretrained_dir"] == str(tmp_path / "private" / "teacher" / "encoder")
        # Each directory was put once (the tokenizer-and-encoder dir, the teacher, its encoder/).
        assert len(report["shipped_digests"]) == 3
    finally:
        _remove_cached(report.get("shipped_digests", []))


@pytest.mark.full  # the control: the test above already checks the workers cannot see the driver's files
def test_without_shipping_every_worker_step_fails_on_the_missing_path(cluster: dict[str, Any], tmp_path: Path) -> None:
    report = _drive(cluster, tmp_path, ship=False)
    assert report["driver_sees_minilm"] and report["worker_view"]["exists"] is False
    private = str(tmp_path / "private")
    for step in STEPS:
        assert not report[step]["ok"], f"{step} succeeded although its workers cannot see {private}"
        assert private in report[step]["error"] + report[step]["trace"], report[step]
    assert "no config.json" in report["train"]["trace"]  # the encoder's directory is missing on the worker
