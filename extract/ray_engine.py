"""``--engine ray`` for `fer extract` and `fer data faces`: Ray Data decodes the clips and runs the model on a
cluster (or a local instance), and this process writes.

The pipeline (Ray Data's streaming executor): the todo rows in the runner's own batches -> decoding tasks on
CPUs (the runner's ``load_one`` on a model-free loader) -> a pool of model actors (``--actors MIN,MAX``, one
GPU each where the cluster has GPUs and --device is not cpu) that receive the model once and run the runner's
own model half (``embed_safe``; ``align_one`` for faces) -> the results stream back to this process -> the
runner's own recording and writing (EmbedWork.record, AlignWork.record) inside the runner's own loop
(run_clip_loop: the one progress bar, Ctrl-C and SIGTERM, the first-batch check). The todo list,
skip-finished, failure records, provenance and the summary are the runners' (fer.extract.runner,
fer.extract.faces.runner), which call this engine in place of their DataLoader.

- Same groups, same bytes: one Ray item is one batch of the one-process runner (the same consecutive todo
  rows), so the model sees the same clips together, and everything written goes through the runner's code
  (fp16 rows, chunk buffers, done flags, failure records, row_info notes put back into row order).
- Single writer: this process (the driver) is the only writer, of the feature store (one writer thread,
  whole chunks: ChunkRows) and of the face folders, so two writers never share a chunk and the store need
  not be reachable from the workers. What the workers must reach, the dataset's media, is checked on every
  node before any work is scheduled (fer.ray_session.check_nodes), and again by each decoding task.
- Nothing lost, nothing doubled: ``done`` is set by the write that puts the row's data; a task or actor that
  dies has returned nothing, and Ray restarts the actor and runs the batch again (RETRIES times at most, so a
  clip that kills its worker every time ends the run in one line instead of a retry loop); a batch that
  arrives twice is dropped and counted. A clip that fails on its content is a recorded failure, as in one
  process.
- Errors: a worker hands a fatal error back as data (never an exception through Ray), and this process
  raises it as fer's own FerError / FerEnvError; anything Ray itself raises becomes one line
  (RaySession.error).
"""

from __future__ import annotations

import inspect
import os
import socket
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from fer.cache.errors import FerEnvError, FerError
from fer.extract.datasets.records import ClipRecord, Dataset
from fer.extract.extractor import ClipError
from fer.extract.loading import Loaded, load_one
from fer.extract.loop import ClipWork, run_clip_loop
from fer.extract.summary import RunSummary, one_line
from fer.ray_session import RaySession, check_nodes, import_ray, ray_session

RETRIES = 3
"""Times Ray runs a batch again after its worker died, before the run ends."""
MEDIA = ("faces16", "faces_all", "video", "audio")
"""The ClipRecord fields naming media files or folders."""


