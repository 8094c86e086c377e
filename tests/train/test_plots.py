"""fer.train.plots: PR/AP maths on hand examples, and PNGs written for a hand-made run folder."""

import numpy as np
import pytest

from fer.cache.errors import FerError
from fer.tests.train.fake_runs import make_run
from fer.train.plots import average_precision, precision_recall_curve, write_plots


def test_perfect_ranking_has_ap_one():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1])
    pos = np.array([1, 1, 1, 0, 0], bool)
    assert average_precision(scores, pos) == pytest.approx(1.0)
    precision, recall, thr = precision_recall_curve(scores, pos)
    assert recall[-1] == 1.0 and precision[2] == 1.0 and list(thr) == list(scores)


def test_ap_hand_example():
    # ranking: +, -, +, -  -> precision at the two hits: 1 and 2/3; AP = 0.5*1 + 0.5*2/3
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    pos = np.array([1, 0, 1, 0], bool)
    assert average_precision(scores, pos) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # worst ranking: both positives last -> 0.5*1/3 + 0.5*2/4
    assert average_precision(scores, np.array([0, 0, 1, 1], bool)) == pytest.approx(0.5 / 3 + 0.5 * 0.5)


def test_ties_form_one_threshold_and_order_does_not_matter():
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    a = average_precision(scores, np.array([1, 0, 0, 1], bool))
    b = average_precision(scores, np.array([0, 0, 1, 1], bool))
    assert a == b == pytest.approx(0.5)  # one threshold: precision 2/4 at recall 1
    precision, recall, thr = precision_recall_curve(scores, np.array([1, 0, 0, 1], bool))
    assert len(thr) == 1


def test_no_positives_gives_nan():
    assert np.isnan(average_precision(np.array([0.1, 0.2]), np.array([0, 0], bool)))


def test_write_plots_for_a_run_folder(tmp_path):
    run = make_run(tmp_path, "r1", wars=(0.5, 0.6, 0.7))
    written = write_plots(run)
    names = sorted(p.name for p in written)
    assert names == sorted(["confusion_fold1.png", "confusion_fold2.png", "confusion_fold3.png",
                            "pr_fold1.png", "pr_fold2.png", "pr_fold3.png", "curves.png"])
    for p in written:
        assert p.parent == run / "plots"
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_write_plots_on_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerError, match="not a run folder"):
        write_plots(tmp_path / "empty")
