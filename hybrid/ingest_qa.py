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
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from hybrid.config import DataConfig
from hybrid.errors import ConfigError, DataError
from hybrid.ingest import (
    LABEL,
    QUARANTINE_TABLE,
    TEST_TABLE,
    IngestResult,
    check_accounted,
    check_split_counts,
    hand_off,
    remove_quarantine,
    split_three,
)
from hybrid.qa import REJECT_REASONS, QAExample, examples_from_columns, read_squad_json
from hybrid.sources.tables import read_user_table, write_parquet

log = logging.getLogger(__name__)

TEST_COLUMNS = ("id", "question", "context", "answers")
"""What ``<run_dir>/data/test.parquet`` keeps of the test split: a span model's inputs and gold answers (not
``answer_start``, the name of one of the scorer's outputs)."""

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("question", pa.string()),
        ("context", pa.string()),
        ("answer_start", pa.int64()),
        ("answer_text", pa.string()),
        ("answers", pa.list_(pa.string())),
        ("is_impossible", pa.bool_()),
        ("group", pa.string()),
    ]
)


def read_examples(
    spark: SparkSession, config: DataConfig, path: str, *, key: str = "data.path", max_rows: int | None = None
) -> tuple[list[QAExample], list[dict[str, Any]]]:
    """Examples and rejected rows of one QA table: SQuAD v1.1/v2 JSON, or a Parquet/CSV table with
    ``id``, ``question``, ``context`` and ``answers`` columns (and optionally ``title``, the article the
    splits keep together).

    ``answers`` holds per row a list of ``{text, answer_start}``, a Hugging Face style ``{text: [...],
    answer_start: [...]}``, or either as JSON text (the way a CSV cell holds them); a cell that is not
    valid JSON is rejected as ``malformed_answer`` with the parser's message.

    Args:
        spark: Session to read tables with.
        config: The ``data`` section (its ``source``).
        path: The file or table.
        key: The config key that named ``path``, for messages.
        max_rows: Read only the first this many questions.

    Raises:
        DataError: If the file is malformed or a column is missing.
    """
    if config.source == "squad":
        return read_squad_json(path, max_rows=max_rows)
    if config.source not in ("parquet", "csv"):
        raise ConfigError(f"data.source={config.source!r} cannot hold question answering rows (squad, parquet, csv)")
    df = read_user_table(spark, path, source=config.source, key=key)
    needed = ("id", "question", "context", "answers")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DataError(f"{key}: QA table {path!r} lacks columns {missing}; its columns are {df.columns}")
    df = df.select(*needed, *(["title"] if "title" in df.columns else []))
    if max_rows is not None:
        df = df.limit(max_rows)
    rows = [row.asDict(recursive=True) for row in df.toLocalIterator()]
    return examples_from_columns(
        [r["id"] for r in rows], [r["question"] for r in rows], [r["context"] for r in rows],
        [r["answers"] for r in rows], titles=[r.get("title") for r in rows],
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
            "group": [e.group for e in examples],
        },
        schema=_SCHEMA,
    )


def ingest_qa(spark: SparkSession, config: DataConfig, *, run_dir: Path) -> IngestResult:
    """:func:`hybrid.ingest.ingest` for question answering."""
    t0 = time.perf_counter()
    tables = {"train": read_examples(spark, config, config.path, max_rows=config.max_train_rows)}
    if config.test_path is not None:
        tables["test"] = read_examples(spark, config, config.test_path, key="data.test_path",
                                       max_rows=config.max_test_rows)
    quarantined = dict.fromkeys(REJECT_REASONS, 0)
    rejected_rows: list[dict[str, Any]] = []
    rows_in = 0
    frames: dict[str, DataFrame] = {}
    data_dir = run_dir / "data"
    for name, (examples, rejected) in tables.items():
        rows_in += len(examples) + len(rejected)
        for row in rejected:
            quarantined[row["reason"]] = quarantined.get(row["reason"], 0) + 1
            rejected_rows.append({**{k: str(v) for k, v in row.items()}, "table": name})
        path = write_parquet(examples_table(examples), data_dir / f"qa_{name}.parquet")
        frames[name] = spark.read.parquet(str(path.resolve())).withColumn(LABEL, F.lit(0))
    remove_quarantine(run_dir)
    quarantine_path = None
    if rejected_rows:
        quarantine_path = str(write_parquet(pa.Table.from_pylist(rejected_rows), run_dir / QUARANTINE_TABLE).resolve())
        log.warning("quarantined %d QA rows to %s: %s", len(rejected_rows), quarantine_path,
                    {k: v for k, v in quarantined.items() if v})
    durations = {"validate": time.perf_counter() - t0}

    t0 = time.perf_counter()
    # By article (SQuAD title, else context), never by question: an article's questions share its text.
    splits = split_three(frames, config, content="context", group="group")
    checked = check_split_counts(splits, config=config, quarantined=quarantined, label_names=())
    # The held-out questions with their gold answers, for scoring in Spark later (the scorer windows for itself).
    splits["test"].select(*TEST_COLUMNS).write.mode("overwrite").parquet(str((data_dir / TEST_TABLE).resolve()))
    datasets = hand_off({name: df.drop(LABEL) for name, df in splits.items()}, counts=checked.counts, config=config,
                        run_dir=run_dir)
    durations["to_ray"] = time.perf_counter() - t0
    check_accounted(rows_in, checked.counts, quarantined)
    return IngestResult(
        train=datasets["train"], val=datasets["val"], test=datasets["test"], rows_in=rows_in,
        quarantined=quarantined, counts=checked.counts, normalizer=None, label_names=(),
        quarantine_path=quarantine_path, durations_s=durations,
    )
