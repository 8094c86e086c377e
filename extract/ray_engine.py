"""``--engine ray`` for `fer extract` and `fer data faces`: Ray Data decodes the clips and runs the model on a
cluster (or a local instance), and this process writes.

The pipeline (Ray Data's streaming executor): the todo rows in the runner's own batches -> decoding tasks on
CPUs (the runner's ``load_one`` on a model-free loader) -> a pool of model actors (``--actors MIN,MAX``, one
GPU each where the cluster has GPUs and --device is not cpu) that receive the model once and run the
runner's own model half (``embed_safe``; ``align_one`` for faces; fer.extract.ray_tasks) -> the results
stream back to this process -> the runner's own recording and writing (EmbedWork.record, AlignWork.record)
inside the runner's own loop (run_clip_loop: the one progress bar, Ctrl-C and SIGTERM, the first-batch
check). The todo list, skip-finished, failure records, provenance and the summary are the runners'
(fer.extract.runner, fer.extract.faces.runner), which call this engine in place of their DataLoader.

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
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fer.cache.errors import FerEnvError, FerError
from fer.extract.datasets.records import ClipRecord, Dataset
from fer.extract.loading import Loaded
from fer.extract.loop import ClipWork, run_clip_loop
from fer.extract.ray_tasks import (
    MEDIA,
    AlignActor,
    EmbedActor,
    RecordAligned,
    RecordEmbeds,
    RemoteBatch,
    absolute,
    decode_batch,
)
from fer.extract.summary import RunSummary
from fer.ray_session import RaySession, check_nodes, import_ray, ray_session

RETRIES = 3
"""Times Ray runs a batch again after its worker died, before the run ends."""


class RayEngine:
    """Runs a runner's decode and model halves on Ray (``address``: a cluster, else a local instance) with
    ``actors`` = (min, max) model actors (default: 1 .. one per GPU, or half the CPUs), on GPUs unless
    ``device`` is cpu. After a run: ``pids`` (actor processes that returned results), ``duplicates``."""

    def __init__(self, address: str | None = None, actors: tuple[int, int] | None = None,
                 device: str = "auto") -> None:
        self.address, self.actors, self.device = address, actors, (device or "auto").lower()
        self.pids: set[int] = set()
        self.duplicates = 0
        self.gpus = 0.0
        """GPUs per actor in the last run."""
        self.session: RaySession | None = None

    # ---------------------------------------------------------------- the two runs
    def extract(self, extractor: Any, dataset: Dataset, todo: np.ndarray, work: Any, summary: RunSummary, *,
                batch_size: int, progress: bool) -> None:
        """`fer extract`'s ``todo`` rows in batches of ``batch_size`` through ``extractor`` on Ray, into
        ``work`` (the runner's EmbedWork)."""
        from fer.extract.backbones.precision import provenance

        if getattr(extractor, "precision", None) and hasattr(extractor, "requested_precision"):
            extractor.requested_precision = extractor.precision  # every actor computes what this spec names
        if extractor.device.type != "cpu":
            extractor.to("cpu")  # sent to the actors from here: never a CUDA tensor in the object store
        items = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        with ray_session(self.address) as session:
            self._run(session, dataset, items, extractor.loader(), RecordEmbeds(work), summary,
                      progress=progress, strict_loads=True, actor=EmbedActor,
                      args=(extractor, extractor.spec))
        if self.gpus and getattr(extractor, "precision", None):  # computed there: the provenance says so
            work.rows.writer.update_attrs(provenance(extractor.precision, "cuda"))

    def faces(self, dataset: Dataset, todo: np.ndarray, work: Any, summary: RunSummary, *, frames: int | None,
              progress: bool) -> None:
        """`fer data faces`' ``todo`` clips, one at a time as in one process, aligned on Ray, into ``work``
        (the runner's AlignWork)."""
        from fer.extract.faces.runner import FaceDecoder

        if work.detector.device.type != "cpu":
            work.detector.to("cpu")
        with ray_session(self.address) as session:
            self._run(session, dataset, [todo[i:i + 1] for i in range(len(todo))], FaceDecoder(None, frames),
                      RecordAligned(work), summary, progress=progress, strict_loads=False, actor=AlignActor,
                      args=(work.detector, work.size, work.batch))

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
        if lo + 1 > cpus:  # each actor holds a CPU; decoding needs one more
            raise FerError(f"--actors {lo},{hi} needs {lo + 1} CPUs (one per actor, one to decode); the "
                           f"{session.describe()} has {cpus:g}")
        return per, 1, (lo, hi)

    def _run(self, session: RaySession, dataset: Dataset, items: list[np.ndarray], loader: Any,
             work: ClipWork, summary: RunSummary, *, progress: bool, strict_loads: bool, actor: type,
             args: tuple) -> None:
        """Check the nodes, then ``items`` through decoding and ``actor(*args, gpus, threads)`` into ``work``
        inside the runner's loop; the summary's failures and notes end in row order, as in one process."""
        self.session, self.pids, self.duplicates = session, set(), 0
        records = absolute(dataset.records)
        paths = media_paths(dataset, records, items)
        try:
            self.gpus, threads, actors = self._plan(session)
            check_nodes(paths, session)
            ds = self.pipeline(items, loader, records, paths["the dataset"], actor,
                               (*args, self.gpus, threads), self.gpus, actors)
        except FerError:
            raise
        except Exception as e:  # noqa: BLE001 - Ray's own failure: one line
            raise session.error(e, "setting up the run") from None
        order = {records[int(r)].clip_id: i for i, rows in enumerate(items) for r in rows}

        def in_order(d: dict[str, str]) -> dict[str, str]:
            return dict(sorted(d.items(), key=lambda kv: order.get(kv[0], -1)))

        try:
            run_clip_loop(self.results(session, ds, summary), work, summary, total=sum(len(i) for i in items),
                          progress=progress, strict_loads=strict_loads)
        finally:
            summary.failed = in_order(summary.failed)
            if hasattr(summary, "row_info"):
                summary.row_info = in_order(summary.row_info)
            summary.engine = self.describe(stopped=summary.interrupted)

    def pipeline(self, items: list[np.ndarray], loader: Any, records: list[ClipRecord], root: str,
                 actor: type, actor_args: tuple, gpus: float, actors: tuple[int, int]) -> Any:
        """The Ray Data pipeline: items -> decoding tasks -> model actors (not fused: their retry settings
        differ, so decoding stays on its own CPUs, ahead of the model)."""
        ray = import_ray()
        rows = [{"index": i, "rows": np.asarray(r, dtype=np.int64)} for i, r in enumerate(items)]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        with warnings.catch_warnings():  # retries are Ray remote arguments, deprecated as such but still read
            warnings.simplefilter("ignore")
            ds = ds.map(decode_batch, fn_kwargs={"loader": loader, "records": records, "root": root},
                        num_cpus=1, **retry_args(ds.map, max_retries=RETRIES))
            ds = ds.map(actor, fn_constructor_args=actor_args, concurrency=actors, num_cpus=1,
                        num_gpus=gpus or None,
                        **retry_args(ds.map, max_restarts=-1, max_task_retries=RETRIES))
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

    def describe(self, stopped: bool = False) -> str:
        """The summary's line on where the run ran (``stopped``: interrupted, when Ray's notices about dead
        workers are about the workers it stopped, not retries)."""
        s = self.session
        where = s.describe() if s is not None else "Ray"
        line = f"ray: {where}; the model ran in {len(self.pids)} actor process(es)"
        if s is not None and s.retries and not stopped:
            line += f"; {s.retries} task(s) retried after a worker died"
        if self.duplicates:
            line += f"; {self.duplicates} batch(es) that came back twice were dropped"
        return line


def media_paths(dataset: Dataset, records: Sequence[ClipRecord], items: list[np.ndarray]) -> dict[str, str]:
    """What every node must see: the dataset, and those media of the first clip to run that exist here."""
    paths = {"the dataset": str(Path(dataset.root).resolve())}
    first = records[int(items[0][0])] if items and len(items[0]) else None
    for name in MEDIA:
        p = getattr(first, name, None) if first is not None else None
        if p is not None and Path(p).exists():
            paths[f"the media of clip {first.clip_id} ({name})"] = str(p)
    return paths


def retry_args(method: Any, **kw: Any) -> dict[str, Any]:
    """``kw`` (Ray remote arguments such as max_retries) when ``method`` still takes them, else nothing (Ray's
    defaults then apply: unlimited retries)."""
    params = inspect.signature(method).parameters.values()
    takes = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return kw if takes else {}
