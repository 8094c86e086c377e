"""fer.train.report: mean/std over folds from metrics.json, terminal and markdown tables, bad folders."""

import json

import numpy as np
import pytest

from fer.cache.errors import FerError
from fer.tests.train.fake_runs import make_run
from fer.train.report import find_runs, report, summarize


def test_mean_std_from_fold_values(tmp_path):
    run = make_run(tmp_path, "a", wars=(0.50, 0.60, 0.70), uars=(0.40, 0.45, 0.56))
    # metrics.json "mean"/"std" are ignored: the report recomputes from the folds
    m = json.loads((run / "metrics.json").read_text())
    m["mean"] = {"war": 0.0, "uar": 0.0}
    (run / "metrics.json").write_text(json.dumps(m))
    s = summarize(run)
    assert s.war_mean == pytest.approx(0.6) and s.war_std == pytest.approx(np.std([0.5, 0.6, 0.7]))
    assert s.uar_mean == pytest.approx(np.mean([0.40, 0.45, 0.56]))
    assert s.folds == [1, 2, 3] and s.epochs == [3, 3, 3] and s.seconds == pytest.approx(30.0)
    text = report([run])
    assert "60.00 ± 8.16" in text and "47.00 ± 6.68" in text
    assert "face+audio" in text and "fc" in text and "kl" in text and "30.0s" in text and "1-3" in text


def test_markdown_table(tmp_path):
    a = make_run(tmp_path, "face-none", wars=(0.5, 0.5), fusion="none", loss="mse", modalities=("face",))
    b = make_run(tmp_path, "face-audio-tf", wars=(0.6, 0.7), fusion="transformer")
    md = report([a, b], markdown=True)
    lines = md.strip().splitlines()
    assert lines[0].startswith("| run | modalities | fusion | loss | WAR")
    assert set(lines[1]) <= set("|-: ")
    assert len(lines) == 4
    assert lines[2].startswith("| face-none | face | none | mse | 50.00 ± 0.00 |")
    assert "| face-audio-tf | face+audio | transformer | kl | 65.00 ± 5.00 |" in lines[3]
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_parent_folder_expands_to_its_runs(tmp_path):
    make_run(tmp_path / "sweep", "b")
    make_run(tmp_path / "sweep", "a")
    (tmp_path / "sweep" / "report.md").write_text("x")
    (tmp_path / "sweep" / "not-a-run").mkdir()
    assert [p.name for p in find_runs([tmp_path / "sweep"])] == ["a", "b"]
    text = report([tmp_path / "sweep"])
    assert text.index("\na ") < text.index("\nb ")


def test_unfinished_run_is_shown(tmp_path):
    run = make_run(tmp_path, "r")
    (run / "metrics.json").rename(run / "metrics_partial.json")
    text = report([run])
    assert "1,2 (unfinished)" in text and "55.00 ± 5.00" in text
    (run / "metrics_partial.json").unlink()
    assert "unfinished" in report([run])


def test_not_a_run_is_an_error(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x.txt").write_text("hi")
    with pytest.raises(FerError, match="not a run folder"):
        report([tmp_path / "plain"])
    with pytest.raises(FerError, match="does not exist"):
        report([tmp_path / "missing"])
    bad = make_run(tmp_path, "bad")
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(FerError, match="not valid JSON"):
        report([bad])
