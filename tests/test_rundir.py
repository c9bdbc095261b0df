"""The run directory: atomic stage records, unreadable records redone, one process at a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybrid import _atomic
from hybrid.fingerprint import Fingerprint
from hybrid.pipeline import StageOrderError, plan
from hybrid.rundir import RunLockedError, StageStore, locked

FP = {stage: Fingerprint(inputs={"stage": stage}) for stage in ("ingest", "tune", "distill", "quantize", "score")}
ALL = ("tune", "distill", "quantize", "score")


def _committed(tmp_path: Path, stages=("ingest", *ALL)) -> StageStore:
    store = StageStore(tmp_path)
    for stage in stages:
        store.commit(stage, FP[stage], {"stage": stage})
    return store


def test_a_finished_run_plans_nothing(tmp_path):
    pending, kept = plan(_committed(tmp_path), FP, ALL, restart=False)
    assert pending == {} and set(kept) == {"ingest", *ALL}


def test_a_truncated_record_is_redone_with_one_warning_and_so_is_everything_after_it(tmp_path):
    store = _committed(tmp_path)
    store.path("distill").write_text('{"fingerprint": "ab')  # a writer killed mid-write (not hybrid's)
    pending, kept = plan(store, FP, ALL, restart=False)
    assert list(pending) == ["distill", "quantize", "score"]
    assert pending["distill"] == ["its record is unreadable"]
    assert pending["quantize"] == ["its input stage distill is redone"]
    assert set(kept) == {"ingest", "tune"}
    assert len(store.warnings) == 1 and "distill" in store.warnings[0]


def test_a_record_that_is_not_a_stage_record_counts_as_not_done(tmp_path):
    store = _committed(tmp_path)
    _atomic.write_json(store.path("tune"), ["not", "a", "record"])
    pending, _ = plan(store, FP, ALL, restart=False)
    assert list(pending) == list(ALL)


def test_restart_redoes_every_requested_stage(tmp_path):
    pending, kept = plan(_committed(tmp_path), FP, ALL, restart=True)
    assert list(pending) == list(ALL) and set(kept) == {"ingest"}


def test_one_stage_alone_needs_its_input_stage(tmp_path):
    with pytest.raises(StageOrderError, match="distill needs the tune stage first"):
        plan(_committed(tmp_path, stages=("ingest",)), FP, ("distill",), restart=False)


def test_a_changed_stage_invalidates_the_ones_after_it_before_it_starts(tmp_path):
    store = _committed(tmp_path)
    store.invalidate_from("distill")
    assert [s for s in ("ingest", *ALL) if store.path(s).exists()] == ["ingest", "tune"]


def test_atomic_replace_dir_keeps_the_old_directory_when_the_writer_fails(tmp_path):
    target = tmp_path / "teacher"
    target.mkdir()
    (target / "model.json").write_text("old")
    with pytest.raises(RuntimeError), _atomic.replace_dir(target) as tmp:
        (tmp / "model.json").write_text("new, half")
        raise RuntimeError("killed")
    assert (target / "model.json").read_text() == "old"
    assert _atomic.remove_debris(tmp_path) == 0  # nothing left behind either


def test_a_second_process_on_a_locked_run_directory_fails_at_once(tmp_path):
    code = ("import sys; from pathlib import Path; from hybrid.rundir import locked, RunLockedError\n"
            "try:\n    with locked(Path(sys.argv[1])): pass\nexcept RunLockedError as e: print(e); sys.exit(1)")
    with locked(tmp_path):
        second = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
        with pytest.raises(RunLockedError):  # also from this process: flock is per open file
            with locked(tmp_path):
                pass
    assert second.returncode == 1 and "in use by another hybrid process (pid" in second.stdout
    with locked(tmp_path):  # released with its holder
        pass


def test_hybrid_run_on_a_locked_run_directory_exits_1_with_one_line_before_starting_anything(tmp_path):
    space = Path(__file__).resolve().parents[1] / "search_spaces" / "cnn_fashion_mnist.yaml"
    config = tmp_path / "run.yaml"
    config.write_text(f"name: busy\nruns_dir: {tmp_path / 'runs'}\n"
                      f"data: {{source: parquet, path: {tmp_path}, test_fraction: 0.2}}\ntune: {{search_space: {space}}}\n")
    with locked(tmp_path / "runs" / "busy"):
        second = subprocess.run([sys.executable, "-m", "hybrid", "run", str(config)], capture_output=True, text=True,
                                timeout=120)
    assert second.returncode == 1
    assert second.stderr.strip().count("\n") == 0, second.stderr
    assert "hybrid run: error: run directory" in second.stderr and "in use by another hybrid process" in second.stderr
