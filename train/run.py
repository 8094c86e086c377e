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
from fer.cache.devices import resolve_device
from fer.cache.errors import FerError
from fer.cache.provenance import now_iso
from fer.cache.report import human_bytes
from fer.train.config import TrainConfig
from fer.train.batches import MemorySource, frame_plans
from fer.train.features import (DEVICE_SHARE, LoadedFeatures, check_leakage, device_budget, features_for, fits_device, load_features,
                                memory_budget)
from fer.train.disk import own_run_folder, prepare_run_folder, run_folder_faults
from fer.train.fit import FoldResult, fit_fold
from fer.train.resources import peak_rss, reset_peak, rss_now
from fer.train.splits import make_split
from fer.train.stream import StreamSource, check_held

Log = Callable[[str], None]

HISTORY_COLUMNS = ["fold", "epoch", "train_loss", "val_loss", "val_war", "val_uar", "lr", "samples_per_s", "seconds"]
# settings a resumed run may change (they do not change what the finished epochs mean)
# finished folds of an unfinished run; metrics.json appears only when every fold is done
PARTIAL = "metrics_partial.json"
RESUMABLE_CHANGES = {"epochs", "patience", "device", "resume", "out", "plots", "stream"}


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


def _prepare_out(out: Path, cfg: TrainConfig, class_names: tuple[str, ...]) -> None:
    started = (out / "config.json").is_file() or any(out.glob("checkpoint_fold*.pt"))
    if cfg.resume:
        if not started:
            raise FerError(f"nothing to resume in {out}: start the run without --resume")
        if (out / "config.json").is_file():
            _check_resume(out, cfg, class_names)
    elif started:
        raise FerError(f"{out} already holds a run: continue it with --resume, or choose another --out")
    prepare_run_folder(out)


def store_protocol(store_path: str | os.PathLike) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class names, fold names) of a store, read from its index without loading any features."""
    from fer.cache import open_store

    with open_store(str(store_path), mode="r") as store:
        return tuple(store.class_names), tuple(store.fold_names)


def deterministic(device: torch.device) -> Callable[[], None]:
    """Make training reproducible on ``device`` (same seed, same machine and software -> same numbers, which
    is what --resume relies on); return a function that restores the previous settings.

    CPU: deterministic algorithms. CUDA: also cuBLAS's fixed workspace (CUBLAS_WORKSPACE_CONFIG, read when
    cuBLAS starts, so set before the first matmul unless the user set it), cuDNN's deterministic kernels and
    no autotuning. TF32 stays on: it is deterministic, only less precise. warn_only: an op without a
    deterministic version warns instead of stopping the run.
    """
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.use_deterministic_algorithms(True, warn_only=True)

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[4], before[5]
        if cublas is None:  # cuBLAS read it when it started; the variable itself goes back to unset
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    return restore


def make_source(features: LoadedFeatures, cfg: TrainConfig, plans: dict, device: torch.device,
                splits: dict[int, Any], store: str, log: Log) -> MemorySource | StreamSource:
    """The run's batch source: streamed when the features stayed on disk (then the validation clips of each
    fold must fit the budget, else this refuses before training), else in memory, on the device when it can
    hold them (checked before copying) or in host memory with each batch copied."""
    if features.streamed:
        budget = memory_budget()
        src = StreamSource(features, cfg, plans, device, budget=budget,
                           hold_on_device=lambda nbytes: fits_device(nbytes, device), log=log)
        try:
            for fold, split in splits.items():
                check_held(features.sets, plans, len(split.val), budget=budget, stream_bytes=src.buffer_bytes,
                           what=f"cannot stream {store} for fold {fold}")
        except BaseException:
            src.close()
            raise
        return src
    nbytes = features.nbytes(cfg.modalities)
    on_device = fits_device(nbytes, device)
    if not on_device:
        free = device_budget(device) or 0
        log(f"the feature sets ({human_bytes(nbytes)}) do not fit in {device} memory ({human_bytes(free)} free, of "
            f"which features may take {DEVICE_SHARE:.0%}): they stay in host memory and each batch is copied to the device")
    return MemorySource(features.sets, cfg, plans, device, on_device=on_device)


def _backbone(cfg: TrainConfig, features: LoadedFeatures, fold: int, log: Log) -> torch.nn.Module | None:
    """The fold's fresh trainable top (--finetune), from the weights the face set was made with."""
    if cfg.finetune is None:
        return None
    from fer.train.fit import fold_seed
    from fer.train.tops import build_top

    return build_top(cfg.finetune, features.sets["face"].provenance, lora=cfg.lora,
                     seed=fold_seed(cfg.seed, fold), log=log)


def train_run(cfg: TrainConfig, store_path: str | os.PathLike, *, features: LoadedFeatures | None = None,
              log: Log = print) -> dict[str, Any]:
    """Train `cfg.folds` on the store and write the run folder; return the metrics.json dict.

    `cfg` is left as it is: the run works on `cfg.for_run(...)` (its folds, run folder and protocol settled),
    which is what config.json records. `features` (from `load_features`, possibly holding more modalities)
    skips loading, so `fer sweep` reads a store once for many runs.
    """
    cfg.validate()
    if features is None:
        class_names, fold_names = store_protocol(store_path)
    else:
        class_names, fold_names = features.class_names, features.fold_names
    return _train(cfg.for_run(fold_names, str(store_path)), store_path, class_names, features=features,
                  log=log)


