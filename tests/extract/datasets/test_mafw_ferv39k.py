"""MAFW and FERV39k readers on their real split files (../shared/data) with generated media trees."""

import shutil
from pathlib import Path

import pytest

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN
from fer.extract.datasets import detect_layout, ferv39k, load_dataset, mafw
from fer.tests.shared_data import shared

# ../shared/data/README.md
MAFW_FOLDS = {1: (7333, 1839), 2: (7335, 1837), 3: (7339, 1833), 4: (7340, 1832), 5: (7341, 1831)}
MAFW_TEST_TOTALS = {"anger": 1390, "disgust": 639, "fear": 625, "happiness": 1242, "neutral": 1138, "sadness": 1470,
                    "surprise": 1072, "contempt": 236, "anxiety": 916, "helplessness": 262, "disappointment": 182}
FERV_TRAIN = {"Happy": 5854, "Sad": 5523, "Neutral": 7790, "Angry": 5906, "Surprise": 2502, "Disgust": 1833,
              "Fear": 1680}
FERV_TEST = {"Happy": 1473, "Sad": 1393, "Neutral": 1958, "Angry": 1487, "Surprise": 638, "Disgust": 467, "Fear": 431}


def _mafw_root(tmp_path: Path, variant: str = "no_caption") -> Path:
    root = tmp_path / "MAFW"
    dst = root / "Train & Test Set" / "single" / variant
    shutil.copytree(shared("mafw", "Train & Test Set", "single", "no_caption"), dst)
    return root


def test_mafw_real_folds_and_class_totals(tmp_path: Path):
    root = _mafw_root(tmp_path)
    ids = sorted({line.split()[0][:-4] for f in root.rglob("*.txt") for line in f.read_text().splitlines() if line})
    # media as released: clips for all, faces for half, frames for the rest but one
    (root / "data" / "clips").mkdir(parents=True)
    for i, cid in enumerate(ids):
        (root / "data" / "clips" / f"{cid}.mp4").touch()
        (root / "data" / ("faces" if i % 2 else "frames") / cid).mkdir(parents=True)
    (root / "data" / "clips" / f"{ids[0]}.mp4").unlink()
    shutil.rmtree(root / "data" / "frames" / ids[0])

    assert detect_layout(root) == "mafw"
    ds = load_dataset(root)
    assert ds.kind == "mafw" and len(ds.records) == 9172 and not ds.has_votes
    assert ds.class_names == mafw.CLASSES and len(ds.class_names) == 11
    folds, top = ds.folds(), ds.votes().argmax(1)
    for k, (n_train, n_test) in MAFW_FOLDS.items():
        assert ((folds[:, k - 1] == FOLD_TRAIN).sum(), (folds[:, k - 1] == FOLD_TEST).sum()) == (n_train, n_test)
    assert ((folds == FOLD_TEST).sum(1) == 1).all()  # the five test sets partition the clips
    totals = {c: int((top == i).sum()) for i, c in enumerate(ds.class_names)}
    assert totals == MAFW_TEST_TOTALS
    assert list(ds.problems) == [ids[0]] and ds.problems[ids[0]].startswith("no media")
    r1, r2 = ds.records[1], ds.records[2]
    assert (r1.faces_all == root / "data" / "faces" / r1.clip_id
            and r1.video == root / "data" / "clips" / f"{r1.clip_id}.mp4")
    assert r2.faces_all == root / "data" / "frames" / r2.clip_id


def test_mafw_with_caption_lines(tmp_path: Path):
    root = tmp_path / "MAFW"
    for k in range(1, 6):
        d = root / "Train & Test Set" / "single" / "with_caption" / f"set_{k}"
        d.mkdir(parents=True)
        (d / "train.txt").write_text("00001.mp4\tanger\tA man shouts.\t一个男人在喊\n"
                                     "00002.mp4\tHappiness\tShe smiles.\t\n"
                                     if k != 1 else "00001.mp4\tanger\tA man shouts.\t\n")
        (d / "test.txt").write_text("00002.mp4\thappiness\tShe smiles.\t\n" if k == 1 else "")
    ds = load_dataset(root)
    assert ds.ids == ["00001", "00002"] and ds.votes().argmax(1).tolist() == [0, 3]
    assert ds.folds()[:, 0].tolist() == [FOLD_TRAIN, FOLD_TEST]


def test_mafw_label_outside_the_classes(tmp_path: Path):
    root = _mafw_root(tmp_path)
    p = root / "Train & Test Set" / "single" / "no_caption" / "set_3" / "test.txt"
    p.write_text(p.read_text() + "99999.mp4 joy\n")
    with pytest.raises(FerError, match=r"set_3/test.txt line \d+: label 'joy' is not one of the classes "
                                       r"\(anger, disgust"):
        load_dataset(root)


def test_ferv39k_real_split(tmp_path: Path):
    root = tmp_path / "FERV39k"
    shutil.copytree(shared("ferv39k", "4_setups"), root / "4_setups")
    lines = [line.split()[0] for f in (root / "4_setups").rglob("*.csv") for line in f.read_text().splitlines() if line]
    for cid in lines[1:]:
        (root / "2_ClipsforFaceCrop" / cid).mkdir(parents=True)
    assert detect_layout(root) == "ferv39k"
    ds = load_dataset(root)
    assert ds.kind == "ferv39k" and len(ds.records) == 38935 and ds.fold_names == ("All_scenes",)
    assert ds.class_names == ferv39k.CLASSES
    folds, top = ds.folds()[:, 0], ds.votes().argmax(1)
    assert ((folds == FOLD_TRAIN).sum(), (folds == FOLD_TEST).sum()) == (31088, 7847)
    assert {c: int(((top == i) & (folds == FOLD_TRAIN)).sum()) for i, c in enumerate(ds.class_names)} == FERV_TRAIN
    assert {c: int(((top == i) & (folds == FOLD_TEST)).sum()) for i, c in enumerate(ds.class_names)} == FERV_TEST
    assert len({cid.split("/")[0] for cid in ds.ids}) == 22  # scenes
    assert len(set(ds.ids)) == len(ds.ids)  # the scene/class path keeps ids unique
    assert list(ds.problems) == [lines[0]]
    assert ds.records[1].faces_all == root / "2_ClipsforFaceCrop" / ds.ids[1] and ds.records[1].video is None
