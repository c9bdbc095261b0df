"""The model registry: one ``create_model(name, **config)`` factory over every model family.

A family registers its name, its frozen config dataclass and its ``nn.Module`` builder. Everything
else in hybrid (training, tuning, artifacts) only ever names a family and passes a config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hybrid._dataclass_io import from_dict, show
from hybrid.errors import ConfigError, did_you_mean
from hybrid.models.predict import Predictor
from hybrid.models.tasks import TASKS, TEACHER_LOGITS, Task

TASK_METRICS: dict[str, tuple[str, ...]] = {name: task.metrics for name, task in TASKS.items()}
"""Validation metrics the training loop reports for each task: what ``tune.metric`` may name."""

ALL_STAGES: tuple[str, ...] = ("tune", "distill", "quantize", "score")
"""The pipeline's stages after ingest, in order."""

TeacherOutputs = Callable[..., dict[str, np.ndarray]]
MakePredictor = Callable[[Mapping[str, Any], Path], Predictor]
"""``(model.json, model directory) -> Predictor``: how a Spark scorer runs a saved model of the family (see
:mod:`hybrid.models.predict`); raises ``ArtifactError`` when ``model.json`` lacks what scoring needs."""
"""``(model, batch, *, columns, collate) -> columns``: a teacher's outputs for a numpy batch of dataset rows, as
new columns of one entry per row (see :attr:`ModelFamily.teacher_outputs`)."""


def logits_per_row(
    model: Callable[..., torch.Tensor], batch: Mapping[str, Any], *, columns: Sequence[str],
    collate: Callable[[dict[str, Any]], dict[str, Any]] | None,
) -> dict[str, np.ndarray]:
    """The teacher outputs of a family whose model maps each row to one output (a classifier):
    ``teacher_logits`` ``(rows, num_classes)`` float32, which Ray's default collate (or the family's) stacks.

    Args:
        model: The teacher, in eval mode.
        batch: A numpy batch of dataset rows.
        columns: The family's ``input_columns``.
        collate: The family's collate function (``None``: columns are stacked as float32).

    Returns:
        ``{"teacher_logits": (rows, num_classes) float32}``.
    """
    with torch.no_grad():
        logits = model(*batch_inputs(batch, columns, collate))  # (rows, num_classes)
    return {TEACHER_LOGITS: logits.float().numpy()}


@dataclass(frozen=True)
class ModelFamily:
    """A registered model family."""

    name: str
    """Registry key, as written in configs (``model.name``)."""
    config_cls: type
    """Frozen dataclass describing one architecture of the family."""
    build: Callable[[Any], nn.Module]
    """Builds the module from an instance of ``config_cls``."""
    input_columns: tuple[str, ...]
    """Dataset columns fed to ``forward`` positionally, in this order."""
    collate: Callable[[Any], Callable[[dict[str, Any]], dict[str, Any]]] | None = None
    """Given a config, the ``collate_fn`` turning a numpy batch into tensors (``None``: Ray's default)."""
    export_assets: Callable[[nn.Module, Any, Path], Any] | None = None
    """Writes files the model needs besides its weights (a tokenizer...) into a model directory and
    returns the config to record there."""
    localize: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None
    """Resolves a recorded config's relative paths against its model directory."""
    task: str = "classification"
    """``classification`` (logits ``(batch, classes)``, accuracy and macro metrics) or ``spans`` (start and
    end logits ``(windows, seq_len, 2)``, exact match and F1 after span decoding)."""
    modality: str = "images"
    """What a row must hold for this family (``data.modality``): ``images``, ``text`` or ``qa``."""
    metrics: tuple[str, ...] = ()
    """Validation metrics the family reports, which ``tune.metric`` may name (empty: its task's, from
    :data:`TASK_METRICS`)."""
    padding_mask: str | None = None
    """The input column whose zeros mark a row's trailing padding (a BERT's attention mask); ``None``: rows
    are not padded. A dynamically quantized model runs each row cut to its length, so that a row's answer
    never depends on its batch mates."""
    path_fields: tuple[str, ...] = ()
    """Config fields naming local directories that building the model or its collate reads (a BERT's
    ``pretrained_dir``, ``init_from``): shipped to Ray workers, never opened there by the driver's path."""
    make_student: Callable[..., dict[str, Any]] | None = None
    """``(teacher_config, *, width_multiplier, teacher_dir) -> student params``: the plain config of a smaller
    student made from a saved teacher's recorded config (``distill.student`` overrides are applied after);
    ``None``: the family cannot be distilled."""
    stages: tuple[str, ...] = ALL_STAGES
    """Pipeline stages a model of this family goes through (of :data:`ALL_STAGES`); the others are skipped
    with a note."""
    check_config: Callable[[Any], None] | None = None
    """Rules the family adds to its config class's own (raising ``ConfigError``), run when a run config is
    loaded, so that they fail there rather than in a worker."""
    data_fields: tuple[str, ...] = ()
    """Model config fields that must equal the data config's field of the same name (a classifier's
    ``num_classes``: labels beyond the head's classes crash the loss inside a worker; a CNN's
    ``image_size``: rows of another size cannot be reshaped into its input)."""
    student_inherits: tuple[str, ...] = ()
    """Config fields a student must take from its teacher, which ``distill.student`` may therefore not set (a
    span model's ``max_length`` and ``doc_stride``: they cut each example into the windows that the teacher's
    stored logits cover)."""
    teacher_outputs: TeacherOutputs = logits_per_row
    """How the distill stage stores a teacher's outputs on the training rows, once, before the student trains:
    columns of one entry per dataset row, which the family's collate turns into the batch's
    ``teacher_logits`` shaped like the model's output (a classifier: :func:`logits_per_row`; a span model,
    whose rows are examples of several windows: each example's windows, unpadded)."""
    predictor: MakePredictor | None = None
    """The scoring predictor of a saved model: its input columns and their bad-row rules, its output columns,
    the function predicting a batch of rows and the metrics against a gold column (``None``: models of this
    family cannot be scored in Spark)."""

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {list(TASKS)}, but got {self.task!r}")
        unknown = [s for s in self.stages if s not in ALL_STAGES]
        if unknown or "tune" not in self.stages:
            raise ValueError(f"stages must include 'tune' and be among {list(ALL_STAGES)}, but got {list(self.stages)}")
        if "score" in self.stages and self.predictor is None:
            raise ValueError(f"family {self.name!r} lists the score stage, so it needs a predictor")
        if "distill" in self.stages and self.make_student is None:
            raise ValueError(f"family {self.name!r} lists the distill stage, so it needs make_student")
        if not self.metrics:
            object.__setattr__(self, "metrics", TASKS[self.task].metrics)

    @property
    def headline(self) -> str:
        """The metric that ranks this family's models (its task's :attr:`~hybrid.models.tasks.Task.headline`)."""
        return TASKS[self.task].headline

    @property
    def evaluation(self) -> Task:
        """How models of this family's task are evaluated (sums across workers, then metrics)."""
        return TASKS[self.task]


