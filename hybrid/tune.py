"""Tune: Ray Tune with Optuna's TPE proposing trials and ASHA stopping the weak ones early.

Each trial is a function that builds and fits a ``TorchTrainer`` (Ray Train V2) and forwards its
reports to Tune with ``TuneReportCallback``. The trial itself reserves no CPU (only a little
memory), so each trial's training workers get the CPUs. A trial that raises (a diverged loss, an
invalid sampled config) is recorded as failed and the search goes on.

A tune survives being killed at any moment (SIGKILL of the whole process tree included): the
Optuna study lives in SQLite, every trial's record is rewritten after each epoch, and every epoch
ends with a checkpoint of the whole training state. Run again with the same fingerprint, it keeps
the finished trials as they are, continues each trial that was in flight from its last epoch, replays
ASHA's rungs, and runs only the trials still missing. See :mod:`hybrid.tune_records` for the files.

Several objectives (``tune.objectives``, e.g. ``val_accuracy`` max and ``latency_ms`` min): the Optuna study
is multi-objective (one direction per objective; TPE models them jointly), each trial measures the
candidate metrics it needs (:func:`hybrid.measure.float_costs`) and reports them with every epoch, and the
summary records the trials' Pareto front (:mod:`hybrid.pareto`). ASHA stops trials on ``tune.metric``
alone (it takes one metric), and the teacher stays the best trial on ``tune.metric``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hybrid import _atomic, cluster
from hybrid.config import Config
from hybrid.errors import TrainingError
from hybrid.pareto import Objective, ParetoFront, pareto_front
from hybrid.placement import HEAD_RESOURCE
from hybrid.search_space import check_search_space, load_search_space
from hybrid.tune_records import (
    TrialRecord,
    TrialStatus,
    TunePaths,
    error_text,
    history_row,
    make_record,
    pick_best,
    read_records,
    trial_name,
    write_record,
)

if TYPE_CHECKING:
    import optuna
    import ray.data

    from hybrid._tune_ray import Prior, ResumableASHA

__all__ = ["TrialRecord", "TrialStatus", "TuneResult", "default_concurrency", "error_text", "tune"]

log = logging.getLogger(__name__)

_TRIAL_MEMORY_BYTES = 256 * 1024**2  # the trial actor only waits on its trainer
STUDY_NAME = "hybrid"
_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run's checkpoints


@dataclass
class TuneResult:
    """All trials and the winner."""

    trials: list[TrialRecord]
    best: TrialRecord
    """The best trial on ``metric`` (the teacher), whatever the objectives."""
    metric: str
    mode: str
    objectives: tuple[Objective, ...] = ()
    """``tune.objectives`` when there are several; empty for a single-metric search."""

    def pareto(self) -> ParetoFront | None:
        """The trials' front over :attr:`objectives` (None for a single-metric search).

        Each trial is the point of its best epoch on ``metric``: the checkpoint it would ship as the teacher.
        (Optuna was told each trial's last epoch, as Ray's ``OptunaSearch`` does; the cost metrics are the
        same at every epoch.) A trial without a value of every objective (failed early) is excluded, with why.
        """
        if len(self.objectives) < 2:
            return None
        points = [{"id": t.trial_id, "status": t.status, "epoch": t.best.get("epoch"),
                   **{o.metric: t.best.get(o.metric) for o in self.objectives}} for t in self.trials]
        return pareto_front(points, self.objectives)

    @property
    def best_checkpoint(self) -> Path:
        """Model directory of the best trial's best epoch (weights, model.json, manifest; no optimiser state).

        Raises:
            TrainingError: If the best trial has no checkpoint on disk.
        """
        path = self.best.checkpoint_path
        if path is None or not Path(path).is_dir():
            raise TrainingError(f"trial {self.best.trial_id}: the checkpoint of its best epoch is missing at {path}")
        return Path(path)

    def counts(self) -> dict[str, int]:
        """Trials by status."""
        out = {"trials": len(self.trials), "completed": 0, "pruned": 0, "failed": 0}
        for trial in self.trials:
            out[trial.status] = out.get(trial.status, 0) + 1
        return out

    def summary(self) -> dict[str, Any]:
        """The ``tune`` block of ``summary.json``; with several objectives also ``objectives`` and ``pareto``
        (:meth:`hybrid.pareto.ParetoFront.record`: the front, the dominated and the excluded trials)."""
        out = {
            **self.counts(),
            "metric": self.metric,
            "best_trial": self.best.trial_id,
            "best_config": self.best.params,
            f"best_{self.metric}": self.best.best.get(self.metric),
            "best_epoch": self.best.best.get("epoch"),
        }
        front = self.pareto()
        if front is not None:
            out["objectives"] = [{"metric": o.metric, "mode": o.mode} for o in self.objectives]
            out["pareto"] = front.record()
        return out


def default_concurrency(worker: dict[str, float], *, workers: int, nodes: Sequence[cluster.Node]) -> int:
    """How many trials of ``workers`` x ``worker`` run at once in the nodes' free resources (at least one).

    Each worker sits on one node, so this sums what fits node by node, never the cluster's total.
    """
    return max(1, cluster.sets_that_fit(worker, count=workers, nodes=nodes))


def tune(
    config: Config,
    datasets: dict[str, ray.data.Dataset],
    *,
    train_rows: int,
    metadata: dict[str, Any],
    run_dir: Path,
    fingerprint: str,
    echo: Callable[[str], None] = print,
) -> TuneResult:
    """Search ``config.tune.search_space`` with Optuna TPE + ASHA, one ``TorchTrainer`` per trial.

    Owns ``run_dir/tune/`` and ``run_dir/trials/``. When ``run_dir/tune/fingerprint`` holds
    ``fingerprint``, the tune found there is resumed: finished trials are kept untouched, trials in
    flight continue from their last epoch checkpoint, and only the missing trials are added.
    Otherwise both directories are wiped and a fresh search starts.

    Args:
        config: The whole run config; ``model`` and ``train`` give the values not searched.
        datasets: ``train`` and ``val`` Ray datasets.
        train_rows: Rows of the training split (sizes the learning-rate schedule).
        metadata: Extra fields for every checkpoint (normaliser, label names...).
        run_dir: The run directory.
        fingerprint: Identifies everything the tune depends on (config, data, search space, code);
            equal fingerprints mean the tune on disk may be resumed.
        echo: Where progress lines go.

    With several ``tune.objectives`` the study is multi-objective; ASHA still stops trials on
    ``tune.metric`` and the best trial is the best on it (see the module docstring).

    Returns:
        Every trial's record (ordered by trial number), the best one, and the objectives when there are several.

    Raises:
        ConfigError: If the search space does not fit the config.
        TrainingError: If every trial failed, or the best trial's checkpoint is missing.
    """
    import optuna
    from ray import tune as rt

    from hybrid import _tune_ray
    from hybrid._dataclass_io import to_dict
    from hybrid.measure import COST_METRICS, LATENCY_BATCH
    from hybrid.runtime import quiet_ray_data
    from hybrid.train import ship_paths

    quiet_ray_data()
    space = load_search_space(config.tune.search_space)
    check_search_space(space, config)
    tc, train_cfg = config.tune, config.train
    paths = TunePaths(Path(run_dir).resolve())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, storage = _open_study(paths, fingerprint, config, echo)
    plan = _plan(study, paths, config)
    to_run = tc.num_samples - len(plan.kept)
    nodes = cluster.inventory()
    worker = cluster.worker_request(cpus=train_cfg.cpus_per_worker, use_gpu=train_cfg.use_gpu)
    cluster.check_workers_fit("tune", train_cfg, nodes=nodes, what="each trial's training worker")
    concurrency = tc.max_concurrent or default_concurrency(worker, workers=train_cfg.num_workers, nodes=nodes)
    objectives = tc.resolved_objectives
    goal = ", ".join(f"{o.metric} ({o.mode})" for o in objectives)
    if tc.multi_objective:
        goal += f"; ASHA stops on {tc.metric}"
    echo(
        f"[tune] {tc.num_samples} trials, {concurrency} at a time, up to {train_cfg.max_epochs} epochs each, "
        f"ASHA grace {tc.grace_period} / reduction {tc.reduction_factor}, optimising {goal}"
    )
    if plan.kept or plan.resume:
        continuing = ", ".join(f"{tid} from epoch {plan.prior[tid].epoch}" for tid, _ in plan.resume)
        echo(f"[tune] resuming in {paths.tune}: {len(plan.kept)} finished trials kept"
             + (f"; continuing {continuing}" if continuing else "")
             + f"; {max(0, to_run - len(plan.resume))} new")
    if to_run > 0:
        # One metric: exactly the single-objective search. Several: Optuna's multi-objective study.
        metric: str | list[str] = [o.metric for o in objectives] if tc.multi_objective else tc.metric
        mode: str | list[str] = [o.mode for o in objectives] if tc.multi_objective else tc.mode
        costs = [o.metric for o in objectives if o.metric in COST_METRICS]
        # One fixed batch for every trial, taken once here (text is padded per batch: its rows set the cost).
        cost_sample = datasets["val"].take_batch(LATENCY_BATCH, batch_format="numpy") if costs else None
        searcher = _tune_ray.ResumableOptunaSearch(
            space=space, metric=metric, mode=mode, storage=storage, study_name=STUDY_NAME,
            sampler=_tune_ray.SeededTPESampler(seed=tc.seed, n_startup_trials=tc.n_startup_trials),
            resume=[storage_id for _, storage_id in plan.resume], paths=paths,
        )
        recorder = _tune_ray.TrialRecorder(
            paths=paths, metric=tc.metric, mode=tc.mode, max_epochs=train_cfg.max_epochs, total=tc.num_samples,
            done=len(plan.kept), prior=plan.prior, echo=echo,
            shown=tuple(o.metric for o in objectives if o.metric != tc.metric),
        )
        trainable = rt.with_resources(
            rt.with_parameters(
                _tune_ray.run_trial,
                config=config,
                # The model's directories travel through the object store, put once here by the driver: a
                # trial's own actor may run on a node that cannot see the driver's paths.
                spec_fields={"num_classes": config.data.num_classes, "train_rows": train_rows, "metadata": metadata,
                             "shipped": ship_paths(config.model_name, to_dict(config.model)),
                             "cost_sample": cost_sample},
                datasets={"train": datasets["train"], "val": datasets["val"]},
                storage_path=str(paths.train),
            ),
            # The trial's own actor only waits on its trainer: it sits on the head (Ray's marker resource,
            # as Ray's state actors do), so a lost worker node takes the trial's workers, never the trial.
            {"cpu": 0, "memory": _TRIAL_MEMORY_BYTES, HEAD_RESOURCE: 0.001},
        )
        shutil.rmtree(paths.ray, ignore_errors=True)  # Tune's own experiment files: scratch, never resumed
        rt.Tuner(
            trainable,
            tune_config=rt.TuneConfig(
                search_alg=searcher,
                # metric and mode live in the searcher (every objective) and the scheduler (ASHA: tune.metric)
                scheduler=plan.scheduler,
                num_samples=to_run,
                max_concurrent_trials=concurrency,
                time_budget_s=tc.time_budget_s,
            ),
            run_config=rt.RunConfig(
                name="search",
                storage_path=str(paths.ray),
                verbose=0,
                callbacks=[recorder],
                failure_config=rt.FailureConfig(max_failures=0),
            ),
        ).fit()
    records = read_records(paths)
    numbers = sorted(t.number for t in study.get_trials(deepcopy=False))
    trials = [records[trial_name(n)] for n in numbers if trial_name(n) in records]
    best = pick_best(trials, metric=tc.metric, mode=tc.mode)
    return TuneResult(trials=trials, best=best, metric=tc.metric, mode=tc.mode,
                      objectives=objectives if tc.multi_objective else ())


def _open_study(
    paths: TunePaths, fingerprint: str, config: Config, echo: Callable[[str], None]
) -> tuple[optuna.Study, Any]:
    """Open the study of the tune with ``fingerprint`` (see :func:`hybrid._tune_ray.open_study`)."""
    from hybrid._tune_ray import open_study

    return open_study(paths, fingerprint=fingerprint, directions=_directions(config), study_name=STUDY_NAME,
                      seed=config.tune.seed, n_startup_trials=config.tune.n_startup_trials, where=paths.tune,
                      records=paths.trials, objectives_key="tune.objectives", echo=echo, stage="tune")


def _directions(config: Config) -> list[str]:
    """Optuna's study directions: one per objective (``tune.metric`` alone without ``tune.objectives``)."""
    return ["maximize" if o.mode == "max" else "minimize" for o in config.tune.resolved_objectives]