def parse_actors(text: str | None) -> tuple[int, int] | None:
    """``"MIN,MAX"`` or ``"N"`` -> (min, max) model actors; None for the default; FerError when malformed."""
    if text is None or not str(text).strip():
        return None
    try:
        parts = [int(p) for p in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or parts[0] < 1 or parts[1] < parts[0]:
        raise FerError(f"--actors {text!r} is not MIN,MAX (e.g. 1,4) or N with 1 <= MIN <= MAX")
    return parts[0], parts[1]


@dataclass
class RemoteBatch:
    """One runner batch on its way through Ray: its clips, loaded and then with the model's results."""

    index: int
    """The batch's place in the todo list (0: the run's first batch)."""
    loaded: list[Loaded] = field(default_factory=list)
    """The clips; after the model each ``item`` is its result (and ``reason`` is set for a clip that failed)."""
    model_s: float = 0.0
    pid: int = 0
    """The actor process that ran the model."""
    fatal: str | None = None
    """A problem that must end the run (not a bad clip), as a one-line message."""
    fatal_code: int = FerError.exit_code


def decode_batch(row: dict[str, Any], loader: Any, records: Sequence[ClipRecord], root: str) -> dict[str, Any]:
    """Ray Data's decoding stage: one runner batch of rows -> a RemoteBatch of Loaded clips."""
    batch = RemoteBatch(index=int(row["index"]))
    if not os.path.exists(root):
        batch.fatal, batch.fatal_code = (f"Ray node {socket.gethostname()} cannot see the dataset at {root}: every "
                                         "node must reach it at the same path (a shared filesystem)"), 3
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
            self.fatal = (one_line(f"the model could not be set up on {socket.gethostname()} ({self.device}): "
                                   f"{type(e).__name__}: {e}"), 3)

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
                batch.fatal = one_line(f"the model failed on {socket.gethostname()}: {type(e).__name__}: {e}; this "
                                       "looks like a bug or a broken install, not bad clips")
            batch.model_s, batch.pid = time.perf_counter() - t0, self.pid
        return {"index": batch.index, "batch": batch}


class EmbedActor(ModelActor):
    """`fer extract`'s model half on an actor: ``embed_safe`` and the clips' row notes, per runner batch."""

    def __init__(self, extractor: Any, spec: str, gpus: float, threads: int) -> None:
        self.spec = spec
        super().__init__(extractor, gpus, threads)

    def check(self) -> None:
        if self.model.spec != self.spec:  # e.g. --precision auto resolving differently on this node
            raise FerError(f"on {socket.gethostname()} ({self.device}) this backbone computes {self.model.spec}, "
                           f"not {self.spec} as on this machine; give --precision explicitly")

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
        from fer.extract.faces.runner import check_free

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


class RayEngine:
    """Runs a runner's decode and model halves on Ray (``address``: a cluster, else a local instance) with
    ``actors`` = (min, max) model actors (default: 1 .. one per GPU, or half the CPUs), on GPUs unless
    ``device`` is cpu. After a run: ``pids`` (actor processes that returned results), ``duplicates``."""

    def __init__(self, address: str | None = None, actors: tuple[int, int] | None = None, device: str = "auto"):
        self.address, self.actors, self.device = address, actors, (device or "auto").lower()
        self.pids: set[int] = set()
        self.duplicates = 0
        self.session: RaySession | None = None

    # ---------------------------------------------------------------- the two runs
    def extract(self, extractor: Any, dataset: Dataset, todo: np.ndarray, work: Any, summary: RunSummary, *,
                batch_size: int, progress: bool) -> None:
        """`fer extract`'s clips ``todo`` in batches of ``batch_size`` through ``extractor`` on Ray, into ``work``."""
        from fer.extract.backbones.precision import provenance

        if getattr(extractor, "precision", None) and hasattr(extractor, "requested_precision"):
            extractor.requested_precision = extractor.precision  # every actor computes what this spec names
        if extractor.device.type != "cpu":
            extractor.to("cpu")  # sent to the actors from here: never a CUDA tensor in the object store
        items = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        with ray_session(self.address) as session:
            gpus, threads, actors = self._plan(session)
            self._run(session, dataset, items, extractor.loader(), RecordEmbeds(work), summary, progress, True,
                      EmbedActor, (extractor, extractor.spec, gpus, threads), gpus, actors)
        if gpus and getattr(extractor, "precision", None):  # computed there: the provenance says so
            work.rows.writer.update_attrs(provenance(extractor.precision, "cuda"))

    def faces(self, dataset: Dataset, todo: np.ndarray, work: Any, summary: RunSummary, *, frames: int | None,
              progress: bool) -> None:
        """`fer data faces`' clips ``todo``, one at a time as in one process, aligned on Ray, into ``work``."""
        from fer.extract.faces.runner import FaceDecoder

        if work.detector.device.type != "cpu":
            work.detector.to("cpu")
        with ray_session(self.address) as session:
            gpus, threads, actors = self._plan(session)
            self._run(session, dataset, [todo[i:i + 1] for i in range(len(todo))], FaceDecoder(None, frames),
                      RecordAligned(work), summary, progress, False, AlignActor,
                      (work.detector, work.size, work.batch, gpus, threads), gpus, actors)

    # ---------------------------------------------------------------- shared
    def _plan(self, session: RaySession) -> tuple[float, int, tuple[int, int]]:
        """(GPUs per actor, torch threads of a CPU actor, (min, max) actors) for this cluster."""
        cpus, gpus = session.cpus, session.gpus
        if self.device.startswith("cuda") and not gpus:
            raise FerError(f"--device {self.device} was asked for but the {session.describe()} has no GPU; "
                           "use --device cpu or auto")
        per = 1.0 if gpus and self.device != "cpu" else 0.0
        lo, hi = self.actors or (1, max(1, int(gpus) if per else int(cpus) // 2))
        if per and lo > gpus:
            raise FerError(f"--actors {lo},{hi} needs {lo} GPUs; the {session.describe()} has {gpus:g}")
        if lo + 1 > max(cpus, 2):  # each actor holds a CPU; decoding needs one more
            raise FerError(f"--actors {lo},{hi} needs {lo + 1} CPUs (one per actor, one to decode); the "
                           f"{session.describe()} has {cpus:g}")
        return per, 1, (lo, hi)

    def _run(self, session: RaySession, dataset: Dataset, items: list[np.ndarray], loader: Any, work: ClipWork,
             summary: RunSummary, progress: bool, strict_loads: bool, actor: type, actor_args: tuple, gpus: float,
             actors: tuple[int, int]) -> None:
        self.session, self.pids, self.duplicates = session, set(), 0
        records = absolute(dataset.records)
        first = next((records[int(r)] for r in items[0]), None) if items else None
        paths = {"the dataset": str(Path(dataset.root).resolve())}
        for name in MEDIA:
            p = getattr(first, name, None) if first else None
            if p is not None and Path(p).exists():
                paths[f"the media of clip {first.clip_id} ({name})"] = str(p)
        try:
            check_nodes(paths, session)
            ds = self.pipeline(items, loader, records, paths["the dataset"], actor, actor_args, gpus, actors)
        except FerError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray's own failure: one line
            raise session.error(e, "setting up the run") from None
        order = {records[int(r)].clip_id: i for i, rows in enumerate(items) for r in rows}
        try:
            run_clip_loop(self.results(session, ds, summary), work, summary, total=sum(len(i) for i in items),
                          progress=progress, strict_loads=strict_loads)
        finally:
            summary.failed = dict(sorted(summary.failed.items(), key=lambda kv: order.get(kv[0], -1)))
            if hasattr(summary, "row_info"):  # in row order, as one process writes them
                summary.row_info = dict(sorted(summary.row_info.items(), key=lambda kv: order.get(kv[0], -1)))
            summary.engine = self.describe()

    def pipeline(self, items: list[np.ndarray], loader: Any, records: list[ClipRecord], root: str, actor: type,
                 actor_args: tuple, gpus: float, actors: tuple[int, int]) -> Any:
        """The Ray Data pipeline: items -> decoding tasks -> model actors (not fused: their retry settings
        differ, so decoding stays on its own CPUs, ahead of the model)."""
        ray = import_ray()
        rows = [{"index": i, "rows": np.asarray(r, dtype=np.int64)} for i, r in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        with warnings.catch_warnings():  # retry settings are passed as Ray remote arguments (deprecated, kept)
            warnings.simplefilter("ignore")
            ds = ds.map(decode_batch, fn_kwargs={"loader": loader, "records": records, "root": root}, num_cpus=1,
                        **retry_args(ds.map, max_retries=RETRIES))
            ds = ds.map(actor, fn_constructor_args=actor_args, concurrency=actors, num_cpus=1,
                        num_gpus=gpus or None, **retry_args(ds.map, max_restarts=-1, max_task_retries=RETRIES))
        return ds

    def results(self, session: RaySession, ds: Any, summary: RunSummary) -> Iterator[list[Loaded]]:
        """The batches as they come back: fatal errors raised here, duplicates dropped, model time summed."""
        seen: set[int] = set()
        rows = iter(ds.iter_rows())
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - whatever Ray raises: one line
                raise session.error(e, "running the clips") from None
            batch: RemoteBatch = row["batch"]
            if batch.fatal is not None:
                raise (FerEnvError if batch.fatal_code == FerEnvError.exit_code else FerError)(batch.fatal)
            if batch.index in seen:
                self.duplicates += 1
                continue
            seen.add(batch.index)
            self.pids.add(batch.pid)
            summary.model_s += batch.model_s
            yield batch.loaded

    def describe(self) -> str:
        """The summary's line on where the run ran."""
        s = self.session
        where = s.describe() if s is not None else "Ray"
        line = f"ray: {where}; the model ran in {len(self.pids)} actor process(es)"
        if s is not None and s.retries:
            line += f"; {s.retries} task(s) retried after a worker died"
        if self.duplicates:
            line += f"; {self.duplicates} batch(es) that came back twice were dropped"
        return line


def retry_args(method: Any, **kw: Any) -> dict[str, Any]:
    """``kw`` (Ray remote arguments such as max_retries) when ``method`` still takes them, else nothing (Ray's
    defaults then apply: unlimited retries)."""
    takes = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(method).parameters.values())
    return kw if takes else {}


def absolute(records: Sequence[ClipRecord]) -> list[ClipRecord]:
    """The records with absolute media paths: workers do not share this process's current folder."""
    def fix(rec: ClipRecord) -> ClipRecord:
        return replace(rec, **{n: Path(getattr(rec, n)).absolute() for n in MEDIA if getattr(rec, n) is not None})

    return [fix(r) for r in records]


ENGINES = ("process", "ray")
"""``--engine``: process = this process with its decoding workers (one per rank under torchrun or --shard);
ray = Ray Data on a local instance or a cluster."""


def make_engine(engine: str | None, *, actors: str | None = None, ray_address: str | None = None,
                device: str = "auto", shard: str | None = None, workers: int | None = None) -> RayEngine | None:
    """The engine a command's options ask for: None for ``process`` (the runners' own loop), a RayEngine for
    ``ray``; FerError for options that do not go with the engine chosen."""
    name = (engine or "process").strip().lower()
    if name not in ENGINES:
        raise FerError(f"unknown --engine {engine!r}; choose process or ray")
    if name == "process":
        given = [flag for flag, value in (("--actors", actors), ("--ray-address", ray_address)) if value]
        if given:
            raise FerError(f"{' and '.join(given)} go with --engine ray; add it, or leave them out")
        return None
    if shard or os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        raise FerError("--engine ray schedules every clip itself: leave out --shard and run one fer, not torchrun")
    if workers is not None:
        raise FerError("--workers is for --engine process; on Ray, decoding runs in Ray's own tasks")
    return RayEngine(ray_address, parse_actors(actors), device)
