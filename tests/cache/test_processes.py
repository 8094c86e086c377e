"""Crash safety and concurrency with real processes: SIGKILL mid-write, sharded writers, lock conflicts."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fer.cache import FerError, open_store
from fer.cache.verify import clean_leftovers, verify_store

WORKER = str(Path(__file__).with_name("_worker.py"))
SPEC = "face.test.v1"
N = 240  # 120 chunks of 2 rows


def _start(mode, path, k=0, n=1, batch=3, pause=0.0):
    return subprocess.Popen(
        [sys.executable, WORKER, mode, str(path), str(N), SPEC, str(k), str(n), str(batch), str(pause)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(mode, path, k=0, n=1, batch=3):
    p = _start(mode, path, k, n, batch)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "finished" in out


def _wait_line(p, prefix):
    while True:
        line = p.stdout.readline()
        if not line:
            raise AssertionError(f"worker exited early: {p.stderr.read()}")
        if line.startswith(prefix):
            return line


def _chunk_bytes(path):
    """Every chunk file of the feature set's arrays, by relative path."""
    root = Path(path) / "features" / SPEC
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*"))
            if f.is_file() and f.name != "zarr.json" and not f.name.endswith(".partial")}


def _read_all(path):
    with open_store(path) as s:
        fs = s.read(SPEC)
        return fs.data, fs.mask, fs.done


@pytest.fixture(scope="module")
def clean_zarr(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "clean.zarr"
    _run("write", path)
    return path


@pytest.mark.parametrize("fmt", ["zarr", "hdf5"])
def test_sigkill_mid_write_then_resume(tmp_path, clean_zarr, fmt):
    path = tmp_path / ("s.zarr" if fmt == "zarr" else "s.h5")
    rng = random.Random(0)
    for _ in range(3):  # kill it three times at random moments, then let it finish
        p = _start("write", path, batch=1, pause=0.002)
        _wait_line(p, "wrote")
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with open_store(path) as s:
            rep = verify_store(s)
            assert rep.ok, rep.problems
            assert s.read(SPEC).done.sum() < N  # it really was killed mid-way
    _run("write", path)
    with open_store(path) as s:
        assert verify_store(s).ok
    data, mask, done = _read_all(path)
    ref = _read_all(clean_zarr)
    assert done.all()
    np.testing.assert_array_equal(data, ref[0])
    np.testing.assert_array_equal(mask, ref[1])
    if fmt == "zarr":
        with open_store(path, "r+") as s:
            clean_leftovers(s)
        assert _chunk_bytes(path) == _chunk_bytes(clean_zarr)


def test_two_sharded_processes_equal_one_writer(tmp_path, clean_zarr):
    path = tmp_path / "sharded.zarr"
    from fer.cache import create_store

    sys.path.insert(0, str(Path(WORKER).parent))
    try:
        import _worker
    finally:
        sys.path.pop(0)
    create_store(path, *_worker.index(N)).close()  # so both workers find the same store
    procs = [_start("write", path, k=k, n=2) for k in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert _chunk_bytes(path) == _chunk_bytes(clean_zarr)
    with open_store(path) as s:
        assert verify_store(s).ok


def test_overlapping_writer_refused_with_pid(tmp_path):
    path = tmp_path / "locked.zarr"
    holder = _start("hold", path, k=0, n=2)
    try:
        _wait_line(holder, "ready")
        with open_store(path, "r+") as s:
            with pytest.raises(FerError, match=f"process {holder.pid}"):
                s.writer(SPEC)  # shard 0/1 overlaps 0/2
            with pytest.raises(FerError, match="locked"):
                s.writer(SPEC, shard=(2, 4))  # chunks 2, 6, ... are shard 0/2's
            with s.writer(SPEC, shard=(1, 2)) as w:  # disjoint: fine
                assert len(w.owned_rows()) == N // 2
            with pytest.raises(FerError, match="cannot remove"):
                s.remove(SPEC)
    finally:
        holder.kill()
        holder.wait()
    with open_store(path, "r+") as s:  # the lock died with the process
        s.writer(SPEC).close()


def test_hdf5_second_writer_refused(tmp_path):
    path = tmp_path / "one.h5"
    holder = _start("hold-h5", path)
    try:
        _wait_line(holder, "ready")
        with pytest.raises(FerError, match="another process"):
            open_store(path, "r+")
    finally:
        holder.kill()
        holder.wait()
    with open_store(path, "r+") as s:
        assert s.n == N
