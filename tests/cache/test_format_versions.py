"""Store format 2 (classes, folds and layout named in the root attrs) and stores written as format 1.

Format 1 wrote no fold names and no layout: it was DFEW's shape (7 classes, 5 folds). Such a store keeps
listing, verifying and training, and fer never rewrites it.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer.cache import FerError, create_store, open_store
from fer.cache.schema import DFEW_CLASSES, DFEW_FOLDS
from fer.cache.verify import verify_store
from fer.tests.train.synth_store import make_store


def _as_format_1(path: Path) -> None:
    """Rewrite the root attrs of a zarr store exactly as fer 0.1 (format 1) wrote them."""
    meta_file = path / "zarr.json"
    meta = json.loads(meta_file.read_text())
    attrs = meta["attributes"]
    attrs["format_version"] = 1
    attrs["class_names"] = list(DFEW_CLASSES)
    for k in ("fold_names", "layout", "protocol"):
        attrs.pop(k, None)
    meta_file.write_text(json.dumps(meta))


def test_format_1_store_lists_verifies_and_trains(tmp_path):
    store = make_store(tmp_path / "v1.zarr", n=70)
    _as_format_1(store)
    before = (store / "zarr.json").read_bytes()
    with open_store(store) as s:
        assert s.attrs["format_version"] == 1
        assert s.class_names == DFEW_CLASSES and s.fold_names == DFEW_FOLDS and s.layout == "dfew"
        assert verify_store(s).ok
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "fer.cli", "train", str(store), "--fold", "all", "--epochs", "1",
                        "--layers", "1", "--heads", "2", "--ff", "16", "--no-plots", "--out", str(run)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["folds"]) == ["1", "2", "3", "4", "5"] and metrics["class_names"] == list(DFEW_CLASSES)
    ls = subprocess.run([sys.executable, "-m", "fer.cli", "cache", "ls", str(store)], capture_output=True, text=True)
    assert ls.returncode == 0 and "face.resnet18.test.pool.224" in ls.stdout
    # adding a feature set to it does not rewrite the store's own attrs
    with open_store(store, "r+") as s:
        with s.writer("audio.x", row_shape=(2, 3), attrs={"modality": "audio"}) as w:
            w.write_rows([0], np.zeros((1, 2, 3)), np.ones((1, 2), bool))
    assert (store / "zarr.json").read_bytes() == before


def test_format_2_records_any_class_set_and_protocol(tmp_path):
    ids = [f"c{i}" for i in range(4)]
    votes = np.eye(11, dtype=np.float32)[[0, 3, 7, 10]]
    folds = np.array([[1], [3], [2], [2]], np.int8)
    with create_store(tmp_path / "s.zarr", ids, votes, folds, class_names=[f"k{i}" for i in range(11)],
                      fold_names=["official"], layout="folders") as s:
        assert s.class_names[10] == "k10" and s.fold_names == ("official",) and s.layout == "folders"
        assert s.attrs["format_version"] == 2
    with open_store(tmp_path / "s.zarr") as s:
        assert s.votes.shape == (4, 11) and verify_store(s).ok
    with pytest.raises(FerError, match="votes have 11 columns: name the classes"):
        create_store(tmp_path / "t.zarr", ids, votes, folds)
    with pytest.raises(FerError, match="fold codes must be 0"):
        create_store(tmp_path / "u.zarr", ids, votes, folds + 5, class_names=[f"k{i}" for i in range(11)])
    # the same clips under other class names are another dataset
    with pytest.raises(FerError, match="names its classes k0, k1"):
        create_store(tmp_path / "s.zarr", ids, votes, folds, class_names=[f"z{i}" for i in range(11)],
                     fold_names=["official"])


def test_attrs_that_disagree_with_the_arrays_are_a_damaged_store(tmp_path):
    store = make_store(tmp_path / "s.zarr", n=20)
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["class_names"] = ["a", "b"]
    (store / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(FerError, match="damaged: its attrs name 2 classes and 5 folds but clips/votes has 7 columns"):
        open_store(store)
