"""The text path with real Spark on Ray (RayDP), real Ray Train and the real all-MiniLM-L6-v2.

One small module-scoped pipeline (ingest -> one epoch of a 1-layer BERT -> int8 -> Spark scoring) keeps
the cost to about a minute; each test asserts what would break if its step broke.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid.artifacts import load_model, model_collate
from hybrid.config import DataConfig, TrainConfig
from hybrid.errors import DataError
from hybrid.ingest import ingest
from hybrid.ingest_text import TEXT_REASONS
from hybrid.models import get_family
from hybrid.testing import minilm_dir

pytestmark = [pytest.mark.spark, pytest.mark.ray, pytest.mark.slow]
MODEL = minilm_dir()
POLARITY = Path(__file__).resolve().parent.parent / "data" / "sentence_polarity" / "movieReviewSnippets_GroundTruth.txt"
if MODEL is None or not POLARITY.is_file():
    pytest.skip("demo data or model missing: run scripts/setup.sh", allow_module_level=True)

GOOD_PER_CLASS = 120
# (text, label, the rule it must be quarantined under)
BAD = [
    (None, 1, "text_null"),
    ("", 0, "text_empty"),
    ("   \t ", 1, "text_empty"),  # Spark's trim() strips spaces only: this row once slipped through
    ("\u00a0\n", 0, "text_empty"),
    ("a fine film", None, "label_null"),
    ("a fine film", 2, "label_out_of_range"),
    ("a fine film", -1, "label_out_of_range"),
]


def _sentences() -> tuple[list[str], list[int]]:
    from hybrid.sources.polarity import read_sentence_polarity

    table = read_sentence_polarity(POLARITY).table
    labels = np.asarray(table.column("label").to_pylist())
    texts = table.column("text").to_pylist()
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.choice(np.flatnonzero(labels == c), GOOD_PER_CLASS, replace=False) for c in (0, 1)])
    return [texts[i] for i in rows], [int(labels[i]) for i in rows]


@pytest.fixture(scope="module")
def text_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts, labels = _sentences()
    texts += [t for t, _, _ in BAD]
    labels += [y for _, y, _ in BAD]
    path = tmp_path_factory.mktemp("text") / "reviews.parquet"
    pq.write_table(pa.table({"review": pa.array(texts, pa.string()), "stars": pa.array(labels, pa.int64())}), path)
    return path


@pytest.fixture(scope="module")
def ingested(runtime, text_table, tmp_path_factory):  # noqa: ANN001, ANN201
    spark = runtime.start_spark(app_name="hybrid-tests")
    config = DataConfig(source="parquet", modality="text", path=str(text_table), text_column="review",
                        label_column="stars", num_classes=2, label_names=("negative", "positive"),
                        test_fraction=0.2, val_fraction=0.2, max_seq_length=48, blocks_per_split=2)
    run_dir = tmp_path_factory.mktemp("run")
    return ingest(spark, config, run_dir=run_dir, tokenizer_dir=str(MODEL)), run_dir


def test_text_ingest_quarantines_each_bad_row_under_its_rule_and_loses_nothing(ingested):  # noqa: ANN001
    data, run_dir = ingested
    expected = dict.fromkeys(TEXT_REASONS, 0)
    for _, _, reason in BAD:
        expected[reason] += 1
    assert data.quarantined == expected
    assert data.rows_in == 2 * GOOD_PER_CLASS + len(BAD)
    assert sum(data.counts.values()) == 2 * GOOD_PER_CLASS  # every good row in exactly one split
    assert data.counts["test"] == round(GOOD_PER_CLASS * 0.2) * 2  # stratified: 20% of each class
    bad = pq.read_table(data.quarantine_path).to_pylist()
    assert sorted(r["reason"] for r in bad) == sorted(r for _, _, r in BAD)


def test_rows_are_tokenised_unpadded_and_capped_at_max_seq_length(ingested):  # noqa: ANN001
    data, _ = ingested
    batch = data.train.take_batch(64, batch_format="numpy")
    assert set(batch) == {"input_ids", "label"}
    lengths = [len(ids) for ids in batch["input_ids"]]
    assert max(lengths) <= 48 and min(lengths) < max(lengths)  # no padding stored
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in batch["input_ids"])  # [CLS] ... [SEP]
    assert set(batch["label"].tolist()) <= {0, 1}


def test_a_text_column_of_numbers_fails_naming_the_column(runtime, tmp_path):  # noqa: ANN001
    spark = runtime.start_spark(app_name="hybrid-tests")
    path = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2, 3], "label": [0, 1, 0]}), path)
    config = DataConfig(source="parquet", modality="text", path=str(path), num_classes=2, test_fraction=0.3)
    with pytest.raises(DataError, match=r"column 'text' must hold strings, but has type bigint"):
        ingest(spark, config, run_dir=tmp_path, tokenizer_dir=str(MODEL))


@pytest.fixture(scope="module")
def trained(ingested, tmp_path_factory):  # noqa: ANN001, ANN201
    from hybrid._dataclass_io import to_dict
    from hybrid.train import LoopSpec, build_trainer

    data, _ = ingested
    train = TrainConfig(max_epochs=1, batch_size=16, lr=1e-4, schedule="constant", eval_batch_size=64)
    spec = LoopSpec(model_name="bert", model={"pretrained_dir": str(MODEL), "num_layers": 1, "max_length": 32},
                    train=to_dict(train), num_classes=2, train_rows=data.counts["train"],
                    metadata={"label_names": ["negative", "positive"], "max_seq_length": 48})
    result = build_trainer(spec, {"train": data.train, "val": data.val},
                           storage_path=tmp_path_factory.mktemp("train"), name="bert").fit()
    assert result.error is None, result.error
    return result


def test_one_epoch_in_ray_train_reports_metrics_and_a_self_contained_checkpoint(trained, ingested):  # noqa: ANN001
    from hybrid.train import checkpoint_dir, evaluate

    data, _ = ingested
    assert {"val_accuracy", "val_macro_f1", "train_loss"} <= set(trained.metrics)
    directory = checkpoint_dir(trained.checkpoint)
    assert (directory / "encoder" / "tokenizer.json").is_file()
    model, meta = load_model(directory)
    assert len(model.encoder.encoder.layer) == 1
    result = evaluate(model, data.val, model_name="bert", num_classes=2, collate=model_collate(directory, meta))
    assert result.rows == data.counts["val"]
    assert result.metrics["accuracy"] == pytest.approx(trained.metrics["val_accuracy"], abs=1e-6)


def test_int8_bert_with_a_free_sequence_length_is_smaller_and_agrees(trained, ingested, tmp_path):  # noqa: ANN001
    from hybrid.quantize import QuantizeConfig, quantize, save_quantized
    from hybrid.train import checkpoint_dir

    data, _ = ingested
    directory = checkpoint_dir(trained.checkpoint)
    model, meta = load_model(directory)
    collate = model_collate(directory, meta)
    config = QuantizeConfig(backend="onnxruntime", mode="dynamic", calibration_samples=32, latency_repeats=1)
    result = quantize(model, data.train.iter_torch_batches(batch_size=32, collate_fn=collate), config,
                      eval_batches=data.val.iter_torch_batches(batch_size=16, collate_fn=collate),
                      input_columns=("input_ids", "attention_mask"), padding_mask=get_family("bert").padding_mask)
    assert result.model.inputs[0].shape == (None, None)  # batch and sequence length both free
    assert result.size_ratio > 2.5  # int8 weights and embeddings
    assert result.candidates["onnxruntime"].agreement >= 0.9
    int8_dir = tmp_path / "int8"
    save_quantized(int8_dir, result.model, family="bert", config=meta["config"], label_names=["n", "p"])
    files = json.loads((int8_dir / "manifest.json").read_text())["files"]
    assert "model.onnx" in files

    # A row's answer depends on that row alone: dynamic quantization takes its activation range per input
    # tensor, so the int8 model runs each row cut to its own length. The saved and loaded model gives
    # bit-identical probabilities in batches of 1, 7 and 64, and with the rows shuffled into other batches.
    from hybrid.quantize import load_quantized
    from hybrid.score import predict_text_proba
    from hybrid.text import load_tokenizer

    int8, _ = load_quantized(int8_dir, num_threads=1)
    tokenizer = load_tokenizer(str(directory / "encoder"))
    texts = _sentences()[0][:150]

    def proba(rows: list[str], batch_size: int) -> np.ndarray:
        return predict_text_proba(int8, collate, tokenizer, rows, input_columns=("input_ids", "attention_mask"),
                                  max_length=48, batch_size=batch_size)[1]

    alone = proba(texts, 1)
    for batch_size in (7, 64):
        np.testing.assert_array_equal(proba(texts, batch_size), alone)
    order = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_array_equal(proba([texts[i] for i in order], 64), alone[order])


def test_spark_scores_text_with_null_and_empty_rows_flagged(trained, ingested, runtime, tmp_path):  # noqa: ANN001
    from hybrid.score import TEXT_REASONS as SCORE_REASONS
    from hybrid.score import predict_text_proba, score
    from hybrid.text import load_tokenizer
    from hybrid.train import checkpoint_dir

    spark = runtime.start_spark(app_name="hybrid-tests")
    directory = checkpoint_dir(trained.checkpoint)
    texts, _ = _sentences()
    rows = [(i, t) for i, t in enumerate(texts[:40])] + [(100, None), (101, ""), (102, "  "), (103, "\t\n\u00a0")]
    df = spark.createDataFrame(rows, "id long, text string")
    out = {r["id"]: r for r in score(df, directory, batch_size=8).collect()}
    assert len(out) == len(rows)
    assert [out[i]["error"] for i in (100, 101, 102, 103)] == ["text_null", "text_empty", "text_empty", "text_empty"]
    assert all(out[i]["prediction"] is None for i in (100, 101, 102, 103))
    assert SCORE_REASONS == ("text_null", "text_empty")

    model, meta = load_model(directory)
    expected, proba = predict_text_proba(model, model_collate(directory, meta), load_tokenizer(str(directory / "encoder")),
                                         texts[:40], input_columns=("input_ids", "attention_mask"), max_length=48,
                                         batch_size=7)
    assert [out[i]["prediction"] for i in range(40)] == expected.tolist()
    assert [out[i]["prediction_label"] for i in range(40)] == [["negative", "positive"][p] for p in expected]
    np.testing.assert_allclose([out[i]["probability"] for i in range(40)], proba, atol=1e-5)
