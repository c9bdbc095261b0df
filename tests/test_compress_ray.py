"""A real compression search (Ray Tune trials, each a TorchTrainer student + int8 quantization, on Optuna's
SQLite storage) on toy images: 2 candidates of 1 epoch; every candidate is measured after int8 and recorded,
the front and the choice are made from them; a re-run with the same fingerprint trains nothing; another
fingerprint starts afresh."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
import yaml

from hybrid.compress import STUDY_NAME, CandidatePaths, read_candidates, search
from hybrid.config import Config, DataConfig, TrainConfig
from hybrid.distill import DistillConfig
from hybrid.pareto import CompressionConfig
from hybrid.quantize import QuantizeConfig, load_quantized
from hybrid.testing import tiny_cnn_config
from tests.test_train_ray import toy_datasets

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _teacher(directory: Path) -> Path:
    import torch

    from hybrid.artifacts import save_model
    from hybrid.models import CNN

    config = tiny_cnn_config()
    torch.manual_seed(0)
    return save_model(directory, CNN(config), family="cnn", config=config)


def test_compression_search_scores_int8_candidates_and_resumes(runtime, tmp_path):
    space = tmp_path / "compression.yaml"
    # Two widths: the narrower student has fewer parameters and a smaller int8 file.
    space.write_text(yaml.safe_dump({
        "distill.width_multiplier": {"name": "CategoricalDistribution", "attributes": {"choices": [0.5, 1.0]}},
        "distill.alpha": {"name": "FloatDistribution", "attributes": {"low": 0.3, "high": 0.9, "log": False}},
    }))
    config = Config(
        name="cs", runs_dir=str(tmp_path / "runs"), model_name="cnn", model=tiny_cnn_config(),
        data=DataConfig(image_size=8, num_classes=3, path=str(tmp_path / "no-data")),
        train=TrainConfig(max_epochs=1, batch_size=32, eval_batch_size=64),
        distill=DistillConfig(max_epochs=1),
        quantize=QuantizeConfig(backend="torch", calibration_samples=64, latency_repeats=1, max_accuracy_drop=1.0),
        compression=CompressionConfig(search_space=str(space), num_samples=2, max_concurrent=1, n_startup_trials=2,
                                      objectives=({"val_accuracy": "max"}, {"latency_ms": "min"}), select="knee"),
    )
    teacher = _teacher(tmp_path / "teacher")
    datasets = toy_datasets()
    run_dir = config.run_dir.resolve()
    lines: list[str] = []
    args = {"teacher_dir": teacher, "train_rows": 600, "metadata": {}, "run_dir": run_dir, "echo": lines.append}

    result = search(config, datasets, fingerprint="fp-1", **args)
    paths = CandidatePaths(run_dir)
    assert [c.status for c in result.candidates] == ["completed", "completed"], result.candidates
    for c in result.candidates:
        # measured after int8: the model file it saved is the one whose size it reports
        model, meta = load_quantized(c.int8_path)
        assert c.metrics["size_bytes"] == model.size_bytes and meta["backend"] == "torch"
        assert 0.0 <= c.metrics["val_accuracy"] <= 1.0 and c.metrics["latency_ms"] > 0
        assert c.metrics["passed_gate"] is True and Path(c.checkpoint_path).is_dir()
    widths = {c.params["distill.width_multiplier"]: c.metrics["params"] for c in result.candidates}
    if len(widths) == 2:
        assert widths[0.5] < widths[1.0]
    summary = result.summary()
    ids = [p["id"] for p in summary["pareto"]["front"] + summary["pareto"]["dominated"]]
    assert sorted(ids) == ["t0000", "t0001"] and summary["chosen"]["point"]["id"] in ids
    assert summary["chosen"]["rule"] == "knee" and summary["chosen"]["params"] == result.chosen.params
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{paths.study}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert [t.values for t in study.trials] == [[c.metrics["val_accuracy"], c.metrics["latency_ms"]]
                                                for c in result.candidates]

    # Same fingerprint: the finished candidates are kept as recorded, nothing trains again.
    stamps = {p.name: p.stat().st_mtime_ns for p in paths.candidates.iterdir()}
    again = search(config, datasets, fingerprint="fp-1", **args)
    assert {p.name: p.stat().st_mtime_ns for p in paths.candidates.iterdir()} == stamps
    assert again.chosen.trial_id == result.chosen.trial_id
    assert any("resuming: 2 kept, 0 re-run" in line for line in lines), lines

    # Another fingerprint (a changed compression config): a fresh search, no stale candidate reused.
    fewer = dataclasses.replace(config, compression=dataclasses.replace(config.compression, num_samples=1,
                                                                         n_startup_trials=1))
    fresh = search(fewer, datasets, fingerprint="fp-2", **args)
    assert any("starting a fresh search" in line for line in lines), lines
    assert [c.trial_id for c in fresh.candidates] == ["t0000"] and list(read_candidates(paths)) == ["t0000"]
