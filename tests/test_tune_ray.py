"""A real Ray Tune search (OptunaSearch + ASHA) over real TorchTrainer trials, on toy images."""

from __future__ import annotations

import json

import pytest
import yaml

from hybrid.artifacts import load_model
from hybrid.config import Config, DataConfig, TrainConfig, TuneConfig
from hybrid.testing import tiny_cnn_config
from hybrid.tune import tune
from tests.test_train_ray import toy_datasets

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_diverging_trial_fails_and_the_search_goes_on(runtime, tmp_path):
    space = tmp_path / "space.yaml"
    # lr=1e12 makes SGD overflow to a non-finite loss within a few steps; 0.05 trains.
    space.write_text(yaml.safe_dump({
        "train.lr": {"name": "CategoricalDistribution", "attributes": {"choices": [0.05, 1.0e12]}},
    }))
    config = Config(
        name="toy",
        runs_dir=str(tmp_path / "runs"),
        model_name="cnn",
        model=tiny_cnn_config(),
        data=DataConfig(image_size=8, num_classes=3),
        train=TrainConfig(max_epochs=2, batch_size=32, optimizer="sgd", eval_batch_size=64),
        # seed 1: trials 0, 1, 2 draw 1e12, 0.05, 1e12 (each trial's draw depends on (seed, number) only)
        tune=TuneConfig(search_space=str(space), num_samples=3, seed=1, n_startup_trials=3, grace_period=2),
    )
    result = tune(config, toy_datasets(), train_rows=600, metadata={}, run_dir=config.run_dir, fingerprint="one",
                  echo=lambda line: None)

    statuses = {t.params["train.lr"]: t.status for t in result.trials}
    assert len(result.trials) == 3
    assert statuses[1.0e12] == "failed"
    assert statuses[0.05] == "completed"
    failed = [t for t in result.trials if t.status == "failed"]
    assert all("diverged" in (t.error or "") for t in failed), [t.error for t in failed]
    assert result.counts() == {"trials": 3, "completed": 1, "pruned": 0, "failed": 2}
    assert result.best.params == {"train.lr": 0.05}
    assert result.best.best["val_accuracy"] > 0.5
    model, meta = load_model(result.best_checkpoint)
    assert meta["val_metrics"]["accuracy"] == pytest.approx(result.best.best["val_accuracy"])
    records = sorted((tmp_path / "runs" / "toy" / "trials").glob("*.json"))
    assert [p.name for p in records] == ["t0000.json", "t0001.json", "t0002.json"]
    assert [json.loads(p.read_text())["status"] for p in records] == ["failed", "completed", "failed"]
    assert result.best.trial_id == "t0001"
    assert result.best_checkpoint == config.run_dir.resolve() / "tune" / "train" / "t0001" / (
        f"epoch_{result.best.best['epoch']:04d}") / "model"
