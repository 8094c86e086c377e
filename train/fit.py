"""The training loop: one model, or several of one architecture trained together (the folds of a run, the
compatible points of a sweep), each with its own batches, optimizer state, schedule, selection, early stopping
and checkpoint; one test pass per model at the end with its selected state.

A group is one batched model (fer.train.trainees.StackTrainee): each round, every model that has not finished
trains one epoch of its own order (fer.train.sampling.epoch_order from its own generators), step by step side
by side, and is validated on its own clips. A model that stops early is tested and leaves the stack while the
others go on. A model alone is the same code with K = 1, so a fold gives the same numbers alone or in a group
(up to floating-point reassociation in batched kernels). A model with a fine-tuned backbone top (--finetune)
trains alone as a FerModel (fer.train.trainees.ModuleTrainee).

Where batches come from (feature tensors on the device, in host memory, or streamed from the store; fixed or
drawn frames) is the batch source's business (fer.train.batches). Each model's checkpoint is written every
CHECKPOINT_EVERY_S: an interrupted group resumes from them and reproduces the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
from fer.train.optim import make_optimizer, make_scheduler  # noqa: F401 - the fit loop's optimizer, re-exported
from fer.train.progress import Progress, cpu_state, selected_validation
from fer.train.sampling import epoch_order
from fer.train.splits import FoldSplit
from fer.train.stacked import NOISE_SEED, stackable
from fer.train.trainees import ModuleTrainee, StackTrainee

Log = Callable[[str], None]

DRAW_SEED = 7919
"""Offset of the frame/view generator's seed from the fold's seed (a stream apart from the batch order's)."""
CHECKPOINT_EVERY_S = 30.0
"""Seconds between mid-fold checkpoints (the first epoch and the last are always saved)."""


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


@dataclass
class Member:
    """One model of a group: a fold of a run with the run's settings, where it checkpoints, how it reports."""

    cfg: TrainConfig
    split: FoldSplit
    checkpoint: Path
    resume: bool = False
    """Continue an unfinished checkpoint at ``checkpoint`` (same numbers as an uninterrupted run)."""
    backbone: nn.Module | None = None
    """With --finetune: the fold's trainable top (fer.train.tops); such a member trains alone."""
    on_epoch: Callable[[list[dict[str, float]]], None] | None = None
    """Called with the fold's history after every epoch."""
    label: str = ""
    """Its name in the log (default ``fold K``)."""

    @property
    def name(self) -> str:
        return self.label or f"fold {self.split.fold}"


def fold_seed(seed: int, fold: int) -> int:
    """Seed of everything random in one fold (init, batch order, dropout)."""
    return seed * 1000 + fold


def mean_of_views(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """One view's logits as they are; several views: the log of their mean probabilities (a valid logit)."""
    if len(logits) == 1:
        return logits[0]
    return torch.logsumexp(torch.stack([torch.log_softmax(x, dim=1) for x in logits]), dim=0) - math.log(len(logits))


@torch.no_grad()
def predict(model: nn.Module, source: BatchSource, rows: np.ndarray, cfg: TrainConfig) -> torch.Tensor:
    """(len(rows), C) logits of a FerModel in eval mode, batched; with several views, their mean
    probabilities."""
    return evaluate(ModuleTrainee(model, cfg), [(source, rows)], max(cfg.batch_size, EVAL_BATCH),
                    classes=model.head[-1].out_features)[0]


def evaluate(trainee: Any, jobs: Sequence[tuple[BatchSource, np.ndarray] | None], batch: int, *,
             classes: int) -> list[torch.Tensor | None]:
    """Logits of each model of ``trainee`` (in its order) on its (source, rows), side by side in batches of
    ``batch`` (None: no job for that model)."""
    iters: list[Iterator | None] = [None if j is None else j[0].evaluate(np.asarray(j[1], dtype=np.int64), batch)
                                    for j in jobs]
    out: list[torch.Tensor | None] = [None] * len(jobs)
    while True:
        steps = [None if it is None else next(it, None) for it in iters]
        if all(s is None for s in steps):
            break
        views = len(next(s for s in steps if s is not None)[0])
        per_view = [trainee.logits([None if s is None else s[0][v] for s in steps]) for v in range(views)]
        for i, s in enumerate(steps):
            if s is None:
                continue
            z = mean_of_views([pv[i] for pv in per_view])
            if out[i] is None:
                out[i] = torch.empty(len(jobs[i][1]), z.shape[1], dtype=z.dtype, device=z.device)
            out[i][s[1]] = z
    return [o if o is not None or j is None else torch.zeros(0, classes) for o, j in zip(out, jobs)]


class _Fold:
    """One member's generators, loss, schedule and progress while its group trains."""

    def __init__(self, m: Member, trainee: Any, i: int, features: LoadedFeatures, source: BatchSource,
                 device: torch.device, log: Log):
        cfg, split = m.cfg, m.split
        self.m, self.i, self.cfg, self.split = m, i, cfg, split
        seed = fold_seed(cfg.seed, split.fold)
        self.gen = torch.Generator().manual_seed(seed)  # batch order (on the host: a streamed epoch is planned there)
        self.draw = torch.Generator(device=device).manual_seed(seed + DRAW_SEED)  # frames and views, on the device
        self.loss_fn: LossFn = make_loss(cfg.loss, train_labels=features.labels[split.train],
                                         num_classes=features.num_classes, device=device)
        self.sched = make_scheduler(cfg, trainee.lr_optimizer(i))
        self.has_val = len(split.val) > 0
        self.val_source = source.hold(split.val) if self.has_val else None
        self.select_last = cfg.select == "last" or not self.has_val
        self.p = Progress()
        self.last_save, self.saved_epoch = -math.inf, 0
        if m.resume and m.checkpoint.is_file():
            ck = torch.load(m.checkpoint, map_location="cpu", weights_only=True)
            if not ck.get("complete", False):
                trainee.load(i, ck["model"])
                trainee.load_optimizer(i, ck["optimizer"])
                if self.sched is not None and ck.get("scheduler") is not None:
                    self.sched.load_state_dict(ck["scheduler"])
                self.gen.set_state(ck["generator"])
                if "draw" in ck:
                    self.draw.set_state(ck["draw"])
                trainee.set_rng_state(i, ck)
                self.p = Progress.from_checkpoint(ck, device)
                log(f"{m.name}: resuming after epoch {self.p.epoch}")
        self.saved_epoch = self.p.epoch

    @property
    def finished(self) -> bool:
        return self.p.epoch >= self.cfg.epochs

    def checkpoint(self, trainee: Any, seconds: float) -> None:
        save_checkpoint({"fold": self.split.fold, "complete": False, "model": cpu_state(trainee.state(self.i)),
              "optimizer": trainee.optimizer_state(self.i),
              "scheduler": self.sched.state_dict() if self.sched is not None else None,
              "config": self.cfg.to_dict(), "seconds": self.p.seconds_before + seconds,
              "generator": self.gen.get_state(), "draw": self.draw.get_state(), **trainee.rng_state(self.i),
              **self.p.state()}, self.m.checkpoint)
        self.last_save, self.saved_epoch = time.perf_counter(), self.p.epoch


def _trainee(members: Sequence[Member], features: LoadedFeatures, source: BatchSource,
             device: torch.device) -> Any:
    """The members' models, each initialised from its fold's seed and standardised on its training clips, as
    one stack (or one FerModel with a backbone top)."""
    models = []
    for m in members:
        torch.manual_seed(fold_seed(m.cfg.seed, m.split.fold))
        model = FerModel(m.cfg, source.model_sets, num_classes=features.num_classes, top=m.backbone).to(device)
        if m.cfg.normalize:
            model.fit_input_norm(lambda mod, rows=m.split.train: source.norm_chunks(mod, rows))
        # before training, not when the first save fails
        check_checkpoint_space(m.checkpoint, model, m.backbone.exported[0] if m.backbone is not None else None)
        models.append(model)
    if stackable(models[0]) is not None:
        if len(models) > 1:
            raise ValueError(stackable(models[0]))
        return ModuleTrainee(models[0], members[0].cfg)
    noise = [torch.Generator(device=device).manual_seed(fold_seed(m.cfg.seed, m.split.fold) + NOISE_SEED)
             for m in members]

    def layout() -> FerModel:
        with torch.device("meta"):
            return FerModel(members[0].cfg, source.model_sets, num_classes=features.num_classes)

    return StackTrainee(models, [m.cfg for m in members], noise, layout)


def _train_round(trainee: Any, source: BatchSource, folds: Sequence[_Fold], orders: Sequence[torch.Tensor],
                 dist: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, int]]:
    """One epoch of every model in the stack (``folds`` and ``orders`` in its order), step by step side by
    side: (mean training loss, clips seen) of each."""
    iters: list[Iterator | None] = [source.epoch(o, draw=f.draw) for f, o in zip(folds, orders)]
    total = [torch.zeros((), device=dist.device) for _ in folds]
    seen = [0] * len(folds)
    idx: list[torch.Tensor | None] = [None] * len(folds)

    def loss_of(j: int, logits: torch.Tensor) -> torch.Tensor:
        return folds[j].loss_fn(logits, dist[idx[j]], labels[idx[j]])

    try:
        while True:
            inputs: list[Any] = []
            for j, it in enumerate(iters):
                batch = next(it, None) if it is not None else None
                if batch is not None and trainee.has_bn and len(batch.idx) < 2:
                    batch = None  # batch norm cannot train on one sample: the epoch ends there
                if batch is None and it is not None:
                    it.close()
                    iters[j] = None
                idx[j] = None if batch is None else batch.idx
                inputs.append(None if batch is None else batch.inputs)
            if all(x is None for x in inputs):
                break
            for j, loss in enumerate(trainee.train_step(inputs, loss_of)):
                if loss is not None:
                    total[j] += loss * len(idx[j])
                    seen[j] += len(idx[j])
    finally:
        for it in iters:
            if it is not None:
                it.close()
    return [(float(t) / max(s, 1), s) for t, s in zip(total, seen)]  # one sync per epoch


def train_epoch(trainee: Any, source: BatchSource, order: torch.Tensor, loss_fn: LossFn, dist: torch.Tensor,
                labels: torch.Tensor, *, draw: torch.Generator | None = None) -> tuple[float, int]:
    """One epoch of a one-model trainee (fer.train.trainees) over ``order``, as the fit loop trains it:
    (mean training loss, clips seen)."""
    lone = SimpleNamespace(draw=draw, loss_fn=loss_fn)
    return _train_round(trainee, source, [lone], [order], dist, labels)[0]


def fit_group(members: Sequence[Member], features: LoadedFeatures, source: BatchSource, device: torch.device, *,
              on_done: Callable[[int, FoldResult], None] | None = None, log: Log = print) -> list[FoldResult]:
    """Train the members together and test each with its selected state; their results in their order.

    The members share one architecture (fer.train.sweep.group_key) and batch size; a member with a backbone
    top (--finetune) must be alone. `source` gives the batches (fer.train.batches.MemorySource or
    fer.train.stream.StreamSource, on `device`): it serves each member's epoch order drawn here, so how the
    features are held never changes a number. ``on_done(i, result)`` is called as member i finishes.
    """
    trainee = _trainee(members, features, source, device)
    folds = [_Fold(m, trainee, i, features, source, device, log) for i, m in enumerate(members)]
    cfg0, num_classes = members[0].cfg, features.num_classes
    blocks, _ = sampling_blocks(features, cfg0.modalities)
    dist = torch.from_numpy(features.dist).to(device)
    labels = torch.from_numpy(features.labels).to(device)
    eval_batch = max(cfg0.batch_size, EVAL_BATCH)
    results: list[FoldResult | None] = [None] * len(members)
    # each member's share of the rounds it trained in: the folds of one stack sum to the run's training time
    spent = [0.0] * len(members)

    def finish(f: _Fold) -> None:
        results[f.i] = _finish(f, trainee, source, features, eval_batch, spent[f.i])
        trainee.remove(f.i)
        if on_done is not None:
            on_done(f.i, results[f.i])

    for f in folds:
        if f.finished:
            finish(f)
    while trainee.ids:
        running = [folds[i] for i in trainee.ids]
        t0 = time.perf_counter()
        orders = [epoch_order(f.split.train, features.labels, balance=f.cfg.balance, gen=f.gen, blocks=blocks)
                  for f in running]
        losses = _train_round(trainee, source, running, orders, dist, labels)
        train_s = time.perf_counter() - t0
        for f, (loss, _) in zip(running, losses):
            if not math.isfinite(loss):
                where = (f"the last good checkpoint (epoch {f.saved_epoch}) is kept in {f.m.checkpoint}"
                         if f.saved_epoch else "no checkpoint was written")
                raise FerError(f"non-finite training loss in fold {f.split.fold} epoch {f.p.epoch + 1}: the "
                               f"features hold NaN/Inf values or --lr {f.cfg.lr} is too high; {where}")
        vlogits = evaluate(trainee, [(f.val_source, f.split.val) if f.has_val else None for f in running],
                           eval_batch, classes=num_classes)
        for f, (loss, seen), z in zip(running, losses, vlogits):
            _end_epoch(f, trainee, z, loss, seen, train_s, time.perf_counter() - t0, dist, labels, features, log)
        now = time.perf_counter()
        for f in running:
            spent[f.i] += (now - t0) / len(running)
        for f in running:
            # a checkpoint (model + AdamW state + best state: ~280 MB for the default model) every epoch would
            # dominate short GPU epochs; every CHECKPOINT_EVERY_S is enough, since resume replays exactly
            if now - f.last_save >= CHECKPOINT_EVERY_S:
                f.checkpoint(trainee, spent[f.i])
            if f.m.on_epoch is not None:
                f.m.on_epoch(f.p.history)
            stop = not f.select_last and f.cfg.patience and f.p.bad >= f.cfg.patience
            if stop:
                log(f"{f.m.name}: early stop after epoch {f.p.epoch} (no validation improvement for "
                    f"{f.cfg.patience} epochs)")
            if stop or f.finished:
                finish(f)
    return [r for r in results if r is not None]


def _end_epoch(f: _Fold, trainee: Any, vlogits: torch.Tensor | None, train_loss: float, seen: int,
               train_s: float, seconds: float, dist: torch.Tensor, labels: torch.Tensor,
               features: LoadedFeatures, log: Log) -> None:
    """Validation scores, the schedule, the selection and the history row of one member's epoch."""
    epoch, split, cfg = f.p.epoch + 1, f.split, f.cfg
    if f.has_val:
        rows = torch.from_numpy(split.val).to(dist.device)
        val_loss = float(f.loss_fn(vlogits, dist[rows], labels[rows]))
        vpred, vtrue = vlogits.argmax(1).cpu().numpy(), features.labels[split.val]
        val_war, val_uar = war(vtrue, vpred), uar(vtrue, vpred)
    else:
        val_loss = val_war = val_uar = float("nan")
    lr = trainee.lr_optimizer(f.i).param_groups[0]["lr"]
    if isinstance(f.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
        f.sched.step(val_loss if f.has_val and math.isfinite(val_loss) else train_loss)
    elif f.sched is not None:
        f.sched.step()
    if f.has_val:
        f.p.select(epoch, val_uar if cfg.monitor == "uar" else -val_loss,
                   -val_loss if math.isfinite(val_loss) else -math.inf, lambda: trainee.state(f.i),
                   keep_state=not f.select_last)
    else:
        f.p.bad += 1
    f.p.epoch = epoch
    row = {"fold": split.fold, "epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_war": val_war,
           "val_uar": val_uar, "lr": lr, "samples_per_s": seen / max(train_s, 1e-9), "seconds": seconds}
    f.p.history.append(row)
    log(f"{f.m.name} epoch {epoch:3d}/{cfg.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
        f"val WAR {100 * val_war:5.1f}  UAR {100 * val_uar:5.1f}  lr {lr:.2e}  {row['samples_per_s']:.0f} samples/s")


def _finish(f: _Fold, trainee: Any, source: BatchSource, features: LoadedFeatures, eval_batch: int,
            elapsed: float) -> FoldResult:
    """Test one finished member with its selected state; write its final checkpoint."""
    p, split, cfg = f.p, f.split, f.cfg
    epochs_run = len(p.history)
    if f.select_last or p.best_state is None:
        best_epoch, state = epochs_run, trainee.state(f.i)
    else:
        best_epoch, state = p.best_epoch, p.best_state
    solo = trainee.solo(f.i, state)
    logits = evaluate(solo, [(source, split.test)], eval_batch, classes=features.num_classes)[0]
    probs = torch.softmax(logits, dim=1).float().cpu().numpy()
    y_true = features.labels[split.test]
    y_pred = probs.argmax(1)
    n = features.num_classes
    metrics = {"war": war(y_true, y_pred), "uar": uar(y_true, y_pred),
               "per_class_recall": [float(x) for x in per_class_recall(y_true, y_pred, n)],
               "confusion": confusion_matrix(y_true, y_pred, n).tolist(), "n_test": int(len(y_true)),
               "best_epoch": int(best_epoch), "epochs_run": int(epochs_run),
               "seconds": float(p.seconds_before + elapsed),
               **selected_validation(p.history, best_epoch, len(split.val))}
    final = {"fold": split.fold, "epoch": int(best_epoch), "epochs_run": int(epochs_run), "complete": True,
             "model": cpu_state(solo.state(f.i)), "config": cfg.to_dict(), "history": p.history}
    if f.m.backbone is not None:
        # the fine-tuned backbone (ResNet-18 whole, or a ViT's adapted top), for `fer extract --weights`;
        # it has seen this fold's training clips, so features made with it are only valid for this fold
        final.update(f.m.backbone.export())
        final["finetuned_on_fold"] = split.fold
    save_checkpoint(final, f.m.checkpoint)  # atomic; a full disk leaves no .tmp and ends in one line
    return FoldResult(fold=split.fold, metrics=metrics, ids=features.ids[split.test],
                      probs=probs.astype(np.float32), labels=y_true.astype(np.int64), history=p.history)


def fit_fold(cfg: TrainConfig, features: LoadedFeatures, source: BatchSource, split: FoldSplit,
             device: torch.device, *, checkpoint: Path, backbone: nn.Module | None = None, resume: bool = False,
             on_epoch: Callable[[list[dict[str, float]]], None] | None = None, log: Log = print) -> FoldResult:
    """Train one fold alone (fit_group with one member) and evaluate its test rows with the selected state.

    `backbone` (with --finetune) is the top trained on the face set cut inside its backbone (fer.train.tops:
    ResNet-18's layer4 on layer3 maps, a ViT's last blocks on its tokens)."""
    member = Member(cfg, split, checkpoint, resume=resume, backbone=backbone, on_epoch=on_epoch)
    return fit_group([member], features, source, device, log=log)[0]
