"""Wire the stages into runs: ingest -> tune -> distill -> quantize -> score -> report.

This module only wires: each stage's logic lives in its own module (:mod:`hybrid.ingest`,
:mod:`hybrid.tune`, :mod:`hybrid.distill`, :mod:`hybrid.quantize`, :mod:`hybrid.score`) and returns a
typed result; here they are called in order, their results recorded, and the run directory kept
truthful (:mod:`hybrid.rundir`):

- one process per run directory at a time (a file lock);
- each stage records a fingerprint of what it read (:mod:`hybrid.fingerprint`): the config keys, the
  input files, the search space, the code version and its upstream stage. A re-run redoes exactly
  the stages whose fingerprint changed (and the stages after them), and says which and why;
- a stage's record is its commit point, written atomically after its outputs; the records of a stage
  and of every later stage are removed before it starts.

The run directory holds::

    config.yaml        the resolved config of the latest invocation (after --set overrides)
    search_space.yaml  the search space used (compression_search_space.yaml: the compression search's)
    quarantine.parquet rejected rows with their reason (only when there are any)
    tune/              Ray Tune/Train storage and the Optuna study of the current search (resumable)
    trials/<id>.json   every trial of the current search: sampled config, status, per-epoch metrics
    train/             the student's Ray Train storage, one folder per attempt
    teacher/           the best trial's model (safetensors + JSON + SHA-256 manifest)
    student/           the distilled student (same format); with a compression search, the chosen candidate's
    compression/       the compression search: its study, candidate records, students and int8 models
    student_int8/      the int8 student (ONNX or torch.export file + JSON + manifest)
    scores.parquet     the Spark batch-scoring output of the test table
    stages/*.json      each finished stage's fingerprint and results
    summary.json       everything above as numbers; report.html the same as a page
    mlflow.db          with ``tracking.mlflow_uri: sqlite``: the MLflow store (mlartifacts/: its artifacts)
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from hybrid import _atomic
from hybrid._dataclass_io import to_dict
from hybrid.config import Config, check_before_start
from hybrid.errors import ClusterFitError, HybridError
from hybrid.fingerprint import Fingerprint, input_files, stage_fingerprints
from hybrid.handoff import materialize
from hybrid.monitor import PeakRSS, StageTimer
from hybrid.placement import StagePlacement, cluster_block, epoch_nodes
from hybrid.report import write_report
from hybrid.rundir import SUMMARY_FILE, StageStore, locked, shipped_choice
from hybrid.search_space import check_search_space, dump_search_space, load_search_space

if TYPE_CHECKING:
    from hybrid.ingest import IngestResult
    from hybrid.runtime import Runtime

Echo = Callable[[str], None]
Stage = Literal["tune", "distill", "quantize", "score"]
STAGES: tuple[Stage, ...] = ("tune", "distill", "quantize", "score")
_NEEDS_DATA = {"tune", "distill", "quantize"}


class StageOrderError(HybridError):
    """A stage was asked for before the stage it reads from was done."""


def prepare_run_dir(config: Config) -> Path:
    """Create the run directory and write the resolved config and search space into it (atomically).

    Returns its absolute path: every path derived from it may be opened by a Ray worker on another node, in
    another working directory.
    """
    run_dir = config.run_dir.resolve()
    (run_dir / "stages").mkdir(parents=True, exist_ok=True)
    space = load_search_space(config.tune.search_space)
    check_search_space(space, config)  # a bad key or edge value fails now, not after ingest
    _atomic.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    _atomic.write_text(run_dir / "search_space.yaml", dump_search_space(space))
    if config.compression.search_space is not None:
        compression = load_search_space(config.compression.search_space, key="compression.search_space")
        _atomic.write_text(run_dir / "compression_search_space.yaml", dump_search_space(compression))
    return run_dir


@dataclass
class _Run:
    """What the stages of one invocation share."""

    config: Config
    run_dir: Path
    runtime: Runtime | None
    """None when no stage runs (nothing is started)."""
    echo: Echo
    timer: StageTimer
    store: StageStore
    fingerprints: dict[str, Fingerprint]
    restart: bool = False
    """``--restart``: redo, never resume, what runs."""
    data: IngestResult | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)

    def dataset(self) -> IngestResult:
        """The ingested Ray datasets (ingest ran before any stage that needs them)."""
        if self.data is None:
            raise RuntimeError("a stage that needs the data ran before ingest")  # a wiring bug, not user error
        return self.data

    def spark(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("Spark was asked for in a run with no stage to run")  # a wiring bug
        with self.timer("spark_start"):
            return self.runtime.start_spark(app_name=f"hybrid-{self.config.name}")

    def begin(self, stage: Stage) -> None:
        """Before ``stage`` touches its outputs: its record and every later one stop counting."""
        self.store.invalidate_from(stage)
        for later in STAGES[STAGES.index(stage):]:
            self.results.pop(later, None)

    def commit(self, stage: str, result: dict[str, Any]) -> None:
        """``stage``'s outputs are in place: record them with its fingerprint."""
        self.results[stage] = result
        self.store.commit(stage, self.fingerprints[stage], result)


