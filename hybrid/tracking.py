"""Optional MLflow tracking of a finished ``hybrid run`` (the ``tracking`` config section, off by default).

The only module that imports mlflow, and only when tracking is on. Everything is logged from the driver,
after the run's ``summary.json`` and ``report.html`` are written, from what the run directory holds:

- one parent run per state of a run directory: the resolved config as params (dotted keys), the stages'
  metrics (each model's test metrics, size and latency; the tune's best value; Spark scoring's throughput and
  metrics; stage durations; peak memory) and the shipped model directories, ``report.html``, ``summary.json``
  and ``config.yaml`` as artifacts;
- one child run per Tune trial: its sampled params and every epoch's metrics (``step`` = epoch), status
  ``FINISHED`` (completed or pruned, tag ``hybrid.status``) or ``FAILED``.

A re-run that changes nothing finds its parent run by tag (``hybrid.run_key``: the run directory and every
stage's fingerprint) and logs nothing twice; a re-run that redoes a stage is a new parent run, and the run it
replaces gets the tag ``hybrid.superseded_by``. Logging never loses a run's results: they are on disk before
it starts, and a failure (a server that does not answer within 10 s, a store that cannot be written) is one
warning line; the next ``hybrid run`` of the same config logs again (a half-logged parent run is deleted
first). A server that goes down in the middle still costs MLflow's own retries (minutes).

Trials run in other working directories and on other nodes, but nothing is logged from them, so the URI
only has to be right on the driver; relative SQLite paths are made absolute anyway.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hybrid._dataclass_io import require, show
from hybrid._yaml import read_yaml
from hybrid.errors import MissingDependencyError

DEFAULT_STORE = "sqlite"
"""``tracking.mlflow_uri`` value for a SQLite store in the run directory (``<run dir>/mlflow.db``)."""
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
"""Artifact root of an experiment hybrid creates in a SQLite store: beside the database file."""
SHIPPED = ("teacher", "student", "student_int8")
_PARAM_CHARS = 6000  # MLflow's limit on a param value
_SCHEMES = ("sqlite:", "http:", "https:", "databricks", "postgresql", "mysql", "mssql", "file:")


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking of each ``hybrid run`` (needs the ``mlflow`` extra: ``pip install 'hybrid[mlflow]'``)."""

    mlflow_uri: str | None = None
    """MLflow tracking URI; ``null``: no tracking. ``sqlite``: a SQLite store in the run directory
    (``sqlite:///<run dir>/mlflow.db``); otherwise a URI such as ``sqlite:///path/mlflow.db`` (relative paths
    are made absolute) or ``http://127.0.0.1:5000``."""
    experiment: str = "hybrid"
    """MLflow experiment the runs go to (created when missing); each parent run is named after the run."""

    def __post_init__(self) -> None:
        uri = self.mlflow_uri
        require(uri is None or (isinstance(uri, str) and uri.strip() != ""),
                f"mlflow_uri must be null (no tracking), 'sqlite' or an MLflow tracking URI, but got {show(uri)}")
        require(uri is None or uri == DEFAULT_STORE or uri.startswith(_SCHEMES),
                f"mlflow_uri must be 'sqlite' (a SQLite store in the run directory) or a URI such as "
                f"sqlite:///path/mlflow.db or http://host:5000, but got {show(uri)} (a plain path is MLflow's "
                "old file store, which MLflow 3.13+ refuses)")
        require(isinstance(self.experiment, str) and self.experiment.strip() != "",
                f"experiment must be a non-empty name, but got {show(self.experiment)}")

    @property
    def enabled(self) -> bool:
        """Whether runs are logged (``mlflow_uri`` set)."""
        return self.mlflow_uri is not None


def resolve_uri(uri: str, *, run_dir: Path) -> str:
    """The absolute tracking URI: ``sqlite`` is ``<run dir>/mlflow.db``; a relative SQLite path is made absolute
    from the working directory (Ray workers and a later ``cd`` must not move the store)."""
    if uri == DEFAULT_STORE:
        return f"sqlite:///{(run_dir / DB_FILE).resolve()}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////") and ":memory:" not in uri:
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve()}"
    return uri


_MISSING = "tracking.mlflow_uri is set but mlflow is not installed: pip install 'hybrid[mlflow]'"


