"""fer.train.sweep: a 2x2 grid on a tiny real store -> 4 run folders + report.md, features loaded once,
resume; a point another process holds is left to it."""

import json

import pytest
import torch

from fer.cache.errors import FerError
from fer.tests.lock_holder import holder
from fer.tests.train.fake_runs import make_store
from fer.train.config import TrainConfig
from fer.train.sweep import expand_grid, is_complete, parse_grid, plan, sweep


def test_expand_grid_and_names(tmp_path):
    assert expand_grid({"fusion": ["none", "fc"], "lr": [1e-3]}) == [{"fusion": "none", "lr": 1e-3},
                                                                     {"fusion": "fc", "lr": 1e-3}]
    base = TrainConfig(modalities=("face", "audio"), fusion="fc")
    cfgs = plan({"modalities": [("face",), ("face", "audio")], "fusion": ["fc"], "lr": [1e-4, 3e-4]},
                TrainConfig(fusion="fc"), tmp_path)
    names = [p.split("/")[-1] for p in (c.out for c in cfgs)]
    assert names == ["modalities-face_lr-0.0001", "modalities-face_lr-0.0003",
                     "modalities-face+audio_lr-0.0001", "modalities-face+audio_lr-0.0003"]
    assert cfgs[2].modalities == ("face", "audio") and cfgs[3].lr == 3e-4 and base.fusion == "fc"
    with pytest.raises(FerError, match="cannot sweep over 'colour'"):
        expand_grid({"colour": ["red"]})
    lines = []
    cfgs = plan({"fusion": ["none", "fc"], "modalities": [("face",), ("face", "audio")]}, TrainConfig(), tmp_path,
                log=lines.append)
    assert [c.out.split("/")[-1] for c in cfgs] == ["fusion-none_modalities-face", "fusion-fc_modalities-face",
                                                     "fusion-fc_modalities-face+audio"]
    assert "skipping fusion-none_modalities-face+audio" in lines[0]
    with pytest.raises(FerError, match="sweep point loss-msee"):
        plan({"loss": ["kl", "msee"]}, TrainConfig(), tmp_path)


def test_parse_grid():
    grid, base = parse_grid({"fusion": "none,fc", "modalities": "face;face,audio", "folds": "all", "lr": "1e-4",
                             "layers": "1,2", "audio_layer": "12,last", "loss": None})
    assert grid == {"fusion": ["none", "fc"], "modalities": [("face",), ("face", "audio")], "layers": [1, 2],
                    "audio_layer": [12, None]}
    assert base == {"folds": (), "lr": 1e-4}  # () = every fold of the store
    with pytest.raises(FerError, match="--layers 'x' is not an integer"):
        parse_grid({"layers": "1,x"})


@pytest.fixture
def one_thread():
    # tiny model: a second thread only adds synchronisation on a shared 2-core box
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_sweep_2x2_loads_once_and_resumes(tmp_path, monkeypatch, one_thread):
    store = make_store(tmp_path / "s.zarr")
    import fer.train.features as features

    calls = []
    real = features.load_features

    def counting(*a, **k):
        calls.append(a)
        return real(*a, **k)

    # count calls through the real loader (it still runs): evidence that features are loaded once
    monkeypatch.setattr(features, "load_features", counting)
    base = TrainConfig(layers=1, heads=2, ff=64, hidden=32, epochs=2, batch_size=16, folds=(1,), device="cpu")
    out = tmp_path / "sweep"
    lines = []
    runs = sweep(store, {"fusion": ["none"], "loss": ["kl", "mse"], "lr": [1e-3, 3e-4]}, base, out, log=lines.append)
    assert [r.name for r in runs] == ["loss-kl_lr-0.001", "loss-kl_lr-0.0003", "loss-mse_lr-0.001",
                                      "loss-mse_lr-0.0003"]
    assert len(calls) == 1
    for r in runs:
        assert (r / "metrics.json").is_file() and (r / "history.csv").is_file()
        assert (r / "plots" / "confusion_fold1.png").is_file() and (r / "plots" / "pr_fold1.png").is_file()
    md = (out / "report.md").read_text()
    assert md.startswith("| run |") and all(f"| {r.name} |" in md for r in runs)
    assert sum("loading features" in str(x) for x in lines) == 1

    # a killed sweep: one point lost its metrics -> only that one reruns
    (runs[2] / "metrics.json").unlink()
    lines.clear()
    sweep(store, {"fusion": ["none"], "loss": ["kl", "mse"], "lr": [1e-3, 3e-4]}, base, out, log=lines.append)
    assert len(calls) == 2
    assert any("3 already complete, 1 to run" in str(x) for x in lines)
    assert (runs[2] / "metrics.json").is_file()

    # everything complete: nothing is loaded, the report is rewritten
    (out / "report.md").unlink()
    sweep(store, {"fusion": ["none"], "loss": ["kl", "mse"], "lr": [1e-3, 3e-4]}, base, out, log=lines.append)
    assert len(calls) == 2 and (out / "report.md").is_file()


