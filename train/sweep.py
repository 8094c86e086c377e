"""`fer sweep`: a grid of training runs on one store, features loaded once, then the report.

The "many ablations on one cache" workflow: every grid point is a normal run folder under
out_dir, named from the settings that vary. A point whose metrics.json exists is skipped, so a
killed sweep resumes where it stopped. Points that share an architecture and differ only in what each
model of a stack holds (fer.train.together.PER_MODEL: --lr, --dropout, --loss, --seed, ...) form one unit
and train together as one batched model, folds included; the others are units of one point (`--dry-run`
shows the units). A sweep owns the folders of the unit it trains (the lock of `fer train`), and passes over
points another process holds: several sweeps started on one grid and --out (on one machine, or on several
sharing the file system) split the grid between them. ``run_unit`` trains one unit, wherever it runs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from fer.cache.errors import FerError
from fer.cache.locks import Holder
from fer.train.config import TrainConfig

Log = Callable[[str], None]

# settings that name the run folder or the store's data, not a training choice
_NOT_SWEPT = {"out", "resume", "device", "plots", "folds_together"}


def expand_grid(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Cartesian product of the grid, first key varying slowest; keys must be TrainConfig fields."""
    names = {f.name for f in fields(TrainConfig)}
    for key, values in grid.items():
        if key not in names or key in _NOT_SWEPT:
            sweepable = ", ".join(sorted(names - _NOT_SWEPT))
            raise FerError(f"cannot sweep over {key!r}: choose among {sweepable}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise FerError(f"sweep values of {key} must be a non-empty list (got {values!r})")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(_fmt(v) for v in value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace("/", "_").replace(" ", "")


def point_name(point: dict[str, Any], varied: Sequence[str]) -> str:
    """Folder name from the varied settings, e.g. 'fusion-fc_loss-kl_modalities-face+audio'."""
    return "_".join(f"{k.replace('_', '')}-{_fmt(point[k])}" for k in varied)


def _incompatible(cfg: TrainConfig) -> str | None:
    """Why a grid point is skipped rather than refused: combinations a cartesian grid makes naturally."""
    if len(cfg.modalities) > 1 and cfg.fusion == "none":
        return f"fusion none is face only, not {'+'.join(cfg.modalities)}"
    return None


def plan(grid: dict[str, Sequence[Any]], base: TrainConfig, out_dir: Path, *, log: Log = print) -> list[TrainConfig]:
    """One validated TrainConfig per grid point, each with its own run folder under out_dir.

    Points that combine settings which cannot go together (fusion none with several modalities)
    are skipped with a log line; any other invalid setting -> FerError.
    """
    points = expand_grid(grid)
    varied = [k for k in grid if len(grid[k]) > 1]
    configs, seen = [], {}
    for p in points:
        name = point_name(p, varied) if varied else Path(base.default_out()).name
        cfg = replace(base, **p, out=str(Path(out_dir) / name), resume=False)
        why = _incompatible(cfg)
        if why is not None:
            log(f"sweep: skipping {name} ({why})")
            continue
        try:
            cfg.validate()
        except FerError as e:
            raise FerError(f"sweep point {name}: {e}") from None
        if name in seen:
            raise FerError(f"sweep points {seen[name]} and {p} would share the run folder {name}; "
                           "remove a duplicate value")
        seen[name] = p
        configs.append(cfg)
    if not configs:
        raise FerError("every sweep point was skipped: with several --modalities use --fusion fc or transformer")
    return configs


def parse_grid(options: dict[str, str | None]) -> tuple[dict[str, list], dict[str, Any]]:
    """Split `fer sweep` options (TrainConfig field -> text, None when not given) into the grid (settings with
    several values) and base overrides (settings with one value). Values are separated by "," except where
    one value already holds commas (modalities, folds, augment), which are separated by ";"."""
    from fer.train.options import parse_grid as parse

    return parse(options)


def is_complete(run_dir: Path) -> bool:
    """A run is complete when `fer train` wrote its metrics.json (the last file of a run)."""
    return (Path(run_dir) / "metrics.json").is_file()


def units(configs: Sequence[TrainConfig]) -> list[list[TrainConfig]]:
    """The grid points in units of training: points with one group_key train together (in the order of their
    first point), unless --folds-together 1 or --finetune keeps every model alone."""
    from fer.train.together import group_key  # imports torch, which `fer` does not at start-up

    out: dict[tuple, list[TrainConfig]] = {}
    for i, cfg in enumerate(configs):
        alone = cfg.folds_together == 1 or cfg.finetune is not None
        out.setdefault((i,) if alone else group_key(cfg), []).append(cfg)
    return list(out.values())


def describe_units(groups: Sequence[Sequence[TrainConfig]]) -> list[str]:
    """One line per unit: its points (and that they train together)."""
    lines = []
    for i, g in enumerate(groups, 1):
        names = ", ".join(Path(str(c.out)).name for c in g)
        lines.append(f"sweep: unit {i}: {names}" + (f" ({len(g)} points trained together)" if len(g) > 1 else ""))
    return lines


def sweep(store_path: str | Path, grid: dict[str, list], base: TrainConfig, out_dir: str | Path, *,
          log: Log = print, engine: Any = None, dry_run: bool = False) -> list[Path]:
    """Train every grid point on one store, loading the features once; returns the run folders.

    Writes out_dir/<point>/ per point (skipping points already complete, and points another process
    is running), unit by unit (``units``: points that train together), then prints the comparison table of the
    complete points, which names the best point by validation UAR, and writes it to out_dir/report.md.
    ``engine`` (fer.train.ray_sweep.RaySweep) runs the units elsewhere, each through ``run_unit`` as here; the
    plan, skip-finished and report stay here. ``dry_run``: only say which units would train.
    """
    from fer.train.features import load_features
    from fer.train.report import report

    out_dir = Path(out_dir)
    configs = plan(grid, base, out_dir, log=log)
    todo = [c for c in configs if not is_complete(Path(c.out))]
    done = len(configs) - len(todo)
    groups = units(todo)
    log(f"sweep: {len(configs)} points in {out_dir} ({done} already complete, {len(todo)} to run in "
        f"{len(groups)} unit(s))")
    for line in describe_units(groups):
        log(line)
    if dry_run:
        return [Path(c.out) for c in configs]
    others: dict[str, Holder] = {}  # points another process holds
    if todo:
        out_dir.mkdir(parents=True, exist_ok=True)
        specs = {m: getattr(base, m) for m in ("face", "pose", "audio")}
        loaded: dict[tuple[str, ...], Any] = {}

        def features_for(cfg: TrainConfig) -> Any:
            key = features_key(cfg, base, todo)
            if key not in loaded:
                log(f"sweep: loading features {'+'.join(key)} from {store_path} (once)")
                loaded[key] = load_features(str(store_path), key, specs=specs, allow_incomplete=base.allow_incomplete,
                                            stream=base.stream, log=log)
            return loaded[key]

        if engine is not None:
            others = engine.run(groups, str(store_path), features_for, out_dir, log=log)
        else:
            at = 0
            for group in groups:
                others.update(run_unit(group, str(store_path), features_for, log, (at, len(todo))))
                at += len(group)
    runs = [Path(c.out) for c in configs]
    finished = [r for r in runs if is_complete(r)]
    running = [f"{name} ({who})" for name, who in others.items() if not is_complete(out_dir / name)]
    if running:
        log(f"sweep: {len(finished)} of {len(runs)} points complete; still running in other processes: "
            + ", ".join(running))
    if finished:  # the best point named by validation UAR, never by test
        log(report(finished, best=True, strict=False))
        # several sweeps may end at once: each writes its own temp file and renames it into place
        tmp = out_dir / f".report.md.{os.getpid()}.tmp"
        tmp.write_text(report(finished, markdown=True, best=True, strict=False))
        os.replace(tmp, out_dir / "report.md")
        log(f"sweep: table written to {out_dir / 'report.md'}")
    return runs


def features_key(cfg: TrainConfig, base: TrainConfig, todo: Sequence[TrainConfig]) -> tuple[str, ...]:
    """The modalities loaded for ``cfg``. Without --allow-incomplete every chosen set has all fold rows done,
    so the union of the points' modalities is loaded once and shared. With it, the rows kept depend on the
    modalities loaded, so each distinct modality set is loaded (once) on its own."""
    if base.allow_incomplete:
        return tuple(cfg.modalities)
    return tuple(m for m in ("face", "pose", "audio") if any(m in c.modalities for c in todo))


def started(run: Path) -> bool:
    """A point killed mid-run left its config or a checkpoint: it continues from there."""
    from fer.train.run_folder import started as holds_run

    return holds_run(run)


def run_unit(unit: TrainConfig | Sequence[TrainConfig], store_path: str,
             features_for: Callable[[TrainConfig], Any], log: Log = print,
             tag: tuple[int, int] = (0, 0)) -> dict[str, Holder]:
    """Train one unit of the sweep (a grid point, or points that train together: ``units``) in this process,
    which owns the points' run folders meanwhile; returns, by name, who holds the folders other processes hold
    (those points are left to them). A point killed mid-run continues from its finished folds and last
    checkpoint; one another process completed is passed over. ``tag``: (points before this unit, points in
    the sweep), for the log's ``[i/n]``."""
    from fer.train.disk import try_run_folder
    from fer.train.run import train_runs

    points = [unit] if isinstance(unit, TrainConfig) else list(unit)
    others: dict[str, Holder] = {}
    with contextlib.ExitStack() as held:
        mine = []
        for i, cfg in enumerate(points, tag[0] + 1):
            run, at = Path(cfg.out), f"sweep: [{i}/{tag[1] or len(points)}]"
            lock = try_run_folder(run)
            if isinstance(lock, Holder):
                log(f"{at} {run.name} is being run by {lock}: left to it")
                others[run.name] = lock
                continue
            held.enter_context(lock)  # held through the training, which takes it again
            if is_complete(run):  # another sweep finished it after this one looked
                log(f"{at} {run.name} was completed by another process")
                continue
            log(f"{at} {run.name}" + (" (resuming)" if started(run) else ""))
            # a point killed mid-run continues from its finished folds and last checkpoint
            mine.append(replace(cfg, resume=started(run)))
        if len(mine) > 1:
            log(f"sweep: {len(mine)} points trained together")
        if mine:
            train_runs(mine, store_path, features=features_for(mine[0]), log=log)
    return others


@dataclass
class SweepConfig:
    """Settings of `fer sweep` itself, beside each point's TrainConfig: where the points run."""

    engine: str = "process"
    """process | ray: the grid points one after another in this process, or side by side as Ray tasks on a
    local Ray instance or a cluster (the features loaded once and shared through Ray's object store; the sweep
    folder on a shared filesystem). Needs the ray extra."""
    gpus_per_run: float = 0.0
    """With --engine ray: GPUs each grid point holds; a fraction (0.25) lets several small runs share one GPU,
    0 trains on CPUs."""
    ray_address: str | None = None
    """With --engine ray: the Ray cluster to join (e.g. 10.0.0.1:6379). Default: $RAY_ADDRESS, else a local
    instance started and stopped by this command."""
    dry_run: bool = False
    """Only list the grid's units of training (the points that train together as one batched model, and the
    points already complete) and train nothing."""

    def runner(self) -> Any:
        """None for ``--engine process`` (the points one after another here), a RaySweep for ``ray``; FerError
        for options that do not go with the engine chosen."""
        from fer.ray_session import wants_ray

        ray_only = {"--gpus-per-run": self.gpus_per_run, "--ray-address": self.ray_address}
        if not wants_ray(self.engine, ray_only):
            return None
        from fer.train.ray_sweep import RaySweep

        return RaySweep(self.ray_address, self.gpus_per_run)
