"""The span distillation loss against numbers worked out by hand (start and end as two distributions)."""

from __future__ import annotations

import math

import pytest
import torch

from hybrid.models.losses import distillation_loss, span_distillation_loss


def _log_softmax(row: list[float], t: float) -> list[float]:
    scaled = [v / t for v in row]
    top = max(scaled)
    log_total = top + math.log(sum(math.exp(v - top) for v in scaled))
    return [v - log_total for v in scaled]


def _by_hand(student: list[list[float]], teacher: list[list[float]], gold: int, alpha: float, t: float) -> float:
    """One distribution (a window's start or end over its positions): alpha T^2 KL + (1 - alpha) CE."""
    log_ps, log_pt = _log_softmax(student, t), _log_softmax(teacher, t)
    kl = sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_ps, log_pt))
    ce = -_log_softmax(student, 1.0)[gold]
    return alpha * t * t * kl + (1 - alpha) * ce


# One window of three positions: (seq_len, 2) = [start, end] logits per position.
STUDENT = [[1.0, -1.0], [0.0, 2.0], [-0.5, 0.5]]
TEACHER = [[2.0, 0.0], [-1.0, 1.0], [0.0, 3.0]]
GOLD = [0, 2]  # start token 0, end token 2


def test_one_window_by_hand_is_the_mean_of_start_and_end() -> None:
    alpha, t = 0.6, 2.0
    start = _by_hand([r[0] for r in STUDENT], [r[0] for r in TEACHER], GOLD[0], alpha, t)
    end = _by_hand([r[1] for r in STUDENT], [r[1] for r in TEACHER], GOLD[1], alpha, t)
    loss = span_distillation_loss(torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor([GOLD]),
                                  alpha=alpha, temperature=t)
    assert loss.item() == pytest.approx((start + end) / 2, rel=1e-6)


def test_windows_average_and_reuse_the_classification_loss() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(3, 5, 2), torch.randn(3, 5, 2)
    labels = torch.tensor([[0, 1], [2, 4], [3, 3]])
    loss = span_distillation_loss(student, teacher, labels, alpha=0.7, temperature=4.0, label_smoothing=0.1)
    per_side = [distillation_loss(student[..., k], teacher[..., k], labels[:, k], alpha=0.7, temperature=4.0,
                                  label_smoothing=0.1) for k in (0, 1)]
    assert loss.item() == pytest.approx(sum(per_side).item() / 2, rel=1e-6)


def test_padding_with_a_large_negative_logit_changes_nothing() -> None:
    short = span_distillation_loss(torch.tensor([STUDENT]), torch.tensor([TEACHER]), torch.tensor([GOLD]),
                                   alpha=0.5, temperature=4.0)
    pad = [[-1e4, -1e4]] * 2
    padded = span_distillation_loss(torch.tensor([STUDENT + pad]), torch.tensor([TEACHER + pad]),
                                     torch.tensor([GOLD]), alpha=0.5, temperature=4.0)
    assert padded.item() == pytest.approx(short.item(), rel=1e-6)


def test_alpha_one_identical_logits_is_zero_and_only_the_student_gets_a_gradient() -> None:
    logits = torch.randn(2, 6, 2)
    same = span_distillation_loss(logits, logits.clone(), torch.zeros(2, 2, dtype=torch.long), alpha=1.0,
                                  temperature=3.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 6, 2, requires_grad=True)
    teacher = torch.randn(2, 6, 2, requires_grad=True)
    span_distillation_loss(student, teacher, torch.tensor([[0, 1], [5, 5]]), alpha=0.7, temperature=2.0).backward()
    assert teacher.grad is None and student.grad is not None and student.grad.abs().sum() > 0


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\(windows, seq_len, 2\), but got \(2, 4, 2\) and \(2, 5, 2\)"):
        span_distillation_loss(torch.zeros(2, 4, 2), torch.zeros(2, 5, 2), torch.zeros(2, 2), alpha=0.5,
                               temperature=1.0)
    with pytest.raises(ValueError, match=r"labels must be \(windows, 2\) = \(2, 2\), but got \(2,\)"):
        span_distillation_loss(torch.zeros(2, 4, 2), torch.zeros(2, 4, 2), torch.zeros(2), alpha=0.5,
                               temperature=1.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], but got 2"):
        span_distillation_loss(torch.zeros(1, 4, 2), torch.zeros(1, 4, 2), torch.zeros(1, 2), alpha=2,
                               temperature=1.0)
