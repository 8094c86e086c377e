"""What every modality backend provides to the extraction runner."""

from __future__ import annotations

import copy
import pickle
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
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

    def settle_precision(self, records: Sequence[ClipRecord], clips: int = 8,
                         started: Collection[str] = ()) -> None:
        """Settle what ``--precision auto`` guessed, on this run's own weights and first ``clips`` loadable
        ``records``, before the spec (which names the precision) is read: call it once between building the
        extractor and creating its feature set. ``started``: the feature sets the store already holds, so a
        resumed run keeps the precision it began in. Extractors without a precision choice keep this no-op;
        the face and speech extractors measure (fer.extract.backbones.precision_check)."""

    def row_info(self, item: Any) -> str | None:
        """Optional one-line note on how this loaded clip was read (e.g. ``repeated 16 from 9 frames``),
        or None for the normal case. The runner stores the notes in the feature set's attrs under
        ``row_info`` ({clip id: note}); override it when a modality has something to say."""
        return None

    def loader(self) -> Extractor:
        """What DataLoader workers receive to run ``load``: by default a shallow copy of this extractor whose
        attributes that hold a model (an ``nn.Module``, or anything containing one) or a tensor on an accelerator
        are left out, so no worker unpickles a model or opens a CUDA context under the spawn/forkserver start
        methods. Such an attribute reads, in a worker, as a placeholder that says so. Override this when
        ``load`` needs something else."""
        clone = copy.copy(self)
        for name, value in vars(self).items():
            if _holds_model(value):
                setattr(clone, name, LeftInMainProcess(type(self).__name__, name))
        return clone

    def to(self, device: torch.device) -> Extractor:
        """Move the model to ``device`` (the runner calls this once before the first batch)."""
        self.device = torch.device(device)
        for m in vars(self).values():
            if isinstance(m, torch.nn.Module):
                m.to(self.device)
        return self


class LeftInMainProcess:
    """Stands in, in a decoding worker, for an extractor attribute that holds a model (see Extractor.loader)."""

    def __init__(self, owner: str, name: str) -> None:
        self.owner, self.name = owner, name

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise RuntimeError(f"{self.owner}.{self.name} holds a model, which stays in the main process; load() runs in "
                           f"decoding workers and must not use it (or override Extractor.loader())")

    __call__ = _refuse

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        self._refuse()


class _ModelFound(Exception):
    pass


class _ModelScan(pickle.Pickler):
    """Walks an object the way pickle does and stops at the first model or accelerator tensor."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, torch.nn.Module) or (isinstance(obj, torch.Tensor) and obj.device.type != "cpu"):
            raise _ModelFound
        return NotImplemented


class _Discard:
    def write(self, _: bytes) -> None:
        pass


def _holds_model(value: Any) -> bool:
    """True when pickling ``value`` would carry a model or an accelerator tensor."""
    if isinstance(value, (str, bytes, int, float, bool, type(None))):
        return False
    try:
        _ModelScan(_Discard(), protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except _ModelFound:
        return True
    except Exception:  # noqa: BLE001 - not picklable for another reason: left as is (workers started by fork get it)
        return False
    return False
