"""The distillation losses of each task: pure functions of logits and labels (no model, no Ray).

A task (:mod:`hybrid.models.tasks`) names its loss, so the one training loop asks the family for it
instead of testing what kind of model it trains.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """``alpha * T^2 * KL(p_teacher || p_student) + (1 - alpha) * cross_entropy(student, labels)``.

    ``p = softmax(logits / T)`` on both sides; the KL divergence is summed over classes and averaged
    over the batch (``batchmean``). The teacher's logits are detached: no gradient reaches the teacher.
    The arithmetic is done in float32, so bf16 logits from autocast are safe to pass.

    Args:
        student_logits: ``(batch, num_classes)`` raw scores of the student.
        teacher_logits: ``(batch, num_classes)`` raw scores of the teacher for the same rows.
        labels: ``(batch,)`` integer class labels.
        alpha: Weight of the soft term, in ``[0, 1]``; a term whose weight is 0 is not computed.
        temperature: ``T > 0``.
        label_smoothing: Label smoothing of the hard (cross-entropy) term.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: If the shapes disagree, or ``alpha`` or ``temperature`` is out of range.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], but got {alpha}")
    if temperature <= 0.0:
        raise ValueError(f"temperature must be > 0, but got {temperature}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must both be (batch, num_classes), but got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must be (batch,) = ({student_logits.shape[0]},), but got {tuple(labels.shape)}")
    student = student_logits.float()
    loss = student.new_zeros(())
    if alpha > 0.0:
        t = temperature
        log_p_student = F.log_softmax(student / t, dim=-1)  # (batch, classes)
        log_p_teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)  # (batch, classes)
        # d(soft)/d(logit) is (p_student - p_teacher) / T, which shrinks like 1/T^2 for large T; T^2 undoes it.
        soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
        loss = loss + alpha * t * t * soft
    if alpha < 1.0:
        hard = F.cross_entropy(student, labels.long(), label_smoothing=label_smoothing)
        loss = loss + (1.0 - alpha) * hard
    return loss


def span_distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """:func:`distillation_loss` of a span model, the mean over its start and end distributions.

    Each window's start logits are one distribution over the window's positions, its end logits another;
    every (window, start or end) pair is one row of :func:`distillation_loss`, so the result is
    ``alpha * T^2 * KL + (1 - alpha) * CE`` averaged over windows and over start and end. Padding
    positions should hold a large negative logit on both sides (the span head's ``-1e4``): they then
    carry no probability and add nothing to either term.

    Args:
        student_logits: ``(windows, seq_len, 2)`` start (``[..., 0]``) and end (``[..., 1]``) logits.
        teacher_logits: The teacher's, of the same shape.
        labels: ``(windows, 2)`` gold start and end token of each window.
        alpha: Weight of the soft term, in ``[0, 1]``.
        temperature: ``T > 0``.
        label_smoothing: Label smoothing of the hard term.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: If the shapes disagree, or ``alpha`` or ``temperature`` is out of range.
    """
    if student_logits.dim() != 3 or student_logits.shape[-1] != 2 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            "student_logits and teacher_logits must both be (windows, seq_len, 2), but got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    windows, length, _ = student_logits.shape
    if labels.shape != (windows, 2):
        raise ValueError(f"labels must be (windows, 2) = ({windows}, 2), but got {tuple(labels.shape)}")

    def rows(logits: torch.Tensor) -> torch.Tensor:
        return logits.transpose(1, 2).reshape(windows * 2, length)  # (windows * 2, seq_len): start, end, start...

    return distillation_loss(rows(student_logits), rows(teacher_logits), labels.reshape(windows * 2), alpha=alpha,
                             temperature=temperature, label_smoothing=label_smoothing)
