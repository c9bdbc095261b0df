"""Score: batch inference with a saved model inside Spark; a bad row is flagged, never fatal.

What a row holds, the rules it is checked against, the columns added and the prediction itself are the
model family's (:class:`hybrid.models.predict.Predictor`, from ``ModelFamily.predictor``); this module
only runs them in Spark. Image models read ``pixels`` (an array of numbers; or a Vector column, or one column
per pixel, turned into that array by :mod:`hybrid.features` exactly as ingest does); text classifiers read
``text`` (a string; the model directory carries its tokenizer, and rules ``text_null`` and
``text_empty`` take the place of the pixel rules; each Python worker tokenises its rows, orders them
by length and pads each batch to its own longest row); span (question answering) models read
``question`` and ``context`` (rules ``question_null``, ``question_empty``, ``context_null``,
``context_empty``), cut each context into the model's overlapping windows in the worker, decode the
n-best span over all windows of a row (:func:`hybrid.qa.postprocess`, as in training's evaluation) and
add ``answer``, ``answer_start`` (character offset in the context) and ``score`` (start + end logit).
The data flow, for an image model:

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

Output columns of a classifier: ``prediction`` (int, the arg-max class), ``prediction_label`` (its name from
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybrid.artifacts import INT8_FILES, MANIFEST, ArtifactError, load_model, sha256_file
from hybrid.errors import ConfigError, DataError, did_you_mean
from hybrid.ingest import first_broken_rule
from hybrid.ingest_text import BLANK
from hybrid.models.predict import (
    ERROR,
    PIXEL_REASONS,
    PREDICTION,
    PREDICTION_LABEL,
    PROBABILITY,
    Predictor,
    RowMetrics,
    ScoreInput,
    ScoreOutput,
    normalize_pixels,
    predict_proba,
    predict_text_proba,
)
from hybrid.spark_workers import SCORING_MODULES, check_spark_workers

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

__all__ = [
    "ERROR", "PIXEL_REASONS", "PREDICTION", "PREDICTION_LABEL", "PROBABILITY", "TEXT_REASONS", "ScoreResult",
    "ShippedModel", "normalize_pixels", "pixel_reject_reason", "predict_proba", "predict_text_proba", "score",
    "score_to_parquet", "score_udf", "ship_model", "text_reject_reason",
]

TEXT_REASONS = ScoreInput("text", "text").reasons
"""The rules of :data:`hybrid.ingest_text.TEXT_REASONS` that concern the text alone, in the order checked."""

_SPARK_TYPES: dict[str, T.DataType] = {
    "int": T.IntegerType(), "double": T.DoubleType(), "string": T.StringType(),
    "floats": T.ArrayType(T.FloatType(), containsNull=False),
}
_STAGED_PREFIX = "hybrid-model-"


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


def text_reject_reason(text: Column, *, name: str = "text") -> Column:
    """The first rule of a text column a row breaks (``<name>_null``, then ``<name>_empty``: nothing but white
    space, Unicode spaces too, as :data:`hybrid.ingest_text.BLANK` says), or null; ``name="text"`` gives
    :data:`TEXT_REASONS`, ingest's rules about the text alone."""
    null, empty = ScoreInput(name, "text").reasons
    return first_broken_rule([(null, text.isNull()), (empty, text.rlike(BLANK))])


def input_reject_reason(spec: ScoreInput, column: Column) -> Column:
    """The first of ``spec``'s rules (:attr:`~hybrid.models.predict.ScoreInput.reasons`) ``column`` breaks, or null."""
    if spec.kind == "pixels":
        return pixel_reject_reason(column, num_pixels=int(spec.length or 0))
    return text_reject_reason(column, name=spec.name)


def _input_type(df: DataFrame, input_col: str, *, reads: str = "") -> T.DataType:
    """The type of the column to score, or a :class:`DataError` naming it and the columns there are."""
    fields = {f.name: f.dataType for f in df.schema.fields}
    if input_col not in fields:
        hint = did_you_mean(input_col, fields)
        raise DataError(f"column '{input_col}' to score is required{reads}, but the columns are {sorted(fields)}{hint}")
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
    """Rows per forward pass (a span model: windows)."""


