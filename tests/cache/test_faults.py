"""Store faults on real file systems: a full tmpfs, a read-only mount, truncated files, damaged attributes.
Each ends in a one-line FerError (FerEnvError, exit status 3, for faults of the machine) and leaves nothing
half-made behind. The user-facing side (one line, exit status, no segfault) is in tests/test_cli_faults.py."""

import errno
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from fer.cache import create_store, open_store
from fer.cache.errors import FerEnvError, FerError, env_error, env_faults
from fer.cache.locks import lock_dir_for
from fer.cache.verify import clean_leftovers, verify_store
from fer.tests.cache.conftest import make_index
from fer.tests.mounts import fill, full, read_only, small_disk

SPEC = "face.test.pool"
ATTRS = {"modality": "face", "backbone": "test"}


def new_store(path, n=12, rows=None, chunk_bytes=4 * 16 * 8 * 2):
    """A store with one feature set of (16, 8) rows, 4 rows per chunk; ``rows`` of them written."""
    ids, votes, folds = make_index(n)
    s = create_store(path, ids, votes, folds)
    with s.writer(SPEC, row_shape=(16, 8), attrs=ATTRS, chunk_bytes=chunk_bytes) as w:
        r = np.arange(n if rows is None else rows)
        w.write_rows(r, np.random.default_rng(0).standard_normal((len(r), 16, 8)), np.ones((len(r), 16), bool))
    return s


def edit_json(path, fn):
    d = json.loads(path.read_text())
    fn(d)
    path.write_text(json.dumps(d))


# ------------------------------------------------------------------ translation
def test_env_errors_become_fer_env_errors_with_exit_status_3():
    e = env_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.zarr/c/0"), None, "writing rows")
    assert isinstance(e, FerEnvError) and e.exit_code == 3 and "no space" in str(e) and "/data/x.zarr/c/0" in str(e)
    h5 = RuntimeError("Unable to synchronously flush file (file write failed: errno = 28, error message = 'No space')")
    assert "no space" in str(env_error(h5, "s.h5", "writing"))
    assert "read-only" in str(env_error(OSError(errno.EROFS, "Read-only file system"), "/ro", "creating a lock"))
    assert "permission denied" in str(env_error(PermissionError(errno.EACCES, "denied"), "/x", "saving"))
    assert (env_error(ValueError("bad"), "/x", "saving") is None
            and env_error(OSError(errno.ENOENT, "gone"), "/x", "") is None)
    assert FerError("x").exit_code == 2 and issubclass(FerEnvError, FerError)
    with pytest.raises(KeyError), env_faults("/x", "anything"):  # not a fault of the machine: untouched
        raise KeyError("k")


# ------------------------------------------------------------------ full disk
@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_creating_a_store_on_a_full_disk_leaves_nothing(tmp_path, fmt):
    with small_disk(tmp_path / "disk", 1024) as disk:
        full(disk)
        path = disk / f"s.{fmt}"
        ids, votes, folds = make_index(6)
        with pytest.raises(FerEnvError, match="no space"):
            create_store(path, ids, votes, folds)
        assert not path.exists() and not lock_dir_for(path).exists()


def test_a_feature_set_that_cannot_be_created_is_removed_again(tmp_path):
    with small_disk(tmp_path / "disk", 1024) as disk:
        ids, votes, folds = make_index(6)
        s = create_store(disk / "s.zarr", ids, votes, folds)
        full(disk)
        with pytest.raises(FerEnvError, match="no space.*creating feature set"):
            s.writer(SPEC, row_shape=(16, 8), attrs=ATTRS)
        assert s.backend.children("features") == [] and s.specs() == []
        s.close()


def test_zarr_rows_that_do_not_fit_fail_in_one_line_and_the_done_ones_stay(tmp_path):
    with small_disk(tmp_path / "disk", 2048) as disk:
        s = new_store(disk / "s.zarr", n=40, rows=8, chunk_bytes=4 * 16 * 8 * 2)
        fill(disk, 0)
        with s.writer(SPEC) as w, pytest.raises(FerEnvError, match=r"no space .*writing rows 8-39 of feature set"):
            w.write_rows(np.arange(8, 40), np.ones((32, 16, 8)), np.ones((32, 16), bool))
        s.close()
        (disk / "filler.bin").unlink()
        with open_store(disk / "s.zarr") as s:
            assert s.done_mask(SPEC).sum() == 8 and verify_store(s).ok
            assert not list((disk / "s.zarr").rglob("*.partial"))  # zarr removes its temp file on a failed write


