"""The one clip loop of ``fer extract`` and ``fer data faces``, in the spirit of video_features' extractor.

A run is made of reusable pieces, each usable on its own (an engine that decodes and runs the model elsewhere
takes the ones it needs):

- ``plan_todo``: the items this shard owns (fer.extract.shards), less those already finished, capped by
  ``--limit``; the counts go into the run's summary (fer.extract.summary);
- batches of ``Loaded`` clips (fer.extract.loading): decoded data or a one-line reason;
- a ``ClipWork``: the run's own model half and writing, which records every clip as done or failed with its
  reason (writes go behind the compute through fer.extract.writes);
- ``run_clip_loop``: drives them, with a progress bar, Ctrl-C and SIGTERM flushing what is finished, one bad
  clip never stopping the run, and the times a summary reports.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fer.cache.errors import FerError
from fer.extract.loading import Loaded, is_shm_fault, shm_error
from fer.extract.summary import RunSummary


class ClipWork(ABC):
    """What one run does with each batch of loaded clips; the loop around it is ``run_clip_loop``."""

    desc: str = "clips"
    """The progress bar's label."""

    @abstractmethod
    def process(self, batch: list[Loaded], first: bool) -> None:
        """Run the model on the batch (``first``: the run's first batch, where an error is a bug, not a bad
        clip) and record each clip in the summary: done, or failed with its one-line reason."""

    def finish(self) -> None:
        """Write everything finished so far; runs at the end, also after Ctrl-C or an error."""

    def postfix(self) -> dict[str, Any]:
        """Extra numbers for the progress bar (the failed count is added by the loop)."""
        return {}


def plan_todo(summary: RunSummary, owned: Sequence[int] | np.ndarray,
              finished: np.ndarray | Callable[[int], bool], limit: int | None = None) -> np.ndarray:
    """The items to try: ``owned`` less the finished ones (a mask over all items, or a test per item), at most
    ``limit``; records owned, skipped and todo in ``summary``."""
    owned = np.asarray(owned, dtype=np.int64)
    if callable(finished):
        done = np.array([bool(finished(int(i))) for i in owned], dtype=bool)
    else:
        done = np.asarray(finished, dtype=bool)[owned]
    todo = owned[~done]
    if limit is not None:
        todo = todo[:limit]
    summary.owned, summary.skipped, summary.todo = len(owned), int(done.sum()), len(todo)
    return todo


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
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


def progress_bar(total: int, desc: str, on: bool = True) -> Any:
    """A tqdm bar on stderr counting clips, or None when ``on`` is false."""
    if not on:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="clip", desc=desc, dynamic_ncols=True, file=sys.stderr, smoothing=0.1)


def run_clip_loop(batches: Iterable[list[Loaded]], work: ClipWork, summary: RunSummary, *, total: int,
                  progress: bool = True, workers: int = 0, strict_loads: bool = True) -> None:
    """Every batch through ``work``; Ctrl-C / SIGTERM set ``summary.interrupted`` and end the loop, and
    ``work.finish()`` writes what is finished in any case. ``strict_loads``: when every clip of the first
    batch failed to load with an unexpected error (not a ClipError), that is a broken install or a bug:
    FerError. ``workers`` names the decoding workers in the error when their shared memory runs out."""
    bar = progress_bar(total, work.desc, progress)
    t_start = time.perf_counter()
    with sigterm_as_interrupt():
        try:
            _drive(batches, work, summary, bar, workers, strict_loads)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            try:
                work.finish()
            finally:
                summary.seconds = time.perf_counter() - t_start
                if bar is not None:
                    bar.close()


def _drive(batches: Iterable[list[Loaded]], work: ClipWork, summary: RunSummary, bar: Any, workers: int,
           strict_loads: bool) -> None:
    first = True
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        except RuntimeError as e:  # a worker killed by SIGBUS: its shared memory ran out
            if is_shm_fault(e):
                raise shm_error(workers, e) from e
            raise
        summary.wait_s += time.perf_counter() - t0
        summary.load_s += sum(b.load_s for b in batch)
        full = next((b for b in batch if b.shm_full), None)
        if full is not None:
            raise shm_error(workers, full.reason)
        if first and strict_loads and batch and all(b.unexpected for b in batch):
            raise FerError(
                f"every clip of the first batch failed with an unexpected error (first: {batch[0].clip_id}: "
                f"{batch[0].reason}); this looks like a broken install or a bug, not bad clips"
            )
        work.process(batch, first)
        first = False
        if bar is not None:
            bar.update(len(batch))
            post = work.postfix()
            if summary.failed:
                post["failed"] = len(summary.failed)
            if post:
                bar.set_postfix(post, refresh=False)
