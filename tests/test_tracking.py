"""MLflow tracking (:mod:`hybrid.tracking`) against a real MLflow: SQLite stores under tmp_path, and one
``mlflow server`` on 127.0.0.1 started here; every run is read back through ``MlflowClient``.

The run directories are written by the pipeline's own writers (config, stage records, trial records,
summary, report) without Ray or Spark; ``tests/test_cli.py`` checks the same logging after a real run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hybrid import _atomic
from hybrid.config import check_before_start, load_config
from hybrid.errors import ConfigError
from hybrid.fingerprint import stage_fingerprints
from hybrid.pipeline import assemble_summary, prepare_run_dir
from hybrid.report import write_report
from hybrid.rundir import SUMMARY_FILE, StageStore
from hybrid.tracking import DB_FILE, TrackingConfig, log_run, resolve_uri, stage_metrics
from hybrid.tune_records import TunePaths, make_record, write_record

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install -e '.[mlflow]'")
from mlflow import MlflowClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"model.base_channels": 16, "train.lr": 0.003, "train.optimizer": "adamw"}


def _history(epochs: int, start: float) -> list[dict]:
    return [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 1.5 / e, "val_accuracy": start + 0.1 * e,
             "lr": 0.003, "node_id": "abc"} for e in range(1, epochs + 1)]


def _model(acc: float, size: int) -> dict:
    return {"test": {"accuracy": acc, "macro_precision": acc, "macro_recall": acc, "macro_f1": acc, "loss": 0.5},
            "test_confusion_matrix": [[5, 1], [1, 5]], "size_bytes": size, "latency_ms_per_sample": 0.05}


def make_run(runs_dir: Path, name: str = "fm", *, overrides: tuple[str, ...] = ()) -> tuple[Path, dict, object]:
    """A finished run directory (two trials, three shipped models, scores) and its summary."""
    config = load_config(ROOT / "configs" / "fashion_mnist.yaml", [f"name={name}", f"runs_dir={runs_dir}", *overrides])
    run_dir = prepare_run_dir(config)
    paths = TunePaths(run_dir)
    records = [
        make_record("t0000", params=PARAMS, history=_history(3, 0.5), status=None, paths=paths,
                    metric="val_accuracy", mode="max", max_epochs=3),
        make_record("t0001", params={**PARAMS, "train.lr": 0.1}, history=_history(1, 0.2), status=None, paths=paths,
                    metric="val_accuracy", mode="max", max_epochs=3),
    ]
    for record in records:
        write_record(paths, record)
    trials = [{"trial_id": r.trial_id, "status": r.status, "epochs": r.epochs, "params": r.params, "best": r.best,
               "error": None, "nodes": {}} for r in records]
    for model in ("teacher", "student", "student_int8"):
        (run_dir / model).mkdir()
        (run_dir / model / "model.json").write_text(json.dumps({"family": "cnn", "name": model}))
    results = {
        "ingest": {"data": {"rows_in": 120, "train": 80, "val": 20, "test": 20, "label_names": ["a", "b"],
                            "quarantined": {"label_null": 0}}, "durations_s": {"read": 1.0}, "duration_s": 12.0},
        "tune": {"tune": {"trials": 2, "completed": 1, "pruned": 1, "failed": 0, "metric": "val_accuracy",
                          "best_trial": "t0000", "best_val_accuracy": 0.8, "best_epoch": 3,
                          "best_config": {"train": {"lr": 0.003}}},
                 "trials": trials, "models": {"teacher": _model(0.88, 400_000)}, "duration_s": 300.0},
        "distill": {"distill": {"student_config": {}}, "models": {"student": _model(0.87, 100_000)},
                    "duration_s": 120.0},
        "quantize": {"quantize": {"backend": "onnx", "passed_gate": True, "metric": "accuracy"},
                     "models": {"student_int8": {**_model(0.869, 30_000), "passed_gate": True}}, "duration_s": 40.0},
        "score": {"score": {"model": "student_int8", "rows": 20, "scored": 20, "rows_per_s": 300.0,
                            "accuracy_in_spark": 0.869, "accuracy_in_process": 0.869}, "duration_s": 20.0},
    }
    fingerprints = stage_fingerprints(config, input_files={}, code="test")
    store = StageStore(run_dir)
    for stage, result in results.items():
        store.commit(stage, fingerprints[stage], result)
    summary = assemble_summary(name, results, fingerprints, {"total": 512.0}, 2**31)
    _atomic.write_json(run_dir / SUMMARY_FILE, summary)
    write_report(run_dir)
    return run_dir, summary, config


def _runs(client: MlflowClient, experiment: str = "hybrid") -> tuple[list, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _check_logged(client: MlflowClient, run_dir: Path, parent_id: str) -> None:
    """The parent's params, metrics and artifacts and each trial's child, as read back through MLflow."""
    parents, children = _runs(client)
    assert [p.info.run_id for p in parents] == [parent_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_name == "fm"
    assert parent.data.params["train.max_epochs"] == str(load_config(run_dir / "config.yaml").train.max_epochs)
    assert parent.data.params["name"] == "fm"
    metrics = parent.data.metrics
    assert metrics["teacher.test.accuracy"] == 0.88 and metrics["student.test.accuracy"] == 0.87
    assert metrics["student_int8.size_bytes"] == 30_000 and metrics["student_int8.latency_ms_per_sample"] == 0.05
    assert metrics["score.rows_per_s"] == 300.0 and metrics["score.accuracy_in_spark"] == 0.869
    assert metrics["tune.best_val_accuracy"] == 0.8 and metrics["duration_s.total"] == 512.0
    assert parent.data.tags["hybrid.shipped_model"] == "student_int8"
    assert parent.data.tags["hybrid.run_dir"] == str(run_dir.resolve())
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"teacher", "student", "student_int8", "report.html", "summary.json", "config.yaml"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent_id, "student_int8")] == ["student_int8/model.json"]
    by_trial = {c.data.tags["hybrid.trial_id"]: c for c in children}
    assert set(by_trial) == {"t0000", "t0001"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent_id for c in children)
    t0, t1 = by_trial["t0000"], by_trial["t0001"]
    assert t0.data.params == {k: str(v) for k, v in PARAMS.items()} and t1.data.params["train.lr"] == "0.1"
    assert (t0.data.tags["hybrid.status"], t1.data.tags["hybrid.status"]) == ("completed", "pruned")
    history = client.get_metric_history(t0.info.run_id, "val_accuracy")
    assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == [(1, 0.6), (2, 0.7), (3, 0.8)]
    assert len(client.get_metric_history(t1.info.run_id, "train_loss")) == 1
    assert "node_id" not in t0.data.metrics  # not a number


def test_the_default_store_is_sqlite_in_the_run_directory_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("sqlite", run_dir=Path("runs/fm")) == f"sqlite:///{tmp_path / 'runs' / 'fm' / DB_FILE}"
    assert resolve_uri("sqlite:///stores/m.db", run_dir=Path("x")) == f"sqlite:///{tmp_path / 'stores' / 'm.db'}"
    assert resolve_uri("sqlite:////abs/m.db", run_dir=Path("x")) == "sqlite:////abs/m.db"
    assert resolve_uri("http://127.0.0.1:5000", run_dir=Path("x")) == "http://127.0.0.1:5000"


@pytest.mark.parametrize(("uri", "message"), [
    ("mlruns", "a plain path is MLflow's old file store"),
    ("", "must be null \\(no tracking\\)"),
])
def test_a_bad_uri_is_one_config_error_naming_the_key(uri, message):
    with pytest.raises(ConfigError, match=f"tracking.mlflow_uri.*{message}"):
        load_config(ROOT / "configs" / "fashion_mnist.yaml", [f"tracking.mlflow_uri={uri!r}"])


def test_tracking_is_off_by_default():
    assert not load_config(ROOT / "configs" / "fashion_mnist.yaml").tracking.enabled


def test_a_run_logs_a_parent_run_and_a_child_per_trial_to_the_default_sqlite_store(tmp_path, monkeypatch):
    run_dir, summary, config = make_run(tmp_path / "runs", overrides=("tracking.mlflow_uri=sqlite",))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # nothing may land in the working directory
    lines: list[str] = []
    parent_id = log_run(config.tracking, run_dir=run_dir, summary=summary, echo=lines.append)
    assert parent_id is not None and "[track] logged: MLflow run" in lines[-1]
    assert (run_dir / DB_FILE).is_file() and list(elsewhere.iterdir()) == []
    client = MlflowClient(f"sqlite:///{run_dir / DB_FILE}")
    _check_logged(client, run_dir, parent_id)
    assert client.get_run(parent_id).info.artifact_uri.startswith((run_dir / "mlartifacts").as_uri())


def test_a_rerun_with_nothing_changed_logs_nothing_twice_and_a_redone_stage_is_a_new_run(tmp_path):
    run_dir, summary, config = make_run(tmp_path / "runs", overrides=("tracking.mlflow_uri=sqlite",))
    first = log_run(config.tracking, run_dir=run_dir, summary=summary, echo=lambda _: None)
    lines: list[str] = []
    assert log_run(config.tracking, run_dir=run_dir, summary=summary, echo=lines.append) == first
    assert "already logged" in lines[-1]
    client = MlflowClient(f"sqlite:///{run_dir / DB_FILE}")
    assert len(_runs(client)[0]) == 1 and len(_runs(client)[1]) == 2
    redone = {**summary, "stages": {**summary["stages"], "score": "0123456789ab"}}
    second = log_run(config.tracking, run_dir=run_dir, summary=redone, echo=lambda _: None)
    assert second not in (None, first)
    assert client.get_run(first).data.tags["hybrid.superseded_by"] == second
    assert len(_runs(client)[0]) == 2


def test_the_stage_metrics_are_the_numbers_of_the_summary(tmp_path):
    _, summary, _ = make_run(tmp_path / "runs")
    metrics = stage_metrics(summary)
    assert metrics["student_int8.test.macro_f1"] == 0.869 and metrics["data.test"] == 20.0
    assert metrics["peak_rss_bytes"] == 2**31 and metrics["tune.failed"] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())
    assert not any(k.startswith("compression.") for k in metrics)  # no compression search in this run
    searched = stage_metrics({**summary, "compression": {"pareto": [], "candidates": 4, "completed": 3, "failed": 1}})
    assert (searched["compression.candidates"], searched["compression.failed"]) == (4.0, 1.0)


def test_a_store_that_cannot_be_written_is_one_warning_and_the_results_stay(tmp_path):
    run_dir, summary, _ = make_run(tmp_path / "runs")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store's directory should be")
    lines: list[str] = []
    tracking = TrackingConfig(mlflow_uri=f"sqlite:///{blocked / 'sub' / 'mlflow.db'}")
    assert log_run(tracking, run_dir=run_dir, summary=summary, echo=lines.append) is None
    assert len(lines) == 1 and lines[0].startswith("[track] warning: MLflow logging to sqlite:///")
    assert "run `hybrid run` again" in lines[0]
    assert json.loads((run_dir / SUMMARY_FILE).read_text()) == summary


def test_a_server_that_does_not_answer_is_one_warning_at_once(tmp_path):
    run_dir, summary, _ = make_run(tmp_path / "runs")
    lines: list[str] = []
    tracking = TrackingConfig(mlflow_uri=f"http://127.0.0.1:{_free_port()}")
    assert log_run(tracking, run_dir=run_dir, summary=summary, echo=lines.append) is None
    assert len(lines) == 1 and "[track] warning:" in lines[0] and "ConnectionError: no answer from" in lines[0]


def test_missing_mlflow_fails_before_the_run_with_the_pip_line(tmp_path, monkeypatch):
    from hybrid.errors import MissingDependencyError

    _, _, config = make_run(tmp_path / "runs", overrides=("tracking.mlflow_uri=sqlite",))
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: find_spec and import both fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'hybrid\[mlflow\]'"):
        check_before_start(config)


def test_only_a_run_with_tracking_on_imports_mlflow(tmp_path):
    """Loading and checking a config with tracking on imports no mlflow (it is heavy); nothing else does."""
    code = ("import sys; from hybrid import cli, pipeline, tracking; from hybrid.config import load_config, "
            f"check_before_start; check_before_start(load_config({str(ROOT / 'configs' / 'fashion_mnist.yaml')!r}, "
            f"['tracking.mlflow_uri=sqlite', 'runs_dir={tmp_path}'])); print('mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "False"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` on 127.0.0.1 with a SQLite backend under tmp_path; yields its URL."""
    port = _free_port()
    exe = Path(sys.executable).with_name("mlflow")
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [str(exe), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # slow to start on a busy 2-core machine
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.slow
def test_a_run_logged_to_an_mlflow_server_reads_back_through_mlflow_client(tmp_path, mlflow_server):
    run_dir, summary, config = make_run(tmp_path / "runs", overrides=(f"tracking.mlflow_uri={mlflow_server}",))
    parent_id = log_run(config.tracking, run_dir=run_dir, summary=summary, echo=lambda _: None)
    assert parent_id is not None
    _check_logged(MlflowClient(mlflow_server), run_dir, parent_id)
    assert not (run_dir / DB_FILE).exists()
    assert any((tmp_path / "server-artifacts").rglob("report.html"))  # proxied to the server's store
