"""Optimizers and learning-rate schedules: torch's for one model, and Adam/AdamW over a stack of models.

A stack (fer.train.stacked) trains K models as one, each with its own learning rate, weight decay, optimizer
kind, step count and schedule. StackedAdam is torch's Adam/AdamW update written over the model axis (one step
count per model; a step moves only the models that had a batch). Each model's schedule is torch's own
scheduler driving a one-parameter holder optimizer (the learning rate the stack reads), so plateau and
cosine behave, and checkpoint, exactly as for a model trained alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fer.train.config import TrainConfig

BETAS, EPS = (0.9, 0.999), 1e-8
"""torch.optim.Adam's defaults, which make_optimizer keeps."""


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
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5,
                                                          patience=max(cfg.patience // 3, 1))
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return None


def lr_holder(cfg: TrainConfig) -> torch.optim.Optimizer:
    """A one-parameter optimizer that only holds a stacked model's learning rate for its scheduler."""
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=cfg.lr)


class StackedAdam:
    """torch.optim.Adam / AdamW (no amsgrad) over stacked parameters (K, ...), one model per slice."""

    def __init__(self, params: Sequence[torch.Tensor], cfgs: Sequence[TrainConfig]):
        self.params = list(params)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [0] * len(cfgs)
        self.lr = [float(c.lr) for c in cfgs]
        self.weight_decay = [float(c.weight_decay) for c in cfgs]
        self.decoupled = [c.optimizer == "adamw" for c in cfgs]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _scalars(self, which: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Per model: decoupled decay factor, L2 decay, step size, sqrt of the second bias correction."""
        b1, b2 = BETAS
        lr = [self.lr[i] for i in which]
        dec = [self.weight_decay[i] if self.decoupled[i] else 0.0 for i in which]
        l2 = [0.0 if self.decoupled[i] else self.weight_decay[i] for i in which]
        step = [self.steps[i] for i in which]
        rows = [[1.0 - a * d for a, d in zip(lr, dec)], l2,
                [a / (1 - b1 ** s) for a, s in zip(lr, step)], [math.sqrt(1 - b2 ** s) for s in step]]
        return tuple(torch.tensor(r, dtype=torch.float32, device=device) for r in rows)

    @torch.no_grad()
    def step(self, active: Sequence[int]) -> None:
        """One update of the models ``active`` (the others keep their parameters, moments and step count)."""
        which = list(active)
        if not which:
            return
        for i in which:
            self.steps[i] += 1
        b1, b2 = BETAS
        every = len(which) == len(self.steps)
        idx = None if every else torch.tensor(which, dtype=torch.long, device=self.params[0].device)
        decay, l2, step_size, bc2 = self._scalars(which, self.params[0].device)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            if not every:
                p_, m_, v_, g = p.index_select(0, idx), m.index_select(0, idx), v.index_select(0, idx), g[idx]
            else:
                p_, m_, v_ = p, m, v
            shape = (len(which),) + (1,) * (p.dim() - 1)
            if any(self.weight_decay[i] and not self.decoupled[i] for i in which):
                g = g + l2.view(shape) * p_
            p_.mul_(decay.view(shape))
            m_.lerp_(g, 1 - b1)
            v_.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v_.sqrt() / bc2.view(shape)).add_(EPS)
            p_.sub_(m_ / denom * step_size.view(shape))
            if not every:
                p.index_copy_(0, idx, p_)
                m.index_copy_(0, idx, m_)
                v.index_copy_(0, idx, v_)

    def keep(self, which: Sequence[int], params: Sequence[torch.Tensor]) -> None:
        """Keep only the models ``which``; ``params`` are the stack's new parameter tensors."""
        idx = torch.tensor(list(which), dtype=torch.long, device=self.params[0].device)
        self.params = list(params)
        self.exp_avg = [m.index_select(0, idx) for m in self.exp_avg]
        self.exp_avg_sq = [v.index_select(0, idx) for v in self.exp_avg_sq]
        for name in ("steps", "lr", "weight_decay", "decoupled"):
            old = getattr(self, name)
            setattr(self, name, [old[i] for i in which])

    def export(self, k: int, opt: torch.optim.Optimizer) -> dict[str, Any]:
        """Model k's state as ``opt`` (make_optimizer over a FerModel of the same layout) would hold it:
        torch's state_dict format, as a model trained alone checkpoints it."""
        for group in opt.param_groups:
            group["lr"] = self.lr[k]
        if self.steps[k]:
            for p, m, v in zip(_trained(opt), self.exp_avg, self.exp_avg_sq):
                opt.state[p] = {"step": torch.tensor(float(self.steps[k])), "exp_avg": m[k].detach().clone(),
                                "exp_avg_sq": v[k].detach().clone()}
        return opt.state_dict()

    @torch.no_grad()
    def load(self, k: int, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
        """Set model k from a checkpoint's optimizer state (torch's format, loaded into ``opt``)."""
        opt.load_state_dict(state)
        self.lr[k] = float(opt.param_groups[0]["lr"])
        steps = 0
        for p, m, v in zip(_trained(opt), self.exp_avg, self.exp_avg_sq):
            st = opt.state.get(p)
            if st:
                m[k].copy_(st["exp_avg"])
                v[k].copy_(st["exp_avg_sq"])
                steps = int(st["step"])
        self.steps[k] = steps


def _trained(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]
