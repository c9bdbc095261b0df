"""Unit tests of hybrid.config: loading, strict keys and types, validation, overrides, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from hybrid.config import (
    Config,
    DataConfig,
    RuntimeConfig,
    TrainConfig,
    TuneConfig,
    apply_overrides,
    check_paths,
    config_from_dict,
    load_config,
)
from hybrid.errors import ConfigError
from hybrid.models import CNNConfig


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """``nested('train.lr', 1)`` -> ``{'train': {'lr': 1}}``."""
    *parents, leaf = dotted.split(".")
    out: dict[str, Any] = {leaf: value}
    for part in reversed(parents):
        out = {part: out}
    return out


# ---------------------------------------------------------------- defaults and construction


def test_empty_dict_gives_the_defaults() -> None:
    config = config_from_dict({})
    assert config == Config()
    assert config.model == CNNConfig()
    assert config.model_name == "cnn"
    assert config.train == TrainConfig() and config.tune == TuneConfig()


def test_sections_are_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 1.0  # type: ignore[misc]


def test_values_are_read_into_their_sections() -> None:
    config = config_from_dict(
        {
            "name": "exp1",
            "runs_dir": "out",
            "model": {"name": "cnn", "num_blocks": 3, "pooling": "avg"},
            "runtime": {"num_cpus": 2},
            "data": {"label_names": ["a", "b"], "num_classes": 2, "source": "parquet", "test_path": "t.parquet"},
            "train": {"lr": 0.01, "optimizer": "sgd"},
            "tune": {"num_samples": 2, "metric": "val_loss"},
        }
    )
    assert config.name == "exp1" and config.run_dir == Path("out") / "exp1"
    assert config.model == CNNConfig(num_blocks=3, pooling="avg")
    assert config.runtime.num_cpus == 2
    assert config.data.label_names == ("a", "b")  # a YAML list becomes the declared tuple
    assert config.train.optimizer == "sgd" and config.train.lr == 0.01
    assert config.tune.num_samples == 2


def test_int_is_accepted_for_float_fields_and_becomes_float() -> None:
    config = config_from_dict({"train": {"lr": 1}, "tune": {"time_budget_s": 60}})
    assert isinstance(config.train.lr, float) and config.train.lr == 1.0
    assert isinstance(config.tune.time_budget_s, float)


def test_exponent_without_dot_is_a_number() -> None:
    # PyYAML (YAML 1.1) reads `lr: 1e-3` as the string '1e-3'; it must still mean 0.001.
    raw = yaml.safe_load("train:\n  lr: 1e-3\n  min_lr_ratio: 5E-2\n")
    assert raw["train"]["lr"] == "1e-3"
    config = config_from_dict(raw)
    assert config.train.lr == pytest.approx(1e-3)
    assert config.train.min_lr_ratio == pytest.approx(0.05)


@pytest.mark.parametrize(("metric", "mode"), [("val_loss", "min"), ("val_accuracy", "max"), ("val_macro_f1", "max")])
def test_tune_mode_follows_the_metric(metric: str, mode: str) -> None:
    assert TuneConfig(metric=metric).mode == mode  # type: ignore[arg-type]


# ---------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("raw", "dotted", "hint"),
    [
        (nested("train.lrr", 0.1), "train.lrr", "lr"),
        (nested("train.max_epoch", 3), "train.max_epoch", "max_epochs"),
        (nested("tune.num_sample", 3), "tune.num_sample", "num_samples"),
        (nested("data.val_fractoin", 0.2), "data.val_fractoin", "val_fraction"),
        (nested("runtime.num_cpu", 2), "runtime.num_cpu", "num_cpus"),
        (nested("model.num_block", 2), "model.num_block", "num_blocks"),
        ({"trian": {}}, "trian", "train"),
    ],
)
def test_unknown_key_names_the_dotted_key_and_suggests(raw: dict[str, Any], dotted: str, hint: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert f"'{dotted}'" in message
    assert f"did you mean '{hint}'" in message


def test_unknown_key_without_a_close_match_has_no_hint() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.zzzzzz'") as info:
        config_from_dict(nested("train.zzzzzz", 1))
    assert "did you mean" not in str(info.value)


# ---------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("dotted", "value", "rule"),
    [
        ("train.lr", "fast", "must be a number"),
        ("train.lr", True, "must be a number"),
        ("train.max_epochs", 2.5, "must be an integer"),
        ("train.max_epochs", True, "must be an integer"),
        ("train.use_gpu", "yes", "must be true or false"),
        ("train.precision", "bf61", "must be one of"),
        ("train.schedule", "cosin", "must be one of"),
        ("data.label_names", "abc", "must be a list"),
        ("data.label_names", [1, 2], "must be a string"),
        ("runtime.num_cpus", "4", "must be an integer"),
        ("runtime.ray_address", 5, "must be a string"),
        ("model.batch_norm", 1, "must be true or false"),
    ],
)
def test_wrong_type_names_key_and_value(dotted: str, value: Any, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(nested(dotted, value))
    message = str(info.value)
    assert message.startswith(dotted)
    assert rule in message
    shown = repr(value[0]) if isinstance(value, list) else repr(value)
    assert shown in message


def test_literal_error_suggests_the_close_value() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'bf16'"):
        config_from_dict(nested("train.precision", "bf61"))


@pytest.mark.parametrize("raw", [{"train": 3}, {"tune": ["a"]}, {"name": 3}, {"runs_dir": ["x"]}])
def test_wrong_shape_of_section_or_top_key(raw: dict[str, Any]) -> None:
    key = next(iter(raw))
    with pytest.raises(ConfigError, match=rf"^{key} must be"):
        config_from_dict(raw)


def test_non_mapping_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict(["train"])  # type: ignore[arg-type]


# ---------------------------------------------------------------- __post_init__ validation

INVALID = [
    ("runtime.num_cpus", 0),
    ("runtime.spark_executors", 0),
    ("runtime.spark_executor_cores", 0),
    ("data.image_size", 1),
    ("data.num_classes", 1),
    ("data.val_fraction", 0.0),
    ("data.val_fraction", 1.0),
    ("data.max_train_rows", 0),
    ("data.max_test_rows", 0),
    ("data.blocks_per_split", 0),
    ("train.max_epochs", 0),
    ("train.batch_size", 0),
    ("train.grad_accum_steps", 0),
    ("train.lr", 0.0),
    ("train.lr", -0.1),
    ("train.momentum", 1.0),
    ("train.weight_decay", -0.5),
    ("train.warmup_epochs", 10.0),
    ("train.warmup_epochs", -1.0),
    ("train.step_epochs", 0),
    ("train.step_gamma", 0.0),
    ("train.step_gamma", 1.5),
    ("train.min_lr_ratio", 1.0),
    ("train.label_smoothing", 1.0),
    ("train.num_workers", 0),
    ("train.cpus_per_worker", 0),
    ("train.eval_batch_size", 0),
    ("tune.num_samples", 0),
    ("tune.max_concurrent", 0),
    ("tune.grace_period", 0),
    ("tune.reduction_factor", 1),
    ("tune.n_startup_trials", 0),
    ("tune.time_budget_s", 0.0),
    ("model.kernel_size", 4),
    ("model.dropout", 1.0),
]


@pytest.mark.parametrize(("dotted", "value"), INVALID, ids=[f"{k}={v}" for k, v in INVALID])
def test_out_of_range_value_names_key_and_value(dotted: str, value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(nested(dotted, value))
    message = str(info.value)
    assert message.startswith(dotted), message
    assert f"but got {value}" in message


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("data.val_fraction", 0.5),
        ("train.step_gamma", 1.0),
        ("train.warmup_epochs", 9.5),
        ("train.momentum", 0.0),
        ("train.min_lr_ratio", 0.0),
        ("runtime.num_cpus", None),
        ("tune.max_concurrent", 1),
    ],
)
def test_boundary_values_that_are_allowed(dotted: str, value: Any) -> None:
    section, key = dotted.split(".")
    assert getattr(getattr(config_from_dict(nested(dotted, value)), section), key) == value


def test_label_names_must_match_num_classes() -> None:
    with pytest.raises(ConfigError, match=r"^data\.label_names must have num_classes=3 entries, but got 2"):
        config_from_dict({"data": {"num_classes": 3, "label_names": ["a", "b"]}})


def test_test_path_only_for_parquet() -> None:
    with pytest.raises(ConfigError, match=r"^data\.test_path"):
        config_from_dict({"data": {"source": "fashion_mnist", "test_path": "x.parquet"}})
    assert config_from_dict({"data": {"source": "parquet", "test_path": "x"}}).data.test_path == "x"


def test_fp16_needs_a_gpu() -> None:
    with pytest.raises(ConfigError, match=r"^train\.precision='fp16' needs use_gpu=true"):
        config_from_dict({"train": {"precision": "fp16"}})
    assert config_from_dict({"train": {"precision": "fp16", "use_gpu": True}}).train.precision == "fp16"


@pytest.mark.parametrize("name", ["", "a/b"])
def test_run_name_must_be_a_file_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"name must be a non-empty file name"):
        config_from_dict({"name": name})


def test_direct_construction_validates_too() -> None:
    # Sections built in code (not from YAML) get the same checks, named without a prefix.
    with pytest.raises(ConfigError, match=r"^lr must be > 0, but got -1"):
        TrainConfig(lr=-1)
    with pytest.raises(ConfigError, match=r"^spark_executors must be >= 1, but got 0"):
        RuntimeConfig(spark_executors=0)
    with pytest.raises(ConfigError, match=r"^val_fraction"):
        DataConfig(val_fraction=2.0)


def test_unknown_model_family_and_mismatched_model_config() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'cnn'"):
        config_from_dict({"model": {"name": "cnnn"}})
    with pytest.raises(ConfigError, match=r"must be a CNNConfig"):
        Config(model={"num_blocks": 2})


# ---------------------------------------------------------------- round trips


def _non_default_config() -> Config:
    return config_from_dict(
        {
            "name": "rt",
            "runs_dir": "/tmp/runs",
            "model": {"name": "cnn", "num_blocks": 3, "kernel_size": 5, "batch_norm": False, "head_width": 0},
            "runtime": {"ray_address": "auto", "num_cpus": 4, "spark_executor_memory": "1g"},
            "data": {
                "source": "parquet",
                "test_path": "test.parquet",
                "num_classes": 3,
                "label_names": ["x", "y", "z"],
                "max_train_rows": 100,
            },
            "train": {"lr": 0.05, "schedule": "step", "warmup_epochs": 0.5, "precision": "bf16"},
            "tune": {"num_samples": 3, "time_budget_s": 12.5, "max_concurrent": 2},
        }
    )


@pytest.mark.parametrize("config", [Config(), _non_default_config()], ids=["defaults", "non-defaults"])
def test_to_dict_round_trips(config: Config) -> None:
    data = config.to_dict()
    assert data["model"]["name"] == "cnn" and "model_name" not in data
    assert config_from_dict(data) == config
    # ... also through YAML text, as the resolved config is written next to every run.
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(data))) == config


# ---------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    ("override", "dotted", "expected"),
    [
        ("tune.num_samples=4", "tune.num_samples", 4),
        ("train.precision=bf16", "train.precision", "bf16"),
        ("train.lr=0.01", "train.lr", 0.01),
        ("train.use_gpu=true", "train.use_gpu", True),
        ("data.max_train_rows=null", "data.max_train_rows", None),
        ("data.label_names=[a, b]", "data.label_names", ["a", "b"]),
        ("name=a=b", "name", "a=b"),
        ("runtime.ray_address=", "runtime.ray_address", None),
        (" train.batch_size = 64", "train.batch_size", 64),
    ],
)
def test_override_values_are_parsed_as_yaml(override: str, dotted: str, expected: Any) -> None:
    out = apply_overrides({}, [override])
    node: Any = out
    for part in dotted.split("."):
        node = node[part]
    assert node == expected and type(node) is type(expected)


def test_overrides_apply_in_order_without_mutating_the_input() -> None:
    raw = {"train": {"lr": 0.1, "batch_size": 32}}
    out = apply_overrides(raw, ["train.lr=0.2", "train.lr=0.3", "model.num_blocks=3"])
    assert out == {"train": {"lr": 0.3, "batch_size": 32}, "model": {"num_blocks": 3}}
    assert raw == {"train": {"lr": 0.1, "batch_size": 32}}


def test_overrides_reach_the_typed_config() -> None:
    config = config_from_dict(apply_overrides({}, ["tune.num_samples=4", "train.precision=bf16", "train.lr=1e-3"]))
    assert config.tune.num_samples == 4
    assert config.train.precision == "bf16"
    assert config.train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("override", ["tune.num_samples", "=4", ""])
def test_malformed_override(override: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, [override])


def test_override_into_a_scalar_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"cannot set 'name\.x': 'name' is not a section"):
        apply_overrides({"name": "run"}, ["name.x=1"])


def test_overridden_unknown_key_is_caught_with_a_hint() -> None:
    with pytest.raises(ConfigError, match=r"'tune\.num_sample'.*did you mean 'num_samples'"):
        config_from_dict(apply_overrides({}, ["tune.num_sample=4"]))


# ---------------------------------------------------------------- load_config and check_paths


def _layout(tmp_path: Path, text: str) -> Path:
    """configs/run.yaml beside search_spaces/space.yaml, as in the repository."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "search_spaces").mkdir()
    (tmp_path / "search_spaces" / "space.yaml").write_text("train.lr: {}\n")
    path = tmp_path / "configs" / "run.yaml"
    path.write_text(text)
    return path


