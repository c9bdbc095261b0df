"""Question answering tables: SQuAD JSON (or a question/context/answers table) to Ray datasets of examples.

Rows stay whole examples (``id, question, context, answer_start, answer_text, answers``) all the way to
training: the model's collate function (``hybrid.models.bert.QACollate``) cuts each context into
overlapping windows per batch, so every window of an example is decoded together and exact match / F1
are exact on any number of workers. Rejected examples (see :data:`hybrid.qa.REJECT_REASONS`) are
counted and written to ``quarantine.parquet`` with their reason, like image and text rows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybrid.config import DataConfig
from hybrid.errors import ConfigError, DataError
from hybrid.qa import REJECT_REASONS, QAExample, examples_from_columns, read_squad_json

log = logging.getLogger(__name__)

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("context", pa.string()),
        ("answer_start", pa.int64()),
        ("answer_text", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("is_impossible", pa.bool_()),
    ]
)


def read_examples(spark: SparkSession, config: DataConfig, path: str) -> tuple[list[QAExample], list[dict[str, Any]]]:
    """Examples and rejected rows of one QA table: SQuAD v1.1/v2 JSON, or a Parquet/CSV table with
    ``id``, ``question``, ``context`` and ``answers`` (a list of ``{text, answer_start}``) columns.

    Raises:
        DataError: If the file is malformed or a column is missing.
    """
    if config.source == "squad":
        return read_squad_json(path)
    if config.source not in ("parquet", "csv"):
        raise ConfigError(f"data.source={config.source!r} cannot hold question answering rows (squad, parquet, csv)")
    reader = spark.read.option("header", True) if config.source == "csv" else spark.read
    df = reader.csv(path) if config.source == "csv" else reader.parquet(path)
    needed = ("id", "question", "context", "answers")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"data.path: QA table {path!r} lacks columns {missing}; its columns are {df.columns}")
    rows = [row.asDict(recursive=True) for row in df.select(*needed).toLocalIterator()]
    return examples_from_columns(
        [r["id"] for r in rows], [r["question"] for r in rows], [r["context"] for r in rows],
        [r["answers"] for r in rows],
    )


def examples_table(examples: list[QAExample]) -> pa.Table:
    """One row per example; ``answer_start``/``answer_text`` hold the first answer (-1 / "" if none)."""
    return pa.table(
        {
            "id": [e.id for e in examples],
            "question": [e.question for e in examples],
            "context": [e.context for e in examples],
            "answer_start": [e.answers[0].start if e.answers else -1 for e in examples],
            "answer_text": [e.answers[0].text if e.answers else "" for e in examples],
            "answers": [[a.text for a in e.answers] for e in examples],
            "is_impossible": [e.is_impossible for e in examples],
        },
        schema=_SCHEMA,
    )


def _split(df: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    from hybrid.ingest import stratified_split

    # One stratum; rows are ordered by a hash of their context, so the questions of one paragraph mostly
    # land on the same side.
    labelled = df.withColumn("label", F.lit(0))
    keep, held = stratified_split(labelled, val_fraction=fraction, seed=seed, content="context")
    return keep.drop("label"), held.drop("label")


def ingest_qa(spark: SparkSession, config: DataConfig, *, run_dir: Path) -> Any:
    """:func:`hybrid.ingest.ingest` for question answering; returns an ``IngestResult``."""
    from hybrid.ingest import IngestResult, to_ray

    t0 = time.perf_counter()
    tables = {"train": read_examples(spark, config, config.path)}
    if config.test_path is not None:
        tables["test"] = read_examples(spark, config, config.test_path)
    quarantined = dict.fromkeys(REJECT_REASONS, 0)
    rejected_rows: list[dict[str, Any]] = []
    rows_in = 0
    frames: dict[str, DataFrame] = {}
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, (examples, rejected) in tables.items():
        rows_in += len(examples) + len(rejected)
        for row in rejected:
            quarantined[row["reason"]] = quarantined.get(row["reason"], 0) + 1
            rejected_rows.append({**{k: str(v) for k, v in row.items()}, "table": name})
        if name == "train" and config.max_train_rows is not None:
            examples = examples[: config.max_train_rows]
        path = data_dir / f"qa_{name}.parquet"
        pq.write_table(examples_table(examples), path)
        frames[name] = spark.read.parquet(str(path.resolve()))
    quarantine_path = None
    if rejected_rows:
        quarantine_path = str((run_dir / "quarantine.parquet").resolve())
        pq.write_table(pa.Table.from_pylist(rejected_rows), quarantine_path)
        log.warning("quarantined %d QA rows to %s: %s", len(rejected_rows), quarantine_path,
                    {k: v for k, v in quarantined.items() if v})
    durations = {"validate": time.perf_counter() - t0}

    t0 = time.perf_counter()
    if "test" in frames:
        rest, test = frames["train"], frames["test"]
    else:
        if config.test_fraction <= 0:
            raise ConfigError("a QA source without test_path needs data.test_fraction > 0 (a held-out test split)")
        rest, test = _split(frames["train"], config.test_fraction, config.seed + 1)
    train, val = _split(rest, config.val_fraction, config.seed)
    splits = {"train": train, "val": val, "test": test}
    datasets = {name: to_ray(df, num_blocks=config.blocks_per_split) for name, df in splits.items()}
    counts = {name: ds.count() for name, ds in datasets.items()}
    durations["to_ray"] = time.perf_counter() - t0
    if min(counts.values()) == 0:
        raise DataError(f"every split needs examples, but got {counts} (quarantined: {quarantined})")
    return IngestResult(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], rows_in=rows_in,
        quarantined=quarantined, counts=counts, normalizer=None, label_names=(),
        quarantine_path=quarantine_path, durations_s=durations,
    )
