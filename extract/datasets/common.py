"""What every dataset reader shares: table reading, clip ids, labels and votes by class name, media scans.

Rules all readers follow:

- A problem with the whole dataset (unparseable file, duplicated id, a label outside the class set, a
  vote row that does not sum to a positive count, a clip in both train and test of one fold, no labels
  at all) raises ``FerError`` with a one-line message naming the file and line.
- A problem with one clip (no media, a media path that does not exist, a split label that disagrees
  with the votes) is recorded in ``Dataset.problems``; the clip stays in the records (extraction
  reports it as a failure later).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import FOLD_TEST, FOLD_TRAIN
from fer.extract.datasets.records import Dataset

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")

# Column names accepted for the clip id (compared case-insensitively).
ID_COLUMNS = ("clip_id", "video_name", "order", "id", "clip", "name")


# ---------------------------------------------------------------- ids
def normalize_dfew_id(raw: object) -> str:
    """DFEW-style numeric ids may be written ``1``, ``00001`` or (from a spreadsheet) ``1.0``; folders use ``00001``."""
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    s = str(raw).strip()
    if re.fullmatch(r"\d+(\.0+)?", s):
        return str(int(s.split(".")[0])).zfill(5)
    return s


def id_sort_key(clip_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order (so 100000 follows 99999), others after them by name."""
    return (0, int(clip_id)) if clip_id.isdigit() else (1, clip_id)


# ---------------------------------------------------------------- tables
def norm_col(name: object) -> str:
    """Column name for matching: lower case, BOM, spaces, digits and punctuation removed."""
    return re.sub(r"[^a-z]", "", str(name or "").lstrip("\ufeff").lower())


def find_id_column(header: Sequence[object], where: Path) -> int:
    plain = [str(h or "").lstrip("\ufeff").strip().lower() for h in header]
    for name in ID_COLUMNS:
        if name in plain:
            return plain.index(name)
    raise FerError(f"{where}: no clip id column (one of {', '.join(ID_COLUMNS)}); found columns {plain}")