def check_available() -> None:
    """Fail before a run starts, without importing mlflow, when tracking is on but mlflow is missing.

    Raises:
        MissingDependencyError: With the ``pip install`` line that fixes it.
    """
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise MissingDependencyError(_MISSING)


def _mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise MissingDependencyError(_MISSING) from exc
    return mlflow


def run_key(run_dir: Path, summary: Mapping[str, Any]) -> str:
    """What a parent run stands for: the run directory and the fingerprint of every stage in its summary."""
    state = json.dumps({"run_dir": str(run_dir.resolve()), "stages": summary.get("stages", {})}, sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()[:20]


def log_run(config: TrackingConfig, *, run_dir: Path, summary: Mapping[str, Any],
            echo: Callable[[str], None] = print) -> str | None:
    """Log a finished run to MLflow; returns the parent run's id, or None when logging failed (one warning).

    Args:
        config: The ``tracking`` section; must be enabled.
        run_dir: The run directory (``summary.json``, ``config.yaml``, ``trials/``, the model directories).
        summary: ``summary.json``'s content.
        echo: Where the one line saying where the run went (or why it did not) is printed.

    Raises:
        MissingDependencyError: If mlflow is not installed (a setup error, not a tracking failure).
    """
    if not config.enabled:
        raise ValueError("log_run needs tracking.mlflow_uri set")  # a wiring bug, not user input
    _mlflow()
    uri = resolve_uri(str(config.mlflow_uri), run_dir=run_dir)
    try:
        _probe(uri)
        run_id, new = _log(uri, config.experiment, run_dir.resolve(), summary)
    except Exception as exc:  # noqa: BLE001 -- the run's results are on disk; tracking must not fail the run
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        echo(f"[track] warning: MLflow logging to {uri} failed ({type(exc).__name__}: {first[:300]}); the results "
             f"are in {run_dir}; run `hybrid run` again with the same config to log them")
        return None
    what = "logged" if new else "already logged (nothing changed since)"
    echo(f"[track] {what}: MLflow run {run_id} in experiment {config.experiment!r} at {uri}")
    return run_id


def _log(uri: str, experiment: str, run_dir: Path, summary: Mapping[str, Any]) -> tuple[str, bool]:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, uri, experiment)
    key = run_key(run_dir, summary)
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`hybrid.run_dir_key` = '{_dir_key(run_dir)}'")
    for run in earlier:
        if run.data.tags.get("hybrid.run_key") == key and run.info.status == "FINISHED":
            return run.info.run_id, False
    for run in earlier:
        if run.data.tags.get("hybrid.run_key") == key:  # a half-logged attempt: replaced, not topped up
            client.delete_run(run.info.run_id)
    now = int(time.time() * 1000)
    tags = {"hybrid.run_dir": str(run_dir), "hybrid.run_dir_key": _dir_key(run_dir), "hybrid.run_key": key,
            "hybrid.stages": json.dumps(summary.get("stages", {}), sort_keys=True),
            "mlflow.source.name": "hybrid run", "mlflow.source.type": "JOB"}
    tags.update({f"hybrid.{k}": str(v) for k, v in _outcome_tags(summary).items()})
    parent = client.create_run(experiment_id, run_name=str(summary.get("name", run_dir.name)), tags=tags)
    pid = parent.info.run_id
    try:
        config_yaml = run_dir / "config.yaml"
        params = _flat(read_yaml(config_yaml, "run config") or {}) if config_yaml.is_file() else {}
        client.log_batch(pid, metrics=[Metric(k, v, now, 0) for k, v in stage_metrics(summary).items()],
                         params=[Param(k, _param(v)) for k, v in params.items()])
        for trial in summary.get("trials", []):
            _log_trial(client, experiment_id, parent_id=pid, run_dir=run_dir, trial=trial, now_ms=now)
        for name in SHIPPED:
            if name in summary.get("models", {}) and (run_dir / name).is_dir():
                client.log_artifacts(pid, str(run_dir / name), artifact_path=name)
        for file in ("report.html", "summary.json", "config.yaml"):
            if (run_dir / file).is_file():
                client.log_artifact(pid, str(run_dir / file))
    except BaseException:
        client.set_terminated(pid, status="FAILED")
        raise
    client.set_terminated(pid, status="FINISHED")
    for run in earlier:
        if run.data.tags.get("hybrid.run_key") != key and "hybrid.superseded_by" not in run.data.tags:
            client.set_tag(run.info.run_id, "hybrid.superseded_by", pid)
    return pid, True


