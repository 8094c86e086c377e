"""The HDF5 backend: a whole store in one file (h5py), attributes kept as one JSON string attribute."""

from __future__ import annotations

import errno
import json
import os
import re
from typing import Any

import numpy as np

from fer.cache.backends import HDF5_COMPRESSORS, Backend, RawChunks, local_path, native_order, no_store
from fer.cache.errors import FORBIDDEN, READ_ONLY, FerEnvError, FerError, env_error, env_faults, errno_of

HDF5_WRITE_MARGIN = 1 << 20
"""Free space an HDF5 write needs beyond its data (metadata: chunk index, heaps, attributes), with room."""
_H5_ATTR = "fer_json"


def _h5_filter(name: str) -> dict[str, Any]:
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    m = re.fullmatch(r"gzip-(\d)", name)
    if m:
        return {"compression": "gzip", "compression_opts": int(m.group(1)), "shuffle": True}
    raise FerError(f"unknown compressor {name!r} for an HDF5 store; choose one of "
                   f"{', '.join(HDF5_COMPRESSORS)}")


class Hdf5Backend(Backend):
    """One HDF5 file (h5py, default file format so no status flags need clearing after a crash).

    Guarantees: one writing process at a time (HDF5's file lock; a second gets FerError). The file is flushed
    after each run of data chunks and again after their `done` flags, so a writer killed between flushes loses
    only unflushed rows, which are not done. HDF5 itself is not crash safe: a kill *during* a flush can leave
    the file unreadable. tests/cache/test_processes.py kills writers mid-run and a 25-kill stress run saw no
    damage, but for preemptible or parallel extraction use Zarr, whose chunk files are written atomically.
    """

    format = "hdf5"

    def __init__(self, path: str | os.PathLike, mode: str) -> None:
        import h5py

        self.local = local_path(path)
        self.location = str(self.local)
        self.readonly = mode == "r"
        if mode == "r" and not self.local.exists():
            raise FerError(no_store(path))
        self._write_failed = False
        if mode == "a" and not self.local.exists():
            with env_faults(path, "creating the store"):
                self.reserve(0)
        try:
            self.f = h5py.File(self.local, {"r": "r", "r+": "r+", "a": "a"}[mode])
        except FileNotFoundError as e:
            raise FerError(no_store(path)) from e
        except OSError as e:
            raise _h5_open_error(e, path, mode) from e

    def _json(self, obj) -> dict:
        raw = obj.attrs.get(_H5_ATTR)
        if raw is None:
            return {}
        if isinstance(raw, bytes):
            raw = raw.decode()
        return json.loads(raw)

    def root_attrs(self) -> dict:
        return self._json(self.f)

    def set_root_attrs(self, attrs: dict) -> None:
        self.f.attrs[_H5_ATTR] = json.dumps(attrs)

    def group_attrs(self, key: str) -> dict:
        return self._json(self.f[key])

    def set_group_attrs(self, key: str, attrs: dict) -> None:
        self.f[key].attrs[_H5_ATTR] = json.dumps(attrs)

    def has(self, key: str) -> bool:
        return key in self.f

    def create_group(self, key: str) -> None:
        self.f.require_group(key)

    def children(self, key: str) -> list[str]:
        import h5py

        grp = self.f if key == "" else self.f.get(key)
        if grp is None:
            return []
        return sorted(k for k, v in grp.items() if isinstance(v, h5py.Group))

    def create_array(self, key, shape, dtype, chunks, fill_value, compressor="none"):
        if key in self.f:
            del self.f[key]
        if 0 in tuple(shape):
            chunks = None  # HDF5 cannot chunk an empty axis (a protocol without folds is (N, 0))
        return self.f.create_dataset(key, shape=shape, dtype=dtype, chunks=chunks, fillvalue=fill_value,
                                     **_h5_filter(compressor))

    def array(self, key: str):
        return self.f[key]

    def delete(self, key: str) -> None:
        if key in self.f:
            del self.f[key]  # HDF5 does not give the space back to the file system (h5repack does)

    def bytes_on_disk(self, key: str) -> int | None:
        import h5py

        obj = self.f[key]
        total = 0
        items = [obj] if isinstance(obj, h5py.Dataset) else [v for v in obj.values()
                                                             if isinstance(v, h5py.Dataset)]
        for ds in items:
            total += ds.id.get_storage_size()
        return total

    def chunk_exists(self, key: str, chunk: int) -> bool | None:
        ds = self.f[key]
        info = ds.id.get_chunk_info_by_coord((chunk * ds.chunks[0],) + (0,) * (ds.ndim - 1))
        return info.byte_offset is not None and info.size > 0

    def read_rows(self, arr, start: int, stop: int, out: np.ndarray) -> None:
        if stop > start:
            arr.read_direct(out, np.s_[start:stop], np.s_[0 : stop - start])

    def raw_chunks(self, key: str, arr) -> RawChunks | None:
        """Chunk addresses in the file, when chunks are stored unfiltered in native byte order."""
        dt = np.dtype(arr.dtype)
        if (arr.chunks is None or self.f.userblock_size != 0 or arr.id.get_create_plist().get_nfilters() != 0
                or not native_order(dt)):
            return None
        fill = np.asarray(arr.fillvalue, dtype=dt)
        path = str(self.local)
        tail = (0,) * (arr.ndim - 1)
        cr = arr.chunks[0]

        def where(c: int) -> tuple[str, int] | None:
            info = arr.id.get_chunk_info_by_coord((c * cr,) + tail)
            return None if info.byte_offset is None else (path, int(info.byte_offset))

        return RawChunks(where=where, fill=fill)

    def coded_chunks(self, key: str, arr) -> None:
        """Compressed chunks are read through h5py (its filters run in C, without per-chunk overhead)."""
        return None

    def flush(self) -> None:
        try:
            self.f.flush()
        except Exception:
            self._write_failed = True
            raise

    def mark_write_failed(self) -> None:
        """A write into the file failed (e.g. no space): close() then drops what HDF5 still holds
        unwritten."""
        self._write_failed = True

    def reserve(self, nbytes: int) -> None:
        """Refuse (OSError ENOSPC) a write the disk cannot take, before HDF5 sees it: HDF5 meets a full disk
        also while releasing objects, where the error is swallowed and the library's state is left broken
        (a later flush crashes the process). Quotas and other writers can still fill the disk between this
        check and the write; close() copes with those."""
        where = self.local.parent if not self.local.exists() else self.local
        try:
            st = os.statvfs(where)
        except OSError:
            return
        free = st.f_bavail * st.f_frsize
        if free < nbytes + HDF5_WRITE_MARGIN:
            need = nbytes + HDF5_WRITE_MARGIN
            raise OSError(errno.ENOSPC, f"{free} bytes free, {need} needed", str(self.local))

    def close(self) -> None:
        """Close the file, deterministically even after a failed write.

        HDF5 cannot close a file whose cached changes it cannot write (no space): h5py then leaves it open
        and the process crashes when it is garbage-collected at exit. So when a write failed, or the last
        flush fails, the file's descriptor is pointed at /dev/null first: HDF5 finishes closing, and the file
        on disk stays as it was after the last write that succeeded (rows not yet marked done are redone on
        resume).
        """
        if not self.f.id.valid:
            return
        if not self.readonly and not self._write_failed:
            try:
                self.f.flush()
            except Exception:
                self._write_failed = True
        if self._write_failed:
            self._abandon_unwritten()
        try:
            self.f.close()
        except Exception:
            pass

    def _abandon_unwritten(self) -> None:
        try:
            fd = self.f.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
        except Exception:
            pass


def _h5_open_error(e: OSError, path: str | os.PathLike, mode: str) -> FerError:
    """The one-line error for an HDF5 file that would not open, by cause."""
    msg = str(e).lower()
    code = errno_of(e)
    if "unable to lock file" in msg or "already open" in msg:
        return FerError(
            f"{path} is open for writing by another process (HDF5 allows one writer and no readers "
            "beside it); wait for it to finish, or use a .zarr store for parallel writers"
        )
    if mode != "r" and code in READ_ONLY + FORBIDDEN:
        why = "it is on a read-only file system" if code in READ_ONLY else "permission denied"
        return FerEnvError(f"{path} cannot be opened for writing ({why}); it can still be read "
                           "(fer cache ls, fer train): to write, copy it somewhere writable, or give another "
                           "--store")
    env = env_error(e, path, "creating the store" if mode == "a" else "opening the store")
    if env is not None:
        return env
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", msg)
    if m:
        return FerEnvError(
            f"{path} is damaged: the file is cut short ({m.group(1)} of {m.group(2)} bytes; a copy that "
            "stopped early or a disk that filled up): copy it again from its source, or re-extract into a new "
            "store"
        )
    return FerError(f"{path} is not a readable HDF5 file ({e}); check the path")
