"""Score with real Spark: bad rows flagged (not fatal), good rows equal to in-process PyTorch, Parquet out."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.artifacts import ArtifactError, save_model
from hybrid.errors import DataError
from hybrid.ingest import REASONS, Normalizer, normalize
from hybrid.models import CNN
from hybrid.score import PIXEL_REASONS, normalize_pixels, score, score_to_parquet
from hybrid.testing import tiny_cnn_config, toy_images

pytestmark = pytest.mark.spark

CONFIG = tiny_cnn_config()  # 8x8 images, 3 classes
NUM_PIXELS = CONFIG.image_size**2
LABEL_NAMES = ["circle", "square", "cross"]
SCHEMA = "id long, pixels array<double>, label int"

# One row per way to break a pixel rule; the value is the rule it must be reported under.
BAD_ROWS: list[tuple[list[float | None] | None, str]] = [
    (None, "pixels_null"),
    ([], "pixel_count"),
    ([0.5] * (NUM_PIXELS - 1), "pixel_count"),
    ([0.5] * (NUM_PIXELS + 1), "pixel_count"),
    ([0.5] * (NUM_PIXELS - 1) + [None], "pixel_null"),
    ([math.nan] + [0.5] * (NUM_PIXELS - 1), "pixel_not_finite"),
    ([0.5] * (NUM_PIXELS - 1) + [-math.inf], "pixel_not_finite"),
    ([math.inf] + [0.5] * (NUM_PIXELS - 1), "pixel_not_finite"),
    ([math.nan, None] + [0.5] * (NUM_PIXELS - 2), "pixel_null"),  # two rules broken: ingest's order decides
    ([0.5] * (NUM_PIXELS - 3), "pixel_count"),
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CNN, Normalizer]:
    """A tiny CNN trained for a few steps on toy images and saved as a model directory."""
    torch.manual_seed(0)
    images, labels = toy_images(300, image_size=CONFIG.image_size, num_classes=CONFIG.num_classes, seed=0)
    norm = Normalizer(mean=float(images.mean()), std=float(images.std()))
    x = torch.from_numpy(normalize_pixels(images, mean=norm.mean, std=norm.std))
    y = torch.from_numpy(labels)
    model = CNN(CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    directory = save_model(
        tmp_path_factory.mktemp("model") / "tiny", model, family="cnn", config=CONFIG,
        normalizer=norm.to_dict(), label_names=LABEL_NAMES,
    )
    return directory, model, norm


@pytest.fixture(scope="module")
def rows() -> tuple[list[tuple], np.ndarray, np.ndarray, dict[int, str]]:
    """Good rows (ids 0..39) and bad rows (ids 1000+), plus the good pixels/labels and the bad ids' rules."""
    images, labels = toy_images(40, image_size=CONFIG.image_size, num_classes=CONFIG.num_classes, seed=1)
    good = [(i, [float(v) for v in images[i]], int(labels[i])) for i in range(len(labels))]
    bad = [(1000 + j, pixels, 0) for j, (pixels, _) in enumerate(BAD_ROWS)]
    expected_errors = {1000 + j: reason for j, (_, reason) in enumerate(BAD_ROWS)}
    return good + bad, images, labels, expected_errors


