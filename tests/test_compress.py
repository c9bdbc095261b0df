"""The compression search's pure parts: its config keys, search space, fingerprint, resume plan, and the
choice of the shipped candidate (the real-Ray search is in test_compress_ray.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid.compress import CandidatePaths, CandidateRecord, chosen_params, choose, plan_candidates, read_candidates, write_candidate
from hybrid.config import check_before_start, check_wired, config_from_dict, load_config
from hybrid.errors import ConfigError, SelectionError
from hybrid.fingerprint import input_files, stage_fingerprints
from hybrid.pareto import Objective, parse_selection
from hybrid.pipeline import quantize_config
from hybrid.search_space import check_compression_space, load_search_space

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "cnn_fashion_mnist_compression.yaml")
ACC, LAT, SIZE = Objective("val_accuracy", "max"), Objective("latency_ms", "min"), Objective("size_bytes", "min")


def _config(**compression: Any):
    return config_from_dict({"compression": {"search_space": SPACE, **compression}})


# ---------------------------------------------------------------- config


def test_search_keys_load_with_defaults_and_round_trip() -> None:
    config = _config()
    cc = config.compression
    assert cc.searching and cc.num_samples == 8 and cc.objectives == ()
    assert cc.resolved_objectives("accuracy") == (ACC, LAT, SIZE)
    assert config.selection_objectives() == (ACC, LAT, SIZE)
    data = yaml.safe_load(yaml.safe_dump(config.to_dict()))
    assert config_from_dict(data) == config
    check_wired(config)
    assert not config_from_dict({}).compression.searching


def test_select_is_applied_only_with_a_search_and_checked_against_its_objectives() -> None:
    knee = _config(objectives=[{"val_accuracy": "max"}, {"latency_ms": "min"}], select="knee")
    check_wired(knee)
    assert knee.compression.rule(ACC) == parse_selection("knee")
    with pytest.raises(ConfigError, match="knee needs exactly two objectives"):
        _config(select="knee")  # the default objectives are three
    with pytest.raises(ConfigError, match=r"compression.select.subject_to.params must name one of the objectives "
                                          r"\['val_accuracy', 'latency_ms', 'size_bytes'\]"):
        _config(select={"maximize": "val_accuracy", "subject_to": {"params": "<= 1000"}})
    with pytest.raises(ConfigError, match="only a compression search makes"):
        check_wired(config_from_dict({"compression": {"select": {"maximize": "val_accuracy"}}}))


@pytest.mark.parametrize(
    ("compression", "expect"),
    [
        ({"objectives": [{"val_f1": "max"}]}, "the validation metric of a candidate is its int8 model's val_accuracy"),
        ({"objectives": [{"latency_ms": "max"}]}, "compression.objectives[0]: latency_ms can only be minimised"),
        ({"objectives": [{"latency": "min"}]}, "compression.objectives[0] must be val_<headline> or one of"),
        ({"num_samples": 0}, "compression.num_samples must be >= 1, but got 0"),
        ({"serch_space": "x"}, "unknown config key 'compression.serch_space' (did you mean 'search_space'?)"),
    ],
)
def test_bad_compression_keys_name_the_key(compression: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"compression": {"search_space": SPACE, **compression}})
    assert expect in str(err.value)


def test_the_pareto_config_loads_and_passes_the_start_checks() -> None:
    config = load_config(ROOT / "configs" / "fashion_mnist_pareto.yaml")
    assert Path(config.compression.search_space).is_file()
    assert config.compression.select == "knee" and config.selection_objectives() == (ACC, LAT)
    if Path(config.data.path).exists():
        check_before_start(config)


def test_a_relative_search_space_is_found_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "c.yaml").write_text(Path(SPACE).read_text())
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"compression": {"search_space": "spaces/c.yaml"}}))
    config = load_config(tmp_path / "run.yaml")
    assert config.compression.search_space == str(tmp_path / "spaces" / "c.yaml")


# ---------------------------------------------------------------- search space


def test_the_shipped_compression_space_fits_the_cnn() -> None:
    space = load_search_space(SPACE, key="compression.search_space")
    assert {k.split(".")[0] for k in space} == {"distill", "quantize"}
    check_compression_space(space, config_from_dict({}))


def _space(tmp_path: Path, entry: dict[str, Any]) -> dict:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(entry))
    return load_search_space(path, key="compression.search_space")


@pytest.mark.parametrize(
    ("entry", "expect"),
    [
        ({"train.lr": {"name": "FloatDistribution", "attributes": {"low": 0.001, "high": 0.01}}},
         "compression.search_space key 'train.lr' must start with one of ['distill', 'quantize']"),
        ({"distill.width_multipler": {"name": "FloatDistribution", "attributes": {"low": 0.5, "high": 1.0}}},
         "(did you mean 'width_multiplier'?)"),
        ({"distill.student.num_blok": {"name": "IntDistribution", "attributes": {"low": 1, "high": 2}}},
         "'num_blok' is not a field of the cnn model config (did you mean 'num_blocks'?)"),
        ({"distill.width_multiplier": {"name": "FloatDistribution", "attributes": {"low": 0.0, "high": 1.0}}},
         "compression.search_space key 'distill.width_multiplier': value 0.0 is invalid"),
        ({"quantize.backend": {"name": "CategoricalDistribution", "attributes": {"choices": ["torch", "tflite"]}}},
         "compression.search_space key 'quantize.backend': value 'tflite' is invalid"),
    ],
)
def test_bad_compression_spaces_name_the_key(tmp_path: Path, entry: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_compression_space(_space(tmp_path, entry), config_from_dict({}))
    assert expect in str(err.value)


# ---------------------------------------------------------------- fingerprint


def test_a_changed_search_redoes_distill_and_after_but_not_the_tune(tmp_path: Path) -> None:
    space = tmp_path / "c.yaml"
    space.write_text(Path(SPACE).read_text())

    def fingerprints(**compression: Any) -> dict:
        config = config_from_dict({"data": {"path": str(tmp_path)},
                                   "compression": {"search_space": str(space), **compression}})
        return stage_fingerprints(config, input_files=input_files(config), code="test")

    base = fingerprints()
    assert "file:compression.search_space" in base["distill"].inputs
    for changed in (fingerprints(num_samples=3), fingerprints(seed=1)):
        assert changed["tune"].digest == base["tune"].digest
        assert all(changed[s].digest != base[s].digest for s in ("distill", "quantize", "score"))
    space.write_text(Path(SPACE).read_text() + "\n# edited\n")
    import os
    os.utime(space, ns=(1, 1))  # a different signature whatever the clock's resolution
    assert fingerprints()["distill"].digest != base["distill"].digest


# ---------------------------------------------------------------- resume plan


def _record(tid: str, status: str = "completed", **metrics: Any) -> CandidateRecord:
    return CandidateRecord(tid, {"distill.alpha": 0.5}, status, metrics=metrics)  # type: ignore[arg-type]


def test_plan_keeps_finished_candidates_and_reruns_those_in_flight() -> None:
    trials = [(0, "COMPLETE", 10), (1, "RUNNING", 11), (2, "RUNNING", 12), (3, "FAIL", 13)]
    records = {"t0000": _record("t0000"), "t0002": _record("t0002"), "t0003": _record("t0003", "failed")}
    kept, rerun, tell = plan_candidates(trials, records)
    assert kept == ["t0000", "t0002", "t0003"]
    assert rerun == [("t0001", 11)]  # no record: killed mid-candidate, run again with its sampled values
    assert tell == ["t0002"]  # recorded, but Optuna never heard of its end


def test_records_round_trip_and_unreadable_ones_count_as_absent(tmp_path: Path) -> None:
    paths = CandidatePaths(tmp_path)
    write_candidate(paths, _record("t0001", val_accuracy=0.8, latency_ms=0.1))
    (paths.candidates / "t0002.json").write_text("{not json")
    records = read_candidates(paths)
    assert list(records) == ["t0001"] and records["t0001"].metrics["val_accuracy"] == 0.8


# ---------------------------------------------------------------- choosing


def _candidates() -> list[CandidateRecord]:
    return [
        _record("t0000", val_accuracy=0.90, latency_ms=0.30, size_bytes=900, passed_gate=True),
        _record("t0001", val_accuracy=0.88, latency_ms=0.10, size_bytes=300, passed_gate=True),
        _record("t0002", val_accuracy=0.70, latency_ms=0.05, size_bytes=100, passed_gate=True),
        _record("t0003", val_accuracy=0.95, latency_ms=0.01, size_bytes=50, passed_gate=False),
        _record("t0004", "failed"),
    ]


def test_choose_builds_the_front_of_gated_candidates_and_applies_the_rule() -> None:
    selection, pareto = choose(_candidates(), (ACC, LAT), parse_selection("knee"))
    assert selection.point["id"] == "t0001"  # the knee of 0.90/0.30, 0.88/0.10, 0.70/0.05
    assert [p["id"] for p in pareto["front"]] == ["t0000", "t0001", "t0002"]
    excluded = {e["point"]["id"]: e["reasons"] for e in pareto["excluded"]}
    assert excluded["t0004"] == ["val_accuracy is missing", "latency_ms is missing"]
    assert "failed the accuracy gate" in excluded["t0003"][0]  # best on both, but its int8 cannot ship
    fast = parse_selection({"maximize": "val_accuracy", "subject_to": {"latency_ms": "<= 0.08"}})
    assert choose(_candidates(), (ACC, LAT), fast)[0].point["id"] == "t0002"
    with pytest.raises(SelectionError, match="no candidate meets every constraint"):
        choose(_candidates(), (ACC, LAT), parse_selection({"maximize": "val_accuracy",
                                                           "subject_to": {"latency_ms": "<= 0.02"}}))


def test_without_a_gated_candidate_every_one_competes() -> None:
    records = [r for r in _candidates() if r.trial_id in ("t0003", "t0004")]
    selection, pareto = choose(records, (ACC, LAT), parse_selection({"maximize": "val_accuracy"}))
    assert selection.point["id"] == "t0003" and selection.point["passed_gate"] is False


def test_the_quantize_stage_takes_the_chosen_candidates_int8_settings() -> None:
    config = _config()
    results = {"distill": {"compression": {"chosen": {"params": {"distill.alpha": 0.4, "quantize.backend": "onnxruntime",
                                                                 "quantize.per_channel": False}}}}}
    qcfg = quantize_config(config, results)
    assert qcfg.backend == "onnxruntime" and qcfg.per_channel is False
    assert qcfg.calibration_samples == config.quantize.calibration_samples
    assert quantize_config(config, {}) == config.quantize
    assert chosen_params({}) == {}