def plan(
    store: StageStore, fingerprints: dict[str, Fingerprint], requested: Sequence[str], *, restart: bool
) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """Which requested stages must run and why, and the recorded results of every current stage.

    A stage runs when it was never run, its record is unreadable, its fingerprint changed, or a stage
    before it runs (its input changes). ``restart`` redoes every requested stage.

    Raises:
        StageOrderError: If a requested stage reads from a stage that is neither current nor requested.
    """
    pending: dict[str, list[str]] = {}
    kept: dict[str, dict[str, Any]] = {}
    for stage in ("ingest", *STAGES):  # ingest is never requested: it runs whenever a stage needs the data
        result, reasons = store.result_if_current(stage, fingerprints[stage])
        upstream = next(iter(pending), None)
        if stage in requested and restart:
            pending[stage] = ["--restart"]
        elif stage in requested and result is None:
            pending[stage] = reasons
        elif stage in requested and upstream is not None:
            pending[stage] = [f"its input stage {upstream} is redone"]
        elif result is not None and upstream is None:
            kept[stage] = result
        if stage in pending and stage != "tune":
            before = STAGES[STAGES.index(stage) - 1]  # type: ignore[arg-type]
            if before not in pending and before not in kept:
                why = "; ".join(store.result_if_current(before, fingerprints[before])[1])
                raise StageOrderError(f"{stage} needs the {before} stage first ({before}: {why}); run "
                                      f"`hybrid run CONFIG` to do every stage that is not done")
    return pending, kept


def run(config: Config, *, stages: Sequence[Stage] = STAGES, restart: bool = False, echo: Echo = print) -> dict[str, Any]:
    """Run ``stages`` (in pipeline order) for ``config``; returns ``summary.json``'s content.

    Stages whose recorded fingerprint is current are kept unless ``restart``; the others run.

    Raises:
        ConfigError: If an input path or the search space is invalid (before anything starts).
        RunLockedError: If another process works in the same run directory.
        StageOrderError: If a stage is asked for before the stage it reads from.
        DataError: If the data cannot be used.
        TrainingError: If every trial failed.
    """
    check_before_start(config)
    with locked(config.run_dir):
        return _run_locked(config, stages=stages, restart=restart, echo=echo)


