"""The run folder on real small and read-only file systems: refused up front when a fold's checkpoints cannot
fit, no .tmp left when a save fails, one line naming the place and what to do; owned by one process."""

import os
import signal
import socket

import pytest
import torch

from fer.cache.errors import FerEnvError, FerError
from fer.tests.lock_holder import holder
from fer.tests.mounts import fill, read_only, small_disk
from fer.tests.train.synth_store import make_store
from fer.train import disk
from fer.train.config import TrainConfig
from fer.train.run import train_run

TINY = dict(layers=1, heads=2, ff=64, hidden=64, epochs=2, lr=1e-3, batch_size=32, device="cpu", plots=False)
quiet = lambda line: None  # noqa: E731


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("s") / "s.zarr", n=70)


def test_checkpoint_size_estimate_matches_what_is_saved(store, tmp_path, monkeypatch):
    saved, estimated = [], []
    save, check = disk.save_checkpoint, disk.check_checkpoint_space

    def record_save(obj, path):
        save(obj, path)
        saved.append((obj["complete"], path.stat().st_size))

    def record_check(path, model, backbone=None):
        estimated.append(disk.checkpoint_bytes(model, backbone))
        check(path, model, backbone)

    monkeypatch.setattr("fer.train.fit.save_checkpoint", record_save)
    monkeypatch.setattr("fer.train.fit.check_checkpoint_space", record_check)
    train_run(TrainConfig(out=str(tmp_path / "r"), **{**TINY, "epochs": 1}), store, log=quiet)
    (mid_saved, final_saved) = [size for _, size in saved]
    (mid, final), = estimated
    assert [c for c, _ in saved] == [False, True]
    assert abs(mid - mid_saved) < 0.02 * mid_saved + 8192 and abs(final - final_saved) < 0.02 * final_saved + 8192
    assert mid_saved > 3.5 * final_saved  # the optimizer state and the best state travel mid-fold


def test_a_run_folder_that_cannot_hold_the_checkpoints_is_refused_before_training(store, tmp_path):
    with small_disk(tmp_path / "disk", 8192) as d:
        train_run(TrainConfig(out=str(d / "small"), **TINY), store, log=quiet)  # ~0.4 MB checkpoints fit
        bigger = {**TINY, "layers": 2, "ff": 2048, "hidden": 1024}  # ~7 MB mid-fold checkpoints: two do not
        with pytest.raises(FerEnvError, match=r"has \d+ MB free, but this fold's checkpoints need about \d+ MB.*--out"):
            train_run(TrainConfig(out=str(d / "big"), **bigger), store, log=quiet)
        assert not list((d / "big").rglob("*.pt*"))


def test_a_checkpoint_that_does_not_fit_leaves_no_tmp_file(tmp_path):
    with small_disk(tmp_path / "disk", 1024, free_kb=200) as d:
        old = d / "checkpoint_fold1.pt"
        disk.save_checkpoint({"w": torch.zeros(10)}, old)
        before = old.read_bytes()
        with pytest.raises(FerEnvError, match=r"no space .*checkpoint_fold1.pt.*--resume"):
            disk.save_checkpoint({"w": torch.zeros(100_000)}, old)  # 400 KB
        assert sorted(p.name for p in d.iterdir()) == ["checkpoint_fold1.pt", "filler.bin"]
        assert old.read_bytes() == before  # the last good checkpoint is untouched


def test_a_full_disk_mid_run_is_one_line(store, tmp_path, monkeypatch):
    """The history and predictions writes of a run on a disk that fills up during the run."""
    with small_disk(tmp_path / "disk", 4096) as d:
        monkeypatch.setattr("fer.train.fit.check_checkpoint_space", lambda *a, **k: None)  # let it start
        fill(d, 8)
        with pytest.raises(FerEnvError, match=r"no space .*(run|\.pt|\.csv|\.json|\.npz)"):
            train_run(TrainConfig(out=str(d / "run"), **TINY), store, log=quiet)
        assert not list(d.rglob("*.tmp"))


def test_a_read_only_place_for_the_run_is_refused_before_loading(store, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        with pytest.raises(FerEnvError, match=r"ro/run is on a read-only file system|permission denied"):
            train_run(TrainConfig(out=str(ro / "run"), **TINY), store, log=quiet)
    assert list(ro.iterdir()) == []


def test_a_run_folder_held_by_another_process_is_refused_naming_it_and_free_after_a_kill(store, tmp_path):
    out = tmp_path / "run"
    with holder(out) as p:
        who = rf"{out} is in use by process {p.pid} on host {socket.gethostname()}.*--out"
        with pytest.raises(FerError, match=who):
            train_run(TrainConfig(out=str(out), **TINY), store, log=quiet)
        assert not (out / "config.json").exists()  # refused before anything was written
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    m = train_run(TrainConfig(out=str(out), **TINY), store, log=quiet)  # the killed holder's lock is stale
    assert m["folds"]["1"]["epochs_run"] == 2 and (out / "metrics.json").is_file()
