"""The store API round trip on zarr, HDF5 and memory:// zarr."""

import json

import numpy as np
import pytest

from fer.cache import FerError, create_store, open_store
from fer.cache.schema import FORMAT_VERSION
from fer.cache.store import open_backend

from .conftest import make_index

SPEC = "face.resnet18.imagenet.pool.224"


def _rows(n, t=4, d=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, t, d)).astype(np.float16), rng.random((n, t)) > 0.3


def test_round_trip(store_path):
    n = 37
    ids, votes, folds = make_index(n)
    data, mask = _rows(n)
    with create_store(store_path, ids, votes, folds, description="demo", attrs={"source": "synth"}) as s:
        assert s.n == n and list(s.ids) == ids
        np.testing.assert_array_equal(s.votes, votes)
        np.testing.assert_array_equal(s.folds, folds)
        assert s.attrs["format_version"] == FORMAT_VERSION and s.attrs["source"] == "synth"
        assert s.specs() == []
        w = s.writer(SPEC, row_shape=(4, 3), attrs={"modality": "face", "backbone": "resnet18"}, chunk_bytes=100)
        assert w.chunk_rows == 4  # 100 bytes // 24 bytes per row
        np.testing.assert_array_equal(w.owned_rows(), np.arange(n))
        # across chunk boundaries, out of order, then partial chunks merged with later writes
        first = np.array([5, 0, 3, 4, 9, 36])
        w.write_rows(first, data[first], mask[first])
        rest = np.setdiff1d(np.arange(n), first)
        w.record_failures({int(rest[0]): "decode error:\nbad frame"})
        assert s.failures(SPEC) == {ids[rest[0]]: "decode error: bad frame"}
        w.write_rows(rest[1:], data[rest[1:]], mask[rest[1:]])
        assert w.done().sum() == n - 1
        w.write_rows(rest[:1], data[rest[:1]], mask[rest[:1]])
        assert s.failures(SPEC) == {}
        w.update_attrs({"clips_per_s": 12.5})
        w.close()
        assert s.specs() == [SPEC] and s.has(SPEC)

    with open_store(store_path) as s:
        fs = s.read(SPEC)
        np.testing.assert_array_equal(fs.data, data)
        np.testing.assert_array_equal(fs.mask, mask)
        assert fs.done.all() and list(fs.ids) == ids
        assert fs.attrs["modality"] == "face" and fs.attrs["clips_per_s"] == 12.5
        sub = s.read(SPEC, rows=np.array([36, 2, 17]))
        np.testing.assert_array_equal(sub.data, data[[36, 2, 17]])
        assert list(sub.ids) == [ids[36], ids[2], ids[17]]
        info = s.info(SPEC)
        assert info["shape"] == [n, 4, 3] and info["dtype"] == "float16" and info["n_done"] == n
        assert info["n_failed"] == 0 and info["chunk_rows"] == 4 and info["created"]
        assert "library_versions" in info and "command_line" in info
        json.dumps(info)  # JSON-able only
        t_data, t_mask = fs.to_torch()
        assert tuple(t_data.shape) == (n, 4, 3) and t_mask.dtype.is_floating_point is False


def test_not_done_rows_read_as_nan_and_unknown_spec(store_path):
    ids, votes, folds = make_index(10)
    s = create_store(store_path, ids, votes, folds)
    with s.writer("pose.krcnn", row_shape=(3, 17, 3), attrs={"modality": "pose"}) as w:
        w.write_rows([2], np.zeros((1, 3, 17, 3)), np.ones((1, 3), bool))
    fs = s.read("pose.krcnn")
    assert fs.done.tolist() == [i == 2 for i in range(10)]
    assert np.isnan(fs.data[0]).all() and (fs.data[2] == 0).all()
    with pytest.raises(FerError, match="has: pose.krcnn"):
        s.read("face.x")
    with pytest.raises(FerError, match="does not exist yet"):
        s.writer("audio.w2v", row_shape=None)
    with pytest.raises(FerError, match="shape"):
        s.writer("pose.krcnn", row_shape=(3, 17, 2))
    s.remove("pose.krcnn")
    assert s.specs() == []
    s.close()


def test_write_checks(store_path):
    ids, votes, folds = make_index(20)
    s = create_store(store_path, ids, votes, folds)
    w = s.writer("audio.logmel", row_shape=(5, 8), attrs={"modality": "audio"}, chunk_bytes=80 * 4)
    with pytest.raises(FerError, match="NaN"):
        w.write_rows([0], np.full((1, 5, 8), np.nan), np.ones((1, 5), bool))
    with pytest.raises(FerError, match="NaN"):  # overflows float16
        w.write_rows([0], np.full((1, 5, 8), 1e6, np.float32), np.ones((1, 5), bool))
    with pytest.raises(FerError, match="shape"):
        w.write_rows([0, 1], np.zeros((1, 5, 8)), np.ones((1, 5), bool))
    assert not w.done().any()
    w.close()
    w0 = s.writer("audio.logmel", shard=(0, 2))
    with pytest.raises(FerError, match="another shard"):
        w0.write_rows([4], np.zeros((1, 5, 8)), np.ones((1, 5), bool))  # chunk 1 belongs to shard 1
    w0.close()
    s.close()


def test_clip_index_mismatch_and_reopen(disk_store_path):
    ids, votes, folds = make_index(12)
    create_store(disk_store_path, ids, votes, folds).close()
    create_store(disk_store_path, ids, votes, folds).close()  # same index: opens
    votes2 = votes.copy()
    votes2[3, 0] += 1
    with pytest.raises(FerError, match="another dataset"):
        create_store(disk_store_path, ids, votes2, folds)
    with pytest.raises(FerError, match="another dataset"):
        create_store(disk_store_path, ids[:-1] + ["zzz"], votes, folds)


