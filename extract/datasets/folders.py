"""Class folders, torchvision's ImageFolder convention one level up: ``ROOT/<split>/<class>/<clip>``.

This is how AFEW, CAER and most own recordings come. A clip is a video file (``<clip>.mp4``, .avi, .mkv ...)
or a folder of face frames (``<clip>/00001.jpg ...``); a video and a frame folder of the same name are one
clip. Split folders are named train, val or validation, test (any case). Classes are the class folders'
names, sorted, unless ``--classes`` fixes the order; names that differ only in case or surrounding spaces
(``train/Happy``, ``val/happy``) are one class, named by its first spelling (train before val before
test). With train and val only (AFEW: test labels withheld), val is the evaluated split and model selection
uses a split of train; with train, val and test (CAER), val is for selection and test is evaluated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.extract.datasets.common import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    class_index,
    class_key,
    first_spellings,
    id_sort_key,
    one_hot,
)
from fer.extract.datasets.manifest import split_codes
from fer.extract.datasets.records import ClipRecord, Dataset

SPLITS = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def split_folders(root: Path) -> dict[str, Path]:
    """train / val / test -> its folder under ``root`` (names in any case)."""
    out: dict[str, Path] = {}
    if not root.is_dir():
        return out
    for d in root.iterdir():
        name = SPLITS.get(d.name.lower())
        if name and d.is_dir():
            if name in out:
                raise FerError(f"{root} has two {name} folders ({out[name].name}, {d.name}); keep one")
            out[name] = d
    return out


def matches(root: Path) -> bool:
    """Class folders: a train (or val/test) folder holding class folders."""
    splits = split_folders(root)
    return bool(splits) and any(c.is_dir() for d in splits.values() for c in d.iterdir())


def _has_frames(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_EXTS for p in folder.iterdir())


def _clips(class_dir: Path) -> dict[str, tuple[Path | None, Path | None]]:
    """clip name -> (video file, frame folder) for one class folder."""
    out: dict[str, list] = {}
    for e in class_dir.iterdir():
        if e.is_dir():
            out.setdefault(e.name, [None, None])[1] = e
        elif e.suffix.lower() in VIDEO_EXTS and e.is_file():
            entry = out.setdefault(e.stem, [None, None])
            if entry[0] is None or e.suffix.lower() == ".mp4":
                entry[0] = e
    return {k: (v[0], v[1]) for k, v in out.items()}


def read_folders(root: Path, classes: Sequence[str] | None = None) -> Dataset:
    """Read a class-folder root; ``classes`` fixes the class order (default: the folder names, sorted)."""
    root = Path(root)
    splits = split_folders(root)
    if not splits:
        raise FerError(f"{root} has no train, val or test folder of class folders: not a class-folder root")
    found: dict[str, dict[str, Path]] = {s: {c.name: c for c in d.iterdir() if c.is_dir()} for s, d in splits.items()}
    # one class per name compared by class_key (val/happy is train/Happy, test/"Sad " is Sad); the first
    # spelling (train, then val, then test) names it
    seen = [c for split in ("train", "val", "test") for c in sorted(found.get(split, {}))]
    names = sorted(first_spellings(seen), key=class_key)
    if not names:
        raise FerError(f"{root}: the split folders hold no class folders (expected {root.name}/train/<class>/<clip>)")
    class_names = tuple(classes) if classes is not None else tuple(names)
    codes, fold, protocol = split_codes(set(splits))
    records, problems = [], {}
    for split in ("train", "val", "test"):
        for cname, cdir in sorted(found.get(split, {}).items(), key=lambda kv: kv[0].lower()):
            cls = class_index(cname, class_names, f"{cdir}")
            clips = _clips(cdir)
            if not clips:
                raise FerError(f"{cdir} is an empty class folder: add its clips (videos or frame folders) or remove it")
            for clip in sorted(clips, key=id_sort_key):
                video, frames = clips[clip]
                cid = f"{splits[split].name}/{cname}/{clip}"
                rec = ClipRecord(clip_id=cid, video=video, faces_all=frames,
                                 votes=one_hot(cls, len(class_names)),
                                 folds=np.array([codes[split]], np.int8), label=cls)
                if frames is not None and not _has_frames(frames):
                    problems[cid] = f"{frames.relative_to(root).as_posix()}/ holds no image frames"
                records.append(rec)
    return Dataset(root=root, kind="folders", records=records, has_votes=False, problems=problems,
                   class_names=class_names, fold_names=(fold,), protocol=protocol)
