"""``runs/<name>/report.html``: one self-contained page (inline SVG, no scripts, readable offline).

Built from what the run directory already holds (``summary.json``, ``trials/*.json``,
``search_space.yaml``), so it can be regenerated at any time with :func:`write_report`.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any

from hybrid.plots import bar_chart, heatmap, line_chart, pareto_chart

log = logging.getLogger(__name__)

_CSS = """
body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td.l,th.l{text-align:left}
tr.best td{background:#eaf6ea} .failed td{color:#a00} .muted{color:#777;font-size:13px}
h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.8em}
"""


def load_trials(run_dir: Path) -> list[dict[str, Any]]:
    """Every trial record in ``run_dir/trials``, in the order Tune created them when known."""
    summary_path = run_dir / "summary.json"
    order = []
    if summary_path.is_file():
        order = [t["trial_id"] for t in json.loads(summary_path.read_text()).get("trials", [])]
    records = {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "trials").glob("*.json"))}
    ordered = [records.pop(tid) for tid in order if tid in records]
    return ordered + list(records.values())


def param_importances(run_dir: Path, trials: list[dict[str, Any]], metric: str, mode: str) -> dict[str, float]:
    """Optuna's (fANOVA) parameter importances over the trials that produced a score."""
    import optuna

    from hybrid.search_space import load_search_space

    space = load_search_space(run_dir / "search_space.yaml")
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in trials:
        value = (t.get("best") or {}).get(metric)
        params = {k: v for k, v in t["params"].items() if k in space}
        if value is None or not math.isfinite(value) or len(params) != len(space):
            continue
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value))
    if len(study.trials) < 2:
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return dict(optuna.importance.get_param_importances(study))


