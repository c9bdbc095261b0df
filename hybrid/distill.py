"""Knowledge distillation: a small student learns from the tuned teacher's softened outputs.

The maths is pure and belongs to the family's task (:mod:`hybrid.models.losses`: :func:`distillation_loss`
for classes, ``span_distillation_loss`` for start/end spans); the one training loop (:mod:`hybrid.train`)
calls the task's loss in place of plain cross-entropy when its batches carry ``teacher_logits``, which
:func:`add_teacher_logits` computes once with Ray Data before the student trains (stored per row as the
family says, see ``ModelFamily.teacher_outputs``).

Why once and not on the fly: the training rows are not augmented, so the teacher's logits for a row never
change; computing them once costs one teacher forward pass per row, on the fly costs one per row *per
epoch* inside the student's step (measured on the demo teacher: about 0.6 ms/row of teacher forward
against about 0.3 ms/row for a student training step, so on the fly would roughly triple each student
epoch). Ten floats per row in the object store are cheap. A span model's row (an example) holds two floats
per token of each of its windows instead: about 1 KB for a one-window paragraph at 128 tokens, so about
0.1-0.3 GB for SQuAD v1.1's 88k training questions, still far below re-running the teacher every epoch.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hybrid._dataclass_io import require
from hybrid.models.losses import distillation_loss
from hybrid.models.tasks import TEACHER_LOGITS

__all__ = ["TEACHER_LOGITS", "DistillConfig", "DistillResult", "add_teacher_logits", "distill", "distillation_loss",
           "student_config", "student_train_config"]

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from hybrid.config import Config
    from hybrid.shipping import ShippedDir


@dataclass(frozen=True)
class DistillConfig:
    """How the student learns from the teacher (Hinton et al., 2015)."""

    alpha: float = 0.7
    """Weight of the soft (teacher) term; ``1 - alpha`` weighs cross-entropy on the true labels."""
    temperature: float = 4.0
    """Softmax temperature ``T`` of both teacher and student in the soft term; higher spreads the
    teacher's probability over more classes. The soft term is scaled by ``T**2`` so that its gradients
    keep their size as ``T`` changes."""
    width_multiplier: float = 0.5
    """The student's size as a fraction of the teacher's, as the model family reads it (its ``make_student``):
    a CNN's widths (``base_channels``, ``head_width``); a BERT's encoder layers (evenly spaced, ending with
    the top one: 6 layers at 0.5 keep 1, 3 and 5), copied from the fine-tuned teacher."""
    student: dict[str, Any] = field(default_factory=dict)
    """Architecture overrides applied last (e.g. ``{num_blocks: 2}``)."""
    max_epochs: int | None = None
    """Student epochs; ``null``: the teacher's ``train.max_epochs``."""

    def __post_init__(self) -> None:
        require(self.max_epochs is None or self.max_epochs >= 1, f"max_epochs must be >= 1, but got {self.max_epochs}")
        require(0.0 < self.width_multiplier <= 1.0, f"width_multiplier must be in (0, 1], but got {self.width_multiplier}")
        require(0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], but got {self.alpha}")
        require(self.temperature > 0.0, f"temperature must be > 0, but got {self.temperature}")


