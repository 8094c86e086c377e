"""The extraction runner: every owned, not-yet-done clip of a dataset through one extractor, into the store.

Decoding runs in DataLoader workers (``extractor.load``) while the main process runs the model
(``extractor.embed``) and a background thread writes finished chunks, so decode, compute and I/O
overlap. One bad clip never stops the run: its one-line reason is recorded in the store and the
row stays not-done, so a rerun retries exactly the failed and unfinished rows.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fer.cache import layout as L
from fer.cache.backends import local_path
from fer.cache.errors import FerEnvError, FerError, env_faults
from fer.cache.layout import one_line as _one_line
from fer.extract.extractor import ClipError, Extractor
from fer.extract.datasets.common import vote_conflicts
from fer.extract.datasets.records import ClipRecord, Dataset

MAX_PENDING_WRITES = 3
"""Chunk writes queued behind the writer thread before the main loop waits (bounds memory)."""


# ---------------------------------------------------------------- shards
def parse_shard(text: str) -> tuple[int, int]:
    """``"k/n"`` with 1-based k (``1/2``, ``2/2``) -> 0-based ``(k-1, n)``; FerError when malformed."""
    try:
        k_s, n_s = text.split("/")
        k, n = int(k_s), int(n_s)
    except ValueError:
        raise FerError(f"--shard {text!r} is not k/n (e.g. 1/2 for the first of two shards)") from None
    if n < 1 or not 1 <= k <= n:
        raise FerError(f"--shard {text}: k must be between 1 and n (1-based), e.g. 1/{max(n, 2)} .. {max(n, 2)}/{max(n, 2)}")
    return k - 1, n


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """A 0-based ``(k, n)`` as given to the runners; FerError unless 0 <= k < n."""
    k, n = shard
    if n < 1 or not 0 <= k < n:
        raise FerError(f"shard {k}/{n} is invalid: need 0 <= k < n")
    return k, n


def shard_from_env() -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` under torchrun (or any launcher setting both), else None."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        r, w = int(rank), int(world)
    except ValueError:
        raise FerError(f"RANK={rank!r} / WORLD_SIZE={world!r} are not integers") from None
    if w < 1 or not 0 <= r < w:
        raise FerError(f"RANK={r} is outside WORLD_SIZE={w}")
    return r, w


# ---------------------------------------------------------------- defaults
STORE_SUFFIX = {"zarr": ".zarr", "h5": ".h5"}


def default_store_path(root: str | Path, fmt: str | None = None) -> Path:
    """``./<root name>.zarr`` (or ``.h5``) in the current folder: the dataset folder may be read-only
    or shared, so the store is never written inside it unless asked with ``--store``."""
    fmt = (fmt or "zarr").lower()
    if fmt not in STORE_SUFFIX:
        raise FerError(f"unknown --format {fmt!r}; choose zarr or h5")
    root = Path(root)
    name = (root.stem if root.suffix.lower() == ".csv" else root.resolve().name) or "features"
    return Path.cwd() / f"{name}{STORE_SUFFIX[fmt]}"


def check_store_format(store: str | Path, fmt: str | None) -> None:
    """``--store x.zarr --format h5`` disagree: say so instead of silently picking one."""
    if fmt is None:
        return
    if fmt.lower() not in STORE_SUFFIX:
        raise FerError(f"unknown --format {fmt!r}; choose zarr or h5")
    s = str(store).rstrip("/").lower()
    is_h5 = s.endswith((".h5", ".hdf5"))
    if (fmt.lower() == "h5") != is_h5:
        raise FerError(f"--store {store} does not match --format {fmt}; name an HDF5 store *.h5 and a Zarr store *.zarr")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask: what a cluster scheduler or taskset gave it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_workers(device: torch.device | None = None) -> int:
    """Decoding workers for this process: its share of the usable cores (divided among the LOCAL_WORLD_SIZE
    processes torchrun starts on this machine), less one for the model, at least 1 and at most 8.

    A model on the CPU with at most 2 cores to itself gets none: its threads use every core, and a decoding
    process beside them only oversubscribes them (benchmarks/results/backbones.md: HuBERT-base and WavLM-base+
    ran at 0.82x / 0.79x the bare model with one worker, 0.95x / 0.98x decoding in the main process).
    """
    try:
        local_world = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        raise FerError(f"LOCAL_WORLD_SIZE={os.environ['LOCAL_WORLD_SIZE']!r} is not an integer") from None
    share = usable_cores() // local_world
    if device is not None and torch.device(device).type == "cpu" and share <= 2:
        return 0
    return max(1, min(8, share - 1))


def worker_start_method(device: torch.device) -> str:
    """How decoding workers start. On CPU under Linux: fork (fast, nothing to pickle); with a CUDA model in
    this process: forkserver (or spawn), which never copies a CUDA context into a child; elsewhere the
    platform's safe default, spawn. Either way workers receive only ``extractor.loader()``, which holds no model."""
    methods = multiprocessing.get_all_start_methods()
    if device.type == "cpu" and "fork" in methods and sys.platform.startswith("linux"):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def check_store_outside(store_path: str | Path, root: str | Path) -> None:
    """FerError when the store would be written inside the dataset folder (fer never writes into a dataset)."""
    local = local_path(store_path)
    root = Path(root)
    if local is None or not root.is_dir():
        return
    store, data = local.expanduser().resolve(), root.expanduser().resolve()
    if store == data or data in store.parents:
        raise FerError(f"--store {store_path} lies inside the dataset folder {root}; fer never writes into a dataset: "
                       "put the store elsewhere (leave --store out for ./<dataset name>.zarr in the current folder)")


