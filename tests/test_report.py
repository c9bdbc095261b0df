"""The offline HTML report, rendered from a run directory's files."""

from __future__ import annotations

import json
import re

from hybrid.report import write_report
from hybrid.search_space import dump_search_space
from optuna.distributions import CategoricalDistribution, FloatDistribution


def toy_run_dir(tmp_path):
    """A run directory with 4 trials (completed, pruned, failed), 5 quarantined rows and a teacher; the browser
    test (tests/test_report_browser.py) builds its report from it too."""
    run = tmp_path / "run"
    (run / "trials").mkdir(parents=True)
    space = {"train.lr": FloatDistribution(1e-4, 1e-1, log=True), "model.pooling": CategoricalDistribution(["max", "avg"])}
    (run / "search_space.yaml").write_text(dump_search_space(space))
    trials = []
    for i, (lr, pool, acc, status, epochs) in enumerate([
        (1e-3, "max", 0.91, "completed", 3), (5e-2, "avg", 0.80, "pruned", 1),
        (2e-3, "avg", 0.88, "completed", 3), (1e-1, "max", None, "failed", 0),
    ]):
        history = [{"epoch": e + 1, "val_accuracy": acc - 0.05 * (epochs - e - 1)} for e in range(epochs)] if acc else []
        record = {"trial_id": f"t{i}", "params": {"train.lr": lr, "model.pooling": pool}, "status": status,
                  "epochs": epochs, "history": history, "best": history[-1] if history else {},
                  "error": "TrainingError: loss is nan" if status == "failed" else None}
        (run / "trials" / f"t{i}.json").write_text(json.dumps(record))
        trials.append(record)
    summary = {
        "name": "toy", "durations_s": {"ingest": 3.0, "tune": 60.0, "total": 70.0}, "peak_rss_bytes": 2**31,
        "data": {"rows_in": 100, "train": 70, "val": 10, "test": 15, "label_names": ["a", "b"],
                 "quarantined": {"label_null": 5, "pixel_count": 0}},
        "tune": {"trials": 4, "completed": 2, "pruned": 1, "failed": 1, "metric": "val_accuracy", "best_trial": "t0"},
        "trials": trials,
        "models": {"teacher": {"test": {"accuracy": 0.9, "macro_f1": 0.89}, "test_confusion_matrix": [[7, 1], [0, 7]]}},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_report_is_self_contained_and_shows_every_trial(tmp_path):
    page = write_report(toy_run_dir(tmp_path)).read_text()
    assert page.count("<svg") == 4  # history, learning curves, importances, confusion matrix
    for tid in ("t0", "t1", "t2", "t3"):
        assert tid in page
    assert 'class="best"' in page and "loss is nan" in page
    assert "label_null" in page
    assert not re.search(r"<script|src=\"http|href=\"http", page)  # nothing fetched: readable offline


def test_pareto_section_shows_the_front_and_marks_the_chosen_point(tmp_path):
    from hybrid.pareto import parse_objectives, parse_selection, select

    run = toy_run_dir(tmp_path)
    points = [{"id": "c0", "val_accuracy": 0.93, "latency_ms": 0.09, "size_bytes": 4e6},
              {"id": "c1", "val_accuracy": 0.91, "latency_ms": 0.05, "size_bytes": 2e6},
              {"id": "<c2>", "val_accuracy": 0.88, "latency_ms": 0.03, "size_bytes": 1e6},
              {"id": "c3", "val_accuracy": 0.87, "latency_ms": 0.06, "size_bytes": 1e6},  # dominated by <c2>
              {"id": "c4", "val_accuracy": float("nan"), "latency_ms": 0.01, "size_bytes": 1e5}]
    objectives = parse_objectives([{"val_accuracy": "max"}, {"latency_ms": "min"}, {"size_bytes": "min"}])
    rule = parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.05"}})
    chosen = select(points, objectives, rule)
    summary = json.loads((run / "summary.json").read_text())
    summary["compression"] = {"pareto": chosen.front.record(), "chosen": chosen.record()}
    (run / "summary.json").write_text(json.dumps(summary, allow_nan=False))

    page = write_report(run).read_text()
    section = page[page.index("<h2>Compression: Pareto front"):page.index("<h2>Data")]
    assert section.count("<svg") == 1 and page.count("<svg") == 5
    markers = re.findall(r'<circle class="pt( chosen)?"[^>]*><title>([^<]*)</title>', section)
    assert len(markers) == 4  # every placed candidate once; the NaN one is listed, not plotted
    assert [title for flag, title in markers if flag] == ["c1: latency_ms 0.05, val_accuracy 0.91, size_bytes 2e+06"]
    assert "<polyline" in section  # the front joined
    assert "&lt;c2&gt;" in section and "<c2>" not in section  # labels escaped
    assert "excluded: val_accuracy is nan" in section
    assert "highest val_accuracy among 2 of 4 candidates meeting latency_ms &lt;= 0.05" in section
    assert section.count('class="best"') == 1


def test_a_multi_objective_tune_shows_the_trials_front_and_the_teacher(tmp_path):
    from hybrid.pareto import parse_objectives, pareto_front

    run = toy_run_dir(tmp_path)
    points = [{"id": "t0", "status": "completed", "epoch": 3, "val_accuracy": 0.91, "latency_ms": 0.05},
              {"id": "t1", "status": "pruned", "epoch": 1, "val_accuracy": 0.80, "latency_ms": 0.01},
              {"id": "t2", "status": "completed", "epoch": 3, "val_accuracy": 0.88, "latency_ms": 0.06},
              {"id": "t3", "status": "failed", "epoch": None, "val_accuracy": None, "latency_ms": None}]
    objectives = parse_objectives([{"val_accuracy": "max"}, {"latency_ms": "min"}])
    summary = json.loads((run / "summary.json").read_text())
    summary["tune"]["pareto"] = pareto_front(points, objectives).record()
    (run / "summary.json").write_text(json.dumps(summary, allow_nan=False))

    page = write_report(run).read_text()
    section = page[page.index("<h2>Tune: Pareto front of the trials"):page.index("<h2>Data")]
    assert section.count("<svg") == 1 and "Compression" not in section
    markers = re.findall(r'<circle class="pt( chosen)?"[^>]*><title>([^<]*)</title>', section)
    assert [title.split(":")[0] for flag, title in markers if flag] == ["t0"]  # the teacher
    assert "the teacher, the best trial on val_accuracy" in section
    assert "excluded: val_accuracy is missing" in section and "<th class=l>trial</th>" in section
