"""fer.train.metrics on hand-computed examples: WAR is accuracy, UAR the mean per-class recall."""

import numpy as np
import pytest

from fer.train.metrics import confusion_matrix, per_class_recall, uar, war


def test_hand_example():
    # class 0: 3 clips, 2 right; class 1: 1 clip, right; class 2: 2 clips, 0 right
    y_true = np.array([0, 0, 0, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 0, 1])
    assert war(y_true, y_pred) == pytest.approx(3 / 6)
    assert uar(y_true, y_pred) == pytest.approx((2 / 3 + 1 + 0) / 3)  # classes 3..6 absent: left out
    r = per_class_recall(y_true, y_pred, 7)
    assert r[:3] == pytest.approx([2 / 3, 1.0, 0.0]) and np.isnan(r[3:]).all()
    cm = confusion_matrix(y_true, y_pred, 7)
    assert cm.shape == (7, 7) and cm.sum() == 6
    assert cm[0].tolist()[:3] == [2, 1, 0] and cm[2].tolist()[:3] == [1, 1, 0]  # rows = true, cols = predicted


def test_uar_differs_from_war_on_imbalance():
    y_true = np.array([0] * 9 + [1])
    y_pred = np.zeros(10, int)  # always the majority class
    assert war(y_true, y_pred) == pytest.approx(0.9)
    assert uar(y_true, y_pred) == pytest.approx(0.5)


def test_perfect_and_empty():
    y = np.arange(7)
    assert war(y, y) == uar(y, y) == 1.0
    assert np.isnan(war(np.array([], int), np.array([], int)))
    assert np.isnan(uar(np.array([], int), np.array([], int)))


def test_eleven_classes_uar_is_over_the_classes_present():
    # MAFW-sized: 11 classes; class 10 never appears in the test fold, class 9 is never predicted right
    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9])
    y_pred = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 0])
    assert uar(y_true, y_pred) == pytest.approx(9 / 10)
    r = per_class_recall(y_true, y_pred, 11)
    assert r.shape == (11,) and r[9] == 0 and np.isnan(r[10])
    assert confusion_matrix(y_true, y_pred, 11).shape == (11, 11)