@dataclass
class _Plan:
    """What a (re-)run of a tune does with the trials it finds."""

    kept: list[TrialRecord] = field(default_factory=list)
    """Finished trials: counted, never run again."""
    resume: list[tuple[str, int]] = field(default_factory=list)
    """In-flight trials to continue: ``(trial id, Optuna storage id)``."""
    prior: dict[str, Prior] = field(default_factory=dict)
    scheduler: ResumableASHA | None = None


def _plan(study: optuna.Study, paths: TunePaths, config: Config) -> _Plan:
    """Sort the study's trials into kept and in flight, mend what a kill left half-written, and build
    the ASHA scheduler with every recorded rung replayed."""
    from hybrid._tune_ray import Prior, ResumableASHA
    from ray.tune.schedulers import TrialScheduler

    tc, max_epochs = config.tune, config.train.max_epochs
    metric, mode = tc.metric, tc.mode
    objectives = [o.metric for o in tc.resolved_objectives]
    records = read_records(paths)
    plan, in_flight = _Plan(), []
    record_args = {"paths": paths, "metric": metric, "mode": mode, "max_epochs": max_epochs}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        tid, record = trial_name(trial.number), records.get(trial_name(trial.number))
        if trial.state.is_finished():
            if record is None or not record.final:  # killed between telling Optuna and writing the record
                state = _latest_state(paths, tid, wipe=False)
                history = state.history if state else (record.history if record else [])
                failed = trial.state == trial.state.FAIL
                record = make_record(tid, params=trial.params, history=history, status="failed" if failed else None,
                                     error="not recorded: the tune was killed as this trial failed" if failed else None,
                                     **record_args)
                write_record(paths, record)
            plan.kept.append(record)
        elif record is not None and record.final:  # killed between writing the record and telling Optuna
            _tell(study, trial.number, record, objectives)
            plan.kept.append(record)
        else:
            in_flight.append((trial, record))

    replay = {r.trial_id: _points(r.history, metric) for r in plan.kept}
    undecided = {}
    for trial, record in in_flight:
        tid = trial_name(trial.number)
        state = _latest_state(paths, tid, wipe=True)
        epoch = state.epoch if state else 0
        history = [history_row(r) for r in state.history] if state else []
        recorded = {r.get("epoch") for r in record.history} if record else set()
        resumed_from = (record.resumed_from if record else []) + ([epoch] if record or epoch else [])
        plan.prior[tid] = Prior(epoch=epoch, history=history, resumed_from=resumed_from,
                                duration_s=record.duration_s if record else 0.0)
        points = _points(history, metric)
        if epoch and epoch not in recorded:  # Tune had not acted on this epoch's result when the kill came
            undecided[tid] = points.pop() if points else (epoch, math.nan)
        replay[tid] = points
        write_record(paths, make_record(tid, params=trial.params, history=history, status="running",
                                        duration_s=plan.prior[tid].duration_s, resumed_from=resumed_from,
                                        **record_args))
    plan.scheduler = ResumableASHA(
        replay=replay, time_attr="epoch", metric=metric, mode=mode, max_t=max_epochs,
        grace_period=min(tc.grace_period, max_epochs), reduction_factor=tc.reduction_factor,
    )
    for trial, record in in_flight:
        tid = trial_name(trial.number)
        prior = plan.prior[tid]
        if tid in undecided:
            stop = plan.scheduler.decide(tid, *undecided[tid]) == TrialScheduler.STOP
        else:
            stop = prior.epoch >= max_epochs
        if stop:  # it had ended; only the news had not reached Tune
            record = make_record(tid, params=trial.params, history=prior.history, status=None,
                                 duration_s=prior.duration_s, resumed_from=record.resumed_from if record else [],
                                 **record_args)
            write_record(paths, record)
            _tell(study, trial.number, record, objectives)
            plan.kept.append(record)
            del plan.prior[tid]
        else:
            plan.resume.append((tid, trial._trial_id))
    plan.kept.sort(key=lambda r: r.trial_id)
    return plan


