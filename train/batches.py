"""Where the fit loop's batches come from: one small source per run, whatever holds the features.

The fit loop asks a source for an epoch's batches in a given order (``epoch``), for the model inputs of given
rows (``evaluate``: every evaluated view), for the statistics pass of input standardisation (``norm_chunks``)
and for a resident copy of the validation rows (``hold``). Two sources:

- MemorySource (here): the feature sets as tensors on the training device, or in host memory with each batch
  copied to the device when the device cannot hold them (fer.train.features.device_budget).
- StreamSource (fer.train.stream): the sets stay in the store and are read by span while training.

The order of an epoch is the fit loop's (fer.train.sampling.epoch_order: a function of the seed, the epoch and
the data), and every source serves exactly that order in batches of exactly batch_size (the last one shorter);
evaluation and the statistics pass cut the given rows into the same consecutive batches everywhere. Both
sources turn raw rows into model inputs with the same FramePlan on the training device (face frames and views)
and fer.train.model.make_batch (pose, audio), so how the data is held never changes a number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fer.train.config import TrainConfig
from fer.train.features import DiskSet, LoadedFeatures, ModalityData
from fer.train.model import make_batch
from fer.train.sampling import FramePlan, block_rows

EVAL_BATCH = 256
"""Evaluation batches hold at least this many clips (no gradients: larger batches are cheaper)."""
NORM_CHUNK_BYTES = 1 << 20
"""Stored bytes per chunk of the input-standardisation pass (it works in float64: four times that for float16)."""

Log = Callable[[str], None]


@dataclass
class Batch:
    """One training step's data."""

    inputs: dict[str, torch.Tensor]
    """The model's inputs on the training device (fer.train.model.FerModel.forward)."""
    idx: torch.Tensor
    """(B,) positions of the clips in the loaded rows (for their targets), on the training device."""