def test_load_config_reads_yaml_and_applies_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _layout(
        tmp_path,
        "name: demo\ntrain:\n  lr: 0.01\n  max_epochs: 3\ntune:\n  search_space: search_spaces/space.yaml\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(path, ["train.max_epochs=5", "tune.num_samples=2"])
    assert config.name == "demo"
    assert config.train.lr == 0.01 and config.train.max_epochs == 5
    assert config.tune.num_samples == 2
    # The relative search space is found next to the config's directory, not the working directory.
    assert Path(config.tune.search_space).resolve() == (tmp_path / "search_spaces" / "space.yaml").resolve()


def test_load_config_of_an_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config(path)
    assert dataclasses.replace(config, tune=TuneConfig()) == Config()


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist") as info:
        load_config(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_load_config_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_config(path)


def test_load_config_reports_unknown_key_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"'train\.lrr'.*did you mean 'lr'"):
        load_config(path)


def test_check_paths_passes_when_everything_exists(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("{}\n")
    config = config_from_dict({"data": {"path": str(tmp_path)}, "tune": {"search_space": str(space)}})
    check_paths(config)  # must not raise


def test_check_paths_names_the_missing_data_path(tmp_path: Path) -> None:
    config = config_from_dict({"data": {"path": str(tmp_path / "missing")}})
    with pytest.raises(ConfigError, match=r"^data\.path: path .*missing.* does not exist") as info:
        check_paths(config, need_search_space=False)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)


def test_check_paths_names_the_missing_test_path(tmp_path: Path) -> None:
    config = config_from_dict(
        {"data": {"source": "parquet", "path": str(tmp_path), "test_path": str(tmp_path / "t.parquet")}}
    )
    with pytest.raises(ConfigError, match=r"^data\.test_path: ") as info:
        check_paths(config, need_search_space=False)
    assert "apt-get" not in str(info.value)


def test_check_paths_search_space_only_when_needed(tmp_path: Path) -> None:
    config = config_from_dict(
        {"data": {"path": str(tmp_path)}, "tune": {"search_space": str(tmp_path / "none.yaml")}}
    )
    with pytest.raises(ConfigError, match=r"^tune\.search_space: "):
        check_paths(config)
    check_paths(config, need_search_space=False)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_and_its_search_space_validate(path):
    from hybrid.search_space import check_search_space, load_search_space

    config = load_config(path)
    check_search_space(load_search_space(config.tune.search_space), config)  # every edge value builds a config
