"""The extraction runner: every owned, not-yet-done clip of a dataset through one extractor, into the store.

Decoding runs in DataLoader workers (``extractor.load``, fer.extract.loading) while the main process runs the
model (``extractor.embed``, fer.extract.embed) and a background thread writes finished chunks
(fer.extract.writes), so decode, compute and I/O overlap; the loop around them is fer.extract.loop, shared
with ``fer data faces``. One bad clip never stops the run: its one-line reason is recorded in the store and
the row stays not-done, so a rerun retries exactly the failed and unfinished rows.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from fer.cache.errors import FerError
from fer.extract.config import ExtractConfig, check_run_settings
from fer.extract.datasets.records import Dataset
from fer.extract.embed import embed_safe
from fer.extract.extractor import Extractor
from fer.extract.loading import Loaded, clip_batches, default_workers, worker_start_method
from fer.extract.loop import ClipWork, plan_todo, run_clip_loop
from fer.extract.shards import check_shard, pick_shard
from fer.extract.stores import (
    check_store_format,
    check_store_outside,
    default_store_path,
    finished_summary,
    merge_row_info,
    open_feature_set,
    set_attrs,
    store_specs,
)
from fer.extract.summary import ExtractSummary, describe
from fer.extract.writes import BackgroundWrites, ChunkRows

MAX_PENDING_WRITES = 3
"""Chunk writes queued behind the writer thread before the main loop waits (bounds memory)."""


def extract_dataset(root: str | Path, cfg: ExtractConfig) -> ExtractSummary:
    """`fer extract ROOT` with the settings ``cfg`` (validated): read the dataset, build the extractor, run it
    into the store (``cfg.store``, else ./<root name>.zarr) for this process's shard."""
    from fer.extract.backbones.registry import make_extractor
    from fer.extract.datasets import load_dataset, parse_classes

    store_path = cfg.store or str(default_store_path(root, cfg.format))
    check_store_format(store_path, cfg.format)
    dataset = load_dataset(root, layout=cfg.layout, classes=parse_classes(cfg.classes))
    engine = cfg.ray_engine(cfg.device)
    # on Ray the model is built here on the CPU and sent to the actors, which move it to their own device
    extractor = make_extractor(device="cpu" if engine else cfg.device, **cfg.build_args())
    # `--precision auto` checks its guess on the first batch of clips before the spec (which names it) is used
    extractor.settle_precision(dataset.records, clips=cfg.batch_size, started=store_specs(store_path))
    return run_extraction(
        dataset, extractor, store_path,
        batch_size=cfg.batch_size,
        workers=default_workers(extractor.device) if cfg.workers is None else cfg.workers,
        shard=pick_shard(cfg.shard),
        limit=cfg.limit,
        progress=cfg.progress,
        chunk_bytes=cfg.chunk_bytes(),
        engine=engine,
    )


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
    engine: Any = None,
) -> ExtractSummary:
    """Extract every row this shard owns that is not done yet; returns what happened.

    ``shard`` is 0-based ``(k, n)``: this process owns the store chunks ``c`` with ``c % n == k``.
    ``limit`` caps the rows tried in this call. ``command`` (the command line) goes into provenance.
    ``chunk_bytes`` sets the chunk size when the feature set is created (store default otherwise).
    ``start_method`` starts the decoding workers (default: worker_start_method for the extractor's device).
    ``engine`` (e.g. fer.extract.ray_engine.RayEngine) decodes and runs the model elsewhere and feeds this
    run's writing (``engine.extract``); everything else (todo list, skip-finished, failure records,
    provenance, summary) stays here. A store inside the dataset folder is refused. When every row this shard
    owns is already done, the store is only read (no lock file, no write), so a finished set on a read-only
    store is a no-op.
    Failed clips are recorded in the store with their reasons and left not-done. Ctrl-C / SIGTERM
    flush every finished row and return with ``interrupted=True``.
    """
    check_run_settings(batch_size, workers, limit)
    k, n = check_shard(shard)
    if not dataset.records:
        raise FerError(f"{dataset.root} lists no clips; nothing to extract")
    if not dataset.class_names:
        raise FerError(f"{dataset.root} has no labels ({dataset.kind}): align the faces with `fer data "
                       "faces`, then label the clips in its manifest.csv (a label column) and extract from "
                       "that")
    check_store_outside(store_path, dataset.root)

    spec, row_shape = extractor.spec, tuple(extractor.row_shape)
    attrs = set_attrs(dataset, extractor, command)
    finished = finished_summary(dataset, spec, row_shape, store_path, (k, n))
    if finished is not None:
        return finished
    store, writer = open_feature_set(dataset, store_path, spec, row_shape, attrs, (k, n), chunk_bytes)
    summary = ExtractSummary(spec=spec, store=str(store_path), shard=(k, n), source=describe(dataset),
                             workers=workers)
    try:
        todo = plan_todo(summary, writer.owned_rows(), writer.done(), limit)
        if len(todo) and getattr(extractor, "is_maps", False):  # per-frame arrays: tens of GB for a dataset
            from fer.extract.store_size import check_room

            check_room(store_path, spec, row_shape, len(todo))
        if len(todo) and engine is not None:
            engine.extract(extractor, dataset, todo, EmbedWork(extractor, writer, todo, summary), summary,
                           batch_size=batch_size, progress=progress)
        elif len(todo):
            batches = clip_batches(
                # workers get a model-free loader: never the CUDA model (it is pickled under spawn/forkserver)
                extractor.loader() if workers > 0 else extractor, dataset.records, todo,
                batch_size=batch_size, workers=workers, pin=extractor.device.type == "cuda",
                start_method=start_method or worker_start_method(extractor.device),
            )
            work = EmbedWork(extractor, writer, todo, summary)
            run_clip_loop(batches, work, summary, total=len(todo), progress=progress, workers=workers)
        if summary.row_info:
            merge_row_info(store, writer, summary.row_info)
    finally:
        writer.close()
        store.close()
    return summary


