"""Metrics against scikit-learn on hand-made predictions."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from pipeline.metrics import classification_metrics

CASES = {
    "all classes present": ([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2], [0, 1, 2]),
    "class missing from truth": ([0, 0, 1, 1], [0, 2, 1, 1], [0, 1, 2]),
    "class never predicted": ([0, 1, 2, 2], [0, 1, 1, 1], [0, 1, 2]),
    "class absent everywhere": ([0, 1, 0, 1], [0, 1, 1, 1], [0, 1, 2, 3]),
    "all wrong": ([0, 1, 2], [1, 2, 0], [0, 1, 2]),
}


@pytest.mark.parametrize("zero_division", [0.0, 1.0])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_metrics_match_sklearn(case, zero_division):
    y_true, y_pred, labels = (np.array(v) if i < 2 else v for i, v in enumerate(CASES[case]))
    ours = classification_metrics(y_true, y_pred, labels, zero_division=zero_division)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=zero_division)
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro",
                                                    zero_division=zero_division)

    assert ours.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    assert ours.precision == pytest.approx(p.tolist())
    assert ours.recall == pytest.approx(r.tolist())
    assert ours.f1 == pytest.approx(f.tolist())
    assert ours.support == s.tolist()
    assert ours.macro_precision == pytest.approx(mp)
    assert ours.macro_recall == pytest.approx(mr)
    assert ours.macro_f1 == pytest.approx(mf)
    assert ours.confusion == confusion_matrix(y_true, y_pred, labels=labels).tolist()


def test_metrics_known_values():
    # Two of three right; class 1 predicted once, wrongly: precision 0, recall 0.
    ours = classification_metrics(np.array([0, 0, 2]), np.array([0, 1, 2]), [0, 1, 2])
    assert ours.accuracy == pytest.approx(2 / 3)
    assert ours.recall == pytest.approx([0.5, 0.0, 1.0])
    assert ours.f1 == pytest.approx([2 / 3, 0.0, 1.0])


def test_metrics_reject_unknown_label():
    with pytest.raises(ValueError, match="label 5"):
        classification_metrics(np.array([0, 5]), np.array([0, 0]), [0, 1])
