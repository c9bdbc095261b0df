"""Wire the stages into runs: ingest -> tune -> distill -> quantize -> score -> report.

This is where side effects live (processes, files, console output); the stages it calls take
values and return values. Each stage writes its outputs and ``stages/<stage>.json`` into the run
directory, so ``hybrid run`` resumes where a previous run stopped (ingest is re-run whenever a
stage that trains or measures still needs the Ray datasets). The run directory holds::

    config.yaml        the resolved config (after --set overrides)
    search_space.yaml  the search space used
    quarantine.parquet rejected rows with their reason (only when there are any)
    trials/<id>.json   every trial's sampled config, status and per-epoch metrics
    teacher/           the best trial's checkpoint (safetensors + JSON + SHA-256 manifest)
    student/           the distilled student (same format)
    student_int8/      the int8 student (ONNX or torch.export file + JSON + manifest)
    scores.parquet     the Spark batch-scoring output of the test table
    stages/*.json      each finished stage's results
    summary.json       everything above as numbers; report.html the same as a page
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hybrid.artifacts import load_model, update_metadata
from hybrid.config import Config, check_paths
from hybrid.monitor import PeakRSS, StageTimer
from hybrid.report import write_report
from hybrid.search_space import check_search_space, dump_search_space, load_search_space

Echo = Callable[[str], None]
Stage = Literal["tune", "distill", "quantize", "score"]
STAGES: tuple[Stage, ...] = ("tune", "distill", "quantize", "score")
_NEEDS_DATA = {"tune", "distill", "quantize"}
LATENCY_BATCH = 256


def prepare_run_dir(config: Config) -> Path:
    """Create the run directory and write the resolved config and search space into it."""
    run_dir = config.run_dir
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    space = load_search_space(config.tune.search_space)
    check_search_space(space, config)  # a bad key or edge value fails now, not after ingest
    (run_dir / "search_space.yaml").write_text(dump_search_space(space))
    return run_dir


@dataclass
class _Run:
    """What the stages of one invocation share."""

    config: Config
    run_dir: Path
    runtime: Any
    echo: Echo
    timer: StageTimer
    data: Any = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def stage_file(self, stage: str) -> Path:
        return self.run_dir / "stages" / f"{stage}.json"

    def load_done(self, stage: str) -> dict[str, Any] | None:
        path = self.stage_file(stage)
        return json.loads(path.read_text()) if path.is_file() else None

    def finish(self, stage: str, result: dict[str, Any]) -> None:
        self.results[stage] = result
        self.stage_file(stage).write_text(json.dumps(result, indent=2) + "\n")
        if stage in STAGES:  # what later stages made from this stage's old outputs is stale now
            for later in STAGES[STAGES.index(stage) + 1 :]:
                self.stage_file(later).unlink(missing_ok=True)
                self.results.pop(later, None)

    def spark(self) -> Any:
        with self.timer("spark_start"):
            return self.runtime.start_spark(app_name=f"hybrid-{self.config.name}")


def run(config: Config, *, stages: Sequence[Stage] = STAGES, restart: bool = False, echo: Echo = print) -> dict[str, Any]:
    """Run ``stages`` (in pipeline order) for ``config``; returns ``summary.json``'s content.

    Stages already finished in the run directory are skipped unless ``restart``.

    Raises:
        ConfigError: If an input path or the search space is invalid (before anything starts).
        DataError: If the data cannot be used.
        TrainingError: If every trial failed.
    """
    from hybrid.runtime import running

    check_paths(config)
    run_dir = prepare_run_dir(config)
    if restart:
        for stage in stages:
            (run_dir / "stages" / f"{stage}.json").unlink(missing_ok=True)
    timer = StageTimer()
    started = time.perf_counter()
    with PeakRSS() as memory, running(config.runtime, with_spark=False) as runtime:
        ctx = _Run(config=config, run_dir=run_dir, runtime=runtime, echo=echo, timer=timer)
        supported = _supported_stages(config)
        unsupported = [s for s in stages if s not in supported]
        if unsupported:
            echo(f"[run] {config.model_name} models stop after tuning: {', '.join(unsupported)} not run "
                 "(distilling, quantizing and Spark scoring of span models are not implemented yet)")
        pending = [s for s in STAGES if s in stages and s in supported and ctx.load_done(s) is None]
        for stage in ("ingest", *STAGES):  # the last ingest's counts stand until ingest runs again
            done = ctx.load_done(stage)
            if done is not None:
                ctx.results[stage] = done
        skipped = [s for s in stages if s in supported and s not in pending]
        if skipped:
            echo(f"[run] already done in {run_dir}: {', '.join(skipped)} (use --restart to redo)")
        echo(f"[run] Ray {runtime.cluster_resources().get('CPU', 0):.0f} CPUs; stages to run: {', '.join(pending) or 'none'}")
        if _NEEDS_DATA & set(pending):
            _ingest(ctx)
        for stage in pending:
            with timer(stage):
                result = _STAGE_FUNCS[stage](ctx)
            ctx.finish(stage, {**result, "duration_s": timer.durations_s[stage]})
    timer.durations_s["total"] = round(time.perf_counter() - started, 3)
    summary = _summary(ctx, memory.peak_bytes)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    report = write_report(run_dir)
    echo(format_summary(summary))
    echo(f"report: {report}")
    return summary


def _supported_stages(config: Config) -> tuple[Stage, ...]:
    from hybrid.models import get_family

    return ("tune",) if get_family(config.model_name).task == "spans" else STAGES


def headline(test: dict[str, Any]) -> str:
    """The one-line result of a model's test metrics (accuracy, or exact match and F1)."""
    if "accuracy" in test:
        return f"accuracy {test['accuracy']:.4f}"
    return f"exact match {test['exact_match']:.4f}, F1 {test['f1']:.4f}"


