"""The extraction runner on real stores, real jpgs and a real (tiny-input) ResNet-18."""

import numpy as np
import pytest
from PIL import Image

from fer.cache import open_store
from fer.cache.errors import FerError
from fer.extract.backbones.face import FaceExtractor
from fer.extract.datasets import load_dataset
from fer.extract.datasets.records import ClipRecord, Dataset
from fer.extract.runner import run_extraction
from fer.extract.shards import parse_shard, shard_from_env
from fer.extract.synth import synthesize

SIZE = 32  # tiny input keeps the real ResNet-18 fast on CPU
CHUNK = 3 * 16 * 512 * 2  # 3 rows per chunk: several chunks even for a dozen clips


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "dfew"
    synthesize(root, clips=9, seed=1, corrupt=3, workers=1)  # corrupt: truncated mp4, garbage jpg, no faces
    return root


@pytest.fixture(scope="module")
def extractor():
    return FaceExtractor(weights="none", size=SIZE)


def run(ds, ex, path, **kw):
    kw = {"batch_size": 2, "workers": 0, "progress": False, "chunk_bytes": CHUNK, **kw}
    return run_extraction(ds, ex, path, **kw)


def test_writes_all_rows_then_rerun_does_nothing(synth_root, extractor, tmp_path):
    ds = load_dataset(synth_root)
    s = run(ds, extractor, tmp_path / "f.zarr", workers=1)
    assert s.done == 10 and s.skipped == 0 and s.owned == 12
    assert "s in 1 worker(s)" in str(s)
    assert set(s.failed) == {"00011", "00012"}  # garbage jpg, missing faces; a truncated mp4 does not matter to faces
    assert "unreadable image" in s.failed["00011"] and "no face frames" in s.failed["00012"]
    with open_store(tmp_path / "f.zarr") as st:
        fs = st.read(extractor.spec)
        assert fs.done.sum() == 10 and not fs.done[[10, 11]].any()
        assert np.isfinite(fs.data[fs.done]).all() and fs.mask[fs.done].all()
        assert st.failures(extractor.spec).keys() == {"00011", "00012"}
        info = st.info(extractor.spec)
        assert info["modality"] == "face" and info["weights"]["id"] == "random, seed 0"
        before = fs.data.copy()
    again = run(ds, extractor, tmp_path / "f.zarr")
    assert again.done == 0 and again.skipped == 10 and again.todo == 2  # only the failed rows are retried
    assert set(again.failed) == {"00011", "00012"}
    assert "s in the main process" in str(again)  # workers=0
    with open_store(tmp_path / "f.zarr") as st:
        assert np.array_equal(st.read(extractor.spec).data[:10], before[:10])


def test_limit_then_resume_equals_one_run(synth_root, extractor, tmp_path):
    ds = load_dataset(synth_root)
    ds.records = ds.records[:10]  # healthy clips only
    run(ds, extractor, tmp_path / "one.zarr")
    s = run(ds, extractor, tmp_path / "parts.zarr", limit=4)
    assert s.done == 4
    s = run(ds, extractor, tmp_path / "parts.zarr", limit=100)
    assert s.done == 6 and s.skipped == 4
    with open_store(tmp_path / "one.zarr") as a, open_store(tmp_path / "parts.zarr") as b:
        assert np.array_equal(a.read(extractor.spec).data, b.read(extractor.spec).data)


def test_shards_equal_one_run(synth_root, extractor, tmp_path):
    ds = load_dataset(synth_root)
    ds.records = ds.records[:10]
    run(ds, extractor, tmp_path / "one.zarr")
    s1 = run(ds, extractor, tmp_path / "sh.zarr", shard=(0, 2))
    s2 = run(ds, extractor, tmp_path / "sh.zarr", shard=(1, 2))
    assert s1.done + s2.done == 10 and s1.done and s2.done
    with open_store(tmp_path / "one.zarr") as a, open_store(tmp_path / "sh.zarr") as b:
        fa, fb = a.read(extractor.spec), b.read(extractor.spec)
        assert fb.done.all() and np.array_equal(fa.data, fb.data)


def write_frames(folder, n):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (SIZE, SIZE), (10 * i, 50, 100)).save(folder / f"{i:03d}.jpg")
    return folder


def test_frame_repetition_is_recorded(tmp_path, extractor):
    recs = [ClipRecord("a", faces_all=write_frames(tmp_path / "a", 5)),
            ClipRecord("b", faces_all=write_frames(tmp_path / "b", 16))]
    ds = Dataset(tmp_path / "manifest.csv", "manifest", recs, has_votes=False)
    s = run(ds, extractor, tmp_path / "r.zarr")
    assert s.done == 2 and s.row_info == {"a": "repeated 16 from 5 frames (all faces)"}
    with open_store(tmp_path / "r.zarr") as st:
        assert st.info(extractor.spec)["row_info"] == {"a": "repeated 16 from 5 frames (all faces)"}


