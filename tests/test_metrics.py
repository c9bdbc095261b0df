"""Unit tests of hybrid.metrics against hand-worked values and a direct per-class computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hybrid.metrics import classification_metrics, confusion_matrix

# 3 classes; class 2 occurs twice but is never predicted.
LABELS = [0, 0, 0, 1, 1, 2, 2]
PREDS = [0, 0, 1, 1, 0, 1, 1]


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(np.array(LABELS), np.array(PREDS), 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, [[2, 1, 0], [1, 1, 0], [0, 2, 0]])  # rows: truth, columns: prediction


def test_confusion_matrix_accepts_lists_and_keeps_unseen_classes() -> None:
    cm = confusion_matrix([1, 1], [1, 0], 4)
    assert cm.shape == (4, 4)
    assert cm.sum() == 2 and cm[1, 1] == 1 and cm[1, 0] == 1


def test_metrics_by_hand_with_a_class_never_predicted() -> None:
    scores = classification_metrics(confusion_matrix(np.array(LABELS), np.array(PREDS), 3))
    # precision: 2/3, 1/4 and 0 (never predicted); recall: 2/3, 1/2, 0; F1: 2/3, 1/3, 0.
    assert scores["accuracy"] == pytest.approx(3 / 7)
    assert scores["macro_precision"] == pytest.approx((2 / 3 + 1 / 4 + 0) / 3)
    assert scores["macro_recall"] == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert scores["macro_f1"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert set(scores) == {"accuracy", "macro_precision", "macro_recall", "macro_f1"}
    assert all(isinstance(v, float) for v in scores.values())


def test_absent_class_counts_as_zero_in_the_macro_average() -> None:
    # Class 3 never occurs and is never predicted: its zero scores still dilute the macro means.
    three = classification_metrics(confusion_matrix([0, 1, 2], [0, 1, 2], 3))
    four = classification_metrics(confusion_matrix([0, 1, 2], [0, 1, 2], 4))
    assert three["macro_f1"] == 1.0 and three["accuracy"] == 1.0
    assert four["accuracy"] == 1.0
    assert four["macro_precision"] == four["macro_recall"] == four["macro_f1"] == pytest.approx(0.75)


def test_empty_matrix_gives_zeros_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scores = classification_metrics(np.zeros((3, 3), dtype=np.int64))
    assert scores == {"accuracy": 0.0, "macro_precision": 0.0, "macro_recall": 0.0, "macro_f1": 0.0}


def _direct(labels: np.ndarray, preds: np.ndarray, k: int) -> dict[str, float]:
    """Per-class counts by boolean masks: an independent route to the same numbers."""
    precision, recall, f1 = [], [], []
    for c in range(k):
        tp = np.sum((labels == c) & (preds == c))
        fp = np.sum((labels != c) & (preds == c))
        fn = np.sum((labels == c) & (preds != c))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {
        "accuracy": float(np.mean(labels == preds)),
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_direct_per_class_computation_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n = 7, 500
    labels = rng.integers(0, k, n)
    # Right 60% of the time, otherwise a random class; class 6 is never predicted.
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
    preds[preds == 6] = 0
    cm = confusion_matrix(labels, preds, k)
    loops = np.zeros((k, k), dtype=np.int64)
    for t, p in zip(labels, preds, strict=True):
        loops[t, p] += 1
    np.testing.assert_array_equal(cm, loops)
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(labels, minlength=k))
    scores = classification_metrics(cm)
    expected = _direct(labels, preds, k)
    assert scores == pytest.approx(expected, rel=1e-12)
    assert 0.0 < scores["macro_f1"] < scores["accuracy"] < 1.0