def test_newer_format_refused(disk_store_path):
    ids, votes, folds = make_index(3)
    create_store(disk_store_path, ids, votes, folds).close()
    b = open_backend(disk_store_path, "r+")
    attrs = b.root_attrs()
    attrs["format_version"] = FORMAT_VERSION + 1
    b.set_root_attrs(attrs)
    b.close()
    with pytest.raises(FerError, match="newer than this fer"):
        open_store(disk_store_path)


def test_open_missing_or_foreign(tmp_path):
    with pytest.raises(FerError, match="no feature store"):
        open_store(tmp_path / "nope.zarr")
    with pytest.raises(FerError, match="no feature store"):
        open_store(tmp_path / "nope.h5")
    bad = tmp_path / "junk.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(FerError):
        open_store(bad)
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").create_group("thing")
    with pytest.raises(FerError, match="not a fer feature store"):
        open_store(tmp_path / "other.zarr")
    with pytest.raises(FerError, match="not a fer feature store"):
        create_store(tmp_path / "other.zarr", *make_index(2))


def test_read_only_and_bad_spec(disk_store_path):
    ids, votes, folds = make_index(4)
    create_store(disk_store_path, ids, votes, folds).close()
    with open_store(disk_store_path) as s:
        with pytest.raises(FerError, match="read-only"):
            s.writer("face.a", row_shape=(2,), attrs={"modality": "face"})
    with open_store(disk_store_path, "r+") as s:
        with pytest.raises(FerError, match="invalid feature set spec"):
            s.writer("face/a", row_shape=(2,), attrs={"modality": "face"})


def test_file_url_opens_as_zarr(tmp_path):
    ids, votes, folds = make_index(5)
    url = f"file://{tmp_path}/u.zarr"
    s = create_store(url, ids, votes, folds)
    assert s.format == "zarr"
    with s.writer("face.a", row_shape=(2, 2), attrs={"modality": "face"}) as w:
        w.write_rows(np.arange(5), np.ones((5, 2, 2)), np.ones((5, 2), bool))
    s.close()
    with open_store(tmp_path / "u.zarr") as s2:
        assert s2.read("face.a").done.all()


@pytest.mark.parametrize("fmt,compressor", [("zarr", "blosc-lz4"), ("zarr", "zstd-1"), ("hdf5", "lzf"),
                                            ("hdf5", "gzip-1")])
def test_compressed_round_trip(tmp_path, fmt, compressor):
    """Compressed chunks go through the format library instead of the direct chunk reader."""
    path = tmp_path / ("c.zarr" if fmt == "zarr" else "c.h5")
    ids, votes, folds = make_index(30)
    data, mask = _rows(30)
    with create_store(path, ids, votes, folds) as s:
        with s.writer("face.c", row_shape=(4, 3), attrs={"modality": "face"}, compressor=compressor,
                      chunk_bytes=24 * 7) as w:
            assert s.backend.raw_chunks("features/face.c/data", s.backend.array("features/face.c/data")) is None
            w.write_rows(np.arange(29), data[:29], mask[:29])
        fs = s.read("face.c")
        np.testing.assert_array_equal(fs.data[:29], data[:29])
        assert np.isnan(fs.data[29]).all() and fs.done.sum() == 29
        assert s.info("face.c")["compressor"] == compressor
    with pytest.raises(FerError, match="unknown compressor"):
        create_store(tmp_path / "d.zarr", ids, votes, folds).writer(
            "x.y", row_shape=(1,), attrs={"modality": "face"}, compressor="lzf")


@pytest.mark.parametrize("compressor", [None, "zstd-1"])
def test_spans_and_row_reads_cross_chunks(store_path, compressor):
    """read_span / read(rows=) give exactly the rows asked for, starting and ending inside chunks, never-written
    chunks as the fill value; uncompressed local chunks go through the raw reader (only the span's bytes)."""
    if compressor and store_path.endswith(".h5"):
        compressor = "gzip-1"
    n = 29
    ids, votes, folds = make_index(n)
    data, mask = _rows(n, t=3, d=2)
    with create_store(store_path, ids, votes, folds) as s:
        w = s.writer(SPEC, row_shape=(3, 2), attrs={"modality": "face"}, chunk_bytes=60, compressor=compressor)
        assert w.chunk_rows == 5
        written = np.setdiff1d(np.arange(n), np.arange(10, 15))  # chunk 2 never written
        w.write_rows(written, data[written], mask[written])
        w.close()
    with open_store(store_path) as s:
        reader = s.span_reader(SPEC)
        assert (reader._data.raw is not None) == (compressor is None and not store_path.startswith("memory://"))
        for a, b in [(0, 29), (3, 4), (4, 12), (7, 23), (12, 13), (25, 29), (9, 9)]:
            got, m = reader.read(a, b)
            want = data[a:b].astype(np.float32)
            want[(np.arange(a, b) >= 10) & (np.arange(a, b) < 15)] = np.nan
            np.testing.assert_array_equal(got.astype(np.float32), want)
            np.testing.assert_array_equal(m, np.where(((np.arange(a, b) >= 10) & (np.arange(a, b) < 15))[:, None],
                                                      False, mask[a:b]))
        out = np.empty((6, 3, 2), np.float16)
        assert reader.read(16, 22, out=out)[0] is out
        np.testing.assert_array_equal(out, data[16:22])
        rows = np.array([28, 3, 4, 21, 16, 0])
        np.testing.assert_array_equal(s.read(SPEC, rows=rows).data, data[rows])
        mask_all, done = s.read_masks(SPEC)
        assert done.sum() == n - 5 and mask_all.shape == (n, 3)
        with pytest.raises(FerError, match="outside"):
            reader.read(20, 30)