def _run_locked(config: Config, *, stages: Sequence[Stage], restart: bool, echo: Echo) -> dict[str, Any]:
    from hybrid.runtime import running

    run_dir = prepare_run_dir(config)
    for folder in (run_dir, run_dir / "stages"):
        _atomic.remove_debris(folder)
    store = StageStore(run_dir)
    fingerprints = stage_fingerprints(config, input_files=input_files(config))
    supported = _supported_stages(config)
    unsupported = [s for s in stages if s not in supported]
    if unsupported:
        echo(f"[run] {config.model_name} models run only {', '.join(supported)}: {', '.join(unsupported)} "
             f"not run (not implemented yet for the {config.model_name} family)")
    requested = [s for s in STAGES if s in stages and s in supported]
    pending, kept = plan(store, fingerprints, requested, restart=restart)
    for warning in store.warnings:
        echo(f"[run] warning: {warning}")
    done = [s for s in requested if s in kept]
    if done:
        echo(f"[run] already done and current in {run_dir}: {', '.join(done)} (use --restart to redo)")
    for stage, reasons in pending.items():
        echo(f"[run] {stage}: to run ({'; '.join(reasons)})")
    timer = StageTimer()
    started = time.perf_counter()
    # Nothing to run: no Ray, no Spark, just the summary and report from the records.
    runtime_ctx = running(config.runtime, with_spark=False) if pending else contextlib.nullcontext(None)
    with PeakRSS() as memory, runtime_ctx as runtime:
        ctx = _Run(config=config, run_dir=run_dir, runtime=runtime, echo=echo, timer=timer, store=store,
                   fingerprints=fingerprints, restart=restart, results=dict(kept))
        if runtime is not None:
            echo(f"[run] Ray {runtime.cluster_resources().get('CPU', 0):.0f} CPUs; stages to run: {', '.join(pending)}")
            _check_training_fits(config, pending)
        else:
            echo("[run] stages to run: none")
        if _NEEDS_DATA & set(pending):
            _ingest(ctx)
        for stage in STAGES:
            if stage not in pending:
                continue
            if stage == "tune" and restart:
                shutil.rmtree(run_dir / "tune", ignore_errors=True)  # a fresh search, not a resumed one
            ctx.begin(stage)
            echo(f"[run] {stage}: started")
            where = StagePlacement()
            where.start()
            with timer(stage):
                result = _STAGE_FUNCS[stage](ctx)
            ctx.commit(stage, {**result, "duration_s": timer.durations_s[stage], "placement": where.stop()})
    timer.durations_s["total"] = round(time.perf_counter() - started, 3)
    summary = _summary(ctx, memory.peak_bytes)
    _atomic.write_json(run_dir / SUMMARY_FILE, summary)
    report = write_report(run_dir)
    echo(format_summary(summary))
    echo(f"report: {report}")
    if config.tracking.enabled:  # after summary and report are on disk: a tracking failure loses nothing
        from hybrid.tracking import log_run

        log_run(config.tracking, run_dir=run_dir, summary=summary, echo=echo)
    return summary


def _check_training_fits(config: Config, pending: Sequence[str]) -> None:
    """Fail before ingest, not after it, if no node can ever hold a training worker that tune or distill asks for.

    The stages check again with what is free when they start; this is the same check against the nodes'
    totals, done while failing still costs nothing.
    """
    from hybrid import cluster

    stage = next((s for s in ("tune", "distill") if s in pending), None)
    if stage is None:
        return
    cluster.check_workers_fit(stage, config.train, what="each training worker")


def _supported_stages(config: Config) -> tuple[Stage, ...]:
    from hybrid.models import get_family

    family = get_family(config.model_name)
    return tuple(stage for stage in STAGES if stage in family.stages)


def headline(test: dict[str, Any]) -> str:
    """The one-line result of a model's test metrics (accuracy, or exact match and F1)."""
    if "accuracy" in test:
        return f"accuracy {test['accuracy']:.4f}"
    return f"exact match {test['exact_match']:.4f}, F1 {test['f1']:.4f}"


def run_tune(config: Config, *, echo: Echo = print) -> dict[str, Any]:
    """``hybrid tune``: ingest -> tune -> evaluate the best checkpoint on the test set."""
    return run(config, stages=("tune",), echo=echo)


def _ingest(ctx: _Run) -> None:
    from hybrid.ingest import ingest
    from hybrid.ingest_checks import check_trainable_search

    where = StagePlacement()
    where.start()
    spark = ctx.spark()
    # Ingest is deterministic: running it again (to rebuild the in-memory Ray datasets) changes no
    # later stage's input unless its fingerprint changed, and then theirs changed too.
    ctx.store.path("ingest").unlink(missing_ok=True)
    ctx.echo("[run] ingest: started")
    with ctx.timer("ingest"):
        tokenizer_dir = getattr(ctx.config.model, "pretrained_dir", None)
        data = ingest(spark, ctx.config.data, run_dir=ctx.run_dir, tokenizer_dir=tokenizer_dir)
    bad = {k: v for k, v in data.quarantined.items() if v}
    ctx.echo(
        f"[ingest] {data.rows_in} rows in; train {data.counts['train']}, val {data.counts['val']}, "
        f"test {data.counts['test']}; quarantined {sum(bad.values())} {bad or ''}".rstrip()
    )
    for warning in data.warnings:
        ctx.echo(f"[ingest] warning: {warning}")
    # Every trial must train at least one step: checked against the largest batch the search can sample.
    check_trainable_search(data.counts, train=ctx.config.train, space=load_search_space(ctx.config.tune.search_space))
    if ctx.config.runtime.release_spark_for_training and ctx.runtime is not None:
        ctx.runtime.stop_spark()
    elif ctx.runtime is not None:
        _check_cpu_left_beside_spark(ctx.config.runtime)
    # Read the handed-off splits into Ray now that Spark's executors no longer hold the CPUs the read needs.
    with ctx.timer("ingest.materialize"):
        read = materialize({"train": data.train, "val": data.val, "test": data.test})
    data.train, data.val, data.test = read["train"], read["val"], read["test"]
    ctx.data = data
    ctx.commit("ingest", {"data": data.summary(), "durations_s": data.durations_s,
                          "duration_s": ctx.timer.durations_s["ingest"], "placement": where.stop()})


