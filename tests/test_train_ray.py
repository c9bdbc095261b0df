"""The training loop under a real Ray Train TorchTrainer, on toy images."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import pytest

from hybrid.artifacts import load_model
from hybrid.config import TrainConfig
from hybrid.testing import tiny_cnn_config, toy_images
from hybrid.train import LoopSpec, best_model_dir, build_trainer, checkpoint_dir, evaluate
from hybrid.train_state import NEW_BEST, START_EPOCH, best_index, read_train_state

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
    model, meta = load_model(checkpoint_dir(result.checkpoint))
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
    model, meta = load_model(checkpoint_dir(result.checkpoint))
    # each worker saw half of the validation split; the all-reduced matrix covers all of it
    assert sum(map(sum, meta["val_confusion_matrix"])) == 150
    assert result.metrics["train_samples_per_s"] > 0
    assert isinstance(model, torch.nn.Module) and not hasattr(model, "module")


def _spec(max_epochs: int) -> LoopSpec:
    arch = tiny_cnn_config(dropout=0.3)  # dropout: the restored RNG state matters
    train = TrainConfig(max_epochs=max_epochs, batch_size=32, lr=3e-3, eval_batch_size=64, schedule="constant")
    return LoopSpec(model_name="cnn", model=dataclasses.asdict(arch), train=dataclasses.asdict(train),
                    num_classes=3, train_rows=600, metadata={})


@pytest.mark.slow
@pytest.mark.full  # resuming from a checkpoint is also what test_tune_kill_ray and test_multinode's lost node check
def test_a_second_fit_with_the_same_name_resumes_and_continues_the_straight_curve(runtime, tmp_path):
    """3 epochs straight == 1 epoch, then a new fit under the same name/storage continuing to 3.

    A constant schedule makes ``max_epochs`` the only difference between the two fits' specs; the
    schedule's own resume is covered by the unit tests.
    """
    datasets = toy_datasets()
    straight = build_trainer(_spec(3), datasets, storage_path=tmp_path, name="straight").fit()
    first = build_trainer(_spec(1), datasets, storage_path=tmp_path, name="resumed").fit()
    assert first.error is None and first.metrics["epoch"] == 1
    resumed = build_trainer(_spec(3), datasets, storage_path=tmp_path, name="resumed").fit()
    assert resumed.error is None

    history = read_train_state(resumed.checkpoint.path).history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert [row[START_EPOCH] for row in history] == [0, 1, 1]  # continued from epoch 1, not restarted
    reference = read_train_state(straight.checkpoint.path).history
    for ours, theirs in zip(history, reference):
        for key in ("train_loss", "val_loss", "val_accuracy"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), (ours["epoch"], key)

    # Ray kept the best epoch by hybrid's rule (ties to the earlier epoch) and the latest one, no other
    best_epoch = best_index(history, "val_accuracy", "max") + 1
    kept = sorted(p.name for p in (tmp_path / "resumed").glob("epoch_*"))
    assert kept == sorted({f"epoch_{best_epoch:04d}", "epoch_0003"})
    assert history[best_epoch - 1][NEW_BEST] == best_epoch
    best = best_model_dir(resumed, what="the resumed run")
    assert best == tmp_path / "resumed" / f"epoch_{best_epoch:04d}" / "model"
    _, meta = load_model(best)
    assert meta["epoch"] == best_epoch

    # the same name with a different run (another learning rate) is refused, never silently resumed
    changed = dataclasses.replace(_spec(3), train={**_spec(3).train, "lr": 1e-2})
    with pytest.raises(Exception, match="holds checkpoints of a different run"):
        build_trainer(changed, datasets, storage_path=tmp_path, name="resumed").fit()
    assert sorted(p.name for p in best.iterdir()) == ["manifest.json", "model.json", "model.safetensors"]
