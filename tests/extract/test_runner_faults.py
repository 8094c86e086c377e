"""The extraction runner under faults, and its GPU-facing choices checked on CPU (issue 14 items 3, 7, 8, 9):
the retry after a failed batch frees the batch first, the device from LOCAL_RANK, workers per rank, and
decoding workers that never receive the model."""

import io
import multiprocessing
import os
import pickle
import sys
import weakref

import numpy as np
import pytest
import torch

from fer.cache import devices, open_store
from fer.cache.errors import FerEnvError, FerError
from fer.extract.backbones.face import FaceExtractor
from fer.extract.datasets import load_dataset
from fer.extract.extractor import LeftInMainProcess
from fer.extract.loading import default_workers, worker_start_method
from fer.extract.runner import run_extraction
from fer.extract.stores import check_store_outside
from fer.extract.synth import synthesize
from fer.tests.mounts import read_only

SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("faults") / "dfew"
    synthesize(r, clips=6, seed=3, workers=1)
    return r


def run(root, ex, path, **kw):
    kw = {"batch_size": 3, "workers": 0, "progress": False, **kw}
    return run_extraction(load_dataset(root), ex, path, **kw)


# ------------------------------------------------------------------ item 3: retry after a failed batch
class OutOfMemoryOnBatches(FaceExtractor):
    """A real face extractor whose batches of several clips run out of (simulated) device memory."""

    def __init__(self, always=False):
        super().__init__(weights="none", size=SIZE)
        self.always, self.batch_tensors, self.alive_at_retry = always, [], []

    def embed(self, items):
        if len(items) > 1 or self.always:
            activations = torch.empty(256, 1024)  # what a real forward pass holds when it runs out of memory
            self.batch_tensors.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.alive_at_retry.append(any(r() is not None for r in self.batch_tensors))
        return super().embed(items)


def test_the_retry_after_a_failed_batch_starts_with_the_batch_released(root, tmp_path):
    ex = OutOfMemoryOnBatches()
    s = run(root, ex, tmp_path / "s.zarr")
    assert s.done == 6 and not s.failed  # every clip made it one at a time
    assert ex.batch_tensors and ex.alive_at_retry and not any(ex.alive_at_retry)


def test_out_of_memory_even_one_clip_at_a_time_is_one_line_exit_3(root, tmp_path):
    with pytest.raises(FerEnvError, match="ran out of memory on cpu .*smaller --batch-size") as e:
        run(root, OutOfMemoryOnBatches(always=True), tmp_path / "s.zarr")
    assert e.value.exit_code == 3


# ------------------------------------------------------------------ item 7: the device from LOCAL_RANK
@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend torch sees `count` GPUs (this machine has none); records set_device calls."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    monkeypatch.delenv("LOCAL_RANK", raising=False)

    def with_count(n):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        return calls

    return with_count


def test_the_gpu_is_local_rank_modulo_the_visible_gpus_and_is_made_current(fake_gpus, monkeypatch):
    calls = fake_gpus(2)
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert devices.resolve_device("auto") == torch.device("cuda", 1)
    assert calls == [torch.device("cuda", 0), torch.device("cuda", 1)]
    fake_gpus(1)  # SLURM --gpus-per-task: every rank sees its own GPU as device 0
    assert devices.resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(FerError, match="GPU 5 but 1 GPU"):
        devices.resolve_device("cuda:5")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(FerError, match="LOCAL_RANK"):
        devices.resolve_device("cuda")


# ------------------------------------------------------------------ item 8: workers per rank
def test_workers_share_the_usable_cores_among_the_local_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 8  # 15 usable beside the model, at most 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers() == 3  # 4 cores per rank: one for its model, 3 decoders (12 in all, not 32)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert default_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a job given 2 of the machine's cores
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert default_workers() == 1
    assert default_workers(torch.device("cpu")) == 0  # a CPU model on 2 cores: decode in its own process
    assert default_workers(torch.device("cuda", 0)) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert default_workers(torch.device("cpu")) == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(FerError, match="LOCAL_WORLD_SIZE"):
        default_workers()


# ------------------------------------------------------------------ item 9: workers never get the model
class _Contents(pickle.Pickler):
    def __init__(self):
        super().__init__(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL)
        self.types = set()

    def reducer_override(self, obj):
        self.types.add(type(obj))
        return NotImplemented


def test_what_workers_receive_holds_no_model(root):
    ex = FaceExtractor(weights="none", size=SIZE)
    loader = ex.loader()
    scan = _Contents()
    scan.dump(loader)
    assert not any(issubclass(t, torch.nn.Module) for t in scan.types)
    assert len(pickle.dumps(loader)) < 50_000 < 10_000_000 < len(pickle.dumps(ex))  # ResNet-18 is ~45 MB
    assert isinstance(loader.model, LeftInMainProcess) and isinstance(ex.model, torch.nn.Module)
    with pytest.raises(RuntimeError, match="FaceExtractor.model holds a model.*must not use it"):
        loader.model(torch.zeros(1))
    rec = load_dataset(root).records[0]
    a, b = ex.load(rec)[0], pickle.loads(pickle.dumps(loader)).load(rec)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_extraction_with_a_worker_started_by_spawn_or_forkserver(root, tmp_path, method):
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"{method} is not available on this platform")
    ex = FaceExtractor(weights="none", size=SIZE)
    run(root, ex, tmp_path / "main.zarr")
    s = run(root, ex, tmp_path / "w.zarr", workers=1, start_method=method)
    assert s.done == 6 and not s.failed
    with open_store(tmp_path / "main.zarr") as a, open_store(tmp_path / "w.zarr") as b:
        assert np.array_equal(a.read(ex.spec).data, b.read(ex.spec).data)


def test_workers_start_by_fork_on_cpu_and_never_fork_a_cuda_process():
    if sys.platform.startswith("linux"):
        assert worker_start_method(torch.device("cpu")) == "fork"
    assert worker_start_method(torch.device("cuda", 0)) in ("forkserver", "spawn")


# ------------------------------------------------------------------ where a store may go
def test_a_store_inside_the_dataset_is_refused(root, tmp_path):
    for inside in (root, root / "feats.zarr", root / "Clip" / "f.h5"):
        with pytest.raises(FerError, match="inside the dataset folder"):
            check_store_outside(inside, root)
    check_store_outside(root.parent / "feats.zarr", root)
    check_store_outside(tmp_path / "m.zarr", tmp_path / "manifest.csv")  # a manifest's folder is not a dataset
    with pytest.raises(FerError, match="inside the dataset folder"):
        run(root, FaceExtractor(weights="none", size=SIZE), root / "feats.zarr")
    assert not (root / "feats.zarr").exists()


def test_a_finished_set_on_a_read_only_store_is_a_no_op_without_lock_files(root, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    ex = FaceExtractor(weights="none", size=SIZE)
    run(root, ex, folder / "s.zarr")
    before = sorted(str(p) for p in folder.rglob("*"))
    with read_only(folder):
        s = run(root, ex, folder / "s.zarr")
        assert s.done == 0 and s.skipped == 6 and s.todo == 0
        with pytest.raises(FerEnvError, match="read-only|permission"):  # a set that needs writing
            run(root, FaceExtractor(weights="none", size=SIZE, frames=8), folder / "s.zarr")
    assert sorted(str(p) for p in folder.rglob("*")) == before