@dataclass(frozen=True)
class ShippedModel:
    """A model verified on the driver and added to the Spark job (see :func:`ship_model`)."""

    ref: ModelRef
    source_dir: Path
    family: str
    """The model's family (``model.json``)."""
    predictor: Predictor
    """What its rows hold, the rules they are checked against, the columns added (from the family)."""

    @property
    def reasons(self) -> tuple[str, ...]:
        """The rules a row to score is checked against, in order."""
        return self.predictor.reasons

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's input columns by their default names."""
        return tuple(spec.name for spec in self.predictor.inputs)

    def reject_reason(self, columns: Sequence[Column]) -> Column:
        """The first rule the values of ``columns`` (one per input, in order) break, or null."""
        rules = [input_reject_reason(spec, col) for spec, col in zip(self.predictor.inputs, columns)]
        return rules[0] if len(rules) == 1 else F.coalesce(*rules)

    def check_columns(self, df: DataFrame, columns: Sequence[str]) -> None:
        """Fail on the driver unless ``df`` has each input column (in order), of the type this model reads."""
        self.input_columns(df, columns)

    def input_columns(
        self, df: DataFrame, columns: Sequence[str], *, feature_columns: Sequence[str] = (),
        pixel_prefix: str | None = None,
    ) -> list[Column]:
        """The model's inputs as columns of ``df``, checked on the driver: an image input in any layout of
        :mod:`hybrid.features` (``columns`` names its default column: an array or a Vector), turned into the
        pixel array by the same function as ingest's.

        Raises:
            ConfigError: If ``feature_columns`` / ``pixel_prefix`` are given for a model without an image input, or
                do not fit ``df`` (see :func:`hybrid.features.resolve_layout`).
            DataError: If an input column is missing or of another type.
        """
        from hybrid.features import resolve_layout

        if (feature_columns or pixel_prefix is not None) and not any(s.kind == "pixels" for s in self.predictor.inputs):
            raise ConfigError(f"feature_columns and pixel_prefix choose an image model's pixel columns, but a "
                              f"{self.family} model reads {list(self.input_names)}")
        reads = f" (a {self.family} model reads {', '.join(repr(n) for n in self.input_names)})"
        out = []
        for spec, name in zip(self.predictor.inputs, columns):
            if spec.kind == "pixels":
                if not feature_columns and pixel_prefix is None:
                    _input_type(df, name, reads=reads)
                layout = resolve_layout(df.schema, feature_columns=feature_columns, pixel_prefix=pixel_prefix,
                                        default=name, length=spec.length, length_rule="the model",
                                        key_prefix="", table="to score")
                out.append(layout.pixels())
            else:
                _input_type(df, name, reads=reads)  # a missing column: name the model and what it reads
                check_text_column(df, name)
                out.append(F.col(f"`{name}`"))
        return out


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


def _predictor(meta: dict[str, Any], directory: Path) -> Predictor:
    """The scoring predictor the family recorded in ``model.json`` declares for this model.

    Raises:
        ArtifactError: If the family declares none, or ``model.json`` lacks what it needs.
    """
    from hybrid.models import get_family

    family = get_family(meta["family"])
    if family.predictor is None:
        raise ArtifactError(
            f"{directory}: score() runs models whose family declares a scoring predictor ({_scorable_families()}), "
            f"but this one is family {meta['family']!r}"
        )
    return family.predictor(meta, directory)


def _scorable_families() -> list[str]:
    from hybrid.models import get_family, list_models

    return [name for name in list_models() if get_family(name).predictor is not None]


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
    predictor = _predictor(meta, source)
    check_spark_workers(spark, modules=_worker_modules(source, predictor))
    manifest_sha256 = sha256_file(source / MANIFEST)
    staged = _stage(source, manifest_sha256)
    sc = spark.sparkContext
    if not any(uri.endswith("/" + staged.name) for uri in sc.listArchives):
        sc.addArchive(str(staged))
    return ShippedModel(
        ref=ModelRef(name=staged.name, manifest_sha256=manifest_sha256, batch_size=batch_size),
        source_dir=source, family=str(meta["family"]), predictor=predictor,
    )