class _TeacherLogits:
    """Ray Data callable class: loads the teacher once per actor, adds its outputs to each batch as the
    family stores them (:attr:`~hybrid.models.registry.ModelFamily.teacher_outputs`)."""

    def __init__(self, model_dir: str | ShippedDir, input_columns: tuple[str, ...], threads: int = 1) -> None:
        from hybrid.artifacts import load_model, model_collate
        from hybrid.models import get_family
        from hybrid.shipping import local_path

        torch.set_num_threads(threads)
        model_dir = local_path(model_dir)
        self.model, meta = load_model(model_dir)
        self.model.eval()
        self.collate = model_collate(model_dir, meta)
        self.columns = input_columns
        self.outputs = get_family(meta["family"]).teacher_outputs

    def __call__(self, table: pa.Table) -> pa.Table:
        """``table`` (an Arrow batch of rows) with the teacher's output columns added (or replaced).

        The rows' own columns pass through as Arrow, untouched: a round trip through numpy would turn a
        ``list<string>`` column (a QA row's ``answers``) into pickled Python objects.
        """
        from ray.data.block import BlockAccessor

        batch = BlockAccessor.for_block(table).to_batch_format("numpy")
        outputs = BlockAccessor.batch_to_block(self.outputs(self.model, batch, columns=self.columns,
                                                            collate=self.collate))
        for name in outputs.column_names:
            if name in table.column_names:
                table = table.drop_columns([name])
            table = table.append_column(name, outputs.column(name))
        return table


def add_teacher_logits(
    dataset: ray.data.Dataset, teacher_dir: str | Path, *, input_columns: tuple[str, ...], batch_size: int = 1024,
    num_cpus: int = 1,
) -> ray.data.Dataset:
    """``dataset`` with the outputs of the teacher in ``teacher_dir`` added as columns, materialised: the
    family's :attr:`~hybrid.models.registry.ModelFamily.teacher_outputs` (a classifier: ``teacher_logits``
    ``(rows, classes)``; a span model: each example's windows' logits, which its collate pads).

    One actor holding ``num_cpus`` CPUs runs the teacher with as many torch threads (on the 2-core demo, a
    6-layer BERT's logits for 8k sentences took 137 s on one thread). The teacher's directory reaches the
    actor through Ray's object store (:mod:`hybrid.shipping`): its node need not see ``teacher_dir``.
    """
    from hybrid import shipping

    teacher = shipping.ship_dir(teacher_dir, what="the teacher's model directory")
    return dataset.map_batches(
        _TeacherLogits,
        fn_constructor_kwargs={"model_dir": teacher, "input_columns": input_columns, "threads": num_cpus},
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=1,
        num_cpus=num_cpus,
    ).materialize()


def student_config(
    family: str, teacher_config: dict[str, Any], overrides: dict[str, Any], *, width_multiplier: float = 1.0,
    teacher_dir: str | Path | None = None,
) -> Any:
    """The student's architecture: the family's :attr:`~hybrid.models.registry.ModelFamily.make_student` of the
    teacher's recorded config (a CNN narrowed by ``width_multiplier``; a BERT, which needs ``teacher_dir``,
    keeping that fraction of the teacher's layers and starting from its fine-tuned weights), then
    ``overrides``.

    Raises:
        ConfigError: If the family cannot be distilled, or the student's config is invalid.
    """
    from hybrid.errors import ConfigError
    from hybrid.models import get_family, model_config

    make_student = get_family(family).make_student
    if make_student is None:
        raise ConfigError(f"model.name={family!r} has no student to distill into (its family has no make_student)")
    params = make_student(teacher_config, width_multiplier=width_multiplier, teacher_dir=teacher_dir)
    return model_config(family, {**params, **overrides})


def student_train_config(teacher_meta: dict[str, Any], config: Config) -> Any:
    """The student's training settings: ``config.train`` with the teacher's tuned ``train.*`` values (from its
    ``model.json``) and ``distill.max_epochs``."""
    tuned = {k.split(".", 1)[1]: v for k, v in teacher_meta.get("params", {}).items() if k.startswith("train.")}
    train_cfg = dataclasses.replace(config.train, **tuned)
    if config.distill.max_epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, max_epochs=config.distill.max_epochs)
    return train_cfg


