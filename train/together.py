"""Which models train together as one batched model, and how many at a time.

The folds of a run share everything but their rows; the points of a sweep may differ in what a stack holds
per model (PER_MODEL: learning rate, weight decay, dropout, loss, seed, ...) and share the rest (the
architecture, the data, the batch size: group_key). At most ``--folds-together`` models train at once, or with
0 as many as fit the device (capacity: each model's parameters, gradients, two Adam moments and best state,
and one step's activations, against the free memory); a model with a fine-tuned backbone top trains alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from fer.train.config import TrainConfig
from fer.train.features import ModalityData, device_budget, memory_budget

T = TypeVar("T")

PER_MODEL = frozenset({"lr", "weight_decay", "dropout", "modality_dropout", "loss", "seed", "optimizer",
                       "scheduler", "epochs", "patience", "select", "monitor", "val_fraction", "balance"})
"""Settings that may differ between the models of one stack (each model holds its own)."""
NOT_TRAINING = frozenset({"out", "resume", "plots", "folds", "folds_together"})
"""Settings that name the run, not what a model is."""
MEMORY_SHARE = 0.5
"""Share of the free memory (the device's, or the host's for the CPU) the stacked models may take."""


def group_key(cfg: TrainConfig) -> tuple:
    """What must be equal for two runs to train as one stack: every setting but PER_MODEL and NOT_TRAINING."""
    d = cfg.to_dict()
    return tuple(sorted((k, repr(v)) for k, v in d.items() if k not in PER_MODEL | NOT_TRAINING))


def alone_reason(cfg: TrainConfig, concurrent: bool) -> str | None:
    """Why the models of this run train one at a time, or None."""
    if cfg.finetune is not None:
        return f"--finetune {cfg.finetune} trains a backbone top, which is not batched"
    if not concurrent:
        return "the features stream from the store, one epoch's reads at a time"
    return None


def model_bytes(cfg: TrainConfig, sets: Mapping[str, ModalityData], num_classes: int) -> int:
    """Memory one model of a stack takes: parameters, gradients, two Adam moments and the best state (5x the
    parameters), and one training step's activations and dropout draws (about)."""
    from fer.train.model import FerModel

    with torch.device("meta"):
        model = FerModel(cfg, sets, num_classes=num_classes)
    params = sum(p.numel() for p in model.parameters())
    tokens = int(model.pos.shape[1]) if model.encoder is not None else 1
    width = int(model.pos.shape[2]) if model.encoder is not None else 256
    per_layer = tokens * (16 * width + 5 * cfg.ff) + 5 * cfg.heads * tokens * tokens
    inputs = sum(int(np.prod(md.data.shape[1:])) for md in sets.values())
    acts = cfg.batch_size * (cfg.layers * per_layer + 4 * inputs + 4 * cfg.hidden)
    return 4 * (5 * params + acts)


def capacity(cfg: TrainConfig, sets: Mapping[str, ModalityData], num_classes: int, device: torch.device) -> int:
    """How many models train at once: --folds-together, or with 0 as many as MEMORY_SHARE of the free memory
    holds (at least one)."""
    if cfg.folds_together > 0:
        return cfg.folds_together
    free = device_budget(device)
    free = memory_budget() if free is None else free
    return max(1, int(MEMORY_SHARE * free) // max(model_bytes(cfg, sets, num_classes), 1))


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in order, cut into lists of at most ``size`` of about equal length."""
    if not items:
        return []
    n = -(-len(items) // max(size, 1))
    per = -(-len(items) // n)
    return [list(items[i:i + per]) for i in range(0, len(items), per)]


def describe(groups: Sequence[Sequence[Any]], name: Any) -> str:
    """One log line: which models train together."""
    parts = [", ".join(name(x) for x in g) for g in groups]
    if all(len(g) == 1 for g in groups):
        return f"{len(groups)} model(s), trained one at a time"
    return "trained together as one batched model: " + "; then ".join(f"[{p}]" for p in parts)