def _table(header: list[str], rows: list[list[Any]], *, left: int = 1, classes: list[str] | None = None) -> str:
    def cell(i: int, v: Any, tag: str) -> str:
        text = f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
        return f'<{tag}{" class=l" if i < left else ""}>{text}</{tag}>'

    out = ["<table><tr>" + "".join(cell(i, h, "th") for i, h in enumerate(header)) + "</tr>"]
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        out.append(f"<tr{cls}>" + "".join(cell(i, v, "td") for i, v in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _axes(objectives: list[str]) -> tuple[str, str, str | None]:
    """``(x, y, size)`` metrics of the Pareto chart: accuracy-like up, latency across, file size as area."""
    y = next((m for m in objectives if m.startswith("val_")), objectives[0])
    rest = [m for m in objectives if m != y]
    x = "latency_ms" if "latency_ms" in rest else rest[0]
    size = "size_bytes" if "size_bytes" in objectives and "size_bytes" not in (x, y) else None
    return x, y, size


def _pareto_section(pareto: dict[str, Any], chosen: dict[str, Any], *, title: str = "Compression: Pareto front",
                    what: str = "candidate") -> str:
    """A search's points (the compression search's candidates, or the tune's trials): the front as a chart,
    every point (excluded ones too) in a table, the chosen one marked."""
    metrics = [o["metric"] for o in pareto["objectives"]]
    placed = [(p, True) for p in pareto["front"]] + [(p, False) for p in pareto["dominated"]]
    pick = next((i for i, (p, _) in enumerate(placed) if p == chosen.get("point")), None)
    rule = chosen.get("rule")
    out = [f"<h2>{html.escape(title)}</h2><p>Objectives: "
           + ", ".join(f"{html.escape(o['metric'])} ({html.escape(o['mode'])})" for o in pareto["objectives"])
           + ("; rule <code>" + html.escape(json.dumps(rule)) + "</code>: " + html.escape(chosen.get("detail", ""))
              if rule is not None else "; " + html.escape(chosen["detail"]) if chosen.get("detail") else "") + ".</p>"]
    if len(metrics) >= 2:
        x, y, size = _axes(metrics)
        out.append(pareto_chart(
            [(str(p.get("id", i)), float(p[x]), float(p[y])) for i, (p, _) in enumerate(placed)],
            x_label=x, y_label=y, sizes=[float(p[size]) for p, _ in placed] if size else None,
            size_label=size or "", front=[i for i, (_, on) in enumerate(placed) if on], chosen=pick,
        ))
    rows = [[p.get("id", "-"), "front" if on else "dominated", *(p.get(m, "-") for m in metrics)] for p, on in placed]
    rows += [[e["point"].get("id", "-"), "excluded: " + "; ".join(e["reasons"]),
              *("-" if e["point"].get(m) is None else e["point"][m] for m in metrics)] for e in pareto["excluded"]]
    classes = ["best" if i == pick else "" for i in range(len(placed))] + ["failed"] * len(pareto["excluded"])
    out.append(_table([what, "status", *metrics], rows, left=2, classes=classes))
    return "".join(out)


def render(run_dir: Path) -> str:
    """The report's HTML for the run in ``run_dir``."""
    summary = json.loads((run_dir / "summary.json").read_text())
    tune = summary["tune"]
    metric, mode = tune["metric"], ("min" if tune["metric"] == "val_loss" else "max")
    trials = load_trials(run_dir)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>hybrid run {html.escape(summary['name'])}</title>"
             f"<style>{_CSS}</style></head><body><h1>hybrid run <code>{html.escape(summary['name'])}</code></h1>"]
    durations = summary.get("durations_s", {})
    parts.append(
        f"<p class=muted>total {durations.get('total', 0):.0f} s; peak RSS of the process tree "
        f"{summary.get('peak_rss_bytes', 0) / 2**30:.1f} GiB; stages: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in durations.items() if k != "total" and "." not in k) + "</p>"
    )

    models = summary.get("models", {})
    spans = any("exact_match" in block.get("test", {}) for block in models.values())
    first, second = ("exact_match", "f1") if spans else ("accuracy", "macro_f1")
    rows = []
    for name, block in models.items():
        test = block.get("test", {})
        rows.append([name, test.get(first, float("nan")), test.get(second, float("nan")),
                     block.get("size_bytes", "-"), block.get("latency_ms_per_sample", "-")])
    headers = ["test exact match", "test F1"] if spans else ["test accuracy", "test macro F1"]
    parts.append("<h2>Models</h2>" + _table(["model", *headers, "size (bytes)", "latency (ms/sample)"], rows))

    if tune.get("pareto"):  # several tune.objectives: the trials' front; the teacher is the best on tune.metric
        front = tune["pareto"]
        teacher = next((p for p in front["front"] + front["dominated"] if p.get("id") == tune.get("best_trial")), None)
        chosen = {"point": teacher, "detail": f"the teacher, the best trial on {metric}"} if teacher else {}
        parts.append(_pareto_section(front, chosen, title="Tune: Pareto front of the trials", what="trial"))

    compression = summary.get("compression") or {}
    if compression.get("pareto"):
        parts.append(_pareto_section(compression["pareto"], compression.get("chosen") or {}))

    data = summary.get("data") or {"rows_in": "-", "train": "-", "val": "-", "test": "-", "quarantined": {}}
    bad = {k: v for k, v in data["quarantined"].items() if v}
    parts.append(
        "<h2>Data</h2>"
        + _table(["rows in", "train", "val", "test", "quarantined"],
                 [[data["rows_in"], data["train"], data["val"], data["test"], sum(bad.values())]], left=0)
        + (_table(["rule", "rows"], [[k, v] for k, v in bad.items()]) if bad else "<p>No row broke a rule.</p>")
    )

    sign = 1 if mode == "max" else -1
    scored = [t for t in trials if (t.get("best") or {}).get(metric) is not None]
    best_id = tune.get("best_trial")
    parts.append(
        f"<h2>Search</h2><p>{tune['trials']} trials: {tune['completed']} completed, {tune['pruned']} stopped early "
        f"by ASHA, {tune['failed']} failed. Best: <code>{html.escape(str(best_id))}</code>.</p>"
    )
    history_x = list(range(1, len(trials) + 1))
    values = [(t.get("best") or {}).get(metric, float("nan")) for t in trials]
    running, best = [], -math.inf
    for v in values:
        if math.isfinite(v):
            best = max(best, sign * v)
        running.append(sign * best if math.isfinite(best) else float("nan"))
    parts.append("<h3>Optimisation history</h3>" + line_chart(
        [("trial best", history_x, values), ("best so far", history_x, running)],
        x_label="trial", y_label=metric, markers_only=["trial best"],
    ))
    curves = [(t["trial_id"], [h.get("epoch", i + 1) for i, h in enumerate(t["history"])],
               [h.get(metric, float("nan")) for h in t["history"]]) for t in trials if t["history"]]
    parts.append("<h3>Learning curves (a circle marks where a trial ended; short curves were stopped by ASHA)</h3>"
                 + line_chart(curves, x_label="epoch", y_label=metric, end_markers=True))
    try:
        importances = param_importances(run_dir, scored, metric, mode)
    except Exception as err:  # importance needs enough varied trials; the report must still render
        log.warning("parameter importances unavailable: %s", err)
        importances = {}
    parts.append("<h3>Parameter importances (Optuna fANOVA)</h3>" + (
        bar_chart(list(importances.items()), x_label="importance") if importances
        else "<p class=muted>Not enough scored trials to estimate importances.</p>"))
    keys = sorted({k for t in trials for k in t["params"]})
    ranked = sorted(trials, key=lambda t: -sign * ((t.get("best") or {}).get(metric) or -sign * math.inf))
    parts.append("<h3>Trials</h3>" + _table(
        ["trial", "status", "epochs", metric] + [k.split(".", 1)[-1] for k in keys],
        [[t["trial_id"], t["status"], t["epochs"], (t.get("best") or {}).get(metric, "-")]
         + [t["params"].get(k, "-") for k in keys] for t in ranked],
        left=2,
        classes=["best" if t["trial_id"] == best_id else ("failed" if t["status"] == "failed" else "")
                 for t in ranked],
    ))
    errors = [[t["trial_id"], t.get("error") or ""] for t in trials if t["status"] == "failed"]
    if errors:
        parts.append("<h3>Failed trials</h3>" + _table(["trial", "error"], errors, left=2))

    labels = data.get("label_names") or []
    for name, block in models.items():
        cm = block.get("test_confusion_matrix")
        if cm:
            names = labels if len(labels) == len(cm) else [str(i) for i in range(len(cm))]
            parts.append(f"<h2>Confusion matrix: {html.escape(name)} on the test set</h2>"
                         + heatmap(cm, labels=names, x_label="predicted", y_label="true"))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str | Path) -> Path:
    """Render and write ``run_dir/report.html``; returns its path."""
    run_dir = Path(run_dir)
    path = run_dir / "report.html"
    path.write_text(render(run_dir))
    return path
