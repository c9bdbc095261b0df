"""What a tune leaves on disk, as plain data: one JSON record per trial, and where each trial's
checkpoints live. Nothing here imports Ray or Optuna.

Layout under the run directory::

    trials/t0003.json           TrialRecord of Optuna trial number 3 (written atomically, every epoch)
    tune/fingerprint            the fingerprint of the tune these files belong to
    tune/optuna.db              Optuna's study (SQLite): every trial's params, state and value
    tune/train/t0003/epoch_NNNN Ray Train storage of trial 3 (see :mod:`hybrid.train_state`)
    tune/ray/                   Ray Tune's own experiment files (scratch: rebuilt by every attempt)
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hybrid import _atomic
from hybrid._dataclass_io import to_dict
from hybrid.errors import TrainingError
from hybrid.measure import COST_METRICS
from hybrid.train_state import MODEL_DIR, START_EPOCH, best_index

TrialStatus = Literal["running", "completed", "pruned", "failed"]
FINAL: tuple[TrialStatus, ...] = ("completed", "pruned", "failed")
_ID = re.compile(r"t(\d{4,})")
_KEEP = ("epoch", "train_loss", "val_loss", "lr", "epoch_time_s", "train_samples_per_s", START_EPOCH, "node_id",
         *COST_METRICS)


def trial_name(number: int) -> str:
    """Stable id of Optuna trial ``number``: ``t0003``."""
    return f"t{number:04d}"


def trial_number(trial_id: str) -> int | None:
    """Inverse of :func:`trial_name` (None for anything else)."""
    match = _ID.fullmatch(trial_id)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class TunePaths:
    """Where a tune keeps its files inside ``run_dir``."""

    run_dir: Path

    @property
    def tune(self) -> Path:
        return self.run_dir / "tune"

    @property
    def trials(self) -> Path:
        return self.run_dir / "trials"

    @property
    def fingerprint(self) -> Path:
        return self.tune / "fingerprint"

    @property
    def study(self) -> Path:
        return self.tune / "optuna.db"

    @property
    def train(self) -> Path:
        return self.tune / "train"

    @property
    def ray(self) -> Path:
        return self.tune / "ray"

    def record(self, trial_id: str) -> Path:
        return self.trials / f"{trial_id}.json"

    def checkpoint_model(self, trial_id: str, epoch: int) -> Path:
        """The model directory of trial ``trial_id``'s checkpoint after ``epoch``."""
        from hybrid.train import checkpoint_name

        return self.train / trial_id / checkpoint_name(epoch) / MODEL_DIR

    def wipe(self) -> None:
        """Remove everything of a tune: the fingerprint first, so a half-wiped tune never matches one."""
        self.fingerprint.unlink(missing_ok=True)
        for directory in (self.tune, self.trials):
            shutil.rmtree(directory, ignore_errors=True)


@dataclass
class TrialRecord:
    """One trial: what was sampled, how far it got and what it scored."""

    trial_id: str
    """``t<Optuna trial number>``, e.g. ``t0003``."""
    params: dict[str, Any]
    """Sampled values by dotted config key."""
    status: TrialStatus
    """``running`` while it trains; ``completed`` ran every epoch, ``pruned`` was stopped early by ASHA
    (or the time budget), ``failed`` raised."""
    epochs: int
    history: list[dict[str, float]]
    """Every finished epoch's reported metrics."""
    best: dict[str, float] = field(default_factory=dict)
    """Metrics of the trial's best epoch by the tuned metric (ties: the earlier epoch)."""
    checkpoint_path: str | None = None
    """Model directory of the best epoch's checkpoint (None for a trial without one)."""
    error: str | None = None
    duration_s: float = 0.0
    """Seconds in Tune over all attempts."""
    resumed_from: list[int] = field(default_factory=list)
    """For each time the tune was re-run while this trial was in flight: the epochs it had finished."""

    @property
    def final(self) -> bool:
        return self.status in FINAL


