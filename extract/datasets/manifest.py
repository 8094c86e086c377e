"""A manifest CSV: one row per clip, any class set, any protocol. How own recordings (and anything else) come in.

Columns (names case-insensitive):

- ``clip_id`` (or ``video_name``, ``id``...): the clip's id, unique.
- media, paths relative to the manifest's folder or absolute: ``video`` (the clip file) and/or ``faces``
  (a folder of face frames), optionally ``faces16`` (exactly 16 face frames) and ``audio`` (a separate file).
- labels: ``label`` (a class name; or DFEW's integers 1..7), and/or one vote column per class named
  ``vote_<class>`` (any class set: their order is the class order), or DFEW's seven names
  (``happy``..``fear``, ``1happy``..``7fear``). With both, the votes are used and a label that disagrees
  with their majority is a per-clip problem.
- protocol: ``fold_<name>`` columns (``fold_1``..``fold_5``, ``fold_set_1``...) holding train / test / val
  (or 1 / 2 / 3, empty or 0 unused), or one ``split`` column (train / val / test). With a split column of
  train and val only, val is evaluated (as the literature reports AFEW); with train, val and test, val is for
  model selection and test is evaluated.

The class order: ``--classes`` if given, else the vote columns' order, else DFEW's when the labels are
DFEW's integers 1..7, else the label names sorted. Class names compare ignoring case and surrounding spaces
(``Happy``, ``happy`` and ``HAPPY `` are one class, named by the first spelling in the file). Other columns
are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.cache.schema import DFEW_CLASSES, FOLD_TEST, FOLD_TRAIN, FOLD_UNUSED, FOLD_VAL
from fer.extract.datasets import dfew
from fer.extract.datasets.common import (
    blank,
    class_index,
    class_key,
    disagrees,
    find_id_column,
    first_spellings,
    label_problem,
    one_hot,
    parse_votes,
    read_csv_rows,
)
from fer.extract.datasets.records import ClipRecord, Dataset

MEDIA_COLUMNS = ("video", "faces", "faces16", "audio")
FACE_PREPROCESSING = "faces.json"
"""Written by `fer data faces` beside its manifest: how the face frames were made (copied into provenance)."""

_FOLD_VALUES = {
    "": FOLD_UNUSED, "0": FOLD_UNUSED, "unused": FOLD_UNUSED, "none": FOLD_UNUSED, "-": FOLD_UNUSED,
    "1": FOLD_TRAIN, "train": FOLD_TRAIN,
    "2": FOLD_TEST, "test": FOLD_TEST,
    "3": FOLD_VAL, "val": FOLD_VAL, "validation": FOLD_VAL,
}
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "dev": "val", "test": "test"}


def split_codes(splits: set[str]) -> tuple[dict[str, int], str, str]:
    """Fold codes for a train/val/test split, the fold's name and the protocol line.

    train+val+test (CAER): val selects, test is evaluated. train+val (AFEW: test labels withheld): val is
    evaluated and selection uses a split of train. train+test: test is evaluated.
    """
    if "test" in splits:
        codes = {"train": FOLD_TRAIN, "val": FOLD_VAL, "test": FOLD_TEST}
        how = ("test is evaluated; model selection on val" if "val" in splits
               else "test is evaluated; model selection on a stratified split of train")
        return codes, "test", how
    if "val" in splits:
        codes = {"train": FOLD_TRAIN, "val": FOLD_TEST}
        return codes, "val", ("val is evaluated (no test labels, as AFEW is reported); "
                              "model selection on a split of train")
    return {"train": FOLD_TRAIN}, "train", "train only: no split to evaluate"


def _fold_columns(header: Sequence[str]) -> list[tuple[str, int]]:
    """(fold name, column) for ``fold_<name>`` / ``fold<k>`` / ``Fold 1`` columns, in header order."""
    out = []
    for j, h in enumerate(header):
        m = re.fullmatch(r"fold[\s_-]?(.+)", h.strip(), flags=re.IGNORECASE)
        if m:
            out.append((m.group(1), j))
    return out


def _vote_columns(header: Sequence[str]) -> tuple[dict[int, int], tuple[str, ...] | None]:
    """Vote columns: ``vote_<class>`` (their order is the class order), or DFEW's seven names."""
    named = [(h.strip()[5:].strip(), j) for j, h in enumerate(header) if h.strip().lower().startswith("vote_")]
    if named:
        names = tuple(n for n, _ in named)
        keys = [class_key(n) for n in names]
        twice = next((n for n, k in zip(names, keys) if keys.count(k) > 1), None)
        if twice is not None:
            same = [f"vote_{n}" for n, k in zip(names, keys) if k == class_key(twice)]
            raise FerError(f"vote columns {' and '.join(same)} name one class (class names compare ignoring "
                           "case and surrounding spaces): keep one column per class")
        return {c: j for c, (_, j) in enumerate(named)}, names
    cols = dfew.vote_columns(header)
    if cols:
        if len(cols) != len(DFEW_CLASSES):
            missing = [n for c, n in enumerate(DFEW_CLASSES) if c not in cols]
            raise FerError(f"vote columns for {', '.join(missing)} are missing; give all seven DFEW classes "
                           "or name vote columns vote_<class>")
        return cols, DFEW_CLASSES
    return {}, None


def _dfew_integer(raw: str) -> int | None:
    try:
        n = float(raw.strip())
    except ValueError:
        return None
    return int(n) - 1 if n.is_integer() and 1 <= n <= len(DFEW_CLASSES) else None


