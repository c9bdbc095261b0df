"""Read the sentence-polarity ground truth (Hutto & Gilbert, ICWSM 2014) into an Arrow table. Pure: no Spark.

The file is ``movieReviewSnippets_GroundTruth.txt`` from the sdist of ``vaderSentiment==3.3.2``
(``scripts/setup.sh`` installs it under ``data/sentence_polarity/``): UTF-8, CRLF, one sentence per
line as ``id <TAB> mean rating <TAB> text``. The mean rating is the average of human ratings on a
-4 (most negative) to +4 (most positive) scale.

Binarisation (:func:`polarity_label`): mean rating > 0 is label 1 (``positive``), < 0 is label 0
(``negative``). A rating of exactly 0 has no polarity: the row is dropped from the table and counted
in :attr:`PolarityTable.dropped_neutral`.

Malformed lines never crash the reader and never vanish: each becomes a row with a null ``label``
(``text`` is the line's text field as read, or the whole line when the fields cannot be told apart;
``id`` and ``rating`` are null where they do not parse), so that ingest's validation quarantines it
(rule ``label_null``) and the quarantine table shows what was in the file. Each one is also listed,
with its line number and what is wrong, in :attr:`PolarityTable.bad_lines`. A line is malformed when
it does not have exactly 3 tab-separated fields, the id is not an integer, the rating is not a finite
number, the text is empty, or the line is not valid UTF-8. Only a file with no well-formed line at
all (not this format) raises :class:`~hybrid.errors.DataError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from hybrid.errors import DataError
from hybrid.sources.tables import write_parquet as _write_parquet

POLARITY_LABELS = ("negative", "positive")
"""Class names by label: 0 is negative (mean rating < 0), 1 is positive (mean rating > 0)."""
NEGATIVE, POSITIVE = 0, 1
NEUTRAL_RATING = 0.0
"""Rows with exactly this mean rating have no polarity and are dropped (and counted)."""
FIELDS = 3
"""Tab-separated fields per line: id, mean rating, text."""

ID, TEXT, RATING, LABEL = "id", "text", "rating", "label"
SCHEMA = pa.schema(
    [
        pa.field(ID, pa.int64()),
        pa.field(TEXT, pa.string()),
        pa.field(RATING, pa.float64()),
        pa.field(LABEL, pa.int32()),
    ]
)
"""Columns of the table :func:`read_sentence_polarity` returns; ``label`` is null on malformed rows."""


@dataclass(frozen=True)
class BadLine:
    """A malformed line, kept in the table with a null label."""

    line: int
    """1-based line number in the file."""
    reason: str
    """What is wrong, with the value that was read."""


@dataclass(frozen=True)
class PolarityTable:
    """The rows of a sentence-polarity file and what was set aside on the way."""

    table: pa.Table
    """Columns :data:`SCHEMA`: one row per non-neutral line, malformed lines included with a null label."""
    dropped_neutral: int
    """Lines with a mean rating of exactly 0, not in ``table``."""
    bad_lines: tuple[BadLine, ...] = ()
    """Malformed lines, in file order; each is a row of ``table`` with a null label."""

    @property
    def lines(self) -> int:
        """Lines read from the file: rows of the table plus the neutral ones dropped."""
        return self.table.num_rows + self.dropped_neutral


def polarity_label(rating: float) -> int | None:
    """Label of a mean rating: 1 (positive) if > 0, 0 (negative) if < 0, None (neutral) if == 0.

    Raises:
        ValueError: If ``rating`` is not a finite number.
    """
    if not math.isfinite(rating):
        raise ValueError(f"a mean rating must be a finite number, but got {rating!r}")
    if rating > NEUTRAL_RATING:
        return POSITIVE
    if rating < NEUTRAL_RATING:
        return NEGATIVE
    return None


def read_sentence_polarity(path: str | Path) -> PolarityTable:
    """Read an ``id <TAB> mean rating <TAB> text`` file into a labelled Arrow table.

    Line endings may be LF or CRLF, and a UTF-8 byte-order mark at the start is ignored. See the module
    docstring for the binarisation rule and for what happens to malformed lines.

    Args:
        path: The text file, e.g. ``data/sentence_polarity/movieReviewSnippets_GroundTruth.txt``.

    Returns:
        The table (columns :data:`SCHEMA`, in file order), the number of neutral lines dropped, and the
        malformed lines kept with a null label.

    Raises:
        DataError: If the file cannot be read, or not one of its lines is well formed.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(
            f"cannot read the sentence-polarity file {str(path)!r} ({err.strerror}); "
            "scripts/setup.sh installs it under data/sentence_polarity/"
        ) from err
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    # Split on LF only: a lone CR inside a sentence is text, not a line break (str.splitlines would
    # also split on form feeds and Unicode separators).
    lines = raw.split(b"\n")
    if lines and lines[-1] in (b"", b"\r"):
        lines.pop()  # the terminator of the last line, not an empty line

    ids: list[int | None] = []
    texts: list[str | None] = []
    ratings: list[float | None] = []
    labels: list[int | None] = []
    bad: list[BadLine] = []
    neutral = 0
    for number, line_bytes in enumerate(lines, start=1):
        line_bytes = line_bytes.removesuffix(b"\r")
        row_id, text, rating, problem = _parse(line_bytes)
        if problem is None:
            label = polarity_label(rating)  # type: ignore[arg-type]  # _parse checked it is finite
            if label is None:
                neutral += 1
                continue
        else:
            label = None
            bad.append(BadLine(line=number, reason=problem))
        ids.append(row_id)
        texts.append(text)
        ratings.append(rating)
        labels.append(label)

    if len(bad) == len(lines):  # neutral lines are well formed
        where = f"line {bad[0].line}: {bad[0].reason}" if bad else "the file is empty"
        raise DataError(
            f"{path}: no line has the form 'id<TAB>mean rating<TAB>text' ({where}); "
            "is this the sentence-polarity ground-truth file?"
        )
    table = pa.table({ID: ids, TEXT: texts, RATING: ratings, LABEL: labels}, schema=SCHEMA)
    return PolarityTable(table=table, dropped_neutral=neutral, bad_lines=tuple(bad))


def _parse(line_bytes: bytes) -> tuple[int | None, str | None, float | None, str | None]:
    """``(id, text, rating, problem)`` of one line; ``problem`` is None when the line is well formed."""
    try:
        line = line_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        text = line_bytes.decode("utf-8", errors="replace")
        return None, text, None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    fields = line.split("\t")
    if len(fields) != FIELDS:
        problem = f"expected {FIELDS} tab-separated fields (id, rating, text), but got {len(fields)}: {line[:80]!r}"
        return None, line, None, problem
    id_field, rating_field, text = fields
    problems = []
    try:
        row_id: int | None = int(id_field)
    except ValueError:
        row_id = None
        problems.append(f"id must be an integer, but got {id_field!r}")
    try:
        rating: float | None = float(rating_field)
    except ValueError:
        rating = None
    if rating is None or not math.isfinite(rating):
        rating = None
        problems.append(f"rating must be a finite number, but got {rating_field!r}")
    if not text.strip():
        problems.append(f"text must not be empty, but got {text!r}")
    return row_id, text, rating, "; ".join(problems) or None


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write ``table`` (e.g. :attr:`PolarityTable.table`) to the Parquet file ``path`` atomically, creating its
    directory.

    Returns:
        The path written.
    """
    return _write_parquet(table, path)
