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


def test_validation_beside_test_and_the_order_is_by_validation(tmp_path):
    """Issue 19: the table shows validation scores and is sorted by them; the test columns never rank runs."""
    test_best = make_run(tmp_path, "test-best", wars=(0.9, 0.9), uars=(0.8, 0.8), val_uars=(0.30, 0.40))
    val_best = make_run(tmp_path, "val-best", wars=(0.5, 0.5), uars=(0.4, 0.4), val_uars=(0.60, 0.70))
    old = make_run(tmp_path, "old", wars=(0.6, 0.6))  # no val_* in metrics.json: history.csv at best_epoch
    s = summarize(val_best)
    assert s.has_val and s.val_mean("uar") == pytest.approx(0.65) and s.val_std("uar") == pytest.approx(0.05)
    assert summarize(old).val["uar"] == pytest.approx([0.40, 0.40])
    text = report([test_best, old, val_best])
    lines = text.splitlines()
    assert lines[0].startswith("Sorted by validation UAR") and "never rank runs" in lines[0]
    assert "val WAR %" in lines[1] and "val UAR %" in lines[1]
    assert [ln.split()[0] for ln in lines[3:6]] == ["val-best", "old", "test-best"]
    assert "65.00 ± 5.00" in lines[3] and "70.00 ± 5.00" in lines[3]  # val UAR and WAR beside the test ones
    assert "Best by" not in text
    best = report([test_best, val_best, old], best=True)
    assert "Best by validation UAR: val-best (65.00 ± 5.00 %; chosen on validation, never on test)" in best
    loss = report([test_best, val_best], best=True, metric="loss")  # val loss = 1 - val UAR: lowest first
    assert "Best by validation loss: val-best (0.3500 ± 0.0500;" in loss
    assert report([test_best, val_best], best=True, metric="war").count("val-best") == 2
    md = report([test_best, val_best], markdown=True, best=True).splitlines()
    assert md[0].startswith("| run |") and md[2].startswith("| val-best |")
    assert md[6].startswith("Best by validation UAR: val-best")
    with pytest.raises(FerError, match="unknown --metric acc"):
        report([test_best], metric="acc")


def test_runs_without_validation_are_marked_and_never_ranked_by_test(tmp_path):
    lit = make_run(tmp_path, "lit", wars=(0.95, 0.95), uars=(0.9, 0.9), protocol="literature")
    fer = make_run(tmp_path, "fer", wars=(0.5, 0.5), val_uars=(0.5, 0.5))
    text = report([lit, fer], best=True)
    assert [ln.split()[0] for ln in text.splitlines()[-2:]] == ["fer", "lit"]
    assert "none (literature)" in text.splitlines()[-1]
    assert "Not ranked, no validation clips (literature protocol: last epoch, whole training fold): lit." in \
        text
    assert "Best by validation UAR: fer" in text
    with pytest.raises(FerError, match="--best ranks runs by validation UAR, and none of lit has validation "
                                       "clips .* will not rank them by test"):
        report([lit], best=True)
    assert "No best run named: none has validation clips" in report([lit], best=True, strict=False)
    assert "none (literature)" in report([lit])