def read_manifest(csv_path: Path, classes: Sequence[str] | None = None) -> Dataset:
    """Read a manifest CSV (records in file order); ``classes`` fixes the class set and order."""
    csv_path = Path(csv_path)
    rows = read_csv_rows(csv_path)
    if not rows or blank(rows[0]):
        raise FerError(f"{csv_path} is empty; expected a header such as 'clip_id,video,label'")
    header = [h.lstrip("\ufeff").strip() for h in rows[0]]
    lower = [h.lower() for h in header]
    id_col = find_id_column(header, csv_path)
    media_cols = {name: lower.index(name) for name in MEDIA_COLUMNS if name in lower}
    if not {"video", "faces", "faces16"} & set(media_cols):
        raise FerError(f"{csv_path}: no media column; add 'video' (clip file) and/or 'faces' (folder of face frames)")
    label_col = lower.index("label") if "label" in lower else None
    try:
        vote_cols, vote_names = _vote_columns(header)
    except FerError as e:
        raise FerError(f"{csv_path}: {e}") from None
    if label_col is None and not vote_cols:
        raise FerError(f"{csv_path}: no 'label' column and no vote columns (vote_<class> per class, or DFEW's "
                       f"{', '.join(DFEW_CLASSES)})")
    fold_cols = _fold_columns(header)
    split_col = lower.index("split") if "split" in lower else None
    if fold_cols and split_col is not None:
        raise FerError(f"{csv_path}: give either fold_<k> columns or one split column, not both")
    body = [(line, row + [""] * (len(header) - len(row))) for line, row in enumerate(rows[1:], start=2)
            if not blank(row)]
    if not body:
        raise FerError(f"{csv_path} lists no clips")

    # the class set: --classes, else the vote columns, else DFEW's integers, else the sorted label names
    if classes is not None:
        class_names = tuple(classes)
    elif vote_names is not None:
        class_names = vote_names
    else:
        labels = [row[label_col].strip() for _, row in body]
        if all(_dfew_integer(x) is not None or class_key(x) in DFEW_CLASSES for x in labels if x) and any(
                _dfew_integer(x) is not None for x in labels):
            class_names = DFEW_CLASSES
        else:  # Happy, happy and "HAPPY " are one class, named by its first spelling in the file
            class_names = tuple(sorted(first_spellings(labels), key=class_key))
        if not class_names:
            raise FerError(f"{csv_path}: every label is empty; give each clip a class name")
    if vote_names is not None and classes is not None:
        # map the vote columns onto --classes (same names, maybe another order)
        vote_cols = {class_index(n, class_names, f"{csv_path}: vote column vote_{n}"): vote_cols[i]
                     for i, n in enumerate(vote_names)}

    split_codes_, split_fold = {}, None
    protocol = ""
    if split_col is not None:
        seen = set()
        for line, row in body:
            raw = row[split_col].strip().lower()
            if raw and raw not in _SPLIT_NAMES:
                raise FerError(f"{csv_path} line {line}: split is {row[split_col]!r}; "
                               "use train, val or test (or empty)")
            if raw:
                seen.add(_SPLIT_NAMES[raw])
        split_codes_, split_fold, protocol = split_codes(seen)
    fold_names = tuple(name for name, _ in fold_cols) or ((split_fold,) if split_fold else ())
    if fold_cols:
        protocol = f"{len(fold_cols)} fold column(s) ({', '.join(fold_names)}); each fold's test clips are evaluated"

    base = csv_path.parent
    records: list[ClipRecord] = []
    problems: dict[str, str] = {}
    seen_ids: dict[str, int] = {}
    for line, row in body:
        where = f"{csv_path} line {line}"
        cid = row[id_col].strip()
        if not cid:
            raise FerError(f"{where}: empty clip_id")
        if cid in seen_ids:
            raise FerError(f"{where}: clip_id {cid} already used on line {seen_ids[cid]}; ids must be unique")
        seen_ids[cid] = line

        cls = None
        if label_col is not None:
            raw = row[label_col].strip()
            if raw or not vote_cols:
                dfew_int = _dfew_integer(raw) if class_names == DFEW_CLASSES else None
                cls = dfew_int if dfew_int is not None else class_index(raw, class_names, where)
        if vote_cols:
            votes = parse_votes(row, vote_cols, class_names, f"{where} (clip {cid})")
            if cls is not None and disagrees(votes, cls):
                problems[cid] = label_problem(votes, cls, "the label column", class_names)
        else:
            votes = one_hot(cls, len(class_names))

        folds = np.full(len(fold_names), FOLD_UNUSED, np.int8)
        for k, (_name, j) in enumerate(fold_cols):
            raw = row[j].strip().lower()
            if raw not in _FOLD_VALUES:
                raise FerError(f"{where}: {header[j]} is {row[j]!r}; use train, test, val or empty (or 1, 2, 3, 0)")
            folds[k] = _FOLD_VALUES[raw]
        if split_col is not None:
            raw = row[split_col].strip().lower()
            folds[0] = split_codes_.get(_SPLIT_NAMES.get(raw, ""), FOLD_UNUSED)

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
            clip_id=cid, faces16=paths.get("faces16"), faces_all=paths.get("faces"), video=paths.get("video"),
            audio=paths.get("audio"), votes=votes, folds=folds, label=cls,
        ))
    ds = Dataset(root=csv_path, kind="manifest", records=records, has_votes=bool(vote_cols), problems=problems,
                 class_names=tuple(class_names), fold_names=fold_names, protocol=protocol)
    ds.face_preprocessing = read_face_preprocessing(base)
    return ds


def read_face_preprocessing(folder: Path) -> dict | None:
    """How `fer data faces` made the face frames beside this manifest (without the per-clip part), if it did."""
    p = Path(folder) / FACE_PREPROCESSING
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise FerError(f"{p} is unreadable ({e}); rerun `fer data faces` or delete it") from None
    return {k: v for k, v in info.items() if k != "clips"} if isinstance(info, dict) else None