_REGISTRY: dict[str, ModelFamily] = {}


def register_model(
    name: str,
    config_cls: type,
    build: Callable[[Any], nn.Module],
    *,
    input_columns: tuple[str, ...],
    collate: Callable[[Any], Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
    export_assets: Callable[[nn.Module, Any, Path], Any] | None = None,
    localize: Callable[[dict[str, Any], Path], dict[str, Any]] | None = None,
    task: str = "classification",
    modality: str = "images",
    metrics: tuple[str, ...] = (),
    path_fields: tuple[str, ...] = (),
    padding_mask: str | None = None,
    make_student: Callable[..., dict[str, Any]] | None = None,
    stages: tuple[str, ...] = ALL_STAGES,
    check_config: Callable[[Any], None] | None = None,
    data_fields: tuple[str, ...] = (),
    teacher_outputs: TeacherOutputs = logits_per_row,
    student_inherits: tuple[str, ...] = (),
    predictor: MakePredictor | None = None,
) -> None:
    """Register a model family under ``name`` (re-registering the same name replaces it); the keywords are
    :class:`ModelFamily`'s fields."""
    _REGISTRY[name] = ModelFamily(
        name=name, config_cls=config_cls, build=build, input_columns=input_columns, collate=collate,
        export_assets=export_assets, localize=localize, task=task, modality=modality, metrics=metrics,
        path_fields=path_fields, padding_mask=padding_mask, make_student=make_student, stages=stages,
        check_config=check_config, data_fields=data_fields, teacher_outputs=teacher_outputs,
        student_inherits=student_inherits, predictor=predictor,
    )


def batch_inputs(
    batch: Mapping[str, Any], columns: Sequence[str], collate: Callable[[dict[str, Any]], dict[str, Any]] | None
) -> tuple[torch.Tensor, ...]:
    """The tensors ``forward`` takes from one numpy batch: collated once by the family's ``collate`` (text is
    padded here), or each column stacked as float32 (images)."""
    if collate is not None:
        collated = collate(dict(batch))
        return tuple(collated[c] for c in columns)
    return tuple(torch.as_tensor(np.stack(batch[c]).astype(np.float32)) for c in columns)


def collate_fn(name: str, config: Any) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The ``collate_fn`` for batches of family ``name`` with architecture ``config`` (None: Ray's default)."""
    family = get_family(name)
    return family.collate(config) if family.collate is not None else None


def list_models() -> list[str]:
    """Names of the registered model families."""
    return sorted(_REGISTRY)


def get_family(name: str) -> ModelFamily:
    """Return the family registered as ``name``.

    Raises:
        ConfigError: If no family has that name.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        hint = did_you_mean(name, _REGISTRY) if isinstance(name, str) else ""
        raise ConfigError(f"model.name must be one of {list_models()}, but got {show(name)}{hint}")
    return _REGISTRY[name]


def model_config(name: str, params: Mapping[str, Any]) -> Any:
    """Build and validate the config dataclass of family ``name`` from plain ``params``."""
    return from_dict(get_family(name).config_cls, params, prefix="model")


def create_model(name: str, **config: Any) -> nn.Module:
    """Create a model of family ``name`` from keyword config values (or ``config=<dataclass>``).

    Raises:
        ConfigError: On an unknown family, an unknown config key or an invalid value.
    """
    family = get_family(name)
    if set(config) == {"config"} and isinstance(config["config"], family.config_cls):
        cfg = config["config"]
    else:
        cfg = model_config(name, config)
    return family.build(cfg)
