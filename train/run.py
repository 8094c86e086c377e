"""One `fer train` run: load features once, run the folds, write the run folder (notes/RUN_FORMAT.md)."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fer import __version__
from fer.cache.errors import FerError
from fer.cache.provenance import now_iso
from fer.cache.schema import CLASS_NAMES
from fer.train.config import TrainConfig
from fer.train.disk import prepare_run_folder, run_folder_faults
from fer.train.features import LoadedFeatures, ModalityData, check_leakage, features_for, load_features
from fer.train.fit import FoldResult, fit_fold, resolve_device
from fer.train.splits import make_split

Log = Callable[[str], None]

HISTORY_COLUMNS = ["fold", "epoch", "train_loss", "val_loss", "val_war", "val_uar", "lr", "samples_per_s", "seconds"]
# settings a resumed run may change (they do not change what the finished epochs mean)
# finished folds of an unfinished run; metrics.json appears only when every fold is done
PARTIAL = "metrics_partial.json"
RESUMABLE_CHANGES = {"epochs", "patience", "device", "resume", "out", "plots"}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    _write_text(path, json.dumps(obj, indent=2) + "\n")


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: (int(v) if k in ("fold", "epoch") else float(v)) for k, v in r.items()} for r in csv.DictReader(f)]


def _write_history(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def metrics_summary(fold_metrics: dict[str, dict[str, Any]], cfg: TrainConfig) -> dict[str, Any]:
    """metrics.json content: per-fold metrics plus mean and population std of WAR/UAR over folds."""
    wars = [m["war"] for m in fold_metrics.values()]
    uars = [m["uar"] for m in fold_metrics.values()]
    return {"folds": dict(sorted(fold_metrics.items(), key=lambda kv: int(kv[0]))),
            "mean": {"war": float(np.mean(wars)), "uar": float(np.mean(uars))},
            "std": {"war": float(np.std(wars)), "uar": float(np.std(uars))},
            "class_names": list(CLASS_NAMES), "modalities": list(cfg.modalities), "fusion": cfg.fusion, "loss": cfg.loss}


def results_table(summary: dict[str, Any]) -> str:
    """Per-fold WAR/UAR and the mean +/- std, as a small text table."""
    lines = [f"{'fold':>6}  {'WAR':>6}  {'UAR':>6}  {'best':>4}  {'epochs':>6}  {'seconds':>7}"]
    for k, m in summary["folds"].items():
        lines.append(f"{k:>6}  {100 * m['war']:6.2f}  {100 * m['uar']:6.2f}  {m['best_epoch']:4d}  {m['epochs_run']:6d}  {m['seconds']:7.1f}")
    mean, std = summary["mean"], summary["std"]
    lines.append(f"{'mean':>6}  {100 * mean['war']:6.2f}  {100 * mean['uar']:6.2f}")
    lines.append(f"{'± std':>6}  {100 * std['war']:6.2f}  {100 * std['uar']:6.2f}   (over {len(summary['folds'])} folds)")
    return "\n".join(lines)


def _check_resume(out: Path, cfg: TrainConfig) -> None:
    old = json.loads((out / "config.json").read_text())
    diff = [f"{k} ({old.get(k)!r} -> {v!r})" for k, v in cfg.to_dict().items()
            if k not in RESUMABLE_CHANGES and k in old and old.get(k) != v]
    if diff:
        raise FerError(f"--resume with other settings than {out} was started with: {', '.join(diff)}; "
                       "repeat the original options (only --epochs, --patience, --device may change)")


def _prepare_out(out: Path, cfg: TrainConfig) -> None:
    started = (out / "config.json").is_file() or any(out.glob("checkpoint_fold*.pt"))
    if cfg.resume:
        if not started:
            raise FerError(f"nothing to resume in {out}: start the run without --resume")
        if (out / "config.json").is_file():
            _check_resume(out, cfg)
    elif started:
        raise FerError(f"{out} already holds a run: continue it with --resume, or choose another --out")
    prepare_run_folder(out)


def _backbone(cfg: TrainConfig, features: LoadedFeatures, log: Log) -> torch.nn.Module | None:
    if cfg.finetune != "layer4":
        return None
    from fer.train.model import build_backbone

    return build_backbone(features.sets["face"].provenance, log)


@run_folder_faults(lambda cfg, *_, **__: cfg.out)
def train_run(cfg: TrainConfig, store_path: str | os.PathLike, *, features: LoadedFeatures | None = None,
              log: Log = print) -> dict[str, Any]:
    """Train `cfg.folds` on the store and write the run folder; return the metrics.json dict.

    `features` (from `load_features`, possibly holding more modalities) skips loading, so `fer sweep`
    reads a store once for many runs.
    """
    cfg.validate()
    out = Path(cfg.out or cfg.default_out())
    cfg.out = str(out)
    _prepare_out(out, cfg)
    specs = {"face": cfg.face, "pose": cfg.pose, "audio": cfg.audio}
    if features is None:
        features = load_features(str(store_path), cfg.modalities, specs=specs,
                                 allow_incomplete=cfg.allow_incomplete, log=log)
    else:
        features_for(features, cfg.modalities, specs)
    for fold in cfg.folds:  # refuse before any training happens
        check_leakage(features, cfg.modalities, fold)
    device = resolve_device(cfg.device)

    config = cfg.to_dict()
    config.update({
        "features": {m: {"spec": features.sets[m].spec, "provenance": features.sets[m].provenance} for m in cfg.modalities},
        "store": str(store_path), "fer_version": __version__,
        "created": now_iso(), "command": list(sys.argv), "folds": list(cfg.folds),
        "n_clips": int(features.n), "left_out": int(features.left_out), "has_votes": bool(features.has_votes),
    })
    if not (cfg.resume and (out / "config.json").is_file()):
        _write_json(out / "config.json", config)

    fold_metrics: dict[str, dict[str, Any]] = {}
    partial = out / PARTIAL
    for done_file in (out / "metrics.json", partial):
        if cfg.resume and done_file.is_file():
            fold_metrics.update({k: v for k, v in json.loads(done_file.read_text()).get("folds", {}).items()
                                 if int(k) in cfg.folds})
    history = [r for r in _read_history(out / "history.csv") if str(r["fold"]) in fold_metrics]

    det = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    sets = {m: ModalityData(md.spec, md.data.to(device), md.mask.to(device), md.provenance)
            for m, md in features.sets.items() if m in cfg.modalities}
    log(f"{features.n} clips; " + ", ".join(f"{m}: {md.spec} {tuple(md.data.shape[1:])}" for m, md in sets.items())
        + f"; device {device}; run folder {out}")
    try:
        for fold in cfg.folds:
            if str(fold) in fold_metrics:
                log(f"fold {fold}: already finished, skipped")
                continue
            split = make_split(features.folds, features.labels, fold, val_fraction=cfg.val_fraction,
                               seed=cfg.seed, usable=features.has_target)
            log(f"fold {fold}: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} test clips")
            done_rows = list(history)

            def on_epoch(rows: list[dict[str, float]], done_rows: list = done_rows) -> None:
                _write_history(out / "history.csv", done_rows + rows)

            res: FoldResult = fit_fold(cfg, features, sets, split, device, checkpoint=out / f"checkpoint_fold{fold}.pt",
                                       backbone=_backbone(cfg, features, log), resume=cfg.resume, on_epoch=on_epoch, log=log)
            history = done_rows + res.history
            _write_history(out / "history.csv", history)
            np.savez(out / f"predictions_fold{fold}.npz", ids=np.asarray(res.ids, dtype=str), probs=res.probs,
                     labels=res.labels)
            fold_metrics[str(fold)] = res.metrics
            _write_json(partial, metrics_summary(fold_metrics, cfg))
            log(f"fold {fold}: test WAR {100 * res.metrics['war']:.2f}  UAR {100 * res.metrics['uar']:.2f} "
                f"(epoch {res.metrics['best_epoch']} of {res.metrics['epochs_run']})")
    except KeyboardInterrupt:
        log(f"interrupted: {out} holds the finished folds and the last epoch's checkpoint; continue with --resume")
        raise
    finally:
        torch.use_deterministic_algorithms(det)
    summary = metrics_summary(fold_metrics, cfg)
    _write_json(out / "metrics.json", summary)  # written last: its presence marks a finished run
    partial.unlink(missing_ok=True)
    log(results_table(summary))
    write_plots = None
    if cfg.plots:
        try:
            from fer.train.plots import write_plots
        except ImportError:
            pass
    if write_plots is not None:
        try:
            write_plots(out)
        except Exception as e:  # plots are a convenience; the metrics are already written
            log(f"warning: plots not written ({type(e).__name__}: {e})")
    return summary
