"""Training losses; each takes logits, the normalised vote distribution and the majority label."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fer.cache.errors import FerError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights n / (C * n_c), normalised so a balanced set gives all ones.

    A class absent from the training labels gets weight 1 (it never appears as a target anyway).
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.ones(num_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return torch.tensor(w, dtype=torch.float32)


def make_loss(name: str, *, train_labels: np.ndarray | None = None, num_classes: int,
              device: torch.device | str = "cpu") -> LossFn:
    """Return loss(logits (B,C), dist (B,C) summing to 1, labels (B,) int64) -> scalar.

    kl: KLDivLoss(batchmean) between log-softmax(logits) and dist; mse: on softmax(logits) vs dist;
    ce: cross-entropy on labels; wce: ce weighted by inverse train frequency (needs train_labels); its
    weights are put on ``device`` once, not copied every step.
    """
    if name == "kl":
        return lambda logits, dist, labels: F.kl_div(F.log_softmax(logits, dim=-1), dist, reduction="batchmean")
    if name == "mse":
        return lambda logits, dist, labels: F.mse_loss(F.softmax(logits, dim=-1), dist)
    if name == "ce":
        return lambda logits, dist, labels: F.cross_entropy(logits, labels)
    if name == "wce":
        if train_labels is None:
            raise ValueError("wce needs the training labels for its class weights")
        w = class_weights(train_labels, num_classes).to(device)

        def wce(logits: torch.Tensor, dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits, labels, weight=w)

        return wce
    raise FerError(f"unknown --loss {name}: choose from kl, mse, ce, wce")
