"""`--engine ray` for `fer extract` on a local Ray instance: the same store bytes as one process, also with
the model's worker process killed mid-run; bad clips recorded; errors in one line."""

import os
import re
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fer.cache import open_store
from fer.cache.errors import FerEnvError, FerError
from fer.extract.backbones.face import FaceExtractor
from fer.extract.config import ExtractConfig, FacesConfig, parse_actors
from fer.extract.datasets import load_dataset
from fer.extract.ray_engine import RayEngine
from fer.extract.runner import run_extraction
from fer.extract.synth import synthesize
from fer.ray_session import check_nodes, import_ray, ray_session

SIZE = 112  # large enough that the model is still busy when the test kills its process
CHUNK = 3 * 16 * 512 * 2  # 3 rows per chunk


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray_synth") / "dfew"
    synthesize(root, clips=9, seed=3, corrupt=3, workers=1)  # corrupt: truncated mp4, garbage jpg, no faces
    return root


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a Zarr store by relative path, with the creation times taken out of the metadata."""
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        data = f.read_bytes()
        if f.name == "zarr.json":
            import json
            import re

            data = re.sub(rb'"created": "[^"]*"', b'"created": ""', data)
            doc = json.loads(data)
            doc.get("attributes", {}).pop("command_line", None)
            data = json.dumps(doc, sort_keys=True).encode()
        out[str(f.relative_to(path))] = data
    return out


class KillFirstActor(RayEngine):
    """The real engine; when the first batch comes back, the process of the actor that ran it is killed with
    SIGKILL, while the other batches are still queued on it or running."""

    killed: int | None = None

    def results(self, session, ds, summary):
        for batch in super().results(session, ds, summary):
            if self.killed is None:
                self.killed = next(iter(self.pids))
                os.kill(self.killed, signal.SIGKILL)
            yield batch


def test_ray_store_has_the_bytes_of_one_process_even_when_the_model_worker_is_killed(synth_root, tmp_path,
                                                                                      ray_local):
    torch.manual_seed(0)
    ex = FaceExtractor(weights="none", size=SIZE)
    ds = load_dataset(synth_root)
    kw = {"batch_size": 2, "workers": 0, "progress": False, "chunk_bytes": CHUNK}
    one = run_extraction(ds, ex, tmp_path / "one.zarr", **kw)
    engine = KillFirstActor(actors=(1, 1))
    two = run_extraction(ds, ex, tmp_path / "ray.zarr", **kw, engine=engine)

    # the worker really died, Ray restarted the actor and ran its batches again; none came back twice
    assert engine.killed is not None and engine.killed in engine.pids and len(engine.pids) == 2
    assert engine.session.retries >= 1 and engine.duplicates == 0
    assert "ray: local Ray instance (2 CPUs); the model ran in 2 actor process(es)" in str(two)
    # every row present once: the same counts, the same recorded failures (the bad clips), the same bytes
    assert (two.done, two.todo, two.failed) == (one.done, one.todo, one.failed) and one.done == 10
    assert set(two.failed) == {"00011", "00012"}
    with open_store(tmp_path / "one.zarr") as a, open_store(tmp_path / "ray.zarr") as b:
        fa, fb = a.read(ex.spec), b.read(ex.spec)
        assert np.array_equal(fa.data, fb.data, equal_nan=True) and np.array_equal(fa.done, fb.done)
        assert fb.done.sum() == 10 and a.failures(ex.spec) == b.failures(ex.spec)
    assert store_files(tmp_path / "one.zarr") == store_files(tmp_path / "ray.zarr")


def test_a_node_that_cannot_see_the_dataset_ends_the_run_in_one_line(tmp_path, ray_local):
    with ray_session() as session:
        assert check_nodes({"the dataset": str(tmp_path)}, session) == 1
        with pytest.raises(FerEnvError, match=r"Ray node .* cannot see the dataset at .*gone: every node"):
            check_nodes({"the dataset": str(tmp_path / "gone")}, session)


def test_engine_options_and_missing_ray(monkeypatch):
    assert parse_actors("1,4") == (1, 4) and parse_actors("2") == (2, 2) and parse_actors(None) is None
    for bad in ("0,2", "3,1", "x", "1,2,3"):
        with pytest.raises(FerError, match="--actors .* is not MIN,MAX"):
            parse_actors(bad)
    assert ExtractConfig("face").validate().ray_engine("auto") is None
    engine = ExtractConfig("face", engine="ray", actors="1,3").validate().ray_engine("cpu")
    assert (engine.actors, engine.device) == ((1, 3), "cpu")
    for kw, msg in (({"engine": "ray", "workers": 2}, "--workers is for --engine process"),
                    ({"engine": "spark"}, "unknown --engine 'spark'; choose process or ray"),
                    ({"engine": "ray", "shard": "1/2"}, "leave out --shard and run one fer, not torchrun"),
                    ({"ray_address": "h:1"}, "--ray-address goes with --engine ray"),
                    ({"engine": "ray", "actors": "2,1"}, "--actors '2,1' is not MIN,MAX")):
        with pytest.raises(FerError, match=re.escape(msg)):
            FacesConfig(**kw).validate()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(FerEnvError, match=r"--engine ray needs Ray Data, which is not installed .*: "
                                          r"pip install 'fer-cache\[ray\]'"):
        import_ray()


def test_a_problem_inside_ray_comes_back_as_fers_one_line_error(synth_root, ray_local):
    ex = FaceExtractor(weights="none", size=32)
    ds = load_dataset(synth_root)
    # an actor whose model would compute another spec than the run records refuses every batch ...
    from fer.extract.ray_tasks import EmbedActor, RemoteBatch, absolute, decode_batch

    row = decode_batch({"index": 0, "rows": np.array([0, 1])}, ex.loader(), absolute(ds.records),
                       str(synth_root))
    out = EmbedActor(ex, ex.spec + ".other", 0, 1)(row)["batch"]
    assert out.loaded[0].ok and "computes face.resnet18" in out.fatal and "give --precision" in out.fatal
    # ... and the batch's fatal error, back through Ray Data, ends the run as fer's own error and exit status
    import ray

    engine = RayEngine()
    with ray_session() as session:
        batch = RemoteBatch(0, fatal="the dataset is gone", fatal_code=3)
        rows = ray.data.from_items([{"index": 0, "batch": batch}])
        with pytest.raises(FerEnvError, match="^the dataset is gone$"):
            list(engine.results(session, rows, None))
