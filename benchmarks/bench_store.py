"""Feature store benchmark: a DFEW-scale face feature set (16,372 x 16 x 512 float16, 268 MB).

In one run, against np.save / np.load of the same array (.npy, warm page cache):
  - full read into memory through the store API (FeatureStore.read), Zarr and HDF5, per compressor and chunk size
  - write throughput through FeatureWriter.write_rows
  - size on disk
Values are random normal features (they compress about as poorly as real ResNet features do).
Prints a markdown table (ratios to np.load / np.save) and writes it to benchmarks/results/store.md.

usage: python benchmarks/bench_store.py [--rows 16372] [--repeats 3] [--dir /tmp] [--out benchmarks/results/store.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from fer.cache import create_store, open_store, reading
from fer.cache.backends import bytes_under

SPEC = "face.bench"
T, D = 16, 512
MB = 1 << 20


def make_data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, T, D), dtype=np.float16)
    for a in range(0, n, 2048):
        b = min(n, a + 2048)
        out[a:b] = rng.standard_normal((b - a, T, D), dtype=np.float32)
    return out


def best_of(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall seconds of fn() over repeats runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def bench_npy(data: np.ndarray, work: Path, repeats: int) -> dict:
    path = work / "face.npy"
    w, _ = best_of(lambda: np.save(path, data), max(1, repeats - 1))
    np.load(path)  # warm the page cache
    r, r_med = best_of(lambda: np.load(path), repeats)
    size = path.stat().st_size  # kept: every store read below is timed against np.load of it, turn about
    return {"write": w, "read": r, "read_med": r_med, "size": size, "path": path}


def bench_store(data, ids, votes, folds, work: Path, fmt: str, compressor: str, chunk_mb: float, repeats: int,
                threads: int | None = None, npy: Path | None = None) -> dict:
    path = work / ("bench.zarr" if fmt == "zarr" else "bench.h5")
    n = len(data)
    mask = np.ones((n, T), bool)

    def write():
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        with create_store(path, ids, votes, folds) as s:
            with s.writer(SPEC, row_shape=(T, D), attrs={"modality": "face"}, compressor=compressor,
                          chunk_bytes=int(chunk_mb * MB)) as w:
                w.write_rows(np.arange(n), data, mask)

    w, _ = best_of(write, max(1, repeats - 1))
    with open_store(path) as s:
        size = s.info(SPEC)["bytes_on_disk"]
        chunk_rows = s.info(SPEC)["chunk_rows"]
        old = reading.READ_THREADS
        if threads is not None:
            reading.READ_THREADS = threads
        try:
            fs = s.read(SPEC)  # warm
            assert np.array_equal(fs.data, data)
            del fs
            reads, loads = [], []
            for _ in range(repeats):  # np.load and the store's read take turns: the machine's load varies
                loads.append(best_of(lambda: np.load(npy), 1)[0] if npy is not None else float("nan"))
                reads.append(best_of(lambda: s.read(SPEC), 1)[0])
            r, r_med, npy_r = min(reads), statistics.median(reads), min(loads)
        finally:
            reading.READ_THREADS = old
    data_size = bytes_under(path / "features" / SPEC / "data") if fmt == "zarr" else size
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    return {"write": w, "read": r, "read_med": r_med, "size": size, "data_size": data_size, "chunk_rows": chunk_rows,
            "npy_read": npy_r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16372)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="Where to write the files (default: a temp folder).")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "store.md")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fer-bench-", dir=args.dir))
    try:
        n = args.rows
        data = make_data(n)
        ids = [f"{i + 1:05d}" for i in range(n)]
        votes = np.zeros((n, 7), np.float32)
        folds = np.zeros((n, 5), np.int8)
        npy = bench_npy(data, work, args.repeats)
        configs = [  # (format, compressor, chunk MB, read threads or None for the default)
            ("zarr", "none", 1, None), ("zarr", "none", 2, None), ("zarr", "none", 4, None), ("zarr", "none", 8, None),
            ("zarr", "none", 2, 1), ("zarr", "none", 4, 1),
            ("zarr", "blosc-lz4", 1, None), ("zarr", "blosc-lz4", 2, None), ("zarr", "blosc-lz4", 4, None),
            ("zarr", "blosc-lz4-bitshuffle", 2, None), ("zarr", "blosc-zstd-1", 2, None),
            ("zarr", "zstd-1", 2, None), ("zarr", "zstd-3", 2, None),
            ("hdf5", "none", 2, None), ("hdf5", "none", 4, None), ("hdf5", "lzf", 2, None), ("hdf5", "gzip-1", 2, None),
        ]
        rows = []
        for fmt, comp, cmb, thr in configs:
            res = bench_store(data, ids, votes, folds, work, fmt, comp, cmb, args.repeats, thr, npy["path"])
            rows.append((fmt, comp, cmb, thr, res))
            print(f"{fmt:5s} {comp:21s} {cmb:>2} MB thr={thr}: read {res['read']:.3f}s (np.load "
                  f"{res['npy_read']:.3f}s) write {res['write']:.3f}s size {res['size'] / MB:.1f} MB", flush=True)
        gb = data.nbytes / 1e9
        lines = [
            f"# Feature store benchmark: {n} x {T} x {D} float16 ({data.nbytes / MB:.0f} MiB), random normal values",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), "
            f"best of {args.repeats} reads (warm page cache), best of {max(1, args.repeats - 1)} writes; "
            f"load average {os.getloadavg()[0]:.1f} at the end. Each store read is timed in turn with np.load of the "
            "same array, and its ratio is to those np.load times (the best of each).",
            f"np.load: {npy['read']:.3f} s ({gb / npy['read']:.2f} GB/s); np.save: {npy['write']:.3f} s "
            f"({gb / npy['write']:.2f} GB/s).",
            "",
            "| format | compressor | chunk | rows/chunk | read s | read / np.load | write s | write / np.save | "
            "write GB/s | size MiB | size / raw |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| npy | none | - | - | {npy['read']:.3f} | 1.00 | {npy['write']:.3f} | 1.00 | {gb / npy['write']:.2f} | "
            f"{npy['size'] / MB:.1f} | 1.00 |",
        ]
        for fmt, comp, cmb, thr, r in rows:
            chunk = f"{cmb} MB" + ("" if thr is None else f", {thr} read thread")
            lines.append(
                f"| {fmt} | {comp} | {chunk} | {r['chunk_rows']} | {r['read']:.3f} | {r['read'] / r['npy_read']:.2f} | "
                f"{r['write']:.3f} | {r['write'] / npy['write']:.2f} | {gb / r['write']:.2f} | {r['size'] / MB:.1f} | "
                f"{r['size'] / data.nbytes:.3f} |"
            )
        table = "\n".join(lines) + "\n"
        print()
        print(table)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
