"""FeatureStore: one store per dataset, a clip index plus one feature set per spec (see STORE_API.md)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fer.cache import layout as L
from fer.cache.backends import Backend, format_for, local_path, open_backend, read_raw_chunks, read_raw_rows, remove_tree
from fer.cache.errors import FerEnvError, FerError, env_faults
from fer.cache.locks import ChunkLocks, exclusive, lock_dir_for
from fer.cache.provenance import library_versions, now_iso
from fer.cache.schema import DFEW_CLASSES, DFEW_FOLDS, FOLD_CODES, FORMAT_VERSION, STORE_FORMAT_NAME

# Reads go in blocks of whole chunks; zarr decodes blocks in parallel threads (HDF5 holds a global lock,
# so it reads in one call instead).
_READ_BLOCK_BYTES = 32 << 20
_READ_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class FeatureSet:
    """A whole feature set in memory; row order is the store's clip order."""

    spec: str
    data: np.ndarray
    """(N, *row_shape) features, float16 unless the set was written with another dtype."""
    mask: np.ndarray
    """(N, T) bool: token present."""
    done: np.ndarray
    """(N,) bool: row written completely; rows not done hold NaN."""
    ids: np.ndarray
    """(N,) clip ids."""
    attrs: dict = field(default_factory=dict)
    """The feature set's provenance attributes."""

    def to_torch(self):
        """(data, mask) as torch tensors sharing memory with the numpy arrays."""
        import torch

        return torch.from_numpy(self.data), torch.from_numpy(self.mask)


