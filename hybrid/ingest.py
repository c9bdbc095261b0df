"""Ingest: validate, quarantine, split, normalise in Spark, then hand the splits to Ray via RayDP.

Every step up to :func:`to_ray` is a Spark transformation (runs on the executors, scales with the
cluster). Bad rows are tagged with the first rule they break, written to a quarantine table with
that reason, and counted; nothing is dropped silently.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybrid.config import DataConfig
from hybrid.errors import ConfigError, DataError
from hybrid.sources import read_image_tables

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

PIXELS, LABEL, REASON = "pixels", "label", "reason"
TEST_TABLE = "test.parquet"
"""Text runs: the held-out test split (``text``, ``label``), under ``<run_dir>/data/``."""
REASONS = (
    "label_null",
    "label_not_integer",
    "label_out_of_range",
    "pixels_null",
    "pixel_count",
    "pixel_null",
    "pixel_not_finite",
)
"""Validation rules in the order they are checked; a bad row is tagged with the first it breaks."""

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)
_FRACTIONAL = (T.FloatType, T.DoubleType, T.DecimalType)


@dataclass(frozen=True)
class Normalizer:
    """Pixel standardisation ``(x - mean) / std``, fitted on the training split only."""

    mean: float
    """Mean pixel value of the training split."""
    std: float
    """Standard deviation of the pixel values of the training split."""

    def to_dict(self) -> dict[str, float]:
        """Plain data for JSON artifacts."""
        return {"mean": self.mean, "std": self.std}


@dataclass
class IngestResult:
    """Three Ray datasets plus what ingest counted: rows of ``(pixels: float32[h*w], label: int32)`` for
    images, ``(input_ids: list<int32>, label: int32)`` for text."""

    train: ray.data.Dataset
    val: ray.data.Dataset
    test: ray.data.Dataset
    rows_in: int
    """Rows read, training and test tables together."""
    quarantined: dict[str, int]
    """Rejected rows per rule (all tables); every rule is present, zero when clean."""
    counts: dict[str, int]
    """Rows per split after validation: ``train``, ``val``, ``test``."""
    normalizer: Normalizer | None
    """Images only: the pixel standardisation fitted on the training split."""
    label_names: tuple[str, ...]
    quarantine_path: str | None = None
    """Parquet table of rejected rows with their ``reason`` and ``table`` columns (None when none)."""
    durations_s: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows a documented source rule removed before validation (e.g. neutral polarity ratings), by rule."""
    max_seq_length: int | None = None
    """Text only: tokens kept per row at tokenisation."""

    def summary(self) -> dict[str, Any]:
        """The ``data`` block of ``summary.json``."""
        return {
            "rows_in": self.rows_in,
            "quarantined": dict(self.quarantined),
            "dropped": dict(self.dropped),
            **self.counts,
            "normalizer": self.normalizer.to_dict() if self.normalizer is not None else None,
            "label_names": list(self.label_names),
            "quarantine_path": self.quarantine_path,
        }


def check_schema(df: DataFrame, *, table: str) -> None:
    """Fail with the column, the rule and the type found when ``df`` cannot be an image table.

    Raises:
        DataError: If ``pixels`` is not an array of numbers or ``label`` is not a number.
    """
    fields = {f.name: f.dataType for f in df.schema.fields}
    for name in (PIXELS, LABEL):
        if name not in fields:
            raise DataError(f"table '{table}': column '{name}' is required, but the columns are {sorted(fields)}")
    pixels = fields[PIXELS]
    if not isinstance(pixels, T.ArrayType) or not isinstance(pixels.elementType, _NUMERIC):
        raise DataError(
            f"table '{table}': column '{PIXELS}' must be an array of numbers, but has type {pixels.simpleString()}"
        )
    if not isinstance(fields[LABEL], _NUMERIC):
        raise DataError(
            f"table '{table}': column '{LABEL}' must be a number, but has type {fields[LABEL].simpleString()}"
        )


