"""The Ray Tune and Optuna pieces of a resumable search (imported only when a tune runs).

- :class:`SeededTPESampler`: TPE whose random draws depend on (seed, trial number) only, so a resumed
  search proposes what an uninterrupted one would have (given the same finished trials).
- :class:`ResumableOptunaSearch`: Ray's ``OptunaSearch`` on Optuna's own SQLite storage; it first hands
  out the trials that were in flight when the last run died, then asks Optuna for new ones, and tags
  every config with the stable trial id (``t0003``: the Optuna trial number).
- :class:`ResumableASHA`: ASHA keyed by the stable id, its rungs replayed from the recorded epochs.
- :class:`TrialRecorder`: writes ``trials/<id>.json`` after every epoch and when the trial ends.
- :func:`run_trial`: the Tune trainable, one ``TorchTrainer`` per trial, named by the stable id so
  that a re-run finds the trial's checkpoints and continues from the last one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from hybrid import _atomic
from hybrid.errors import TrainingError
from hybrid.runtime import quiet_ray_data
from hybrid.tune_records import TrialRecord, TunePaths, error_text, make_record, trial_name, write_record

TRIAL_KEY = "__trial_id"
"""Hidden key of every trial config: the stable trial id (not a searched parameter)."""


def trial_seed(seed: int, number: int) -> int:
    """The RNG seed of trial ``number`` in a search seeded ``seed`` (a 32-bit value for numpy)."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class SeededTPESampler(optuna.samplers.TPESampler):
    """TPE reseeded from ``(seed, trial number)`` before every trial.

    A plain seeded TPE draws from one stream across trials, so a search restarted after a kill
    would continue the stream from its start. Reseeding per trial makes trial ``n``'s proposal a
    function of the seed and the study's finished trials only.
    """

    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._hybrid_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seed = trial_seed(self._hybrid_seed, trial.number)
        # optuna 5.0 keeps TPE's stream in _rng and its start-up sampler's in _random_sampler._rng;
        # tests/test_tune_resume.py fails if either moves.
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


def open_study(
    paths: Any, *, fingerprint: str, directions: list[str], study_name: str, seed: int, n_startup_trials: int,
    where: Path, records: Path, objectives_key: str, echo: Callable[[str], None], stage: str,
) -> tuple[optuna.Study, Any]:
    """Open the SQLite study of the search with ``fingerprint``, for a tune or a compression search alike.

    The search's files (``paths``: ``fingerprint``, ``study``, ``wipe()``) are wiped first when the fingerprint
    differs, when the study cannot be read, or when its directions are not ``directions``; ``where`` and
    ``records`` (the search's directory and its per-trial records) only decide whether a wipe is announced.
    Returns ``(study, storage)``.
    """
    import logging

    reason = "the run's inputs changed since the last search"
    for attempt in range(2):
        try:
            previous: str | None = paths.fingerprint.read_text(encoding="utf-8", errors="replace")
        except OSError:
            previous = None
        if previous != fingerprint or attempt:
            if previous is not None or records.exists():
                echo(f"[{stage}] starting a fresh search in {where}: {reason}")
            paths.wipe()
            paths.fingerprint.parent.mkdir(parents=True, exist_ok=True)
            _atomic.write_text(paths.fingerprint, fingerprint)
        try:
            storage = optuna.storages.RDBStorage(f"sqlite:///{paths.study}")
            study = optuna.create_study(
                storage=storage, study_name=study_name, load_if_exists=True, directions=directions,
                sampler=SeededTPESampler(seed=seed, n_startup_trials=n_startup_trials),
            )
        except Exception as err:  # a corrupt SQLite file: start over once, else let it raise
            if attempt:
                raise
            logging.getLogger(__name__).warning(
                "could not read the Optuna study %s (%s): starting a fresh search", paths.study, err)
            reason = "the study could not be read"
            continue
        found = [d.name.lower() for d in study.directions]
        if found == directions:
            return study, storage
        # Only a fingerprint that leaves out the objectives gets here (a caller's own): never mix the two studies.
        if attempt:
            raise TrainingError(f"the Optuna study {paths.study} has directions {found}, but {objectives_key} "
                                f"need {directions}, even after starting afresh")
        reason = f"its study optimises {found}, but {objectives_key} need {directions}"
    raise AssertionError("unreachable")


class ResumableOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that resumes the trials in flight, and reports Optuna the epoch as the step.

    With several objectives (``metric`` and ``mode`` lists: a multi-objective study) Optuna takes no
    intermediate values; each trial is told its last reported value of every objective when it ends (ASHA's
    stop included), or failed/pruned when one of them is missing.

    Args:
        resume: Optuna storage ids (``FrozenTrial._trial_id``) of RUNNING trials to hand out first, in order.
        paths: The tune's files: a new trial's Train storage is cleared, so nothing stale is resumed.
        **kwargs: ``OptunaSearch`` arguments (``space``, ``metric``, ``mode``, ``sampler``, ``storage``,
            ``study_name``).
    """

    def __init__(self, *, resume: list[int], paths: TunePaths, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._resume = list(resume)
        self._paths = paths

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id not in self._ot_trials and self._resume:
            ot_trial = optuna.trial.Trial(self._ot_study, self._resume.pop(0))
            for name, distribution in self._space.items():
                ot_trial._suggest(name, distribution)  # what ask(fixed_distributions) does; stored values return
            self._ot_trials[trial_id] = ot_trial
        elif trial_id not in self._ot_trials:
            super().suggest(trial_id)
            shutil.rmtree(self._paths.train / trial_name(self._ot_trials[trial_id].number), ignore_errors=True)
        ot_trial = self._ot_trials[trial_id]
        return {**ot_trial.params, TRIAL_KEY: trial_name(ot_trial.number)}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # Tune's training_iteration restarts at 1 when a trial resumes; the epoch does not.
        if isinstance(self.metric, list):  # Optuna refuses intermediate values of a multi-objective trial
            return
        if trial_id in self._completed_trials or self.metric not in result or "epoch" not in result:
            return
        self._ot_trials[trial_id].report(result[self.metric], int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if isinstance(self.metric, list) and result and any(result.get(m) is None for m in self.metric):
            result = None  # Ray would tell Optuna a list holding None, which Optuna refuses (the trial stays RUNNING)
        super().on_trial_complete(trial_id, result, error)


@dataclass(frozen=True)
class _Key:
    """What ASHA's bracket needs of a trial: an id (here the stable one)."""

    trial_id: str


def _key(trial: Any) -> _Key:
    return _Key((trial.config or {}).get(TRIAL_KEY, trial.trial_id))