# ---------------------------------------------------------------- summary
@dataclass(kw_only=True)
class RunSummary:
    """The counts every per-clip run keeps (fer extract, fer data faces); subclasses add what they wrote."""

    shard: tuple[int, int] = (0, 1)
    """0-based (k, n)."""
    owned: int = 0
    """Rows (clips) this shard owns."""
    skipped: int = 0
    """Rows already done before this run."""
    todo: int = 0
    """Rows this run tried (after --limit)."""
    done: int = 0
    """Rows written by this run."""
    failed: dict[str, str] = field(default_factory=dict)
    """clip id -> one-line reason, for rows that failed in this run."""
    seconds: float = 0.0
    """Wall time of the loop (after the model is loaded)."""
    wait_s: float = 0.0
    """Time the main loop waited for decoded clips (decoding not hidden behind compute)."""
    model_s: float = 0.0
    """Time in the model (for faces: detection, tracking and alignment)."""
    interrupted: bool = False
    """Stopped by Ctrl-C / SIGTERM; finished rows were flushed."""

    @property
    def clips_per_s(self) -> float:
        n = self.done + len(self.failed)
        return n / self.seconds if self.seconds > 0 else 0.0

    def _where(self, what: str) -> str:
        k, n = self.shard
        return what + (f" (shard {k + 1}/{n})" if n > 1 else "")

    def _counts(self, rate: str) -> str:
        """The 'done, skipped, failed, left' line; ``rate`` (e.g. '1.2 clips/s') is added when this run tried rows."""
        return (f"done {self.done}, skipped {self.skipped} (already done), failed {len(self.failed)}, "
                f"left {max(self.owned - self.skipped - self.done, 0)}"
                + (f"; {rate} over {self.seconds:.1f} s" if self.todo else ""))


