"""FeatureStore: one store per dataset, a clip index plus one feature set per spec (see STORE_API.md).

Around it: ``fer.cache.create`` makes a store, ``reading`` reads feature sets, ``writer`` writes them,
``locks`` keeps writers apart, and one module per on-disk format implements ``backends.Backend``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np

from fer.cache import layout as L
from fer.cache.backends import Backend, format_for, local_path, no_store
from fer.cache.errors import FerEnvError, FerError, env_faults
from fer.cache.hdf5_backend import Hdf5Backend
from fer.cache.locks import StoreLocks
from fer.cache.reading import FeatureSet, SpanReader, read_set
from fer.cache.schema import DFEW_CLASSES, DFEW_FOLDS, FORMAT_VERSION, STORE_FORMAT_NAME
from fer.cache.writer import FeatureWriter, open_writer
from fer.cache.zarr_backend import ZarrBackend


class FeatureStore:
    """An open store. Use create_store / open_store rather than this constructor."""

    def __init__(self, backend: Backend, path: str | os.PathLike, mode: str) -> None:
        self._b = backend
        self.path = str(path)
        self.mode = mode
        self.local = local_path(path)
        """The store's local file system path, None for a non-local URL (memory://, s3://, ...)."""
        self.locks = StoreLocks(self.path, self.local, backend.format)
        """The store's locks (chunks of a feature set, creating a set)."""
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
            why = f"{type(e).__name__}: {L.one_line(e, 120)}"
            raise self.damaged(f"its clip index cannot be read ({why})") from e
        self.class_names, self.fold_names = self._protocol()

    def damaged(self, what: str, spec: str | None = None) -> FerEnvError:
        """The one-line error for damage found in this store (or in its feature set ``spec``)."""
        if spec is None:
            return FerEnvError(f"{self.path} is damaged: {what}; restore it from a copy, "
                               "or re-extract into a new store")
        return FerEnvError(
            f"{self.path} is damaged: feature set {spec}: {what}; "
            f"run `fer cache verify {self.path}` to see all damage, "
            f"then remove the set (`fer cache rm {self.path} {spec}`) and extract it again"
        )

    def _check_index_arrays(self) -> None:
        """Shapes and attrs of the clip index agree with each other and with the bytes stored, checked from
        metadata alone (cheap), so a damaged or hostile shape is refused before anything is allocated."""
        b = self._b
        shapes = {}
        for key in (L.CLIPS_ID, L.CLIPS_VOTES, L.CLIPS_FOLD):
            if not b.has(key):
                raise FerError(f"{self.path} has no clip index ({key} is missing); "
                               "the store is incomplete, create it again")
            a = b.array(key)
            shape, chunks = tuple(int(x) for x in a.shape), tuple(int(x) for x in (a.chunks or a.shape))
            if len(shape) != 2 or shape[0] < 1:
                raise self.damaged(f"{key} has shape {shape}, not (clips, width)")
            if chunks[0] != shape[0]:  # the index is written as one chunk
                raise self.damaged(f"{key} claims {shape[0]} rows but is chunked for {chunks[0]}")
            claimed = int(np.prod(shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
            stored = b.bytes_on_disk(key)
            if stored is not None and claimed > 2 * stored + (1 << 20):  # the index is stored uncompressed
                raise self.damaged(f"{key} claims {shape[0]} rows ({claimed} bytes) but holds {stored} bytes")
            shapes[key] = shape
        rows = {k: v[0] for k, v in shapes.items()}
        num = self.attrs.get("num_clips")
        if len(set(rows.values())) != 1 or (isinstance(num, int) and num != rows[L.CLIPS_ID]):
            said = f", the root attrs say {num}" if isinstance(num, int) else ""
            raise self.damaged("the clip index arrays disagree on the number of clips ("
                                + ", ".join(f"{k} {r}" for k, r in rows.items()) + said + ")")

    def _protocol(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The store's class and fold names; a version 1 store is DFEW's 7 classes and 5 folds."""
        a = self.attrs
        classes = tuple(str(c) for c in a.get("class_names") or ())
        folds = tuple(str(f) for f in a.get("fold_names") or ())
        if self._votes.ndim != 2 or self._folds.ndim != 2 or len(self._votes) != self.n or len(self._folds) != self.n:
            raise FerError(f"{self.path} is damaged: clips/votes {self._votes.shape} "
                           f"and clips/fold {self._folds.shape} "
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
                raise self.damaged(problems[0], spec)
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
                problems.append(f"{name} has chunks {tuple(a.chunks or ())}, expected {chunks} "
                                "(writers could share a chunk)")
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
        return read_set(self._b, spec, attrs, self._ids, rows, functools.partial(self.damaged, spec=spec))

    def read_masks(self, spec: str) -> tuple[np.ndarray, np.ndarray]:
        """(mask (N, T) bool, done (N,) bool) of a feature set without its data (small: a reader that streams
        the data keeps these in memory)."""
        self.require(spec)
        mask = np.asarray(self._b.array(L.mask_key(spec))[:], dtype=bool)
        return mask, np.asarray(self._b.array(L.done_key(spec))[:], dtype=bool)

    def span_reader(self, spec: str) -> SpanReader:
        """Reads row spans [start, stop) of one feature set (data and mask), its arrays resolved once."""
        cr = self.set_attrs(spec)["chunk_rows"]
        return SpanReader(self._b, spec, cr, self._ids, functools.partial(self.damaged, spec=spec))

    def writer(self, spec: str, *, row_shape: tuple[int, ...] | None = None, attrs: dict | None = None,
               dtype: str = "float16", shard: tuple[int, int] = (0, 1), chunk_bytes: int | None = None,
               compressor: str | None = None) -> FeatureWriter:
        """A FeatureWriter for ``spec``, creating the feature set when missing (see STORE_API.md)."""
        return open_writer(self, spec, row_shape=row_shape, attrs=attrs, dtype=dtype, shard=shard,
                           chunk_bytes=chunk_bytes, compressor=compressor)

    def remove(self, spec: str) -> None:
        """Delete a feature set (refused while a writer holds any of its chunks)."""
        if self.mode == "r":
            raise FerError(f"{self.path} is open read-only; open it with mode='r+' to remove a feature set")
        self.require(spec)  # not set_attrs: a damaged set must stay removable
        chunks = range(L.n_chunks(self.n, self.safe_chunk_rows(spec)))
        locks = self.locks.chunks(spec, chunks, f"cannot remove {spec!r}")
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


def open_backend(path: str | os.PathLike, mode: str) -> Backend:
    """Open (mode 'r' / 'r+') or create-or-open (mode 'a') a store in the format its path names."""
    if format_for(path) == "hdf5":
        return Hdf5Backend(path, mode)
    return ZarrBackend(path, mode)


def open_store(path: str | os.PathLike, mode: str = "r") -> FeatureStore:
    """Open an existing store ('r' or 'r+'); FerError if missing, not a store, or a newer format."""
    if mode not in ("r", "r+"):
        raise FerError(f"mode must be 'r' or 'r+', not {mode!r}")
    local = local_path(path)
    if local is not None and not local.exists():
        raise FerError(no_store(path))
    b = open_backend(path, mode)
    try:
        return FeatureStore(b, path, mode)
    except BaseException:
        b.close()
        raise
