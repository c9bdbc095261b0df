"""Data edge cases through real ingest (Spark on Ray via RayDP): each fails with one clear line before any
training, or works, and no row is ever lost (``rows_in == train + val + test + quarantined``).

Tables are a few dozen rows written to ``tmp_path``; every test shares the session's one Spark.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid.config import DataConfig
from hybrid.errors import ConfigError, DataError
from hybrid.ingest import IngestResult, check_trainable, ingest
from hybrid.testing import minilm_dir

pytestmark = [pytest.mark.spark, pytest.mark.ray, pytest.mark.slow]

SIZE, CLASSES = 4, 3
PIXELS = SIZE * SIZE


def _images(labels: list[float | None], *, seed: int, **extra: list) -> pa.Table:  # type: ignore[type-arg]
    rng = np.random.default_rng(seed)
    pixels = [rng.integers(0, 256, PIXELS).astype(float).tolist() for _ in labels]
    return pa.table({"pixels": pa.array(pixels, pa.list_(pa.float64())), "label": pa.array(labels, pa.float64()),
                     **extra})


def _write(table: pa.Table, path: Path) -> str:
    pq.write_table(table, path)
    return str(path)


def _image_config(train: str, test: str | None = None, **kw: object) -> DataConfig:
    return DataConfig(source="parquet", path=train, test_path=test, image_size=SIZE, num_classes=CLASSES,
                      val_fraction=0.2, seed=1, blocks_per_split=1, **kw)  # type: ignore[arg-type]


def _assert_nothing_lost(result: IngestResult) -> None:
    kept, rejected, dropped = (sum(d.values()) for d in (result.counts, result.quarantined, result.dropped))
    assert result.rows_in == kept + rejected + dropped
    assert result.counts == {"train": result.train.count(), "val": result.val.count(), "test": result.test.count()}


def test_an_empty_image_test_table_fails_before_training_naming_the_split(spark, tmp_path):  # noqa: ANN001
    labels = [float(c) for c in range(CLASSES) for _ in range(10)]
    train = _write(_images(labels, seed=0), tmp_path / "train.parquet")
    test = _write(_images([], seed=1), tmp_path / "test.parquet")
    with pytest.raises(DataError, match=r"^test split has 0 rows after validation, but every split needs at least 1 "
                                        r"\(the test table '.*test.parquet'; rows per split \{'train': 24, 'val': 6, "
                                        r"'test': 0\}; quarantined 0\): add valid rows to the test table"):
        ingest(spark, _image_config(train, test), run_dir=tmp_path / "run")


def test_labels_beyond_the_classes_are_quarantined_in_both_tables_and_test_only_classes_warned(spark, tmp_path):  # noqa: ANN001
    train = _write(_images([0.0] * 15 + [1.0] * 15 + [3.0], seed=0), tmp_path / "train.parquet")
    test = _write(_images([0.0, 1.0, 2.0, 2.0, 2.0, 5.0, -1.0], seed=1), tmp_path / "test.parquet")
    result = ingest(spark, _image_config(train, test), run_dir=tmp_path / "run")

    assert result.quarantined["label_out_of_range"] == 3
    assert result.counts == {"train": 24, "val": 6, "test": 5}
    _assert_nothing_lost(result)
    by_table = pq.read_table(result.quarantine_path).to_pandas().groupby("table")["label"].apply(sorted).to_dict()
    assert by_table == {"test": [-1.0, 5.0], "train": [3.0]}
    assert result.warnings[0] == (
        "train split lacks 1 of 3 classes: '2' (label 2: train 0, val 0, test 3); the test split holds 1 of them; "
        "the model cannot learn them, and test accuracy and macro metrics count them as misses"
    )
    summary = result.summary()
    assert summary["class_counts"] == {"train": {"0": 12, "1": 12, "2": 0}, "val": {"0": 3, "1": 3, "2": 0},
                                       "test": {"0": 1, "1": 1, "2": 3}}
    assert summary["warnings"] == result.warnings
    # 24 training rows cannot fill one batch of 128: the run stops here, not after an untrained tune.
    with pytest.raises(DataError, match=r"^train split has 24 rows, fewer than train.batch_size=128 x "
                                        r"train.num_workers=1 \(= 128\)"):
        check_trainable(result.counts, batch_size=128, num_workers=1, grad_accum_steps=1)
    assert check_trainable(result.counts, batch_size=8, num_workers=1, grad_accum_steps=1) == 3


def test_a_single_training_class_fails_naming_the_class_and_its_counts(spark, tmp_path):  # noqa: ANN001
    train = _write(_images([1.0] * 20, seed=0), tmp_path / "train.parquet")
    test = _write(_images([0.0, 1.0, 2.0], seed=1), tmp_path / "test.parquet")
    with pytest.raises(DataError, match=r"^train split holds a single class, '1' \(label 1: train 16, val 4, test 1\), "
                                        r"but a classifier needs at least 2 of its 3 classes"):
        ingest(spark, _image_config(train, test), run_dir=tmp_path / "run")


def test_tables_with_different_extra_columns_quarantine_every_bad_row_whole(spark, tmp_path):  # noqa: ANN001
    good = [float(c) for c in range(CLASSES) for _ in range(5)]
    n = len(good)
    # train: `note` as text and a column the user happened to call `reason`; test: `note` as a number, and `batch`.
    train = _write(_images(good + [None, 9.0], seed=0, note=[f"t{i}" for i in range(n + 2)],
                           reason=["mine"] * (n + 2)), tmp_path / "train.parquet")
    test = _write(_images(good + [7.0], seed=1, note=list(range(n + 1)), batch=["b"] * (n + 1)),
                  tmp_path / "test.parquet")
    result = ingest(spark, _image_config(train, test), run_dir=tmp_path / "run")

    _assert_nothing_lost(result)
    assert {k: v for k, v in result.quarantined.items() if v} == {"label_null": 1, "label_out_of_range": 2}
    rows = sorted(pq.read_table(result.quarantine_path).to_pylist(), key=lambda r: (r["table"], r["note"]))
    assert [(r["table"], r["reason"], r["note"], r["source_reason"], r["batch"]) for r in rows] == [
        ("test", "label_out_of_range", str(n), None, "b"),
        ("train", "label_null", f"t{n}", "mine", None),
        ("train", "label_out_of_range", f"t{n + 1}", "mine", None),
    ]
    assert all(len(r["pixels"]) == PIXELS for r in rows)


def test_a_single_image_table_holds_out_test_fraction_of_each_class(spark, tmp_path):  # noqa: ANN001
    labels = [float(c) for c in range(CLASSES) for _ in range(20)]
    train = _write(_images(labels, seed=0), tmp_path / "all.parquet")
    run_dir = tmp_path / "run"
    (run_dir / "quarantine.parquet").mkdir(parents=True)  # left by an earlier run that had bad rows

    result = ingest(spark, _image_config(train, test_fraction=0.2), run_dir=run_dir)
    assert result.counts == {"train": 3 * 13, "val": 3 * 3, "test": 3 * 4}  # 20 -> 4 test, 16 -> 3 val per class
    assert result.class_counts["test"] == {"0": 4, "1": 4, "2": 4}
    assert result.warnings == [] and result.quarantine_path is None
    assert not (run_dir / "quarantine.parquet").exists()
    _assert_nothing_lost(result)
    test_pixels = {tuple(r["pixels"]) for r in result.test.take_all()}
    assert not test_pixels & {tuple(r["pixels"]) for r in result.train.take_all()}


def test_a_single_table_without_test_fraction_fails_before_any_spark_job(spark, tmp_path):  # noqa: ANN001
    missing = str(tmp_path / "nowhere.parquet")  # reading it would fail otherwise: the check comes first
    with pytest.raises(ConfigError, match=r"data.test_fraction > 0 must hold, but got 0.0"):
        ingest(spark, _image_config(missing), run_dir=tmp_path / "run")
    with pytest.raises(DataError, match=r"^data.path: no parquet table at '.*nowhere.parquet'$"):
        ingest(spark, _image_config(missing, test_fraction=0.2), run_dir=tmp_path / "run")


MODEL = minilm_dir()


@pytest.mark.skipif(MODEL is None, reason="model missing: run scripts/setup.sh")
def test_a_text_test_table_of_bad_rows_is_quarantined_despite_other_columns_then_empty(spark, tmp_path):  # noqa: ANN001
    texts = [f"review number {i}" for i in range(12)]
    train = _write(pa.table({"review": texts + ["too high"], "stars": [i % 2 for i in range(12)] + [5],
                             "id": list(range(13)), "note": ["x"] * 13}), tmp_path / "train.parquet")
    test = _write(pa.table({"review": ["ok", "ok", " "], "stars": ["7", "zebra", "positive"], "batch": [1, 2, 3]}),
                  tmp_path / "test.parquet")
    config = DataConfig(source="parquet", modality="text", path=train, test_path=test, text_column="review",
                        label_column="stars", num_classes=2, label_names=("negative", "positive"), blocks_per_split=1)
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"^test split has 0 rows after validation.*quarantined 4 "
                                        r"\{'label_out_of_range': 2, 'label_unknown': 1, 'text_empty': 1\}\)"):
        ingest(spark, config, run_dir=run_dir, tokenizer_dir=str(MODEL))
    rows = sorted(pq.read_table(run_dir / "quarantine.parquet").to_pylist(), key=lambda r: (r["table"], r["label"]))
    assert [(r["table"], r["reason"], r["label"], r["id"], r["batch"]) for r in rows] == [
        ("test", "label_out_of_range", "7", None, 1),
        ("test", "text_empty", "positive", None, 3),
        ("test", "label_unknown", "zebra", None, 2),
        ("train", "label_out_of_range", "5", 12, None),
    ]


def test_qa_csv_with_answers_as_json_text_works_and_bad_json_is_quarantined(spark, tmp_path):  # noqa: ANN001
    path = tmp_path / "qa.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "question", "context", "answers"])
        for i in range(10):
            context = f'Paragraph {i}, with "quotes",\nand a line break: the bell weighs {i} tonnes.'
            answer = f"{i} tonnes"
            writer.writerow([f"q{i}", "How heavy is the bell?", context,
                             json.dumps([{"text": answer, "answer_start": context.index(answer)}])])
        writer.writerow(["bad", "How heavy?", "The bell weighs 3 tonnes.", '[{"text": "3 tonnes", "answer_start": 16'])
    config = DataConfig(source="csv", modality="qa", path=str(path), test_fraction=0.2, val_fraction=0.25,
                        blocks_per_split=1)
    result = ingest(spark, config, run_dir=tmp_path / "run")

    assert result.counts == {"train": 6, "val": 2, "test": 2}
    assert {k: v for k, v in result.quarantined.items() if v} == {"malformed_answer": 1}
    _assert_nothing_lost(result)
    (bad,) = pq.read_table(result.quarantine_path).to_pylist()
    assert (bad["id"], bad["reason"], bad["table"]) == ("bad", "malformed_answer", "train")
    assert bad["value"].startswith("answers must be JSON text, but Expecting ',' delimiter")
    for row in result.train.take_all():
        assert row["context"][row["answer_start"]:].startswith(row["answer_text"]) and "\n" in row["context"]
