"""Finding runs: ``hybrid runs`` lists a runs directory, ``hybrid show RUN`` prints one run.

Only the run directory's files are read; nothing is started and nothing heavy is imported (no torch, Ray
or Spark), so both commands answer in well under a second.

What a run has done comes from its stage records (``stages/<stage>.json``, :mod:`hybrid.rundir`): they are
the run's commit points, so a run killed half-way shows exactly the stages it finished, with their figures.
``summary.json`` adds what only the end of an invocation knows (its wall time, peak memory); it may be
missing (the run was killed) or stale (a later invocation was killed after removing records it was about to
redo), and then the records win. A file that cannot be read is named in the run's notes, never a traceback.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybrid.errors import HybridError
from hybrid.fingerprint import STAGE_ORDER
from hybrid.rundir import SUMMARY_FILE, StageStore, shipped_choice

UNKNOWN = "—"
_MODEL_STAGE = {"teacher": "tune", "student": "distill", "student_int8": "quantize"}
"""Which stage writes each model's block."""


class RunNotFoundError(HybridError):
    """``hybrid show`` was given a name or path that is not a run directory."""


@dataclass(frozen=True)
class RunInfo:
    """What a run directory tells about its run, read without starting anything."""

    name: str
    """The directory's name (the config's ``name``)."""
    path: Path
    """The run directory."""
    updated: float | None
    """Modification time (epoch seconds) of its newest config, stage record or summary; None when it has none."""
    stages: tuple[str, ...]
    """Stages with a committed record, in pipeline order."""
    results: dict[str, dict[str, Any]]
    """Each done stage's committed result (the stage records' ``result``)."""
    summary: dict[str, Any] | None
    """``summary.json`` when it is readable."""
    score_model: str
    """``score.model`` of the run's config (``auto`` when the config cannot be read)."""
    notes: tuple[str, ...] = field(default=())
    """Files that exist but could not be read, each naming the file."""

    @property
    def models(self) -> dict[str, dict[str, Any]]:
        """The model blocks of the done stages (teacher, student, student_int8), in pipeline order."""
        out: dict[str, dict[str, Any]] = {}
        for stage in self.stages:
            models = self.results[stage].get("models")
            if isinstance(models, dict):
                out.update({k: v for k, v in models.items() if isinstance(v, dict)})
        return out

    @property
    def metric(self) -> str | None:
        """The family's headline test metric (``accuracy``, or ``f1`` for span models); None before tune."""
        for block in self.models.values():
            test = block.get("test")
            if isinstance(test, dict):
                return "accuracy" if "accuracy" in test else "f1" if "f1" in test else None
        return None

    @property
    def shipped(self) -> str | None:
        """The model ``score`` used, or before score the one it would ship; None when that model is not made yet."""
        scored = self.results.get("score", {}).get("score")
        if isinstance(scored, dict) and isinstance(scored.get("model"), str):
            return scored["model"]
        name = shipped_choice(self.score_model, self.results)
        return name if name in self.models else None

    def test_value(self, model: str | None) -> float | None:
        """``model``'s test value of :attr:`metric`, or None when unknown."""
        if model is None or self.metric is None:
            return None
        value = (self.models.get(model, {}).get("test") or {}).get(self.metric)
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def stage_time_s(self) -> float:
        """Seconds spent in the done stages, from their records."""
        return sum(float(t) for r in self.results.values() if isinstance(t := r.get("duration_s"), (int, float)))

    @property
    def wall_s(self) -> tuple[float | None, bool]:
        """``(seconds, complete)``: the last invocation's wall time from ``summary.json``, or without a current
        summary the time of the stages it finished (``complete`` False: a killed run's last stage is lost).

        A summary is current when it lists the stages that have records; one left by an earlier invocation of
        a run that was killed later lists more.
        """
        summary = self.summary or {}
        total = (summary.get("durations_s") or {}).get("total")
        if isinstance(total, (int, float)) and set(summary.get("stages") or ()) == set(self.stages):
            return float(total), True
        return (self.stage_time_s, False) if self.stages else (None, False)


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` looks like a run directory (a config, stage records or a summary in it)."""
    return path.is_dir() and any((path / p).exists() for p in ("config.yaml", "stages", SUMMARY_FILE))


def read_run(run_dir: str | Path) -> RunInfo:
    """Read what ``run_dir`` holds; never raises for missing or unreadable files (they go to ``notes``)."""
    run_dir = Path(run_dir)
    store = StageStore(run_dir)
    results: dict[str, dict[str, Any]] = {}
    for stage in STAGE_ORDER:
        record = store.record(stage)
        if record is not None:
            results[stage] = record["result"]
    notes = [w.replace("; the stage will be redone", "") for w in store.warnings]
    summary, note = _read_summary(run_dir / SUMMARY_FILE)
    if note:
        notes.append(note)
    times = [p.stat().st_mtime for p in (run_dir / "config.yaml", run_dir / SUMMARY_FILE,
                                          *(store.path(s) for s in STAGE_ORDER)) if p.is_file()]
    return RunInfo(name=run_dir.name, path=run_dir, updated=max(times, default=None), stages=tuple(results),
                   results=results, summary=summary, score_model=_score_model(run_dir / "config.yaml"),
                   notes=tuple(notes))


def _read_summary(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"unreadable summary: {path} ({type(err).__name__})"
    if not isinstance(data, dict):
        return None, f"unreadable summary: {path} (not a JSON object)"
    return data, None


def _score_model(config_path: Path) -> str:
    """``score.model`` of the resolved config the run wrote, ``auto`` (the default) when it cannot tell."""
    import yaml  # PyYAML alone: hybrid.config would import torch and Ray

    try:
        score = (yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("score") or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        return "auto"
    choice = score.get("model", "auto") if isinstance(score, dict) else "auto"
    return choice if isinstance(choice, str) else "auto"


def find_runs(runs_dir: str | Path) -> list[RunInfo]:
    """Every run directory directly under ``runs_dir``, newest first (runs with no dated file last).

    Raises:
        HybridError: If ``runs_dir`` is not a directory.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise HybridError(f"runs directory {str(runs_dir)!r} must exist, but it does not "
                          "(pass --runs-dir DIR, the runs_dir of your config)")
    runs = [read_run(p) for p in sorted(runs_dir.iterdir()) if not p.name.startswith(".") and is_run_dir(p)]
    return sorted(runs, key=lambda r: -(r.updated or 0.0))


def resolve_run(run: str, runs_dir: str | Path) -> Path:
    """The run directory ``run`` names: a run name under ``runs_dir``, or a path to a run directory.

    Raises:
        RunNotFoundError: Naming ``run`` and ``runs_dir``, with the close names under ``runs_dir`` if any.
    """
    runs_dir = Path(runs_dir)
    for candidate in (runs_dir / run, Path(run)):
        if is_run_dir(candidate):
            return candidate
    names = [p.name for p in runs_dir.iterdir() if is_run_dir(p)] if runs_dir.is_dir() else []
    close = difflib.get_close_matches(run, names, n=3, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else ""
    where = (f"in runs directory {str(runs_dir)!r}" if runs_dir.is_dir()
             else f"(runs directory {str(runs_dir)!r} does not exist)")
    raise RunNotFoundError(f"no run {run!r} {where}, and {run!r} is not a run directory itself{hint} "
                           "(`hybrid runs` lists the runs; --runs-dir picks another runs directory)")


def metric_label(metric: str | None) -> str:
    """``accuracy`` or ``F1``, as a column shows it."""
    return {"f1": "F1", None: UNKNOWN}.get(metric, str(metric).replace("_", " "))


def fmt_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 12 s``, ``1 h 05 min``; the unknown mark for None."""
    if seconds is None:
        return UNKNOWN
    s = round(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def fmt_time(epoch_s: float | None) -> str:
    """Local ``YYYY-MM-DD HH:MM``; the unknown mark for None."""
    return UNKNOWN if epoch_s is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch_s))


def _fmt_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return UNKNOWN if value is None else str(value).lower()
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[str]], *, right: frozenset[int] = frozenset()) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells).rstrip()

    return [line(header), *(line(r) for r in rows)]


def format_runs(runs: list[RunInfo], runs_dir: str | Path) -> str:
    """The ``hybrid runs`` table: one line per run, newest first as given."""
    if not runs:
        return f"no runs in {runs_dir}"
    rows = []
    for r in runs:
        wall, complete = r.wall_s
        shipped = r.shipped
        value = r.test_value(shipped)
        rows.append([
            r.name, fmt_time(r.updated), ",".join(r.stages) or UNKNOWN, metric_label(r.metric),
            _fmt_value(r.test_value("teacher")), f"{_fmt_value(value)} {shipped}" if shipped else UNKNOWN,
            ("" if complete or wall is None else ">= ") + fmt_duration(wall), "; ".join(r.notes),
        ])
    return "\n".join(_table(["name", "date", "stages done", "metric", "teacher", "shipped", "wall", "notes"],
                            rows, right=frozenset({4, 6})))


def format_run(run: RunInfo) -> str:
    """The ``hybrid show`` page: the run's state, data, search, models and stage times as plain-text tables."""
    wall, complete = run.wall_s
    memory = (run.summary or {}).get("peak_rss_bytes")
    lines = [f"run      {run.name}  ({run.path})",
             f"updated  {fmt_time(run.updated)}",
             f"stages   {', '.join(run.stages) or 'none done'}"
             + (f"; not done: {', '.join(s for s in STAGE_ORDER if s not in run.stages)}"
                if 0 < len(run.stages) < len(STAGE_ORDER) else ""),
             f"wall     {fmt_duration(wall)}" + (" (last invocation" if complete else " (the stages done; the run "
                                                   "did not finish")
             + (f"; peak RSS {memory / 2**30:.1f} GiB)" if isinstance(memory, (int, float)) else ")")]
    for note in run.notes:
        lines.append(f"note     {note}")
    data = run.results.get("ingest", {}).get("data")
    if isinstance(data, dict):
        bad = {k: v for k, v in (data.get("quarantined") or {}).items() if v}
        lines.append(f"data     {data.get('rows_in', UNKNOWN)} rows in; train {data.get('train', UNKNOWN)}, "
                     f"val {data.get('val', UNKNOWN)}, test {data.get('test', UNKNOWN)}; quarantined "
                     f"{sum(bad.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in bad.items())})" if bad else ""))
    tune = run.results.get("tune", {}).get("tune")
    if isinstance(tune, dict):
        metric = tune.get("metric")
        best = tune.get(f"best_{metric}")
        lines.append(f"search   {tune.get('trials', UNKNOWN)} trials: {tune.get('completed', UNKNOWN)} completed, "
                     f"{tune.get('pruned', UNKNOWN)} stopped early, {tune.get('failed', UNKNOWN)} failed; best "
                     f"{tune.get('best_trial', UNKNOWN)} ({metric} {_fmt_value(best)})")
    models = run.models
    if models:
        spans = run.metric == "f1"
        keys = ("exact_match", "f1") if spans else ("accuracy", "macro_f1")
        rows = [[name, *(_fmt_value((block.get("test") or {}).get(k)) for k in keys),
                 _fmt_value(block.get("size_bytes")), _fmt_value(block.get("latency_ms_per_sample")),
                 "yes" if name == run.shipped else ""] for name, block in models.items()]
        header = ["model", *(["test exact match", "test F1"] if spans else ["test accuracy", "test macro F1"]),
                  "bytes", "ms/sample", "shipped"]
        lines += ["", *_table(header, rows, right=frozenset({1, 2, 3, 4}))]
    quantize = run.results.get("quantize", {}).get("quantize")
    if isinstance(quantize, dict):
        lines.append(f"int8     {quantize.get('backend', UNKNOWN)}; gate on {quantize.get('metric', UNKNOWN)} "
                     f"{'passed' if quantize.get('passed_gate') else 'failed'}")
    score = run.results.get("score", {}).get("score")
    if isinstance(score, dict):
        figures = ", ".join(f"{k.removesuffix('_in_spark').replace('_', ' ')} {_fmt_value(v)}"
                            for k, v in score.items() if k.endswith("_in_spark"))
        lines.append(f"scored   {score.get('rows', UNKNOWN)} rows in Spark with {score.get('model', UNKNOWN)}"
                     + (f": {figures}" if figures else ""))
    times = [[s, fmt_duration(t if isinstance(t := run.results[s].get("duration_s"), (int, float)) else None)]
             for s in run.stages]
    if times:
        lines += ["", *_table(["stage", "time"], times, right=frozenset({1}))]
    report = run.path / "report.html"
    if report.is_file():
        lines += ["", f"report   {report}"]
    return "\n".join(lines)
