"""fer.train.features: the label each clip is trained and scored by comes from the store's official labels."""

import numpy as np

from fer.cache import create_store, open_store
from fer.cache.schema import CLASS_NAMES
from fer.train.features import load_features

quiet = lambda line: None  # noqa: E731


def _store(path, labels=None):
    votes = np.zeros((4, 7), np.float32)
    votes[0, [0, 1]] = 5  # a tie of happy and sad; the split file says sad
    votes[1, 2] = 10
    votes[2, [0, 3]] = [3, 7]  # angry by the votes; the official label says happy
    votes[3, [4, 5]] = 5  # a tie with no official label
    folds = np.array([[1], [1], [2], [2]], np.int8)
    st = create_store(path, ["a", "b", "c", "d"], votes, folds, class_names=CLASS_NAMES, fold_names=("f",),
                      labels=labels)
    w = st.writer("face.test.16", row_shape=(2, 4), attrs={"modality": "face", "backbone": "test"})
    w.write_rows(np.arange(4), np.ones((4, 2, 4), np.float16), np.ones((4, 2), bool))
    w.close()
    st.close()
    return path


def test_official_labels_decide_ties(tmp_path):
    """Issue 19: with votes sad=5, happy=5 and the official label sad, the clip trains and scores as sad."""
    s = _store(tmp_path / "s.zarr", labels=np.array([1, 2, 0, -1]))
    f = load_features(str(s), ("face",), log=quiet)
    assert f.labels.tolist() == [1, 2, 0, 4]  # official where named; else the votes' majority (class order)
    np.testing.assert_array_equal(f.dist[0], [0.5, 0.5, 0, 0, 0, 0, 0])  # the KL target keeps the votes


def test_a_store_without_labels_gets_them_when_reopened_with_them(tmp_path):
    s = _store(tmp_path / "old.zarr")  # as made before clips/label existed: the votes' majority
    assert load_features(str(s), ("face",), log=quiet).labels.tolist() == [0, 2, 3, 4]
    with open_store(s) as st:
        assert st.labels is None
    with open_store(s) as st:
        votes, folds = st.votes, st.folds
    create_store(s, ["a", "b", "c", "d"], votes, folds, class_names=CLASS_NAMES, fold_names=("f",),
                 labels=np.array([1, 2, 0, -1])).close()
    assert load_features(str(s), ("face",), log=quiet).labels.tolist() == [1, 2, 0, 4]
