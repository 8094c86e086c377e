"""One run's folder while its folds train (notes/RUN_FORMAT.md): config.json, history.csv, predictions and
metrics per fold as each fold finishes, metrics.json and the table at the end.

Folds may finish in any order and train side by side (fer.train.fit.fit_group): history.csv always holds the
finished folds and the running ones, fold by fold, and metrics_partial.json the finished ones, so an
interrupted run resumes where it stood and a finished one reads as if its folds ran one after another.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fer.cache.errors import FerError
from fer.train.config import TrainConfig
from fer.train.disk import prepare_run_folder
from fer.train.fit import FoldResult

Log = Callable[[str], None]

HISTORY_COLUMNS = ["fold", "epoch", "train_loss", "val_loss", "val_war", "val_uar", "lr", "samples_per_s", "seconds"]
PARTIAL = "metrics_partial.json"
"""Finished folds of an unfinished run; metrics.json appears only when every fold is done."""
RESUMABLE_CHANGES = {"epochs", "patience", "device", "resume", "out", "plots", "stream", "folds_together"}
"""Settings a resumed run may change (they do not change what the finished epochs mean)."""


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k in ("fold", "epoch") else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def write_history(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def metrics_summary(fold_metrics: dict[str, dict[str, Any]], cfg: TrainConfig,
                    class_names: tuple[str, ...], fold_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """metrics.json content: per-fold metrics plus mean and population std over folds of the test WAR/UAR and,
    when every fold had validation clips, of the kept epoch's validation WAR/UAR."""
    keys = ["war", "uar"]
    if all(m.get("val_uar") is not None for m in fold_metrics.values()):
        keys += ["val_war", "val_uar"]
    return {"folds": dict(sorted(fold_metrics.items(), key=lambda kv: int(kv[0]))),
            "mean": {k: float(np.mean([m[k] for m in fold_metrics.values()])) for k in keys},
            "std": {k: float(np.std([m[k] for m in fold_metrics.values()])) for k in keys},
            "class_names": list(class_names), "fold_names": list(fold_names), "modalities": list(cfg.modalities),
            "fusion": cfg.fusion, "loss": cfg.loss, "protocol": cfg.protocol}


def results_table(summary: dict[str, Any]) -> str:
    """Per-fold test WAR/UAR (and the kept epoch's validation UAR), the mean +/- std: a small text table."""
    val = "val_uar" in summary["mean"]

    def v(m: dict[str, Any]) -> str:
        return f"  {100 * m['val_uar']:7.2f}" if val else ""

    lines = [f"{'fold':>6}  {'WAR':>6}  {'UAR':>6}" + (f"  {'val UAR':>7}" if val else "")
             + f"  {'best':>4}  {'epochs':>6}  {'seconds':>7}"]
    for k, m in summary["folds"].items():
        lines.append(f"{k:>6}  {100 * m['war']:6.2f}  {100 * m['uar']:6.2f}" + v(m)
                     + f"  {m['best_epoch']:4d}  {m['epochs_run']:6d}  {m['seconds']:7.1f}")
    mean, std = summary["mean"], summary["std"]
    lines.append(f"{'mean':>6}  {100 * mean['war']:6.2f}  {100 * mean['uar']:6.2f}" + v(mean))
    lines.append(f"{'± std':>6}  {100 * std['war']:6.2f}  {100 * std['uar']:6.2f}" + v(std)
                 + f"   (over {len(summary['folds'])} folds)")
    if summary.get("protocol") == "literature":
        lines.append("literature protocol: trained on the whole training fold, the last epoch kept, "
                     "no validation")
    return "\n".join(lines)


def started(out: Path) -> bool:
    """A run folder that holds a run (its config or a checkpoint)."""
    return (out / "config.json").is_file() or any(out.glob("checkpoint_fold*.pt"))


def _check_resume(out: Path, cfg: TrainConfig, class_names: tuple[str, ...]) -> None:
    old = json.loads((out / "config.json").read_text())
    was = old.get("class_names")
    if was is not None and list(was) != list(class_names):
        raise FerError(f"{out} was trained on the classes {', '.join(was)}, and this store has "
                       f"{', '.join(class_names)}: resume it on its own store, or start a new run with another --out")
    diff = [f"{k} ({old.get(k)!r} -> {v!r})" for k, v in cfg.to_dict().items()
            if k not in RESUMABLE_CHANGES and k in old and old.get(k) != v]
    if diff:
        raise FerError(f"--resume with other settings than {out} was started with: {', '.join(diff)}; "
                       "repeat the original options (only --epochs, --patience, --device, --stream may "
                       "change)")