def error_text(error: BaseException | str) -> str:
    """The most specific line of a trial's error (Ray wraps the worker's exception in its own)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line for line in lines if "Error:" in line and not line.startswith("ray.")]
    return (ours[-1] if ours else lines[0] if lines else type(error).__name__)[:500]


def history_row(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of one reported epoch a record keeps (validation metrics, the fixed keys, and the candidate
    metrics ``latency_ms``, ``size_bytes`` and ``params`` when the search measures them)."""
    return {k: _plain(v) for k, v in metrics.items() if k in _KEEP or k.startswith("val_")}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else value


def make_record(
    trial_id: str,
    *,
    params: dict[str, Any],
    history: list[dict[str, Any]],
    status: TrialStatus | None,
    paths: TunePaths,
    metric: str,
    mode: Literal["min", "max"],
    max_epochs: int,
    error: str | None = None,
    duration_s: float = 0.0,
    resumed_from: list[int] | None = None,
) -> TrialRecord:
    """A record whose best epoch follows :func:`hybrid.train_state.best_index` (the checkpoint Ray keeps).

    ``status`` None: ``completed`` when every epoch ran, else ``pruned``.
    """
    rows = sorted((history_row(r) for r in history), key=lambda r: r.get("epoch", 0))
    epochs = int(max((r.get("epoch", 0) for r in rows), default=0))
    if status is None:
        status = "completed" if epochs >= max_epochs else "pruned"
    index = best_index(rows, metric, mode)
    best = rows[index] if index is not None else {}
    checkpoint = str(paths.checkpoint_model(trial_id, int(best["epoch"]))) if best else None
    return TrialRecord(
        trial_id=trial_id, params=dict(params), status=status, epochs=epochs, history=rows, best=dict(best),
        checkpoint_path=checkpoint, error=error, duration_s=float(duration_s), resumed_from=list(resumed_from or []),
    )


def write_record(paths: TunePaths, record: TrialRecord) -> Path:
    """Write ``trials/<id>.json`` atomically."""
    return _atomic.write_json(paths.record(record.trial_id), to_dict(record))


def read_record(path: Path) -> TrialRecord | None:
    """A record written by :func:`write_record`; None (one warning) when missing or unreadable."""
    data = _atomic.read_json(path, what="trial record")
    names = {f.name for f in dataclasses.fields(TrialRecord)}
    if not isinstance(data, dict) or not {"trial_id", "params", "status", "epochs", "history"} <= set(data):
        return None
    try:
        return TrialRecord(**{k: v for k, v in data.items() if k in names})
    except TypeError:
        return None


def read_records(paths: TunePaths) -> dict[str, TrialRecord]:
    """Every readable record under ``trials/``, by trial id."""
    if not paths.trials.is_dir():
        return {}
    _atomic.remove_debris(paths.trials)
    records = (read_record(p) for p in sorted(paths.trials.glob("t*.json")))
    return {r.trial_id: r for r in records if r is not None and trial_number(r.trial_id) is not None}


def pick_best(records: list[TrialRecord], *, metric: str, mode: Literal["min", "max"]) -> TrialRecord:
    """The trial with the best ``metric`` (ties: the lower trial number) whose checkpoint exists.

    Raises:
        TrainingError: If no trial scored (every one failed), or the best trial's checkpoint is missing.
    """
    scored = [r for r in records if isinstance(r.best.get(metric), (int, float)) and math.isfinite(r.best[metric])]
    if not scored:
        errors = "; ".join(f"{r.trial_id}: {r.error}" for r in records if r.error)[:2000]
        raise TrainingError(f"all {len(records)} trials failed; first errors: {errors}")
    sign = 1 if mode == "max" else -1
    best = max(sorted(scored, key=lambda r: r.trial_id), key=lambda r: sign * r.best[metric])
    if best.checkpoint_path is None or not Path(best.checkpoint_path).is_dir():
        raise TrainingError(
            f"trial {best.trial_id}: the checkpoint of its best epoch ({best.best.get('epoch')}) is missing at "
            f"{best.checkpoint_path}; re-run with a new run name to tune again"
        )
    return best
