"""Tune: Ray Tune with Optuna's TPE proposing trials and ASHA stopping the weak ones early.

Each trial is a function that builds and fits a ``TorchTrainer`` (Ray Train V2) and forwards its
reports to Tune with ``TuneReportCallback``. The trial itself reserves no CPU (only a little
memory), so each trial's training workers get the CPUs. A trial that raises (a diverged loss, an
invalid sampled config) is recorded as failed and the search goes on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hybrid._dataclass_io import to_dict
from hybrid.config import Config
from hybrid.errors import TrainingError
from hybrid.search_space import apply_params, check_search_space, load_search_space
from hybrid.train import LoopSpec, build_trainer

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

TrialStatus = Literal["completed", "pruned", "failed"]
_TRIAL_MEMORY_BYTES = 256 * 1024**2  # the trial actor only waits on its trainer
_PARAM_PREFIX = "params."


@dataclass
class TrialRecord:
    """One trial: what was sampled, how far it got and what it scored."""

    trial_id: str
    params: dict[str, Any]
    """Sampled values by dotted config key."""
    status: TrialStatus
    """``completed`` ran every epoch, ``pruned`` was stopped early by ASHA (or the time budget)."""
    epochs: int
    history: list[dict[str, float]]
    """Every epoch's reported metrics."""
    best: dict[str, float] = field(default_factory=dict)
    """Metrics of the trial's best epoch by the tuned metric."""
    checkpoint_path: str | None = None
    """Checkpoint of the best epoch (None for a failed trial)."""
    error: str | None = None
    duration_s: float = 0.0


@dataclass
class TuneResult:
    """All trials and the winner."""

    trials: list[TrialRecord]
    best: TrialRecord
    metric: str
    mode: str

    @property
    def best_checkpoint(self) -> Path:
        """Directory of the best checkpoint (a hybrid model directory)."""
        if self.best.checkpoint_path is None:
            raise TrainingError("the best trial has no checkpoint")
        return Path(self.best.checkpoint_path)

    def counts(self) -> dict[str, int]:
        """Trials by status."""
        out = {"trials": len(self.trials), "completed": 0, "pruned": 0, "failed": 0}
        for trial in self.trials:
            out[trial.status] += 1
        return out

    def summary(self) -> dict[str, Any]:
        """The ``tune`` block of ``summary.json``."""
        return {
            **self.counts(),
            "metric": self.metric,
            "best_trial": self.best.trial_id,
            "best_config": self.best.params,
            f"best_{self.metric}": self.best.best.get(self.metric),
            "best_epoch": self.best.best.get("epoch"),
        }


def default_concurrency(*, cpus: float, gpus: float, cpus_per_trial: int, gpus_per_trial: int) -> int:
    """How many trials fit at once in the free resources (at least one)."""
    fits = math.floor(cpus / cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial:
        fits = min(fits, math.floor(gpus / gpus_per_trial))
    return max(1, fits)


def _run_trial(
    params: dict[str, Any],
    *,
    config: Config,
    spec_fields: dict[str, Any],
    datasets: dict[str, Any],
    storage_path: str,
) -> None:
    """Tune trainable: fit one ``TorchTrainer`` with the sampled ``params`` applied."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    quiet_ray_data()
    trial_config = apply_params(config, params)
    spec = LoopSpec(
        model_name=trial_config.model_name,
        model=to_dict(trial_config.model),
        train=to_dict(trial_config.train),
        **spec_fields,
    )
    trial_id = ray.tune.get_context().get_trial_id()
    trainer = build_trainer(
        spec,
        datasets,
        storage_path=storage_path,  # absolute: a trial runs in a working dir of Tune's
        name=f"trial_{trial_id}",
        metric=config.tune.metric,
        mode=config.tune.mode,
        callbacks=[TuneReportCallback()],
    )
    trainer.fit()


class _Progress:
    """Tune callback printing one line per finished trial (built lazily: needs ray.tune)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        from ray.tune import Callback

        class Progress(Callback):
            def __init__(self, total: int, metric: str, max_epochs: int, echo: Callable[[str], None]) -> None:
                self.total, self.metric, self.max_epochs, self.echo = total, metric, max_epochs, echo
                self.done, self.started = 0, time.perf_counter()

            def __getstate__(self) -> dict[str, Any]:
                # Tune pickles its callbacks with the experiment state; the echo function may not pickle.
                return {**self.__dict__, "echo": None}

            def _line(self, trial: Any, status: str) -> None:
                self.done += 1
                result = trial.last_result or {}
                epochs = result.get("training_iteration", 0)
                value = result.get(self.metric)
                score = f"{self.metric}={value:.4f}" if isinstance(value, float) else "no result"
                params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in sorted(trial.config.items()))
                (self.echo or print)(
                    f"[tune {self.done}/{self.total} {time.perf_counter() - self.started:6.0f}s] trial {trial.trial_id} "
                    f"{status} after {epochs}/{self.max_epochs} epochs: {score} ({params})"
                )

            def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                epochs = (trial.last_result or {}).get("training_iteration", 0)
                self._line(trial, "completed" if epochs >= self.max_epochs else "pruned")

            def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
                self._line(trial, "FAILED")

        return Progress(*args, **kwargs)