def _worker_modules(directory: Path, predictor: Predictor) -> tuple[str, ...]:
    """What a Python worker imports to score with the model in ``directory``."""
    extra = ("onnxruntime",) if (directory / INT8_FILES["onnxruntime"]).is_file() else ()
    return SCORING_MODULES + extra + predictor.worker_modules


@dataclass
class _WorkerModel:
    predict: Callable[[Mapping[str, np.ndarray], int], dict[str, Any]]
    """``(valid rows' inputs by name, batch size) -> outputs by name`` (see ``Predictor.load``)."""


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
        loaded = _WorkerModel(predict=_predictor(meta, directory).load(model))
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


def _output_column(values: Sequence[Any], rows: np.ndarray, valid: np.ndarray, dtype: str) -> Any:
    """One output column of a batch of ``len(valid)`` rows: ``values`` (one per row in ``rows``) placed at
    those rows, null wherever ``valid`` is False."""
    import pandas as pd

    n = len(valid)
    if dtype in ("int", "double"):
        out = np.zeros(n, np.int32 if dtype == "int" else np.float64)
        if len(rows):
            out[rows] = np.asarray(values, dtype=out.dtype)
        return (pd.arrays.IntegerArray if dtype == "int" else pd.arrays.FloatingArray)(out, ~valid)
    cells: list[Any] = [None] * n
    for i, value in zip(rows, values):
        if valid[i]:
            cells[i] = value
    return pd.Series(cells, dtype=object)


