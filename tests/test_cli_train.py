"""`fer train` end to end on small real stores: fusions x losses learn, errors are one line, Ctrl-C +
--resume, one process owns a run folder (two trains, two sweeps on one --out)."""

import csv
import json
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from fer.cache.errors import FerError
from fer.cli import app
from fer.tests.cli import ENV
from fer.tests.cli import fer as _fer
from fer.tests.train.synth_store import make_store

TINY = ["--layers", "1", "--heads", "2", "--ff", "64", "--hidden", "64", "--lr", "1e-3", "--batch-size", "32",
        "--device", "cpu"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("cli") / "s.zarr", modalities=("face", "pose", "audio"), audio="mel")


@pytest.mark.parametrize("fusion", ["none", "fc", "transformer"])
@pytest.mark.parametrize("loss", ["kl", "mse", "ce", "wce"])
def test_fusions_and_losses_beat_chance(store, tmp_path, fusion, loss):
    mods = "face" if fusion == "none" else "face,pose,audio"
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(store), "--modalities", mods, "--fusion", fusion, "--loss", loss,
                                 "--epochs", "4", "--out", str(out), "--no-plots", *TINY])
    assert r.exit_code == 0, (r.output, r.exception)
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds"]["1"]["uar"] > 0.5 and m["folds"]["1"]["war"] > 0.5  # chance: 1/7
    assert "samples/s" in r.output and "mean" in r.output


def test_default_out_name_and_plots(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["train", str(store), "--epochs", "2", *TINY])
    assert r.exit_code == 0, (r.output, r.exception)
    run = tmp_path / "runs" / "face-none-kl-f1"
    assert (run / "metrics.json").is_file() and (run / "history.csv").is_file()
    assert (run / "plots").is_dir()


@pytest.mark.parametrize("args,message", [
    (["--modalities", "face,smell"], "unknown modality smell"),
    (["--fold", "6"], "fold 6 does not exist"),
    (["--fusion", "late"], "unknown --fusion late"),
    (["--modalities", "face,pose"], "needs --fusion fc or transformer"),
])
def test_bad_options(store, tmp_path, args, message):
    r = CliRunner().invoke(app, ["train", str(store), "--out", str(tmp_path / "r"), *args])
    assert isinstance(r.exception, FerError) and message in str(r.exception)


