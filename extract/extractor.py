"""What every modality backend provides to the extraction runner."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch

from fer.extract.datasets.records import ClipRecord


class ClipError(Exception):
    """This clip cannot be used (unreadable, missing, empty); the message is a one-line reason.

    The runner records it as the clip's failure in the store and moves on to the next clip.
    """


class Extractor(ABC):
    """One backbone for one modality, split in two halves so decoding overlaps compute.

    ``load`` runs on the CPU in DataLoader worker processes (decode + preprocess one clip);
    ``embed`` runs a batch of loaded clips through the model on ``self.device``.
    """

    modality: str = ""
    device: torch.device = torch.device("cpu")

    @property
    @abstractmethod
    def spec(self) -> str:
        """Readable unique feature-set name, e.g. ``face.resnet18.imagenet.pool.224.16f``.

        Everything that changes the numbers (backbone, weights, layer, input size, frame count,
        sample rate) is part of it; the same settings always give the same name.
        """

    @property
    @abstractmethod
    def row_shape(self) -> tuple[int, ...]:
        """Shape of one clip's row, ``(T, ...)``; T is the token axis the mask refers to."""

    @abstractmethod
    def provenance(self) -> dict[str, Any]:
        """JSON-able feature-set attrs: modality, backbone, weights id and sha256, layer,
        input size, preprocessing (the store adds library versions, command line and time)."""

    @abstractmethod
    def load(self, record: ClipRecord) -> Any:
        """Decode and preprocess one clip on the CPU; picklable result. Raise ClipError(reason)."""

    @abstractmethod
    def embed(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run loaded clips through the model: ``(data (B, *row_shape), mask (B, T) bool)`` on CPU."""

    def row_info(self, item: Any) -> str | None:
        """Optional one-line note on how this loaded clip was read (e.g. ``repeated 16 from 9 frames``),
        or None for the normal case. The runner stores the notes in the feature set's attrs under
        ``row_info`` ({clip id: note}); override it when a modality has something to say."""
        return None

    def to(self, device: torch.device) -> "Extractor":
        """Move the model to ``device`` (the runner calls this once before the first batch)."""
        self.device = torch.device(device)
        for m in vars(self).values():
            if isinstance(m, torch.nn.Module):
                m.to(self.device)
        return self
