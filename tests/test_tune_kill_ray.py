"""A real tune (Ray Tune + Optuna SQLite + Ray Train) SIGKILLed with its whole process tree mid-trial,
then run again: finished trials are kept byte for byte, the trial in flight continues from its epoch,
and a changed fingerprint starts afresh. Each tune runs in a child process with a local Ray of its own
(``tests/tune_child.py``); this test process starts no Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hybrid.train_state import START_EPOCH
from hybrid.tune_records import FINAL

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def _start(spec: dict, path: Path, log: Path) -> subprocess.Popen:
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.tune_child", str(path)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _records(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted((run_dir / "trials").glob("t*.json")):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # atomic writes make this impossible; a half-read would only delay the poll
    return out


def _session_processes(session_file: Path) -> list[tuple[int, str]]:
    """Live processes whose command line names the child's Ray session."""
    if not session_file.is_file():
        return []
    session = Path(json.loads(session_file.read_text())["session_dir"]).name
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session in text:
            found.append((int(cmdline.parent.name), text[:120]))
    return found


def _kill_leftovers(session_file: Path) -> list[str]:
    left = _session_processes(session_file)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [text for _, text in left]


def test_a_tune_killed_mid_trial_keeps_finished_trials_and_continues_the_one_in_flight(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lr": {"name": "FloatDistribution",
                                                  "attributes": {"low": 1e-3, "high": 3e-2, "log": True}}}))
    run_dir = tmp_path / "runs" / "killed"
    session_file = tmp_path / "session.json"
    base = {"runs_dir": str(tmp_path / "runs"), "space": str(space), "session_file": str(session_file)}
    first = {**base, "runs": [{"fingerprint": "a", "num_samples": 3, "max_epochs": 3, "out": str(tmp_path / "x.json")}]}
    child = _start(first, tmp_path / "first.json", tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and child.poll() is None:
            records = _records(run_dir)
            if any(r["status"] in FINAL for r in records) and any(
                    r["status"] == "running" and r["history"] for r in records):
                break
            time.sleep(0.02)
        assert child.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert len(_session_processes(session_file)) >= 3  # GCS, raylet, workers...: the scan below sees them
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    time.sleep(1)
    leftovers = _kill_leftovers(session_file)
    print(f"Ray processes of the killed session left after killpg: {len(leftovers)}", *leftovers, sep="\n  ")
    assert not _session_processes(session_file)

    from tests.tune_child import snapshot

    before = snapshot(run_dir)
    records = {name: json.loads(text) for name, text in before["records"].items()}
    finished = sorted(name for name, r in records.items() if r["status"] in FINAL)
    (in_flight,) = [name for name, r in records.items() if r["status"] == "running" and r["history"]]
    flight = records[in_flight]
    epoch = flight["epochs"]
    assert finished and 1 <= epoch < 3

    second = {**base, "runs": [
        {"fingerprint": "a", "num_samples": 3, "max_epochs": 3, "out": str(tmp_path / "resumed.json")},
        {"fingerprint": "b", "num_samples": 1, "max_epochs": 1, "out": str(tmp_path / "changed.json")},
    ]}
    child = _start(second, tmp_path / "second.json", tmp_path / "second.log")
    try:
        assert child.wait(timeout=900) == 0, (tmp_path / "second.log").read_text()[-5000:]
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        _kill_leftovers(session_file)
    resumed = json.loads((tmp_path / "resumed.json").read_text())

    # finished trials: the same record bytes, no new checkpoint, no new snapshot of their Train run
    for name in finished:
        assert resumed["records"][name] == before["records"][name]
        tid = name.removesuffix(".json")
        assert resumed["storage"][tid] == before["storage"][tid]
    # the trial in flight continued from its last epoch: history kept, later epochs from a resumed loop
    after = json.loads(resumed["records"][in_flight])
    assert after["status"] == "completed" and after["resumed_from"] == [epoch]
    assert [h["epoch"] for h in after["history"]] == [1, 2, 3]
    assert after["history"][:epoch] == flight["history"]
    assert [h[START_EPOCH] for h in after["history"]] == [0] * epoch + [epoch] * (3 - epoch)
    assert after["params"] == flight["params"]
    assert any(f"continuing {in_flight.removesuffix('.json')} from epoch {epoch}" in line for line in resumed["lines"])
    # every trial once, in the records and in the study
    assert sorted(resumed["records"]) == ["t0000.json", "t0001.json", "t0002.json"]
    assert resumed["study"] == [[0, "COMPLETE"], [1, "COMPLETE"], [2, "COMPLETE"]]
    assert all(json.loads(text)["status"] == "completed" for text in resumed["records"].values())
    assert resumed["best_checkpoint"].endswith("/model")

    # a changed fingerprint: the old tune is wiped, a fresh one runs
    changed = json.loads((tmp_path / "changed.json").read_text())
    assert sorted(changed["records"]) == ["t0000.json"] and changed["study"] == [[0, "COMPLETE"]]
    assert list(changed["storage"]) == ["t0000"] and changed["storage"]["t0000"]["entries"] == ["epoch_0001"]
    assert json.loads(changed["records"]["t0000.json"])["epochs"] == 1
    assert any("fresh search" in line for line in changed["lines"])
