"""`fer report`: compare run folders side by side (the paper's Table 1, made from runs).

Runs are sorted by their validation score (the kept epoch's, mean over folds), never by test: picking the best
point of a sweep from its test column would be choosing settings on the test set. `--best` names that point by
validation; runs without validation clips (the literature protocol) are marked and never ranked.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer.cache.errors import FerError


@dataclass
class RunSummary:
    """One row of the comparison table, computed from a run folder's metrics.json and config.json."""

    name: str
    """Run folder name."""
    path: Path
    """Run folder."""
    modalities: list[str]
    """Modalities the model saw, e.g. ["face", "audio"]."""
    fusion: str
    """none | fc | transformer."""
    loss: str
    """kl | mse | ce | wce."""
    war: list[float]
    """WAR (0..1) of each finished fold, in fold order."""
    uar: list[float]
    """UAR (0..1) of each finished fold, in fold order."""
    folds: list[int]
    """Fold numbers with metrics."""
    epochs: list[int]
    """Epochs run in each finished fold."""
    seconds: float
    """Training time summed over folds."""
    complete: bool
    """metrics.json is present (False: the run is unfinished or was killed; finished folds come from
    metrics_partial.json)."""
    val: dict[str, list[float]] = field(default_factory=dict)
    """war, uar, loss -> the kept epoch's validation score of each finished fold; empty without validation."""
    protocol: str = "fer"
    """fer (selection on validation) or literature (whole training fold, last epoch, no validation)."""

    @property
    def has_val(self) -> bool:
        """Every finished fold has validation scores (so the run can be ranked)."""
        return bool(self.folds) and bool(self.val.get("uar"))

    def val_mean(self, metric: str) -> float:
        return _mean(self.val.get(metric, []))

    def val_std(self, metric: str) -> float:
        return _std(self.val.get(metric, []))

    @property
    def war_mean(self) -> float:
        return _mean(self.war)

    @property
    def war_std(self) -> float:
        return _std(self.war)

    @property
    def uar_mean(self) -> float:
        return _mean(self.uar)

    @property
    def uar_std(self) -> float:
        return _std(self.uar)


def _mean(v: list[float]) -> float:
    return float(np.mean(v)) if v else float("nan")


def _std(v: list[float]) -> float:
    # population std over folds (ddof=0): the folds are the whole protocol, not a sample of it
    return float(np.std(v)) if v else float("nan")


def is_run(path: Path) -> bool:
    """A run folder holds config.json or metrics.json written by `fer train`."""
    path = Path(path)
    return path.is_dir() and ((path / "metrics.json").is_file() or (path / "config.json").is_file())


def find_runs(paths: list[Path]) -> list[Path]:
    """Expand the given paths to run folders: a run folder stands for itself, a parent folder for
    the runs directly inside it (sorted by name). Anything else -> FerError."""
    runs: list[Path] = []
    for p in map(Path, paths):
        if is_run(p):
            runs.append(p)
        elif p.is_dir() and (inner := sorted(c for c in p.iterdir() if is_run(c))):
            runs.extend(inner)
        elif not p.exists():
            raise FerError(f"{p} does not exist; give run folders written by `fer train` (or a folder holding them)")
        else:
            raise FerError(f"{p} is not a run folder (no metrics.json or config.json) and holds no runs; "
                           "give folders written by `fer train` or `fer sweep`")
    if not runs:
        raise FerError("no run folders given; pass one or more folders written by `fer train`")
    seen, unique = set(), []
    for r in runs:
        key = r.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FerError(f"{path} is not valid JSON ({e}); the run is damaged, rerun it") from None
    if not isinstance(data, dict):
        raise FerError(f"{path} does not hold a JSON object; the run is damaged, rerun it")
    return data


