"""fer.train.run / fit on small real stores: learning, determinism, resume, selection, bad input."""

import json

import numpy as np
import pytest
import torch

from fer.cache.errors import FerError
from fer.tests.train.synth_store import make_store
from fer.train.config import TrainConfig
from fer.train.features import load_features
from fer.train.run import train_run

TINY = dict(layers=1, heads=2, ff=64, hidden=64, epochs=6, lr=1e-3, batch_size=32, device="cpu", plots=False)
quiet = lambda line: None  # noqa: E731


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("s") / "s.zarr", modalities=("face", "pose", "audio"))


def _metrics_wo_time(run):
    m = json.loads((run / "metrics.json").read_text())
    for f in m["folds"].values():
        f.pop("seconds")
    return m


@pytest.mark.parametrize("loss", ["kl", "mse", "ce", "wce"])
def test_losses_learn(store, tmp_path, loss):
    m = train_run(TrainConfig(loss=loss, out=str(tmp_path / "r"), **TINY), store, log=quiet)
    assert m["folds"]["1"]["uar"] > 0.5  # chance is 1/7


def test_run_folder(store, tmp_path):
    lines = []
    out = tmp_path / "r"
    m = train_run(TrainConfig(modalities=("face", "audio"), fusion="fc", folds=(1, 2), out=str(out), **TINY),
                  store, log=lines.append)
    assert set(m["folds"]) == {"1", "2"} and m["fusion"] == "fc" and m["modalities"] == ["face", "audio"]
    for k in ("1", "2"):
        f = m["folds"][k]
        assert np.array(f["confusion"]).sum() == f["n_test"] == 42
        assert len(f["per_class_recall"]) == 7 and 1 <= f["best_epoch"] <= f["epochs_run"] == 6
    assert m["mean"]["war"] == pytest.approx(np.mean([m["folds"][k]["war"] for k in "12"]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["features"]["audio"]["spec"] == "audio.wav2vec2.test.16k" and cfg["folds"] == [1, 2]
    assert cfg["features"]["face"]["provenance"]["modality"] == "face"
    hist = (out / "history.csv").read_text().splitlines()
    assert hist[0] == "fold,epoch,train_loss,val_loss,val_war,val_uar,lr,samples_per_s,seconds" and len(hist) == 13
    p = np.load(out / "predictions_fold2.npz")
    assert p["probs"].shape == (42, 7) and p["labels"].dtype == np.int64 and p["ids"].dtype.kind == "U"
    assert np.allclose(p["probs"].sum(1), 1, atol=1e-5)
    ck = torch.load(out / "checkpoint_fold1.pt", weights_only=True)
    assert ck["complete"] and ck["epoch"] == m["folds"]["1"]["best_epoch"] and "model" in ck
    assert any("samples/s" in line and "val WAR" in line for line in lines)
    assert any("\n  mean" in line for line in lines)  # the end-of-run table
    assert not (out / "metrics_partial.json").exists()
    with pytest.raises(FerError, match="already holds a run"):
        train_run(TrainConfig(modalities=("face", "audio"), fusion="fc", folds=(1, 2), out=str(out), **TINY),
                  store, log=quiet)


def test_deterministic(store, tmp_path):
    cfg = dict(modalities=("face", "pose", "audio"), fusion="transformer", dropout=0.2, **TINY)
    train_run(TrainConfig(out=str(tmp_path / "a"), **cfg), store, log=quiet)
    train_run(TrainConfig(out=str(tmp_path / "b"), **cfg), store, log=quiet)
    assert _metrics_wo_time(tmp_path / "a") == _metrics_wo_time(tmp_path / "b")
    pa, pb = np.load(tmp_path / "a" / "predictions_fold1.npz"), np.load(tmp_path / "b" / "predictions_fold1.npz")
    assert np.array_equal(pa["probs"], pb["probs"])


@pytest.mark.parametrize("every_s, saved_epoch", [(0.0, 2), (3600.0, 1)])
def test_interrupt_then_resume_matches_uninterrupted(store, tmp_path, monkeypatch, every_s, saved_epoch):
    """Every epoch checkpointed, or (the default interval) only the first: resume replays to the same numbers."""
    from fer.train import fit

    monkeypatch.setattr(fit, "CHECKPOINT_EVERY_S", every_s)
    # one fold after another (--folds-together 1): fold 1 is finished when fold 2 is cut; test_together.py
    # cuts a group of folds trained together
    cfg = dict(modalities=("face", "pose"), fusion="fc", folds=(1, 2), dropout=0.2, scheduler="cosine",
               folds_together=1, **TINY)
    train_run(TrainConfig(out=str(tmp_path / "full"), **cfg), store, log=quiet)

    def ctrl_c_in_fold2_epoch3(line):
        if line.startswith("fold 2 epoch   3/"):
            raise KeyboardInterrupt  # what Ctrl-C does between two epochs

    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_run(TrainConfig(out=str(out), **cfg), store, log=ctrl_c_in_fold2_epoch3)
    assert not (out / "metrics.json").exists()
    assert set(json.loads((out / "metrics_partial.json").read_text())["folds"]) == {"1"}
    assert torch.load(out / "checkpoint_fold2.pt", weights_only=True)["epoch"] == saved_epoch
    lines = []
    train_run(TrainConfig(out=str(out), resume=True, **cfg), store, log=lines.append)
    assert "fold 1: already finished, skipped" in lines and f"fold 2: resuming after epoch {saved_epoch}" in lines
    assert _metrics_wo_time(out) == _metrics_wo_time(tmp_path / "full")
    assert (out / "history.csv").read_text().count("\n") == 13
    with pytest.raises(FerError, match="--resume with other settings"):
        train_run(TrainConfig(out=str(out), resume=True, **{**cfg, "lr": 0.5}), store, log=quiet)
    with pytest.raises(FerError, match="nothing to resume"):
        train_run(TrainConfig(out=str(tmp_path / "new"), resume=True, **cfg), store, log=quiet)


def test_select_last_and_features_passed_in(store, tmp_path):
    feats = load_features(str(store), ("face", "pose", "audio"), log=quiet)
    m = train_run(TrainConfig(select="last", out=str(tmp_path / "r"), **TINY), store, features=feats, log=quiet)
    assert m["folds"]["1"]["best_epoch"] == m["folds"]["1"]["epochs_run"] == 6
    m = train_run(TrainConfig(val_fraction=0.0, out=str(tmp_path / "r0"), **TINY), store, features=feats, log=quiet)
    assert m["folds"]["1"]["best_epoch"] == 6


def test_early_stopping(store, tmp_path):
    m = train_run(TrainConfig(**{**TINY, "epochs": 40}, patience=2, monitor="uar", out=str(tmp_path / "r")),
                  store, log=quiet)
    assert m["folds"]["1"]["epochs_run"] < 40  # val UAR saturates at 1.0 quickly


def test_nan_features_stop_with_clear_error(store, tmp_path):
    # the store's writer refuses NaN rows, so corrupt the features after loading (as a damaged store would)
    feats = load_features(str(store), ("face",), log=quiet)
    feats.sets["face"].data[:50] = float("nan")
    out = tmp_path / "r"
    with pytest.raises(FerError, match="non-finite training loss in fold 1 epoch 1.*NaN/Inf"):
        train_run(TrainConfig(out=str(out), **TINY), store, features=feats, log=quiet)
    assert not (out / "checkpoint_fold1.pt").exists() and not (out / "metrics.json").exists()


def test_lr_blowup_keeps_last_good_checkpoint(store, tmp_path, monkeypatch):
    from fer.train import fit

    monkeypatch.setattr(fit, "CHECKPOINT_EVERY_S", 0.0)  # a checkpoint every epoch
    feats = load_features(str(store), ("face",), log=quiet)
    feats.sets["face"].data[:] = feats.sets["face"].data * 0
    bad = feats.sets["face"].data.clone()
    bad[:5] = float("inf")

    calls = []

    def poison_after_epoch2(line):
        calls.append(line)
        if line.startswith("fold 1 epoch   2/"):
            feats.sets["face"].data.copy_(bad)  # the device copy is the same tensor on CPU
    out = tmp_path / "r"
    with pytest.raises(FerError, match="epoch 3.*last good checkpoint \\(epoch 2\\)"):
        train_run(TrainConfig(out=str(out), **TINY), store, features=feats, log=poison_after_epoch2)
    assert torch.load(out / "checkpoint_fold1.pt", weights_only=True)["epoch"] == 2


def test_incomplete_rows(tmp_path):
    s = make_store(tmp_path / "inc.zarr", not_done=15)
    with pytest.raises(FerError, match="15 of 210 clips in the folds are not done.*--allow-incomplete"):
        train_run(TrainConfig(out=str(tmp_path / "r"), **TINY), s, log=quiet)
    lines = []
    m = train_run(TrainConfig(out=str(tmp_path / "r2"), allow_incomplete=True, **TINY), s, log=lines.append)
    assert any("15 of 210 clips in the folds are left out" in line for line in lines)
    assert m["folds"]["1"]["n_test"] == 42 - 3  # rows 0..14: 3 of them are fold 1's test clips


def test_store_without_folds(tmp_path):
    s = make_store(tmp_path / "nofold.zarr", no_folds=True)
    with pytest.raises(FerError, match="has no fold columns"):
        train_run(TrainConfig(out=str(tmp_path / "r"), **TINY), s, log=quiet)


def test_missing_and_ambiguous_specs(tmp_path):
    s = make_store(tmp_path / "f.zarr", extra_face_spec=True)
    with pytest.raises(FerError, match=r"has 2 face feature sets .* choose one with --face SPEC"):
        load_features(str(s), ("face",), log=quiet)
    feats = load_features(str(s), ("face",), specs={"face": "face.resnet18.other.pool.224"}, log=quiet)
    assert feats.sets["face"].spec == "face.resnet18.other.pool.224"
    with pytest.raises(FerError, match=r"no pose feature set .*`fer extract ROOT --modality pose --store"):
        load_features(str(s), ("face", "pose"), specs={"face": "face.resnet18.other.pool.224"}, log=quiet)
    with pytest.raises(FerError, match="is not in"):
        load_features(str(s), ("face",), specs={"face": "face.nope"}, log=quiet)


def test_one_hot_store_warns(tmp_path):
    s = make_store(tmp_path / "oh.zarr", one_hot=True)
    lines = []
    feats = load_features(str(s), ("face",), log=lines.append)
    assert not feats.has_votes and any("one-hot" in line for line in lines)


def test_leakage_guard(tmp_path):
    s = make_store(tmp_path / "ft.zarr", finetuned_on_fold=2)
    with pytest.raises(FerError, match="fine-tuned on fold 2.*train only --fold 2"):
        train_run(TrainConfig(folds=(1,), out=str(tmp_path / "r"), **TINY), s, log=quiet)
    m = train_run(TrainConfig(folds=(2,), out=str(tmp_path / "r2"), **{**TINY, "epochs": 1}), s, log=quiet)
    assert "2" in m["folds"]


def test_finetune_layer4_from_layer3_cache(tmp_path):
    s = make_store(tmp_path / "l3.zarr", n=70, face_maps=True)
    cfg = TrainConfig(finetune="layer4", out=str(tmp_path / "r"), **{**TINY, "epochs": 2, "heads": 8})
    m = train_run(cfg, s, log=quiet)
    assert m["folds"]["1"]["n_test"] == 14
    ck = torch.load(tmp_path / "r" / "checkpoint_fold1.pt", weights_only=True)
    assert ck["finetuned_on_fold"] == 1 and "layer4.0.conv1.weight" in ck["backbone"]
    with pytest.raises(FerError, match="--finetune layer4"):
        train_run(TrainConfig(out=str(tmp_path / "r2"), **TINY), s, log=quiet)


def test_cuda_runs_are_made_deterministic(monkeypatch):
    """What --resume's identical numbers rely on, set for a CUDA device (flags only: no GPU is needed to set them)."""
    import os

    from fer.train.run import deterministic

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    restore = deterministic(torch.device("cuda"))
    try:
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        restore()
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert not torch.backends.cuda.matmul.allow_tf32  # TF32, on for the run, is given back too (torch's default)


def test_literature_protocol_is_one_switch(store, tmp_path):
    """Issue 19: --protocol literature trains on the whole training fold, no validation, no plateau scheduler
    or early stopping, the last epoch kept; fer's protocol holds out validation even with --select last."""
    lines = []
    cfg = TrainConfig(protocol="literature", patience=1, out=str(tmp_path / "lit"), **TINY)
    m = train_run(cfg, store, log=lines.append)
    assert cfg.val_fraction == 0.1 and cfg.select == "best" and cfg.scheduler == "plateau"  # the caller's
    assert "fold 1: 168 train, 0 validation, 42 test clips" in lines  # every clip of fold 1's training set
    f = m["folds"]["1"]
    assert f["best_epoch"] == f["epochs_run"] == 6 and f["n_val"] == 0 and f["val_uar"] is None
    assert m["protocol"] == "literature" and "val_uar" not in m["mean"]
    config = json.loads((tmp_path / "lit" / "config.json").read_text())
    got = tuple(config[k] for k in ("protocol", "val_fraction", "select", "scheduler", "patience"))
    assert got == ("literature", 0.0, "last", "none", 0)
    history = (tmp_path / "lit" / "history.csv").read_text().splitlines()[1:]
    assert len({r.split(",")[6] for r in history}) == 1  # a constant learning rate: no plateau scheduler
    lines = []
    m = train_run(TrainConfig(select="last", out=str(tmp_path / "last"), **TINY), store, log=lines.append)
    assert "fold 1: 152 train, 16 validation, 42 test clips" in lines  # --select last still validates
    assert m["folds"]["1"]["n_val"] == 16 and m["folds"]["1"]["val_uar"] is not None
    assert "val_uar" in m["mean"]


def test_train_run_leaves_its_config_alone(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(folds=(), **{**TINY, "epochs": 1})
    before = cfg.to_dict()
    m = train_run(cfg, store, log=quiet)
    assert cfg.to_dict() == before and cfg.out is None and cfg.folds == ()
    run = tmp_path / "runs" / "face-none-kl-fall"
    assert sorted(m["folds"]) == ["1", "2", "3", "4", "5"] and (run / "metrics.json").is_file()
    assert json.loads((run / "config.json").read_text())["folds"] == [1, 2, 3, 4, 5]