@dataclass(kw_only=True)
class ExtractSummary(RunSummary):
    """What one ``fer extract`` run did; ``str()`` gives the closing lines the CLI prints."""

    spec: str
    """The feature set written."""
    store: str
    """Store path."""
    row_info: dict[str, str] = field(default_factory=dict)
    """clip id -> note on how the clip was read (e.g. frames repeated)."""
    workers: int = 0
    """Decoding workers used (0: the main process decoded)."""
    load_s: float = 0.0
    """Time spent decoding clips, summed over workers (CPU seconds of ``load``)."""
    write_s: float = 0.0
    """Time the writer thread spent writing (overlaps compute)."""
    source: str = ""
    """The dataset as read: its root, layout, clips, classes and folds."""

    def __str__(self) -> str:
        lines = [self.source] if self.source else []
        lines += [self._where(f"feature set {self.spec} in {self.store}"), self._counts(f"{self.clips_per_s:.2f} clips/s")]
        if self.todo and self.seconds > 0:
            lines.append(
                f"time: model {self.model_s:.1f} s, waiting for decode {self.wait_s:.1f} s, "
                f"decoding {self.load_s:.1f} s "
                + (f"in {self.workers} worker(s)" if self.workers else "in the main process")
                + f", writing {self.write_s:.1f} s in background"
            )
        if self.row_info:  # e.g. frames sampled to the cap, or read from the video: said, not only stored
            cid, note = next(iter(self.row_info.items()))
            lines.append(f"noted how {len(self.row_info)} clip{'s were' if len(self.row_info) > 1 else ' was'} read, "
                         f"e.g. {cid}: {note} (every note: `fer cache info` row_info)")
        lines += failure_lines(self.failed, "in the store: `fer cache info`")
        return "\n".join(lines)


def failure_lines(failed: dict[str, str], where: str, shown: int = 5) -> list[str]:
    """The closing lines on failed clips: the first few reasons, where the rest are, how to retry."""
    lines = [f"  failed {cid}: {reason}" for cid, reason in list(failed.items())[:shown]]
    if len(failed) > shown:
        lines.append(f"  ... and {len(failed) - shown} more (all reasons are {where})")
    if failed:
        lines.append("rerun the same command to retry the failed clips only")
    return lines


# ---------------------------------------------------------------- loading in workers
@dataclass
class _Loaded:
    row: int
    clip_id: str
    item: Any = None
    reason: str | None = None
    unexpected: bool = False
    load_s: float = 0.0
    shm_full: bool = False
    """The worker could not put this clip into shared memory (/dev/shm is full)."""

    def pin_memory(self) -> "_Loaded":
        """Called by the DataLoader's pin thread on CUDA: pin the tensors inside the loaded item so
        ``embed`` can copy them with ``non_blocking=True``."""
        if self.item is not None:
            from torch.utils.data._utils.pin_memory import pin_memory

            self.item = pin_memory(self.item)
        return self


def one_line(text: object) -> str:
    """A clip's failure reason as the summary prints and the store keeps it."""
    return _one_line(text, limit=300)


class _ClipLoads(TorchDataset):
    """Calls ``loader.load`` per clip, turning any error into a failure item. ``loader`` is the extractor itself
    when decoding in the main process, else ``extractor.loader()`` (no model)."""

    def __init__(self, loader: Extractor, records: list[ClipRecord], rows: np.ndarray):
        self.loader, self.records, self.rows = loader, records, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> _Loaded:
        row = int(self.rows[i])
        rec = self.records[row]
        t0 = time.perf_counter()
        try:
            item = self.loader.load(rec)
        except ClipError as e:
            return _Loaded(row, rec.clip_id, reason=one_line(e), load_s=time.perf_counter() - t0)
        except Exception as e:  # one bad clip must not stop the run; a bug is caught on the first batch
            return _Loaded(row, rec.clip_id, reason=one_line(f"{type(e).__name__}: {e}"), unexpected=True,
                           load_s=time.perf_counter() - t0)
        if torch.utils.data.get_worker_info() is not None:
            try:
                _to_shared_memory(item)
            except RuntimeError as e:
                if not _is_shm_fault(e):
                    raise
                return _Loaded(row, rec.clip_id, reason=one_line(e), shm_full=True)
        return _Loaded(row, rec.clip_id, item, load_s=time.perf_counter() - t0)