HDF5_FULL = """
import sys
import numpy as np
import fer.cache.hdf5_backend as backends
from fer.cache import create_store, open_store
from fer.cache.errors import FerEnvError
path, margin = sys.argv[1], int(sys.argv[2])
backends.HDF5_WRITE_MARGIN = margin
ids = [f"{i:05d}" for i in range(40)]
s = create_store(path, ids, np.ones((40, 7), np.float32), np.ones((40, 5), np.int8))
w = s.writer("x.set", row_shape=(16, 512), attrs={"modality": "face"}, chunk_bytes=4 * 16 * 512 * 2)
if len(sys.argv) > 3:
    open(sys.argv[3], "wb").write(bytes(int(sys.argv[4])))  # the disk fills up behind the check
try:
    for a in range(0, 40, 4):
        w.write_rows(np.arange(a, a + 4), np.ones((4, 16, 512)), np.ones((4, 16), bool))
except FerEnvError as e:
    print("error:", e)
w.close()
s.close()
with open_store(path) as s:
    print("done", int(s.done_mask("x.set").sum()))
"""


@pytest.mark.parametrize("check", ["before HDF5", "HDF5 itself"])
def test_hdf5_on_a_full_disk_fails_in_one_line_and_closes_without_a_crash(tmp_path, check):
    """HDF5 meeting a full disk crashed the process when its objects were freed; fer checks the space before
    each write, and when the disk fills anyway (another writer, a quota) it drops what HDF5 could not write."""
    with small_disk(tmp_path / "disk", 1536) as disk:  # 40 rows of 16 KB do not fit beside 1 MB spare
        st = os.statvfs(disk)
        free = st.f_bavail * st.f_frsize
        margin = "1048576" if check == "before HDF5" else str(-(1 << 40))  # the second disables the check
        extra = [] if check == "before HDF5" else [str(disk / "filler.bin"), str(free - 400_000)]
        p = subprocess.run([sys.executable, "-c", HDF5_FULL, str(disk / "s.h5"), margin, *extra],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
        error, done = p.stdout.strip().splitlines()
        assert error.startswith("error: no space is left on the disk") and "writing rows" in error
        assert 0 < int(done.split()[1]) < 40  # the rows written before the disk filled are there and done


# ------------------------------------------------------------------ foreign folders
def test_a_folder_that_is_not_a_store_is_never_written_into(tmp_path):
    ids, votes, folds = make_index(4)
    data = tmp_path / "mydata"
    (data / "videos").mkdir(parents=True)
    (data / "notes.txt").write_text("mine")
    with pytest.raises(FerError, match="not a fer feature store.*notes.txt.*never writes"):
        create_store(data, ids, votes, folds)
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "videos"]
    assert not lock_dir_for(data).exists()
    (tmp_path / "file.zarr").write_text("mine")
    with pytest.raises(FerError, match="is a file, not a zarr store"):
        create_store(tmp_path / "file.zarr", ids, votes, folds)
    assert (tmp_path / "file.zarr").read_text() == "mine"
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    create_store(empty, ids, votes, folds).close()  # an empty folder is fine
    create_store(empty, ids, votes, folds).close()  # and so is our own store
    half = tmp_path / "half.zarr"  # what a creation killed before its root attrs leaves
    create_store(half, ids, votes, folds).close()
    edit_json(half / "zarr.json", lambda d: d.update(attributes={}))
    create_store(half, ids, votes, folds).close()


# ------------------------------------------------------------------ damaged stores
def test_truncated_zarr_chunk_names_the_set_rows_and_what_to_do(tmp_path):
    s = new_store(tmp_path / "s.zarr")
    s.close()
    chunk = tmp_path / "s.zarr" / "features" / SPEC / "data" / "c" / "1" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-100])
    with open_store(tmp_path / "s.zarr") as s:
        # rows= reads only the spans it needs: row 7 lies in the cut-off tail of chunk 1
        for kw in ({}, {"rows": np.array([0, 7])}):
            with pytest.raises(FerEnvError, match=rf"{SPEC}: chunk 1 of its data \(rows 4-7"
                                                  r".*fer cache verify.*fer cache rm"):
                s.read(SPEC, **kw)
        assert s.read(SPEC, rows=np.array([0, 9])).done.all()  # the healthy chunks still read
        assert s.read(SPEC, rows=np.array([5])).done.all()  # and so do intact rows of the cut chunk
        # the trainer's streaming reads spans: the same one-line damage
        with pytest.raises(FerEnvError, match=rf"{SPEC}: chunk 1 of its data \(rows 4-7.*fer cache verify"):
            s.span_reader(SPEC).read(3, 8)
        assert any("chunk 1 (rows 4-7)" in p for p in verify_store(s).problems)


