"""Writing finished clips behind the compute: one background thread with a bounded queue
(``BackgroundWrites``, both runs), and the rows of a feature set gathered per store chunk until the chunk is
complete (``ChunkRows``, ``fer extract``), so every chunk file is written once per run however the clips
arrive."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

OnError = Callable[[BaseException], None]


class BackgroundWrites:
    """Calls ``fn(*args)`` in one writer thread, in order, with at most ``max_pending`` calls queued.

    A write that raises one of ``absorb`` (e.g. OSError for one clip's files) is handed to its ``on_error`` in
    the main thread and the run goes on; any other error stops the writes: later ones are skipped (a full disk
    would only fail again) and the error is raised in the main thread at the next ``submit`` or ``close``.
    """

    def __init__(self, max_pending: int, name: str = "fer-writer",
                 absorb: tuple[type[BaseException], ...] = ()):
        self.max_pending, self.absorb = max_pending, absorb
        self.seconds = 0.0
        """Time the thread spent in writes."""
        self.error: BaseException | None = None
        """The write error that stopped the writes (raised in the main thread)."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: list[tuple[Future, OnError | None, Callable[[], None] | None]] = []

    @property
    def stopped(self) -> bool:
        return self.error is not None

    def submit(self, fn: Callable[..., Any], *args: Any, on_error: OnError | None = None,
               on_done: Callable[[], None] | None = None) -> None:
        """Queue one write; ``on_done`` / ``on_error`` run in the main thread once it has finished."""
        self._pending.append((self._pool.submit(self._run, fn, args), on_error, on_done))
        self.settle(self.max_pending)

    def _run(self, fn: Callable[..., Any], args: tuple) -> None:
        if self.error is not None:
            return
        t0 = time.perf_counter()
        try:
            fn(*args)
        except self.absorb:
            raise  # the main thread hands it to the write's on_error
        except BaseException as e:
            self.error = e
        finally:
            self.seconds += time.perf_counter() - t0

    def settle(self, limit: int = 0) -> None:
        """Wait until at most ``limit`` writes are queued (finished ones are settled anyway)."""
        while self._pending and (self._pending[0][0].done() or len(self._pending) > limit):
            fut, on_error, on_done = self._pending.pop(0)
            try:
                fut.result()
            except self.absorb as e:
                if on_error is None:
                    raise
                on_error(e)
            else:
                if on_done is not None and self.error is None:
                    on_done()
        if self.error is not None:
            raise self.error  # here, in the main thread: the run stops

    def close(self) -> None:
        """Wait for every queued write, stop the thread; raises the error that stopped the writes."""
        try:
            self.settle(0)
        finally:
            self._pool.shutdown(wait=True)


class ChunkRows:
    """A feature set's finished rows (data + mask) and failures, held per store chunk until every todo row of
    the chunk is resolved; then the chunk is written in one call."""

    def __init__(self, writer: Any, todo: np.ndarray, writes: BackgroundWrites):
        self.writer, self.writes = writer, writes
        self.chunk_rows = int(writer.chunk_rows)
        self.expected: dict[int, int] = defaultdict(int)
        for r in todo:
            self.expected[int(r) // self.chunk_rows] += 1
        self.resolved: dict[int, int] = defaultdict(int)
        self.rows: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = defaultdict(list)
        self.fails: dict[int, dict[int, str]] = defaultdict(dict)

    def add(self, row: int, data: np.ndarray, mask: np.ndarray) -> None:
        """A finished row."""
        chunk = row // self.chunk_rows
        self.rows[chunk].append((row, data, mask))
        self._resolve(chunk)

    def fail(self, row: int, reason: str) -> None:
        """A failed row and its one-line reason (the row stays not-done, so a rerun retries it)."""
        chunk = row // self.chunk_rows
        self.fails[chunk][row] = reason
        self._resolve(chunk)

    def _resolve(self, chunk: int) -> None:
        self.resolved[chunk] += 1
        if self.resolved[chunk] == self.expected[chunk]:
            self._flush(chunk)

    def _flush(self, chunk: int) -> None:
        rows, fails = self.rows.pop(chunk, []), self.fails.pop(chunk, {})
        if rows or fails:
            self.writes.submit(self._write, rows, fails)

    def flush_all(self) -> None:
        """Write every finished row, also of incomplete chunks (an interrupted run; write_rows merges into a
        chunk), unless the writes have stopped."""
        if self.writes.stopped:
            return
        for chunk in sorted(set(self.rows) | set(self.fails)):
            self._flush(chunk)

    def _write(self, rows_data: list[tuple[int, np.ndarray, np.ndarray]], fails: dict[int, str]) -> None:
        if rows_data:
            rows = np.array([r for r, _, _ in rows_data], dtype=np.int64)
            data, mask = np.stack([d for _, d, _ in rows_data]), np.stack([m for _, _, m in rows_data])
            self.writer.write_rows(rows, data, mask)
        if fails:
            self.writer.record_failures(fails)
