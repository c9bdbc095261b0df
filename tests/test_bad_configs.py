"""Bad configs and command lines fail at load: exit status 1, one line naming the key, the rule and the value.

Every case runs ``hybrid.cli.main`` in this process against a config that is valid except for the one
thing under test (its data path, search space and run directory exist), and must fail before the run
directory, Ray or Spark are touched: ``pipeline.run`` and ``runtime.running`` are replaced by functions
that fail the test if they are reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import hybrid.pipeline
import hybrid.runtime
from hybrid.cli import _check_score_paths, main
from hybrid.config import TuneMetric, check_agreement, check_before_start, load_config
from hybrid.errors import ConfigError
from hybrid.models import get_family, list_models
from hybrid.models.registry import TASK_METRICS

ROOT = Path(__file__).resolve().parents[1]
SPACE = str(ROOT / "search_spaces" / "cnn_fashion_mnist.yaml")
GOOD_ENTRY = {"name": "FloatDistribution", "attributes": {"low": 0.001, "high": 0.01, "log": True, "step": None}}


def base_config(tmp: Path) -> dict[str, Any]:
    """A config every check before start accepts: a CNN on 'Fashion-MNIST' in ``tmp``."""
    return {
        "name": "bad",
        "runs_dir": str(tmp / "runs"),
        "data": {"path": str(tmp)},
        "tune": {"search_space": SPACE},
    }


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` merged in one level deep (a section's keys are added, not replaced)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


@dataclass
class Case:
    """One bad input: what to write, how to call the CLI, and what the error line must contain."""

    id: str
    expect: tuple[str, ...]
    """Substrings of the error line: the key, a word of the rule, the value (in that spirit)."""
    changes: dict[str, Any] = field(default_factory=dict)
    """Merged into :func:`base_config` (ignored when ``text`` is set)."""
    text: str | bytes | None = None
    """The config file's raw content, instead of YAML of the merged dict."""
    sets: tuple[str, ...] = ()
    command: str = "tune"
    args: tuple[str, ...] = ()
    """Extra CLI arguments; ``{tmp}`` is replaced by the test's directory."""
    files: dict[str, str | bytes] = field(default_factory=dict)
    """Extra files written under the test's directory (``{tmp}`` replaced in text)."""


def space_file(name: str) -> dict[str, Any]:
    return {"tune": {"search_space": f"{{tmp}}/{name}"}}


MODEL_DIR_FILES = {"model/model.json": "{}", "model/manifest.json": '{"files": {}}', "in.parquet": b"PAR1"}
SCORE = ("--model", "{tmp}/model", "--input", "{tmp}/in.parquet")

