"""``fer data faces``: every clip's main face, detected, followed and aligned into DFEW-style frame folders.

Decoding runs in DataLoader workers while the main process runs the detector and the warp on the
device, and a writer thread encodes the jpgs. Each clip is written into ``OUT/.partial/`` and renamed
to ``OUT/<clip id>/`` only when complete, together with its record (``.fer-faces.json``), so a killed
run never leaves a folder that looks finished; a rerun skips finished clips and retries the rest.
``OUT/manifest.csv`` and ``OUT/faces.json`` are rebuilt from the finished folders at the end of
every run (also an interrupted one), under a lock, so shards can run side by side; what OUT holds and
how it is written is fer.extract.faces.output.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fer.cache.errors import FerError
from fer.extract.config import FacesConfig, check_size, parse_frames
from fer.extract.datasets.records import ClipRecord, Dataset
from fer.extract.extractor import ClipError
from fer.extract.faces.detect import MTCNN
from fer.extract.faces.output import (
    FACES_JSON,
    MANIFEST,
    check_free,
    check_settings,
    frame_settings,
    is_finished,
    locked,
    partial_dir,
    tidy_partial,
    write_clip,
    write_index,
)
from fer.extract.faces.pipeline import AlignedClip, ClipFrames, align_clip, decode_clip
from fer.extract.loading import Loaded, clip_batches, default_workers, usable_cores
from fer.extract.loop import ClipWork, plan_todo, run_clip_loop
from fer.extract.shards import check_shard, owned_items, pick_shard
from fer.extract.summary import RunSummary, failure_lines, one_line
from fer.extract.writes import BackgroundWrites

MAX_PENDING_WRITES = 2
"""Clips queued behind the jpg writer before the main loop waits (bounds memory)."""


def default_batch(device: torch.device) -> int:
    """Frames per detector pass: small on the CPU (larger batches fall out of the caches and run slower,
    benchmarks/bench_faces.py), larger on a GPU."""
    return 32 if device.type == "cuda" else 8


def cpu_threads(workers: int) -> int:
    """Torch threads for detection on the CPU: the cores the decoding workers leave (at least one), and
    never more than torch is already set to use (OMP_NUM_THREADS, ``torch.set_num_threads``).

    MTCNN is many small operations; threads that must wait for a core a decoding worker holds stall
    every one of them (on 2 shared cores, 2 threads ran several times slower than 1)."""
    return max(1, min(torch.get_num_threads(), usable_cores() - workers))


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- summary
@dataclass(kw_only=True)
class FacesSummary(RunSummary):
    """What one ``fer data faces`` run did; ``str()`` gives the closing lines the CLI prints."""

    out: Path
    frames: int = 0
    """Face frames written by this run."""
    borrowed: int = 0
    """Of those, frames aligned with a neighbour's landmarks (the face was missed there)."""

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        lines = [self._where(f"face frames in {self.out}"),
                 self._counts(f"{self.clips_per_s:.2f} clips/s, {self.frames_per_s:.1f} frames/s")]
        if self.frames:
            lines.append(f"frames: {self.frames} written, {self.borrowed} borrowed the alignment of a neighbour "
                         "(face missed there)")
        if self.todo and self.seconds > 0:
            lines.append(f"time: detect+align {self.model_s:.1f} s, waiting for decode {self.wait_s:.1f} s")
        if self.engine:
            lines.append(self.engine)
        lines += failure_lines(self.failed, f"in {self.out / FACES_JSON}")
        lines.append(f"manifest: {self.out / MANIFEST}")
        return "\n".join(lines)


# ---------------------------------------------------------------- decoding in workers
class FaceDecoder:
    """What decoding workers run per clip: refuse a folder fer did not write (``out``; None where the writing
    process checks it itself), then decode the frames."""

    def __init__(self, out: Path | None, frames: int | None):
        self.out, self.frames = out, frames

    def load(self, rec: ClipRecord) -> ClipFrames:
        if self.out is not None:
            check_free(self.out, rec.clip_id)
        if rec.video is None:
            raise ClipError("no video to find the face in (the record has no video file)")
        return decode_clip(rec.video, self.frames)


