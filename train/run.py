"""One `fer train` run (or several sweep points of one architecture): load features once, train the folds
(together as batched models where they fit), write each run folder (notes/RUN_FORMAT.md)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fer import __version__
from fer.cache.devices import resolve_device
from fer.cache.provenance import now_iso
from fer.cache.report import human_bytes
from fer.train.batches import MemorySource, frame_plans
from fer.train.config import TrainConfig
from fer.train.disk import own_run_folder, run_folder_faults
from fer.train.features import (
    DEVICE_SHARE,
    LoadedFeatures,
    check_leakage,
    device_budget,
    features_for,
    fits_device,
    load_features,
    memory_budget,
)
from fer.train.fit import FoldResult, Member, fit_group, fold_seed
from fer.train.resources import peak_rss, reset_peak, rss_now
from fer.train.run_folder import RunFolder
from fer.train.splits import FoldSplit, make_split
from fer.train.stream import StreamSource, check_held
from fer.train.together import alone_reason, capacity, chunks, describe

Log = Callable[[str], None]

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
    # deterministic mode also fills every new tensor with NaN (to expose reads of uninitialised memory), a
    # fill per allocation that costs a small model's step up to a fifth of its time; fer never reads one
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False

    def restore() -> None:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.utils.deterministic.fill_uninitialized_memory = fill
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before[4], before[5]
        if cublas is None:  # cuBLAS read it when it started; the variable itself goes back to unset
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)

    return restore


def make_source(features: LoadedFeatures, cfg: TrainConfig, plans: dict, device: torch.device,
                log: Log) -> MemorySource | StreamSource:
    """The run's batch source: streamed when the features stayed on disk, else in memory, on the device when it
    can hold them (checked before copying) or in host memory with each batch copied."""
    if features.streamed:
        return StreamSource(features, cfg, plans, device, budget=memory_budget(),
                            hold_on_device=lambda nbytes: fits_device(nbytes, device), log=log)
    nbytes = features.nbytes(cfg.modalities)
    on_device = fits_device(nbytes, device)
    if not on_device:
        free = device_budget(device) or 0
        log(f"the feature sets ({human_bytes(nbytes)}) do not fit in {device} memory ({human_bytes(free)} free, of "
            f"which features may take {DEVICE_SHARE:.0%}): "
            "they stay in host memory and each batch is copied to the device")
    return MemorySource(features.sets, cfg, plans, device, on_device=on_device)


def _backbone(cfg: TrainConfig, features: LoadedFeatures, fold: int, log: Log) -> torch.nn.Module | None:
    """The fold's fresh trainable top (--finetune), from the weights the face set was made with."""
    if cfg.finetune is None:
        return None
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
    return train_runs([cfg], store_path, features=features, log=log)[0]


def train_runs(cfgs: Sequence[TrainConfig], store_path: str | os.PathLike, *,
               features: LoadedFeatures | None = None, log: Log = print) -> list[dict[str, Any]]:
    """train_run for several runs of one architecture (fer.train.together.group_key: sweep points that differ
    only in per-model settings), whose folds train together; each run keeps its own folder and lock."""
    for cfg in cfgs:
        cfg.validate()
    if features is None:
        class_names, fold_names = store_protocol(store_path)
    else:
        class_names, fold_names = features.class_names, features.fold_names
    settled = [cfg.for_run(fold_names, str(store_path)) for cfg in cfgs]
    return _train(settled, store_path, class_names, features=features, log=log)


def _out_of(cfgs: Sequence[TrainConfig], *_: Any, **__: Any) -> str:
    return str(cfgs[0].out) if len(cfgs) == 1 else str(Path(str(cfgs[0].out)).parent)


@run_folder_faults(_out_of)
def _train(cfgs: Sequence[TrainConfig], store_path: str | os.PathLike, class_names: tuple[str, ...], *,
           features: LoadedFeatures | None, log: Log) -> list[dict[str, Any]]:
    """train_runs on settled configs (TrainConfig.for_run), in the run folders they own."""
    with contextlib.ExitStack() as held:
        for cfg in cfgs:  # before anything is written; a second process on an --out stops here
            held.enter_context(own_run_folder(Path(str(cfg.out))))
        return _train_in(cfgs, store_path, class_names, features, log)