def first_broken_rule(rules: list[tuple[str, Column]]) -> Column:
    """A string column holding the name of the first rule in ``rules`` whose condition is true, or null."""
    expr = F.lit(None).cast("string")
    for name, broken in reversed(rules):
        expr = F.when(broken, F.lit(name)).otherwise(expr)
    return expr


def reject_reason(df: DataFrame, *, num_pixels: int, num_classes: int) -> Column:
    """A column holding the first validation rule a row breaks (see :data:`REASONS`), or null."""
    label, pixels = F.col(LABEL), F.col(PIXELS)
    fractional_label = isinstance(df.schema[LABEL].dataType, _FRACTIONAL)
    fractional_pixels = isinstance(df.schema[PIXELS].dataType.elementType, _FRACTIONAL)  # type: ignore[attr-defined]
    label_d = label.cast("double")
    rules: list[tuple[str, Column]] = [("label_null", label.isNull())]
    if fractional_label:
        rules.append(("label_not_integer", F.isnan(label_d) | (label_d != F.floor(label_d))))
    rules += [
        ("label_out_of_range", (label_d < 0) | (label_d >= num_classes)),
        ("pixels_null", pixels.isNull()),
        ("pixel_count", F.size(pixels) != num_pixels),
        ("pixel_null", F.exists(pixels, lambda x: x.isNull())),
    ]
    if fractional_pixels:
        rules.append(
            (
                "pixel_not_finite",
                F.exists(pixels, lambda x: F.isnan(x.cast("double")) | (F.abs(x.cast("double")) == math.inf)),
            )
        )
    return first_broken_rule(rules)


def stratified_split(
    df: DataFrame, *, val_fraction: float, seed: int, content: str = PIXELS
) -> tuple[DataFrame, DataFrame]:
    """Split ``df`` into (train, val) so each label keeps ``round(n_label * val_fraction)`` rows in val.

    Deterministic for a given seed and content, whatever the partitioning: rows are ordered inside
    each label by a hash of the seed and the row itself (its label and ``content`` column).
    """
    key = F.xxhash64(F.lit(seed), F.col(LABEL), F.col(content))
    by_label = Window.partitionBy(LABEL)
    ranked = (
        df.withColumn("_n", F.count(F.lit(1)).over(by_label))
        .withColumn("_rank", F.row_number().over(by_label.orderBy(key)))
        .withColumn("_is_val", F.col("_rank") <= F.round(F.col("_n") * val_fraction))
    )
    cols = [c for c in df.columns]
    return (
        ranked.where(~F.col("_is_val")).select(*cols),
        ranked.where(F.col("_is_val")).select(*cols),
    )


def fit_normalizer(df: DataFrame) -> Normalizer:
    """Mean and standard deviation of every pixel of ``df``, in one Spark aggregation.

    Raises:
        DataError: If ``df`` is empty.
    """
    px = F.col(PIXELS)
    row = df.select(
        F.aggregate(px, F.lit(0.0), lambda acc, x: acc + x.cast("double")).alias("s"),
        F.aggregate(px, F.lit(0.0), lambda acc, x: acc + x.cast("double") * x.cast("double")).alias("s2"),
        F.size(px).alias("n"),
    ).agg(F.sum("s").alias("s"), F.sum("s2").alias("s2"), F.sum("n").alias("n")).first()
    if row is None or not row["n"]:
        raise DataError("the training split is empty after validation: nothing to fit the normaliser on")
    mean = row["s"] / row["n"]
    var = max(row["s2"] / row["n"] - mean * mean, 0.0)
    return Normalizer(mean=float(mean), std=float(math.sqrt(var)) or 1.0)


def normalize(df: DataFrame, norm: Normalizer) -> DataFrame:
    """``(pixels: array<float>, label: int)`` with pixels standardised by ``norm``."""
    mean, std = F.lit(norm.mean), F.lit(norm.std)
    return df.select(
        F.transform(F.col(PIXELS), lambda x: ((x.cast("double") - mean) / std).cast("float")).alias(PIXELS),
        F.col(LABEL).cast("int").alias(LABEL),
    )


