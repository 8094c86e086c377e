"""Dataset readers: a DFEW root folder or a manifest CSV becomes one ``Dataset`` of clip records.

Rules both readers follow:

- A problem with the whole dataset (unparseable file, duplicated id, a label outside 1..7, a
  vote row that does not sum to a positive count, a clip in both train and test of one fold,
  no labels at all) raises ``FerError`` with a one-line message naming the file and line.
  A vote row summing to zero is treated as a broken file, not a broken clip: votes are counts
  of annotators, so a zero row means the export went wrong and the other rows are suspect too.
- A problem with one clip (no media, a media path that does not exist, a split label that
  disagrees with the votes) is recorded in ``Dataset.problems``; the clip stays in the records
  (extraction reports it as a failure later).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import CLASS_NAMES, FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED, NUM_CLASSES, NUM_FOLDS
from fer.extract.datasets.records import ClipRecord, Dataset

# DFEW layout, relative to the root
SPLIT_DIR = "EmoLabel_DataSplit"
SPLIT_SUBDIRS = {FOLD_TRAIN: "train(single-labeled)", FOLD_TEST: "test(single-labeled)"}
FACES16_DIR = Path("Clip") / "clip_224x224_16f"
FACES_ALL_DIR = Path("Clip") / "clip_224x224"
VIDEO_DIR = Path("Clip") / "original"
ANNOTATION_DIR = "Annotation"
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm")

# Column names accepted for the clip id (compared case-insensitively).
ID_COLUMNS = ("clip_id", "video_name", "order", "id", "clip", "name")

_LAYOUT_HINT = (
    f"expected a DFEW root with {SPLIT_DIR}/train(single-labeled)/set_<k>.csv and "
    f"test(single-labeled)/set_<k>.csv and/or {ANNOTATION_DIR}/annotation.xlsx|csv, "
    "plus Clip/clip_224x224_16f/<id>/, or a manifest .csv file"
)


# ---------------------------------------------------------------- entry point
def load_dataset(path: Path) -> Dataset:
    """Read a DFEW root folder or a manifest CSV file."""
    path = Path(path)
    if not path.exists():
        raise FerError(f"{path} does not exist; {_LAYOUT_HINT}")
    if path.is_dir():
        return read_dfew(path)
    if path.suffix.lower() == ".csv":
        return read_manifest(path)
    raise FerError(f"{path} is neither a folder nor a .csv manifest; {_LAYOUT_HINT}")


# ---------------------------------------------------------------- small helpers
def normalize_dfew_id(raw: object) -> str:
    """DFEW ids may be written ``1``, ``00001`` or (from a spreadsheet) ``1.0``; folders use ``00001``."""
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    s = str(raw).strip()
    if re.fullmatch(r"\d+(\.0+)?", s):
        return str(int(s.split(".")[0])).zfill(5)
    return s


def id_sort_key(clip_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order (so 100000 follows 99999), others after them by name."""
    return (0, int(clip_id)) if clip_id.isdigit() else (1, clip_id)


def _norm_col(name: object) -> str:
    """Column name for matching: lower case, BOM, spaces, digits and punctuation removed."""
    return re.sub(r"[^a-z]", "", str(name or "").lstrip("\ufeff").lower())


def _find_id_column(header: Sequence[object], where: Path) -> int:
    plain = [str(h or "").lstrip("\ufeff").strip().lower() for h in header]
    for name in ID_COLUMNS:
        if name in plain:
            return plain.index(name)
    raise FerError(f"{where}: no clip id column (one of {', '.join(ID_COLUMNS)}); found columns {plain}")


def _vote_columns(header: Sequence[object]) -> dict[int, int]:
    """Class index -> column index for columns named by class (``happy``, ``1happy``, ``Happy``...)."""
    norm = [_norm_col(h) for h in header]
    return {c: norm.index(name) for c, name in enumerate(CLASS_NAMES) if name in norm}