def test_a_point_another_process_holds_is_left_to_it_and_run_once_it_is_killed(tmp_path, one_thread):
    store = make_store(tmp_path / "s.zarr")
    base = TrainConfig(layers=1, heads=2, ff=64, hidden=32, epochs=2, batch_size=16, folds=(1,), device="cpu",
                       plots=False)
    out = tmp_path / "sweep"
    grid = {"fusion": ["none"], "lr": [1e-3, 3e-4, 1e-4]}
    held = out / "lr-0.0003"
    lines = []
    with holder(held) as p:
        runs = sweep(store, grid, base, out, log=lines.append)
        assert [r.name for r in runs] == ["lr-0.001", "lr-0.0003", "lr-0.0001"]
        assert [is_complete(r) for r in runs] == [True, False, True]
        assert any(f"lr-0.0003 is being run by process {p.pid} on host" in x for x in lines)
        assert any("2 of 3 points complete; still running in other processes: lr-0.0003" in x for x in lines)
        assert "lr-0.0003" not in (out / "report.md").read_text()  # the report: what is complete
        p.kill()  # SIGKILL: its lock dies with it
        p.wait()
    lines.clear()
    sweep(store, grid, base, out, log=lines.append)
    assert any("2 already complete, 1 to run" in x for x in lines) and all(map(is_complete, runs))
    assert json.loads((held / "config.json").read_text())["lr"] == 3e-4


def test_units_are_points_that_differ_only_in_what_each_model_holds(tmp_path):
    from fer.train.sweep import describe_units, units

    grid = {"lr": [1e-3, 3e-4], "layers": [1, 2], "seed": [1, 2], "loss": ["kl", "ce"]}
    cfgs = plan(grid, TrainConfig(), tmp_path)
    groups = units(cfgs)
    assert [len(g) for g in groups] == [8, 8]
    assert all(len({c.layers for c in g}) == 1 for g in groups)
    assert describe_units(groups)[0].endswith("(8 points trained together)")
    assert [len(g) for g in units(plan(grid, TrainConfig(folds_together=1), tmp_path))] == [1] * 16
    # what the architecture or the data are made of splits the units
    assert len(units(plan({"fusion": ["fc", "transformer"], "modalities": [("face", "audio")], "lr": [1e-3, 1e-4]},
                          TrainConfig(), tmp_path))) == 2


def test_a_dry_run_lists_the_units_and_loads_nothing(tmp_path, monkeypatch):
    import fer.train.features as features

    monkeypatch.setattr(features, "load_features", lambda *a, **k: pytest.fail("a dry run loads nothing"))
    lines = []
    runs = sweep(tmp_path / "no_store.zarr", {"lr": [1e-3, 3e-4], "dropout": [0.1, 0.2]}, TrainConfig(),
                 tmp_path / "out", log=lines.append, dry_run=True)
    assert len(runs) == 4 and not (tmp_path / "out").exists()
    assert "4 to run in 1 unit(s)" in lines[0] and "(4 points trained together)" in lines[1]
