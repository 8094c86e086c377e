"""Check a store: clip index, shapes, chunking, every done row written and finite, nothing half-written."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer.cache import layout as L
from fer.cache.errors import env_faults
from fer.cache.schema import FOLD_CODES
from fer.cache.store import FeatureStore


@dataclass
class VerifyReport:
    """What verify found: problems make the store unusable as is; notes are harmless leftovers."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    """Specs that were checked."""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(store: FeatureStore, spec: str | None = None) -> VerifyReport:
    """Check the clip index and one feature set (or all of them)."""
    rep = VerifyReport()
    _check_index(store, rep)
    specs = [spec] if spec is not None else store.backend.children(L.FEATURES)
    if spec is not None:
        store.require(spec)
    for s in specs:
        rep.checked.append(s)
        _check_set(store, s, rep)
    _check_leftovers(store, rep)
    return rep


def _check_index(store: FeatureStore, rep: VerifyReport) -> None:
    n = store.n
    ids = store.ids
    if len(set(ids.tolist())) != n:
        rep.problems.append("clips/id: clip ids repeat")
    if any(i == "" for i in ids.tolist()):
        rep.problems.append("clips/id: some clip ids are empty")
    c, k = len(store.class_names), len(store.fold_names)
    if store.votes.shape != (n, c):
        rep.problems.append(f"clips/votes: shape {store.votes.shape}, expected {(n, c)} ({c} classes)")
    elif not np.isfinite(store.votes).all() or (store.votes < 0).any():
        rep.problems.append("clips/votes: negative or non-finite vote counts")
    if store.folds.shape != (n, k):
        rep.problems.append(f"clips/fold: shape {store.folds.shape}, expected {(n, k)} ({k} folds)")
    elif not np.isin(store.folds, FOLD_CODES).all():
        rep.problems.append("clips/fold: codes other than 0 (unused), 1 (train), 2 (test), 3 (validation)")
    num = store.attrs.get("num_clips")
    if num is not None and num != n:
        rep.problems.append(f"root attrs say {num} clips but clips/id holds {n}")


def _check_set(store: FeatureStore, spec: str, rep: VerifyReport) -> None:
    b = store.backend
    n = store.n
    problems = store.set_problems(spec)
    if problems:
        rep.problems += [f"{spec}: {p}" for p in problems]
        if any("interrupted" in p for p in problems):
            rep.problems[-1] += f"; remove it with `fer cache rm {store.path} {spec}` and extract it again"
        return
    attrs = b.group_attrs(L.group_key(spec))
    cr = int(attrs["chunk_rows"])
    arrays = {name: b.array(f"{L.group_key(spec)}/{name}") for name in ("data", "mask", "done")}
    try:
        done = np.asarray(arrays["done"][:], dtype=bool)
    except Exception as e:  # a corrupt chunk of done
        rep.problems.append(f"{spec}/done: unreadable ({type(e).__name__}: {e})")
        return
    ids = store.ids
    bad_rows: list[int] = []
    for c in range(L.n_chunks(n, cr)):
        a0, b0 = L.chunk_span(c, cr, n)
        rows_done = done[a0:b0]
        if not rows_done.any():
            continue
        for name in ("data", "mask"):
            if b.chunk_exists(f"{L.group_key(spec)}/{name}", c) is False:
                rep.problems.append(f"{spec}/{name}: chunk {c} (rows {a0}-{b0 - 1}) is missing but holds done rows")
        try:
            block = np.asarray(arrays["data"][a0:b0])
            np.asarray(arrays["mask"][a0:b0])
        except Exception as e:
            rep.problems.append(f"{spec}: chunk {c} (rows {a0}-{b0 - 1}) holds done rows "
                                f"but is unreadable ({type(e).__name__})")
            continue
        if block.dtype.kind == "f":
            finite = np.isfinite(block.reshape(b0 - a0, -1)).all(axis=1)
            bad_rows += [a0 + i for i in np.flatnonzero(rows_done & ~finite)]
    if bad_rows:
        some = ", ".join(str(ids[r]) for r in bad_rows[:5])
        more = f" and {len(bad_rows) - 5} more" if len(bad_rows) > 5 else ""
        rep.problems.append(f"{spec}: {len(bad_rows)} done rows are not finite (NaN/inf or never written): "
                            f"clips {some}{more}")


def _check_leftovers(store: FeatureStore, rep: VerifyReport) -> None:
    local = store.local
    if local is None or store.format != "zarr" or not Path(local).is_dir():
        return
    partial = list(Path(local).rglob("*.partial"))
    if partial:
        rep.notes.append(
            f"{len(partial)} temp files (*.partial) left by a killed writer; "
            "harmless, removed by `fer cache verify --clean`"
        )


def clean_leftovers(store: FeatureStore) -> int:
    """Delete *.partial temp files a killed zarr writer left; returns how many.

    Takes every chunk lock of a feature set first, so it never pulls a temp file from under a live writer
    (FerError if one is writing).
    """
    local = store.local
    if local is None or store.format != "zarr":
        return 0
    count = 0
    for spec in store.backend.children(L.FEATURES):
        partial = list((Path(local) / L.group_key(spec)).rglob("*.partial"))
        if not partial:
            continue  # nothing to clean: no lock taken, so a read-only store needs no write
        cr = store.safe_chunk_rows(spec)
        locks = store.locks.chunks(spec, range(L.n_chunks(store.n, cr)), f"cannot clean {spec!r}")
        try:
            with env_faults(local, f"removing temp files of {spec}"):
                for p in partial:
                    p.unlink(missing_ok=True)
                    count += 1
        finally:
            locks.release()
    return count