def _reference(model: CNN, norm: Normalizer, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-process predictions, written out here rather than through hybrid.score."""
    x = ((images.astype(np.float64) - norm.mean) / norm.std).astype(np.float32)
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    return logits.argmax(dim=1).numpy(), torch.softmax(logits, dim=1).numpy()


def test_pixel_rules_are_ingests_rules_in_ingests_order():
    assert [r for r in REASONS if r in PIXEL_REASONS] == list(PIXEL_REASONS)


def test_bad_rows_get_null_and_their_rule_good_rows_match_pytorch(local_spark, trained, rows):
    model_dir, model, norm = trained
    data, images, _, expected_errors = rows
    df = local_spark.createDataFrame(data, SCHEMA).repartition(2)  # several tasks, bad rows mixed in

    out = {r["id"]: r for r in score(df, model_dir, batch_size=16).collect()}

    assert set(out) == {row[0] for row in data}
    for row_id, reason in expected_errors.items():
        r = out[row_id]
        got = (r["error"], r["prediction"], r["prediction_label"], r["probability"])
        assert got == (reason, None, None, None), row_id
    want_pred, want_proba = _reference(model, norm, images)
    got_pred = np.array([out[i]["prediction"] for i in range(len(images))])
    got_proba = np.array([out[i]["probability"] for i in range(len(images))], dtype=np.float32)
    np.testing.assert_array_equal(got_pred, want_pred)
    np.testing.assert_allclose(got_proba, want_proba, rtol=1e-5, atol=1e-6)
    assert [out[i]["prediction_label"] for i in range(len(images))] == [LABEL_NAMES[p] for p in want_pred]
    assert all(out[i]["error"] is None for i in range(len(images)))
    assert len(set(want_pred)) > 1  # the model learned something: a constant predictor would hide bugs


def test_parquet_output_holds_every_row_and_counts(local_spark, trained, rows, tmp_path):
    model_dir, model, norm = trained
    data, images, labels, expected_errors = rows
    source = tmp_path / "in.parquet"
    local_spark.createDataFrame(data, SCHEMA).repartition(3).write.parquet(str(source))

    result = score_to_parquet(local_spark, source, model_dir, tmp_path / "out.parquet")

    back = local_spark.read.parquet(result.output_path)
    assert sorted(r["id"] for r in back.select("id").collect()) == sorted(row[0] for row in data)
    assert {r["id"]: r["error"] for r in back.where("error IS NOT NULL").collect()} == expected_errors
    assert (result.rows, result.scored) == (len(data), len(images))
    assert result.rejected == {
        reason: sum(1 for r in expected_errors.values() if r == reason) for reason in PIXEL_REASONS
    }
    want_pred, _ = _reference(model, norm, images)
    # bad rows carry label 0 but have no prediction, so they must not count
    assert result.accuracy == pytest.approx(float((want_pred == labels).mean()))


def test_pixels_are_normalised_bit_for_bit_as_ingest_does(local_spark):
    # ingest's Spark expression and score's numpy must agree exactly, on int16 (the IDX source) and doubles
    norm = Normalizer(mean=72.94035223214286, std=90.02118235130519)
    cases = (("smallint", [0, 1, 17, 128, 255, 254, 3, 99], np.int16),
             ("double", [0.1, 0.2, 1e-3, 200.7, 255.0, 33.3, 7.0, 1.5], np.float64))
    for dtype, row, np_dtype in cases:
        df = local_spark.createDataFrame([(row, 0)], f"pixels array<{dtype}>, label int")
        spark_values = np.array(normalize(df, norm).first()["pixels"], dtype=np.float32)
        ours = normalize_pixels(np.array([row], dtype=np_dtype), mean=norm.mean, std=norm.std)
        assert spark_values.tobytes() == ours[0].tobytes(), dtype


def test_integer_pixel_arrays_are_validated_and_scored(local_spark, trained):
    model_dir, model, norm = trained
    rng = np.random.default_rng(7)
    good = rng.integers(0, 2, size=(4, NUM_PIXELS)).astype(np.int16)  # toy images live in about [0, 1]
    data = [(i, [int(v) for v in good[i]]) for i in range(4)]
    data += [(10, [1] * (NUM_PIXELS - 1) + [None]), (11, [1] * 3), (12, None)]
    df = local_spark.createDataFrame(data, "id long, pixels array<smallint>")

    out = {r["id"]: r for r in score(df, model_dir).collect()}

    assert {i: out[i]["error"] for i in (10, 11, 12)} == {10: "pixel_null", 11: "pixel_count", 12: "pixels_null"}
    assert all(out[i]["prediction"] is None for i in (10, 11, 12))
    want_pred, want_proba = _reference(model, norm, good)
    assert [out[i]["prediction"] for i in range(4)] == want_pred.tolist()
    np.testing.assert_allclose(np.array([out[i]["probability"] for i in range(4)]), want_proba, rtol=1e-5, atol=1e-6)


def test_a_changed_byte_in_the_weights_fails_on_the_driver_before_any_task(local_spark, trained, tmp_path):
    model_dir, *_ = trained
    tampered = tmp_path / "tampered"
    shutil.copytree(model_dir, tampered)
    weights = tampered / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01
    weights.write_bytes(bytes(raw))
    source = tmp_path / "in.parquet"
    local_spark.createDataFrame([(0, [0.5] * NUM_PIXELS, 0)], SCHEMA).write.parquet(str(source))
    sc = local_spark.sparkContext
    sc.setJobGroup("tampered-model", "score with a tampered model")
    try:
        with pytest.raises(ArtifactError, match=r"model\.safetensors.*changed or corrupted"):
            score_to_parquet(local_spark, source, tampered, tmp_path / "out.parquet")
        assert list(sc.statusTracker().getJobIdsForGroup("tampered-model")) == []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)
    assert not (tmp_path / "out.parquet").exists()


def test_schema_problems_fail_on_the_driver_with_the_column_named(local_spark, trained):
    model_dir, *_ = trained
    df = local_spark.createDataFrame([(0, [0.5] * NUM_PIXELS, 0)], SCHEMA)
    with pytest.raises(DataError, match=r"'image' to score is required"):
        score(df, model_dir, input_col="image")
    with pytest.raises(DataError, match=r"'label' must be an array of numbers.*but has type int"):
        score(df, model_dir, input_col="label")
    with pytest.raises(DataError, match=r"\['label'\] already exist"):
        score(df, model_dir, error_col="label")


def test_a_model_rewritten_in_place_is_scored_with_its_new_weights(local_spark, trained, tmp_path):
    # Shipping and the per-worker cache are keyed by content, so a stale copy can never be used.
    _, model, norm = trained
    directory = tmp_path / "model"
    images, _ = toy_images(8, image_size=CONFIG.image_size, num_classes=CONFIG.num_classes, seed=5)
    df = local_spark.createDataFrame([(i, [float(v) for v in images[i]], 0) for i in range(8)], SCHEMA)
    torch.manual_seed(1)
    untrained = CNN(CONFIG).eval()
    seen = []
    for weights in (model, untrained, model):
        save_model(
            directory, weights, family="cnn", config=CONFIG, normalizer=norm.to_dict(), label_names=LABEL_NAMES
        )
        got = {r["id"]: r["probability"] for r in score(df, directory).collect()}
        want = _reference(weights, norm, images)[1]
        np.testing.assert_allclose(np.array([got[i] for i in range(8)]), want, rtol=1e-5, atol=1e-6)
        seen.append(want)
    assert not np.allclose(seen[0], seen[1])
