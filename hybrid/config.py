"""Typed configs for every stage, loaded from one YAML file plus ``--set key=value`` overrides.

A run config has the sections ``runtime``, ``data``, ``model``, ``train``, ``tune``, ``distill``, ``quantize``,
``compression``, ``score`` and ``tracking``. Every section is
a frozen dataclass validated in ``__post_init__``; unknown keys and out-of-range values raise
:class:`~hybrid.errors.ConfigError` naming the dotted key, the rule and the value.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from hybrid._dataclass_io import check_type, from_dict, require, show, to_dict
from hybrid._yaml import parse_yaml, read_yaml
from hybrid.errors import ConfigError, did_you_mean
from hybrid.distill import DistillConfig
from hybrid.models import get_family, model_config
from hybrid.pareto import CompressionConfig, Mode, Objective, parse_objectives
from hybrid.quantize import QuantizeConfig
from hybrid.rundir import DEFAULT_RUNS_DIR
from hybrid.tracking import TrackingConfig

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Schedule = Literal["constant", "step", "cosine", "onecycle"]
Optimizer = Literal["sgd", "adamw"]
TuneMetric = Literal[
    "val_accuracy", "val_macro_f1", "val_macro_precision", "val_macro_recall", "val_loss", "val_f1", "val_exact_match"
]
"""Every metric some family reports; which of them a run may tune is the family's (``ModelFamily.metrics``)."""
CandidateMetric = Literal["latency_ms", "size_bytes", "params"]
"""What each compressed candidate is measured on besides its validation metrics, all minimised: latency in ms
per sample, file size in bytes and parameter count of the int8 model."""
_MEMORY_SIZE = re.compile(r"[1-9]\d*[kmgt]b?", re.IGNORECASE)
"""Spark and RayDP read a bare number differently (MiB and bytes): a unit is required."""
_MAX_NAME_CHARS = 100


@dataclass(frozen=True)
class RuntimeConfig:
    """Where Ray runs and how Spark is laid on it through RayDP."""

    ray_address: str | None = None
    """Address of an existing Ray cluster (``auto``, ``host:6379``, ``ray://host:10001``...); ``null`` (or
    ``local``) starts hybrid's own local Ray, even beside a running cluster or with ``RAY_ADDRESS`` set."""
    num_cpus: int | None = None
    """CPUs of the local Ray (``null``: all of this machine's); ignored when connecting to a cluster."""
    spark_executors: int = 1
    """Number of Spark executors (each a Ray actor)."""
    spark_executor_cores: int = 1
    """CPU cores per Spark executor."""
    spark_executor_memory: str = "2g"
    """Memory per Spark executor (JVM heap), e.g. ``2g``."""
    spark_driver_memory: str = "2g"
    """Memory of the Spark driver JVM, e.g. ``2g``."""
    release_spark_for_training: bool = True
    """Stop Spark once the data sets are in Ray's object store, so training gets its CPUs back."""
    max_failures: int = 3
    """Times one training run (a trial, the student) is resumed from its last checkpoint after a lost node or
    worker process; a diverged or failing training is never retried."""

    def __post_init__(self) -> None:
        require(self.num_cpus is None or self.num_cpus >= 1, f"num_cpus must be >= 1, but got {self.num_cpus}")
        require(self.max_failures >= 0, f"max_failures must be >= 0, but got {self.max_failures}")
        require(self.spark_executors >= 1, f"spark_executors must be >= 1, but got {self.spark_executors}")
        require(
            self.spark_executor_cores >= 1,
            f"spark_executor_cores must be >= 1, but got {self.spark_executor_cores}",
        )
        for key in ("spark_executor_memory", "spark_driver_memory"):
            value = getattr(self, key)
            require(
                _MEMORY_SIZE.fullmatch(str(value)) is not None,
                f"{key} must be a whole size with a unit (k, m, g or t), such as 512m or 2g, but got {show(value)}",
            )