def _check_cpu_left_beside_spark(runtime: Any) -> None:
    """With Spark kept up, its executors must leave a CPU for Ray Data's reads (or they wait forever)."""
    import ray

    held = runtime.spark_executors * runtime.spark_executor_cores
    total = ray.cluster_resources().get("CPU", 0.0)
    if total - held < 1:
        raise ClusterFitError(
            f"ingest: runtime.release_spark_for_training is false and Spark's {runtime.spark_executors} executors "
            f"hold {held} of the cluster's {total:.0f} CPUs, leaving none for reading the splits into Ray; "
            "release Spark or use fewer executor cores")


def _metadata(data: IngestResult) -> dict[str, Any]:
    meta: dict[str, Any] = {"label_names": list(data.label_names)}
    if data.normalizer is not None:
        meta["normalizer"] = data.normalizer.to_dict()
    if data.max_seq_length is not None:
        meta["max_seq_length"] = data.max_seq_length
    return meta


def _adopt(ctx: _Run, checkpoint: Path, name: str) -> tuple[Path, Any, dict[str, Any]]:
    """Copy a checkpoint's model directory (verified against its manifest; the training state beside it is
    not shipped) to ``run_dir/name`` and measure it: ``(directory, report, metadata)``."""
    from hybrid.artifacts import WEIGHTS, copy_model, load_model
    from hybrid.measure import measure_model

    data = ctx.dataset()
    directory = ctx.run_dir / name
    copy_model(checkpoint, directory)
    model, meta = load_model(directory)
    report = measure_model(model, directory, data.test, num_classes=ctx.config.data.num_classes,
                           eval_batch_size=ctx.config.train.eval_batch_size,
                           file_bytes=(directory / WEIGHTS).stat().st_size,
                           latency_batch=ctx.config.quantize.latency_batch_size)
    return directory, report, meta


def _stage_tune(ctx: _Run) -> dict[str, Any]:
    from hybrid.artifacts import update_metadata
    from hybrid.tune import tune

    data = ctx.dataset()
    result = tune(ctx.config, {"train": data.train, "val": data.val}, train_rows=data.counts["train"],
                  metadata=_metadata(data), run_dir=ctx.run_dir.resolve(),
                  fingerprint=ctx.fingerprints["tune"].digest, echo=ctx.echo)
    teacher_dir, report, meta = _adopt(ctx, result.best_checkpoint, "teacher")
    update_metadata(teacher_dir, test_metrics=report.test, test_confusion_matrix=report.test_confusion_matrix,
                    trial_id=result.best.trial_id, params=result.best.params)
    block = {**report.block(), "path": str(teacher_dir), "family": meta["family"], "config": meta["config"],
             "val": {k.removeprefix("val_"): v for k, v in result.best.best.items() if k.startswith("val_")}}
    ctx.echo(f"[tune] teacher test {headline(block['test'])}")
    return {
        "tune": result.summary(),
        "trials": [{"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs, "params": t.params,
                    "best": t.best, "error": t.error, "nodes": epoch_nodes(t.history)} for t in result.trials],
        "models": {"teacher": block},
    }


