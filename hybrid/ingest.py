"""Ingest: validate, quarantine, split, normalise in Spark, then hand the splits to Ray (:mod:`hybrid.handoff`).

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
from hybrid.ingest_checks import check_classes, check_splits, check_test_source
from hybrid.ingest_checks import check_trainable as check_trainable  # re-exported: the pipeline's entry point
from hybrid.sources import read_image_tables

if TYPE_CHECKING:
    import ray.data

    from hybrid.features import FeatureLayout

log = logging.getLogger(__name__)

PIXELS, LABEL, REASON, TABLE = "pixels", "label", "reason", "table"
REASON_COLUMN = "reason_column"
"""Images: the quarantine table's column naming the user's column that broke the rule (``label``, the array or
Vector column, or the first bad pixel column, e.g. ``pixel5``)."""
LABEL_REASONS = ("label_null", "label_not_integer", "label_out_of_range")
QUARANTINE_TABLE = "quarantine.parquet"
"""Rejected rows of every table, with their ``reason`` and ``table``, under the run directory."""
TEST_TABLE = "test.parquet"
"""Text and QA runs: the held-out test split as the scorer reads it (``text``, ``label``; ``id``, ``question``,
``context``, ``answers``), under ``<run_dir>/data/``."""
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
    images, ``(input_ids: list<int32>, label: int32)`` for text.

    Nothing is lost on the way: ``rows_in == train + val + test + sum(quarantined)`` always holds (ingest
    checks it); ``dropped`` rows were removed by a documented source rule before validation and are not
    part of ``rows_in``.
    """

    train: ray.data.Dataset
    val: ray.data.Dataset
    test: ray.data.Dataset
    rows_in: int
    """Rows that entered validation, training and test tables together."""
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
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Classification: rows per class name per split, every class listed (``{"train": {"cat": 40, ...}, ...}``)."""
    warnings: list[str] = field(default_factory=list)
    """One line each: data that trains but misleads (see :func:`hybrid.ingest_checks.check_classes`)."""

    def summary(self) -> dict[str, Any]:
        """The ``data`` block of ``summary.json``."""
        return {
            "rows_in": self.rows_in,
            "quarantined": dict(self.quarantined),
            "dropped": dict(self.dropped),
            **self.counts,
            "class_counts": {split: dict(by_class) for split, by_class in self.class_counts.items()},
            "warnings": list(self.warnings),
            "normalizer": self.normalizer.to_dict() if self.normalizer is not None else None,
            "label_names": list(self.label_names),
            "quarantine_path": self.quarantine_path,
        }


def check_schema(df: DataFrame, *, table: str, config: DataConfig | None = None) -> FeatureLayout:
    """Fail with the column (or the config key), the rule and the type found when ``df`` cannot be an image table.

    Returns:
        Where ``df`` holds the pixels (``config``'s ``feature_columns`` / ``pixel_prefix``, else ``pixels``).

    Raises:
        DataError: If ``pixels`` is not an array of numbers or a Vector, or ``label`` is not a number.
        ConfigError: If ``data.feature_columns`` / ``data.pixel_prefix`` do not fit the table
            (see :func:`hybrid.features.resolve_layout`).
    """
    from hybrid.features import resolve_layout

    config = config or DataConfig(source="parquet")
    layout = resolve_layout(df.schema, feature_columns=config.feature_columns, pixel_prefix=config.pixel_prefix,
                            length=config.image_size**2, length_rule=f"data.image_size={config.image_size}",
                            table=table)
    fields = {f.name: f.dataType for f in df.schema.fields}
    if LABEL not in fields:
        raise DataError(f"table '{table}': column '{LABEL}' is required, but the columns are {sorted(fields)}")
    if not isinstance(fields[LABEL], _NUMERIC):
        raise DataError(
            f"table '{table}': column '{LABEL}' must be a number, but has type {fields[LABEL].simpleString()}"
        )
    return layout


def tag_images(df: DataFrame, config: DataConfig, *, table: str) -> DataFrame:
    """``df`` in ingest's shape, tagged: ``pixels`` (the features as one array, whatever their layout: see
    :mod:`hybrid.features`), ``label``, the user's other columns (a name ingest uses kept as ``source_<name>``;
    the feature columns themselves are in ``pixels``), then ``reason`` (the first rule broken, or null) and
    ``reason_column`` (the user's column that broke it).

    Lazy: the layout is read from the schema on the driver, so a wrong key fails before any Spark job.

    Raises:
        ConfigError: If ``data.feature_columns`` / ``data.pixel_prefix`` do not fit the table
            (see :func:`hybrid.features.resolve_layout`).
        DataError: If ``label`` is missing or not a number.
    """
    num_pixels = config.image_size**2
    layout = check_schema(df, table=table, config=config)
    used, taken = {*layout.columns, LABEL}, {PIXELS, LABEL, REASON, TABLE, REASON_COLUMN}
    shaped = df.select(
        layout.pixels().alias(PIXELS), column(LABEL).alias(LABEL),
        *[column(c).alias(f"source_{c}" if c in taken else c) for c in df.columns if c not in used],
    )
    reason = reject_reason(shaped, num_pixels=num_pixels, num_classes=config.num_classes)
    tagged = shaped.withColumn(REASON, reason)
    rule = F.col(REASON)
    culprit = (F.when(rule.isin(*LABEL_REASONS), F.lit(LABEL))
               .when(rule.isNotNull(), layout.culprit(rule, pixels=F.col(PIXELS))))
    return tagged.withColumn(REASON_COLUMN, culprit)


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


def to_ray(df: DataFrame, *, dest: Path, rows: int, num_blocks: int) -> tuple[ray.data.Dataset, int]:
    """Hand ``df`` to Ray (see :mod:`hybrid.handoff`): Spark writes Parquet to ``dest`` in at least
    ``num_blocks`` files; returns them read into a Ray dataset (Spark's row order) and the rows written."""
    from hybrid.handoff import spark_to_ray

    return spark_to_ray(df, dest, rows=rows, min_blocks=num_blocks)


def quarantine(
    tagged: dict[str, DataFrame], reasons: tuple[str, ...], run_dir: Path
) -> tuple[int, dict[str, int], str | None]:
    """Count rows per rule and write the rejected ones (with ``reason`` and ``table``) to ``quarantine.parquet``.

    Tables may differ in their other columns: the quarantine table has the union of them by name (null where
    a table lacks one), and a column whose type differs between tables is written as text, so every rejected
    row is kept whole. Without rejected rows a quarantine table left by an earlier run is removed.

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
    target = run_dir / QUARANTINE_TABLE
    if not sum(quarantined.values()):
        remove_quarantine(run_dir)
        return rows_in, quarantined, None
    bad = [df.where(F.col(REASON).isNotNull()).withColumn(TABLE, F.lit(name)) for name, df in tagged.items()]
    path = str(target.resolve())
    union_by_name(bad).write.mode("overwrite").parquet(path)
    log.warning("quarantined %d rows to %s: %s", sum(quarantined.values()), path,
                {k: v for k, v in quarantined.items() if v})
    return rows_in, quarantined, path


def remove_quarantine(run_dir: Path) -> None:
    """Remove the quarantine table an earlier run left in ``run_dir``: this run rejected nothing."""
    import shutil

    target = run_dir / QUARANTINE_TABLE
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def union_by_name(frames: list[DataFrame]) -> DataFrame:
    """All rows of ``frames`` in one DataFrame, columns matched by name; a column some frames lack is null
    there, and a column whose type differs between frames is cast to string in all of them."""
    types: dict[str, set[str]] = {}
    for df in frames:
        for f in df.schema.fields:
            types.setdefault(f.name, set()).add(f.dataType.simpleString())
    mixed = {name for name, found in types.items() if len(found) > 1}
    cast = [df.select(*[column(c).cast("string").alias(c) if c in mixed else column(c) for c in df.columns])
            for df in frames]
    union = cast[0]
    for other in cast[1:]:
        union = union.unionByName(other, allowMissingColumns=True)
    return union


def column(name: str) -> Column:
    """The column called ``name``, even when the name holds dots or backticks."""
    return F.col("`" + name.replace("`", "``") + "`")


def with_core_columns(df: DataFrame, core: list[tuple[str, str]]) -> DataFrame:
    """``df`` with the user's ``core`` columns copied to ingest's names (``[("review", "text")]``), first, and
    every other column kept for the quarantine table; another column whose name ingest uses (a core name,
    ``reason`` or ``table``) is kept as ``source_<name>``."""
    users, taken = {user for user, _ in core}, {*(ours for _, ours in core), REASON, TABLE}
    return df.select(
        *[column(user).alias(ours) for user, ours in core],
        *[column(c).alias(f"source_{c}" if c in taken else c) for c in df.columns if c not in users],
    )


def split_three(clean: dict[str, DataFrame], config: DataConfig, *, content: str,
                group: str | None = None) -> dict[str, DataFrame]:
    """``train``, ``val`` and ``test`` from the validated tables, each class split in proportion.

    The test split is the test table when there is one, else ``data.test_fraction`` of each class of the
    training table (seed ``data.seed + 1``); ``data.val_fraction`` of each class of the rest is validation.
    With ``group`` (a column), whole groups are split instead of rows (:func:`group_split`).
    """
    def cut(df: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
        if group is not None:
            return group_split(df, val_fraction=fraction, seed=seed, group=group)
        return stratified_split(df, val_fraction=fraction, seed=seed, content=content)

    if "test" in clean:
        rest, test = clean["train"], clean["test"]
    else:
        check_test_source(config)
        rest, test = cut(clean["train"], config.test_fraction, config.seed + 1)
    train, val = cut(rest, config.val_fraction, config.seed)
    return {"train": train, "val": val, "test": test}


def group_split(df: DataFrame, *, val_fraction: float, seed: int, group: str) -> tuple[DataFrame, DataFrame]:
    """Split ``df`` into (train, val) by whole groups: ``round(n_groups * val_fraction)`` groups (half up,
    as :func:`stratified_split`) go to val.

    Rows of one group (a QA article) never land on both sides. Deterministic for a seed: the distinct
    groups are ordered by a hash of the seed and the group. A null group is the empty string's group.
    """
    key = F.coalesce(F.col(group).cast("string"), F.lit(""))
    every = Window.partitionBy(F.lit(0))  # the distinct groups: few, one partition is fine
    ranked = (
        df.select(key.alias("_group")).distinct()
        .withColumn("_n", F.count(F.lit(1)).over(every))
        .withColumn("_rank", F.row_number().over(every.orderBy(F.xxhash64(F.lit(seed), "_group"), "_group")))
        .select("_group", (F.col("_rank") <= F.round(F.col("_n") * val_fraction)).alias("_is_val"))
    )
    tagged = df.withColumn("_group", key).join(F.broadcast(ranked), on="_group", how="left")
    cols = list(df.columns)
    return (tagged.where(~F.col("_is_val")).select(*cols), tagged.where(F.col("_is_val")).select(*cols))


def split_class_counts(splits: dict[str, DataFrame]) -> dict[str, dict[int, int]]:
    """Rows per integer ``label`` per split, in one Spark job (classes a split lacks are absent)."""
    parts = [df.select(F.lit(name).alias("_split"), F.col(LABEL).cast("int").alias(LABEL))
             for name, df in splits.items()]
    union = parts[0]
    for other in parts[1:]:
        union = union.unionByName(other)
    counts: dict[str, dict[int, int]] = {name: {} for name in splits}
    for row in union.groupBy("_split", LABEL).count().collect():
        counts[row["_split"]][row[LABEL]] = row["count"]
    return counts


@dataclass(frozen=True)
class CheckedSplits:
    """What :func:`check_split_counts` found: rows per split, per class, and warnings."""

    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]
    """Rows per class name per split (every class listed); empty when the rows have no classes (QA)."""
    warnings: list[str]


def check_split_counts(
    splits: dict[str, DataFrame], *, config: DataConfig, quarantined: dict[str, int], label_names: tuple[str, ...]
) -> CheckedSplits:
    """Count the splits by class in Spark, before any hand-over to Ray, and fail or warn on what the counts show.

    With empty ``label_names`` the rows have no classes (QA, a constant ``label``): only empty splits fail.

    Raises:
        DataError: If a split is empty, or the training split holds a single class.
    """
    by_class = split_class_counts(splits)
    counts = {name: sum(by_class[name].values()) for name in splits}
    check_splits(counts, quarantined=quarantined, config=config)
    if not label_names:
        return CheckedSplits(counts=counts, class_counts={}, warnings=[])
    warnings = check_classes(by_class, label_names=label_names)
    for line in warnings:
        log.warning("%s", line)
    named = {split: {name: by_class[split].get(i, 0) for i, name in enumerate(label_names)} for split in splits}
    return CheckedSplits(counts=counts, class_counts=named, warnings=warnings)


def hand_off(
    splits: dict[str, DataFrame], *, counts: dict[str, int], config: DataConfig, run_dir: Path
) -> dict[str, ray.data.Dataset]:
    """:func:`to_ray` for each split (Parquet under ``<run_dir>/data/handoff/``, read into Ray's object store by
    tasks that need no CPU), checking the files hold exactly the rows Spark counted."""
    from hybrid.handoff import HANDOFF_DIR

    base = (run_dir / "data" / HANDOFF_DIR).resolve()
    handed = {name: to_ray(df, dest=base / name, rows=counts[name], num_blocks=config.blocks_per_split)
              for name, df in splits.items()}
    received = {name: rows for name, (_, rows) in handed.items()}
    if received != counts:
        raise RuntimeError(f"bug: Spark counted {counts} rows per split, but wrote {received} for Ray")
    return {name: ds for name, (ds, _) in handed.items()}


def cpu_free_beside_spark() -> bool:
    """Whether a Ray task can get a CPU now, beside Spark's executors (then a step on the handed-off splits runs
    at once, as a caller of :func:`ingest` expects; otherwise it stays lazy until Spark is stopped: on a cluster
    of 1-CPU nodes the executors hold every CPU and the step would wait forever)."""
    import ray

    return ray.available_resources().get("CPU", 0.0) >= 1


def check_accounted(rows_in: int, counts: dict[str, int], quarantined: dict[str, int]) -> None:
    """Every row read is in a split or in quarantine; anything else is a bug in ingest, never the data's."""
    kept, rejected = sum(counts.values()), sum(quarantined.values())
    if rows_in != kept + rejected:
        raise RuntimeError(f"bug: {rows_in} rows read, but {kept} in splits + {rejected} quarantined")


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
        The Ray datasets and what was counted on the way (with warnings about classes splits lack).

    Raises:
        ConfigError: Before any Spark job, when the source has no test table and ``data.test_fraction`` is 0,
            or text data comes without a tokenizer.
        DataError: On a wrong schema, an empty split after validation, or a training split of one class.
    """
    check_test_source(config)
    if config.modality == "text":
        from hybrid.ingest_text import ingest_text

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
    tagged = {name: tag_images(df, config, table=name)  # every table's layout checked before any job
              for name, df in (("train", tables.train), ("test", tables.test)) if df is not None}
    tagged = {name: df.persist() for name, df in tagged.items()}
    rows_in, quarantined, quarantine_path = quarantine(tagged, REASONS, run_dir)
    clean = {name: df.where(F.col(REASON).isNull()).select(PIXELS, LABEL) for name, df in tagged.items()}
    durations["validate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    raw = split_three(clean, config, content=PIXELS)
    raw["train"] = raw["train"].persist()
    checked = check_split_counts(raw, config=config, quarantined=quarantined, label_names=tables.label_names)
    norm = fit_normalizer(raw["train"])
    splits = {name: normalize(df, norm) for name, df in raw.items()}
    durations["split_normalize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    datasets = hand_off(splits, counts=checked.counts, config=config, run_dir=run_dir)
    durations["to_ray"] = time.perf_counter() - t0
    raw["train"].unpersist()
    for df in tagged.values():
        df.unpersist()
    check_accounted(rows_in, checked.counts, quarantined)
    return IngestResult(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], rows_in=rows_in,
        quarantined=quarantined, counts=checked.counts, normalizer=norm, label_names=tables.label_names,
        quarantine_path=quarantine_path, durations_s=durations, class_counts=checked.class_counts,
        warnings=checked.warnings,
    )
