"""The ``hybrid`` command as a user runs it: a subprocess, its exit status, its run directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid.artifacts import load_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist.yaml"


def run_cli(*args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hybrid", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=0.1", "unknown config key 'train.lrr' (did you mean 'lr'?)"),
        ("train.lr=-1", "train.lr must be > 0, but got -1.0"),
        ("data.path=/no/such/dir", "data.path: path '/no/such/dir' does not exist"),
        ("tune.search_space=/no/space.yaml", "tune.search_space: path '/no/space.yaml' does not exist"),
        ("model.kernel_size=4", "model.kernel_size must be a positive odd integer, but got 4"),
    ],
)
def test_bad_config_exits_1_with_one_line_naming_the_key(override, message):
    proc = run_cli("tune", str(CONFIG), "--set", override, timeout_s=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.full  # the same chain runs in the default tier on the simulated cluster (test_multinode)
def test_run_on_a_slice_of_fashion_mnist_goes_from_spark_to_scored_parquet(tmp_path):
    args = [
        "--set", "name=cli", "--set", f"runs_dir={tmp_path}",
        "--set", "data.max_train_rows=2000", "--set", "data.max_test_rows=500",
        "--set", "tune.num_samples=2", "--set", "train.max_epochs=2", "--set", "tune.n_startup_trials=2",
        "--set", "tune.time_budget_s=null", "--set", "distill.max_epochs=2",
    ]
    proc = run_cli("run", str(CONFIG), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "cli"
    summary = json.loads((run / "summary.json").read_text())

    assert summary["data"]["rows_in"] == 2500
    assert summary["data"]["train"] + summary["data"]["val"] == 2000
    assert summary["data"]["test"] == 500
    assert set(summary["data"]["quarantined"]) >= {"label_null", "pixel_count", "pixel_not_finite"}
    tune_block = summary["tune"]
    assert tune_block["trials"] == 2
    assert tune_block["completed"] + tune_block["pruned"] + tune_block["failed"] == 2
    assert set(tune_block["best_config"]) >= {"model.num_blocks", "train.lr", "train.optimizer"}
    models = summary["models"]
    assert set(models) == {"teacher", "student", "student_int8"}
    for block in models.values():
        assert set(block["test"]) >= {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
        assert block["size_bytes"] > 0 and block["latency_ms_per_sample"] > 0
    assert models["teacher"]["test"]["accuracy"] > 0.5  # chance is 0.1
    assert models["student_int8"]["size_bytes"] < models["teacher"]["size_bytes"]
    score = summary["score"]
    assert score["rows"] == 500
    # accuracy computed in Spark from the written Parquet equals the same model's in-process accuracy
    assert score["accuracy_in_spark"] == pytest.approx(score["accuracy_in_process"], abs=1e-9)
    assert set(summary["durations_s"]) >= {"ingest", "tune", "distill", "quantize", "score", "total"}
    assert summary["peak_rss_bytes"] > 500 * 2**20

    assert len(list((run / "trials").glob("*.json"))) == 2
    assert (run / "config.yaml").is_file() and (run / "search_space.yaml").is_file()
    assert (run / "report.html").read_text().count("<svg") >= 3
    model, meta = load_model(run / "teacher")
    assert meta["test_metrics"]["accuracy"] == pytest.approx(models["teacher"]["test"]["accuracy"])
    assert proc.stdout.count("[tune ") == 2  # one progress line per finished trial

    # every stage is recorded: a second run resumes and redoes nothing
    again = run_cli("run", str(CONFIG), *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already done" in again.stdout and "stages to run: none" in again.stdout
    assert json.loads((run / "summary.json").read_text())["models"] == summary["models"]

    # a changed setting redoes exactly the stages that read it, and says why
    teacher_bytes = (run / "teacher" / "model.safetensors").read_bytes()
    changed = run_cli("run", str(CONFIG), *args, "--set", "score.batch_size=64")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "[run] score: to run (score.batch_size 256 -> 64)" in changed.stdout
    assert "already done and current" in changed.stdout and "tune, distill, quantize" in changed.stdout
    for stage in ("tune", "distill", "quantize"):
        assert f"[run] {stage}: started" not in changed.stdout
    assert (run / "teacher" / "model.safetensors").read_bytes() == teacher_bytes
    assert json.loads((run / "stages" / "score.json").read_text())["inputs"]["score.batch_size"] == 64


PARETO = ROOT / "configs" / "fashion_mnist_pareto.yaml"


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.full
def test_pareto_config_searches_int8_students_and_ships_the_chosen_one(tmp_path):
    args = [
        "--set", "name=pareto", "--set", f"runs_dir={tmp_path}",
        "--set", "data.max_train_rows=1500", "--set", "data.max_test_rows=300",
        # 2 tune epochs: the tune space's warmup_epochs reaches 1.0, which needs max_epochs > 1
        "--set", "tune.num_samples=2", "--set", "train.max_epochs=2", "--set", "tune.n_startup_trials=2",
        "--set", "tune.time_budget_s=null", "--set", "distill.max_epochs=1",
        "--set", "compression.num_samples=2", "--set", "compression.n_startup_trials=2",
        "--set", "compression.time_budget_s=null",
    ]
    proc = run_cli("run", str(PARETO), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "pareto"
    summary = json.loads((run / "summary.json").read_text())
    compression = summary["compression"]
    assert compression["candidates"] == 2 and compression["completed"] == 2
    placed = compression["pareto"]["front"] + compression["pareto"]["dominated"]
    chosen = compression["chosen"]
    assert chosen["rule"] == "knee" and chosen["point"] in compression["pareto"]["front"]
    assert len(placed) + len(compression["pareto"]["excluded"]) == 2
    # the shipped student is the chosen candidate's, quantized with the chosen int8 settings
    assert summary["models"]["student"]["candidate"] == chosen["point"]["id"]
    assert summary["quantize"]["backend"] == chosen["params"]["quantize.backend"]
    assert (run / "compression_search_space.yaml").is_file()
    assert "Compression: Pareto front" in (run / "report.html").read_text()
    assert proc.stdout.count("[compress ") == 2  # one line per candidate

    # a changed compression setting redoes distill (a fresh search) and what follows, never the tune
    changed = run_cli("run", str(PARETO), *args, "--set", "compression.seed=1")
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "[run] distill: to run (compression.seed 0 -> 1)" in changed.stdout
    assert "[run] tune: started" not in changed.stdout and "starting a fresh search" in changed.stdout


SENTIMENT = ROOT / "configs" / "sentiment.yaml"
QA = ROOT / "configs" / "qa_fixture.yaml"
TINY_SPACE = ROOT / "tests" / "fixtures" / "bert_lr_only.yaml"
_TEXT_READY = (ROOT / "data" / "models" / "all-MiniLM-L6-v2" / "config.json").is_file() and (
    ROOT / "data" / "sentence_polarity" / "movieReviewSnippets_GroundTruth.txt").is_file()


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
# The same BERT chain (tokenizer, tune, a student from the teacher's layers, ONNX int8, Spark scoring) runs in
# the default tier through the QA config below; text ingest, scoring and int8 of a BERT classifier are covered
# there by tests/test_text_ray.py.
@pytest.mark.full
@pytest.mark.skipif(not _TEXT_READY, reason="demo data or model missing: run scripts/setup.sh")
def test_sentiment_config_runs_every_stage_on_a_slice_with_a_2_layer_teacher(tmp_path):
    args = [
        "--set", "name=text", "--set", f"runs_dir={tmp_path}", "--set", "data.max_train_rows=600",
        "--set", f"tune.search_space={TINY_SPACE}", "--set", "tune.num_samples=1", "--set", "tune.n_startup_trials=1",
        "--set", "train.max_epochs=1", "--set", "distill.max_epochs=1", "--set", "model.num_layers=2",
        "--set", "model.max_length=48", "--set", "tune.time_budget_s=null",
    ]
    proc = run_cli("run", str(SENTIMENT), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "text"
    summary = json.loads((run / "summary.json").read_text())
    data = summary["data"]
    assert data["rows_in"] == 600 and data["train"] + data["val"] + data["test"] == 600
    assert data["dropped"] == {"neutral_rating": 37}
    models = summary["models"]
    assert set(models) == {"teacher", "student", "student_int8"}
    teacher, _ = load_model(run / "teacher")
    student, meta = load_model(run / "student")
    assert len(teacher.encoder.encoder.layer) == 2 and len(student.encoder.encoder.layer) == 1
    assert meta["config"]["pretrained_dir"] == "encoder" and (run / "student_int8" / "encoder" / "vocab.txt").is_file()
    assert models["student_int8"]["size_bytes"] * 3 < models["teacher"]["size_bytes"]
    versus = summary["quantize"]["vs_teacher"]
    assert set(versus["latency_ms_per_sample"]) == {"teacher", "student", "student_int8"}
    score = summary["score"]
    assert score["rows"] == data["test"]
    assert score["accuracy_in_spark"] == pytest.approx(score["accuracy_in_process"], abs=1e-9)


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not _TEXT_READY, reason="demo model missing: run scripts/setup.sh")
def test_qa_fixture_config_tunes_distils_quantizes_and_scores_a_span_model_reporting_exact_match_and_f1(tmp_path):
    args = [
        "--set", "name=qa", "--set", f"runs_dir={tmp_path}", "--set", f"tune.search_space={TINY_SPACE}",
        "--set", "tune.num_samples=1", "--set", "tune.n_startup_trials=1", "--set", "train.max_epochs=1",
        "--set", "model.num_layers=2", "--set", "tune.grace_period=1", "--set", "distill.max_epochs=1",
        # One int8 backend: "auto" also builds and measures torch's (PT2E) int8, ~2 min more on a BERT for
        # what tests/test_quantize.py covers already.
        "--set", "quantize.backend=onnxruntime",
        # Every model is timed at this many rows per pass (256 by default: ~5 s a pass for the teacher here).
        "--set", "quantize.latency_batch_size=32",
        # Issue 12: MLflow tracking (the mlflow extra, which scripts/setup.sh installs) costs seconds here.
        "--set", "tracking.mlflow_uri=sqlite", "--set", "tracking.experiment=qa-test",
    ]
    proc = run_cli("run", str(QA), *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "qa"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["rows_in"] == 79
    assert sum(summary["data"][k] for k in ("train", "val", "test")) == 79
    assert summary["tune"]["metric"] == "val_f1"
    models = summary["models"]
    assert set(models) == {"teacher", "student", "student_int8"}
    for name, block in models.items():
        assert set(block["test"]) == {"exact_match", "f1", "loss"}, name
        assert 0.0 <= block["test"]["exact_match"] <= block["test"]["f1"] <= 1.0, name
    teacher, _ = load_model(run / "teacher")
    student, _ = load_model(run / "student")
    assert len(teacher.encoder.encoder.layer) == 2 and len(student.encoder.encoder.layer) == 1
    assert models["student_int8"]["size_bytes"] < models["teacher"]["size_bytes"]
    assert (run / "student_int8" / "encoder" / "vocab.txt").is_file()
    # The int8 gate compares F1 (the span task's headline), not a classifier's accuracy.
    assert summary["quantize"]["metric"] == "f1" and set(models["student_int8"]["val"]) == {"f1"}
    assert set(summary["quantize"]["vs_teacher"]["latency_ms_per_sample"]) == {"teacher", "student", "student_int8"}
    # Spark scores the held-out questions (windowed, n-best decoded in the UDF); exact match and F1 computed
    # in Spark from scores.parquet equal the shipped model's in-process figures on the same test split.
    assert "not implemented yet" not in proc.stdout
    score = summary["score"]
    assert score["rows"] == summary["data"]["test"] and score["model"] in models
    assert score["scored"] + sum(score["rejected"].values()) == score["rows"]
    for metric in ("exact_match", "f1"):
        assert score[f"{metric}_in_spark"] == pytest.approx(score[f"{metric}_in_process"], abs=1e-9), metric
    import pyarrow.parquet as pq

    scored = pq.read_table(run / "scores.parquet")
    assert {"id", "question", "context", "answers", "answer", "answer_start", "score", "error"} <= set(scored.column_names)
    assert "student_int8" in (run / "report.html").read_text()
    _check_mlflow(run, summary, proc.stdout)


def _check_mlflow(run: Path, summary: dict, stdout: str) -> None:
    """The run as MLflow's own client reads it back from the default store in the run directory."""
    from mlflow import MlflowClient

    assert "[track] logged: MLflow run" in stdout
    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qa-test").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.data.params["tune.num_samples"] == "1" and parent.data.params["model.num_layers"] == "2"
    for name, block in summary["models"].items():
        assert parent.data.metrics[f"{name}.test.f1"] == pytest.approx(block["test"]["f1"]), name
        assert parent.data.metrics[f"{name}.size_bytes"] == block["size_bytes"], name
    assert parent.data.metrics["score.rows_per_s"] == pytest.approx(summary["score"]["rows_per_s"])
    assert {"teacher", "student", "student_int8", "report.html"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert [c.data.tags["hybrid.trial_id"] for c in children] == [t["trial_id"] for t in summary["trials"]]
    child = children[0]
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params == {k: str(v) for k, v in summary["trials"][0]["params"].items()}
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_f1")] == [1]


@pytest.mark.spark
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.skipif(not _TEXT_READY, reason="demo model missing: run scripts/setup.sh")
def test_hybrid_score_takes_a_question_table_and_keeps_every_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from hybrid.artifacts import save_model
    from hybrid.models import create_model, model_config

    config = model_config("bert_qa", {"pretrained_dir": str(ROOT / "data" / "models" / "all-MiniLM-L6-v2"),
                                      "num_layers": 1, "max_length": 64, "doc_stride": 16})
    torch.manual_seed(0)
    model = save_model(tmp_path / "span", create_model("bert_qa", config=config).eval(), family="bert_qa",
                       config=config)
    context = "The ferry crossed the bay every morning from 1890 until the bridge opened in 1961, ending it."
    table = pa.table({"id": ["a", "b", "c"], "question": ["When did the bridge open?", "  ", "Who ran it?"],
                      "context": [context, context, None], "answers": [["1961"], ["1961"], ["nobody"]],
                      "source": ["x", "y", "z"]})
    pq.write_table(table, tmp_path / "questions.parquet")
    proc = run_cli("score", str(QA), "--model", str(model), "--input", str(tmp_path / "questions.parquet"),
                   "--output", str(tmp_path / "scored"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 rows (1 scored, 2 rejected" in proc.stdout and "exact match" in proc.stdout, proc.stdout
    rows = {r["id"]: r for r in pq.read_table(tmp_path / "scored").to_pylist()}
    assert set(rows["a"]) == {"id", "question", "context", "answers", "source", "answer", "answer_start", "score",
                              "error"}
    assert rows["a"]["error"] is None and rows["a"]["answer"] in context
    assert (rows["b"]["error"], rows["c"]["error"]) == ("question_empty", "context_null")
    assert rows["b"]["answer"] is None and rows["c"]["source"] == "z"