def test_errors_are_one_line(tmp_path):
    s = make_store(tmp_path / "nofold.zarr", no_folds=True)
    r = _fer("train", s, "--out", tmp_path / "r", "--epochs", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "has no fold columns" in r.stderr


def test_feature_sets_larger_than_memory_stream_and_too_large_validation_is_refused(store, tmp_path):
    env = {**ENV, "FER_MEMORY_BUDGET_GB": "0.00005"}  # 50 kB: under the store's sets, over its validation clips
    r = subprocess.run([sys.executable, "-m", "fer.cli", "train", str(store), "--out", str(tmp_path / "r"),
                        "--epochs", "1", *TINY], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "streaming the feature sets" in r.stdout and (tmp_path / "r" / "metrics.json").is_file()
    env = {**ENV, "FER_MEMORY_BUDGET_GB": "0.000001"}  # 1 kB: not even the validation clips fit
    r = subprocess.run([sys.executable, "-m", "fer.cli", "train", str(store), "--out", str(tmp_path / "r2"),
                        "--epochs", "1", *TINY], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "validation clips, held in memory while the rest streams" in r.stderr and "--val-fraction" in r.stderr
    assert not (tmp_path / "r2" / "config.json").exists()


def test_augment_on_a_fixed_frame_set_is_one_line(store, tmp_path):
    r = _fer("train", store, "--augment", "jitter", "--out", tmp_path / "r", "--epochs", "1")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert "extract all of them with `fer extract ROOT -m face --frames all" in r.stderr
    r = _fer("train", store, "--augment", "blur", "--out", tmp_path / "r", "--epochs", "1")
    assert r.returncode == 2 and "unknown --augment blur: choose from jitter, flip" in r.stderr


def test_every_config_field_is_an_option_with_its_docstring():
    from fer.train.options import config_options

    for cmd in ("train", "sweep"):
        r = CliRunner().invoke(app, [cmd, "--help"], env={"COLUMNS": "300"})
        assert r.exit_code == 0
        for o in config_options():
            # a sweep resumes by itself; its --out is a folder of runs
            if cmd == "sweep" and o.name in ("resume", "out"):
                continue
            assert o.flag in r.output, (cmd, o.flag)
            assert " ".join(o.help.split()[:4]) in " ".join(r.output.split()), (cmd, o.name)


def test_augmented_training_from_the_cli(tmp_path):
    from fer.tests.train.synth_store import make_allframe_store

    s = make_allframe_store(tmp_path / "all.zarr", n=70, fixed=None)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["train", str(s), "--augment", "jitter,flip", "--balance", "--segments", "8",
                                 "--epochs", "2", "--out", str(out), "--no-plots", *TINY])
    assert r.exit_code == 0, (r.output, r.exception)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["augment"] == ["jitter", "flip"] and cfg["balance"] and cfg["segments"] == 8
    sweep_out = tmp_path / "sweep"
    r = CliRunner().invoke(app, ["sweep", str(s), "--augment", "none;jitter", "--balance", "--epochs", "1",
                                 "--out", str(sweep_out), "--no-plots", *TINY])
    assert r.exit_code == 0, (r.output, r.exception)
    assert sorted(p.name for p in sweep_out.iterdir() if p.is_dir()) == ["augment-jitter", "augment-none"]
    assert json.loads((sweep_out / "augment-jitter" / "config.json").read_text())["balance"] is True


def test_ctrl_c_then_resume(store, tmp_path):
    out = tmp_path / "run"
    # Ctrl-C as at a terminal: a shell without job control starts background jobs (`make test &`, nohup) with
    # SIGINT ignored, which the child would inherit, and Python then never raises KeyboardInterrupt
    p = subprocess.Popen([sys.executable, "-m", "fer.cli", "train", str(store), "--epochs", "500", "--patience", "0",
                          "--out", str(out), "--no-plots", *TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt = out / "checkpoint_fold1.pt"
    deadline = time.time() + 90
    while not ckpt.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    outs, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "interrupted" in outs + err and "--resume" in outs + err, (outs + err)[-2000:]
    assert (out / "config.json").is_file() and not (out / "metrics.json").exists()
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < 500
    assert (out / "history.csv").read_text().count("\n") >= done + 1
    r = _fer("train", store, "--epochs", done + 2, "--patience", "0", "--out", out, "--no-plots", "--resume", *TINY)
    assert r.returncode == 0, r.stderr
    assert f"resuming after epoch {done}" in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["folds"]["1"]["epochs_run"] == done + 2
    assert (out / "history.csv").read_text().count("\n") == done + 3


# ---------------------------------------------------------------- one process owns a run folder
def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fer.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


SMALL = ["--heads", "2", "--ff", "64", "--hidden", "64", "--batch-size", "32", "--device", "cpu",
         "--patience", "0", "--no-plots"]


def test_two_trains_started_together_into_one_out_one_runs_and_the_folder_is_its(store, tmp_path):
    out = tmp_path / "run"
    settings = [{"epochs": 4, "layers": 1, "seed": 0}, {"epochs": 2, "layers": 2, "seed": 5}]
    procs = [_start("train", store, "--out", out, *SMALL, *[x for k, v in s.items() for x in (f"--{k}", v)])
             for s in settings]
    res = [(*p.communicate(timeout=300), p.returncode) for p in procs]
    assert sorted(r[2] for r in res) == [0, 2], res
    won = 0 if res[0][2] == 0 else 1
    err = res[1 - won][1].strip()
    assert "Traceback" not in err and err.count("\n") == 0, err
    # refused while the other runs (naming it), or, had it already finished, because the folder holds its run
    assert (f"is in use by process {procs[won].pid} on host {socket.gethostname()}" in err
            or "already holds a run" in err), err
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg[k] for k in settings[won]} == settings[won]
    with open(out / "history.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = settings[won]["epochs"]
    assert [(r["fold"], int(r["epoch"])) for r in rows] == [("1", e) for e in range(1, epochs + 1)]


def test_two_sweeps_on_one_grid_and_out_run_every_point_once(store, tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", store, "--layers", "1,2", "--lr", "1e-3,3e-4", "--epochs", 2, "--out", out, *SMALL]
    procs = [_start(*args) for _ in range(2)]
    res = [(*p.communicate(timeout=600), p.returncode) for p in procs]
    assert [r[2] for r in res] == [0, 0], res
    # each process names the points it ran; the others it left to the other process (or found complete)
    ran = [re.findall(r"^sweep: \[\d+/\d+\] (\S+)$", r[0], re.M) for r in res]
    points = {"lr-0.001_layers-1", "lr-0.001_layers-2", "lr-0.0003_layers-1", "lr-0.0003_layers-2"}
    assert sorted(ran[0] + ran[1]) == sorted(points), ran  # every point once, none twice
    for name in points:
        cfg = json.loads((out / name / "config.json").read_text())
        assert name == f"lr-{cfg['lr']:g}_layers-{cfg['layers']}"
        assert (out / name / "history.csv").read_text().count("\n") == 3  # one run's 2 epochs
    # each ends with the report of what is complete
    assert all("sweep: table written to" in r[0] for r in res)
    report = (out / "report.md").read_text()
    assert all(f"| {name} |" in report for name in points)