def _to_shared_memory(item: Any) -> None:
    """Move the tensors of a loaded item into shared memory here, in the worker. The DataLoader would do it
    while sending the item, in a thread where running out of /dev/shm loses the item and hangs the run;
    here it raises, and the run stops with a message instead."""
    if isinstance(item, torch.Tensor):
        item.share_memory_()
    elif isinstance(item, (list, tuple)):
        for x in item:
            _to_shared_memory(x)
    elif isinstance(item, dict):
        for x in item.values():
            _to_shared_memory(x)


def _is_shm_fault(e: BaseException) -> bool:
    msg = str(e).lower()
    return "shared memory" in msg or "bus error" in msg or ("/torch_" in msg and "no space" in msg)


def shm_error(workers: int, reason: object) -> FerEnvError:
    """The one-line error for decoding workers that ran out of shared memory."""
    free = ""
    with contextlib.suppress(OSError):
        u = shutil.disk_usage("/dev/shm")
        free = f" ({u.free / 1e6:.1f} MB free of {u.total / 1e6:.1f} MB)"
    fewer = f"fewer workers (--workers {workers // 2}, or --workers 0" if workers > 1 else "no workers (--workers 0"
    return FerEnvError(
        f"the {workers} decoding worker(s) ran out of shared memory in /dev/shm{free}: {_one_line(reason, 160)}; use "
        f"{fewer} to decode in the main process) or a smaller --batch-size, or give the machine more shared memory "
        "(docker run --shm-size=2g); then rerun the same command to resume"
    )


def _collate_list(batch: list[_Loaded]) -> list[_Loaded]:
    return batch


# ---------------------------------------------------------------- store access
@contextlib.contextmanager
def _dir_lock(store_path: str | Path) -> Iterator[None]:
    """Serialise store / feature-set creation between processes started together (shards)."""
    s = str(store_path)
    if "://" in s and not s.startswith("file://"):
        yield
        return
    parent = Path(s.removeprefix("file://")).expanduser().resolve().parent
    made = not parent.exists()
    with env_faults(parent, "creating the store's folder"):
        parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # some network filesystems refuse locks on folders; the store locks its own files
            pass
        yield
    except BaseException:
        if made:  # leave no empty folder behind when the store could not be made in it
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (cluster preemption, ``kill``) stops like Ctrl-C: flush finished rows, then exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def describe(dataset: Dataset) -> str:
    """One line naming the dataset as read: root, layout, clips, classes, folds."""
    folds = len(dataset.fold_names)
    return (f"dataset {dataset.root} ({dataset.kind} layout): {len(dataset.records)} clips, "
            f"{len(dataset.class_names)} classes, {folds} fold{'s' if folds != 1 else ''}")


