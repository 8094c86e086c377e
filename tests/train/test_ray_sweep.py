"""`fer sweep` on a local Ray instance: the points as Ray tasks give the same run folders and metrics as the
sequential sweep; finished points are skipped."""

import json

import pytest

from fer.cache.errors import FerError
from fer.tests.train.fake_runs import make_store
from fer.train.config import TrainConfig
from fer.train.ray_sweep import RaySweep
from fer.train.sweep import SweepConfig, sweep

GRID = {"fusion": ["none"], "loss": ["kl", "mse"], "lr": [1e-3, 3e-4]}


TIMES = ("seconds", "samples_per_s", "created")


def untimed(x):
    """``x`` without its timing entries (how long a run took differs; what it computed must not)."""
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMES}
    return x


def metrics(run) -> dict:
    return untimed(json.loads((run / "metrics.json").read_text()))


def history(run) -> list[dict]:
    import csv

    return [untimed(row) for row in csv.DictReader((run / "history.csv").open())]


def test_sweep_on_ray_gives_the_sequential_metrics(tmp_path, ray_local):
    store = make_store(tmp_path / "s.zarr")
    base = TrainConfig(layers=1, heads=2, ff=64, hidden=32, epochs=2, batch_size=16, folds=(1,), device="cpu",
                       plots=False)
    seq = sweep(store, GRID, base, tmp_path / "seq", log=lambda _: None)
    lines = []
    par = sweep(store, GRID, base, tmp_path / "ray", log=lines.append, engine=RaySweep(progress=False))
    assert [r.name for r in par] == [r.name for r in seq]
    for a, b in zip(seq, par):
        assert metrics(a) == metrics(b)
        assert history(a) == history(b) and len(history(a)) == 2
    assert any("4 points as Ray tasks on the local Ray instance" in str(x) for x in lines)
    assert (tmp_path / "ray" / "report.md").is_file()

    # a point lost its metrics: only it runs again, on Ray
    (par[1] / "metrics.json").unlink()
    lines.clear()
    sweep(store, GRID, base, tmp_path / "ray", log=lines.append, engine=RaySweep(progress=False))
    assert any("3 already complete, 1 to run" in str(x) for x in lines) and metrics(par[1]) == metrics(seq[1])


def test_sweep_engine_settings():
    assert SweepConfig().runner() is None
    runner = SweepConfig(engine="ray", gpus_per_run=0.25, ray_address="head:6379").runner()
    assert (runner.gpus, runner.address) == (0.25, "head:6379")
    with pytest.raises(FerError, match="--gpus-per-run goes with --engine ray"):
        SweepConfig(gpus_per_run=0.5).runner()
    with pytest.raises(FerError, match="--gpus-per-run must be >= 0"):
        RaySweep(gpus_per_run=-1)
    with pytest.raises(FerError, match="above 1 it must be a whole number"):
        RaySweep(gpus_per_run=1.5)
