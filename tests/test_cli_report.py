"""`fer report` and `fer sweep` end to end, as a user runs them (subprocess)."""


from fer.tests.cli import fer
from fer.tests.train.fake_runs import make_run


def test_report_terminal_markdown_and_out(tmp_path):
    make_run(tmp_path / "runs", "face-none-kl", wars=(0.5, 0.7), fusion="none", modalities=("face",))
    make_run(tmp_path / "runs", "face+audio-fc-kl", wars=(0.6, 0.8))
    r = fer("report", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "face-none-kl" in r.stdout and "60.00 ± 10.00" in r.stdout and "70.00 ± 10.00" in r.stdout
    out = tmp_path / "t" / "table.md"
    r = fer("report", tmp_path / "runs" / "face-none-kl", tmp_path / "runs" / "face+audio-fc-kl", "--markdown",
            "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("| run |") and out.read_text() == r.stdout


def test_report_on_a_non_run_is_one_line_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    r = fer("report", tmp_path / "nothing")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "not a run folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_sweep_grid_then_report(tmp_path):
    from fer.tests.train.fake_runs import make_store

    store = make_store(tmp_path / "s.zarr", n=42)
    out = tmp_path / "sw"
    args = ["sweep", store, "--loss", "kl,mse", "--fold", "1", "--epochs", "1", "--layers", "1", "--heads", "2",
            "--ff", "64", "--hidden", "16", "--batch-size", "16", "--device", "cpu", "--no-plots", "--out", out]
    r = fer(*args)
    assert r.returncode == 0, r.stderr
    assert (out / "loss-kl" / "metrics.json").is_file() and (out / "loss-mse" / "metrics.json").is_file()
    assert "| loss-kl | face | none | kl |" in (out / "report.md").read_text()
    assert not (out / "loss-kl" / "plots").exists()
    assert "loss-mse" in r.stdout and "0 already complete, 2 to run" in r.stdout
    r = fer(*args)  # a rerun trains nothing
    assert r.returncode == 0 and "2 already complete, 0 to run" in r.stdout


def test_sweep_bad_option_is_one_line_error(tmp_path):
    r = fer("sweep", tmp_path / "missing.zarr", "--layers", "1,x", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--layers 'x' is not an integer" in r.stderr and "Traceback" not in r.stderr


def test_sweep_dry_run_shows_the_units_and_trains_nothing(tmp_path):
    from fer.tests.train.fake_runs import make_store

    store = make_store(tmp_path / "s.zarr", n=42)
    out = tmp_path / "sw"
    r = fer("sweep", store, "--lr", "1e-3,3e-4", "--layers", "1,2", "--dropout", "0.1,0.3", "--device", "cpu",
            "--out", out, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "8 points in" in r.stdout and "8 to run in 2 unit(s)" in r.stdout
    unit1 = "sweep: unit 1: lr-0.001_layers-1_dropout-0.1, lr-0.001_layers-1_dropout-0.3, " \
            "lr-0.0003_layers-1_dropout-0.1, lr-0.0003_layers-1_dropout-0.3 (4 points trained together)"
    assert unit1 in r.stdout and "sweep: unit 2: lr-0.001_layers-2_dropout-0.1" in r.stdout
    assert not out.exists()
