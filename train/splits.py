"""Per-fold row sets: train, validation (the protocol's own, or a stratified seeded split of train), and test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN, FOLD_VAL


@dataclass
class FoldSplit:
    """Row indices (into the loaded feature arrays) for one official fold."""

    fold: int
    """Fold number, 1..K of the store's protocol."""
    train: np.ndarray
    """Rows the model is fitted on (training fold minus validation)."""
    val: np.ndarray
    """Rows used for model selection (scheduler, early stopping, best epoch); never test rows."""
    test: np.ndarray
    """The fold's test rows (the protocol's evaluated split), scored once at the end."""


def make_split(folds: np.ndarray, labels: np.ndarray, fold: int, *, val_fraction: float, seed: int,
               usable: np.ndarray | None = None, validation: bool = True) -> FoldSplit:
    """Split rows for `fold` (1-based) from the (N, K) fold codes and the (N,) majority labels.

    Where the protocol has validation clips in this fold (code 3: e.g. CAER's val folder), they are the
    validation set. Otherwise validation takes round(val_fraction * n_c) rows of every class c with at
    least 2 training rows (at least one, never all), chosen by a generator seeded from (seed, fold).
    Test rows are never in train or validation. `usable` (N,) bool drops rows without a usable target.
    `validation` False (the literature protocol): no validation clips at all, the whole training fold trains.
    """
    folds = np.asarray(folds)
    k = folds.shape[1] if folds.ndim == 2 else 0
    if not 1 <= fold <= k:
        raise FerError(f"fold {fold} does not exist: this store has fold(s) 1..{k} (or use --fold all)")
    col = folds[:, fold - 1]
    ok = np.ones(len(col), bool) if usable is None else np.asarray(usable, bool)
    train_all = np.flatnonzero((col == FOLD_TRAIN) & ok)
    test = np.flatnonzero((col == FOLD_TEST) & ok)
    protocol_val = np.flatnonzero((col == FOLD_VAL) & ok)
    if train_all.size == 0 or test.size == 0:
        raise FerError(f"fold {fold} has {train_all.size} training and {test.size} test clips in this store: "
                       "the store needs fold columns with both (re-extract from a root with its split files)")
    if not validation:
        return FoldSplit(fold=fold, train=train_all.astype(np.int64), val=np.zeros(0, np.int64),
                         test=test.astype(np.int64))
    if protocol_val.size:
        return FoldSplit(fold=fold, train=train_all.astype(np.int64), val=protocol_val.astype(np.int64),
                         test=test.astype(np.int64))
    rng = np.random.default_rng([seed, fold])
    labels = np.asarray(labels)
    val_parts = []
    if val_fraction > 0:
        for c in np.unique(labels[train_all]):
            rows = train_all[labels[train_all] == c]
            if rows.size < 2:
                continue
            n = min(max(int(round(val_fraction * rows.size)), 1), rows.size - 1)
            val_parts.append(rng.permutation(rows)[:n])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, np.int64)
    train = np.setdiff1d(train_all, val)
    return FoldSplit(fold=fold, train=train.astype(np.int64), val=val.astype(np.int64), test=test.astype(np.int64))
