"""What a model family's task computes when it is evaluated: its metrics, and how they are summed.

A :class:`Task` turns batches into a flat array of *sums* (additive across Ray Train workers, so one
all-reduce makes the metrics exact for any number of workers), and the summed array into metrics. The
training loop and the driver-side ``evaluate`` call these through the family, never by the task's name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybrid.metrics import classification_metrics, confusion_matrix
from hybrid.models.losses import distillation_loss, span_distillation_loss

LABEL = "label"
TEACHER_LOGITS = "teacher_logits"
"""The collated batch's teacher outputs, shaped like the model's (what a task's ``distillation_loss`` reads)."""


def model_inputs(batch: dict[str, torch.Tensor], columns: Sequence[str]) -> list[torch.Tensor]:
    """The tensors ``forward`` takes, in the family's declared column order."""
    return [batch[c] for c in columns]


@torch.no_grad()
def evaluate_batches(
    model: nn.Module | Any,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    num_classes: int,
    columns: Sequence[str],
    device: torch.device,
    autocast: AbstractContextManager[Any] | None = None,
) -> tuple[np.ndarray, float, int]:
    """Return ``(confusion matrix, summed cross-entropy, samples)`` of ``model`` over ``batches``.

    ``autocast`` is entered around each forward pass (``None``: full precision).
    """
    if isinstance(model, nn.Module):
        model.eval()
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    loss_sum, seen = 0.0, 0
    ctx = autocast if autocast is not None else nullcontext()
    for batch in batches:
        labels = batch[LABEL].to(device).long()
        with ctx:
            logits = model(*(x.to(device) for x in model_inputs(batch, columns))).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        cm += confusion_matrix(labels.cpu().numpy(), logits.argmax(dim=1).cpu().numpy(), num_classes)
        seen += len(labels)
    return cm, loss_sum, seen


SPAN_SUMS = ("exact_match", "f1", "examples", "loss", "windows")
"""What :func:`evaluate_span_batches` sums (so that workers' results add up exactly)."""


@torch.no_grad()
def evaluate_span_batches(
    model: nn.Module | Any,
    batches: Iterable[dict[str, Any]],
    *,
    columns: Sequence[str],
    device: torch.device,
    autocast: AbstractContextManager[Any] | None = None,
    max_answer_length: int = 30,
) -> np.ndarray:
    """Exact match and F1 of a span model over batches of whole examples (see ``QACollate``).

    Returns:
        Sums in :data:`SPAN_SUMS` order: exact matches, F1, examples, summed start/end
        cross-entropy and windows.
    """
    from hybrid.qa import postprocess, squad_scores

    if isinstance(model, nn.Module):
        model.eval()
    sums = np.zeros(len(SPAN_SUMS))
    ctx = autocast if autocast is not None else nullcontext()
    for batch in batches:
        labels = batch[LABEL].to(device).long()  # (windows, 2)
        with ctx:
            logits = model(*(batch[c].to(device) for c in columns)).float()  # (windows, seq_len, 2)
        loss = F.cross_entropy(logits, labels, reduction="sum").item() / 2  # mean of start and end
        logits = logits.cpu().numpy()
        predictions = postprocess(logits[..., 0], logits[..., 1], batch["offsets"], batch["example_index"],
                                  batch["context"], max_answer_length=max_answer_length)
        scores = squad_scores([p.text for p in predictions], batch["answers"])
        count = scores["count"]
        sums += [scores["exact_match"] * count, scores["f1"] * count, count, loss, len(labels)]
    return sums


def span_metrics(sums: np.ndarray) -> dict[str, float]:
    """``exact_match``, ``f1`` (fractions of examples) and ``loss`` (per window) from summed results."""
    em, f1, examples, loss, windows = sums
    return {"exact_match": em / max(examples, 1), "f1": f1 / max(examples, 1), "loss": loss / max(windows, 1)}


@dataclass
class Evaluation:
    """Metrics of one model on one split, from summed results."""

    scores: dict[str, float]
    """The task's metrics, without the loss (what ``model.json`` records as ``val_metrics``)."""
    loss: float
    """Mean validation loss."""
    rows: int
    """Rows evaluated (images or sentences; examples for spans)."""
    confusion_matrix: list[list[int]] | None
    """``(true, predicted)`` counts for a classification task; ``None`` otherwise."""


@dataclass(frozen=True)
class Task:
    """How a task's models are evaluated."""

    name: str
    """``classification`` or ``spans`` (``ModelFamily.task``)."""
    metrics: tuple[str, ...]
    """Validation metrics the training loop reports, which ``tune.metric`` may name."""
    evaluate: Callable[..., np.ndarray]
    """``(model, batches, *, columns, device, num_classes, model_config, autocast) -> sums``: a float
    array whose element-wise sum over workers is the sum over all their rows (each task reads the keywords
    it needs and ignores the others; ``model_config`` is the model's config, a dataclass or its dict, from
    which a task reads its decoding options)."""
    summarize: Callable[[np.ndarray, int], Evaluation]
    """``(summed array, num_classes) -> Evaluation``."""
    headline: str
    """The one metric (of :attr:`Evaluation.scores`) that ranks models of this task, such as the int8
    accuracy gate's: ``accuracy``, or ``f1`` for spans."""
    distillation_loss: Callable[..., torch.Tensor]
    """``(student_logits, teacher_logits, labels, *, alpha, temperature, label_smoothing) -> scalar``: a
    student's loss against its teacher's logits and the labels, logits and labels as the model and collate
    give them (see :mod:`hybrid.models.losses`)."""


def _classification_sums(model: Any, batches: Iterable[dict[str, Any]], *, columns: Sequence[str],
                         device: torch.device, num_classes: int, model_config: Any = None,
                         autocast: AbstractContextManager[Any] | None = None) -> np.ndarray:
    """The confusion matrix (row-major), the summed loss and the rows, in one array."""
    cm, loss_sum, seen = evaluate_batches(model, batches, num_classes=num_classes, columns=columns, device=device,
                                          autocast=autocast)
    return np.concatenate([cm.ravel(), [loss_sum, seen]])


def _classification_summary(sums: np.ndarray, num_classes: int) -> Evaluation:
    """Accuracy and the macro metrics of a summed :func:`_classification_sums`."""
    k = num_classes * num_classes
    matrix = sums[:k].reshape(num_classes, num_classes).astype(np.int64)
    loss_sum, rows = sums[k:]
    return Evaluation(scores=classification_metrics(matrix), loss=float(loss_sum / max(rows, 1)), rows=int(rows),
                      confusion_matrix=matrix.tolist())


def _span_sums(model: Any, batches: Iterable[dict[str, Any]], *, columns: Sequence[str], device: torch.device,
               num_classes: int = 0, model_config: Any = None,
               autocast: AbstractContextManager[Any] | None = None) -> np.ndarray:
    """:data:`SPAN_SUMS` of :func:`evaluate_span_batches`, decoding answers of at most the model config's
    ``max_answer_length`` tokens (30 when it has none)."""
    if isinstance(model_config, Mapping):
        longest = model_config.get("max_answer_length", 30)
    else:
        longest = getattr(model_config, "max_answer_length", 30)
    return evaluate_span_batches(model, batches, columns=columns, device=device, autocast=autocast,
                                 max_answer_length=int(longest))


def _span_summary(sums: np.ndarray, num_classes: int = 0) -> Evaluation:
    """Exact match and F1 of a summed :func:`_span_sums`."""
    scores = span_metrics(sums)
    loss = scores.pop("loss")
    return Evaluation(scores=scores, loss=loss, rows=int(sums[2]), confusion_matrix=None)


CLASSIFICATION = Task(
    name="classification",
    metrics=("val_accuracy", "val_macro_f1", "val_macro_precision", "val_macro_recall", "val_loss"),
    evaluate=_classification_sums, summarize=_classification_summary, headline="accuracy",
    distillation_loss=distillation_loss,
)
SPANS = Task(
    name="spans", metrics=("val_f1", "val_exact_match", "val_loss"),
    evaluate=_span_sums, summarize=_span_summary, headline="f1", distillation_loss=span_distillation_loss,
)
TASKS: dict[str, Task] = {task.name: task for task in (CLASSIFICATION, SPANS)}
"""Every task, by name."""
