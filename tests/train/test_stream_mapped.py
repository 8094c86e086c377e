"""Streamed training from the mapped chunk files gives the batches of the in-memory source and of the
buffered stream, epoch after epoch, under any budget; damage is the read path's one line."""

import numpy as np
import pytest
import torch

from fer.cache.errors import FerEnvError
from fer.tests.train.synth_store import make_allframe_store
from fer.train import stream
from fer.train.batches import MemorySource, frame_plans, sampling_blocks
from fer.train.config import TrainConfig
from fer.train.features import load_features
from fer.train.sampling import epoch_order
from fer.train.stream import StreamSource

CPU = torch.device("cpu")
quiet = lambda line: None  # noqa: E731
FRAMES, DIM = 16, 64  # 4 KB rows (16 frames x 2 views x 64 float16): chunks start on page boundaries
ALL = f"face.resnet18.test.pool.224.all{FRAMES}.flip"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_allframe_store(tmp_path_factory.mktemp("mapped") / "all.zarr", n=150, frames=FRAMES, dim=DIM,
                               fixed=None, chunk_bytes=16 * 4096)


@pytest.mark.parametrize("budget", [60_000, 1 << 30])  # releases every few batches / never within an epoch
def test_mapped_epochs_are_the_in_memory_epochs(store, budget, monkeypatch):
    cfg = TrainConfig(face=ALL, batch_size=16, segments=6, augment=("jitter", "flip"))
    mem = load_features(str(store), cfg.modalities, specs={"face": ALL}, log=quiet)
    disk = load_features(str(store), cfg.modalities, specs={"face": ALL}, stream=True, log=quiet)
    plans = frame_plans(mem.sets, cfg)
    mapped = StreamSource(disk, cfg, plans, CPU, budget=budget, log=quiet)
    monkeypatch.setattr(stream, "MAP", False)
    buffered = StreamSource(disk, cfg, plans, CPU, budget=budget, log=quiet)
    sources = [MemorySource(mem.sets, cfg, plans, CPU), mapped, buffered]
    try:
        assert mapped.describe()["mapped"] and not buffered.describe()["mapped"]
        blocks, _ = sampling_blocks(mem, cfg.modalities)
        for epoch in range(2):
            got = []
            for src in sources:
                gen, draw = torch.Generator().manual_seed(epoch), torch.Generator().manual_seed(100 + epoch)
                order = epoch_order(np.arange(mem.n), mem.labels, balance=True, gen=gen, blocks=blocks)
                got.append(list(src.epoch(order, draw=draw)))
            ref = got[0]
            assert len(ref) == -(-mem.n // 16)
            for other in got[1:]:
                assert len(other) == len(ref)
                for a, b in zip(ref, other):
                    assert torch.equal(a.idx, b.idx) and a.inputs.keys() == b.inputs.keys()
                    for k in a.inputs:
                        assert a.inputs[k].dtype == b.inputs[k].dtype and torch.equal(a.inputs[k], b.inputs[k]), k
    finally:
        mapped.close()
        buffered.close()


def test_a_truncated_chunk_stops_a_mapped_stream_with_the_read_paths_line(tmp_path):
    path = make_allframe_store(tmp_path / "cut.zarr", n=40, frames=FRAMES, dim=DIM, fixed=None, chunk_bytes=8 * 4096)
    chunk = path / "features" / ALL / "data" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-100])
    cfg = TrainConfig(face=ALL, batch_size=8, segments=4)
    disk = load_features(str(path), cfg.modalities, specs={"face": ALL}, stream=True, log=quiet)
    with pytest.raises(FerEnvError) as e:
        StreamSource(disk, cfg, frame_plans(disk.sets, cfg), CPU, budget=1 << 30, log=quiet)
    msg = str(e.value)
    assert "\n" not in msg and f"{ALL}: chunk 1 of its data (rows 8-15" in msg and "fer cache verify" in msg


def test_mapped_epochs_of_face_pose_and_audio(tmp_path):
    """Every chosen set mapped: pose and audio rows are taken whole from their mapped files and batched by
    make_batch, as in memory."""
    from fer.tests.train.synth_store import make_store

    # one chunk per set of a whole number of pages (rows of 512, 306 and 480 bytes: 2048 of each)
    path = make_store(tmp_path / "multi.zarr", n=2048, modalities=("face", "pose", "audio"), audio="mel",
                      chunk_bytes=1 << 30)
    cfg = TrainConfig(modalities=("face", "pose", "audio"), fusion="transformer", batch_size=256)
    mem = load_features(str(path), cfg.modalities, log=quiet)
    disk = load_features(str(path), cfg.modalities, stream=True, log=quiet)
    plans = frame_plans(mem.sets, cfg)
    src = StreamSource(disk, cfg, plans, CPU, budget=1 << 30, log=quiet)
    try:
        assert set(src.mapped) == {"face", "pose", "audio"}
        blocks, _ = sampling_blocks(mem, cfg.modalities)
        got = []
        for s in (MemorySource(mem.sets, cfg, plans, CPU), src):
            order = epoch_order(np.arange(mem.n), mem.labels, balance=False, gen=torch.Generator().manual_seed(3),
                                blocks=blocks)
            got.append(list(s.epoch(order, draw=torch.Generator().manual_seed(4))))
        assert len(got[0]) == len(got[1]) == mem.n // 256
        for a, b in zip(*got):
            assert torch.equal(a.idx, b.idx) and a.inputs.keys() == b.inputs.keys()
            for k in a.inputs:
                assert torch.equal(a.inputs[k], b.inputs[k]), k
    finally:
        src.close()
