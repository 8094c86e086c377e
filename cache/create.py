"""Creating a store for a clip index, or reopening the existing store that holds the same index.

Creation is all or nothing: the clip index is checked first, a folder that is not a fer store is never written
into, and whatever a failed creation made (no space, read-only) is removed again.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fer.cache import layout as L
from fer.cache.backends import Backend, format_for, local_path, remove_tree
from fer.cache.errors import FerEnvError, FerError, env_faults
from fer.cache.locks import StoreLocks
from fer.cache.provenance import library_versions, now_iso
from fer.cache.schema import DFEW_CLASSES, DFEW_FOLDS, FOLD_CODES, FORMAT_VERSION, STORE_FORMAT_NAME
from fer.cache.store import FeatureStore, open_backend


def check_index(ids: Sequence[str], votes: np.ndarray, folds: np.ndarray, class_names: Sequence[str] | None,
                fold_names: Sequence[str] | None
                ) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[str]]:
    """The clip index as the store keeps it, checked (FerError on repeated ids, wrong shapes, bad codes)."""
    ids = [str(i) for i in ids]
    n = len(ids)
    if n == 0:
        raise FerError("cannot create a store with no clips")
    if len(set(ids)) != n:
        raise FerError("clip ids must be unique; the dataset lists some clips twice")
    votes = np.asarray(votes, dtype=np.float32)
    folds = np.asarray(folds, dtype=np.int8)
    if votes.ndim != 2 or votes.shape[0] != n:
        raise FerError(f"votes must have shape ({n}, classes), got {votes.shape}")
    if class_names is None:
        if votes.shape[1] != len(DFEW_CLASSES):
            raise FerError(f"votes have {votes.shape[1]} columns: name the classes (class_names=...)")
        class_names = DFEW_CLASSES
    class_names = [str(c) for c in class_names]
    if (len(class_names) != votes.shape[1] or len(set(class_names)) != len(class_names)
            or not all(class_names)):
        raise FerError(f"class names {class_names} must be {votes.shape[1]} distinct non-empty names, "
                       "one per vote column")
    if folds.ndim != 2 or folds.shape[0] != n:
        raise FerError(f"folds must have shape ({n}, folds), got {folds.shape}")
    if fold_names is None:
        k = folds.shape[1]
        fold_names = list(DFEW_FOLDS) if k == len(DFEW_FOLDS) else [f"fold_{i + 1}" for i in range(k)]
    fold_names = [str(f) for f in fold_names]
    if len(fold_names) != folds.shape[1]:
        raise FerError(f"{len(fold_names)} fold names for {folds.shape[1]} fold columns")
    if not np.isin(folds, FOLD_CODES).all():
        raise FerError("fold codes must be 0 (unused), 1 (train), 2 (test) or 3 (validation)")
    return ids, votes, folds, class_names, fold_names


def create_store(path: str | os.PathLike, ids: Sequence[str], votes: np.ndarray, folds: np.ndarray, *,
                 class_names: Sequence[str] | None = None, fold_names: Sequence[str] | None = None,
                 layout: str = "manifest", description: str = "", attrs: dict | None = None,
                 labels: np.ndarray | None = None) -> FeatureStore:
    """Create a store for a clip index, or open the existing one for writing if it holds the same index.

    ``labels`` (N,) are the official labels (class indices, -1 where the dataset names none): they decide a
    clip whose votes tie (fer.cache.schema.scored_labels). An existing store without them gets them.

    ``votes`` is (N, C) with one column per name in ``class_names`` (default: DFEW's 7 classes when C is 7);
    ``folds`` is (N, K), one column per fold of the protocol (codes in fer.cache.schema), named by
    ``fold_names``; ``layout`` says which dataset layout the index came from.

    An existing non-empty folder that is not a fer store is refused (fer never writes into a folder it did not
    make). When creation fails (no space, read-only), what it made is removed, so nothing half-made is left.
    """
    ids, votes, folds, class_names, fold_names = check_index(ids, votes, folds, class_names, fold_names)
    local = local_path(path)
    if local is not None:
        refuse_foreign_folder(local, path)  # before any lock file or write
    locks = StoreLocks(str(path), local, format_for(path))
    lock_dir = locks.dir
    made_lock_dir = lock_dir is not None and not lock_dir.exists()
    try:
        with env_faults(path, "creating the store"):
            with locks.creating():
                return _create_or_open(path, local, ids, votes, folds, class_names, fold_names, layout,
                                       description, attrs, _check_labels(labels, len(ids), len(class_names)))
    except BaseException:
        if made_lock_dir and local is not None and not local.exists():
            # the store is gone: so is the lock folder we made for it
            shutil.rmtree(lock_dir, ignore_errors=True)
        raise


def refuse_foreign_folder(local: Path, path: str | os.PathLike) -> None:
    """FerError when ``local`` is an existing non-empty folder that is not a fer store (nor the remains of an
    interrupted store creation): writing a store there would mix it with someone else's files."""
    if not local.is_dir():
        return
    names = sorted(p.name for p in local.iterdir())
    if not names:
        return
    meta = local / "zarr.json"
    if meta.is_file():
        try:
            root = json.loads(meta.read_text()).get("attributes") or {}
        except (OSError, ValueError, AttributeError):
            root = {}
        if isinstance(root, dict) and root.get("format") == STORE_FORMAT_NAME:
            return
    foreign = [x for x in names if x not in ("zarr.json", "clips", "features")
               and not (x.startswith("zarr.") and x.endswith(".partial"))]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise FerError(f"{path} is a folder that is not a fer feature store (it holds {shown}); fer never "
                       "writes into a folder it did not make: give --store a new path (or an empty folder)")


def _check_labels(labels: np.ndarray | None, n: int, c: int) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels, dtype=np.int16)
    if labels.shape != (n,) or (labels < -1).any() or (labels >= c).any():
        raise FerError(f"labels must be ({n},) class indices in -1..{c - 1}, got shape {labels.shape}")
    return labels