# ---------------------------------------------------------------- the run
def run_extraction(
    dataset: Dataset,
    extractor: Extractor,
    store_path: str | Path,
    *,
    batch_size: int = 8,
    workers: int = 2,
    shard: tuple[int, int] = (0, 1),
    limit: int | None = None,
    progress: bool = True,
    command: str | None = None,
    chunk_bytes: int | None = None,
    start_method: str | None = None,
) -> ExtractSummary:
    """Extract every row this shard owns that is not done yet; returns what happened.

    ``shard`` is 0-based ``(k, n)``: this process owns the store chunks ``c`` with ``c % n == k``.
    ``limit`` caps the rows tried in this call. ``command`` (the command line) goes into provenance.
    ``chunk_bytes`` sets the chunk size when the feature set is created (store default otherwise).
    ``start_method`` starts the decoding workers (default: worker_start_method for the extractor's device).
    A store inside the dataset folder is refused. When every row this shard owns is already done, the store is
    only read (no lock file, no write), so a finished set on a read-only store is a no-op.
    Failed clips are recorded in the store with their reasons and left not-done. Ctrl-C / SIGTERM
    flush every finished row and return with ``interrupted=True``.
    """
    from fer.cache import create_store

    if batch_size < 1:
        raise FerError(f"--batch-size must be >= 1, got {batch_size}")
    if workers < 0:
        raise FerError(f"--workers must be >= 0, got {workers}")
    if limit is not None and limit < 1:
        raise FerError(f"--limit must be >= 1, got {limit}")
    k, n = check_shard(shard)
    if not dataset.records:
        raise FerError(f"{dataset.root} lists no clips; nothing to extract")
    if not dataset.class_names:
        raise FerError(f"{dataset.root} has no labels ({dataset.kind}): align the faces with `fer data faces`, then "
                       "label the clips in its manifest.csv (a label column) and extract from that")
    check_store_outside(store_path, dataset.root)

    spec, row_shape = extractor.spec, tuple(extractor.row_shape)
    attrs = dict(extractor.provenance())
    attrs.setdefault("modality", extractor.modality)
    attrs["spec"] = spec
    build_args = getattr(extractor, "build_args", None)
    if build_args:
        attrs["extractor"] = build_args  # lets `fer predict` rebuild this exact extractor
    if command:
        attrs["command_line"] = command  # else the store records this process's argv
    attrs["dataset"] = {"root": str(dataset.root), "kind": dataset.kind, "clips": len(dataset.records)}
    if dataset.face_preprocessing and attrs.get("modality") == "face":
        attrs["face_preprocessing"] = dataset.face_preprocessing  # how `fer data faces` made the frames

    finished = _finished(dataset, spec, row_shape, store_path, (k, n))
    if finished is not None:
        return finished
    with _dir_lock(store_path):
        store = create_store(
            store_path, dataset.ids, dataset.votes(), dataset.folds(),
            class_names=dataset.class_names, fold_names=dataset.fold_names, layout=dataset.kind,
            description=f"{dataset.kind} dataset at {dataset.root}",
            attrs={"has_votes": bool(dataset.has_votes), "protocol": dataset.protocol,
                   "votes_vs_label": vote_conflicts(dataset.votes(), dataset.official())},
            labels=dataset.official(),
        )
        try:
            writer = store.writer(spec, row_shape=row_shape, attrs=attrs, shard=(k, n), chunk_bytes=chunk_bytes)
        except BaseException:
            store.close()
            raise
    summary = ExtractSummary(spec=spec, store=str(store_path), shard=(k, n), source=describe(dataset),
                             workers=workers)
    try:
        owned = np.asarray(writer.owned_rows(), dtype=np.int64)
        done = np.asarray(writer.done(), dtype=bool)
        todo = owned[~done[owned]]
        summary.owned, summary.skipped = len(owned), int(done[owned].sum())
        if limit is not None:
            todo = todo[:limit]
        summary.todo = len(todo)
        if len(todo) and getattr(extractor, "is_maps", False):  # per-frame arrays: tens of GB for a dataset
            from fer.extract.store_size import check_room

            check_room(store_path, spec, row_shape, len(todo))
        if len(todo):
            with _sigterm_as_interrupt():
                _run_loop(dataset, extractor, store, writer, todo, summary, batch_size, workers, progress,
                          start_method or worker_start_method(extractor.device))
    finally:
        writer.close()
        store.close()
    return summary


def _finished(dataset: Dataset, spec: str, row_shape: tuple, store_path: str | Path,
              shard: tuple[int, int]) -> ExtractSummary | None:
    """The summary of a run with nothing to do, found by reading the store only; None when there is work
    (or anything else to say about the store: the normal path then says it)."""
    from fer.cache import open_store

    local = local_path(store_path)
    if local is None or not local.exists():
        return None
    try:
        st = open_store(store_path, "r")
    except Exception:  # noqa: BLE001 - any doubt: take the normal path, which reports it properly
        return None
    with st:
        differs = st.index_mismatch(dataset.ids, dataset.votes(), dataset.folds(), dataset.class_names,
                                    dataset.official())
        if differs:
            raise FerError(differs)  # said now, before a lock file is made beside another dataset's store
        try:
            if not st.has(spec):
                return None
            attrs = st.set_attrs(spec)
            if tuple(attrs["row_shape"]) != tuple(row_shape):
                return None
            owned = L.owned_rows(st.n, int(attrs["chunk_rows"]), shard)
            done = st.done_mask(spec)
        except Exception:  # noqa: BLE001
            return None
    if not done[owned].all():
        return None
    return ExtractSummary(spec=spec, store=str(store_path), shard=shard, owned=len(owned), skipped=len(owned))


