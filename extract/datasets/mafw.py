"""MAFW, the single-labeled protocol: 11 classes, 5 folds, clips with their audio, faces or frames.

Split files as released (the folder name has spaces and an ampersand)::

    Train & Test Set/single/no_caption/set_<k>/{train,test}.txt     03747.mp4 anger
    Train & Test Set/single/with_caption/set_<k>/{train,test}.txt   the same, tab-separated, caption columns after

Media: ``data/clips/<id>.mp4`` (video and audio), aligned faces in ``data/faces/<id>/`` or frames in
``data/frames/<id>/`` (either is read as the clip's face frames, faces first).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED
from fer.extract.datasets.common import (
    class_index,
    id_sort_key,
    no_media,
    normalize_dfew_id,
    one_hot,
    read_text_lines,
    scan_media,
)
from fer.extract.datasets.records import ClipRecord, Dataset

# MAFW's own class order (its label files and paper)
CLASSES = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
           "contempt", "anxiety", "helplessness", "disappointment")
SPLIT_ROOT = Path("Train & Test Set") / "single"
VARIANTS = ("no_caption", "with_caption")
FOLDS = tuple(f"set_{k}" for k in range(1, 6))
CLIPS_DIR = Path("data") / "clips"
FACE_DIRS = (Path("data") / "faces", Path("data") / "frames")
PROTOCOL = "5 folds (set_1..set_5) over the single-labeled clips; each fold's test set is evaluated"


def matches(root: Path) -> bool:
    return any((root / SPLIT_ROOT / v).is_dir() for v in VARIANTS)


def split_dir(root: Path) -> Path:
    """The split folder to read: no_caption when present, else with_caption (same clips and labels)."""
    for v in VARIANTS:
        d = root / SPLIT_ROOT / v
        if d.is_dir():
            return d
    raise FerError(f"{root} has no '{SPLIT_ROOT.as_posix()}/no_caption' (or with_caption) folder: not a MAFW root")


def read_split_file(path: Path, where_classes: tuple[str, ...] = CLASSES) -> dict[str, int]:
    """One MAFW split file -> {clip id: class index}, in file order.

    A line is ``<id>.mp4 <class>`` (space-separated), or tab-separated with caption columns after the
    class (``with_caption``); the class is the first field after the id that names a class.
    """
    out: dict[str, int] = {}
    low = [c.lower() for c in where_classes]
    for line, text in read_text_lines(path):
        fields = text.split("\t") if "\t" in text else text.split()
        where = f"{path} line {line}"
        if len(fields) < 2:
            raise FerError(f"{where}: expected '<id>.mp4 <class>', got {text[:80]!r}")
        cid = normalize_dfew_id(re.sub(r"\.(mp4|avi|mkv)$", "", fields[0].strip(), flags=re.IGNORECASE))
        label = next((f.strip() for f in fields[1:] if f.strip().lower() in low), fields[1].strip())
        cls = class_index(label, where_classes, where)
        if cid in out:
            raise FerError(f"{where}: clip {cid} is listed twice in this file; remove the duplicate")
        out[cid] = cls
    return out


def read_mafw(root: Path) -> Dataset:
    """Read a MAFW root: the 5 single-labeled folds, one-hot votes from the labels, whatever media exists."""
    root = Path(root)
    d = split_dir(root)
    labels: dict[str, int] = {}
    src: dict[str, Path] = {}
    folds: dict[str, np.ndarray] = {}
    for k, name in enumerate(FOLDS):
        parts = {}
        for code, fname in ((FOLD_TRAIN, "train.txt"), (FOLD_TEST, "test.txt")):
            p = d / name / fname
            if not p.is_file():
                raise FerError(f"{d} lacks {name}/{fname}; MAFW ships set_1..set_5 each with train.txt and test.txt "
                               "(copy the whole 'Train & Test Set' folder)")
            parts[code] = (p, read_split_file(p))
        both = sorted(set(parts[FOLD_TRAIN][1]) & set(parts[FOLD_TEST][1]), key=id_sort_key)
        if both:
            raise FerError(f"clip {both[0]} is in both {parts[FOLD_TRAIN][0]} and {parts[FOLD_TEST][0]}; "
                           "a fold's train and test sets must be disjoint")
        for code, (p, split) in parts.items():
            for cid, cls in split.items():
                if cid in labels and labels[cid] != cls:
                    raise FerError(f"clip {cid} is {CLASSES[labels[cid]]} in {src[cid]} but {CLASSES[cls]} in {p}; "
                                   "the split files disagree")
                labels[cid], src[cid] = cls, src.get(cid, p)
                folds.setdefault(cid, np.full(len(FOLDS), FOLD_UNUSED, np.int8))[k] = code
    if not labels:
        raise FerError(f"{d}: the split files list no clips")

    videos = scan_media(root / CLIPS_DIR, want_dirs=False)
    faces = [scan_media(root / f, want_dirs=True) for f in FACE_DIRS]
    records, problems = [], {}
    for cid in sorted(labels, key=id_sort_key):
        face = next((f[cid] for f in faces if cid in f), None)
        rec = ClipRecord(clip_id=cid, faces_all=face, video=videos.get(cid),
                         votes=one_hot(labels[cid], len(CLASSES)), folds=folds[cid],
                         label=labels[cid])
        if rec.faces_all is None and rec.video is None:
            problems[cid] = no_media([f"{CLIPS_DIR.as_posix()}/{cid}.mp4",
                                      *(f"{f.as_posix()}/{cid}/" for f in FACE_DIRS)])
        records.append(rec)
    return Dataset(root=root, kind="mafw", records=records, has_votes=False, problems=problems,
                   class_names=CLASSES, fold_names=FOLDS, protocol=PROTOCOL)
