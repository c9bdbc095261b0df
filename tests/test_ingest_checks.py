"""Unit tests of hybrid.ingest_checks: the pure checks on ingest's counts (no Spark, no Ray)."""

from __future__ import annotations

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hybrid.config import DataConfig, TrainConfig
from hybrid.errors import ConfigError, DataError
from hybrid.ingest_checks import (
    check_classes,
    check_splits,
    check_test_source,
    check_trainable,
    check_trainable_search,
    largest_sampled,
)

NAMES = ("cat", "dog", "owl")


def test_check_trainable_fails_below_one_batch_per_worker_with_the_brief_message() -> None:
    with pytest.raises(DataError) as err:
        check_trainable({"train": 90}, batch_size=128, num_workers=1, grad_accum_steps=1)
    assert str(err.value) == (
        "train split has 90 rows, fewer than train.batch_size=128 x train.num_workers=1 (= 128): "
        "each worker would train 0 steps; lower train.batch_size or add rows"
    )
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("rows", "batch", "workers", "accum", "steps"),
    [
        (128, 128, 1, 1, 1),  # exactly one batch
        (255, 128, 1, 1, 1),  # the rest is dropped (drop_last)
        (256, 64, 2, 1, 2),  # 128 rows per worker
        (1000, 10, 1, 3, 34),  # 100 batches, a last partial accumulation still steps
    ],
)
def test_check_trainable_returns_steps_per_epoch(rows: int, batch: int, workers: int, accum: int, steps: int) -> None:
    assert check_trainable({"train": rows}, batch_size=batch, num_workers=workers, grad_accum_steps=accum) == steps


def test_check_trainable_counts_each_workers_equal_share() -> None:
    # 255 rows on 2 workers: 127 each (Ray Train's equal split), one short of a batch of 128.
    with pytest.raises(DataError, match=r"train split has 255 rows, fewer than train.batch_size=128 x "
                                        r"train.num_workers=2 \(= 256\)"):
        check_trainable({"train": 255}, batch_size=128, num_workers=2)


def test_check_trainable_search_uses_the_largest_sampled_batch_and_workers() -> None:
    train = TrainConfig(batch_size=16)
    space = {"train.batch_size": CategoricalDistribution([16, 64]), "train.lr": FloatDistribution(1e-4, 1e-2)}
    with pytest.raises(DataError, match=r"train.batch_size=64 \(the largest the search space samples\) x "
                                        r"train.num_workers=1"):
        check_trainable_search({"train": 50}, train=train, space=space)
    assert check_trainable_search({"train": 50}, train=train, space=None) == 3
    space = {"train.num_workers": IntDistribution(1, 3)}
    with pytest.raises(DataError, match=r"train.num_workers=3 \(= 48\)"):
        check_trainable_search({"train": 47}, train=train, space=space)


def test_largest_sampled_respects_int_steps_and_rejects_non_integers() -> None:
    with pytest.warns(UserWarning, match="not divisible"):  # Optuna itself moves high to 88
        stepped = IntDistribution(8, 100, step=16)
    assert largest_sampled({"k": stepped}, "k", default=1) == 88
    assert largest_sampled({"k": IntDistribution(8, 512, log=True)}, "k", default=1) == 512
    assert largest_sampled({}, "k", default=7) == 7
    with pytest.raises(ConfigError, match="k must be searched over integers"):
        largest_sampled({"k": FloatDistribution(1.0, 2.0)}, "k", default=1)
    with pytest.raises(ConfigError, match="k must be searched over integers"):
        largest_sampled({"k": CategoricalDistribution([True, False])}, "k", default=1)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_an_empty_split_is_one_line_naming_split_origin_and_counts(split: str) -> None:
    counts = {"train": 10, "val": 2, "test": 4} | {split: 0}
    config = DataConfig(source="parquet", path="/d/train.parquet", test_path="/d/test.parquet", image_size=4,
                        num_classes=3)
    with pytest.raises(DataError) as err:
        check_splits(counts, quarantined={"label_null": 3, "pixel_count": 0}, config=config)
    message = str(err.value)
    assert message.startswith(f"{split} split has 0 rows after validation, but every split needs at least 1")
    assert str(counts) in message and "quarantined 3 {'label_null': 3}" in message
    assert {"train": "'/d/train.parquet'", "val": "data.val_fraction=0.1",
            "test": "test table '/d/test.parquet'"}[split] in message
    assert "\n" not in message