@dataclass
class DistillResult:
    """What the distill stage produced: the student's best checkpoint and how it was trained."""

    checkpoint: Path
    """The student's best checkpoint by the tuned metric (a model directory)."""
    student_config: dict[str, Any]
    """The student's architecture."""
    train: dict[str, Any]
    """The student's training settings (the teacher's tuned ones, with ``distill.max_epochs``)."""
    teacher_logits_s: float
    """Seconds spent computing the teacher's logits for the training rows."""

    def summary(self) -> dict[str, Any]:
        """The ``distill`` block of ``summary.json``."""
        return {"teacher_logits_s": self.teacher_logits_s, "train": self.train, "student_config": self.student_config}


def distill(
    teacher_dir: Path,
    datasets: dict[str, ray.data.Dataset],
    *,
    config: Config,
    train_rows: int,
    metadata: dict[str, Any],
    storage_dir: Path,
    echo: Callable[[str], None] = print,
) -> DistillResult:
    """Train a student from the teacher in ``teacher_dir`` on soft targets plus hard labels (Ray Train).

    The student's architecture comes from :func:`student_config`; it trains with the teacher's tuned
    training settings, in a fresh Ray Train run under ``storage_dir`` (the caller gives each attempt
    its own, so that no earlier attempt's checkpoint can win).

    Raises:
        TrainingError: If training fails or leaves no checkpoint.
    """
    from hybrid import cluster
    from hybrid._dataclass_io import to_dict
    from hybrid.artifacts import read_metadata
    from hybrid.ingest_checks import check_trainable
    from hybrid.models import get_family
    from hybrid.train import LoopSpec, best_model_dir, build_trainer, fit_resilient

    teacher = read_metadata(teacher_dir)
    family = teacher["family"]
    student = student_config(family, teacher["config"], config.distill.student,
                             width_multiplier=config.distill.width_multiplier, teacher_dir=teacher_dir)
    train_cfg = student_train_config(teacher, config)
    check_trainable({"train": train_rows}, batch_size=train_cfg.batch_size, num_workers=train_cfg.num_workers,
                    grad_accum_steps=train_cfg.grad_accum_steps)
    # One student, nothing beside it: give its workers the free CPUs of one node rather than a trial's share.
    nodes = cluster.inventory()
    free = cluster.cpus_per_node_free(nodes) // train_cfg.num_workers
    train_cfg = dataclasses.replace(train_cfg, cpus_per_worker=max(train_cfg.cpus_per_worker, free))
    cluster.check_workers_fit("distill", train_cfg, nodes=nodes, what="each of the student's training workers")
    logits_cpus = cluster.cpus_per_node_free(nodes)
    cluster.check_fits("distill", {"CPU": float(logits_cpus)}, nodes=nodes, what="the teacher-logits actor")
    t0 = time.perf_counter()
    train = add_teacher_logits(datasets["train"], teacher_dir, input_columns=get_family(family).input_columns,
                               batch_size=config.train.eval_batch_size, num_cpus=logits_cpus)
    logits_s = time.perf_counter() - t0
    changed = {k: v for k, v in to_dict(student).items() if teacher["config"].get(k) != v}
    echo(f"[distill] teacher logits for {train_rows} rows in {logits_s:.1f} s; training the student "
         f"({', '.join(f'{k}={v}' for k, v in changed.items())}) for {train_cfg.max_epochs} epochs")
    spec = LoopSpec(
        model_name=family, model=to_dict(student), train=to_dict(train_cfg), num_classes=config.data.num_classes,
        train_rows=train_rows, metadata=metadata,
        distill={"alpha": config.distill.alpha, "temperature": config.distill.temperature},
    )
    result = fit_resilient(
        lambda: build_trainer(spec, {"train": train, "val": datasets["val"]}, storage_path=storage_dir.parent,
                              name=storage_dir.name, metric=config.tune.metric, mode=config.tune.mode),
        what="distill: the student's training", max_failures=config.runtime.max_failures, echo=echo,
    )
    best = best_model_dir(result, what=f"distill: the student's training under {storage_dir}")
    return DistillResult(checkpoint=best, student_config=to_dict(student), train=to_dict(train_cfg),
                         teacher_logits_s=logits_s)
