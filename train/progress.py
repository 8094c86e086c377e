"""Where one model's training stands (epochs done, the selection so far, its history) and what its checkpoint
carries: tensors and primitives only, so `torch.load(..., weights_only=True)` reads it."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


def cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict's tensors copied to the host."""
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def clone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


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

    def select(self, epoch: int, score: float, tie: float, state: Callable[[], Mapping[str, torch.Tensor]],
               keep_state: bool) -> None:
        """Count one validated epoch: a better (score, tie) becomes the best (its ``state()`` kept when
        asked)."""
        if math.isfinite(score) and (score, tie) > (self.best_score, self.best_tie):
            improved = score > self.best_score  # early stopping counts only real gains of the monitored score
            self.best_score, self.best_tie, self.best_epoch = score, tie, epoch
            self.bad = 0 if improved else self.bad + 1
            if keep_state:
                self.best_state = clone_state(state())
        else:
            self.bad += 1

    def state(self) -> dict[str, Any]:
        out = {"epoch": self.epoch, "best_epoch": self.best_epoch, "best_score": self.best_score,
               "best_tie": self.best_tie, "bad_epochs": self.bad, "history": self.history}
        if self.best_state is not None:
            out["best_model"] = cpu_state(self.best_state)
        return out

    @classmethod
    def from_checkpoint(cls, ck: Mapping[str, Any], device: torch.device) -> Progress:
        best = ck.get("best_model")
        return cls(epoch=int(ck["epoch"]), best_epoch=int(ck["best_epoch"]), best_score=float(ck["best_score"]),
                   best_tie=float(ck["best_tie"]), bad=int(ck["bad_epochs"]),
                   best_state={k: v.to(device) for k, v in best.items()} if best is not None else None,
                   history=[dict(r) for r in ck["history"]], seconds_before=float(ck.get("seconds", 0.0)))


def selected_validation(history: list[dict[str, float]], epoch: int, n_val: int) -> dict[str, Any]:
    """val_war, val_uar, val_loss of the kept epoch and n_val (None without validation clips: the literature
    protocol), what `fer report` ranks runs by."""
    row = next((r for r in history if int(r["epoch"]) == epoch), None)
    if not n_val or row is None:
        return {"val_war": None, "val_uar": None, "val_loss": None, "n_val": int(n_val)}
    return {"val_war": float(row["val_war"]), "val_uar": float(row["val_uar"]),
            "val_loss": float(row["val_loss"]), "n_val": int(n_val)}
