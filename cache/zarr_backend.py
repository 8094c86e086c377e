"""The Zarr v3 backend: a directory on local disk or any fsspec URL (memory://, s3://, ...)."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from fer.cache.backends import ZARR_COMPRESSORS, Backend, RawChunks, bytes_under, local_path, native_order, no_store
from fer.cache.errors import FerEnvError, FerError, env_faults


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
    raise FerError(f"unknown compressor {name!r} for a zarr store; choose one of "
                   f"{', '.join(ZARR_COMPRESSORS)}")


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
            raise FerError(f"{path} is a file, not a zarr store (a folder): check the path, or name an HDF5 "
                           "store *.h5")
        try:
            doing = {"r": "opening the store", "r+": "opening the store for writing",
                     "a": "creating the store"}[mode]
            with env_faults(path, doing):
                self.root = zarr.open_group(target, mode=zmode, zarr_format=3)
        except FileNotFoundError as e:
            raise FerError(no_store(path)) from e
        except (ValueError, TypeError, KeyError) as e:
            if self.local is not None and (self.local / "zarr.json").is_file():
                raise FerEnvError(f"{path} is damaged: its zarr.json cannot be read ({type(e).__name__}); "
                                  "restore the store from a copy, or re-extract into a new store") from e
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
        # Write every chunk, even one equal to the fill value, so a missing chunk always means "never
        # written".
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
        return bytes_under(self.local / key)

    def chunk_exists(self, key: str, chunk: int) -> bool | None:
        if self.local is None:
            return None
        arr = self.root[key]
        ckey = arr.metadata.encode_chunk_key((chunk,) + (0,) * (arr.ndim - 1))
        return (self.local / key / ckey).is_file()

    def read_rows(self, arr, start: int, stop: int, out: np.ndarray) -> None:
        out[...] = arr[start:stop]

    def raw_chunks(self, key: str, arr) -> RawChunks | None:
        """Where each chunk's bytes lie, when chunks are stored uncompressed in native byte order on local
        disk."""
        from zarr.codecs import BytesCodec

        codecs = arr.metadata.codecs
        if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
            return None
        return self._chunk_files(key, arr)

    def coded_chunks(self, key: str, arr) -> tuple[RawChunks, Callable[[bytes], bytes]] | None:
        """(where each chunk file lies, its decoder) for local chunks compressed with zstd alone (the masks),
        which fer.cache.reading decodes itself: the library's per-chunk cost is most of a small array's read."""
        from zarr.codecs import BytesCodec, ZstdCodec

        codecs = arr.metadata.codecs
        if (len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) or not isinstance(codecs[1], ZstdCodec)
                or codecs[1].checksum):
            return None
        files = self._chunk_files(key, arr)
        if files is None:
            return None
        from numcodecs import Zstd

        return files, Zstd(level=codecs[1].level).decode

    def _chunk_files(self, key: str, arr) -> RawChunks | None:
        """Chunk files of a local array whose bytes codec is native-order (None elsewhere)."""
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

        md = arr.metadata
        dt = np.dtype(arr.dtype)
        endian = md.codecs[0].endian
        if (self.local is None or not isinstance(md.chunk_key_encoding, DefaultChunkKeyEncoding)
                or not native_order(dt) or (endian is not None and endian.value != sys.byteorder)):
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
