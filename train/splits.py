"""Per-fold row sets: train, a stratified seeded validation split carved from train, and the official test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN, NUM_FOLDS


@dataclass
class FoldSplit:
    """Row indices (into the loaded feature arrays) for one official fold."""

    fold: int
    """Official fold number, 1..5."""
    train: np.ndarray
    """Rows the model is fitted on (training fold minus validation)."""
    val: np.ndarray
    """Rows used for model selection (scheduler, early stopping, best epoch); never test rows."""
    test: np.ndarray
    """The fold's official test rows, evaluated once at the end."""


def make_split(folds: np.ndarray, labels: np.ndarray, fold: int, *, val_fraction: float, seed: int,
               usable: np.ndarray | None = None) -> FoldSplit:
    """Split rows for `fold` (1-based) from the (N, 5) fold codes and the (N,) majority labels.

    Validation takes round(val_fraction * n_c) rows of every class c with at least 2 training rows
    (at least one, never all), chosen by a generator seeded from (seed, fold). `usable` (N,) bool
    drops rows without a usable target (no votes: no label to learn or to score).
    """
    if not 1 <= fold <= NUM_FOLDS:
        raise FerError(f"fold {fold} does not exist: DFEW has folds 1..{NUM_FOLDS} (or use --fold all)")
    col = np.asarray(folds)[:, fold - 1]
    train_mask = col == FOLD_TRAIN
    if usable is not None:
        train_mask &= usable
    train_all = np.flatnonzero(train_mask)
    test = np.flatnonzero((col == FOLD_TEST) & (True if usable is None else usable))
    if train_all.size == 0 or test.size == 0:
        raise FerError(f"fold {fold} has {train_all.size} training and {test.size} test clips in this store: "
                       "the store needs official fold columns (re-extract from a root with its split files)")
    rng = np.random.default_rng([seed, fold])
    labels = np.asarray(labels)
    val_parts = []
    if val_fraction > 0:
        for c in np.unique(labels[train_all]):
            rows = train_all[labels[train_all] == c]
            if rows.size < 2:
                continue
            k = min(max(int(round(val_fraction * rows.size)), 1), rows.size - 1)
            val_parts.append(rng.permutation(rows)[:k])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    train = np.setdiff1d(train_all, val)
    return FoldSplit(fold=fold, train=train.astype(np.int64), val=val.astype(np.int64), test=test.astype(np.int64))