class RunFolder:
    """The folder of one run (a settled config, TrainConfig.for_run) while its folds train."""

    def __init__(self, cfg: TrainConfig, class_names: tuple[str, ...], log: Log):
        self.out, self.cfg, self.class_names, self.log = Path(cfg.out), cfg, class_names, log
        self.fold_metrics: dict[str, dict[str, Any]] = {}
        self.done_rows: list[dict[str, float]] = []
        self.running: dict[int, list[dict[str, float]]] = {}
        self.resources: dict[str, Any] = {}
        self.prefix = ""
        """What the log puts before ``fold K`` (the run's name when several runs train together)."""

    def prepare(self) -> None:
        """Refuse a folder that holds another run (or nothing to resume) before anything is loaded; then make
        the folder and prove it writable."""
        if self.cfg.resume:
            if not started(self.out):
                raise FerError(f"nothing to resume in {self.out}: start the run without --resume")
            if (self.out / "config.json").is_file():
                _check_resume(self.out, self.cfg, self.class_names)
        elif started(self.out):
            raise FerError(f"{self.out} already holds a run: continue it with --resume, or choose another --out")
        prepare_run_folder(self.out)

    def begin(self, config: dict[str, Any]) -> None:
        """Write config.json (a resumed run keeps its own) and read what a resumed run finished."""
        if not (self.cfg.resume and (self.out / "config.json").is_file()):
            write_json(self.out / "config.json", config)
        for done_file in (self.out / "metrics.json", self.out / PARTIAL):
            if self.cfg.resume and done_file.is_file():
                self.fold_metrics.update({k: v for k, v in json.loads(done_file.read_text()).get("folds", {}).items()
                                          if int(k) in self.cfg.folds})
        self.done_rows = [r for r in read_history(self.out / "history.csv") if str(r["fold"]) in self.fold_metrics]

    def todo(self) -> list[int]:
        """The folds still to train (a resumed run skips its finished ones, saying so)."""
        out = []
        for fold in self.cfg.folds:
            if str(fold) in self.fold_metrics:
                self.log(f"{self.prefix}fold {fold}: already finished, skipped")
            else:
                out.append(fold)
        return out

    def _rows(self) -> list[dict[str, float]]:
        rows = self.done_rows + [r for rs in self.running.values() for r in rs]
        return sorted(rows, key=lambda r: (int(r["fold"]), int(r["epoch"])))

    def on_epoch(self, fold: int) -> Callable[[list[dict[str, float]]], None]:
        """The history callback of one fold: history.csv is rewritten with every fold's rows so far."""
        def write(rows: list[dict[str, float]]) -> None:
            self.running[fold] = list(rows)
            write_history(self.out / "history.csv", self._rows())

        return write

    def fold_done(self, res: FoldResult, features: Any, peak: int) -> None:
        """A finished fold: its history, predictions, learned layer weights and metrics, and the resources."""
        self.running.pop(res.fold, None)
        self.done_rows = [r for r in self.done_rows if int(r["fold"]) != res.fold] + list(res.history)
        write_history(self.out / "history.csv", self._rows())
        np.savez(self.out / f"predictions_fold{res.fold}.npz", ids=np.asarray(res.ids, dtype=str), probs=res.probs,
                 labels=res.labels)
        self.fold_metrics[str(res.fold)] = res.metrics
        cfg = self.cfg
        if "weighted" in (cfg.audio_layer, cfg.face_layer):
            from fer.train.layer_mix import write_layer_weights

            for m in ("audio", "face"):
                if getattr(cfg, f"{m}_layer") == "weighted" and m in cfg.modalities:
                    write_layer_weights(self.out, res.fold, features.sets[m].spec, m)
        write_json(self.out / "resources.json", {**self.resources, "peak_rss_bytes": peak})
        write_json(self.out / PARTIAL, self.summary(features))
        self.log(f"{self.prefix}fold {res.fold}: test WAR {100 * res.metrics['war']:.2f}  "
                 f"UAR {100 * res.metrics['uar']:.2f} (epoch {res.metrics['best_epoch']} of "
                 f"{res.metrics['epochs_run']})")

    def summary(self, features: Any) -> dict[str, Any]:
        return metrics_summary(self.fold_metrics, self.cfg, features.class_names, features.fold_names)

    def finish(self, features: Any) -> dict[str, Any]:
        """metrics.json (written last: its presence marks a finished run), the table, the plots."""
        summary = self.summary(features)
        write_json(self.out / "metrics.json", summary)
        (self.out / PARTIAL).unlink(missing_ok=True)
        self.log(results_table(summary))
        if self.cfg.plots:
            try:
                from fer.train.plots import write_plots
            except ImportError:
                return summary
            try:
                write_plots(self.out)
            except Exception as e:  # plots are a convenience; the metrics are already written
                self.log(f"warning: plots not written ({type(e).__name__}: {e})")
        return summary