@run_folder_faults(lambda cfg, *_, **__: cfg.out)
def _train(cfg: TrainConfig, store_path: str | os.PathLike, class_names: tuple[str, ...], *,
           features: LoadedFeatures | None, log: Log) -> dict[str, Any]:
    """train_run on a settled config (TrainConfig.for_run), in the run folder it owns."""
    out = Path(cfg.out)
    with own_run_folder(out):  # before anything is written; a second process on this --out stops here
        return _train_in(out, cfg, store_path, class_names, features, log)


def _train_in(out: Path, cfg: TrainConfig, store_path: str | os.PathLike, class_names: tuple[str, ...],
              features: LoadedFeatures | None, log: Log) -> dict[str, Any]:
    """The rest of train_run, in the run folder it owns."""
    _prepare_out(out, cfg, class_names)
    specs = {"face": cfg.face, "pose": cfg.pose, "audio": cfg.audio}
    device = resolve_device(cfg.device)
    restore = deterministic(device)  # first: it loads libraries, which the memory figures should not count
    try:
        own_peak = reset_peak()
        rss_start = rss_now()
        if features is None:
            features = load_features(str(store_path), cfg.modalities, specs=specs,
                                     allow_incomplete=cfg.allow_incomplete, stream=cfg.stream, log=log)
        else:
            features_for(features, cfg.modalities, specs)
        plans = frame_plans(features.sets, cfg, str(store_path))
        splits = {}
        for fold in cfg.folds:  # refuse before any training happens
            check_leakage(features, cfg.modalities, fold)
            splits[fold] = make_split(features.folds, features.labels, fold, val_fraction=cfg.val_fraction,
                                      seed=cfg.seed, usable=features.has_target,
                                      validation=cfg.protocol != "literature")
        source = make_source(features, cfg, plans, device, splits, str(store_path), log)
    except BaseException:
        restore()
        raise

    try:
        config = cfg.to_dict()
        config.update({
            "features": {m: {"spec": features.sets[m].spec, "provenance": features.sets[m].provenance} for m in cfg.modalities},
            "store": str(store_path), "fer_version": __version__,
            "created": now_iso(), "command": list(sys.argv), "folds": list(cfg.folds),
            "n_clips": int(features.n), "left_out": int(features.left_out), "has_votes": bool(features.has_votes),
            "class_names": list(features.class_names), "fold_names": list(features.fold_names),
            "streamed": features.streamed,
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

        log(f"{features.n} clips; " + ", ".join(f"{m}: {md.spec} {tuple(md.row_shape)}" for m, md in features.sets.items()
                                                if m in cfg.modalities) + f"; device {device}; run folder {out}")
        resources = {"rss_start_bytes": rss_start, "peak_is_this_run": own_peak, "feature_bytes": features.nbytes(cfg.modalities),
                     "memory_budget_bytes": memory_budget(), "device": str(device), **source.describe()}
        for fold in cfg.folds:
            if str(fold) in fold_metrics:
                log(f"fold {fold}: already finished, skipped")
                continue
            split = splits[fold]
            log(f"fold {fold}: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} test clips")
            done_rows = list(history)

            def on_epoch(rows: list[dict[str, float]], done_rows: list = done_rows) -> None:
                _write_history(out / "history.csv", done_rows + rows)

            res: FoldResult = fit_fold(cfg, features, source, split, device, checkpoint=out / f"checkpoint_fold{fold}.pt",
                                       backbone=_backbone(cfg, features, fold, log), resume=cfg.resume,
                                       on_epoch=on_epoch, log=log)
            history = done_rows + res.history
            _write_history(out / "history.csv", history)
            np.savez(out / f"predictions_fold{fold}.npz", ids=np.asarray(res.ids, dtype=str), probs=res.probs,
                     labels=res.labels)
            fold_metrics[str(fold)] = res.metrics
            if "weighted" in (cfg.audio_layer, cfg.face_layer):
                from fer.train.layer_mix import write_layer_weights

                for m in ("audio", "face"):
                    if getattr(cfg, f"{m}_layer") == "weighted" and m in cfg.modalities:
                        write_layer_weights(out, fold, features.sets[m].spec, m)
            _write_json(out / "resources.json", {**resources, "peak_rss_bytes": peak_rss()})
            _write_json(partial, metrics_summary(fold_metrics, cfg, features.class_names, features.fold_names))
            log(f"fold {fold}: test WAR {100 * res.metrics['war']:.2f}  UAR {100 * res.metrics['uar']:.2f} "
                f"(epoch {res.metrics['best_epoch']} of {res.metrics['epochs_run']})")
    except KeyboardInterrupt:
        log(f"interrupted: {out} holds the finished folds and the last epoch's checkpoint; continue with --resume")
        raise
    finally:
        restore()
        source.close()
    summary = metrics_summary(fold_metrics, cfg, features.class_names, features.fold_names)
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