def read_csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [row for row in csv.reader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FerError(f"cannot read {path}: {e}; is it a UTF-8 CSV file?") from e


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FerError(f"cannot read {path}: {e}; is it a UTF-8 text file?") from e
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def blank(row: Sequence[object]) -> bool:
    return all(v is None or str(v).strip() == "" for v in row)


# ---------------------------------------------------------------- classes
def class_index(label: str, class_names: Sequence[str], where: str) -> int:
    """Index of ``label`` (a class name, any case) in ``class_names``; FerError listing the classes otherwise."""
    low = [c.lower() for c in class_names]
    s = str(label).strip().lower()
    if s in low:
        return low.index(s)
    raise FerError(f"{where}: label {label!r} is not one of the classes ({', '.join(class_names)})")


def parse_votes(row: Sequence[object], cols: dict[int, int], class_names: Sequence[str], where: str) -> np.ndarray:
    """(C,) vote counts from the cells ``cols`` (class index -> column); every count >= 0, a positive sum."""
    votes = np.zeros(len(class_names), np.float32)
    for c, j in cols.items():
        cell = row[j] if j < len(row) else None
        try:
            v = float(cell if cell is not None and str(cell).strip() != "" else 0)
        except ValueError:
            raise FerError(f"{where}: vote count for {class_names[c]} is {cell!r}, not a number") from None
        if not np.isfinite(v) or v < 0:
            raise FerError(f"{where}: vote count for {class_names[c]} is {cell!r}; counts must be >= 0")
        votes[c] = v
    if votes.sum() <= 0:
        raise FerError(
            f"{where}: the vote counts sum to {votes.sum():g}; every clip needs at least one vote "
            "(fix or delete the row; a zero row usually means a broken export)"
        )
    return votes


def one_hot(cls: int, num_classes: int) -> np.ndarray:
    v = np.zeros(num_classes, np.float32)
    v[cls] = 1.0
    return v


def disagrees(votes: np.ndarray, cls: int) -> bool:
    return bool(votes[cls] < votes.max())


def label_problem(votes: np.ndarray, cls: int, source: str, class_names: Sequence[str]) -> str:
    return (
        f"{source} says {class_names[cls]} but the votes' majority is "
        f"{class_names[int(votes.argmax())]} ({', '.join(f'{n}={v:g}' for n, v in zip(class_names, votes) if v)})"
    )


def parse_classes(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--classes a,b,c`` -> ("a", "b", "c"); None when not given; FerError on repeats or empty names."""
    if text is None:
        return None
    names = [c.strip() for c in (text.split(",") if isinstance(text, str) else text)]
    names = [c for c in names if c]
    if not names:
        raise FerError("--classes is empty: give the class names in order, e.g. --classes angry,happy,sad")
    low = [c.lower() for c in names]
    dup = sorted({c for c in low if low.count(c) > 1})
    if dup:
        raise FerError(f"--classes names {dup[0]} twice: each class once, in the order you want")
    return tuple(names)


def order_classes(ds: Dataset, classes: Sequence[str] | None) -> Dataset:
    """Reorder (or extend) a dataset's vote columns to ``classes`` (``--classes``); names match in any case.

    Every class a clip has votes for must be listed; listed classes the data lacks get zero columns.
    """
    if classes is None:
        return ds
    have = [c.lower() for c in ds.class_names]
    votes = ds.votes() if ds.records else np.zeros((0, len(have)), np.float32)
    used = [c for c, n in zip(ds.class_names, votes.sum(0)) if n > 0]
    missing = [c for c in used if c.lower() not in [x.lower() for x in classes]]
    if missing:
        raise FerError(f"{ds.root}: the data has clips of {', '.join(missing)}, which --classes "
                       f"({', '.join(classes)}) leaves out; list every class")
    # the dataset's spelling for the classes it knows, the user's for new ones
    names = tuple(ds.class_names[have.index(c.lower())] if c.lower() in have else c for c in classes)
    src = [have.index(c.lower()) if c.lower() in have else -1 for c in names]
    for r in ds.records:
        r.votes = np.array([r.votes[j] if j >= 0 else 0.0 for j in src], np.float32)
    ds.class_names = names
    return ds


def warn_classes_never_trained(ds: Dataset) -> None:
    """A class with test clips in a fold but no training clips there cannot be learned: say so (not fatal)."""
    if not ds.records or not ds.class_names:
        return
    top = ds.votes().argmax(1)
    folds = ds.folds()
    for k, name in enumerate(ds.fold_names):
        col = folds[:, k]
        lacking = [c for i, c in enumerate(ds.class_names)
                   if ((top == i) & (col == FOLD_TEST)).any() and not ((top == i) & (col == FOLD_TRAIN)).any()]
        if lacking:
            ds.warnings.append(f"fold {name}: {', '.join(lacking)} in test but never in train (cannot be learned)")


# ---------------------------------------------------------------- media
def scan_media(folder: Path, want_dirs: bool, normalize=normalize_dfew_id) -> dict[str, Path]:
    """Normalised clip id -> entry of one media folder, from a single directory listing."""
    out: dict[str, Path] = {}
    if not folder.is_dir():
        return out
    for entry in folder.iterdir():
        if want_dirs:
            if entry.is_dir():
                out[normalize(entry.name)] = entry
        elif entry.suffix.lower() in VIDEO_EXTS and entry.is_file():
            cid = normalize(entry.stem)
            # prefer .mp4 (what the datasets ship) when a clip exists in several containers
            if cid not in out or entry.suffix.lower() == ".mp4":
                out[cid] = entry
    return out


def no_media(record_paths: Sequence[str]) -> str:
    """The per-clip problem for a clip whose media is missing, naming where it was looked for."""
    return "no media: none of " + ", ".join(record_paths)