# ---------------------------------------------------------------- the run
def run_faces(
    dataset: Dataset,
    out: str | Path,
    *,
    size: int = 224,
    frames: int | None = None,
    device: str | torch.device = "auto",
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    batch: int | None = None,
    progress: bool = True,
    detector: MTCNN | None = None,
    threads: int | None = None,
    engine: Any = None,
) -> FacesSummary:
    """Detect, follow and align the main face of every clip this shard owns that is not finished yet.

    ``frames``: frames per clip sampled uniformly, or None for every frame. ``shard`` is 0-based
    ``(k, n)``: this process owns the clips ``i`` with ``i % n == k``. ``batch``: frames per detector
    pass (default: ``default_batch``). ``threads``: torch threads on the CPU (default: ``cpu_threads``).
    ``engine`` (e.g. fer.extract.ray_engine.RayEngine) decodes and aligns elsewhere and feeds this run's
    writing (``engine.faces``); the todo list, the writes, the index files and the summary stay here.
    Failed clips (unreadable, no face) are listed in the summary and in ``faces.json``.
    """
    from fer.cache.devices import resolve_device

    check_size(size)
    if frames is not None:
        parse_frames(frames)
    k, n = check_shard(shard)
    if not dataset.records:
        raise FerError(f"{dataset.root} lists no clips; nothing to align")
    out = Path(out)
    if engine is not None:  # built here on the CPU, sent to the engine's workers
        detector = detector or MTCNN("cpu")
    elif detector is None:
        detector = MTCNN(resolve_device(device) if isinstance(device, str) else device)
    batch = batch or default_batch(detector.device)
    settings = frame_settings(size, frames)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):
        check_settings(out, settings)

    summary = FacesSummary(out=out, shard=(k, n))
    todo = plan_todo(summary, owned_items(len(dataset.records), (k, n)),
                     lambda i: is_finished(out, dataset.records[i].clip_id))
    try:
        if len(todo) and engine is not None:
            work = AlignWork(out, detector, size, batch, summary)
            engine.faces(dataset, todo, work, summary, frames=frames, progress=progress)
        elif len(todo):
            cpu = detector.device.type == "cpu"
            batches = clip_batches(FaceDecoder(out, frames), dataset.records, todo, batch_size=1,
                                   workers=workers, pin=detector.device.type == "cuda", prefetch=2)
            with _torch_threads((threads or cpu_threads(workers)) if cpu else None):
                work = AlignWork(out, detector, size, batch, summary)
                run_clip_loop(batches, work, summary, total=len(todo), progress=progress, workers=workers,
                              strict_loads=False)
    finally:
        with locked(out):
            write_index(dataset, out, settings, summary.failed)
        tidy_partial(out)
    return summary


def faces_from_config(src: str | Path, out: str | Path, cfg: FacesConfig) -> FacesSummary:
    """`fer data faces SRC OUT` with the settings ``cfg`` (validated), for this process's shard."""
    from fer.extract.datasets import load_dataset

    dataset = load_dataset(src)
    workers = default_workers() if cfg.workers is None else cfg.workers
    return run_faces(dataset, out, size=cfg.size, frames=cfg.frame_count, device=cfg.device,
                     shard=pick_shard(cfg.shard), workers=workers, batch=cfg.batch, progress=cfg.progress,
                     engine=cfg.ray_engine(cfg.device))


class AlignWork(ClipWork):
    """``fer data faces``' half of the loop: each decoded clip's main face aligned on the device, its frames
    written as jpgs in the background (a clip that cannot be written fails alone)."""

    desc = "faces"

    def __init__(self, out: Path, detector: MTCNN, size: int, batch: int, summary: FacesSummary):
        self.out, self.detector, self.size, self.batch, self.summary = out, detector, size, batch, summary
        self.writes = BackgroundWrites(MAX_PENDING_WRITES, "fer-faces-writer", absorb=(OSError,))
        self.queued_frames = 0
        """Frames handed to the writer and not yet written."""
        self.t_start = time.perf_counter()

    def process(self, batch: list[Loaded], first: bool) -> None:
        for item in batch:
            t1 = time.perf_counter()
            result = item.reason
            if result is None:
                result = align_one(item.item, self.detector, self.size, self.batch, first)
            self.summary.model_s += time.perf_counter() - t1
            self.record(item.clip_id, result)

    def record(self, cid: str, result: AlignedClip | str) -> None:
        """One clip's outcome: its aligned crops, written in the background, or the reason it failed."""
        if isinstance(result, str):
            self.summary.failed[cid] = result
            shutil.rmtree(partial_dir(self.out, cid), ignore_errors=True)  # a killed run's leftovers
        else:
            self._write(cid, result)

    def _write(self, cid: str, aligned: AlignedClip) -> None:
        def written() -> None:
            self.queued_frames -= len(aligned.crops)
            self.summary.done += 1
            self.summary.frames += len(aligned.crops)
            self.summary.borrowed += aligned.borrowed

        def failed(e: BaseException) -> None:  # disk full, permissions: this clip fails, the next may fit
            self.queued_frames -= len(aligned.crops)
            self.summary.failed[cid] = one_line(f"cannot write its frames: {e}")
            shutil.rmtree(partial_dir(self.out, cid), ignore_errors=True)

        self.queued_frames += len(aligned.crops)
        self.writes.submit(write_clip, self.out, cid, aligned, on_done=written, on_error=failed)

    def postfix(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t_start
        return {"frames/s": f"{(self.summary.frames + self.queued_frames) / max(elapsed, 1e-9):.1f}"}

    def finish(self) -> None:
        self.writes.close()


def align_one(clip: ClipFrames, detector: MTCNN, size: int, batch: int, first: bool) -> AlignedClip | str:
    """``align_clip``, or the one-line reason the clip failed; an unexpected error on the run's ``first`` clip
    is raised (a bug or a broken install, not a bad clip)."""
    try:
        return align_clip(clip, detector, size, batch=batch)
    except ClipError as e:
        return one_line(e)
    except Exception as e:
        if first:
            raise
        return one_line(f"face alignment failed: {type(e).__name__}: {e}")
