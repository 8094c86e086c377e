"""The store's tree: key names, chunk arithmetic, spec names and the fixed-width UTF-8 string encoding."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from fer.cache.errors import FerError

CLIPS_ID = "clips/id"
CLIPS_VOTES = "clips/votes"
CLIPS_FOLD = "clips/fold"
CLIPS_LABEL = "clips/label"
"""(N,) int16: the dataset's official label of each clip (split file, label column, class folder), -1 where it
names none. Optional: stores made before it existed score every clip by its votes' majority."""
FEATURES = "features"

# Failure reasons are stored per row as fixed-width UTF-8 (no object/pickle codecs), chunked like `done`
# so parallel writers on disjoint chunks never touch the same failure chunk.
FAIL_WIDTH = 240

# Defaults chosen from benchmarks/bench_store.py (DFEW face set, 16,372 x 16 x 512 float16, 2 shared cores; table in
# benchmarks/results/store.md): uncompressed chunks read at ~1x np.load through the direct chunk reader, while
# every compressor tried costs 2.4-7x np.load on reads and saves at most 8% of disk on realistic (incompressible)
# features (zstd: 0.92 of raw; blosc-lz4: 1.00). 4 MB chunks wrote 2-3x faster than 1-2 MB ones (fewer files)
# and read as fast; a row is never split, so chunk_rows = max(1, DEFAULT_CHUNK_BYTES // row_bytes).
DEFAULT_CHUNK_BYTES = 4 << 20
DEFAULT_COMPRESSOR = {"zarr": "none", "hdf5": "none"}

_SPEC_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@,-]*")


def data_key(spec: str) -> str:
    return f"{FEATURES}/{spec}/data"


def mask_key(spec: str) -> str:
    return f"{FEATURES}/{spec}/mask"


def done_key(spec: str) -> str:
    return f"{FEATURES}/{spec}/done"


def failed_key(spec: str) -> str:
    return f"{FEATURES}/{spec}/failed"


def group_key(spec: str) -> str:
    return f"{FEATURES}/{spec}"


def check_spec(spec: str) -> str:
    """A spec is used as a node name as-is, so it stays readable: letters, digits and . _ + = @ , -"""
    if not isinstance(spec, str) or not _SPEC_RE.fullmatch(spec) or len(spec) > 200:
        raise FerError(
            f"invalid feature set spec {spec!r}: use letters, digits and . _ + = @ , - "
            "(e.g. face.resnet18.imagenet.pool.224)"
        )
    return spec


def chunk_rows_for(row_shape: Sequence[int], dtype: np.dtype | str, chunk_bytes: int) -> int:
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return max(1, int(chunk_bytes) // max(1, row_bytes))


def n_chunks(n: int, chunk_rows: int) -> int:
    return -(-n // chunk_rows)


def chunk_span(chunk: int, chunk_rows: int, n: int) -> tuple[int, int]:
    a = chunk * chunk_rows
    return a, min(n, a + chunk_rows)


def owned_chunks(n: int, chunk_rows: int, shard: tuple[int, int]) -> list[int]:
    """The chunks shard (k, n_shards) writes: c % n_shards == k."""
    k, m = shard
    return [c for c in range(n_chunks(n, chunk_rows)) if c % m == k]


def owned_rows(n: int, chunk_rows: int, shard: tuple[int, int]) -> np.ndarray:
    """Row indices of the chunks shard (k, n_shards) owns, ascending."""
    parts = [np.arange(*chunk_span(c, chunk_rows, n), dtype=np.int64) for c in owned_chunks(n, chunk_rows, shard)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def group_by_chunk(rows: np.ndarray, chunk_rows: int) -> Iterable[tuple[int, np.ndarray]]:
    """(chunk, positions into rows) for each chunk the rows touch."""
    chunks = rows // chunk_rows
    order = np.argsort(chunks, kind="stable")
    uniq, starts = np.unique(chunks[order], return_index=True)
    bounds = list(starts[1:]) + [len(rows)]
    for c, s, e in zip(uniq, starts, bounds):
        yield int(c), order[s:e]


def encode_strings(strings: Sequence[str], width: int | None = None) -> np.ndarray:
    """UTF-8 bytes in a zero-padded (N, width) uint8 array; longer strings are cut at a character boundary."""
    raw = [s.encode("utf-8") for s in strings]
    if width is None:
        width = max([len(b) for b in raw] + [1])
    out = np.zeros((len(raw), width), dtype=np.uint8)
    for i, b in enumerate(raw):
        if len(b) > width:
            b = b[:width].decode("utf-8", errors="ignore").encode("utf-8")
        out[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    return out


def decode_strings(arr: np.ndarray) -> np.ndarray:
    """Inverse of encode_strings: a numpy unicode array."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim != 2:
        raise ValueError("expected a 2-d uint8 array")
    as_bytes = arr.view(f"S{arr.shape[1]}").reshape(-1) if arr.shape[1] else np.array([b""] * len(arr))
    return np.array([b.decode("utf-8", errors="replace") for b in as_bytes.tolist()], dtype=str)


def one_line(reason: object, limit: int | None = None) -> str:
    """``reason`` on one line (whitespace folded), cut to ``limit`` characters when given."""
    s = " ".join(str(reason).split())
    return s if limit is None or len(s) <= limit else s[: limit - 3] + "..."
