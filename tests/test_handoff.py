"""The hand-off's sizing rules and file order (pure; the Spark and Ray parts run in test_ingest and
test_handoff_faults)."""

from __future__ import annotations

from pathlib import Path

from hybrid.handoff import TARGET_BLOCK_BYTES, parquet_files, row_group_bytes, rows_per_file


def test_row_groups_follow_the_executor_heap_up_to_rays_block_size() -> None:
    assert row_group_bytes(512 * 2**20) == 64 * 2**20  # 1/8 of a small heap
    assert row_group_bytes(2 * 2**30) == TARGET_BLOCK_BYTES  # capped at Ray's target block size
    assert row_group_bytes(1) == 2**20  # never below 1 MiB


def test_rows_per_file_gives_at_least_min_blocks_files() -> None:
    assert rows_per_file(1000, min_blocks=4) == 250
    assert rows_per_file(1001, min_blocks=4) == 251  # 4 files of <= 251 rows
    assert rows_per_file(3, min_blocks=4) == 1
    assert rows_per_file(0, min_blocks=4) == 1  # Spark reads 0 as "no limit"; never ask for that


def test_parquet_files_keep_sparks_order_and_skip_markers(tmp_path: Path) -> None:
    names = ["part-00001-x-c000.snappy.parquet", "part-00000-x-c001.snappy.parquet", "_SUCCESS",
             "part-00000-x-c000.snappy.parquet", ".part-00000-x-c000.snappy.parquet.crc"]
    for name in names:
        (tmp_path / name).touch()
    assert [Path(p).name for p in parquet_files(tmp_path)] == [
        "part-00000-x-c000.snappy.parquet", "part-00000-x-c001.snappy.parquet", "part-00001-x-c000.snappy.parquet"]
