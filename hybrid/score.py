"""Score: batch inference with a saved model inside Spark; a bad row is flagged, never fatal.

Data flow for a DataFrame with an image column (``pixels``, an array of numbers) or a text column
(``text``, a string; the model directory carries its tokenizer, and rules ``text_null`` and
``text_empty`` take the place of the pixel rules; each Python worker tokenises its rows, orders them
by length and pads each batch to its own longest row):

1. **Driver, before any task.** The model directory is verified against its SHA-256 manifest and
   loaded once (a changed byte raises :class:`~hybrid.artifacts.ArtifactError` here, not in a task),
   zipped into an archive named after the manifest's hash, and shipped with
   ``SparkContext.addArchive``. Nothing assumes Spark-on-Ray or a shared file system: on any
   cluster, each executor fetches the archive, unpacks it and reads it through ``SparkFiles``
   (``addFile(dir, recursive=True)`` would be simpler, but Spark refuses a local directory on any
   master other than ``local``). As for any UDF defined in a package, the executors' Python must
   be able to import ``hybrid`` (installed there, or shipped with ``spark.submit.pyFiles``): a
   one-task probe (:func:`hybrid.spark_workers.check_spark_workers`) checks that, and every
   package the UDF imports, before the archive is added, and names what a worker lacks in one line.
2. **Spark SQL, in the JVM.** Each row is checked against the pixel rules of :mod:`hybrid.ingest`
   (same names, same order: ``pixels_null``, ``pixel_count``, ``pixel_null``, ``pixel_not_finite``).
   This must happen before pandas: once Arrow hands an array with a null element to pandas it is a
   NaN, and the two rules can no longer be told apart. The rule's name travels with the row.
3. **Python worker, in batches.** The model is loaded once per Python worker (a small cache keyed
   by the staged name, which holds the manifest hash, and checked against the expected hash), the
   pixels are standardised exactly as ingest did in training (``float32((float64(x) - mean) /
   std)``, the same IEEE operations as ``hybrid.ingest.normalize``) and scored ``batch_size`` rows
   at a time under ``torch.inference_mode``, with torch limited to the task's CPUs.

Output columns: ``prediction`` (int, the arg-max class), ``prediction_label`` (its name from
``label_names``), ``probability`` (``array<float>``: the softmax over *all* classes, so a caller can
take ``F.array_max`` for the confidence or read any class's probability) and ``error`` (the rule a
bad row broke, else null). For a bad row the first three are null.

Why an Arrow pandas UDF, not ``predict_batch_udf`` or ``mapInPandas``
    Measured with ``benchmarks/bench_score.py --rows 20000`` (2-core machine shared with other
    jobs, plain local[2] Spark, 4 partitions, a 28x28 CNN with 16/32 channels and a 64-wide head,
    int16 pixels with 1 row in 100 bad, batch 256, best of 3 runs taken round robin). The two
    calmest of five runs:

    ==================================================  =================  =================
    path                                                rows/s, run 1      rows/s, run 2
    ==================================================  =================  =================
    this module's iterator pandas UDF                   8,251              7,200
    ``predict_batch_udf`` (same loader and batch)       8,104              7,297
    ``mapInPandas`` (every column through pandas)       5,799              5,527
    row-at-a-time ``F.udf`` (5,000 rows)                2,445              2,953
    in-process torch, no Spark (2 threads / 1 thread)   11,043 / 7,429     4,526 / 7,037
    ==================================================  =================  =================

    ``predict_batch_udf`` is an iterator pandas UDF itself, and the two are equally fast: within
    2% either way in these runs, 0.96x to 1.8x in favour of this module's UDF in three runs on a
    heavily loaded machine. It loses on bad rows: it ``np.vstack``-s and reshapes every row, so a
    null or short row fails the whole task; rows must be replaced by zeros and their results
    nulled afterwards, and the rule's name cannot travel through it. Its model cache is keyed by a
    random id made each time the UDF is built, not by the model's content. ``mapInPandas`` was
    25-30% slower here (0.3x to 0.8x under load) because every column, the pixels too, goes
    through pandas and back, and it changes data on the way: a NaN in any float column it passes
    through, scalar or inside an array, comes back as null (Spark marks NaN as missing when
    converting from pandas).

Pandas 3: pyspark 3.5.7 declares only ``pandas>=1.0.5``. With pandas 3.1.1 and pyarrow 26, the
paths this module and its benchmark use work: pandas UDFs (scalar, iterator, grouped),
``mapInPandas``, ``applyInPandas`` and ``toPandas`` (tests pass with pandas 2.3.3 too). One path
does not: ``spark.createDataFrame(pandas_df)`` fails on Arrow ("Cannot convert
pyarrow.lib.ChunkedArray to pyarrow.lib.Array") when a column has pandas 3's default ``str`` dtype
backed by more than one Arrow chunk (``pd.concat`` of frames, for one), and Spark's fallback then
writes missing strings as the text ``'NaN'``. Not used here; ``df.astype({col: object})`` first
avoids it. Copy-on-write makes ``Series.to_numpy()`` read-only; rows are stacked into a fresh
array before torch sees them.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
import threading
import time
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybrid.artifacts import INT8_FILES, MANIFEST, ArtifactError, load_model, sha256_file
from hybrid.errors import ConfigError, DataError
from hybrid.ingest import LABEL, PIXELS, first_broken_rule
from hybrid.ingest_text import text_rules
from hybrid.spark_workers import SCORING_MODULES, check_spark_workers

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

PIXEL_REASONS = ("pixels_null", "pixel_count", "pixel_null", "pixel_not_finite")
"""The rules of :data:`hybrid.ingest.REASONS` that concern the pixels alone, in the order checked."""
TEXT_REASONS = ("text_null", "text_empty")
"""The rules of :data:`hybrid.ingest_text.TEXT_REASONS` that concern the text alone, in the order checked."""
TEXT_COL = "text"

# Fields of the struct a score column holds (see :func:`score_udf`).
PREDICTION, PREDICTION_LABEL, PROBABILITY, ERROR = "prediction", "prediction_label", "probability", "error"
_UDF_RESULT = T.StructType(
    [
        T.StructField(PREDICTION, T.IntegerType()),
        T.StructField(PROBABILITY, T.ArrayType(T.FloatType(), containsNull=False)),
        T.StructField(ERROR, T.StringType()),
    ]
)
_STAGED_PREFIX = "hybrid-model-"


# --------------------------------------------------------------------------------------------
# The maths: pure functions on numpy arrays and a model (unit-testable without Spark).


def normalize_pixels(pixels: np.ndarray, *, mean: float, std: float) -> np.ndarray:
    """Standardise raw pixels exactly as :func:`hybrid.ingest.normalize` did for training.

    Spark computes ``CAST((CAST(x AS DOUBLE) - mean) / std AS FLOAT)``; the same float64 operations
    followed by a round-to-nearest cast give bit-identical float32 values.

    Args:
        pixels: ``(rows, num_pixels)`` of any real dtype.
        mean: The training split's pixel mean (``model.json``'s ``normalizer.mean``).
        std: The training split's pixel standard deviation.

    Returns:
        A new C-contiguous float32 array of the same shape (writable, safe for ``torch.from_numpy``).
    """
    return ((pixels.astype(np.float64) - mean) / std).astype(np.float32)


def predict_proba(
    model: Any, pixels: np.ndarray, *, mean: float, std: float, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise raw pixels and run ``model`` on them ``batch_size`` rows at a time.

    Args:
        model: An ``nn.Module`` in eval mode mapping ``(batch, num_pixels)`` float32 to logits.
        pixels: ``(rows, num_pixels)`` raw pixels.
        mean: See :func:`normalize_pixels`.
        std: See :func:`normalize_pixels`.
        batch_size: Rows per forward pass.

    Returns:
        ``(prediction, probability)``: int32 ``(rows,)`` arg-max of the logits and float32
        ``(rows, num_classes)`` softmax.
    """
    import torch

    x = normalize_pixels(pixels, mean=mean, std=std)
    predictions, probabilities = [], []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            logits = model(torch.from_numpy(x[start : start + batch_size]))  # (batch, num_classes)
            predictions.append(logits.argmax(dim=1).to(torch.int32).numpy())
            probabilities.append(torch.softmax(logits.float(), dim=1).numpy())
    if not predictions:
        return np.zeros(0, np.int32), np.zeros((0, 0), np.float32)
    return np.concatenate(predictions), np.concatenate(probabilities)


