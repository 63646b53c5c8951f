"""Classification metrics computed from the confusion matrix over an explicit label set.

Every class in ``labels`` counts in the macro averages, even one absent from
``y_true``; a precision or recall whose denominator is zero takes ``zero_division``.
scikit-learn gives the same figures when called with the same ``labels`` and
``zero_division``; the tests check that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metrics:
    """Accuracy, macro averages and per-class figures of one prediction set."""

    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    zero_division: float

    @property
    def error(self) -> float:
        return 1.0 - self.accuracy


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int]) -> np.ndarray:
    """Count (true, predicted) pairs; labels outside ``labels`` raise ValueError."""
    position = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for true, pred in zip(np.asarray(y_true).tolist(), np.asarray(y_pred).tolist()):
        if true not in position or pred not in position:
            raise ValueError(f"label {true if true not in position else pred} is not in labels {labels}")
        matrix[position[true], position[pred]] += 1
    return matrix


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: list[int],
                           zero_division: float = 0.0) -> Metrics:
    """Return accuracy, macro precision / recall / F1 and per-class figures."""
    if len(y_true) == 0:
        raise ValueError("cannot score an empty prediction set")
    matrix = confusion_matrix(y_true, y_pred, labels)
    true_positive = np.diag(matrix).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    actual = matrix.sum(axis=1).astype(float)

    precision = _safe_divide(true_positive, predicted, zero_division)
    recall = _safe_divide(true_positive, actual, zero_division)
    # F1 is 2TP / (2TP + FP + FN); a class never predicted and never present divides by zero.
    f1 = _safe_divide(2 * true_positive, predicted + actual, zero_division)

    return Metrics(
        accuracy=float(true_positive.sum() / matrix.sum()),
        macro_precision=float(precision.mean()),
        macro_recall=float(recall.mean()),
        macro_f1=float(f1.mean()),
        precision=precision.tolist(),
        recall=recall.tolist(),
        f1=f1.tolist(),
        support=actual.astype(int).tolist(),
        confusion=matrix.tolist(),
        zero_division=zero_division,
    )


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray, fallback: float) -> np.ndarray:
    result = np.full_like(numerator, fallback, dtype=float)
    nonzero = denominator > 0
    result[nonzero] = numerator[nonzero] / denominator[nonzero]
    return result
