"""How much disk a feature set of per-frame arrays will take, said before extracting it, and refused when the
disk cannot hold it (a ViT's tokens at block K are ~4.8 MB a clip for ViT-B/16 at 16 frames: DFEW is tens
of GB)."""

from __future__ import annotations

import math
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from fer.cache.errors import FerEnvError
from fer.cache.report import human_bytes

STORED_ITEMSIZE = 2
"""Bytes per stored value (float16)."""


def set_bytes(rows: int, row_shape: tuple[int, ...]) -> int:
    """Bytes of ``rows`` rows of float16 data and their mask, as written (before any compression)."""
    return rows * (math.prod(row_shape) * STORED_ITEMSIZE + row_shape[0])


def free_bytes(store_path: str | Path) -> int | None:
    """Free bytes on the disk that holds (or will hold) ``store_path``; None for a remote store (fsspec
    URL)."""
    if "://" in str(store_path):
        return None
    p = Path(store_path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_room(
    store_path: str | Path,
    spec: str,
    row_shape: tuple[int, ...],
    rows: int,
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    """Say what ``rows`` rows of ``spec`` will take; FerEnvError (one line) when the disk has less free.
    Returns the bytes needed."""
    need = set_bytes(rows, row_shape)
    free = free_bytes(store_path)
    where = f"{human_bytes(free)} free there" if free is not None else "a remote store"
    say(
        f"{spec}: {rows} clips x {tuple(row_shape)} float16 = about {human_bytes(need)} to write "
        f"(uncompressed); {where}"
    )
    if free is not None and need > free:
        raise FerEnvError(
            f"not enough disk for {spec}: {rows} clips need about {human_bytes(need)} and "
            f"{human_bytes(free)} is free at {store_path}: free space, choose a store on a larger disk "
            "(--store), or store fewer frames per clip (--frames 8)"
        )
    return need
