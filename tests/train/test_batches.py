"""fer.train.batches: a streamed source gives what the in-memory one gives; view averaging; host placement."""

import json
import math

import numpy as np
import pytest
import torch

from fer.tests.train.synth_store import make_allframe_store, make_store
from fer.train.batches import MemorySource, frame_plans
from fer.train.config import TrainConfig
from fer.train.features import DiskSet, ModalityData, load_features
from fer.train.fit import predict
from fer.train.model import FerModel, InputNorm
from fer.train.sampling import FramePlan
from fer.train.stream import StreamSource

CPU = torch.device("cpu")
quiet = lambda line: None  # noqa: E731
ALL = "face.resnet18.test.pool.224.all24.flip"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    # small chunks, so spans start and end inside chunks of sets with different chunk sizes
    multi = make_store(d / "multi.zarr", n=90, modalities=("face", "pose", "audio"), audio="mel", chunk_bytes=6000)
    allf = make_allframe_store(d / "all.zarr", n=90, chunk_bytes=20000)
    h5 = make_allframe_store(d / "all.h5", n=90, chunk_bytes=20000)  # HDF5: read behind h5py's lock
    return {"multi": (multi, TrainConfig(modalities=("face", "pose", "audio"), fusion="transformer", batch_size=16)),
            "all": (allf, TrainConfig(face=ALL, batch_size=16, segments=6)),
            "h5": (h5, TrainConfig(face=ALL, batch_size=16, segments=6, augment=("jitter", "flip")))}


def _sources(store, cfg, budget=200_000):
    specs = {"face": cfg.face}
    mem = load_features(str(store), cfg.modalities, specs=specs, log=quiet)
    disk = load_features(str(store), cfg.modalities, specs=specs, stream=True, log=quiet)
    assert not mem.streamed and disk.streamed and all(isinstance(md, DiskSet) for md in disk.sets.values())
    plans = frame_plans(mem.sets, cfg)
    return mem, MemorySource(mem.sets, cfg, plans, CPU), StreamSource(disk, cfg, plans, CPU, budget=budget, log=quiet)


def _collect(batches, n):
    """Evaluate batches -> {view: {key: tensor in row order}}."""
    out = {}
    for views, where in batches:
        for v, inputs in enumerate(views):
            for k, x in inputs.items():
                out.setdefault(v, {}).setdefault(k, torch.empty((n, *x.shape[1:]), dtype=x.dtype))[where] = x
    return out


@pytest.mark.parametrize("which", ["multi", "all", "h5"])
def test_streamed_source_gives_what_memory_gives(stores, which):
    store, cfg = stores[which]
    feats, mem, st = _sources(store, cfg)
    try:
        assert st.buffer_bytes <= 100_000 and st.block_rows * 8 <= feats.n + 8
        rows = np.sort(np.random.default_rng(0).choice(feats.n, 40, replace=False))
        a, b = _collect(mem.evaluate(rows, 7), 40), _collect(st.evaluate(rows, 7), 40)
        assert a.keys() == b.keys() == set(range(1 if which == "multi" else 2))
        for v in a:
            assert a[v].keys() == b[v].keys()
            for k in a[v]:
                assert torch.equal(a[v][k], b[v][k]), (v, k)
        held = _collect(st.hold(rows).evaluate(rows[::-1].copy(), 5), 40)  # validation, held in memory
        for v in a:
            for k in a[v]:
                assert torch.equal(held[v][k], a[v][k].flip(0)), (v, k)
        for m in ("face", "audio") if which == "multi" else ("face",):
            n1, n2 = InputNorm(int(mem.model_sets[m].data.shape[-1])), InputNorm(int(mem.model_sets[m].data.shape[-1]))
            n1.fit(mem.norm_chunks(m, rows))
            n2.fit(st.norm_chunks(m, rows))
            torch.testing.assert_close(n1.mean, n2.mean) and torch.testing.assert_close(n1.std, n2.std)
        # an epoch: every drawn row once (with its repeats), in full batches but the last, same inputs
        order = torch.from_numpy(np.concatenate([rows, rows[:9]]))[
            torch.randperm(49, generator=torch.Generator().manual_seed(0))]
        batches = list(st.epoch(order, draw=None))
        assert [len(b.idx) for b in batches] == [16, 16, 16, 1]
        got = torch.cat([b.idx for b in batches])
        assert torch.equal(got, order)  # the order given, whatever holds the rows (issue 19: it differed)
        for batch in batches:
            ref = next(iter(mem.evaluate(batch.idx.numpy(), 64)))[0][0]
            for k in ref:
                assert batch.inputs[k].shape == ref[k].shape
                if not cfg.augment:
                    assert torch.equal(batch.inputs[k], ref[k]), k  # no augmentation: training inputs = centres
        again = list(st.epoch(order, draw=None))
        assert all(torch.equal(x.idx, y.idx) for x, y in zip(batches, again))  # deterministic for a seed
    finally:
        st.close()


