"""Wire the stages into runs: start the runtime, ingest, tune, evaluate, write the run directory.

This is where side effects live (processes, files, console output); the stages it calls take
values and return values. The run directory ``runs/<name>/`` ends up holding::

    config.yaml       the resolved config (after --set overrides)
    search_space.yaml the search space used
    quarantine.parquet rejected rows with their reason (only when there are any)
    trials/<id>.json  every trial's sampled config, status and per-epoch metrics
    teacher/          the best checkpoint as a model directory (safetensors + JSON + manifest)
    summary.json      counts, best config, test metrics, durations, peak memory
    report.html       the same as a page: trial table, optimisation history, learning curves,
                      parameter importances, confusion matrix (self-contained, offline)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hybrid.artifacts import load_model, update_metadata
from hybrid.config import Config, check_paths
from hybrid.monitor import PeakRSS, StageTimer
from hybrid.report import write_report
from hybrid.search_space import dump_search_space, load_search_space

Echo = Callable[[str], None]


def prepare_run_dir(config: Config) -> Path:
    """Create the run directory and write the resolved config and search space into it."""
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (run_dir / "search_space.yaml").write_text(dump_search_space(load_search_space(config.tune.search_space)))
    return run_dir


def run_tune(config: Config, *, echo: Echo = print) -> dict[str, Any]:
    """Ingest -> tune -> evaluate the best checkpoint on the test set; returns ``summary.json``'s content.

    Raises:
        ConfigError: If an input path or the search space is invalid (before anything starts).
        DataError: If the data cannot be used.
        TrainingError: If every trial failed.
    """
    from hybrid.ingest import ingest
    from hybrid.runtime import running
    from hybrid.train import evaluate
    from hybrid.tune import tune

    check_paths(config)
    run_dir = prepare_run_dir(config)
    timer = StageTimer()
    started = time.perf_counter()
    with PeakRSS() as memory, running(config.runtime, with_spark=False) as runtime:
        with timer("spark_start"):
            runtime.start_spark(app_name=f"hybrid-{config.name}")
        echo(f"[run] Ray {runtime.cluster_resources().get('CPU', 0):.0f} CPUs, Spark on Ray up; writing {run_dir}")
        with timer("ingest"):
            data = ingest(runtime.spark, config.data, run_dir=run_dir)
        bad = {k: v for k, v in data.quarantined.items() if v}
        echo(
            f"[ingest] {data.rows_in} rows in; train {data.counts['train']}, val {data.counts['val']}, "
            f"test {data.counts['test']}; quarantined {sum(bad.values())} {bad or ''}".rstrip()
        )
        if config.runtime.release_spark_for_training:
            runtime.stop_spark()
        metadata = {"normalizer": data.normalizer.to_dict(), "label_names": list(data.label_names)}
        with timer("tune"):
            result = tune(
                config, {"train": data.train, "val": data.val}, train_rows=data.counts["train"],
                metadata=metadata, echo=echo,
            )
        with timer("evaluate"):
            teacher_dir = run_dir / "teacher"
            shutil.rmtree(teacher_dir, ignore_errors=True)
            shutil.copytree(result.best_checkpoint, teacher_dir)
            model, meta = load_model(teacher_dir)
            test = evaluate(
                model, data.test, model_name=meta["family"], num_classes=config.data.num_classes,
                batch_size=config.train.eval_batch_size,
            )
            update_metadata(teacher_dir, test_metrics=test.metrics, test_confusion_matrix=test.confusion_matrix,
                            trial_id=result.best.trial_id, params=result.best.params)
    timer.durations_s["total"] = round(time.perf_counter() - started, 3)
    summary = {
        "name": config.name,
        "data": data.summary(),
        "tune": result.summary(),
        "trials": [
            {"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs, "params": t.params,
             "best": t.best, "error": t.error}
            for t in result.trials
        ],
        "models": {
            "teacher": {
                "path": str(teacher_dir),
                "family": meta["family"],
                "config": meta["config"],
                "val": {k.removeprefix("val_"): v for k, v in result.best.best.items() if k.startswith("val_")},
                "test": test.metrics,
                "test_confusion_matrix": test.confusion_matrix,
            }
        },
        "durations_s": {**timer.durations_s, **{f"ingest.{k}": round(v, 3) for k, v in data.durations_s.items()}},
        "peak_rss_bytes": memory.peak_bytes,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_report(run_dir)
    echo(format_summary(summary))
    echo(f"report: {report}")
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The final table: trials by score, then the teacher's test metrics."""
    tune_block = summary["tune"]
    metric = tune_block["metric"]
    rows = sorted(summary["trials"], key=lambda t: -(t["best"].get(metric) or float("-inf")))
    lines = [
        "",
        f"{'trial':<12} {'status':<10} {'epochs':>6} {metric:>14}  params",
    ]
    for t in rows:
        value = t["best"].get(metric)
        score = f"{value:.4f}" if isinstance(value, float) else "-"
        params = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sorted(t["params"].items()))
        lines.append(f"{t['trial_id']:<12} {t['status']:<10} {t['epochs']:>6} {score:>14}  {params}")
    test = summary["models"]["teacher"]["test"]
    lines += [
        "",
        f"trials {tune_block['trials']}: {tune_block['completed']} completed, {tune_block['pruned']} pruned, "
        f"{tune_block['failed']} failed; best {tune_block['best_trial']}",
        "teacher on the test set: " + ", ".join(f"{k}={test[k]:.4f}" for k in
                                                ("accuracy", "macro_precision", "macro_recall", "macro_f1")),
        f"peak RSS {summary['peak_rss_bytes'] / 2**30:.1f} GiB; total {summary['durations_s']['total']:.0f} s",
    ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
