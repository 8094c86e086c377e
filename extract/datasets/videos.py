"""A plain folder of videos, no labels: what `fer data faces` and `fer predict` take from a user's recordings.

Every video file directly inside the folder is a clip, its id the file's stem. With no classes and no
folds such a dataset can be aligned (`fer data faces`) but not trained on; label it with a manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer.cache.errors import FerError
from fer.extract.datasets.common import VIDEO_EXTS, id_sort_key
from fer.extract.datasets.records import ClipRecord, Dataset


def _videos(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.suffix.lower() in VIDEO_EXTS and p.is_file()]


def matches(root: Path) -> bool:
    return root.is_dir() and bool(_videos(root))


def read_videos(root: Path) -> Dataset:
    """One unlabeled clip per video file (two files with one stem: the .mp4 wins)."""
    root = Path(root)
    by_id: dict[str, Path] = {}
    for p in _videos(root):
        if p.stem not in by_id or p.suffix.lower() == ".mp4":
            by_id[p.stem] = p
    if not by_id:
        raise FerError(f"{root} holds no video files ({', '.join(VIDEO_EXTS)})")
    records = [ClipRecord(clip_id=cid, video=by_id[cid], votes=np.zeros(0, np.float32), folds=np.zeros(0, np.int8))
               for cid in sorted(by_id, key=id_sort_key)]
    return Dataset(root=root, kind="videos", records=records, has_votes=False, class_names=(), fold_names=(),
                   protocol="unlabeled videos: align them with `fer data faces`; label them with a manifest to train")
