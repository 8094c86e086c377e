"""Where ``fer extract`` writes and how it opens a feature set: the default store path, the --format check,
never inside the dataset, the creation lock between shards, the provenance the set records, the read-only
"already finished" check, and the notes on how clips were read."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fer.cache import layout as L
from fer.cache.backends import local_path
from fer.cache.errors import FerError, env_faults
from fer.extract.datasets.common import vote_conflicts
from fer.extract.datasets.records import Dataset
from fer.extract.extractor import Extractor
from fer.extract.summary import ExtractSummary

STORE_SUFFIX = {"zarr": ".zarr", "h5": ".h5"}


def default_store_path(root: str | Path, fmt: str | None = None) -> Path:
    """``./<root name>.zarr`` (or ``.h5``) in the current folder: the dataset folder may be read-only
    or shared, so the store is never written inside it unless asked with ``--store``."""
    fmt = (fmt or "zarr").lower()
    if fmt not in STORE_SUFFIX:
        raise FerError(f"unknown --format {fmt!r}; choose zarr or h5")
    root = Path(root)
    name = (root.stem if root.suffix.lower() == ".csv" else root.resolve().name) or "features"
    return Path.cwd() / f"{name}{STORE_SUFFIX[fmt]}"


def check_store_format(store: str | Path, fmt: str | None) -> None:
    """``--store x.zarr --format h5`` disagree: say so instead of silently picking one."""
    if fmt is None:
        return
    if fmt.lower() not in STORE_SUFFIX:
        raise FerError(f"unknown --format {fmt!r}; choose zarr or h5")
    s = str(store).rstrip("/").lower()
    is_h5 = s.endswith((".h5", ".hdf5"))
    if (fmt.lower() == "h5") != is_h5:
        raise FerError(f"--store {store} does not match --format {fmt}; name an HDF5 store *.h5 and a Zarr "
                       "store *.zarr")


def check_store_outside(store_path: str | Path, root: str | Path) -> None:
    """FerError when the store would be written inside the dataset folder (fer never writes into one)."""
    local = local_path(store_path)
    root = Path(root)
    if local is None or not root.is_dir():
        return
    store, data = local.expanduser().resolve(), root.expanduser().resolve()
    if store == data or data in store.parents:
        raise FerError(f"--store {store_path} lies inside the dataset folder {root}; fer never writes into a "
                       "dataset: put the store elsewhere (leave --store out for ./<dataset name>.zarr in the "
                       "current folder)")


@contextlib.contextmanager
def dir_lock(store_path: str | Path) -> Iterator[None]:
    """Serialise store / feature-set creation between processes started together (shards)."""
    s = str(store_path)
    if "://" in s and not s.startswith("file://"):
        yield
        return
    parent = Path(s.removeprefix("file://")).expanduser().resolve().parent
    made = not parent.exists()
    with env_faults(parent, "creating the store's folder"):
        parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # some network filesystems refuse locks on folders; the store locks its own files
            pass
        yield
    except BaseException:
        if made:  # leave no empty folder behind when the store could not be made in it
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def set_attrs(dataset: Dataset, extractor: Extractor, command: str | None = None) -> dict[str, Any]:
    """The feature set's provenance: the extractor's own, its build arguments (so `fer predict` can rebuild
    it), the command line, the dataset as read, and how `fer data faces` made the face frames."""
    attrs = dict(extractor.provenance())
    attrs.setdefault("modality", extractor.modality)
    attrs["spec"] = extractor.spec
    build_args = getattr(extractor, "build_args", None)
    if build_args:
        attrs["extractor"] = build_args  # lets `fer predict` rebuild this exact extractor
    if command:
        attrs["command_line"] = command  # else the store records this process's argv
    attrs["dataset"] = {"root": str(dataset.root), "kind": dataset.kind, "clips": len(dataset.records)}
    if dataset.face_preprocessing and attrs.get("modality") == "face":
        attrs["face_preprocessing"] = dataset.face_preprocessing  # how `fer data faces` made the frames
    return attrs


def open_feature_set(dataset: Dataset, store_path: str | Path, spec: str, row_shape: tuple,
                     attrs: dict[str, Any], shard: tuple[int, int],
                     chunk_bytes: int | None = None) -> tuple[Any, Any]:
    """``(store, writer)``: the store for ``dataset`` (created if missing, its clip index checked) and a
    writer of this shard's chunks of the feature set ``spec`` (created if missing); close both when done."""
    from fer.cache import create_store

    with dir_lock(store_path):
        store = create_store(
            store_path, dataset.ids, dataset.votes(), dataset.folds(),
            class_names=dataset.class_names, fold_names=dataset.fold_names, layout=dataset.kind,
            description=f"{dataset.kind} dataset at {dataset.root}",
            attrs={"has_votes": bool(dataset.has_votes), "protocol": dataset.protocol,
                   "votes_vs_label": vote_conflicts(dataset.votes(), dataset.official())},
            labels=dataset.official(),
        )
        try:
            writer = store.writer(spec, row_shape=row_shape, attrs=attrs, shard=shard,
                                  chunk_bytes=chunk_bytes)
        except BaseException:
            store.close()
            raise
    return store, writer


def finished_summary(dataset: Dataset, spec: str, row_shape: tuple, store_path: str | Path,
                     shard: tuple[int, int]) -> ExtractSummary | None:
    """The summary of a run with nothing to do, found by reading the store only; None when there is work
    (or anything else to say about the store: the normal path then says it)."""
    from fer.cache import open_store

    local = local_path(store_path)
    if local is None or not local.exists():
        return None
    try:
        st = open_store(store_path, "r")
    except Exception:  # noqa: BLE001 - any doubt: take the normal path, which reports it properly
        return None
    with st:
        differs = st.index_mismatch(dataset.ids, dataset.votes(), dataset.folds(), dataset.class_names,
                                    dataset.official())
        if differs:
            raise FerError(differs)  # said now, before a lock file is made beside another dataset's store
        try:
            if not st.has(spec):
                return None
            attrs = st.set_attrs(spec)
            if tuple(attrs["row_shape"]) != tuple(row_shape):
                return None
            owned = L.owned_rows(st.n, int(attrs["chunk_rows"]), shard)
            done = st.done_mask(spec)
        except Exception:  # noqa: BLE001
            return None
    if not done[owned].all():
        return None
    return ExtractSummary(spec=spec, store=str(store_path), shard=shard, owned=len(owned), skipped=len(owned))


def merge_row_info(store: Any, writer: Any, notes: dict[str, str]) -> None:
    """Add this run's notes on how clips were read to the feature set's ``row_info`` attribute."""
    try:
        old = dict(store.info(writer.spec).get("row_info") or {})
    except Exception:
        old = {}
    old.update(notes)
    writer.update_attrs({"row_info": old})


def store_specs(store: str | Path) -> list[str]:
    """The feature sets a store already holds (none when it is not there yet, or cannot be read: the run
    says why)."""
    from fer.cache.store import open_store

    try:
        with open_store(store, "r") as s:
            return s.specs()
    except Exception:  # noqa: BLE001 - not there yet, or damaged: the run reports it properly
        return []
