"""`fer report` and `fer sweep` end to end, as a user runs them (subprocess)."""

import subprocess
import sys

from fer.tests.train.fake_runs import make_run


def fer(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fer.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd)


def test_report_terminal_markdown_and_out(tmp_path):
    make_run(tmp_path / "runs", "face-none-kl", wars=(0.5, 0.7), fusion="none", modalities=("face",))
    make_run(tmp_path / "runs", "face+audio-fc-kl", wars=(0.6, 0.8))
    r = fer("report", tmp_path / "runs")
    assert r.returncode == 0, r.stderr
    assert "face-none-kl" in r.stdout and "60.00 ± 10.00" in r.stdout and "70.00 ± 10.00" in r.stdout
    out = tmp_path / "t" / "table.md"
    r = fer("report", tmp_path / "runs" / "face-none-kl", tmp_path / "runs" / "face+audio-fc-kl", "--markdown", "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("| run |") and out.read_text() == r.stdout


def test_report_on_a_non_run_is_one_line_error(tmp_path):
    (tmp_path / "nothing").mkdir()
    r = fer("report", tmp_path / "nothing")
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "not a run folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