def summarize(run_dir: Path) -> RunSummary:
    """Read one run folder into a RunSummary; mean/std are recomputed from the per-fold values."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise FerError(f"{run_dir} is not a run folder (no metrics.json or config.json); "
                       "give a folder written by `fer train`")
    config = _load_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    complete = (run_dir / "metrics.json").is_file()
    # an unfinished run keeps its finished folds in metrics_partial.json
    source = run_dir / ("metrics.json" if complete else "metrics_partial.json")
    metrics = _load_json(source) if source.is_file() else {}
    folds_m = metrics.get("folds") or {}
    try:
        items = sorted(folds_m.items(), key=lambda kv: int(kv[0]))
        war = [float(m["war"]) for _, m in items]
        uar = [float(m["uar"]) for _, m in items]
    except (KeyError, TypeError, ValueError) as e:
        raise FerError(f"{source} lacks per-fold war/uar ({e}); the run is damaged, rerun it") from None
    val = _validation(run_dir, items)
    mods = metrics.get("modalities") or config.get("modalities") or []
    if isinstance(mods, str):
        mods = [m for m in mods.split(",") if m]
    return RunSummary(
        name=run_dir.name,
        path=run_dir,
        modalities=list(mods),
        fusion=str(metrics.get("fusion") or config.get("fusion") or "?"),
        loss=str(metrics.get("loss") or config.get("loss") or "?"),
        war=war,
        uar=uar,
        folds=[int(k) for k, _ in items],
        epochs=[int(m.get("epochs_run", 0)) for _, m in items],
        seconds=float(sum(float(m.get("seconds", 0.0)) for _, m in items)),
        complete=complete,
        val=val,
        protocol=str(metrics.get("protocol") or config.get("protocol") or "fer"),
    )


METRICS = ("uar", "war", "loss")
"""Validation scores a report can rank by (loss: lower is better)."""


def _validation(run_dir: Path, items: list[tuple[str, dict]]) -> dict[str, list[float]]:
    """The kept epoch's validation war/uar/loss per fold: from metrics.json (val_*), or for runs written
    before it held them, from history.csv at each fold's best_epoch. Empty when a fold had no validation."""
    folds = [m for _, m in items]
    if folds and all("val_uar" in m for m in folds):
        if any(m["val_uar"] is None for m in folds):
            return {}
        return {k: [float(m[f"val_{k}"]) for m in folds] for k in METRICS}
    history = run_dir / "history.csv"
    if not folds or not history.is_file():
        return {}
    try:
        with open(history, newline="") as f:
            rows = {(int(r["fold"]), int(r["epoch"])): r for r in csv.DictReader(f)}
        picked = [rows.get((int(k), int(m.get("best_epoch", 0)))) for k, m in items]
        if any(r is None for r in picked):
            return {}
        out = {k: [float(r[f"val_{k}"]) for r in picked] for k in METRICS}
    except (KeyError, TypeError, ValueError, csv.Error):
        return {}  # an old or damaged history: the run shows no validation scores
    return out if all(math.isfinite(v) for v in out["uar"]) else {}


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def _span(v: list[int]) -> str:
    if not v:
        return "-"
    return str(v[0]) if min(v) == max(v) else f"{min(v)}-{max(v)}"


def _folds(s: RunSummary) -> str:
    if not s.folds:
        return "unfinished"
    f = s.folds
    contiguous = len(f) > 2 and f == list(range(f[0], f[-1] + 1))
    text = f"{f[0]}-{f[-1]}" if contiguous else ",".join(map(str, f))
    return text if s.complete else f"{text} (unfinished)"


HEADER = ["run", "modalities", "fusion", "loss", "WAR % (mean ± std)", "UAR % (mean ± std)", "val WAR %",
          "val UAR %", "folds", "epochs", "time"]
"""WAR and UAR: on the test clips; val WAR and val UAR: on the validation clips, at each fold's kept epoch."""


def _val_cell(s: RunSummary, metric: str) -> str:
    if s.has_val:
        return _pm(s.val_mean(metric), s.val_std(metric))
    return "none (literature)" if s.protocol == "literature" else "none"