def run_tune(config: Config, *, echo: Echo = print) -> dict[str, Any]:
    """``hybrid tune``: ingest -> tune -> evaluate the best checkpoint on the test set."""
    return run(config, stages=("tune",), restart=True, echo=echo)


def _ingest(ctx: _Run) -> None:
    from hybrid.ingest import ingest

    spark = ctx.spark()
    with ctx.timer("ingest"):
        tokenizer_dir = getattr(ctx.config.model, "pretrained_dir", None)
        data = ingest(spark, ctx.config.data, run_dir=ctx.run_dir, tokenizer_dir=tokenizer_dir)
    bad = {k: v for k, v in data.quarantined.items() if v}
    ctx.echo(
        f"[ingest] {data.rows_in} rows in; train {data.counts['train']}, val {data.counts['val']}, "
        f"test {data.counts['test']}; quarantined {sum(bad.values())} {bad or ''}".rstrip()
    )
    if ctx.config.runtime.release_spark_for_training:
        ctx.runtime.stop_spark()
    ctx.data = data
    ctx.finish("ingest", {"data": data.summary(), "durations_s": data.durations_s,
                          "duration_s": ctx.timer.durations_s["ingest"]})


def _metadata(ctx: _Run) -> dict[str, Any]:
    data = ctx.data
    meta: dict[str, Any] = {"label_names": list(data.label_names)}
    if data.normalizer is not None:
        meta["normalizer"] = data.normalizer.to_dict()
    if data.max_seq_length is not None:
        meta["max_seq_length"] = data.max_seq_length
    return meta


def _shipped_metadata(directory: Path) -> dict[str, Any]:
    """What the scorer needs from a model's ``model.json`` besides the model (preprocessing, names)."""
    from hybrid.artifacts import read_metadata

    meta = read_metadata(directory)
    return {k: meta[k] for k in ("normalizer", "label_names", "max_seq_length") if k in meta}


def _measure_model(ctx: _Run, model: Any, *, directory: Path, file_bytes: int) -> dict[str, Any]:
    """Test metrics, size and latency (batch 256, all cores) of the float or int8 model saved in ``directory``."""
    import torch

    from hybrid.artifacts import model_collate
    from hybrid.models import batch_inputs, get_family
    from hybrid.quantize import latency_ms_per_sample
    from hybrid.train import evaluate

    meta = json.loads((directory / "model.json").read_text())
    family, collate = meta["family"], model_collate(directory, meta)
    test = evaluate(model, ctx.data.test, model_name=family, num_classes=ctx.config.data.num_classes,
                    batch_size=ctx.config.train.eval_batch_size, collate=collate,
                    max_answer_length=int(meta["config"].get("max_answer_length", 30)))
    columns = get_family(family).input_columns
    sample = ctx.data.test.take_batch(LATENCY_BATCH, batch_format="numpy")
    inputs = batch_inputs(sample, columns, collate)
    with torch.no_grad():
        latency = latency_ms_per_sample(model, inputs, batch_size=LATENCY_BATCH, threads=os.cpu_count() or 1)
    return {"test": test.metrics, "test_confusion_matrix": test.confusion_matrix, "size_bytes": file_bytes,
            "latency_ms_per_sample": latency}


