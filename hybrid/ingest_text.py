"""Text tables for classification: read, validate and tokenise.

The Spark half (:func:`read_text_tables`, :func:`text_reject_reason`) runs on the executors like the
image rules; tokenisation runs in Ray Data after the hand-over (:func:`tokenize_dataset`), because
``benchmarks/bench_tokenize.py`` measured it faster there than in a Spark pandas UDF on this stack
(see the README), and because the tokenizer then runs where training runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from hybrid.config import DataConfig
from hybrid.errors import ConfigError, DataError
from hybrid.ingest import (
    REASON,
    TEST_TABLE,
    IngestResult,
    check_accounted,
    check_split_counts,
    cpu_free_beside_spark,
    first_broken_rule,
    hand_off,
    quarantine,
    split_three,
    with_core_columns,
)
from hybrid.sources.tables import read_user_table
from hybrid.text import INPUT_IDS, TEXT, load_tokenizer, tokenize

if TYPE_CHECKING:
    import ray.data

    from hybrid.shipping import ShippedDir

LABEL = "label"
TEXT_REASONS = ("label_null", "label_not_integer", "label_out_of_range", "label_unknown", "text_null", "text_empty")
"""Validation rules of text rows, in the order they are checked; a bad row is tagged with the first it breaks."""

BLANK = r"(?U)^\s*$"
"""Java regex of a text with nothing but white space (tabs, new lines and Unicode spaces too: ``trim`` only
strips ASCII spaces)."""

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_FRACTIONAL = (T.FloatType, T.DoubleType, T.DecimalType)


@dataclass(frozen=True)
class TextTables:
    """Raw (unvalidated) text tables with columns ``text`` and ``label`` (as the user stored it)."""

    train: DataFrame
    test: DataFrame | None
    """``None`` when the source has no test table (``data.test_fraction`` of ``train`` is held out)."""
    label_names: tuple[str, ...]
    dropped: dict[str, int]
    """Rows a documented source rule removed before validation (e.g. neutral polarity ratings)."""


def _read_table(spark: SparkSession, config: DataConfig, path: str, *, key: str) -> DataFrame:
    df = read_user_table(spark, path, source=config.source, key=key)  # type: ignore[arg-type]
    for name, column in (("data.text_column", config.text_column), ("data.label_column", config.label_column)):
        if column not in df.columns:
            raise DataError(f"{name}: table {path!r} has no column {column!r}; its columns are {df.columns}")
    # The other columns ride along to the quarantine table, so a rejected row can be found again.
    return with_core_columns(df, [(config.text_column, TEXT), (config.label_column, LABEL)])


def read_text_tables(spark: SparkSession, config: DataConfig, *, work_dir: str | Path) -> TextTables:
    """The training (and test) text tables ``config`` names, as Spark DataFrames of ``(text, label, ...)``:
    the user's text and label columns renamed, every other column kept.

    Raises:
        DataError: If a file or a column is missing.
    """
    dropped: dict[str, int] = {}
    if config.source == "sentence_polarity":
        from hybrid.sources.polarity import POLARITY_LABELS, read_sentence_polarity, write_parquet

        polarity = read_sentence_polarity(config.path)
        dropped["neutral_rating"] = polarity.dropped_neutral
        table = polarity.table
        if config.max_train_rows is not None and config.max_train_rows < table.num_rows:
            # The file is ordered by polarity (positives first): a seeded sample keeps both classes.
            rng = np.random.default_rng(config.seed)
            table = table.take(np.sort(rng.permutation(table.num_rows)[: config.max_train_rows]))
        path = write_parquet(table, Path(work_dir) / "sentence_polarity.parquet")
        train = spark.read.parquet(str(Path(path).resolve()))
        return TextTables(train=train, test=None, label_names=config.label_names or POLARITY_LABELS, dropped=dropped)
    if config.source not in ("parquet", "csv"):
        raise ConfigError(f"data.source={config.source!r} is not a text source (sentence_polarity, parquet, csv)")
    train = _read_table(spark, config, config.path, key="data.path")
    test = _read_table(spark, config, config.test_path, key="data.test_path") if config.test_path else None
    if config.max_train_rows is not None:
        train = train.limit(config.max_train_rows)
    if test is not None and config.max_test_rows is not None:
        test = test.limit(config.max_test_rows)
    names = config.label_names or tuple(str(i) for i in range(config.num_classes))
    return TextTables(train=train, test=test, label_names=tuple(names), dropped=dropped)


def check_text_schema(df: DataFrame, *, table: str) -> None:
    """Fail with the column, the rule and the type found when ``df`` cannot be a text table.

    Raises:
        DataError: If ``text`` is not a string column or ``label`` is neither a number nor a string.
    """
    fields = {f.name: f.dataType for f in df.schema.fields}
    if not isinstance(fields[TEXT], T.StringType):
        raise DataError(
            f"table '{table}': column '{TEXT}' must hold strings, but has type {fields[TEXT].simpleString()}"
        )
    if not isinstance(fields[LABEL], (*_INTEGRAL, *_FRACTIONAL, T.StringType)):
        raise DataError(
            f"table '{table}': column '{LABEL}' must be a number or a class name, but has type "
            f"{fields[LABEL].simpleString()}"
        )


def text_rules(text: Column) -> list[tuple[str, Column]]:
    """The rules about the text alone (``text_null``, ``text_empty``), in order; scoring checks these too."""
    return [("text_null", text.isNull()), ("text_empty", text.rlike(BLANK))]


def text_reject_reason(df: DataFrame, *, num_classes: int, label_names: tuple[str, ...]) -> Column:
    """A column holding the first rule of :data:`TEXT_REASONS` a row breaks, or null.

    String labels are accepted as a class name (from ``label_names``) or as the class number written out
    ("1"); anything else is ``label_unknown``.
    """
    label = F.col(LABEL)
    label_type = df.schema[LABEL].dataType
    rules: list[tuple[str, Column]] = [("label_null", label.isNull())]
    if isinstance(label_type, T.StringType):
        known = F.trim(label).isin(list(label_names)) | F.trim(label).rlike(r"^[0-9]+$")
        rules.append(("label_unknown", ~known))
        number = F.trim(label).cast("double")
        rules.append(("label_out_of_range", ~F.trim(label).isin(list(label_names)) & (number >= num_classes)))
    else:
        value = label.cast("double")
        if isinstance(label_type, _FRACTIONAL):
            rules.append(("label_not_integer", F.isnan(value) | (value != F.floor(value))))
        rules.append(("label_out_of_range", (value < 0) | (value >= num_classes)))
    return first_broken_rule(rules + text_rules(F.col(TEXT)))


def label_index(df: DataFrame, label_names: tuple[str, ...]) -> Column:
    """The integer class of each (valid) row's label: a name's position in ``label_names``, or the number."""
    label = F.col(LABEL)
    if not isinstance(df.schema[LABEL].dataType, T.StringType):
        return label.cast("int")
    expr = F.trim(label).cast("int")
    for i, name in enumerate(label_names):
        expr = F.when(F.trim(label) == name, F.lit(i)).otherwise(expr)
    return expr


class TokenizeBatch:
    """Ray Data callable class: loads the tokenizer once per actor, turns ``text`` into ``input_ids``."""

    def __init__(self, tokenizer_dir: str | ShippedDir, max_length: int) -> None:
        from hybrid.shipping import local_path

        self.tokenizer = load_tokenizer(local_path(tokenizer_dir))
        self.max_length = max_length

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column(TEXT).to_pylist()
        ids = tokenize(self.tokenizer, texts, max_length=self.max_length)
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(x) for x in ids], out=offsets[1:])
        flat = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int32)
        column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=pa.int32()))
        return batch.drop_columns([TEXT]).append_column(INPUT_IDS, column)


def tokenize_dataset(dataset: ray.data.Dataset, *, tokenizer_dir: str, max_length: int, **options: Any) -> ray.data.Dataset:
    """``dataset`` with ``text`` replaced by unpadded ``input_ids`` (``list<int32>``); lazy like the hand-off.

    The tokenizer's directory reaches the Ray Data actor through the object store (:mod:`hybrid.shipping`),
    so its node need not see ``tokenizer_dir``.
    """
    from hybrid import shipping

    shipped = shipping.ship_dir(tokenizer_dir, what="model.pretrained_dir")
    return dataset.map_batches(
        TokenizeBatch,
        fn_constructor_kwargs={"tokenizer_dir": shipped, "max_length": max_length},
        batch_format="pyarrow",
        batch_size=1024,
        concurrency=1,
        # One tokenizer actor that reserves no CPU: the dataset is lazy, and its Parquet reads stream into this
        # actor; an actor holding a CPU beside a Spark executor holding the other left the reads none (a hang
        # on 2 CPUs). concurrency=1 bounds its use.
        num_cpus=0,
        **options,
    )


def ingest_text(spark: SparkSession, config: DataConfig, *, run_dir: Path, tokenizer_dir: str) -> IngestResult:
    """:func:`hybrid.ingest.ingest` for text tables: validated and split in Spark, tokenised in Ray Data after
    the hand-over; the test split is also written as text to ``<run_dir>/data/test.parquet`` for scoring."""
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
    splits = split_three(clean, config, content=TEXT)
    checked = check_split_counts(splits, config=config, quarantined=quarantined, label_names=tables.label_names)
    # The held-out test table as text, for scoring in Spark later (the scorer tokenises for itself).
    splits["test"].write.mode("overwrite").parquet(str((run_dir / "data" / TEST_TABLE).resolve()))
    durations["split"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    converted = hand_off(splits, counts=checked.counts, config=config, run_dir=run_dir)
    durations["to_ray"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    datasets = {
        name: tokenize_dataset(ds, tokenizer_dir=tokenizer_dir, max_length=config.max_seq_length)
        for name, ds in converted.items()
    }
    if cpu_free_beside_spark():  # else tokenised lazily, once Spark has let go (hybrid.handoff.materialize)
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    durations["tokenize"] = time.perf_counter() - t0
    for df in tagged.values():
        df.unpersist()
    check_accounted(rows_in, checked.counts, quarantined)
    return IngestResult(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], rows_in=rows_in,
        quarantined=quarantined, counts=checked.counts, normalizer=None, label_names=tables.label_names,
        quarantine_path=quarantine_path, durations_s=durations, dropped=tables.dropped,
        max_seq_length=config.max_seq_length, class_counts=checked.class_counts, warnings=checked.warnings,
    )
