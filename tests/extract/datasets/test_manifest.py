"""The manifest reader: any class set (labels by name or vote_<class> columns), fold_<name> or split columns."""

from pathlib import Path

import numpy as np
import pytest

from fer.cache.errors import FerError
from fer.cache.schema import DFEW_CLASSES, FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED, FOLD_VAL
from fer.extract.datasets import load_dataset, read_manifest


def _error(path: Path, **kw) -> str:
    with pytest.raises(FerError) as e:
        load_dataset(path, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _media(base: Path, names: list[str]) -> None:
    for n in names:
        (base / n).parent.mkdir(parents=True, exist_ok=True)
        (base / n).touch()


def test_manifest_with_dfew_labels(tmp_path: Path):
    _media(tmp_path, ["clips/a.mp4", "clips/b.mp4", "faces/c/0001.jpg", "audio/a.wav"])
    absolute = tmp_path / "clips" / "b.mp4"
    m = tmp_path / "m.csv"
    m.write_text(
        "clip_id,video,faces,audio,label\n"
        "zeta,clips/a.mp4,,audio/a.wav,Happy\n"
        f"alpha,{absolute},,,7\n"
        "mid,,faces/c,,disgust\n"
    )
    ds = load_dataset(m)
    assert ds.kind == "manifest" and not ds.has_votes and ds.root == m
    assert ds.ids == ["zeta", "alpha", "mid"]  # file order, ids as written
    assert ds.class_names == DFEW_CLASSES  # DFEW's integers 1..7 mean DFEW's classes
    assert ds.votes().argmax(1).tolist() == [0, 6, 5]
    assert ds.records[0].video == tmp_path / "clips" / "a.mp4"
    assert ds.records[0].audio == tmp_path / "audio" / "a.wav"
    assert ds.records[1].video == absolute
    assert ds.records[2].faces_all == tmp_path / "faces" / "c" and ds.records[2].video is None
    assert ds.fold_names == () and ds.folds().shape == (3, 0) and ds.problems == {}


def test_any_class_set_sorted_by_name_or_fixed_by_classes(tmp_path: Path):
    _media(tmp_path, ["a.mp4"])
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,label\n1,a.mp4,Relief\n2,a.mp4,awe\n3,a.mp4,boredom\n4,a.mp4,awe\n")
    ds = load_dataset(m)
    assert ds.class_names == ("awe", "boredom", "Relief")
    assert ds.votes().argmax(1).tolist() == [2, 0, 1, 0]
    ds = load_dataset(m, classes=("relief", "awe", "boredom", "pride"))
    assert ds.class_names == ("relief", "awe", "boredom", "pride")
    assert ds.votes().shape == (4, 4) and ds.votes().argmax(1).tolist() == [0, 1, 2, 1]
    msg = _error(m, classes=("awe", "boredom"))
    assert "label 'Relief' is not one of the classes (awe, boredom)" in msg and "line 2" in msg


def test_vote_columns_give_any_class_set_in_their_order(tmp_path: Path):
    _media(tmp_path, ["a.mp4", "b.mp4"])
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,label,vote_calm,vote_angry,vote_sad,notes\n"
                 "a,a.mp4,calm,5,1,0,x\nb,b.mp4,sad,0,3,1,y\n")
    ds = read_manifest(m)
    assert ds.has_votes and ds.class_names == ("calm", "angry", "sad")
    np.testing.assert_array_equal(ds.votes(), [[5, 1, 0], [0, 3, 1]])
    assert "sad" in ds.problems["b"] and "angry" in ds.problems["b"]  # the label disagrees with the votes
    ds = read_manifest(m, classes=("sad", "calm", "angry"))
    np.testing.assert_array_equal(ds.votes(), [[0, 5, 1], [1, 0, 3]])


def test_dfew_vote_columns_and_fold_columns(tmp_path: Path):
    _media(tmp_path, ["a.mp4", "b.mp4", "c.mp4"])
    m = tmp_path / "m.csv"
    m.write_text(
        "clip_id,video,1happy,2sad,3neutral,4angry,5surprise,6disgust,7fear,fold_1,fold_2,Fold_3\n"
        "a,a.mp4,7,1,1,1,0,0,0,train,test,\n"
        "b,b.mp4,0,2,2,2,2,1,1,1,2,val\n"
        "c,c.mp4,0,0,0,0,10,0,0,test,train,unused\n"
    )
    ds = read_manifest(m)
    assert ds.has_votes and ds.class_names == DFEW_CLASSES and ds.votes()[1].tolist() == [0, 2, 2, 2, 2, 1, 1]
    assert ds.fold_names == ("1", "2", "3")
    assert ds.folds().tolist() == [[1, 2, 0], [1, 2, 3], [2, 1, 0]]


@pytest.mark.parametrize("splits, codes, fold", [
    (["train", "val", "test"], [FOLD_TRAIN, FOLD_VAL, FOLD_TEST], "test"),   # CAER: val selects
    (["train", "validation", "train"], [FOLD_TRAIN, FOLD_TEST, FOLD_TRAIN], "val"),  # AFEW: val is evaluated
    (["train", "test", ""], [FOLD_TRAIN, FOLD_TEST, FOLD_UNUSED], "test"),
])
def test_split_column(tmp_path: Path, splits, codes, fold):
    _media(tmp_path, ["a.mp4"])
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,label,split\n" + "".join(f"{i},a.mp4,x,{s}\n" for i, s in enumerate(splits)))
    ds = read_manifest(m)
    assert ds.fold_names == (fold,) and ds.folds()[:, 0].tolist() == codes and ds.protocol