def test_an_empty_held_out_test_split_names_test_fraction() -> None:
    config = DataConfig(source="parquet", path="/d/t.parquet", image_size=4, num_classes=3, test_fraction=0.01)
    with pytest.raises(DataError, match=r"data.test_fraction=0.01 of each class .*raise data.test_fraction"):
        check_splits({"train": 5, "val": 1, "test": 0}, quarantined={}, config=config)
    check_splits({"train": 5, "val": 1, "test": 1}, quarantined={}, config=config)


def test_no_test_table_and_no_fraction_fails_naming_both_keys() -> None:
    # Built inside the block: a check at config load would do as well (and better).
    for source, modality in (("parquet", "images"), ("csv", "text"), ("squad", "qa")):
        with pytest.raises(ConfigError, match=r"data.test_fraction > 0 must hold, but got 0.0: set data.test_fraction "
                                              r"\(e.g. 0.15\) or data.test_path"):
            check_test_source(DataConfig(source=source, modality=modality, path="/x"))
    with pytest.raises(ConfigError, match=r"set data.test_fraction \(e.g. 0.15\)$"):
        check_test_source(DataConfig(source="sentence_polarity", modality="text", path="/x"))
    check_test_source(DataConfig())  # Fashion-MNIST brings its test files
    check_test_source(DataConfig(source="parquet", path="/x", test_path="/y"))
    check_test_source(DataConfig(source="parquet", path="/x", test_fraction=0.2))


def test_a_single_training_class_is_an_error_naming_it() -> None:
    counts = {"train": {1: 40}, "val": {1: 4}, "test": {0: 3, 1: 5}}
    with pytest.raises(DataError) as err:
        check_classes(counts, label_names=NAMES)
    assert str(err.value).startswith(
        "train split holds a single class, 'dog' (label 1: train 40, val 4, test 5), but a classifier needs at "
        "least 2 of its 3 classes"
    )


def test_classes_absent_from_training_are_warned_with_counts_per_split() -> None:
    counts = {"train": {0: 40, 1: 30}, "val": {0: 4, 1: 3}, "test": {2: 7}}
    warnings = check_classes(counts, label_names=NAMES)
    assert warnings[0] == (
        "train split lacks 1 of 3 classes: 'owl' (label 2: train 0, val 0, test 7); the test split holds 1 of "
        "them; the model cannot learn them, and test accuracy and macro metrics count them as misses"
    )
    assert warnings[1] == (
        "test split lacks 2 of the 2 classes in training: 'cat' (label 0: train 40, val 4, test 0), "
        "'dog' (label 1: train 30, val 3, test 0); test metrics say nothing about them"
    )
    assert len(warnings) == 2


def test_balanced_classes_give_no_warning_and_long_lists_are_cut() -> None:
    assert check_classes({s: {0: 5, 1: 5, 2: 5} for s in ("train", "val", "test")}, label_names=NAMES) == []
    names = tuple(f"c{i}" for i in range(40))
    (warning,) = check_classes({"train": {0: 9, 1: 9}, "val": {0: 1, 1: 1}, "test": {0: 1, 1: 1}}, label_names=names)
    assert warning.startswith("train split lacks 38 of 40 classes: 'c2' (label 2: train 0, val 0, test 0)")
    assert "'c13'" in warning and "'c14'" not in warning and "and 26 more" in warning
