"""The training loop for one fold: in-memory batches, validation-based selection, one test pass at the end.

Batches are index tensors into feature tensors that live on the device (no per-sample Dataset).
A checkpoint is written after every epoch (tensors and primitives only, so `torch.load(...,
weights_only=True)` reads it): an interrupted fold resumes from it and reproduces the same numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from fer.cache.errors import FerError
from fer.train.config import TrainConfig
from fer.train.disk import check_checkpoint_space, save_checkpoint
from fer.train.features import LoadedFeatures, ModalityData
from fer.train.losses import LossFn, make_loss
from fer.train.metrics import confusion_matrix, per_class_recall, uar, war
from fer.train.model import FerModel, make_batch
from fer.train.splits import FoldSplit

Log = Callable[[str], None]


@dataclass
class FoldResult:
    """What one finished fold produced."""

    fold: int
    metrics: dict[str, Any]
    """war, uar, per_class_recall, confusion, n_test, best_epoch, epochs_run, seconds (RUN_FORMAT.md)."""
    ids: np.ndarray
    probs: np.ndarray
    """(n_test, 7) float32 predicted probabilities of the selected state."""
    labels: np.ndarray
    """(n_test,) int64 true labels (argmax of votes)."""
    history: list[dict[str, float]] = field(default_factory=list)


def fold_seed(seed: int, fold: int) -> int:
    """Seed of everything random in one fold (init, batch order, dropout)."""
    return seed * 1000 + fold


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; a cuda request without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FerError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu or auto")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=max(cfg.patience // 3, 1))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


@torch.no_grad()
def predict(model: nn.Module, sets: Mapping[str, ModalityData], rows: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """(len(rows), 7) logits in eval mode, batched."""
    model.eval()
    bs = max(cfg.batch_size, 256)
    outs = [model(make_batch(sets, rows[i:i + bs], cfg)) for i in range(0, len(rows), bs)]
    return torch.cat(outs) if outs else torch.zeros(0, 7, device=rows.device)


CHECKPOINT_EVERY_S = 30.0
"""Seconds between mid-fold checkpoints (the first epoch and the last are always saved)."""


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(obj: dict[str, Any], path: Path) -> None:
    save_checkpoint(obj, path)  # atomic; a full disk leaves no .tmp and ends in one line


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


def fit_fold(cfg: TrainConfig, features: LoadedFeatures, sets: Mapping[str, ModalityData], split: FoldSplit,
             device: torch.device, *, checkpoint: Path, backbone: nn.Module | None = None, resume: bool = False,
             on_epoch: Callable[[list[dict[str, float]]], None] | None = None, log: Log = print) -> FoldResult:
    """Train one fold and evaluate its test rows once with the selected state.

    `sets` are the feature sets already on `device`; `backbone` (with --finetune layer4) is the ResNet-18
    whose layer4 is trained on the layer3 maps; `checkpoint` is rewritten every epoch; with
    `resume` an unfinished checkpoint there is continued (same numbers as an uninterrupted run).
    """
    t_start = time.perf_counter()
    fold = split.fold
    seed = fold_seed(cfg.seed, fold)
    torch.manual_seed(seed)
    model = FerModel(cfg, sets, layer4=backbone.layer4 if backbone is not None else None).to(device)
    train_rows = torch.from_numpy(split.train).to(device)
    if cfg.normalize:
        model.fit_input_norm(sets, train_rows, cfg)
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt)
    check_checkpoint_space(checkpoint, model, backbone)  # before training, not when the first save fails
    gen = torch.Generator().manual_seed(seed)
    labels_np = features.labels
    loss_fn: LossFn = make_loss(cfg.loss, train_labels=labels_np[split.train])
    dist = torch.from_numpy(features.dist).to(device)
    labels = torch.from_numpy(labels_np).to(device)
    val_rows = torch.from_numpy(split.val).to(device)
    has_val = len(split.val) > 0
    select_last = cfg.select == "last" or not has_val
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())

    history: list[dict[str, float]] = []
    # best so far: (score, -val_loss) so that ties in val UAR (small validation sets) go to the lower loss
    start, best_epoch, best_score, best_tie, bad = 0, 0, -math.inf, -math.inf, 0
    best_state: dict[str, torch.Tensor] | None = None
    elapsed_before = 0.0
    if resume and checkpoint.is_file():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not ck.get("complete", False):
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"])
            torch.set_rng_state(ck["rng"])
            if device.type == "cuda" and "cuda_rng" in ck:
                torch.cuda.set_rng_state(ck["cuda_rng"], device)
            start, best_epoch, bad = int(ck["epoch"]), int(ck["best_epoch"]), int(ck["bad_epochs"])
            best_score, best_tie = float(ck["best_score"]), float(ck["best_tie"])
            best_state = {k: v.to(device) for k, v in ck["best_model"].items()} if "best_model" in ck else None
            history = [dict(r) for r in ck["history"]]
            elapsed_before = float(ck.get("seconds", 0.0))
            log(f"fold {fold}: resuming after epoch {start}")

    n = len(train_rows)
    bs = cfg.batch_size
    epoch = start
    last_save, saved_epoch = -math.inf, start
    for epoch in range(start + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        order = train_rows[torch.randperm(n, generator=gen).to(device)]
        total = torch.zeros((), device=device)
        seen = 0
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            if has_bn and len(idx) < 2:
                break  # batch norm cannot train on one sample
            logits = model(make_batch(sets, idx, cfg))
            loss = loss_fn(logits, dist[idx], labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        train_loss = float(total) / max(seen, 1)  # one sync per epoch
        train_s = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            where = (f"the last good checkpoint (epoch {saved_epoch}) is kept in {checkpoint}" if saved_epoch
                     else "no checkpoint was written")
            raise FerError(f"non-finite training loss in fold {fold} epoch {epoch}: the features hold NaN/Inf values "
                           f"or --lr {cfg.lr} is too high; {where}")
        if has_val:
            vlogits = predict(model, sets, val_rows, cfg)
            val_loss = float(loss_fn(vlogits, dist[val_rows], labels[val_rows]))
            vpred = vlogits.argmax(1).cpu().numpy()
            vtrue = labels_np[split.val]
            val_war, val_uar = war(vtrue, vpred), uar(vtrue, vpred)
        else:
            val_loss = val_war = val_uar = float("nan")
        lr = opt.param_groups[0]["lr"]
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_loss if has_val and math.isfinite(val_loss) else train_loss)
        elif sched is not None:
            sched.step()
        score = val_uar if cfg.monitor == "uar" else -val_loss
        tie = -val_loss if math.isfinite(val_loss) else -math.inf
        if has_val and math.isfinite(score) and (score, tie) > (best_score, best_tie):
            improved = score > best_score  # early stopping counts only real gains of the monitored score
            best_score, best_tie, best_epoch = score, tie, epoch
            bad = 0 if improved else bad + 1
            if not select_last:
                best_state = _clone_state(model)
        else:
            bad += 1
        seconds = time.perf_counter() - t0
        row = {"fold": fold, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_war": val_war,
               "val_uar": val_uar, "lr": lr, "samples_per_s": seen / max(train_s, 1e-9), "seconds": seconds}
        history.append(row)
        log(f"fold {fold} epoch {epoch:3d}/{cfg.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val WAR {100 * val_war:5.1f}  UAR {100 * val_uar:5.1f}  lr {lr:.2e}  {row['samples_per_s']:.0f} samples/s")
        # a checkpoint (model + AdamW state + best state: ~280 MB for the default model) every epoch would
        # dominate short GPU epochs; every CHECKPOINT_EVERY_S is enough, since resume replays exactly
        if time.perf_counter() - last_save >= CHECKPOINT_EVERY_S:
            ck = {"fold": fold, "epoch": epoch, "complete": False, "model": _cpu(model.state_dict()),
                  "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                  "generator": gen.get_state(), "rng": torch.get_rng_state(), "best_epoch": best_epoch,
                  "best_score": best_score, "best_tie": best_tie, "bad_epochs": bad, "history": history, "config": cfg.to_dict(),
                  "seconds": elapsed_before + time.perf_counter() - t_start}
            if device.type == "cuda":
                ck["cuda_rng"] = torch.cuda.get_rng_state(device)
            if best_state is not None:
                ck["best_model"] = _cpu(best_state)
            _save(ck, checkpoint)
            last_save, saved_epoch = time.perf_counter(), epoch
        if on_epoch is not None:
            on_epoch(history)
        if not select_last and cfg.patience and bad >= cfg.patience:
            log(f"fold {fold}: early stop after epoch {epoch} (no validation improvement for {cfg.patience} epochs)")
            break

    epochs_run = len(history)
    if select_last or best_state is None:
        best_epoch = epochs_run
    else:
        model.load_state_dict(best_state)
    test_rows = torch.from_numpy(split.test).to(device)
    probs = torch.softmax(predict(model, sets, test_rows, cfg), dim=1).float().cpu().numpy()
    y_true = labels_np[split.test]
    y_pred = probs.argmax(1)
    seconds = elapsed_before + time.perf_counter() - t_start
    metrics = {"war": war(y_true, y_pred), "uar": uar(y_true, y_pred),
               "per_class_recall": [float(x) for x in per_class_recall(y_true, y_pred)],
               "confusion": confusion_matrix(y_true, y_pred).tolist(), "n_test": int(len(y_true)),
               "best_epoch": int(best_epoch), "epochs_run": int(epochs_run), "seconds": float(seconds)}
    final = {"fold": fold, "epoch": int(best_epoch), "epochs_run": int(epochs_run), "complete": True,
             "model": _cpu(model.state_dict()), "config": cfg.to_dict(), "history": history}
    if backbone is not None:
        # the whole ResNet-18 with the fine-tuned layer4 (shared with the model), for `fer extract --weights`;
        # it has seen this fold's training clips, so features made with it are only valid for this fold
        final["backbone"] = _cpu(backbone.state_dict())
        final["finetuned_on_fold"] = fold
    _save(final, checkpoint)
    return FoldResult(fold=fold, metrics=metrics, ids=features.ids[split.test], probs=probs.astype(np.float32),
                      labels=y_true.astype(np.int64), history=history)