def _run_loop(dataset, extractor, store, writer, todo, summary, batch_size, workers, progress,
              start_method: str) -> None:
    cuda = extractor.device.type == "cuda"
    loader = DataLoader(
        # workers get a model-free loader: never the CUDA model (it is pickled under spawn/forkserver)
        _ClipLoads(extractor.loader() if workers > 0 else extractor, dataset.records, todo),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate_list,
        pin_memory=cuda,
        prefetch_factor=4 if workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context=start_method if workers > 0 else None,
    )
    chunk_rows = int(writer.chunk_rows)
    expected: dict[int, int] = defaultdict(int)
    for r in todo:
        expected[int(r) // chunk_rows] += 1
    resolved: dict[int, int] = defaultdict(int)
    buffer: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
    fail_buffer: dict[int, dict[int, str]] = defaultdict(dict)

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fer-writer")
    pending: list[Future] = []
    write_time = [0.0]
    write_error: list[BaseException] = []  # the first failed write; later writes are not tried

    def write(rows_data: list[tuple[int, np.ndarray, np.ndarray]], fails: dict[int, str]) -> None:
        if write_error:
            return  # the store could not be written (a full disk): more writes would only fail again
        t0 = time.perf_counter()
        try:
            if rows_data:
                rows = np.array([r for r, _, _ in rows_data], dtype=np.int64)
                data = np.stack([d for _, d, _ in rows_data])
                mask = np.stack([m for _, _, m in rows_data])
                writer.write_rows(rows, data, mask)
            if fails:
                writer.record_failures(fails)
        except BaseException as e:
            write_error.append(e)
        write_time[0] += time.perf_counter() - t0

    def flush(chunk: int) -> None:
        rows_data, fails = buffer.pop(chunk, []), fail_buffer.pop(chunk, {})
        if rows_data or fails:
            pending.append(pool.submit(write, rows_data, fails))
        while pending and (pending[0].done() or len(pending) > MAX_PENDING_WRITES):
            pending.pop(0).result()
        if write_error:
            raise write_error[0]  # here, in the main thread: the run stops

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="clip", desc=extractor.modality or "extract", dynamic_ncols=True,
                   file=sys.stderr, smoothing=0.1)
    t_start = time.perf_counter()
    first = True
    try:
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch: list[_Loaded] = next(it)
            except StopIteration:
                break
            except RuntimeError as e:  # a worker killed by SIGBUS: its shared memory ran out
                if _is_shm_fault(e):
                    raise shm_error(workers, e) from e
                raise
            summary.wait_s += time.perf_counter() - t0
            summary.load_s += sum(b.load_s for b in batch)
            full = next((b for b in batch if b.shm_full), None)
            if full is not None:
                raise shm_error(workers, full.reason)
            oks = [b for b in batch if b.reason is None]
            if first and not oks and all(b.unexpected for b in batch):
                raise FerError(
                    f"every clip of the first batch failed with an unexpected error (first: {batch[0].clip_id}: "
                    f"{batch[0].reason}); this looks like a broken install or a bug, not bad clips"
                )
            t1 = time.perf_counter()
            results = _embed_safe(extractor, oks, strict=first)
            summary.model_s += time.perf_counter() - t1
            first = False
            for b in batch:
                chunk = b.row // chunk_rows
                res = results.get(b.row) if b.reason is None else None
                if isinstance(res, tuple):
                    buffer[chunk].append((b.row, res[0], res[1]))
                    note = extractor.row_info(b.item)
                    if note:
                        summary.row_info[b.clip_id] = note
                    summary.done += 1
                else:
                    reason = b.reason if b.reason is not None else res
                    fail_buffer[chunk][b.row] = reason
                    summary.failed[b.clip_id] = reason
                resolved[chunk] += 1
                if resolved[chunk] == expected[chunk]:
                    flush(chunk)
            if bar is not None:
                bar.update(len(batch))
                if summary.failed:
                    bar.set_postfix(failed=len(summary.failed), refresh=False)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - t_start
        if bar is not None:
            bar.close()
        try:
            if not write_error:
                # write every finished row, even of incomplete chunks (write_rows merges into a chunk)
                for chunk in sorted(set(buffer) | set(fail_buffer)):
                    pending.append(pool.submit(write, buffer.pop(chunk, []), fail_buffer.pop(chunk, {})))
            for f in pending:
                f.result()
        finally:
            pool.shutdown(wait=True)
        summary.write_s = write_time[0]
    if write_error:
        raise write_error[0]
    if summary.row_info:
        _merge_row_info(store, writer, summary.row_info)


