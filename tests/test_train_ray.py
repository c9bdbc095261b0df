"""The training loop under a real Ray Train TorchTrainer, on toy images."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import pytest

from hybrid.artifacts import load_model
from hybrid.config import TrainConfig
from hybrid.testing import tiny_cnn_config, toy_images
from hybrid.train import LoopSpec, build_trainer, evaluate

pytestmark = [pytest.mark.ray]


def toy_datasets(n_train: int = 600, n_val: int = 150):
    import ray.data

    out = {}
    for name, n, seed in (("train", n_train, 0), ("val", n_val, 1)):
        images, labels = toy_images(n, seed=seed)
        out[name] = ray.data.from_items(
            [{"pixels": img.astype(np.float32), "label": int(lbl)} for img, lbl in zip(images, labels)]
        ).materialize()
    return out


def test_torch_trainer_learns_and_checkpoint_matches_reported_metrics(runtime, tmp_path):
    datasets = toy_datasets()
    arch = tiny_cnn_config()
    spec = LoopSpec(
        model_name="cnn",
        model=dataclasses.asdict(arch),
        train=dataclasses.asdict(TrainConfig(max_epochs=3, batch_size=32, lr=3e-3, eval_batch_size=64)),
        num_classes=arch.num_classes,
        train_rows=600,
        metadata={"label_names": ["a", "b", "c"]},
    )
    result = build_trainer(spec, datasets, storage_path=tmp_path, name="toy").fit()

    assert result.error is None
    assert result.metrics["epoch"] == 3
    assert result.metrics["val_accuracy"] > 0.8  # chance is 1/3
    model, meta = load_model(result.checkpoint.path)
    assert meta["label_names"] == ["a", "b", "c"]
    again = evaluate(model, datasets["val"], model_name="cnn", num_classes=3)
    assert again.rows == 150
    # the checkpoint holds exactly the weights whose validation metrics it records
    assert again.metrics["accuracy"] == pytest.approx(meta["val_metrics"]["accuracy"])
    assert again.confusion_matrix == meta["val_confusion_matrix"]


@pytest.mark.slow
def test_two_workers_run_ddp_and_metrics_cover_every_validation_row(runtime, tmp_path):
    runtime.stop_spark()  # both CPUs for the two workers
    datasets = toy_datasets()
    arch = tiny_cnn_config()
    spec = LoopSpec(
        model_name="cnn",
        model=dataclasses.asdict(arch),
        train=dataclasses.asdict(TrainConfig(max_epochs=1, batch_size=32, num_workers=2, eval_batch_size=32)),
        num_classes=3,
        train_rows=600,
        metadata={},
    )
    result = build_trainer(spec, datasets, storage_path=tmp_path, name="ddp").fit()
    assert result.error is None
    model, meta = load_model(result.checkpoint.path)
    # each worker saw half of the validation split; the all-reduced matrix covers all of it
    assert sum(map(sum, meta["val_confusion_matrix"])) == 150
    assert result.metrics["train_samples_per_s"] > 0
    assert isinstance(model, torch.nn.Module) and not hasattr(model, "module")
