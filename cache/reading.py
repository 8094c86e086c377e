"""Reading feature sets: a whole set (or chosen rows) in blocks of whole chunks, and row spans for readers
that hold only part of a set at a time. Uncompressed local chunks are read straight from their files (only
the bytes asked for); the rest goes through the format library.

A chunk that cannot be read is reported through the ``damaged`` callback the store passes in (it turns a
one-line description into the store's FerEnvError), so this module needs nothing of the store itself.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fer.cache import layout as L
from fer.cache.backends import Backend, RawChunks, read_raw_chunks, read_raw_rows
from fer.cache.errors import FerEnvError, FerError

READ_BLOCK_BYTES = 32 << 20
"""Whole-set reads go in blocks of whole chunks of about this size."""
READ_THREADS = min(4, os.cpu_count() or 1)
"""Threads decoding blocks of a zarr set in parallel (HDF5 holds a global lock, so it reads in one call);
benchmarks/bench_store.py varies it."""

Damaged = Callable[[str], FerEnvError]
"""Turns what is wrong with a feature set (one line) into the store's error."""
Decode = Callable[[bytes], bytes]
"""A chunk file's bytes to the chunk's raw bytes (a compressor's decode)."""


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """np.empty whose first byte lies on a page boundary.

    Chunk files start on a page boundary in the page cache; copying them into an array that starts a few bytes
    past one (as malloc's large blocks do) meets 4K aliasing on x86: measured 3x slower than np.load, and as
    fast as it once aligned (benchmarks/bench_store.py).
    """
    dt = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = np.empty(nbytes + mmap.PAGESIZE, np.uint8)
    at = (-raw.ctypes.data) % mmap.PAGESIZE
    return raw[at:at + nbytes].view(dt).reshape(shape)


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


