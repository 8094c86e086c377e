"""What every on-disk format gives the store: the Backend interface, where a store lives, and raw chunk reads.

The formats (one module each): Zarr v3, a directory or fsspec URL (``zarr_backend``), and HDF5, one file
(``hdf5_backend``); ``fer.cache.opening.open_backend`` picks one by the path. Keys are '/'-separated paths
inside the store ("clips/id", "features/<spec>/data"). Attributes are plain JSON dicts on both formats (HDF5
keeps them as one JSON string attribute), so no pickle is ever involved.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HDF5_SUFFIXES = (".h5", ".hdf5")

# Compressor names a feature set may use, per format. HDF5 has only its built-in filters here (blosc/zstd
# would need the hdf5plugin package, which readers of the file would then also need).
ZARR_COMPRESSORS = ("none", "blosc-lz4", "blosc-lz4-bitshuffle", "blosc-zstd-1", "zstd-1", "zstd-3")
HDF5_COMPRESSORS = ("none", "lzf", "gzip-1")

_NATIVE = "<" if sys.byteorder == "little" else ">"


def is_url(path: str | os.PathLike) -> bool:
    return "://" in str(path)


def format_for(path: str | os.PathLike) -> str:
    """'hdf5' for .h5/.hdf5 paths, else 'zarr' (fsspec URLs are always zarr)."""
    s = str(path)
    if not is_url(s) and s.lower().endswith(HDF5_SUFFIXES):
        return "hdf5"
    if s.startswith("file://") and s.lower().endswith(HDF5_SUFFIXES):
        return "hdf5"
    return "zarr"


def local_path(path: str | os.PathLike) -> Path | None:
    """The local filesystem path of a store, or None for a non-local URL (memory://, s3://, ...)."""
    s = str(path)
    if s.startswith("file://"):
        return Path(s[len("file://") :])
    if is_url(s):
        return None
    return Path(s)


def no_store(path: str | os.PathLike) -> str:
    """The message for a store path where there is none."""
    return f"no feature store at {path}: create one with `fer extract` or fer.cache.create_store"


def native_order(dt: np.dtype) -> bool:
    """Whether values of ``dt`` lie in this machine's byte order, so chunk bytes can be read as they are."""
    return dt.itemsize <= 1 or dt.byteorder in ("=", "|", _NATIVE)


@dataclass
class RawChunks:
    """Direct access to uncompressed chunks: ``where(c)`` gives (file, byte offset) or None if never written.

    Reading these straight into the output array (one copy from the page cache, like np.load) is what makes
    whole-set reads as fast as a .npy file; compressed or remote chunks go through the format library.
    """

    where: Callable[[int], tuple[str, int] | None]
    fill: np.ndarray


def read_raw_chunks(raw: RawChunks, chunk_rows: int, start_chunk: int, stop_chunk: int, n: int,
                    out: np.ndarray) -> None:
    """Read chunks [start_chunk, stop_chunk) into ``out`` (C-contiguous, rows start_chunk*chunk_rows...)."""
    read_raw_rows(raw, chunk_rows, start_chunk * chunk_rows, min(n, stop_chunk * chunk_rows), out)


def read_raw_rows(raw: RawChunks, chunk_rows: int, start: int, stop: int, out: np.ndarray) -> None:
    """Read rows [start, stop) into ``out`` (C-contiguous, ``stop - start`` rows): only those rows' bytes.

    Rows lie contiguously inside an uncompressed chunk, so a span that starts or ends mid-chunk costs no more
    than its own bytes (the trainer's streaming reads spans that need not align with every set's chunks).
    """
    if stop <= start:
        return
    flat = memoryview(out.reshape(-1).view(np.uint8))
    row_bytes = out[:1].nbytes
    r = start
    while r < stop:
        c = r // chunk_rows
        end = min(stop, (c + 1) * chunk_rows)
        loc = raw.where(c)
        if loc is None:
            out[r - start : end - start] = raw.fill
        else:
            path, offset = loc
            want = (end - r) * row_bytes
            view = flat[(r - start) * row_bytes : (end - start) * row_bytes]
            at = offset + (r - c * chunk_rows) * row_bytes
            fd = os.open(path, os.O_RDONLY)
            try:
                got = 0
                while got < want:
                    k = os.preadv(fd, [view[got:]], at + got)
                    if k <= 0:
                        raise OSError(f"chunk {c} in {path} is truncated ({got} of {want} bytes)")
                    got += k
            finally:
                os.close(fd)
        r = end


class Backend:
    """What the store needs from a format. Arrays are format-native handles that slice like numpy."""

    format: str
    location: str

    def root_attrs(self) -> dict: ...
    def set_root_attrs(self, attrs: dict) -> None: ...
    def group_attrs(self, key: str) -> dict: ...
    def set_group_attrs(self, key: str, attrs: dict) -> None: ...
    def has(self, key: str) -> bool: ...
    def create_group(self, key: str) -> None: ...
    def children(self, key: str) -> list[str]: ...
    def create_array(self, key: str, shape: tuple, dtype: Any, chunks: tuple, fill_value: Any,
                     compressor: str = "none") -> Any: ...
    def array(self, key: str) -> Any: ...
    def delete(self, key: str) -> None: ...
    def bytes_on_disk(self, key: str) -> int | None: ...
    def chunk_exists(self, key: str, chunk: int) -> bool | None: ...
    def read_rows(self, arr: Any, start: int, stop: int, out: np.ndarray) -> None: ...
    def raw_chunks(self, key: str, arr: Any) -> RawChunks | None: ...
    def coded_chunks(self, key: str, arr: Any) -> tuple[RawChunks, Callable[[bytes], bytes]] | None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def mark_write_failed(self) -> None:
        """Called after a failed write; a format that caches writes drops them at close (see Hdf5Backend)."""

    def reserve(self, nbytes: int) -> None:
        """Before writing about ``nbytes``: OSError(ENOSPC) when the disk cannot take them (HDF5, see there)."""


def bytes_under(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (files that vanish meanwhile count 0)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(dirpath, f)).st_size
            except OSError:
                pass
    return total


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a whole local store (tests and tools)."""
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
