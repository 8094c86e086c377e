"""DFEW: split files (``EmoLabel_DataSplit``), the annotators' votes (``Annotation``) and media under ``Clip/``.

Without an annotation file the records are the single-labeled clips of the split files, with one-hot
votes. With one, every annotated clip is a record (multi-labeled clips are in no fold) and the split
labels are checked against the votes' majority. A clip is scored by its split label: where the votes tie,
the split label decides (not the class order); where they disagree, it is a per-clip problem and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import DFEW_CLASSES, DFEW_FOLDS, FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED
from fer.extract.datasets.common import (
    blank,
    disagrees,
    find_id_column,
    id_sort_key,
    label_problem,
    no_media,
    norm_col,
    normalize_dfew_id,
    one_hot,
    parse_votes,
    read_csv_rows,
    scan_media,
)
from fer.extract.datasets.records import ClipRecord, Dataset

CLASS_NAMES = DFEW_CLASSES
NUM_CLASSES = len(DFEW_CLASSES)
NUM_FOLDS = len(DFEW_FOLDS)

# DFEW layout, relative to the root
SPLIT_DIR = "EmoLabel_DataSplit"
SPLIT_SUBDIRS = {FOLD_TRAIN: "train(single-labeled)", FOLD_TEST: "test(single-labeled)"}
FACES16_DIR = Path("Clip") / "clip_224x224_16f"
FACES_ALL_DIR = Path("Clip") / "clip_224x224"
VIDEO_DIR = Path("Clip") / "original"
ANNOTATION_DIR = "Annotation"
PROTOCOL = "5 folds (set_1..set_5) over the single-labeled clips; each fold's test set is evaluated"


def matches(root: Path) -> bool:
    """A DFEW root has its split folder or its annotation folder."""
    return (root / SPLIT_DIR).is_dir() or annotation_file(root) is not None


def vote_columns(header: Sequence[object]) -> dict[int, int]:
    """DFEW class index -> column index for columns named by class (``happy``, ``1happy``, ``Happy``...)."""
    norm = [norm_col(h) for h in header]
    return {c: norm.index(name) for c, name in enumerate(CLASS_NAMES) if name in norm}


# ---------------------------------------------------------------- DFEW
def _split_files(root: Path) -> dict[tuple[int, int], Path]:
    """(fold 1..5, FOLD_TRAIN|FOLD_TEST) -> split file; every one of the 10 must exist."""
    files = {}
    missing = []
    for k in range(1, NUM_FOLDS + 1):
        for code, sub in SPLIT_SUBDIRS.items():
            p = root / SPLIT_DIR / sub / f"set_{k}.csv"
            if p.is_file():
                files[(k, code)] = p
            else:
                missing.append(f"{sub}/set_{k}.csv")
    if missing:
        raise FerError(
            f"{root / SPLIT_DIR} lacks {', '.join(missing)}; DFEW ships train(single-labeled)/set_1..5.csv "
            "and test(single-labeled)/set_1..5.csv (copy the whole EmoLabel_DataSplit folder)"
        )
    return files


def read_split_file(path: Path) -> dict[str, int]:
    """One ``video_name,label`` file -> {clip id (5 digits): class index 0..6}, in file order."""
    rows = read_csv_rows(path)
    if not rows or blank(rows[0]):
        raise FerError(f"{path} is empty; expected a header 'video_name,label' and one row per clip")
    header = [h.lstrip("\ufeff").strip().lower() for h in rows[0]]
    id_col = find_id_column(header, path)
    if "label" not in header:
        raise FerError(f"{path}: no 'label' column; expected the header 'video_name,label'")
    lab_col = header.index("label")
    out: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if blank(row):
            continue
        where = f"{path} line {line}"
        if len(row) <= max(id_col, lab_col):
            raise FerError(f"{where}: expected 'video_name,label', got {','.join(row)!r}")
        cid = normalize_dfew_id(row[id_col])
        if not cid:
            raise FerError(f"{where}: empty video_name")
        raw = row[lab_col].strip()
        try:
            label = int(raw)
        except ValueError:
            label = -1
        if not 1 <= label <= NUM_CLASSES:
            raise FerError(f"{where}: label {raw!r} is outside 1..7 (1=happy .. 7=fear)")
        if cid in out:
            raise FerError(f"{where}: clip {cid} is listed twice in this file; remove the duplicate")
        out[cid] = label - 1
    return out


def _read_xlsx_rows(path: Path) -> list[list[object]]:
    try:
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            ws = wb.worksheets[0]
            return [list(r) for r in ws.iter_rows(values_only=True)]
        finally:
            wb.close()
    except FerError:
        raise
    except Exception as e:  # openpyxl raises many kinds (BadZipFile, KeyError, InvalidFileException...)
        raise FerError(f"cannot read {path} as an Excel workbook ({type(e).__name__}: {e}); "
                       "re-export it, or save it as annotation.csv") from e


def annotation_file(root: Path) -> Path | None:
    """The annotation file of a DFEW root: ``annotation.csv`` if present (faster), else ``.xlsx``."""
    for name in ("annotation.csv", "annotation.xlsx"):
        p = root / ANNOTATION_DIR / name
        if p.is_file():
            return p
    return None


def read_annotation(path: Path) -> dict[str, np.ndarray]:
    """DFEW's annotation (xlsx or csv) -> {clip id (5 digits): (7,) vote counts}."""
    rows = _read_xlsx_rows(path) if path.suffix.lower() == ".xlsx" else read_csv_rows(path)
    rows = [r for r in rows if not blank(r)]  # spreadsheets often end in empty rows
    if not rows:
        raise FerError(f"{path} is empty; expected a header (order, 1happy, ..., 7fear) and one row per clip")
    header = rows[0]
    id_col = find_id_column(header, path)
    cols = vote_columns(header)
    if len(cols) != NUM_CLASSES:
        missing = [n for c, n in enumerate(CLASS_NAMES) if c not in cols]
        raise FerError(f"{path}: no vote column for {', '.join(missing)}; expected columns like "
                       "order,1happy,2sad,3neutral,4angry,5surprise,6disgust,7fear")
    out: dict[str, np.ndarray] = {}
    for line, row in enumerate(rows[1:], start=2):
        where = f"{path} row {line}"
        raw_id = row[id_col] if id_col < len(row) else None
        cid = normalize_dfew_id(raw_id) if raw_id is not None else ""
        if not cid:
            raise FerError(f"{where}: empty clip id")
        if cid in out:
            raise FerError(f"{where}: clip {cid} is annotated twice; remove the duplicate row")
        out[cid] = parse_votes(row, cols, CLASS_NAMES, f"{where} (clip {cid})")
    return out