def _adopt_checkpoint(ctx: _Run, checkpoint: Path, name: str) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Copy a float checkpoint to ``run_dir/name`` and measure it: ``(directory, metadata, summary block)``."""
    from hybrid.artifacts import WEIGHTS

    directory = ctx.run_dir / name
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(checkpoint, directory)
    model, meta = load_model(directory)
    block = _measure_model(ctx, model, directory=directory, file_bytes=(directory / WEIGHTS).stat().st_size)
    return directory, meta, block


def _stage_tune(ctx: _Run) -> dict[str, Any]:
    from hybrid.tune import tune

    config, data = ctx.config, ctx.data
    result = tune(config, {"train": data.train, "val": data.val}, train_rows=data.counts["train"],
                  metadata=_metadata(ctx), echo=ctx.echo)
    teacher_dir, meta, block = _adopt_checkpoint(ctx, result.best_checkpoint, "teacher")
    update_metadata(teacher_dir, test_metrics=block["test"], test_confusion_matrix=block["test_confusion_matrix"],
                    trial_id=result.best.trial_id, params=result.best.params)
    block.update(path=str(teacher_dir), family=meta["family"], config=meta["config"],
                 val={k.removeprefix("val_"): v for k, v in result.best.best.items() if k.startswith("val_")})
    ctx.echo(f"[tune] teacher test {headline(block['test'])}")
    return {
        "tune": result.summary(),
        "trials": [{"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs, "params": t.params,
                    "best": t.best, "error": t.error} for t in result.trials],
        "models": {"teacher": block},
    }


def _stage_distill(ctx: _Run) -> dict[str, Any]:
    import dataclasses

    import ray

    from hybrid._dataclass_io import to_dict
    from hybrid.artifacts import read_metadata
    from hybrid.distill import add_teacher_logits, student_config
    from hybrid.models import get_family
    from hybrid.train import LoopSpec, build_trainer, checkpoint_dir

    config, data = ctx.config, ctx.data
    teacher_dir = ctx.run_dir / "teacher"
    teacher = read_metadata(teacher_dir)
    family = teacher["family"]
    student = student_config(family, teacher["config"], config.distill.student,
                             width_multiplier=config.distill.width_multiplier, teacher_dir=teacher_dir)
    train_cfg = dataclasses.replace(
        config.train, **{k.split(".", 1)[1]: v for k, v in teacher.get("params", {}).items() if k.startswith("train.")}
    )
    if config.distill.max_epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, max_epochs=config.distill.max_epochs)
    # One student, nothing beside it: give its workers every free CPU rather than a trial's share.
    free = int(ray.available_resources().get("CPU", 0)) // train_cfg.num_workers
    train_cfg = dataclasses.replace(train_cfg, cpus_per_worker=max(train_cfg.cpus_per_worker, free))
    t0 = time.perf_counter()
    train = add_teacher_logits(data.train, teacher_dir, input_columns=get_family(family).input_columns,
                               batch_size=config.train.eval_batch_size,
                               num_cpus=max(1, int(ray.available_resources().get("CPU", 1))))
    logits_s = time.perf_counter() - t0
    changed = {k: v for k, v in to_dict(student).items() if teacher["config"].get(k) != v}
    ctx.echo(f"[distill] teacher logits for {data.counts['train']} rows in {logits_s:.1f} s; training the student "
             f"({', '.join(f'{k}={v}' for k, v in changed.items())}) for {train_cfg.max_epochs} epochs")
    spec = LoopSpec(
        model_name=family, model=to_dict(student), train=to_dict(train_cfg), num_classes=config.data.num_classes,
        train_rows=data.counts["train"], metadata=_metadata(ctx),
        distill={"alpha": config.distill.alpha, "temperature": config.distill.temperature},
    )
    result = build_trainer(spec, {"train": train, "val": data.val}, storage_path=ctx.run_dir / "train",
                           name="student", metric=config.tune.metric, mode=config.tune.mode).fit()
    if result.error is not None:
        raise result.error
    best = result.best_checkpoints[0][0] if result.best_checkpoints else result.checkpoint
    student_dir, meta, block = _adopt_checkpoint(ctx, checkpoint_dir(best), "student")
    update_metadata(student_dir, test_metrics=block["test"], distill=to_dict(config.distill))
    block.update(path=str(student_dir), family=family, config=meta["config"], val=meta["val_metrics"])
    ctx.echo(f"[distill] student test {headline(block['test'])}")
    return {"models": {"student": block}, "distill": {"teacher_logits_s": logits_s, "train": to_dict(train_cfg),
                                                       "student_config": meta["config"]}}


def _stage_quantize(ctx: _Run) -> dict[str, Any]:
    from hybrid.artifacts import model_collate
    from hybrid.models import get_family
    from hybrid.quantize import quantize, save_quantized
    from hybrid.train import evaluate

    config, data = ctx.config, ctx.data
    student_dir, teacher_dir = ctx.run_dir / "student", ctx.run_dir / "teacher"
    model, meta = load_model(student_dir)
    teacher, _ = load_model(teacher_dir)
    family = meta["family"]
    # The gate's reference: the teacher's accuracy on the validation split, measured here as the int8 will be.
    reference = evaluate(teacher, data.val, model_name=family, num_classes=config.data.num_classes,
                         collate=model_collate(teacher_dir)).metrics["accuracy"]
    columns = get_family(family).input_columns
    collate = model_collate(student_dir, meta)
    result = quantize(
        model, data.train.iter_torch_batches(batch_size=256, collate_fn=collate), config.quantize,
        eval_batches=data.val.iter_torch_batches(batch_size=1024, collate_fn=collate), reference_accuracy=reference,
        input_columns=columns,
    )
    out = {"quantize": result.summary()}
    int8_dir = ctx.run_dir / "student_int8"
    shutil.rmtree(int8_dir, ignore_errors=True)
    int8_dir.mkdir(parents=True)
    for asset in student_dir.iterdir():  # files beside the weights (a tokenizer) travel with the int8 model
        if asset.is_dir():
            shutil.copytree(asset, int8_dir / asset.name)
    save_quantized(int8_dir, result.model, family=family, config=meta["config"], **_shipped_metadata(student_dir))
    block = _measure_model(ctx, result.model, directory=int8_dir, file_bytes=result.model.size_bytes)
    block.update(path=str(int8_dir), family=family, backend=result.backend, passed_gate=result.passed_gate,
                 val={"accuracy": result.candidates[result.backend].accuracy})
    out["models"] = {"student_int8": block}
    out["quantize"]["vs_teacher"] = _side_by_side(
        ctx, {"teacher": teacher, "student": model, "student_int8": result.model}, collate, columns,
        sizes={"teacher": (teacher_dir / "model.safetensors").stat().st_size,
               "student": (student_dir / "model.safetensors").stat().st_size,
               "student_int8": result.model.size_bytes},
    )
    verdict = "passed" if result.passed_gate else "FAILED: the float student will be shipped instead"
    ctx.echo(
        f"[quantize] {result.backend} int8: val accuracy {result.candidates[result.backend].accuracy:.4f} vs teacher "
        f"{reference:.4f} (gate: >= {config.quantize.threshold(reference):.4f}) {verdict}; "
        f"{result.speedup:.1f}x faster, {result.size_ratio:.1f}x smaller than the float student"
    )
    versus = out["quantize"]["vs_teacher"]
    ctx.echo(f"[quantize] side by side at batch {LATENCY_BATCH} (ms/sample): " + ", ".join(
        f"{name} {versus['latency_ms_per_sample'][name]:.3f}" for name in versus["latency_ms_per_sample"])
        + f"; int8 student vs teacher: {versus['speedup']['student_int8']:.1f}x faster, "
        f"{versus['size_ratio']['student_int8']:.1f}x smaller")
    return out


def _side_by_side(
    ctx: _Run, models: dict[str, Any], collate: Any, columns: Sequence[str], *, sizes: dict[str, int], rounds: int = 3
) -> dict[str, Any]:
    """Latency of ``models`` on the same validation rows, timed round robin (best of ``rounds``), so that
    the ratios are not skewed by the machine's load changing between stages; sizes and ratios to the teacher."""
    import torch

    from hybrid.models import batch_inputs
    from hybrid.quantize import latency_ms_per_sample

    sample = ctx.data.val.take_batch(LATENCY_BATCH, batch_format="numpy")
    inputs = batch_inputs(sample, columns, collate)
    best = dict.fromkeys(models, float("inf"))
    for _ in range(rounds):
        for name, model in models.items():
            with torch.no_grad():
                ms = latency_ms_per_sample(model, inputs, batch_size=LATENCY_BATCH, repeats=2,
                                           threads=os.cpu_count() or 1)
            best[name] = min(best[name], ms)
    return {
        "latency_ms_per_sample": best,
        "size_bytes": sizes,
        "speedup": {name: best["teacher"] / ms for name, ms in best.items()},
        "size_ratio": {name: sizes["teacher"] / size for name, size in sizes.items()},
    }


