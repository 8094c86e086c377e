"""Whole-set reads straight from the chunk files (page-aligned arrays, masks decoded here) and mapped data for
streaming: the same values as the format library, the same one-line damage."""

import mmap
import sys

import numpy as np
import pytest
import zarr

from fer.cache import create_store, open_store
from fer.cache.errors import FerEnvError
from fer.tests.cache.conftest import make_index

SPEC = "face.test.pool"
ROW = (16, 128)  # 4 KB of float16 a row: chunks start on page boundaries, so the data can be mapped


def _store(path, n=40, rows_per_chunk=8):
    ids, votes, folds = make_index(n)
    s = create_store(path, ids, votes, folds)
    rng = np.random.default_rng(0)
    data = rng.standard_normal((n, *ROW)).astype(np.float16)
    mask = rng.random((n, ROW[0])) < 0.7
    with s.writer(SPEC, row_shape=ROW, attrs={"modality": "face"}, chunk_bytes=rows_per_chunk * 4096) as w:
        w.write_rows(np.arange(n), data, mask)
    s.close()
    return data, mask


def test_whole_read_is_page_aligned_and_decodes_masks_itself(tmp_path):
    data, mask = _store(tmp_path / "s.zarr")
    with open_store(tmp_path / "s.zarr") as s:
        fs = s.read(SPEC)
        assert fs.data.ctypes.data % mmap.PAGESIZE == 0 and fs.data.flags.c_contiguous
        assert np.array_equal(fs.data, data) and np.array_equal(fs.mask, mask) and fs.done.all()
        arr = s._b.array(f"features/{SPEC}/mask")
        assert s._b.raw_chunks(f"features/{SPEC}/mask", arr) is None  # compressed: the decoded path read it
        assert s._b.coded_chunks(f"features/{SPEC}/mask", arr) is not None
        picked = s.read(SPEC, rows=np.array([3, 17, 39]))
        assert np.array_equal(picked.data, data[[3, 17, 39]]) and np.array_equal(picked.mask, mask[[3, 17, 39]])
    assert np.array_equal(np.asarray(zarr.open_array(tmp_path / "s.zarr" / "features" / SPEC / "mask")[:]), mask)


def test_a_damaged_mask_chunk_is_one_line(tmp_path):
    _store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "features" / SPEC / "mask" / "c" / "2" / "0"
    chunk.write_bytes(b"not zstd at all")
    with open_store(tmp_path / "s.zarr") as s, pytest.raises(FerEnvError) as e:
        s.read(SPEC)
    msg = str(e.value)
    assert "\n" not in msg and f"{SPEC}: chunk 2 of its mask (rows 16-23" in msg and "fer cache verify" in msg


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mapping is Linux-only (others read spans)")
def test_mapped_data_is_the_stored_data_and_is_released(tmp_path):
    data, _ = _store(tmp_path / "s.zarr", n=400, rows_per_chunk=64)
    with open_store(tmp_path / "s.zarr") as s:
        md = s.span_reader(SPEC).mapped(np.arange(400))
        try:
            assert md is not None and np.array_equal(md.data, data) and not md.data.flags.writeable

            def resident() -> int:  # file pages mapped into this process
                with open("/proc/self/statm") as f:
                    return int(f.read().split()[2]) * mmap.PAGESIZE

            md.release(0, 400)
            before = resident()
            assert np.array_equal(md.data[::50, 3, 0], data[::50, 3, 0])
            touched = resident() - before
            assert 0 < touched <= 8 * md.FAULT_BYTES  # 8 rows touched: never their 2 MB folios whole
            md.release(0, 400)
            assert resident() - before <= 0
        finally:
            md.close()
        rows = np.arange(0, 64)  # only chunk 0 is mapped: a damaged chunk elsewhere is not its business
        chunk = tmp_path / "s.zarr" / "features" / SPEC / "data" / "c" / "1" / "0" / "0"
        chunk.write_bytes(chunk.read_bytes()[:-100])
        s.span_reader(SPEC).mapped(rows).close()
        with pytest.raises(FerEnvError, match=rf"{SPEC}: chunk 1 of its data \(rows 64-127.*truncated.*cache verify"):
            s.span_reader(SPEC).mapped(np.arange(400))