def _write_labels(b: Backend, labels: np.ndarray) -> None:
    b.create_array(L.CLIPS_LABEL, labels.shape, np.int16, (max(1, len(labels)),), -1)
    b.array(L.CLIPS_LABEL)[:] = labels


def _create_or_open(path, local, ids, votes, folds, class_names, fold_names, layout, description,
                    attrs, labels) -> FeatureStore:
    existed = local is None or local.exists()
    try:
        b = open_backend(path, "a")
    except FerEnvError:
        # e.g. HDF5 leaves an empty file behind when there is no space for its header
        if not existed and local.is_file() and local.stat().st_size == 0:
            local.unlink(missing_ok=True)
        elif not existed and local.is_dir() and not any(local.iterdir()):
            local.rmdir()
        raise
    creating = False
    try:
        root = b.root_attrs()
        if root.get("format") == STORE_FORMAT_NAME:
            store = FeatureStore(b, path, "r+")
            differs = store.index_mismatch(ids, votes, folds, class_names, labels)
            if differs:
                raise FerError(differs)
            if labels is not None and store.labels is None:  # a store made before clips/label: add them
                _write_labels(b, labels)
                b.flush()
                store = FeatureStore(b, path, "r+")
            return store
        others = [k for k in b.children("") if k not in ("clips", "features")]
        if others or b.children(L.FEATURES):
            raise FerError(f"{path} exists and is not a fer feature store; choose another path")
        creating = True
        n = len(ids)
        b.reserve(n * (max(len(i.encode()) for i in ids) + 4 * votes.shape[1] + folds.shape[1]))
        b.create_array(L.CLIPS_ID, (n, max(1, max(len(i.encode()) for i in ids))), np.uint8,
                       (n, max(1, max(len(i.encode()) for i in ids))), 0)
        b.array(L.CLIPS_ID)[:] = L.encode_strings(ids)
        # one chunk each; a protocol without folds is (N, 0), and chunk sides must be positive
        b.create_array(L.CLIPS_VOTES, votes.shape, np.float32, tuple(max(1, x) for x in votes.shape), 0)
        b.array(L.CLIPS_VOTES)[:] = votes
        b.create_array(L.CLIPS_FOLD, folds.shape, np.int8, tuple(max(1, x) for x in folds.shape), 0)
        b.array(L.CLIPS_FOLD)[:] = folds
        if labels is not None:
            _write_labels(b, labels)
        b.create_group(L.FEATURES)
        meta = dict(attrs or {})
        meta.update(format=STORE_FORMAT_NAME, format_version=FORMAT_VERSION, description=description,
                    layout=layout, class_names=class_names, fold_names=fold_names, num_clips=n,
                    created=now_iso(), library_versions=library_versions())
        b.set_root_attrs(meta)  # last: a store without it is not a store yet
        b.flush()
        return FeatureStore(b, path, "r+")
    except BaseException:
        if creating:
            b.mark_write_failed()  # whatever HDF5 still caches of the half-made index is dropped, not written
        b.close()
        if creating and local is not None:
            _undo_create(local, existed)
        raise


def _undo_create(local: Path, existed: bool) -> None:
    """Remove what a failed store creation wrote: the whole store when we made it, else the entries we
    added."""
    try:
        if not existed:
            remove_tree(local)
        elif local.is_dir():
            for name in ("zarr.json", "clips", "features"):
                remove_tree(local / name)
    except OSError:
        pass  # best effort; a folder without the store's root attrs is not taken for a store