def _points(history: list[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    return [(int(r["epoch"]), float(r[metric])) for r in history if "epoch" in r and metric in r]


def _tell(study: optuna.Study, number: int, record: TrialRecord, objectives: Sequence[str]) -> None:
    """Tell Optuna how trial ``number`` ended, as Ray's ``OptunaSearch`` would have: its last value of
    each of ``objectives`` (one value for a single-objective study)."""
    from optuna.trial import TrialState

    last = [record.history[-1].get(m) for m in objectives] if record.history else [None]
    if record.status == "failed":
        study.tell(number, state=TrialState.FAIL)
    elif any(v is None for v in last):
        study.tell(number, state=TrialState.PRUNED)
    else:
        study.tell(number, last if len(last) > 1 else last[0], state=TrialState.COMPLETE)


def _latest_state(paths: TunePaths, trial_id: str, *, wipe: bool) -> Any:
    """The training state of trial ``trial_id``'s latest checkpoint: the one Ray Train will hand back.

    With ``wipe``, storage Ray could not resume from (no or unreadable run snapshot, a checkpoint it
    lists gone, no training state) is removed, so the trial restarts from epoch 0 instead of failing.
    """
    from hybrid.train_state import read_train_state

    storage = paths.train / trial_id
    snapshot = _atomic.read_json(storage / _SNAPSHOT, what="Ray Train run snapshot")
    state = None
    try:
        names = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
        latest = snapshot["latest_checkpoint_result"]["checkpoint_dir_name"]
        if all((storage / name).is_dir() for name in [*names, latest]):
            state = read_train_state(storage / latest)
    except (KeyError, TypeError):
        state = None
    if state is None and wipe and storage.exists():
        shutil.rmtree(storage, ignore_errors=True)
    return state
