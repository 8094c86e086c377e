"""Class folders (AFEW, CAER, own data), a plain folder of videos, and telling layouts apart."""

from pathlib import Path

import pytest

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN, FOLD_VAL
from fer.extract.datasets import detect_layout, load_dataset


def _tree(root: Path, spec: dict[str, dict[str, list[str]]]) -> Path:
    """spec[split][class] = clip names; 'x.mp4' is a video, 'x/' a frame folder (one jpg)."""
    for split, classes in spec.items():
        for cls, clips in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for c in clips:
                if c.endswith("/"):
                    (d / c).mkdir()
                    (d / c / "00001.jpg").touch()
                else:
                    (d / c).touch()
    return root


def test_train_val_test_like_caer(tmp_path: Path):
    root = _tree(tmp_path / "CAER", {
        "train": {"Happy": ["a.mp4", "b.avi"], "Angry": ["c.mp4", "c/"], "Sad": ["d/"]},
        "Validation": {"Happy": ["e.mp4"], "Sad": ["f.mkv"]},
        "test": {"Angry": ["g.mp4"], "Happy": ["h.mp4"], "Sad": ["i/"]},
    })
    assert detect_layout(root) == "folders"
    ds = load_dataset(root)
    assert ds.kind == "folders" and ds.class_names == ("Angry", "Happy", "Sad")  # sorted folder names
    assert (ds.fold_names == ("test",) and "val is for selection" not in ds.protocol
            and "model selection on val" in ds.protocol)
    got = {r.clip_id: (int(r.votes.argmax()), int(r.folds[0])) for r in ds.records}
    assert got == {"train/Angry/c": (0, FOLD_TRAIN), "train/Happy/a": (1, FOLD_TRAIN), "train/Happy/b": (1, FOLD_TRAIN),
                   "train/Sad/d": (2, FOLD_TRAIN), "Validation/Happy/e": (1, FOLD_VAL),
                   "Validation/Sad/f": (2, FOLD_VAL),
                   "test/Angry/g": (0, FOLD_TEST), "test/Happy/h": (1, FOLD_TEST), "test/Sad/i": (2, FOLD_TEST)}
    c = next(r for r in ds.records if r.clip_id == "train/Angry/c")  # a video and a frame folder: one clip
    assert c.video == root / "train" / "Angry" / "c.mp4" and c.faces_all == root / "train" / "Angry" / "c"
    assert ds.problems == {} and ds.warnings == []


def test_train_val_only_like_afew_evaluates_val(tmp_path: Path):
    root = _tree(tmp_path / "AFEW", {"Train": {"Fear": ["a.avi"], "Happy": ["b.avi"]},
                                     "Val": {"Fear": ["c.avi"], "Happy": ["d.avi"], "Surprise": ["e.avi"]}})
    ds = load_dataset(root, classes=("Happy", "Fear", "Surprise"))
    assert ds.class_names == ("Happy", "Fear", "Surprise") and ds.fold_names == ("val",)
    assert [(r.clip_id, int(r.votes.argmax()), int(r.folds[0])) for r in ds.records] == [
        ("Train/Fear/a", 1, FOLD_TRAIN), ("Train/Happy/b", 0, FOLD_TRAIN),
        ("Val/Fear/c", 1, FOLD_TEST), ("Val/Happy/d", 0, FOLD_TEST), ("Val/Surprise/e", 2, FOLD_TEST)]
    assert "val is evaluated" in ds.protocol
    assert ds.warnings == ["fold val: Surprise in test but never in train (cannot be learned)"]


def test_folder_errors(tmp_path: Path):
    root = _tree(tmp_path / "r", {"train": {"happy": ["a.mp4"], "sad": []}, "test": {"happy": ["b.mp4"]}})
    with pytest.raises(FerError, match=r"r/train/sad is an empty class folder"):
        load_dataset(root)
    (root / "train" / "sad" / "c.mp4").touch()
    with pytest.raises(FerError, match=r"label 'sad' is not one of the classes \(happy\)"):
        load_dataset(root, classes=("happy",))
    (root / "train" / "sad" / "empty").mkdir()
    assert "holds no image frames" in load_dataset(root).problems["train/sad/empty"]


def test_plain_folder_of_videos_is_unlabeled(tmp_path: Path):
    for n in ("b.mp4", "a.MOV", "a.mp4", "notes.txt"):
        (tmp_path / n).touch()
    assert detect_layout(tmp_path) == "videos"
    ds = load_dataset(tmp_path)
    assert ds.ids == ["a", "b"] and ds.records[0].video.name == "a.mp4"
    assert ds.class_names == () and ds.votes().shape == (2, 0) and ds.folds().shape == (2, 0)


def test_a_root_matching_two_layouts_or_none(tmp_path: Path):
    root = _tree(tmp_path / "r", {"train": {"happy": ["a.mp4"]}})
    (root / "EmoLabel_DataSplit").mkdir()
    with pytest.raises(FerError, match=r"matches two layouts \(dfew and folders\); "
                                       r"say which with --layout dfew\|folders"):
        load_dataset(root)
    assert load_dataset(root, layout="folders").kind == "folders"
    (tmp_path / "empty").mkdir()
    with pytest.raises(FerError, match="matches no dataset layout"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(FerError, match="unknown --layout"):
        load_dataset(root, layout="afew")


def test_class_folders_are_classes_by_name(tmp_path: Path):
    """Issue 19: val/happy beside train/Happy, or test/"Sad " (a trailing space), are one class each, named by
    their first spelling; Happy and Happiness stay two classes, with a warning naming both."""
    root = _tree(tmp_path / "r", {"train": {"Happy": ["a.mp4"], "Sad": ["b.mp4"], "angry": ["c.mp4"]},
                                  "val": {"happy": ["d.mp4"], "ANGRY": ["e.mp4"]},
                                  "test": {"Sad ": ["f.mp4"], "HAPPY": ["g.mp4"], "Angry": ["h.mp4"]}})
    ds = load_dataset(root)
    assert ds.class_names == ("angry", "Happy", "Sad")
    got = {r.clip_id: (ds.class_names[r.label], int(r.votes.argmax())) for r in ds.records}
    assert got == {"train/angry/c": ("angry", 0), "train/Happy/a": ("Happy", 1), "train/Sad/b": ("Sad", 2),
                   "val/ANGRY/e": ("angry", 0), "val/happy/d": ("Happy", 1), "test/Angry/h": ("angry", 0),
                   "test/HAPPY/g": ("Happy", 1), "test/Sad /f": ("Sad", 2)}
    assert not any("look like one" in w for w in ds.warnings)
    assert load_dataset(root, classes=("SAD", "happy", "Angry")).class_names == ("SAD", "happy", "Angry")
    (root / "train" / "Happiness").mkdir()
    (root / "train" / "Happiness" / "i.mp4").touch()
    ds = load_dataset(root)
    assert ds.class_names == ("angry", "Happiness", "Happy", "Sad")
    assert ds.warnings == ["classes 'Happiness' and 'Happy' are two classes but look like one spelled "
                           "twice: rename one (class folders, labels or vote columns) if they are the same, "
                           "or fix it with --classes"]