def _stage_distill(ctx: _Run) -> dict[str, Any]:
    from hybrid.artifacts import update_metadata
    from hybrid.distill import distill

    if ctx.config.compression.searching:
        return _stage_compress(ctx)
    data = ctx.dataset()
    # One Ray Train storage per attempt: the same inputs resume a killed attempt, other inputs start
    # afresh, and no earlier attempt's better checkpoint can win.
    attempt = f"student-{ctx.fingerprints['distill'].digest[:12]}"
    storage = ctx.run_dir.resolve() / "train"
    if storage.is_dir():
        for old in storage.iterdir():
            if old.name != attempt or ctx.restart:
                shutil.rmtree(old, ignore_errors=True)
    result = distill(ctx.run_dir / "teacher", {"train": data.train, "val": data.val}, config=ctx.config,
                     train_rows=data.counts["train"], metadata=_metadata(data), storage_dir=storage / attempt,
                     echo=ctx.echo)
    student_dir, report, meta = _adopt(ctx, result.checkpoint, "student")
    update_metadata(student_dir, test_metrics=report.test, distill=to_dict(ctx.config.distill))
    block = {**report.block(), "path": str(student_dir), "family": meta["family"], "config": meta["config"],
             "val": meta["val_metrics"]}
    ctx.echo(f"[distill] student test {headline(block['test'])}")
    return {"models": {"student": block}, "distill": result.summary()}


def _stage_compress(ctx: _Run) -> dict[str, Any]:
    """The distill stage as a compression search (:mod:`hybrid.compress`): the chosen candidate's float student
    becomes ``run_dir/student``; its ``quantize.*`` values reach the quantize stage through this stage's result."""
    from hybrid.artifacts import update_metadata
    from hybrid.compress import CandidatePaths, search
    from hybrid.search_space import apply_params

    data = ctx.dataset()
    if ctx.restart:
        CandidatePaths(ctx.run_dir.resolve()).wipe()
    result = search(ctx.config, {"train": data.train, "val": data.val}, teacher_dir=ctx.run_dir / "teacher",
                    train_rows=data.counts["train"], metadata=_metadata(data), run_dir=ctx.run_dir.resolve(),
                    fingerprint=ctx.fingerprints["distill"].digest, echo=ctx.echo)
    chosen = apply_params(ctx.config, result.chosen.params)
    student_dir, report, meta = _adopt(ctx, result.chosen_checkpoint, "student")
    update_metadata(student_dir, test_metrics=report.test, distill=to_dict(chosen.distill),
                    compression_candidate=result.chosen.trial_id)
    block = {**report.block(), "path": str(student_dir), "family": meta["family"], "config": meta["config"],
             "val": meta["val_metrics"], "candidate": result.chosen.trial_id}
    ctx.echo(f"[distill] compression search chose {result.chosen.trial_id}: student test {headline(block['test'])}")
    return {"models": {"student": block}, "compression": result.summary(),
            "distill": {"student_config": meta["config"], "candidate": result.chosen.trial_id}}


def quantize_config(config: Config, results: dict[str, dict[str, Any]]) -> Any:
    """The quantize stage's settings: ``quantize``, with the chosen candidate's ``quantize.*`` values when the
    distill stage ran a compression search (so the candidate's int8 is what ships)."""
    from hybrid.compress import chosen_params
    from hybrid.search_space import apply_params

    params = {k: v for k, v in chosen_params(results.get("distill", {}).get("compression", {})).items()
              if k.startswith("quantize.")}
    return apply_params(config, params).quantize if params else config.quantize


def _stage_quantize(ctx: _Run) -> dict[str, Any]:
    from hybrid.quantize import quantize_student

    data = ctx.dataset()
    config = ctx.config
    qcfg = quantize_config(config, ctx.results)
    result = quantize_student(
        ctx.run_dir / "student", ctx.run_dir / "teacher", {"train": data.train, "val": data.val, "test": data.test},
        config=qcfg, num_classes=config.data.num_classes, eval_batch_size=config.train.eval_batch_size,
        out_dir=ctx.run_dir / "student_int8", echo=ctx.echo,
    )
    return {"quantize": result.summary(), "models": {"student_int8": result.model_block()}}


def shipped_model(run_dir: Path, config: Config, results: dict[str, dict[str, Any]]) -> tuple[str, Path]:
    """The model ``score`` uses: the configured one, or for ``auto`` the int8 student if it passed the gate."""
    choice = shipped_choice(config.score.model, results)
    return choice, run_dir / choice