def predict_text_proba(
    model: Any, collate: Callable[[dict[str, Any]], dict[str, Any]], tokenizer: Any, texts: list[str], *,
    input_columns: tuple[str, ...], max_length: int, batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Tokenise ``texts`` and run ``model`` on them ``batch_size`` rows at a time.

    Rows are ordered by token count before batching (and put back afterwards), so each padded
    batch holds rows of similar length: padding is computed for nothing.

    Returns:
        ``(prediction, probability)`` as in :func:`predict_proba`.
    """
    import torch

    from hybrid.text import INPUT_IDS, tokenize

    ids = tokenize(tokenizer, texts, max_length=max_length)
    order = np.argsort([len(x) for x in ids], kind="stable")
    predictions = np.zeros(len(ids), np.int32)
    probabilities: np.ndarray | None = None
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            rows = order[start : start + batch_size]
            batch = collate({INPUT_IDS: np.array([ids[i] for i in rows] + [None], dtype=object)[:-1]})
            logits = model(*(batch[c] for c in input_columns)).float()  # (batch, num_classes)
            proba = torch.softmax(logits, dim=1).numpy()
            if probabilities is None:
                probabilities = np.zeros((len(ids), proba.shape[1]), np.float32)
            predictions[rows] = logits.argmax(dim=1).numpy()
            probabilities[rows] = proba
    return predictions, probabilities if probabilities is not None else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------------------------
# Validation: Spark SQL expressions, evaluated in the JVM before any row reaches Python.


def pixel_reject_reason(pixels: Column, *, num_pixels: int) -> Column:
    """The first pixel rule (see :data:`PIXEL_REASONS`) a row breaks, or null.

    The rules and their order are those of :func:`hybrid.ingest.reject_reason` without the label
    rules (a row to score need not have a label), written without lambdas: ``exists(x -> ...)`` is
    interpreted row by row, element by element, and on 20k rows of 784 pixels the two lambdas cost
    about 1.7 s of a 2-core machine against about 0.6 s for these forms (``array_max`` /
    ``array_min`` are compiled; Spark orders NaN above +inf and both skip nulls). The expression
    needs no schema: an integer array simply never breaks the finiteness rule.
    """
    largest, smallest = F.array_max(pixels).cast("double"), F.array_min(pixels).cast("double")
    rules = [
        ("pixels_null", pixels.isNull()),
        ("pixel_count", F.size(pixels) != num_pixels),
        # [null] when the row holds a null element, [] otherwise (NaN included: it is a value)
        ("pixel_null", F.size(F.array_intersect(pixels, F.array(F.lit(None)))) > 0),
        ("pixel_not_finite", F.isnan(largest) | (largest == float("inf")) | (smallest == float("-inf"))),
    ]
    return first_broken_rule(rules)


def text_reject_reason(text: Column) -> Column:
    """The first text rule (see :data:`TEXT_REASONS`) a row breaks, or null."""
    return first_broken_rule(text_rules(text))


def _input_type(df: DataFrame, input_col: str) -> T.DataType:
    """The type of the column to score, or a :class:`DataError` naming it and the columns there are."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if input_col not in fields:
        raise DataError(f"column '{input_col}' to score is required, but the columns are {sorted(fields)}")
    return fields[input_col]


def check_text_column(df: DataFrame, input_col: str) -> None:
    """Fail on the driver, naming the column and its type, unless ``input_col`` is a string column.

    Raises:
        DataError: If the column is missing or has another type.
    """
    dtype = _input_type(df, input_col)
    if not isinstance(dtype, T.StringType):
        raise DataError(f"column '{input_col}' must hold strings (one text per row), but has type {dtype.simpleString()}")


def check_pixels_column(df: DataFrame, input_col: str) -> None:
    """Fail on the driver, naming the column and its type, unless ``input_col`` is an array of numbers.

    Raises:
        DataError: If the column is missing or has another type.
    """
    dtype = _input_type(df, input_col)
    if not isinstance(dtype, T.ArrayType) or not isinstance(dtype.elementType, T.NumericType):
        raise DataError(
            f"column '{input_col}' must be an array of numbers (one image per row), "
            f"but has type {dtype.simpleString()}"
        )


# --------------------------------------------------------------------------------------------
# Shipping the model (driver) and loading it once per Python worker.


@dataclass(frozen=True)
class ModelRef:
    """What a task needs to find and check the model; small and picklable (it travels in the UDF)."""

    name: str
    """Name of the staged archive under ``SparkFiles`` (``hybrid-model-<manifest hash>.zip``); on an
    executor it names the directory the archive was unpacked into."""
    manifest_sha256: str
    """SHA-256 of the ``manifest.json`` the driver verified; a worker refuses any other."""
    batch_size: int
    """Rows per forward pass."""


@dataclass(frozen=True)
class ShippedModel:
    """A model verified on the driver and added to the Spark job (see :func:`ship_model`)."""

    ref: ModelRef
    source_dir: Path
    """The directory the caller named."""
    modality: Literal["images", "text"]
    """What the model reads: pixels arrays or strings."""
    num_pixels: int | None
    """Images: values per input row (``in_channels * image_size**2``)."""
    label_names: tuple[str, ...]
    """Class names by index (``"0"``, ``"1"``... when the model has none)."""
    normalizer: dict[str, float] | None
    """Images: ``{"mean", "std"}`` from ``model.json``."""

    @property
    def reasons(self) -> tuple[str, ...]:
        """The rules a row to score is checked against."""
        return TEXT_REASONS if self.modality == "text" else PIXEL_REASONS

    def reject_reason(self, column: Column) -> Column:
        """The first rule ``column``'s value breaks, or null."""
        if self.modality == "text":
            return text_reject_reason(column)
        return pixel_reject_reason(column, num_pixels=int(self.num_pixels or 0))

    def check_column(self, df: DataFrame, input_col: str) -> None:
        """Fail on the driver unless ``input_col`` has the type this model reads."""
        (check_text_column if self.modality == "text" else check_pixels_column)(df, input_col)


_STAGE_LOCK = threading.Lock()
_STAGE_ROOT: Path | None = None


def _stage_root() -> Path:
    global _STAGE_ROOT
    with _STAGE_LOCK:
        if _STAGE_ROOT is None:
            _STAGE_ROOT = Path(tempfile.mkdtemp(prefix="hybrid-score-"))
            atexit.register(shutil.rmtree, _STAGE_ROOT, True)
        return _STAGE_ROOT


def _stage(source: Path, manifest_sha256: str) -> Path:
    """Zip the manifest's files into an archive named after the manifest hash (once per content).

    Why an archive: ``SparkContext.addFile(dir, recursive=True)`` refuses a local directory on any
    master but ``local`` (``UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY``, seen on Spark-on-Ray), and added
    single files share one flat namespace, where every model's ``model.safetensors`` would collide.
    ``addArchive`` ships one local file to any cluster and each executor unpacks it into a directory
    of its own. Naming it by content lets any number of models (and a retrained model written to the
    same path) be scored in one session, and a task never reads a stale copy.
    """
    target = _stage_root() / f"{_STAGED_PREFIX}{manifest_sha256[:16]}.zip"
    with _STAGE_LOCK:
        if not target.is_file():
            partial = target.with_name(target.name + ".partial")
            files = json.loads((source / MANIFEST).read_text())["files"]
            # stored, not deflated: weights barely compress, and executors unpack it on every start
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as archive:
                for name in (*files, MANIFEST):
                    archive.write(source / name, arcname=name)
            partial.rename(target)
    return target


def _modality(meta: dict[str, Any], directory: Path) -> Literal["images", "text"]:
    """What a row to score holds: the modality of the family recorded in ``model.json``.

    Raises:
        ArtifactError: If the family's rows are neither images nor text (a span model: not scored yet).
    """
    from hybrid.models import get_family

    modality = get_family(meta["family"]).modality
    if modality not in ("images", "text"):
        raise ArtifactError(
            f"{directory}: score() handles image and text classification models, but this one is family "
            f"{meta['family']!r} (rows of modality {modality!r})"
        )
    return modality  # type: ignore[return-value]


def _num_pixels(meta: dict[str, Any], directory: Path) -> int:
    config = meta.get("config") or {}
    if "image_size" not in config:
        raise ArtifactError(
            f"{directory}: model.json's config has no 'image_size'; score() handles image models "
            f"(family 'cnn'), but this one is family {meta.get('family')!r}"
        )
    return int(config.get("in_channels", 1)) * int(config["image_size"]) ** 2


def _label_names(meta: dict[str, Any], directory: Path) -> tuple[str, ...]:
    num_classes = (meta.get("config") or {}).get("num_classes")
    names = tuple(str(n) for n in meta.get("label_names") or ())
    if not names:
        if num_classes is None:
            raise ArtifactError(f"{directory}: model.json has neither 'label_names' nor config.num_classes")
        return tuple(str(i) for i in range(int(num_classes)))
    if num_classes is not None and len(names) != int(num_classes):
        raise ArtifactError(
            f"{directory}: model.json lists {len(names)} label_names but config.num_classes is {num_classes}"
        )
    return names


def _normalizer(meta: dict[str, Any], directory: Path) -> dict[str, float]:
    norm = meta.get("normalizer")
    try:
        mean, std = float(norm["mean"]), float(norm["std"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        raise ArtifactError(
            f"{directory}: model.json must hold normalizer {{'mean': float, 'std': float}} (the training "
            f"preprocessing), but has {norm!r}; save the model with normalizer=IngestResult.normalizer.to_dict()"
        ) from None
    if not std > 0 or not np.isfinite(mean):
        raise ArtifactError(f"{directory}: normalizer must have a finite mean and std > 0, but got {norm!r}")
    return {"mean": mean, "std": std}


def ship_model(spark: SparkSession, model_dir: str | Path, *, batch_size: int = 256) -> ShippedModel:
    """Verify and load ``model_dir`` on the driver, then add it to the Spark job's files.

    Args:
        spark: The session whose executors will score.
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        batch_size: Rows per forward pass on the executors.

    Returns:
        What the scoring UDF needs.

    Raises:
        ConfigError: If ``batch_size < 1``.
        ArtifactError: If the directory is incomplete, a file does not match the manifest, or the
            metadata lacks what scoring needs (normaliser, image size, label names).
        WorkerEnvironmentError: If Spark's Python workers cannot import hybrid or what the model
            needs (see :func:`hybrid.spark_workers.check_spark_workers`).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, but got {batch_size}")
    source = Path(model_dir).resolve()
    if not source.is_dir():
        raise ArtifactError(f"model directory {source} does not exist or is not a directory")
    # Loading (not only hashing) here means that weights which do not fit the config also fail
    # on the driver, with the directory in the message, rather than inside every task.
    _, meta = load_model(source)
    modality = _modality(meta, source)
    label_names = _label_names(meta, source)
    num_pixels = _num_pixels(meta, source) if modality == "images" else None
    normalizer = _normalizer(meta, source) if modality == "images" else None
    check_spark_workers(spark, modules=_worker_modules(source, modality))
    manifest_sha256 = sha256_file(source / MANIFEST)
    staged = _stage(source, manifest_sha256)
    sc = spark.sparkContext
    if not any(uri.endswith("/" + staged.name) for uri in sc.listArchives):
        sc.addArchive(str(staged))
    return ShippedModel(
        ref=ModelRef(name=staged.name, manifest_sha256=manifest_sha256, batch_size=batch_size),
        source_dir=source,
        modality=modality,
        num_pixels=num_pixels,
        label_names=label_names,
        normalizer=normalizer,
    )


def _worker_modules(directory: Path, modality: Literal["images", "text"]) -> tuple[str, ...]:
    """What a Python worker imports to score with the model in ``directory``."""
    extra = ("onnxruntime",) if (directory / INT8_FILES["onnxruntime"]).is_file() else ()
    return SCORING_MODULES + extra + (("transformers",) if modality == "text" else ())


@dataclass
class _WorkerModel:
    predict: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
    """``(valid rows' inputs, batch size) -> (prediction, probability)``."""


def _predictor(model: Any, meta: dict[str, Any], directory: Path) -> Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]:
    if _modality(meta, directory) == "text":
        from hybrid.artifacts import model_collate
        from hybrid.models import get_family
        from hybrid.models.bert import ENCODER_DIR
        from hybrid.text import load_tokenizer

        collate = model_collate(directory, meta)
        columns = get_family(meta["family"]).input_columns
        tokenizer = load_tokenizer(str(directory / ENCODER_DIR))
        max_length = int(meta.get("max_seq_length") or meta["config"].get("max_length", 128))

        def text(rows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
            return predict_text_proba(model, collate, tokenizer, [str(t) for t in rows], input_columns=columns,
                                      max_length=max_length, batch_size=batch_size)

        return text
    norm = _normalizer(meta, directory)

    def images(rows: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        return predict_proba(model, np.stack(rows), mean=norm["mean"], std=norm["std"], batch_size=batch_size)

    return images


_WORKER_CACHE: OrderedDict[tuple[str, str], _WorkerModel] = OrderedDict()
_WORKER_CACHE_SIZE = 3  # models kept per Python worker; a job rarely scores with more at once
_WORKER_LOCK = threading.Lock()


def worker_model(ref: ModelRef) -> _WorkerModel:
    """The model ``ref`` names, loaded at most once per Python worker process.

    Raises:
        ArtifactError: If the fetched directory's manifest is not the one the driver verified, or a
            file does not match it (a copy corrupted on the way).
    """
    key = (ref.name, ref.manifest_sha256)
    with _WORKER_LOCK:
        cached = _WORKER_CACHE.get(key)
        if cached is not None:
            _WORKER_CACHE.move_to_end(key)
            return cached
        from pyspark import SparkFiles

        directory = Path(SparkFiles.get(ref.name))
        found = sha256_file(directory / MANIFEST) if (directory / MANIFEST).is_file() else "missing"
        if found != ref.manifest_sha256:
            raise ArtifactError(
                f"{directory}: the executor's copy has manifest SHA-256 {found[:12]}, but the driver verified "
                f"{ref.manifest_sha256[:12]}; the model files did not reach this executor intact"
            )
        model, meta = load_model(directory)
        loaded = _WorkerModel(predict=_predictor(model, meta, directory))
        _WORKER_CACHE[key] = loaded
        while len(_WORKER_CACHE) > _WORKER_CACHE_SIZE:
            _WORKER_CACHE.popitem(last=False)
        return loaded


def _use_task_cpus() -> None:
    """Give torch as many threads as the task holds cores: Spark runs one task per core already."""
    import torch
    from pyspark import TaskContext

    ctx = TaskContext.get()
    cpus = max(1, ctx.cpus()) if ctx is not None else 1
    if torch.get_num_threads() != cpus:
        torch.set_num_threads(cpus)


def score_batches(ref: ModelRef) -> Callable[[Iterator[tuple[pd.Series, pd.Series]]], Iterator[pd.DataFrame]]:
    """The body of the scoring pandas UDF: ``(pixels or text, error)`` batches -> result frames.

    Only rows whose ``error`` is null are scored; the others pass through with a null prediction.
    """

    def run(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        _use_task_cpus()
        loaded = worker_model(ref)
        for inputs, error in batches:
            n = len(inputs)
            ok = error.isna().to_numpy()
            prediction = np.zeros(n, dtype=np.int32)
            probability: list[np.ndarray | None] = [None] * n
            rows = np.flatnonzero(ok)
            if len(rows):
                pred, proba = loaded.predict(inputs.to_numpy()[rows], ref.batch_size)
                prediction[rows] = pred
                for i, row in zip(rows, proba):
                    probability[i] = row
            yield pd.DataFrame(
                {
                    PREDICTION: pd.arrays.IntegerArray(prediction, ~ok),
                    PROBABILITY: pd.Series(probability, dtype=object),
                    ERROR: np.where(ok, None, error.to_numpy(dtype=object)),  # None, not NaN, for "no error"
                }
            )

    # pandas_udf infers the UDF kind from evaluated type hints; this module's are strings (and pandas
    # is imported lazily), so hand it the real objects.
    import pandas as pd

    run.__annotations__ = {"batches": Iterator[tuple[pd.Series, pd.Series]], "return": Iterator[pd.DataFrame]}
    return run


# --------------------------------------------------------------------------------------------
# The public API.


def score_udf(
    spark: SparkSession, model_dir: str | Path, *, batch_size: int = 256
) -> Callable[[Column | str], Column]:
    """A reusable scoring function for Spark users: pixels column in, result struct column out.

    The model is verified and shipped once, here; the returned function can be applied to any
    number of DataFrames of that session::

        scorer = score_udf(spark, "runs/x/models/student")
        out = df.withColumn("s", scorer("pixels")).select("*", "s.*").drop("s")

    Args:
        spark: The session whose executors will score.
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        batch_size: Rows per forward pass.

    Returns:
        A function from a pixels column (or its name) to a struct column with fields
        ``prediction`` (int), ``prediction_label`` (string), ``probability`` (``array<float>``,
        all classes) and ``error`` (string: the broken rule of :data:`PIXEL_REASONS`, else null).

    Raises:
        ConfigError: If ``batch_size < 1``.
        ArtifactError: See :func:`ship_model`.
    """
    return _scorer(ship_model(spark, model_dir, batch_size=batch_size))


def _scorer(shipped: ShippedModel) -> Callable[[Column | str], Column]:
    with warnings.catch_warnings():
        # pyspark 3.5 checks the pandas/pyarrow versions with distutils' LooseVersion on every call
        warnings.filterwarnings("ignore", "distutils Version classes are deprecated", DeprecationWarning)
        udf = F.pandas_udf(score_batches(shipped.ref), _UDF_RESULT)  # type: ignore[call-overload]
    names = F.array(*(F.lit(n) for n in shipped.label_names))

    def apply(pixels: Column | str) -> Column:
        col = F.col(pixels) if isinstance(pixels, str) else pixels
        error = shipped.reject_reason(col)
        # The rows that broke a rule travel too (a few bytes each) and are skipped in Python: a
        # `when(error IS NULL, pixels)` argument would evaluate the rules a second time.
        result = udf(col, error)
        prediction = result[PREDICTION]
        return F.struct(
            prediction.alias(PREDICTION),
            F.element_at(names, prediction + 1).alias(PREDICTION_LABEL),
            result[PROBABILITY].alias(PROBABILITY),
            result[ERROR].alias(ERROR),
        )

    return apply


def score(
    df: DataFrame,
    model_dir: str | Path,
    *,
    input_col: str | None = None,
    batch_size: int = 256,
    prediction_col: str = PREDICTION,
    probability_col: str = PROBABILITY,
    error_col: str = ERROR,
) -> DataFrame:
    """``df`` with the model's prediction, its label name, class probabilities and a row error added.

    Lazy: nothing runs until the caller acts on the result (typically ``.write.parquet``). Every
    input row is kept; a row that breaks a pixel rule gets null prediction, label and probability,
    and the rule's name in ``error_col``.

    Args:
        df: Any DataFrame with ``input_col`` (an array of numbers, raw pixels as ingest read them).
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        input_col: The pixels (image model) or text (text model) column; default ``pixels`` or ``text``.
        batch_size: Rows per forward pass.
        prediction_col: Name of the int prediction column; ``<prediction_col>_label`` holds the name.
        probability_col: Name of the ``array<float>`` column of class probabilities (softmax).
        error_col: Name of the string column naming the broken rule (null for a scored row).

    Returns:
        ``df``'s columns followed by the four new ones.

    Raises:
        DataError: If ``input_col`` is missing or not an array of numbers, or a new column name is taken.
        ArtifactError: If the model directory is incomplete or was changed (checked on the driver).
    """
    shipped = ship_model(df.sparkSession, model_dir, batch_size=batch_size)
    input_col = input_col or _default_input(shipped)
    shipped.check_column(df, input_col)
    _check_output_names(df, prediction_col, probability_col, error_col)
    return _add_scores(df, shipped, input_col, prediction_col, probability_col, error_col)


def _default_input(shipped: ShippedModel) -> str:
    return TEXT_COL if shipped.modality == "text" else PIXELS


def _check_output_names(df: DataFrame, prediction_col: str, probability_col: str, error_col: str) -> None:
    new = [prediction_col, f"{prediction_col}_label", probability_col, error_col]
    if len(set(new)) != len(new):
        raise DataError(f"output column names must differ, but got {new}")
    taken = sorted(set(new) & set(df.columns))
    if taken:
        raise DataError(
            f"output columns {taken} already exist in the DataFrame; pass other names (prediction_col=, "
            "probability_col=, error_col=)"
        )


def _add_scores(
    df: DataFrame, shipped: ShippedModel, input_col: str, prediction_col: str, probability_col: str, error_col: str
) -> DataFrame:
    new = {prediction_col: PREDICTION, f"{prediction_col}_label": PREDICTION_LABEL,
           probability_col: PROBABILITY, error_col: ERROR}
    tmp = "__hybrid_score"
    out = df.withColumn(tmp, _scorer(shipped)(F.col(f"`{input_col}`")))
    return out.withColumns({name: F.col(tmp)[fld] for name, fld in new.items()}).drop(tmp)


@dataclass
class ScoreResult:
    """What :func:`score_to_parquet` wrote and counted (from the Parquet output itself)."""

    output_path: str
    rows: int
    """Rows written: every input row."""
    scored: int
    """Rows with a prediction."""
    rejected: dict[str, int]
    """Rows per broken rule (:data:`PIXEL_REASONS` or :data:`TEXT_REASONS`); every rule is present, zero when clean."""
    accuracy: float | None
    """Share of scored rows with a non-null ``label`` whose prediction equals it (None without labels)."""
    duration_s: float
    """Reading, scoring and writing (the counting pass afterwards excluded)."""

    @property
    def rows_per_s(self) -> float:
        """Input rows per second of :attr:`duration_s`."""
        return self.rows / self.duration_s if self.duration_s > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The ``score`` block of ``summary.json``."""
        return {
            "rows": self.rows,
            "rows_per_s": self.rows_per_s,
            "accuracy_in_spark": self.accuracy,
            "scored": self.scored,
            "rejected": dict(self.rejected),
            "output_path": self.output_path,
        }


def score_to_parquet(
    spark: SparkSession,
    input_path: str | Path,
    model_dir: str | Path,
    output_path: str | Path,
    *,
    input_col: str | None = None,
    batch_size: int = 256,
    mode: Literal["error", "overwrite"] = "error",
) -> ScoreResult:
    """Read a Parquet table, :func:`score` it and write every row, scored or flagged, to Parquet.

    Args:
        spark: The session to run on (plain Spark or Spark on Ray).
        input_path: Parquet table with ``input_col`` (and optionally ``label``, for accuracy).
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        output_path: Where the scored table goes.
        input_col: The pixels (image model) or text (text model) column; default ``pixels`` or ``text``.
        batch_size: Rows per forward pass.
        mode: ``error`` refuses an existing ``output_path``; ``overwrite`` replaces it.

    Returns:
        Counts and accuracy computed in Spark from the written table.

    Raises:
        DataError: See :func:`score`.
        ArtifactError: See :func:`score`.
    """
    if mode not in ("error", "overwrite"):
        raise ConfigError(f"mode must be 'error' or 'overwrite', but got {mode!r}")
    output_path = str(Path(output_path).resolve())
    t0 = time.perf_counter()
    shipped = ship_model(spark, model_dir, batch_size=batch_size)  # before reading: a bad model runs no job
    df = spark.read.parquet(str(input_path))
    input_col = input_col or _default_input(shipped)
    shipped.check_column(df, input_col)
    _check_output_names(df, PREDICTION, PROBABILITY, ERROR)
    _add_scores(df, shipped, input_col, PREDICTION, PROBABILITY, ERROR).write.mode(mode).parquet(output_path)
    duration = time.perf_counter() - t0

    out = spark.read.parquet(output_path)
    has_label = LABEL in out.columns and isinstance(out.schema[LABEL].dataType, T.NumericType)
    hit = (F.col(PREDICTION) == F.col(LABEL).cast("long")).cast("int") if has_label else F.lit(None)
    by_error = out.groupBy(ERROR).agg(
        F.count(F.lit(1)).alias("n"), F.sum(hit).alias("hits"), F.count(hit).alias("labelled")
    ).collect()
    rejected = dict.fromkeys(shipped.reasons, 0)
    rows = scored = hits = labelled = 0
    for row in by_error:
        rows += row["n"]
        if row[ERROR] is None:
            scored, hits, labelled = row["n"], row["hits"] or 0, row["labelled"]
        else:
            rejected[row[ERROR]] = rejected.get(row[ERROR], 0) + row["n"]
    if sum(rejected.values()):
        broken = {k: v for k, v in rejected.items() if v}
        log.warning("%d of %d rows could not be scored (null prediction, rule in '%s'): %s",
                    rows - scored, rows, ERROR, broken)
    accuracy = hits / labelled if has_label and labelled else None
    return ScoreResult(
        output_path=output_path, rows=rows, scored=scored, rejected=rejected, accuracy=accuracy, duration_s=duration
    )