class EmbedWork(ClipWork):
    """``fer extract``'s half of the loop: a batch through the model, each row into its chunk's buffer, each
    complete chunk written in the background."""

    def __init__(self, extractor: Extractor, writer: Any, todo: np.ndarray, summary: ExtractSummary):
        self.extractor, self.summary = extractor, summary
        self.desc = extractor.modality or "extract"
        self.writes = BackgroundWrites(MAX_PENDING_WRITES, "fer-writer")
        self.rows = ChunkRows(writer, todo, self.writes)

    def process(self, batch: list[Loaded], first: bool) -> None:
        t1 = time.perf_counter()
        results = embed_safe(self.extractor, [b for b in batch if b.ok], strict=first)
        self.summary.model_s += time.perf_counter() - t1
        self.record(batch, results, row_notes(self.extractor, batch))

    def record(self, batch: list[Loaded], results: dict[int, Any], notes: dict[int, str]) -> None:
        """Each clip of the batch into the summary and its chunk's buffer: ``results`` (row -> (data, mask),
        or a failure reason) for the clips that loaded, ``notes`` (row -> how the clip was read) where there
        is one."""
        for b in batch:
            res = results.get(b.row) if b.ok else None
            if isinstance(res, tuple):
                note = notes.get(b.row)
                if note:
                    self.summary.row_info[b.clip_id] = note
                self.summary.done += 1
                self.rows.add(b.row, res[0], res[1])
            else:
                reason = b.reason if b.reason is not None else res
                self.summary.failed[b.clip_id] = reason
                self.rows.fail(b.row, reason)

    def finish(self) -> None:
        try:
            self.rows.flush_all()
        finally:
            self.writes.close()
            self.summary.write_s = self.writes.seconds


def row_notes(extractor: Extractor, batch: list[Loaded]) -> dict[int, str]:
    """row -> the extractor's note on how the clip was read, for the loaded clips that have one."""
    notes = {b.row: extractor.row_info(b.item) for b in batch if b.ok}
    return {row: note for row, note in notes.items() if note}
