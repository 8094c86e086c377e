"""Clips decoded in DataLoader worker processes while the main process runs the model.

``clip_batches`` yields batches of ``Loaded`` items: a clip's decoded data, or the one-line reason it could
not be decoded, so one bad clip never stops a run. Workers receive only a loader without a model
(``Extractor.loader()``), started by fork on CPU and never by fork beside a CUDA context. How many workers a
process gets, and what happens when their shared memory runs out, is said here too.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fer.cache.errors import FerEnvError, FerError
from fer.cache.layout import one_line as fold_line
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.summary import one_line


class ClipLoader(Protocol):
    """What decodes one clip: ``load(record)`` returns a picklable item or raises ClipError(reason)."""

    def load(self, record: ClipRecord) -> Any: ...


# ---------------------------------------------------------------- how many workers, started how
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
    platform's safe default, spawn. Either way workers receive only ``extractor.loader()``, which holds no
    model."""
    methods = multiprocessing.get_all_start_methods()
    if device.type == "cpu" and "fork" in methods and sys.platform.startswith("linux"):
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


# ---------------------------------------------------------------- one clip, loaded or not
@dataclass
class Loaded:
    """One clip as a worker hands it over: its decoded ``item``, or the ``reason`` it has none."""

    row: int
    """The clip's index in the dataset's records (its row in the store)."""
    clip_id: str
    item: Any = None
    reason: str | None = None
    unexpected: bool = False
    """The reason is an error other than ClipError (a bug or a broken install, when every clip has it)."""
    load_s: float = 0.0
    shm_full: bool = False
    """The worker could not put this clip into shared memory (/dev/shm is full)."""

    @property
    def ok(self) -> bool:
        return self.reason is None

    def pin_memory(self) -> Loaded:
        """Called by the DataLoader's pin thread on CUDA: pin the tensors inside the loaded item so the model
        can copy them with ``non_blocking=True`` (an item with its own ``pin_memory`` is asked to)."""
        if self.item is not None:
            from torch.utils.data._utils.pin_memory import pin_memory

            self.item = pin_memory(self.item)
        return self


def load_one(loader: ClipLoader, record: ClipRecord, row: int) -> Loaded:
    """``loader.load(record)`` as a Loaded: any error becomes the clip's one-line reason."""
    t0 = time.perf_counter()
    try:
        item = loader.load(record)
    except ClipError as e:
        return Loaded(row, record.clip_id, reason=one_line(e), load_s=time.perf_counter() - t0)
    except Exception as e:  # one bad clip must not stop the run; a bug is caught on the first batch
        return Loaded(row, record.clip_id, reason=one_line(f"{type(e).__name__}: {e}"), unexpected=True,
                      load_s=time.perf_counter() - t0)
    return Loaded(row, record.clip_id, item, load_s=time.perf_counter() - t0)


class ClipLoads(TorchDataset):
    """The DataLoader's view of the todo rows: ``load_one`` per row, its tensors moved to shared memory in the
    worker. ``loader`` is the extractor itself when decoding in the main process, else a model-free one."""

    def __init__(self, loader: ClipLoader, records: Sequence[ClipRecord], rows: Sequence[int] | np.ndarray):
        self.loader, self.records, self.rows = loader, records, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Loaded:
        row = int(self.rows[i])
        got = load_one(self.loader, self.records[row], row)
        if got.ok and torch.utils.data.get_worker_info() is not None:
            try:
                to_shared_memory(got.item)
            except RuntimeError as e:
                if not is_shm_fault(e):
                    raise
                return Loaded(row, got.clip_id, reason=one_line(e), shm_full=True)
        return got


def clip_batches(loader: ClipLoader, records: Sequence[ClipRecord], rows: Sequence[int] | np.ndarray, *,
                 batch_size: int, workers: int, pin: bool = False, prefetch: int = 4,
                 start_method: str | None = None) -> DataLoader:
    """Batches (lists) of Loaded for ``rows`` in order, decoded by ``workers`` processes (0: in this one)."""
    return DataLoader(
        ClipLoads(loader, records, rows),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=as_list,
        pin_memory=pin,
        prefetch_factor=prefetch if workers > 0 else None,
        persistent_workers=False,
        multiprocessing_context=start_method if workers > 0 else None,
    )


def as_list(batch: list[Loaded]) -> list[Loaded]:
    """The DataLoader's collate: a batch stays a list of clips (the model half batches them itself)."""
    return batch


# ---------------------------------------------------------------- shared memory
def to_shared_memory(item: Any) -> None:
    """Move the tensors of a loaded item into shared memory here, in the worker. The DataLoader would do it
    while sending the item, in a thread where running out of /dev/shm loses the item and hangs the run;
    here it raises, and the run stops with a message instead."""
    if isinstance(item, torch.Tensor):
        item.share_memory_()
    elif isinstance(item, (list, tuple)):
        for x in item:
            to_shared_memory(x)
    elif isinstance(item, dict):
        for x in item.values():
            to_shared_memory(x)


def is_shm_fault(e: BaseException) -> bool:
    """True when ``e`` says a worker's shared memory (/dev/shm) ran out."""
    msg = str(e).lower()
    return "shared memory" in msg or "bus error" in msg or ("/torch_" in msg and "no space" in msg)


def shm_error(workers: int, reason: object) -> FerEnvError:
    """The one-line error for decoding workers that ran out of shared memory."""
    free = ""
    with contextlib.suppress(OSError):
        u = shutil.disk_usage("/dev/shm")
        free = f" ({u.free / 1e6:.1f} MB free of {u.total / 1e6:.1f} MB)"
    fewer = (f"fewer workers (--workers {workers // 2}, or --workers 0" if workers > 1
             else "no workers (--workers 0")
    return FerEnvError(
        f"the {workers} decoding worker(s) ran out of shared memory in /dev/shm{free}: "
        f"{fold_line(reason, 160)}; use {fewer} to decode in the main process) or a smaller --batch-size, or "
        "give the machine more shared memory (docker run --shm-size=2g); then rerun the same command to "
        "resume"
    )