def test_stream_buffers_stay_within_the_budget(stores):
    store, cfg = stores["all"]
    feats, _, st = _sources(store, cfg, budget=60_000)
    try:
        row = int(np.prod(feats.sets["face"].row_shape)) * 2 + 24  # float16 data + mask
        assert st.buffer_bytes == 2 * st.buffer_rows * row <= 30_000
        assert st.block_rows >= 1 and feats.nbytes() > 4 * st.buffer_bytes and not st.whole_blocks
    finally:
        st.close()


def test_flip_averaging_is_used_at_evaluation():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(6, 12, 2, 8, generator=g).half()
    mask = torch.ones(6, 12, dtype=torch.bool)
    sets = {"face": ModalityData("face.all.flip", data, mask, {"modality": "face", "frames": "all",
                                                               "views": ["original", "hflip"]})}
    cfg = TrainConfig(layers=1, heads=2, ff=16, hidden=16, segments=4, augment=("flip",))
    source = MemorySource(sets, cfg, frame_plans(sets, cfg), CPU)
    assert source.views == 2
    torch.manual_seed(0)
    model = FerModel(cfg, source.model_sets, num_classes=5).eval()
    rows = np.arange(6)
    got = predict(model, source, rows, cfg)
    plan = FramePlan(segments=4, views=2)
    per_view = []
    for v in (0, 1):
        x, m = plan.gather(data, mask, torch.arange(6), train=False, view=v)
        per_view.append(torch.softmax(model({"face": x.float(), "face_mask": m}), 1))
    torch.testing.assert_close(torch.softmax(got, 1), (per_view[0] + per_view[1]) / 2)
    assert not torch.allclose(torch.softmax(got, 1), per_view[0], atol=1e-3)
    assert math.isclose(float(torch.softmax(got, 1).sum(1).mean()), 1.0, rel_tol=1e-5)


def test_host_placement_when_the_device_cannot_hold_the_sets(tmp_path, monkeypatch):
    """FER_DEVICE_MEMORY_GB stands in for a small GPU: the sets stay in host memory, batches are copied,
    same numbers."""
    from fer.train.run import train_run

    store = make_allframe_store(tmp_path / "s.zarr", n=70)
    cfg = dict(face=ALL, augment=("jitter", "flip"), layers=1, heads=2, ff=32, hidden=32, epochs=3, batch_size=16,
               lr=1e-3, device="cpu", plots=False, segments=6)
    a = train_run(TrainConfig(out=str(tmp_path / "a"), **cfg), store, log=quiet)
    monkeypatch.setenv("FER_DEVICE_MEMORY_GB", "0.00001")  # 10 kB
    lines = []
    b = train_run(TrainConfig(out=str(tmp_path / "b"), **cfg), store, log=lines.append)
    assert any("do not fit in cpu memory" in x and "stay in host memory" in x for x in lines)
    for m in (a, b):
        for f in m["folds"].values():
            f.pop("seconds")
    assert json.dumps(a) == json.dumps(b)  # NaN recalls (classes absent from the test fold) compare as text


def test_test_time_flip_follows_the_protocol(stores):
    """Issue 19: the literature protocol evaluates the original view only, unless --test-flip on."""
    from dataclasses import replace

    from fer.cache.errors import FerError

    store, cfg = stores["all"]
    feats = load_features(str(store), cfg.modalities, specs={"face": cfg.face}, log=quiet)
    rows = np.arange(10)
    for protocol, flip, views in (("fer", "auto", 2), ("literature", "auto", 1), ("literature", "on", 2),
                                  ("fer", "off", 1)):
        c = replace(cfg, protocol=protocol, test_flip=flip)
        src = MemorySource(feats.sets, c, frame_plans(feats.sets, c), CPU)
        assert src.views == views and len(next(iter(src.evaluate(rows)))[0]) == views
    multi, mcfg = stores["multi"]
    mfeats = load_features(str(multi), mcfg.modalities, log=quiet)
    with pytest.raises(FerError, match="--test-flip on averages the mirrored view of every frame, and "
                                       "face.* has none"):
        frame_plans(mfeats.sets, replace(mcfg, test_flip="on"))
