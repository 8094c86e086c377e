"""``fer sweep --engine ray``: the sweep's units of work (a grid point, or points that train together as one
batched model: fer.train.sweep.units) run as Ray tasks, side by side.

The sweep itself is fer.train.sweep's: the plan, the run folders, skip-finished and the report are the same
code as the sequential sweep, and each task trains its unit with the sweep's own ``run_unit`` (so a unit that
the sequential sweep would run as one training call is one task here too, whatever a unit holds). Only where
the units run differs:

- Each task asks ``--gpus-per-run`` GPUs (a fraction lets several small runs share one GPU; 0 trains on the
  CPU) and one CPU, and trains with one torch thread per CPU it holds, so a point's numbers are those of the
  point run alone in a process with that many threads.
- The feature sets are loaded once, here, and put into Ray's object store as numpy arrays: every node fetches
  them once, and every task on a node maps the same memory read-only (no copy per task).
- The tasks write their own run folders, each holding its folder's lock meanwhile (``run_unit``, as a
  sequential sweep does: a point another process runs is left to it), so the sweep folder (and the store,
  when the features are streamed) must be reachable from every node at the same path; fer checks that before
  starting any task. A task whose worker dies is run again (RETRIES times) and resumes from the point's last
  checkpoint (the lock dies with its process).
- One progress bar here (points done, rate, failures); each point's log lines are printed when it finishes.
  A point that fails ends the sweep in one line (the other points keep what they finished; rerun to resume).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fer.cache.errors import FerEnvError, FerError
from fer.cache.locks import Holder
from fer.ray_session import check_nodes, import_ray, ray_session
from fer.train.config import TrainConfig
from fer.train.features import LoadedFeatures, ModalityData
from fer.train.sweep import run_unit

Log = Callable[[str], None]
RETRIES = 3
"""Times Ray runs a point again after its worker died."""


def shared(features: LoadedFeatures) -> LoadedFeatures:
    """``features`` with the in-memory sets as numpy arrays (which Ray's object store shares uncopied)."""
    sets = {m: replace(md, data=md.data.numpy(), mask=md.mask.numpy()) if isinstance(md, ModalityData) else md
            for m, md in features.sets.items()}
    return replace(features, sets=sets)


def unshared(features: LoadedFeatures) -> LoadedFeatures:
    """The tensors back, on the object store's read-only memory (training only reads them)."""
    import torch

    with warnings.catch_warnings():  # torch warns that the arrays are read-only: they are never written
        warnings.simplefilter("ignore", UserWarning)
        sets = {m: replace(md, data=torch.from_numpy(md.data), mask=torch.from_numpy(md.mask))
                if isinstance(md, ModalityData) else md for m, md in features.sets.items()}
    return replace(features, sets=sets)


@dataclass
class Outcome:
    """What a task hands back: its log lines, who held the point's folder when another process did, or the
    fatal one-line error (and its exit status) that ends the sweep."""

    lines: list[str] = field(default_factory=list)
    holders: dict[str, Holder] = field(default_factory=dict)
    """The unit's points another process holds, by name."""
    fatal: str | None = None
    code: int = 0


def train_remote(unit: list[TrainConfig], store_path: str, features: LoadedFeatures, threads: int,
                 tag: tuple[int, int]) -> Outcome:
    """One unit in a Ray task, with ``threads`` torch threads."""
    import torch

    torch.set_num_threads(max(1, threads))
    out = Outcome()
    try:
        out.holders = run_unit(unit, store_path, lambda _: unshared(features), out.lines.append, tag)
    except FerError as e:
        out.fatal, out.code = str(e), e.exit_code
    except Exception as e:  # noqa: BLE001 - one line, not a Ray traceback
        out.fatal, out.code = f"{type(e).__name__}: {e} (a bug, not your settings)", FerError.exit_code
    return out


class RaySweep:
    """Runs a sweep's units as Ray tasks on ``address`` (a cluster; else a local instance), each with
    ``gpus_per_run`` GPUs (fractions allowed) and ``cpus_per_run`` CPUs."""

    def __init__(self, address: str | None = None, gpus_per_run: float = 0.0, cpus_per_run: int = 1,
                 progress: bool = True):
        if gpus_per_run < 0:
            raise FerError(f"--gpus-per-run must be >= 0, got {gpus_per_run:g}")
        if gpus_per_run > 1 and gpus_per_run != int(gpus_per_run):
            raise FerError(f"--gpus-per-run {gpus_per_run:g}: above 1 it must be a whole number of GPUs")
        self.address, self.progress = address, progress
        self.gpus, self.cpus = float(gpus_per_run), int(cpus_per_run)

    def run(self, units: Sequence[list[TrainConfig]], store_path: str,
            features_for: Callable[[TrainConfig], Any], out_dir: Path, *, log: Log = print) -> dict[str, Holder]:
        """Train every unit (features from ``features_for``, into the object store once per distinct set);
        returns the points another process holds (left to it), by name."""
        ray = import_ray()
        with ray_session(self.address) as session:
            if self.gpus and session.gpus < self.gpus:
                raise FerError(f"--gpus-per-run {self.gpus:g} asks for more GPUs than the "
                               f"{session.describe()} has")
            paths = {"the sweep folder": str(Path(out_dir).resolve())}
            if any(features_for(u[0]).streamed for u in units):  # the tasks read streamed sets from the store
                paths["the store"] = str(Path(store_path).resolve())
            check_nodes(paths, session)
            points = sum(len(u) for u in units)
            log(f"sweep: {points} points as Ray tasks on the {session.describe()}, {len(units)} task(s) (points "
                f"trained together are one task), {self.gpus:g} GPU and {self.cpus} CPU each")
            refs: dict[int, Any] = {}
            task = ray.remote(train_remote).options(num_cpus=self.cpus, num_gpus=self.gpus,
                                                    max_retries=RETRIES)
            running = {}
            at = 0
            for unit in units:
                feats = features_for(unit[0])
                if id(feats) not in refs:
                    refs[id(feats)] = ray.put(shared(feats))
                running[task.remote(list(unit), store_path, refs[id(feats)], self.cpus, (at, points))] = unit
                at += len(unit)
            return self._collect(ray, session, running, log)

    def _collect(self, ray: Any, session: Any, running: dict[Any, list[TrainConfig]],
                 log: Log) -> dict[str, Holder]:
        """Wait for the tasks, printing each point's lines as it ends; the first failure ends the sweep.
        Returns the points another process held."""
        from tqdm import tqdm

        bar = tqdm(total=sum(len(u) for u in running.values()), unit="run", desc="sweep", file=sys.stderr,
                   disable=not self.progress)
        others: dict[str, Holder] = {}
        try:
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                unit = running.pop(ready[0])
                name = ", ".join(Path(c.out).name for c in unit)
                try:
                    out: Outcome = ray.get(ready[0])
                except Exception as e:  # noqa: BLE001 - a task Ray gave up on, a lost node: one line
                    raise session.error(e, f"training {name}") from None
                for line in out.lines:
                    log(line)
                if out.fatal is not None:
                    raise (FerEnvError if out.code == FerEnvError.exit_code else FerError)(
                        f"sweep point {name}: {out.fatal}")
                others.update(out.holders)
                bar.update(len(unit))
        finally:
            for ref in running:  # the sweep stops: the others keep their finished folds for a rerun
                ray.cancel(ref, force=True)
            bar.close()
        return others
