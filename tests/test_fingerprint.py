"""Stage fingerprints: a config change redoes exactly the stages that read it (and the ones after them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hybrid.config import config_from_dict
from hybrid.fingerprint import STAGE_ORDER, stage_fingerprints, stale_stages

SPACE = str(Path(__file__).resolve().parents[1] / "search_spaces" / "cnn_fashion_mnist.yaml")


def _fingerprints(tmp_path: Path, **sections: dict) -> dict:
    raw = {"name": "fp", "data": {"source": "parquet", "path": str(tmp_path / "train.parquet")},
           "tune": {"search_space": SPACE}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    config = config_from_dict(raw)
    files = {"data.path": tmp_path / "train.parquet", "tune.search_space": SPACE}
    return stage_fingerprints(config, input_files=files, code="test")


@pytest.fixture
def base(tmp_path: Path) -> dict:
    (tmp_path / "train.parquet").write_bytes(b"rows")
    return _fingerprints(tmp_path)


def _from(stage: str) -> list[str]:
    return list(STAGE_ORDER[STAGE_ORDER.index(stage):])


@pytest.mark.parametrize(
    ("section", "change", "first_stale"),
    [
        ("data", {"val_fraction": 0.2}, "ingest"),
        ("data", {"seed": 3}, "ingest"),
        ("data", {"pixel_prefix": "pixel"}, "ingest"),  # another layout of the same file: other pixels
        ("data", {"feature_columns": ["features"]}, "ingest"),
        ("model", {"base_channels": 8}, "tune"),
        ("train", {"lr": 0.01}, "tune"),
        ("tune", {"num_samples": 3}, "tune"),
        ("tune", {"objectives": [{"val_accuracy": "max"}, {"latency_ms": "min"}]}, "tune"),
        ("distill", {"alpha": 0.0}, "distill"),
        ("distill", {"temperature": 2.0}, "distill"),
        ("quantize", {"backend": "torch"}, "quantize"),
        ("score", {"batch_size": 64}, "score"),
        ("runtime", {"spark_executors": 2}, None),
    ],
)
def test_a_config_change_redoes_exactly_the_stages_that_read_it(tmp_path, base, section, change, first_stale):
    changed = _fingerprints(tmp_path, **{section: change})
    recorded = {stage: fp.digest for stage, fp in base.items()}
    assert stale_stages(changed, recorded) == (_from(first_stale) if first_stale else [])


def test_the_reason_names_the_key_and_both_values(tmp_path, base):
    changed = _fingerprints(tmp_path, distill={"alpha": 0.0})
    assert changed["distill"].changes(base["distill"].inputs) == ["distill.alpha 0.7 -> 0.0"]
    assert changed["quantize"].changes(base["quantize"].inputs) == ["its input stage was redone"]
    assert changed["tune"].changes(base["tune"].inputs) == []


def test_rewriting_the_input_data_redoes_everything(tmp_path, base):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"other rows")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    changed = _fingerprints(tmp_path)
    assert stale_stages(changed, {s: fp.digest for s, fp in base.items()}) == list(STAGE_ORDER)
    assert changed["ingest"].changes(base["ingest"].inputs) == ["data.path contents changed"]


def test_a_new_code_version_redoes_everything(tmp_path, base):
    config = config_from_dict({"name": "fp", "data": {"source": "parquet", "path": str(tmp_path / "train.parquet")},
                               "tune": {"search_space": SPACE}})
    other = stage_fingerprints(config, input_files={"data.path": tmp_path / "train.parquet",
                                                    "tune.search_space": SPACE}, code="other")
    assert stale_stages(other, {s: fp.digest for s, fp in base.items()}) == list(STAGE_ORDER)
    assert "hybrid's code changed" in other["ingest"].changes(base["ingest"].inputs)[0]