class FeatureStore:
    """An open store. Use create_store / open_store rather than this constructor."""

    def __init__(self, backend: Backend, path: str | os.PathLike, mode: str) -> None:
        self._b = backend
        self.path = str(path)
        self.mode = mode
        self._local = local_path(path)
        self.attrs = self._check_format(backend.root_attrs())
        self._valid_sets: set[str] = set()
        self._check_index_arrays()  # before reading: a damaged shape must not allocate gigabytes
        try:
            with env_faults(self.path, "reading the clip index"):
                self._ids = L.decode_strings(np.asarray(backend.array(L.CLIPS_ID)[:]))
                self._votes = np.asarray(backend.array(L.CLIPS_VOTES)[:], dtype=np.float32)
                self._folds = np.asarray(backend.array(L.CLIPS_FOLD)[:], dtype=np.int8)
                self._labels = (np.asarray(backend.array(L.CLIPS_LABEL)[:], dtype=np.int64)
                                if backend.has(L.CLIPS_LABEL) else None)
        except (FerError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise self._damaged(f"its clip index cannot be read ({type(e).__name__}: {L.one_line(e, 120)})") from e
        self.class_names, self.fold_names = self._protocol()

    def _damaged(self, what: str, spec: str | None = None) -> FerEnvError:
        if spec is None:
            return FerEnvError(f"{self.path} is damaged: {what}; restore it from a copy, or re-extract into a new store")
        return FerEnvError(
            f"{self.path} is damaged: feature set {spec}: {what}; run `fer cache verify {self.path}` to see all damage, "
            f"then remove the set (`fer cache rm {self.path} {spec}`) and extract it again"
        )

    def _check_index_arrays(self) -> None:
        """Shapes and attrs of the clip index agree with each other and with the bytes stored, checked from
        metadata alone (cheap), so a damaged or hostile shape is refused before anything is allocated."""
        b = self._b
        shapes = {}
        for key in (L.CLIPS_ID, L.CLIPS_VOTES, L.CLIPS_FOLD):
            if not b.has(key):
                raise FerError(f"{self.path} has no clip index ({key} is missing); the store is incomplete, create it again")
            a = b.array(key)
            shape, chunks = tuple(int(x) for x in a.shape), tuple(int(x) for x in (a.chunks or a.shape))
            if len(shape) != 2 or shape[0] < 1:
                raise self._damaged(f"{key} has shape {shape}, not (clips, width)")
            if chunks[0] != shape[0]:  # the index is written as one chunk
                raise self._damaged(f"{key} claims {shape[0]} rows but is chunked for {chunks[0]}")
            claimed = int(np.prod(shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
            stored = b.bytes_on_disk(key)
            if stored is not None and claimed > 2 * stored + (1 << 20):  # the index is stored uncompressed
                raise self._damaged(f"{key} claims {shape[0]} rows ({claimed} bytes) but holds {stored} bytes")
            shapes[key] = shape
        rows = {k: v[0] for k, v in shapes.items()}
        num = self.attrs.get("num_clips")
        if len(set(rows.values())) != 1 or (isinstance(num, int) and num != rows[L.CLIPS_ID]):
            said = f", the root attrs say {num}" if isinstance(num, int) else ""
            raise self._damaged("the clip index arrays disagree on the number of clips ("
                                + ", ".join(f"{k} {r}" for k, r in rows.items()) + said + ")")

    def _protocol(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The store's class and fold names; a version 1 store is DFEW's 7 classes and 5 folds."""
        a = self.attrs
        classes = tuple(str(c) for c in a.get("class_names") or ())
        folds = tuple(str(f) for f in a.get("fold_names") or ())
        if self._votes.ndim != 2 or self._folds.ndim != 2 or len(self._votes) != self.n or len(self._folds) != self.n:
            raise FerError(f"{self.path} is damaged: clips/votes {self._votes.shape} and clips/fold {self._folds.shape} "
                           f"do not match the {self.n} clip ids; re-extract into a new store")
        labels, c = self._labels, self._votes.shape[1]
        if labels is not None and (labels.shape != (self.n,) or (labels >= c).any()):
            raise self._damaged(f"clips/label has shape {labels.shape} or labels past the {c} classes")
        if a.get("format_version") == 1:
            classes = classes or DFEW_CLASSES
            folds = folds or DFEW_FOLDS[: self._folds.shape[1]]
        if len(classes) != self._votes.shape[1] or len(folds) != self._folds.shape[1]:
            raise FerError(
                f"{self.path} is damaged: its attrs name {len(classes)} classes and {len(folds)} folds but "
                f"clips/votes has {self._votes.shape[1]} columns and clips/fold {self._folds.shape[1]}; "
                "re-extract into a new store"
            )
        return classes, folds

    def _check_format(self, attrs: dict) -> dict:
        if attrs.get("format") != STORE_FORMAT_NAME:
            raise FerError(f"{self.path} is not a fer feature store (no '{STORE_FORMAT_NAME}' format attribute)")
        v = attrs.get("format_version")
        if not isinstance(v, int) or v > FORMAT_VERSION:
            raise FerError(
                f"{self.path} has store format version {v}, newer than this fer understands ({FORMAT_VERSION}); "
                "upgrade fer to read it"
            )
        return attrs

    def index_mismatch(self, ids: Sequence[str], votes: np.ndarray, folds: np.ndarray,
                       class_names: Sequence[str], labels: np.ndarray | None = None) -> str | None:
        """Why this store's clip index is not the given one (a one-line reason), or None when it is the same.
        Official labels are compared when both sides have them (a store made before they existed has none)."""
        votes = np.asarray(votes, dtype=np.float32)
        same = (list(self.ids) == [str(i) for i in ids] and self.votes.shape == votes.shape
                and np.array_equal(self.votes, votes)
                and np.array_equal(self.folds, np.asarray(folds, dtype=np.int8))
                and (labels is None or self._labels is None
                     or np.array_equal(self._labels, np.asarray(labels))))
        if not same:
            return (f"{self.path} holds another dataset's clips (different ids, votes or folds); "
                    "use a new store path or remove the old store")
        if list(self.class_names) != [str(c) for c in class_names]:
            return (f"{self.path} names its classes {', '.join(self.class_names)}, not "
                    f"{', '.join(class_names)}; use the same --classes or a new store path")
        return None

    # ------------------------------------------------------------ clip index
    @property
    def format(self) -> str:
        return self._b.format

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    @property
    def votes(self) -> np.ndarray:
        return self._votes

    @property
    def folds(self) -> np.ndarray:
        return self._folds

    @property
    def labels(self) -> np.ndarray | None:
        """(N,) int64 official label per clip (-1: none named); None for a store made before clips/label."""
        return self._labels

    @property
    def n(self) -> int:
        return len(self._ids)

    @property
    def layout(self) -> str:
        """The dataset layout the clip index came from (dfew, mafw, ferv39k, folders, manifest); v1: dfew."""
        return str(self.attrs.get("layout") or ("dfew" if self.attrs.get("format_version") == 1 else "unknown"))

    # ------------------------------------------------------------ feature sets
    def specs(self) -> list[str]:
        return [s for s in self._b.children(L.FEATURES) if self._complete(s)]

    def _complete(self, spec: str) -> bool:
        # A feature set whose creation was interrupted has no chunk_rows attribute yet.
        return "chunk_rows" in self._b.group_attrs(L.group_key(spec))

    def has(self, spec: str) -> bool:
        return self._b.has(L.group_key(spec)) and self._complete(spec)

    def require(self, spec: str) -> None:
        """FerError listing the specs the store has when ``spec`` is not one of them."""
        if not self.has(spec):
            have = ", ".join(self.specs()) or "none"
            raise FerError(f"{self.path} has no feature set {spec!r}; it has: {have}")

    def set_attrs(self, spec: str) -> dict:
        """The feature set's attrs, after checking its arrays agree with them (FerEnvError when damaged)."""
        self.require(spec)
        attrs = self._b.group_attrs(L.group_key(spec))
        if spec not in self._valid_sets:
            problems = self.set_problems(spec, attrs)
            if problems:
                raise self._damaged(problems[0], spec)
            self._valid_sets.add(spec)
        return attrs

    def set_problems(self, spec: str, attrs: dict | None = None) -> list[str]:
        """What is wrong with a feature set's attrs and array shapes and chunks (metadata only; empty when fine)."""
        b, n = self._b, self.n
        attrs = b.group_attrs(L.group_key(spec)) if attrs is None else attrs
        missing = [k for k in ("chunk_rows", "row_shape", "dtype", "modality") if k not in attrs]
        if missing:
            return [f"attrs lack {', '.join(missing)} (its creation was interrupted)"]
        cr, row_shape = attrs["chunk_rows"], attrs["row_shape"]
        if not isinstance(cr, int) or isinstance(cr, bool) or not 1 <= cr <= n:
            return [f"chunk_rows is {cr!r}, not a number of rows in 1..{n}"]
        if (not isinstance(row_shape, list) or not row_shape
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in row_shape)):
            return [f"row_shape is {row_shape!r}, not a list of positive sizes"]
        try:
            dt = np.dtype(attrs["dtype"])
        except TypeError:
            return [f"dtype is {attrs['dtype']!r}, not a numeric type"]
        row_shape, t = tuple(row_shape), row_shape[0]
        expect = {
            "data": ((n,) + row_shape, (cr,) + row_shape, dt),
            "mask": ((n, t), (cr, t), np.dtype(bool)),
            "done": ((n,), (cr,), np.dtype(bool)),
            "failed": ((n, L.FAIL_WIDTH), (cr, L.FAIL_WIDTH), np.dtype(np.uint8)),
        }
        problems = []
        for name, (shape, chunks, dtype) in expect.items():
            key = f"{L.group_key(spec)}/{name}"
            if not b.has(key):
                problems.append(f"{name} is missing")
                continue
            a = b.array(key)
            if tuple(a.shape) != shape:
                problems.append(f"{name} has shape {tuple(a.shape)}, expected {shape} ({n} clips)")
            elif tuple(a.chunks or ()) != chunks:
                problems.append(f"{name} has chunks {tuple(a.chunks or ())}, expected {chunks} (writers could share a chunk)")
            elif np.dtype(a.dtype) != dtype:
                problems.append(f"{name} holds {np.dtype(a.dtype)}, expected {dtype}")
        return problems

    def info(self, spec: str) -> dict:
        """Provenance attrs plus shape, dtype, chunk_rows, n_done, n_failed, bytes_on_disk, created."""
        attrs = self.set_attrs(spec)
        data = self._b.array(L.data_key(spec))
        done = np.asarray(self._b.array(L.done_key(spec))[:], dtype=bool)
        failed = self._failed_rows(spec) & ~done
        out = dict(attrs)
        out.update(
            spec=spec,
            shape=list(data.shape),
            dtype=str(np.dtype(data.dtype)),
            chunk_rows=int(attrs["chunk_rows"]),
            n_rows=self.n,
            n_done=int(done.sum()),
            n_failed=int(failed.sum()),
            bytes_on_disk=self._b.bytes_on_disk(L.group_key(spec)),
            created=attrs.get("created"),
        )
        return out

    def done_mask(self, spec: str) -> np.ndarray:
        """(N,) bool: the rows of ``spec`` written completely (reads only the small ``done`` array)."""
        self.set_attrs(spec)
        with env_faults(self.path, f"reading feature set {spec}"):
            return np.asarray(self._b.array(L.done_key(spec))[:], dtype=bool)

    def _failed_rows(self, spec: str) -> np.ndarray:
        return np.asarray(self._b.array(L.failed_key(spec))[:, 0]) != 0

    def failures(self, spec: str) -> dict[str, str]:
        """clip id -> one-line reason, for rows that failed and are not done."""
        self.set_attrs(spec)
        failed = np.asarray(self._b.array(L.failed_key(spec))[:])
        done = np.asarray(self._b.array(L.done_key(spec))[:], dtype=bool)
        rows = np.flatnonzero((failed[:, 0] != 0) & ~done)
        reasons = L.decode_strings(failed[rows])
        return {str(self._ids[r]): str(reason) for r, reason in zip(rows, reasons)}

    def read(self, spec: str, *, rows: np.ndarray | None = None) -> FeatureSet:
        """The whole feature set (or the given rows) in one pass, chunk by chunk, never row by row.

        A chunk that cannot be read (truncated, corrupt) raises FerEnvError naming the set, the chunk and its rows.
        """
        attrs = self.set_attrs(spec)
        cr = int(attrs["chunk_rows"])
        keys = {"data": L.data_key(spec), "mask": L.mask_key(spec), "done": L.done_key(spec)}
        arrays = {k: self._b.array(key) for k, key in keys.items()}
        if rows is None:
            out = {k: np.empty(a.shape, dtype=a.dtype) for k, a in arrays.items()}
            for k, a in arrays.items():
                try:
                    self._read_all(keys[k], a, out[k], cr)
                except (FerError, KeyboardInterrupt, MemoryError):
                    raise
                except Exception as e:
                    raise self._unreadable(spec, k, a, cr, e) from e
            ids = self._ids
        else:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < 0 or rows.max() >= self.n):
                raise FerError(f"rows must lie in 0..{self.n - 1}")
            out = {k: np.empty((len(rows),) + tuple(a.shape[1:]), dtype=a.dtype) for k, a in arrays.items()}
            spans = {k: _Span(self._b, key(spec), cr) for k, key in
                     (("data", L.data_key), ("mask", L.mask_key), ("done", L.done_key))}
            for c, pos in L.group_by_chunk(rows, cr):
                lo, hi = int(rows[pos].min()), int(rows[pos].max()) + 1  # only the span the rows need
                for k, span in spans.items():
                    try:
                        out[k][pos] = span.read(lo, hi)[rows[pos] - lo]
                    except (FerError, KeyboardInterrupt, MemoryError):
                        raise
                    except Exception as e:
                        raise self._unreadable(spec, k, arrays[k], cr, e, chunk=c) from e
            ids = self._ids[rows]
        return FeatureSet(spec=spec, data=out["data"], mask=out["mask"], done=out["done"], ids=ids, attrs=attrs)

    def read_masks(self, spec: str) -> tuple[np.ndarray, np.ndarray]:
        """(mask (N, T) bool, done (N,) bool) of a feature set without its data (small: a reader that streams
        the data keeps these in memory)."""
        self.require(spec)
        mask = np.asarray(self._b.array(L.mask_key(spec))[:], dtype=bool)
        return mask, np.asarray(self._b.array(L.done_key(spec))[:], dtype=bool)

    def span_reader(self, spec: str) -> SpanReader:
        """Reads row spans [start, stop) of one feature set (data and mask), its arrays resolved once."""
        return SpanReader(self, spec)

    def _unreadable(self, spec: str, name: str, arr: Any, cr: int, e: Exception, chunk: int | None = None) -> FerEnvError:
        """The error for a chunk read that failed: finds the first bad chunk (only on this failure path)."""
        if chunk is None:
            for c in range(L.n_chunks(self.n, cr)):
                a0, b0 = L.chunk_span(c, cr, self.n)
                try:
                    np.asarray(arr[a0:b0])
                except Exception as err:  # noqa: BLE001 - any failure marks the chunk
                    chunk, e = c, err
                    break
        if chunk is None:
            return self._damaged(f"its {name} cannot be read ({type(e).__name__}: {L.one_line(e, 160)})", spec)
        a0, b0 = L.chunk_span(chunk, cr, self.n)
        return self._damaged(f"chunk {chunk} of its {name} (rows {a0}-{b0 - 1}, clips {self._ids[a0]}..{self._ids[b0 - 1]}) "
                             f"cannot be read ({type(e).__name__}: {L.one_line(e, 160)})", spec)

    def _read_all(self, key: str, arr: Any, out: np.ndarray, chunk_rows: int) -> None:
        n = out.shape[0]
        if n == 0:
            return
        raw = self._b.raw_chunks(key, arr)
        nchunks = L.n_chunks(n, chunk_rows)
        row_bytes = max(1, out[:1].nbytes)
        per_block = max(1, _READ_BLOCK_BYTES // (row_bytes * chunk_rows))
        blocks = [(c, min(nchunks, c + per_block)) for c in range(0, nchunks, per_block)]
        if raw is not None:
            def job(span):
                a, b = span
                read_raw_chunks(raw, chunk_rows, a, b, n, out[a * chunk_rows : min(n, b * chunk_rows)])
        elif self.format == "hdf5":  # h5py holds a global lock: threads would only queue
            self._b.read_rows(arr, 0, n, out)
            return
        else:
            def job(span):
                a, b = span
                r0, r1 = a * chunk_rows, min(n, b * chunk_rows)
                self._b.read_rows(arr, r0, r1, out[r0:r1])
        if len(blocks) == 1 or _READ_THREADS == 1:
            for span in blocks:
                job(span)
            return
        with ThreadPoolExecutor(_READ_THREADS) as ex:
            list(ex.map(job, blocks))

    def writer(self, spec: str, *, row_shape: tuple[int, ...] | None = None, attrs: dict | None = None,
               dtype: str = "float16", shard: tuple[int, int] = (0, 1), chunk_bytes: int | None = None,
               compressor: str | None = None):
        """A FeatureWriter for ``spec``, creating the feature set when missing (see STORE_API.md)."""
        from fer.cache.writer import FeatureWriter

        if self.mode == "r":
            raise FerError(f"{self.path} is open read-only; open it with mode='r+' to write")
        L.check_spec(spec)
        with exclusive(self._lock_file("_create"), f"{self.path}::create"):
            if not self.has(spec):
                try:
                    with env_faults(self.path, f"creating feature set {spec}"):
                        self._create_set(spec, row_shape, attrs, dtype, chunk_bytes, compressor)
                except BaseException:
                    self._drop_half_set(spec)
                    raise
            else:
                have = self.set_attrs(spec)
                if row_shape is not None and tuple(row_shape) != tuple(have["row_shape"]):
                    raise FerError(
                        f"feature set {spec!r} holds rows of shape {tuple(have['row_shape'])}, not {tuple(row_shape)}; "
                        "a different shape needs a different spec"
                    )
                if np.dtype(dtype) != np.dtype(have["dtype"]):
                    raise FerError(f"feature set {spec!r} holds {have['dtype']}, not {dtype}")
        return FeatureWriter(self, spec, shard=shard)

    def _create_set(self, spec, row_shape, attrs, dtype, chunk_bytes, compressor) -> None:
        if row_shape is None or attrs is None or "modality" not in attrs:
            raise FerError(f"feature set {spec!r} does not exist yet: give row_shape and attrs (with 'modality') to create it")
        row_shape = tuple(int(x) for x in row_shape)
        if len(row_shape) < 1 or min(row_shape) < 1:
            raise FerError(f"row_shape must be (T, ...) with positive sizes, got {row_shape}")
        dt = np.dtype(dtype)
        compressor = compressor or L.DEFAULT_COMPRESSOR[self.format]
        cr = min(self.n, L.chunk_rows_for(row_shape, dt, chunk_bytes or L.DEFAULT_CHUNK_BYTES))
        n, t = self.n, row_shape[0]
        g = L.group_key(spec)
        self._b.reserve(0)
        self._b.create_group(g)
        fill = np.nan if dt.kind == "f" else 0
        # mask/done/failed share data's rows per chunk so writers of disjoint chunks never share a chunk file.
        self._b.create_array(L.data_key(spec), (n,) + row_shape, dt, (cr,) + row_shape, fill, compressor)
        self._b.create_array(L.mask_key(spec), (n, t), bool, (cr, t), False, "none" if self.format == "hdf5" else "zstd-1")
        self._b.create_array(L.done_key(spec), (n,), bool, (cr,), False, "none")
        self._b.create_array(L.failed_key(spec), (n, L.FAIL_WIDTH), np.uint8, (cr, L.FAIL_WIDTH), 0,
                             "gzip-1" if self.format == "hdf5" else "zstd-1")
        from fer.cache.provenance import base_provenance

        meta = {**base_provenance(), **dict(attrs)}
        meta.update(spec=spec, row_shape=list(row_shape), dtype=str(dt), chunk_rows=cr, compressor=compressor,
                    format_version=FORMAT_VERSION)
        self._b.set_group_attrs(g, meta)  # last: its chunk_rows marks the set as complete
        self._b.flush()

    def _drop_half_set(self, spec: str) -> None:
        """Remove what a failed _create_set made, so no half-made set is left (best effort: the disk may be full)."""
        try:
            if not self._b.has(L.group_key(spec)) or not self._complete(spec):
                self._b.delete(L.group_key(spec))
                self._b.flush()
        except Exception:  # noqa: BLE001 - a set without chunk_rows is never listed, and verify names it
            self._b.mark_write_failed()

    def remove(self, spec: str) -> None:
        """Delete a feature set (refused while a writer holds any of its chunks)."""
        if self.mode == "r":
            raise FerError(f"{self.path} is open read-only; open it with mode='r+' to remove a feature set")
        self.require(spec)  # not set_attrs: a damaged set must stay removable
        chunks = range(L.n_chunks(self.n, self.safe_chunk_rows(spec)))
        locks = ChunkLocks(self._lock_key(spec), self._lock_file(spec), chunks, f"cannot remove {spec!r}")
        try:
            with env_faults(self.path, f"removing feature set {spec}"):
                self._b.reserve(0)
                self._b.delete(L.group_key(spec))
                self._b.flush()
            self._valid_sets.discard(spec)
        finally:
            locks.release()

    def safe_chunk_rows(self, spec: str) -> int:
        """The set's chunk_rows when valid, else 1 (every row its own chunk), for taking locks on a damaged set."""
        cr = self._b.group_attrs(L.group_key(spec)).get("chunk_rows")
        return cr if isinstance(cr, int) and not isinstance(cr, bool) and 1 <= cr <= self.n else 1

    # ------------------------------------------------------------ internals
    def _lock_key(self, spec: str) -> str:
        base = str(self._local.resolve()) if self._local is not None else self.path
        return f"{base}::{spec}"

    def _lock_file(self, name: str) -> Path | None:
        # HDF5 lets one process open the file for writing, so it needs no lock files; memory:// has no files.
        if self._local is None or self.format == "hdf5":
            return None
        return lock_dir_for(self._local.resolve()) / f"{name}.lock"

    @property
    def backend(self) -> Backend:
        return self._b

    def close(self) -> None:
        self._b.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({self.path!r}, format={self.format}, n={self.n}, specs={self.specs()})"


class _Span:
    """Row spans of one array: straight from the chunk files where they are uncompressed and local (only the
    span's bytes), else through the format library."""

    def __init__(self, backend: Backend, key: str, chunk_rows: int) -> None:
        self._b = backend
        self.arr = backend.array(key)
        self.raw = backend.raw_chunks(key, self.arr)
        self.chunk_rows = chunk_rows
        self.shape = tuple(self.arr.shape)
        self.dtype = np.dtype(self.arr.dtype)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            out = np.empty((stop - start,) + self.shape[1:], dtype=self.dtype)
        if self.raw is not None:
            read_raw_rows(self.raw, self.chunk_rows, start, stop, out)
        else:
            self._b.read_rows(self.arr, start, stop, out)
        return out


class SpanReader:
    """Contiguous row spans of one feature set, for readers that hold only part of a set at a time.

    Thread-safe for disjoint ``out`` buffers on zarr stores (chunk files are read with os.preadv); HDF5
    serialises reads behind h5py's lock.
    """

    def __init__(self, store: FeatureStore, spec: str) -> None:
        attrs = store.set_attrs(spec)
        cr = int(attrs["chunk_rows"])
        self._store = store
        self.spec = spec
        self.n = store.n
        self._data = _Span(store.backend, L.data_key(spec), cr)
        self._mask = _Span(store.backend, L.mask_key(spec), cr)
        self.row_shape: tuple[int, ...] = self._data.shape[1:]
        self.dtype = self._data.dtype
        self.chunk_rows = cr

    def read(self, start: int, stop: int, out: np.ndarray | None = None, *,
             mask: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(data, mask) of rows [start, stop); ``out`` ((stop - start, *row_shape), C-contiguous) takes the
        data. ``mask=False`` reads the data alone (mask None), for readers that hold the masks already."""
        if not 0 <= start <= stop <= self.n:
            raise FerError(f"row span {start}:{stop} is outside 0..{self.n}")
        got = None
        for name, span in (("data", self._data), ("mask", self._mask))[:2 if mask else 1]:
            try:
                got = span.read(start, stop, out if name == "data" else None)
            except (FerError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # a truncated or unreadable chunk met while streaming
                raise self._store._unreadable(self.spec, name, span.arr, self.chunk_rows, e,
                                              chunk=_failed_chunk(e, start, self.chunk_rows)) from e
            if name == "data":
                data, got = got, None
        return data, None if got is None else got.astype(bool, copy=False)


def _failed_chunk(e: Exception, start: int, chunk_rows: int) -> int:
    """The chunk a raw read names in its error ("chunk 3 in ..."), else the span's first chunk."""
    import re

    m = re.match(r"chunk (\d+) in ", str(e))
    return int(m.group(1)) if m else start // chunk_rows


def _check_index(ids: Sequence[str], votes: np.ndarray, folds: np.ndarray, class_names: Sequence[str] | None,
                 fold_names: Sequence[str] | None) -> tuple[list[str], np.ndarray, np.ndarray, list[str], list[str]]:
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
    if len(class_names) != votes.shape[1] or len(set(class_names)) != len(class_names) or not all(class_names):
        raise FerError(f"class names {class_names} must be {votes.shape[1]} distinct non-empty names, one per vote column")
    if folds.ndim != 2 or folds.shape[0] != n:
        raise FerError(f"folds must have shape ({n}, folds), got {folds.shape}")
    if fold_names is None:
        fold_names = list(DFEW_FOLDS) if folds.shape[1] == len(DFEW_FOLDS) else [f"fold_{k + 1}" for k in range(folds.shape[1])]
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
    ids, votes, folds, class_names, fold_names = _check_index(ids, votes, folds, class_names, fold_names)
    local = local_path(path)
    if local is not None:
        refuse_foreign_folder(local, path)  # before any lock file or write
    lock_dir = None if local is None or format_for(path) == "hdf5" else lock_dir_for(local.resolve())
    made_lock_dir = lock_dir is not None and not lock_dir.exists()
    try:
        with env_faults(path, "creating the store"):
            with exclusive(None if lock_dir is None else lock_dir / "_create.lock", f"{path}::create"):
                return _create_or_open(path, local, ids, votes, folds, class_names, fold_names, layout,
                                       description, attrs, _check_labels(labels, len(ids), len(class_names)))
    except BaseException:
        if made_lock_dir and local is not None and not local.exists():
            shutil.rmtree(lock_dir, ignore_errors=True)  # the store is gone: so is the lock folder we made for it
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
        raise FerError(f"{path} is a folder that is not a fer feature store (it holds {shown}); fer never writes into "
                       "a folder it did not make: give --store a new path (or an empty folder)")


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
    """Remove what a failed store creation wrote: the whole store when we made it, else the entries we added."""
    try:
        if not existed:
            remove_tree(local)
        elif local.is_dir():
            for name in ("zarr.json", "clips", "features"):
                remove_tree(local / name)
    except OSError:
        pass  # best effort; a folder without the store's root attrs is not taken for a store


def open_store(path: str | os.PathLike, mode: str = "r") -> FeatureStore:
    """Open an existing store ('r' or 'r+'); FerError if missing, not a store, or a newer format."""
    if mode not in ("r", "r+"):
        raise FerError(f"mode must be 'r' or 'r+', not {mode!r}")
    local = local_path(path)
    if local is not None and not local.exists():
        raise FerError(f"no feature store at {path}: create one with `fer extract` or fer.cache.create_store")
    b = open_backend(path, mode)
    try:
        return FeatureStore(b, path, mode)
    except BaseException:
        b.close()
        raise