class ResumableASHA(ASHAScheduler):
    """ASHA keyed by the stable trial id, with the rungs of earlier attempts replayed.

    Args:
        replay: Per stable trial id, its recorded ``(epoch, metric value)`` pairs in epoch order.
        **kwargs: ``ASHAScheduler`` arguments; ``metric`` and ``mode`` are required (replaying needs them).
    """

    def __init__(self, *, replay: dict[str, list[tuple[int, float]]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for trial_id, points in replay.items():
            for epoch, value in points:
                self.decide(trial_id, epoch, value)

    def decide(self, trial_id: str, epoch: int, value: float) -> str:
        """Record one epoch of ``trial_id`` in its rung (if it reaches one) and say whether ASHA stops it."""
        if epoch >= self._max_t and self._stop_last_trials:
            return TrialScheduler.STOP
        return self._brackets[0].on_result(_Key(trial_id), epoch, self._metric_op * value)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_add(tune_controller, _key(trial))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(self._time_attr, 0) >= self._max_t:
            # Its last epoch: the trial ends on its own as its fit returns (on_trial_complete then records it in
            # its rung). Stopping it here, as ASHA does, killed its Train run while the fit was returning: the
            # fit raised ActorDiedError, which reads as a lost worker, and a retry started a Train run for nothing.
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, _key(trial), result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        super().on_trial_complete(tune_controller, _key(trial), result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        super().on_trial_remove(tune_controller, _key(trial))


@dataclass
class Prior:
    """What an in-flight trial had done before this attempt (from its last checkpoint)."""

    epoch: int
    """Epochs finished (its last checkpoint's)."""
    history: list[dict[str, Any]]
    resumed_from: list[int]
    duration_s: float


class TrialRecorder(Callback):
    """Writes each trial's record after every epoch (``running``) and when it ends; prints a line per end."""

    def __init__(
        self, *, paths: TunePaths, metric: str, mode: str, max_epochs: int, total: int, done: int,
        prior: dict[str, Prior], echo: Callable[[str], None] | None, shown: tuple[str, ...] = (),
    ) -> None:
        self.paths, self.metric, self.mode, self.max_epochs = paths, metric, mode, max_epochs
        self.shown = shown  # the other objectives, printed beside metric
        self.total, self.done, self.prior, self.echo = total, done, prior, echo
        self.rows: dict[str, dict[int, dict[str, Any]]] = {}
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; the echo function may not pickle.
        return {**self.__dict__, "echo": None}

    def _record(self, trial: Any, status: Any, error: str | None = None) -> TrialRecord:
        trial_id = _key(trial).trial_id
        prior = self.prior.get(trial_id, Prior(epoch=0, history=[], resumed_from=[], duration_s=0.0))
        rows = {int(r["epoch"]): r for r in prior.history}
        rows.update(self.rows.get(trial_id, {}))
        params = {k: v for k, v in (trial.config or {}).items() if k != TRIAL_KEY}
        record = make_record(
            trial_id, params=params, history=[rows[e] for e in sorted(rows)], status=status, paths=self.paths,
            metric=self.metric, mode=self.mode, max_epochs=self.max_epochs, error=error,
            duration_s=prior.duration_s + self.seconds.get(trial_id, 0.0), resumed_from=prior.resumed_from,
        )
        write_record(self.paths, record)
        return record

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if "epoch" not in result:
            return
        trial_id = _key(trial).trial_id
        self.rows.setdefault(trial_id, {})[int(result["epoch"])] = dict(result)
        self.seconds[trial_id] = float(result.get("time_total_s", 0.0))
        # done: the scheduler stops it now; write the final record at once (a kill may come before on_trial_complete)
        self._record(trial, None if result.get("done") else "running")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(self._record(trial, None))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(self._record(trial, "failed", error=error_text(_trial_error(trial))))

    def _line(self, record: TrialRecord) -> None:
        self.done += 1
        value = record.best.get(self.metric)
        score = f"{self.metric}={value:.4f}" if isinstance(value, float) else "no result"
        score += "".join(f", {name}={_short(record.best[name])}" for name in self.shown if name in record.best)
        params = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in sorted(record.params.items()))
        (self.echo or print)(
            f"[tune {self.done}/{self.total} {time.perf_counter() - self.started:6.0f}s] trial {record.trial_id} "
            f"{record.status} after {record.epochs}/{self.max_epochs} epochs: {score} ({params})"
        )


def _trial_error(trial: Any) -> str:
    """The error text Tune wrote for ``trial`` (its local error file: the synced copy may lag behind)."""
    try:
        return Path(trial.error_file).read_text(encoding="utf-8", errors="replace")
    except (OSError, TypeError):
        return trial.get_error() or "unknown error (Tune recorded no error text)"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_trial(
    params: dict[str, Any], *, config: Any, spec_fields: dict[str, Any], datasets: dict[str, Any], storage_path: str,
) -> None:
    """Tune trainable: fit one ``TorchTrainer`` with the sampled ``params`` applied.

    The Train run is named by the stable trial id under ``storage_path``: a trial that was in flight
    when the last run died finds its checkpoints there and continues from the latest.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from hybrid import cluster
    from hybrid._dataclass_io import to_dict
    from hybrid.search_space import apply_params
    from hybrid.train import LoopSpec, build_trainer, fit_resilient

    quiet_ray_data()
    params = dict(params)
    name = params.pop(TRIAL_KEY)
    trial_config = apply_params(config, params)
    train = trial_config.train  # sampled params may resize the workers: fail the trial, never wait forever
    cluster.check_workers_fit("tune", train, what=f"trial {name}'s training worker",
                              fix="lower train.cpus_per_worker or train.num_workers in the search space")
    spec = LoopSpec(
        model_name=trial_config.model_name, model=to_dict(trial_config.model), train=to_dict(trial_config.train),
        **spec_fields,
    )
    fit_resilient(
        lambda: build_trainer(
            spec, datasets, storage_path=Path(storage_path), name=name,  # absolute: a trial runs in a dir of Tune's
            metric=config.tune.metric, mode=config.tune.mode, callbacks=[TuneReportCallback()],
        ),
        what=f"trial {name}", max_failures=config.runtime.max_failures,
    )