class BatchSource(Protocol):
    """What the fit loop iterates; see the module note."""

    model_sets: dict[str, ModalityData]
    """One zero row per modality in the model's input layout (what FerModel needs to build itself)."""
    views: int
    """Views evaluated per clip (their predictions are averaged)."""
    concurrent: bool
    """Whether it serves several epochs side by side (the models of a stack train together)."""

    def epoch(self, order: torch.Tensor, *, draw: torch.Generator | None) -> Iterator[Batch]: ...
    def evaluate(self, rows: np.ndarray,
                 batch: int) -> Iterator[tuple[list[dict[str, torch.Tensor]], torch.Tensor]]: ...
    def norm_chunks(self, modality: str, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...
    def hold(self, rows: np.ndarray) -> BatchSource: ...
    def close(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...


def frame_plans(sets: Mapping[str, ModalityData | DiskSet], cfg: TrainConfig,
                store: str = "STORE") -> dict[str, FramePlan]:
    """The face's FramePlan (the only modality whose frames are drawn), checked against the options."""
    if "face" not in cfg.modalities:
        return {}
    face = sets["face"]
    return {"face": FramePlan.for_set(face.spec, face.provenance, tuple(face.row_shape), cfg.augment,
                                      cfg.segments, store, flip_test=cfg.flip_at_test())}


def _torch_dtype(md: ModalityData | DiskSet) -> torch.dtype:
    if isinstance(md, ModalityData):
        return md.data.dtype
    return torch.from_numpy(np.zeros(1, dtype=md.dtype)).dtype


def itemsize(md: ModalityData | DiskSet) -> int:
    return torch.zeros((), dtype=_torch_dtype(md)).element_size()


def stored_row_bytes(md: ModalityData | DiskSet) -> int:
    """Bytes of one row as stored: its data and its mask."""
    return int(np.prod(md.row_shape, dtype=np.int64)) * itemsize(md) + int(md.row_shape[0])


def sampling_blocks(features: LoadedFeatures, modalities: tuple[str, ...]) -> tuple[np.ndarray, int]:
    """(the sampling block of every loaded row, rows per block): consecutive store rows holding about
    fer.train.sampling.BLOCK_BYTES of the chosen sets. The data alone decides them, not how it is held."""
    rows = np.asarray(features.rows, dtype=np.int64)
    b = block_rows(sum(stored_row_bytes(md) for m, md in features.sets.items() if m in modalities),
                   int(rows[-1]) + 1 if len(rows) else 1)
    return rows // b, b


def _token_shape(m: str, md: ModalityData | DiskSet, plans: Mapping[str, FramePlan]) -> tuple[int, ...]:
    """A row as the model sees it: the face's drawn tokens (one view), other sets' rows as stored."""
    return plans[m].token_shape(tuple(md.row_shape)) if m in plans else tuple(md.row_shape)


def model_sets(sets: Mapping[str, ModalityData | DiskSet], plans: Mapping[str, FramePlan]) -> dict[str, ModalityData]:
    """One zero row per modality, shaped as the model sees it (FerModel reads only shapes, spec, provenance)."""
    out = {}
    for m, md in sets.items():
        shape = _token_shape(m, md, plans)
        out[m] = ModalityData(md.spec, torch.zeros((1, *shape), dtype=_torch_dtype(md)),
                              torch.ones((1, shape[0]), dtype=torch.bool), md.provenance)
    return out


def model_row_bytes(sets: Mapping[str, ModalityData | DiskSet], plans: Mapping[str, FramePlan]) -> int:
    """Bytes of one clip as held for evaluation: the face's tokens per evaluated view, other sets' rows."""
    return sum(int(np.prod(_token_shape(m, md, plans), dtype=np.int64))
               * (plans[m].test_views if m in plans else 1)
               * itemsize(md) for m, md in sets.items())


def make_inputs(sets: Mapping[str, ModalityData], rows: torch.Tensor, cfg: TrainConfig,
                plans: Mapping[str, FramePlan], *, train: bool, draw: torch.Generator | None = None,
                view: int | None = None) -> dict[str, torch.Tensor]:
    """The model's inputs for ``rows`` of in-memory sets (rows on the sets' device): face tokens through its
    FramePlan, pose and audio as make_batch gives them; float32."""
    others = tuple(m for m in cfg.modalities if m != "face")
    out = make_batch(sets, rows, cfg, modalities=others) if others else {}
    if "face" in cfg.modalities:
        face = sets["face"]
        x, m = plans["face"].gather(face.data, face.mask, rows, train=train, draw=draw, view=view)
        out["face"], out["face_mask"] = x.float(), m
    return out


def norm_rows(md: ModalityData | DiskSet) -> int:
    """Clips per chunk of the input-standardisation pass: NORM_CHUNK_BYTES of stored data."""
    row = int(np.prod(md.row_shape, dtype=np.int64)) * itemsize(md)
    return max(1, NORM_CHUNK_BYTES // row)


def norm_pair(sets: Mapping[str, ModalityData], rows: torch.Tensor, modality: str,
               cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (B, ..., D), mask (B, ...)) of every stored token of ``rows``: what input standardisation counts."""
    if modality == "face":
        face = sets["face"]
        x, mask = face.data[rows], face.mask[rows]
        while mask.dim() < x.dim() - 1:  # views (and map axes) share their frame's mask
            mask = mask.unsqueeze(-1).expand(*x.shape[:mask.dim() + 1])
        return x, mask
    b = make_batch(sets, rows, cfg, modalities=(modality,))
    return b[modality], b[f"{modality}_mask"]


class MemorySource:
    """Feature sets in memory: on the training device, or (``on_device=False``) in host memory with each batch
    gathered on the host and copied to the device."""

    concurrent = True
    """Serves several epochs side by side (the models of a stack)."""

    def __init__(self, sets: Mapping[str, ModalityData], cfg: TrainConfig, plans: Mapping[str, FramePlan],
                 device: torch.device, *, on_device: bool = True):
        self.cfg, self.plans, self.device, self.on_device = cfg, dict(plans), device, on_device
        mods = [m for m in sets if m in cfg.modalities]
        if on_device:
            self.sets = {m: ModalityData(sets[m].spec, sets[m].data.to(device), sets[m].mask.to(device),
                                         sets[m].provenance) for m in mods}
        else:
            self.sets = {m: sets[m] for m in mods}
        self.model_sets = model_sets(self.sets, self.plans)
        self.views = self.plans["face"].test_views if "face" in self.plans else 1

    def _local(self, rows: torch.Tensor) -> tuple[dict[str, ModalityData], torch.Tensor]:
        """The sets to draw from and the rows in them, on the device."""
        if self.on_device:
            return self.sets, rows.to(self.device)
        local = {m: ModalityData(md.spec, md.data[rows].to(self.device), md.mask[rows].to(self.device), md.provenance)
                 for m, md in self.sets.items()}
        return local, torch.arange(len(rows), device=self.device)

    def epoch(self, order: torch.Tensor, *, draw: torch.Generator | None) -> Iterator[Batch]:
        """Batches in ``order`` (loaded-row positions, a CPU tensor: fer.train.sampling.epoch_order)."""
        bs = self.cfg.batch_size
        order_d = order.to(self.device)  # one copy per epoch
        for i in range(0, len(order), bs):
            if self.on_device:
                sets, rows = self.sets, order_d[i:i + bs]
            else:
                sets, rows = self._local(order[i:i + bs])
            yield Batch(make_inputs(sets, rows, self.cfg, self.plans, train=True, draw=draw), order_d[i:i + bs])

    def evaluate(self, rows: np.ndarray,
                 batch: int = EVAL_BATCH) -> Iterator[tuple[list[dict[str, torch.Tensor]], torch.Tensor]]:
        """(inputs of every view, positions in ``rows``) per batch, frames at the segment centres."""
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        for i in range(0, len(r), batch):
            sets, local = self._local(r[i:i + batch])
            views = [make_inputs(sets, local, self.cfg, self.plans, train=False, view=v) for v in range(self.views)]
            yield views, torch.arange(i, i + len(local), device=self.device)

    def norm_chunks(self, modality: str, rows: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every stored token of ``rows`` of one modality, a few MB at a time (input standardisation)."""
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        chunk = norm_rows(self.sets[modality])
        for i in range(0, len(r), chunk):
            sets, local = self._local(r[i:i + chunk])
            yield norm_pair(sets, local, modality, self.cfg)

    def hold(self, rows: np.ndarray) -> MemorySource:
        return self  # already resident

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """What a run's resources.json says about this source."""
        return {"source": "memory", "on_device": bool(self.on_device)}