def shipped_model(run_dir: Path, config: Config, results: dict[str, dict[str, Any]]) -> tuple[str, Path]:
    """The model ``score`` uses: the configured one, or for ``auto`` the int8 student if it passed the gate."""
    choice = config.score.model
    if choice == "auto":
        int8 = results.get("quantize", {}).get("models", {}).get("student_int8", {})
        choice = "student_int8" if int8.get("passed_gate") else "student"
    return choice, run_dir / choice


def _stage_score(ctx: _Run) -> dict[str, Any]:
    from hybrid.score import score_to_parquet

    config = ctx.config
    name, model_dir = shipped_model(ctx.run_dir, config, ctx.results)
    from hybrid.ingest import TEST_TABLE

    if config.data.modality == "text":
        source = ctx.run_dir / "data" / TEST_TABLE
    elif config.data.source == "fashion_mnist":
        source = ctx.run_dir / "data" / "fashion_mnist_test.parquet"
    else:
        source = Path(str(config.data.test_path))
    output = ctx.run_dir / "scores.parquet"
    result = score_to_parquet(ctx.spark(), source.resolve(), model_dir.resolve(), output.resolve(),
                              batch_size=config.score.batch_size, mode="overwrite")
    stage = {"tune": "tune", "student": "distill", "student_int8": "quantize"}.get(name, "tune")
    in_process = ctx.results.get(stage, {}).get("models", {}).get(name, {}).get("test", {}).get("accuracy")
    ctx.echo(f"[score] {result.rows} rows scored in Spark with {name} at {result.rows_per_s:.0f} rows/s; accuracy "
             f"computed in Spark from {output.name}: {result.accuracy:.4f} (in-process: {in_process:.4f})")
    return {"score": {"model": name, **result.summary(), "accuracy_in_process": in_process}}