@dataclass(frozen=True)
class DataConfig:
    """Where the labelled examples come from and how they are validated and split."""

    source: Literal["fashion_mnist", "parquet", "sentence_polarity", "csv", "squad"] = "fashion_mnist"
    """``fashion_mnist``: the IDX files under ``path``; ``parquet``/``csv``: a user table (``label`` and the pixels,
    ``pixels`` or as ``feature_columns`` / ``pixel_prefix`` say, for images; ``text_column`` and ``label_column`` for
    text); ``sentence_polarity``: the rated movie-review
    sentences file; ``squad``: SQuAD v1.1/v2 JSON (question answering)."""
    modality: Literal["images", "text", "qa"] = "images"
    """What a row holds: an image, a text to classify, or a question with its context and answers."""
    path: str = "/usr/share/datasets/fashion-mnist"
    """Directory of the IDX files, or the training table (file or directory)."""
    test_path: str | None = None
    """Held-out test table (``parquet``/``csv``/``squad``); without it ``test_fraction`` of ``path`` is held out."""
    test_fraction: float = 0.0
    """Fraction of each class held out as the test split when the source has no test table."""
    text_column: str = "text"
    """Text sources: the column holding the text."""
    label_column: str = "label"
    """Text sources: the column holding the label (integers in ``[0, num_classes)`` or names in ``label_names``)."""
    max_seq_length: int = 128
    """Text: tokens kept per row at tokenisation (the model's ``max_length`` may truncate further per batch)."""
    image_size: int = 28
    """Height and width of the square images; rows must hold ``image_size**2`` pixels."""
    feature_columns: tuple[str, ...] = ()
    """Images from ``parquet``/``csv``: the columns holding each row's pixels, in order: one numeric column per
    pixel, or a single column holding an array of numbers or a ``pyspark.ml.linalg`` Vector (dense or sparse, as
    ``VectorAssembler`` writes). Empty: the ``pixels`` column (an array or a Vector). See :mod:`hybrid.features`."""
    pixel_prefix: str | None = None
    """Images from ``parquet``/``csv``: every column named this prefix followed by a number holds one pixel, in
    numeric order (``pixel2`` before ``pixel10``), as in ``label,pixel0,...,pixel783`` CSV files. Set at most one
    of ``feature_columns`` and ``pixel_prefix``."""
    num_classes: int = 10
    """Labels must be integers in ``[0, num_classes)``."""
    label_names: tuple[str, ...] = ()
    """Names of the classes, by label; empty means the source's own names (or the numbers)."""
    val_fraction: float = 0.1
    """Fraction of each class of the training table held out for validation."""
    seed: int = 0
    """Seed of the stratified train/validation split."""
    max_train_rows: int | None = None
    """Use only the first N rows of the training table (quick runs and tests); ``sentence_polarity``, whose
    file is ordered by class, takes a seeded sample of N rows instead."""
    max_test_rows: int | None = None
    """Use only the first N rows of the test table."""
    blocks_per_split: int = 4
    """At least this many Parquet files (hence Ray read tasks and blocks) per split at the hand-off to Ray."""

    def __post_init__(self) -> None:
        require(self.image_size >= 2, f"image_size must be >= 2, but got {self.image_size}")
        require(self.num_classes >= 2, f"num_classes must be >= 2, but got {self.num_classes}")
        require(
            not self.label_names or len(self.label_names) == self.num_classes,
            f"label_names must have num_classes={self.num_classes} entries, but got {len(self.label_names)}",
        )
        require(
            len(set(self.label_names)) == len(self.label_names),
            f"label_names must be distinct (a name maps to one label), but got {list(self.label_names)}",
        )
        require(
            self.modality != "text" or self.text_column != self.label_column,
            f"label_column must differ from text_column, but both are {self.text_column!r}",
        )
        require(0.0 < self.val_fraction < 1.0, f"val_fraction must be in (0, 1), but got {self.val_fraction}")
        for key in ("max_train_rows", "max_test_rows"):
            value = getattr(self, key)
            require(value is None or value >= 1, f"{key} must be >= 1, but got {value}")
        require(self.blocks_per_split >= 1, f"blocks_per_split must be >= 1, but got {self.blocks_per_split}")
        require(
            self.source in ("parquet", "csv", "squad") or self.test_path is None,
            f"test_path is only read for the parquet, csv and squad sources, not {self.source!r}",
        )
        require(0.0 <= self.test_fraction < 1.0, f"test_fraction must be in [0, 1), but got {self.test_fraction}")
        require(self.max_seq_length >= 8, f"max_seq_length must be >= 8, but got {self.max_seq_length}")
        expected = {"fashion_mnist": "images", "sentence_polarity": "text", "squad": "qa"}.get(self.source)
        require(
            expected is None or self.modality == expected,
            f"modality must be {expected!r} for source={self.source!r}, but got {self.modality!r}",
        )
        self._check_feature_keys()

    def _check_feature_keys(self) -> None:
        """``feature_columns`` and ``pixel_prefix``: at most one, for image tables only, well formed."""
        chosen = [key for key in ("feature_columns", "pixel_prefix") if getattr(self, key) not in ((), None)]
        require(
            len(chosen) < 2,
            f"feature_columns and data.pixel_prefix each choose the feature columns, so at most one may be set, but "
            f"got feature_columns={list(self.feature_columns)} and pixel_prefix={self.pixel_prefix!r}",
        )
        for key in chosen:
            require(self.modality == "images",
                    f"{key} names the pixel columns of image tables (modality 'images'), but modality is "
                    f"{self.modality!r}; remove it")
            require(self.source in ("parquet", "csv"),
                    f"{key} names columns of a user table (source 'parquet' or 'csv'), but source is {self.source!r}, "
                    "which has no such columns; remove it")
        require(self.pixel_prefix != "", "pixel_prefix must be a non-empty column-name prefix such as 'pixel', but "
                                         "got ''")
        for i, name in enumerate(self.feature_columns):
            require(bool(name), f"feature_columns[{i}] must be a column name, but got {name!r}")
        twice = sorted({n for n in self.feature_columns if self.feature_columns.count(n) > 1})
        require(not twice, f"feature_columns must name each column once, but got {twice} more than once")
        require(
            self.source != "csv" or self.modality != "images" or bool(chosen),
            "source='csv' with modality 'images' needs pixel_prefix (e.g. 'pixel' for label,pixel0,...,pixel783) or "
            "feature_columns, because a CSV cell cannot hold an array, but got neither",
        )


