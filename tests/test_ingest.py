"""Ingest with real Spark on Ray (RayDP): validation rules, quarantine, split, normalisation, hand-off."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid.config import DataConfig
from hybrid.errors import DataError
from hybrid.ingest import REASONS, check_schema, group_split, ingest, stratified_split

pytestmark = [pytest.mark.spark, pytest.mark.ray]

SIZE, CLASSES = 4, 3
PIXELS = SIZE * SIZE


def _good_rows(n_per_class: int, *, seed: int) -> list[tuple[list[float], float]]:
    rng = np.random.default_rng(seed)
    return [
        ([float(v) for v in rng.integers(0, 256, PIXELS)], float(label))
        for label in range(CLASSES)
        for _ in range(n_per_class)
    ]


# Each bad row breaks exactly one rule (the first one checked wins when several are broken).
BAD_ROWS = {
    "label_null": [([1.0] * PIXELS, None)],
    "label_not_integer": [([1.0] * PIXELS, 1.5)],
    "label_out_of_range": [([1.0] * PIXELS, 7.0), ([1.0] * PIXELS, -1.0)],
    "pixels_null": [(None, 1.0)],
    "pixel_count": [([1.0] * (PIXELS - 1), 0.0), ([1.0] * (PIXELS + 3), 2.0)],
    "pixel_null": [([1.0] * (PIXELS - 1) + [None], 0.0)],
    "pixel_not_finite": [([1.0] * (PIXELS - 1) + [math.nan], 1.0), ([math.inf] + [1.0] * (PIXELS - 1), 2.0)],
}
SCHEMA = "pixels array<double>, label double"


@pytest.fixture
def bad_tables(spark, tmp_path):
    good_train, good_test = _good_rows(20, seed=0), _good_rows(5, seed=1)
    bad = [row for rows in BAD_ROWS.values() for row in rows]
    train, test = tmp_path / "train.parquet", tmp_path / "test.parquet"
    spark.createDataFrame(good_train + bad, SCHEMA).write.parquet(str(train))
    spark.createDataFrame(good_test + [([1.0] * PIXELS, None)], SCHEMA).write.parquet(str(test))
    return DataConfig(
        source="parquet", path=str(train), test_path=str(test), image_size=SIZE, num_classes=CLASSES,
        val_fraction=0.2, seed=3, blocks_per_split=2,
    ), len(good_train), len(good_test), len(bad)


def test_bad_rows_are_quarantined_with_counts_and_the_rest_kept(spark, bad_tables, tmp_path):
    config, n_train, n_test, n_bad = bad_tables
    result = ingest(spark, config, run_dir=tmp_path / "run")

    expected = {reason: len(BAD_ROWS.get(reason, [])) for reason in REASONS}
    expected["label_null"] += 1  # the test table's bad row
    assert result.quarantined == expected
    assert result.rows_in == n_train + n_bad + n_test + 1
    assert result.counts == {"train": n_train - 12, "val": 12, "test": n_test}  # 20 per class * 0.2 = 4 each

    quarantine = spark.read.parquet(result.quarantine_path)
    by_reason = {r["reason"]: r["count"] for r in quarantine.groupBy("reason").count().collect()}
    assert by_reason == {k: v for k, v in expected.items() if v}
    assert {r["table"] for r in quarantine.select("table").distinct().collect()} == {"train", "test"}


def test_splits_reach_ray_normalised_with_train_statistics_only(spark, bad_tables, tmp_path):
    config, *_ = bad_tables
    result = ingest(spark, config, run_dir=tmp_path / "run")
    train = np.stack(result.train.to_pandas()["pixels"].to_numpy())
    val = result.val.to_pandas()
    assert train.shape == (result.counts["train"], PIXELS)
    assert train.dtype == np.float32
    # standardised with the training split's own statistics: exactly zero mean, unit variance there
    assert abs(train.mean()) < 1e-4 and abs(train.std() - 1.0) < 1e-3
    assert sorted(val["label"].value_counts().to_dict().items()) == [(0, 4), (1, 4), (2, 4)]
    assert set(result.test.to_pandas()["label"]) <= {0, 1, 2}


def test_split_is_deterministic_and_stratified(spark, bad_tables):
    config, *_ = bad_tables
    df = spark.read.parquet(config.path).where("label IN (0, 1, 2) AND size(pixels) = 16")
    df = df.where("NOT exists(pixels, x -> x IS NULL OR isnan(x) OR abs(x) = double('inf'))")

    def val_rows(seed: int) -> list:
        _, val = stratified_split(df, val_fraction=0.25, seed=seed)
        return sorted((tuple(r["pixels"]), r["label"]) for r in val.collect())

    first = val_rows(seed=7)
    assert first == val_rows(seed=7)
    assert first != val_rows(seed=8)
    assert sorted(lbl for _, lbl in first) == [0.0] * 5 + [1.0] * 5 + [2.0] * 5


def test_a_group_split_keeps_each_group_whole_and_loses_no_row(spark):
    # 9 articles of different sizes (a null one too), 45 questions: whole articles go to one side.
    rows = [(f"q{i}", None if g == 8 else f"article {g}", i) for g in range(9) for i in range(g * 10, g * 10 + g + 1)]
    df = spark.createDataFrame(rows, "id string, group string, n int")

    def sides(seed: int) -> tuple[set, set, int]:
        train, val = group_split(df, val_fraction=0.3, seed=seed, group="group")
        t = [(r["id"], r["group"]) for r in train.collect()]
        v = [(r["id"], r["group"]) for r in val.collect()]
        assert sorted(i for i, _ in t + v) == sorted(r[0] for r in rows)  # nothing lost, nothing twice
        return {g for _, g in t}, {g for _, g in v}, len(v)

    train_groups, val_groups, _ = sides(seed=3)
    assert not train_groups & val_groups
    assert len(val_groups) == 3  # round(9 * 0.3) whole groups
    assert sides(seed=3)[1] == val_groups
    assert any(sides(seed)[1] != val_groups for seed in (4, 5, 6))


def test_wrong_schema_names_the_column_and_type(spark):
    df = spark.createDataFrame([("1,2,3", 1)], "pixels string, label int")
    with pytest.raises(DataError, match=r"column 'pixels' must be an array of numbers, but has type string"):
        check_schema(df, table="train")
    df = spark.createDataFrame([([1.0], "cat")], "pixels array<double>, label string")
    with pytest.raises(DataError, match=r"column 'label' must be a number, but has type string"):
        check_schema(df, table="train")


def test_fashion_mnist_idx_source_end_to_end(spark, tmp_path):
    config = DataConfig(max_train_rows=600, max_test_rows=200, blocks_per_split=2)
    result = ingest(spark, config, run_dir=tmp_path / "run")
    assert result.rows_in == 800
    assert sum(result.quarantined.values()) == 0
    assert result.counts["train"] + result.counts["val"] == 600
    assert result.counts["test"] == 200
    assert result.label_names[0] == "T-shirt/top" and len(result.label_names) == 10
    # raw Fashion-MNIST pixels are 0..255 with a mean near 73
    assert 50 < result.normalizer.mean < 100
    row = result.test.take(1)[0]
    assert len(row["pixels"]) == 784
