"""Unit tests of a multi-objective tune's pieces, without a Ray cluster: the candidate metrics a trial
measures, what its record keeps, the searcher and study in multi-objective mode (real Optuna SQLite
storage), the plan a re-run makes, and the summary's Pareto front."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
import yaml

from hybrid.artifacts import WEIGHTS, save_model
from hybrid.config import Config, DataConfig, TrainConfig, TuneConfig
from hybrid.measure import COST_METRICS, float_costs
from hybrid.models import create_model
from hybrid.testing import tiny_cnn_config
from hybrid.tune import TuneResult
from hybrid.tune_records import TunePaths, history_row, make_record, write_record

_tune_ray = pytest.importorskip("hybrid._tune_ray")  # needs ray[tune] importable, not running

OBJECTIVES = ({"val_accuracy": "max"}, {"latency_ms": "min"}, {"size_bytes": "min"})
METRICS = ["val_accuracy", "latency_ms", "size_bytes"]
SPACE = {"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(tmp_path: Path, objectives: tuple = OBJECTIVES) -> Config:
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"train.lr": {"name": "FloatDistribution",
                                                  "attributes": {"low": 1e-4, "high": 0.1, "log": True}}}))
    return Config(name="toy", runs_dir=str(tmp_path / "runs"), model_name="cnn", model=tiny_cnn_config(),
                  data=DataConfig(image_size=8, num_classes=3), train=TrainConfig(max_epochs=2),
                  tune=TuneConfig(search_space=str(space), num_samples=3, objectives=objectives))


def _rows(*values: tuple[float, float, int]) -> list[dict]:
    return [{"epoch": e, "val_accuracy": a, "latency_ms": lat, "size_bytes": size, "train_loss": 1.0}
            for e, (a, lat, size) in enumerate(values, 1)]


# --- what a trial measures and keeps ---------------------------------------------------------------


def test_float_costs_are_the_saved_file_size_the_parameter_count_and_a_latency(tmp_path: Path) -> None:
    arch = tiny_cnn_config(dropout=0.3)
    model = create_model("cnn", config=arch)
    model.train()
    inputs = (torch.rand(5, 1, 8, 8),)  # fewer rows than the timed batch: recycled

    costs = float_costs(model, inputs)

    assert set(costs) == set(COST_METRICS)
    saved = save_model(tmp_path / "m", model, family="cnn", config=arch)
    assert costs["size_bytes"] == (saved / WEIGHTS).stat().st_size  # what summary.json calls size_bytes
    assert costs["params"] == sum(p.numel() for p in model.parameters()) and isinstance(costs["params"], int)
    assert costs["latency_ms"] > 0
    assert model.training  # measured in eval mode, handed back as it was


def test_a_record_keeps_the_candidate_metrics_of_each_epoch(tmp_path: Path) -> None:
    row = {"epoch": 1, "val_accuracy": 0.5, "latency_ms": 0.02, "size_bytes": 1000, "params": 250,
           "training_iteration": 1}
    assert history_row(row) == {k: v for k, v in row.items() if k != "training_iteration"}
    paths = TunePaths(tmp_path)
    record = make_record("t0000", params={}, history=_rows((0.5, 0.02, 900), (0.4, 0.03, 900)), status=None,
                         paths=paths, metric="val_accuracy", mode="max", max_epochs=2)
    assert record.best["epoch"] == 1 and record.best["latency_ms"] == 0.02 and record.best["size_bytes"] == 900


# --- the searcher and the study ---------------------------------------------------------------------


def _searcher(tmp_path: Path) -> _tune_ray.ResumableOptunaSearch:
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    return _tune_ray.ResumableOptunaSearch(
        space=SPACE, metric=METRICS, mode=["max", "min", "min"], storage=storage, study_name="hybrid",
        sampler=_tune_ray.SeededTPESampler(seed=0, n_startup_trials=2), resume=[], paths=TunePaths(tmp_path),
    )


def test_a_multi_objective_searcher_tells_every_objective_and_never_leaves_a_trial_running(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    for name in ("a", "b", "c", "d"):
        searcher.suggest(name)
    result = {"epoch": 2, "val_accuracy": 0.8, "latency_ms": 0.01, "size_bytes": 500}
    searcher.on_trial_result("a", result)  # no intermediate values in a multi-objective study: ignored
    searcher.on_trial_complete("a", result=result)
    searcher.on_trial_complete("b", result={"epoch": 1, "val_accuracy": 0.7})  # a cost never reported
    searcher.on_trial_complete("c", result={"epoch": 1, "val_accuracy": 0.7}, error=True)
    searcher.on_trial_complete("d", result=None, error=True)

    study = optuna.load_study(study_name="hybrid", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]
    trials = study.get_trials()
    assert trials[0].values == [0.8, 0.01, 500] and trials[0].intermediate_values == {}
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "FAIL", "FAIL"]


def test_open_study_is_multi_objective_and_never_reuses_a_study_of_other_directions(tmp_path: Path) -> None:
    from hybrid.tune import _open_study

    single = _config(tmp_path, objectives=())
    paths = TunePaths(single.run_dir)
    study, _ = _open_study(paths, "fp", single, print)
    study.ask()
    assert [d.name for d in study.directions] == ["MAXIMIZE"]

    lines: list[str] = []
    # Same fingerprint (a caller whose fingerprint leaves out tune.objectives): still a fresh study.
    multi, _ = _open_study(paths, "fp", _config(tmp_path), lines.append)
    assert [d.name for d in multi.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"] and multi.get_trials() == []
    assert "fresh search" in lines[0] and "tune.objectives need" in lines[0], lines
    again, _ = _open_study(paths, "fp", _config(tmp_path), lines.append)
    assert len(lines) == 1 and [d.name for d in again.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE"]


def test_plan_tells_a_half_recorded_trial_all_its_last_values(tmp_path: Path) -> None:
    from hybrid.tune import _open_study, _plan

    config = _config(tmp_path)
    paths = TunePaths(config.run_dir)
    study, _ = _open_study(paths, "fp", config, print)
    for _ in range(2):
        study.ask(fixed_distributions=SPACE)
    args = {"paths": paths, "metric": "val_accuracy", "mode": "max", "max_epochs": 2}
    # Both records final, Optuna not told (killed in between); t0001 has no cost (a model that reports none).
    write_record(paths, make_record("t0000", params={}, history=_rows((0.6, 0.02, 900), (0.7, 0.02, 900)),
                                    status=None, **args))
    write_record(paths, make_record("t0001", params={}, history=[{"epoch": 1, "val_accuracy": 0.5}],
                                    status=None, **args))

    plan = _plan(study, paths, config)

    assert [r.trial_id for r in plan.kept] == ["t0000", "t0001"]
    trials = study.get_trials()
    assert trials[0].state.name == "COMPLETE" and trials[0].values == [0.7, 0.02, 900]  # the last epoch's
    assert trials[1].state.name == "PRUNED"


# --- the summary ------------------------------------------------------------------------------------


def _result(tmp_path: Path, objectives: tuple) -> TuneResult:
    paths = TunePaths(tmp_path)
    args = {"paths": paths, "metric": "val_accuracy", "mode": "max", "max_epochs": 1}
    trials = [
        make_record("t0000", params={}, history=_rows((0.9, 0.05, 2000)), status=None, **args),  # accurate
        make_record("t0001", params={}, history=_rows((0.8, 0.01, 500)), status=None, **args),  # fast, small
        make_record("t0002", params={}, history=_rows((0.7, 0.02, 900)), status=None, **args),  # beaten by t0001
        make_record("t0003", params={}, history=[], status="failed", error="boom", **args),
    ]
    config = _config(tmp_path, objectives)
    return TuneResult(trials=trials, best=trials[0], metric="val_accuracy", mode="max",
                      objectives=config.tune.objectives if config.tune.multi_objective else ())


def test_the_summary_records_the_objectives_and_the_trials_front(tmp_path: Path) -> None:
    summary = _result(tmp_path, OBJECTIVES).summary()

    assert summary["objectives"] == [{"metric": m, "mode": d} for o in OBJECTIVES for m, d in o.items()]
    pareto = summary["pareto"]
    assert [p["id"] for p in pareto["front"]] == ["t0000", "t0001"]
    assert [p["id"] for p in pareto["dominated"]] == ["t0002"]
    assert pareto["excluded"][0]["point"]["id"] == "t0003"
    assert "val_accuracy is missing" in pareto["excluded"][0]["reasons"]
    assert pareto["front"][1] == {"id": "t0001", "status": "completed", "epoch": 1, "val_accuracy": 0.8,
                                  "latency_ms": 0.01, "size_bytes": 500}
    assert summary["best_trial"] == "t0000"  # the teacher stays the best on tune.metric


def test_a_single_metric_summary_is_as_before(tmp_path: Path) -> None:
    summary = _result(tmp_path, ()).summary()
    assert set(summary) == {"trials", "completed", "pruned", "failed", "metric", "best_trial", "best_config",
                            "best_val_accuracy", "best_epoch"}
