"""fer.train.splits: validation carved from train only, stratified, seeded; test = official test rows."""

import numpy as np
import pytest

from fer.cache.errors import FerError
from fer.train.splits import make_split


def _folds(n=350):
    folds = np.ones((n, 5), np.int8)
    folds[np.arange(n), np.arange(n) % 5] = 2
    folds[::50] = 0  # a few clips outside every fold
    labels = np.random.default_rng(1).integers(0, 7, n)
    return folds, labels


@pytest.mark.parametrize("fold", [1, 3, 5])
def test_disjoint_and_complete(fold):
    folds, labels = _folds()
    s = make_split(folds, labels, fold, val_fraction=0.2, seed=0)
    col = folds[:, fold - 1]
    assert set(s.test) == set(np.flatnonzero(col == 2))
    assert not set(s.val) & set(s.test), "a test clip is used for validation (selection)"
    assert not set(s.val) & set(s.train)
    assert set(s.val) | set(s.train) == set(np.flatnonzero(col == 1))
    assert not (set(s.train) | set(s.val)) & set(np.flatnonzero(col == 0))


def test_stratified():
    folds, labels = _folds(700)
    s = make_split(folds, labels, 1, val_fraction=0.2, seed=0)
    train_all = np.concatenate([s.train, s.val])
    for c in range(7):
        n_c = (labels[train_all] == c).sum()
        assert (labels[s.val] == c).sum() == round(0.2 * n_c)


def test_seeded():
    folds, labels = _folds()
    a = make_split(folds, labels, 2, val_fraction=0.1, seed=0)
    b = make_split(folds, labels, 2, val_fraction=0.1, seed=0)
    c = make_split(folds, labels, 2, val_fraction=0.1, seed=1)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)
    assert not np.array_equal(a.val, c.val)


def test_no_validation_and_usable():
    folds, labels = _folds()
    s = make_split(folds, labels, 1, val_fraction=0.0, seed=0)
    assert s.val.size == 0
    usable = np.ones(len(labels), bool)
    usable[:20] = False
    s = make_split(folds, labels, 1, val_fraction=0.1, seed=0, usable=usable)
    assert not (set(s.train) | set(s.val) | set(s.test)) & set(range(20))  # no votes: no target, no label


def test_bad_fold_and_no_fold_columns():
    folds, labels = _folds()
    with pytest.raises(FerError, match="fold 6 does not exist"):
        make_split(folds, labels, 6, val_fraction=0.1, seed=0)
    with pytest.raises(FerError, match="fold columns"):
        make_split(np.zeros_like(folds), labels, 1, val_fraction=0.1, seed=0)


def test_the_protocols_own_validation_clips_select_the_model():
    """Class folders with train/val/test (CAER): val (code 3) is the validation set, never trained on."""
    n = 60
    folds = np.ones((n, 1), np.int8)
    folds[40:50, 0] = 3
    folds[50:, 0] = 2
    labels = np.arange(n) % 7
    s = make_split(folds, labels, 1, val_fraction=0.2, seed=0)
    assert s.val.tolist() == list(range(40, 50)) and s.test.tolist() == list(range(50, 60))
    assert s.train.tolist() == list(range(40))  # no clip of train is carved off
    with pytest.raises(FerError, match="fold 2 does not exist: this store has fold"):
        make_split(folds, labels, 2, val_fraction=0.2, seed=0)