CASES = [
    # --- the tuned metric against the family's task
    Case("metric-f1-for-cnn", ("tune.metric", "one of", "'val_f1'", "classification"),
         {"tune": {"metric": "val_f1"}}),
    Case("metric-exact-match-for-cnn", ("tune.metric", "one of", "'val_exact_match'"),
         {"tune": {"metric": "val_exact_match"}}, command="run"),
    Case("metric-accuracy-for-bert-qa", ("tune.metric", "one of", "'val_accuracy'", "spans"),
         {"model": {"name": "bert_qa", "pretrained_dir": "{tmp}"},
          "data": {"source": "squad", "modality": "qa", "path": "{tmp}"}}),
    Case("metric-not-a-metric", ("tune.metric", "one of", "'accuracy'", "did you mean"),
         {"tune": {"metric": "accuracy"}}),
    # --- distill.student against the family's config
    Case("student-unknown-key", ("distill.student.num_blockz", "unknown", "did you mean 'num_blocks'"),
         {"distill": {"student": {"num_blockz": 2}}}),
    Case("student-value-out-of-range", ("distill.student.num_blocks", "in [1, 5]", "9"),
         {"distill": {"student": {"num_blocks": 9}}}),
    Case("student-literal", ("distill.student.pooling", "one of", "'mean'"),
         {"distill": {"student": {"pooling": "mean"}}}, command="distill"),
    Case("student-not-a-mapping", ("distill.student", "mapping", "5"), {"distill": {"student": 5}}),
    Case("student-classes-differ", ("distill.student.num_classes", "equal", "data.num_classes=10", "5"),
         {"distill": {"student": {"num_classes": 5}}}),
    Case("student-windows-differ-from-the-teacher", ("distill.student.doc_stride", "must not be set", "'bert_qa'",
                                                     "16"),
         {"model": {"name": "bert_qa", "pretrained_dir": "{tmp}"}, "tune": {"metric": "val_f1"},
          "data": {"source": "squad", "modality": "qa", "path": "{tmp}"}, "distill": {"student": {"doc_stride": 16}}}),
    Case("student-set-typo", ("distill.student.kernal_size", "unknown", "did you mean 'kernel_size'"),
         sets=("distill.student={kernal_size: 5}",)),
    # --- --set values
    Case("set-unclosed-list", ("--set train.lr", "valid YAML", "'[1'", "line 1, column 3"), sets=("train.lr=[1",)),
    Case("set-python-tag", ("--set train.lr", "valid YAML", "!!python/object"),
         sets=("train.lr=!!python/object:os.system x",)),
    Case("set-no-equals", ("--set", "key=value", "'train.lr'"), sets=("train.lr",)),
    Case("set-empty-part", ("--set", "dotted key", "'train..lr=1'"), sets=("train..lr=1",)),
    Case("set-drops-section", ("--set train", "section", "null"), sets=("train=",)),
    Case("set-drops-model", ("--set model", "section", "null"), sets=("model=",), command="run"),
    Case("set-empties-section", ("--set tune", "empty mapping", "'{}'"), sets=("tune={}",)),
    Case("set-into-scalar", ("name.x", "not a section", "'name'"), sets=("name.x=1",)),
    # --- the config file itself
    Case("file-not-utf8", ("config file", "UTF-8", "0xe9", "line 2"), text=b"name: bad\ntrain: {lr: caf\xe9}\n"),
    Case("file-bad-yaml", ("config file", "valid YAML", "line 2"), text="train:\n\tlr: 0.1\n"),
    Case("file-duplicate-key", ("config file", "'lr' appears twice", "line 3"), text="train:\n  lr: 0.1\n  lr: 0.2\n"),
    Case("file-is-a-list", ("config", "mapping of sections", "[1, 2]"), text="[1, 2]\n"),
    Case("file-is-a-scalar", ("config", "mapping of sections", "'hello'"), text="hello\n"),
    Case("file-missing", ("config file", "does not exist", "nope.yaml"), args=("{tmp}/nope.yaml",)),
    Case("file-is-a-directory", ("config file", "must be a file", "'{tmp}'"), args=("{tmp}",)),
    Case("unknown-top-key", ("'trian'", "unknown", "did you mean 'train'"), {"trian": {"lr": 0.1}}),
    Case("section-not-a-mapping", ("train", "mapping", "3"), {"train": 3}),
    Case("model-is-a-number", ("model", "mapping", "5"), {"model": 5}),
    Case("model-name-typo", ("model.name", "one of", "'cnnn'", "did you mean 'cnn'"), {"model": {"name": "cnnn"}}),
    Case("model-name-number", ("model.name", "one of", "5"), {"model": {"name": 5}}),
    # --- the run name: one safe path component
    Case("name-dotdot", ("name", "file name", "'..'"), {"name": ".."}),
    Case("name-dot", ("name", "file name", "'.'"), {"name": "."}),
    Case("name-slash", ("name", "file name", "'a/b'"), {"name": "a/b"}),
    Case("name-backslash", ("name", "file name", "'a\\\\b'"), {"name": "a\\b"}),
    Case("name-hidden", ("name", "leading '.'", "'.hidden'"), {"name": ".hidden"}),
    Case("name-newline", ("name", "control characters", "'a\\nb'"), {"name": "a\nb"}),
    Case("name-nul", ("name", "NUL", "'a\\x00b'"), {"name": "a\0b"}),
    Case("name-too-long", ("name", "at most 100", "'xxxx"), {"name": "x" * 101}),
    Case("name-empty", ("name", "non-empty", "''"), sets=("name=''",)),
    # --- finite numbers everywhere
    Case("lr-inf", ("train.lr", "finite", "inf"), {"train": {"lr": float("inf")}}),
    Case("lr-nan", ("train.lr", "finite", "nan"), {"train": {"lr": float("nan")}}),
    Case("lr-huge-exponent", ("train.lr", "finite", "'1e999'"), sets=("train.lr=1e999",)),
    Case("lr-huge-int", ("train.lr", "finite", "1000000"), {"train": {"lr": 10**400}}),
    Case("temperature-minus-inf", ("distill.temperature", "finite", "-inf"), sets=("distill.temperature=-.inf",)),
    Case("time-budget-inf", ("tune.time_budget_s", "finite", "inf"), {"tune": {"time_budget_s": float("inf")}}),
    Case("val-fraction-nan", ("data.val_fraction", "finite", "nan"), {"data": {"val_fraction": float("nan")}}),
    Case("dropout-nan", ("model.dropout", "finite", "nan"), {"model": {"dropout": float("nan")}}),
    Case("quantize-drop-inf", ("quantize.max_accuracy_drop", "finite", "inf"), sets=("quantize.max_accuracy_drop=.inf",)),
    # --- sections that must agree, paths, sizes
    Case("classes-differ", ("model.num_classes", "equal", "data.num_classes=10", "3"), {"model": {"num_classes": 3}}),
    Case("image-size-differs", ("model.image_size", "equal", "data.image_size=28", "32"), {"model": {"image_size": 32}}),
    Case("modality-for-family", ("data.modality", "'images'", "'text'"),
         {"data": {"source": "parquet", "modality": "text"}}),
    Case("label-names-repeat", ("data.label_names", "distinct", "['a', 'a']"),
         {"data": {"num_classes": 2, "label_names": ["a", "a"]}}),
    Case("text-column-is-label", ("data.label_column", "differ", "'y'"),
         {"data": {"source": "parquet", "modality": "text", "text_column": "y", "label_column": "y"}}),
    Case("data-path-missing", ("data.path", "does not exist", "nowhere"), {"data": {"path": "{tmp}/nowhere"}}),
    Case("data-path-nul", ("data.path", "NUL", "'/x\\x00y'"), {"data": {"path": "/x\0y"}}),
    Case("runs-dir-is-a-file", ("runs_dir", "directory", "afile"), {"runs_dir": "{tmp}/afile/runs"},
         files={"afile": "x"}),
    Case("spark-memory-no-unit", ("runtime.spark_executor_memory", "unit", "'2 gigs'"),
         {"runtime": {"spark_executor_memory": "2 gigs"}}),
    Case("spark-memory-bare-number", ("runtime.spark_driver_memory", "unit", "'2048'"),
         sets=("runtime.spark_driver_memory='2048'",)),
    # --- search space files
    Case("space-bad-yaml", ("tune.search_space", "valid YAML", "line 2"), space_file("s.yaml"),
         files={"s.yaml": "train.lr: {name: [\n"}),
    Case("space-not-utf8", ("tune.search_space", "UTF-8", "0xff"), space_file("s.yaml"), files={"s.yaml": b"\xff\n"}),
    Case("space-is-a-list", ("tune.search_space", "non-empty mapping", "['train.lr']"), space_file("s.yaml"),
         files={"s.yaml": "[train.lr]\n"}),
    Case("space-entry-not-a-distribution", ("tune.search_space", "'train.lr'", "Optuna distribution", "'Uniform'"),
         space_file("s.yaml"), files={"s.yaml": "train.lr: {name: Uniform, attributes: {}}\n"}),
    Case("space-low-above-high", ("tune.search_space", "low <= high", "low=0.1"), space_file("s.yaml"),
         files={"s.yaml": "train.lr: {name: FloatDistribution, attributes: {low: 0.1, high: 0.01}}\n"}),
    Case("space-unknown-key", ("'train.lrr'", "not a field", "did you mean 'lr'"), space_file("s.yaml"),
         files={"s.yaml": yaml.safe_dump({"train.lrr": GOOD_ENTRY})}),
    Case("space-edge-invalid", ("train.lr", "> 0", "0.0"), space_file("s.yaml"),
         files={"s.yaml": yaml.safe_dump({"train.lr": {**GOOD_ENTRY, "attributes": {
             "low": 0.0, "high": 0.01, "log": False, "step": None}}})}),
    Case("space-duplicate-key", ("tune.search_space", "'train.lr' appears twice", "line 2"), space_file("s.yaml"),
         files={"s.yaml": f"train.lr: {json.dumps(GOOD_ENTRY)}\ntrain.lr: {json.dumps(GOOD_ENTRY)}\n"}),
    # --- hybrid score: every path is checked before Ray and Spark start
    Case("score-input-missing", ("--input", "must exist", "nope.parquet"), command="score",
         args=("--model", "{tmp}/model", "--input", "{tmp}/nope.parquet", "--output", "{tmp}/out"),
         files=MODEL_DIR_FILES),
    Case("score-output-exists", ("--output", "must not exist", "'{tmp}/taken'", "--overwrite"), command="score",
         args=(*SCORE, "--output", "{tmp}/taken"), files={**MODEL_DIR_FILES, "taken/part-0.parquet": b"PAR1"}),
    Case("score-model-missing", ("--model", "model directory", "'{tmp}/nomodel'"), command="score",
         args=("--model", "{tmp}/nomodel", "--input", "{tmp}/in.parquet", "--output", "{tmp}/out"),
         files=MODEL_DIR_FILES),
    Case("score-model-not-a-model", ("--model", "hybrid model directory", "model.json"), command="score",
         args=("--model", "{tmp}", "--input", "{tmp}/in.parquet", "--output", "{tmp}/out"), files=MODEL_DIR_FILES),
    Case("score-output-is-input", ("--output", "differ from --input", "in.parquet"), command="score",
         args=(*SCORE, "--output", "{tmp}/in.parquet", "--overwrite"), files=MODEL_DIR_FILES),
    Case("score-output-is-model", ("--output", "model directory", "'{tmp}/model'"), command="score",
         args=(*SCORE, "--output", "{tmp}/model", "--overwrite"), files=MODEL_DIR_FILES),
    Case("score-bad-batch-size", ("score.batch_size", ">= 1", "0"), {"score": {"batch_size": 0}}, command="score",
         args=(*SCORE, "--output", "{tmp}/out"), files=MODEL_DIR_FILES),
]