def read_dfew(root: Path) -> Dataset:
    """Read a DFEW-layout root (split files and/or annotation, plus whatever media exists).

    Without an annotation file the records are the single-labeled clips of the split files, with
    one-hot votes. With one, every annotated clip is a record (multi-labeled clips have all folds
    0) and the split labels are checked against the votes' majority.
    """
    root = Path(root)
    has_splits = (root / SPLIT_DIR).is_dir()
    ann_path = annotation_file(root)
    if not has_splits and ann_path is None:
        raise FerError(f"{root} has neither {SPLIT_DIR}/ nor {ANNOTATION_DIR}/annotation.xlsx|csv: not a DFEW root")

    problems: dict[str, str] = {}
    labels: dict[str, int] = {}  # clip -> class from the split files
    label_src: dict[str, Path] = {}
    folds: dict[str, np.ndarray] = {}
    if has_splits:
        files = _split_files(root)
        for k in range(1, NUM_FOLDS + 1):
            train = read_split_file(files[(k, FOLD_TRAIN)])
            test = read_split_file(files[(k, FOLD_TEST)])
            both = sorted(set(train) & set(test), key=id_sort_key)
            if both:
                raise FerError(
                    f"clip {both[0]} is in both {files[(k, FOLD_TRAIN)]} and {files[(k, FOLD_TEST)]}"
                    + (f" (and {len(both) - 1} more)" if len(both) > 1 else "")
                    + "; a fold's train and test sets must be disjoint"
                )
            for code, split in ((FOLD_TRAIN, train), (FOLD_TEST, test)):
                path = files[(k, code)]
                for cid, cls in split.items():
                    if cid in labels and labels[cid] != cls:
                        raise FerError(
                            f"clip {cid} is {CLASS_NAMES[labels[cid]]} in {label_src[cid]} but "
                            f"{CLASS_NAMES[cls]} in {path}; the split files disagree"
                        )
                    labels[cid] = cls
                    label_src.setdefault(cid, path)
                    folds.setdefault(cid, np.full(NUM_FOLDS, FOLD_UNUSED, np.int8))[k - 1] = code

    votes: dict[str, np.ndarray] = read_annotation(ann_path) if ann_path is not None else {}
    ids = set(labels) | set(votes)
    if not ids:
        raise FerError(f"{root}: the split files and annotation list no clips")

    faces16 = scan_media(root / FACES16_DIR, want_dirs=True)
    faces_all = scan_media(root / FACES_ALL_DIR, want_dirs=True)
    videos = scan_media(root / VIDEO_DIR, want_dirs=False)

    records = []
    for cid in sorted(ids, key=id_sort_key):
        if cid in votes:
            v = votes[cid]
            if cid in labels and disagrees(v, labels[cid]):
                problems[cid] = label_problem(v, labels[cid], f"{label_src[cid].parent.name}/{label_src[cid].name}",
                                              CLASS_NAMES)
        else:
            v = one_hot(labels[cid], NUM_CLASSES)
            if votes:
                problems[cid] = (f"in {label_src[cid].parent.name}/{label_src[cid].name} but not in {ann_path.name}; "
                                 "using the split label as votes")
        rec = ClipRecord(
            clip_id=cid,
            faces16=faces16.get(cid),
            faces_all=faces_all.get(cid),
            video=videos.get(cid),
            votes=v,
            folds=folds.get(cid, np.full(NUM_FOLDS, FOLD_UNUSED, np.int8)),
            label=labels.get(cid),  # the split file's label: it decides a tie in the votes
        )
        if rec.faces16 is None and rec.faces_all is None and rec.video is None:
            problems[cid] = no_media([f"{FACES16_DIR.as_posix()}/{cid}/", f"{FACES_ALL_DIR.as_posix()}/{cid}/",
                                      f"{VIDEO_DIR.as_posix()}/{cid}.mp4"])
        records.append(rec)
    return Dataset(root=root, kind="dfew", records=records, has_votes=bool(votes), problems=problems,
                   class_names=CLASS_NAMES, fold_names=DFEW_FOLDS, protocol=PROTOCOL)
