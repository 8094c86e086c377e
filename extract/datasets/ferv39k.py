"""FERV39k: one official train/test split over 22 scenes, 7 classes, face frames only (no audio).

Split files as released: ``4_setups/All_scenes/{train,test}_All.csv``, space-separated, no header, one clip
a line: ``Action/Happy/0267 Happy``. Face frames: ``2_ClipsforFaceCrop/<Scene>/<Class>/<id>/``. Clip ids
keep the scene and class path (``Action/Happy/0267``): ids repeat across scenes, the path does not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN
from fer.extract.datasets.common import class_index, no_media, one_hot, read_text_lines
from fer.extract.datasets.records import ClipRecord, Dataset

CLASSES = ("Happy", "Sad", "Neutral", "Angry", "Surprise", "Disgust", "Fear")
SPLIT_DIR = Path("4_setups") / "All_scenes"
SPLIT_FILES = {FOLD_TRAIN: "train_All.csv", FOLD_TEST: "test_All.csv"}
FACES_DIR = Path("2_ClipsforFaceCrop")
FOLDS = ("All_scenes",)
PROTOCOL = "one official split (All_scenes): train_All is trained on, test_All is evaluated"


def matches(root: Path) -> bool:
    return (root / SPLIT_DIR).is_dir()


def read_split_file(path: Path) -> dict[str, int]:
    """``Scene/Class/id Class`` lines -> {clip id: class index}, in file order."""
    out: dict[str, int] = {}
    for line, text in read_text_lines(path):
        fields = text.split()
        where = f"{path} line {line}"
        if len(fields) < 2:
            raise FerError(f"{where}: expected '<Scene>/<Class>/<id> <Class>', got {text[:80]!r}")
        cid = fields[0].strip().strip("/")
        if cid in out:
            raise FerError(f"{where}: clip {cid} is listed twice in this file; remove the duplicate")
        out[cid] = class_index(fields[1], CLASSES, where)
    return out


def read_ferv39k(root: Path) -> Dataset:
    """Read a FERV39k root: the official split, one-hot votes, the face frame folders that exist."""
    root = Path(root)
    parts = {}
    for code, name in SPLIT_FILES.items():
        p = root / SPLIT_DIR / name
        if not p.is_file():
            raise FerError(f"{root / SPLIT_DIR} lacks {name}; FERV39k ships train_All.csv and test_All.csv there")
        parts[code] = (p, read_split_file(p))
    both = sorted(set(parts[FOLD_TRAIN][1]) & set(parts[FOLD_TEST][1]))
    if both:
        raise FerError(f"clip {both[0]} is in both {SPLIT_FILES[FOLD_TRAIN]} and {SPLIT_FILES[FOLD_TEST]}; "
                       "the official split's train and test must be disjoint")
    records, problems = [], {}
    for code, (_, split) in parts.items():  # train first, then test, each in file order
        for cid, cls in split.items():
            faces = root / FACES_DIR / cid
            rec = ClipRecord(clip_id=cid, faces_all=faces if faces.is_dir() else None,
                             votes=one_hot(cls, len(CLASSES)), folds=np.array([code], np.int8), label=cls)
            if rec.faces_all is None:
                problems[cid] = no_media([f"{FACES_DIR.as_posix()}/{cid}/"])
            records.append(rec)
    if not records:
        raise FerError(f"{root / SPLIT_DIR}: the split files list no clips")
    return Dataset(root=root, kind="ferv39k", records=records, has_votes=False, problems=problems,
                   class_names=CLASSES, fold_names=FOLDS, protocol=PROTOCOL)
