"""The two on-disk formats behind one small interface: Zarr v3 (directory or fsspec URL) and HDF5 (one file).

Keys are '/'-separated paths inside the store ("clips/id", "features/<spec>/data"). Attributes are plain
JSON dicts on both formats (HDF5 keeps them as one JSON string attribute), so no pickle is ever involved.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer.cache.errors import FORBIDDEN, READ_ONLY, FerEnvError, FerError, env_error, env_faults, errno_of

HDF5_SUFFIXES = (".h5", ".hdf5")
HDF5_WRITE_MARGIN = 1 << 20
"""Free space an HDF5 write needs beyond its data (metadata: chunk index, heaps, attributes), with room."""
_H5_ATTR = "fer_json"

# Compressor names a feature set may use, per format. HDF5 has only its built-in filters here (blosc/zstd
# would need the hdf5plugin package, which readers of the file would then also need).
ZARR_COMPRESSORS = ("none", "blosc-lz4", "blosc-lz4-bitshuffle", "blosc-zstd-1", "zstd-1", "zstd-3")
HDF5_COMPRESSORS = ("none", "lzf", "gzip-1")


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


def _zarr_codecs(name: str) -> Any:
    import zarr.codecs as zc

    if name == "none":
        return None
    if name == "blosc-lz4":
        return zc.BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    if name == "blosc-lz4-bitshuffle":
        return zc.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")
    if name == "blosc-zstd-1":
        return zc.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    m = re.fullmatch(r"zstd-(\d+)", name)
    if m:
        return zc.ZstdCodec(level=int(m.group(1)))
    raise FerError(f"unknown compressor {name!r} for a zarr store; choose one of {', '.join(ZARR_COMPRESSORS)}")


def _h5_filter(name: str) -> dict[str, Any]:
    if name == "none":
        return {}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    m = re.fullmatch(r"gzip-(\d)", name)
    if m:
        return {"compression": "gzip", "compression_opts": int(m.group(1)), "shuffle": True}
    raise FerError(f"unknown compressor {name!r} for an HDF5 store; choose one of {', '.join(HDF5_COMPRESSORS)}")


_NATIVE = "<" if sys.byteorder == "little" else ">"
_NATIVE_NAME = sys.byteorder


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
    def flush(self) -> None: ...
    def close(self) -> None: ...

    def mark_write_failed(self) -> None:
        """Called after a failed write; a format that caches writes drops them at close (see Hdf5Backend)."""

    def reserve(self, nbytes: int) -> None:
        """Before writing about ``nbytes``: OSError(ENOSPC) when the disk cannot take them (HDF5, see there)."""


class ZarrBackend(Backend):
    format = "zarr"

    def __init__(self, path: str | os.PathLike, mode: str) -> None:
        import zarr

        self.location = str(path)
        self.local = local_path(path)
        self.readonly = mode == "r"
        target: Any = str(self.local) if self.local is not None else str(path)
        zmode = {"r": "r", "r+": "r+", "a": "a"}[mode]
        if self.local is not None and self.local.exists() and not self.local.is_dir():
            raise FerError(f"{path} is a file, not a zarr store (a folder): check the path, or name an HDF5 store *.h5")
        try:
            with env_faults(path, {"r": "opening the store", "r+": "opening the store for writing", "a": "creating the store"}[mode]):
                self.root = zarr.open_group(target, mode=zmode, zarr_format=3)
        except FileNotFoundError as e:
            raise FerError(f"no feature store at {path}: create one with `fer extract` or fer.cache.create_store") from e
        except (ValueError, TypeError, KeyError) as e:
            if self.local is not None and (self.local / "zarr.json").is_file():
                raise FerEnvError(f"{path} is damaged: its zarr.json cannot be read ({type(e).__name__}); restore the "
                                  "store from a copy, or re-extract into a new store") from e
            raise FerError(f"{path} is not a readable zarr v3 store ({e}); check the path") from e

    # attrs ---------------------------------------------------------------
    def root_attrs(self) -> dict:
        return dict(self.root.attrs.asdict())

    def set_root_attrs(self, attrs: dict) -> None:
        self.root.attrs.put(attrs)

    def group_attrs(self, key: str) -> dict:
        return dict(self.root[key].attrs.asdict())

    def set_group_attrs(self, key: str, attrs: dict) -> None:
        self.root[key].attrs.put(attrs)

    # tree ----------------------------------------------------------------
    def has(self, key: str) -> bool:
        try:
            self.root[key]
        except KeyError:
            return False
        return True

    def create_group(self, key: str) -> None:
        self.root.require_group(key)

    def children(self, key: str) -> list[str]:
        if key == "":
            return sorted(self.root.group_keys())
        if not self.has(key):
            return []
        return sorted(self.root[key].group_keys())

    def create_array(self, key, shape, dtype, chunks, fill_value, compressor="none"):
        parent, _, name = key.rpartition("/")
        grp = self.root.require_group(parent) if parent else self.root
        codec = _zarr_codecs(compressor)
        arr = grp.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, fill_value=fill_value,
            compressors=None if codec is None else [codec], overwrite=True,
        )
        return arr.with_config({"write_empty_chunks": True})

    def array(self, key: str):
        # Write every chunk, even one equal to the fill value, so a missing chunk always means "never written".
        return self.root[key].with_config({"write_empty_chunks": True})

    def delete(self, key: str) -> None:
        parent, _, name = key.rpartition("/")
        grp = self.root[parent] if parent else self.root
        if name in grp:
            del grp[name]
        if self.local is not None and (self.local / key).is_dir():  # a folder left without its zarr.json
            shutil.rmtree(self.local / key)

    def bytes_on_disk(self, key: str) -> int | None:
        if self.local is None:
            return None
        return _du(self.local / key)

    def chunk_exists(self, key: str, chunk: int) -> bool | None:
        if self.local is None:
            return None
        arr = self.root[key]
        ckey = arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))
        return (self.local / key / ckey).is_file()

    def read_rows(self, arr, start: int, stop: int, out: np.ndarray) -> None:
        out[...] = arr[start:stop]

    def raw_chunks(self, key: str, arr) -> RawChunks | None:
        """Where each chunk's bytes lie, when chunks are stored uncompressed in native byte order on local disk."""
        from zarr.codecs import BytesCodec
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

        md = arr.metadata
        codecs = md.codecs
        dt = np.dtype(arr.dtype)
        if (self.local is None or len(codecs) != 1 or not isinstance(codecs[0], BytesCodec)
                or not isinstance(md.chunk_key_encoding, DefaultChunkKeyEncoding)
                or (dt.itemsize > 1 and dt.byteorder not in ("=", "|") and dt.byteorder != _NATIVE)
                or (codecs[0].endian is not None and codecs[0].endian.value != _NATIVE_NAME)):
            return None
        base = self.local / key
        tail = (0,) * (arr.ndim - 1)
        fill = np.asarray(md.fill_value, dtype=dt) if md.fill_value is not None else np.zeros((), dt)

        def where(c: int) -> tuple[str, int] | None:
            p = base / md.encode_chunk_key((c,) + tail)
            return (str(p), 0) if p.is_file() else None

        return RawChunks(where=where, fill=fill)

    def flush(self) -> None:
        pass  # every zarr chunk write is a whole file, written to a temp name and renamed into place

    def close(self) -> None:
        pass


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
            raise FerError(f"no feature store at {path}: create one with `fer extract` or fer.cache.create_store")
        self._write_failed = False
        if mode == "a" and not self.local.exists():
            with env_faults(path, "creating the store"):
                self.reserve(0)
        try:
            self.f = h5py.File(self.local, {"r": "r", "r+": "r+", "a": "a"}[mode])
        except FileNotFoundError as e:
            raise FerError(f"no feature store at {path}: create one with `fer extract` or fer.cache.create_store") from e
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
        items = [obj] if isinstance(obj, h5py.Dataset) else [v for v in obj.values() if isinstance(v, h5py.Dataset)]
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
                or (dt.itemsize > 1 and dt.byteorder not in ("=", "|") and dt.byteorder != _NATIVE)):
            return None
        fill = np.asarray(arr.fillvalue, dtype=dt)
        path = str(self.local)
        tail = (0,) * (arr.ndim - 1)
        cr = arr.chunks[0]

        def where(c: int) -> tuple[str, int] | None:
            info = arr.id.get_chunk_info_by_coord((c * cr,) + tail)
            return None if info.byte_offset is None else (path, int(info.byte_offset))

        return RawChunks(where=where, fill=fill)

    def flush(self) -> None:
        try:
            self.f.flush()
        except Exception:
            self._write_failed = True
            raise

    def mark_write_failed(self) -> None:
        """A write into the file failed (e.g. no space): close() then drops what HDF5 still holds unwritten."""
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
            raise OSError(errno.ENOSPC, f"{free} bytes free, {nbytes + HDF5_WRITE_MARGIN} needed", str(self.local))

    def close(self) -> None:
        """Close the file, deterministically even after a failed write.

        HDF5 cannot close a file whose cached changes it cannot write (no space): h5py then leaves it open and
        the process crashes when it is garbage-collected at exit. So when a write failed, or the last flush
        fails, the file's descriptor is pointed at /dev/null first: HDF5 finishes closing, and the file on disk
        stays as it was after the last write that succeeded (rows not yet marked done are redone on resume).
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
        return FerEnvError(f"{path} cannot be opened for writing ({why}); it can still be read (fer cache ls, "
                           "fer train): to write, copy it somewhere writable, or give another --store")
    env = env_error(e, path, "creating the store" if mode == "a" else "opening the store")
    if env is not None:
        return env
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", msg)
    if m:
        return FerEnvError(
            f"{path} is damaged: the file is cut short ({m.group(1)} of {m.group(2)} bytes; a copy that stopped early or "
            "a disk that filled up): copy it again from its source, or re-extract into a new store"
        )
    return FerError(f"{path} is not a readable HDF5 file ({e}); check the path")


def _du(path: Path) -> int:
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


def open_backend(path: str | os.PathLike, mode: str) -> Backend:
    """Open (mode 'r' / 'r+') or create-or-open (mode 'a') a store in the format its path names."""
    if format_for(path) == "hdf5":
        return Hdf5Backend(path, mode)
    return ZarrBackend(path, mode)


def remove_tree(path: str | os.PathLike) -> None:
    """Delete a whole local store (tests and tools)."""
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()