def _probe(uri: str, timeout_s: float = 10.0) -> None:
    """Fail at once when an HTTP tracking server does not answer: MLflow's client retries a refused connection
    for about 4 minutes (measured) before it gives up. Any HTTP answer (even 401 or 404) counts as up."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass
    except OSError as exc:
        raise ConnectionError(f"no answer from {uri} within {timeout_s:.0f} s ({exc})") from exc


def _experiment_id(client: Any, uri: str, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # else MLflow would put artifacts under ./mlruns of the working directory
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
    return client.create_experiment(name, artifact_location=location)


def _log_trial(client: Any, experiment_id: str, *, parent_id: str, run_dir: Path, trial: Mapping[str, Any],
               now_ms: int) -> None:
    """One child run: the trial's params, every epoch's metrics (from ``trials/<id>.json``) and its status."""
    from mlflow.entities import Metric, Param

    trial_id = str(trial["trial_id"])
    record_path = run_dir / "trials" / f"{trial_id}.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    history = record.get("history") or ([trial["best"]] if trial.get("best") else [])
    tags = {"mlflow.parentRunId": parent_id, "hybrid.trial_id": trial_id, "hybrid.status": str(trial["status"])}
    if trial.get("error"):
        tags["hybrid.error"] = str(trial["error"])[:_PARAM_CHARS]
    child = client.create_run(experiment_id, run_name=trial_id, tags=tags)
    metrics = [Metric(k, float(v), now_ms, int(row.get("epoch", 0)))
               for row in history for k, v in row.items() if k != "epoch" and _number(v)]
    client.log_batch(child.info.run_id, metrics=metrics,
                     params=[Param(k, _param(v)) for k, v in trial.get("params", {}).items()])
    client.set_terminated(child.info.run_id, status="FAILED" if trial["status"] == "failed" else "FINISHED")


def stage_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The parent run's metrics from ``summary.json``: ``<model>.test.<metric>``, ``<model>.size_bytes``,
    ``<model>.latency_ms_per_sample``, ``tune.best_<metric>``, ``compression.candidates`` (with a compression
    search), ``score.rows_per_s`` and ``score.<metric>_in_spark``, ``duration_s.<stage>``, ``data.<split>`` rows
    and ``peak_rss_bytes``."""
    out: dict[str, float] = {}
    for name, block in summary.get("models", {}).items():
        for metric, value in block.get("test", {}).items():
            out[f"{name}.test.{metric}"] = value
        for key in ("size_bytes", "latency_ms_per_sample"):
            out[f"{name}.{key}"] = block.get(key)
    tune = summary.get("tune") or {}
    out.update({f"tune.{k}": v for k, v in tune.items() if k.startswith("best_") and k != "best_config"})
    out.update({f"tune.{k}": tune.get(k) for k in ("trials", "completed", "pruned", "failed")})
    compression = summary.get("compression") or {}  # its candidates are not child runs (yet): their counts
    out.update({f"compression.{k}": compression.get(k) for k in ("candidates", "completed", "failed")})
    score = summary.get("score") or {}
    out.update({f"score.{k}": v for k, v in score.items() if k in ("rows", "scored", "rows_per_s") or "_in_" in k})
    out.update({f"duration_s.{k}": v for k, v in (summary.get("durations_s") or {}).items()})
    data = summary.get("data") or {}
    out.update({f"data.{k}": data.get(k) for k in ("rows_in", "train", "val", "test")})
    out["peak_rss_bytes"] = summary.get("peak_rss_bytes")
    return {k: float(v) for k, v in out.items() if _number(v)}


def _outcome_tags(summary: Mapping[str, Any]) -> dict[str, Any]:
    tags = {"best_trial": (summary.get("tune") or {}).get("best_trial"),
            "shipped_model": (summary.get("score") or {}).get("model"),
            "int8_passed_gate": (summary.get("quantize") or {}).get("passed_gate")}
    return {k: v for k, v in tags.items() if v is not None}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # no NaN


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:_PARAM_CHARS]


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    return dict(_walk(tree, prefix))


def _walk(tree: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            yield from _walk(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _dir_key(run_dir: Path) -> str:
    """A run directory as a tag value safe inside an MLflow filter string (paths may hold quotes)."""
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:20]