class Flaky(FaceExtractor):
    """A real face extractor whose load/embed misbehave on chosen clips."""

    def __init__(self, broken_load=(), broken_embed=(), bug=False, interrupt_after=None):
        super().__init__(weights="none", size=SIZE)
        self.broken_load, self.broken_embed, self.bug = set(broken_load), set(broken_embed), bug
        self.interrupt_after, self.calls = interrupt_after, 0

    def load(self, record):
        if self.bug:
            raise AttributeError("'NoneType' object has no attribute 'shape'")
        if record.clip_id in self.broken_load:
            raise ValueError("weird failure")
        frames, info = super().load(record)
        return frames, record.clip_id

    def row_info(self, item):
        return None

    def embed(self, items):
        self.calls += 1
        if self.interrupt_after is not None and self.calls > self.interrupt_after:
            raise KeyboardInterrupt
        if any(cid in self.broken_embed for _, cid in items):
            raise RuntimeError("bad shape for this clip")
        return super().embed(items)


def healthy(synth_root):
    ds = load_dataset(synth_root)
    ds.records = ds.records[:9]
    return ds


def test_one_bad_clip_never_stops_the_run(synth_root, tmp_path):
    ds = healthy(synth_root)
    s = run(ds, Flaky(broken_load={"00002"}, broken_embed={"00005"}), tmp_path / "f.zarr", batch_size=3)
    assert s.done == 7
    assert s.failed["00002"] == "ValueError: weird failure"
    assert s.failed["00005"].startswith("model failed on this clip: RuntimeError: bad shape")


def test_a_bug_on_every_clip_raises(synth_root, tmp_path):
    with pytest.raises(FerError, match="every clip of the first batch failed.*AttributeError"):
        run(healthy(synth_root), Flaky(bug=True), tmp_path / "f.zarr")


def test_interrupt_flushes_finished_rows(synth_root, tmp_path):
    ds = healthy(synth_root)
    s = run(ds, Flaky(interrupt_after=2), tmp_path / "f.zarr", batch_size=2)
    assert s.interrupted and s.done == 4
    with open_store(tmp_path / "f.zarr") as st:
        assert st.read("face.resnet18.none-s0.pool.32.16f").done.sum() == 4  # a partial chunk was written too
    s = run(ds, Flaky(), tmp_path / "f.zarr")
    assert s.skipped == 4 and s.done == 5 and not s.interrupted


def test_another_dataset_store_and_bad_arguments(synth_root, extractor, tmp_path):
    ds = healthy(synth_root)
    run(ds, extractor, tmp_path / "f.zarr")
    other = healthy(synth_root)
    other.records = other.records[:5]
    with pytest.raises(FerError, match="another dataset"):
        run(other, extractor, tmp_path / "f.zarr")
    with pytest.raises(FerError, match="--limit"):
        run(ds, extractor, tmp_path / "g.zarr", limit=0)
    with pytest.raises(FerError, match="shard"):
        run(ds, extractor, tmp_path / "g.zarr", shard=(2, 2))


def test_parse_shard_and_env(monkeypatch):
    assert parse_shard("1/2") == (0, 2) and parse_shard("2/2") == (1, 2)
    for bad in ("3/2", "0/2", "x", "1/0", "1-2"):
        with pytest.raises(FerError):
            parse_shard(bad)
    monkeypatch.delenv("RANK", raising=False)
    assert shard_from_env() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert shard_from_env() == (1, 4)


def test_the_store_keeps_the_official_labels(synth_root, extractor, tmp_path):
    """Issue 19: a clip whose votes tie is scored by its split label; the store records the labels and how
    many clips' votes tie with or disagree with them."""
    from fer.extract.datasets.common import vote_conflicts

    ds = load_dataset(synth_root)
    rec = next(r for r in ds.records if r.label)  # an official label after class 0
    rec.votes = np.zeros_like(rec.votes)
    rec.votes[[0, rec.label]] = 5  # a tie with class 0, which argmax would pick
    run(ds, extractor, tmp_path / "s.zarr", limit=1)
    with open_store(tmp_path / "s.zarr") as st:
        np.testing.assert_array_equal(st.labels, ds.official())
        row = ds.ids.index(rec.clip_id)
        assert st.labels[row] == rec.label and st.votes[row].argmax() == 0
        counts = st.attrs["votes_vs_label"]
        assert counts == vote_conflicts(ds.votes(), ds.official()) and counts["tie"] >= 1
