"""Classification metrics on the test fold (numpy): WAR, standard UAR, per-class recall, confusion."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def war(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Weighted average recall = plain accuracy."""
    y_true = np.asarray(y_true)
    if y_true.size == 0:
        return float("nan")
    return float(np.mean(y_true == np.asarray(y_pred)))


def per_class_recall(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) float64 recall per class; NaN for classes absent from y_true."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall: the mean of per-class recall over the classes present in y_true.

    (The standard definition; the paper's Eq. 1 averages something else.)
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    present = np.unique(y_true)
    if present.size == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in present]))