def _fill(value: Any, tmp: Path) -> Any:
    """``value`` with ``{tmp}`` replaced in every string."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: _fill(v, tmp) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_fill(v, tmp) for v in value)
    return value


@pytest.fixture
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the CLI gets as far as running stages or starting Ray and Spark."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the CLI went past its checks: it started the pipeline or the runtime")

    monkeypatch.setattr(hybrid.pipeline, "run", refuse)
    monkeypatch.setattr(hybrid.runtime, "running", refuse)


def _write_case(case: Case, tmp: Path) -> Path:
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(_fill(content, tmp))
    config = tmp / "config.yaml"
    if isinstance(case.text, bytes):
        config.write_bytes(case.text)
    elif case.text is not None:
        config.write_text(case.text)
    else:
        # allow_unicode keeps '\0' and '\n' in names as YAML escapes, not as raw bytes
        config.write_text(yaml.safe_dump(_fill(merged(base_config(tmp), case.changes), tmp), allow_unicode=False))
    return config


@pytest.mark.usefixtures("nothing_starts")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_1_with_one_line_naming_key_rule_and_value(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_case(case, tmp_path)
    args = [_fill(a, tmp_path) for a in case.args]
    if not args or args[0].startswith("--"):
        args = [str(config), *args]
    argv = [case.command, *args]
    for item in case.sets:
        argv += ["--set", item]

    status = main(argv)

    out, err = capsys.readouterr()
    assert status == 1, err
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line: {err!r}"
    line = err.rstrip("\n")
    assert line.startswith(f"hybrid {case.command}: error: ")
    for part in case.expect:
        assert _fill(part, tmp_path) in line, f"{part!r} not in {line!r}"
    assert not (tmp_path / "runs").exists(), "the run directory was made before the config was checked"


def test_there_are_at_least_40_cases() -> None:
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


# ---------------------------------------------------------------- the controls: valid inputs pass every check


def test_the_base_config_passes_every_check_before_start(tmp_path: Path) -> None:
    config = _write_case(Case("valid", ()), tmp_path)
    check_before_start(load_config(config))  # so each case above fails for its own reason only


def test_valid_score_paths_pass(tmp_path: Path) -> None:
    _write_case(Case("valid", (), files={**MODEL_DIR_FILES, "taken/x": "x"}), tmp_path)
    _check_score_paths(str(tmp_path / "in.parquet"), str(tmp_path / "model"), str(tmp_path / "out"), overwrite=False)
    _check_score_paths(str(tmp_path / "in.parquet"), str(tmp_path / "model"), str(tmp_path / "taken"), overwrite=True)
    # remote tables are Spark's to find
    _check_score_paths("s3a://bucket/in", str(tmp_path / "model"), "s3a://bucket/out", overwrite=False)


def test_overwrite_is_documented_in_score_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["score", "--help"])
    assert info.value.code == 0
    assert "--overwrite" in capsys.readouterr().out


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_agree_across_sections(path: Path) -> None:
    check_agreement(load_config(path))


def test_a_section_left_empty_in_the_file_still_takes_its_defaults(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  # lr: 0.1\n")
    assert load_config(config).train.lr == 2e-3


def test_yaml_merge_keys_may_override_what_they_merge(tmp_path: Path) -> None:
    from hybrid._yaml import read_yaml

    path = tmp_path / "m.yaml"
    path.write_text("a: &a {lr: 0.1, batch_size: 8}\nb:\n  <<: *a\n  lr: 0.2\n")
    assert read_yaml(path, "file")["b"] == {"lr": 0.2, "batch_size": 8}


# ---------------------------------------------------------------- the family owns its metrics


def test_every_metric_a_family_allows_is_a_tune_metric() -> None:
    from typing import get_args

    allowed = set(get_args(TuneMetric))
    for name in list_models():
        family = get_family(name)
        assert family.metrics == TASK_METRICS[family.task]
        assert set(family.metrics) <= allowed
    assert set().union(*TASK_METRICS.values()) == allowed


def test_check_type_rejects_non_finite_floats_directly() -> None:
    from hybrid._dataclass_io import check_type

    for value in (float("inf"), float("-inf"), float("nan"), "1e400", 10**400):
        with pytest.raises(ConfigError, match=r"^k must be a finite number"):
            check_type(value, float, "k")
    assert check_type("1e-3", float, "k") == 1e-3