def test_manifest_missing_media_is_a_clip_problem(tmp_path: Path):
    _media(tmp_path, ["a.mp4"])
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,faces,label\na,a.mp4,,1\nb,b.mp4,,2\nc,,,3\nd,a.mp4,nofaces,4\n")
    ds = read_manifest(m)
    assert ds.ids == ["a", "b", "c", "d"]
    assert set(ds.problems) == {"b", "c", "d"}
    assert "b.mp4 not found" in ds.problems["b"] and "no media" in ds.problems["c"]
    assert "nofaces not found" in ds.problems["d"]


def test_face_preprocessing_beside_the_manifest_is_read(tmp_path: Path):
    _media(tmp_path, ["a.mp4"])
    (tmp_path / "m.csv").write_text("clip_id,video,label\na,a.mp4,happy\n")
    (tmp_path / "faces.json").write_text('{"detector": "mtcnn", "size": 224, "clips": {"a": {"found": 3}}}')
    assert read_manifest(tmp_path / "m.csv").face_preprocessing == {"detector": "mtcnn", "size": 224}


@pytest.mark.parametrize("text, expect", [
    ("clip_id,video,label\na,a.mp4,1\na,a.mp4,2\n", "line 3: clip_id a already used on line 2"),
    ("clip_id,video,label\na,a.mp4,\n", "every label is empty"),
    ("clip_id,video,label,vote_x,vote_y\na,a.mp4,z,1,0\n", "line 2: label 'z' is not one of the classes (x, y)"),
    ("clip_id,video,happy,sad,neutral,angry,surprise,disgust,fear\na,a.mp4,0,0,0,0,0,0,0\n", "sum to 0"),
    ("clip_id,video,happy,sad,neutral,angry,surprise,disgust,fear\na,a.mp4,1,x,0,0,0,0,0\n", "for sad is 'x'"),
    ("clip_id,video,happy,sad,neutral\na,a.mp4,1,0,0\n", "vote columns for angry, surprise, disgust, fear"),
    ("clip_id,video\na,a.mp4\n", "no 'label' column and no vote columns"),
    ("clip_id,label\na,1\n", "no media column"),
    ("video,label\na.mp4,1\n", "no clip id column"),
    ("clip_id,video,label,fold_1\na,a.mp4,1,dev\n", "fold_1 is 'dev'"),
    ("clip_id,video,label,split\na,a.mp4,1,holdout\n", "split is 'holdout'"),
    ("clip_id,video,label,split,fold_1\na,a.mp4,1,train,train\n", "not both"),
    ("clip_id,video,label\n", "lists no clips"),
    ("", "is empty"),
])
def test_manifest_errors(tmp_path: Path, text: str, expect: str):
    _media(tmp_path, ["a.mp4"])
    m = tmp_path / "m.csv"
    m.write_text(text)
    msg = _error(m)
    assert expect in msg and "m.csv" in msg


def test_error_not_a_manifest(tmp_path: Path):
    (tmp_path / "x.txt").write_text("hello")
    assert "neither a folder nor a .csv" in _error(tmp_path / "x.txt")


def test_labels_and_vote_columns_are_classes_by_name(tmp_path: Path):
    """Issue 19: labels Happy, happy, HAPPY, Sad, "sad " are two classes, named by their first spelling."""
    _media(tmp_path, ["a.mp4"])
    m = tmp_path / "m.csv"
    m.write_text("clip_id,video,label\n1,a.mp4,Happy\n2,a.mp4,happy\n3,a.mp4,HAPPY\n4,a.mp4,Sad\n"
                 "5,a.mp4,sad \n")
    ds = load_dataset(m)
    assert ds.class_names == ("Happy", "Sad") and ds.labels().tolist() == [0, 0, 0, 1, 1]
    assert ds.warnings == []
    assert load_dataset(m, classes=(" sad", "HAPPY")).labels().tolist() == [1, 1, 1, 0, 0]
    m.write_text("clip_id,video,label\n1,a.mp4,Happy\n2,a.mp4,Happiness\n")
    ds = load_dataset(m)
    assert ds.class_names == ("Happiness", "Happy") and len(ds.warnings) == 1
    assert "'Happiness' and 'Happy' are two classes but look like one spelled twice" in ds.warnings[0]
    m.write_text("clip_id,video,vote_Happy,vote_sad,vote_happy \n1,a.mp4,1,2,3\n")
    msg = _error(m)
    assert "vote columns vote_Happy and vote_happy name one class" in msg
    m.write_text("clip_id,video,vote_Happy,vote_sad\n1,a.mp4,1,2\n")
    assert load_dataset(m, classes=("SAD", "happy")).votes().tolist() == [[2, 1]]
    with pytest.raises(FerError, match="--classes names happy twice"):
        from fer.extract.datasets import parse_classes

        parse_classes("Happy,sad, happy ")


def test_no_real_class_pair_looks_alike():
    """The similarity warning stays quiet on every real class set fer knows."""
    from fer.extract.datasets.common import close_names
    from fer.extract.datasets.ferv39k import CLASSES as FERV
    from fer.extract.datasets.mafw import CLASSES as MAFW

    afew = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
    for classes in (DFEW_CLASSES, MAFW, FERV, afew):
        assert close_names(classes) == [], classes
    got = close_names(("Angry", "Anger", "happy", "happiness"))
    assert got == [("Angry", "Anger"), ("happy", "happiness")]