def _read_csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [row for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FerError(f"cannot read {path}: {e}; is it a UTF-8 CSV file?") from e


def _blank(row: Sequence[object]) -> bool:
    return all(v is None or str(v).strip() == "" for v in row)


def _parse_votes(row: Sequence[object], cols: dict[int, int], where: str) -> np.ndarray:
    votes = np.zeros(NUM_CLASSES, np.float32)
    for c, j in cols.items():
        cell = row[j] if j < len(row) else None
        try:
            v = float(cell if cell is not None and str(cell).strip() != "" else 0)
        except ValueError:
            raise FerError(f"{where}: vote count for {CLASS_NAMES[c]} is {cell!r}, not a number") from None
        if not np.isfinite(v) or v < 0:
            raise FerError(f"{where}: vote count for {CLASS_NAMES[c]} is {cell!r}; counts must be >= 0")
        votes[c] = v
    if votes.sum() <= 0:
        raise FerError(
            f"{where}: the vote counts sum to {votes.sum():g}; every clip needs at least one vote "
            "(fix or delete the row; a zero row usually means a broken export)"
        )
    return votes


def _one_hot(cls: int) -> np.ndarray:
    v = np.zeros(NUM_CLASSES, np.float32)
    v[cls] = 1.0
    return v


def _disagrees(votes: np.ndarray, cls: int) -> bool:
    return bool(votes[cls] < votes.max())


def _label_problem(votes: np.ndarray, cls: int, source: str) -> str:
    return (
        f"{source} says {CLASS_NAMES[cls]} but the votes' majority is "
        f"{CLASS_NAMES[int(votes.argmax())]} ({', '.join(f'{n}={v:g}' for n, v in zip(CLASS_NAMES, votes) if v)})"
    )


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
    rows = _read_csv_rows(path)
    if not rows or _blank(rows[0]):
        raise FerError(f"{path} is empty; expected a header 'video_name,label' and one row per clip")
    header = [h.lstrip("\ufeff").strip().lower() for h in rows[0]]
    id_col = _find_id_column(header, path)
    if "label" not in header:
        raise FerError(f"{path}: no 'label' column; expected the header 'video_name,label'")
    lab_col = header.index("label")
    out: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if _blank(row):
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
    rows = _read_xlsx_rows(path) if path.suffix.lower() == ".xlsx" else _read_csv_rows(path)
    rows = [r for r in rows if not _blank(r)]  # spreadsheets often end in empty rows
    if not rows:
        raise FerError(f"{path} is empty; expected a header (order, 1happy, ..., 7fear) and one row per clip")
    header = rows[0]
    id_col = _find_id_column(header, path)
    cols = _vote_columns(header)
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
        out[cid] = _parse_votes(row, cols, f"{where} (clip {cid})")
    return out


def _scan_media(folder: Path, want_dirs: bool) -> dict[str, Path]:
    """Normalised clip id -> entry of one media folder, from a single directory listing."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        if want_dirs:
            if entry.is_dir():
                out[normalize_dfew_id(entry.name)] = entry
        elif entry.suffix.lower() in VIDEO_EXTS and entry.is_file():
            cid = normalize_dfew_id(entry.stem)
            # prefer .mp4 (DFEW's format) when a clip exists in several containers
            if cid not in out or entry.suffix.lower() == ".mp4":
                out[cid] = entry
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
        raise FerError(f"{root} has neither {SPLIT_DIR}/ nor {ANNOTATION_DIR}/annotation.xlsx|csv; {_LAYOUT_HINT}")

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

    faces16 = _scan_media(root / FACES16_DIR, want_dirs=True)
    faces_all = _scan_media(root / FACES_ALL_DIR, want_dirs=True)
    videos = _scan_media(root / VIDEO_DIR, want_dirs=False)

    records = []
    for cid in sorted(ids, key=id_sort_key):
        if cid in votes:
            v = votes[cid]
            if cid in labels and _disagrees(v, labels[cid]):
                problems[cid] = _label_problem(v, labels[cid], f"{label_src[cid].parent.name}/{label_src[cid].name}")
        else:
            v = _one_hot(labels[cid])
            if votes:
                problems[cid] = f"in {label_src[cid].parent.name}/{label_src[cid].name} but not in {ann_path.name}; using the split label as votes"
        rec = ClipRecord(
            clip_id=cid,
            faces16=faces16.get(cid),
            faces_all=faces_all.get(cid),
            video=videos.get(cid),
            votes=v,
            folds=folds.get(cid, np.full(NUM_FOLDS, FOLD_UNUSED, np.int8)),
        )
        if rec.faces16 is None and rec.faces_all is None and rec.video is None:
            problems[cid] = (
                f"no media: none of {FACES16_DIR.as_posix()}/{cid}/, {FACES_ALL_DIR.as_posix()}/{cid}/, "
                f"{VIDEO_DIR.as_posix()}/{cid}.mp4"
            )
        records.append(rec)
    return Dataset(root=root, kind="dfew", records=records, has_votes=bool(votes), problems=problems)


# ---------------------------------------------------------------- manifest
_FOLD_VALUES = {
    "": FOLD_UNUSED, "0": FOLD_UNUSED, "unused": FOLD_UNUSED, "none": FOLD_UNUSED, "-": FOLD_UNUSED,
    "1": FOLD_TRAIN, "train": FOLD_TRAIN,
    "2": FOLD_TEST, "test": FOLD_TEST,
}


def parse_label(raw: str) -> int | None:
    """A manifest label -> class index 0..6: a class name (any case) or an integer 1..7 (DFEW's coding)."""
    s = raw.strip().lower()
    if s in CLASS_NAMES:
        return CLASS_NAMES.index(s)
    try:
        n = float(s)
    except ValueError:
        return None
    if n.is_integer() and 1 <= n <= NUM_CLASSES:
        return int(n) - 1
    return None


def _fold_columns(header: Sequence[str]) -> dict[int, int]:
    """Fold number 1..5 -> column index, for columns named ``fold_1``, ``fold1``, ``Fold 1``..."""
    out = {}
    for j, h in enumerate(header):
        m = re.fullmatch(r"fold[\s_-]?([1-9])", h.strip().lower())
        if m and 1 <= int(m.group(1)) <= NUM_FOLDS:
            out[int(m.group(1))] = j
    return out


def read_manifest(csv_path: Path) -> Dataset:
    """Read a manifest CSV (records in file order).

    Columns (case-insensitive): ``clip_id``; ``video`` (a clip file) and/or ``faces`` (a folder of
    face frames) and optionally ``faces16`` (exactly 16 face frames) and ``audio`` (a separate audio
    file), paths relative to the manifest's folder or absolute; then either ``label`` (a class name
    such as ``happy``, or an integer 1..7 as in DFEW: 1=happy .. 7=fear) or seven vote columns named
    by class (``happy``..``fear`` or DFEW's ``1happy``..``7fear``); optionally ``fold_1``..``fold_5``
    holding ``train``/``test``/empty (or 1/2/0). With both label and votes, the votes are used and a
    label that disagrees with the votes' majority is a per-clip problem.
    """
    csv_path = Path(csv_path)
    rows = _read_csv_rows(csv_path)
    if not rows or _blank(rows[0]):
        raise FerError(f"{csv_path} is empty; expected a header such as 'clip_id,video,label'")
    header = [h.lstrip("\ufeff").strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    id_col = _find_id_column(header, csv_path)
    media_cols = {name: lower.index(name) for name in ("video", "faces", "faces16", "audio") if name in lower}
    if not {"video", "faces", "faces16"} & set(media_cols):
        raise FerError(f"{csv_path}: no media column; add 'video' (clip file) and/or 'faces' (folder of face frames)")
    label_col = lower.index("label") if "label" in lower else None
    vote_cols = _vote_columns(header)
    if vote_cols and len(vote_cols) != NUM_CLASSES:
        missing = [n for c, n in enumerate(CLASS_NAMES) if c not in vote_cols]
        raise FerError(f"{csv_path}: vote columns for {', '.join(missing)} are missing; give all seven or none")
    if label_col is None and not vote_cols:
        raise FerError(f"{csv_path}: no 'label' column and no vote columns ({', '.join(CLASS_NAMES)})")
    fold_cols = _fold_columns(header)
    base = csv_path.parent

    records: list[ClipRecord] = []
    problems: dict[str, str] = {}
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if _blank(row):
            continue
        where = f"{csv_path} line {line}"
        row = row + [""] * (len(header) - len(row))
        cid = row[id_col].strip()
        if not cid:
            raise FerError(f"{where}: empty clip_id")
        if cid in seen:
            raise FerError(f"{where}: clip_id {cid} already used on line {seen[cid]}; ids must be unique")
        seen[cid] = line

        cls = None
        if label_col is not None:
            raw = row[label_col]
            cls = parse_label(raw)
            if cls is None and (raw.strip() or not vote_cols):
                raise FerError(f"{where}: label {raw!r} is neither a class name ({', '.join(CLASS_NAMES)}) "
                               "nor an integer 1..7")
        if vote_cols:
            votes = _parse_votes(row, vote_cols, f"{where} (clip {cid})")
            if cls is not None and _disagrees(votes, cls):
                problems[cid] = _label_problem(votes, cls, "the label column")
        else:
            votes = _one_hot(cls)

        folds = np.full(NUM_FOLDS, FOLD_UNUSED, np.int8)
        for k, j in fold_cols.items():
            raw = row[j].strip().lower()
            if raw not in _FOLD_VALUES:
                raise FerError(f"{where}: {header[j]} is {row[j]!r}; use train, test or empty (or 1, 2, 0)")
            folds[k - 1] = _FOLD_VALUES[raw]

        paths: dict[str, Path | None] = {}
        missing = []
        for name, j in media_cols.items():
            cell = row[j].strip()
            if not cell:
                paths[name] = None
                continue
            p = Path(cell).expanduser()
            p = p if p.is_absolute() else base / p
            paths[name] = p
            if not p.exists():
                missing.append(f"{name} {cell} not found")
        if not any(paths.get(n) for n in ("video", "faces", "faces16")):
            problems[cid] = "no media: the video and faces cells are empty"
        elif missing:
            problems[cid] = "; ".join(missing)
        records.append(ClipRecord(
            clip_id=cid,
            faces16=paths.get("faces16"),
            faces_all=paths.get("faces"),
            video=paths.get("video"),
            audio=paths.get("audio"),
            votes=votes,
            folds=folds,
        ))
    if not records:
        raise FerError(f"{csv_path} lists no clips")
    return Dataset(root=csv_path, kind="manifest", records=records, has_votes=bool(vote_cols), problems=problems)


__all__ = [
    "load_dataset", "read_dfew", "read_manifest", "read_split_file", "read_annotation", "annotation_file",
    "normalize_dfew_id", "parse_label", "id_sort_key",
]