def to_ray(df: DataFrame, *, num_blocks: int) -> ray.data.Dataset:
    """Hand ``df`` to Ray through RayDP and materialise it in Ray's object store.

    Materialising makes the dataset independent of Spark: Spark can be stopped afterwards to give
    its CPUs to training (RayDP's blocks are otherwise fetched lazily from the executors).
    """
    from raydp.spark.dataset import from_spark_recoverable, release_spark_recoverable

    parts = df.repartition(num_blocks)
    ds = from_spark_recoverable(parts).materialize()
    release_spark_recoverable(parts)  # the blocks now live in Ray; free Spark's cached copy
    return ds


def quarantine(tagged: dict[str, DataFrame], reasons: tuple[str, ...], run_dir: Path) -> tuple[int, dict[str, int], str | None]:
    """Count rows per rule and write the rejected ones (with ``reason`` and ``table``) to ``quarantine.parquet``.

    Returns:
        ``(rows read, rejected rows per rule, quarantine path or None)``.
    """
    quarantined = dict.fromkeys(reasons, 0)
    rows_in = 0
    for df in tagged.values():
        for row in df.groupBy(REASON).count().collect():
            rows_in += row["count"]
            if row[REASON] is not None:
                quarantined[row[REASON]] += row["count"]
    path = None
    if sum(quarantined.values()):
        path = str((run_dir / "quarantine.parquet").resolve())
        bad = [df.where(F.col(REASON).isNotNull()).withColumn("table", F.lit(name)) for name, df in tagged.items()]
        union = bad[0]
        for other in bad[1:]:
            union = union.unionByName(other)
        union.write.mode("overwrite").parquet(path)
        log.warning("quarantined %d rows to %s: %s", sum(quarantined.values()), path,
                    {k: v for k, v in quarantined.items() if v})
    return rows_in, quarantined, path


def _check_counts(counts: dict[str, int], quarantined: dict[str, int]) -> None:
    if counts["train"] == 0 or counts["val"] == 0:
        raise DataError(
            f"after validation the training table has {counts['train']} training and {counts['val']} "
            f"validation rows; both must be > 0 (quarantined: {quarantined})"
        )


def ingest(
    spark: SparkSession, config: DataConfig, *, run_dir: str | Path, tokenizer_dir: str | None = None
) -> IngestResult:
    """Read, validate, quarantine, split (and normalise or tokenise) the tables ``config`` names, then
    hand the splits to Ray.

    Args:
        spark: A session, normally Spark on Ray from :func:`hybrid.runtime.running`.
        config: The ``data`` section.
        run_dir: Run directory; the quarantine table and the source's Parquet copy go under it.
        tokenizer_dir: Text only: the local directory of the model's tokenizer.

    Returns:
        The Ray datasets and what was counted on the way.

    Raises:
        DataError: On a wrong schema, or when no valid training rows remain.
    """
    if config.modality == "text":
        if tokenizer_dir is None:
            raise ConfigError("text data needs a tokenizer: model.pretrained_dir must name the model's directory")
        return ingest_text(spark, config, run_dir=Path(run_dir), tokenizer_dir=tokenizer_dir)
    if config.modality == "qa":
        from hybrid.ingest_qa import ingest_qa

        return ingest_qa(spark, config, run_dir=Path(run_dir))
    return ingest_images(spark, config, run_dir=Path(run_dir))