def _config(cfg: TrainConfig, features: LoadedFeatures, store_path: str | os.PathLike) -> dict[str, Any]:
    """config.json: every setting, the feature sets with their provenance, the store's protocol."""
    config = cfg.to_dict()
    config.update({
        "features": {m: {"spec": features.sets[m].spec, "provenance": features.sets[m].provenance}
                     for m in cfg.modalities},
        "store": str(store_path), "fer_version": __version__,
        "created": now_iso(), "command": list(sys.argv), "folds": list(cfg.folds),
        "n_clips": int(features.n), "left_out": int(features.left_out), "has_votes": bool(features.has_votes),
        "class_names": list(features.class_names), "fold_names": list(features.fold_names),
        "streamed": features.streamed,
    })
    return config


def _splits(cfgs: Sequence[TrainConfig], features: LoadedFeatures) -> dict[tuple[int, int], FoldSplit]:
    """(run, fold) -> its split; refuses before any training happens."""
    out = {}
    for i, cfg in enumerate(cfgs):
        for fold in cfg.folds:
            check_leakage(features, cfg.modalities, fold)
            out[i, fold] = make_split(features.folds, features.labels, fold, val_fraction=cfg.val_fraction,
                                      seed=cfg.seed, usable=features.has_target,
                                      validation=cfg.protocol != "literature")
    return out


def _train_in(cfgs: Sequence[TrainConfig], store_path: str | os.PathLike, class_names: tuple[str, ...],
              features: LoadedFeatures | None, log: Log) -> list[dict[str, Any]]:
    """The rest of train_runs, in the run folders they own."""
    folders = [RunFolder(cfg, class_names, log) for cfg in cfgs]
    for f in folders:
        f.prepare()
        if len(folders) > 1:
            f.prefix = f"{f.out.name} "
    cfg = cfgs[0]
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
        splits = _splits(cfgs, features)
        source = make_source(features, cfg, plans, device, log)
    except BaseException:
        restore()
        raise
    try:
        if features.streamed:  # a streamed run trains one fold at a time, holding its validation clips
            for (_, fold), split in splits.items():  # refused before anything is written
                check_held(features.sets, plans, len(split.val), budget=memory_budget(),
                           stream_bytes=source.buffer_bytes, what=f"cannot stream {store_path} for fold {fold}")
    except BaseException:
        restore()
        source.close()
        raise

    try:
        for f, c in zip(folders, cfgs):
            f.begin(_config(c, features, store_path))
        where = ", ".join(str(f.out) for f in folders)
        log(f"{features.n} clips; " + ", ".join(f"{m}: {md.spec} {tuple(md.row_shape)}"
                                                for m, md in features.sets.items() if m in cfg.modalities)
            + f"; device {device}; run folder {where}")
        todo = [(i, fold) for i, f in enumerate(folders) for fold in f.todo()]
        why = alone_reason(cfg, source.concurrent)
        cap = 1 if why else capacity(cfg, source.model_sets, features.num_classes, device)
        groups = chunks(todo, cap)
        name = lambda t: f"{folders[t[0]].prefix}fold {t[1]}"  # noqa: E731
        if len(todo) > 1:
            log(describe(groups, name) + (f" ({why})" if why else ""))
        resources = {"rss_start_bytes": rss_start, "peak_is_this_run": own_peak,
                     "feature_bytes": features.nbytes(cfg.modalities), "memory_budget_bytes": memory_budget(),
                     "device": str(device), "models_together": max(len(g) for g in groups) if groups else 0,
                     **source.describe()}
        for f in folders:
            f.resources = resources
        for group in groups:
            _fit(group, cfgs, folders, splits, features, source, device, log)
    except KeyboardInterrupt:
        log(f"interrupted: {where} holds the finished folds and the last epoch's checkpoint; continue with "
            "--resume")
        raise
    finally:
        restore()
        source.close()
    return [f.finish(features) for f in folders]


def _fit(group: Sequence[tuple[int, int]], cfgs: Sequence[TrainConfig], folders: Sequence[RunFolder],
         splits: dict[tuple[int, int], FoldSplit], features: LoadedFeatures, source: Any, device: torch.device,
         log: Log) -> None:
    """Train one group of (run, fold) together and write each fold's outputs as it finishes."""
    members = []
    for i, fold in group:
        split, f = splits[i, fold], folders[i]
        log(f"{f.prefix}fold {fold}: {len(split.train)} train, {len(split.val)} validation, {len(split.test)} "
            "test clips")
        members.append(Member(cfgs[i], split, f.out / f"checkpoint_fold{fold}.pt", resume=cfgs[i].resume,
                              backbone=_backbone(cfgs[i], features, fold, log), on_epoch=f.on_epoch(fold),
                              label=f"{f.prefix}fold {fold}"))

    def done(j: int, res: FoldResult) -> None:
        folders[group[j][0]].fold_done(res, features, peak_rss())

    fit_group(members, features, source, device, on_done=done, log=log)
