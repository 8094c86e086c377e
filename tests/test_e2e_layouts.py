"""Every layout end to end through the real CLI on synthetic data: synth -> extract face -> train -> report.

MAFW brings 11 classes and 5 folds, FERV39k one official split and no audio, class folders a protocol
validation split; an audio-only run is a standard row of DFER tables.
"""

import json

import pytest

from fer.tests.cli import fer_ok as fer

TRAIN = ["--epochs", 3, "--layers", 1, "--heads", 2, "--ff", 32, "--hidden", 32, "--batch-size", 8, "--no-plots"]


def _extract(root, store, *extra):
    return fer("extract", root, "-m", "face", "--weights", "none", "--size", 48, "--frames", 4, "--store", store,
               "--workers", 1, "--no-progress", *extra)


def test_mafw_eleven_classes_five_folds(tmp_path):
    root, store, run = tmp_path / "mafw", tmp_path / "mafw.zarr", tmp_path / "runs" / "mafw"
    fer("data", "synth", root, "--clips", 70, "--seed", 1, "--layout", "mafw")
    info = fer("data", "info", root, "--no-check-media").stdout
    assert "MAFW layout" in info and "helplessness" in info and "set_5" in info
    assert "(mafw layout): 70 clips, 11 classes, 5 folds" in _extract(root, store).stdout
    fer("extract", root, "-m", "audio", "--backbone", "mel", "--store", store, "--workers", 1, "--no-progress")
    fer("train", store, "--fold", "2,4", "--out", run, *TRAIN)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"][7:] == ["contempt", "anxiety", "helplessness", "disappointment"]
    for k in ("2", "4"):
        m = metrics["folds"][k]
        assert len(m["confusion"]) == 11 and all(len(r) == 11 for r in m["confusion"])
        assert len(m["per_class_recall"]) == 11
        recalls = [r for r in m["per_class_recall"] if r == r]  # NaN for classes absent from the test fold
        assert m["uar"] == pytest.approx(sum(recalls) / len(recalls))
    report = fer("report", run).stdout.splitlines()
    assert report[-1].split()[:2] == ["mafw", "face"] and " 2,4 " in report[-1]
    # the audio-only baseline on the same store
    audio = tmp_path / "runs" / "audio"
    fer("train", store, "-m", "audio", "--fold", 1, "--out", audio, *TRAIN)
    assert json.loads((audio / "metrics.json").read_text())["modalities"] == ["audio"]
    # an audio-only run labels a bare video without looking for a face in it
    video = next((root / "data" / "clips").glob("*.mp4"))
    out = json.loads(fer("predict", video, "--run", audio, "--json").stdout)
    assert out["top"] in metrics["class_names"] and len(out["probs"]) == 11


def test_ferv39k_one_official_split(tmp_path):
    root, store, run = tmp_path / "ferv", tmp_path / "ferv.zarr", tmp_path / "runs" / "ferv"
    fer("data", "synth", root, "--clips", 40, "--seed", 2, "--layout", "ferv39k")
    assert "(ferv39k layout): 40 clips, 7 classes, 1 fold" in _extract(root, store).stdout
    ls = fer("cache", "ls", store).stdout
    assert "40/40" in ls
    fer("train", store, "--fold", "all", "--out", run, *TRAIN)
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["folds"]) == ["1"] and metrics["fold_names"] == ["All_scenes"]
    assert metrics["class_names"] == ["Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear"]
    bad = fer("train", store, "--fold", 2, "--out", tmp_path / "x", *TRAIN, check=2)
    assert "fold 2 does not exist" in bad.stderr and "1 (All_scenes)" in bad.stderr
    # FERV39k has no audio: asking for it says what the store has
    no_audio = fer("train", store, "-m", "face,audio", "--fusion", "fc", "--out", tmp_path / "y", *TRAIN, check=2)
    assert "no audio feature set" in no_audio.stderr


def test_class_folders_validate_on_their_val_split(tmp_path):
    root, store, run = tmp_path / "caer", tmp_path / "caer.zarr", tmp_path / "runs" / "caer"
    fer("data", "synth", root, "--clips", 60, "--seed", 3, "--layout", "folders")
    info = fer("data", "info", root, "--no-check-media").stdout
    assert "class folders" in info and "model selection on val" in info
    _extract(root, store)
    out = fer("train", store, "--out", run, *TRAIN).stdout
    n_val = sum(1 for p in (root / "val").rglob("*.mp4"))
    assert f"{n_val} validation" in out  # the protocol's val clips, not a split of train
    fer("report", run)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["class_names"] == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