@dataclass(frozen=True)
class TrainConfig:
    """The one training loop's settings (Ray Train ``TorchTrainer``)."""

    max_epochs: int = 10
    """Epochs per trial (ASHA may stop a trial earlier)."""
    batch_size: int = 128
    """Samples per optimiser step per worker, before gradient accumulation."""
    grad_accum_steps: int = 1
    """Micro-batches whose gradients are summed before each optimiser step."""
    optimizer: Optimizer = "adamw"
    """``sgd`` (with Nesterov momentum) or ``adamw``."""
    lr: float = 2e-3
    """Peak learning rate (reached after warm-up)."""
    momentum: float = 0.9
    """SGD momentum (ignored by AdamW)."""
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW) or L2 penalty (SGD)."""
    schedule: Schedule = "onecycle"
    """Learning-rate schedule after warm-up."""
    warmup_epochs: float = 0.0
    """Linear warm-up from 0 to ``lr`` over this many epochs (fractions allowed)."""
    step_epochs: int = 3
    """``step`` schedule: epochs between decays."""
    step_gamma: float = 0.3
    """``step`` schedule: multiplier at each decay."""
    min_lr_ratio: float = 0.0
    """``cosine``/``onecycle``: final learning rate as a fraction of ``lr``."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss."""
    precision: Precision = "fp32"
    """Autocast precision: ``bf16`` works on CPU and GPU, ``fp16`` on GPU only; ``auto`` is ``bf16`` on a GPU or
    a CPU with native bf16 (AVX512-BF16, AMX), else ``fp32`` (bf16 is 4x slower than fp32 on AVX2-only CPUs)."""
    num_workers: int = 1
    """Ray Train workers (DDP when more than one)."""
    cpus_per_worker: int = 1
    """CPUs reserved by each training worker (also its torch thread count)."""
    use_gpu: bool = False
    """Give each worker one GPU."""
    eval_batch_size: int = 1024
    """Batch size for validation and test evaluation."""
    seed: int = 0
    """Seed of weight initialisation and data order."""

    def __post_init__(self) -> None:
        require(self.max_epochs >= 1, f"max_epochs must be >= 1, but got {self.max_epochs}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, but got {self.batch_size}")
        require(self.grad_accum_steps >= 1, f"grad_accum_steps must be >= 1, but got {self.grad_accum_steps}")
        require(self.lr > 0, f"lr must be > 0, but got {self.lr}")
        require(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), but got {self.momentum}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, but got {self.weight_decay}")
        require(
            0.0 <= self.warmup_epochs < self.max_epochs,
            f"warmup_epochs must be in [0, max_epochs={self.max_epochs}), but got {self.warmup_epochs}",
        )
        require(self.step_epochs >= 1, f"step_epochs must be >= 1, but got {self.step_epochs}")
        require(0.0 < self.step_gamma <= 1.0, f"step_gamma must be in (0, 1], but got {self.step_gamma}")
        require(0.0 <= self.min_lr_ratio < 1.0, f"min_lr_ratio must be in [0, 1), but got {self.min_lr_ratio}")
        require(
            0.0 <= self.label_smoothing < 1.0,
            f"label_smoothing must be in [0, 1), but got {self.label_smoothing}",
        )
        require(self.num_workers >= 1, f"num_workers must be >= 1, but got {self.num_workers}")
        require(self.cpus_per_worker >= 1, f"cpus_per_worker must be >= 1, but got {self.cpus_per_worker}")
        require(
            self.precision != "fp16" or self.use_gpu,
            "precision='fp16' needs use_gpu=true (CPU autocast supports bf16 only)",
        )
        require(self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, but got {self.eval_batch_size}")


@dataclass(frozen=True)
class TuneConfig:
    """Ray Tune search: Optuna TPE proposes, ASHA stops early."""

    search_space: str = "search_spaces/cnn_fashion_mnist.yaml"
    """YAML file of Optuna distributions keyed by dotted config keys (relative paths: from the config file)."""
    num_samples: int = 8
    """Number of trials."""
    max_concurrent: int | None = None
    """Trials at once; ``null`` sizes it from the cluster's CPUs (GPUs) and each trial's workers."""
    metric: TuneMetric = "val_accuracy"
    """Validation metric that ASHA and Optuna optimise."""
    grace_period: int = 1
    """ASHA: epochs every trial runs before it can be stopped."""
    reduction_factor: int = 3
    """ASHA: only the top 1/reduction_factor of trials continue at each rung."""
    seed: int = 0
    """Seed of Optuna's TPE sampler."""
    n_startup_trials: int = 3
    """Random trials before TPE starts modelling."""
    time_budget_s: float | None = None
    """Stop starting new trials after this many seconds (``null``: no limit)."""
    objectives: tuple[Any, ...] = ()
    """Several objectives (compression-aware search): ``[{val_accuracy: max}, {latency_ms: min}, ...]`` or the
    long ``[{metric: val_accuracy, mode: max}, ...]``; read into :class:`~hybrid.pareto.Objective`. Empty: only
    ``metric``, exactly as a single-objective search. The list must include ``metric`` (ASHA stops trials on
    it); each metric keeps its one sensible direction (``val_loss`` and the candidate metrics ``latency_ms``,
    ``size_bytes``, ``params`` are minimised, the other validation metrics maximised)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "objectives", parse_objectives(self.objectives, key="objectives"))
        known = [*get_args(TuneMetric), *get_args(CandidateMetric)]
        for i, objective in enumerate(self.objectives):
            require(objective.metric in known, f"objectives[{i}] must name one of {known}, but got "
                                               f"{objective.metric!r}{did_you_mean(objective.metric, known)}")
            mode = metric_mode(objective.metric)
            require(objective.mode == mode, f"objectives[{i}]: {objective.metric} can only be {mode}imised, but got "
                                            f"mode {objective.mode!r}")
        names = [o.metric for o in self.objectives]
        require(not names or self.metric in names,
                f"objectives must include metric={self.metric!r} (ASHA stops trials on it), but got {names}; "
                f"add {{{self.metric}: {self.mode}}} or set tune.metric to one of them")
        require(self.num_samples >= 1, f"num_samples must be >= 1, but got {self.num_samples}")
        require(
            self.max_concurrent is None or self.max_concurrent >= 1,
            f"max_concurrent must be >= 1, but got {self.max_concurrent}",
        )
        require(self.grace_period >= 1, f"grace_period must be >= 1, but got {self.grace_period}")
        require(self.reduction_factor >= 2, f"reduction_factor must be >= 2, but got {self.reduction_factor}")
        require(self.n_startup_trials >= 1, f"n_startup_trials must be >= 1, but got {self.n_startup_trials}")
        require(
            self.time_budget_s is None or self.time_budget_s > 0,
            f"time_budget_s must be > 0, but got {self.time_budget_s}",
        )

    @property
    def mode(self) -> Literal["min", "max"]:
        """Whether ``metric`` is minimised or maximised."""
        return metric_mode(self.metric)

    @property
    def resolved_objectives(self) -> tuple[Objective, ...]:
        """``objectives``, or ``metric`` alone when none are given."""
        return self.objectives or (Objective(self.metric, self.mode),)

    @property
    def multi_objective(self) -> bool:
        """Whether the search has more than one objective."""
        return len(self.resolved_objectives) > 1


def metric_mode(metric: str) -> Mode:
    """The one sensible direction of a metric: ``val_loss`` and the candidate metrics are minimised."""
    return "min" if metric == "val_loss" or metric in get_args(CandidateMetric) else "max"


@dataclass(frozen=True)
class ScoreConfig:
    """Spark batch scoring of the shipped model (the last stage of ``hybrid run``)."""

    model: Literal["auto", "teacher", "student", "student_int8"] = "auto"
    """Which model scores: ``auto`` is the int8 student when it passed the accuracy gate, else the float student."""
    batch_size: int = 256
    """Rows per forward pass inside each Spark task."""

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, f"batch_size must be >= 1, but got {self.batch_size}")


@dataclass(frozen=True)
class Config:
    """A whole run: ``hybrid tune CONFIG.yaml`` reads one of these."""

    name: str = "run"
    """Run name: outputs go to ``<runs_dir>/<name>/``."""
    runs_dir: str = DEFAULT_RUNS_DIR
    """Parent directory of run directories (relative paths: from the working directory)."""
    model_name: str = "cnn"
    """Model family (``model.name`` in YAML)."""
    model: Any = None
    """Architecture config of the family (``model.*`` in YAML)."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Ray and Spark-on-Ray."""
    data: DataConfig = field(default_factory=DataConfig)
    """Ingest."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training loop."""
    tune: TuneConfig = field(default_factory=TuneConfig)
    """Search."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Student and distillation loss."""
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    """int8 post-training quantization and its accuracy gate."""
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    """The compression search (students and their int8 settings, scored after int8) and which candidate ships."""
    score: ScoreConfig = field(default_factory=ScoreConfig)
    """Spark batch scoring."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow tracking of each run (off unless ``tracking.mlflow_uri`` is set)."""

    def __post_init__(self) -> None:
        _check_name(self.name)
        require(
            isinstance(self.runs_dir, str) and bool(self.runs_dir),
            f"runs_dir must be a non-empty path, but got {show(self.runs_dir)}",
        )
        family = get_family(self.model_name)
        if self.model is None:
            object.__setattr__(self, "model", family.config_cls())
        require(
            isinstance(self.model, family.config_cls),
            f"model must be a {family.config_cls.__name__} for model.name={self.model_name!r}",
        )
        if family.check_config is not None:
            family.check_config(self.model)  # fails at load, and for every search-space edge value, not in a worker
        require(
            self.tune.metric in family.metrics,
            f"tune.metric must be one of {list(family.metrics)} for model.name={self.model_name!r} "
            f"({family.task}), but got {self.tune.metric!r}",
        )
        for i, objective in enumerate(self.tune.objectives):
            require(
                objective.metric in family.metrics or not objective.metric.startswith("val_"),
                f"tune.objectives[{i}] must be one of {list(family.metrics)} or a candidate metric "
                f"{list(get_args(CandidateMetric))} for model.name={self.model_name!r}, but got {objective.metric!r}",
            )
        if self.compression.searching:
            headline = f"val_{family.headline}"
            for i, objective in enumerate(self.compression.objectives):
                require(not objective.metric.startswith("val_") or objective.metric == headline,
                        f"compression.objectives[{i}]: the validation metric of a candidate is its int8 model's "
                        f"{headline} for model.name={self.model_name!r}, but got {objective.metric!r}")
        objectives = self.selection_objectives()
        if self.compression.select is not None:
            self.compression.rule(objectives[0]).check(objectives, key="compression.select")
        self.student_preview()  # a typo in distill.student fails now, not after the whole tune

    def selection_objectives(self) -> tuple[Objective, ...]:
        """The objectives ``compression.select`` picks by: the compression search's, or else ``tune``'s."""
        if self.compression.searching:
            return self.compression.resolved_objectives(get_family(self.model_name).headline)
        return self.tune.resolved_objectives

    def student_preview(self) -> Any:
        """The model config with ``distill.student`` applied: the student's keys and values, checked.

        The real student starts from the tuned teacher (narrowed by ``distill.width_multiplier``); this
        preview starts from ``model``, which is enough to catch unknown keys and values out of range.

        Raises:
            ConfigError: Naming ``distill.student.<key>``, with a did-you-mean for an unknown key.
        """
        if not self.distill.student:
            return self.model
        family = get_family(self.model_name)
        return from_dict(family.config_cls, {**to_dict(self.model), **self.distill.student}, prefix="distill.student")

    @property
    def run_dir(self) -> Path:
        """Directory holding everything this run writes."""
        return Path(self.runs_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """The resolved config in the same shape as the YAML it was read from."""
        out = to_dict(self)
        out["model"] = {"name": out.pop("model_name"), **out["model"]}
        return out


def _check_name(name: Any) -> None:
    """``name`` becomes a directory under ``runs_dir``: it must be exactly one ordinary path component."""
    safe = (
        isinstance(name, str)
        and 0 < len(name) <= _MAX_NAME_CHARS
        and not name.startswith(".")  # '.', '..' and hidden directories
        and "/" not in name
        and "\\" not in name
        and name.isprintable()  # no NUL, newline or other control characters
    )
    require(
        safe,
        f"name must be a non-empty file name (one path component of at most {_MAX_NAME_CHARS} characters: "
        f"no '/' or '\\', no leading '.', no control characters), but got {show(name)}",
    )


_SECTIONS = {
    "runtime": RuntimeConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "tune": TuneConfig,
    "distill": DistillConfig,
    "quantize": QuantizeConfig,
    "compression": CompressionConfig,
    "score": ScoreConfig,
    "tracking": TrackingConfig,
}
_SECTION_KEYS = {"model", *_SECTIONS}
_TOP_KEYS = {"name", "runs_dir", *_SECTION_KEYS}


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from the plain data of a YAML file.

    A section given as ``null`` (``train:`` with nothing under it) takes its defaults.

    Raises:
        ConfigError: On unknown keys, wrong types or values out of range.
    """
    raw = _sections(raw)
    for key in raw:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown config key '{key}'{did_you_mean(str(key), _TOP_KEYS)}")
    model_raw = {} if raw.get("model") is None else raw["model"]
    if not isinstance(model_raw, Mapping):
        raise ConfigError(f"model must be a mapping (name: <family> and its settings), but got {show(model_raw)}")
    model_raw = dict(model_raw)
    model_name = model_raw.pop("name", "cnn")
    kwargs: dict[str, Any] = {
        key: from_dict(cls, {} if raw.get(key) is None else raw[key], prefix=key) for key, cls in _SECTIONS.items()
    }
    for key in ("name", "runs_dir"):
        if key in raw:
            kwargs[key] = check_type(raw[key], str, key)
    return Config(model_name=model_name, model=model_config(model_name, model_raw), **kwargs)


def _sections(raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"the config must be a mapping of sections ({', '.join(sorted(_TOP_KEYS))}), but got {show(raw)}"
        )
    return raw


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with ``key.sub=value`` overrides applied (values parsed as YAML).

    Raises:
        ConfigError: If an override is not of the form ``key=value``, its value is not valid YAML, or it
            would replace a whole section with nothing (``--set train=`` would drop every ``train`` key).
    """
    out = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or "" in (part.strip() for part in key.split(".")):
            raise ConfigError(
                f"--set takes key=value with a dotted key (e.g. tune.num_samples=4), but got {show(item)}"
            )
        value = parse_yaml(text, f"--set {key}: value {show(text)}") if text.strip() else None
        if key in _SECTION_KEYS and (value is None or value == {}):
            raise ConfigError(
                f"--set {key}: a whole section cannot be set to {'null' if value is None else 'an empty mapping'} "
                f"(that would drop every '{key}' setting of the file), but got {show(text)}; "
                f"set its keys instead, e.g. --set {key}.<key>=<value>"
            )
        set_dotted(out, key, value)
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree['a']['b'] = value`` for ``key='a.b'``, creating sections as needed."""
    *parents, leaf = (part.strip() for part in key.split("."))
    node = tree
    for part in parents:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set '{key}': '{part}' is not a section")
        node = child
    node[leaf] = value


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML run config, apply ``--set`` overrides and validate.

    Relative ``tune.search_space`` paths are resolved against the config file's directory, then
    against the working directory. An empty file gives the defaults.

    Raises:
        ConfigError: On a missing or unreadable file, text that is not UTF-8, invalid YAML (a key given twice
            included), unknown keys or invalid values; always one line.
    """
    path = Path(path)
    raw = read_yaml(path, "config file")
    raw = {} if raw is None else _sections(raw)  # None: an empty file, all defaults
    config = config_from_dict(apply_overrides(raw, overrides))
    space = Path(config.tune.search_space)
    config = dataclasses.replace(config, tune=dataclasses.replace(config.tune, search_space=_resolve(space, path)))
    if config.compression.search_space is not None:
        found = _resolve(Path(config.compression.search_space), path)
        config = dataclasses.replace(config, compression=dataclasses.replace(config.compression, search_space=found))
    pretrained = getattr(config.model, "pretrained_dir", None)
    if pretrained and not Path(pretrained).is_absolute():
        # Ray workers run in other working directories: pin the model directory now.
        config = dataclasses.replace(
            config, model=dataclasses.replace(config.model, pretrained_dir=str(Path(pretrained).resolve()))
        )
    return config


def _resolve(space: Path, config_path: Path) -> str:
    """A search space path as given, or else found beside the config file (or one directory up)."""
    if not space.is_absolute() and not space.exists():
        for base in (config_path.parent, config_path.parent.parent):
            if (base / space).exists():
                return str(base / space)
    return str(space)


def check_before_start(config: Config, *, need_search_space: bool = True) -> None:
    """Every check of a run that needs neither data nor a cluster: the sections agree with each other and
    with the model family, the input paths exist, the run directory can be made, and the search space fits.

    The CLI calls this before Ray or Spark start, so that a mistake costs seconds, not an ingest.

    Raises:
        ConfigError: One line naming the key, the rule and the value.
    """
    check_wired(config)
    check_agreement(config)
    require(
        config.data.source == "fashion_mnist" or config.data.test_path is not None or config.data.test_fraction > 0,
        f"data.test_fraction must be > 0 when data.source={config.data.source!r} has no test table (data.test_path), "
        f"but got {config.data.test_fraction}: set data.test_path, or data.test_fraction (e.g. 0.15) to hold out "
        "part of each class",
    )
    check_paths(config, need_search_space=need_search_space)
    check_run_dir(config)
    if config.tracking.enabled:
        from hybrid.tracking import check_available

        check_available()  # not after an hour of tuning
    if need_search_space:
        from hybrid.search_space import check_search_space, load_search_space  # that module imports this one

        check_search_space(load_search_space(config.tune.search_space), config)
    if config.compression.search_space is not None:
        from hybrid.search_space import check_compression_space, load_search_space

        check_compression_space(load_search_space(config.compression.search_space, key="compression.search_space"),
                                config)


def check_wired(config: Config) -> None:
    """Refuse what the config can express but a run does not do yet, rather than ignore it silently.

    Several ``tune.objectives`` are run (a multi-objective Optuna study; ASHA stops on ``tune.metric``; the
    summary records the trials' Pareto front). ``compression.select`` picks among compressed candidates, so it
    is applied only with a compression search (``compression.search_space``, :mod:`hybrid.compress`); without
    one the teacher is the best trial on ``tune.metric`` and the shipped model follows from it.

    Raises:
        ConfigError: Naming the key that a run would ignore.
    """
    require(
        config.compression.select is None or config.compression.searching,
        "compression.select picks among compressed candidates, which only a compression search makes "
        "(compression.search_space; the teacher is the best trial on tune.metric and tune.objectives only give "
        f"the trials' Pareto front in summary.json), but got {show(config.compression.select)} with "
        "compression.search_space null; set compression.search_space or remove compression.select",
    )
    family = get_family(config.model_name)
    require(
        not config.compression.searching or family.make_student is not None,
        f"compression.search_space is set, but model.name={config.model_name!r} has no student to search "
        "(its family has no make_student); remove compression.search_space",
    )


def check_agreement(config: Config) -> None:
    """Rules across sections: the data's modality is the model family's, the model (and the student) has
    the data's classes and image size, and ``distill.student`` leaves alone what a student must take from its
    teacher (the family's ``student_inherits``).

    Raises:
        ConfigError: Naming the model key and the data key it must match.
    """
    family = get_family(config.model_name)
    require(
        config.data.modality == family.modality,
        f"data.modality must be {family.modality!r} for model.name={config.model_name!r}, "
        f"but got {config.data.modality!r}",
    )
    for key in family.student_inherits:  # see its docstring for why
        require(
            key not in config.distill.student,
            f"distill.student.{key} must not be set for model.name={config.model_name!r} (a student takes it from "
            f"its teacher, whose outputs were stored with it), but got {show(config.distill.student.get(key))}",
        )
    shared = family.data_fields  # see its docstring for why each must match
    models = [("model", config.model)]
    if config.distill.student:
        models.append(("distill.student", config.student_preview()))
    for prefix, arch in models:
        for key in shared:
            if hasattr(arch, key):
                want, got = getattr(config.data, key), getattr(arch, key)
                require(want == got, f"{prefix}.{key} must equal data.{key}={want}, but got {got}")


def check_run_dir(config: Config) -> None:
    """The run directory exists as a writable directory, or can be made under one.

    Raises:
        ConfigError: Naming ``runs_dir`` (or ``name``) and the path that is in the way.
    """
    run_dir = config.run_dir.absolute()
    for path in (run_dir, *run_dir.parents):
        if not path.exists():
            continue
        key = "name" if path == run_dir else "runs_dir"
        if not path.is_dir():
            raise ConfigError(
                f"{key}: {str(path)!r} must be a directory to hold the run directory {str(config.run_dir)!r}, "
                "but it is a file"
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{key}: directory {str(path)!r} must be writable, but it is not")
        return


def check_paths(config: Config, *, need_search_space: bool = True) -> None:
    """Fail early, with the key and path, when an input the run reads is missing.

    Raises:
        ConfigError: Naming the first missing path.
    """
    checks = [("data.path", config.data.path)]
    if config.data.test_path is not None:
        checks.append(("data.test_path", config.data.test_path))
    if need_search_space:
        checks.append(("tune.search_space", config.tune.search_space))
    if config.compression.search_space is not None:
        checks.append(("compression.search_space", config.compression.search_space))
    if getattr(config.model, "pretrained_dir", None):
        checks.append(("model.pretrained_dir", config.model.pretrained_dir))
    for key, value in checks:
        if not Path(value).exists():
            hint = ""
            if key == "data.path" and config.data.source == "fashion_mnist":
                hint = " (install it with `apt-get install dataset-fashion-mnist`, or pass --set data.path=DIR)"
            if key == "data.path" and config.data.source == "sentence_polarity" or key == "model.pretrained_dir":
                hint = " (scripts/setup.sh installs the demo data and model under data/)"
            raise ConfigError(f"{key}: path {value!r} does not exist{hint}")