def _embed_safe(
    extractor: Extractor, oks: list[_Loaded], strict: bool = False
) -> dict[int, tuple[np.ndarray, np.ndarray] | str]:
    """row -> (data fp16, mask) or a failure reason. A failing batch is retried clip by clip so one
    clip that breaks the model fails alone; when every clip of a batch fails on its own (a systemic
    problem such as a bug or out of memory), or a single-clip first batch fails (``strict``), it raises.

    The retries run after the except block has ended, with the device's cache emptied: the failed batch's
    exception and traceback (which hold its tensors) are gone by then, so after an out-of-memory error the
    single clips get the memory back."""
    if not oks:
        return {}

    def run(group: list[_Loaded]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        with torch.inference_mode():
            data, mask = extractor.embed([b.item for b in group])
        data = data.detach().to("cpu", torch.float16).numpy()
        mask = mask.detach().to("cpu", torch.bool).numpy()
        return {b.row: (data[i], mask[i]) for i, b in enumerate(group)}

    got = _attempt(run, oks)
    if not isinstance(got, _Failure):
        return got
    failure = got
    if len(oks) == 1 and not strict:
        return {oks[0].row: one_line(f"model failed on this clip: {failure.reason}")}
    out: dict[int, Any] = {}
    if len(oks) > 1:
        _release_memory(extractor.device)
        for b in oks:
            got = _attempt(run, [b])
            if isinstance(got, _Failure):
                out[b.row] = one_line(f"model failed on this clip: {got.reason}")
                failure = got
                _release_memory(extractor.device)
            else:
                out.update(got)
    if out and not all(isinstance(v, str) for v in out.values()):
        return out
    raise _systemic_error(extractor, failure, len(oks))


@dataclass
class _Failure:
    """What is kept of a failed model call: its message, never the exception (whose traceback holds tensors)."""

    reason: str
    out_of_memory: bool


def _attempt(run: Any, group: list[_Loaded]) -> Any:
    """``run(group)``, or a _Failure when it raises an ordinary exception."""
    try:
        return run(group)
    except Exception as e:  # noqa: BLE001 - any model error: the caller decides per clip
        oom = isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()
        return _Failure(reason=one_line(f"{type(e).__name__}: {e}"), out_of_memory=oom)


def _release_memory(device: torch.device) -> None:
    """Give the caching allocator's free blocks back before a retry (nothing to do on CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _systemic_error(extractor: Extractor, failure: _Failure, clips: int) -> FerError:
    """The one-line error when the model fails on every clip of a batch, one by one too."""
    what = "the first clip" if clips == 1 else f"every clip of a batch of {clips}, also one at a time"
    if failure.out_of_memory:
        return FerEnvError(
            f"the model ran out of memory on {extractor.device} on {what} ({failure.reason}): free the device "
            "(other processes on it?), use a smaller --batch-size or --size, or --device cpu"
        )
    return FerError(f"the model failed on {what} ({failure.reason}); this looks like a bug or a broken install, "
                    "not bad clips")


def _merge_row_info(store: Any, writer: Any, notes: dict[str, str]) -> None:
    try:
        old = dict(store.info(writer.spec).get("row_info") or {})
    except Exception:
        old = {}
    old.update(notes)
    writer.update_attrs({"row_info": old})
