"""verify finds planted problems and passes healthy stores."""

import numpy as np

from fer.cache import create_store, open_store
from fer.cache import layout as L
from fer.cache.verify import clean_leftovers, verify_store

from .conftest import make_index

SPEC = "face.v"


def _store(path, n=12):
    s = create_store(path, *make_index(n))
    with s.writer(SPEC, row_shape=(2, 3), attrs={"modality": "face"}, chunk_bytes=4 * 12) as w:
        w.write_rows(np.arange(n - 2), np.ones((n - 2, 2, 3)), np.ones((n - 2, 2), bool))
    return s


def test_healthy_store_verifies(store_path):
    s = _store(store_path)
    rep = verify_store(s)
    assert rep.ok and rep.checked == [SPEC]
    s.close()


def test_nan_in_done_row(disk_store_path):
    s = _store(disk_store_path)
    s.backend.array(L.data_key(SPEC))[4:8] = np.full((4, 2, 3), np.nan, np.float16)  # chunk 1, behind the writer
    rep = verify_store(s, SPEC)
    assert not rep.ok
    assert any("4 done rows are not finite" in p and "00005" in p for p in rep.problems), rep.problems
    s.close()


def test_missing_chunk_of_done_rows(tmp_path):
    path = tmp_path / "m.zarr"
    _store(path).close()
    chunk = path / "features" / SPEC / "data" / "c" / "1" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    (chunk.parent / "0.deadbeef.partial").write_bytes(b"xx")  # what a killed write leaves
    with open_store(path) as s:
        rep = verify_store(s)
        assert any("chunk 1 (rows 4-7) is missing" in p for p in rep.problems), rep.problems
        assert any("temp files" in n for n in rep.notes)
    with open_store(path, "r+") as s:
        assert clean_leftovers(s) == 1


def test_bad_clip_index(disk_store_path):
    s = _store(disk_store_path)
    s.backend.array(L.CLIPS_FOLD)[0, 0] = 7
    s.close()
    with open_store(disk_store_path) as s:
        assert any("clips/fold" in p for p in verify_store(s).problems)


def test_truncated_chunk(tmp_path):
    """A chunk file cut short (zarr writes atomically, but disks fill up): harmless where no row is done."""
    path = tmp_path / "t.zarr"
    s = create_store(path, *make_index(12))
    w = s.writer(SPEC, row_shape=(2, 3), attrs={"modality": "face"}, chunk_bytes=4 * 12)
    w.write_rows(np.arange(8), np.ones((8, 2, 3)), np.ones((8, 2), bool))
    cdir = path / "features" / SPEC / "data" / "c"
    (cdir / "2" / "0").mkdir(parents=True)
    (cdir / "2" / "0" / "0").write_bytes(b"\x00" * 5)  # rows 8-11: none done
    assert verify_store(s).ok
    w.write_rows([8], np.full((1, 2, 3), 2.0), np.ones((1, 2), bool))  # merges into the broken chunk: starts afresh
    w.write_rows([9, 10, 11], np.full((3, 2, 3), 3.0), np.ones((3, 2), bool))
    fs = s.read(SPEC)
    assert fs.done.all() and fs.data[8, 0, 0] == 2 and fs.data[11, 0, 0] == 3
    (cdir / "0" / "0" / "0").write_bytes(b"\x00" * 5)  # rows 0-3: done
    rep = verify_store(s)
    assert any("chunk 0 (rows 0-3) holds done rows but is unreadable" in p for p in rep.problems), rep.problems
    w.close()
    s.close()