_STAGE_FUNCS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "tune": _stage_tune, "distill": _stage_distill, "quantize": _stage_quantize, "score": _stage_score,
}


def _summary(ctx: _Run, peak_rss: int) -> dict[str, Any]:
    results = ctx.results
    summary: dict[str, Any] = {"name": ctx.config.name, "models": {}}
    summary["data"] = results.get("ingest", {}).get("data")
    for stage in STAGES:
        block = results.get(stage, {})
        for key, value in block.items():
            if key == "duration_s":
                continue
            if key == "models":
                summary["models"].update(value)
            else:
                summary[key] = value
    durations = {s: r["duration_s"] for s, r in results.items() if "duration_s" in r}  # resumed stages too
    durations.update(ctx.timer.durations_s)
    for key, value in results.get("ingest", {}).get("durations_s", {}).items():
        durations[f"ingest.{key}"] = round(value, 3)
    summary["durations_s"] = durations
    summary["peak_rss_bytes"] = peak_rss
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The final tables: trials by score, then every model side by side."""
    lines = [""]
    tune_block = summary.get("tune")
    if tune_block:
        metric = tune_block["metric"]
        rows = sorted(summary.get("trials", []), key=lambda t: -(t["best"].get(metric) or float("-inf")))
        lines.append(f"{'trial':<12} {'status':<10} {'epochs':>6} {metric:>14}  params")
        for t in rows:
            value = t["best"].get(metric)
            score = f"{value:.4f}" if isinstance(value, float) else "-"
            params = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in sorted(t["params"].items()))
            lines.append(f"{t['trial_id']:<12} {t['status']:<10} {t['epochs']:>6} {score:>14}  {params}")
        lines += ["", f"trials {tune_block['trials']}: {tune_block['completed']} completed, {tune_block['pruned']} "
                      f"pruned, {tune_block['failed']} failed; best {tune_block['best_trial']}", ""]
    if any("accuracy" in block["test"] for block in summary["models"].values()):
        lines.append(f"{'model':<14} {'accuracy':>9} {'macro P':>8} {'macro R':>8} {'macro F1':>8} {'bytes':>10} "
                     f"{'ms/sample':>10}")
    for name, block in summary["models"].items():
        t = block["test"]
        if "accuracy" not in t:  # span model
            lines.append(f"{name:<14} test {headline(t)}; {block.get('size_bytes', 0)} bytes, "
                         f"{block.get('latency_ms_per_sample', 0):.4f} ms/window")
            continue
        lines.append(f"{name:<14} {t['accuracy']:>9.4f} {t['macro_precision']:>8.4f} {t['macro_recall']:>8.4f} "
                     f"{t['macro_f1']:>8.4f} {block.get('size_bytes', 0):>10} {block.get('latency_ms_per_sample', 0):>10.4f}")
    if "score" in summary:
        s = summary["score"]
        lines.append(f"score: {s['rows']} rows in Spark with {s['model']}, {s['rows_per_s']:.0f} rows/s, "
                     f"accuracy in Spark {s['accuracy_in_spark']:.4f}")
    lines.append(f"peak RSS {summary['peak_rss_bytes'] / 2**30:.1f} GiB; total {summary['durations_s']['total']:.0f} s")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