class RowSpans:
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
    serialises reads behind h5py's lock. Made by ``FeatureStore.span_reader``.
    """

    def __init__(self, backend: Backend, spec: str, chunk_rows: int, ids: np.ndarray,
                 damaged: Damaged) -> None:
        cr = int(chunk_rows)
        self.spec = spec
        self.n = len(ids)
        self._ids = ids
        self._damaged = damaged
        self._data = RowSpans(backend, L.data_key(spec), cr)
        self._mask = RowSpans(backend, L.mask_key(spec), cr)
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
                raise self._damaged(unreadable(name, span.arr, self._ids, self.chunk_rows, e,
                                               chunk=_failed_chunk(e, start, self.chunk_rows))) from e
            if name == "data":
                data, got = got, None
        return data, None if got is None else got.astype(bool, copy=False)

    def mapped(self, rows: np.ndarray) -> MappedData | None:
        """The data mapped from its chunk files (see MappedData), the chunks of ``rows`` (store rows) in it;
        None where the set's chunks cannot be mapped (read spans instead)."""
        chunks = np.unique(np.asarray(rows, dtype=np.int64) // self.chunk_rows)

        def damaged(c: int, e: Exception) -> FerEnvError:
            return self._damaged(unreadable("data", self._data.arr, self._ids, self.chunk_rows, e, chunk=c))

        return map_data(self._data.raw, (self.n, *self.row_shape), self.dtype, self.chunk_rows, chunks, damaged)


class MappedData:
    """A feature set's data as one read-only array mapped from its uncompressed chunk files (no copy): a
    reader that needs a few frames of each row touches only their pages. Made by ``SpanReader.mapped``.

    Touched pages stay resident (they are the page cache's, shared) until ``release``: a streaming reader drops
    what it has used once it passes its budget, and asks for what it will use next with ``prefetch`` (read
    from disk in the background, not made resident). The array is valid until ``close``.
    """

    FAULT_BYTES = 64 << 10
    """What touching one byte may make resident: Linux maps up to 64 KB of cached pages around a fault."""

    def __init__(self, base: int, nbytes: int, data: np.ndarray, row_bytes: int) -> None:
        self._base, self._nbytes, self.data, self.row_bytes = base, nbytes, data, row_bytes

    def _advise(self, start: int, stop: int, advice: int) -> None:
        lo = start * self.row_bytes // mmap.PAGESIZE * mmap.PAGESIZE
        hi = min(self._nbytes, -(-stop * self.row_bytes // mmap.PAGESIZE) * mmap.PAGESIZE)
        if hi > lo and self._base:
            _LIBC.madvise(ctypes.c_void_p(self._base + lo), ctypes.c_size_t(hi - lo), advice)

    def prefetch(self, start: int, stop: int) -> None:
        """Start reading rows [start, stop) from disk into the page cache (asynchronous; nothing resident)."""
        self._advise(start, stop, mmap.MADV_WILLNEED)

    def release(self, start: int, stop: int) -> None:
        """Drop rows [start, stop) from this process's resident memory (they stay in the page cache)."""
        self._advise(start, stop, mmap.MADV_DONTNEED)

    def close(self) -> None:
        if self._base:
            self.data = np.empty((0,) + self.data.shape[1:], self.data.dtype)
            _LIBC.munmap(ctypes.c_void_p(self._base), ctypes.c_size_t(self._nbytes))
            self._base = 0


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
if _LIBC is not None:
    _LIBC.mmap.restype = ctypes.c_void_p
    _LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_long]
    _LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _LIBC.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_MAP_FIXED = 0x10  # with PROT_NONE (0): not in the mmap module
_HUGE = 2 << 20
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_data(raw: RawChunks | None, shape: tuple[int, ...], dtype: np.dtype, chunk_rows: int,
             chunks: np.ndarray, damaged: Callable[[int, Exception], FerEnvError]) -> MappedData | None:
    """The data of an uncompressed local array mapped as one array, or None where it cannot be (not Linux,
    compressed chunks, or chunks that do not start on a page boundary). Only ``chunks`` are mapped (the
    others must never be touched); a missing or short one raises ``damaged(chunk, error)``."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
    cb = chunk_rows * row_bytes
    if _LIBC is None or raw is None or cb % mmap.PAGESIZE or row_bytes == 0:
        return None
    locs = {int(c): raw.where(int(c)) for c in chunks}
    if any(loc is not None and loc[1] % mmap.PAGESIZE for loc in locs.values()):
        return None
    nbytes = L.n_chunks(shape[0], chunk_rows) * cb
    # one page past a huge-page boundary: the kernel would map a file's 2 MB folios whole (a touched frame
    # making 2 MB resident), and maps 64 KB around a fault instead
    whole = _LIBC.mmap(None, nbytes + _HUGE, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if whole in (None, _MAP_FAILED):
        return None
    base = whole + (mmap.PAGESIZE - whole) % _HUGE
    if base > whole:
        _LIBC.munmap(ctypes.c_void_p(whole), ctypes.c_size_t(base - whole))
    _LIBC.munmap(ctypes.c_void_p(base + nbytes), ctypes.c_size_t(whole + _HUGE - base))
    try:
        for c, loc in locs.items():
            if loc is None:
                raise damaged(c, OSError(f"chunk {c} was never written"))
            path, offset = loc
            if os.path.getsize(path) < offset + cb:  # a short file would fault (SIGBUS) when touched
                raise damaged(c, OSError(f"chunk {c} in {path} is truncated ({os.path.getsize(path) - offset} "
                                         f"of {cb} bytes)"))
            fd = os.open(path, os.O_RDONLY)
            try:
                got = _LIBC.mmap(base + c * cb, cb, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, offset)
            finally:
                os.close(fd)
            if got != base + c * cb:  # out of mappings (vm.max_map_count) or address space: read spans instead
                _LIBC.munmap(ctypes.c_void_p(base), ctypes.c_size_t(nbytes))
                return None
    except BaseException:
        _LIBC.munmap(ctypes.c_void_p(base), ctypes.c_size_t(nbytes))
        raise
    buf = (ctypes.c_char * nbytes).from_address(base)
    data = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)
    data.flags.writeable = False
    return MappedData(base, nbytes, data, row_bytes)


def read_set(backend: Backend, spec: str, attrs: dict, ids: np.ndarray, rows: np.ndarray | None,
             damaged: Damaged) -> FeatureSet:
    """The whole feature set (or the given rows) in one pass, chunk by chunk, never row by row."""
    cr = int(attrs["chunk_rows"])
    keys = {"data": L.data_key(spec), "mask": L.mask_key(spec), "done": L.done_key(spec)}
    arrays = {k: backend.array(key) for k, key in keys.items()}
    if rows is None:
        out = {k: aligned_empty(a.shape, a.dtype) for k, a in arrays.items()}

        def one(k: str) -> None:
            try:
                read_all(backend, keys[k], arrays[k], out[k], cr)
            except (FerError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:
                raise damaged(unreadable(k, arrays[k], ids, cr, e)) from e

        with ThreadPoolExecutor(1) as ex:  # the small arrays (many small chunks) while the data copies
            small = ex.submit(lambda: [one(k) for k in ("mask", "done")])
            one("data")
            small.result()
    else:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and (rows.min() < 0 or rows.max() >= len(ids)):
            raise FerError(f"rows must lie in 0..{len(ids) - 1}")
        out = {k: aligned_empty((len(rows),) + tuple(a.shape[1:]), a.dtype) for k, a in arrays.items()}
        spans = {k: RowSpans(backend, key, cr) for k, key in keys.items()}
        for c, pos in L.group_by_chunk(rows, cr):
            lo, hi = int(rows[pos].min()), int(rows[pos].max()) + 1  # only the span the rows need
            for k, span in spans.items():
                try:
                    out[k][pos] = span.read(lo, hi)[rows[pos] - lo]
                except (FerError, KeyboardInterrupt, MemoryError):
                    raise
                except Exception as e:
                    raise damaged(unreadable(k, arrays[k], ids, cr, e, chunk=c)) from e
        ids = ids[rows]
    return FeatureSet(spec=spec, data=out["data"], mask=out["mask"], done=out["done"], ids=ids, attrs=attrs)


def read_all(backend: Backend, key: str, arr: Any, out: np.ndarray, chunk_rows: int) -> None:
    """Every row of one array into ``out``, in blocks of whole chunks (in threads where that helps)."""
    n = out.shape[0]
    if n == 0:
        return
    raw = backend.raw_chunks(key, arr)
    coded = None if raw is not None else backend.coded_chunks(key, arr)
    nchunks = L.n_chunks(n, chunk_rows)
    row_bytes = max(1, out[:1].nbytes)
    per_block = max(1, READ_BLOCK_BYTES // (row_bytes * chunk_rows))
    blocks = [(c, min(nchunks, c + per_block)) for c in range(0, nchunks, per_block)]
    if raw is not None:
        def job(span):
            a, b = span
            read_raw_chunks(raw, chunk_rows, a, b, n, out[a * chunk_rows : min(n, b * chunk_rows)])
    elif coded is not None:  # compressed local chunks (the masks): decoded here, without the library's per-chunk cost
        def job(span):
            read_coded_chunks(*coded, chunk_rows, span[0], span[1], n, out)
    elif backend.format == "hdf5":  # h5py holds a global lock: threads would only queue
        backend.read_rows(arr, 0, n, out)
        return
    else:
        def job(span):
            a, b = span
            r0, r1 = a * chunk_rows, min(n, b * chunk_rows)
            backend.read_rows(arr, r0, r1, out[r0:r1])
    if len(blocks) == 1 or READ_THREADS == 1:
        for span in blocks:
            job(span)
        return
    with ThreadPoolExecutor(READ_THREADS) as ex:
        list(ex.map(job, blocks))


def read_coded_chunks(raw: RawChunks, decode: Decode, chunk_rows: int, start_chunk: int, stop_chunk: int,
                      n: int, out: np.ndarray) -> None:
    """Chunks [start_chunk, stop_chunk) of a local compressed array into rows of ``out`` (every row of it)."""
    per_chunk = chunk_rows * int(np.prod(out.shape[1:], dtype=np.int64))
    for c in range(start_chunk, stop_chunk):
        a, b = L.chunk_span(c, chunk_rows, n)
        loc = raw.where(c)
        if loc is None:
            out[a:b] = raw.fill
            continue
        with open(loc[0], "rb") as f:
            f.seek(loc[1])
            got = np.frombuffer(decode(f.read()), dtype=out.dtype)
        if got.size != per_chunk:
            raise OSError(f"chunk {c} in {loc[0]} decodes to {got.size} values, not {per_chunk}")
        out[a:b] = got[:(b - a) * (per_chunk // chunk_rows)].reshape((b - a,) + out.shape[1:])


def unreadable(name: str, arr: Any, ids: np.ndarray, cr: int, e: Exception, chunk: int | None = None) -> str:
    """What to tell about a chunk read that failed: finds the first bad chunk (only on this failure path)."""
    n = len(ids)
    if chunk is None:
        for c in range(L.n_chunks(n, cr)):
            a0, b0 = L.chunk_span(c, cr, n)
            try:
                np.asarray(arr[a0:b0])
            except Exception as err:  # noqa: BLE001 - any failure marks the chunk
                chunk, e = c, err
                break
    if chunk is None:
        return f"its {name} cannot be read ({type(e).__name__}: {L.one_line(e, 160)})"
    a0, b0 = L.chunk_span(chunk, cr, n)
    return (f"chunk {chunk} of its {name} (rows {a0}-{b0 - 1}, clips {ids[a0]}..{ids[b0 - 1]}) "
            f"cannot be read ({type(e).__name__}: {L.one_line(e, 160)})")


def _failed_chunk(e: Exception, start: int, chunk_rows: int) -> int:
    """The chunk a raw read names in its error ("chunk 3 in ..."), else the span's first chunk."""
    m = re.match(r"chunk (\d+) in ", str(e))
    return int(m.group(1)) if m else start // chunk_rows
