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
import os
import re
from collections.abc import Iterable, Sequence
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
def class_key(name: object) -> str:
    """How class names compare everywhere (folders, labels, vote columns, --classes): ignoring case and
    surrounding spaces."""
    return str(name).strip().casefold()


def first_spellings(names: Iterable[object]) -> list[str]:
    """One name per class, in first-seen order: the first spelling of each class (without surrounding spaces)
    names it; later spellings that compare equal (class_key) are the same class."""
    out: dict[str, str] = {}
    for n in names:
        if class_key(n):
            out.setdefault(class_key(n), str(n).strip())
    return list(out.values())


def close_names(names: Sequence[str]) -> list[tuple[str, str]]:
    """Pairs of distinct class names that look like one class spelled twice (Happy / Happiness, Angry /
    Anger): a shared start of at least 4 letters covering 80% of the shorter name, or a similarity of 0.8."""
    from difflib import SequenceMatcher

    out = []
    keys = [class_key(n) for n in names]
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            a, b = keys[i], keys[j]
            shared = len(os.path.commonprefix([a, b]))
            prefix = shared >= 4 and shared >= 0.8 * min(len(a), len(b))
            if prefix or SequenceMatcher(None, a, b).ratio() >= 0.8:
                out.append((names[i], names[j]))
    return out


def warn_close_classes(ds: Dataset) -> None:
    """A warning per pair of class names that are suspiciously close; they stay two classes."""
    for a, b in close_names(ds.class_names):
        ds.warnings.append(f"classes {a!r} and {b!r} are two classes but look like one spelled twice: rename "
                           "one (class folders, labels or vote columns) if they are the same, or fix it with "
                           "--classes")


def class_index(label: str, class_names: Sequence[str], where: str) -> int:
    """Index of ``label`` in ``class_names``, compared by class_key; else FerError listing the classes."""
    keys = [class_key(c) for c in class_names]
    s = class_key(label)
    if s in keys:
        return keys.index(s)
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


def vote_conflicts(votes: np.ndarray, official: np.ndarray) -> dict[str, int]:
    """How often real votes and the official labels (-1: none) do not simply agree: ``disagree`` (another
    class has more votes than the official one) and ``tie`` (the official class shares the most votes)."""
    votes = np.asarray(votes, np.float32)
    official = np.asarray(official, np.int64)
    known = (official >= 0) & (votes.sum(1) > 0) if len(votes) else np.zeros(0, bool)
    if not known.any():
        return {"disagree": 0, "tie": 0}
    v, o = votes[known], official[known]
    mine, top = v[np.arange(len(v)), o], v.max(1)
    shared = (v == top[:, None]).sum(1) > 1
    return {"disagree": int((mine < top).sum()), "tie": int(((mine == top) & shared).sum())}


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
    keys = [class_key(c) for c in names]
    dup = sorted({c for c in keys if keys.count(c) > 1})
    if dup:
        raise FerError(f"--classes names {dup[0]} twice: each class once, in the order you want")
    return tuple(names)


def order_classes(ds: Dataset, classes: Sequence[str] | None) -> Dataset:
    """Reorder (or extend) a dataset's vote columns to ``classes`` (``--classes``), compared by class_key.

    Every class a clip has votes for must be listed; listed classes the data lacks get zero columns.
    """
    if classes is None:
        return ds
    have = [class_key(c) for c in ds.class_names]
    want = [class_key(c) for c in classes]
    votes = ds.votes() if ds.records else np.zeros((0, len(have)), np.float32)
    used = [c for c, n in zip(ds.class_names, votes.sum(0)) if n > 0]
    used += [c for c in dict.fromkeys(ds.class_names[r.label] for r in ds.records if r.label is not None)
             if c not in used]
    missing = [c for c in used if class_key(c) not in want]
    if missing:
        raise FerError(f"{ds.root}: the data has clips of {', '.join(missing)}, which --classes "
                       f"({', '.join(classes)}) leaves out; list every class")
    # --classes names the classes (the user's spelling and order)
    names = tuple(str(c).strip() for c in classes)
    src = [have.index(k) if k in have else -1 for k in want]
    for r in ds.records:
        r.votes = np.array([r.votes[j] if j >= 0 else 0.0 for j in src], np.float32)
        if r.label is not None:
            r.label = want.index(have[r.label])
    ds.class_names = names
    return ds


def warn_classes_never_trained(ds: Dataset) -> None:
    """A class with test clips in a fold but no training clips there cannot be learned: say so (not fatal)."""
    if not ds.records or not ds.class_names:
        return
    top = ds.labels()
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