def quiet_ray_data() -> None:
    """Turn off Ray Data's per-dataset progress bars: with one split per epoch they flood the log."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def tune(
    config: Config,
    datasets: dict[str, ray.data.Dataset],
    *,
    train_rows: int,
    metadata: dict[str, Any],
    echo: Callable[[str], None] = print,
) -> TuneResult:
    """Search ``config.tune.search_space`` with Optuna TPE + ASHA, one ``TorchTrainer`` per trial.

    Args:
        config: The whole run config; ``model`` and ``train`` give the values not searched.
        datasets: ``train`` and ``val`` Ray datasets.
        train_rows: Rows of the training split (sizes the learning-rate schedule).
        metadata: Extra fields for every checkpoint (normaliser, label names...).
        echo: Where progress lines go.

    Returns:
        Every trial's record and the best one.

    Raises:
        ConfigError: If the search space does not fit the config.
        TrainingError: If every trial failed.
    """
    import optuna
    import ray
    from ray import tune as rt
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    quiet_ray_data()
    space = load_search_space(config.tune.search_space)
    check_search_space(space, config)
    tc, train_cfg = config.tune, config.train
    free = ray.available_resources()
    concurrency = tc.max_concurrent or default_concurrency(
        cpus=free.get("CPU", 0.0),
        gpus=free.get("GPU", 0.0),
        cpus_per_trial=train_cfg.num_workers * train_cfg.cpus_per_worker,
        gpus_per_trial=train_cfg.num_workers if train_cfg.use_gpu else 0,
    )
    echo(
        f"[tune] {tc.num_samples} trials, {concurrency} at a time, up to {train_cfg.max_epochs} epochs each, "
        f"ASHA grace {tc.grace_period} / reduction {tc.reduction_factor}, optimising {tc.metric} ({tc.mode})"
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = OptunaSearch(
        space=space,
        metric=tc.metric,
        mode=tc.mode,
        sampler=optuna.samplers.TPESampler(seed=tc.seed, n_startup_trials=tc.n_startup_trials),
    )
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=train_cfg.max_epochs,
        grace_period=min(tc.grace_period, train_cfg.max_epochs),
        reduction_factor=tc.reduction_factor,
    )
    trainable = rt.with_resources(
        rt.with_parameters(
            _run_trial,
            config=config,
            spec_fields={"num_classes": config.data.num_classes, "train_rows": train_rows, "metadata": metadata},
            datasets={"train": datasets["train"], "val": datasets["val"]},
            storage_path=str(config.run_dir.resolve() / "train"),
        ),
        {"cpu": 0, "memory": _TRIAL_MEMORY_BYTES},
    )
    run_dir = config.run_dir.resolve()
    tuner = rt.Tuner(
        trainable,
        tune_config=rt.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            metric=tc.metric,
            mode=tc.mode,
            num_samples=tc.num_samples,
            max_concurrent_trials=concurrency,
            time_budget_s=tc.time_budget_s,
        ),
        run_config=rt.RunConfig(
            name="tune",
            storage_path=str(run_dir),
            verbose=0,
            callbacks=[_Progress(tc.num_samples, tc.metric, train_cfg.max_epochs, echo)],
            failure_config=rt.FailureConfig(max_failures=0),
        ),
    )
    grid = tuner.fit()
    trials = [_record(result, config) for result in grid]
    _write_trials(trials, run_dir / "trials")
    scored = [t for t in trials if t.best and t.checkpoint_path]
    if not scored:
        errors = "; ".join(f"{t.trial_id}: {t.error}" for t in trials if t.error)[:2000]
        raise TrainingError(f"all {len(trials)} trials failed; first errors: {errors}")
    sign = 1 if tc.mode == "max" else -1
    best = max(scored, key=lambda t: sign * t.best[tc.metric])
    return TuneResult(trials=trials, best=best, metric=tc.metric, mode=tc.mode)


def _record(result: Any, config: Config) -> TrialRecord:
    """Turn one Tune ``Result`` into a :class:`TrialRecord`."""
    frame = result.metrics_dataframe
    history = [] if frame is None else frame.to_dict("records")
    metric, sign = config.tune.metric, (1 if config.tune.mode == "max" else -1)
    rows = [r for r in history if isinstance(r.get(metric), float) and math.isfinite(r[metric])]
    best_row = max(rows, key=lambda r: sign * r[metric]) if rows else {}
    epochs = int(max((r.get("training_iteration", 0) for r in history), default=0))
    params = {k: v for k, v in (result.config or {}).items()}
    status: TrialStatus
    if result.error is not None:
        status = "failed"
    elif epochs >= config.train.max_epochs:
        status = "completed"
    else:
        status = "pruned"
    keep = ("epoch", "train_loss", "val_loss", "val_accuracy", "val_macro_precision", "val_macro_recall",
            "val_macro_f1", "val_exact_match", "val_f1", "lr", "epoch_time_s", "train_samples_per_s", "training_iteration", "time_total_s")
    trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
    return TrialRecord(
        trial_id=str(trial_id),
        params=params,
        status=status,
        epochs=epochs,
        history=[{k: _plain(r[k]) for k in keep if k in r} for r in history],
        best={k: _plain(best_row[k]) for k in keep if k in best_row},
        checkpoint_path=best_row.get("checkpoint_path"),
        error=None if result.error is None else _error_text(result.error),
        duration_s=float(max((r.get("time_total_s", 0.0) for r in history), default=0.0)),
    )


def _error_text(error: BaseException) -> str:
    """The most specific line of a trial's error (Ray wraps the worker's exception in its own)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line for line in lines if "Error:" in line and not line.startswith("ray.")]
    return (ours[-1] if ours else lines[0] if lines else type(error).__name__)[:500]


def _plain(value: Any) -> Any:
    """numpy scalars -> Python numbers for JSON."""
    return value.item() if hasattr(value, "item") else value


def _write_trials(trials: list[TrialRecord], directory: Path) -> None:
    """One JSON file per trial: sampled config, status, every epoch's metrics."""
    directory.mkdir(parents=True, exist_ok=True)
    for trial in trials:
        (directory / f"{trial.trial_id}.json").write_text(json.dumps(to_dict(trial), indent=2) + "\n")
