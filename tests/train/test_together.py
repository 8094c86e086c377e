"""Models trained together as one batched model (fer.train.stacked, fer.train.fit.fit_group): the folds of a
run and the compatible points of a sweep give the numbers each gives alone; a group resumes mid-way."""

import json
import time

import numpy as np
import pytest
import torch

from fer.tests.train.synth_store import make_store
from fer.train.config import TrainConfig
from fer.train.features import load_features
from fer.train.run import train_run, train_runs
from fer.train.together import chunks, group_key

TINY = dict(layers=1, heads=2, ff=64, hidden=64, lr=1e-3, batch_size=32, device="cpu", plots=False)
quiet = lambda line: None  # noqa: E731


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("s") / "s.zarr", modalities=("face", "pose", "audio"), signal=0.6)


@pytest.fixture(scope="module")
def feats(store):
    return load_features(str(store), ("face", "pose", "audio"), log=quiet)


def same_numbers(a, b):
    """Two run folders: per fold the same selected epoch and epochs run, the same predicted class on every
    test clip, probabilities within 1e-4."""
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["folds"].keys() == mb["folds"].keys()
    for k, fa in ma["folds"].items():
        fb = mb["folds"][k]
        assert (fa["best_epoch"], fa["epochs_run"]) == (fb["best_epoch"], fb["epochs_run"]), k
        pa, pb = np.load(a / f"predictions_fold{k}.npz"), np.load(b / f"predictions_fold{k}.npz")
        assert np.array_equal(pa["ids"], pb["ids"])
        assert np.array_equal(pa["probs"].argmax(1), pb["probs"].argmax(1)), k
        assert np.abs(pa["probs"] - pb["probs"]).max() < 1e-4, k
    return ma


def test_five_folds_together_give_the_numbers_of_each_fold_alone(store, feats, tmp_path):
    # early stopping on: folds stop at different epochs, and a stopped fold keeps its selection while the
    # others go on
    cfg = dict(modalities=("face", "pose", "audio"), fusion="transformer", folds=(), dropout=0.3,
               modality_dropout=0.2, epochs=12, patience=3, monitor="loss", scheduler="plateau", **TINY)
    lines = []
    t0 = time.perf_counter()
    together = train_run(TrainConfig(out=str(tmp_path / "together"), **cfg), store, features=feats,
                         log=lines.append)
    wall = time.perf_counter() - t0
    # each fold is charged its share of the rounds it trained in: the report's time is the run's, not 5x it
    assert 0 < sum(f["seconds"] for f in together["folds"].values()) <= wall
    assert any(line.startswith("trained together as one batched model: [fold 1, fold 2, fold 3, fold 4, fold 5]")
               for line in lines), lines
    alone_lines = []
    train_run(TrainConfig(out=str(tmp_path / "alone"), folds_together=1, **cfg), store, features=feats,
              log=alone_lines.append)
    assert "5 model(s), trained one at a time" in alone_lines
    m = same_numbers(tmp_path / "together", tmp_path / "alone")
    runs = [f["epochs_run"] for f in m["folds"].values()]
    assert len(set(runs)) > 1 and min(runs) < 12, runs  # some fold stopped while others went on
    assert together["folds"].keys() == {"1", "2", "3", "4", "5"}
    assert json.loads((tmp_path / "together" / "resources.json").read_text())["models_together"] == 5
    hist = (tmp_path / "together" / "history.csv").read_text().splitlines()[1:]
    assert [int(r.split(",")[0]) for r in hist] == sorted(int(r.split(",")[0]) for r in hist)  # fold by fold


def test_folds_together_caps_the_group(store, feats, tmp_path):
    lines = []
    train_run(TrainConfig(out=str(tmp_path / "r"), folds=(1, 2, 3), epochs=1, folds_together=2, **TINY), store,
              features=feats, log=lines.append)
    assert "trained together as one batched model: [fold 1, fold 2]; then [fold 3]" in lines
    assert chunks([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]] and chunks([1, 2, 3, 4, 5], 9) == [[1, 2, 3, 4, 5]]


def test_a_group_interrupted_mid_way_resumes_to_the_same_numbers(store, feats, tmp_path, monkeypatch):
    from fer.train import fit

    monkeypatch.setattr(fit, "CHECKPOINT_EVERY_S", 0.0)  # every epoch checkpointed
    cfg = dict(folds=(1, 2, 3), dropout=0.2, scheduler="cosine", epochs=5, **TINY)
    train_run(TrainConfig(out=str(tmp_path / "full"), **cfg), store, features=feats, log=quiet)

    def ctrl_c_in_fold2_epoch3(line):
        if line.startswith("fold 2 epoch   3/"):
            raise KeyboardInterrupt

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_run(TrainConfig(out=str(out), **cfg), store, features=feats, log=ctrl_c_in_fold2_epoch3)
    assert not (out / "metrics.json").exists()
    # fold 1 finished epoch 3 before fold 2 did; fold 3 had not: each resumes from its own checkpoint
    assert [torch.load(out / f"checkpoint_fold{k}.pt", weights_only=True)["epoch"] for k in (1, 2, 3)] == [2, 2, 2]
    lines = []
    train_run(TrainConfig(out=str(out), resume=True, **cfg), store, features=feats, log=lines.append)
    assert all(f"fold {k}: resuming after epoch 2" in lines for k in (1, 2, 3))
    same_numbers(out, tmp_path / "full")
    assert (out / "history.csv").read_text().count("\n") == 16


def test_sweep_points_trained_together_give_their_numbers_alone(store, feats, tmp_path):
    points = [dict(lr=1e-3, dropout=0.1, seed=1, loss="kl"), dict(lr=3e-4, dropout=0.4, seed=2, loss="ce"),
              dict(lr=2e-3, dropout=0.0, seed=1, loss="mse", weight_decay=1e-2, optimizer="adam")]
    base = {**TINY, "folds": (1, 2), "epochs": 4}
    cfgs = [TrainConfig(out=str(tmp_path / "together" / f"p{i}"), **{**base, **p}) for i, p in enumerate(points)]
    assert len({group_key(c) for c in cfgs}) == 1
    lines = []
    train_runs(cfgs, store, features=feats, log=lines.append)
    assert any(line.startswith("trained together as one batched model: [p0 fold 1, p0 fold 2, p1 fold 1")
               for line in lines)
    for i, p in enumerate(points):
        train_run(TrainConfig(out=str(tmp_path / "alone" / f"p{i}"), folds_together=1, **{**base, **p}), store,
                  features=feats, log=quiet)
        same_numbers(tmp_path / "together" / f"p{i}", tmp_path / "alone" / f"p{i}")
        config = json.loads((tmp_path / "together" / f"p{i}" / "config.json").read_text())
        assert config["lr"] == p["lr"] and config["loss"] == p["loss"]
