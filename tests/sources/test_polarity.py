"""Unit tests of hybrid.sources.polarity on tiny files in tmp_path, plus the installed real file if present."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hybrid.errors import DataError
from hybrid.sources.polarity import (
    POLARITY_LABELS,
    SCHEMA,
    polarity_label,
    read_sentence_polarity,
    write_parquet,
)

REAL_FILE = Path(__file__).resolve().parents[2] / "data/sentence_polarity/movieReviewSnippets_GroundTruth.txt"


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "polarity.txt"
    path.write_bytes(data)
    return path


def test_labels_name_negative_then_positive() -> None:
    assert POLARITY_LABELS == ("negative", "positive")
    assert polarity_label(0.2) == 1
    assert polarity_label(-3.5) == 0
    assert polarity_label(0.0) is None
    assert polarity_label(-0.0) is None
    with pytest.raises(ValueError, match="finite number, but got nan"):
        polarity_label(float("nan"))


def test_crlf_bom_and_neutral_rows(tmp_path: Path) -> None:
    data = "\ufeff1\t2.5\tA fine film.\r\n2\t-1.25\tDull, très dull.\r\n3\t0.0\tIt exists.\r\n4\t0.01\tOkay.\r\n"
    result = read_sentence_polarity(write(tmp_path, data.encode("utf-8")))
    assert result.table.schema == SCHEMA
    assert result.table.to_pylist() == [
        {"id": 1, "text": "A fine film.", "rating": 2.5, "label": 1},
        {"id": 2, "text": "Dull, très dull.", "rating": -1.25, "label": 0},
        {"id": 4, "text": "Okay.", "rating": 0.01, "label": 1},
    ]
    assert result.dropped_neutral == 1
    assert result.bad_lines == ()
    assert result.lines == 4


def test_last_line_without_terminator_and_lf_endings(tmp_path: Path) -> None:
    result = read_sentence_polarity(write(tmp_path, b"1\t1\ta\n2\t-1\tb"))
    assert result.table.column("text").to_pylist() == ["a", "b"]
    assert result.table.column("label").to_pylist() == [1, 0]


def test_malformed_lines_are_kept_with_a_null_label_and_listed(tmp_path: Path) -> None:
    lines = [
        b"1\t1.5\tgood",
        b"2\tabc\tbad rating",
        b"3\t2.0",  # missing text field
        b"4\t-2\ttab\tinside",
        b"x5\t-1\tbad id",
        b"6\tnan\tnot finite",
        b"7\t1\t   ",
        b"8\t-1\t\xff\xfe broken",
        b"",
        b"10\t0\tneutral",
    ]
    result = read_sentence_polarity(write(tmp_path, b"\r\n".join(lines) + b"\r\n"))
    rows = result.table.to_pylist()
    assert len(rows) == 9  # every line but the neutral one
    assert rows[0] == {"id": 1, "text": "good", "rating": 1.5, "label": 1}
    assert [r["label"] for r in rows[1:]] == [None] * 8
    assert rows[1] == {"id": 2, "text": "bad rating", "rating": None, "label": None}
    assert rows[2]["text"] == "3\t2.0"  # the whole line when the fields cannot be told apart
    assert rows[3]["text"] == "4\t-2\ttab\tinside"
    assert rows[4] == {"id": None, "text": "bad id", "rating": -1.0, "label": None}
    assert rows[5]["rating"] is None
    assert "\ufffd" in rows[7]["text"]
    assert rows[8]["text"] == ""
    assert result.dropped_neutral == 1
    assert [b.line for b in result.bad_lines] == [2, 3, 4, 5, 6, 7, 8, 9]
    reasons = dict((b.line, b.reason) for b in result.bad_lines)
    assert "rating must be a finite number, but got 'abc'" in reasons[2]
    assert "expected 3 tab-separated fields (id, rating, text), but got 2" in reasons[3]
    assert "but got 4" in reasons[4]
    assert "id must be an integer, but got 'x5'" in reasons[5]
    assert "got 'nan'" in reasons[6]
    assert "text must not be empty" in reasons[7]
    assert "not valid UTF-8" in reasons[8]
    assert "but got 1" in reasons[9]


@pytest.mark.parametrize("data", [b"", b"id,rating,text\n1,2.0,hello\n"])
def test_a_file_with_no_well_formed_line_is_a_data_error(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(DataError, match="no line has the form"):
        read_sentence_polarity(write(tmp_path, data))


def test_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.txt.*scripts/setup\.sh"):
        read_sentence_polarity(tmp_path / "nope.txt")


def test_write_parquet_round_trips(tmp_path: Path) -> None:
    result = read_sentence_polarity(write(tmp_path, b"1\t1\ta\r\n2\tbad\tb\r\n"))
    out = write_parquet(result.table, tmp_path / "sub" / "polarity.parquet")
    back = pq.read_table(out)
    assert back.schema == SCHEMA
    assert back.equals(result.table)
    assert back.column("label").null_count == 1


@pytest.mark.skipif(not REAL_FILE.is_file(), reason="run scripts/setup.sh to install the sentence-polarity data")
def test_the_installed_file_has_the_published_counts() -> None:
    # Counted independently with awk -F'\t' on the file: 10,605 lines, 37 with mean rating 0.
    result = read_sentence_polarity(REAL_FILE)
    assert result.lines == 10_605
    assert result.dropped_neutral == 37
    assert result.bad_lines == ()
    labels = result.table.column("label").to_pylist()
    assert labels.count(1) == 5_242
    assert labels.count(0) == 5_326
    assert result.table.column("id").to_pylist()[:3] == [1, 2, 3]
    assert not any("\r" in t or "\ufeff" in t for t in result.table.column("text").to_pylist())
    assert isinstance(result.table, pa.Table)