def _stage_score(ctx: _Run) -> dict[str, Any]:
    from hybrid.ingest import TEST_TABLE
    from hybrid.score import data_layout, score_to_parquet

    config = ctx.config
    name, model_dir = shipped_model(ctx.run_dir, config, ctx.results)

    if config.data.modality in ("text", "qa"):
        source = ctx.run_dir / "data" / TEST_TABLE
    elif config.data.source == "fashion_mnist":
        source = ctx.run_dir / "data" / "fashion_mnist_test.parquet"
    else:
        source = Path(str(config.data.test_path))
    output = ctx.run_dir / "scores.parquet"
    # the test table as ingest read it: the same pixel columns, in the same order
    result = score_to_parquet(ctx.spark(), source.resolve(), model_dir.resolve(), output.resolve(),
                              batch_size=config.score.batch_size, mode="overwrite", **data_layout(config.data))
    stage = {"tune": "tune", "student": "distill", "student_int8": "quantize"}.get(name, "tune")
    test = ctx.results.get(stage, {}).get("models", {}).get(name, {}).get("test", {})
    in_process = {metric: test.get(metric) for metric in result.metrics}
    figures = "; ".join(f"{metric.replace('_', ' ')} computed in Spark from {output.name}: {_fmt4(value)} "
                        f"(in-process: {_fmt4(in_process[metric])})" for metric, value in result.metrics.items())
    ctx.echo(f"[score] {result.rows} rows scored in Spark with {name} at {result.rows_per_s:.0f} rows/s; {figures}")
    return {"score": {"model": name, **result.summary(),
                      **{f"{metric}_in_process": value for metric, value in in_process.items()}}}


def _fmt4(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


_STAGE_FUNCS: dict[str, Callable[[_Run], dict[str, Any]]] = {
    "tune": _stage_tune, "distill": _stage_distill, "quantize": _stage_quantize, "score": _stage_score,
}


def _summary(ctx: _Run, peak_rss: int) -> dict[str, Any]:
    return assemble_summary(ctx.config.name, ctx.results, ctx.fingerprints, ctx.timer.durations_s, peak_rss)


def assemble_summary(
    name: str, results: dict[str, dict[str, Any]], fingerprints: dict[str, Fingerprint],
    durations_s: dict[str, float], peak_rss: int,
) -> dict[str, Any]:
    """``summary.json``'s content from the stage results of a run (committed or just run).

    Args:
        name: The run's name.
        results: Stage results by stage name, as committed in the stage records.
        fingerprints: Every stage's fingerprint (only those with a result are listed).
        durations_s: What this invocation timed (stages, ``spark_start``, ``total``); it wins over recorded times.
        peak_rss: Peak resident memory of the process tree, in bytes.
    """
    summary: dict[str, Any] = {"name": name, "models": {}}
    summary["data"] = results.get("ingest", {}).get("data")
    summary["stages"] = {stage: fingerprints[stage].digest[:12] for stage in results if stage in fingerprints}
    for stage in STAGES:
        block = results.get(stage, {})
        for key, value in block.items():
            if key in ("duration_s", "placement"):
                continue
            if key == "models":
                summary["models"].update(value)
            else:
                summary[key] = value
    durations = {s: r["duration_s"] for s, r in results.items() if "duration_s" in r}  # resumed stages too
    durations.update(durations_s)
    for key, value in results.get("ingest", {}).get("durations_s", {}).items():
        durations[f"ingest.{key}"] = round(value, 3)
    summary["durations_s"] = durations
    summary["cluster"] = cluster_block({s: r["placement"] for s in ("ingest", *STAGES)
                                        if "placement" in (r := results.get(s, {}))}, summary.get("trials", []))
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
        figures = ", ".join(f"{key.removesuffix('_in_spark').replace('_', ' ')} in Spark {_fmt4(value)}"
                            for key, value in s.items() if key.endswith("_in_spark"))
        lines.append(f"score: {s['rows']} rows in Spark with {s['model']}, {s['rows_per_s']:.0f} rows/s, {figures}")
    lines.append(f"peak RSS {summary['peak_rss_bytes'] / 2**30:.1f} GiB; total {summary['durations_s']['total']:.0f} s")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
