"""What a user sees when the machine fails fer (issue 13's reproductions), through the real `fer` command:
one line on stderr saying what happened, where and what to do; no traceback, no segfault; exit status
0 done, 1 clips failed, 2 bad input, 3 a fault of the machine (no space, read-only, damaged store)."""

import json
import os
import shutil
import subprocess

import pytest

from fer.extract.backbones.face import FaceExtractor
from fer.extract.backbones.mel import MelAudio
from fer.extract.datasets import load_dataset
from fer.extract.runner import run_extraction
from fer.extract.synth import synthesize
from fer.tests.cli import fer
from fer.tests.mounts import can_mount, full, read_only, small_disk

MEL = "audio.mel.64.25ms10ms.16k.3s"
FACE = "face.resnet18.none-s0.pool.32.16f"


def one_line(p, status, *words):
    """The command ended with ``status`` and one stderr line holding ``words``."""
    lines = p.stderr.strip().splitlines()
    assert p.returncode == status and len(lines) == 1 and lines[0].startswith("error: "), (p.returncode, p.stderr)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 20-clip dataset, and base.zarr (mel + face) and base.h5 (mel) made from it."""
    base = tmp_path_factory.mktemp("cli_faults")
    root = base / "d20"
    synthesize(root, clips=20, seed=1, workers=1)
    ds = load_dataset(root)
    for store, ex in ((base / "base.zarr", MelAudio()), (base / "base.zarr", FaceExtractor(weights="none", size=32)),
                      (base / "base.h5", MelAudio())):
        run_extraction(ds, ex, store, workers=0, progress=False)
    return base


def copy(src, dst):
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst


def mel(root, store, *extra):
    return ["extract", root, "-m", "audio", "--backbone", "mel", "--store", store, "--workers", 0, "--no-progress",
            *extra]


# ------------------------------------------------------------------ 1, 2: a full disk
@pytest.mark.parametrize("fmt,free_kb", [("h5", 1500), ("zarr", 400)])  # HDF5 writes keep 1 MB spare
def test_extraction_onto_a_full_disk_is_one_line_exit_3_then_resumes(data, tmp_path, fmt, free_kb):
    with small_disk(tmp_path / "disk", 8192, free_kb=free_kb) as disk:
        store = disk / f"s.{fmt}"
        p = fer(*mel(data / "d20", store, "--chunk-mb", 0.2))  # 20 rows of 38 KB: about half fit
        one_line(p, 3, "no space is left on the disk", str(store), "writing rows", MEL, "rerun the same command")
        (disk / "filler.bin").unlink()
        p = fer(*mel(data / "d20", store, "--chunk-mb", 0.2))
        assert p.returncode == 0 and "failed 0" in p.stdout, p.stdout + p.stderr
        assert "skipped 0 " not in p.stdout  # the rows written before the disk filled were kept
        assert fer("cache", "verify", store).returncode == 0


def test_creating_a_store_on_a_full_disk_leaves_no_folder(data, tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        full(disk)
        one_line(fer(*mel(data / "d20", disk / "new" / "s.zarr")), 3, "no space", "creating the store")
        assert sorted(p.name for p in disk.iterdir()) == ["filler-last.bin", "filler.bin"]


# ------------------------------------------------------------------ 3: fer train onto a full disk
def test_train_onto_a_disk_too_small_for_its_checkpoints_says_so_up_front(data, tmp_path):
    with small_disk(tmp_path / "disk", 8192) as disk:
        p = fer("train", data / "base.zarr", "--epochs", 1, "--out", disk / "run")
        one_line(p, 3, "MB free, but this fold's checkpoints need about", "optimizer state", "--out")
        assert not list(disk.rglob("*.pt*"))


# ------------------------------------------------------------------ 4, 5: damaged files
def test_a_truncated_h5_is_damaged_not_busy(data, tmp_path):
    h5 = copy(data / "base.h5", tmp_path / "t.h5")
    os.truncate(h5, h5.stat().st_size - 4096)
    line = one_line(fer("cache", "ls", h5), 3, "is damaged", "cut short", "copy it again")
    assert "another process" not in line


def test_a_truncated_zarr_chunk_stops_training_with_the_set_rows_and_fix(data, tmp_path):
    z = copy(data / "base.zarr", tmp_path / "t.zarr")
    chunk = next(p for p in (z / "features" / FACE / "data" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:1000])  # the trainer reads only the rows its folds use: cut most of them
    p = fer("train", z, "--epochs", 1, "--layers", 1, "--out", tmp_path / "run")
    one_line(p, 3, f"feature set {FACE}", "chunk 0 of its data (rows 0-19", "fer cache verify", "fer cache rm")
    v = fer("cache", "verify", z)
    assert v.returncode == 1 and "chunk 0 (rows 0-19) holds done rows but is unreadable" in v.stdout


# ------------------------------------------------------------------ 6: a read-only store
def test_a_read_only_store_reads_and_every_write_path_is_one_line(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    for name in ("base.zarr", "base.h5"):
        copy(data / name, ro / name)
    before = sorted(str(p) for p in ro.rglob("*"))
    with read_only(ro):
        p = fer(*mel(data / "d20", ro / "base.zarr"))  # a finished set: nothing to do, no lock file
        assert p.returncode == 0 and "done 0, skipped 20" in p.stdout, p.stderr
        p = fer("cache", "verify", "--clean", ro / "base.h5")
        assert p.returncode == 0 and "removed 0 temp file(s)" in p.stdout, p.stderr
        line = one_line(fer("cache", "rm", "-y", ro / "base.zarr", MEL), 3, ".base.zarr.locks")
        assert "read-only file system" in line or "permission denied" in line
        line = one_line(fer("extract", data / "d20", "-m", "face", "--weights", "none", "--size", 32, "--store",
                            ro / "base.h5", "--workers", 0, "--no-progress"), 3, "cannot be opened for writing")
        assert "not a readable" not in line
        one_line(fer("train", "base.zarr", "--epochs", 1, cwd=ro), 3, "runs", "--out")  # the default runs/
    assert sorted(str(p) for p in ro.rglob("*")) == before


# ------------------------------------------------------------------ 7: never write into someone else's folder
def test_a_store_in_a_foreign_folder_or_inside_the_dataset_is_refused(data, tmp_path):
    d = copy(data / "d20", tmp_path / "d20copy")
    before = sorted(str(p) for p in d.rglob("*"))
    one_line(fer(*mel(d, d)), 2, "inside the dataset folder")  # (a store below it too: tests/extract)
    one_line(fer(*mel(data / "d20", d)), 2, "not a fer feature store", "never writes into a folder")
    assert sorted(str(p) for p in d.rglob("*")) == before


# ------------------------------------------------------------------ 8: hostile or damaged attributes
def edit_json(path, fn):
    j = json.loads(path.read_text())
    fn(j)
    path.write_text(json.dumps(j))


def test_damaged_attributes_are_refused_from_metadata(data, tmp_path):
    a = copy(data / "base.zarr", tmp_path / "a.zarr")
    edit_json(a / "features" / FACE / "zarr.json", lambda j: j["attributes"].update(chunk_rows=0))
    one_line(fer("train", a, "--epochs", 1, "--out", tmp_path / "ra"), 3, "chunk_rows is 0", "fer cache rm")
    ls = fer("cache", "ls", a)
    assert ls.returncode == 0 and "DAMAGED" in ls.stdout and MEL in ls.stdout  # the healthy set is still listed

    b = copy(data / "base.zarr", tmp_path / "b.zarr")
    edit_json(b / "clips" / "id" / "zarr.json", lambda j: j["shape"].__setitem__(0, 10**9))
    one_line(fer("cache", "verify", b, timeout=60), 3, "clips/id claims 1000000000 rows")

    c = copy(data / "base.zarr", tmp_path / "c.zarr")
    edit_json(c / "features" / FACE / "data" / "zarr.json", lambda j: j["shape"].__setitem__(0, 15))
    one_line(fer("train", c, "--epochs", 1, "--out", tmp_path / "rc"), 3, "data has shape (15, 16, 512)")


# ------------------------------------------------------------------ 9 and issue 14: options, shared memory
def test_mel_refuses_size_and_frames(data, tmp_path):
    one_line(fer(*mel(data / "d20", tmp_path / "m.zarr", "--size", 64, "--frames", 8)), 2,
             "--size and --frames apply to face and pose only")
    assert not (tmp_path / "m.zarr").exists()


def test_workers_out_of_shared_memory_is_one_line_naming_workers_and_dev_shm(data, tmp_path):
    if not can_mount() or shutil.which("unshare") is None:
        pytest.skip("a small /dev/shm needs root and unshare (a private mount namespace)")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m is not permitted here: {probe.stderr.decode().strip()}")
    # a 64 KB /dev/shm, in this command's own mount namespace only
    inner = "mount -t tmpfs -o size=64k tmpfs /dev/shm && exec \"$@\""
    p = fer("extract", data / "d20", "-m", "face", "--weights", "none", "--size", 32, "--store", tmp_path / "s.zarr",
            "--workers", 1, "--no-progress", prefix=("unshare", "-m", "sh", "-c", inner, "sh"))
    one_line(p, 3, "shared memory", "/dev/shm", "--workers 0", "--shm-size")
