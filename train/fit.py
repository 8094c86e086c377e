"""The training loop for one fold: batches from a batch source, validation-based selection, one test pass at the end.

Where batches come from (feature tensors on the device, in host memory, or streamed from the store; fixed
or drawn frames) is the batch source's business (fer.train.batches); the loop reads top to bottom.
A checkpoint is written every CHECKPOINT_EVERY_S (tensors and primitives only, so `torch.load(...,
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
from fer.train.batches import EVAL_BATCH, BatchSource, sampling_blocks
from fer.train.config import TrainConfig
from fer.train.disk import check_checkpoint_space, save_checkpoint
from fer.train.features import LoadedFeatures
from fer.train.losses import LossFn, make_loss
from fer.train.metrics import confusion_matrix, per_class_recall, uar, war
from fer.train.model import FerModel
from fer.train.sampling import epoch_order
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
    """(n_test, C) float32 predicted probabilities of the selected state."""
    labels: np.ndarray
    """(n_test,) int64 true labels (official, else the votes' majority: LoadedFeatures.labels)."""
    history: list[dict[str, float]] = field(default_factory=list)


def fold_seed(seed: int, fold: int) -> int:
    """Seed of everything random in one fold (init, batch order, dropout)."""
    return seed * 1000 + fold


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over what trains: the head at --lr, a backbone top (--finetune) at --backbone-lr (or
    --lr)."""
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    top = getattr(model, "top", None)
    mine = {id(p) for p in top.parameters()} if top is not None else set()
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in mine]}]
    if top is not None:
        trained = [p for p in top.parameters() if p.requires_grad]
        groups.append({"params": trained, "lr": cfg.backbone_lr or cfg.lr})
    return cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer) -> Any:
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=max(cfg.patience // 3, 1))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


@torch.no_grad()
def predict(model: nn.Module, source: BatchSource, rows: np.ndarray, cfg: TrainConfig) -> torch.Tensor:
    """(len(rows), C) logits in eval mode, batched; with several views, the log of their mean probabilities."""
    model.eval()
    out = None
    for views, where in source.evaluate(np.asarray(rows, dtype=np.int64), max(cfg.batch_size, EVAL_BATCH)):
        logits = [model(v) for v in views]
        if len(logits) > 1:  # average the views' probabilities, kept as log-probabilities (a valid logit vector)
            z = torch.logsumexp(torch.stack([torch.log_softmax(x, dim=1) for x in logits]), dim=0) - math.log(len(logits))
        else:
            z = logits[0]
        if out is None:
            out = torch.empty(len(rows), z.shape[1], dtype=z.dtype, device=z.device)
        out[where] = z
    return out if out is not None else torch.zeros(0, model.head[-1].out_features)


DRAW_SEED = 7919
"""Offset of the frame/view generator's seed from the fold's seed (a stream apart from the batch order's)."""
CHECKPOINT_EVERY_S = 30.0
"""Seconds between mid-fold checkpoints (the first epoch and the last are always saved)."""


def _clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _save(obj: dict[str, Any], path: Path) -> None:
    save_checkpoint(obj, path)  # atomic; a full disk leaves no .tmp and ends in one line


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in state.items()}


@dataclass
class Progress:
    """Where a fold stands: epochs done, the selection so far, the history (what a checkpoint carries)."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    best_tie: float = -math.inf
    """(score, tie = -val_loss): ties in val UAR (small validation sets) go to the lower loss."""
    bad: int = 0
    """Epochs since the monitored score last improved."""
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    seconds_before: float = 0.0
    """Seconds spent before a resume."""

    def select(self, epoch: int, score: float, tie: float, model: nn.Module, keep_state: bool) -> None:
        """Count one validated epoch: a better (score, tie) becomes the best (its state kept when asked)."""
        if math.isfinite(score) and (score, tie) > (self.best_score, self.best_tie):
            improved = score > self.best_score  # early stopping counts only real gains of the monitored score
            self.best_score, self.best_tie, self.best_epoch = score, tie, epoch
            self.bad = 0 if improved else self.bad + 1
            if keep_state:
                self.best_state = _clone_state(model)
        else:
            self.bad += 1

    def state(self) -> dict[str, Any]:
        out = {"epoch": self.epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
               "best_tie": self.best_tie, "bad_epochs": self.bad, "history": self.history}
        if self.best_state is not None:
            out["best_model"] = _cpu(self.best_state)
        return out

    @classmethod
    def from_checkpoint(cls, ck: Mapping[str, Any], device: torch.device) -> "Progress":
        best = ck.get("best_model")
        return cls(epoch=int(ck["epoch"]), best_epoch=int(ck["best_epoch"]), best_score=float(ck["best_score"]),
                   best_tie=float(ck["best_tie"]), bad=int(ck["bad_epochs"]),
                   best_state={k: v.to(device) for k, v in best.items()} if best is not None else None,
                   history=[dict(r) for r in ck["history"]], seconds_before=float(ck.get("seconds", 0.0)))


def _rng_state(gen: torch.Generator, draw: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    out = {"generator": gen.get_state(), "draw": draw.get_state(), "rng": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(device)
    return out


def _set_rng_state(ck: Mapping[str, Any], gen: torch.Generator, draw: torch.Generator, device: torch.device) -> None:
    gen.set_state(ck["generator"])
    if "draw" in ck:
        draw.set_state(ck["draw"])
    torch.set_rng_state(ck["rng"])
    if device.type == "cuda" and "cuda_rng" in ck:
        torch.cuda.set_rng_state(ck["cuda_rng"], device)


def selected_validation(history: list[dict[str, float]], epoch: int, n_val: int) -> dict[str, Any]:
    """val_war, val_uar, val_loss of the kept epoch and n_val (None without validation clips: the literature
    protocol), what `fer report` ranks runs by."""
    row = next((r for r in history if int(r["epoch"]) == epoch), None)
    if not n_val or row is None:
        return {"val_war": None, "val_uar": None, "val_loss": None, "n_val": int(n_val)}
    return {"val_war": float(row["val_war"]), "val_uar": float(row["val_uar"]),
            "val_loss": float(row["val_loss"]), "n_val": int(n_val)}


def train_epoch(model: nn.Module, source: BatchSource, order: torch.Tensor, opt: torch.optim.Optimizer, loss_fn: LossFn,
                dist: torch.Tensor, labels: torch.Tensor, *, draw: torch.Generator) -> tuple[float, int]:
    """One pass over ``order``'s batches; (mean training loss, clips seen)."""
    model.train()
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    total = torch.zeros((), device=dist.device)
    seen = 0
    for batch in source.epoch(order, draw=draw):
        idx = batch.idx
        if has_bn and len(idx) < 2:
            break  # batch norm cannot train on one sample
        loss = loss_fn(model(batch.inputs), dist[idx], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return float(total) / max(seen, 1), seen  # one sync per epoch


def fit_fold(cfg: TrainConfig, features: LoadedFeatures, source: BatchSource, split: FoldSplit,
             device: torch.device, *, checkpoint: Path, backbone: nn.Module | None = None, resume: bool = False,
             on_epoch: Callable[[list[dict[str, float]]], None] | None = None, log: Log = print) -> FoldResult:
    """Train one fold and evaluate its test rows once with the selected state.

    `source` gives the batches (fer.train.batches.MemorySource or fer.train.stream.StreamSource, on `device`):
    it serves the epoch order drawn here, so how the features are held never changes a number; `backbone`
    (with --finetune) is the top trained on the face set cut inside its backbone (fer.train.tops: ResNet-18's
    layer4 on layer3 maps, a ViT's last blocks on its tokens); `checkpoint` is rewritten every
    CHECKPOINT_EVERY_S; with `resume` an unfinished checkpoint there is continued (same numbers as an
    uninterrupted run).
    """
    t_start = time.perf_counter()
    fold, num_classes = split.fold, features.num_classes
    seed = fold_seed(cfg.seed, fold)
    torch.manual_seed(seed)
    model = FerModel(cfg, source.model_sets, num_classes=num_classes, top=backbone).to(device)
    if cfg.normalize:
        model.fit_input_norm(lambda m: source.norm_chunks(m, split.train))
    opt = make_optimizer(cfg, model)
    sched = make_scheduler(cfg, opt)
    # before training, not when the first save fails
    check_checkpoint_space(checkpoint, model, backbone.exported[0] if backbone is not None else None)
    gen = torch.Generator().manual_seed(seed)  # batch order (on the host: a streamed epoch is planned there)
    draw = torch.Generator(device=device).manual_seed(seed + DRAW_SEED)  # frames and views, on the device
    labels_np = features.labels
    blocks, _ = sampling_blocks(features, cfg.modalities)
    loss_fn: LossFn = make_loss(cfg.loss, train_labels=labels_np[split.train], num_classes=num_classes, device=device)
    dist = torch.from_numpy(features.dist).to(device)
    labels = torch.from_numpy(labels_np).to(device)
    val_rows = torch.from_numpy(split.val).to(device)
    has_val = len(split.val) > 0
    val_source = source.hold(split.val) if has_val else None
    select_last = cfg.select == "last" or not has_val

    p = Progress()
    if resume and checkpoint.is_file():
        ck = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not ck.get("complete", False):
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            _set_rng_state(ck, gen, draw, device)
            p = Progress.from_checkpoint(ck, device)
            log(f"fold {fold}: resuming after epoch {p.epoch}")

    last_save, saved_epoch = -math.inf, p.epoch
    for epoch in range(p.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = epoch_order(split.train, labels_np, balance=cfg.balance, gen=gen, blocks=blocks)
        train_loss, seen = train_epoch(model, source, order, opt, loss_fn, dist, labels, draw=draw)
        train_s = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            where = (f"the last good checkpoint (epoch {saved_epoch}) is kept in {checkpoint}" if saved_epoch
                     else "no checkpoint was written")
            raise FerError(f"non-finite training loss in fold {fold} epoch {epoch}: the features hold NaN/Inf values "
                           f"or --lr {cfg.lr} is too high; {where}")
        if has_val:
            vlogits = predict(model, val_source, split.val, cfg)
            val_loss = float(loss_fn(vlogits, dist[val_rows], labels[val_rows]))
            vpred, vtrue = vlogits.argmax(1).cpu().numpy(), labels_np[split.val]
            val_war, val_uar = war(vtrue, vpred), uar(vtrue, vpred)
        else:
            val_loss = val_war = val_uar = float("nan")
        lr = opt.param_groups[0]["lr"]
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(val_loss if has_val and math.isfinite(val_loss) else train_loss)
        elif sched is not None:
            sched.step()
        if has_val:
            p.select(epoch, val_uar if cfg.monitor == "uar" else -val_loss,
                     -val_loss if math.isfinite(val_loss) else -math.inf, model, keep_state=not select_last)
        else:
            p.bad += 1
        p.epoch = epoch
        row = {"fold": fold, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_war": val_war,
               "val_uar": val_uar, "lr": lr, "samples_per_s": seen / max(train_s, 1e-9),
               "seconds": time.perf_counter() - t0}
        p.history.append(row)
        log(f"fold {fold} epoch {epoch:3d}/{cfg.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
            f"val WAR {100 * val_war:5.1f}  UAR {100 * val_uar:5.1f}  lr {lr:.2e}  {row['samples_per_s']:.0f} samples/s")
        # a checkpoint (model + AdamW state + best state: ~280 MB for the default model) every epoch would
        # dominate short GPU epochs; every CHECKPOINT_EVERY_S is enough, since resume replays exactly
        if time.perf_counter() - last_save >= CHECKPOINT_EVERY_S:
            _save({"fold": fold, "complete": False, "model": _cpu(model.state_dict()), "optimizer": opt.state_dict(),
                   "scheduler": sched.state_dict() if sched is not None else None, "config": cfg.to_dict(),
                   "seconds": p.seconds_before + time.perf_counter() - t_start,
                   **_rng_state(gen, draw, device), **p.state()}, checkpoint)
            last_save, saved_epoch = time.perf_counter(), epoch
        if on_epoch is not None:
            on_epoch(p.history)
        if not select_last and cfg.patience and p.bad >= cfg.patience:
            log(f"fold {fold}: early stop after epoch {epoch} (no validation improvement for {cfg.patience} epochs)")
            break

    epochs_run = len(p.history)
    if select_last or p.best_state is None:
        best_epoch = epochs_run
    else:
        best_epoch = p.best_epoch
        model.load_state_dict(p.best_state)
    probs = torch.softmax(predict(model, source, split.test, cfg), dim=1).float().cpu().numpy()
    y_true = labels_np[split.test]
    y_pred = probs.argmax(1)
    seconds = p.seconds_before + time.perf_counter() - t_start
    metrics = {"war": war(y_true, y_pred), "uar": uar(y_true, y_pred),
               "per_class_recall": [float(x) for x in per_class_recall(y_true, y_pred, num_classes)],
               "confusion": confusion_matrix(y_true, y_pred, num_classes).tolist(), "n_test": int(len(y_true)),
               "best_epoch": int(best_epoch), "epochs_run": int(epochs_run), "seconds": float(seconds),
               **selected_validation(p.history, best_epoch, len(split.val))}
    final = {"fold": fold, "epoch": int(best_epoch), "epochs_run": int(epochs_run), "complete": True,
             "model": _cpu(model.state_dict()), "config": cfg.to_dict(), "history": p.history}
    if backbone is not None:
        # the fine-tuned backbone (ResNet-18 whole, or a ViT's adapted top), for `fer extract --weights`;
        # it has seen this fold's training clips, so features made with it are only valid for this fold
        final.update(backbone.export())
        final["finetuned_on_fold"] = fold
    _save(final, checkpoint)
    return FoldResult(fold=fold, metrics=metrics, ids=features.ids[split.test], probs=probs.astype(np.float32),
                      labels=y_true.astype(np.int64), history=p.history)
