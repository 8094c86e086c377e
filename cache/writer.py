"""FeatureWriter: writes rows of one feature set, owning (and locking) whole chunks.

Crash safety: for every chunk touched, data and mask are written first (zarr writes each chunk file to a
temp name and renames it into place, so a chunk file is never half-written), then `done` for those rows.
A writer killed at any moment therefore leaves at worst rows that are written but not marked done, and a
rerun writes them again. HDF5 is flushed after the data and again after `done`; see Hdf5Backend for what HDF5
does and does not guarantee.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import numpy as np

from fer.cache import layout as L
from fer.cache.backends import Backend
from fer.cache.errors import FerError, env_faults
from fer.cache.locks import StoreLocks
from fer.cache.schema import FORMAT_VERSION


class WritableStore(Protocol):
    """What a writer needs of an open store (``fer.cache.store.FeatureStore`` is one): this module depends on
    these names only, so the store can import the writer without the writer importing the store."""

    path: str
    mode: str
    locks: StoreLocks

    @property
    def n(self) -> int: ...
    @property
    def ids(self) -> np.ndarray: ...
    @property
    def format(self) -> str: ...
    @property
    def backend(self) -> Backend: ...
    def has(self, spec: str) -> bool: ...
    def set_attrs(self, spec: str) -> dict: ...


def open_writer(store: WritableStore, spec: str, *, row_shape: tuple[int, ...] | None = None,
                attrs: dict | None = None, dtype: str = "float16", shard: tuple[int, int] = (0, 1),
                chunk_bytes: int | None = None, compressor: str | None = None) -> FeatureWriter:
    """A FeatureWriter for ``spec``, creating the feature set when missing (``FeatureStore.writer``)."""
    if store.mode == "r":
        raise FerError(f"{store.path} is open read-only; open it with mode='r+' to write")
    L.check_spec(spec)
    with store.locks.creating():
        if not store.has(spec):
            try:
                with env_faults(store.path, f"creating feature set {spec}"):
                    _create_set(store, spec, row_shape, attrs, dtype, chunk_bytes, compressor)
            except BaseException:
                _drop_half_set(store, spec)
                raise
        else:
            have = store.set_attrs(spec)
            if row_shape is not None and tuple(row_shape) != tuple(have["row_shape"]):
                raise FerError(
                    f"feature set {spec!r} holds rows of shape {tuple(have['row_shape'])}, not "
                    f"{tuple(row_shape)}; a different shape needs a different spec"
                )
            if np.dtype(dtype) != np.dtype(have["dtype"]):
                raise FerError(f"feature set {spec!r} holds {have['dtype']}, not {dtype}")
    return FeatureWriter(store, spec, shard=shard)


def _create_set(store: WritableStore, spec, row_shape, attrs, dtype, chunk_bytes, compressor) -> None:
    if row_shape is None or attrs is None or "modality" not in attrs:
        raise FerError(f"feature set {spec!r} does not exist yet: give row_shape and attrs (with 'modality') "
                       "to create it")
    row_shape = tuple(int(x) for x in row_shape)
    if len(row_shape) < 1 or min(row_shape) < 1:
        raise FerError(f"row_shape must be (T, ...) with positive sizes, got {row_shape}")
    dt = np.dtype(dtype)
    fmt, b = store.format, store.backend
    compressor = compressor or L.DEFAULT_COMPRESSOR[fmt]
    cr = min(store.n, L.chunk_rows_for(row_shape, dt, chunk_bytes or L.DEFAULT_CHUNK_BYTES))
    n, t = store.n, row_shape[0]
    g = L.group_key(spec)
    b.reserve(0)
    b.create_group(g)
    fill = np.nan if dt.kind == "f" else 0
    # mask/done/failed share data's rows per chunk so writers of disjoint chunks never share a chunk file.
    b.create_array(L.data_key(spec), (n,) + row_shape, dt, (cr,) + row_shape, fill, compressor)
    b.create_array(L.mask_key(spec), (n, t), bool, (cr, t), False, "none" if fmt == "hdf5" else "zstd-1")
    b.create_array(L.done_key(spec), (n,), bool, (cr,), False, "none")
    b.create_array(L.failed_key(spec), (n, L.FAIL_WIDTH), np.uint8, (cr, L.FAIL_WIDTH), 0,
                   "gzip-1" if fmt == "hdf5" else "zstd-1")
    from fer.cache.provenance import base_provenance

    meta = {**base_provenance(), **dict(attrs)}
    meta.update(spec=spec, row_shape=list(row_shape), dtype=str(dt), chunk_rows=cr, compressor=compressor,
                format_version=FORMAT_VERSION)
    b.set_group_attrs(g, meta)  # last: its chunk_rows marks the set as complete
    b.flush()


def _drop_half_set(store: WritableStore, spec: str) -> None:
    """Remove what a failed _create_set made, so no half-made set is left (best effort: the disk may be
    full)."""
    b = store.backend
    try:
        if not store.has(spec):
            b.delete(L.group_key(spec))
            b.flush()
    except Exception:  # noqa: BLE001 - a set without chunk_rows is never listed, and verify names it
        b.mark_write_failed()


class FeatureWriter:
    """Writes rows of feature set ``spec``; owns chunks c with c % n == k for shard (k, n)."""

    def __init__(self, store: WritableStore, spec: str, *, shard: tuple[int, int] = (0, 1)) -> None:
        k, n = (int(x) for x in shard)
        if n < 1 or not 0 <= k < n:
            raise FerError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
        self.store = store
        self.spec = spec
        self.shard = (k, n)
        attrs = store.set_attrs(spec)
        self.chunk_rows: int = int(attrs["chunk_rows"])
        self.row_shape: tuple[int, ...] = tuple(attrs["row_shape"])
        self.dtype = np.dtype(attrs["dtype"])
        b = store.backend
        self._b = b
        self._data = b.array(L.data_key(spec))
        self._mask = b.array(L.mask_key(spec))
        self._done = b.array(L.done_key(spec))
        self._failed = b.array(L.failed_key(spec))
        self._chunks = L.owned_chunks(store.n, self.chunk_rows, (k, n))
        self._owned = set(self._chunks)
        self._locks = store.locks.chunks(spec, self._chunks, f"feature set {spec!r} of {store.path}")

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """A write into the store: a disk fault becomes a one-line FerEnvError, and the backend learns that a
        write failed (HDF5 then drops, at close, what it could not write instead of crashing)."""
        try:
            with env_faults(self.store.path, f"{what} of feature set {self.spec}",
                            "free space there (or raise the quota), then rerun the same command: the rows marked "
                            "done so far are kept and the rest are redone"):
                yield
        except Exception:
            self._b.mark_write_failed()
            raise

    # ------------------------------------------------------------ queries
    def owned_rows(self) -> np.ndarray:
        """Row indices of the chunks this writer owns, ascending."""
        return L.owned_rows(self.store.n, self.chunk_rows, self.shard)

    def done(self) -> np.ndarray:
        """(N,) bool, read fresh from disk."""
        return np.asarray(self._done[:], dtype=bool)

    # ------------------------------------------------------------ writes
    def _check_rows(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= self.store.n):
            raise FerError(f"rows must lie in 0..{self.store.n - 1}")
        if len(np.unique(rows)) != len(rows):
            raise FerError("rows must not repeat")
        bad = sorted({int(c) for c in rows // self.chunk_rows} - self._owned)
        if bad:
            raise FerError(
                f"rows in chunk {bad[0]} belong to another shard than {self.shard[0]}/{self.shard[1]}; "
                "write only writer.owned_rows()"
            )
        return rows

    def write_rows(self, rows, data: np.ndarray, mask: np.ndarray) -> None:
        """Write rows (data then mask, merged into touched chunks), then mark them done."""
        rows = self._check_rows(rows)
        k, t = len(rows), self.row_shape[0]
        data = np.asarray(data)
        mask = np.asarray(mask, dtype=bool)
        if data.shape != (k,) + self.row_shape:
            raise FerError(f"data for {k} rows must have shape {(k,) + self.row_shape}, got {data.shape}")
        if mask.shape != (k, t):
            raise FerError(f"mask for {k} rows must have shape {(k, t)}, got {mask.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            data = data.astype(self.dtype, copy=False)
        if self.dtype.kind == "f":
            finite = np.isfinite(data.reshape(k, -1)).all(axis=1)
            if not finite.all():
                bad = [str(self.store.ids[r]) for r in rows[~finite][:5]]
                raise FerError(
                    f"{self.spec}: rows for clips {', '.join(bad)} hold NaN/inf (after casting to {self.dtype}); "
                    "record them with record_failures instead"
                )
        n = self.store.n
        for run in self._runs(list(L.group_by_chunk(rows, self.chunk_rows))):
            # one library call per run of consecutive chunks: zarr then writes the chunk files concurrently
            a, b = L.chunk_span(run[0][0], self.chunk_rows, n)[0], L.chunk_span(run[-1][0], self.chunk_rows, n)[1]
            dblock = np.empty((b - a,) + self.row_shape, dtype=self.dtype)
            mblock = np.empty((b - a, t), dtype=bool)
            for c, pos in run:
                ca, cb = L.chunk_span(c, self.chunk_rows, n)
                if len(pos) != cb - ca:  # merge with the rows already in the chunk (we own it: nobody else writes it)
                    dblock[ca - a : cb - a], mblock[ca - a : cb - a] = self._existing(c, ca, cb)
            local = np.concatenate([rows[pos] for _, pos in run]) - a
            allpos = np.concatenate([pos for _, pos in run])
            dblock[local] = data[allpos]
            mblock[local] = mask[allpos]
            with self._writing(f"writing rows {a}-{b - 1}"):
                self._b.reserve(dblock.nbytes + mblock.nbytes + 2 * (b - a) * L.FAIL_WIDTH)
                self._data[a:b] = dblock
                self._mask[a:b] = mblock
                self._b.flush()
                # only now, with the data in place, mark the rows done and drop their failure records
                done = np.array(self._done[a:b], dtype=bool)
                done[local] = True
                self._done[a:b] = done
                failed = np.asarray(self._failed[a:b])
                if failed[local].any():
                    failed = failed.copy()
                    failed[local] = 0
                    self._failed[a:b] = failed
                self._b.flush()

    def _runs(self, groups: list[tuple[int, np.ndarray]]) -> list[list[tuple[int, np.ndarray]]]:
        """Split (chunk, positions) groups into runs of consecutive chunks of at most ~64 MB."""
        row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        max_chunks = max(1, (64 << 20) // max(1, row_bytes * self.chunk_rows))
        runs: list[list[tuple[int, np.ndarray]]] = []
        for g in groups:
            if runs and g[0] == runs[-1][-1][0] + 1 and len(runs[-1]) < max_chunks:
                runs[-1].append(g)
            else:
                runs.append([g])
        return runs

    def _existing(self, c: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's current data and mask; an unreadable chunk with no done rows starts afresh."""
        try:
            return np.array(self._data[a:b]), np.array(self._mask[a:b], dtype=bool)
        except Exception as e:
            if np.asarray(self._done[a:b]).any():
                raise FerError(
                    f"{self.spec}: chunk {c} (rows {a}-{b - 1}) is unreadable but holds done rows "
                    f"({type(e).__name__}); "
                    "run `fer cache verify` and remove the feature set"
                ) from e
            fill = np.nan if self.dtype.kind == "f" else 0
            t = self.row_shape[0]
            return np.full((b - a,) + self.row_shape, fill, self.dtype), np.zeros((b - a, t), bool)

    def record_failures(self, failures: dict[int, str]) -> None:
        """Record a one-line reason per failed row; the rows stay not done."""
        if not failures:
            return
        rows = self._check_rows(list(failures.keys()))
        reasons = [L.one_line(failures[int(r)]) or "failed" for r in rows]
        enc = L.encode_strings(reasons, L.FAIL_WIDTH)
        with self._writing("recording failed clips"):
            self._b.reserve(len(np.unique(rows // self.chunk_rows)) * self.chunk_rows * L.FAIL_WIDTH)
            for c, pos in L.group_by_chunk(rows, self.chunk_rows):
                a, b = L.chunk_span(c, self.chunk_rows, self.store.n)
                block = np.asarray(self._failed[a:b]).copy()
                block[rows[pos] - a] = enc[pos]
                self._failed[a:b] = block
            self._b.flush()

    def update_attrs(self, attrs: dict) -> None:
        """Merge JSON-able values into the feature set's attrs (e.g. summary figures at the end of a run)."""
        g = L.group_key(self.spec)
        with self.store.locks.creating():
            cur = self._b.group_attrs(g)
            protected = {"spec", "row_shape", "dtype", "chunk_rows", "compressor", "format_version"}
            clash = protected & set(attrs)
            if clash:
                raise FerError(f"cannot change {', '.join(sorted(clash))} of an existing feature set")
            cur.update(attrs)
            with self._writing("updating the attrs"):
                self._b.reserve(len(repr(cur)))
                self._b.set_group_attrs(g, cur)
                self._b.flush()

    def close(self) -> None:
        self._locks.release()

    def __enter__(self) -> FeatureWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureWriter({self.spec!r}, shard={self.shard}, chunk_rows={self.chunk_rows})"