def test_truncated_hdf5_is_damaged_not_locked(tmp_path):
    new_store(tmp_path / "s.h5").close()
    with open(tmp_path / "s.h5", "r+b") as f:
        f.truncate(os.path.getsize(tmp_path / "s.h5") - 4096)
    with pytest.raises(FerEnvError, match="s.h5 is damaged: the file is cut short") as e:
        open_store(tmp_path / "s.h5")
    assert "another process" not in str(e.value)


def test_zero_chunk_rows_is_reported_not_divided_by(tmp_path):
    new_store(tmp_path / "s.zarr").close()
    edit_json(tmp_path / "s.zarr" / "features" / SPEC / "zarr.json", lambda d: d["attributes"].update(chunk_rows=0))
    with open_store(tmp_path / "s.zarr") as s:
        assert s.specs() == [SPEC]
        for call in (s.read, s.info, s.failures, s.done_mask):
            with pytest.raises(FerEnvError, match="chunk_rows is 0"):
                call(SPEC)
        rep = verify_store(s)
        assert rep.problems == [f"{SPEC}: chunk_rows is 0, not a number of rows in 1..12"]
        assert clean_leftovers(s) == 0
    with open_store(tmp_path / "s.zarr", "r+") as s:
        s.remove(SPEC)  # a damaged set stays removable
        assert s.specs() == []


def test_a_clip_index_claiming_a_billion_rows_is_refused_before_reading(tmp_path):
    new_store(tmp_path / "s.zarr").close()
    edit_json(tmp_path / "s.zarr" / "clips" / "id" / "zarr.json", lambda d: d["shape"].__setitem__(0, 10**9))
    t0 = time.perf_counter()
    with pytest.raises(FerEnvError, match="clips/id claims 1000000000 rows"):
        open_store(tmp_path / "s.zarr")
    assert time.perf_counter() - t0 < 10  # from metadata alone: nothing is allocated or read
    # all three arrays and the attrs edited alike: the bytes stored give it away
    for key in ("id", "votes", "fold"):
        def big(d):
            d["shape"][0] = 10**9
            d["chunk_grid"]["configuration"]["chunk_shape"][0] = 10**9
        edit_json(tmp_path / "s.zarr" / "clips" / key / "zarr.json", big)
    edit_json(tmp_path / "s.zarr" / "zarr.json", lambda d: d["attributes"].update(num_clips=10**9))
    with pytest.raises(FerEnvError, match="claims 1000000000 rows .* but holds"):
        open_store(tmp_path / "s.zarr")


def test_data_rows_that_disagree_with_the_clip_index_are_refused(tmp_path):
    new_store(tmp_path / "s.zarr").close()
    edit_json(tmp_path / "s.zarr" / "features" / SPEC / "data" / "zarr.json", lambda d: d["shape"].__setitem__(0, 8))
    with open_store(tmp_path / "s.zarr") as s:
        with pytest.raises(FerEnvError, match=r"data has shape \(8, 16, 8\), expected \(12, 16, 8\)"):
            s.read(SPEC)
        assert not verify_store(s).ok


# ------------------------------------------------------------------ read-only stores
@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_a_read_only_store_reads_and_refuses_writes_in_one_line(tmp_path, fmt):
    folder = tmp_path / "ro"
    folder.mkdir()
    new_store(folder / f"s.{fmt}").close()
    before = sorted(p.name for p in folder.rglob("*"))
    with read_only(folder):
        with open_store(folder / f"s.{fmt}") as s:
            assert s.read(SPEC).done.all() and clean_leftovers(s) == 0 and verify_store(s).ok
        if fmt == "h5":
            with pytest.raises(FerEnvError, match="cannot be opened for writing .*(read-only|permission)"):
                open_store(folder / "s.h5", "r+")
        else:
            with open_store(folder / "s.zarr", "r+") as s, pytest.raises(FerEnvError, match="read-only|permission"):
                s.remove(SPEC)
    assert sorted(p.name for p in folder.rglob("*")) == before  # not even a lock file