def rows(summaries: list[RunSummary]) -> list[list[str]]:
    """Table cells, one list per run, in HEADER order."""
    return [
        [s.name, "+".join(s.modalities) or "?", s.fusion, s.loss,
         _pm(s.war_mean, s.war_std), _pm(s.uar_mean, s.uar_std), _val_cell(s, "war"), _val_cell(s, "uar"),
         _folds(s), _span(s.epochs), _duration(s.seconds)]
        for s in summaries
    ]


def format_table(header: list[str], body: list[list[str]], *, markdown: bool = False) -> str:
    """A plain aligned table for the terminal, or a GitHub markdown table."""
    numeric = {i for i, h in enumerate(header) if h.startswith(("WAR", "UAR", "val", "epochs", "time"))}
    if markdown:
        esc = [[c.replace("|", "\\|") for c in r] for r in body]
        align = ["---:" if i in numeric else "---" for i in range(len(header))]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in esc]
        return "\n".join(lines) + "\n"
    widths = [max(len(header[i]), *(len(r[i]) for r in body)) if body else len(header[i]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in body]
    return "\n".join(out) + "\n"


def by_validation(summaries: list[RunSummary], metric: str = "uar") -> list[RunSummary]:
    """Runs best first by the validation ``metric`` (mean over folds; loss: lowest first); runs without
    validation last, in their given order (a stable sort: ties keep the given order too)."""
    if metric not in METRICS:
        raise FerError(f"unknown --metric {metric}: choose from {', '.join(METRICS)} (validation scores)")
    sign = 1.0 if metric == "loss" else -1.0
    return sorted(summaries, key=lambda s: (0, sign * s.val_mean(metric)) if s.has_val else (1, 0.0))


def caption(summaries: list[RunSummary], metric: str = "uar", *, best: bool = False,
            strict: bool = True) -> str:
    """The table's caption: how it is sorted and, with ``best``, the best run by validation ``metric``.

    Runs without validation clips are never ranked; with ``best`` and none that has them, ``strict`` refuses
    (FerError), else the caption says why no run is named."""
    name = "validation loss" if metric == "loss" else f"validation {metric.upper()}"
    lines = [f"Sorted by {name} (mean over folds, at the epoch each fold kept); the test columns (WAR, UAR) "
             "never rank runs."]
    unranked = [s.name for s in summaries if not s.has_val]
    if unranked:
        lines.append("Not ranked, no validation clips (literature protocol: last epoch, whole training "
                     "fold): " + ", ".join(unranked) + ".")
    if best:
        ranked = [s for s in by_validation(summaries, metric) if s.has_val]
        if ranked:
            top = ranked[0]
            score = (f"{top.val_mean(metric):.4f} ± {top.val_std(metric):.4f}" if metric == "loss"
                     else f"{_pm(top.val_mean(metric), top.val_std(metric))} %")
            lines.append(f"Best by {name}: {top.name} ({score}; chosen on validation, never on test).")
        elif strict:
            raise FerError(f"--best ranks runs by {name}, and none of {', '.join(unranked)} has validation "
                           "clips (trained with --protocol literature): it will not rank them by test, which "
                           "would choose on the test set; retrain with --protocol fer to select on "
                           "validation")
        else:
            lines.append("No best run named: none has validation clips, and ranking by test would choose "
                         "on the test set.")
    return "\n".join(lines) + "\n"


def report(run_dirs: list[Path], *, markdown: bool = False, best: bool = False, metric: str = "uar",
           strict: bool = True) -> str:
    """Comparison table of runs: modalities, fusion, loss, test WAR and UAR and validation WAR and UAR, mean
    ± std over folds (in %), folds, epochs, time; sorted by the validation ``metric``. The plain table
    comes under its caption; a markdown table gets one below it, only with ``best`` (the best run by
    validation).
    Accepts run folders or parent folders holding runs; a folder that is neither -> FerError."""
    summaries = by_validation([summarize(r) for r in find_runs(list(run_dirs))], metric)
    table = format_table(HEADER, rows(summaries), markdown=markdown)
    if markdown and not best:
        return table
    text = caption(summaries, metric, best=best, strict=strict)
    return table + "\n" + text if markdown else text + table
