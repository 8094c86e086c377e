"""What runs on Ray's workers for ``--engine ray`` (fer.extract.ray_engine), and what comes back: a runner
batch travels as a RemoteBatch through a decoding task (``decode_batch``: the runner's ``load_one``) and a
model actor (EmbedActor: ``embed_safe``; AlignActor: ``align_one``), and is recorded on the driver by the
runner's own work (RecordEmbeds, RecordAligned). A worker never raises through Ray: a problem that must end
the run travels back as ``RemoteBatch.fatal``, a clip that fails as its ``reason``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fer.cache.errors import FerEnvError, FerError
from fer.extract.datasets.records import ClipRecord
from fer.extract.extractor import ClipError
from fer.extract.loading import Loaded, load_one
from fer.extract.loop import ClipWork
from fer.extract.summary import one_line

MEDIA = ("faces16", "faces_all", "video", "audio")
"""The ClipRecord fields naming media files or folders."""


@dataclass
class RemoteBatch:
    """One runner batch on its way through Ray: its clips, loaded and then with the model's results."""

    index: int
    """The batch's place in the todo list (0: the run's first batch)."""
    loaded: list[Loaded] = field(default_factory=list)
    """The clips; after the model each ``item`` is its result (``reason`` is set for a clip that failed)."""
    model_s: float = 0.0
    pid: int = 0
    """The actor process that ran the model."""
    fatal: str | None = None
    """A problem that must end the run (not a bad clip), as a one-line message."""
    fatal_code: int = FerError.exit_code


def decode_batch(row: dict[str, Any], loader: Any, records: Sequence[ClipRecord],
                 root: str) -> dict[str, Any]:
    """Ray Data's decoding stage: one runner batch of rows -> a RemoteBatch of Loaded clips."""
    batch = RemoteBatch(index=int(row["index"]))
    if not os.path.exists(root):
        batch.fatal_code = FerEnvError.exit_code
        batch.fatal = (f"Ray node {socket.gethostname()} cannot see the dataset at {root}: every node must "
                       "reach it at the same path (a shared filesystem)")
    else:
        batch.loaded = [load_one(loader, records[int(r)], int(r)) for r in row["rows"]]
    return {"index": batch.index, "batch": batch}


class ModelActor:
    """A Ray actor holding one model: moved to the actor's GPU (or kept on its CPU with ``threads`` torch
    threads) once, then run on every batch it is given. Problems come back as ``RemoteBatch.fatal``."""

    def __init__(self, model: Any, gpus: float, threads: int) -> None:
        import torch

        self.pid = os.getpid()
        self.fatal: tuple[str, int] | None = None
        self.device = torch.device("cuda", 0) if gpus and torch.cuda.is_available() else torch.device("cpu")
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, threads))
        try:
            self.model = model.to(self.device)
            self.check()
        except FerError as e:
            self.fatal = (str(e), e.exit_code)
        except Exception as e:  # noqa: BLE001 - said once, on the first batch, in one line
            self.fatal = (one_line(f"the model could not be set up on {socket.gethostname()} "
                                   f"({self.device}): {type(e).__name__}: {e}"), FerEnvError.exit_code)

    def check(self) -> None:
        """Raise FerError when the model on this actor would not compute what the run records."""

    def run(self, batch: RemoteBatch) -> None:
        """Fill in the model's result of every loaded clip of ``batch``."""
        raise NotImplementedError

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        batch: RemoteBatch = row["batch"]
        if batch.fatal is None and self.fatal is not None:
            batch.fatal, batch.fatal_code = self.fatal
        if batch.fatal is None:
            t0 = time.perf_counter()
            try:
                self.run(batch)
            except FerError as e:
                batch.fatal, batch.fatal_code = str(e), e.exit_code
            except Exception as e:  # noqa: BLE001 - a bug: one line, not a Ray traceback
                batch.fatal = one_line(f"the model failed on {socket.gethostname()}: {type(e).__name__}: "
                                       f"{e}; this looks like a bug or a broken install, not bad clips")
            batch.model_s, batch.pid = time.perf_counter() - t0, self.pid
        return {"index": batch.index, "batch": batch}


class EmbedActor(ModelActor):
    """`fer extract`'s model half on an actor: ``embed_safe`` and the clips' row notes, per runner batch."""

    def __init__(self, extractor: Any, spec: str, gpus: float, threads: int) -> None:
        self.spec = spec
        super().__init__(extractor, gpus, threads)

    def check(self) -> None:
        if self.model.spec != self.spec:  # e.g. --precision auto resolving differently on this node
            raise FerError(f"on {socket.gethostname()} ({self.device}) this backbone computes "
                           f"{self.model.spec}, not {self.spec} as on this machine; give --precision "
                           "explicitly")

    def run(self, batch: RemoteBatch) -> None:
        from fer.extract.embed import embed_safe
        from fer.extract.runner import row_notes

        results = embed_safe(self.model, [b for b in batch.loaded if b.ok], strict=batch.index == 0)
        notes = row_notes(self.model, batch.loaded)
        for b in batch.loaded:
            if b.ok:
                res = results.get(b.row)
                if isinstance(res, tuple):
                    b.item = (res[0], res[1], notes.get(b.row))
                else:
                    b.item, b.reason = None, res


class AlignActor(ModelActor):
    """`fer data faces`' model half on an actor: the main face of each clip detected, followed and aligned."""

    def __init__(self, detector: Any, size: int, frame_batch: int, gpus: float, threads: int) -> None:
        self.size, self.frame_batch = size, frame_batch
        super().__init__(detector, gpus, threads)

    def run(self, batch: RemoteBatch) -> None:
        from fer.extract.faces.runner import align_one

        for i, b in enumerate(batch.loaded):
            if b.ok:
                res = align_one(b.item, self.model, self.size, self.frame_batch, batch.index == 0 and i == 0)
                b.item, b.reason = (None, res) if isinstance(res, str) else (res, None)


class RecordEmbeds(ClipWork):
    """The runner's EmbedWork fed with the actors' results: it records and writes; the model ran on Ray."""

    def __init__(self, work: Any) -> None:
        self.work, self.desc = work, work.desc

    def process(self, batch: list[Loaded], first: bool) -> None:
        results = {b.row: b.item[:2] for b in batch if b.ok}
        notes = {b.row: b.item[2] for b in batch if b.ok and b.item[2]}
        self.work.record(batch, results, notes)

    def finish(self) -> None:
        self.work.finish()


class RecordAligned(ClipWork):
    """The faces runner's AlignWork fed with the actors' aligned clips: this process checks each clip's folder
    and writes it (the workers never touch OUT)."""

    desc = "faces"

    def __init__(self, work: Any) -> None:
        self.work = work

    def process(self, batch: list[Loaded], first: bool) -> None:
        from fer.extract.faces.output import check_free

        for b in batch:
            result = b.item if b.ok else b.reason
            try:
                check_free(self.work.out, b.clip_id)
            except ClipError as e:
                result = one_line(e)
            self.work.record(b.clip_id, result)

    def postfix(self) -> dict[str, Any]:
        return self.work.postfix()

    def finish(self) -> None:
        self.work.finish()


def absolute(records: Sequence[ClipRecord]) -> list[ClipRecord]:
    """The records with absolute media paths: workers do not share this process's current folder."""
    def fix(rec: ClipRecord) -> ClipRecord:
        return replace(rec, **{n: Path(getattr(rec, n)).absolute() for n in MEDIA
                               if getattr(rec, n) is not None})

    return [fix(r) for r in records]
