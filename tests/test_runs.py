"""``hybrid runs`` and ``hybrid show`` on run directories written by the pipeline's own writers (pure: no Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid import _atomic
from hybrid.cli import main
from hybrid.config import Config, load_config
from hybrid.fingerprint import stage_fingerprints
from hybrid.pipeline import assemble_summary, prepare_run_dir
from hybrid.rundir import DEFAULT_RUNS_DIR, SUMMARY_FILE, StageStore
from hybrid.runs import read_run

ROOT = Path(__file__).resolve().parents[1]
DAY_S = 86_400.0
T0 = 1_790_000_000.0  # a fixed date, so the order does not depend on how fast the files were written


def _classification(acc: float, f1: float, size: int) -> dict:
    return {"test": {"accuracy": acc, "macro_precision": f1, "macro_recall": f1, "macro_f1": f1},
            "test_confusion_matrix": [[5, 1], [1, 5]], "size_bytes": size, "latency_ms_per_sample": 0.05}


def _spans(em: float, f1: float, size: int) -> dict:
    return {"test": {"exact_match": em, "f1": f1}, "test_confusion_matrix": None, "size_bytes": size,
            "latency_ms_per_sample": 1.5}


def _results(block) -> dict[str, dict]:
    """Stage results shaped as the stages return them (pipeline._stage_* plus duration_s)."""
    metric, spark = ("val_f1", {"exact_match_in_spark": 0.8690, "f1_in_spark": 0.8650}) if block is _spans else (
        "val_accuracy", {"accuracy_in_spark": 0.8690})
    return {
        "ingest": {"data": {"rows_in": 120, "train": 80, "val": 20, "test": 15, "label_names": ["a", "b"],
                            "quarantined": {"label_null": 5, "pixel_count": 0}},
                   "durations_s": {"read": 1.0}, "duration_s": 12.0},
        "tune": {"tune": {"trials": 4, "completed": 2, "pruned": 1, "failed": 1, "metric": metric,
                          "best_trial": "t0", f"best_{metric}": 0.9, "best_epoch": 3},
                 "trials": [], "models": {"teacher": block(0.8841, 0.8812, 400_000)}, "duration_s": 300.0},
        "distill": {"distill": {"teacher_logits_s": 1.0, "train": {}, "student_config": {}},
                    "models": {"student": block(0.8712, 0.8701, 100_000)}, "duration_s": 120.0},
        "quantize": {"quantize": {"backend": "onnx", "passed_gate": True, "metric": metric},
                     "models": {"student_int8": {**block(0.8690, 0.8650, 30_000), "passed_gate": True}},
                     "duration_s": 40.0},
        "score": {"score": {"model": "student_int8", "rows": 15, "rows_per_s": 300.0, **spark},
                  "duration_s": 20.0},
    }


def _make_run(runs_dir: Path, name: str, *, config: str = "fashion_mnist.yaml", block=_classification,
              stages=("ingest", "tune", "distill", "quantize", "score"), summary: bool = True,
              day: int = 0) -> Path:
    """A run directory as ``hybrid run`` leaves it after ``stages`` (and, with ``summary``, its end)."""
    cfg = load_config(ROOT / "configs" / config, [f"name={name}", f"runs_dir={runs_dir}"])
    run_dir = prepare_run_dir(cfg)
    fingerprints = stage_fingerprints(cfg, input_files={}, code="test")
    store = StageStore(run_dir)
    results = {s: r for s, r in _results(block).items() if s in stages}
    for stage, result in results.items():
        store.commit(stage, fingerprints[stage], result)
    if summary:
        _atomic.write_json(run_dir / SUMMARY_FILE,
                           assemble_summary(name, results, fingerprints, {"total": 512.0}, 2**31))
    for path in run_dir.rglob("*"):
        os.utime(path, (T0 + day * DAY_S, T0 + day * DAY_S))
    return run_dir


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    _make_run(runs, "fmnist", day=3)
    _make_run(runs, "qa", config="qa_fixture.yaml", block=_spans, day=2)
    _make_run(runs, "killed", stages=("ingest",), summary=False, day=4)
    broken = _make_run(runs, "broken", day=1)
    (broken / SUMMARY_FILE).write_text('{"name": "broken", "mod')  # cut short by something other than hybrid
    os.utime(broken / SUMMARY_FILE, (T0 + DAY_S, T0 + DAY_S))
    (runs / "notes").mkdir()  # not a run: no config, stage records or summary
    return runs


def _row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.split()[0] == name)


def test_runs_lists_every_run_newest_first_with_what_is_known(runs_dir, capsys):
    status, out, err = _cli(capsys, "runs", "--runs-dir", str(runs_dir))
    assert status == 0, err
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["killed", "fmnist", "qa", "broken"]  # newest first; notes/ is not a run
    full = _row(out, "fmnist")
    assert "ingest,tune,distill,quantize,score" in full and "accuracy" in full
    assert "0.8841" in full and "0.8690 student_int8" in full and "8 min 32 s" in full
    killed = _row(out, "killed")
    assert "ingest " in killed and "tune" not in killed
    assert ">= 12 s" in killed  # no summary: the time of the stages it finished, marked as a lower bound
    assert killed.count("—") == 3  # metric, teacher, shipped unknown


def test_a_qa_run_shows_its_headline_metric_f1(runs_dir, capsys):
    _, out, _ = _cli(capsys, "runs", "--runs-dir", str(runs_dir))
    qa = _row(out, "qa")
    assert " F1 " in qa and "0.8812" in qa and "0.8650 student_int8" in qa  # F1, not exact match
    assert "0.8841" not in qa


def test_show_of_a_qa_run_reports_exact_match_and_f1(runs_dir, capsys):
    _, out, _ = _cli(capsys, "show", "qa", "--runs-dir", str(runs_dir))
    assert "test exact match  test F1" in out
    assert "scored   15 rows in Spark with student_int8: exact match 0.8690, f1 0.8650" in out


def test_a_corrupt_summary_is_named_and_the_run_still_listed(runs_dir, capsys):
    status, out, err = _cli(capsys, "runs", "--runs-dir", str(runs_dir))
    assert status == 0 and "Traceback" not in out + err
    broken = _row(out, "broken")
    assert f"unreadable summary: {runs_dir / 'broken' / SUMMARY_FILE} (JSONDecodeError)" in broken
    assert "0.8841" in broken  # the stage records still tell the figures


def test_a_stale_summary_does_not_outvote_the_stage_records(tmp_path):
    run_dir = _make_run(tmp_path, "rerun")
    # A re-run that changed distill removes the records of distill and later before it starts, then is killed.
    StageStore(run_dir).invalidate_from("distill")
    run = read_run(run_dir)
    assert run.stages == ("ingest", "tune") and run.shipped is None and "student" not in run.models
    assert run.test_value("teacher") == pytest.approx(0.8841)
    assert run.wall_s == (312.0, False)  # the summary's total belongs to the earlier, finished invocation


def test_runs_dir_defaults_to_the_configs_default(tmp_path, capsys, monkeypatch):
    assert DEFAULT_RUNS_DIR == Config().runs_dir
    _make_run(tmp_path / DEFAULT_RUNS_DIR, "here")
    monkeypatch.chdir(tmp_path)
    status, out, _ = _cli(capsys, "runs")
    assert status == 0 and _row(out, "here")


def test_a_missing_runs_dir_is_one_line_naming_it(tmp_path, capsys):
    status, out, err = _cli(capsys, "runs", "--runs-dir", str(tmp_path / "nope"))
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and str(tmp_path / "nope") in err


def test_show_by_name_and_by_path_print_the_same_tables(runs_dir, capsys):
    status, by_name, err = _cli(capsys, "show", "fmnist", "--runs-dir", str(runs_dir))
    assert status == 0, err
    _, by_path, _ = _cli(capsys, "show", str(runs_dir / "fmnist"), "--runs-dir", str(runs_dir / "elsewhere"))
    assert by_name == by_path
    assert "stages   ingest, tune, distill, quantize, score" in by_name
    assert "120 rows in; train 80, val 20, test 15; quarantined 5 (label_null 5)" in by_name
    model_rows = {line.split()[0]: line for line in by_name.splitlines()
                  if line.split()[:1] and line.split()[0] in ("teacher", "student", "student_int8")}
    assert model_rows["teacher"].split()[1:3] == ["0.8841", "0.8812"]
    assert model_rows["student_int8"].rstrip().endswith("yes")  # the shipped model is marked
    assert "scored   15 rows in Spark with student_int8: accuracy 0.8690" in by_name


def test_show_of_a_killed_run_lists_what_is_not_done(runs_dir, capsys):
    status, out, _ = _cli(capsys, "show", "killed", "--runs-dir", str(runs_dir))
    assert status == 0
    assert "not done: tune, distill, quantize, score" in out and "did not finish" in out
    assert "teacher" not in out


def test_show_of_an_unknown_run_is_one_line_with_close_names(runs_dir, capsys):
    status, out, err = _cli(capsys, "show", "fmnst", "--runs-dir", str(runs_dir))
    assert status == 1 and out == ""
    assert err.count("\n") == 1
    assert "'fmnst'" in err and str(runs_dir) in err and "close names: fmnist" in err


def test_the_commands_import_neither_torch_nor_ray_nor_spark(runs_dir):
    code = ("import sys; from hybrid.cli import main; "
            f"assert main(['runs', '--runs-dir', {str(runs_dir)!r}]) == 0; "
            f"assert main(['show', 'qa', '--runs-dir', {str(runs_dir)!r}]) == 0; "
            "print(sorted(m for m in ('torch', 'ray', 'pyspark', 'raydp', 'optuna', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_summary_json_written_by_the_pipeline_is_what_show_reads(tmp_path):
    run = read_run(_make_run(tmp_path, "one"))
    summary = json.loads((run.path / SUMMARY_FILE).read_text())
    assert run.summary == summary and run.wall_s == (512.0, True)
