"""Feature layouts with real (plain local) Spark: a Vector column (dense, sparse, ``VectorAssembler``'s), listed
numeric columns and a pixel prefix in a CSV file ingest to the same arrays as the array layout, bad values in each
are quarantined under ingest's rules with the column named, a wrong key fails on the driver, and scoring reads
every layout to the same predictions."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hybrid.artifacts import save_model
from hybrid.config import DataConfig, config_from_dict
from hybrid.errors import ConfigError, DataError
from hybrid.features import feature_names, prefixed_columns
from hybrid.ingest import PIXELS, REASON, REASON_COLUMN, Normalizer, normalize, tag_images
from hybrid.models import CNN
from hybrid.score import score, score_to_parquet
from hybrid.sources import read_image_tables
from hybrid.sources.idx import read_fashion_mnist
from hybrid.testing import tiny_cnn_config, toy_images

pytestmark = pytest.mark.spark

FMNIST = DataConfig().path
ROWS, SIDE = 40, 28
NUM_PIXELS = SIDE * SIDE
NORM = Normalizer(mean=72.94035223214286, std=90.02118235130519)
needs_fmnist = pytest.mark.skipif(not Path(FMNIST, "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="Fashion-MNIST missing: apt-get install dataset-fashion-mnist")


# ----------------------------------------------------------------------------------------------
# Pure: choosing the columns from their names.


def test_a_prefix_orders_columns_by_their_number_not_lexically():
    names = ["label", "pixel10", "pixel2", "pixel1", "pixels", "pixel_3", "xpixel4"]
    assert prefixed_columns(names, "pixel") == ("pixel1", "pixel2", "pixel10")


def test_column_keys_that_do_not_fit_the_names_fail_naming_the_key_and_value():
    names = ["label", "pixel0", "pixel1"]
    with pytest.raises(ConfigError, match=r"^data.pixel_prefix: columns named 'px' followed by a number .* but no "
                                          r"column matches 'px'; the columns are \['label', 'pixel0', 'pixel1'\]"):
        feature_names(names, pixel_prefix="px")
    with pytest.raises(ConfigError, match=r"^data.feature_columns\[1\]: column 'pixel2' is required, but the table "
                                          r"has no such column.*\(did you mean 'pixel1'\?\)"):
        feature_names(names, feature_columns=["pixel0", "pixel2"])
    with pytest.raises(ConfigError, match=r"each number after 'pixel' must name one column, but \['pixel01', 'pixel1'\]"):
        prefixed_columns(["pixel1", "pixel01"], "pixel")


@pytest.mark.parametrize(("data", "message"), [
    ({"source": "parquet", "feature_columns": ["a"], "pixel_prefix": "pixel"},
     r"^data.feature_columns and data.pixel_prefix each choose the feature columns, so at most one may be set, but "
     r"got feature_columns=\['a'\] and pixel_prefix='pixel'$"),
    ({"source": "csv"}, r"^data.source='csv' with modality 'images' needs pixel_prefix"),
    ({"source": "fashion_mnist", "pixel_prefix": "pixel"}, r"^data.pixel_prefix names columns of a user table"),
    ({"source": "csv", "modality": "text", "feature_columns": ["a"]}, r"^data.feature_columns names the pixel columns "
                                                                      r"of image tables .* but modality is 'text'"),
    ({"source": "parquet", "pixel_prefix": ""}, r"^data.pixel_prefix must be a non-empty column-name prefix"),
    ({"source": "parquet", "feature_columns": ["a", "b", "a"]}, r"^data.feature_columns must name each column once, "
                                                               r"but got \['a'\] more than once$"),
])
def test_contradictory_or_misplaced_keys_fail_when_the_config_loads(data, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"data": data})


# ----------------------------------------------------------------------------------------------
# Ingest's tagging (the Spark half of ingest, before the split) on real Fashion-MNIST rows.


@pytest.fixture(scope="module")
def fmnist() -> tuple[np.ndarray, np.ndarray]:
    if not Path(FMNIST, "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST missing: apt-get install dataset-fashion-mnist")
    images, labels = read_fashion_mnist(FMNIST, "test")
    return images[:ROWS].reshape(ROWS, -1).astype(np.int64), labels[:ROWS].astype(np.int64)


def _config(**keys: object) -> DataConfig:
    return DataConfig(source="parquet", path="unused", test_fraction=0.2, **keys)  # type: ignore[arg-type]


def _tagged(df, config: DataConfig) -> dict[int, dict]:  # noqa: ANN001
    return {int(r["id"]): r.asDict() for r in tag_images(df, config, table="train").collect()}


def _normalised(df, config: DataConfig) -> dict[int, bytes]:  # noqa: ANN001
    """Each clean row's pixels after ingest's normalisation, as float32 bytes (what Ray receives)."""
    clean = tag_images(df, config, table="train").where(f"{REASON} IS NULL")
    # normalize() keeps (pixels, label) only: the id travels in the label's place
    normalised = normalize(clean.select(PIXELS, clean["id"].cast("int").alias("label")), NORM)
    return {r["label"]: np.array(r[PIXELS], np.float32).tobytes() for r in normalised.collect()}


@pytest.fixture(scope="module")
def array_layout(local_spark, fmnist) -> dict[int, bytes]:
    images, labels = fmnist
    rows = [(i, images[i].tolist(), int(labels[i])) for i in range(ROWS)]
    df = local_spark.createDataFrame(rows, "id long, pixels array<int>, label int")
    tagged = _tagged(df, _config())
    assert all(r[REASON] is None for r in tagged.values())
    assert [tagged[i][PIXELS] for i in range(ROWS)] == images.tolist()
    return _normalised(df, _config())


@needs_fmnist
def test_vector_columns_dense_sparse_and_assembled_ingest_to_the_array_layouts_values(local_spark, fmnist,
                                                                                      array_layout):
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.linalg import Vectors

    images, labels = fmnist
    dense = [(i, Vectors.dense(images[i].astype(float)), int(labels[i])) for i in range(ROWS)]
    nonzero = [np.flatnonzero(images[i]) for i in range(ROWS)]
    sparse = [(i, Vectors.sparse(NUM_PIXELS, nz.tolist(), images[i][nz].astype(float).tolist()), int(labels[i]))
              for i, nz in enumerate(nonzero)]
    assert all(len(nz) < NUM_PIXELS for nz in nonzero)  # really sparse: the zeros are not stored
    cases = {
        "dense, default column": (local_spark.createDataFrame(dense, ["id", "pixels", "label"]), _config()),
        "sparse": (local_spark.createDataFrame(sparse, ["id", "features", "label"]),
                   _config(feature_columns=("features",))),
    }
    names = [f"p{j}" for j in range(NUM_PIXELS)]
    wide = local_spark.createDataFrame([(i, int(labels[i]), *images[i].tolist()) for i in range(ROWS)],
                                       ["id", "label", *names])
    assembled = VectorAssembler(inputCols=names, outputCol="features").transform(wide).select("id", "features", "label")
    cases["VectorAssembler"] = (assembled, _config(feature_columns=("features",)))
    for name, (df, config) in cases.items():
        assert _normalised(df, config) == array_layout, name


@needs_fmnist
def test_listed_columns_ingest_in_the_listed_order_not_the_tables(local_spark, fmnist, array_layout):
    images, labels = fmnist
    names = [f"c{j}" for j in range(NUM_PIXELS)]
    # the table holds the columns backwards: the list, not the table, decides the order
    rows = [(i, int(labels[i]), *images[i][::-1].tolist()) for i in range(ROWS)]
    df = local_spark.createDataFrame(rows, ["id", "label", *names[::-1]])
    config = _config(feature_columns=tuple(names))
    assert _normalised(df, config) == array_layout
    tagged = _tagged(df, config)
    assert set(tagged[0]) == {PIXELS, "label", "id", REASON, REASON_COLUMN}  # the 784 columns are in `pixels` now


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> str:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@needs_fmnist
def test_a_pixel_csv_reads_in_numeric_column_order_and_bad_cells_are_quarantined_naming_the_column(
    local_spark, fmnist, array_layout, tmp_path
):
    images, labels = fmnist
    # Kaggle's Fashion-MNIST layout: label,pixel1,...,pixel784 (lexical order would put pixel10 before pixel2)
    header = ["id", "label", *[f"pixel{j + 1}" for j in range(NUM_PIXELS)]]
    good = [[i, int(labels[i]), *images[i].tolist()] for i in range(ROWS)]
    bad_cells = {  # id: (column index in the row, cell, rule, column named)
        100: (2 + 4, "", "pixel_null", "pixel5"),
        101: (2 + 299, "dark", "pixel_null", "pixel300"),
        102: (2 + 6, "NaN", "pixel_not_finite", "pixel7"),
        103: (2 + 783, "-Inf", "pixel_not_finite", "pixel784"),
        104: (1, "", "label_null", "label"),
        105: (1, "12", "label_out_of_range", "label"),
        106: (1, "1.5", "label_not_integer", "label"),
    }
    bad = []
    for row_id, (index, cell, _, _) in bad_cells.items():
        row = [row_id, 3, *images[0].tolist()]
        row[index] = cell
        bad.append(row)
    path = _write_csv(tmp_path / "fmnist.csv", header, good + bad)
    config = DataConfig(source="csv", path=path, test_fraction=0.2, pixel_prefix="pixel")

    train = read_image_tables(local_spark, config, work_dir=tmp_path).train
    assert _normalised(train, config) == array_layout
    tagged = _tagged(train, config)
    assert {i: (r[REASON], r[REASON_COLUMN]) for i, r in tagged.items() if r[REASON]} == {
        row_id: (rule, column) for row_id, (_, _, rule, column) in bad_cells.items()
    }
    assert tagged[101]["id"] == "101"  # other columns are read as text, as for any CSV


@needs_fmnist
def test_bad_vectors_and_bad_listed_columns_are_quarantined_under_ingests_rules(local_spark, fmnist):
    from pyspark.ml.linalg import Vectors

    images, labels = fmnist
    good = images[0].astype(float)
    vectors = [
        (0, Vectors.dense(good), 1, None, None),
        (1, Vectors.dense(good[:-1]), 1, "pixel_count", "features"),
        (2, Vectors.sparse(NUM_PIXELS + 5, [0], [1.0]), 1, "pixel_count", "features"),
        (3, Vectors.dense([math.nan, *good[1:]]), 1, "pixel_not_finite", "features"),
        (4, Vectors.sparse(NUM_PIXELS, [9], [math.inf]), 1, "pixel_not_finite", "features"),
        (5, None, 1, "pixels_null", "features"),
        (6, Vectors.dense(good), 10, "label_out_of_range", "label"),
    ]
    df = local_spark.createDataFrame([v[:3] for v in vectors], ["id", "features", "label"])
    tagged = _tagged(df, _config(feature_columns=("features",)))
    assert {i: (r[REASON], r[REASON_COLUMN]) for i, r in tagged.items()} == {v[0]: v[3:] for v in vectors}

    names = [f"c{j}" for j in range(NUM_PIXELS)]
    rows = [(0, 1, *good.tolist()), (1, 1, *good[:3].tolist(), None, *good[4:].tolist()),
            (2, 1, *good[:9].tolist(), math.nan, *good[10:].tolist()),
            (3, 1, *good[:2].tolist(), math.inf, None, *good[4:].tolist())]  # null wins: checked first
    df = local_spark.createDataFrame(rows, ["id", "label", *names])
    tagged = _tagged(df, _config(feature_columns=tuple(names)))
    assert {i: (r[REASON], r[REASON_COLUMN]) for i, r in tagged.items()} == {
        0: (None, None), 1: ("pixel_null", "c3"), 2: ("pixel_not_finite", "c9"), 3: ("pixel_null", "c3"),
    }


def test_keys_that_do_not_fit_the_table_fail_on_the_driver_before_any_spark_job(local_spark):
    names = [f"pixel{j}" for j in range(NUM_PIXELS)]
    df = local_spark.createDataFrame([(1, "a", *[0] * NUM_PIXELS)], ["label", "note", *names])
    sc = local_spark.sparkContext
    sc.setJobGroup("bad-layout", "layouts that do not fit")
    cases = [
        (_config(pixel_prefix="px"), ConfigError, r"^data.pixel_prefix: columns named 'px' followed by a number"),
        (_config(feature_columns=("pixel0", "pixel999")), ConfigError,
         r"^data.feature_columns\[1\]: column 'pixel999' is required"),
        (_config(feature_columns=(*names[:-1], "note")), ConfigError,
         r"^data.feature_columns: table 'train': column 'note' must be numeric \(one value per column\), but has type "
         r"string$"),
        (_config(feature_columns=tuple(names[:-1])), ConfigError,
         r"^data.feature_columns: table 'train': 783 columns \['pixel0', 'pixel1', 'pixel2', ..., 'pixel782'\] hold "
         r"the features, but data.image_size=28 needs 784 per row$"),
        (_config(feature_columns=("note",)), ConfigError, r"column 'note' must be numeric"),
        (_config(), DataError, r"^table 'train': column 'pixels' is required \(an array of numbers or a Vector\), or "
                               r"set data.feature_columns or data.pixel_prefix"),
    ]
    try:
        for config, error, message in cases:
            with pytest.raises(error, match=message):
                tag_images(df, config, table="train")
        assert list(sc.statusTracker().getJobIdsForGroup("bad-layout")) == []
    finally:
        sc.setLocalProperty("spark.jobGroup.id", None)


# ----------------------------------------------------------------------------------------------
# Scoring reads every layout through the same function as ingest.

TINY = tiny_cnn_config()  # 8x8 images, 3 classes
TINY_PIXELS = TINY.image_size**2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    images, labels = toy_images(300, image_size=TINY.image_size, num_classes=TINY.num_classes, seed=0)
    norm = Normalizer(mean=float(images.mean()), std=float(images.std()))
    x = torch.from_numpy(((images.astype(np.float64) - norm.mean) / norm.std).astype(np.float32))
    model = CNN(TINY)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.from_numpy(labels)).backward()
        opt.step()
    return save_model(tmp_path_factory.mktemp("model") / "tiny", model.eval(), family="cnn", config=TINY,
                      normalizer=norm.to_dict(), label_names=["circle", "square", "cross"])


def _predictions(df) -> dict[int, tuple]:  # noqa: ANN001
    """``{id: (prediction, error, probabilities rounded to 6 places)}``: batches may differ between tables."""
    return {int(r["id"]): (r["prediction"], r["error"], None if r["probability"] is None
                           else tuple(np.round(r["probability"], 6))) for r in df.collect()}


def test_vector_and_column_layouts_score_to_the_array_layouts_predictions(local_spark, tiny_model, tmp_path):
    from pyspark.ml.linalg import Vectors

    images, labels = toy_images(30, image_size=TINY.image_size, num_classes=TINY.num_classes, seed=1)
    values = images.astype(np.float64)
    arrays = local_spark.createDataFrame([(i, values[i].tolist(), int(labels[i])) for i in range(30)],
                                         "id long, pixels array<double>, label int")
    want = _predictions(score(arrays, tiny_model))
    assert len({p for p, _, _ in want.values()}) > 1 and all(e is None for _, e, _ in want.values())

    dense = local_spark.createDataFrame([(i, Vectors.dense(values[i]), 7) for i in range(30)], ["id", "features", "x"])
    sparse = local_spark.createDataFrame(
        [(i, Vectors.sparse(TINY_PIXELS, dict(enumerate(values[i]))), 7) for i in range(30)], ["id", "features", "x"])
    names = [f"pixel{j}" for j in range(TINY_PIXELS)]
    wide = local_spark.createDataFrame([(i, *values[i].tolist()) for i in range(30)], ["id", *names])
    assert _predictions(score(dense, tiny_model, input_col="features")) == want
    assert _predictions(score(sparse, tiny_model, feature_columns=["features"])) == want
    assert _predictions(score(wide, tiny_model, pixel_prefix="pixel")) == want
    assert _predictions(score(wide, tiny_model, feature_columns=names)) == want

    path = _write_csv(tmp_path / "score.csv", ["id", "label", *names],
                      [[i, int(labels[i]), *(repr(float(v)) for v in values[i])] for i in range(30)])
    result = score_to_parquet(local_spark, path, tiny_model, tmp_path / "out.parquet", pixel_prefix="pixel",
                              input_format="csv")
    assert _predictions(local_spark.read.parquet(result.output_path)) == want
    assert (result.rows, result.scored) == (30, 30) and result.accuracy is not None


def test_scoring_flags_a_vector_of_the_wrong_size_and_refuses_keys_that_do_not_fit(local_spark, tiny_model):
    from pyspark.ml.linalg import Vectors

    df = local_spark.createDataFrame([(0, Vectors.dense([0.5] * (TINY_PIXELS - 1))),
                                      (1, Vectors.dense([0.5] * TINY_PIXELS))], ["id", "features"])
    out = _predictions(score(df, tiny_model, input_col="features"))
    assert out[0] == (None, "pixel_count", None) and out[1][1] is None
    with pytest.raises(ConfigError, match=r"^pixel_prefix: columns named 'pixel' followed by a number"):
        score(df, tiny_model, pixel_prefix="pixel")
    with pytest.raises(ConfigError, match=r"input_col/input_cols and feature_columns/pixel_prefix each name"):
        score(df, tiny_model, input_col="features", feature_columns=["features"])
