"""The dataset readers: the real DFEW 5-fold protocol, annotation files, manifests, and every
error a user can act on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from fer.cache.errors import FerError
from fer.cache.schema import CLASS_NAMES, FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED, NUM_FOLDS
from fer.extract.datasets import load_dataset, read_dfew, read_split_file
from fer.tests.shared_data import shared

# the real DFEW split files: $FER_SHARED_DATA or ../shared/data (tests/shared_data.py); the counts below
# are from ../shared/data/README.md
REAL_FOLDS = {1: (9356, 2341), 2: (9356, 2341), 3: (9357, 2340), 4: (9358, 2339), 5: (9361, 2336)}
REAL_TEST_TOTALS = {"happy": 2445, "sad": 1894, "neutral": 2669, "angry": 2173, "surprise": 1469,
                    "disgust": 145, "fear": 902}
SUB = {FOLD_TRAIN: "train(single-labeled)", FOLD_TEST: "test(single-labeled)"}
DFEW_COLS = ["order", "1happy", "2sad", "3neutral", "4angry", "5surprise", "6disgust", "7fear"]


# ---------------------------------------------------------------- helpers
def write_splits(root: Path, folds: dict[int, dict[int, list[tuple[str, int]]]]) -> None:
    """folds[k][FOLD_TRAIN|FOLD_TEST] = [(id as written, label 1..7)]; missing folds get empty files."""
    for k in range(1, NUM_FOLDS + 1):
        for code, sub in SUB.items():
            p = root / "EmoLabel_DataSplit" / sub / f"set_{k}.csv"
            p.parent.mkdir(parents=True, exist_ok=True)
            rows = folds.get(k, {}).get(code, [])
            p.write_text("video_name,label\n" + "".join(f"{i},{lab}\n" for i, lab in rows))


def make_faces(root: Path, ids: list[str], kind: str = "clip_224x224_16f") -> None:
    for cid in ids:
        d = root / "Clip" / kind / cid
        d.mkdir(parents=True, exist_ok=True)
        (d / "00001.jpg").touch()


def small_tree(root: Path) -> Path:
    """5 clips: 1-4 single-labeled (each fold tests one of them or none), 5 unused."""
    labels = {"1": 1, "2": 2, "3": 3, "4": 7}
    folds = {}
    for k in range(1, NUM_FOLDS + 1):
        test = [i for n, i in enumerate(labels) if n == k - 1]
        folds[k] = {FOLD_TRAIN: [(i, labels[i]) for i in labels if i not in test],
                    FOLD_TEST: [(i, labels[i]) for i in test]}
    write_splits(root, folds)
    make_faces(root, ["00001", "00002", "00003", "00004", "00005"])
    return root


def write_annotation_csv(path: Path, rows: list[list[object]], header: list[str] = DFEW_COLS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(header) + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows))
    return path


def write_annotation_xlsx(path: Path, rows: list[list[object]], header: list[str] = DFEW_COLS) -> Path:
    import openpyxl

    path.parent.mkdir(parents=True, exist_ok=True)
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(header)
    for r in rows:
        ws.append(r)
    wb.save(path)
    return path


ANNOTATION = [
    [1, 8, 1, 1, 0, 0, 0, 0],   # happy, single
    [2, 0, 9, 1, 0, 0, 0, 0],   # sad
    [3, 0, 0, 10, 0, 0, 0, 0],  # neutral
    [4, 0, 0, 1, 0, 0, 2, 7],   # fear
    [5, 4, 0, 0, 4, 2, 0, 0],   # multi-labeled, not in any split
]


# ---------------------------------------------------------------- the real DFEW protocol
@pytest.fixture(scope="module")
def real_root(tmp_path_factory) -> Path:
    """The real split files plus an (empty-frame) 16f face folder for every one of their clips."""
    root = tmp_path_factory.mktemp("dfew") / "root"
    shutil.copytree(shared("dfew", "EmoLabel_DataSplit"), root / "EmoLabel_DataSplit")
    ids: set[str] = set()
    for f in (root / "EmoLabel_DataSplit").rglob("set_*.csv"):
        ids |= set(read_split_file(f))
    faces = root / "Clip" / "clip_224x224_16f"
    for cid in ids:
        (faces / cid).mkdir(parents=True)
    return root


def test_real_protocol_fold_sizes_and_class_totals(real_root: Path):
    ds = load_dataset(real_root)
    assert ds.kind == "dfew" and not ds.has_votes and ds.problems == {}
    assert len(ds.records) == 11697
    ids = ds.ids
    assert ids == sorted(ids) and all(len(i) == 5 and i.isdigit() for i in ids)
    assert all(r.faces16 == real_root / "Clip" / "clip_224x224_16f" / r.clip_id for r in ds.records)
    folds, votes = ds.folds(), ds.votes()
    for k, (n_train, n_test) in REAL_FOLDS.items():
        col = folds[:, k - 1]
        assert ((col == FOLD_TRAIN).sum(), (col == FOLD_TEST).sum()) == (n_train, n_test)
        assert not (col == FOLD_UNUSED).any()  # every single-labeled clip is in train or test
    # the five test sets partition all clips (and a test clip is never in its fold's train set)
    assert ((folds == FOLD_TEST).sum(1) == 1).all()
    # without annotation the votes are one-hot of the split label
    assert (votes.sum(1) == 1).all() and set(np.unique(votes)) == {0.0, 1.0}
    test_totals = {name: 0 for name in CLASS_NAMES}
    for k in range(NUM_FOLDS):
        cls = votes[folds[:, k] == FOLD_TEST].argmax(1)
        for c, name in enumerate(CLASS_NAMES):
            test_totals[name] += int((cls == c).sum())
    assert test_totals == REAL_TEST_TOTALS


def test_real_split_ids_are_written_without_zeros():
    # the shared copy writes ids as integers: the reader pads them
    splits = shared("dfew", "EmoLabel_DataSplit")
    first = next(iter(read_split_file(splits / "test(single-labeled)" / "set_1.csv")))
    assert first == "00001"


# ---------------------------------------------------------------- DFEW details
def test_ids_with_and_without_zero_padding_are_one_clip(tmp_path: Path):
    root = tmp_path / "r"
    # fold 1 writes "1", fold 2 writes "00001"; the face folder of clip 2 is written unpadded
    folds = {1: {FOLD_TRAIN: [("1", 1)], FOLD_TEST: [("2", 2)]},
             2: {FOLD_TRAIN: [("00002", 2)], FOLD_TEST: [("00001", 1)]}}
    write_splits(root, folds)
    make_faces(root, ["00001", "2"])
    ds = read_dfew(root)
    assert ds.ids == ["00001", "00002"]
    assert ds.folds()[:, :2].tolist() == [[FOLD_TRAIN, FOLD_TEST], [FOLD_TEST, FOLD_TRAIN]]
    assert ds.records[1].faces16 == root / "Clip" / "clip_224x224_16f" / "2"
    assert ds.problems == {}


def test_media_paths_of_every_kind(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    make_faces(root, ["00001"], kind="clip_224x224")
    (root / "Clip" / "original").mkdir(parents=True)
    (root / "Clip" / "original" / "00002.mp4").touch()
    ds = read_dfew(root)
    r1, r2 = ds.records[:2]
    assert r1.faces_all == root / "Clip" / "clip_224x224" / "00001" and r1.video is None
    assert r2.video == root / "Clip" / "original" / "00002.mp4" and r2.faces_all is None


def test_without_annotation_votes_are_one_hot_of_split_label(tmp_path: Path):
    ds = read_dfew(small_tree(tmp_path / "r"))
    assert ds.ids == ["00001", "00002", "00003", "00004"]  # clip 5 has media but no label: ignored
    assert ds.votes().argmax(1).tolist() == [0, 1, 2, 6]
    assert ds.folds()[0].tolist() == [FOLD_TEST, FOLD_TRAIN, FOLD_TRAIN, FOLD_TRAIN, FOLD_TRAIN]
    assert ds.folds()[3].tolist() == [FOLD_TRAIN, FOLD_TRAIN, FOLD_TRAIN, FOLD_TEST, FOLD_TRAIN]


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_annotation_votes(tmp_path: Path, fmt: str):
    root = small_tree(tmp_path / "r")
    writer = write_annotation_csv if fmt == "csv" else write_annotation_xlsx
    writer(root / "Annotation" / f"annotation.{fmt}", ANNOTATION)
    ds = read_dfew(root)
    assert ds.has_votes and ds.ids == ["00001", "00002", "00003", "00004", "00005"]
    np.testing.assert_array_equal(ds.votes(), np.array([r[1:] for r in ANNOTATION], np.float32))
    # the multi-labeled clip is a record in no fold
    assert ds.records[4].folds.tolist() == [FOLD_UNUSED] * NUM_FOLDS
    assert ds.problems == {}


def test_annotation_without_splits_and_column_variants(tmp_path: Path):
    root = tmp_path / "r"
    make_faces(root, ["00001", "00002", "00003", "00004", "00005"])
    header = ["Video_Name", "Happy", "sad", "NEUTRAL", "angry", "surprise", "disgust", "fear", "comment"]
    write_annotation_csv(root / "Annotation" / "annotation.csv",
                         [["0000" + str(r[0])] + r[1:] + ["x"] for r in ANNOTATION], header)
    ds = read_dfew(root)
    assert ds.has_votes and len(ds.records) == 5
    assert (ds.folds() == FOLD_UNUSED).all()


def test_annotation_csv_is_preferred_over_xlsx(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    write_annotation_csv(root / "Annotation" / "annotation.csv", ANNOTATION)
    write_annotation_xlsx(root / "Annotation" / "annotation.xlsx", ANNOTATION[:4])
    assert len(read_dfew(root).records) == 5


def test_split_label_disagreeing_with_votes_is_a_clip_problem(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    rows = [list(r) for r in ANNOTATION]
    rows[1] = [2, 9, 1, 0, 0, 0, 0, 0]  # split files say sad; the votes say happy
    write_annotation_csv(root / "Annotation" / "annotation.csv", rows)
    ds = read_dfew(root)
    assert set(ds.problems) == {"00002"} and "sad" in ds.problems["00002"] and "happy" in ds.problems["00002"]


def test_split_clip_missing_from_annotation_is_a_clip_problem(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    write_annotation_csv(root / "Annotation" / "annotation.csv", [r for r in ANNOTATION if r[0] != 3])
    ds = read_dfew(root)
    assert "00003" in ds.ids and "not in annotation.csv" in ds.problems["00003"]
    assert ds.records[2].votes.argmax() == 2  # falls back to the split label


def test_split_clip_without_media_is_listed_not_fatal(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    shutil.rmtree(root / "Clip" / "clip_224x224_16f" / "00003")
    ds = read_dfew(root)
    assert "00003" in ds.ids
    assert list(ds.problems) == ["00003"] and ds.problems["00003"].startswith("no media")


# ---------------------------------------------------------------- DFEW errors
def _error(root: Path) -> str:
    with pytest.raises(FerError) as e:
        load_dataset(root)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_error_root_without_splits_or_annotation(tmp_path: Path):
    make_faces(tmp_path / "r", ["00001"])
    msg = _error(tmp_path / "r")
    assert "EmoLabel_DataSplit" in msg and "annotation" in msg


def test_error_missing_root(tmp_path: Path):
    assert "does not exist" in _error(tmp_path / "nope")


def test_error_missing_split_file(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    (root / "EmoLabel_DataSplit" / SUB[FOLD_TEST] / "set_3.csv").unlink()
    assert "test(single-labeled)/set_3.csv" in _error(root)


def test_error_duplicate_id_in_split_file(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    p = root / "EmoLabel_DataSplit" / SUB[FOLD_TRAIN] / "set_2.csv"
    p.write_text(p.read_text() + "00003,3\n")  # "3" is already there, written unpadded
    msg = _error(root)
    assert "set_2.csv" in msg and "00003" in msg and "twice" in msg


@pytest.mark.parametrize("label", ["0", "8", "happy", ""])
def test_error_label_outside_1_to_7(tmp_path: Path, label: str):
    root = small_tree(tmp_path / "r")
    p = root / "EmoLabel_DataSplit" / SUB[FOLD_TEST] / "set_5.csv"
    p.write_text(f"video_name,label\n5,{label}\n")
    msg = _error(root)
    assert "set_5.csv line 2" in msg and "outside 1..7" in msg


def test_error_clip_in_train_and_test_of_one_fold(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    p = root / "EmoLabel_DataSplit" / SUB[FOLD_TEST] / "set_2.csv"
    p.write_text(p.read_text() + "1,1\n")
    msg = _error(root)
    assert "00001" in msg and "set_2.csv" in msg and "both" in msg


def test_error_split_files_disagree_on_a_label(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    p = root / "EmoLabel_DataSplit" / SUB[FOLD_TRAIN] / "set_1.csv"
    p.write_text(p.read_text().replace("2,2", "2,5"))
    assert "00002" in _error(root)


def test_error_duplicate_id_in_annotation(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    write_annotation_csv(root / "Annotation" / "annotation.csv", ANNOTATION + [[1, 10, 0, 0, 0, 0, 0, 0]])
    msg = _error(root)
    assert "annotation.csv row 7" in msg and "00001" in msg and "twice" in msg


@pytest.mark.parametrize("fmt", ["csv", "xlsx"])
def test_error_vote_row_without_votes(tmp_path: Path, fmt: str):
    root = small_tree(tmp_path / "r")
    writer = write_annotation_csv if fmt == "csv" else write_annotation_xlsx
    writer(root / "Annotation" / f"annotation.{fmt}", ANNOTATION[:3] + [[4, 0, 0, 0, 0, 0, 0, 0]])
    msg = _error(root)
    assert f"annotation.{fmt} row 5" in msg and "00004" in msg and "sum to 0" in msg


@pytest.mark.parametrize("bad", ["-1", "many"])
def test_error_vote_not_a_count(tmp_path: Path, bad: str):
    root = small_tree(tmp_path / "r")
    write_annotation_csv(root / "Annotation" / "annotation.csv", [[1, bad, 0, 0, 0, 0, 0, 9]])
    msg = _error(root)
    assert "row 2" in msg and "happy" in msg


def test_error_unparseable_xlsx(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    (root / "Annotation").mkdir()
    (root / "Annotation" / "annotation.xlsx").write_bytes(b"this is not a workbook")
    msg = _error(root)
    assert "annotation.xlsx" in msg and "cannot read" in msg


def test_error_annotation_without_vote_columns(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    write_annotation_csv(root / "Annotation" / "annotation.csv", [[1, 2, 3]], ["order", "happy", "sad"])
    msg = _error(root)
    assert "neutral" in msg and "fear" in msg


def test_error_annotation_without_id_column(tmp_path: Path):
    root = small_tree(tmp_path / "r")
    write_annotation_csv(root / "Annotation" / "annotation.csv", [r[1:] for r in ANNOTATION], DFEW_COLS[1:])
    assert "no clip id column" in _error(root)


def test_a_vote_tie_takes_the_split_label_and_conflicts_are_counted(tmp_path: Path):
    """Issue 19: votes sad=5, happy=5 with the split file saying sad score the clip as sad, not happy."""
    from fer.extract.datasets.common import vote_conflicts

    root = small_tree(tmp_path / "root")
    write_annotation_csv(root / "Annotation" / "annotation.csv", [
        [1, 8, 1, 1, 0, 0, 0, 0],   # happy (split: happy)
        [2, 5, 5, 0, 0, 0, 0, 0],   # a tie of happy and sad (split: sad)
        [3, 0, 0, 4, 6, 0, 0, 0],   # angry by the votes, neutral by the split file: a real disagreement
        [4, 0, 0, 1, 0, 0, 2, 7],   # fear
        [5, 4, 0, 0, 4, 2, 0, 0],   # a tie with no split label: the class order decides (no official label)
    ])
    ds = read_dfew(root)
    assert [r.label for r in ds.records] == [0, 1, 2, 6, None]
    np.testing.assert_array_equal(ds.votes()[1], [5, 5, 0, 0, 0, 0, 0])  # the votes stay as annotated
    assert ds.votes().argmax(1).tolist()[:3] == [0, 0, 3]  # what the clips were scored as before
    assert ds.labels().tolist() == [0, 1, 2, 6, 0]
    assert ds.official().tolist() == [0, 1, 2, 6, -1]
    assert vote_conflicts(ds.votes(), ds.official()) == {"disagree": 1, "tie": 1}
    assert "00002" not in ds.problems and "neutral but the votes' majority is angry" in ds.problems["00003"]