def score_batches(
    ref: ModelRef, *, inputs: tuple[str, ...], outputs: tuple[ScoreOutput, ...]
) -> Callable[[Iterator[tuple[pd.Series, ...]]], Iterator[pd.DataFrame]]:
    """The body of the scoring pandas UDF: ``(one series per input, error)`` batches -> result frames.

    Only rows whose ``error`` is null are predicted; the others pass through with null outputs. The
    predict function may flag a row itself (``Predictor.late_reasons``): its outputs are then nulled too.

    Args:
        ref: The shipped model.
        inputs: The predictor's input names, in the UDF's argument order.
        outputs: The predictor's output columns.
    """

    def run(batches: Iterator[tuple[pd.Series, ...]]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        _use_task_cpus()
        loaded = worker_model(ref)
        for *columns, error in batches:
            ok = error.isna().to_numpy().copy()  # writable: a row the predictor flags is not ok
            errors = np.where(ok, None, error.to_numpy(dtype=object))  # None, not NaN, for "no error"
            rows = np.flatnonzero(ok)
            found: dict[str, Any] = {}
            if len(rows):
                found = loaded.predict({name: col.to_numpy()[rows] for name, col in zip(inputs, columns)},
                                       ref.batch_size)
                for i, reason in zip(rows, found.get(ERROR) or ()):
                    if reason is not None:
                        errors[i], ok[i] = reason, False
            yield pd.DataFrame(
                {out.name: _output_column(found.get(out.name, ()), rows, ok, out.dtype) for out in outputs}
                | {ERROR: errors}
            )

    # pandas_udf infers the UDF kind from evaluated type hints; this module's are strings (and pandas
    # is imported lazily), so hand it the real objects.
    import pandas as pd

    arguments = tuple[(pd.Series,) * (len(inputs) + 1)]  # type: ignore[misc]
    run.__annotations__ = {"batches": Iterator[arguments], "return": Iterator[pd.DataFrame]}
    return run


# --------------------------------------------------------------------------------------------
# The public API.


def score_udf(
    spark: SparkSession, model_dir: str | Path, *, batch_size: int = 256
) -> Callable[..., Column]:
    """A reusable scoring function for Spark users: the model's input columns in, a result struct column out.

    The model is verified and shipped once, here; the returned function can be applied to any
    number of DataFrames of that session::

        scorer = score_udf(spark, "runs/x/models/student")
        out = df.withColumn("s", scorer("pixels")).select("*", "s.*").drop("s")
        qa = score_udf(spark, "runs/qa/student_int8")
        out = df.withColumn("s", qa("question", "context")).select("*", "s.*").drop("s")

    Args:
        spark: The session whose executors will score.
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        batch_size: Rows per forward pass (a span model: windows).

    Returns:
        A function from the model's input columns (or their names), one per input in the predictor's
        order, to a struct column of the family's outputs and ``error`` (the broken rule, else null). A
        classifier's: ``prediction`` (int), ``prediction_label`` (string), ``probability``
        (``array<float>``, all classes); a span model's: ``answer``, ``answer_start``, ``score``.

    Raises:
        ConfigError: If ``batch_size < 1``.
        ArtifactError: See :func:`ship_model`.
    """
    return _scorer(ship_model(spark, model_dir, batch_size=batch_size))


def _scorer(shipped: ShippedModel) -> Callable[..., Column]:
    predictor = shipped.predictor
    result_type = T.StructType([T.StructField(out.name, _SPARK_TYPES[out.dtype]) for out in predictor.outputs]
                               + [T.StructField(ERROR, T.StringType())])
    body = score_batches(shipped.ref, inputs=shipped.input_names, outputs=predictor.outputs)
    with warnings.catch_warnings():
        # pyspark 3.5 checks the pandas/pyarrow versions with distutils' LooseVersion on every call
        warnings.filterwarnings("ignore", "distutils Version classes are deprecated", DeprecationWarning)
        udf = F.pandas_udf(body, result_type)  # type: ignore[call-overload]

    def apply(*inputs: Column | str) -> Column:
        if len(inputs) != len(predictor.inputs):
            raise ConfigError(
                f"a {shipped.family} model scores {len(predictor.inputs)} column(s) {list(shipped.input_names)}, in "
                f"that order, but got {len(inputs)}"
            )
        cols = [F.col(c) if isinstance(c, str) else c for c in inputs]
        # The rows that broke a rule travel too (a few bytes each) and are skipped in Python: a
        # `when(error IS NULL, pixels)` argument would evaluate the rules a second time.
        result = udf(*cols, shipped.reject_reason(cols))
        return F.struct(*(result[out.name].alias(out.name) for out in predictor.outputs), result[ERROR].alias(ERROR))

    return apply


def score(
    df: DataFrame,
    model_dir: str | Path,
    *,
    input_col: str | None = None,
    input_cols: Mapping[str, str] | None = None,
    feature_columns: Sequence[str] = (),
    pixel_prefix: str | None = None,
    batch_size: int = 256,
    prediction_col: str = PREDICTION,
    probability_col: str = PROBABILITY,
    error_col: str = ERROR,
) -> DataFrame:
    """``df`` with the model's outputs and a row error added (a classifier: prediction, its label name and the
    class probabilities; a span model: answer, answer_start, score).

    Lazy: nothing runs until the caller acts on the result (typically ``.write.parquet``). Every
    input row and column is kept; a row that breaks a rule gets null outputs and the rule's name in
    ``error_col``.

    Args:
        df: Any DataFrame with the model's input columns (raw pixels as ingest read them, a text, or a
            question and its context).
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        input_col: The column of a one-input model (image: default ``pixels``; text: ``text``).
        input_cols: Columns by input name for any model, e.g. ``{"question": "q", "context": "passage"}``;
            inputs not named keep their default column.
        feature_columns: An image model's pixels as numeric columns, one per pixel, in order (or one Vector or
            array column): the layouts and rules of ``data.feature_columns`` (:mod:`hybrid.features`). An image
            column given by ``input_col`` may itself be a Vector (dense or sparse).
        pixel_prefix: An image model's pixels as the columns named this prefix and a number, in numeric order
            (``pixel0``... ``pixel783``), as ``data.pixel_prefix``.
        batch_size: Rows per forward pass (a span model: windows).
        prediction_col: Name of a classifier's int prediction column; ``<prediction_col>_label`` holds the name.
        probability_col: Name of a classifier's ``array<float>`` column of class probabilities (softmax).
        error_col: Name of the string column naming the broken rule (null for a scored row).

    Returns:
        ``df``'s columns followed by the new ones.

    Raises:
        ConfigError: If ``input_col`` is given for a model of several inputs, or ``input_cols`` names no input.
        DataError: If an input column is missing or of another type, or a new column name is taken.
        ArtifactError: If the model directory is incomplete or was changed (checked on the driver).
    """
    shipped = ship_model(df.sparkSession, model_dir, batch_size=batch_size)
    columns = _input_columns(shipped, input_col, input_cols, feature_columns, pixel_prefix)
    inputs = shipped.input_columns(df, columns, feature_columns=feature_columns, pixel_prefix=pixel_prefix)
    names = _output_names(shipped.predictor, prediction_col, probability_col, error_col)
    _check_output_names(df, names)
    return _add_scores(df, shipped, inputs, names)


def _input_columns(
    shipped: ShippedModel, input_col: str | None, input_cols: Mapping[str, str] | None,
    feature_columns: Sequence[str] = (), pixel_prefix: str | None = None,
) -> list[str]:
    names = shipped.input_names
    if (feature_columns or pixel_prefix is not None) and (input_col is not None or input_cols):
        raise ConfigError(
            "input_col/input_cols and feature_columns/pixel_prefix each name the image column(s), so give one of "
            f"them, but got input_col={input_col!r}, input_cols={dict(input_cols or {})}, "
            f"feature_columns={list(feature_columns)}, pixel_prefix={pixel_prefix!r}"
        )
    chosen = dict(input_cols or {})
    if input_col is not None:
        if len(names) != 1:
            raise ConfigError(
                f"input_col names the one column of a one-input model, but a {shipped.family} model reads "
                f"{list(names)}: pass input_cols={{{', '.join(f'{n!r}: ...' for n in names)}}}"
            )
        chosen = {names[0]: input_col, **chosen}
    for name in chosen:
        if name not in names:
            raise ConfigError(
                f"input_cols keys must be the model's inputs {list(names)}, but got {name!r}{did_you_mean(name, names)}"
            )
    return [chosen.get(name, name) for name in names]


def _output_names(predictor: Predictor, prediction_col: str, probability_col: str, error_col: str) -> dict[str, str]:
    """Column name by output (and ``error``), a classifier's renamed by the ``score`` keywords."""
    renamed = {PREDICTION: prediction_col, PREDICTION_LABEL: f"{prediction_col}_label", PROBABILITY: probability_col}
    produced = {out.name for out in predictor.outputs}
    ignored = [f"{key}={value!r}" for key, value, output in (("prediction_col", prediction_col, PREDICTION),
                                                             ("probability_col", probability_col, PROBABILITY))
               if value != output and output not in produced]
    if ignored:
        raise ConfigError(f"{', '.join(ignored)} rename a classifier's output, but this model adds "
                          f"{sorted(produced)}; rename those columns afterwards")
    return {out.name: renamed.get(out.name, out.name) for out in predictor.outputs} | {ERROR: error_col}


def _check_output_names(df: DataFrame, names: Mapping[str, str]) -> None:
    new = list(names.values())
    if len(set(new)) != len(new):
        raise DataError(f"output column names must differ, but got {new}")
    taken = sorted(set(new) & set(df.columns))
    if taken:
        raise DataError(
            f"output columns {taken} already exist in the DataFrame; pass other names (prediction_col=, "
            "probability_col=, error_col=) or rename those columns first"
        )


def _add_scores(df: DataFrame, shipped: ShippedModel, inputs: Sequence[Column], names: Mapping[str, str]) -> DataFrame:
    tmp = "__hybrid_score"
    out = df.withColumn(tmp, _scorer(shipped)(*inputs))
    return out.withColumns({name: F.col(tmp)[field] for field, name in names.items()}).drop(tmp)


@dataclass
class ScoreResult:
    """What :func:`score_to_parquet` wrote and counted (from the Parquet output itself)."""

    output_path: str
    rows: int
    """Rows written: every input row."""
    scored: int
    """Rows with a prediction."""
    rejected: dict[str, int]
    """Rows per broken rule (the predictor's reasons, e.g. :data:`PIXEL_REASONS`); every rule is present, zero
    when clean."""
    metrics: dict[str, float | None]
    """The family's metrics against the table's gold column (a classifier: ``accuracy``, share of scored rows
    with a non-null ``label`` whose prediction equals it; a span model: ``exact_match`` and ``f1`` over
    scored rows with ``answers``), each None when the table has no such column."""
    duration_s: float
    """Reading, scoring and writing (the counting pass afterwards excluded)."""

    @property
    def accuracy(self) -> float | None:
        """A classifier's accuracy against ``label`` (None without labels, or for other models)."""
        return self.metrics.get("accuracy")

    @property
    def rows_per_s(self) -> float:
        """Input rows per second of :attr:`duration_s`."""
        return self.rows / self.duration_s if self.duration_s > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        """The ``score`` block of ``summary.json`` (each metric as ``<metric>_in_spark``)."""
        return {
            "rows": self.rows,
            "rows_per_s": self.rows_per_s,
            **{f"{name}_in_spark": value for name, value in self.metrics.items()},
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
    input_cols: Mapping[str, str] | None = None,
    feature_columns: Sequence[str] = (),
    pixel_prefix: str | None = None,
    input_format: Literal["parquet", "csv"] = "parquet",
    batch_size: int = 256,
    mode: Literal["error", "overwrite"] = "error",
) -> ScoreResult:
    """Read a Parquet table (or an image CSV), :func:`score` it and write every row, scored or flagged, to Parquet.

    Args:
        spark: The session to run on (plain Spark or Spark on Ray).
        input_path: Parquet table with the model's input columns (and optionally its gold column: ``label``
            for a classifier's accuracy, ``answers`` (``array<string>``) for a span model's exact match and F1).
        model_dir: A model directory written by :func:`hybrid.artifacts.save_model`.
        output_path: Where the scored table goes.
        input_col: See :func:`score`.
        input_cols: See :func:`score`.
        feature_columns: See :func:`score`.
        pixel_prefix: See :func:`score`.
        input_format: ``parquet``, or ``csv`` for an image table with one column per pixel, read as
            :func:`hybrid.sources.tables.read_image_csv` reads it for ingest (needs ``feature_columns`` or
            ``pixel_prefix``).
        batch_size: Rows per forward pass (a span model: windows).
        mode: ``error`` refuses an existing ``output_path``; ``overwrite`` replaces it.

    Returns:
        Counts and metrics computed in Spark from the written table.

    Raises:
        DataError: See :func:`score`.
        ArtifactError: See :func:`score`.
    """
    if mode not in ("error", "overwrite"):
        raise ConfigError(f"mode must be 'error' or 'overwrite', but got {mode!r}")
    if input_format not in ("parquet", "csv"):
        raise ConfigError(f"input_format must be 'parquet' or 'csv', but got {input_format!r}")
    output_path = str(Path(output_path).resolve())
    t0 = time.perf_counter()
    shipped = ship_model(spark, model_dir, batch_size=batch_size)  # before reading: a bad model runs no job
    columns = _input_columns(shipped, input_col, input_cols, feature_columns, pixel_prefix)
    if input_format == "csv":
        from hybrid.sources.tables import read_image_csv

        if not feature_columns and pixel_prefix is None:
            raise ConfigError("input_format='csv' reads an image table with one column per pixel, so feature_columns "
                              "or pixel_prefix must name them (a CSV cell cannot hold an array), but got neither")
        df = read_image_csv(spark, str(input_path), feature_columns=feature_columns, pixel_prefix=pixel_prefix,
                            key="input_path", key_prefix="")
    else:
        df = spark.read.parquet(str(input_path))
    inputs = shipped.input_columns(df, columns, feature_columns=feature_columns, pixel_prefix=pixel_prefix)
    names = _output_names(shipped.predictor, PREDICTION, PROBABILITY, ERROR)
    _check_output_names(df, names)
    _add_scores(df, shipped, inputs, names).write.mode(mode).parquet(output_path)
    duration = time.perf_counter() - t0

    out = spark.read.parquet(output_path)
    rejected = dict.fromkeys(shipped.reasons, 0)
    rows = scored = 0
    for row in out.groupBy(ERROR).agg(F.count(F.lit(1)).alias("n")).collect():
        rows += row["n"]
        if row[ERROR] is None:
            scored = row["n"]
        else:
            rejected[row[ERROR]] = rejected.get(row[ERROR], 0) + row["n"]
    if sum(rejected.values()):
        broken = {k: v for k, v in rejected.items() if v}
        log.warning("%d of %d rows could not be scored (null outputs, rule in '%s'): %s",
                    rows - scored, rows, ERROR, broken)
    metrics = _metrics(out.filter(F.col(ERROR).isNull()), shipped.predictor.metrics)
    return ScoreResult(output_path=output_path, rows=rows, scored=scored, rejected=rejected, metrics=metrics,
                       duration_s=duration)


def data_layout(data: Any) -> dict[str, Any]:
    """The keyword arguments of :func:`score_to_parquet` that read a table as ingest read ``data`` (a
    :class:`~hybrid.config.DataConfig`): its pixel layout and, for a ``csv`` source, the CSV reader."""
    if data.modality != "images" or data.source not in ("parquet", "csv"):
        return {}
    return {"feature_columns": data.feature_columns, "pixel_prefix": data.pixel_prefix, "input_format": data.source}


def _metrics(scored: DataFrame, metrics: RowMetrics | None) -> dict[str, float | None]:
    """Each metric's mean over the scored rows whose gold value is not null, computed in Spark (None: no gold)."""
    if metrics is None:
        return {}
    empty: dict[str, float | None] = dict.fromkeys(metrics.names)
    if metrics.reference not in scored.columns:
        return empty
    gold, predicted = F.col(f"`{metrics.reference}`"), F.col(f"`{metrics.prediction}`")
    dtype = scored.schema[metrics.reference].dataType
    if metrics.score is None:  # equality with an integer reference, in the JVM
        if not isinstance(dtype, T.NumericType):
            return empty
        hit = (predicted == gold.cast("long")).cast("int")
        row = scored.agg(F.sum(hit).alias("hits"), F.count(hit).alias("n")).collect()[0]
        return {metrics.names[0]: (row["hits"] or 0) / row["n"] if row["n"] else None}
    if not isinstance(dtype, T.ArrayType):
        log.warning("column '%s' holds %s, not an array of gold values: no %s computed", metrics.reference,
                    dtype.simpleString(), "/".join(metrics.names))
        return empty
    with warnings.catch_warnings():  # see _scorer
        warnings.filterwarnings("ignore", "distutils Version classes are deprecated", DeprecationWarning)
        per_row = F.pandas_udf(  # type: ignore[call-overload]
            _row_metric_batches(metrics.score), T.StructType([T.StructField(n, T.DoubleType()) for n in metrics.names]))
    values = per_row(predicted, gold)
    row = scored.filter(gold.isNotNull()).agg(
        F.count(F.lit(1)).alias("n"), *(F.avg(values[n]).alias(n) for n in metrics.names)).collect()[0]
    return {n: float(row[n]) if row["n"] else None for n in metrics.names}


def _row_metric_batches(
    score_rows: Callable[[Sequence[Any], Sequence[Any]], dict[str, np.ndarray]],
) -> Callable[[Iterator[tuple[pd.Series, pd.Series]]], Iterator[pd.DataFrame]]:
    """The body of the pandas UDF computing each scored row's metrics (``RowMetrics.score``) from its prediction
    and gold values."""
    import pandas as pd

    def run(batches: Iterator[tuple[pd.Series, pd.Series]]) -> Iterator[pd.DataFrame]:
        import pandas as pd

        for predicted, gold in batches:
            golds = [list(g) if g is not None else [] for g in gold]
            yield pd.DataFrame(score_rows(list(predicted), golds))

    run.__annotations__ = {"batches": Iterator[tuple[pd.Series, pd.Series]], "return": Iterator[pd.DataFrame]}
    return run
