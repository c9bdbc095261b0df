"""The distillation loss against numbers worked out by hand, and its gradient behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybrid.distill import DistillConfig, distillation_loss
from hybrid.errors import ConfigError


def _softmax(row: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def test_two_classes_by_hand() -> None:
    student = [[1.0, 0.0], [0.5, -0.5]]
    teacher = [[0.0, 2.0], [3.0, 1.0]]
    labels = [0, 1]
    alpha, t = 0.6, 2.0
    kl = 0.0
    for s_row, t_row in zip(student, teacher):
        p_s, p_t = _softmax(s_row, t), _softmax(t_row, t)
        kl += sum(pt * (math.log(pt) - math.log(ps)) for ps, pt in zip(p_s, p_t))
    kl /= len(student)  # batchmean
    ce = -sum(math.log(_softmax(row, 1.0)[y]) for row, y in zip(student, labels)) / len(student)
    expected = alpha * t * t * kl + (1 - alpha) * ce

    loss = distillation_loss(
        torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), alpha=alpha, temperature=t
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # Row KLs 0.2576 and 0.0263 (mean 0.1419), row CEs 0.3133 and 1.3133 (mean 0.8133), checked on paper:
    # 0.6 * 4 * 0.1419 + 0.4 * 0.8133 = 0.6658.
    assert kl == pytest.approx(0.1419, abs=1e-4)
    assert ce == pytest.approx(0.8133, abs=1e-4)
    assert expected == pytest.approx(0.6658, abs=1e-4)


def test_alpha_zero_is_cross_entropy() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 0])
    loss = distillation_loss(student, teacher, labels, alpha=0.0, temperature=3.0)
    assert loss.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)
    smoothed = distillation_loss(student, teacher, labels, alpha=0.0, temperature=3.0, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(F.cross_entropy(student, labels, label_smoothing=0.1).item(), rel=1e-6)


def test_alpha_one_identical_logits_is_zero() -> None:
    logits = torch.randn(6, 3)
    loss = distillation_loss(logits, logits.clone(), torch.zeros(6, dtype=torch.long), alpha=1.0, temperature=4.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_reaches_the_student_only() -> None:
    student = torch.randn(4, 3, requires_grad=True)
    teacher = torch.randn(4, 3, requires_grad=True)
    distillation_loss(student, teacher, torch.tensor([0, 1, 2, 0]), alpha=0.7, temperature=4.0).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_t_squared_keeps_gradient_size_across_temperatures() -> None:
    torch.manual_seed(1)
    student0, teacher = torch.randn(8, 10), torch.randn(8, 10)
    norms = {}
    for t in (5.0, 20.0):
        student = student0.clone().requires_grad_(True)
        distillation_loss(student, teacher, torch.zeros(8, dtype=torch.long), alpha=1.0, temperature=t).backward()
        norms[t] = student.grad.norm().item()
    # Without the T^2 factor the two norms would differ by (20/5)^2 = 16x.
    assert norms[20.0] / norms[5.0] == pytest.approx(1.0, abs=0.1)
    # High-temperature limit: grad = (centred student logits - centred teacher logits) / (classes * batch).
    centred = (student0 - student0.mean(1, keepdim=True)) - (teacher - teacher.mean(1, keepdim=True))
    assert norms[20.0] == pytest.approx((centred / (10 * 8)).norm().item(), rel=0.02)


def test_bf16_logits_are_accepted() -> None:
    student, teacher = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([0, 1, 2])
    full = distillation_loss(student, teacher, labels, alpha=0.5, temperature=2.0)
    half = distillation_loss(student.bfloat16(), teacher.bfloat16(), labels, alpha=0.5, temperature=2.0)
    assert half.dtype == torch.float32
    assert half.item() == pytest.approx(full.item(), rel=0.05)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\], but got 1.5"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), alpha=1.5, temperature=1.0)
    with pytest.raises(ValueError, match="temperature must be > 0, but got 0"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), alpha=0.5, temperature=0.0)
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), alpha=0.5, temperature=1.0)
    with pytest.raises(ValueError, match=r"labels must be \(batch,\)"):
        distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), alpha=0.5, temperature=1.0)


def test_config_validates() -> None:
    assert DistillConfig() == DistillConfig(alpha=0.7, temperature=4.0)
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\], but got 1.5"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="temperature must be > 0, but got -1.0"):
        DistillConfig(temperature=-1.0)


def test_student_config_narrows_the_teacher_and_applies_overrides_last():
    from hybrid.distill import student_config

    teacher = {"num_blocks": 3, "base_channels": 32, "head_width": 256, "kernel_size": 3}
    student = student_config("cnn", teacher, {"num_blocks": 2}, width_multiplier=0.5)
    assert (student.base_channels, student.head_width, student.num_blocks, student.kernel_size) == (16, 128, 2, 3)
    # a head of width 0 (no hidden layer) stays 0 rather than growing to 1
    assert student_config("cnn", {**teacher, "head_width": 0}, {}, width_multiplier=0.5).head_width == 0


def test_teacher_outputs_join_the_rows_and_keep_their_arrow_columns(tmp_path) -> None:
    """The distill stage's Ray Data callable on one Arrow batch of QA examples (no cluster): the teacher's
    windows come back per example, and the rows' own columns (``answers``: list<string>) stay Arrow, never
    pickled objects."""
    import numpy as np
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    from hybrid.artifacts import save_model
    from hybrid.distill import _TeacherLogits
    from hybrid.models import collate_fn, get_family
    from hybrid.testing import tiny_span_model

    teacher, config = tiny_span_model()
    save_model(tmp_path / "t", teacher, family="bert_qa", config=config)
    context = ("The harbour museum keeps three wooden boats and the logbooks of the ferry that crossed the bay "
               "every morning from 1890 until the bridge opened in 1961, when the service ended for good.")
    table = pa.table({
        "question": ["When did the bridge open?", "What crossed the bay?"], "context": [context, context],
        "answer_start": [context.index("1961"), context.index("ferry")], "answer_text": ["1961", "ferry"],
        "answers": pa.array([["1961"], ["The ferry", "ferry"]], type=pa.list_(pa.string())),
    })
    family = get_family("bert_qa")
    out = _TeacherLogits(str(tmp_path / "t"), family.input_columns)(table)
    assert out.schema.field("answers").type == pa.list_(pa.string())
    assert {"teacher_logits", "teacher_window_lengths"} <= set(out.column_names) and out.num_rows == 2
    again = _TeacherLogits(str(tmp_path / "t"), family.input_columns)(out)  # recomputed, not duplicated
    assert again.column_names == out.column_names

    batch = collate_fn("bert_qa", config)(BlockAccessor.for_block(out).to_batch_format("numpy"))
    with torch.no_grad():
        expected = teacher(*(batch[c] for c in family.input_columns))
    torch.testing.assert_close(batch["teacher_logits"], expected)
    assert np.asarray(batch["example_index"]).tolist().count(0) >= 2  # several windows per example


def test_a_classifier_teacher_adds_one_logits_row_per_image(tmp_path) -> None:
    """The same callable for a CNN: ``teacher_logits`` ``(rows, classes)`` next to the untouched pixels."""
    import numpy as np
    from ray.data.block import BlockAccessor

    from hybrid.artifacts import save_model
    from hybrid.distill import _TeacherLogits
    from hybrid.models import create_model
    from hybrid.testing import tiny_cnn_config, toy_images

    config = tiny_cnn_config()
    torch.manual_seed(0)
    teacher = create_model("cnn", config=config).eval()
    save_model(tmp_path / "t", teacher, family="cnn", config=config)
    images, labels = toy_images(5, image_size=8, num_classes=3)
    table = BlockAccessor.batch_to_block({"pixels": images.reshape(5, -1).astype(np.float32), "label": labels})
    out = _TeacherLogits(str(tmp_path / "t"), ("pixels",))(table)
    assert out.schema.field("pixels").type == table.schema.field("pixels").type
    logits = BlockAccessor.for_block(out).to_batch_format("numpy")["teacher_logits"]
    assert logits.shape == (5, 3) and logits.dtype == np.float32
    with torch.no_grad():
        expected = teacher(torch.as_tensor(images.reshape(5, -1).astype(np.float32)))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-6)


def test_the_student_trains_with_the_teachers_tuned_settings_and_its_own_epochs() -> None:
    from hybrid.config import config_from_dict
    from hybrid.distill import student_train_config

    config = config_from_dict({"train": {"lr": 0.002, "max_epochs": 8}, "distill": {"max_epochs": 3}})
    teacher = {"params": {"train.lr": 0.01, "train.batch_size": 64, "model.num_blocks": 3}}
    train = student_train_config(teacher, config)
    assert (train.lr, train.batch_size, train.max_epochs) == (0.01, 64, 3)
    assert student_train_config({}, config_from_dict({})).max_epochs == config_from_dict({}).train.max_epochs