def ingest_images(spark: SparkSession, config: DataConfig, *, run_dir: Path) -> IngestResult:
    """:func:`ingest` for image tables: pixels standardised with statistics of the training split."""
    import time

    durations: dict[str, float] = {}
    t0 = time.perf_counter()
    tables = read_image_tables(spark, config, work_dir=run_dir / "data")
    num_pixels = config.image_size**2
    tagged: dict[str, DataFrame] = {}
    for name, df in (("train", tables.train), ("test", tables.test)):
        check_schema(df, table=name)
        reason = reject_reason(df, num_pixels=num_pixels, num_classes=config.num_classes)
        tagged[name] = df.withColumn(REASON, reason).persist()
    rows_in, quarantined, quarantine_path = quarantine(tagged, REASONS, run_dir)
    clean = {name: df.where(F.col(REASON).isNull()).select(PIXELS, LABEL) for name, df in tagged.items()}
    durations["validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    train, val = stratified_split(clean["train"], val_fraction=config.val_fraction, seed=config.seed)
    train = train.persist()
    norm = fit_normalizer(train)
    splits = {"train": normalize(train, norm), "val": normalize(val, norm), "test": normalize(clean["test"], norm)}
    durations["split_normalize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    datasets = {name: to_ray(df, num_blocks=config.blocks_per_split) for name, df in splits.items()}
    counts = {name: ds.count() for name, ds in datasets.items()}
    durations["to_ray"] = time.perf_counter() - t0
    train.unpersist()
    for df in tagged.values():
        df.unpersist()
    _check_counts(counts, quarantined)
    return IngestResult(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], rows_in=rows_in,
        quarantined=quarantined, counts=counts, normalizer=norm, label_names=tables.label_names,
        quarantine_path=quarantine_path, durations_s=durations,
    )


def ingest_text(spark: SparkSession, config: DataConfig, *, run_dir: Path, tokenizer_dir: str) -> IngestResult:
    """:func:`ingest` for text tables: validated and split in Spark, tokenised in Ray Data after the hand-over."""
    import time

    from hybrid.ingest_text import (
        TEXT_REASONS,
        check_text_schema,
        label_index,
        read_text_tables,
        text_reject_reason,
        tokenize_dataset,
    )
    from hybrid.text import TEXT, load_tokenizer

    durations: dict[str, float] = {}
    t0 = time.perf_counter()
    tables = read_text_tables(spark, config, work_dir=run_dir / "data")
    load_tokenizer(tokenizer_dir)  # a bad model directory fails here, before any Spark job runs
    raw = {"train": tables.train, **({"test": tables.test} if tables.test is not None else {})}
    tagged: dict[str, DataFrame] = {}
    for name, df in raw.items():
        check_text_schema(df, table=name)
        reason = text_reject_reason(df, num_classes=config.num_classes, label_names=tables.label_names)
        tagged[name] = df.withColumn(REASON, reason).persist()
    rows_in, quarantined, quarantine_path = quarantine(tagged, TEXT_REASONS, run_dir)
    clean = {
        name: df.where(F.col(REASON).isNull()).select(F.col(TEXT), label_index(df, tables.label_names).alias(LABEL))
        for name, df in tagged.items()
    }
    durations["validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if "test" in clean:
        rest, test = clean["train"], clean["test"]
    else:
        if config.test_fraction <= 0:
            raise ConfigError(
                f"data.source={config.source!r} has no test table: set data.test_fraction (e.g. 0.15) or data.test_path"
            )
        rest, test = stratified_split(clean["train"], val_fraction=config.test_fraction, seed=config.seed + 1,
                                      content=TEXT)
    train, val = stratified_split(rest, val_fraction=config.val_fraction, seed=config.seed, content=TEXT)
    splits = {"train": train, "val": val, "test": test}
    # The held-out test table as text, for scoring in Spark later (the scorer tokenises for itself).
    test.write.mode("overwrite").parquet(str((run_dir / "data" / TEST_TABLE).resolve()))
    durations["split"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    converted = {name: to_ray(df, num_blocks=config.blocks_per_split) for name, df in splits.items()}
    durations["to_ray"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    datasets = {
        name: tokenize_dataset(ds, tokenizer_dir=tokenizer_dir, max_length=config.max_seq_length)
        for name, ds in converted.items()
    }
    counts = {name: ds.count() for name, ds in datasets.items()}
    durations["tokenize"] = time.perf_counter() - t0
    for df in tagged.values():
        df.unpersist()
    _check_counts(counts, quarantined)
    return IngestResult(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], rows_in=rows_in,
        quarantined=quarantined, counts=counts, normalizer=None, label_names=tables.label_names,
        quarantine_path=quarantine_path, durations_s=durations, dropped=tables.dropped,
        max_seq_length=config.max_seq_length,
    )
