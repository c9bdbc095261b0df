"""Unit tests of a tune's resume pieces, without a Ray cluster: TPE reseeding, the searcher handing
out in-flight trials, ASHA's replayed rungs, trial records, and the plan a re-run makes of what a kill
left behind (real Optuna SQLite storage, hand-made checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from hybrid import _atomic
from hybrid.config import Config, DataConfig, TrainConfig, TuneConfig
from hybrid.testing import tiny_cnn_config
from hybrid.train_state import MODEL_DIR, STATE_DIR, STATE_JSON, START_EPOCH
from hybrid.tune_records import TunePaths, make_record, read_record, read_records, trial_name, write_record

_tune_ray = pytest.importorskip("hybrid._tune_ray")  # needs ray[tune] importable, not running

SPACE = {
    "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
    "train.batch_size": optuna.distributions.CategoricalDistribution([16, 32, 64]),
}


def _objective(params: dict) -> float:
    return -abs(params["train.lr"] - 0.01) - params["train.batch_size"] / 1000


def _asks(study: optuna.Study, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        trial = study.ask(fixed_distributions=SPACE)
        study.tell(trial, _objective(trial.params))
        out.append(trial.params)
    return out


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_seeded_tpe_proposes_per_trial_number_so_a_restarted_search_continues_the_same(tmp_path: Path) -> None:
    def study(storage: str | None, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
        return optuna.create_study(storage=storage, study_name="s", sampler=sampler, direction="maximize",
                                   load_if_exists=True)

    straight = _asks(study(None, _tune_ray.SeededTPESampler(seed=3, n_startup_trials=2)), 6)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = _asks(study(url, _tune_ray.SeededTPESampler(seed=3, n_startup_trials=2)), 3)
    rest = _asks(study(url, _tune_ray.SeededTPESampler(seed=3, n_startup_trials=2)), 3)  # a new process
    assert first + rest == straight  # random start-up trials and TPE-modelled ones alike

    plain_url = f"sqlite:///{tmp_path / 'plain.db'}"
    plain = _asks(study(plain_url, optuna.samplers.TPESampler(seed=3, n_startup_trials=2)), 3)
    plain += _asks(study(plain_url, optuna.samplers.TPESampler(seed=3, n_startup_trials=2)), 3)
    assert plain != straight  # what the reseeding is for: a plain seeded TPE restarts its stream


def _searcher(tmp_path: Path, resume: list[int] = ()) -> _tune_ray.ResumableOptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return _tune_ray.ResumableOptunaSearch(
        space=SPACE, metric="val_accuracy", mode="max", storage=storage, study_name="hybrid",
        sampler=_tune_ray.SeededTPESampler(seed=0, n_startup_trials=2), resume=list(resume),
        paths=TunePaths(tmp_path),
    )


def test_searcher_hands_out_in_flight_trials_first_with_their_stored_params(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    a = searcher.suggest("tune-a")
    b = searcher.suggest("tune-b")
    assert a[_tune_ray.TRIAL_KEY] == "t0000" and b[_tune_ray.TRIAL_KEY] == "t0001"
    searcher.on_trial_result("tune-a", {"val_accuracy": 0.5, "epoch": 1})
    searcher.on_trial_complete("tune-a", result={"val_accuracy": 0.6, "epoch": 2})
    uninterrupted = searcher.suggest("tune-c")  # what the search would have proposed next
    # The process dies with trial 1 in flight (and trial 2 merely asked); a re-run continues both.
    study = optuna.load_study(study_name="hybrid", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    running = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert [t.number for t in running] == [1, 2]
    stale = tmp_path / "tune" / "train" / "t0003"
    stale.mkdir(parents=True)

    again = _searcher(tmp_path, resume=[t._trial_id for t in running])
    assert again.suggest("new-x") == b
    assert again.suggest("new-y") == uninterrupted
    new = again.suggest("new-z")
    assert new[_tune_ray.TRIAL_KEY] == "t0003" and not stale.exists()  # a new trial never inherits storage
    again.on_trial_result("new-x", {"val_accuracy": 0.7, "epoch": 3})  # Optuna's step is the epoch
    assert study.get_trials()[1].intermediate_values == {3: 0.7}


def _trial(tune_id: str, stable: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tune_id, config={_tune_ray.TRIAL_KEY: stable})


def _asha(replay: dict) -> _tune_ray.ResumableASHA:
    return _tune_ray.ResumableASHA(replay=replay, time_attr="epoch", metric="m", mode="max", max_t=9,
                                   grace_period=1, reduction_factor=3)


def test_asha_rungs_replayed_on_resume_give_the_decisions_of_an_uninterrupted_search() -> None:
    results = [("t0000", 1, 0.9), ("t0000", 3, 0.95), ("t0001", 1, 0.5), ("t0002", 1, 0.8)]
    straight = _asha({})
    for stable in ("t0000", "t0001", "t0002"):
        straight.on_trial_add(None, _trial(f"old-{stable}", stable))
    for stable, epoch, value in results:
        straight.on_trial_result(None, _trial(f"old-{stable}", stable), {"epoch": epoch, "m": value})

    replay: dict[str, list] = {}
    for stable, epoch, value in results:
        replay.setdefault(stable, []).append((epoch, value))
    resumed = _asha(replay)
    assert [dict(r) for _, r in resumed._brackets[0]._rungs] == [dict(r) for _, r in straight._brackets[0]._rungs]

    # trial 2 resumes under a new Tune id: its epoch-1 rung is not counted twice, epoch 3 is judged
    for scheduler in (straight, resumed):
        scheduler.on_trial_add(None, _trial("new-2", "t0002"))
    decisions = [s.on_trial_result(None, _trial("new-2", "t0002"), {"epoch": 3, "m": 0.1}) for s in (straight, resumed)]
    assert decisions == ["STOP", "STOP"]
    assert len(resumed._brackets[0]._rungs[-1][1]) == 3  # rung 1: trials 0, 1, 2 once each
    # a new trial below the rung's cutoff is stopped, one above continues
    assert resumed.decide("t0009", 1, 0.4) == "STOP"
    assert resumed.decide("t0010", 1, 0.99) == "CONTINUE"


def test_asha_lets_a_trial_at_its_last_epoch_end_on_its_own() -> None:
    # A STOP at the last epoch killed the trial's Train run while its fit was returning (read as a lost worker).
    asha = _tune_ray.ResumableASHA(replay={}, time_attr="epoch", metric="m", mode="max", max_t=3, grace_period=1,
                                   reduction_factor=3)
    for stable, value in (("t0000", 0.1), ("t0001", 0.8), ("t0002", 0.9)):
        asha.on_trial_add(None, _trial(stable, stable))
        assert asha.on_trial_result(None, _trial(stable, stable), {"epoch": 1, "m": value}) == "CONTINUE"
    asha.on_trial_add(None, _trial("t0003", "t0003"))
    assert asha.on_trial_result(None, _trial("t0003", "t0003"), {"epoch": 1, "m": 0.05}) == "STOP"  # rung 1 prunes
    assert asha.on_trial_result(None, _trial("t0000", "t0000"), {"epoch": 3, "m": 0.0}) == "CONTINUE"  # last epoch
    # On resume, a trial whose last epoch Tune never saw has ended all the same.
    assert asha.decide("t0000", 3, 0.0) == "STOP"


def test_record_best_epoch_breaks_ties_towards_the_earlier_epoch(tmp_path: Path) -> None:
    paths = TunePaths(tmp_path)
    history = [{"epoch": e, "val_accuracy": v, "train_loss": 1.0 / e, "training_iteration": e, "new_best_epoch": -1}
               for e, v in ((1, 0.5), (2, 0.9), (3, 0.9))]
    record = make_record("t0004", params={"train.lr": 0.1}, history=history, status=None, paths=paths,
                         metric="val_accuracy", mode="max", max_epochs=3)
    assert record.status == "completed" and record.epochs == 3
    assert record.best["epoch"] == 2
    assert record.checkpoint_path == str(tmp_path / "tune" / "train" / "t0004" / "epoch_0002" / MODEL_DIR)
    assert "training_iteration" not in record.history[0]  # attempt-relative counters are not kept
    write_record(paths, record)
    assert read_record(paths.record("t0004")) == record
    paths.record("t0005").write_text('{"trial_id": "t0005", "par')  # truncated by hand
    assert set(read_records(paths)) == {"t0004"}


# --- the plan a re-run makes -------------------------------------------------------------------


def _config(tmp_path: Path) -> Config:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lr": {"name": "FloatDistribution",
                                                  "attributes": {"low": 1e-4, "high": 0.1, "log": True}}}))
    return Config(name="toy", runs_dir=str(tmp_path / "runs"), model_name="cnn", model=tiny_cnn_config(),
                  data=DataConfig(image_size=8, num_classes=3), train=TrainConfig(max_epochs=4),
                  tune=TuneConfig(search_space=str(space), num_samples=6, grace_period=1, reduction_factor=2))


def _rows(values: list[float], start: int = 0) -> list[dict]:
    return [{"epoch": e, "val_accuracy": v, "train_loss": 1.0, START_EPOCH: start} for e, v in enumerate(values, 1)]


def _checkpoint(paths: TunePaths, tid: str, history: list[dict], *, snapshot: bool = True) -> None:
    storage = paths.train / tid
    epoch = len(history)
    _atomic.write_json(storage / f"epoch_{epoch:04d}" / STATE_DIR / STATE_JSON,
                       {"format": 1, "epoch": epoch, "best_value": None, "best_epoch": None, "history": history})
    if snapshot:
        entry = {"checkpoint_dir_name": f"epoch_{epoch:04d}", "metrics": {}}
        _atomic.write_json(storage / "checkpoint_manager_snapshot.json",
                           {"checkpoint_results": [entry], "latest_checkpoint_result": entry})


def test_plan_keeps_finished_trials_mends_half_written_ones_and_continues_the_rest(tmp_path: Path) -> None:
    from hybrid.tune import _open_study, _plan

    config = _config(tmp_path)
    paths = TunePaths(config.run_dir)
    lines: list[str] = []
    study, _ = _open_study(paths, "fp", config, lines.append)
    trials = [study.ask(fixed_distributions={"train.lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True)})
              for _ in range(6)]
    args = {"paths": paths, "metric": "val_accuracy", "mode": "max", "max_epochs": 4}
    # t0000: finished and recorded
    done = make_record("t0000", params=trials[0].params, history=_rows([0.6, 0.8, 0.85, 0.9]), status=None, **args)
    write_record(paths, done)
    study.tell(0, 0.9)
    # t0001: Optuna told, record still 'running' (killed in between): mended from its checkpoint
    write_record(paths, make_record("t0001", params=trials[1].params, history=_rows([0.4]), status="running", **args))
    _checkpoint(paths, "t0001", _rows([0.4, 0.5]))
    study.tell(1, 0.5)
    # t0002: record final, Optuna not told yet: told now
    write_record(paths, make_record("t0002", params=trials[2].params, history=_rows([0.7, 0.75]), status=None, **args))
    # t0003: in flight at epoch 2, recorded: continues from epoch 2
    write_record(paths, make_record("t0003", params=trials[3].params, history=_rows([0.65, 0.7]), status="running",
                                    **args))
    _checkpoint(paths, "t0003", _rows([0.65, 0.7]))
    # t0004: checkpoint at epoch 2 that Tune never acted on, and ASHA's rung at 2 stops it
    write_record(paths, make_record("t0004", params=trials[4].params, history=_rows([0.61]), status="running", **args))
    _checkpoint(paths, "t0004", _rows([0.61, 0.3]))
    # t0005: storage without a run snapshot (killed before its first checkpoint registered): from epoch 0
    _checkpoint(paths, "t0005", _rows([0.5]), snapshot=False)
    before = paths.record("t0000").read_bytes()

    plan = _plan(study, paths, config)

    assert [r.trial_id for r in plan.kept] == ["t0000", "t0001", "t0002", "t0004"]
    assert paths.record("t0000").read_bytes() == before
    mended = read_record(paths.record("t0001"))
    assert mended.status == "pruned" and mended.epochs == 2
    assert plan.kept[3].status == "pruned" and plan.kept[3].epochs == 2
    states = {t.number: t.state for t in study.get_trials()}
    assert states[2] == states[4] == optuna.trial.TrialState.COMPLETE
    assert study.get_trials()[2].value == 0.75  # the last value, as OptunaSearch tells it
    assert [tid for tid, _ in plan.resume] == ["t0003", "t0005"]
    assert plan.prior["t0003"].epoch == 2 and plan.prior["t0003"].resumed_from == [2]
    assert plan.prior["t0005"].epoch == 0 and not (paths.train / "t0005").exists()
    assert read_record(paths.record("t0003")).status == "running"
    # ASHA's first rung holds every trial that reached epoch 1 (t0005 never did)
    rungs = {milestone: set(recorded) for milestone, recorded in plan.scheduler._brackets[0]._rungs}
    assert rungs[1] == {"t0000", "t0001", "t0002", "t0003", "t0004"}


def test_a_changed_fingerprint_wipes_the_tune(tmp_path: Path) -> None:
    from hybrid.tune import _open_study

    config = _config(tmp_path)
    paths = TunePaths(config.run_dir)
    study, _ = _open_study(paths, "one", config, print)
    study.ask()
    write_record(paths, make_record("t0000", params={}, history=[], status="running", paths=paths,
                                    metric="val_accuracy", mode="max", max_epochs=4))
    same, _ = _open_study(paths, "one", config, print)
    assert len(same.get_trials()) == 1 and paths.record("t0000").exists()
    lines: list[str] = []
    fresh, _ = _open_study(paths, "two", config, lines.append)
    assert fresh.get_trials() == [] and not paths.trials.exists()
    assert paths.fingerprint.read_text() == "two"
    assert "fresh search" in lines[0]
    paths.study.write_bytes(b"not a database")
    lines.clear()
    again, _ = _open_study(paths, "two", config, lines.append)
    assert again.get_trials() == [] and "could not be read" in lines[0]
    assert json.loads(json.dumps(trial_name(12))) == "t0012"
