"""A real multi-objective tune (Ray Tune + OptunaSearch on Optuna's SQLite storage + ASHA on tune.metric)
over real TorchTrainer trials, on toy images: the candidate metrics reach the records, the study, and the
summary's Pareto front; a re-run with the same config redoes nothing; other objectives start afresh."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import yaml

from hybrid.artifacts import WEIGHTS
from hybrid.config import Config, DataConfig, TrainConfig, TuneConfig
from hybrid.fingerprint import input_files, stage_fingerprints
from hybrid.pareto import dominates
from hybrid.testing import tiny_cnn_config
from hybrid.tune import STUDY_NAME, tune
from hybrid.tune_records import TunePaths
from tests.test_train_ray import toy_datasets

pytestmark = [pytest.mark.ray, pytest.mark.slow]

OBJECTIVES = [{"val_accuracy": "max"}, {"latency_ms": "min"}, {"size_bytes": "min"}, {"params": "min"}]
COSTS = ("latency_ms", "size_bytes", "params")


def _tune(config: Config, datasets: dict, lines: list[str]):
    fingerprint = stage_fingerprints(config, input_files=input_files(config), code="test")["tune"].digest
    return tune(config, datasets, train_rows=600, metadata={}, run_dir=config.run_dir, fingerprint=fingerprint,
                echo=lines.append)


def test_multi_objective_tune_records_costs_and_a_pareto_front(runtime, tmp_path):
    space = tmp_path / "space.yaml"
    # Two widths: the wider CNN has more parameters and bytes, so the costs differ between trials.
    space.write_text(yaml.safe_dump({
        "model.base_channels": {"name": "CategoricalDistribution", "attributes": {"choices": [2, 8]}},
        "train.lr": {"name": "FloatDistribution", "attributes": {"low": 1e-3, "high": 1e-2, "log": True}},
    }))
    config = Config(
        name="mo", runs_dir=str(tmp_path / "runs"), model_name="cnn", model=tiny_cnn_config(),
        data=DataConfig(image_size=8, num_classes=3, path=str(tmp_path / "no-data")),  # a fixed signature
        train=TrainConfig(max_epochs=1, batch_size=32, eval_batch_size=64),
        tune=TuneConfig(search_space=str(space), num_samples=2, max_concurrent=1, seed=0, n_startup_trials=2,
                        objectives=tuple(OBJECTIVES)),
    )
    datasets = toy_datasets()
    lines: list[str] = []
    result = _tune(config, datasets, lines)
    paths = TunePaths(config.run_dir.resolve())

    # Every trial measured its costs once and reported them with its epoch; they land in the records.
    assert len(result.trials) == 2 and all(t.status == "completed" for t in result.trials), result.trials
    for t in result.trials:
        for row in (t.history[-1], t.best):
            assert row["latency_ms"] > 0 and row["size_bytes"] > 0 and row["params"] > 0, row
        # size_bytes is the float model file the summary sizes models by
        assert t.best["size_bytes"] == (paths.checkpoint_model(t.trial_id, 1) / WEIGHTS).stat().st_size
    widths = {t.params["model.base_channels"]: t.best["params"] for t in result.trials}
    if len(widths) == 2:
        assert widths[8] > widths[2]

    # The study in the run's storage is multi-objective, one direction per objective, told the reported values.
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{paths.study}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE", "MINIMIZE", "MINIMIZE"]
    frozen = sorted(study.get_trials(), key=lambda tr: tr.number)
    assert [tr.state.name for tr in frozen] == ["COMPLETE"] * 2
    for tr, record in zip(frozen, result.trials, strict=True):
        last = record.history[-1]
        assert tr.values == pytest.approx([last["val_accuracy"], *(last[m] for m in COSTS)])

    # The summary names the objectives and a non-dominated front of trials; the teacher is the best on accuracy.
    summary = result.summary()
    assert summary["objectives"] == [{"metric": m, "mode": d} for o in OBJECTIVES for m, d in o.items()]
    pareto = summary["pareto"]
    front, dominated = pareto["front"], pareto["dominated"]
    assert front and not pareto["excluded"]
    assert sorted(p["id"] for p in front + dominated) == [t.trial_id for t in result.trials]
    names = ["val_accuracy", *COSTS]
    objectives = config.tune.objectives
    for p in front:
        assert not any(dominates([q[m] for m in names], [p[m] for m in names], objectives) for q in front + dominated)
    for p in dominated:
        assert any(dominates([q[m] for m in names], [p[m] for m in names], objectives) for q in front)
    assert summary["best_trial"] == max(result.trials, key=lambda t: (t.best["val_accuracy"], -int(t.trial_id[1:]))).trial_id
    assert any("optimising val_accuracy (max), latency_ms (min)" in line and "ASHA stops on val_accuracy" in line
               for line in lines), lines

    # The same config again: nothing is redone (no trial runs, records and study untouched).
    records = {p.name: p.read_bytes() for p in sorted(paths.trials.glob("*.json"))}
    lines.clear()
    again = _tune(config, datasets, lines)
    assert {p.name: p.read_bytes() for p in sorted(paths.trials.glob("*.json"))} == records
    assert len(optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{paths.study}").trials) == 2
    assert again.summary() == summary
    assert any("2 finished trials kept" in line and "; 0 new" in line for line in lines), lines

    # Other objectives: a fresh search, whose study has the new directions.
    # (one trial: the point is the new study, not another search)
    fewer = dataclasses.replace(config, tune=dataclasses.replace(config.tune, objectives=tuple(OBJECTIVES[:2]),
                                                                 num_samples=1))
    lines.clear()
    fresh = _tune(fewer, datasets, lines)
    assert any("starting a fresh search" in line for line in lines), lines
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{paths.study}")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert len(study.trials) == 1 and all(len(tr.values) == 2 for tr in study.trials)
    assert fresh.summary()["objectives"] == [{"metric": "val_accuracy", "mode": "max"},
                                             {"metric": "latency_ms", "mode": "min"}]
